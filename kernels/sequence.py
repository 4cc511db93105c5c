"""Sequence kernels: one launch runs a whole layer's time loop, both directions, forward or backward.

Dimension legend (as in kernels/lstm.py):
    T   time steps        B   batch rows       I   input features      H   hidden units
    P   projection size   R   P with a projection, else H              D   directions (1 or 2)
    G   4*H gate columns, unit-interleaved in every buffer (column 4*j + k: gate k of unit j, k = i, f, g, o)

The weights are read in torch's own layout ([D, G, R] with gate-major rows): the kernels map the interleaved
gate column 4*j + k to torch's row k*H + j themselves, so no weight is re-laid out on the host per call.

The grid is (batch tiles, directions, unit programs). Two regimes share the kernels:

* batch-owned (``SPLIT=False``, one unit program): a program owns a tile of batch rows and every hidden unit and
  loops over unit tiles inside each step, reading W_hh from global memory (L2) every step. No cross-program
  synchronisation: a CTA barrier orders the step's stores before the next step's loads. With the per-step
  kernels' tiles its reductions are theirs, so it reproduces them bitwise; it is the form the interpreter runs.
* unit-split (``SPLIT=True``): the programs of one (batch tile, direction) group split the hidden units. Each
  loads its slice of the weights once, before the time loop, keeps it on chip and keeps its cell state in
  registers. Each step it computes its units, publishes them, then waits at a barrier among the programs of
  its group: a generation counter bumped with a release atomic at GPU scope and polled with acquire atomics;
  the other programs' values are then read with loads that bypass L1 (``.cg``). With a projection a second
  phase and barrier per step give h_t = m_t W_hr^T split over P. The backward mirrors it: a program keeps
  W_hh[:, its units] (all 4H rows) and exchanges dG_t through the barrier.

Safety: every spin is bounded (``spin_limit`` polls). A program whose wait times out sets the error flag, stops
waiting and writes NaN into everything it computes afterwards (outputs, final states, gradients), so a failed
barrier is never a silent wrong number. The flag is read only by the first-use self-test and under
``TRITONLSTM_CHECK=1``; the default path makes no host synchronisation (CUDA graphs keep working).

Semantics are the per-step kernels' exactly (kernels/lstm.py): lengths, the reverse direction starting at each
row's own end, the stored activated gates and cell states (``gates[d]``/``cs[d]`` are interchangeable with
``lstm_layer_forward``'s), the carried gradient of skipped steps, and no atomics in any reduction (the barrier
counter is synchronisation only; weight, input and bias gradients are GEMMs after the loop).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import warnings

import torch
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError

from tritonlstm.kernels.lstm import (
    INTERPRETER,
    SUPPORTED_DTYPES,
    _capturing,
    _cell_backward,
    _cell_forward,
    _input_precision,
    _launch_guard,
    _split_gates,
    _zoneout_args,
    _zoneout_mode,
    _zoneout_rates,
    acc_dtype,
    deinterleave_gates,
    interleave_gates,
    step_config,
)

_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}
DEFAULT_SPIN_LIMIT = 1 << 22
"""Polls of the barrier counter before a wait gives up (each poll is an L2 atomic, about 0.5-1 us)."""


@triton.jit
def _torch_rows(o_g, H):
    """Interleaved gate column 4*j + k -> row k*H + j of torch's gate-major weight."""
    return (o_g % 4) * H + o_g // 4


@triton.jit
def _and(m, c):
    """m & c for a scalar condition c (written so the interpreter keeps a boolean mask)."""
    return tl.where(c, m, tl.zeros_like(m))


@triton.jit
def _barrier(sync_ptr, target, failed, spin_limit):
    """Arrive at the group's counter, wait until it reaches ``target``; returns the updated failure flag."""
    tl.debug_barrier()  # every thread's stores of this phase precede the release below
    tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
    cnt = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
    it = cnt * 0
    while (cnt < target) & (it < spin_limit) & (failed == 0):
        cnt = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        it += 1
    tl.debug_barrier()
    return failed | (cnt < target).to(tl.int32)


@triton.jit
def _load_h_prev(y_ptr, h0_ptr, o_b, o_k, m_b, m_k, v_prev, tp, B, ldy, R):
    """[BLOCK_B, BLOCK_K] of h_{t-1}: y[tp] (tp: t_prev clamped into range) where the previous step was the
    row's own, else h0."""
    m = m_b[:, None] & m_k[None, :]
    p_y = y_ptr + (tp * B + o_b[:, None]) * ldy + o_k[None, :]
    p_h0 = h0_ptr + o_b[:, None] * R + o_k[None, :]
    # one load through per-row pointers (not two masked loads): half the registers for the dot's operand
    return tl.load(tl.where(v_prev[:, None], p_y, p_h0), mask=m, other=0.0, cache_modifier=".cg")


@triton.jit
def _masked(b_h, hm_d, o_b, o_k, m_b, m_k, R, ACC_DTYPE: tl.constexpr):
    """h_{t-1} * the recurrent dropout mask ([B, R] at hm_d), rounded back to h's dtype as the per-step kernels do."""
    b_hm = tl.load(hm_d + o_b[:, None] * R + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
    return (b_h.to(ACC_DTYPE) * b_hm.to(ACC_DTYPE)).to(b_h.dtype)


@triton.jit
def _publish_masked(xh_d, n, B, R, o_b, o_x, m_bx, b_h, b_hm, STORE_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """Store h_t * mask (h_t rounded to the storage dtype first, as the per-step kernels read it) in step n's slot.
    Rows past their length store garbage there: the next step reads h0 * mask for them."""
    b_hx = (b_h.to(STORE_DTYPE).to(ACC_DTYPE) * b_hm).to(STORE_DTYPE)
    tl.store(xh_d + (n % 2) * (B.to(tl.int64) * R) + o_b[:, None] * R + o_x[None, :], b_hx, mask=m_bx)


@triton.jit
def _fwd_epilogue(
    b_pre,
    b_cp,
    v_t,
    v_last,
    last_step,
    poison,
    o_b,
    o_u,
    o_g,
    m_b,
    m_u,
    m_g,
    p_gx,
    cs_t,
    cn_ptr,
    hn_ptr,
    y_t,
    B,
    H,
    R,
    ldy,
    b_hp,  # [BLOCK_B, BLOCK_H] h_{t-1} of these units (read with zoneout)
    zs_ptr,
    zo_stream,
    t,
    zo_h,
    zo_c,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """Cell update of one unit tile and its stores; returns (c_t, m_t = o * tanh(c_t)), both after zoneout."""
    m_bu = m_b[:, None] & m_u[None, :]
    b_gates, b_c, b_m = _cell_forward(b_pre, b_cp, BLOCK_B, BLOCK_H)
    if ZONEOUT > 0:
        # the per-step kernels' zoneout exactly: the same Philox streams and counters, or p in eval
        b_kh = _zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_kc = _zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
        b_m = b_kh * b_hp.to(ACC_DTYPE) + (1.0 - b_kh) * b_m
        b_c = b_kc * b_cp + (1.0 - b_kc) * b_c
    if HAS_LENGTHS:
        b_c = tl.where(v_t[:, None], b_c, b_cp)
    b_c += poison
    o_bu = o_b[:, None] * H + o_u[None, :]
    tl.store(cs_t + o_bu, b_c.to(cs_t.dtype.element_ty), mask=m_bu)
    tl.store(cn_ptr + o_bu, b_c.to(cn_ptr.dtype.element_ty), mask=_and(m_bu, last_step))
    if STORE_GATES:
        tl.store(p_gx, (b_gates + poison).to(p_gx.dtype.element_ty), mask=m_b[:, None] & m_g[None, :])
    if not HAS_PROJ:
        b_h = b_m + poison
        if HAS_LENGTHS:
            b_h = tl.where(v_t[:, None], b_h, 0.0)
        tl.store(y_t + o_b[:, None] * ldy + o_u[None, :], b_h.to(y_t.dtype.element_ty), mask=m_bu)
        tl.store(hn_ptr + o_b[:, None] * R + o_u[None, :], b_h.to(hn_ptr.dtype.element_ty), mask=m_bu & v_last[:, None])
    return b_c, b_m


@triton.jit
def _batch_rows(len_ptr, i_b, B, T, BLOCK_B: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    """The batch tile of program row i_b: offsets, in-range mask, each row's length (T without lengths)."""
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    if HAS_LENGTHS:
        b_len = tl.load(len_ptr + o_b, mask=m_b, other=0)
    else:
        b_len = tl.zeros([BLOCK_B], dtype=tl.int32) + T
    return o_b, m_b, b_len


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_fwd_kernel(
    gx_ptr,  # [D, T, B, G]  x_t W_ih^T + b (interleaved); overwritten by the activated gates if STORE_GATES
    w_ptr,  # [D, G, R]  W_hh, torch's layout
    wr_ptr,  # [D, P, H]  W_hr (read if HAS_PROJ)
    h0_ptr,  # [D, B, R]
    c0_ptr,  # [D, B, H]
    y_ptr,  # [T, B, D*R]  out: the directions side by side, nn.LSTM's layout
    hn_ptr,  # [D, B, R]  out
    cn_ptr,  # [D, B, H]  out, input dtype
    cs_ptr,  # [D, TC, B, H]  out: c_t, accumulator dtype (TC = T with STORE_GATES; else 2 slots, alternating)
    m_ptr,  # [D, B, H]  scratch: m_t exchanged between unit-split programs (SPLIT and HAS_PROJ)
    len_ptr,  # [B]  int32 lengths (read if HAS_LENGTHS)
    hm_ptr,  # [D, B, R]  recurrent dropout mask on h_{t-1} (read if HAS_MASK)
    xh_ptr,  # [D, 3, B, R]  h_t * mask exchanged between unit-split programs, slots 0/1 by step, h0 * mask in 2
    zs_ptr,  # [1]  int64 zoneout seed (read if ZONEOUT == 2)
    zo_h: tl.float64,  # zoneout probabilities of h and c
    zo_c: tl.float64,
    sync_ptr,  # [D, NB]  int32 barrier counters, zero at launch (SPLIT)
    err_ptr,  # [1]  int32: set to 1 when a barrier wait times out
    T,
    B,
    H,
    R,
    P,
    rev_mask,  # bit d set: direction d runs from the last step to the first
    spin_limit,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,  # unit tile (batch-owned) / units per program (unit-split)
    BLOCK_K: tl.constexpr,  # inner block of the recurrent product (batch-owned)
    BLOCK_R: tl.constexpr,  # >= R: the whole recurrent input in one block (unit-split)
    BLOCK_P: tl.constexpr,  # >= P (batch-owned) / the P slice of one program (unit-split)
    BLOCK_F: tl.constexpr,  # >= H: m_t's whole row (unit-split with a projection)
    SPLIT: tl.constexpr,
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,  # 0 off, 1 eval (expectation), 2 training (Philox masks); never with HAS_PROJ
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_b, i_d, i_s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    NS = tl.num_programs(2)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)  # the per-step kernels' streams: h on 2d, c on 2d + 1
    o_b, m_b, b_len = _batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    hm_d = hm_ptr + i_d * B * R
    xh_d = xh_ptr + i_d * 3 * B * R
    TC = T if STORE_GATES else 2
    gx_d = gx_ptr + i_d * T * B * G
    w_d = w_ptr + i_d * G * R
    wr_d = wr_ptr + i_d * P * H
    h0_d = h0_ptr + i_d * B * R
    c0_d = c0_ptr + i_d * B * H
    hn_d = hn_ptr + i_d * B * R
    cn_d = cn_ptr + i_d * B * H
    cs_d = cs_ptr + i_d * TC * B * H
    m_d = m_ptr + i_d * B * H
    y_d = y_ptr + i_d * R
    sync = sync_ptr + i_d * tl.num_programs(0) + i_b
    failed = tl.program_id(0) * 0

    if SPLIT:
        # the program's units and its slice of the weights, loaded once and kept on chip for the whole sequence
        o_u = i_s * BLOCK_H + tl.arange(0, BLOCK_H)
        o_g = i_s * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)
        o_r = tl.arange(0, BLOCK_R)
        m_u, m_g, m_r = o_u < H, o_g < G, o_r < R
        b_w = tl.load(
            w_d + _torch_rows(o_g, H)[None, :] * R + o_r[:, None], mask=m_r[:, None] & m_g[None, :], other=0.0
        )
        b_c = tl.load(c0_d + o_b[:, None] * H + o_u[None, :], mask=m_b[:, None] & m_u[None, :], other=0.0).to(ACC_DTYPE)
        if HAS_PROJ:
            o_p = i_s * BLOCK_P + tl.arange(0, BLOCK_P)
            o_f = tl.arange(0, BLOCK_F)
            m_p, m_f = o_p < P, o_f < H
            b_wr = tl.load(wr_d + o_p[None, :] * H + o_f[:, None], mask=m_f[:, None] & m_p[None, :], other=0.0)
        if HAS_MASK:
            # recurrent dropout, applied where h_t is published: each program masks the columns of h_t it writes
            # (its units, or its P slice) into the exchange slots, so the consumers load h_{t-1} * mask as is
            o_x = o_p if HAS_PROJ else o_u
            m_bx = m_b[:, None] & ((m_p if HAS_PROJ else m_u)[None, :])
            b_hmx = tl.load(hm_d + o_b[:, None] * R + o_x[None, :], mask=m_bx, other=0.0).to(ACC_DTYPE)

    for n in range(0, T):
        t = n + rev * (T - 1 - 2 * n)
        t_prev = t - 1 + 2 * rev
        v_t = t < b_len
        v_prev = _and(t_prev < b_len, t_prev >= 0)
        v_last = tl.where(rev == 1, _and(v_t, t == 0), v_t & (t == b_len - 1))  # the row's last step: h_n is its h_t
        last_step = n == T - 1
        poison = tl.where(failed != 0, float("nan"), 0.0)
        tp = tl.minimum(tl.maximum(t_prev, 0), T - 1).to(tl.int64)
        if STORE_GATES:
            cs_t = cs_d + t.to(tl.int64) * B * H
            cs_p = cs_d + tp * B * H
        else:
            cs_t = cs_d + (n % 2) * (B.to(tl.int64) * H)
            cs_p = cs_d + ((n + 1) % 2) * (B.to(tl.int64) * H)
        gx_t = gx_d + t.to(tl.int64) * B * G
        y_t = y_d + t.to(tl.int64) * B * ldy
        if SPLIT:
            if HAS_MASK:  # the previous step's slot of h * mask, or h0 * mask
                xh_prev = xh_d + ((n + 1) % 2) * (B.to(tl.int64) * R)
                b_hp = _load_h_prev(xh_prev, xh_d + 2 * (B.to(tl.int64) * R), o_b, o_r, m_b, m_r, v_prev, 0, B, R, R)
            else:
                b_hp = _load_h_prev(y_d, h0_d, o_b, o_r, m_b, m_r, v_prev, tp, B, ldy, R)
            b_acc = tl.dot(b_hp, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
            p_gx = gx_t + o_b[:, None] * G + o_g[None, :]
            b_pre = b_acc + tl.load(p_gx, mask=m_b[:, None] & m_g[None, :], other=0.0).to(ACC_DTYPE)
            b_hu = b_c  # unread without zoneout
            if ZONEOUT > 0:  # h_{t-1} of the program's own units, unmasked
                b_hu = _load_h_prev(y_d, h0_d, o_b, o_u, m_b, m_u, v_prev, tp, B, ldy, R)
            b_c, b_m = _fwd_epilogue(
                b_pre, b_c, v_t, v_last, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, p_gx, cs_t, cn_d, hn_d,
                y_t, B, H, R, ldy, b_hu, zs_ptr, zo_stream, t, zo_h, zo_c, BLOCK_B, BLOCK_H, STORE_GATES,
                HAS_LENGTHS, HAS_PROJ, ZONEOUT, ACC_DTYPE,
            )  # fmt: skip
            if HAS_PROJ:
                # phase 2: publish m_t, then each program projects its slice of P from the whole m_t
                tl.store(
                    m_d + o_b[:, None] * H + o_u[None, :],
                    b_m.to(m_d.dtype.element_ty),
                    mask=m_b[:, None] & m_u[None, :],
                )
                failed = _barrier(sync, NS * (2 * n + 1), failed, spin_limit)
                b_mf = tl.load(
                    m_d + o_b[:, None] * H + o_f[None, :],
                    mask=m_b[:, None] & m_f[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                )
                b_hr = tl.dot(b_mf, b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
                b_hr += tl.where(failed != 0, float("nan"), 0.0)
                if HAS_LENGTHS:
                    b_hr = tl.where(v_t[:, None], b_hr, 0.0)
                m_bp = m_b[:, None] & m_p[None, :]
                tl.store(y_t + o_b[:, None] * ldy + o_p[None, :], b_hr.to(y_ptr.dtype.element_ty), mask=m_bp)
                tl.store(
                    hn_d + o_b[:, None] * R + o_p[None, :],
                    b_hr.to(hn_ptr.dtype.element_ty),
                    mask=m_bp & v_last[:, None],
                )
                if HAS_MASK:
                    _publish_masked(xh_d, n, B, R, o_b, o_p, m_bx, b_hr, b_hmx, y_ptr.dtype.element_ty, ACC_DTYPE)
                failed = _barrier(sync, NS * (2 * n + 2), failed, spin_limit)
            else:
                if HAS_MASK:
                    _publish_masked(xh_d, n, B, R, o_b, o_u, m_bx, b_m, b_hmx, y_ptr.dtype.element_ty, ACC_DTYPE)
                failed = _barrier(sync, NS * (n + 1), failed, spin_limit)
        else:
            if HAS_PROJ:
                o_p = tl.arange(0, BLOCK_P)
                m_p = o_p < P
                b_hr = tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC_DTYPE)
            for u in range(0, H, BLOCK_H):
                o_u = u + tl.arange(0, BLOCK_H)
                o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
                m_u, m_g = o_u < H, o_g < G
                o_w = _torch_rows(o_g, H)
                b_acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=ACC_DTYPE)
                for k in range(0, R, BLOCK_K):
                    o_k = k + tl.arange(0, BLOCK_K)
                    m_k = o_k < R
                    b_hp = _load_h_prev(y_d, h0_d, o_b, o_k, m_b, m_k, v_prev, tp, B, ldy, R)
                    if HAS_MASK:
                        b_hp = _masked(b_hp, hm_d, o_b, o_k, m_b, m_k, R, ACC_DTYPE)
                    b_wk = tl.load(w_d + o_w[None, :] * R + o_k[:, None], mask=m_k[:, None] & m_g[None, :], other=0.0)
                    b_acc += tl.dot(b_hp, b_wk, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
                p_gx = gx_t + o_b[:, None] * G + o_g[None, :]
                b_pre = b_acc + tl.load(p_gx, mask=m_b[:, None] & m_g[None, :], other=0.0).to(ACC_DTYPE)
                m_bu = m_b[:, None] & m_u[None, :]
                o_bu = o_b[:, None] * H + o_u[None, :]
                b_cp = tl.load(cs_p + o_bu, mask=m_bu & (n > 0), other=0.0).to(ACC_DTYPE)
                b_cp += tl.load(c0_d + o_bu, mask=m_bu & (n == 0), other=0.0).to(ACC_DTYPE)
                b_hu = b_cp  # unread without zoneout
                if ZONEOUT > 0:
                    b_hu = _load_h_prev(y_d, h0_d, o_b, o_u, m_b, m_u, v_prev, tp, B, ldy, R)
                _, b_m = _fwd_epilogue(
                    b_pre, b_cp, v_t, v_last, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, p_gx, cs_t, cn_d,
                    hn_d, y_t, B, H, R, ldy, b_hu, zs_ptr, zo_stream, t, zo_h, zo_c, BLOCK_B, BLOCK_H, STORE_GATES,
                    HAS_LENGTHS, HAS_PROJ, ZONEOUT, ACC_DTYPE,
                )  # fmt: skip
                if HAS_PROJ:
                    # h_t += m_t[:, units] @ W_hr^T[units, :]; m_t rounded to the storage dtype as torch does
                    b_wr = tl.load(wr_d + o_p[None, :] * H + o_u[:, None], mask=m_u[:, None] & m_p[None, :], other=0.0)
                    b_hr += tl.dot(
                        b_m.to(wr_ptr.dtype.element_ty), b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION
                    )
            if HAS_PROJ:
                if HAS_LENGTHS:
                    b_hr = tl.where(v_t[:, None], b_hr, 0.0)
                m_bp = m_b[:, None] & m_p[None, :]
                tl.store(y_t + o_b[:, None] * ldy + o_p[None, :], b_hr.to(y_ptr.dtype.element_ty), mask=m_bp)
                tl.store(
                    hn_d + o_b[:, None] * R + o_p[None, :],
                    b_hr.to(hn_ptr.dtype.element_ty),
                    mask=m_bp & v_last[:, None],
                )
            tl.debug_barrier()  # this step's h_t and c_t, written by every thread, precede the next step's loads
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit
def _bwd_cell(
    b_dh,
    b_dc,
    v_t,
    last_step,
    poison,
    o_b,
    o_u,
    o_g,
    m_b,
    m_u,
    m_g,
    gates_t,
    cs_t,
    cs_p,
    c0_d,
    first_fwd,
    dg_t,
    dc0_d,
    H,
    b_kc,  # zoneout's share of c_{t-1} in c_t (mask or p; read if ZONEOUT)
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """Gate gradients of one unit tile from the gradient of m_t (b_dh; with zoneout, the share that went through
    the cell) and dc_t; stores dG_t; returns dc_{t-1}."""
    m_bu = m_b[:, None] & m_u[None, :]
    m_bg = m_b[:, None] & m_g[None, :]
    o_bu = o_b[:, None] * H + o_u[None, :]
    b_gates = tl.load(gates_t + o_b[:, None] * (4 * H) + o_g[None, :], mask=m_bg, other=0.0).to(ACC_DTYPE)
    b_cp = tl.load(cs_p + o_bu, mask=_and(m_bu, ~first_fwd), other=0.0).to(ACC_DTYPE)
    b_cp += tl.load(c0_d + o_bu, mask=_and(m_bu, first_fwd), other=0.0).to(ACC_DTYPE)
    if ZONEOUT > 0:
        # c_t before zoneout, recomputed from the gates; the kept share of dc_t goes straight to c_{t-1}
        b_i, b_f, b_g, b_o = _split_gates(b_gates, BLOCK_B, BLOCK_H)
        b_c = b_f * b_cp + b_i * b_g
        b_dg, b_dcp = _cell_backward(b_dh, b_gates, b_c, b_cp, (1.0 - b_kc) * b_dc, BLOCK_B, BLOCK_H)
        b_dcp += b_kc * b_dc
    else:
        b_c = tl.load(cs_t + o_bu, mask=m_bu, other=0.0).to(ACC_DTYPE)
        b_dg, b_dcp = _cell_backward(b_dh, b_gates, b_c, b_cp, b_dc, BLOCK_B, BLOCK_H)
    if HAS_LENGTHS:
        b_dg = tl.where(v_t[:, None], b_dg, 0.0)
        b_dcp = tl.where(v_t[:, None], b_dcp, b_dc)
    b_dg += poison
    b_dcp += poison
    tl.store(dg_t + o_b[:, None] * (4 * H) + o_g[None, :], b_dg.to(dg_t.dtype.element_ty), mask=m_bg)
    tl.store(dc0_d + o_bu, b_dcp.to(dc0_d.dtype.element_ty), mask=_and(m_bu, last_step))
    return b_dcp


@triton.jit
def _w_gate_rows(w_d, k0, o_c, m_c, H, R, BLOCK_G: tl.constexpr, K_SPLIT: tl.constexpr):
    """W_hh[interleaved gate rows k0 .. k0 + BLOCK_G, columns o_c] of one direction (torch's gate-major layout in
    memory), as [K_SPLIT, BLOCK_G // K_SPLIT, columns]: the resident operand of :func:`_dg_chunk_dot`."""
    if K_SPLIT == 1:  # [BLOCK_G, columns]
        o_k = k0 + tl.arange(0, BLOCK_G)[:, None]
        b_w = tl.load(w_d + _torch_rows(o_k, H) * R + o_c[None, :], mask=(o_k < 4 * H) & m_c[None, :], other=0.0)
    else:
        o_s = tl.arange(0, K_SPLIT)[:, None, None] * (BLOCK_G // K_SPLIT)
        o_k = k0 + o_s + tl.arange(0, BLOCK_G // K_SPLIT)[None, :, None]
        m = (o_k < 4 * H) & m_c[None, None, :]
        b_w = tl.load(w_d + _torch_rows(o_k, H) * R + o_c[None, None, :], mask=m, other=0.0)
    return b_w


@triton.jit
def _dg_chunk_dot(
    dgn_t, o_b, m_b, k0, b_w, G, n, BLOCK_G: tl.constexpr, K_SPLIT: tl.constexpr, ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """dG_{t+1}[rows, gate rows k0 .. k0 + BLOCK_G] @ W_hh[those rows, columns]: one chunk of the unit-split
    backward's recurrent dot (dG_{t+1} is zero at the first step, n == 0). The gate rows are split K_SPLIT ways
    into a batched dot, one slice per warp, whose partial products are summed in a fixed order (no atomics)."""
    if K_SPLIT == 1:
        o_k = k0 + tl.arange(0, BLOCK_G)[None, :]
        b_dgn = tl.load(
            dgn_t + o_b[:, None] * G + o_k, mask=_and(m_b[:, None] & (o_k < G), n > 0), other=0.0, cache_modifier=".cg"
        )
        b_rec = tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    else:
        o_s = tl.arange(0, K_SPLIT)[:, None, None] * (BLOCK_G // K_SPLIT)
        o_k = k0 + o_s + tl.arange(0, BLOCK_G // K_SPLIT)[None, None, :]
        b_dgn = tl.load(
            dgn_t + o_b[None, :, None] * G + o_k,
            mask=_and(m_b[None, :, None] & (o_k < G), n > 0),
            other=0.0,
            cache_modifier=".cg",
        )
        b_rec = tl.sum(tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION), axis=0)
    return b_rec


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_bwd_kernel(
    dy_ptr,  # [T, B, D*R]  gradient of y (read if HAS_DY)
    dhn_ptr,  # [D, B, R]  gradient of h_n (read if HAS_DHN)
    dcn_ptr,  # [D, B, H]  gradient of c_n (read if HAS_DCN)
    w_ptr,  # [D, G, R]  W_hh, torch's layout
    wr_ptr,  # [D, P, H]  W_hr (read if HAS_PROJ)
    gates_ptr,  # [D, T, B, G]  activated gates from the forward
    cs_ptr,  # [D, T, B, H]  every c_t, accumulator dtype
    c0_ptr,  # [D, B, H]
    dg_ptr,  # [D, T, B, G]  out: gate pre-activation gradients
    dhall_ptr,  # [D, T, B, P]  out: the whole gradient of h_t (HAS_PROJ), for dW_hr
    dc_ptr,  # [D, B, H]  scratch: dc_t between steps (batch-owned), accumulator dtype
    dcarry_ptr,  # [D, B, R]  scratch/out: gradient reaching the state not through the gates, accumulator dtype
    dh0_ptr,  # [D, B, R]  out
    dc0_ptr,  # [D, B, H]  out
    len_ptr,  # [B]
    hm_ptr,  # [D, B, R]  the forward's recurrent dropout mask (read if HAS_MASK)
    zs_ptr,  # [1]  the forward's zoneout seed: its masks are drawn again (ZONEOUT == 2)
    zo_h: tl.float64,
    zo_c: tl.float64,
    sync_ptr,  # [D, NB]
    err_ptr,  # [1]
    T,
    B,
    H,
    R,
    P,
    rev_mask,
    spin_limit,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,  # unit tile / units per program
    BLOCK_K: tl.constexpr,  # inner block over the 4H gate rows (batch-owned)
    BLOCK_P: tl.constexpr,  # >= P (batch-owned) / the P slice of one program (unit-split)
    BLOCK_G: tl.constexpr,  # BLOCK_G * G_CHUNKS >= 4H: the gate rows of one chunk (unit-split)
    G_CHUNKS: tl.constexpr,  # 1 to 4: the resident W_hh and the dG row block in that many chunks of gate rows
    K_SPLIT: tl.constexpr,  # each chunk's dot split that many ways over its gate rows (a batched dot)
    BLOCK_F: tl.constexpr,  # >= P: dh_t's whole row (unit-split with a projection)
    SPLIT: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,  # as in the forward; never with HAS_PROJ
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_b, i_d, i_s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    NS = tl.num_programs(2)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)
    o_b, m_b, b_len = _batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    hm_d = hm_ptr + i_d * B * R
    w_d = w_ptr + i_d * G * R
    wr_d = wr_ptr + i_d * P * H
    gates_d = gates_ptr + i_d * T * B * G
    dg_d = dg_ptr + i_d * T * B * G
    dhall_d = dhall_ptr + i_d * T * B * P
    cs_d = cs_ptr + i_d * T * B * H
    c0_d = c0_ptr + i_d * B * H
    dc_d = dc_ptr + i_d * B * H
    dcn_d = dcn_ptr + i_d * B * H
    dc0_d = dc0_ptr + i_d * B * H
    dcarry_d = dcarry_ptr + i_d * B * R
    dhn_d = dhn_ptr + i_d * B * R
    dh0_d = dh0_ptr + i_d * B * R
    dy_d = dy_ptr + i_d * R
    sync = sync_ptr + i_d * tl.num_programs(0) + i_b
    failed = tl.program_id(0) * 0

    if SPLIT:
        o_u = i_s * BLOCK_H + tl.arange(0, BLOCK_H)
        o_g = i_s * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)
        m_u, m_g = o_u < H, o_g < G
        m_bu = m_b[:, None] & m_u[None, :]
        if HAS_PROJ:
            # phase 1 owns a slice of P (dh_t there), phase 2 the units (W_hr[:, units] to form dm_t)
            o_c = i_s * BLOCK_P + tl.arange(0, BLOCK_P)
            o_f = tl.arange(0, BLOCK_F)
            m_c, m_f = o_c < P, o_f < P
            b_wr = tl.load(wr_d + o_f[:, None] * H + o_u[None, :], mask=m_f[:, None] & m_u[None, :], other=0.0)
        else:
            o_c, m_c = o_u, m_u
        m_bc = m_b[:, None] & m_c[None, :]
        # W_hh[:, columns] for all 4H gate rows, loaded once and kept on chip: in G_CHUNKS chunks of BLOCK_G gate
        # rows (one tensor each), so that each step's dot takes the dG row block a chunk at a time
        b_w = _w_gate_rows(w_d, 0, o_c, m_c, H, R, BLOCK_G, K_SPLIT)
        if G_CHUNKS >= 2:
            b_w1 = _w_gate_rows(w_d, 1 * BLOCK_G, o_c, m_c, H, R, BLOCK_G, K_SPLIT)
        if G_CHUNKS >= 3:
            b_w2 = _w_gate_rows(w_d, 2 * BLOCK_G, o_c, m_c, H, R, BLOCK_G, K_SPLIT)
        if G_CHUNKS >= 4:
            b_w3 = _w_gate_rows(w_d, 3 * BLOCK_G, o_c, m_c, H, R, BLOCK_G, K_SPLIT)
        b_dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
        if HAS_DCN:
            b_dc += tl.load(dcn_d + o_b[:, None] * H + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
        if HAS_MASK:  # h_t entered the next step's product as h_t * mask: so does its gradient (own columns)
            b_hmc = tl.load(hm_d + o_b[:, None] * R + o_c[None, :], mask=m_bc, other=0.0).to(ACC_DTYPE)
        b_carry = tl.zeros((BLOCK_B, BLOCK_P if HAS_PROJ else BLOCK_H), dtype=ACC_DTYPE)
        if HAS_DHN:
            b_carry += tl.load(dhn_d + o_b[:, None] * R + o_c[None, :], mask=m_bc, other=0.0).to(ACC_DTYPE)

    # steps in the reverse of the forward's order, then one more pass (n == T) that forms dh0 from dG_first
    for n in range(0, T + 1):
        t = (T - 1 - n) + rev * (2 * n - T + 1)
        t_next = t + 1 - 2 * rev  # the step after t in the forward's order: processed just before it here
        tf_prev = t - 1 + 2 * rev  # the step before t in the forward's order
        first_fwd = (tf_prev < 0) | (tf_prev >= T)
        v_t = _and(_and(t < b_len, t >= 0), n < T)
        last_step = n == T - 1
        poison = tl.where(failed != 0, float("nan"), 0.0)
        tn = tl.minimum(tl.maximum(t_next, 0), T - 1).to(tl.int64)
        tc = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64)
        dgn_t = dg_d + tn * B * G
        dg_t = dg_d + tc * B * G
        gates_t = gates_d + tc * B * G
        cs_t = cs_d + tc * B * H
        cs_p = cs_d + tl.minimum(tl.maximum(tf_prev, 0), T - 1).to(tl.int64) * B * H
        dy_t = dy_d + tc * B * ldy
        if SPLIT:
            # gradient reaching h_t[:, o_c] through the state: dG_{next} @ W_hh[:, o_c] plus the carried part
            b_rec = _dg_chunk_dot(dgn_t, o_b, m_b, 0, b_w, G, n, BLOCK_G, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
            if G_CHUNKS >= 2:
                b_rec += _dg_chunk_dot(
                    dgn_t, o_b, m_b, 1 * BLOCK_G, b_w1, G, n, BLOCK_G, K_SPLIT, ACC_DTYPE, INPUT_PRECISION
                )
            if G_CHUNKS >= 3:
                b_rec += _dg_chunk_dot(
                    dgn_t, o_b, m_b, 2 * BLOCK_G, b_w2, G, n, BLOCK_G, K_SPLIT, ACC_DTYPE, INPUT_PRECISION
                )
            if G_CHUNKS >= 4:
                b_rec += _dg_chunk_dot(
                    dgn_t, o_b, m_b, 3 * BLOCK_G, b_w3, G, n, BLOCK_G, K_SPLIT, ACC_DTYPE, INPUT_PRECISION
                )
            if HAS_MASK:
                b_rec = b_rec * b_hmc
            b_rec += b_carry
            if n == T:
                tl.store(
                    dh0_d + o_b[:, None] * R + o_c[None, :], (b_rec + poison).to(dh0_ptr.dtype.element_ty), mask=m_bc
                )
            else:
                b_dh = b_rec
                if HAS_DY:
                    b_dh += tl.load(dy_t + o_b[:, None] * ldy + o_c[None, :], mask=m_bc & v_t[:, None], other=0.0).to(
                        ACC_DTYPE
                    )
                b_kc = b_dc  # unread without zoneout
                if ZONEOUT > 0:
                    # the kept share of dh_t goes straight to h_{t-1} (carried), the rest through the cell
                    b_kh = _zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
                    b_kc = _zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
                    b_carry = b_kh * b_dh
                    if HAS_LENGTHS:
                        b_carry = tl.where(v_t[:, None], b_carry, b_rec)
                    b_dh = (1.0 - b_kh) * b_dh
                elif HAS_LENGTHS:
                    b_carry = tl.where(v_t[:, None], 0.0, b_rec)
                else:
                    b_carry = b_carry * 0.0
                if HAS_PROJ:
                    if HAS_LENGTHS:
                        b_dh = tl.where(v_t[:, None], b_dh, 0.0)
                    dh_t = dhall_d + tc * B * P
                    tl.store(
                        dh_t + o_b[:, None] * P + o_c[None, :],
                        (b_dh + poison).to(dhall_ptr.dtype.element_ty),
                        mask=m_bc,
                    )
                    failed = _barrier(sync, NS * (2 * n + 1), failed, spin_limit)
                    b_dhf = tl.load(
                        dh_t + o_b[:, None] * P + o_f[None, :],
                        mask=m_b[:, None] & m_f[None, :],
                        other=0.0,
                        cache_modifier=".cg",
                    )
                    b_dm = tl.dot(b_dhf, b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
                    b_dc = _bwd_cell(
                        b_dm, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, gates_t, cs_t, cs_p,
                        c0_d, first_fwd, dg_t, dc0_d, H, b_kc, BLOCK_B, BLOCK_H, HAS_LENGTHS, 0, ACC_DTYPE,
                    )  # fmt: skip
                    failed = _barrier(sync, NS * (2 * n + 2), failed, spin_limit)
                else:
                    b_dc = _bwd_cell(
                        b_dh, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, gates_t, cs_t, cs_p,
                        c0_d, first_fwd, dg_t, dc0_d, H, b_kc, BLOCK_B, BLOCK_H, HAS_LENGTHS, ZONEOUT, ACC_DTYPE,
                    )  # fmt: skip
                    failed = _barrier(sync, NS * (n + 1), failed, spin_limit)
        else:
            if HAS_PROJ:
                o_c = tl.arange(0, BLOCK_P)
                m_c = o_c < P
                b_dh = _bwd_grad_into_h(
                    dgn_t, w_d, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, o_b, o_c, m_b, m_c, v_t, n, T, B, H, R, ldy, poison,
                    zs_ptr, zo_stream, t, zo_h, BLOCK_B, BLOCK_P, BLOCK_K, HAS_DY, HAS_DHN, HAS_LENGTHS, HAS_MASK, 0,
                    ACC_DTYPE, INPUT_PRECISION,
                )  # fmt: skip
                if n < T:
                    dh_t = dhall_d + tc * B * P
                    b_dhq = b_dh.to(dhall_ptr.dtype.element_ty)  # a new name: Triton 3.6 refuses a retyped b_dh
                    tl.store(dh_t + o_b[:, None] * P + o_c[None, :], b_dhq, mask=m_b[:, None] & m_c[None, :])
                    for u in range(0, H, BLOCK_H):
                        o_u = u + tl.arange(0, BLOCK_H)
                        o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
                        m_u, m_g = o_u < H, o_g < G
                        # dm_t[:, units] = dh_t @ W_hr[:, units]
                        b_wr = tl.load(
                            wr_d + o_c[:, None] * H + o_u[None, :], mask=m_c[:, None] & m_u[None, :], other=0.0
                        )
                        b_dm = tl.dot(b_dhq, b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
                        b_dc = _load_dc(dc_d, dcn_d, o_b, o_u, m_b, m_u, n, H, HAS_DCN, ACC_DTYPE)
                        b_dc = _bwd_cell(
                            b_dm, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, gates_t, cs_t,
                            cs_p, c0_d, first_fwd, dg_t, dc0_d, H, b_dc, BLOCK_B, BLOCK_H, HAS_LENGTHS, 0, ACC_DTYPE,
                        )  # fmt: skip
                        tl.store(
                            dc_d + o_b[:, None] * H + o_u[None, :],
                            b_dc.to(dc_ptr.dtype.element_ty),
                            mask=m_b[:, None] & m_u[None, :],
                        )
            else:
                for u in range(0, H, BLOCK_H):
                    o_u = u + tl.arange(0, BLOCK_H)
                    o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
                    m_u, m_g = o_u < H, o_g < G
                    b_dh = _bwd_grad_into_h(
                        dgn_t, w_d, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, o_b, o_u, m_b, m_u, v_t, n, T, B, H, R, ldy,
                        poison, zs_ptr, zo_stream, t, zo_h, BLOCK_B, BLOCK_H, BLOCK_K, HAS_DY, HAS_DHN, HAS_LENGTHS,
                        HAS_MASK, ZONEOUT, ACC_DTYPE, INPUT_PRECISION,
                    )  # fmt: skip
                    if n < T:
                        b_dc = _load_dc(dc_d, dcn_d, o_b, o_u, m_b, m_u, n, H, HAS_DCN, ACC_DTYPE)
                        b_kc = b_dc  # unread without zoneout
                        if ZONEOUT > 0:
                            b_kc = _zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
                        b_dc = _bwd_cell(
                            b_dh, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, gates_t, cs_t,
                            cs_p, c0_d, first_fwd, dg_t, dc0_d, H, b_kc, BLOCK_B, BLOCK_H, HAS_LENGTHS, ZONEOUT,
                            ACC_DTYPE,
                        )  # fmt: skip
                        tl.store(
                            dc_d + o_b[:, None] * H + o_u[None, :],
                            b_dc.to(dc_ptr.dtype.element_ty),
                            mask=m_b[:, None] & m_u[None, :],
                        )
            tl.debug_barrier()  # this step's dG_t, written by every thread, precedes the next step's loads
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit
def _load_dc(dc_d, dcn_d, o_b, o_u, m_b, m_u, n, H, HAS_DCN: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """dc_t of a unit tile: the scratch buffer after the first step, c_n's gradient (or zero) on it."""
    m_bu = m_b[:, None] & m_u[None, :]
    o_bu = o_b[:, None] * H + o_u[None, :]
    b_dc = tl.load(dc_d + o_bu, mask=m_bu & (n > 0), other=0.0).to(ACC_DTYPE)
    if HAS_DCN:
        b_dc += tl.load(dcn_d + o_bu, mask=m_bu & (n == 0), other=0.0).to(ACC_DTYPE)
    return b_dc


@triton.jit
def _bwd_grad_into_h(
    dgn_t,
    w_d,
    dy_t,
    dcarry_d,
    dhn_d,
    dh0_d,
    hm_d,
    o_b,
    o_c,
    m_b,
    m_c,
    v_t,
    n,
    T,
    B,
    H,
    R,
    ldy,
    poison,
    zs_ptr,
    zo_stream,
    t,
    zo_h,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Batch-owned: the gradient reaching h_t[:, o_c] (all of it: through the state, carried, dy_t); with zoneout
    only the share that goes through the cell, the kept share being carried to h_{t-1}.

    On the extra pass (n == T) the part through the state is h0's gradient: it is stored to dh0 instead.
    """
    m_bc = m_b[:, None] & m_c[None, :]
    o_bc = o_b[:, None] * R + o_c[None, :]
    b_rec = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC_DTYPE)
    if n > 0:
        for k in range(0, 4 * H, BLOCK_K):
            o_k = k + tl.arange(0, BLOCK_K)
            m_k = o_k < 4 * H
            b_dgn = tl.load(
                dgn_t + o_b[:, None] * (4 * H) + o_k[None, :],
                mask=m_b[:, None] & m_k[None, :],
                other=0.0,
                cache_modifier=".cg",
            )
            b_w = tl.load(
                w_d + _torch_rows(o_k, H)[:, None] * R + o_c[None, :], mask=m_k[:, None] & m_c[None, :], other=0.0
            )
            b_rec += tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    if HAS_MASK:  # the next step's product saw h_t * mask
        b_rec *= tl.load(hm_d + o_bc, mask=m_bc, other=0.0).to(ACC_DTYPE)
    # what reached the state without a gate: h_n's gradient on the first pass, skipped steps' with lengths,
    # zoneout's kept share
    if HAS_LENGTHS or ZONEOUT > 0:
        b_rec += tl.load(dcarry_d + o_bc, mask=m_bc & (n > 0), other=0.0).to(ACC_DTYPE)
    if HAS_DHN:
        b_rec += tl.load(dhn_d + o_bc, mask=m_bc & (n == 0), other=0.0).to(ACC_DTYPE)
    tl.store(dh0_d + o_bc, (b_rec + poison).to(dh0_d.dtype.element_ty), mask=_and(m_bc, n == T))
    b_dh = b_rec
    if HAS_DY:
        b_dh += tl.load(dy_t + o_b[:, None] * ldy + o_c[None, :], mask=m_bc & v_t[:, None], other=0.0).to(ACC_DTYPE)
    if ZONEOUT > 0:
        b_kh = _zoneout_rates(zs_ptr, zo_stream, t, o_b, o_c, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_carry = b_kh * b_dh
        if HAS_LENGTHS:
            b_carry = tl.where(v_t[:, None], b_carry, b_rec)
        tl.store(dcarry_d + o_bc, b_carry.to(dcarry_d.dtype.element_ty), mask=_and(m_bc, n < T))
        b_dh = (1.0 - b_kh) * b_dh
    elif HAS_LENGTHS:
        tl.store(
            dcarry_d + o_bc, tl.where(v_t[:, None], 0.0, b_rec).to(dcarry_d.dtype.element_ty), mask=_and(m_bc, n < T)
        )
    if HAS_LENGTHS:
        b_dh = tl.where(v_t[:, None], b_dh, 0.0)
    return b_dh


# ----------------------------------------------------------------------------------------------------------
# choice of regime and tiles
# ----------------------------------------------------------------------------------------------------------

OPERAND_BUDGET = {False: 96 * 1024, True: 128 * 1024}
"""Bytes of dot operands (resident weight slice + the exchanged row block) one unit-split program may hold, forward
and backward: the largest that compile spill-free for sm_90 (H=1024 bf16 forward: 193 registers, 97 KB shared;
backward H=512: 254 registers, 129 KB shared; backward H=1024 spills and needs 257 KB of shared memory)."""
CHUNK_ROWS = 1024
"""Gate rows per resident chunk of W_hh in the unit-split backward beyond ``OPERAND_BUDGET`` (up to 4 chunks:
H <= 1024, bf16/fp16, 16 units per program), each step's dot over a chunk split 4 ways over 8 warps."""
SMALL_W_BYTES = 96 * 1024
"""A W_hh this small stays in one SM's L1/shared memory: the batch-owned form then beats the per-step kernels."""
_SM_COUNT: dict[str, int | None] = {}


def _sm_count(device: torch.device) -> int | None:
    key = str(device)
    if key not in _SM_COUNT:
        _SM_COUNT[key] = (
            torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
        )
    return _SM_COUNT[key]


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def _operand_bytes(B_tile: int, H: int, P: int, units: int, block_p: int, elt: int, backward: bool) -> int:
    """Dot operands a unit-split program holds per step: its resident weights and the whole exchanged rows."""
    R = P or H
    if backward:
        g = _p2(4 * H)
        n = g * (block_p or units) + B_tile * g  # W_hh[:, its columns], dG_{t+1}
        n += (_p2(P) * units + B_tile * _p2(P)) if P else 0  # W_hr[:, its units], dh_t
    else:
        n = _p2(R) * 4 * units + B_tile * _p2(R)  # W_hh^T[:, its gate columns], h_{t-1}
        n += (_p2(H) * block_p + B_tile * _p2(H)) if P else 0  # W_hr^T[:, its P slice], m_t
    return n * elt


@functools.lru_cache(maxsize=1024)
def sequence_config(
    batch: int,
    hidden: int,
    proj_size: int,
    directions: int,
    dtype: torch.dtype,
    sm_count: int | None,
    backward: bool = False,
) -> dict:
    """Regime and tiles for one layer's sequence kernel (forward, or ``backward``). T plays no part.

    * No SM count (CPU tensors through the interpreter): batch-owned with the per-step kernels' tiles
      (``step_config``), so the results are theirs bit for bit and nothing waits across programs.
    * Unit-split (the latency regime, small B) when one program per SM covers every group and each program's dot
      operands fit: batch tiles of 16 rows, ``groups = ceil(B/16) * D``, each group ``ceil(H/units)`` programs
      with the fewest units per program such that ``groups * programs <= sm_count`` (so the grid is co-resident
      whatever the kernel's registers), at least 8 units forward (a 16x32 gate dot) and 16 backward or with a
      projection (every dot dimension >= 16), and the resident weight slice plus the exchanged row block within
      ``OPERAND_BUDGET`` (compile-checked spill-free for sm_90 in ``tests/test_sequence_structure.py``). The
      backward beyond it, up to H=1024 in 16-bit with 16 units, holds W_hh in ``CHUNK_ROWS`` chunks of gate rows
      and splits each step's dot 4 ways over 8 warps (``G_CHUNKS``, ``K_SPLIT``).
    * Otherwise batch-owned (32x32 tiles, K-blocks of 32, 8 warps without a projection; the per-step tiles
      with one): a program owns a batch tile and streams W_hh from L2 every
      step. It beats the per-step kernels only where W_hh is small (``SMALL_W_BYTES``: it stays in the SM's
      L1 and the launches saved dominate); elsewhere (large B with a large W_hh: the per-step kernels have the
      same tiles, more programs, and their launches amortise) the config carries ``prefer_step=True`` and
      :func:`choose_kernel` picks the per-step kernels. float64 (gradcheck only) is never unit-split.

    Cached per shape (a host-time saving on every call); the returned dict must not be modified.
    """
    R = proj_size or hidden
    step = step_config(batch, hidden, 4 * hidden if backward else R, dtype, proj_size)
    batch_owned = {"regime": "batch", "prefer_step": False, **step}
    if sm_count is None or batch == 0:
        return batch_owned
    elt = torch.finfo(dtype).bits // 8
    batch_owned["prefer_step"] = 4 * hidden * R * elt > SMALL_W_BYTES
    if not proj_size and dtype != torch.float64:
        # 32-row tiles, K-blocks of 32 and 8 warps: the largest spill-free for sm_90 (64-row tiles spill here)
        batch_owned.update(BLOCK_B=32, BLOCK_H=min(32, max(4, _p2(hidden))), BLOCK_K=32, num_warps=8)
    if dtype == torch.float64:
        return batch_owned
    block_b = 16
    groups = triton.cdiv(batch, block_b) * directions
    min_units = 16 if (backward or proj_size) else 8
    units = max(min_units, _p2(triton.cdiv(hidden * groups, sm_count)))
    programs = triton.cdiv(hidden, units)
    if groups * programs > sm_count:
        return batch_owned
    block_p = max(16, _p2(triton.cdiv(proj_size, programs))) if proj_size else 0
    operands = _operand_bytes(block_b, hidden, proj_size, units, block_p, elt, backward)
    cfg = {"regime": "split", "prefer_step": False, "BLOCK_B": block_b, "BLOCK_H": units}
    cfg["num_warps"] = 8 if operands > 16384 else 4
    if operands > OPERAND_BUDGET[backward]:
        chunks = triton.cdiv(4 * hidden, CHUNK_ROWS)
        if not backward or proj_size or elt != 2 or units != 16 or chunks > 4:
            return batch_owned
        # the backward beyond H=512: W_hh[:, 16 units] resident in chunks of gate rows, each step's dot split over
        # the warps (a spill-free build up to H=1024 for sm_90, tests/test_sequence_structure.py)
        cfg.update(G_CHUNKS=chunks, K_SPLIT=4, num_warps=8)
    if proj_size:
        cfg["BLOCK_P"] = block_p
    return cfg


def _constexprs(cfg: dict, H: int, R: int, P: int, backward: bool) -> tuple[dict, int]:
    """Kernel constexprs for a config, and the number of unit programs per (batch tile, direction) group."""
    split = cfg.get("regime", "batch") == "split"
    bh = cfg["BLOCK_H"]
    ns = triton.cdiv(H, bh) if split else 1
    if split:
        bp = cfg.get("BLOCK_P", max(16, triton.next_power_of_2(triton.cdiv(P, ns)))) if P else 16
        assert not P or bp * ns >= P, f"BLOCK_P {bp} x {ns} programs does not cover P={P}"
    else:
        bp = cfg.get("BLOCK_P", 16)
    k = dict(BLOCK_B=cfg["BLOCK_B"], BLOCK_H=bh, BLOCK_K=cfg.get("BLOCK_K", 16), BLOCK_P=bp, SPLIT=split)
    if backward:
        k.update(
            # at least 16: a tl.dot dimension (H < 4 would give a smaller one; the rows past 4H are masked)
            BLOCK_G=max(16, triton.next_power_of_2(triton.cdiv(4 * H, cfg.get("G_CHUNKS", 1)))) if split else 16,
            G_CHUNKS=cfg.get("G_CHUNKS", 1) if split else 1,
            K_SPLIT=cfg.get("K_SPLIT", 1) if split else 1,
            BLOCK_F=max(16, triton.next_power_of_2(P)) if split and P else 16,
        )
    else:
        k.update(
            BLOCK_R=max(16, triton.next_power_of_2(R)) if split else 16,
            BLOCK_F=max(16, triton.next_power_of_2(H)) if split and P else 16,
        )
    return k, ns


def _cooperative_supported() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})


COOPERATIVE = _cooperative_supported()
"""True when this Triton can launch a grid cooperatively (the launch fails instead of hanging if not co-resident)."""


def _launch_options(x: torch.Tensor, split: bool, num_warps: int) -> dict:
    opts = {"num_warps": num_warps}
    if split and x.is_cuda and COOPERATIVE:
        opts["launch_cooperative_grid"] = True
    return opts


def _check_flag(err: torch.Tensor, what: str) -> None:
    """Under TRITONLSTM_CHECK=1 (never during CUDA-graph capture, which cannot sync) raise if a wait timed out."""
    if os.environ.get("TRITONLSTM_CHECK", "0") != "1" or (err.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if int(err.item()) != 0:
        raise RuntimeError(f"tritonlstm {what} sequence kernel: a barrier wait timed out (outputs hold NaN)")




# ----------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------


def _forward(
    x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, reverse, store_for_backward, config, h_mask=None,
    zoneout=(0.0, 0.0), zoneout_seed=None,
):
    T, B, I = x.shape
    D, G, R = w_hh.shape
    H = G // 4
    P = w_hr.shape[1] if w_hr is not None else 0
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"tritonlstm kernels support {SUPPORTED_DTYPES}, got {dtype}")
    cfg = config or sequence_config(B, H, P, D, dtype, _sm_count(x.device))
    dev = x.device

    # input projection of every step and direction in one (batched) GEMM, biases folded, gates interleaved
    w_ih_t = interleave_gates(w_ih, 1).transpose(1, 2)  # [D, I, G]
    x2 = x.reshape(T * B, I)
    b_il = interleave_gates(bias, 1).view(D, 1, G) if bias is not None else None
    if D == 1:
        gx = torch.addmm(b_il[0], x2, w_ih_t[0]) if bias is not None else torch.mm(x2, w_ih_t[0])
    else:
        x3 = x2.expand(D, T * B, I)
        gx = torch.baddbmm(b_il, x3, w_ih_t) if bias is not None else torch.bmm(x3, w_ih_t)

    y = torch.empty(T, B, D * R, device=dev, dtype=dtype)
    h_n = torch.empty(D, B, R, device=dev, dtype=dtype)
    c_n = torch.empty(D, B, H, device=dev, dtype=dtype)
    cs = torch.empty(D, T if store_for_backward else 2, B, H, device=dev, dtype=acc)
    k, ns = _constexprs(cfg, H, R, P, backward=False)
    nb = triton.cdiv(B, k["BLOCK_B"])
    # the error flag, then the barrier counters: their offsets do not depend on B (no alignment-driven recompiles)
    flags = torch.zeros(1 + D * nb, device=dev, dtype=torch.int32)
    err, sync = flags[:1], flags[1:]
    if B > 0:
        m = torch.empty(D, B, H, device=dev, dtype=dtype) if (P and k["SPLIT"]) else y
        lens = lengths.to(dtype=torch.int32).contiguous() if lengths is not None else flags
        hm = h_mask.to(dtype).contiguous() if h_mask is not None else y  # y: unread
        xh = y  # unread unless unit-split with recurrent dropout: then h_t * mask slots and h0 * mask
        if h_mask is not None and k["SPLIT"]:
            xh = torch.empty(D, 3, B, R, device=dev, dtype=dtype)
            xh[:, 2] = (h0.to(acc) * hm.to(acc)).to(dtype)
        rev_mask = sum(1 << d for d, r in enumerate(reverse) if r)
        with _launch_guard(x.device):
            _seq_fwd_kernel[(nb, D, ns)](
                gx, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else w_hh, h0.contiguous(),
                c0.contiguous(), y, h_n, c_n, cs, m, lens, hm, xh,
                *_zoneout_kernel_args(zoneout, zoneout_seed, y, w_hr), sync, err, T, B, H, R, P, rev_mask,
                cfg.get("spin_limit", DEFAULT_SPIN_LIMIT),
                STORE_GATES=store_for_backward, HAS_LENGTHS=lengths is not None, HAS_PROJ=P > 0,
                HAS_MASK=h_mask is not None, ZONEOUT=_zoneout_mode(zoneout, zoneout_seed), ACC_DTYPE=_TL_ACC[acc],
                INPUT_PRECISION=_input_precision(dtype), **k, **_launch_options(x, k["SPLIT"], cfg["num_warps"]),
            )  # fmt: skip
    else:
        h_n.copy_(h0)
        c_n.copy_(c0)
    if not store_for_backward:
        return (y, h_n, c_n, None, None), err
    return (y, h_n, c_n, gx.view(D, T, B, G), cs), err


def _zoneout_kernel_args(zoneout, seed, unread, w_hr) -> list:
    """``[zs_ptr, p_h, p_c]`` of the sequence kernels (the per-step kernels' arguments less their own extras)."""
    zs, _, p_h, p_c, _ = _zoneout_args(zoneout, seed, 0, unread, w_hr)
    return [zs, p_h, p_c]


def sequence_forward(
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [D, B, R]
    c0: torch.Tensor,  # [D, B, H]
    w_ih: torch.Tensor,  # [D, G, I]
    w_hh: torch.Tensor,  # [D, G, R]
    bias: torch.Tensor | None,  # [D, G]  b_ih + b_hh, torch's gate order
    w_hr: torch.Tensor | None,  # [D, P, H]
    lengths: torch.Tensor | None,  # [B] int on x.device, 1 <= len <= T (validated by the caller)
    reverse: tuple[bool, ...],  # per direction: runs from the last step to the first
    store_for_backward: bool,
    config: dict | None = None,
    h_mask: torch.Tensor | None = None,  # [D, B, R] recurrent dropout mask on h_{t-1}
    zoneout: tuple[float, float] = (0.0, 0.0),  # (p_h, p_c); not with a projection
    zoneout_seed: torch.Tensor | None = None,  # [1] int64: training masks from Philox; None: the eval expectation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One layer, every direction, one launch for the whole recurrence.

    Returns ``(y [T, B, D*R], h_n [D, B, R], c_n [D, B, H], gates [D, T, B, G] | None, cs [D, T, B, H] | None)``:
    ``y`` holds the directions side by side (nn.LSTM's bidirectional layout); ``gates[d]``/``cs[d]`` are exactly
    what ``lstm_layer_forward`` returns for direction d (activated gates, interleaved, input dtype; every c_t in
    the accumulator dtype), ``None`` unless ``store_for_backward``. ``config`` overrides
    :func:`sequence_config` (keys ``regime``, ``BLOCK_*``, ``num_warps``, ``spin_limit``). ``h_mask``, recurrent
    dropout, multiplies h_{t-1} where it enters the recurrent product, as in the per-step kernels; ``zoneout`` and
    ``zoneout_seed`` are theirs too (direction d on Philox streams 2d and 2d + 1), so the masks are the same.

    Example::

        y, h_n, c_n, gates, cs = sequence_forward(x, h0, c0, w_ih, w_hh, b_ih + b_hh, None, None, (False, True), True)
    """
    try:
        out, err = _forward(
            x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, reverse, store_for_backward, config, h_mask, zoneout,
            zoneout_seed,
        )
    except CompilationError as e:
        raise _uncompilable(x, w_hh, w_hr, False, e) from e
    _check_flag(err, "forward")
    return out


def _backward(
    dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, reverse, needs, config, h_mask=None,
    zoneout=(0.0, 0.0), zoneout_seed=None,
):
    need_dx, need_dh0, need_dc0, need_dw_ih, need_dw_hh, need_db, need_dw_hr = needs
    T, B, I = x.shape
    D, G, R = w_hh.shape
    H = G // 4
    P = w_hr.shape[1] if w_hr is not None else 0
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    dev = x.device
    cfg = config or sequence_config(B, H, P, D, dtype, _sm_count(dev), backward=True)
    k, ns = _constexprs(cfg, H, R, P, backward=True)
    nb = triton.cdiv(B, k["BLOCK_B"])

    dg = torch.empty(D, T, B, G, device=dev, dtype=dtype)
    dh_all = torch.empty(D, T, B, P, device=dev, dtype=dtype) if P else None
    dh0 = torch.empty(D, B, R, device=dev, dtype=dtype)
    dc0 = torch.empty(D, B, H, device=dev, dtype=dtype)
    flags = torch.zeros(1 + D * nb, device=dev, dtype=torch.int32)  # as in _forward
    err, sync = flags[:1], flags[1:]
    hm = h_mask.to(dtype).contiguous() if h_mask is not None else None  # the kernel's mask and dW_hh's
    if B > 0:
        dc = torch.empty(D, B, H, device=dev, dtype=acc) if not k["SPLIT"] else dc0
        carried = lengths is not None or any(p > 0 for p in zoneout)
        dcarry = torch.empty(D, B, R, device=dev, dtype=acc) if carried and not k["SPLIT"] else dh0
        lens = lengths.to(dtype=torch.int32).contiguous() if lengths is not None else flags
        rev_mask = sum(1 << d for d, r in enumerate(reverse) if r)
        with _launch_guard(x.device):
            _seq_bwd_kernel[(nb, D, ns)](
                dy.contiguous() if dy is not None else y, dh_n.contiguous() if dh_n is not None else dh0,
                dc_n.contiguous() if dc_n is not None else dc0, w_hh.contiguous(),
                w_hr.contiguous() if w_hr is not None else w_hh, gates, cs, c0.contiguous(), dg,
                dh_all if dh_all is not None else dg, dc, dcarry, dh0, dc0, lens, hm if hm is not None else dg,
                *_zoneout_kernel_args(zoneout, zoneout_seed, dg, w_hr), sync, err, T, B, H, R, P, rev_mask,
                cfg.get("spin_limit", DEFAULT_SPIN_LIMIT), HAS_DY=dy is not None, HAS_DHN=dh_n is not None,
                HAS_DCN=dc_n is not None, HAS_LENGTHS=lengths is not None, HAS_PROJ=P > 0,
                HAS_MASK=h_mask is not None, ZONEOUT=_zoneout_mode(zoneout, zoneout_seed), ACC_DTYPE=_TL_ACC[acc],
                INPUT_PRECISION=_input_precision(dtype), **k, **_launch_options(x, k["SPLIT"], cfg["num_warps"]),
            )  # fmt: skip
    else:
        dh0.zero_()
        dc0.zero_()

    # weight, input and bias gradients: GEMMs and sums over every step, no atomics
    dg2 = dg.view(D, T * B, G)
    x2 = x.reshape(T * B, I)
    dx = dw_ih = dw_hh = db = dw_hr = None
    if need_dx:
        w_il = interleave_gates(w_ih, 1)
        dx = torch.mm(dg2[0], w_il[0])
        for d in range(1, D):
            dx = torch.addmm(dx, dg2[d], w_il[d])
        dx = dx.view(T, B, I)
    if need_dw_ih:
        dw_ih = deinterleave_gates(torch.bmm(dg2.transpose(1, 2), x2.expand(D, T * B, I)), 1)
    if need_dw_hh:
        dw_hh = torch.empty(D, G, R, device=dev, dtype=dtype)
        for d in range(D):
            hm_d = hm[d] if hm is not None else None
            dw_hh[d] = _dw_hh_one(dg[d], y[..., d * R : (d + 1) * R], h0[d], lengths, reverse[d], hm_d)
        dw_hh = deinterleave_gates(dw_hh, 1)
    if need_db:
        db = deinterleave_gates(dg.sum((1, 2), dtype=acc), 1).to(dtype)
    if need_dw_hr and P:
        # m_t = o * tanh(c_t) from the saved gates and cell states, rounded to the storage dtype as in the forward
        m = (gates.view(D, T, B, H, 4)[..., 3].to(acc) * torch.tanh(cs)).to(dtype)
        dw_hr = torch.bmm(dh_all.view(D, T * B, P).transpose(1, 2), m.view(D, T * B, H))
    grads = (dx, dh0 if need_dh0 else None, dc0 if need_dc0 else None, dw_ih, dw_hh, db, dw_hr)
    return grads, err


def _dw_hh_one(dg, y, h0, lengths, reverse, h_mask=None):
    """Interleaved dW_hh of one direction: sum over steps of dG_t^T h_{t-1} (h0 where the step was a row's first),
    h_{t-1} * ``h_mask`` with recurrent dropout."""
    T = dg.shape[0]
    G, R = dg.shape[-1], h0.shape[-1]
    first = T - 1 if reverse else 0
    dw = torch.mm(dg[first].t(), h0 if h_mask is None else h0 * h_mask)
    if T > 1:
        dg_rest, h_rest = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
        if lengths is not None and reverse:
            own = (torch.arange(1, T, device=dg.device)[:, None] < lengths[None, :])[..., None]
            h_rest = torch.where(own, h_rest, h0[None])
        if h_mask is not None:
            h_rest = h_rest * h_mask
        dw = torch.addmm(dw, dg_rest.reshape(-1, G).t(), h_rest.reshape(-1, R))
    return dw


def sequence_backward(
    dy: torch.Tensor | None,  # [T, B, D*R]
    dh_n: torch.Tensor | None,  # [D, B, R]
    dc_n: torch.Tensor | None,  # [D, B, H]
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [D, B, R]
    c0: torch.Tensor,  # [D, B, H]
    w_ih: torch.Tensor,  # [D, G, I]
    w_hh: torch.Tensor,  # [D, G, R]
    y: torch.Tensor,  # [T, B, D*R]
    gates: torch.Tensor,  # [D, T, B, G]
    cs: torch.Tensor,  # [D, T, B, H]
    w_hr: torch.Tensor | None,  # [D, P, H]
    lengths: torch.Tensor | None,  # [B]
    reverse: tuple[bool, ...],
    needs: tuple[bool, ...] = (True,) * 7,
    config: dict | None = None,
    h_mask: torch.Tensor | None = None,  # [D, B, R] the forward's recurrent dropout mask
    zoneout: tuple[float, float] = (0.0, 0.0),  # the forward's
    zoneout_seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of one layer, every direction, one launch for the whole recurrence.

    Returns ``(dx [T, B, I], dh0 [D, B, R], dc0 [D, B, H], dw_ih [D, G, I], dw_hh [D, G, R], db [D, G],
    dw_hr [D, P, H] | None)``, ``None`` for each gradient ``needs`` (same order) leaves out. ``db`` is the
    gradient of ``b_ih`` and of ``b_hh`` alike. ``dy``, ``dh_n``, ``dc_n`` may be ``None`` (zeros). ``gates``/``cs``
    may come from :func:`sequence_forward` or, stacked over directions, from ``lstm_layer_forward``.
    """
    try:
        grads, err = _backward(
            dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, reverse, needs, config, h_mask,
            zoneout, zoneout_seed,
        )
    except CompilationError as e:
        raise _uncompilable(x, w_hh, w_hr, True, e) from e
    _check_flag(err, "backward")
    return grads


class SequenceCompileError(RuntimeError):
    """A sequence kernel did not compile for a layer's shape. The op catches it and runs the per-step kernels;
    :func:`choose_kernel` sends that shape to them from then on (warned once)."""


_UNCOMPILABLE: set[tuple] = set()


def _shape_key(device: torch.device, dtype: torch.dtype, B: int, H: int, P: int, D: int, backward: bool) -> tuple:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device), dtype, B, H, P, D, backward


def _uncompilable(x, w_hh, w_hr, backward: bool, error: CompilationError) -> SequenceCompileError:
    D, G, _ = w_hh.shape
    P = w_hr.shape[1] if w_hr is not None else 0
    key = _shape_key(x.device, x.dtype, x.shape[1], G // 4, P, D, backward)
    _UNCOMPILABLE.add(key)
    what = f"{'backward' if backward else 'forward'} sequence kernel for B={key[2]} H={key[3]} P={P} D={D} {x.dtype}"
    warnings.warn(
        f"tritonlstm: the {what} did not compile ({str(error).strip().splitlines()[-1][:200]}); this shape runs "
        "the per-step kernels.",
        RuntimeWarning,
        stacklevel=3,
    )
    return SequenceCompileError(what)


# ----------------------------------------------------------------------------------------------------------
# support, first-use self-test, choice between the sequence and the per-step kernels
# ----------------------------------------------------------------------------------------------------------


def sequence_supported(device: torch.device | str, dtype: torch.dtype, B: int, H: int, P: int, D: int) -> str | None:
    """``None`` if the sequence kernels can run this layer here, else the reason they cannot."""
    device = torch.device(device)
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported (only {SUPPORTED_DTYPES})"
    if D not in (1, 2):
        return f"{D} directions (only 1 or 2)"
    if device.type == "cuda":
        return None
    if device.type != "cpu" or not INTERPRETER:
        return f"{device.type} tensors need a CUDA GPU or TRITON_INTERPRET=1 (CPU tensors)"
    if dtype == torch.bfloat16:
        return "the interpreter computes bfloat16 dots wrongly"
    if _OLD_INTERPRETER_WITH_NEW_NUMPY:
        return "Triton < 3.9's interpreter cannot run a loop over a runtime bound (T) with NumPy >= 2.4"
    return None


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _interpreter_cannot_loop_over_t() -> bool:
    """Triton < 3.9's interpreter with NumPy >= 2.4 fails on ``range`` over a runtime bound (checked here: Triton
    3.6.0 with NumPy 2.4.6 fails, 3.9.0 works); the sequence kernels' time loop is one."""
    try:
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return False
    return _version(triton.__version__) < (3, 9) and _version(numpy_version) >= (2, 4)


_OLD_INTERPRETER_WITH_NEW_NUMPY = INTERPRETER and _interpreter_cannot_loop_over_t()

_VALIDATED: dict[tuple[str, torch.dtype, str], bool] = {}
_SELF_TEST_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


REGIMES = ("split", "split-chunked", "batch")
"""What the first-use self-test validates separately: unit-split, unit-split with the backward's chunked W_hh and
split dot (``G_CHUNKS``/``K_SPLIT``: the rule's backward beyond H=512), and batch-owned."""


def _variant(cfg: dict) -> str:
    """The :data:`REGIMES` entry a config belongs to."""
    return "split-chunked" if cfg.get("K_SPLIT", 1) > 1 else cfg["regime"]


def _self_test_config(device: torch.device, dtype: torch.dtype, regime: str, H: int, P: int, backward: bool):
    if regime == "batch":
        return {"regime": "batch", **step_config(3, H, 4 * H if backward else (P or H), dtype, P)}
    # on a GPU several programs per group, so the barrier really synchronises; the interpreter runs programs one
    # after another, so there a single program per group (the barrier code still runs)
    units = 16 if device.type == "cuda" else triton.next_power_of_2(H)
    cfg = {"regime": "split", "BLOCK_B": 16, "BLOCK_H": units, "num_warps": 4}
    if regime == "split-chunked" and backward and not P:
        # three chunks of gate rows, each dot split 4 ways (on a GPU at H=40: 64 rows a chunk, 16 a slice)
        cfg.update(G_CHUNKS=3, K_SPLIT=4, num_warps=8)
    return cfg


def self_test(device: torch.device | str, dtype: torch.dtype, regime: str) -> str | None:
    """Run the sequence kernels of ``regime`` against the per-step kernels on small random problems.

    Returns ``None`` when they agree and no barrier timed out, else what failed. Bidirectional, lengths, h0/c0,
    with and without a projection, with recurrent dropout and training zoneout, forward and backward.
    """
    device = torch.device(device)
    try:
        # plain numbers whatever the caller's context: no autocast, no autograd recording
        with torch.autocast(device.type, enabled=False), torch.no_grad():
            return _self_test(device, dtype, regime)
    except Exception as e:  # a compile or launch failure is a failed self-test too: the caller falls back
        return f"raised {type(e).__name__}: {e}"


def _self_test(device: torch.device, dtype: torch.dtype, regime: str) -> str | None:
    from tritonlstm.kernels.lstm import lstm_layer_backward, lstm_layer_forward

    gen = torch.Generator().manual_seed(1234)
    # on a GPU H=40 gives three unit programs per group (16 units each); the interpreter gets a smaller H
    T, B, I, H, D = 5, 3, 7, 40 if device.type == "cuda" else 12, 2
    tol = _SELF_TEST_TOL[dtype]
    for P, masked in ((0, False), (16, False), (0, True)):  # the masked case also runs training zoneout
        R = P or H

        def r(*shape):
            return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype)

        x, h0, c0 = r(T, B, I), r(D, B, R), r(D, B, H)
        w_ih, w_hh, bias = r(D, 4 * H, I), r(D, 4 * H, R), r(D, 4 * H)
        w_hr = r(D, P, H) if P else None
        lengths = torch.tensor([5, 2, 4], device=device)
        h_mask = (torch.rand(D, B, R, generator=gen) > 0.3).to(device=device, dtype=dtype) / 0.7 if masked else None
        zoneout, seed = ((0.25, 0.4), torch.tensor([97], device=device)) if masked else ((0.0, 0.0), None)
        mask_kwargs = [
            dict(h_mask=h_mask[d], zoneout=zoneout, zoneout_seed=seed, zoneout_stream=2 * d) if masked else {}
            for d in range(D)
        ]
        rev = (False, True)
        fcfg = _self_test_config(device, dtype, regime, H, P, False)
        bcfg = _self_test_config(device, dtype, regime, H, P, True)
        (y, h_n, c_n, gates, cs), err_f = _forward(
            x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, rev, True, fcfg, h_mask, zoneout, seed
        )
        dy, dh_n, dc_n = r(*y.shape), r(*h_n.shape), r(*c_n.shape)
        grads, err_b = _backward(
            dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths, rev, (True,) * 7, bcfg, h_mask,
            zoneout, seed,
        )
        if int(err_f.item()) or int(err_b.item()):
            return f"a barrier wait timed out (error flag set; P={P})"
        ref = {
            "y": [],
            "h_n": [],
            "c_n": [],
            "dx": 0,
            "dh0": [],
            "dc0": [],
            "dw_ih": [],
            "dw_hh": [],
            "db": [],
            "dw_hr": [],
        }
        for d in range(D):
            yd, hd, cd, gd, csd = lstm_layer_forward(
                x, h0[d], c0[d], w_ih[d], w_hh[d], bias[d], torch.zeros_like(bias[d]), w_hr[d] if P else None,
                lengths, rev[d], True, **mask_kwargs[d],
            )  # fmt: skip
            g = lstm_layer_backward(
                dy[..., d * R : (d + 1) * R], dh_n[d], dc_n[d], x, h0[d], c0[d], w_ih[d], w_hh[d], yd, gd, csd,
                w_hr[d] if P else None, lengths, rev[d], **mask_kwargs[d],
            )  # fmt: skip
            for name, v in zip(("y", "h_n", "c_n"), (yd, hd, cd)):
                ref[name].append(v)
            ref["dx"] = ref["dx"] + g[0].to(torch.float64)
            for name, v in zip(("dh0", "dc0", "dw_ih", "dw_hh", "db", "dw_hr"), g[1:]):
                ref[name].append(v)
        got = {
            "y": y,
            "h_n": h_n,
            "c_n": c_n,
            **dict(zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db", "dw_hr"), grads)),
        }
        for name, want in ref.items():
            if name == "dw_hr" and not P:
                continue
            want = want if name == "dx" else torch.cat(want, -1) if name == "y" else torch.stack(want)
            have = got[name].to(torch.float64)
            want = want.to(torch.float64)
            scale = max(1.0, want.abs().max().item())
            bad = (have - want).abs().max().item() if have.shape == want.shape else float("inf")
            if not bad <= tol * scale:  # NaN fails too
                mask = ", recurrent dropout and zoneout" if masked else ""
                return f"{name} differs from the per-step kernels by {bad:.3g} (P={P}{mask}, {dtype}, {regime})"
    return None


def choose_kernel(
    device: torch.device | str, dtype: torch.dtype, B: int, H: int, P: int, D: int, backward: bool = False
) -> str:
    """``"sequence"`` or ``"step"``: which kernels run this layer.

    ``TRITONLSTM_KERNEL=step`` forces the per-step kernels, ``=sequence`` the sequence kernels (an error where
    they cannot run, no self-test), ``=auto`` (default) the sequence kernels where :func:`sequence_supported`
    allows and their first-use self-test on this (device, dtype, regime) passed. A failed self-test warns once,
    saying what failed, and the per-step kernels run from then on. During CUDA-graph capture no self-test runs:
    an already validated sequence kernel, else the per-step kernels. Where :func:`sequence_config` says the
    per-step kernels are faster for this shape (``prefer_step``), ``auto`` picks them. ``backward`` asks for the
    backward pass (its regime may differ; the two paths' saved tensors are interchangeable).
    """
    device = torch.device(device)
    mode = os.environ.get("TRITONLSTM_KERNEL", "auto")
    if mode not in ("auto", "sequence", "step"):
        raise ValueError(f"TRITONLSTM_KERNEL must be auto, sequence or step, got {mode!r}")
    if mode == "step":
        return "step"
    reason = sequence_supported(device, dtype, B, H, P, D)
    if mode == "sequence":
        if reason:
            raise RuntimeError(f"TRITONLSTM_KERNEL=sequence, but the sequence kernels cannot run here: {reason}")
        return "sequence"
    if reason or _shape_key(device, dtype, B, H, P, D, backward) in _UNCOMPILABLE:
        return "step"
    cfg = sequence_config(B, H, P, D, dtype, _sm_count(device), backward)
    if cfg["prefer_step"]:
        return "step"
    regime = _variant(cfg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), dtype, regime)
    if key not in _VALIDATED:
        if _capturing(device):
            return "step"
        failure = self_test(device, dtype, regime)
        if failure is not None:
            warnings.warn(
                f"tritonlstm: the {regime} sequence kernel failed its self-test on {device} in {dtype}: {failure}. "
                "Falling back to the per-step kernels (set TRITONLSTM_KERNEL to force either).",
                RuntimeWarning,
                stacklevel=2,
            )
        _VALIDATED[key] = failure is None
    return "sequence" if _VALIDATED[key] else "step"
