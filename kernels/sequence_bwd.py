"""Sequence backward kernels: one launch runs a whole layer's time loop in reverse, every direction. Three regimes,
one kernel each, with the forward's (:mod:`tritonlstm.kernels.sequence_fwd`) layouts and safety.

* ``_seq_bwd_batch_kernel`` (``"batch"``): a program owns a batch tile and every unit; it forms the gradient
  reaching h_t from dG_{t+1} W_hh, streamed from L2, then the cell's gradient, unit tile by unit tile.
* ``_seq_bwd_split_kernel`` (``"split"``): a program keeps W_hh[:, its units] (all 4H rows) on chip, in up to
  ``G_CHUNKS`` chunks of gate rows whose dots may be split ``K_SPLIT`` ways over the warps (the partial products
  summed in a fixed order). It exchanges dG_t as tagged words (``TAGGED``, one chunk and no projection: the
  forward's helpers, :func:`tritonlstm.kernels.jit.wait_words`), through the barrier, or (``FLAGS``: a candidate,
  :func:`tritonlstm.kernels.config.flags_form`) through one flag per program. Each step's own inputs (the
  forward's gates and cells, dy_t) are loaded before the previous step's wait and carried over.

* ``_seq_bwd_tile_kernel`` (``"tile"``, large batches): the batch-owned step with its units split over the
  programs of a group, which meet through one flag per program; each program streams dG_{t+1} and W_hh[:, its
  units] from L2 in blocks of gate rows, each dG block shared by its one or two epilogue tiles of 16 units.

All write NaN into everything computed after a timed-out wait. No atomics in any reduction (the barrier counter
is synchronisation only): weight, input and bias gradients are GEMMs after the loop, here in :func:`backward`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlstm.kernels.common import (
    GradOutputs,
    Grads,
    Layer,
    Needs,
    Regularisers,
    Saved,
    check_regularisers,
    deinterleave_gates,
    dw_hh,
    interleave_gates,
)
from tritonlstm.kernels.config import DEFAULT_SPIN_LIMIT, constexprs, sequence_config
from tritonlstm.kernels.jit import (
    ACC,
    and_,
    barrier,
    batch_rows,
    cell_backward,
    publish_words,
    release_flag,
    split_gates,
    split_k_dot,
    step_tag,
    torch_rows,
    wait_flags,
    wait_words,
    word_values,
    zoneout_rates,
)
from tritonlstm.kernels.runtime import acc_dtype, input_precision, launch_guard, sm_count
from tritonlstm.kernels.sequence_fwd import launch_options, tagged_words


@triton.jit
def _bwd_cell_inputs(gates_t, cs_t, cs_p, c0_d, first_fwd, o_b, o_u, o_g, m_b, m_u, m_g, H, ZONEOUT: tl.constexpr,
                     ACC_DTYPE: tl.constexpr):  # fmt: skip
    """What step t's cell gradient reads of the forward's saved tensors, for one unit tile: the activated gates,
    c_{t-1} (c0 before the first step) and c_t (unread with zoneout, which recomputes it). Nothing another program
    writes: the unit-split kernel loads them before it waits."""
    m_bu = m_b[:, None] & m_u[None, :]
    o_bu = o_b[:, None] * H + o_u[None, :]
    b_gates = tl.load(gates_t + o_b[:, None] * (4 * H) + o_g[None, :], mask=m_b[:, None] & m_g[None, :], other=0.0)
    b_cp = tl.load(cs_p + o_bu, mask=and_(m_bu, ~first_fwd), other=0.0).to(ACC_DTYPE)
    b_cp += tl.load(c0_d + o_bu, mask=and_(m_bu, first_fwd), other=0.0).to(ACC_DTYPE)
    b_c = b_cp  # unread with zoneout
    if ZONEOUT == 0:
        b_c = tl.load(cs_t + o_bu, mask=m_bu, other=0.0).to(ACC_DTYPE)
    return b_gates.to(ACC_DTYPE), b_cp, b_c


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
    b_gates,  # the forward's activated gates, c_{t-1}, c_t of this tile (:func:`_bwd_cell_inputs`)
    b_cp,
    b_c,
    dg_t,
    dc0_d,
    H,
    b_kc,  # zoneout's share of c_{t-1} in c_t (mask or p; read if ZONEOUT)
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    """Gate gradients of one unit tile from the gradient of m_t (b_dh; with zoneout, the share that went through
    the cell) and dc_t; stores dG_t; returns (dc_{t-1}, dG_t)."""
    m_bu = m_b[:, None] & m_u[None, :]
    m_bg = m_b[:, None] & m_g[None, :]
    o_bu = o_b[:, None] * H + o_u[None, :]
    if ZONEOUT > 0:
        # c_t before zoneout, recomputed from the gates; the kept share of dc_t goes straight to c_{t-1}
        b_i, b_f, b_g, b_o = split_gates(b_gates, BLOCK_B, BLOCK_H)
        b_c = b_f * b_cp + b_i * b_g
        b_dg, b_dcp = cell_backward(b_dh, b_gates, b_c, b_cp, (1.0 - b_kc) * b_dc, BLOCK_B, BLOCK_H)
        b_dcp += b_kc * b_dc
    else:
        b_dg, b_dcp = cell_backward(b_dh, b_gates, b_c, b_cp, b_dc, BLOCK_B, BLOCK_H)
    if HAS_LENGTHS:
        b_dg = tl.where(v_t[:, None], b_dg, 0.0)
        b_dcp = tl.where(v_t[:, None], b_dcp, b_dc)
    b_dg += poison
    b_dcp += poison
    tl.store(dg_t + o_b[:, None] * (4 * H) + o_g[None, :], b_dg.to(dg_t.dtype.element_ty), mask=m_bg)
    tl.store(dc0_d + o_bu, b_dcp.to(dc0_d.dtype.element_ty), mask=and_(m_bu, last_step))
    return b_dcp, b_dg


@triton.jit
def _bwd_time(n, T, rev, b_len):
    """Step n of the backward's loop: (t, the step after t and the one before it in the forward's order, each row's
    validity at t). n == T is the extra pass that forms dh0; no row is valid there."""
    t = (T - 1 - n) + rev * (2 * n - T + 1)
    t_next = t + 1 - 2 * rev  # processed just before t here
    tf_prev = t - 1 + 2 * rev
    v_t = and_(and_(t < b_len, t >= 0), n < T)
    return t, t_next, tf_prev, v_t


@triton.jit
def _bwd_step(n, T, rev, b_len, dg_d, gates_d, cs_d, dy_d, B, H, ldy):
    """Step n of a backward that reads its step's tensors in place (batch-owned, tile): t, each row's validity, t
    clamped into range, whether t is a row's first forward step, and the step's pointers: dG_{next}, dG_t, the
    forward's gates at t, c_t, c_{t-1}, dy_t."""
    t, t_next, tf_prev, v_t = _bwd_time(n, T, rev, b_len)
    first_fwd = (tf_prev < 0) | (tf_prev >= T)
    tn = tl.minimum(tl.maximum(t_next, 0), T - 1).to(tl.int64)
    tc = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64)
    cs_p = cs_d + tl.minimum(tl.maximum(tf_prev, 0), T - 1).to(tl.int64) * B * H
    G = 4 * H
    return (t, v_t, tc, first_fwd, dg_d + tn * B * G, dg_d + tc * B * G, gates_d + tc * B * G, cs_d + tc * B * H, cs_p,
            dy_d + tc * B * ldy)  # fmt: skip


@triton.jit
def _split_step_inputs(n, T, rev, b_len, gates_d, cs_d, c0_d, dy_d, o_b, o_u, o_g, o_c, m_b, m_u, m_g, m_bc, B, H,
                       ldy, HAS_DY: tl.constexpr, ZONEOUT: tl.constexpr, ACC_DTYPE: tl.constexpr):  # fmt: skip
    """The unit-split backward's inputs of step n that no other program writes: the forward's gates, c_{t-1} and c_t
    (:func:`_bwd_cell_inputs`), and dy_t[:, o_c] (zero unless HAS_DY). Step T's (the dh0 pass) are unread."""
    t, _, tf_prev, v_t = _bwd_time(n, T, rev, b_len)
    tc = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64)
    first_fwd = (tf_prev < 0) | (tf_prev >= T)
    cs_p = cs_d + tl.minimum(tl.maximum(tf_prev, 0), T - 1).to(tl.int64) * B * H
    b_gates, b_cp, b_c = _bwd_cell_inputs(gates_d + tc * B * (4 * H), cs_d + tc * B * H, cs_p, c0_d, first_fwd, o_b,
                                          o_u, o_g, m_b, m_u, m_g, H, ZONEOUT, ACC_DTYPE)  # fmt: skip
    b_dy = tl.zeros((o_b.shape[0], o_c.shape[0]), dtype=ACC_DTYPE)
    if HAS_DY:
        p_dy = dy_d + tc * B * ldy + o_b[:, None] * ldy + o_c[None, :]
        b_dy = tl.load(p_dy, mask=m_bc & v_t[:, None], other=0.0).to(ACC_DTYPE)
    return b_gates, b_cp, b_c, b_dy


@triton.jit
def _w_gate_rows(w_d, k0, o_c, m_c, H, R, BLOCK_G: tl.constexpr, K_SPLIT: tl.constexpr):
    """W_hh[interleaved gate rows k0 .. k0 + BLOCK_G, columns o_c] of one direction (torch's gate-major layout in
    memory), as [K_SPLIT, BLOCK_G // K_SPLIT, columns]: the resident operand of :func:`_dg_chunk_dot`."""
    if K_SPLIT == 1:  # [BLOCK_G, columns]
        o_k = k0 + tl.arange(0, BLOCK_G)[:, None]
        b_w = tl.load(w_d + torch_rows(o_k, H) * R + o_c[None, :], mask=(o_k < 4 * H) & m_c[None, :], other=0.0)
    else:
        o_s = tl.arange(0, K_SPLIT)[:, None, None] * (BLOCK_G // K_SPLIT)
        o_k = k0 + o_s + tl.arange(0, BLOCK_G // K_SPLIT)[None, :, None]
        m = (o_k < 4 * H) & m_c[None, None, :]
        b_w = tl.load(w_d + torch_rows(o_k, H) * R + o_c[None, None, :], mask=m, other=0.0)
    return b_w


@triton.jit
def _dg_chunk_dot(
    dgn_t, o_b, m_b, k0, b_w, G, n, BLOCK_G: tl.constexpr, K_SPLIT: tl.constexpr, ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """dG_{t+1}[rows, gate rows k0 .. k0 + BLOCK_G] @ W_hh[those rows, columns]: one chunk of the unit-split
    backward's recurrent dot (dG_{t+1} is zero at the first step, n == 0), split K_SPLIT ways over the warps
    (:func:`tritonlstm.kernels.jit.split_k_dot`)."""
    o_k = k0 + tl.arange(0, BLOCK_G)[None, :]
    b_dgn = tl.load(
        dgn_t + o_b[:, None] * G + o_k, mask=and_(m_b[:, None] & (o_k < G), n > 0), other=0.0, cache_modifier=".cg"
    )
    return split_k_dot(b_dgn, b_w, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)


@triton.jit
def _dg_wait(dgw_d, n, o_b, m_b, B, G, failed, spin_limit, BLOCK_G: tl.constexpr, WORD: tl.constexpr,
             DTYPE: tl.constexpr):  # fmt: skip
    """Tagged mode: dG_{t+1}'s [BLOCK_B, BLOCK_G] row block from step n - 1's words in slot (n - 1) % 2, zero at
    the first step (masked-off words carry no value bits); returns (tile, failed). Every row in range is waited
    for, as in the forward, which keeps the programs in lockstep (two slots are enough: kernels/jit.py)."""
    o_k = tl.arange(0, BLOCK_G)[None, :]
    p_w = dgw_d + ((n + 1) % 2) * (B.to(tl.int64) * G) + o_b[:, None] * G + o_k
    words, failed = wait_words(p_w, m_b[:, None] & (o_k < G) & (n > 0), step_tag(n - 1, WORD), failed, spin_limit)
    return word_values(words, DTYPE), failed


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
def _dg_dot(dgn_t, w_d, o_b, o_c, m_c, o_c2, m_c2, m_b, n, H, R, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
            BLOCK_K: tl.constexpr, TWO: tl.constexpr, ACC_DTYPE: tl.constexpr,
            INPUT_PRECISION: tl.constexpr):  # fmt: skip
    """dG_{t+1} @ W_hh[:, o_c] (and, with TWO, @ W_hh[:, o_c2] from the same blocks of dG: the tile backward's two
    epilogue tiles), both operands streamed from L2 in blocks of BLOCK_K gate rows, zero at the first step (n == 0).
    Returns the two products (the second unread without TWO)."""
    b_rec = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC_DTYPE)
    b_rec2 = b_rec
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
            p_w = w_d + torch_rows(o_k, H)[:, None] * R
            b_w = tl.load(p_w + o_c[None, :], mask=m_k[:, None] & m_c[None, :], other=0.0)
            b_rec += tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
            if TWO:
                b_w = tl.load(p_w + o_c2[None, :], mask=m_k[:, None] & m_c2[None, :], other=0.0)
                b_rec2 += tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    return b_rec, b_rec2


@triton.jit
def _bwd_grad_into_h(
    b_rec,  # dG_{t+1} @ W_hh[:, o_c] (:func:`_dg_dot`)
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
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """Batch-owned and tile: the gradient reaching h_t[:, o_c] (all of it: through the state, carried, dy_t); with
    zoneout only the share that goes through the cell, the kept share being carried to h_{t-1}.

    On the extra pass (n == T) the part through the state is h0's gradient: it is stored to dh0 instead.
    """
    m_bc = m_b[:, None] & m_c[None, :]
    o_bc = o_b[:, None] * R + o_c[None, :]
    if HAS_MASK:  # the next step's product saw h_t * mask
        b_rec *= tl.load(hm_d + o_bc, mask=m_bc, other=0.0).to(ACC_DTYPE)
    # what reached the state without a gate: h_n's gradient on the first pass, skipped steps' with lengths,
    # zoneout's kept share
    if HAS_LENGTHS or ZONEOUT > 0:
        b_rec += tl.load(dcarry_d + o_bc, mask=m_bc & (n > 0), other=0.0).to(ACC_DTYPE)
    if HAS_DHN:
        b_rec += tl.load(dhn_d + o_bc, mask=m_bc & (n == 0), other=0.0).to(ACC_DTYPE)
    tl.store(dh0_d + o_bc, (b_rec + poison).to(dh0_d.dtype.element_ty), mask=and_(m_bc, n == T))
    b_dh = b_rec
    if HAS_DY:
        b_dh += tl.load(dy_t + o_b[:, None] * ldy + o_c[None, :], mask=m_bc & v_t[:, None], other=0.0).to(ACC_DTYPE)
    if ZONEOUT > 0:
        b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_c, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_carry = b_kh * b_dh
        if HAS_LENGTHS:
            b_carry = tl.where(v_t[:, None], b_carry, b_rec)
        tl.store(dcarry_d + o_bc, b_carry.to(dcarry_d.dtype.element_ty), mask=and_(m_bc, n < T))
        b_dh = (1.0 - b_kh) * b_dh
    elif HAS_LENGTHS:
        tl.store(
            dcarry_d + o_bc, tl.where(v_t[:, None], 0.0, b_rec).to(dcarry_d.dtype.element_ty), mask=and_(m_bc, n < T)
        )
    if HAS_LENGTHS:
        b_dh = tl.where(v_t[:, None], b_dh, 0.0)
    return b_dh



@triton.jit
def _bwd_unit_tile(
    b_rec, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, dc_d, dcn_d, dc0_d, c0_d, gates_t, cs_t, cs_p, dg_t, first_fwd, o_b,
    u, m_b, v_t, n, T, B, H, R, ldy, last_step, poison, zs_ptr, zo_stream, t, zo_h, zo_c, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, HAS_DY: tl.constexpr, HAS_DHN: tl.constexpr, HAS_DCN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, ZONEOUT: tl.constexpr, ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """Batch-owned and tile, no projection: the step of units u .. u + BLOCK_H from their share of the recurrent
    dot (b_rec): the gradient into h_t, then (n < T) the cell's; stores dG_t, and dc_{t-1} into the scratch dc."""
    o_u = u + tl.arange(0, BLOCK_H)
    o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
    m_u, m_g = o_u < H, o_g < 4 * H
    b_dh = _bwd_grad_into_h(
        b_rec, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, o_b, o_u, m_b, m_u, v_t, n, T, B, H, R, ldy, poison, zs_ptr,
        zo_stream, t, zo_h, HAS_DY, HAS_DHN, HAS_LENGTHS, HAS_MASK, ZONEOUT, ACC_DTYPE,
    )  # fmt: skip
    if n < T:
        b_dc = _load_dc(dc_d, dcn_d, o_b, o_u, m_b, m_u, n, H, HAS_DCN, ACC_DTYPE)
        b_kc = b_dc  # unread without zoneout
        if ZONEOUT > 0:
            b_kc = zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
        b_gates, b_cp, b_c = _bwd_cell_inputs(gates_t, cs_t, cs_p, c0_d, first_fwd, o_b, o_u, o_g, m_b, m_u, m_g, H,
                                              ZONEOUT, ACC_DTYPE)  # fmt: skip
        b_dc, b_dg = _bwd_cell(
            b_dh, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, b_gates, b_cp, b_c, dg_t, dc0_d, H,
            b_kc, BLOCK_B, BLOCK_H, HAS_LENGTHS, ZONEOUT,
        )  # fmt: skip
        m_bu = m_b[:, None] & m_u[None, :]
        tl.store(dc_d + o_b[:, None] * H + o_u[None, :], b_dc.to(dc_d.dtype.element_ty), mask=m_bu)


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_bwd_split_kernel(
    dy_ptr,  # [T, B, D*R]  gradient of y (read if HAS_DY)
    dhn_ptr,  # [D, B, R]  gradient of h_n (read if HAS_DHN)
    dcn_ptr,  # [D, B, H]  gradient of c_n (read if HAS_DCN)
    w_ptr,  # [D, G, R]  W_hh, torch's layout
    wr_ptr,  # [D, P, H]  W_hr (read if HAS_PROJ)
    gates_ptr,  # [D, T, B, G]  activated gates from the forward
    cs_ptr,  # [D, T, B, H]  every c_t, accumulator dtype
    c0_ptr,  # [D, B, H]
    dg_ptr,  # [D, T, B, G]  out: gate pre-activation gradients
    dgw_ptr,  # [D, 2, B, G]  dG_t as tagged words, two slots by step (unit-split with TAGGED; else unread)
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
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,  # as in the forward; never with HAS_PROJ
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    TAGGED: tl.constexpr = False,  # exchange dG_t as tagged words (WORD) instead of meeting at the barrier
    WORD: tl.constexpr = tl.int32,
    FLAGS: tl.constexpr = False,  # meet through one flag per program (sync_ptr [D, NB, NS]), not the counter
    FLAG_ALL: tl.constexpr = 2,  # >= NS (FLAGS)
):
    i_b, i_d, i_s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    NS = tl.num_programs(2)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    hm_d = hm_ptr + i_d * B * R
    w_d = w_ptr + i_d * G * R
    wr_d = wr_ptr + i_d * P * H
    gates_d = gates_ptr + i_d * T * B * G
    dg_d = dg_ptr + i_d * T * B * G
    dhall_d = dhall_ptr + i_d * T * B * P
    cs_d = cs_ptr + i_d * T * B * H
    c0_d = c0_ptr + i_d * B * H
    dcn_d = dcn_ptr + i_d * B * H
    dc0_d = dc0_ptr + i_d * B * H
    dhn_d = dhn_ptr + i_d * B * R
    dh0_d = dh0_ptr + i_d * B * R
    dy_d = dy_ptr + i_d * R
    sync = sync_ptr + i_d * tl.num_programs(0) + i_b
    flag_g = sync_ptr + (i_d * tl.num_programs(0) + i_b) * NS  # FLAGS: [D, NB, NS], one a program
    dgw_d = dgw_ptr + i_d * 2 * B * G
    failed = tl.program_id(0) * 0
    if TAGGED:
        tl.static_assert(G_CHUNKS == 1 and not HAS_PROJ, "the tagged exchange takes one chunk, no projection")
    if FLAGS:
        tl.static_assert(not (TAGGED or HAS_PROJ), "flags replace the counter of the barrier form, no projection")

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

    # each step's own inputs (the forward's gates and cells, dy) are loaded before the previous step's wait
    b_gates, b_cp, b_c, b_dy = _split_step_inputs(
        0, T, rev, b_len, gates_d, cs_d, c0_d, dy_d, o_b, o_u, o_g, o_c, m_b, m_u, m_g, m_bc, B, H, ldy, HAS_DY,
        ZONEOUT, ACC_DTYPE,
    )  # fmt: skip
    # steps in the reverse of the forward's order, then one more pass (n == T) that forms dh0 from dG_first
    for n in range(0, T + 1):
        t, t_next, tf_prev, v_t = _bwd_time(n, T, rev, b_len)
        last_step = n == T - 1
        poison = tl.where(failed != 0, float("nan"), 0.0)
        tn = tl.minimum(tl.maximum(t_next, 0), T - 1).to(tl.int64)
        tc = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64)
        dgn_t = dg_d + tn * B * G
        dg_t = dg_d + tc * B * G
        # gradient reaching h_t[:, o_c] through the state: dG_{next} @ W_hh[:, o_c] plus the carried part
        if FLAGS:  # every program's dG_{next}: the flags of step n - 1 (trivially met in step 0)
            failed = wait_flags(flag_g, 0, NS, n, failed, spin_limit, FLAG_ALL)
            poison = tl.where(failed != 0, float("nan"), 0.0)
        if TAGGED:  # one load of the words both waits for the other programs' dG_{next} and fetches it
            b_dgn, failed = _dg_wait(dgw_d, n, o_b, m_b, B, G, failed, spin_limit, BLOCK_G, WORD,
                                     dg_ptr.dtype.element_ty)  # fmt: skip
            poison = tl.where(failed != 0, float("nan"), 0.0)
            b_rec = split_k_dot(b_dgn, b_w, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
        else:
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
                b_dh += b_dy
            b_kc = b_dc  # unread without zoneout
            if ZONEOUT > 0:
                # the kept share of dh_t goes straight to h_{t-1} (carried), the rest through the cell
                b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
                b_kc = zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
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
                failed = barrier(sync, NS * (2 * n + 1), failed, spin_limit)
                b_dhf = tl.load(
                    dh_t + o_b[:, None] * P + o_f[None, :],
                    mask=m_b[:, None] & m_f[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                )
                b_dm = tl.dot(b_dhf, b_wr, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
                b_dc, b_dg = _bwd_cell(
                    b_dm, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, b_gates, b_cp, b_c, dg_t,
                    dc0_d, H, b_kc, BLOCK_B, BLOCK_H, HAS_LENGTHS, 0,
                )  # fmt: skip
                b_gates, b_cp, b_c, b_dy = _split_step_inputs(
                    n + 1, T, rev, b_len, gates_d, cs_d, c0_d, dy_d, o_b, o_u, o_g, o_c, m_b, m_u, m_g, m_bc, B, H,
                    ldy, HAS_DY, 0, ACC_DTYPE,
                )  # fmt: skip
                failed = barrier(sync, NS * (2 * n + 2), failed, spin_limit)
            else:
                b_dc, b_dg = _bwd_cell(
                    b_dh, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, b_gates, b_cp, b_c, dg_t,
                    dc0_d, H, b_kc, BLOCK_B, BLOCK_H, HAS_LENGTHS, ZONEOUT,
                )  # fmt: skip
                if FLAGS:  # dG_t is stored: release it, then load the next step's inputs while the others finish
                    release_flag(flag_g + i_s, n)
                b_gates, b_cp, b_c, b_dy = _split_step_inputs(
                    n + 1, T, rev, b_len, gates_d, cs_d, c0_d, dy_d, o_b, o_u, o_g, o_c, m_b, m_u, m_g, m_bc, B, H,
                    ldy, HAS_DY, ZONEOUT, ACC_DTYPE,
                )  # fmt: skip
                if TAGGED:  # dG_t as step n's words in slot n % 2 (rounded as dg stores it)
                    p_w = dgw_d + (n % 2) * (B.to(tl.int64) * G) + o_b[:, None] * G + o_g[None, :]
                    publish_words(p_w, b_dg.to(dg_ptr.dtype.element_ty), step_tag(n, WORD),
                                  m_b[:, None] & m_g[None, :], WORD)  # fmt: skip
                elif not FLAGS:
                    failed = barrier(sync, NS * (n + 1), failed, spin_limit)
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_bwd_batch_kernel(
    dy_ptr,  # [T, B, D*R]  gradient of y (read if HAS_DY)
    dhn_ptr,  # [D, B, R]  gradient of h_n (read if HAS_DHN)
    dcn_ptr,  # [D, B, H]  gradient of c_n (read if HAS_DCN)
    w_ptr,  # [D, G, R]  W_hh, torch's layout
    wr_ptr,  # [D, P, H]  W_hr (read if HAS_PROJ)
    gates_ptr,  # [D, T, B, G]  activated gates from the forward
    cs_ptr,  # [D, T, B, H]  every c_t, accumulator dtype
    c0_ptr,  # [D, B, H]
    dg_ptr,  # [D, T, B, G]  out: gate pre-activation gradients
    dgw_ptr,  # [D, 2, B, G]  dG_t as tagged words, two slots by step (unit-split with TAGGED; else unread)
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
    i_b, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
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
    failed = tl.program_id(0) * 0

    # steps in the reverse of the forward's order, then one more pass (n == T) that forms dh0 from dG_first
    for n in range(0, T + 1):
        t, v_t, tc, first_fwd, dgn_t, dg_t, gates_t, cs_t, cs_p, dy_t = _bwd_step(n, T, rev, b_len, dg_d, gates_d, cs_d,
                                                                                 dy_d, B, H, ldy)  # fmt: skip
        last_step = n == T - 1
        poison = tl.where(failed != 0, float("nan"), 0.0)
        if HAS_PROJ:
            o_c = tl.arange(0, BLOCK_P)
            m_c = o_c < P
            b_rec, _ = _dg_dot(dgn_t, w_d, o_b, o_c, m_c, o_c, m_c, m_b, n, H, R, BLOCK_B, BLOCK_P, BLOCK_K, False,
                               ACC_DTYPE, INPUT_PRECISION)  # fmt: skip
            b_dh = _bwd_grad_into_h(
                b_rec, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, o_b, o_c, m_b, m_c, v_t, n, T, B, H, R, ldy, poison, zs_ptr,
                zo_stream, t, zo_h, HAS_DY, HAS_DHN, HAS_LENGTHS, HAS_MASK, 0, ACC_DTYPE,
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
                    b_gates, b_cp, b_c = _bwd_cell_inputs(gates_t, cs_t, cs_p, c0_d, first_fwd, o_b, o_u, o_g, m_b,
                                                          m_u, m_g, H, 0, ACC_DTYPE)  # fmt: skip
                    b_dc, b_dg = _bwd_cell(
                        b_dm, b_dc, v_t, last_step, poison, o_b, o_u, o_g, m_b, m_u, m_g, b_gates, b_cp, b_c, dg_t,
                        dc0_d, H, b_dc, BLOCK_B, BLOCK_H, HAS_LENGTHS, 0,
                    )  # fmt: skip
                    tl.store(
                        dc_d + o_b[:, None] * H + o_u[None, :],
                        b_dc.to(dc_ptr.dtype.element_ty),
                        mask=m_b[:, None] & m_u[None, :],
                    )
        else:
            for u in range(0, H, BLOCK_H):
                o_u = u + tl.arange(0, BLOCK_H)
                m_u = o_u < H
                b_rec, _ = _dg_dot(dgn_t, w_d, o_b, o_u, m_u, o_u, m_u, m_b, n, H, R, BLOCK_B, BLOCK_H, BLOCK_K, False,
                                   ACC_DTYPE, INPUT_PRECISION)  # fmt: skip
                _bwd_unit_tile(
                    b_rec, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, dc_d, dcn_d, dc0_d, c0_d, gates_t, cs_t, cs_p, dg_t,
                    first_fwd, o_b, u, m_b, v_t, n, T, B, H, R, ldy, last_step, poison, zs_ptr, zo_stream, t, zo_h,
                    zo_c, BLOCK_B, BLOCK_H, HAS_DY, HAS_DHN, HAS_DCN, HAS_LENGTHS, HAS_MASK, ZONEOUT, ACC_DTYPE,
                )  # fmt: skip
        tl.debug_barrier()  # this step's dG_t, written by every thread, precedes the next step's loads
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_bwd_tile_kernel(
    dy_ptr,  # [T, B, D*R]  gradient of y (read if HAS_DY)
    dhn_ptr,  # [D, B, R]  gradient of h_n (read if HAS_DHN)
    dcn_ptr,  # [D, B, H]  gradient of c_n (read if HAS_DCN)
    w_ptr,  # [D, G, R]  W_hh, torch's layout
    wr_ptr,  # unread (no projection)
    gates_ptr,  # [D, T, B, G]  activated gates from the forward
    cs_ptr,  # [D, T, B, H]  every c_t, accumulator dtype
    c0_ptr,  # [D, B, H]
    dg_ptr,  # [D, T, B, G]  out: gate pre-activation gradients
    dgw_ptr,  # unread
    dhall_ptr,  # unread
    dc_ptr,  # [D, B, H]  scratch: dc_t between steps, accumulator dtype
    dcarry_ptr,  # [D, B, R]  scratch: gradient reaching the state not through the gates, accumulator dtype
    dh0_ptr,  # [D, B, R]  out
    dc0_ptr,  # [D, B, H]  out
    len_ptr,  # [B]
    hm_ptr,  # [D, B, R]  the forward's recurrent dropout mask (read if HAS_MASK)
    zs_ptr,  # [1]  the forward's zoneout seed: its masks are drawn again (ZONEOUT == 2)
    zo_h: tl.float64,
    zo_c: tl.float64,
    sync_ptr,  # [D, NB, NS]  int32 flags, one per program, zero at launch
    err_ptr,  # [1]
    T,
    B,
    H,
    R,
    P,
    rev_mask,
    spin_limit,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,  # units per program: SUB_H or 2 * SUB_H
    BLOCK_K: tl.constexpr,  # (unread)
    BLOCK_P: tl.constexpr,  # (unread)
    BLOCK_G: tl.constexpr,  # gate rows per streamed block of dG_{t+1} and W_hh
    G_CHUNKS: tl.constexpr,  # (unread)
    K_SPLIT: tl.constexpr,  # (unread)
    BLOCK_F: tl.constexpr,  # (unread)
    HAS_DY: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_DCN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    FLAG_ALL: tl.constexpr = 2,  # >= the programs of a group
    SUB_H: tl.constexpr = 16,  # units per epilogue tile
):
    """The tile regime's backward (see the module docstring): the batch-owned kernel's step, its units split over the
    programs of a (batch tile, direction) group, which meet through per-producer flags. Each step a program waits
    for every producer of dG_{t+1} once (a wait inside the streamed loop would stop its software pipelining), then
    streams dG_{t+1}'s row block and W_hh[:, its units] from L2 in blocks of BLOCK_G gate rows, one dot per
    epilogue tile sharing each block of dG, summed in a fixed order; dc and the carried gradient go through the
    scratch buffers (program-private: its rows and units), not registers."""
    tl.static_assert(not HAS_PROJ, "the tile regime takes no projection")
    tl.static_assert(BLOCK_H == SUB_H or BLOCK_H == 2 * SUB_H, "one or two epilogue tiles a program")
    # offsets within a step in 32 bits (the rule checks B * 4H < 2**31): a 64-row tile's 64-bit offsets, hoisted
    # out of the time loop, spill the sm_90 build
    i_b, i_d, i_s = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    NS = tl.num_programs(2)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    hm_d = hm_ptr + i_d * B * R
    w_d = w_ptr + i_d * G * R
    gates_d = gates_ptr + i_d * T * B * G
    dg_d = dg_ptr + i_d * T * B * G
    cs_d = cs_ptr + i_d * T * B * H
    c0_d = c0_ptr + i_d * B * H
    dc_d = dc_ptr + i_d * B * H
    dcn_d = dcn_ptr + i_d * B * H
    dc0_d = dc0_ptr + i_d * B * H
    dcarry_d = dcarry_ptr + i_d * B * R
    dhn_d = dhn_ptr + i_d * B * R
    dh0_d = dh0_ptr + i_d * B * R
    dy_d = dy_ptr + i_d * R
    flag_g = sync_ptr + (i_d * tl.num_programs(0) + i_b) * NS
    failed = tl.program_id(0) * 0
    u0 = i_s * BLOCK_H
    o_u0 = u0 + tl.arange(0, SUB_H)
    o_u1 = o_u0 + SUB_H

    for n in range(0, T + 1):
        t, v_t, _, first_fwd, dgn_t, dg_t, gates_t, cs_t, cs_p, dy_t = _bwd_step(n, T, rev, b_len, dg_d, gates_d, cs_d,
                                                                                dy_d, B, H, ldy)  # fmt: skip
        last_step = n == T - 1
        failed = wait_flags(flag_g, 0, NS, n, failed, spin_limit, FLAG_ALL)
        poison = tl.where(failed != 0, float("nan"), 0.0)
        b_rec0, b_rec1 = _dg_dot(dgn_t, w_d, o_b, o_u0, o_u0 < H, o_u1, o_u1 < H, m_b, n, H, R, BLOCK_B, SUB_H,
                                 BLOCK_G, BLOCK_H > SUB_H, ACC_DTYPE, INPUT_PRECISION)  # fmt: skip
        _bwd_unit_tile(
            b_rec0, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, dc_d, dcn_d, dc0_d, c0_d, gates_t, cs_t, cs_p, dg_t, first_fwd,
            o_b, u0, m_b, v_t, n, T, B, H, R, ldy, last_step, poison, zs_ptr, zo_stream, t, zo_h, zo_c, BLOCK_B, SUB_H,
            HAS_DY, HAS_DHN, HAS_DCN, HAS_LENGTHS, HAS_MASK, ZONEOUT, ACC_DTYPE,
        )  # fmt: skip
        if BLOCK_H > SUB_H:
            _bwd_unit_tile(
                b_rec1, dy_t, dcarry_d, dhn_d, dh0_d, hm_d, dc_d, dcn_d, dc0_d, c0_d, gates_t, cs_t, cs_p, dg_t,
                first_fwd, o_b, u0 + SUB_H, m_b, v_t, n, T, B, H, R, ldy, last_step, poison, zs_ptr, zo_stream, t, zo_h,
                zo_c, BLOCK_B, SUB_H, HAS_DY, HAS_DHN, HAS_DCN, HAS_LENGTHS, HAS_MASK, ZONEOUT, ACC_DTYPE,
            )  # fmt: skip
        if n < T:
            release_flag(flag_g + i_s, n)
    tl.store(err_ptr, failed, mask=failed != 0)


KERNELS = {"batch": _seq_bwd_batch_kernel, "split": _seq_bwd_split_kernel, "tile": _seq_bwd_tile_kernel}


def backward(
    layer: Layer, regs: Regularisers, saved: Saved, grad_out: GradOutputs, needs: Needs = Needs(),
    config: dict | None = None, err: torch.Tensor | None = None,
) -> Grads:  # fmt: skip
    """Gradients of one layer, every direction, one launch for the whole recurrence (:class:`Grads`).

    ``grad_out``'s tensors may be ``None`` (zeros). ``saved`` may come from :func:`sequence_fwd.forward` or from
    the per-step kernels. ``config`` and ``err`` as in :func:`tritonlstm.kernels.sequence_fwd.forward`.
    """
    x, h0, c0, w_ih, w_hh, _, _, w_hr, lengths, reverse = layer
    y, gates, cs = saved
    dy, dh_n, dc_n = grad_out
    T, B, D, H, R, P = layer.dims
    G, I = 4 * H, x.shape[2]
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    dev = x.device
    check_regularisers(layer, regs)
    cfg = config or sequence_config(B, H, P, D, dtype, sm_count(dev), backward=True)
    split = cfg["regime"] in ("split", "tile")  # (a grid that must be co-resident)
    k, ns = constexprs(cfg, H, R, P, backward=True)
    nb = triton.cdiv(B, k["BLOCK_B"])

    dg = torch.empty(D, T, B, G, device=dev, dtype=dtype)
    dh_all = torch.empty(D, T, B, P, device=dev, dtype=dtype) if P else None
    dh0 = torch.empty(D, B, R, device=dev, dtype=dtype)
    dc0 = torch.empty(D, B, H, device=dev, dtype=dtype)
    per_program = cfg["regime"] == "tile" or cfg.get("FLAGS", False)  # a flag a program, else a counter a group
    flags = torch.zeros(1 + D * nb * (ns if per_program else 1), device=dev, dtype=torch.int32)
    sync = flags[1:]
    if err is None:
        err = flags[:1]
    hm = regs.h_mask.to(dtype).contiguous() if regs.h_mask is not None else None  # the kernel's mask and dW_hh's
    if B > 0:
        scratch = cfg["regime"] != "split"  # dc and the carried gradient go through scratch buffers
        dc = torch.empty(D, B, H, device=dev, dtype=acc) if scratch else dc0
        carried = lengths is not None or any(p > 0 for p in regs.zoneout)
        dcarry = torch.empty(D, B, R, device=dev, dtype=acc) if carried and scratch else dh0
        lens = lengths.to(dtype=torch.int32).contiguous() if lengths is not None else flags
        rev_mask = sum(1 << d for d, r in enumerate(reverse) if r)
        # a config shared with the forward may ask for tagged words: the backward has them with one chunk, no P
        tagged = tagged_words(cfg, dtype) if not P and k["G_CHUNKS"] == 1 else {}
        dgw = dg  # unread unless tagged: then dG_t's words, zeroed (no tag is 0 on a slot's first use)
        if tagged:
            dgw = torch.zeros(D, 2, B, G, device=dev, dtype=torch.int32 if tagged["WORD"] == tl.int32 else torch.int64)
        with launch_guard(x.device):
            KERNELS[cfg["regime"]][(nb, D, ns)](
                dy.contiguous() if dy is not None else y, dh_n.contiguous() if dh_n is not None else dh0,
                dc_n.contiguous() if dc_n is not None else dc0, w_hh.contiguous(),
                w_hr.contiguous() if w_hr is not None else w_hh, gates, cs, c0.contiguous(), dg, dgw,
                dh_all if dh_all is not None else dg, dc, dcarry, dh0, dc0, lens, hm if hm is not None else dg,
                regs.seed if regs.seed is not None else dg, float(regs.zoneout[0]), float(regs.zoneout[1]), sync, err,
                T, B, H, R, P, rev_mask, cfg.get("spin_limit", DEFAULT_SPIN_LIMIT), HAS_DY=dy is not None,
                HAS_DHN=dh_n is not None, HAS_DCN=dc_n is not None, HAS_LENGTHS=lengths is not None, HAS_PROJ=P > 0,
                HAS_MASK=hm is not None, ZONEOUT=regs.mode, ACC_DTYPE=ACC[acc],
                INPUT_PRECISION=input_precision(dtype), **k, **tagged,
                **launch_options(x, split, cfg["num_warps"]),
            )  # fmt: skip
    else:
        dh0.zero_()
        dc0.zero_()

    # weight, input and bias gradients: GEMMs and sums over every step, no atomics
    dg2 = dg.view(D, T * B, G)
    x2 = x.reshape(T * B, I)
    dx = dw_ih = dw = db = dw_hr = None
    if needs.dx:
        w_il = interleave_gates(w_ih, 1)
        dx = torch.mm(dg2[0], w_il[0])
        for d in range(1, D):
            dx = torch.addmm(dx, dg2[d], w_il[d])
        dx = dx.view(T, B, I)
    if needs.dw_ih:
        dw_ih = deinterleave_gates(torch.bmm(dg2.transpose(1, 2), x2.expand(D, T * B, I)), 1)
    if needs.dw_hh:
        dw = torch.empty(D, G, R, device=dev, dtype=dtype)
        for d in range(D):
            hm_d = hm[d] if hm is not None else None
            dw[d] = dw_hh(dg[d], y[..., d * R : (d + 1) * R], h0[d], lengths, reverse[d], hm_d)
        dw = deinterleave_gates(dw, 1)
    if needs.db:
        db = deinterleave_gates(dg.sum((1, 2), dtype=acc), 1).to(dtype)
    if needs.dw_hr and P:
        # m_t = o * tanh(c_t) from the saved gates and cell states, rounded to the storage dtype as in the forward
        m = (gates.view(D, T, B, H, 4)[..., 3].to(acc) * torch.tanh(cs)).to(dtype)
        dw_hr = torch.bmm(dh_all.view(D, T * B, P).transpose(1, 2), m.view(D, T * B, H))
    return Grads(dx, dh0 if needs.dh0 else None, dc0 if needs.dc0 else None, dw_ih, dw, db, dw_hr)
