"""The Triton LSTM layer as ``torch.library`` custom ops, opaque and shape-polymorphic to the compiler stack.

``torch.ops.tritonlstm.layer_forward`` and ``torch.ops.tritonlstm.layer_backward`` wrap the launchers of
:mod:`tritonlstm.kernels`; ``register_fake`` gives their output shapes from the input shapes (symbolic under
dynamo, AOTAutograd and torch.export, so batch size and sequence length stay dynamic), and ``register_autograd``
connects them: tensors in, tensors out, only tensors saved.

Optional results come back as empty tensors (a custom op returns tensors, never ``None``): the forward's
``gates``/``cs`` when nothing will be differentiated, and each gradient the backward was not asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonlstm.backend import kernels


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer and direction: ``(y [T,B,R], h_n [B,R], c_n [B,H], gates [T,B,4H], cs [T,B,H])``.

    ``gates`` and ``cs`` (what the backward needs) are empty unless ``store_for_backward``.
    """
    y, h_n, c_n, gates, cs = kernels().lstm_layer_forward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse=reverse, store_for_backward=store_for_backward
    )
    if gates is None:
        gates, cs = x.new_empty(0), x.new_empty(0, dtype=_acc_dtype(x.dtype))
    return y, h_n, c_n, gates, cs


@layer_forward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, store_for_backward):
    T, B = x.shape[0], x.shape[1]
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    acc = _acc_dtype(x.dtype)
    y, h_n, c_n = x.new_empty(T, B, R), x.new_empty(B, R), x.new_empty(B, H)
    if store_for_backward:
        return y, h_n, c_n, x.new_empty(T, B, 4 * H), x.new_empty(T, B, H, dtype=acc)
    return y, h_n, c_n, x.new_empty(0), x.new_empty(0, dtype=acc)


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
    y: Tensor,
    gates: Tensor,
    cs: Tensor,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    needs: list[bool],
) -> list[Tensor]:
    """Gradients ``[dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr]``; an empty tensor for each one not in ``needs``."""
    grads = kernels().lstm_layer_backward(
        dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, reverse=reverse, needs=tuple(needs)
    )
    return [g if g is not None else x.new_empty(0) for g in grads]


@layer_backward.register_fake
def _(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, reverse, needs):
    shapes = [x.shape, h0.shape, c0.shape, w_ih.shape, w_hh.shape, w_hh.shape[:1], w_hr.shape if w_hr is not None else None]
    return [x.new_empty(s) if need and s is not None else x.new_empty(0) for need, s in zip(needs, shapes)]


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, _ = inputs
    y, _, _, gates, cs = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, lengths, y, gates, cs)
    ctx.reverse = reverse
    ctx.has_bias = b_ih is not None
    ctx.has_proj = w_hr is not None
    ctx.mark_non_differentiable(gates, cs)
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    x, h0, c0, w_ih, w_hh, w_hr, lengths, y, gates, cs = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_db = ctx.has_bias and (n[5] or n[6])
    needs = [n[0], n[1], n[2], n[3], n[4], need_db, ctx.has_proj and n[7]]
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = layer_backward(
        dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, ctx.reverse, needs
    )
    grads = [g if need else None for g, need in zip((dx, dh0, dc0, dw_ih, dw_hh), needs)]
    db_ih = db if need_db and n[5] else None
    db_hh = (db.clone() if db_ih is not None else db) if need_db and n[6] else None
    return (*grads, db_ih, db_hh, dw_hr if needs[6] else None, None, None, None)


layer_forward.register_autograd(_backward, setup_context=_setup_context)
