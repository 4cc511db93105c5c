"""The GRU's per-step kernels: one launch per time step and direction, on the LSTM's per-step machinery.

The cell is torch.nn.GRU's (gates r, z, n in torch's gate-major order, ``linear_before_reset``)::

    r = sigmoid(gx_r + gh_r)    z = sigmoid(gx_z + gh_z)    n = tanh(gx_n + r * gh_n)    h_t = (1 - z) n + z h_{t-1}

with ``gx = x_t W_ih^T + b_ih`` (one GEMM over every step, b_hh's r and z rows folded in) and
``gh = (h_{t-1} * mask) W_hh^T + b_hh``. What differs from the LSTM (:mod:`tritonlstm.kernels.step`) is the
epilogue and the gate count: three gate blocks of G = 3H rows, kept gate-major (three dots of BLOCK_H columns, one
per gate, instead of the LSTM's one dot over interleaved columns), and no cell state. Everything else is shared:
the rows' validity with ``lengths``, h_{t-1} from the previous step's output or h0, the gradient reaching h_t
through the next step's gates, the Philox zoneout masks, the tiles (:func:`tritonlstm.kernels.config.gru_step_config`).

Forward, per program (BLOCK_B rows x BLOCK_H units): the three recurrent dots, the gates, h_t, its store; when a
backward follows, the activated r, z, n and ``gh_n`` (what r multiplied) go to ``gates [T, B, 4H]``.

Backward, in reverse processing order: dh_t = dy_t + dGh_{next} W_hh (* mask) + dcarry, where ``dcarry`` holds
what reached h_t without a gate: z_{t+1} * dh_{t+1} (the update's direct path), zoneout's kept share, h_n's
gradient and, with lengths, skipped steps'. Each step writes ``dg [T, B, 4H]``: ``dgh`` (the gradient of gh:
its r, z and n rows) then ``dan`` (of n's pre-activation, which is gx_n's); gx's gradient is dgh's r and z blocks
with dan. Weight, input and bias gradients are GEMMs and sums after the loop; nothing uses atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlstm.kernels.common import NONE, Layer, Regularisers, check_dtype, dw_hh
from tritonlstm.kernels.config import gru_step_config
from tritonlstm.kernels.jit import ACC, tanh, zoneout_rates
from tritonlstm.kernels.runtime import acc_dtype, input_precision, launch_guard
from tritonlstm.kernels.step import _grad_into_h, _h_prev_tile, _row_validity, _step_or_initial, _tiles


@triton.jit
def _gru_fwd_dots(w_ptr, h_prev_ptr, h0_ptr, hm_ptr, o_b, o_u, m_b, m_u, v_prev, stride_y, H: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                  HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):  # fmt: skip
    """(h_{t-1} * mask) @ W_hh^T ([H, 3H] at w_ptr) for the r, z and n columns of units o_u, W streamed from
    global memory in BLOCK_K rows: three [BLOCK_B, BLOCK_H] tiles. h_{t-1} is the previous step's output at
    h_prev_ptr, or h0 for rows whose previous step was not their own (both with y's row stride)."""
    b_ar = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    b_az = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    b_an = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    for k in range(0, H, BLOCK_K):
        o_k = k + tl.arange(0, BLOCK_K)
        m_k = o_k < H
        b_hp = _h_prev_tile(h_prev_ptr, h0_ptr, o_b, o_k, m_b, m_k, v_prev, stride_y, stride_y, HAS_LENGTHS)
        if HAS_MASK:
            b_hm = tl.load(hm_ptr + o_b[:, None] * stride_y + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
            b_hp = (b_hp.to(ACC_DTYPE) * b_hm.to(ACC_DTYPE)).to(w_ptr.dtype.element_ty)
        p_w = w_ptr + o_k[:, None] * (3 * H) + o_u[None, :]
        m_w = m_k[:, None] & m_u[None, :]
        b_ar += tl.dot(b_hp, tl.load(p_w, mask=m_w, other=0.0), out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
        b_az += tl.dot(b_hp, tl.load(p_w + H, mask=m_w, other=0.0), out_dtype=ACC_DTYPE,
                       input_precision=INPUT_PRECISION)  # fmt: skip
        b_an += tl.dot(b_hp, tl.load(p_w + 2 * H, mask=m_w, other=0.0), out_dtype=ACC_DTYPE,
                       input_precision=INPUT_PRECISION)  # fmt: skip
    return b_ar, b_az, b_an


@triton.jit
def _gru_fwd_epilogue(
    b_ar, b_az, b_an, p_gx, bhn_ptr, b_hu, p_y, p_g, zs_ptr, zo_h, zo_stream, t, o_b, o_u, m_b, m_u, v_t, B, poison,
    H: tl.constexpr, STORE_GATES: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    ZONEOUT: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    """The GRU cell of one [rows, units] tile from its three recurrent products and h_{t-1} (``b_hu``, unmasked):
    stores h_t at p_y (zero past a row's length; NaN after a failed wait: ``poison``) and, with STORE_GATES, r, z,
    n and gh_n at p_g (four blocks H apart); p_gx points at the tile's gx_r (gx_z and gx_n H and 2H further)."""
    m_bu = m_b[:, None] & m_u[None, :]
    if HAS_BIAS:
        b_an += tl.load(bhn_ptr + o_u, mask=m_u, other=0.0).to(ACC_DTYPE)[None, :]
    b_r = tl.sigmoid(tl.load(p_gx, mask=m_bu, other=0.0).to(ACC_DTYPE) + b_ar)
    b_z = tl.sigmoid(tl.load(p_gx + H, mask=m_bu, other=0.0).to(ACC_DTYPE) + b_az)
    b_n = tanh(tl.load(p_gx + 2 * H, mask=m_bu, other=0.0).to(ACC_DTYPE) + b_r * b_an)
    b_h = (1.0 - b_z) * b_n + b_z * b_hu
    if ZONEOUT > 0:
        b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_h = b_kh * b_hu + (1.0 - b_kh) * b_h
    if HAS_LENGTHS:
        b_h = tl.where(v_t[:, None], b_h, 0.0)
    tl.store(p_y, (b_h + poison).to(p_y.dtype.element_ty), mask=m_bu)
    if STORE_GATES:
        tl.store(p_g, (b_r + poison).to(p_g.dtype.element_ty), mask=m_bu)
        tl.store(p_g + H, (b_z + poison).to(p_g.dtype.element_ty), mask=m_bu)
        tl.store(p_g + 2 * H, (b_n + poison).to(p_g.dtype.element_ty), mask=m_bu)
        tl.store(p_g + 3 * H, (b_an + poison).to(p_g.dtype.element_ty), mask=m_bu)
    return b_h


@triton.jit
def _gru_fwd_tile(
    gx_t, w_ptr, bhn_ptr, y_ptr, h0_ptr, gates_t, hm_ptr, zs_ptr, zo_h, zo_stream, o_b, o_u, m_b, m_u, v_t, v_prev,
    B, T, t, t_prev, stride_gx, stride_y_t, stride_y, stride_g,
    H: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, STORE_GATES: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Step t of one [rows, units] tile, W_hh streamed from global memory: what a per-step program does, and what
    the batch-owned sequence kernel does for each unit tile of each step (so the two agree bit for bit).
    ``gx_t``/``gates_t`` point at step t of their buffers; y's step t_prev (h0 out of range) is h_{t-1}."""
    h_prev_ptr = _step_or_initial(y_ptr, t_prev, T, stride_y_t, h0_ptr)
    b_ar, b_az, b_an = _gru_fwd_dots(
        w_ptr, h_prev_ptr, h0_ptr, hm_ptr, o_b, o_u, m_b, m_u, v_prev, stride_y, H, BLOCK_B, BLOCK_H, BLOCK_K,
        HAS_LENGTHS, HAS_MASK, ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip
    b_hu = _h_prev_tile(h_prev_ptr, h0_ptr, o_b, o_u, m_b, m_u, v_prev, stride_y, stride_y, HAS_LENGTHS).to(ACC_DTYPE)
    p_gx = gx_t + o_b[:, None] * stride_gx + o_u[None, :]
    p_y = y_ptr + t.to(tl.int64) * stride_y_t + o_b[:, None] * stride_y + o_u[None, :]
    p_g = gates_t + o_b[:, None] * stride_g + o_u[None, :]
    _gru_fwd_epilogue(b_ar, b_az, b_an, p_gx, bhn_ptr, b_hu, p_y, p_g, zs_ptr, zo_h, zo_stream, t, o_b, o_u, m_b, m_u,
                      v_t, B, 0.0, H, STORE_GATES, HAS_BIAS, HAS_LENGTHS, ZONEOUT, ACC_DTYPE)  # fmt: skip


@triton.jit(do_not_specialize=["t", "t_prev", "zo_stream"])
def _gru_fwd_step_kernel(
    gx_ptr,  # [T, B, 3H]  x_t W_ih^T + b_ih (+ b_hh's r and z rows), gate-major r, z, n
    w_ptr,  # [H, 3H]  W_hh^T
    bhn_ptr,  # [H]  b_hh's n rows (read if HAS_BIAS)
    y_ptr,  # [T, B, H]  out: y[t] = h_t (zeros past a row's length); y[t_prev] is the previous step's output
    h0_ptr,  # [B, H]  y's row stride
    gates_ptr,  # [T, B, 4H]  out if STORE_GATES: r, z, n and gh_n
    len_ptr,  # [B]  int32 (read if HAS_LENGTHS)
    hm_ptr,  # [B, H]  recurrent dropout mask on h_{t-1} (read if HAS_MASK), y's row stride
    zs_ptr,  # [1]  int64 zoneout seed (read if ZONEOUT == 2)
    zo_h: tl.float64,
    zo_stream,  # 2 * direction (the LSTM's h stream)
    B,
    T,
    t,
    t_prev,  # the step before t in processing order (-1 or T at the start: h0)
    stride_gx_t,
    stride_gx,
    stride_y_t,
    stride_y,
    stride_g_t,
    stride_g,
    H: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STORE_GATES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b, m_u = o_b < B, o_u < H
    v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)
    _gru_fwd_tile(
        gx_ptr + t.to(tl.int64) * stride_gx_t, w_ptr, bhn_ptr, y_ptr, h0_ptr, gates_ptr + t.to(tl.int64) * stride_g_t,
        hm_ptr, zs_ptr, zo_h, zo_stream, o_b, o_u, m_b, m_u, v_t, v_prev, B, T, t, t_prev, stride_gx, stride_y_t,
        stride_y, stride_g, H, BLOCK_B, BLOCK_H, BLOCK_K, STORE_GATES, HAS_BIAS, HAS_LENGTHS, HAS_MASK, ZONEOUT,
        ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip


@triton.jit
def _gru_bwd_epilogue(
    b_rec, b_dh, gates_t, h_prev_ptr, h0_ptr, dcarry_ptr, dg_t, zs_ptr, zo_h, zo_stream, t, o_b, o_u, m_b, m_u, v_t,
    v_prev, B, stride_s, stride_y, stride_c, stride_g, poison, H: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, HAS_LENGTHS: tl.constexpr, ZONEOUT: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    """The GRU cell's gradient for one [rows, units] tile: ``b_dh`` is all that reaches h_t, ``b_rec`` its part
    through the state (what a skipped step carries on). Reads the forward's r, z, n, gh_n (``gates_t``, four
    blocks H apart) and h_{t-1}; stores what reaches h_{t-1} without a gate to dcarry (row stride ``stride_c``)
    and dgh (r, z, n rows) then dan to ``dg_t``'s four blocks (NaN after a failed wait: ``poison``)."""
    m_bu = m_b[:, None] & m_u[None, :]
    p_s = gates_t + o_b[:, None] * stride_s + o_u[None, :]
    b_r = tl.load(p_s, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_z = tl.load(p_s + H, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_n = tl.load(p_s + 2 * H, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_an = tl.load(p_s + 3 * H, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_hp = _h_prev_tile(h_prev_ptr, h0_ptr, o_b, o_u, m_b, m_u, v_prev, stride_y, stride_y, HAS_LENGTHS).to(ACC_DTYPE)
    b_carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    if ZONEOUT > 0:
        b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_carry = b_kh * b_dh
        b_dh = (1.0 - b_kh) * b_dh
    b_carry += b_z * b_dh
    b_dan = b_dh * (1.0 - b_z) * (1.0 - b_n * b_n)
    b_dar = b_dan * b_an * b_r * (1.0 - b_r)
    b_daz = b_dh * (b_hp - b_n) * b_z * (1.0 - b_z)
    b_dhn = b_dan * b_r
    if HAS_LENGTHS:
        b_dan = tl.where(v_t[:, None], b_dan, 0.0)
        b_dar = tl.where(v_t[:, None], b_dar, 0.0)
        b_daz = tl.where(v_t[:, None], b_daz, 0.0)
        b_dhn = tl.where(v_t[:, None], b_dhn, 0.0)
        b_carry = tl.where(v_t[:, None], b_carry, b_rec)
    p_c = dcarry_ptr + o_b[:, None] * stride_c + o_u[None, :]
    tl.store(p_c, (b_carry + poison).to(dcarry_ptr.dtype.element_ty), mask=m_bu)
    p_g = dg_t + o_b[:, None] * stride_g + o_u[None, :]
    tl.store(p_g, (b_dar + poison).to(dg_t.dtype.element_ty), mask=m_bu)
    tl.store(p_g + H, (b_daz + poison).to(dg_t.dtype.element_ty), mask=m_bu)
    tl.store(p_g + 2 * H, (b_dhn + poison).to(dg_t.dtype.element_ty), mask=m_bu)
    tl.store(p_g + 3 * H, (b_dan + poison).to(dg_t.dtype.element_ty), mask=m_bu)


@triton.jit
def _gru_bwd_tile(
    dg_ptr, w_ptr, dy_ptr, dcarry_ptr, gates_ptr, y_ptr, h0_ptr, hm_ptr, zs_ptr, zo_h, zo_stream, o_b, o_u, m_b, m_u,
    v_t, v_prev, B, T, t, t_next, t_prev, stride_g_t, stride_g, stride_s_t, stride_s, stride_dy_t, stride_dy,
    stride_y_t, stride_y, H: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Backward step t of one [rows, units] tile, W_hh streamed from global memory (per-step programs and the
    batch-owned sequence kernel alike)."""
    # dcarry feeds every step (the update's direct path), so it is added as the LSTM adds it with lengths
    b_rec, b_dh = _grad_into_h(
        dg_ptr, w_ptr, dy_ptr, dcarry_ptr, hm_ptr, o_b, o_u, m_b, m_u, v_t, t, t_next, T, 3 * H, H,
        stride_g_t, stride_g, stride_dy_t, stride_dy, BLOCK_B, BLOCK_H, BLOCK_K, HAS_DY, True, HAS_MASK,
        ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip
    h_prev_ptr = _step_or_initial(y_ptr, t_prev, T, stride_y_t, h0_ptr)
    _gru_bwd_epilogue(
        b_rec, b_dh, gates_ptr + t.to(tl.int64) * stride_s_t, h_prev_ptr, h0_ptr, dcarry_ptr,
        dg_ptr + t.to(tl.int64) * stride_g_t, zs_ptr, zo_h, zo_stream, t, o_b, o_u, m_b, m_u, v_t, v_prev, B,
        stride_s, stride_y, stride_dy, stride_g, 0.0, H, BLOCK_B, BLOCK_H, HAS_LENGTHS, ZONEOUT, ACC_DTYPE,
    )  # fmt: skip


@triton.jit(do_not_specialize=["t", "t_next", "t_prev", "zo_stream"])
def _gru_bwd_step_kernel(
    dg_ptr,  # [T, B, 4H]  out: dg[t], the gradients of gh (r, z, n rows: dgh) then of n's pre-activation (dan);
    #          dg[t_next]'s dgh is read
    w_ptr,  # [3H, H]  W_hh
    dy_ptr,  # [T, B, H]  (read if HAS_DY)
    dcarry_ptr,  # [B, H]  what reaches h_t without a gate (see the module); dy's row stride, accumulator dtype
    gates_ptr,  # [T, B, 4H]  the forward's r, z, n, gh_n
    y_ptr,  # [T, B, H]  the forward's outputs (h_{t-1})
    h0_ptr,  # [B, H]  y's row stride
    len_ptr,
    hm_ptr,  # [B, H]  recurrent dropout mask (read if HAS_MASK), dy's row stride
    zs_ptr,
    zo_h: tl.float64,
    zo_stream,
    B,
    T,
    t,
    t_next,  # the step processed before t (its forward successor), -1 or T on the first step
    t_prev,  # its forward predecessor (h0 when -1 or T)
    stride_g_t,  # dg's strides per step and row
    stride_g,
    stride_s_t,  # gates' strides
    stride_s,
    stride_dy_t,
    stride_dy,
    stride_y_t,
    stride_y,
    H: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b, m_u = o_b < B, o_u < H
    v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)
    _gru_bwd_tile(
        dg_ptr, w_ptr, dy_ptr, dcarry_ptr, gates_ptr, y_ptr, h0_ptr, hm_ptr, zs_ptr, zo_h, zo_stream, o_b, o_u, m_b,
        m_u, v_t, v_prev, B, T, t, t_next, t_prev, stride_g_t, stride_g, stride_s_t, stride_s, stride_dy_t,
        stride_dy, stride_y_t, stride_y, H, BLOCK_B, BLOCK_H, BLOCK_K, HAS_DY, HAS_LENGTHS, HAS_MASK, ZONEOUT,
        ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# launchers: the GRU's Layer bundle has no c0 and no w_hr; its gradients are (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)
# ----------------------------------------------------------------------------------------------------------


def _check_config(config: dict) -> dict:
    if config["BLOCK_B"] < 16 or config["BLOCK_H"] < 16 or config["BLOCK_K"] < 16:
        raise ValueError(f"tl.dot needs every tile dimension >= 16, got {config}")
    return config


def forward(layer: Layer, regs: Regularisers = NONE, store: bool = True, config: dict | None = None, err=None):
    """One GRU layer on the step kernels, direction after direction: ``(y [T, B, D*H], h_n [D, B, H], gates)``.

    ``gates [D, T, B, 4H]`` (r, z, n, gh_n; input dtype) is what :func:`backward` needs, ``None`` unless ``store``.
    Lengths, recurrent dropout (``regs.h_mask``) and zoneout (``regs.zoneout[0]``, on h) as for the LSTM's
    :func:`tritonlstm.kernels.step.forward`. ``err`` is unused: nothing here waits.
    """
    check_dtype(layer.x.dtype)
    runs = [_forward_one(layer.direction(d), regs, d, store, config) for d in range(len(layer.reverse))]
    y, h_n, gates = zip(*runs)
    y = y[0] if len(runs) == 1 else torch.cat(y, dim=-1)
    return y, torch.stack(h_n), torch.stack(gates) if store else None


def input_projection(layer: Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every direction's ``gx = x W_ih^T + b_ih`` with b_hh's r and z rows folded in (``[D, T, B, 3H]``, one
    (batched) GEMM over every step), and b_hh's n rows (``[D, H]``, which r multiplies), ``None`` without biases."""
    x = layer.x
    T, B, I = x.shape
    D, H = layer.w_hh.shape[0], layer.w_hh.shape[2]
    w_t = layer.w_ih.transpose(1, 2)  # [D, I, 3H]
    x2 = x.reshape(T * B, I)
    bias = bhn = None
    if layer.b_ih is not None:
        bias = torch.cat([layer.b_ih[:, : 2 * H] + layer.b_hh[:, : 2 * H], layer.b_ih[:, 2 * H :]], dim=1)
        bhn = layer.b_hh[:, 2 * H :].contiguous()
    if D == 1:
        gx = torch.addmm(bias[0], x2, w_t[0]) if bias is not None else torch.mm(x2, w_t[0])
    else:
        x3 = x2.expand(D, T * B, I)
        gx = torch.baddbmm(bias[:, None], x3, w_t) if bias is not None else torch.bmm(x3, w_t)
    return gx.view(D, T, B, 3 * H), bhn


def final_state(y: torch.Tensor, h0: torch.Tensor, lengths, reverse: bool) -> torch.Tensor:
    """h_n of one direction from its outputs ``y [T, B, H]``: each row's last step (time 0 in reverse), h0 when B
    is 0."""
    T, B = y.shape[0], y.shape[1]
    if B == 0:
        return h0.clone()
    if lengths is not None and not reverse:
        return y[lengths.long() - 1, torch.arange(B, device=y.device)]
    return y[0 if reverse else T - 1].clone()


def _forward_one(layer: Layer, regs: Regularisers, d: int, store: bool, config):
    x, lengths, reverse = layer.x, layer.lengths, layer.reverse[0]
    h0, w_hh = layer.h0[0], layer.w_hh[0]
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[1]
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    gx, bhn = input_projection(layer)
    gx, bhn = gx[0], bhn[0] if bhn is not None else None
    w_t = w_hh.t().contiguous()  # [H, 3H]
    y = torch.empty(T, B, H, device=x.device, dtype=dtype)
    gates = torch.empty(T, B, 4 * H, device=x.device, dtype=dtype) if store else y  # y: unwritten without store
    h0 = h0.contiguous()
    lens = lengths.to(device=x.device, dtype=torch.int32).contiguous() if lengths is not None else h0  # h0: unread
    hm = regs.h_mask[d].to(dtype).contiguous() if regs.h_mask is not None else h0
    zs = regs.seed if regs.seed is not None else h0
    cfg = _check_config(config or gru_step_config(B, H, H, dtype))
    grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))
    strides = (gx.stride(0), gx.stride(1), y.stride(0), y.stride(1), gates.stride(0), gates.stride(1))
    delta = 1 if reverse else -1
    with launch_guard(x.device):
        for t in range(T - 1, -1, -1) if reverse else range(T):
            if B == 0:
                break
            _gru_fwd_step_kernel[grid](
                gx, w_t, bhn if bhn is not None else h0, y, h0, gates, lens, hm, zs, float(regs.zoneout[0]), 2 * d,
                B, T, t, t + delta, *strides, H=H, STORE_GATES=store, HAS_BIAS=bhn is not None,
                HAS_LENGTHS=lengths is not None, HAS_MASK=regs.h_mask is not None, ZONEOUT=regs.mode,
                ACC_DTYPE=ACC[acc], INPUT_PRECISION=input_precision(dtype), num_warps=cfg["num_warps"], **_tiles(cfg),
            )  # fmt: skip
    return y, final_state(y, h0, lengths, reverse), gates if store else None


def backward(layer: Layer, regs: Regularisers, y, gates, dy, dh_n, needs, config: dict | None = None, err=None):
    """Gradients of one GRU layer on the step kernels: ``[dx, dh0, dw_ih, dw_hh, db_ih, db_hh]``, ``None`` for each
    one not in ``needs`` (the same six flags). ``y [T, B, D*H]`` and ``gates [D, T, B, 4H]`` are the forward's;
    ``dy`` and ``dh_n [D, B, H]`` may be ``None`` (zeros). Deterministic: GEMMs and sums, no atomics."""
    D, H = len(layer.reverse), layer.w_hh.shape[2]
    parts = []
    for d in range(D):
        span = slice(d * H, (d + 1) * H)
        y_d = y if D == 1 else y[..., span].contiguous()
        dy_d = dy if dy is None or D == 1 else dy[..., span].contiguous()
        dh_d = dh_n[d] if dh_n is not None else None
        parts.append(_backward_one(layer.direction(d), regs, d, y_d, gates[d], dy_d, dh_d, needs, config))
    return combine(parts)


def combine(parts: list) -> list:
    """Per-direction gradients as the layer's: dx summed (both directions read x), the others stacked."""
    grads = []
    for k, per_direction in enumerate(zip(*parts)):
        if per_direction[0] is None:
            grads.append(None)
        elif k == 0:
            grads.append(sum(per_direction[1:], per_direction[0]))
        else:
            grads.append(torch.stack(per_direction))
    return grads


def _backward_one(layer: Layer, regs: Regularisers, d: int, y, gates, dy, dh_n, needs, config):
    x, lengths, reverse = layer.x, layer.lengths, layer.reverse[0]
    h0, w_hh = layer.h0[0].contiguous(), layer.w_hh[0].contiguous()
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[1]
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    gates, y = gates.contiguous(), y.contiguous()
    dy = dy.contiguous() if dy is not None else None
    dcarry = dh_n.to(acc, copy=True).contiguous() if dh_n is not None else torch.zeros(B, H, device=x.device, dtype=acc)
    lens = lengths.to(device=x.device, dtype=torch.int32).contiguous() if lengths is not None else dcarry  # unread
    hm = regs.h_mask[d].to(dtype).contiguous() if regs.h_mask is not None else None
    zs = regs.seed if regs.seed is not None else dcarry
    dg = torch.empty(T, B, 4 * H, device=x.device, dtype=dtype)
    cfg = _check_config(config or gru_step_config(B, H, 3 * H, dtype))
    grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))
    delta = 1 if reverse else -1
    dy_buf = dy if dy is not None else y  # y: not read without dy; dcarry and the mask have its row stride
    hm_buf = hm if hm is not None else dcarry
    strides = (dg.stride(0), dg.stride(1), gates.stride(0), gates.stride(1), dy_buf.stride(0), dy_buf.stride(1),
               y.stride(0), y.stride(1))  # fmt: skip
    with launch_guard(x.device):
        for t in range(T) if reverse else range(T - 1, -1, -1):
            if B == 0:
                break
            _gru_bwd_step_kernel[grid](
                dg, w_hh, dy_buf, dcarry, gates, y, h0, lens, hm_buf, zs, float(regs.zoneout[0]), 2 * d, B, T,
                t, t - delta, t + delta, *strides, H=H, HAS_DY=dy is not None, HAS_LENGTHS=lengths is not None,
                HAS_MASK=hm is not None, ZONEOUT=regs.mode, ACC_DTYPE=ACC[acc], INPUT_PRECISION=input_precision(dtype),
                num_warps=cfg["num_warps"], **_tiles(cfg),
            )  # fmt: skip
    if B == 0:
        dg.zero_()
    return gradients(layer, dg, dcarry, y, hm, needs)


def gradients(layer: Layer, dg: torch.Tensor, dcarry: torch.Tensor, y: torch.Tensor, hm, needs) -> tuple:
    """One direction's ``(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)`` (``None`` where not in ``needs``) from what its
    loop left: ``dg [T, B, 4H]`` (dgh then dan per step) and ``dcarry [B, H]`` (what reached h0 without a gate),
    ``y`` its outputs, ``hm`` its recurrent mask or ``None``. GEMMs and sums over every step: deterministic."""
    x, lengths, reverse = layer.x, layer.lengths, layer.reverse[0]
    h0, w_ih, w_hh = layer.h0[0].contiguous(), layer.w_ih[0], layer.w_hh[0]
    T, B, I = x.shape
    H = w_hh.shape[1]
    acc = acc_dtype(x.dtype)
    first = T - 1 if reverse else 0
    dgh = dg[..., : 3 * H]
    need_dx, need_dh0, need_dw_ih, need_dw_hh, need_db_ih, need_db_hh = needs
    dgx = None  # gx's gradient: dgh's r and z blocks, then dan
    if need_dx or need_dw_ih or need_db_ih:
        dgx = torch.cat([dg[..., : 2 * H], dg[..., 3 * H :]], dim=-1).view(T * B, 3 * H)
    dx = dh0 = dw_ih = dw = db_ih = db_hh = None
    if need_dh0:
        dh0 = torch.mm(dgh[first], w_hh)  # through the first step's gates, then what reached h0 directly
        if hm is not None:
            dh0 = dh0 * hm
        dh0 = (dh0.to(acc) + dcarry).to(x.dtype)
    if need_dx:
        dx = torch.mm(dgx, w_ih).view(T, B, I)
    if need_dw_ih:
        dw_ih = torch.mm(dgx.t(), x.reshape(T * B, I))
    if need_dw_hh:
        dw = dw_hh(dgh, y, h0, lengths, reverse, hm)
    if need_db_ih:
        db_ih = dgx.sum(0, dtype=acc).to(x.dtype)
    if need_db_hh:
        db_hh = dgh.reshape(T * B, 3 * H).sum(0, dtype=acc).to(x.dtype)
    return dx, dh0, dw_ih, dw, db_ih, db_hh
