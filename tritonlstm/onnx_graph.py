"""What an LSTM or GRU layer becomes in ONNX, for both of torch's exporters.

``torch.onnx.export(..., dynamo=True)`` (the default): :func:`layer` runs in place of the custom op while the
exporter traces (:mod:`tritonlstm.functional` switches on ``torch.onnx.is_in_onnx_export()``). Without a
projection it emits ONNX's native ``LSTM`` operator through ``torch.onnx.ops.symbolic_multi_out``: gates reordered
from PyTorch's i, f, g, o to ONNX's i, o, f, c, ``direction`` forward, reverse or bidirectional, ``layout=0``,
``sequence_lens`` from ``lengths``, initial states wired. With ``proj_size > 0``, which ONNX's LSTM cannot express,
it is a ``torch.while_loop`` over time, which the exporter turns into an ONNX ``Loop``: dynamic in T and honouring
``lengths``. So is eval-mode zoneout (``h_t = p_h h_{t-1} + (1 - p_h) h_new``, the same for c), which the native
operator cannot express either. Nothing here unrolls the time loop. Training-only regularisers never get here
(:mod:`tritonlstm.functional` refuses to export them).

A GRU layer (:func:`gru_layer`) is ONNX's native ``GRU`` operator: gates reordered from PyTorch's r, z, n to ONNX's
z, r, h, ``linear_before_reset=1`` (torch's n gate: r multiplies the recurrent product with its bias), the same
directions, ``sequence_lens`` and initial state; with eval-mode zoneout, a ``Loop`` again.

``torch.onnx.export(..., dynamo=False)`` (TorchScript, deprecated by torch): the tracer records the custom op and
:func:`_torchscript_symbolic`, registered for it, writes the same native ``LSTM`` node; a projection is refused
with an error pointing to ``dynamo=True``, and so is eval-mode zoneout.
"""

from __future__ import annotations

import torch

OPSET = 18
# the LSTM operator's `layout` attribute exists from opset 14; torch's TorchScript exporter stops at 20
_TORCHSCRIPT_OPSETS = range(14, 21)

TRAINING_EXPORT = (
    "tritonlstm: recurrent dropout, input dropout, weight drop and the training form of zoneout draw random masks "
    "and never reach an ONNX graph; export the model in eval mode (model.eval())"
)


def _gate_order(hidden: int, device: torch.device) -> torch.Tensor:
    """Row indices taking PyTorch's gate blocks (i, f, g, o) to ONNX's (i, o, f, c)."""
    return torch.cat([torch.arange(k * hidden, (k + 1) * hidden, device=device) for k in (0, 3, 1, 2)])


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A fresh, contiguous copy of ``t``, whatever its layout, without asking what that layout is.

    The exporter traces an example input that is a view (``x[:, :3]``, a transpose, an ``expand``) with symbolic
    strides; ``.contiguous()`` branches on them, and an op such as ``linear``, whose matmul reshapes its input,
    asks whether they allow a view: either leaves ``aten.sym_stride`` in the graph, which ONNX cannot express.
    ``clone(memory_format=torch.contiguous_format)`` always copies, into strides made from the sizes alone.
    """
    return t.clone(memory_format=torch.contiguous_format)


def _direction(num_directions: int, reverse: bool) -> str:
    return "bidirectional" if num_directions == 2 else ("reverse" if reverse else "forward")


def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse: bool, zoneout=(0.0, 0.0)):
    """One layer (parameters stacked over D directions) as ONNX: ``(y [T,B,D*R], h_n [D,B,R], c_n [D,B,H])``.

    ``zoneout`` ``(p_h, p_c)``: the eval-mode expectation, written as a ``Loop``.
    """
    if w_hr is not None or any(zoneout):
        return _projected_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, zoneout)
    T, B = x.shape[0], x.shape[1]
    D, H = w_ih.shape[0], w_hh.shape[2]
    order = _gate_order(H, w_ih.device)
    bias = torch.cat([b_ih[:, order], b_hh[:, order]], dim=1) if b_ih is not None else None
    seq_lens = lengths.to(torch.int32) if lengths is not None else None
    Y, Y_h, Y_c = torch.onnx.ops.symbolic_multi_out(
        "LSTM",
        [x, w_ih[:, order], w_hh[:, order], bias, seq_lens, h0, c0],
        {"hidden_size": H, "direction": _direction(D, reverse), "layout": 0},
        dtypes=[x.dtype] * 3,
        shapes=[[T, D, B, H], [D, B, H], [D, B, H]],
    )
    y = Y[:, 0] if D == 1 else Y.permute(0, 2, 1, 3).reshape(T, B, D * H)
    return y, Y_h, Y_c


def _projected_direction(gx, h0, c0, w_hh, w_hr, lengths, reverse: bool, zoneout=(0.0, 0.0)):
    """One direction of LSTMP, or of an LSTM with eval-mode zoneout, as a ``torch.while_loop`` over time (an ONNX
    ``Loop``)."""
    T = gx.shape[0]
    p_h, p_c = zoneout
    # the loop body closes over these: plain tensors, not views, or tracing gives each view's base its own
    # symbolic sizes, which can end up tied to (and specialise) the batch size; copied without reading strides
    w_hh_t = _dense(w_hh.t())
    w_hr_t = _dense(w_hr.t()) if w_hr is not None else None
    h0, c0 = _dense(h0), _dense(c0)

    def more(t, h, c, y):
        return t < T

    def step(t, h, c, y):
        at = (T - 1 - t if reverse else t).reshape(1)
        gates = gx.index_select(0, at)[0] + h @ w_hh_t
        i, f, g, o = gates.chunk(4, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if w_hr_t is not None:
            h_new = h_new @ w_hr_t
        if p_h > 0:
            h_new = p_h * h + (1 - p_h) * h_new
        if p_c > 0:
            c_new = p_c * c + (1 - p_c) * c_new
        if lengths is not None:
            own = (at < lengths)[:, None]
            h_new, c_new, y_t = torch.where(own, h_new, h), torch.where(own, c_new, c), torch.where(own, h_new, 0.0)
        else:
            y_t = h_new
        return t + 1, h_new, c_new, y.index_copy(0, at, y_t[None])

    start = torch.zeros((), dtype=torch.int64, device=gx.device)
    y0 = gx.new_zeros(T, h0.shape[0], h0.shape[1])
    _, h_n, c_n, y = torch.while_loop(more, step, (start, h0, c0, y0))
    return y, h_n, c_n


def _projected_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse: bool, zoneout=(0.0, 0.0)):
    D = w_ih.shape[0]
    dirs = (False, True) if D == 2 else (reverse,)
    # the input as the example gave it may be any view (batch-first x[:, :3] arrives here transposed, with a free
    # symbolic stride); linear's matmul would ask whether those strides let it reshape x to 2-D
    x = _dense(x)
    runs = []
    for d, rev in enumerate(dirs):
        gx = torch.nn.functional.linear(x, w_ih[d], b_ih[d] + b_hh[d] if b_ih is not None else None)
        w_hr_d = w_hr[d] if w_hr is not None else None
        runs.append(_projected_direction(gx, h0[d], c0[d], w_hh[d], w_hr_d, lengths, rev, zoneout))
    y, h_n, c_n = zip(*runs)
    return (y[0] if D == 1 else torch.cat(y, dim=-1)), torch.stack(h_n), torch.stack(c_n)


def _constant(value):
    """The Python value of a constant argument in the TorchScript exporter's graph."""
    v = value.toIValue()  # prim::Constant, or onnx::Constant holding a 0-d tensor
    return v if v is not None else value.node().t("value").item()


def _torchscript_symbolic(g, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, store_for_backward, backend,
                          h_mask=None, zoneout_h=None, zoneout_c=None, zoneout_seed=None):  # fmt: skip
    """``tritonlstm::layer_forward`` for the TorchScript exporter: the native ``LSTM`` node."""
    for arg in (h_mask, zoneout_seed):
        if arg is not None and not arg.node().mustBeNone():
            raise RuntimeError(TRAINING_EXPORT)
    if any(z is not None and float(_constant(z)) > 0 for z in (zoneout_h, zoneout_c)):
        raise RuntimeError(
            "tritonlstm: an LSTM with zoneout has no ONNX LSTM operator (eval mode takes the expectation "
            "p*h_prev + (1-p)*h_new) and the TorchScript exporter cannot write its loop; export with "
            "torch.onnx.export(..., dynamo=True) (the default), which writes an ONNX Loop, or with "
            "tritonlstm.export.export_onnx"
        )
    if not w_hr.node().mustBeNone():
        raise RuntimeError(
            "tritonlstm: an LSTM with proj_size > 0 has no ONNX LSTM operator and the TorchScript exporter cannot "
            "write its loop; export with torch.onnx.export(..., dynamo=True) (the default), which writes an ONNX "
            "Loop, or with tritonlstm.export.export_onnx"
        )
    shape = w_ih.type().sizes() if w_ih.type().kind() == "TensorType" else None
    if not shape or len(shape) != 3 or w_hh.type().sizes() is None:
        raise RuntimeError("tritonlstm: the TorchScript exporter needs the LSTM weights' shapes")
    D, G = shape[0], shape[1]
    H = G // 4
    rev = bool(_constant(reverse))
    order = g.op("Constant", value_t=_gate_order(H, torch.device("cpu")))
    W = g.op("Gather", w_ih, order, axis_i=1)
    R = g.op("Gather", w_hh, order, axis_i=1)
    inputs = [x, W, R]
    if not b_ih.node().mustBeNone():
        inputs.append(g.op("Concat", g.op("Gather", b_ih, order, axis_i=1), g.op("Gather", b_hh, order, axis_i=1), axis_i=1))
    else:
        inputs.append(g.op("Constant", value_t=torch.zeros(D, 2 * G)))
    if not lengths.node().mustBeNone():
        inputs.append(g.op("Cast", lengths, to_i=6))  # INT32
    else:
        inputs.append(g.op("prim::Constant").setType(torch._C.OptionalType.ofTensor()))
    inputs += [h0, c0]
    Y, Y_h, Y_c = g.op("LSTM", *inputs, hidden_size_i=H, direction_s=_direction(D, rev), layout_i=0, outputs=3)
    empty = g.op("Constant", value_t=torch.zeros(0))
    return _ts_sequence_output(g, Y, D), Y_h, Y_c, empty, empty


def _ts_sequence_output(g, Y, D: int):
    """ONNX's ``Y [T, D, B, H]`` as the op's ``y [T, B, D*H]`` (the directions side by side), TorchScript form."""
    if D == 1:
        return g.op("Squeeze", Y, g.op("Constant", value_t=torch.tensor([1])))
    y = g.op("Transpose", Y, perm_i=[0, 2, 1, 3])
    return g.op("Reshape", y, g.op("Constant", value_t=torch.tensor([0, 0, -1])))


def _gru_gate_order(hidden: int, device: torch.device) -> torch.Tensor:
    """Row indices taking PyTorch's GRU gate blocks (r, z, n) to ONNX's (z, r, h)."""
    return torch.cat([torch.arange(k * hidden, (k + 1) * hidden, device=device) for k in (1, 0, 2)])


def gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse: bool, zoneout: float = 0.0):
    """One GRU layer (parameters stacked over D directions) as ONNX: ``(y [T,B,D*H], h_n [D,B,H])``; with
    eval-mode ``zoneout`` (``h_t = p h_{t-1} + (1 - p) h_new``) a ``Loop`` per direction."""
    if zoneout:
        return _gru_loop_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, zoneout)
    T, B = x.shape[0], x.shape[1]
    D, H = w_ih.shape[0], w_hh.shape[2]
    order = _gru_gate_order(H, w_ih.device)
    bias = torch.cat([b_ih[:, order], b_hh[:, order]], dim=1) if b_ih is not None else None
    seq_lens = lengths.to(torch.int32) if lengths is not None else None
    Y, Y_h = torch.onnx.ops.symbolic_multi_out(
        "GRU",
        [x, w_ih[:, order], w_hh[:, order], bias, seq_lens, h0],
        {"hidden_size": H, "direction": _direction(D, reverse), "layout": 0, "linear_before_reset": 1},
        dtypes=[x.dtype] * 2,
        shapes=[[T, D, B, H], [D, B, H]],
    )
    y = Y[:, 0] if D == 1 else Y.permute(0, 2, 1, 3).reshape(T, B, D * H)
    return y, Y_h


def _gru_loop_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse: bool, p: float):
    D = w_ih.shape[0]
    x = _dense(x)  # see _projected_layer
    runs = []
    for d, rev in enumerate((False, True) if D == 2 else (reverse,)):
        gx = torch.nn.functional.linear(x, w_ih[d], b_ih[d] if b_ih is not None else None)
        w_hh_t, h_init = _dense(w_hh[d].t()), _dense(h0[d])
        b_hh_d = _dense(b_hh[d]) if b_hh is not None else None
        T = gx.shape[0]

        def more(t, h, y):
            return t < T

        def step(t, h, y, gx=gx, w_hh_t=w_hh_t, b_hh_d=b_hh_d, rev=rev):
            at = (T - 1 - t if rev else t).reshape(1)
            gh = h @ w_hh_t if b_hh_d is None else h @ w_hh_t + b_hh_d
            gx_r, gx_z, gx_n = gx.index_select(0, at)[0].chunk(3, dim=-1)
            gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
            h_new = (1 - z) * torch.tanh(gx_n + r * gh_n) + z * h
            h_new = p * h + (1 - p) * h_new
            if lengths is not None:
                own = (at < lengths)[:, None]
                h_new, y_t = torch.where(own, h_new, h), torch.where(own, h_new, 0.0)
            else:
                y_t = h_new
            return t + 1, h_new, y.index_copy(0, at, y_t[None])

        start = torch.zeros((), dtype=torch.int64, device=gx.device)
        _, h_n, y = torch.while_loop(more, step, (start, h_init, gx.new_zeros(T, h_init.shape[0], h_init.shape[1])))
        runs.append((y, h_n))
    y, h_n = zip(*runs)
    return (y[0] if D == 1 else torch.cat(y, dim=-1)), torch.stack(h_n)


def _gru_torchscript_symbolic(g, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, store_for_backward, backend,
                              h_mask=None, zoneout_h=None, zoneout_seed=None):  # fmt: skip
    """``tritonlstm::gru_forward`` for the TorchScript exporter: the native ``GRU`` node."""
    for arg in (h_mask, zoneout_seed):
        if arg is not None and not arg.node().mustBeNone():
            raise RuntimeError(TRAINING_EXPORT)
    if zoneout_h is not None and float(_constant(zoneout_h)) > 0:
        raise RuntimeError(
            "tritonlstm: a GRU with zoneout has no ONNX GRU operator and the TorchScript exporter cannot write its "
            "loop; export with torch.onnx.export(..., dynamo=True) (the default), which writes an ONNX Loop, or "
            "with tritonlstm.export.export_onnx"
        )
    shape = w_ih.type().sizes() if w_ih.type().kind() == "TensorType" else None
    if not shape or len(shape) != 3:
        raise RuntimeError("tritonlstm: the TorchScript exporter needs the GRU weights' shapes")
    D, G = shape[0], shape[1]
    H = G // 3
    order = g.op("Constant", value_t=_gru_gate_order(H, torch.device("cpu")))
    inputs = [x, g.op("Gather", w_ih, order, axis_i=1), g.op("Gather", w_hh, order, axis_i=1)]
    if not b_ih.node().mustBeNone():
        biases = (g.op("Gather", b, order, axis_i=1) for b in (b_ih, b_hh))
        inputs.append(g.op("Concat", *biases, axis_i=1))
    else:
        inputs.append(g.op("Constant", value_t=torch.zeros(D, 2 * G)))
    if not lengths.node().mustBeNone():
        inputs.append(g.op("Cast", lengths, to_i=6))  # INT32
    else:
        inputs.append(g.op("prim::Constant").setType(torch._C.OptionalType.ofTensor()))
    inputs.append(h0)
    Y, Y_h = g.op("GRU", *inputs, hidden_size_i=H, direction_s=_direction(D, bool(_constant(reverse))), layout_i=0,
                  linear_before_reset_i=1, outputs=2)  # fmt: skip
    return _ts_sequence_output(g, Y, D), Y_h, g.op("Constant", value_t=torch.zeros(0))


def register_torchscript_symbolic() -> None:
    """Let ``torch.onnx.export(..., dynamo=False)`` translate ``tritonlstm::layer_forward`` and ``gru_forward``."""
    for opset in _TORCHSCRIPT_OPSETS:
        torch.onnx.register_custom_op_symbolic("tritonlstm::layer_forward", _torchscript_symbolic, opset)
        torch.onnx.register_custom_op_symbolic("tritonlstm::gru_forward", _gru_torchscript_symbolic, opset)
