"""The GRU's sequence kernels: one launch runs a whole layer's time loop, every direction, forward and backward.

The LSTM's two regimes (:mod:`tritonlstm.kernels.sequence_fwd`, :mod:`tritonlstm.kernels.sequence_bwd`) with the
GRU's cell (:mod:`tritonlstm.kernels.gru_step`):

* ``"gru-batch"``: a program owns a batch tile and every unit, and runs, for each step and unit tile, exactly what
  a per-step program runs (the same ``@triton.jit`` tile functions, W_hh streamed from L2), a CTA barrier between
  steps. With the per-step kernels' tiles it reproduces them bit for bit.
* ``"gru-split"``: the programs of a (batch tile, direction) group split the hidden units, keep their slices of
  W_hh on chip for the whole sequence (forward: the r, z and n columns of their units over R = H, in one or two
  power-of-two blocks; backward: every one of the 3H gate rows for their units, likewise, or beyond the operand
  budget in up to three chunks of 1024 gate rows, as the LSTM's chunked backward), and meet at the LSTM's
  counter barrier (:func:`tritonlstm.kernels.jit.barrier`) after every step; h_t (backward: dG_t) goes through
  global memory and is read with ``.cg`` loads. ``K_SPLIT`` splits each dot over its inner dimension, one split a
  warp (:func:`tritonlstm.kernels.jit.split_k_dot`). Recurrent dropout goes through the LSTM's exchange slots of
  h_t * mask. The cell's epilogue is the per-step kernels' (:func:`tritonlstm.kernels.gru_step._gru_fwd_epilogue`,
  ``_gru_bwd_epilogue``).

Safety as for the LSTM: every wait is bounded (``spin_limit`` polls); a program whose wait times out sets the
error flag and writes NaN into everything it computes afterwards. Layouts: ``gx``/``gates``/``dg`` are per
direction ``[D, T, B, ·]``; y, its gradient, h0, the recurrent mask and the backward's carry are ``[.., B, D, H]``
(y's row stride), except that the unit-split forward takes h0 and the mask per direction ``[D, B, H]`` as the
LSTM's exchange does. The launchers share the per-step launchers' input projection and the GEMMs after the loop.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlstm.kernels import gru_step
from tritonlstm.kernels.common import NONE, Layer, Regularisers, check_dtype
from tritonlstm.kernels.config import DEFAULT_SPIN_LIMIT, gru_constexprs, gru_sequence_config
from tritonlstm.kernels.gru_step import _gru_bwd_epilogue, _gru_bwd_tile, _gru_fwd_epilogue, _gru_fwd_tile
from tritonlstm.kernels.jit import ACC, and_, barrier, batch_rows, split_k_dot
from tritonlstm.kernels.runtime import acc_dtype, input_precision, launch_guard, sm_count
from tritonlstm.kernels.sequence_fwd import _h_prev, _load_h_prev, _publish_masked, launch_options
from tritonlstm.kernels.step import _row_validity, _step_or_initial


@triton.jit
def _w_columns(w_d, k0, o_u, m_u, gate, H, BLOCK: tl.constexpr, K_SPLIT: tl.constexpr):
    """W_hh^T[k0 .. k0 + BLOCK, gate's columns of units o_u] (W^T ``[H, 3H]`` at w_d), loaded once: ``[BLOCK,
    units]``, or ``[K_SPLIT, BLOCK // K_SPLIT, units]`` for :func:`tritonlstm.kernels.jit.split_k_dot`."""
    o_c = gate * H + o_u
    if K_SPLIT == 1:
        o_k = k0 + tl.arange(0, BLOCK)[:, None]
        b_w = tl.load(w_d + o_k * (3 * H) + o_c[None, :], mask=(o_k < H) & m_u[None, :], other=0.0)
    else:
        KS: tl.constexpr = BLOCK // K_SPLIT
        o_k = k0 + tl.arange(0, K_SPLIT)[:, None, None] * KS + tl.arange(0, KS)[None, :, None]
        b_w = tl.load(w_d + o_k * (3 * H) + o_c[None, None, :], mask=(o_k < H) & m_u[None, None, :], other=0.0)
    return b_w


@triton.jit
def _w_rows(w_d, k0, o_u, m_u, H, BLOCK: tl.constexpr, K_SPLIT: tl.constexpr):
    """W_hh[gate rows k0 .. k0 + BLOCK, columns o_u] (torch's ``[3H, H]`` at w_d), the unit-split backward's
    resident operand: ``[BLOCK, units]`` or ``[K_SPLIT, BLOCK // K_SPLIT, units]``."""
    if K_SPLIT == 1:
        o_k = k0 + tl.arange(0, BLOCK)[:, None]
        b_w = tl.load(w_d + o_k * H + o_u[None, :], mask=(o_k < 3 * H) & m_u[None, :], other=0.0)
    else:
        KS: tl.constexpr = BLOCK // K_SPLIT
        o_k = k0 + tl.arange(0, K_SPLIT)[:, None, None] * KS + tl.arange(0, KS)[None, :, None]
        b_w = tl.load(w_d + o_k * H + o_u[None, None, :], mask=(o_k < 3 * H) & m_u[None, None, :], other=0.0)
    return b_w


@triton.jit
def _dgh_block_dot(dgn, m_b, n, k0, b_w, H, BLOCK: tl.constexpr, K_SPLIT: tl.constexpr, ACC_DTYPE: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr):  # fmt: skip
    """dG_{t+1}[rows, gate rows k0 .. k0 + BLOCK] (``dgn``: its rows' base, ``.cg`` loads after the barrier; zero
    at the first step, n == 0) @ the resident W_hh block ``b_w``."""
    o_k = k0 + tl.arange(0, BLOCK)[None, :]
    b_dgn = tl.load(dgn + o_k, mask=and_(m_b[:, None] & (o_k < 3 * H), n > 0), other=0.0, cache_modifier=".cg")
    return split_k_dot(b_dgn, b_w, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)


@triton.jit
def _step_times(n, T, rev, BACKWARD: tl.constexpr):
    """Step n of a direction's loop: (t, the step before t in the forward's order, the one after it)."""
    if BACKWARD:
        t = (T - 1 - n) + rev * (2 * n - T + 1)
    else:
        t = n + rev * (T - 1 - 2 * n)
    return t, t - 1 + 2 * rev, t + 1 - 2 * rev


@triton.jit(do_not_specialize=["T", "B", "rev_mask"])
def _gru_seq_fwd_batch_kernel(
    gx_ptr,  # [D, T, B, 3H]  x_t W_ih^T + b_ih (+ b_hh's r and z rows), gate-major
    w_ptr,  # [D, H, 3H]  W_hh^T
    bhn_ptr,  # [D, H]  b_hh's n rows (read if HAS_BIAS)
    h0_ptr,  # [B, D, H]
    y_ptr,  # [T, B, D*H]  out
    gates_ptr,  # [D, T, B, 4H]  out if STORE_GATES: r, z, n, gh_n
    len_ptr,  # [B]  int32 (read if HAS_LENGTHS)
    hm_ptr,  # [B, D, H]  recurrent dropout mask (read if HAS_MASK)
    zs_ptr,  # [1]  int64 zoneout seed (read if ZONEOUT == 2)
    zo_h: tl.float64,
    T,
    B,
    rev_mask,  # bit d set: direction d runs from the last step to the first
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
    i_b, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    ldy = tl.num_programs(1) * H
    rev = (rev_mask >> tl.program_id(1)) & 1
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    gx_d, gates_d = gx_ptr + i_d * T * B * (3 * H), gates_ptr + i_d * T * B * (4 * H)
    w_d, bhn_d = w_ptr + i_d * H * (3 * H), bhn_ptr + i_d * H
    h0_d, y_d, hm_d = h0_ptr + i_d * H, y_ptr + i_d * H, hm_ptr + i_d * H
    for n in range(0, T):
        t, t_prev, _ = _step_times(n, T, rev, False)
        v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)
        for u in range(0, H, BLOCK_H):
            o_u = u + tl.arange(0, BLOCK_H)
            _gru_fwd_tile(
                gx_d + t.to(tl.int64) * B * (3 * H), w_d, bhn_d, y_d, h0_d, gates_d + t.to(tl.int64) * B * (4 * H),
                hm_d, zs_ptr, zo_h, 2 * tl.program_id(1), o_b, o_u, m_b, o_u < H, v_t, v_prev, B, T, t, t_prev,
                3 * H, B * ldy, ldy, 4 * H, H, BLOCK_B, BLOCK_H, BLOCK_K, STORE_GATES, HAS_BIAS, HAS_LENGTHS,
                HAS_MASK, ZONEOUT, ACC_DTYPE, INPUT_PRECISION,
            )  # fmt: skip
        tl.debug_barrier()  # this step's h_t, written by every thread, precedes the next step's loads


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _gru_seq_fwd_split_kernel(
    gx_ptr,  # [D, T, B, 3H]
    w_ptr,  # [D, H, 3H]  W_hh^T
    bhn_ptr,  # [D, H]
    h0_ptr,  # [D, B, H]  (per direction, as the exchange reads it)
    y_ptr,  # [T, B, D*H]  out; the exchange of h_t without recurrent dropout
    gates_ptr,  # [D, T, B, 4H]
    len_ptr,
    hm_ptr,  # [D, B, H]  recurrent dropout mask (read if HAS_MASK)
    xh_ptr,  # [D, 3, B, H]  h_t * mask exchanged, slots 0/1 by step, h0 * mask in 2 (HAS_MASK)
    zs_ptr,
    zo_h: tl.float64,
    sync_ptr,  # [D, NB]  int32 barrier counters, zero at launch
    err_ptr,  # [1]  int32: set to 1 when a barrier wait times out
    T,
    B,
    rev_mask,
    spin_limit,
    H: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,  # units per program
    BLOCK_R: tl.constexpr,  # h_{t-1}'s first block of columns; with BLOCK_R2 they cover H
    BLOCK_R2: tl.constexpr,
    K_SPLIT: tl.constexpr,
    K_SPLIT2: tl.constexpr,
    STORE_GATES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_b, i_d, i_s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    NS = tl.num_programs(2)
    ldy = tl.num_programs(1) * H
    rev = (rev_mask >> tl.program_id(1)) & 1
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    gx_d, gates_d = gx_ptr + i_d * T * B * (3 * H), gates_ptr + i_d * T * B * (4 * H)
    w_d, bhn_d = w_ptr + i_d * H * (3 * H), bhn_ptr + i_d * H
    h0_d, y_d = h0_ptr + i_d * B * H, y_ptr + i_d * H
    hm_d, xh_d = hm_ptr + i_d * B * H, xh_ptr + i_d * 3 * B * H
    sync = sync_ptr + i_d * tl.num_programs(0) + i_b
    failed = tl.program_id(0) * 0

    # the program's units and their slices of W_hh^T (r, z, n columns), loaded once for the whole sequence
    o_u = i_s * BLOCK_H + tl.arange(0, BLOCK_H)
    m_u = o_u < H
    m_bu = m_b[:, None] & m_u[None, :]
    b_wr = _w_columns(w_d, 0, o_u, m_u, 0, H, BLOCK_R, K_SPLIT)
    b_wz = _w_columns(w_d, 0, o_u, m_u, 1, H, BLOCK_R, K_SPLIT)
    b_wn = _w_columns(w_d, 0, o_u, m_u, 2, H, BLOCK_R, K_SPLIT)
    b_wr2, b_wz2, b_wn2 = b_wr, b_wz, b_wn  # unread with one block
    if BLOCK_R2 > 0:
        b_wr2 = _w_columns(w_d, BLOCK_R, o_u, m_u, 0, H, BLOCK_R2, K_SPLIT2)
        b_wz2 = _w_columns(w_d, BLOCK_R, o_u, m_u, 1, H, BLOCK_R2, K_SPLIT2)
        b_wn2 = _w_columns(w_d, BLOCK_R, o_u, m_u, 2, H, BLOCK_R2, K_SPLIT2)
    b_hmx = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)  # unread without recurrent dropout
    if HAS_MASK:  # each program masks the columns of h_t it publishes
        b_hmx = tl.load(hm_d + o_b[:, None] * H + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)

    for n in range(0, T):
        t, t_prev, _ = _step_times(n, T, rev, False)
        v_t = t < b_len
        v_prev = and_(t_prev < b_len, t_prev >= 0)
        tp = tl.minimum(tl.maximum(t_prev, 0), T - 1).to(tl.int64)
        poison = tl.where(failed != 0, float("nan"), 0.0)
        b_hp, failed = _h_prev(y_d, h0_d, xh_d, n, o_b, tl.arange(0, BLOCK_R), m_b, v_prev, tp, B, H, ldy, failed,
                               spin_limit, False, HAS_MASK, tl.int32, y_ptr.dtype.element_ty)  # fmt: skip
        b_ar = split_k_dot(b_hp, b_wr, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        b_az = split_k_dot(b_hp, b_wz, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        b_an = split_k_dot(b_hp, b_wn, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        if BLOCK_R2 > 0:
            o_k2 = BLOCK_R + tl.arange(0, BLOCK_R2)
            b_hp2, failed = _h_prev(y_d, h0_d, xh_d, n, o_b, o_k2, m_b, v_prev, tp, B, H, ldy, failed, spin_limit,
                                    False, HAS_MASK, tl.int32, y_ptr.dtype.element_ty)  # fmt: skip
            b_ar += split_k_dot(b_hp2, b_wr2, K_SPLIT2, ACC_DTYPE, INPUT_PRECISION)
            b_az += split_k_dot(b_hp2, b_wz2, K_SPLIT2, ACC_DTYPE, INPUT_PRECISION)
            b_an += split_k_dot(b_hp2, b_wn2, K_SPLIT2, ACC_DTYPE, INPUT_PRECISION)
        b_hu = _load_h_prev(y_d, h0_d, o_b, o_u, m_b, m_u, v_prev, tp, B, ldy, H).to(ACC_DTYPE)
        p_gx = gx_d + t.to(tl.int64) * B * (3 * H) + o_b[:, None] * (3 * H) + o_u[None, :]
        p_y = y_d + t.to(tl.int64) * B * ldy + o_b[:, None] * ldy + o_u[None, :]
        p_g = gates_d + t.to(tl.int64) * B * (4 * H) + o_b[:, None] * (4 * H) + o_u[None, :]
        b_h = _gru_fwd_epilogue(b_ar, b_az, b_an, p_gx, bhn_d, b_hu, p_y, p_g, zs_ptr, zo_h, 2 * tl.program_id(1), t,
                                o_b, o_u, m_b, m_u, v_t, B, poison, H, STORE_GATES, HAS_BIAS, HAS_LENGTHS, ZONEOUT,
                                ACC_DTYPE)  # fmt: skip
        if HAS_MASK:
            _publish_masked(xh_d, n, B, H, o_b, o_u, m_bu, b_h, b_hmx, y_ptr.dtype.element_ty, ACC_DTYPE)
        failed = barrier(sync, NS * (n + 1), failed, spin_limit)
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit(do_not_specialize=["T", "B", "rev_mask"])
def _gru_seq_bwd_batch_kernel(
    dg_ptr,  # [D, T, B, 4H]  out: dgh (r, z, n rows) then dan, per step
    w_ptr,  # [D, 3H, H]  W_hh
    dy_ptr,  # [T, B, D*H]  (read if HAS_DY)
    dcarry_ptr,  # [B, D, H]  accumulator dtype: h_n's gradient in, what reached h0 without a gate out
    gates_ptr,  # [D, T, B, 4H]  the forward's r, z, n, gh_n
    y_ptr,  # [T, B, D*H]  the forward's outputs
    h0_ptr,  # [B, D, H]
    len_ptr,
    hm_ptr,  # [B, D, H]
    zs_ptr,
    zo_h: tl.float64,
    T,
    B,
    rev_mask,
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
    i_b, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    ldy = tl.num_programs(1) * H
    rev = (rev_mask >> tl.program_id(1)) & 1
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    dg_d, gates_d, w_d = dg_ptr + i_d * T * B * (4 * H), gates_ptr + i_d * T * B * (4 * H), w_ptr + i_d * (3 * H) * H
    off = i_d * H  # the direction's columns of the [.., B, D, H] tensors
    for n in range(0, T):
        t, t_prev, t_next = _step_times(n, T, rev, True)
        v_t, v_prev = _row_validity(len_ptr, o_b, m_b, t, t_prev, HAS_LENGTHS)
        for u in range(0, H, BLOCK_H):
            o_u = u + tl.arange(0, BLOCK_H)
            _gru_bwd_tile(
                dg_d, w_d, dy_ptr + off, dcarry_ptr + off, gates_d, y_ptr + off, h0_ptr + off, hm_ptr + off, zs_ptr,
                zo_h, 2 * tl.program_id(1), o_b, o_u, m_b, o_u < H, v_t, v_prev, B, T, t, t_next, t_prev,
                B * (4 * H), 4 * H, B * (4 * H), 4 * H, B * ldy, ldy, B * ldy, ldy, H, BLOCK_B, BLOCK_H, BLOCK_K,
                HAS_DY, HAS_LENGTHS, HAS_MASK, ZONEOUT, ACC_DTYPE, INPUT_PRECISION,
            )  # fmt: skip
        tl.debug_barrier()  # this step's dG_t and carry precede the next step's reads


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _gru_seq_bwd_split_kernel(
    dg_ptr,  # [D, T, B, 4H]
    w_ptr,  # [D, 3H, H]
    dy_ptr,  # [T, B, D*H]
    dcarry_ptr,  # [B, D, H]
    gates_ptr,  # [D, T, B, 4H]
    y_ptr,  # [T, B, D*H]
    h0_ptr,  # [B, D, H]
    len_ptr,
    hm_ptr,  # [B, D, H]
    zs_ptr,
    zo_h: tl.float64,
    sync_ptr,  # [D, NB]
    err_ptr,  # [1]
    T,
    B,
    rev_mask,
    spin_limit,
    H: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_G: tl.constexpr,  # the 3H gate rows in up to four resident blocks, one after another (0: absent)
    BLOCK_G2: tl.constexpr,
    BLOCK_G3: tl.constexpr,
    BLOCK_G4: tl.constexpr,
    K_SPLIT: tl.constexpr,  # each block's dot split that many ways over its gate rows
    K_SPLIT2: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_b, i_d, i_s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    NS = tl.num_programs(2)
    ldy = tl.num_programs(1) * H
    rev = (rev_mask >> tl.program_id(1)) & 1
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    dg_d, gates_d, w_d = dg_ptr + i_d * T * B * (4 * H), gates_ptr + i_d * T * B * (4 * H), w_ptr + i_d * (3 * H) * H
    off = i_d * H
    dy_d, dcarry_d, y_d, h0_d, hm_d = dy_ptr + off, dcarry_ptr + off, y_ptr + off, h0_ptr + off, hm_ptr + off
    sync = sync_ptr + i_d * tl.num_programs(0) + i_b
    failed = tl.program_id(0) * 0

    # W_hh[every gate row, the program's units], loaded once for the whole sequence, in up to four blocks of gate
    # rows (beyond the operand budget: chunks, which the compiler keeps in shared memory)
    o_u = i_s * BLOCK_H + tl.arange(0, BLOCK_H)
    m_u = o_u < H
    m_bu = m_b[:, None] & m_u[None, :]
    o_bu = o_b[:, None] * ldy + o_u[None, :]
    G2: tl.constexpr = BLOCK_G
    G3: tl.constexpr = BLOCK_G + BLOCK_G2
    G4: tl.constexpr = BLOCK_G + BLOCK_G2 + BLOCK_G3
    b_w = _w_rows(w_d, 0, o_u, m_u, H, BLOCK_G, K_SPLIT)
    b_w2, b_w3, b_w4 = b_w, b_w, b_w  # unread where absent
    if BLOCK_G2 > 0:
        b_w2 = _w_rows(w_d, G2, o_u, m_u, H, BLOCK_G2, K_SPLIT2)
    if BLOCK_G3 > 0:
        b_w3 = _w_rows(w_d, G3, o_u, m_u, H, BLOCK_G3, K_SPLIT)
    if BLOCK_G4 > 0:
        b_w4 = _w_rows(w_d, G4, o_u, m_u, H, BLOCK_G4, K_SPLIT)
    b_hm = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    if HAS_MASK:
        b_hm = tl.load(hm_d + o_bu, mask=m_bu, other=0.0).to(ACC_DTYPE)

    for n in range(0, T):
        t, t_prev, t_next = _step_times(n, T, rev, True)
        v_t = t < b_len
        v_prev = and_(t_prev < b_len, t_prev >= 0)
        poison = tl.where(failed != 0, float("nan"), 0.0)
        # dG_{t+1} of every gate row (all the group's programs wrote it last step) @ W_hh[:, its units]
        dgn = dg_d + tl.minimum(tl.maximum(t_next, 0), T - 1).to(tl.int64) * B * (4 * H) + o_b[:, None] * (4 * H)
        b_rec = _dgh_block_dot(dgn, m_b, n, 0, b_w, H, BLOCK_G, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        if BLOCK_G2 > 0:
            b_rec += _dgh_block_dot(dgn, m_b, n, G2, b_w2, H, BLOCK_G2, K_SPLIT2, ACC_DTYPE, INPUT_PRECISION)
        if BLOCK_G3 > 0:
            b_rec += _dgh_block_dot(dgn, m_b, n, G3, b_w3, H, BLOCK_G3, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        if BLOCK_G4 > 0:
            b_rec += _dgh_block_dot(dgn, m_b, n, G4, b_w4, H, BLOCK_G4, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        if HAS_MASK:  # the next step's product saw h_t * mask
            b_rec *= b_hm
        b_rec += tl.load(dcarry_d + o_bu, mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_dh = b_rec
        if HAS_DY:
            b_dh += tl.load(dy_d + t.to(tl.int64) * B * ldy + o_bu, mask=m_bu & v_t[:, None], other=0.0).to(ACC_DTYPE)
        h_prev_ptr = _step_or_initial(y_d, t_prev, T, B * ldy, h0_d)
        _gru_bwd_epilogue(
            b_rec, b_dh, gates_d + t.to(tl.int64) * B * (4 * H), h_prev_ptr, h0_d, dcarry_d,
            dg_d + t.to(tl.int64) * B * (4 * H), zs_ptr, zo_h, 2 * tl.program_id(1), t, o_b, o_u, m_b, m_u, v_t,
            v_prev, B, 4 * H, ldy, ldy, 4 * H, poison, H, BLOCK_B, BLOCK_H, HAS_LENGTHS, ZONEOUT, ACC_DTYPE,
        )  # fmt: skip
        failed = barrier(sync, NS * (n + 1), failed, spin_limit)
    tl.store(err_ptr, failed, mask=failed != 0)


def _by_row(t: torch.Tensor) -> torch.Tensor:
    """``[D, B, H]`` as ``[B, D, H]`` (contiguous): y's row layout."""
    return t.transpose(0, 1).contiguous()


def forward(layer: Layer, regs: Regularisers = NONE, store: bool = True, config: dict | None = None, err=None):
    """One GRU layer, every direction, one launch: ``(y [T, B, D*H], h_n [D, B, H], gates [D, T, B, 4H] | None)``,
    the per-step launchers' results (:func:`tritonlstm.kernels.gru_step.forward`). ``config``: the rule's
    (:func:`tritonlstm.kernels.config.gru_sequence_config`) unless given; ``err`` (int32 ``[1]``, zero) receives
    the error flag."""
    x, h0, lengths = layer.x, layer.h0, layer.lengths
    T, B = x.shape[0], x.shape[1]
    D, H = len(layer.reverse), layer.w_hh.shape[2]
    dtype, acc, dev = x.dtype, acc_dtype(x.dtype), x.device
    check_dtype(dtype)
    cfg = config or gru_sequence_config(B, H, D, dtype, sm_count(dev))
    split = cfg["regime"] == "gru-split"
    gx, bhn = gru_step.input_projection(layer)
    bhn = bhn if bhn is not None else gx  # gx: unread without biases
    w_t = layer.w_hh.transpose(1, 2).contiguous()  # [D, H, 3H]
    y = torch.empty(T, B, D * H, device=dev, dtype=dtype)
    gates = torch.empty(D, T, B, 4 * H, device=dev, dtype=dtype) if store else y  # y: unwritten without store
    k, ns = gru_constexprs(cfg, H, backward=False)
    nb = triton.cdiv(B, k["BLOCK_B"])
    flags = torch.zeros(1 + D * nb, device=dev, dtype=torch.int32)
    err = flags[:1] if err is None else err
    if B > 0:
        lens = lengths.to(dtype=torch.int32).contiguous() if lengths is not None else flags
        hm = regs.h_mask.to(dtype) if regs.h_mask is not None else None
        zs = regs.seed if regs.seed is not None else flags
        common = dict(
            STORE_GATES=store, HAS_BIAS=layer.b_ih is not None, HAS_LENGTHS=lengths is not None,
            HAS_MASK=hm is not None, ZONEOUT=regs.mode, ACC_DTYPE=ACC[acc], INPUT_PRECISION=input_precision(dtype),
            H=H, **k,
        )  # fmt: skip
        rev_mask = sum(1 << d for d, r in enumerate(layer.reverse) if r)
        with launch_guard(dev):
            if split:
                xh = y  # unread without recurrent dropout: then h_t * mask slots, h0 * mask in slot 2
                if hm is not None:
                    xh = torch.empty(D, 3, B, H, device=dev, dtype=dtype)
                    xh[:, 2] = (h0.to(acc) * hm.to(acc)).to(dtype)
                _gru_seq_fwd_split_kernel[(nb, D, ns)](
                    gx, w_t, bhn, h0.contiguous(), y, gates, lens, hm.contiguous() if hm is not None else y, xh, zs,
                    float(regs.zoneout[0]), flags[1:], err, T, B, rev_mask, cfg.get("spin_limit", DEFAULT_SPIN_LIMIT),
                    **common, **launch_options(x, True, cfg["num_warps"]),
                )  # fmt: skip
            else:
                _gru_seq_fwd_batch_kernel[(nb, D)](
                    gx, w_t, bhn, _by_row(h0), y, gates, lens, _by_row(hm) if hm is not None else y, zs,
                    float(regs.zoneout[0]), T, B, rev_mask, num_warps=cfg["num_warps"], **common,
                )  # fmt: skip
    h_n = torch.stack([gru_step.final_state(y[..., d * H : (d + 1) * H], h0[d], lengths, layer.reverse[d])
                       for d in range(D)])  # fmt: skip
    return y, h_n, gates if store else None


def backward(layer: Layer, regs: Regularisers, y, gates, dy, dh_n, needs, config: dict | None = None, err=None):
    """Gradients of one GRU layer, one launch for the loop: ``[dx, dh0, dw_ih, dw_hh, db_ih, db_hh]`` as
    :func:`tritonlstm.kernels.gru_step.backward` gives them (its GEMMs after the loop)."""
    x, h0, lengths = layer.x, layer.h0, layer.lengths
    T, B = x.shape[0], x.shape[1]
    D, H = len(layer.reverse), layer.w_hh.shape[2]
    dtype, acc, dev = x.dtype, acc_dtype(x.dtype), x.device
    cfg = config or gru_sequence_config(B, H, D, dtype, sm_count(dev), backward=True)
    split = cfg["regime"] == "gru-split"
    dg = torch.empty(D, T, B, 4 * H, device=dev, dtype=dtype)
    # the kernels write the carry: a copy of dh_n, never a view of it (for D = 1 the transpose is one)
    dcarry = _by_row(dh_n.to(acc, copy=True)) if dh_n is not None else torch.zeros(B, D, H, device=dev, dtype=acc)
    k, ns = gru_constexprs(cfg, H, backward=True)
    nb = triton.cdiv(B, k["BLOCK_B"])
    flags = torch.zeros(1 + D * nb, device=dev, dtype=torch.int32)
    err = flags[:1] if err is None else err
    hm = regs.h_mask.to(dtype) if regs.h_mask is not None else None
    if B > 0:
        lens = lengths.to(dtype=torch.int32).contiguous() if lengths is not None else flags
        zs = regs.seed if regs.seed is not None else flags
        args = (
            dg, layer.w_hh.contiguous(), dy.contiguous() if dy is not None else y, dcarry, gates.contiguous(),
            y.contiguous(), _by_row(h0), lens, _by_row(hm) if hm is not None else y, zs, float(regs.zoneout[0]),
        )  # fmt: skip
        common = dict(
            HAS_DY=dy is not None, HAS_LENGTHS=lengths is not None, HAS_MASK=hm is not None, ZONEOUT=regs.mode,
            ACC_DTYPE=ACC[acc], INPUT_PRECISION=input_precision(dtype), H=H, **k,
        )  # fmt: skip
        rev_mask = sum(1 << d for d, r in enumerate(layer.reverse) if r)
        with launch_guard(dev):
            if split:
                _gru_seq_bwd_split_kernel[(nb, D, ns)](
                    *args, flags[1:], err, T, B, rev_mask, cfg.get("spin_limit", DEFAULT_SPIN_LIMIT), **common,
                    **launch_options(x, True, cfg["num_warps"]),
                )  # fmt: skip
            else:
                _gru_seq_bwd_batch_kernel[(nb, D)](*args, T, B, rev_mask, num_warps=cfg["num_warps"], **common)
    else:
        dg.zero_()
    parts = []
    for d in range(D):
        y_d = y if D == 1 else y[..., d * H : (d + 1) * H].contiguous()
        hm_d = hm[d] if hm is not None else None
        parts.append(gru_step.gradients(layer.direction(d), dg[d], dcarry[:, d], y_d, hm_d, needs))
    return gru_step.combine(parts)
