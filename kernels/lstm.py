"""Fused LSTM recurrence: Triton step kernels and the launchers that run one layer and direction.

Dimension legend (every shape comment below uses it):
    T   time steps                B   batch rows
    I   input features            H   hidden units
    P   projection size (proj_size > 0)           R   recurrent input size: P with a projection, else H
    G   4*H gate pre-activations, stored *unit-interleaved*: column 4*j + k holds gate k of unit j,
        k = 0, 1, 2, 3 for i, f, g, o (torch.nn.LSTM's gate order inside each unit)

The interleaved layout lets one ``tl.dot`` over a contiguous block of 4*BLOCK_H columns produce all four
gates of BLOCK_H units; a reshape and two splits then hand each gate to the epilogue as its own tile.

Maths (torch.nn.LSTM's):
    i, f, g, o = sigmoid(.), sigmoid(.), tanh(.), sigmoid(.)  of  x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)                 (with a projection: m_t = o * tanh(c_t), h_t = m_t W_hr^T)

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

Cell state, accumulators and the epilogue are fp32 for fp16/bf16/fp32 inputs and fp64 for fp64 inputs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when this module was imported with ``TRITON_INTERPRET=1``: kernels then run on CPU tensors."""

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _tanh(x):
    # libdevice.tanh is not available in the interpreter; this form is exact to rounding and never overflows.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _split_gates(b_x, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_B, 4*BLOCK_H] interleaved -> the i, f, g, o tiles, each [BLOCK_B, BLOCK_H]."""
    # column 4j+k -> [BLOCK_B, BLOCK_H, k1, k2] with k = 2*k1 + k2; splitting k2 then k1 separates the gates
    b_ig, b_fo = tl.split(tl.reshape(b_x, (BLOCK_B, BLOCK_H, 2, 2)))
    b_i, b_g = tl.split(b_ig)
    b_f, b_o = tl.split(b_fo)
    return b_i, b_f, b_g, b_o


@triton.jit
def _join_gates(b_i, b_f, b_g, b_o, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Inverse of _split_gates."""
    return tl.reshape(tl.join(tl.join(b_i, b_g), tl.join(b_f, b_o)), (BLOCK_B, 4 * BLOCK_H))


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
def _load_h_prev(h_prev_ptr, h0_ptr, o_b, o_k, m_row, m_k, v_prev, stride_hp, stride_h0, HAS_LENGTHS: tl.constexpr):
    """[BLOCK_B, BLOCK_K] block of h_{t-1}: the previous step's output, or h0 for rows it did not belong to."""
    m = m_row[:, None] & m_k[None, :]
    b_h = tl.load(h_prev_ptr + o_b[:, None] * stride_hp + o_k[None, :], mask=m & v_prev[:, None], other=0.0)
    if HAS_LENGTHS:
        b_h += tl.load(h0_ptr + o_b[:, None] * stride_h0 + o_k[None, :], mask=m & ~v_prev[:, None], other=0.0)
    return b_h


@triton.jit
def _gate_preactivations(
    gx_ptr, w_ptr, h_prev_ptr, h0_ptr, o_b, o_g, m_b, m_g, v_prev, R, H, stride_gx, stride_hp, stride_h0,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """[BLOCK_B, 4*BLOCK_H] pre-activations of the gate columns o_g: h_{t-1} @ W_hh^T[:, o_g] + x_t W_ih^T + b."""
    b_acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=ACC_DTYPE)
    for k in range(0, R, BLOCK_K):
        o_k = k + tl.arange(0, BLOCK_K)
        m_k = o_k < R
        b_hp = _load_h_prev(h_prev_ptr, h0_ptr, o_b, o_k, m_b, m_k, v_prev, stride_hp, stride_h0, HAS_LENGTHS)
        b_w = tl.load(w_ptr + o_k[:, None] * (4 * H) + o_g[None, :], mask=m_k[:, None] & m_g[None, :], other=0.0)
        b_acc += tl.dot(b_hp, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    p_gx = gx_ptr + o_b[:, None] * stride_gx + o_g[None, :]
    m_bg = m_b[:, None] & m_g[None, :]
    return b_acc + tl.load(p_gx, mask=m_bg, other=0.0).to(ACC_DTYPE), p_gx, m_bg


@triton.jit
def _grad_into_h(
    dg_next_ptr, w_ptr, dy_ptr, dcarry_ptr, o_b, o_c, m_b, m_c, v_t, H, ld_w, stride_dgn, stride_dy, stride_dcarry,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, HAS_NEXT: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_LENGTHS: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Gradient reaching h_t[:, o_c] (hidden units, or projected features): returns (through the state, all).

    Through the state: dG_{next} @ W_hh[:, o_c] ([BLOCK_B, G] @ [G, BLOCK_C], W_hh's leading dimension ld_w)
    plus what reached it without a gate (h_n's gradient on the first step, skipped steps' with lengths). All:
    that plus dy_t, the gradient of this step's output, for the rows the step belongs to.
    """
    m_bc = m_b[:, None] & m_c[None, :]
    b_rec = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC_DTYPE)
    if HAS_NEXT:
        for k in range(0, 4 * H, BLOCK_K):
            o_k = k + tl.arange(0, BLOCK_K)
            m_k = o_k < 4 * H
            b_dgn = tl.load(dg_next_ptr + o_b[:, None] * stride_dgn + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
            b_w = tl.load(w_ptr + o_k[:, None] * ld_w + o_c[None, :], mask=m_k[:, None] & m_c[None, :], other=0.0)
            b_rec += tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    if HAS_LENGTHS or not HAS_NEXT:
        b_rec += tl.load(dcarry_ptr + o_b[:, None] * stride_dcarry + o_c[None, :], mask=m_bc, other=0.0).to(ACC_DTYPE)
    b_dh = b_rec
    if HAS_DY:
        b_dh += tl.load(dy_ptr + o_b[:, None] * stride_dy + o_c[None, :], mask=m_bc & v_t[:, None], other=0.0).to(ACC_DTYPE)
    return b_rec, b_dh


@triton.jit
def _cell_forward(b_pre, b_c_prev, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gate pre-activations [BLOCK_B, 4*BLOCK_H] and c_{t-1} -> (activated gates interleaved, c_t, o*tanh(c_t))."""
    b_i, b_f, b_g, b_o = _split_gates(b_pre, BLOCK_B, BLOCK_H)
    b_i = tl.sigmoid(b_i)
    b_f = tl.sigmoid(b_f)
    b_g = _tanh(b_g)
    b_o = tl.sigmoid(b_o)
    b_c = b_f * b_c_prev + b_i * b_g
    return _join_gates(b_i, b_f, b_g, b_o, BLOCK_B, BLOCK_H), b_c, b_o * _tanh(b_c)


@triton.jit
def _cell_backward(b_dm, b_gates, b_c, b_c_prev, b_dc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gradient of m_t = o*tanh(c_t) and of c_t -> (gate pre-activation gradients interleaved, dc_{t-1})."""
    b_i, b_f, b_g, b_o = _split_gates(b_gates, BLOCK_B, BLOCK_H)
    b_tc = _tanh(b_c)
    b_dc = b_dc + b_dm * b_o * (1.0 - b_tc * b_tc)
    b_di = b_dc * b_g * b_i * (1.0 - b_i)
    b_df = b_dc * b_c_prev * b_f * (1.0 - b_f)
    b_dg = b_dc * b_i * (1.0 - b_g * b_g)
    b_do = b_dm * b_tc * b_o * (1.0 - b_o)
    return _join_gates(b_di, b_df, b_dg, b_do, BLOCK_B, BLOCK_H), b_dc * b_f


@triton.jit(do_not_specialize=["t", "t_prev"])
def _lstm_fwd_step_kernel(
    gx_ptr,  # [B, G]  x_t W_ih^T + b for this step (interleaved); overwritten by the activated gates if STORE_GATES
    w_ptr,  # [H, G]  W_hh^T with interleaved columns
    h_prev_ptr,  # [B, H]  the previous step's output (h_{t-1} for every row it belonged to)
    h0_ptr,  # [B, H]  initial hidden state (read only with lengths)
    c_prev_ptr,  # [B, H]  c_{t-1}, accumulator dtype
    h_ptr,  # [B, H]  out: h_t (zeros past a row's length)
    c_ptr,  # [B, H]  out: c_t (c_{t-1} kept past a row's length), accumulator dtype
    len_ptr,  # [B]     int32 sequence lengths (read if HAS_LENGTHS)
    B,
    H,
    t,  # time index of this step
    t_prev,  # time index of the step before it in processing order (-1 or T at the start)
    stride_gx,  # row strides (elements); the last dimension of every tensor is contiguous
    stride_hp,
    stride_h0,
    stride_cp,
    stride_h,
    stride_c,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_g = tl.program_id(1).to(tl.int64) * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)
    o_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b, m_g, m_u = o_b < B, o_g < 4 * H, o_u < H
    v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)

    # recurrent product: [BLOCK_B, H] @ [H, 4*BLOCK_H] -> all four gates of BLOCK_H units, plus the projection
    b_acc, p_gx, m_bg = _gate_preactivations(
        gx_ptr, w_ptr, h_prev_ptr, h0_ptr, o_b, o_g, m_b, m_g, v_prev, H, H, stride_gx, stride_hp, stride_h0,
        BLOCK_B, BLOCK_H, BLOCK_K, HAS_LENGTHS, ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip

    m_bu = m_b[:, None] & m_u[None, :]
    b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_cp + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_gates, b_c, b_h = _cell_forward(b_acc, b_cp, BLOCK_B, BLOCK_H)
    if HAS_LENGTHS:
        b_c = tl.where(v_t[:, None], b_c, b_cp)
        b_h = tl.where(v_t[:, None], b_h, 0.0)
    tl.store(c_ptr + o_b[:, None] * stride_c + o_u[None, :], b_c.to(c_ptr.dtype.element_ty), mask=m_bu)
    tl.store(h_ptr + o_b[:, None] * stride_h + o_u[None, :], b_h.to(h_ptr.dtype.element_ty), mask=m_bu)
    if STORE_GATES:
        tl.store(p_gx, b_gates.to(gx_ptr.dtype.element_ty), mask=m_bg)


@triton.jit(do_not_specialize=["t", "t_prev"])
def _lstmp_fwd_step_kernel(
    gx_ptr,  # [B, G]  as in _lstm_fwd_step_kernel
    w_ptr,  # [P, G]  W_hh^T with interleaved columns
    wr_ptr,  # [H, P]  W_hr^T
    h_prev_ptr,  # [B, P]
    h0_ptr,  # [B, P]
    c_prev_ptr,  # [B, H]
    h_ptr,  # [B, P]  out: h_t = (o * tanh(c_t)) W_hr^T
    c_ptr,  # [B, H]
    len_ptr,  # [B]
    B,
    H,
    P,
    t,
    t_prev,
    stride_gx,
    stride_hp,
    stride_h0,
    stride_cp,
    stride_h,
    stride_c,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,  # >= P: the program holds whole rows of h_t
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_p = tl.arange(0, BLOCK_P)
    m_b, m_p = o_b < B, o_p < P
    v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)

    b_hr = tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC_DTYPE)
    for u in range(0, H, BLOCK_H):
        o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
        o_u = u + tl.arange(0, BLOCK_H)
        m_g, m_u = o_g < 4 * H, o_u < H
        b_acc, p_gx, m_bg = _gate_preactivations(
            gx_ptr, w_ptr, h_prev_ptr, h0_ptr, o_b, o_g, m_b, m_g, v_prev, P, H, stride_gx, stride_hp, stride_h0,
            BLOCK_B, BLOCK_H, BLOCK_K, HAS_LENGTHS, ACC_DTYPE, INPUT_PRECISION,
        )  # fmt: skip

        m_bu = m_b[:, None] & m_u[None, :]
        b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_cp + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_gates, b_c, b_m = _cell_forward(b_acc, b_cp, BLOCK_B, BLOCK_H)
        if HAS_LENGTHS:
            b_c = tl.where(v_t[:, None], b_c, b_cp)
        tl.store(c_ptr + o_b[:, None] * stride_c + o_u[None, :], b_c.to(c_ptr.dtype.element_ty), mask=m_bu)
        if STORE_GATES:
            tl.store(p_gx, b_gates.to(gx_ptr.dtype.element_ty), mask=m_bg)
        # projection: h_t += m_t[:, units] @ W_hr^T[units, :]; m_t is rounded to the storage dtype as torch does
        b_wr = tl.load(wr_ptr + o_u[:, None] * P + o_p[None, :], mask=m_u[:, None] & m_p[None, :], other=0.0)
        b_hr += tl.dot(b_m.to(wr_ptr.dtype.element_ty), b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)

    if HAS_LENGTHS:
        b_hr = tl.where(v_t[:, None], b_hr, 0.0)
    tl.store(h_ptr + o_b[:, None] * stride_h + o_p[None, :], b_hr.to(h_ptr.dtype.element_ty), mask=m_b[:, None] & m_p[None, :])


@triton.jit(do_not_specialize=["t"])
def _lstm_bwd_step_kernel(
    dg_next_ptr,  # [B, G]  gate gradients of the step processed before this one (read if HAS_NEXT)
    w_ptr,  # [G, H]  W_hh with interleaved rows
    dy_ptr,  # [B, H]  gradient of this step's output h_t (read if HAS_DY)
    dcarry_ptr,  # [B, H]  gradient reaching this step's output state not through dG_next (h_n's, skipped steps')
    gates_ptr,  # [B, G]  activated gates of this step
    c_ptr,  # [B, H]  c_t, accumulator dtype
    c_prev_ptr,  # [B, H]  c_{t-1}, accumulator dtype
    dc_ptr,  # [B, H]  in: dc_t, out: dc_{t-1}; accumulator dtype, updated in place
    dg_ptr,  # [B, G]  out: gradients of the gate pre-activations (zeros past a row's length)
    len_ptr,  # [B]
    B,
    H,
    t,
    stride_dgn,
    stride_dy,
    stride_dcarry,
    stride_gates,
    stride_c,
    stride_cp,
    stride_dc,
    stride_dg,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
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
        dg_next_ptr, w_ptr, dy_ptr, dcarry_ptr, o_b, o_u, m_b, m_u, v_t, H, H, stride_dgn, stride_dy, stride_dcarry,
        BLOCK_B, BLOCK_H, BLOCK_K, HAS_NEXT, HAS_DY, HAS_LENGTHS, ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip
    p_dcarry = dcarry_ptr + o_b[:, None] * stride_dcarry + o_u[None, :]

    b_gates = tl.load(gates_ptr + o_b[:, None] * stride_gates + o_g[None, :], mask=m_bg, other=0.0).to(ACC_DTYPE)
    b_c = tl.load(c_ptr + o_b[:, None] * stride_c + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_cp + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    p_dc = dc_ptr + o_b[:, None] * stride_dc + o_u[None, :]
    b_dc = tl.load(p_dc, mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_dg, b_dc = _cell_backward(b_dh, b_gates, b_c, b_cp, b_dc, BLOCK_B, BLOCK_H)
    if HAS_LENGTHS:
        b_dg = tl.where(v_t[:, None], b_dg, 0.0)
        tl.store(p_dcarry, tl.where(v_t[:, None], 0.0, b_rec).to(dcarry_ptr.dtype.element_ty), mask=m_bu)
    tl.store(dg_ptr + o_b[:, None] * stride_dg + o_g[None, :], b_dg.to(dg_ptr.dtype.element_ty), mask=m_bg)
    tl.store(p_dc, b_dc.to(dc_ptr.dtype.element_ty), mask=m_bu & v_t[:, None])


@triton.jit(do_not_specialize=["t"])
def _lstmp_bwd_step_kernel(
    dg_next_ptr,  # [B, G]
    w_ptr,  # [G, P]  W_hh with interleaved rows
    wr_ptr,  # [P, H]  W_hr
    dy_ptr,  # [B, P]
    dcarry_ptr,  # [B, P]
    gates_ptr,  # [B, G]
    c_ptr,  # [B, H]
    c_prev_ptr,  # [B, H]
    dc_ptr,  # [B, H]
    dg_ptr,  # [B, G]
    dh_ptr,  # [B, P]  out: the whole gradient of h_t (zeros past a row's length), for dW_hr
    len_ptr,  # [B]
    B,
    H,
    P,
    t,
    stride_dgn,
    stride_dy,
    stride_dcarry,
    stride_gates,
    stride_c,
    stride_cp,
    stride_dc,
    stride_dg,
    stride_dh,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_p = tl.arange(0, BLOCK_P)
    m_b, m_p = o_b < B, o_p < P
    m_bp = m_b[:, None] & m_p[None, :]
    v_t, _ = _row_validity(len_ptr, o_b, m_b, t, t, HAS_LENGTHS)

    b_rec, b_dh = _grad_into_h(
        dg_next_ptr, w_ptr, dy_ptr, dcarry_ptr, o_b, o_p, m_b, m_p, v_t, H, P, stride_dgn, stride_dy, stride_dcarry,
        BLOCK_B, BLOCK_P, BLOCK_K, HAS_NEXT, HAS_DY, HAS_LENGTHS, ACC_DTYPE, INPUT_PRECISION,
    )  # fmt: skip
    p_dcarry = dcarry_ptr + o_b[:, None] * stride_dcarry + o_p[None, :]
    if HAS_LENGTHS:
        b_dh = tl.where(v_t[:, None], b_dh, 0.0)
        tl.store(p_dcarry, tl.where(v_t[:, None], 0.0, b_rec).to(dcarry_ptr.dtype.element_ty), mask=m_bp)
    b_dh = b_dh.to(dh_ptr.dtype.element_ty)
    tl.store(dh_ptr + o_b[:, None] * stride_dh + o_p[None, :], b_dh, mask=m_bp)

    for u in range(0, H, BLOCK_H):
        o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
        o_u = u + tl.arange(0, BLOCK_H)
        m_g, m_u = o_g < 4 * H, o_u < H
        m_bu = m_b[:, None] & m_u[None, :]
        m_bg = m_b[:, None] & m_g[None, :]
        # dm_t[:, units] = dh_t @ W_hr[:, units]
        b_wr = tl.load(wr_ptr + o_p[:, None] * H + o_u[None, :], mask=m_p[:, None] & m_u[None, :], other=0.0)
        b_dm = tl.dot(b_dh, b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
        b_gates = tl.load(gates_ptr + o_b[:, None] * stride_gates + o_g[None, :], mask=m_bg, other=0.0).to(ACC_DTYPE)
        b_c = tl.load(c_ptr + o_b[:, None] * stride_c + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_cp + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
        p_dc = dc_ptr + o_b[:, None] * stride_dc + o_u[None, :]
        b_dc = tl.load(p_dc, mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_dg, b_dc = _cell_backward(b_dm, b_gates, b_c, b_cp, b_dc, BLOCK_B, BLOCK_H)
        if HAS_LENGTHS:
            b_dg = tl.where(v_t[:, None], b_dg, 0.0)
        tl.store(dg_ptr + o_b[:, None] * stride_dg + o_g[None, :], b_dg.to(dg_ptr.dtype.element_ty), mask=m_bg)
        tl.store(p_dc, b_dc.to(dc_ptr.dtype.element_ty), mask=m_bu & v_t[:, None])


# ----------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------


def interleave_gates(w: torch.Tensor) -> torch.Tensor:
    """[4H, ...] in torch's gate-major order (i block, f block, g block, o block) -> unit-interleaved rows."""
    h = w.shape[0] // 4
    return w.reshape(4, h, -1).transpose(0, 1).reshape(w.shape)


def deinterleave_gates(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`interleave_gates`."""
    h = w.shape[0] // 4
    return w.reshape(h, 4, -1).transpose(0, 1).reshape(w.shape)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the cell state and of every accumulator for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _input_precision(dtype: torch.dtype) -> str:
    # follow torch's own float32 matmul setting, so the recurrence is as exact as the input GEMM beside it
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def step_config(
    batch: int, hidden: int, reduce: int, dtype: torch.dtype = torch.float32, proj_size: int = 0
) -> dict:
    """Tile sizes and warps for one step; ``reduce`` is the dot's inner length (R forward, 4H backward).

    Every dimension of a ``tl.dot`` must be at least 16 on the GPU, so tiles never shrink below that. The warp
    counts keep the sm_90 builds free of register spills (``benchmarks/compile_report.py``): 64 batch rows need
    8 warps, 32 or fewer fit in 4, and float64 (gradcheck only) fits with 16 rows. With a projection a program
    holds whole rows of h_t (BLOCK_P >= P) and loops over 16-unit tiles (also a dot's inner length there).
    """
    if proj_size:
        # spill-free on sm_90 for P <= 256 in every dtype (larger P may spill: the row of h_t lives in registers)
        wide = dtype in (torch.float16, torch.bfloat16)
        return {
            "BLOCK_B": 16,
            "BLOCK_H": 16,
            "BLOCK_K": min(64 if wide else 16, max(16, triton.next_power_of_2(reduce))),
            "BLOCK_P": max(16, triton.next_power_of_2(proj_size)),
            "num_warps": 8,
        }
    block_b = min(16 if dtype == torch.float64 else 64, max(16, triton.next_power_of_2(batch)))
    return {
        "BLOCK_B": block_b,
        "BLOCK_H": min(32, max(4, triton.next_power_of_2(hidden))),
        "BLOCK_K": min(64, max(16, triton.next_power_of_2(reduce))),
        "num_warps": 8 if block_b == 64 else 4,
    }


def _check_config(config: dict, proj_size: int) -> dict:
    if config["BLOCK_B"] < 16 or 4 * config["BLOCK_H"] < 16 or config["BLOCK_K"] < 16:
        raise ValueError(f"tl.dot needs every tile dimension >= 16, got {config}")
    if proj_size and (config["BLOCK_H"] < 16 or config.get("BLOCK_P", 0) < max(16, proj_size)):
        raise ValueError(f"with a projection BLOCK_H must be >= 16 and BLOCK_P >= max(16, proj_size), got {config}")
    return config


def _tiles(config: dict) -> dict:
    return {k: v for k, v in config.items() if k.startswith("BLOCK_")}


def lstm_layer_forward(
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, R]
    c0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [4H, I]
    w_hh: torch.Tensor,  # [4H, R]
    b_ih: torch.Tensor | None,  # [4H]
    b_hh: torch.Tensor | None,  # [4H]
    w_hr: torch.Tensor | None = None,  # [P, H]
    lengths: torch.Tensor | None = None,  # [B] int, 1 <= len <= T, on x's device
    reverse: bool = False,
    store_for_backward: bool = True,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run one LSTM layer in one direction on the Triton step kernels.

    Returns ``(y [T, B, R], h_n [B, R], c_n [B, H], gates [T, B, G] | None, cs [T, B, H] | None)``. ``y``,
    ``h_n`` and ``c_n`` have the input's dtype. ``gates`` (activated, interleaved, input dtype) and ``cs`` (every
    c_t, accumulator dtype) are what :func:`lstm_layer_backward` needs; ``None`` unless ``store_for_backward``.
    ``reverse`` processes time from T-1 down to 0. With ``w_hr``, h_t is projected to P features. With
    ``lengths``, ``y`` is zero past each row's length and ``h_n``/``c_n`` are taken at each row's last step.
    The caller validates ``lengths``.
    """
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"tritonlstm kernels support {SUPPORTED_DTYPES}, got {dtype}")

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
    P = w_hr.shape[0] if w_hr is not None else 0
    cfg = _check_config(config or step_config(B, H, R, dtype, P), P)
    common = dict(
        STORE_GATES=store_for_backward, HAS_LENGTHS=lengths is not None, ACC_DTYPE=_TL_DTYPE[acc],
        INPUT_PRECISION=_input_precision(dtype), num_warps=cfg["num_warps"], **_tiles(cfg),
    )  # fmt: skip
    if w_hr is not None:
        wr_t = w_hr.t().contiguous()  # [H, P]
        grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    else:
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))
    delta = 1 if reverse else -1  # t + delta: the step before t in processing order
    c_prev = c0
    for n, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):
        if B == 0:
            break
        t_prev = t + delta
        h_prev = y[t_prev] if 0 <= t_prev < T else h0
        c_out = cs[t] if store_for_backward else cs[n % 2]
        strides = (gx.stride(1), h_prev.stride(0), h0.stride(0), c_prev.stride(0), y.stride(1), c_out.stride(0))
        if w_hr is not None:
            _lstmp_fwd_step_kernel[grid](
                gx[t], w_t, wr_t, h_prev, h0, c_prev, y[t], c_out, lens, B, H, P, t, t_prev, *strides, **common
            )
        else:
            _lstm_fwd_step_kernel[grid](gx[t], w_t, h_prev, h0, c_prev, y[t], c_out, lens, B, H, t, t_prev, *strides, **common)
        c_prev = c_out

    c_n = c_prev.to(dtype, copy=True)
    if B == 0:
        h_n = h0.clone()
    elif lengths is not None and not reverse:
        h_n = y[lens.long() - 1, torch.arange(B, device=x.device)]
    else:
        h_n = y[0 if reverse else T - 1].clone()
    if not store_for_backward:
        return y, h_n, c_n, None, None
    return y, h_n, c_n, gx, cs


def lstm_layer_backward(
    dy: torch.Tensor | None,  # [T, B, R]
    dh_n: torch.Tensor | None,  # [B, R]
    dc_n: torch.Tensor | None,  # [B, H]
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, R]
    c0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [4H, I]
    w_hh: torch.Tensor,  # [4H, R]
    y: torch.Tensor,  # [T, B, R]   forward output
    gates: torch.Tensor,  # [T, B, G]   activated gates from the forward
    cs: torch.Tensor,  # [T, B, H]   every c_t from the forward
    w_hr: torch.Tensor | None = None,  # [P, H]
    lengths: torch.Tensor | None = None,  # [B]
    reverse: bool = False,
    needs: tuple[bool, ...] = (True,) * 7,
    config: dict | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of one layer and direction: ``(dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr)``.

    ``dy``, ``dh_n`` and ``dc_n`` may each be ``None`` (treated as zeros). ``needs`` says which of the seven
    gradients to compute; the others come back as ``None`` (``dw_hr`` always without ``w_hr``). ``db`` is the
    gradient of ``b_ih`` and of ``b_hh`` alike. Reductions over time and batch are GEMMs or ``torch.sum``:
    deterministic, no atomics.
    """
    need_dx, need_dh0, need_dc0, need_dw_ih, need_dw_hh, need_db, need_dw_hr = needs
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    P = w_hr.shape[0] if w_hr is not None else 0
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    w_r = interleave_gates(w_hh).contiguous()  # [G, R]
    c0 = c0.to(acc).contiguous()
    dy = dy.contiguous() if dy is not None else None
    dc = dc_n.to(acc, copy=True).contiguous() if dc_n is not None else torch.zeros(B, H, device=x.device, dtype=acc)
    dcarry = dh_n.to(acc, copy=True).contiguous() if dh_n is not None else torch.zeros(B, R, device=x.device, dtype=acc)
    lens = lengths.to(device=x.device, dtype=torch.int32).contiguous() if lengths is not None else dc  # dc: unread
    dg = torch.empty(T, B, 4 * H, device=x.device, dtype=dtype)
    dh_all = torch.empty(T, B, P, device=x.device, dtype=dtype) if w_hr is not None else None
    cfg = _check_config(config or step_config(B, H, 4 * H, dtype, P), P)
    common = dict(
        HAS_DY=dy is not None, HAS_LENGTHS=lengths is not None, ACC_DTYPE=_TL_DTYPE[acc],
        INPUT_PRECISION=_input_precision(dtype), num_warps=cfg["num_warps"], **_tiles(cfg),
    )  # fmt: skip
    if w_hr is not None:
        w_hr_c = w_hr.contiguous()
        grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    else:
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))

    # processing order of the backward: the forward's, reversed. `prev` of step t is the step before it in the
    # forward (t-1 forward, t+1 reverse); `first` is the time index the forward started at.
    delta, first = (1, T - 1) if reverse else (-1, 0)
    for n, t in enumerate(range(T) if reverse else range(T - 1, -1, -1)):
        if B == 0:
            break
        c_prev = c0 if t == first else cs[t + delta]
        dg_next = dg[t - delta] if n > 0 else dg[t]  # not read on the first step
        dy_t = dy[t] if dy is not None else y[t]  # not read without dy
        strides = (dg_next.stride(0), dy_t.stride(0), dcarry.stride(0), gates.stride(1), cs.stride(1),
                   c_prev.stride(0), dc.stride(0), dg.stride(1))  # fmt: skip
        if w_hr is not None:
            _lstmp_bwd_step_kernel[grid](
                dg_next, w_r, w_hr_c, dy_t, dcarry, gates[t], cs[t], c_prev, dc, dg[t], dh_all[t], lens,
                B, H, P, t, *strides, dh_all.stride(1), HAS_NEXT=n > 0, **common,
            )  # fmt: skip
        else:
            _lstm_bwd_step_kernel[grid](
                dg_next, w_r, dy_t, dcarry, gates[t], cs[t], c_prev, dc, dg[t], lens, B, H, t, *strides,
                HAS_NEXT=n > 0, **common,
            )  # fmt: skip
    if B == 0:
        dg.zero_()
        if dh_all is not None:
            dh_all.zero_()

    dg2 = dg.view(T * B, 4 * H)
    dx = dh0 = dc0 = dw_ih = dw_hh = db = dw_hr = None
    if need_dh0:
        # through the first step's gates, plus (with lengths) what skipped steps carried straight to h0
        dh0 = torch.mm(dg[first], w_r)
        if lengths is not None:
            dh0 = (dh0.to(acc) + dcarry).to(dtype)
    if need_dc0:
        dc0 = dc.to(dtype)
    if need_dx:
        dx = torch.mm(dg2, interleave_gates(w_ih)).view(T, B, I)
    if need_dw_ih:
        dw_ih = deinterleave_gates(torch.mm(dg2.t(), x.reshape(T * B, I)))
    if need_dw_hh:
        # h_{t-1} of every step is the output of its forward predecessor, or h0 where that step was not the row's
        dg_rest, h_rest = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
        if lengths is not None and reverse and T > 1:
            own = (torch.arange(1, T, device=x.device)[:, None] < lengths.to(x.device)[None, :])[..., None]
            h_rest = torch.where(own, h_rest, h0[None])
        dw_hh = torch.mm(dg[first].t(), h0)
        if T > 1:
            dw_hh = torch.addmm(dw_hh, dg_rest.reshape(-1, 4 * H).t(), h_rest.reshape(-1, R))
        dw_hh = deinterleave_gates(dw_hh)
    if need_db:
        db = deinterleave_gates(dg2.sum(0, dtype=acc)).to(dtype)
    if need_dw_hr and w_hr is not None:
        # m_t = o * tanh(c_t) from the saved gates and cell states, rounded to the storage dtype as in the forward
        m = (gates.view(T, B, H, 4)[..., 3].to(acc) * torch.tanh(cs)).to(dtype)
        dw_hr = torch.mm(dh_all.reshape(T * B, P).t(), m.reshape(T * B, H))
    return dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr
