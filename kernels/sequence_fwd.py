"""Sequence forward kernels: one launch runs a whole layer's time loop, every direction. Two kernels, three regimes.

Shapes follow the legend of :mod:`tritonlstm.kernels.jit`. The weights are read in torch's own layout ([D, G, R],
gate-major rows): the kernels map the interleaved gate column 4*j + k to torch's row k*H + j themselves, so no
weight is re-laid out on the host per call. The grid is (batch tiles, directions, unit programs).

* ``_seq_fwd_batch_kernel`` (regime ``"batch"``, one unit program): a program owns a tile of batch rows and every
  hidden unit and loops over unit tiles inside each step, reading W_hh from global memory (L2) every step. No
  cross-program synchronisation: a CTA barrier orders the step's stores before the next step's loads. With the
  per-step kernels' tiles its reductions are theirs, so it reproduces them bitwise.
* ``_seq_fwd_split_kernel`` (regime ``"split"``): the programs of one (batch tile, direction) group split the
  hidden units. Each loads its slice of the weights once, before the time loop, keeps it on chip and keeps its
  cell state in registers. Each step it computes its units and publishes them, and the programs of a group meet
  at a barrier (:func:`tritonlstm.kernels.jit.barrier`), then read the other programs' values with loads that
  bypass L1 (``.cg``): the rule's form. With ``TAGGED`` (built and tested, not the rule's:
  :data:`tritonlstm.kernels.config.TAGGED_EXCHANGE`) they go out as tagged words instead
  (:func:`tritonlstm.kernels.jit.wait_words`), and the next step's load of the whole h_{t-1} row both waits for
  them and fetches them: no counter, no fence. With a projection a second exchange per step gives
  h_t = m_t W_hr^T split over P. ``K_SPLIT`` splits each dot over its inner dimension, one split per warp
  (:func:`tritonlstm.kernels.jit.split_k_dot`), where a 16-row dot puts several warps on the same rows: the rule
  gives it float32 (whose plain dot spills) and the tagged form. R is covered by one or two power-of-two blocks
  (``BLOCK_R``, ``BLOCK_R2``; :func:`tritonlstm.kernels.config.k_blocks`), so H=768 is not padded to 1024.
* The same kernel in the ``"tile"`` regime (``K_CHUNKS > 0``: large batches): batch tiles of 64 or 128
  rows, W_hh^T[:, the program's gate columns] resident in shared memory as ``K_CHUNKS`` chunks of ``K_CHUNK``
  rows (wgmma operands read in place), h_{t-1} read chunk by chunk after the flags of that chunk's producers
  (:func:`tritonlstm.kernels.jit.wait_flags`), and the program's own flag released after each step.

The unit-split and tile step, in order (issue 19's small-batch forward):

* the resident slice's gate columns are permuted (:func:`tritonlstm.kernels.jit.permuted_gates`) so that, where
  a warp holds both halves of its units' columns (every wgmma; mma.sync with one warp per 4 units), each thread's
  accumulators are the four gates of its units and the epilogue takes them apart in registers;
* the step's gate projections, loaded during the previous step (before its wait) and permuted alike, are the
  dots' accumulators;
* after the cell, the value the others read (h_t in y, its masked copy, or its tagged words) is stored and
  published first; the stores no program reads inside the loop (c_t, the gates, the final states) follow the
  release and overlap the wait. Between the last dot and the release there is one layout conversion, h_t's for
  its store (tests/test_sequence_structure.py, tests/test_tile_structure.py), where the warps allow it.

Both kernels take one signature (the split one adds TAGGED, WORD, the splits and the tile regime's constexprs), so
the launcher binds one argument pack to either.

Safety: every spin is bounded (``spin_limit`` polls). A program whose wait times out sets the error flag, stops
waiting and writes NaN into everything it computes and publishes afterwards (outputs, final states), so a failed
wait is never a silent wrong number. The flag is read only by the first-use self-test and under
``TRITONLSTM_CHECK=1``; the default path makes no host synchronisation (CUDA graphs keep working).

Semantics are the per-step kernels' exactly (:mod:`tritonlstm.kernels.step`): lengths, the reverse direction
starting at each row's own end, the stored activated gates and cell states (interchangeable with theirs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlstm.kernels.common import NONE, Layer, Regularisers, check_dtype, check_regularisers, interleave_gates
from tritonlstm.kernels.config import DEFAULT_SPIN_LIMIT, constexprs, sequence_config
from tritonlstm.kernels.jit import (
    ACC,
    and_,
    arrive,
    barrier,
    batch_rows,
    cell_gates,
    join_gates4,
    permute_gates,
    permuted_gates,
    publish_words,
    release_flag,
    split_gates4,
    split_k_dot,
    step_tag,
    torch_rows,
    unpermute_gates,
    wait_count,
    wait_flags,
    wait_words,
    word_values,
    zoneout_rates,
)
from tritonlstm.kernels.runtime import acc_dtype, cooperative_supported, input_precision, launch_guard, sm_count


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
    b_hx = (b_h.to(STORE_DTYPE).to(ACC_DTYPE) * b_hm.to(ACC_DTYPE)).to(STORE_DTYPE)
    tl.store(xh_d + (n % 2) * (B.to(tl.int64) * R) + o_b[:, None] * R + o_x[None, :], b_hx, mask=m_bx)


@triton.jit
def _wait_prev(xw_d, n, o_b, o_k, m_b, m_k, v_prev, B, R, failed, spin_limit, WORD: tl.constexpr,
               DTYPE: tl.constexpr):  # fmt: skip
    """Tagged mode: [BLOCK_B, BLOCK_K] of h_{t-1} (times the dropout mask, if any) from step n - 1's words in
    slot (n - 1) % 2, or from slot 2 (h0, times the mask: the launcher's words) in step 0 and for rows whose
    previous step is not their own. Returns (tile, failed). Every row in range is waited for, whatever its
    length: the programs of a group stay in lockstep, which is what makes two slots enough."""
    m = m_b[:, None] & m_k[None, :]
    o_w = o_b[:, None] * R + o_k[None, :]
    p_w = xw_d + ((n + 1) % 2) * (B.to(tl.int64) * R) + o_w
    words, failed = wait_words(p_w, m & (n > 0), step_tag(n - 1, WORD), failed, spin_limit)
    b_h = word_values(words, DTYPE)
    use_h0 = m & ((n == 0) | ~v_prev[:, None])
    b_h0 = word_values(tl.load(xw_d + 2 * (B.to(tl.int64) * R) + o_w, mask=use_h0, other=0), DTYPE)
    return tl.where(use_h0, b_h0, b_h), failed


@triton.jit
def _h_prev(y_d, h0_d, xh_d, n, o_b, o_k, m_b, v_prev, tp, B, R, ldy, failed, spin_limit, TAGGED: tl.constexpr,
            HAS_MASK: tl.constexpr, WORD: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    """The unit-split forward's [BLOCK_B, len(o_k)] tile of h_{t-1} (times the dropout mask with HAS_MASK) at
    columns o_k, however the programs exchange it; returns (tile, failed)."""
    m_k = o_k < R
    if TAGGED:
        b_hp, failed = _wait_prev(xh_d, n, o_b, o_k, m_b, m_k, v_prev, B, R, failed, spin_limit, WORD, DTYPE)
    elif HAS_MASK:  # the previous step's slot of h * mask, or h0 * mask
        xh_prev = xh_d + ((n + 1) % 2) * (B.to(tl.int64) * R)
        b_hp = _load_h_prev(xh_prev, xh_d + 2 * (B.to(tl.int64) * R), o_b, o_k, m_b, m_k, v_prev, 0, B, R, R)
    else:
        b_hp = _load_h_prev(y_d, h0_d, o_b, o_k, m_b, m_k, v_prev, tp, B, ldy, R)
    return b_hp, failed


@triton.jit
def _w_resident(w_d, k0, o_r, m_r, R, BLOCK: tl.constexpr, K_SPLIT: tl.constexpr):
    """W_hh^T[k0 .. k0 + BLOCK, torch rows o_r] of one direction, loaded once: [BLOCK, rows], or as
    [K_SPLIT, BLOCK // K_SPLIT, rows] (the operand of :func:`tritonlstm.kernels.jit.split_k_dot`)."""
    if K_SPLIT == 1:
        o_k = k0 + tl.arange(0, BLOCK)[:, None]
        b_w = tl.load(w_d + o_r[None, :] * R + o_k, mask=(o_k < R) & m_r[None, :], other=0.0)
    else:
        KS: tl.constexpr = BLOCK // K_SPLIT
        o_k = k0 + tl.arange(0, K_SPLIT)[:, None, None] * KS + tl.arange(0, KS)[None, :, None]
        b_w = tl.load(w_d + o_r[None, None, :] * R + o_k, mask=(o_k < R) & m_r[None, None, :], other=0.0)
    return b_w


@triton.jit
def _acc_dot(b_hp, b_w, b_acc, K_SPLIT: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """b_acc + h_{t-1} @ a resident block of W_hh^T; a plain dot takes b_acc as its accumulator."""
    if K_SPLIT == 1:
        return tl.dot(b_hp, b_w, b_acc, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    return b_acc + split_k_dot(b_hp, b_w, K_SPLIT, ACC_DTYPE, INPUT_PRECISION)


@triton.jit
def _h_rows(y_d, h0_d, xh_d, n, o_b, v_prev, tp, B, R, ldy, HAS_MASK: tl.constexpr):
    """The tile regime's per-row pointers to h_{t-1} (times the dropout mask with HAS_MASK), as :func:`_h_prev`
    reads it: the previous step's row of y (or of the h * mask slot), or h0 (* mask) where the row had no previous
    step of its own. Chosen once per row and step; each chunk adds its column offsets."""
    if HAS_MASK:  # the previous step's slot of h * mask, or h0 * mask in slot 2
        xh_prev = xh_d + ((n + 1) % 2) * (B.to(tl.int64) * R)
        return tl.where(v_prev, xh_prev + o_b * R, xh_d + 2 * (B.to(tl.int64) * R) + o_b * R)
    return tl.where(v_prev, y_d + (tp * B + o_b) * ldy, h0_d + o_b * R)


@triton.jit
def _tile_dot(y_d, h0_d, xh_d, flag_g, b_ws, b_acc, n, o_b, m_b, v_prev, tp, B, R, ldy, NS, failed, spin_limit,
              BLOCK_H: tl.constexpr, K_CHUNKS: tl.constexpr,
              K_CHUNK: tl.constexpr, EVEN_K: tl.constexpr, FLAG_BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
              ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):  # fmt: skip
    """The tile regime's recurrent dot, b_acc + h_{t-1} @ W_hh^T[:, its gate columns], chunk by chunk of the inner
    dimension in producer order: each chunk's producers are waited for (their flags at step n) just before its
    columns are loaded, so a program starts on the first producers' columns while the last ones still compute.
    (Waiting for every producer at once instead lets the compiler hoist every chunk's load above the dots, and
    the sm_90 build spills 56-184 bytes: benchmarks/NOTES.md.) Only the last chunk, where K_CHUNK does not divide
    R, masks columns; the chunk's offset goes into the row pointers, so every chunk shares one broadcast column
    index (per-chunk index and mask tiles, invariant in the time loop, are hoisted out of it and held in
    registers: a 128 x 64 tile of them per chunk spills the sm_90 build). Returns (b_acc + the product,
    [BLOCK_B, 4 * BLOCK_H] in ACC_DTYPE in the resident slice's permuted columns, failed)."""
    p_row = _h_rows(y_d, h0_d, xh_d, n, o_b, v_prev, tp, B, R, ldy, HAS_MASK)
    o_k = tl.arange(0, K_CHUNK)
    for c in tl.static_range(K_CHUNKS):
        first = (c * K_CHUNK) // BLOCK_H  # the producers of this chunk's columns (one, where a producer has more)
        failed = wait_flags(flag_g, first, tl.minimum(NS, first + FLAG_BLOCK), n, failed, spin_limit, FLAG_BLOCK)
        if not EVEN_K and c + 1 == K_CHUNKS:
            m = m_b[:, None] & (c * K_CHUNK + o_k < R)[None, :]
        else:
            m = m_b[:, None]
        b_hc = tl.load((p_row + c * K_CHUNK)[:, None] + o_k[None, :], mask=m, other=0.0, cache_modifier=".cg")
        b_acc = tl.dot(b_hc, b_ws[c], b_acc, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    return b_acc, failed


@triton.jit
def _publish(xw_d, n, B, R, o_b, o_x, m_bx, b_h, b_hm, WORD: tl.constexpr, DTYPE: tl.constexpr,
             HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr):  # fmt: skip
    """Tagged mode: h_t (rounded to DTYPE; times the dropout mask with HAS_MASK, as :func:`_publish_masked`
    rounds it) as step n's words in slot n % 2."""
    b_x = b_h.to(DTYPE)
    if HAS_MASK:
        b_x = (b_x.to(ACC_DTYPE) * b_hm.to(ACC_DTYPE)).to(DTYPE)
    p_w = xw_d + (n % 2) * (B.to(tl.int64) * R) + o_b[:, None] * R + o_x[None, :]
    publish_words(p_w, b_x, step_tag(n, WORD), m_bx, WORD)


@triton.jit
def _gates_in(gx_d, n, T, rev, B, G, o_b, o_g, m_b, m_g, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
              DTYPE: tl.constexpr):  # fmt: skip
    """Step n's gate projections (x_t W_ih^T + b) of the program's contiguous gate columns o_g (in range: m_g), in
    the resident slice's permuted order (:func:`tritonlstm.kernels.jit.permute_gates`), as DTYPE; zeros past the
    last step. Loaded contiguous (vector loads, few pointers) and permuted in registers; the unit-split and tile
    forwards load them a step ahead, before the wait. (The unit-split forward holds them in gx's dtype while they
    wait, half the registers, the tile regime in the accumulator's: each is the spill-free build under Triton 3.6
    and 3.9.)"""
    t = n + rev * (T - 1 - 2 * n)
    p = gx_d + t.to(tl.int64) * B * G + o_b[:, None] * G + o_g[None, :]
    b_gx = tl.load(p, mask=and_(m_b[:, None] & m_g[None, :], n < T), other=0.0).to(DTYPE)
    return permute_gates(b_gx, BLOCK_B, BLOCK_H)


@triton.jit
def _fwd_cell(b_pre, b_cp, v_t, o_b, o_u, b_hp, zs_ptr, zo_stream, t, B, H, zo_h, zo_c,
              HAS_LENGTHS: tl.constexpr, ZONEOUT: tl.constexpr, ACC_DTYPE: tl.constexpr):  # fmt: skip
    """The cell update of one unit tile from its gate pre-activations ``b_pre`` ([BLOCK_B, BLOCK_H, 2, 2],
    :func:`tritonlstm.kernels.jit.split_gates4`' form) and c_{t-1}. ``b_hp``: h_{t-1} of these units (read with
    zoneout). Returns (the activated gates as [BLOCK_B, BLOCK_H, 2, 2], c_t, m_t = o * tanh(c_t), h_t = m_t
    zeroed past each row's length), c_t and m_t after zoneout. None is poisoned here: the stores add the poison
    (:func:`_fwd_stores`), so each store's layout conversion follows the release that publishes h_t."""
    b_i, b_f, b_g, b_o = split_gates4(b_pre)
    b_i, b_f, b_g, b_o, b_c, b_m = cell_gates(b_i, b_f, b_g, b_o, b_cp)
    if ZONEOUT > 0:
        # the per-step kernels' zoneout exactly: the same Philox streams and counters, or p in eval
        b_kh = zoneout_rates(zs_ptr, zo_stream, t, o_b, o_u, B, H, zo_h, ZONEOUT, ACC_DTYPE)
        b_kc = zoneout_rates(zs_ptr, zo_stream + 1, t, o_b, o_u, B, H, zo_c, ZONEOUT, ACC_DTYPE)
        b_m = b_kh * b_hp.to(ACC_DTYPE) + (1.0 - b_kh) * b_m
        b_c = b_kc * b_cp + (1.0 - b_kc) * b_c
    if HAS_LENGTHS:
        b_c = tl.where(v_t[:, None], b_c, b_cp)
    b_h = b_m
    if HAS_LENGTHS:
        b_h = tl.where(v_t[:, None], b_h, 0.0)
    return join_gates4(b_i, b_f, b_g, b_o), b_c, b_m, b_h


@triton.jit
def _store_h(y_t, ldy, o_b, o_u, m_bu, b_h):
    """h_t of one unit tile into y (its step's rows, the direction's columns)."""
    tl.store(y_t + o_b[:, None] * ldy + o_u[None, :], b_h.to(y_t.dtype.element_ty), mask=m_bu)


@triton.jit
def _fwd_stores(b_gates, b_c, b_h, poison, v_last, last_step, o_b, o_u, m_b, m_bu, m_g, p_gx, cs_t, cn_ptr, hn_ptr,
                y_t, H, R, ldy, STORE_GATES: tl.constexpr, STORE_Y: tl.constexpr, HAS_PROJ: tl.constexpr):  # fmt: skip
    """The step's stores that no program reads inside the time loop: h_t into y with STORE_Y (where the programs
    exchange it elsewhere), c_t, the activated gates (over the gate projections: ``p_gx`` [BLOCK_B, 4 * BLOCK_H],
    the units' contiguous gate columns, ``m_g`` those in range; a contiguous row of pointers keeps the store
    vectorised and its pointers few), c_n and (without a projection) h_n. The unit-split kernels issue them after
    publishing h_t, so they overlap the wait for the others. They add the poison (see :func:`_fwd_cell`)."""
    b_h += poison
    if STORE_Y:
        _store_h(y_t, ldy, o_b, o_u, m_bu, b_h)
    o_bu = o_b[:, None] * H + o_u[None, :]
    b_c += poison
    tl.store(cs_t + o_bu, b_c.to(cs_t.dtype.element_ty), mask=m_bu)
    tl.store(cn_ptr + o_bu, b_c.to(cn_ptr.dtype.element_ty), mask=and_(m_bu, last_step))
    if STORE_GATES:
        b_gates = tl.reshape(b_gates + poison, (p_gx.shape[0], p_gx.shape[1]))  # back to the interleaved columns
        tl.store(p_gx, b_gates.to(p_gx.dtype.element_ty), mask=m_b[:, None] & m_g[None, :])
    if not HAS_PROJ:
        tl.store(hn_ptr + o_b[:, None] * R + o_u[None, :], b_h.to(hn_ptr.dtype.element_ty), mask=m_bu & v_last[:, None])


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_fwd_split_kernel(
    gx_ptr,  # [D, T, B, G]  x_t W_ih^T + b (interleaved); overwritten by the activated gates if STORE_GATES
    w_ptr,  # [D, G, R]  W_hh, torch's layout
    wr_ptr,  # [D, P, H]  W_hr (read if HAS_PROJ)
    h0_ptr,  # [D, B, R]
    c0_ptr,  # [D, B, H]
    y_ptr,  # [T, B, D*R]  out: the directions side by side, nn.LSTM's layout
    hn_ptr,  # [D, B, R]  out
    cn_ptr,  # [D, B, H]  out, input dtype
    cs_ptr,  # [D, TC, B, H]  out: c_t, accumulator dtype (TC = T with STORE_GATES; else 2 slots, alternating)
    m_ptr,  # [D, B, H]  scratch: m_t exchanged between the programs with HAS_PROJ ([D, 2, B, H] words if TAGGED)
    len_ptr,  # [B]  int32 lengths (read if HAS_LENGTHS)
    hm_ptr,  # [D, B, R]  recurrent dropout mask on h_{t-1} (read if HAS_MASK)
    xh_ptr,  # [D, 3, B, R]  h_t * mask exchanged, slots 0/1 by step, h0 * mask in 2 (HAS_MASK); if TAGGED the
    #            same as words (times the mask only with HAS_MASK), the launcher's h0 words in slot 2
    zs_ptr,  # [1]  int64 zoneout seed (read if ZONEOUT == 2)
    zo_h: tl.float64,  # zoneout probabilities of h and c
    zo_c: tl.float64,
    sync_ptr,  # [D, NB]  int32 barrier counters, zero at launch (unread if TAGGED)
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
    BLOCK_R: tl.constexpr,  # the recurrent input's first block of columns; with BLOCK_R2 they cover R
    BLOCK_P: tl.constexpr,  # >= P (batch-owned) / the P slice of one program (unit-split)
    BLOCK_F: tl.constexpr,  # >= H: m_t's whole row (unit-split with a projection)
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,  # 0 off, 1 eval (expectation), 2 training (Philox masks); never with HAS_PROJ
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    TAGGED: tl.constexpr = False,  # exchange tagged words (tl.int32 or tl.int64 WORD) instead of a barrier
    WORD: tl.constexpr = tl.int32,
    K_SPLIT: tl.constexpr = 1,  # the recurrent dot over BLOCK_R split that many ways (jit.split_k_dot)
    BLOCK_R2: tl.constexpr = 0,  # > 0: R's columns past BLOCK_R, a second block of the recurrent dot
    K_SPLIT2: tl.constexpr = 1,  # that block's split
    K_SPLIT_F: tl.constexpr = 1,  # the projection's dot over BLOCK_F, split that many ways
    K_CHUNKS: tl.constexpr = 0,  # > 0 (the tile regime): W_hh^T resident as that many chunks of K_CHUNK rows
    K_CHUNK: tl.constexpr = 16,
    EVEN_K: tl.constexpr = False,  # K_CHUNK divides R
    FLAG_BLOCK: tl.constexpr = 2,  # >= the producers of one chunk's columns
):
    i_b, i_d, i_s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    NS = tl.num_programs(2)
    if K_CHUNKS > 0:
        tl.static_assert(not (TAGGED or HAS_PROJ), "the tile regime exchanges h_t through flags, no projection")
        # offsets within a step in 32 bits (the rule checks B * 4H < 2**31), as in the tile backward
        i_b, i_s = tl.program_id(0), tl.program_id(2)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)  # the per-step kernels' streams: h on 2d, c on 2d + 1
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
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
    if TAGGED:
        m_d = m_ptr + i_d * 2 * B * H
    else:
        m_d = m_ptr + i_d * B * H
    y_d = y_ptr + i_d * R
    sync = sync_ptr + i_d * tl.num_programs(0) + i_b
    flag_g = sync_ptr + (i_d * tl.num_programs(0) + i_b) * NS  # the tile regime's flags [D, NB, NS], one a program
    failed = tl.program_id(0) * 0

    # the program's units and its slice of the weights, loaded once and kept on chip for the whole sequence
    o_u = i_s * BLOCK_H + tl.arange(0, BLOCK_H)
    o_g = i_s * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)  # the units' gate columns in gx
    m_u, m_g = o_u < H, o_g < G
    # the resident slice's columns, permuted (jit.permuted_gates): unit o_pu's gate k_p, W_hh's row o_r
    u_p, k_p = permuted_gates(BLOCK_H)
    o_pu = i_s * BLOCK_H + u_p
    o_r, m_pu = k_p * H + o_pu, o_pu < H
    # R in one block of BLOCK_R columns, or two (BLOCK_R + BLOCK_R2: 768 as 512 + 256), so that no MMA runs on
    # more than a granule of padding where two powers of two cover R
    if K_CHUNKS > 0:
        # the tile regime: W_hh^T[:, its gate columns] as K_CHUNKS chunks of K_CHUNK rows, one tensor each (a
        # tuple, indexed by a static chunk number), so each step's dot takes h_{t-1} a chunk at a time; a chunk
        # of 16 rows or more is a wgmma operand read from shared memory in place (tests/test_tile_structure.py)
        b_w = ()
        for c in tl.static_range(K_CHUNKS):
            b_w = b_w + (_w_resident(w_d, c * K_CHUNK, o_r, m_pu, R, K_CHUNK, 1),)
    else:
        b_w = _w_resident(w_d, 0, o_r, m_pu, R, BLOCK_R, K_SPLIT)
    b_w2 = b_w  # unread with one block
    if BLOCK_R2 > 0:
        b_w2 = _w_resident(w_d, BLOCK_R, o_r, m_pu, R, BLOCK_R2, K_SPLIT2)
    b_c = tl.load(c0_d + o_b[:, None] * H + o_u[None, :], mask=m_b[:, None] & m_u[None, :], other=0.0).to(ACC_DTYPE)
    if HAS_PROJ:
        o_p = i_s * BLOCK_P + tl.arange(0, BLOCK_P)
        o_f = tl.arange(0, BLOCK_F)
        m_p, m_f = o_p < P, o_f < H
        if K_SPLIT_F == 1:  # W_hr^T[:, its P slice]: [BLOCK_F, BLOCK_P]
            b_wr = tl.load(wr_d + o_p[None, :] * H + o_f[:, None], mask=m_f[:, None] & m_p[None, :], other=0.0)
        else:  # as [K_SPLIT_F, BLOCK_F // K_SPLIT_F, BLOCK_P], for split_k_dot
            KF: tl.constexpr = BLOCK_F // K_SPLIT_F
            o_f3 = tl.arange(0, K_SPLIT_F)[:, None, None] * KF + tl.arange(0, KF)[None, :, None]
            b_wr = tl.load(wr_d + o_p[None, None, :] * H + o_f3, mask=(o_f3 < H) & m_p[None, None, :], other=0.0)
    # the columns of h_t this program publishes: its units, or its P slice
    o_x = o_p if HAS_PROJ else o_u
    m_bx = m_b[:, None] & ((m_p if HAS_PROJ else m_u)[None, :])
    b_hmx = b_c  # unread without recurrent dropout
    if HAS_MASK:
        # recurrent dropout, applied where h_t is published: each program masks the columns of h_t it writes
        # into the exchange slots, so the consumers load h_{t-1} * mask as is
        # (held in its storage dtype, which carries it exactly: half the registers of the accumulator's)
        b_hmx = tl.load(hm_d + o_b[:, None] * R + o_x[None, :], mask=m_bx, other=0.0)
    if ZONEOUT > 0 and K_CHUNKS == 0:
        # zoneout reads h_{t-1} of the program's own units: kept from the previous step (as y holds it, in the
        # storage dtype), h0 before the first; no load after the wait
        b_h0u = tl.load(h0_d + o_b[:, None] * R + o_u[None, :], mask=m_b[:, None] & m_u[None, :], other=0.0)
        b_own = b_h0u
    GX_DTYPE: tl.constexpr = ACC_DTYPE if K_CHUNKS > 0 else gx_ptr.dtype.element_ty
    b_gx = _gates_in(gx_d, 0, T, rev, B, G, o_b, o_g, m_b, m_g, BLOCK_B, BLOCK_H, GX_DTYPE)  # step 0's

    for n in range(0, T):
        t = n + rev * (T - 1 - 2 * n)
        t_prev = t - 1 + 2 * rev
        v_t = t < b_len
        v_prev = and_(t_prev < b_len, t_prev >= 0)
        v_last = tl.where(rev == 1, and_(v_t, t == 0), v_t & (t == b_len - 1))  # the row's last step: h_n is its h_t
        last_step = n == T - 1
        poison = tl.where(failed != 0, float("nan"), 0.0)
        tp = tl.minimum(tl.maximum(t_prev, 0), T - 1).to(tl.int64)
        if STORE_GATES:
            cs_t = cs_d + t.to(tl.int64) * B * H
        else:
            cs_t = cs_d + (n % 2) * (B.to(tl.int64) * H)
        gx_t = gx_d + t.to(tl.int64) * B * G
        y_t = y_d + t.to(tl.int64) * B * ldy
        # unit-split: both blocks of h_{t-1} before either dot (one wait, not one per dot), into the step's gate
        # projections (loaded during the previous step); the tile regime waits and loads chunk by chunk
        if K_CHUNKS > 0:
            b_acc, failed = _tile_dot(y_d, h0_d, xh_d, flag_g, b_w, b_gx.to(ACC_DTYPE), n, o_b, m_b, v_prev, tp, B, R,
                                      ldy, NS, failed, spin_limit, BLOCK_H, K_CHUNKS, K_CHUNK, EVEN_K,
                                      FLAG_BLOCK, HAS_MASK, ACC_DTYPE, INPUT_PRECISION)  # fmt: skip
        else:
            b_hp, failed = _h_prev(y_d, h0_d, xh_d, n, o_b, tl.arange(0, BLOCK_R), m_b, v_prev, tp, B, R, ldy,
                                   failed, spin_limit, TAGGED, HAS_MASK, WORD, y_ptr.dtype.element_ty)  # fmt: skip
            b_hp2 = b_hp  # unread with one block
            if BLOCK_R2 > 0:
                o_k2 = BLOCK_R + tl.arange(0, BLOCK_R2)
                b_hp2, failed = _h_prev(y_d, h0_d, xh_d, n, o_b, o_k2, m_b, v_prev, tp, B, R, ldy, failed,
                                        spin_limit, TAGGED, HAS_MASK, WORD, y_ptr.dtype.element_ty)  # fmt: skip
            # the step's gate projections (b_gx, loaded during the previous step) are the dots' accumulators
            b_acc = _acc_dot(b_hp, b_w, b_gx.to(ACC_DTYPE), K_SPLIT, ACC_DTYPE, INPUT_PRECISION)
            if BLOCK_R2 > 0:
                b_acc = _acc_dot(b_hp2, b_w2, b_acc, K_SPLIT2, ACC_DTYPE, INPUT_PRECISION)
        if TAGGED or K_CHUNKS > 0:  # a wait inside this step's dot that timed out poisons the step itself
            poison = tl.where(failed != 0, float("nan"), 0.0)
        b_pre = unpermute_gates(b_acc, BLOCK_B, BLOCK_H)  # [BLOCK_B, BLOCK_H, 2, 2], no data movement
        p_gx = gx_t + o_b[:, None] * G + o_g[None, :]  # the activated gates' home
        b_hu = b_c  # unread without zoneout
        if ZONEOUT > 0:  # h_{t-1} of the program's own units, unmasked
            if K_CHUNKS > 0:  # read back (carried in registers, it spills Triton 3.6's tile build)
                b_hu = _load_h_prev(y_d, h0_d, o_b, o_u, m_b, m_u, v_prev, tp, B, ldy, R)
            else:
                b_hu = tl.where(v_prev[:, None], b_own, b_h0u)
        m_bu = m_b[:, None] & m_u[None, :]
        b_gates, b_c, b_m, b_h = _fwd_cell(b_pre, b_c, v_t, o_b, o_u, b_hu, zs_ptr, zo_stream, t, B, H, zo_h,
                                           zo_c, HAS_LENGTHS, ZONEOUT, ACC_DTYPE)  # fmt: skip
        # h_t goes into y before the release where y is what the others read (no tags, no dropout mask)
        Y_EXCHANGED: tl.constexpr = not (HAS_PROJ or TAGGED or HAS_MASK)
        if Y_EXCHANGED:
            _store_h(y_t, ldy, o_b, o_u, m_bu, b_h + poison)
        if ZONEOUT > 0 and K_CHUNKS == 0:  # (where the next step reads it, this step was the row's own: b_h is h_t)
            b_own = b_h.to(y_ptr.dtype.element_ty)
        # publish what the others read (h_t, or m_t with a projection) first, then the stores nobody in the loop
        # reads, which overlap the others' arrivals, then wait
        if HAS_PROJ:
            # phase 2: publish m_t, then each program projects its slice of P from the whole m_t
            if TAGGED:
                m_n = m_d + (n % 2) * (B.to(tl.int64) * H) + o_b[:, None] * H
                # (here the stores precede the publication: after it, the tagged form's build spills)
                _fwd_stores(b_gates, b_c, b_h, poison, v_last, last_step, o_b, o_u, m_b, m_bu, m_g, p_gx, cs_t, cn_d,
                            hn_d, y_t, H, R, ldy, STORE_GATES, False, HAS_PROJ)  # fmt: skip
                publish_words(m_n + o_u[None, :], (b_m + poison).to(y_ptr.dtype.element_ty), step_tag(n, WORD),
                              m_bu, WORD)  # fmt: skip
                words, failed = wait_words(m_n + o_f[None, :], m_b[:, None] & m_f[None, :], step_tag(n, WORD),
                                           failed, spin_limit)  # fmt: skip
                b_mf = word_values(words, y_ptr.dtype.element_ty)
            else:
                tl.store(m_d + o_b[:, None] * H + o_u[None, :], b_m.to(m_d.dtype.element_ty), mask=m_bu)
                arrive(sync)
                _fwd_stores(b_gates, b_c, b_h, poison, v_last, last_step, o_b, o_u, m_b, m_bu, m_g, p_gx, cs_t, cn_d,
                            hn_d, y_t, H, R, ldy, STORE_GATES, False, HAS_PROJ)  # fmt: skip
                failed = wait_count(sync, NS * (2 * n + 1), failed, spin_limit)
                b_mf = tl.load(
                    m_d + o_b[:, None] * H + o_f[None, :],
                    mask=m_b[:, None] & m_f[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                )
            b_hr = split_k_dot(b_mf, b_wr, K_SPLIT_F, ACC_DTYPE, INPUT_PRECISION)
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
            if TAGGED:
                _publish(xh_d, n, B, R, o_b, o_p, m_bx, b_hr, b_hmx, WORD, y_ptr.dtype.element_ty, HAS_MASK,
                         ACC_DTYPE)  # fmt: skip
            else:
                if HAS_MASK:
                    _publish_masked(xh_d, n, B, R, o_b, o_p, m_bx, b_hr, b_hmx, y_ptr.dtype.element_ty, ACC_DTYPE)
                failed = barrier(sync, NS * (2 * n + 2), failed, spin_limit)
        else:
            if TAGGED:
                _publish(xh_d, n, B, R, o_b, o_u, m_bx, b_m + poison, b_hmx, WORD, y_ptr.dtype.element_ty, HAS_MASK,
                         ACC_DTYPE)  # fmt: skip
            else:
                if HAS_MASK:
                    _publish_masked(xh_d, n, B, R, o_b, o_u, m_bx, b_m, b_hmx, y_ptr.dtype.element_ty, ACC_DTYPE)
                if K_CHUNKS > 0:
                    release_flag(flag_g + i_s, n)
                else:
                    arrive(sync)
            _fwd_stores(b_gates, b_c, b_h, poison, v_last, last_step, o_b, o_u, m_b, m_bu, m_g, p_gx, cs_t, cn_d, hn_d,
                        y_t, H, R, ldy, STORE_GATES, not Y_EXCHANGED, HAS_PROJ)  # fmt: skip
        # the next step's gate projections, before this step's wait: the accumulators of its dots
        b_gx = _gates_in(gx_d, n + 1, T, rev, B, G, o_b, o_g, m_b, m_g, BLOCK_B, BLOCK_H, GX_DTYPE)
        if not (HAS_PROJ or TAGGED or K_CHUNKS > 0):
            failed = wait_count(sync, NS * (n + 1), failed, spin_limit)
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit(do_not_specialize=["T", "B", "rev_mask", "spin_limit"])
def _seq_fwd_batch_kernel(
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
    STORE_GATES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ZONEOUT: tl.constexpr,  # 0 off, 1 eval (expectation), 2 training (Philox masks); never with HAS_PROJ
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_b, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    G = 4 * H
    ldy = tl.num_programs(1) * R
    rev = (rev_mask >> tl.program_id(1)) & 1
    zo_stream = 2 * tl.program_id(1)  # the per-step kernels' streams: h on 2d, c on 2d + 1
    o_b, m_b, b_len = batch_rows(len_ptr, i_b, B, T, BLOCK_B, HAS_LENGTHS)
    hm_d = hm_ptr + i_d * B * R
    TC = T if STORE_GATES else 2
    gx_d = gx_ptr + i_d * T * B * G
    w_d = w_ptr + i_d * G * R
    wr_d = wr_ptr + i_d * P * H
    h0_d = h0_ptr + i_d * B * R
    c0_d = c0_ptr + i_d * B * H
    hn_d = hn_ptr + i_d * B * R
    cn_d = cn_ptr + i_d * B * H
    cs_d = cs_ptr + i_d * TC * B * H
    y_d = y_ptr + i_d * R
    failed = tl.program_id(0) * 0

    for n in range(0, T):
        t = n + rev * (T - 1 - 2 * n)
        t_prev = t - 1 + 2 * rev
        v_t = t < b_len
        v_prev = and_(t_prev < b_len, t_prev >= 0)
        v_last = tl.where(rev == 1, and_(v_t, t == 0), v_t & (t == b_len - 1))  # the row's last step: h_n is its h_t
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
        if HAS_PROJ:
            o_p = tl.arange(0, BLOCK_P)
            m_p = o_p < P
            b_hr = tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC_DTYPE)
        for u in range(0, H, BLOCK_H):
            o_u = u + tl.arange(0, BLOCK_H)
            o_g = 4 * u + tl.arange(0, 4 * BLOCK_H)
            m_u, m_g = o_u < H, o_g < G
            o_w = torch_rows(o_g, H)
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
            b_pre = tl.reshape(b_pre, (BLOCK_B, BLOCK_H, 2, 2))  # jit.split_gates4's form
            m_bu = m_b[:, None] & m_u[None, :]
            o_bu = o_b[:, None] * H + o_u[None, :]
            b_cp = tl.load(cs_p + o_bu, mask=m_bu & (n > 0), other=0.0).to(ACC_DTYPE)
            b_cp += tl.load(c0_d + o_bu, mask=m_bu & (n == 0), other=0.0).to(ACC_DTYPE)
            b_hu = b_cp  # unread without zoneout
            if ZONEOUT > 0:
                b_hu = _load_h_prev(y_d, h0_d, o_b, o_u, m_b, m_u, v_prev, tp, B, ldy, R)
            b_gates, b_c, b_m, b_h = _fwd_cell(b_pre, b_cp, v_t, o_b, o_u, b_hu, zs_ptr, zo_stream, t, B, H,
                                               zo_h, zo_c, HAS_LENGTHS, ZONEOUT, ACC_DTYPE)  # fmt: skip
            _fwd_stores(b_gates, b_c, b_h, poison, v_last, last_step, o_b, o_u, m_b, m_bu, m_g, p_gx, cs_t, cn_d,
                        hn_d, y_t, H, R, ldy, STORE_GATES, not HAS_PROJ, HAS_PROJ)  # fmt: skip
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


# the tile regime runs the split kernel with its tile constexprs (K_CHUNKS and the rest: config.constexprs)
KERNELS = {"batch": _seq_fwd_batch_kernel, "split": _seq_fwd_split_kernel, "tile": _seq_fwd_split_kernel}


def tagged_words(cfg: dict, dtype: torch.dtype) -> dict:
    """The split kernel's TAGGED/WORD constexprs for a config that asks for the tagged exchange, else none:
    16-bit values in int32 words, 32-bit ones in int64 words."""
    if not cfg.get("TAGGED"):
        return {}
    bits = torch.finfo(dtype).bits
    if bits not in (16, 32):
        raise ValueError(f"the tagged exchange carries 16- and 32-bit values, not {dtype}")
    return {"TAGGED": True, "WORD": tl.int32 if bits == 16 else tl.int64}


def launch_options(x: torch.Tensor, split: bool, num_warps: int) -> dict:
    """Warps, and a cooperative launch for a unit-split (or tile) grid on a GPU (it fails instead of hanging when the
    grid is not co-resident)."""
    opts = {"num_warps": num_warps}
    if split and x.is_cuda and cooperative_supported():
        opts["launch_cooperative_grid"] = True
    return opts


def forward(
    layer: Layer, regs: Regularisers = NONE, store: bool = True, config: dict | None = None,
    err: torch.Tensor | None = None,
):  # fmt: skip
    """One layer, every direction, one launch for the whole recurrence.

    Returns ``(y [T, B, D*R], h_n [D, B, R], c_n [D, B, H], gates [D, T, B, G] | None, cs [D, T, B, H] | None)``:
    ``y`` holds the directions side by side (nn.LSTM's bidirectional layout); ``gates[d]``/``cs[d]`` are exactly
    what the per-step kernels keep for direction d, ``None`` unless ``store``. ``config`` overrides
    :func:`tritonlstm.kernels.config.sequence_config` (keys ``regime``, ``BLOCK_*``, ``num_warps``, ``TAGGED``,
    ``spin_limit``). The regularisers are the per-step kernels' (direction d's zoneout on Philox streams 2d and
    2d + 1), so the masks are the same. ``err`` (int32 ``[1]``, zero) receives the error flag: 1 when a barrier
    wait timed out.

    Example::

        layer = Layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None, (False, True))
        y, h_n, c_n, gates, cs = forward(layer)
    """
    x, h0, c0, w_ih, w_hh, _, _, w_hr, lengths, reverse = layer
    T, B, D, H, R, P = layer.dims
    G, I = 4 * H, x.shape[2]
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    check_dtype(dtype)
    check_regularisers(layer, regs)
    cfg = config or sequence_config(B, H, P, D, dtype, sm_count(x.device))
    split = cfg["regime"] in ("split", "tile")
    dev = x.device
    bias = layer.bias()

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
    cs = torch.empty(D, T if store else 2, B, H, device=dev, dtype=acc)
    k, ns = constexprs(cfg, H, R, P, backward=False)
    nb = triton.cdiv(B, k["BLOCK_B"])
    # the error flag, then the barrier counters (the tile regime: a flag a program): their offsets do not depend on
    # B (no alignment-driven recompiles)
    flags = torch.zeros(1 + D * nb * (ns if cfg["regime"] == "tile" else 1), device=dev, dtype=torch.int32)
    sync = flags[1:]
    if err is None:
        err = flags[:1]
    if B > 0:
        h_mask = regs.h_mask
        m = torch.empty(D, B, H, device=dev, dtype=dtype) if (P and split) else y
        lens = lengths.to(dtype=torch.int32).contiguous() if lengths is not None else flags
        hm = h_mask.to(dtype).contiguous() if h_mask is not None else y  # y: unread
        xh = y  # unread unless unit-split with recurrent dropout: then h_t * mask slots and h0 * mask
        tagged = tagged_words(cfg, dtype)
        if tagged:  # the words' slots, zeroed (no tag is 0 on a slot's first use); h0 (* mask) as words in 2
            word = torch.int32 if tagged["WORD"] == tl.int32 else torch.int64
            xh = torch.zeros(D, 3, B, R, device=dev, dtype=word)
            h0x = h0 if h_mask is None else (h0.to(acc) * hm.to(acc)).to(dtype)
            bits = h0x.contiguous().view(torch.int16 if word == torch.int32 else torch.int32).to(word)
            xh[:, 2] = bits & (0xFFFF if word == torch.int32 else 0xFFFFFFFF)
            m = torch.zeros(D, 2, B, H, device=dev, dtype=word) if P else y
        elif h_mask is not None and split:
            xh = torch.empty(D, 3, B, R, device=dev, dtype=dtype)
            xh[:, 2] = (h0.to(acc) * hm.to(acc)).to(dtype)
        rev_mask = sum(1 << d for d, r in enumerate(reverse) if r)
        with launch_guard(x.device):
            KERNELS[cfg["regime"]][(nb, D, ns)](
                gx, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else w_hh, h0.contiguous(),
                c0.contiguous(), y, h_n, c_n, cs, m, lens, hm, xh, regs.seed if regs.seed is not None else y,
                float(regs.zoneout[0]), float(regs.zoneout[1]), sync, err, T, B, H, R, P, rev_mask,
                cfg.get("spin_limit", DEFAULT_SPIN_LIMIT),
                STORE_GATES=store, HAS_LENGTHS=lengths is not None, HAS_PROJ=P > 0, HAS_MASK=h_mask is not None,
                ZONEOUT=regs.mode, ACC_DTYPE=ACC[acc], INPUT_PRECISION=input_precision(dtype), **k, **tagged,
                **launch_options(x, split, cfg["num_warps"]),
            )  # fmt: skip
    else:
        h_n.copy_(h0)
        c_n.copy_(c0)
    if not store:
        return y, h_n, c_n, None, None
    return y, h_n, c_n, gx.view(D, T, B, G), cs
