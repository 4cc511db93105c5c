"""The LSTM layer as ``torch.library`` custom ops: the one door every module and function goes through.

``torch.ops.tritonlstm.layer_forward`` runs one layer, both directions of a bidirectional layer at once, and
``torch.ops.tritonlstm.layer_backward`` its gradients; ``register_fake`` gives their output shapes from the input
shapes (symbolic under dynamo, AOTAutograd and torch.export, so batch size and sequence length stay dynamic), and
``register_autograd`` connects them. Dynamo, torch.export, AOTAutograd and the TorchScript ONNX exporter therefore
see one opaque, shape-polymorphic op on every machine, whatever runs behind it.

Behind the op, the plan (:func:`tritonlstm.dispatch.plan`) picks an implementation by device, dtype, the
``backend`` argument and the regularisers, and with the kernels, which of them:

* ``"triton"``: the Triton kernels (:mod:`tritonlstm.kernels`): CUDA tensors, or CPU tensors under Triton's
  interpreter. The forward keeps the activated gates and every cell state for the backward.
* ``"reference"``: the plain PyTorch step loop (:mod:`tritonlstm.reference`), the op's CPU kernel on a machine
  without Triton. Its backward is the vector-Jacobian product of that loop (autograd through it), so the reference
  stays an independent oracle for the kernels.

The GRU has its own pair, ``torch.ops.tritonlstm.gru_forward`` and ``gru_backward``, on the same plan and
bundles (no c0, no projection, zoneout on h alone); see :func:`gru_forward`.

Layouts: D directions (1, or 2 for a bidirectional layer); the parameters of the D directions are stacked on a
leading dimension (``w_ih [D, 4H, I]``, ``w_hh [D, 4H, R]``, ``b_ih``/``b_hh [D, 4H]``, ``w_hr [D, P, H]``), the
states are ``h0 [D, B, R]``, ``c0 [D, B, H]``, and the output ``y [T, B, D*R]`` holds the directions side by side as
``torch.nn.LSTM`` does. With D = 1, ``reverse`` runs the direction from the last step to the first; with D = 2
direction 1 is the reverse one. Optional results are empty tensors (a custom op returns tensors, never ``None``).

Regularisers, trailing arguments that default to off:

* ``h_mask [D, B, R]`` (recurrent dropout, variational): multiplies h_{t-1} where it enters the recurrent product
  ``h_{t-1} W_hh^T``, at every step; never the output or h_n. Drawn by the caller, not differentiated.
* ``zoneout_h``, ``zoneout_c`` with ``zoneout_seed``: with a seed (an int64 tensor ``[1]``, training), every element of
  h and c keeps its previous value with probability p, a new mask every step; without one (eval), the expectation
  ``p * previous + (1 - p) * new``. The output y_t is the zoned h_t. The masks are a function of the seed alone,
  so the backward regenerates them instead of storing them: the kernels draw them in-kernel with Philox
  (``tl.rand``), the reference from a ``torch.Generator`` seeded by it (:func:`tritonlstm.reference.zoneout_masks`).
  The two streams differ; forward and backward always run the same implementation, so each agrees with itself.

When the kernels cannot apply a regulariser, the plan says why and runs the reference implementation instead, for
forward and backward alike. Below the op every implementation takes the same bundles
(:mod:`tritonlstm.kernels.common`): the layer's tensors, its regularisers, and in the backward what was saved, the
incoming gradients and which gradients are needed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from tritonlstm import dispatch, onnx_graph, reference
from tritonlstm.kernels.common import GradOutputs, Layer, Needs, Regularisers, Saved
from tritonlstm.kernels.runtime import acc_dtype, tag_compile_caches

tag_compile_caches()  # the op's saved tensors depend on TRITON_INTERPRET on a CPU: see its docstring


def directions(num_directions: int, reverse: bool) -> tuple[bool, ...]:
    """Per direction, whether it runs from the last step to the first."""
    if num_directions == 2:
        if reverse:
            raise ValueError("reverse=True describes a single direction; a bidirectional layer runs both")
        return (False, True)
    return (reverse,)


def _bundles(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask, zoneout_h, zoneout_c, seed):
    """The op's arguments as the bundles every implementation takes (``lengths`` moved to x's device, where the
    kernels read them: a caller may pass them on the CPU)."""
    if lengths is not None and lengths.device != x.device:
        lengths = lengths.to(x.device)
    dirs = directions(w_ih.shape[0], reverse)
    layer = Layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs)
    return layer, Regularisers(h_mask, (zoneout_h, zoneout_c), seed)


def _reference_forward(layer: Layer, regs: Regularisers):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, dirs = layer
    runs = [
        reference.lstm_layer(
            x, h0[d], c0[d], w_ih[d], w_hh[d], b_ih[d] if b_ih is not None else None,
            b_hh[d] if b_hh is not None else None, w_hr[d] if w_hr is not None else None, lengths, rev,
            h_mask=regs.h_mask[d] if regs.h_mask is not None else None, zoneout=regs.zoneout,
            zoneout_masks=reference.zoneout_masks(regs.seed, d, *regs.zoneout) if regs.seed is not None else None,
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
    layer, regs = _bundles(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask, zoneout_h, zoneout_c,
                           zoneout_seed)  # fmt: skip
    with _no_autocast(x):
        plan = dispatch.plan(x, w_hh, w_hr, backend, regs.zoneout)
        if plan.implementation == "reference":
            (y, h_n, c_n), gates, cs = _reference_forward(layer, regs), None, None
        else:
            y, h_n, c_n, gates, cs = plan.forward(layer, regs, store_for_backward)
    if gates is None:
        gates, cs = x.new_empty(0), x.new_empty(0, dtype=acc_dtype(x.dtype))
    return y, h_n, c_n, gates, cs


@layer_forward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, store_for_backward, backend, h_mask=None,
      zoneout_h=0.0, zoneout_c=0.0, zoneout_seed=None):  # fmt: skip
    T, B = x.shape[0], x.shape[1]
    D, H, R = w_ih.shape[0], w_hh.shape[1] // 4, w_hh.shape[2]
    directions(D, reverse)
    acc = acc_dtype(x.dtype)
    y, h_n, c_n = x.new_empty(T, B, D * R), x.new_empty(D, B, R), x.new_empty(D, B, H)
    # only the Triton kernels keep gates and cell states; the reference backward recomputes its loop
    stores = store_for_backward and dispatch.plan(x, w_hh, w_hr, backend, (zoneout_h, zoneout_c), kernel=False)
    if stores and stores.implementation == "triton":
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


def _reference_vjp(forward, layer: Layer, regs: Regularisers, grad_out, returned: tuple[str, ...], needs):
    """Vector-Jacobian product of a reference loop (``forward(layer, regs)``): autograd through it, run again here.
    Returns the gradients of the ``returned`` fields of ``layer``, ``None`` where not in ``needs`` (zeros where
    needed but unreached)."""
    inputs = {k: v for k, v in layer._asdict().items() if isinstance(v, torch.Tensor) and k != "lengths"}
    with _autograd_inside_op():
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        outputs = forward(layer._replace(**leaves), regs)
        pairs = [(o, g) for o, g in zip(outputs, grad_out) if g is not None]
        grads = dict.fromkeys(leaves)
        if pairs:
            found = torch.autograd.grad(
                [o for o, _ in pairs], list(leaves.values()), [g for _, g in pairs], allow_unused=True
            )
            grads.update(zip(leaves, found))
    result = []
    for name, need in zip(returned, needs):
        g = grads.get(name)
        if need and g is None and name in inputs:
            g = torch.zeros_like(inputs[name])
        result.append(g if need else None)
    return result


def _reference_backward(layer: Layer, regs: Regularisers, grad_out: GradOutputs, needs: Needs):
    """The reference LSTM's VJP: ``[dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr]`` (``db``: b_ih's, which is b_hh's)."""
    returned = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "w_hr")
    return _reference_vjp(_reference_forward, layer, regs, grad_out, returned, needs)


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
    layer, regs = _bundles(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask, zoneout_h, zoneout_c,
                           zoneout_seed)  # fmt: skip
    grad_out, needs = GradOutputs(dy, dh_n, dc_n), Needs(*needs)
    with _no_autocast(x):
        plan = dispatch.plan(x, w_hh, w_hr, backend, regs.zoneout, backward=True)
        if plan.implementation == "reference":
            grads = _reference_backward(layer, regs, grad_out, needs)
        else:
            grads = plan.backward(layer, regs, Saved(y, gates, cs), grad_out, needs)
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


# ----------------------------------------------------------------------------------------------------------
# the GRU: w_ih [D, 3H, I], w_hh [D, 3H, H], b_ih/b_hh [D, 3H] (gates r, z, n), h0 [D, B, H]
# ----------------------------------------------------------------------------------------------------------


def _gru_bundles(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, zoneout_h, seed):
    if lengths is not None and lengths.device != x.device:
        lengths = lengths.to(x.device)
    layer = Layer(x, h0, None, w_ih, w_hh, b_ih, b_hh, None, lengths, directions(w_ih.shape[0], reverse))
    return layer, Regularisers(h_mask, (zoneout_h, 0.0), seed)


def _reference_gru_forward(layer: Layer, regs: Regularisers):
    x, h0, _, w_ih, w_hh, b_ih, b_hh, _, lengths, dirs = layer
    runs = [
        reference.gru_layer(
            x, h0[d], w_ih[d], w_hh[d], b_ih[d] if b_ih is not None else None, b_hh[d] if b_hh is not None else None,
            lengths, rev, h_mask=regs.h_mask[d] if regs.h_mask is not None else None, zoneout=regs.zoneout[0],
            zoneout_masks=reference.zoneout_masks(regs.seed, d, *regs.zoneout) if regs.seed is not None else None,
        )  # fmt: skip
        for d, rev in enumerate(dirs)
    ]
    y, h_n = zip(*runs)
    return (y[0] if len(dirs) == 1 else torch.cat(y, dim=-1)), torch.stack(h_n)


@torch.library.custom_op("tritonlstm::gru_forward", mutates_args=())
def gru_forward(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    store_for_backward: bool,
    backend: str,
    h_mask: Tensor | None = None,
    zoneout_h: float = 0.0,
    zoneout_seed: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One GRU layer, every direction: ``(y [T,B,D*H], h_n [D,B,H], gates [D,T,B,4H])``.

    ``gates`` (r, z, n and the recurrent product's n rows, which the Triton backward needs) is empty unless
    ``store_for_backward`` on the Triton implementation. Regularisers as for :func:`layer_forward`, zoneout on h.
    """
    layer, regs = _gru_bundles(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, zoneout_h, zoneout_seed)
    with _no_autocast(x):
        plan = dispatch.plan(x, w_hh, None, backend, regs.zoneout, cell="gru")
        if plan.implementation == "reference":
            (y, h_n), gates = _reference_gru_forward(layer, regs), None
        else:
            y, h_n, gates = plan.forward(layer, regs, store_for_backward)
    return y, h_n, gates if gates is not None else x.new_empty(0)


@gru_forward.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, store_for_backward, backend, h_mask=None, zoneout_h=0.0,
      zoneout_seed=None):  # fmt: skip
    T, B = x.shape[0], x.shape[1]
    D, H = w_ih.shape[0], w_hh.shape[2]
    directions(D, reverse)
    stores = store_for_backward and dispatch.plan(x, w_hh, None, backend, (zoneout_h, 0.0), kernel=False, cell="gru")
    gates = x.new_empty(D, T, B, 4 * H) if stores and stores.implementation == "triton" else x.new_empty(0)
    return x.new_empty(T, B, D * H), x.new_empty(D, B, H), gates


def _reference_gru_backward(layer: Layer, regs: Regularisers, dy, dh_n, needs):
    """The reference GRU's VJP: ``[dx, dh0, dw_ih, dw_hh, db_ih, db_hh]``."""
    returned = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    return _reference_vjp(_reference_gru_forward, layer, regs, (dy, dh_n), returned, needs)


@torch.library.custom_op("tritonlstm::gru_backward", mutates_args=())
def gru_backward(
    dy: Tensor | None,
    dh_n: Tensor | None,
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    y: Tensor,
    gates: Tensor,
    reverse: bool,
    needs: list[bool],
    backend: str,
    h_mask: Tensor | None = None,
    zoneout_h: float = 0.0,
    zoneout_seed: Tensor | None = None,
) -> list[Tensor]:
    """Gradients ``[dx, dh0, dw_ih, dw_hh, db_ih, db_hh]``; an empty tensor for each one not in ``needs``."""
    layer, regs = _gru_bundles(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, zoneout_h, zoneout_seed)
    with _no_autocast(x):
        plan = dispatch.plan(x, w_hh, None, backend, regs.zoneout, backward=True, cell="gru")
        if plan.implementation == "reference":
            grads = _reference_gru_backward(layer, regs, dy, dh_n, needs)
        else:
            grads = plan.backward(layer, regs, y, gates, dy, dh_n, needs)
    return [g if g is not None else x.new_empty(0) for g in grads]


@gru_backward.register_fake
def _(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, gates, reverse, needs, backend, h_mask=None,
      zoneout_h=0.0, zoneout_seed=None):  # fmt: skip
    shapes = [x.shape, h0.shape, w_ih.shape, w_hh.shape, w_hh.shape[:2], w_hh.shape[:2]]
    return [x.new_empty(s) if need else x.new_empty(0) for need, s in zip(needs, shapes)]


def _gru_setup_context(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, _, backend, h_mask, zh, seed = inputs
    y, _, gates = output
    ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, gates, h_mask, seed)
    ctx.zoneout_h, ctx.reverse, ctx.backend = zh, reverse, backend
    ctx.has_bias = b_ih is not None
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)


def _gru_backward(ctx, dy, dh_n, _dgates):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, gates, h_mask, seed = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2], n[3], ctx.has_bias and n[4], ctx.has_bias and n[5]]
    grads = gru_backward(
        dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, gates, ctx.reverse, needs, ctx.backend, h_mask,
        ctx.zoneout_h, seed,
    )  # fmt: skip
    return (*(g if need else None for g, need in zip(grads, needs)), None, None, None, None, None, None, None)


gru_forward.register_autograd(_gru_backward, setup_context=_gru_setup_context)
onnx_graph.register_torchscript_symbolic()
