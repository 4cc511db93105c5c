"""The LSTM layer as ``torch.library`` custom ops: the one door every module and function goes through.

``torch.ops.tritonlstm.layer_forward`` runs one layer, both directions of a bidirectional layer at once, and
``torch.ops.tritonlstm.layer_backward`` its gradients; ``register_fake`` gives their output shapes from the input
shapes (symbolic under dynamo, AOTAutograd and torch.export, so batch size and sequence length stay dynamic), and
``register_autograd`` connects them. Dynamo, torch.export, AOTAutograd and the TorchScript ONNX exporter therefore
see one opaque, shape-polymorphic op on every machine, whatever runs behind it.

Behind the op, an implementation is picked by device, dtype and the ``backend`` argument
(:func:`tritonlstm.backend.resolve_backend`):

* ``"triton"``: the Triton kernels (:mod:`tritonlstm.kernels`): CUDA tensors, or CPU tensors under Triton's
  interpreter. The forward keeps the activated gates and every cell state for the backward.
* ``"reference"``: the plain PyTorch step loop (:mod:`tritonlstm.reference`), the op's CPU kernel on a machine
  without Triton. Its backward is the vector-Jacobian product of that loop (autograd through it), so the reference
  stays an independent oracle for the kernels.

Layouts: D directions (1, or 2 for a bidirectional layer); the parameters of the D directions are stacked on a
leading dimension (``w_ih [D, 4H, I]``, ``w_hh [D, 4H, R]``, ``b_ih``/``b_hh [D, 4H]``, ``w_hr [D, P, H]``), the
states are ``h0 [D, B, R]``, ``c0 [D, B, H]``, and the output ``y [T, B, D*R]`` holds the directions side by side as
``torch.nn.LSTM`` does. With D = 1, ``reverse`` runs the direction from the last step to the first; with D = 2
direction 1 is the reverse one. Optional results are empty tensors (a custom op returns tensors, never ``None``).

Regularisers (issue 14), trailing arguments that default to off:

* ``h_mask [D, B, R]`` (recurrent dropout, variational): multiplies h_{t-1} where it enters the recurrent product
  ``h_{t-1} W_hh^T``, at every step; never the output or h_n. Drawn by the caller, not differentiated.
* ``zoneout_h``, ``zoneout_c`` with ``zoneout_seed``: with a seed (an int64 tensor ``[1]``, training), every element of
  h and c keeps its previous value with probability p, a new mask every step; without one (eval), the expectation
  ``p * previous + (1 - p) * new``. The output y_t is the zoned h_t. The masks are a function of the seed alone,
  so the backward regenerates them instead of storing them: the kernels draw them in-kernel with Philox
  (``tl.rand``), the reference from a ``torch.Generator`` seeded by it (:func:`tritonlstm.reference.zoneout_masks`).
  The two streams differ; forward and backward always run the same implementation, so each agrees with itself.

When an implementation cannot apply a regulariser, :func:`_triton_refusal` says why and the op runs the reference
implementation instead, for forward and backward alike.
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from torch import Tensor

from tritonlstm import onnx_graph, reference
from tritonlstm.backend import kernels, resolve_backend, tag_compile_caches

tag_compile_caches()  # the op's saved tensors depend on TRITON_INTERPRET on a CPU: see its docstring


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def directions(num_directions: int, reverse: bool) -> tuple[bool, ...]:
    """Per direction, whether it runs from the last step to the first."""
    if num_directions == 2:
        if reverse:
            raise ValueError("reverse=True describes a single direction; a bidirectional layer runs both")
        return (False, True)
    return (reverse,)


def _lengths_on(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    """``lengths`` on x's device, where the kernels read them (a caller may pass them on the CPU)."""
    return lengths.to(x.device) if lengths is not None and lengths.device != x.device else lengths


def _triton_refusal(zoneout_h: float, zoneout_c: float, has_proj: bool) -> str | None:
    """Why the Triton kernels cannot apply this call's regularisers, or ``None`` when they can.

    Both the per-step and the sequence kernels apply recurrent dropout (with or without a projection) and zoneout
    (without one).
    """
    if (zoneout_h > 0 or zoneout_c > 0) and has_proj:
        return "zoneout with a projection (proj_size > 0) is not applied by the Triton kernels"
    return None


def _implementation(backend: str, x: Tensor, zoneout_h: float, zoneout_c: float, w_hr: Tensor | None) -> str:
    """``"triton"`` or ``"reference"``: the backend's choice, unless the kernels cannot apply the regularisers."""
    name = resolve_backend(backend, x.device, x.dtype)
    if name == "triton" and _triton_refusal(zoneout_h, zoneout_c, w_hr is not None):
        return "reference"
    return name


def _stores_gates(backend: str, x: Tensor, store_for_backward: bool, zoneout_h: float, zoneout_c: float,
                  w_hr: Tensor | None) -> bool:  # fmt: skip
    # only the Triton kernels keep gates and cell states; the reference backward recomputes its loop
    return store_for_backward and _implementation(backend, x, zoneout_h, zoneout_c, w_hr) == "triton"


def _sequence_kernels(x: Tensor, w_hh: Tensor, w_hr: Tensor | None, backward: bool):
    """The sequence-kernel module when it runs this layer (``TRITONLSTM_KERNEL``, support, self-test), else None."""
    S = importlib.import_module("tritonlstm.kernels.sequence")  # imported with the kernels, on first use
    B, H = x.shape[1], w_hh.shape[1] // 4
    P = w_hr.shape[1] if w_hr is not None else 0
    if S.choose_kernel(x.device, x.dtype, B, H, P, w_hh.shape[0], backward=backward) == "sequence":
        return S
    return None


def _regulariser_kwargs(d: int, h_mask, zoneout, seed) -> dict:
    """The per-step launchers' regulariser arguments for direction d (none when off, so older launchers work)."""
    kwargs = {"h_mask": h_mask[d]} if h_mask is not None else {}
    if any(zoneout):
        kwargs.update(zoneout=zoneout, zoneout_seed=seed, zoneout_stream=2 * d)
    return kwargs


def _triton_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs, store_for_backward, h_mask=None,
                    zoneout=(0.0, 0.0), seed=None):  # fmt: skip
    S = _sequence_kernels(x, w_hh, w_hr, backward=False)
    if S is not None:  # one launch for the whole recurrence, every direction
        bias = b_ih + b_hh if b_ih is not None else None
        try:
            return S.sequence_forward(
                x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, dirs, store_for_backward, h_mask=h_mask,
                zoneout=zoneout, zoneout_seed=seed,
            )
        except S.SequenceCompileError:
            pass  # warned once: this shape runs the per-step kernels from now on
    K = kernels()  # the per-step kernels: one launch per step and direction
    runs = [
        K.lstm_layer_forward(
            x, h0[d], c0[d], w_ih[d], w_hh[d], b_ih[d] if b_ih is not None else None,
            b_hh[d] if b_hh is not None else None, w_hr[d] if w_hr is not None else None, lengths,
            reverse=rev, store_for_backward=store_for_backward, **_regulariser_kwargs(d, h_mask, zoneout, seed),
        )  # fmt: skip
        for d, rev in enumerate(dirs)
    ]
    y, h_n, c_n, gates, cs = zip(*runs)
    y = y[0] if len(dirs) == 1 else torch.cat(y, dim=-1)
    if not store_for_backward:
        return y, torch.stack(h_n), torch.stack(c_n), None, None
    return y, torch.stack(h_n), torch.stack(c_n), torch.stack(gates), torch.stack(cs)


def _reference_forward(
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs, h_mask=None, zoneout=(0.0, 0.0), seed=None
):
    runs = [
        reference.lstm_layer(
            x, h0[d], c0[d], w_ih[d], w_hh[d], b_ih[d] if b_ih is not None else None,
            b_hh[d] if b_hh is not None else None, w_hr[d] if w_hr is not None else None, lengths, rev,
            h_mask=h_mask[d] if h_mask is not None else None, zoneout=zoneout,
            zoneout_masks=reference.zoneout_masks(seed, d, *zoneout) if seed is not None else None,
        )  # fmt: skip
        for d, rev in enumerate(dirs)
    ]
    y, h_n, c_n = zip(*runs)
    return (y[0] if len(dirs) == 1 else torch.cat(y, dim=-1)), torch.stack(h_n), torch.stack(c_n)


def _no_autocast(x: Tensor):
    """The op computes in its inputs' dtype (the module casts them under autocast); the matmuls inside it must
    not be recast, or the fp32 recurrent accumulation of the reference would drop to the autocast dtype."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


@torch.library.custom_op("tritonlstm::layer_forward", mutates_args=())
def layer_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    store_for_backward: bool,
    backend: str,
    h_mask: Tensor | None = None,
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    zoneout_seed: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer, every direction: ``(y [T,B,D*R], h_n [D,B,R], c_n [D,B,H], gates [D,T,B,4H], cs [D,T,B,H])``.

    ``gates`` and ``cs`` (what the Triton backward needs) are empty unless ``store_for_backward`` on the Triton
    implementation. ``h_mask`` (recurrent dropout) and zoneout: see the module docstring.
    """
    dirs = directions(w_ih.shape[0], reverse)
    lengths = _lengths_on(x, lengths)
    with _no_autocast(x):
        if _implementation(backend, x, zoneout_h, zoneout_c, w_hr) == "reference":
            y, h_n, c_n = _reference_forward(
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs, h_mask, (zoneout_h, zoneout_c), zoneout_seed
            )
            gates = cs = None
        else:
            y, h_n, c_n, gates, cs = _triton_forward(
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs, store_for_backward, h_mask,
                (zoneout_h, zoneout_c), zoneout_seed,
            )  # fmt: skip
    if gates is None:
        gates, cs = x.new_empty(0), x.new_empty(0, dtype=_acc_dtype(x.dtype))
    return y, h_n, c_n, gates, cs


@layer_forward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, store_for_backward, backend, h_mask=None,
      zoneout_h=0.0, zoneout_c=0.0, zoneout_seed=None):  # fmt: skip
    T, B = x.shape[0], x.shape[1]
    D, H, R = w_ih.shape[0], w_hh.shape[1] // 4, w_hh.shape[2]
    directions(D, reverse)
    acc = _acc_dtype(x.dtype)
    y, h_n, c_n = x.new_empty(T, B, D * R), x.new_empty(D, B, R), x.new_empty(D, B, H)
    if _stores_gates(backend, x, store_for_backward, zoneout_h, zoneout_c, w_hr):
        return y, h_n, c_n, x.new_empty(D, T, B, 4 * H), x.new_empty(D, T, B, H, dtype=acc)
    return y, h_n, c_n, x.new_empty(0), x.new_empty(0, dtype=acc)


@contextlib.contextmanager
def _autograd_inside_op():
    """Turn autograd back on inside an op's kernel.

    The dispatcher runs a custom op's kernel with the autograd dispatch keys excluded, so tensors made there never
    record a graph even under ``enable_grad``. The reference backward differentiates the reference loop, so for its
    own duration it re-includes those keys (torch has no public switch for this).
    """
    excluded = torch._C._dispatch_tls_local_exclude_set()
    for key in (
        torch._C.DispatchKey.AutogradFunctionality,
        torch._C.DispatchKey.AutogradOther,
        torch._C.DispatchKey.AutogradNestedTensor,
    ):
        excluded = excluded.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), excluded), torch.enable_grad():
        yield


def _reference_backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs, needs,
                        h_mask=None, zoneout=(0.0, 0.0), seed=None):  # fmt: skip
    """Vector-Jacobian product of the reference loop: autograd through it, run again here."""
    inputs = {"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "w_hr": w_hr}
    with _autograd_inside_op():
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if v is not None}
        outputs = _reference_forward(
            leaves["x"], leaves["h0"], leaves["c0"], leaves["w_ih"], leaves["w_hh"], leaves.get("b_ih"),
            leaves.get("b_hh"), leaves.get("w_hr"), lengths, dirs, h_mask, zoneout, seed,
        )  # fmt: skip
        pairs = [(o, g) for o, g in zip(outputs, (dy, dh_n, dc_n)) if g is not None]
        names = list(leaves)
        grads = dict.fromkeys(names)
        if pairs:
            found = torch.autograd.grad(
                [o for o, _ in pairs], [leaves[n] for n in names], [g for _, g in pairs], allow_unused=True
            )
            grads.update(zip(names, found))
    result = []
    for name, need in zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "w_hr"), needs):
        g = grads.get(name)
        if need and g is None and inputs[name] is not None:
            g = torch.zeros_like(inputs[name])
        result.append(g if need else None)
    return result


def _triton_backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, y, gates, cs, dirs, needs, h_mask=None,
                     zoneout=(0.0, 0.0), seed=None):  # fmt: skip
    S = _sequence_kernels(x, w_hh, w_hr, backward=True)
    if S is not None:
        try:
            return list(S.sequence_backward(
                dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, dirs, tuple(needs),
                h_mask=h_mask, zoneout=zoneout, zoneout_seed=seed,
            ))  # fmt: skip
        except S.SequenceCompileError:
            pass  # warned once: this shape runs the per-step kernels from now on
    K = kernels()
    R = w_hh.shape[2]
    per_direction = []
    for d, rev in enumerate(dirs):
        span = slice(d * R, (d + 1) * R)
        y_d = y if len(dirs) == 1 else y[..., span].contiguous()
        dy_d = dy if dy is None or len(dirs) == 1 else dy[..., span].contiguous()
        per_direction.append(
            K.lstm_layer_backward(
                dy_d, dh_n[d] if dh_n is not None else None,
                dc_n[d] if dc_n is not None else None, x, h0[d], c0[d], w_ih[d], w_hh[d], y_d, gates[d],
                cs[d], w_hr[d] if w_hr is not None else None, lengths, reverse=rev, needs=tuple(needs),
                **_regulariser_kwargs(d, h_mask, zoneout, seed),
            )  # fmt: skip
        )
    grads = []
    for k, parts in enumerate(zip(*per_direction)):
        if parts[0] is None:
            grads.append(None)
        elif k == 0:
            grads.append(parts[0] if len(parts) == 1 else sum(parts[1:], parts[0]))  # dx: both directions read x
        else:
            grads.append(torch.stack(parts))
    return grads


@torch.library.custom_op("tritonlstm::layer_backward", mutates_args=())
def layer_backward(
    dy: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    y: Tensor,
    gates: Tensor,
    cs: Tensor,
    reverse: bool,
    needs: list[bool],
    backend: str,
    h_mask: Tensor | None = None,
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    zoneout_seed: Tensor | None = None,
) -> list[Tensor]:
    """Gradients ``[dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr]``; an empty tensor for each one not in ``needs``.

    ``db`` is the gradient of ``b_ih`` and of ``b_hh`` alike. The regularisers are the forward's, so the same
    masks apply (zoneout's regenerated from the seed).
    """
    dirs = directions(w_ih.shape[0], reverse)
    lengths = _lengths_on(x, lengths)
    with _no_autocast(x):
        if _implementation(backend, x, zoneout_h, zoneout_c, w_hr) == "reference":
            grads = _reference_backward(
                dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs, needs, h_mask,
                (zoneout_h, zoneout_c), zoneout_seed,
            )  # fmt: skip
        else:
            grads = _triton_backward(
                dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, y, gates, cs, dirs, needs, h_mask,
                (zoneout_h, zoneout_c), zoneout_seed,
            )  # fmt: skip
    return [g if g is not None else x.new_empty(0) for g in grads]


@layer_backward.register_fake
def _(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, gates, cs, reverse, needs, backend,
      h_mask=None, zoneout_h=0.0, zoneout_c=0.0, zoneout_seed=None):  # fmt: skip
    shapes = [x.shape, h0.shape, c0.shape, w_ih.shape, w_hh.shape, w_hh.shape[:2], w_hr.shape if w_hr is not None else None]
    return [x.new_empty(s) if need and s is not None else x.new_empty(0) for need, s in zip(needs, shapes)]


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, _, backend, h_mask, zh, zc, seed = inputs
    y, _, _, gates, cs = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, gates, cs, h_mask, seed)
    ctx.zoneout = (zh, zc)
    ctx.reverse = reverse
    ctx.backend = backend
    ctx.has_bias = b_ih is not None
    ctx.has_proj = w_hr is not None
    ctx.mark_non_differentiable(gates, cs)
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, gates, cs, h_mask, seed = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_db = ctx.has_bias and (n[5] or n[6])
    needs = [n[0], n[1], n[2], n[3], n[4], need_db, ctx.has_proj and n[7]]
    if ctx.has_proj and dy is None and dh_n is None and x.shape[0] == 1:
        needs[6] = False  # one step, only c_n's gradient: W_hr acts after c_1, so autograd would give it none
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = layer_backward(
        dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, gates, cs, ctx.reverse, needs, ctx.backend,
        h_mask, *ctx.zoneout, seed,
    )  # fmt: skip
    grads = [g if need else None for g, need in zip((dx, dh0, dc0, dw_ih, dw_hh), needs)]
    db_ih = db if need_db and n[5] else None
    db_hh = (db.clone() if db_ih is not None else db) if need_db and n[6] else None
    return (*grads, db_ih, db_hh, dw_hr if needs[6] else None, None, None, None, None, None, None, None, None)


layer_forward.register_autograd(_backward, setup_context=_setup_context)
onnx_graph.register_torchscript_symbolic()
