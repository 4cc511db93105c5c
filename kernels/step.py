"""The per-step kernels: one launch per time step and direction. The fallback of every other regime, and their oracle.

Shapes follow the legend of :mod:`tritonlstm.kernels.jit`.

Forward: one GEMM projects every time step's input (both biases folded in), then one launch per step. Without
a projection, ``_lstm_fwd_step_kernel`` gives each program a tile of batch rows x hidden units: the recurrent
product for all four gates of its units, the projection added, the activations, the cell update, the stores
of h_t and c_t. With a projection, ``_lstmp_fwd_step_kernel`` gives each program a tile of batch rows and all
hidden units, so it can also accumulate h_t = m_t W_hr^T in registers in the same pass. When a backward
follows, the step overwrites its slice of the projection buffer with the activated gates; every c_t is kept.

Backward: one launch per step in reverse processing order. It forms the gradient reaching the step's output,
dh_t = dy_t + dG_{next} W_hh (dG_{next}: gate gradients of the step processed just before), then (with a
projection, through dm_t = dh_t W_hr) the gate gradients dG_t and dc_{t-1}. Weight, input and bias gradients
are GEMMs/reductions over all steps afterwards. Nothing uses atomics: results are bitwise reproducible.

Variable lengths (``lengths``, per batch row, 1 <= len <= T): a row takes part in step t only when t < len.
Past it the row keeps its cell state, outputs zeros, and its h_{t-1} comes from h0 whenever the previous step
was not its own (so the reverse direction starts at each row's own end). In the backward, the gradient that
reaches a skipped step's state is carried unchanged (``dcarry``) to the step before it.

Regularisers, inside the same launches. Recurrent dropout: a [B, R] mask (HAS_MASK) scales h_{t-1}
as it is loaded for the recurrent dot. In the backward it scales the gradient reaching h through that dot, and
the launcher applies it to dh0 and to the h_{t-1} of dW_hh. Zoneout (ZONEOUT, no projection):
h_t = k*h_{t-1} + (1-k)*h_new and the same for c, with k the Bernoulli(p) mask drawn in-kernel by ``tl.rand``
from a seed read on the device (training) or p itself (eval). The backward draws the masks again. It routes
k*dh_t through ``dcarry`` to step t-1, adds k_c*dc_t to dc_{t-1}, and recomputes the cell state before zoneout
from the saved gates.

Compiled variants: one forward and one backward build per layer shape and configuration, whatever the step.
Per-step tensors go in as their whole buffers plus time indices (offsets formed in-kernel in int64), not as
views whose 16-byte alignment changes with t; the first step's differences (h0/c0, no dG_next) are runtime
branches. H and P are compile-time constants, so every loop has a constant bound: that lets the compiler drop
masks when the tiles divide them, and Triton 3.6's interpreter, which fails on ``range`` over a runtime bound
with NumPy >= 2.4, runs the kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlstm.kernels.common import (
    NONE,
    GradOutputs,
    Grads,
    Layer,
    Needs,
    Regularisers,
    Saved,
    check_dtype,
    check_regularisers,
    deinterleave_gates,
    dw_hh,
    interleave_gates,
)
from tritonlstm.kernels.config import step_config
from tritonlstm.kernels.jit import ACC, cell_backward, cell_forward, split_gates, zoneout_rates
from tritonlstm.kernels.runtime import acc_dtype, input_precision, launch_guard


@triton.jit
def _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS: tl.constexpr):
    """Per batch row: does step t belong to it, and did the previous step (t_prev, may be -1 or T)?"""
    if HAS_LENGTHS:
        b_len = tl.load(len_ptr + o_b, mask=m_b, other=0)
        b_tp = t_prev + tl.zeros_like(b_len)  # a tensor, so both comparisons give boolean blocks
        return t < b_len, (b_tp >= 0) & (b_tp < b_len)
    else:
        return o_b >= 0, o_b >= 0  # every row, every step (the launcher picks h_{t-1} itself)


@triton.jit
def _step_or_initial(buf_ptr, i, n, stride_i, init_ptr):
    """Pointer to ``buf[i]`` of a [n, B, ...] buffer when 0 <= i < n, else to the initial state ``init``.

    Per-step tensors are passed as the buffer's base and an index (offset formed here, in int64) rather than as
    views: a view's address changes its 16-byte alignment with the step, and Triton would compile a variant for
    each alignment. ``init`` has the buffer's row stride.
    """
    p = init_ptr
    if (i >= 0) & (i < n):
        p = buf_ptr + i.to(tl.int64) * stride_i
    return p


@triton.jit
def _h_prev_tile(h_prev_ptr, h0_ptr, o_b, o_k, m_row, m_k, v_prev, stride_hp, stride_h0, HAS_LENGTHS: tl.constexpr):
    """[BLOCK_B, BLOCK_K] block of h_{t-1}: the previous step's output, or h0 for rows it did not belong to."""
    m = m_row[:, None] & m_k[None, :]
    b_h = tl.load(h_prev_ptr + o_b[:, None] * stride_hp + o_k[None, :], mask=m & v_prev[:, None], other=0.0)
    if HAS_LENGTHS:
        b_h += tl.load(h0_ptr + o_b[:, None] * stride_h0 + o_k[None, :], mask=m & ~v_prev[:, None], other=0.0)
    return b_h


@triton.jit
def _gate_preactivations(
    gx_ptr, w_ptr, h_prev_ptr, h0_ptr, hm_ptr, o_b, o_g, m_b, m_g, v_prev, R, H, stride_gx, stride_hp, stride_h0,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """[BLOCK_B, 4*BLOCK_H] pre-activations of the gate columns o_g: (h_{t-1} * mask) @ W_hh^T[:, o_g] + x_t W_ih^T + b.

    The recurrent dropout mask (hm, [B, R] with h_{t-1}'s row stride) scales h_{t-1} only where it enters this dot.
    """
    b_acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=ACC_DTYPE)
    for k in range(0, R, BLOCK_K):
        o_k = k + tl.arange(0, BLOCK_K)
        m_k = o_k < R
        b_hp = _h_prev_tile(h_prev_ptr, h0_ptr, o_b, o_k, m_b, m_k, v_prev, stride_hp, stride_h0, HAS_LENGTHS)
        if HAS_MASK:
            p_hm = hm_ptr + o_b[:, None] * stride_hp + o_k[None, :]
            b_hm = tl.load(p_hm, mask=m_b[:, None] & m_k[None, :], other=0.0)
            b_hp = (b_hp.to(ACC_DTYPE) * b_hm.to(ACC_DTYPE)).to(w_ptr.dtype.element_ty)
        b_w = tl.load(w_ptr + o_k[:, None] * (4 * H) + o_g[None, :], mask=m_k[:, None] & m_g[None, :], other=0.0)
        b_acc += tl.dot(b_hp, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    p_gx = gx_ptr + o_b[:, None] * stride_gx + o_g[None, :]
    m_bg = m_b[:, None] & m_g[None, :]
    return b_acc + tl.load(p_gx, mask=m_bg, other=0.0).to(ACC_DTYPE), p_gx, m_bg


@triton.jit
def _grad_into_h(
    dg_ptr, w_ptr, dy_ptr, dcarry_ptr, hm_ptr, o_b, o_c, m_b, m_c, v_t, t, t_next, T, G, ld_w,
    stride_g_t, stride_g, stride_dy_t, stride_dy,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Gradient reaching h_t[:, o_c] (hidden units, or projected features): returns (through the state, all).

    Through the state: dG_{next} @ W_hh[:, o_c] ([BLOCK_B, G] @ [G, BLOCK_C] over the G gate rows, 4H for the LSTM
    and 3H for the GRU, W_hh's leading dimension ld_w;
    dG_{next} = dg[t_next], absent on the first step processed, when t_next is -1 or T) plus what reached it
    without a gate (h_n's gradient on the first step, skipped steps' with lengths; dcarry has dy's row stride).
    All: that plus dy[t], the gradient of this step's output, for the rows the step belongs to.
    With a recurrent dropout mask (hm, dy's row stride) the dot's part is scaled by it: h_t entered the next
    step's recurrent product as h_t * mask.
    """
    m_bc = m_b[:, None] & m_c[None, :]
    b_rec = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC_DTYPE)
    has_next = (t_next >= 0) & (t_next < T)  # a runtime branch: one compiled variant serves every step
    if has_next:
        p_dgn = dg_ptr + t_next.to(tl.int64) * stride_g_t + o_b[:, None] * stride_g
        for k in range(0, G, BLOCK_K):
            o_k = k + tl.arange(0, BLOCK_K)
            m_k = o_k < G
            b_dgn = tl.load(p_dgn + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
            b_w = tl.load(w_ptr + o_k[:, None] * ld_w + o_c[None, :], mask=m_k[:, None] & m_c[None, :], other=0.0)
            b_rec += tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
        if HAS_MASK:
            b_rec *= tl.load(hm_ptr + o_b[:, None] * stride_dy + o_c[None, :], mask=m_bc, other=0.0).to(ACC_DTYPE)
    p_dcarry = dcarry_ptr + o_b[:, None] * stride_dy + o_c[None, :]
    if HAS_LENGTHS:
        b_rec += tl.load(p_dcarry, mask=m_bc, other=0.0).to(ACC_DTYPE)
    else:
        if not has_next:
            b_rec += tl.load(p_dcarry, mask=m_bc, other=0.0).to(ACC_DTYPE)
    b_dh = b_rec
    if HAS_DY:
        p_dy = dy_ptr + t.to(tl.int64) * stride_dy_t + o_b[:, None] * stride_dy + o_c[None, :]
        b_dh += tl.load(p_dy, mask=m_bc & v_t[:, None], other=0.0).to(ACC_DTYPE)
    return b_rec, b_dh


@triton.jit(do_not_specialize=["t", "t_prev", "s", "s_prev", "zo_stream"])
def _lstm_fwd_step_kernel(
    gx_ptr,  # [T, B, G]  x_t W_ih^T + b (interleaved); step t overwritten by its activated gates if STORE_GATES
    w_ptr,  # [H, G]  W_hh^T with interleaved columns
    y_ptr,  # [T, B, H]  out: y[t] = h_t (zeros past a row's length); y[t_prev] is the previous step's output
    h0_ptr,  # [B, H]  initial hidden state, y's row stride
    c0_ptr,  # [B, H]  initial cell state, accumulator dtype, cs's row stride
    cs_ptr,  # [S, B, H]  cell states, accumulator dtype: c_t goes to slot s, c_{t-1} comes from slot s_prev
    len_ptr,  # [B]  int32 sequence lengths (read if HAS_LENGTHS)
    hm_ptr,  # [B, H]  recurrent dropout mask on h_{t-1} (read if HAS_MASK), y's row stride
    zs_ptr,  # [1]  int64 zoneout seed (read if ZONEOUT == 2)
    zm_ptr,  # [2, T, B, H]  int8 out: the zoneout masks drawn, h then c (test-only, if STORE_ZONEOUT)
    zo_h: tl.float64,  # zoneout probabilities of h and c, float64 so that a float64 layer's eval expectation is exact
    zo_c: tl.float64,
    zo_stream,  # 2 * direction: the Philox streams of h (zo_stream) and c (zo_stream + 1)
    B,
    T,
    S,
    t,  # time index of this step
    t_prev,  # time index of the step before it in processing order (-1 or T at the start: h0)
    s,  # slot of cs for c_t
    s_prev,  # slot of cs holding c_{t-1} (-1 at the start: c0)
    stride_gx_t,  # strides in elements: per time step / slot, per row; the last dimension is contiguous
    stride_gx,
    stride_y_t,
    stride_y,
    stride_c_t,
    stride_c,
    H: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,  # 0 off, 1 eval (expectation), 2 training (Philox masks)
    STORE_ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_g = tl.program_id(1).to(tl.int64) * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)
    o_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b, m_g, m_u = o_b < B, o_g < 4 * H, o_u < H
    v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)
    gx_t_ptr = gx_ptr + t.to(tl.int64) * stride_gx_t
    h_prev_ptr = _step_or_initial(y_ptr, t_prev, T, stride_y_t, h0_ptr)
    c_prev_ptr = _step_or_initial(cs_ptr, s_prev, S, stride_c_t, c0_ptr)

    # recurrent product: [BLOCK_B, H] @ [H, 4*BLOCK_H] -> all four gates of BLOCK_H units, plus the projection
    b_acc, p_gx, m_bg = _gate_preactivations(
        gx_t_ptr, w_ptr, h_prev_ptr, h0_ptr, hm_ptr, o_b, o_g, m_b, m_g, v_prev, H, H, stride_gx, stride_y, stride_y,
        BLOCK_B, BLOCK_H, BLOCK_K, HAS_LENGTHS, HAS_MASK, ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip

    m_bu = m_b[:, None] & m_u[None, :]
    b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_c + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_gates, b_c, b_h = cell_forward(b_acc, b_cp, BLOCK_B, BLOCK_H)
    if ZONEOUT > 0:
        # h_t = k * h_{t-1} + (1 - k) * h_new, the same for c (k: the training mask, or p in eval)
        b_hp = _h_prev_tile(h_prev_ptr, h0_ptr, o_b, o_u, m_b, m_u, v_prev, stride_y, stride_y, HAS_LENGTHS)
        b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_kc = zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
        b_h = b_kh * b_hp.to(ACC_DTYPE) + (1.0 - b_kh) * b_h
        b_c = b_kc * b_cp + (1.0 - b_kc) * b_c
        if STORE_ZONEOUT:
            p_zm = zm_ptr + (t.to(tl.int64) * B + o_b[:, None]) * H + o_u[None, :]
            tl.store(p_zm, b_kh.to(tl.int8), mask=m_bu)
            tl.store(p_zm + T * B * H, b_kc.to(tl.int8), mask=m_bu)
    if HAS_LENGTHS:
        b_c = tl.where(v_t[:, None], b_c, b_cp)
        b_h = tl.where(v_t[:, None], b_h, 0.0)
    p_c = cs_ptr + s.to(tl.int64) * stride_c_t + o_b[:, None] * stride_c + o_u[None, :]
    tl.store(p_c, b_c.to(cs_ptr.dtype.element_ty), mask=m_bu)
    p_h = y_ptr + t.to(tl.int64) * stride_y_t + o_b[:, None] * stride_y + o_u[None, :]
    tl.store(p_h, b_h.to(y_ptr.dtype.element_ty), mask=m_bu)
    if STORE_GATES:
        tl.store(p_gx, b_gates.to(gx_ptr.dtype.element_ty), mask=m_bg)


@triton.jit(do_not_specialize=["t", "t_prev", "s", "s_prev"])
def _lstmp_fwd_step_kernel(
    gx_ptr,  # [T, B, G]  as in _lstm_fwd_step_kernel
    w_ptr,  # [P, G]  W_hh^T with interleaved columns
    wr_ptr,  # [H, P]  W_hr^T
    y_ptr,  # [T, B, P]  out: y[t] = h_t = (o * tanh(c_t)) W_hr^T
    h0_ptr,  # [B, P]
    c0_ptr,  # [B, H]
    cs_ptr,  # [S, B, H]
    len_ptr,  # [B]
    hm_ptr,  # [B, P]  recurrent dropout mask (read if HAS_MASK), y's row stride
    B,
    T,
    S,
    t,
    t_prev,
    s,
    s_prev,
    stride_gx_t,
    stride_gx,
    stride_y_t,
    stride_y,
    stride_c_t,
    stride_c,
    H: tl.constexpr,
    P: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,  # >= P: the program holds whole rows of h_t
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_p = tl.arange(0, BLOCK_P)
    m_b, m_p = o_b < B, o_p < P
    v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)
    gx_t_ptr = gx_ptr + t.to(tl.int64) * stride_gx_t
    h_prev_ptr = _step_or_initial(y_ptr, t_prev, T, stride_y_t, h0_ptr)
    c_prev_ptr = _step_or_initial(cs_ptr, s_prev, S, stride_c_t, c0_ptr)
    c_t_ptr = cs_ptr + s.to(tl.int64) * stride_c_t

    b_hr = tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC_DTYPE)
    for u in range(0, H, BLOCK_H):
        o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
        o_u = u + tl.arange(0, BLOCK_H)
        m_g, m_u = o_g < 4 * H, o_u < H
        b_acc, p_gx, m_bg = _gate_preactivations(
            gx_t_ptr, w_ptr, h_prev_ptr, h0_ptr, hm_ptr, o_b, o_g, m_b, m_g, v_prev, P, H, stride_gx, stride_y,
            stride_y, BLOCK_B, BLOCK_H, BLOCK_K, HAS_LENGTHS, HAS_MASK, ACC_DTYPE, INPUT_PRECISION,
        )  # fmt: skip

        m_bu = m_b[:, None] & m_u[None, :]
        b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_c + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_gates, b_c, b_m = cell_forward(b_acc, b_cp, BLOCK_B, BLOCK_H)
        if HAS_LENGTHS:
            b_c = tl.where(v_t[:, None], b_c, b_cp)
        tl.store(c_t_ptr + o_b[:, None] * stride_c + o_u[None, :], b_c.to(cs_ptr.dtype.element_ty), mask=m_bu)
        if STORE_GATES:
            tl.store(p_gx, b_gates.to(gx_ptr.dtype.element_ty), mask=m_bg)
        # projection: h_t += m_t[:, units] @ W_hr^T[units, :]; m_t is rounded to the storage dtype as torch does
        b_wr = tl.load(wr_ptr + o_u[:, None] * P + o_p[None, :], mask=m_u[:, None] & m_p[None, :], other=0.0)
        b_hr += tl.dot(b_m.to(wr_ptr.dtype.element_ty), b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)

    if HAS_LENGTHS:
        b_hr = tl.where(v_t[:, None], b_hr, 0.0)
    p_h = y_ptr + t.to(tl.int64) * stride_y_t + o_b[:, None] * stride_y + o_p[None, :]
    tl.store(p_h, b_hr.to(y_ptr.dtype.element_ty), mask=m_b[:, None] & m_p[None, :])


@triton.jit(do_not_specialize=["t", "t_next", "t_prev", "zo_stream"])
def _lstm_bwd_step_kernel(
    dg_ptr,  # [T, B, G]  out: dg[t], the gate gradients of this step; dg[t_next] is read (the step processed before)
    w_ptr,  # [G, H]  W_hh with interleaved rows
    dy_ptr,  # [T, B, H]  gradient of the outputs (read if HAS_DY)
    dcarry_ptr,  # [B, H]  gradient reaching this step's output state not through dG_next (h_n's, skipped steps')
    gates_ptr,  # [T, B, G]  activated gates from the forward
    cs_ptr,  # [T, B, H]  every c_t, accumulator dtype
    c0_ptr,  # [B, H]  initial cell state, accumulator dtype, cs's row stride
    dc_ptr,  # [B, H]  in: dc_t, out: dc_{t-1}; accumulator dtype, cs's row stride, updated in place
    len_ptr,  # [B]
    hm_ptr,  # [B, H]  recurrent dropout mask (read if HAS_MASK), dy's row stride
    zs_ptr,  # [1]  the forward's zoneout seed: its masks are drawn again
    zo_h: tl.float64,
    zo_c: tl.float64,
    zo_stream,
    B,
    T,
    t,  # time index of this step
    t_next,  # time index of the step processed before it (its forward successor), -1 or T on the first step
    t_prev,  # time index of its forward predecessor (c_{t-1}; c0 when -1 or T)
    stride_g_t,  # dg's and gates' strides per time step and per row
    stride_g,
    stride_dy_t,
    stride_dy,  # dcarry's too
    stride_c_t,
    stride_c,
    H: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    CARRY: tl.constexpr,  # HAS_LENGTHS or ZONEOUT: dcarry feeds every step
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_g = tl.program_id(1).to(tl.int64) * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)
    o_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b, m_g, m_u = o_b < B, o_g < 4 * H, o_u < H
    m_bu = m_b[:, None] & m_u[None, :]
    m_bg = m_b[:, None] & m_g[None, :]
    v_t, _ = _row_validity(len_ptr, o_b, m_b, t, t, HAS_LENGTHS)

    b_rec, b_dh = _grad_into_h(
        dg_ptr, w_ptr, dy_ptr, dcarry_ptr, hm_ptr, o_b, o_u, m_b, m_u, v_t, t, t_next, T, 4 * H, H,
        stride_g_t, stride_g, stride_dy_t, stride_dy, BLOCK_B, BLOCK_H, BLOCK_K, HAS_DY, CARRY, HAS_MASK,
        ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip
    p_dcarry = dcarry_ptr + o_b[:, None] * stride_dy + o_u[None, :]

    o_bg = t.to(tl.int64) * stride_g_t + o_b[:, None] * stride_g + o_g[None, :]
    o_bc = o_b[:, None] * stride_c + o_u[None, :]
    c_prev_ptr = _step_or_initial(cs_ptr, t_prev, T, stride_c_t, c0_ptr)
    b_gates = tl.load(gates_ptr + o_bg, mask=m_bg, other=0.0).to(ACC_DTYPE)
    b_c = tl.load(cs_ptr + t.to(tl.int64) * stride_c_t + o_bc, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_cp = tl.load(c_prev_ptr + o_bc, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_dc = tl.load(dc_ptr + o_bc, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    if ZONEOUT > 0:
        # the forward's masks again; the kept share of dh_t / dc_t goes straight to h_{t-1} / c_{t-1}, the rest
        # through the cell, whose c_t before zoneout is recomputed from the gates
        b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_kc = zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
        b_i, b_f, b_g, b_o = split_gates(b_gates, BLOCK_B, BLOCK_H)
        b_c = b_f * b_cp + b_i * b_g
        b_carry = b_kh * b_dh
        b_dh = (1.0 - b_kh) * b_dh
        b_dc_kept = b_kc * b_dc
        b_dg, b_dc = cell_backward(b_dh, b_gates, b_c, b_cp, (1.0 - b_kc) * b_dc, BLOCK_B, BLOCK_H)
        b_dc += b_dc_kept
    else:
        b_dg, b_dc = cell_backward(b_dh, b_gates, b_c, b_cp, b_dc, BLOCK_B, BLOCK_H)
    if HAS_LENGTHS:
        b_dg = tl.where(v_t[:, None], b_dg, 0.0)
        b_carry = tl.where(v_t[:, None], b_carry, b_rec)
    if CARRY:
        tl.store(p_dcarry, b_carry.to(dcarry_ptr.dtype.element_ty), mask=m_bu)
    tl.store(dg_ptr + o_bg, b_dg.to(dg_ptr.dtype.element_ty), mask=m_bg)
    tl.store(dc_ptr + o_bc, b_dc.to(dc_ptr.dtype.element_ty), mask=m_bu & v_t[:, None])


@triton.jit(do_not_specialize=["t", "t_next", "t_prev"])
def _lstmp_bwd_step_kernel(
    dg_ptr,  # [T, B, G]
    w_ptr,  # [G, P]  W_hh with interleaved rows
    wr_ptr,  # [P, H]  W_hr
    dy_ptr,  # [T, B, P]
    dcarry_ptr,  # [B, P]
    gates_ptr,  # [T, B, G]
    cs_ptr,  # [T, B, H]
    c0_ptr,  # [B, H]
    dc_ptr,  # [B, H]
    dh_ptr,  # [T, B, P]  out: dh[t], the whole gradient of h_t (zeros past a row's length), for dW_hr; dy's strides
    len_ptr,  # [B]
    hm_ptr,  # [B, P]  recurrent dropout mask (read if HAS_MASK), dy's row stride
    B,
    T,
    t,
    t_next,
    t_prev,
    stride_g_t,
    stride_g,
    stride_dy_t,
    stride_dy,
    stride_c_t,
    stride_c,
    H: tl.constexpr,
    P: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_p = tl.arange(0, BLOCK_P)
    m_b, m_p = o_b < B, o_p < P
    m_bp = m_b[:, None] & m_p[None, :]
    v_t, _ = _row_validity(len_ptr, o_b, m_b, t, t, HAS_LENGTHS)

    b_rec, b_dh = _grad_into_h(
        dg_ptr, w_ptr, dy_ptr, dcarry_ptr, hm_ptr, o_b, o_p, m_b, m_p, v_t, t, t_next, T, 4 * H, P,
        stride_g_t, stride_g, stride_dy_t, stride_dy, BLOCK_B, BLOCK_P, BLOCK_K, HAS_DY, HAS_LENGTHS, HAS_MASK,
        ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip
    p_dcarry = dcarry_ptr + o_b[:, None] * stride_dy + o_p[None, :]
    if HAS_LENGTHS:
        b_dh = tl.where(v_t[:, None], b_dh, 0.0)
        tl.store(p_dcarry, tl.where(v_t[:, None], 0.0, b_rec).to(dcarry_ptr.dtype.element_ty), mask=m_bp)
    b_dh = b_dh.to(dh_ptr.dtype.element_ty)
    tl.store(dh_ptr + t.to(tl.int64) * stride_dy_t + o_b[:, None] * stride_dy + o_p[None, :], b_dh, mask=m_bp)

    gates_t_ptr = gates_ptr + t.to(tl.int64) * stride_g_t
    dg_t_ptr = dg_ptr + t.to(tl.int64) * stride_g_t
    c_t_ptr = cs_ptr + t.to(tl.int64) * stride_c_t
    c_prev_ptr = _step_or_initial(cs_ptr, t_prev, T, stride_c_t, c0_ptr)
    for u in range(0, H, BLOCK_H):
        o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
        o_u = u + tl.arange(0, BLOCK_H)
        m_g, m_u = o_g < 4 * H, o_u < H
        m_bu = m_b[:, None] & m_u[None, :]
        m_bg = m_b[:, None] & m_g[None, :]
        o_bg = o_b[:, None] * stride_g + o_g[None, :]
        o_bc = o_b[:, None] * stride_c + o_u[None, :]
        # dm_t[:, units] = dh_t @ W_hr[:, units]
        b_wr = tl.load(wr_ptr + o_p[:, None] * H + o_u[None, :], mask=m_p[:, None] & m_u[None, :], other=0.0)
        b_dm = tl.dot(b_dh, b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
        b_gates = tl.load(gates_t_ptr + o_bg, mask=m_bg, other=0.0).to(ACC_DTYPE)
        b_c = tl.load(c_t_ptr + o_bc, mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_cp = tl.load(c_prev_ptr + o_bc, mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_dc = tl.load(dc_ptr + o_bc, mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_dg, b_dc = cell_backward(b_dm, b_gates, b_c, b_cp, b_dc, BLOCK_B, BLOCK_H)
        if HAS_LENGTHS:
            b_dg = tl.where(v_t[:, None], b_dg, 0.0)
        tl.store(dg_t_ptr + o_bg, b_dg.to(dg_ptr.dtype.element_ty), mask=m_bg)
        tl.store(dc_ptr + o_bc, b_dc.to(dc_ptr.dtype.element_ty), mask=m_bu & v_t[:, None])

# ----------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------


def _check_config(config: dict, proj_size: int) -> dict:
    if config["BLOCK_B"] < 16 or 4 * config["BLOCK_H"] < 16 or config["BLOCK_K"] < 16:
        raise ValueError(f"tl.dot needs every tile dimension >= 16, got {config}")
    if proj_size and (config["BLOCK_H"] < 16 or config.get("BLOCK_P", 0) < max(16, proj_size)):
        raise ValueError(f"with a projection BLOCK_H must be >= 16 and BLOCK_P >= max(16, proj_size), got {config}")
    return config


def _tiles(config: dict) -> dict:
    return {k: v for k, v in config.items() if k.startswith("BLOCK_")}


def _zoneout_args(regs: Regularisers, d: int, unread: torch.Tensor) -> list:
    """Direction d's zoneout kernel arguments ``[zs_ptr, p_h, p_c, stream]`` (``unread`` stands in for the seed)."""
    return [regs.seed if regs.seed is not None else unread, float(regs.zoneout[0]), float(regs.zoneout[1]), 2 * d]


def forward(
    layer: Layer, regs: Regularisers = NONE, store: bool = True, config: dict | None = None, err=None,
    zoneout_masks_out: torch.Tensor | None = None,
):  # fmt: skip
    """Run one layer on the step kernels, direction after direction.

    Returns ``(y [T, B, D*R], h_n [D, B, R], c_n [D, B, H], gates [D, T, B, G] | None, cs [D, T, B, H] | None)``.
    ``y``, ``h_n`` and ``c_n`` have the input's dtype. ``gates`` (activated, interleaved, input dtype) and ``cs``
    (every c_t, accumulator dtype) are what :func:`backward` needs; ``None`` unless ``store``. With ``w_hr``, h_t
    is projected to P features. With ``lengths``, ``y`` is zero past each row's length and ``h_n``/``c_n`` are taken
    at each row's last step. ``regs.h_mask`` (recurrent dropout) multiplies h_{t-1} where it enters the recurrent
    product, inside the step kernel (no extra launch). Zoneout (no projection): with a seed each element of h_t and
    c_t keeps its previous value with probability p, masks drawn in-kernel by Philox on streams 2d and 2d + 1
    (never stored, unless ``zoneout_masks_out [D, 2, T, B, H]`` int8 is given, for tests); without one the
    expectation ``p * previous + (1 - p) * new``. ``err`` is unused: nothing here waits.
    """
    check_dtype(layer.x.dtype)
    check_regularisers(layer, regs)
    runs = [
        _forward_one(
            layer.direction(d), regs, d, store, config, zoneout_masks_out[d] if zoneout_masks_out is not None else None
        )
        for d in range(len(layer.reverse))
    ]
    y, h_n, c_n, gates, cs = zip(*runs)
    y = y[0] if len(runs) == 1 else torch.cat(y, dim=-1)
    if not store:
        return y, torch.stack(h_n), torch.stack(c_n), None, None
    return y, torch.stack(h_n), torch.stack(c_n), torch.stack(gates), torch.stack(cs)


def _forward_one(layer: Layer, regs: Regularisers, d: int, store_for_backward: bool, config, zoneout_masks_out):
    x, lengths, reverse = layer.x, layer.lengths, layer.reverse[0]
    h0, c0, w_ih, w_hh = layer.h0[0], layer.c0[0], layer.w_ih[0], layer.w_hh[0]
    b_ih = layer.b_ih[0] if layer.b_ih is not None else None
    b_hh = layer.b_hh[0] if layer.b_hh is not None else None
    w_hr = layer.w_hr[0] if layer.w_hr is not None else None
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, acc = x.dtype, acc_dtype(x.dtype)

    # input projection for all steps in one GEMM, both biases folded in, gates interleaved per unit
    x2 = x.reshape(T * B, I)
    w_ih_t = interleave_gates(w_ih).t()
    if b_ih is not None:
        gx = torch.addmm(interleave_gates(b_ih + b_hh), x2, w_ih_t)
    else:
        gx = torch.mm(x2, w_ih_t)
    gx = gx.view(T, B, 4 * H)
    w_t = interleave_gates(w_hh).t().contiguous()  # [R, G]

    y = torch.empty(T, B, R, device=x.device, dtype=dtype)
    cs = torch.empty(T if store_for_backward else 2, B, H, device=x.device, dtype=acc)
    h0 = h0.contiguous()
    c0 = c0.to(acc).contiguous()
    lens = lengths.to(device=x.device, dtype=torch.int32).contiguous() if lengths is not None else h0  # h0: unread
    hm = regs.h_mask[d].to(dtype).contiguous() if regs.h_mask is not None else h0  # h0: unread
    P = w_hr.shape[0] if w_hr is not None else 0
    zs, zo_h, zo_c, zo_stream = _zoneout_args(regs, d, h0)
    zm = zoneout_masks_out if zoneout_masks_out is not None else h0  # h0: unread
    cfg = _check_config(config or step_config(B, H, R, dtype, P), P)
    common = dict(
        STORE_GATES=store_for_backward, HAS_LENGTHS=lengths is not None, HAS_MASK=regs.h_mask is not None,
        ACC_DTYPE=ACC[acc], INPUT_PRECISION=input_precision(dtype), num_warps=cfg["num_warps"], **_tiles(cfg),
    )  # fmt: skip
    if w_hr is not None:
        wr_t = w_hr.t().contiguous()  # [H, P]
        grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    else:
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))
    # every per-step tensor goes to the kernel as its buffer and an index (one compiled variant for all steps);
    # the initial states share the buffers' row strides
    S = cs.shape[0]
    strides = (gx.stride(0), gx.stride(1), y.stride(0), y.stride(1), cs.stride(0), cs.stride(1))
    delta = 1 if reverse else -1  # t + delta: the step before t in processing order
    s = -1  # slot of cs holding c_{t-1}; -1: c0
    with launch_guard(x.device):
        for n, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):
            if B == 0:
                break
            s_prev, s = s, (t if store_for_backward else n % 2)
            if w_hr is not None:
                _lstmp_fwd_step_kernel[grid](
                    gx, w_t, wr_t, y, h0, c0, cs, lens, hm, B, T, S, t, t + delta, s, s_prev, *strides, H=H, P=P,
                    **common,
                )
            else:
                _lstm_fwd_step_kernel[grid](
                    gx, w_t, y, h0, c0, cs, lens, hm, zs, zm, zo_h, zo_c, zo_stream, B, T, S, t, t + delta, s, s_prev,
                    *strides, H=H, ZONEOUT=regs.mode, STORE_ZONEOUT=zoneout_masks_out is not None, **common,
                )  # fmt: skip

    c_n = (cs[s] if s >= 0 else c0).to(dtype, copy=True)
    if B == 0:
        h_n = h0.clone()
    elif lengths is not None and not reverse:
        h_n = y[lens.long() - 1, torch.arange(B, device=x.device)]
    else:
        h_n = y[0 if reverse else T - 1].clone()
    if not store_for_backward:
        return y, h_n, c_n, None, None
    return y, h_n, c_n, gx, cs


def backward(
    layer: Layer, regs: Regularisers, saved: Saved, grad_out: GradOutputs, needs: Needs = Needs(),
    config: dict | None = None, err=None,
) -> Grads:  # fmt: skip
    """Gradients of one layer on the step kernels, direction after direction (:class:`Grads`).

    ``grad_out``'s tensors may each be ``None`` (zeros). ``needs`` says which gradients to compute; the others come
    back as ``None`` (``dw_hr`` always without ``w_hr``). Reductions over time and batch are GEMMs or ``torch.sum``:
    deterministic, no atomics. ``saved`` may come from any regime's forward. ``err`` is unused.
    """
    check_regularisers(layer, regs)
    D, R = len(layer.reverse), layer.w_hh.shape[2]
    dy, dh_n, dc_n = grad_out
    per_direction = []
    for d in range(D):
        span = slice(d * R, (d + 1) * R)
        y_d = saved.y if D == 1 else saved.y[..., span].contiguous()
        dy_d = dy if dy is None or D == 1 else dy[..., span].contiguous()
        per_direction.append(
            _backward_one(
                layer.direction(d), regs, d, y_d, saved.gates[d], saved.cs[d], dy_d,
                dh_n[d] if dh_n is not None else None, dc_n[d] if dc_n is not None else None, needs, config,
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
    return Grads(*grads)


def _backward_one(layer: Layer, regs: Regularisers, d: int, y, gates, cs, dy, dh_n, dc_n, needs: Needs, config):
    x, lengths, reverse = layer.x, layer.lengths, layer.reverse[0]
    h0, c0, w_ih, w_hh = layer.h0[0], layer.c0[0], layer.w_ih[0], layer.w_hh[0]
    w_hr = layer.w_hr[0] if layer.w_hr is not None else None
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    P = w_hr.shape[0] if w_hr is not None else 0
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    w_r = interleave_gates(w_hh).contiguous()  # [G, R]
    c0 = c0.to(acc).contiguous()
    gates, cs = gates.contiguous(), cs.contiguous()  # the kernel reads them with dg's and c0's strides
    dy = dy.contiguous() if dy is not None else None
    dc = dc_n.to(acc, copy=True).contiguous() if dc_n is not None else torch.zeros(B, H, device=x.device, dtype=acc)
    dcarry = dh_n.to(acc, copy=True).contiguous() if dh_n is not None else torch.zeros(B, R, device=x.device, dtype=acc)
    lens = lengths.to(device=x.device, dtype=torch.int32).contiguous() if lengths is not None else dc  # dc: unread
    hm = regs.h_mask[d].to(dtype).contiguous() if regs.h_mask is not None else None
    zs, zo_h, zo_c, zo_stream = _zoneout_args(regs, d, dc)
    zmode = regs.mode
    dg = torch.empty(T, B, 4 * H, device=x.device, dtype=dtype)
    dh_all = torch.empty(T, B, P, device=x.device, dtype=dtype) if w_hr is not None else None
    cfg = _check_config(config or step_config(B, H, 4 * H, dtype, P), P)
    common = dict(
        HAS_DY=dy is not None, HAS_LENGTHS=lengths is not None, HAS_MASK=hm is not None, ACC_DTYPE=ACC[acc],
        INPUT_PRECISION=input_precision(dtype), num_warps=cfg["num_warps"], **_tiles(cfg),
    )  # fmt: skip
    if w_hr is not None:
        w_hr_c = w_hr.contiguous()
        grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    else:
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))

    # processing order of the backward: the forward's, reversed. Of step t, `t + delta` is its forward
    # predecessor (t-1 forward, t+1 reverse; c0 where out of range) and `t - delta` the step processed just
    # before it (none on the first step); `first` is the time index the forward started at.
    delta, first = (1, T - 1) if reverse else (-1, 0)
    dy_buf = dy if dy is not None else y  # y: not read without dy
    hm_buf = hm if hm is not None else dc  # dc: unread
    # buffers and indices, not per-step views (one compiled variant for all steps); dcarry has dy's row
    # stride, dh_all dy's strides, c0 and dc cs's row stride
    strides = (dg.stride(0), dg.stride(1), dy_buf.stride(0), dy_buf.stride(1), cs.stride(0), cs.stride(1))
    with launch_guard(x.device):
        for t in range(T) if reverse else range(T - 1, -1, -1):
            if B == 0:
                break
            if w_hr is not None:
                _lstmp_bwd_step_kernel[grid](
                    dg, w_r, w_hr_c, dy_buf, dcarry, gates, cs, c0, dc, dh_all, lens, hm_buf, B, T, t, t - delta,
                    t + delta, *strides, H=H, P=P, **common,
                )  # fmt: skip
            else:
                _lstm_bwd_step_kernel[grid](
                    dg, w_r, dy_buf, dcarry, gates, cs, c0, dc, lens, hm_buf, zs, zo_h, zo_c, zo_stream, B, T, t,
                    t - delta, t + delta, *strides, H=H, ZONEOUT=zmode, CARRY=bool(zmode) or lengths is not None,
                    **common,
                )  # fmt: skip
    if B == 0:
        dg.zero_()
        if dh_all is not None:
            dh_all.zero_()

    dg2 = dg.view(T * B, 4 * H)
    dx = dh0 = dc0 = dw_ih = dw = db = dw_hr = None
    if needs.dh0:
        # through the first step's gates, plus (with lengths) what skipped steps carried straight to h0
        dh0 = torch.mm(dg[first], w_r)
        if hm is not None:
            dh0 = dh0 * hm
        if lengths is not None or zmode:
            dh0 = (dh0.to(acc) + dcarry).to(dtype)
    if needs.dc0:
        dc0 = dc.to(dtype)
    if needs.dx:
        dx = torch.mm(dg2, interleave_gates(w_ih)).view(T, B, I)
    if needs.dw_ih:
        dw_ih = deinterleave_gates(torch.mm(dg2.t(), x.reshape(T * B, I)))
    if needs.dw_hh:
        dw = deinterleave_gates(dw_hh(dg, y, h0, lengths, reverse, hm))
    if needs.db:
        db = deinterleave_gates(dg2.sum(0, dtype=acc)).to(dtype)
    if needs.dw_hr and w_hr is not None:
        # m_t = o * tanh(c_t) from the saved gates and cell states, rounded to the storage dtype as in the forward
        m = (gates.view(T, B, H, 4)[..., 3].to(acc) * torch.tanh(cs)).to(dtype)
        dw_hr = torch.mm(dh_all.reshape(T * B, P).t(), m.reshape(T * B, H))
    return dx, dh0, dc0, dw_ih, dw, db, dw_hr
