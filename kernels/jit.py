"""The ``@triton.jit`` helpers that the per-step and the sequence kernels share: the cell, its gradient, the gate
layout, zoneout's masks, the batch tile and the barrier.

Dimension legend (every shape comment in the kernel files uses it):
    T   time steps                B   batch rows
    I   input features            H   hidden units
    P   projection size (proj_size > 0)           R   recurrent input size: P with a projection, else H
    D   directions (1 or 2)
    G   4*H gate pre-activations, stored *unit-interleaved*: column 4*j + k holds gate k of unit j,
        k = 0, 1, 2, 3 for i, f, g, o (torch.nn.LSTM's gate order inside each unit)

The interleaved layout lets one ``tl.dot`` over a contiguous block of 4*BLOCK_H columns produce all four
gates of BLOCK_H units; a reshape and two splits then hand each gate to the epilogue as its own tile.

Maths (torch.nn.LSTM's):
    i, f, g, o = sigmoid(.), sigmoid(.), tanh(.), sigmoid(.)  of  x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)                 (with a projection: m_t = o * tanh(c_t), h_t = m_t W_hr^T)

Cell state, accumulators and the epilogue are fp32 for fp16/bf16/fp32 inputs and fp64 for fp64 inputs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernels were defined under ``TRITON_INTERPRET=1`` (``triton.jit`` reads it then): they run on CPU
tensors. Every kernel module imports this one, so the flag is fixed before any kernel exists."""

ACC = {torch.float32: tl.float32, torch.float64: tl.float64}
"""The kernels' ``ACC_DTYPE`` for an accumulator dtype (:func:`tritonlstm.kernels.runtime.acc_dtype`)."""


@triton.jit
def tanh(x):
    # libdevice.tanh is not available in the interpreter; this form is exact to rounding and never overflows.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def split_gates4(b_x):
    """``[..., 2, 2]`` gates, ``[..., k1, k2]`` holding gate ``2 * k1 + k2`` (a reshape of the interleaved
    columns) -> the i, f, g, o tiles. Where each thread holds those two dimensions whole, the splits move no data
    and the tiles keep the layout the gates came in: no layout conversion."""
    b_ig, b_fo = tl.split(b_x)
    b_i, b_g = tl.split(b_ig)
    b_f, b_o = tl.split(b_fo)
    return b_i, b_f, b_g, b_o


@triton.jit
def join_gates4(b_i, b_f, b_g, b_o):
    """Inverse of split_gates4: four tiles of one layout -> ``[..., 2, 2]``, the new dimensions in registers."""
    return tl.join(tl.join(b_i, b_g), tl.join(b_f, b_o))


# The unit-split and tile forwards' resident columns, permuted. The MMA accumulators (mma.sync's and wgmma's alike)
# give each thread two adjacent columns of every 8-column tile its warp holds, and a warp holds tiles j, j + W,
# j + 2W, ... of a dot's N tiles for W warps along N. Column c = 8 * tile + 2 * q + p of a program's 4 * BLOCK_H
# holds gate 2 * h + p of unit 4 * j + q, with tile = h * BLOCK_H / 4 + j: a thread's pair p = 0, 1 in tile j and in
# tile j + BLOCK_H / 4 (the other half, h = 1) are then the four gates of its unit, in registers, when those two
# tiles are its warp's (W divides BLOCK_H / 4: one warp along N for wgmma, and where mma.sync puts its warps on N).
# Taking the gates apart is then a reshape, a permute and two splits of register dimensions: no layout conversion
# (tests/test_sequence_structure.py counts them).


@triton.jit
def permuted_gates(BLOCK_H: tl.constexpr):
    """The permuted order of a program's 4 * BLOCK_H gate columns: (unit within the program, gate) per column."""
    tl.static_assert(BLOCK_H % 4 == 0, "the permuted gate columns pair 8-column tiles: BLOCK_H a multiple of 4")
    c = tl.arange(0, 4 * BLOCK_H)
    HALF: tl.constexpr = BLOCK_H // 4  # tiles in each half
    tile = c // 8
    return 4 * (tile % HALF) + (c % 8) // 2, 2 * (tile // HALF) + c % 2


@triton.jit
def unpermute_gates(b_x, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_B, 4 * BLOCK_H] in :func:`permuted_gates`' order -> [BLOCK_B, BLOCK_H, 2, 2] (:func:`split_gates4`'
    form): [b, (h, j, q, p)] -> [b, (j, q), h, p]."""
    b_x = tl.permute(tl.reshape(b_x, (BLOCK_B, 2, BLOCK_H // 4, 4, 2)), (0, 2, 3, 1, 4))
    return tl.reshape(b_x, (BLOCK_B, BLOCK_H, 2, 2))


@triton.jit
def permute_gates(b_x, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Inverse of :func:`unpermute_gates`: [BLOCK_B, 4 * BLOCK_H] interleaved (a program's contiguous gate columns,
    as loaded) -> :func:`permuted_gates`' order."""
    b_x = tl.permute(tl.reshape(b_x, (BLOCK_B, BLOCK_H // 4, 4, 2, 2)), (0, 3, 1, 2, 4))
    return tl.reshape(b_x, (BLOCK_B, 4 * BLOCK_H))


@triton.jit
def split_gates(b_x, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_B, 4*BLOCK_H] interleaved -> the i, f, g, o tiles, each [BLOCK_B, BLOCK_H]."""
    # column 4j+k -> [BLOCK_B, BLOCK_H, k1, k2] with k = 2*k1 + k2; splitting k2 then k1 separates the gates
    return split_gates4(tl.reshape(b_x, (BLOCK_B, BLOCK_H, 2, 2)))


@triton.jit
def join_gates(b_i, b_f, b_g, b_o, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Inverse of split_gates."""
    return tl.reshape(join_gates4(b_i, b_f, b_g, b_o), (BLOCK_B, 4 * BLOCK_H))


@triton.jit
def cell_gates(b_i, b_f, b_g, b_o, b_c_prev):
    """The cell on the four gates' pre-activations -> (i, f, g, o activated, c_t, o*tanh(c_t))."""
    b_i = tl.sigmoid(b_i)
    b_f = tl.sigmoid(b_f)
    b_g = tanh(b_g)
    b_o = tl.sigmoid(b_o)
    b_c = b_f * b_c_prev + b_i * b_g
    return b_i, b_f, b_g, b_o, b_c, b_o * tanh(b_c)


@triton.jit
def cell_forward(b_pre, b_c_prev, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gate pre-activations [BLOCK_B, 4*BLOCK_H] and c_{t-1} -> (activated gates interleaved, c_t, o*tanh(c_t))."""
    b_i, b_f, b_g, b_o = split_gates(b_pre, BLOCK_B, BLOCK_H)
    b_i, b_f, b_g, b_o, b_c, b_m = cell_gates(b_i, b_f, b_g, b_o, b_c_prev)
    return join_gates(b_i, b_f, b_g, b_o, BLOCK_B, BLOCK_H), b_c, b_m


@triton.jit
def cell_backward(b_dm, b_gates, b_c, b_c_prev, b_dc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gradient of m_t = o*tanh(c_t) and of c_t -> (gate pre-activation gradients interleaved, dc_{t-1})."""
    b_i, b_f, b_g, b_o = split_gates(b_gates, BLOCK_B, BLOCK_H)
    b_tc = tanh(b_c)
    b_dc = b_dc + b_dm * b_o * (1.0 - b_tc * b_tc)
    b_di = b_dc * b_g * b_i * (1.0 - b_i)
    b_df = b_dc * b_c_prev * b_f * (1.0 - b_f)
    b_dg = b_dc * b_i * (1.0 - b_g * b_g)
    b_do = b_dm * b_tc * b_o * (1.0 - b_o)
    return join_gates(b_di, b_df, b_dg, b_do, BLOCK_B, BLOCK_H), b_dc * b_f


@triton.jit
def zoneout_keep(zs_ptr, stream, t, o_b, o_u, B, N, p):
    """Zoneout's Bernoulli(p) "keep the previous value" mask of a [BLOCK_B, BLOCK_N] tile of step t, from Philox.

    The seed is read on the device (a fresh draw of torch's RNG each forward; no host sync, new masks on every
    CUDA-graph replay); ``stream`` separates directions and h from c; the counter is the element's index in the
    [T, B, N] sequence (32-bit: it wraps past 2**32 elements, which only repeats masks).
    """
    seed = tl.load(zs_ptr) + stream
    offs = ((t.to(tl.int64) * B + o_b[:, None]) * N + o_u[None, :]).to(tl.uint32, bitcast=False)
    return tl.rand(seed, offs) < p


@triton.jit
def zoneout_rates(zs_ptr, stream, t, o_b, o_u, B, N, p, ZONEOUT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """Per element, the weight of the previous value: the 0/1 training mask (ZONEOUT == 2) or p (eval, 1)."""
    if ZONEOUT == 2:
        return zoneout_keep(zs_ptr, stream, t, o_b, o_u, B, N, p).to(ACC_DTYPE)
    else:
        return tl.full((o_b.shape[0], o_u.shape[0]), p, ACC_DTYPE)  # p is float64: exact for a float64 layer


@triton.jit
def torch_rows(o_g, H):
    """Interleaved gate column 4*j + k -> row k*H + j of torch's gate-major weight."""
    return (o_g % 4) * H + o_g // 4


@triton.jit
def split_k_dot(a, b, K_SPLIT: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``a [M, K] @ b`` with ``b`` as ``[K_SPLIT, K // K_SPLIT, N]`` (1: ``[K, N]``): the inner dimension split
    K_SPLIT ways into one batched dot, whose partial products are summed in a fixed order (no atomics). Triton puts
    the warps on the batch dimension (3.6 all of them, 3.9 as many as it has), so with K_SPLIT = the number of
    warps and M = 16 (one MMA row tile) no two warps compute the same rows, as they do in a plain 16-row dot."""
    if K_SPLIT == 1:
        c = tl.dot(a, b, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    else:
        a3 = tl.permute(tl.reshape(a, (a.shape[0], K_SPLIT, a.shape[1] // K_SPLIT)), (1, 0, 2))
        c = tl.sum(tl.dot(a3, b, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION), axis=0)
    return c


@triton.jit
def and_(m, c):
    """m & c for a scalar condition c (written so the interpreter keeps a boolean mask)."""
    return tl.where(c, m, tl.zeros_like(m))


@triton.jit
def arrive(sync_ptr):
    """Arrive at the group's counter: every thread's stores of this phase precede the release."""
    tl.debug_barrier()
    tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")


@triton.jit
def wait_count(sync_ptr, target, failed, spin_limit):
    """Wait until the group's counter reaches ``target`` (acquire), polling at most ``spin_limit`` times; returns
    the updated failure flag. Work between :func:`arrive` and this (stores nobody in the group reads) overlaps the
    other programs' arrivals."""
    cnt = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
    it = cnt * 0
    while (cnt < target) & (it < spin_limit) & (failed == 0):
        cnt = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        it += 1
    tl.debug_barrier()
    return failed | (cnt < target).to(tl.int32)


@triton.jit
def barrier(sync_ptr, target, failed, spin_limit):
    """Arrive at the group's counter, wait until it reaches ``target``; returns the updated failure flag."""
    arrive(sync_ptr)
    return wait_count(sync_ptr, target, failed, spin_limit)


@triton.jit
def batch_rows(len_ptr, i_b, B, T, BLOCK_B: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    """The batch tile of program row i_b: offsets, in-range mask, each row's length (T without lengths)."""
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    if HAS_LENGTHS:
        b_len = tl.load(len_ptr + o_b, mask=m_b, other=0)
    else:
        b_len = tl.zeros([BLOCK_B], dtype=tl.int32) + T
    return o_b, m_b, b_len



# Tagged exchange: an element travels between programs as one word holding its value's bits and its step's tag,
# written with one store and read with one load, so a reader that sees the tag has the value too (NCCL's LL
# protocol, the flag inside each word). No counter, no fence, no atomic. 16-bit values ride in 32-bit words and
# 32-bit values in 64-bit words, the tag in the upper half: every bit of the value survives (h_t is unbounded with
# a projection or recurrent dropout, and the per-step kernels' numbers must come through exactly).
# Two slots, by step parity. Step n writes slot n % 2 and reads step n - 1's words from the other. A program can
# be at most one step ahead of the slowest (step n + 1 waits for everyone's step n, which each wrote after reading
# step n - 1), so a slot is rewritten only after all have read it. A reader waits for tag(n - 1) in a slot that
# held tag(n - 3) before, or zero (the buffer is zeroed at launch) in steps 0 and 1: tag(n) != tag(n - 2) and
# tag(0), tag(1) != 0 is all the tags must satisfy (tests/test_exchange.py checks both, and the packing).


@triton.jit
def step_tag(n, WORD: tl.constexpr):
    """The tag of step n's words: n + 1 modulo 2**16 (32-bit words) or 2**32 (64-bit words), never 0 in step 0."""
    n1 = tl.zeros([], dtype=tl.int64) + n + 1  # a 64-bit scalar whatever n is (a loop counter, an argument)
    if WORD == tl.int32:
        return (n1 & 0xFFFF).to(tl.int32)
    else:
        return n1 & 0xFFFFFFFF


@triton.jit
def tag_words(values, tag, WORD: tl.constexpr):
    """``values`` (a 16-bit float tile for int32 WORD, a 32-bit one for int64) as words carrying ``tag``."""
    if WORD == tl.int32:
        bits = values.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        return bits | (tag.to(tl.int32) << 16)
    else:
        bits = values.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        return bits | (tag.to(tl.int64) << 32)


@triton.jit
def word_values(words, DTYPE: tl.constexpr):
    """The values that :func:`tag_words` packed, as DTYPE (the 16- or 32-bit float they came from)."""
    if words.dtype == tl.int32:
        return (words & 0xFFFF).to(tl.int16).to(DTYPE, bitcast=True)
    else:
        return (words & 0xFFFFFFFF).to(tl.int32).to(DTYPE, bitcast=True)


@triton.jit
def word_tags(words):
    """The tags of tagged words, in [0, 2**16) or [0, 2**32)."""
    if words.dtype == tl.int32:
        return (words >> 16) & 0xFFFF
    else:
        return (words >> 32) & 0xFFFFFFFF


@triton.jit
def wait_words(ptrs, mask, tag, failed, spin_limit):
    """Load the 2-D tile of words at ``ptrs`` until every one under ``mask`` carries ``tag``, reloading at most
    ``spin_limit`` times; returns ``(words, failed)``, ``failed`` set when the wait gave up (or already was: a failed
    program waits no more). Loads are volatile: each poll reaches L2, where the producers' stores land.

    Masked-off words read as a word carrying ``tag``, and a word is late when its tag XOR ``tag`` is not 0, so the
    test is one max over integers: a count over a boolean tile costs the sm_90 build a local-memory round trip
    per poll (LLVM packs the i1 vector through the stack), which tests/test_sequence_structure.py rules out."""
    ready = tag << (16 if tag.dtype == tl.int32 else 32)  # tag_words(0.0, tag)
    words = tl.load(ptrs, mask=mask, other=ready, volatile=True)
    late = tl.max(tl.max(word_tags(words) ^ tag, axis=1), axis=0)
    it = late * 0
    while (late != 0) & (it < spin_limit) & (failed == 0):
        words = tl.load(ptrs, mask=mask, other=ready, volatile=True)
        late = tl.max(tl.max(word_tags(words) ^ tag, axis=1), axis=0)
        it += 1
    return words, failed | (late != 0).to(tl.int32)


@triton.jit
def publish_words(ptrs, values, tag, mask, WORD: tl.constexpr):
    """Store ``values`` as words carrying ``tag`` (``.cg``: straight to L2, where the readers poll)."""
    tl.store(ptrs, tag_words(values, tag, WORD), mask=mask, cache_modifier=".cg")


# Per-producer flags (the large-batch "tile" regime): program s of a group stores its step's outputs, then
# release-stores n + 1 into its own flag; a consumer acquires the flags of the producers whose columns it is about
# to read until each holds at least the step it needs (the forward chunk by chunk in producer order, the backward
# all of them before its streamed loop). No counter that every program
# increments (whose atomics serialise at one L2 address), and a consumer may start on the first producers' columns
# while the last ones are still computing. Two slots of anything rewritten each step stay enough: a producer
# publishes step n + 1 only after reading every producer's step n, which each published after reading step n - 1.


@triton.jit
def release_flag(flag_ptr, n):
    """Publish step n: every thread's stores of this step precede the release of ``n + 1`` into the flag."""
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr, tl.zeros([], dtype=tl.int32) + (n + 1), sem="release", scope="gpu")


@triton.jit
def wait_flags(flag_ptr, first, last, target, failed, spin_limit, BLOCK: tl.constexpr):
    """Wait until the flags of producers ``first`` .. ``last - 1`` (``last - first <= BLOCK``) hold at least
    ``target`` (acquire), polling at most ``spin_limit`` times; returns the updated failure flag. The test is
    a min over integers (no count over a boolean tile: see :func:`wait_words`)."""
    o_p = first + tl.arange(0, BLOCK)
    m_p = o_p < last
    f = tl.atomic_add(flag_ptr + o_p, 0, mask=m_p, sem="acquire", scope="gpu")
    low = tl.min(tl.where(m_p, f, target), axis=0)
    it = low * 0
    while (low < target) & (it < spin_limit) & (failed == 0):
        f = tl.atomic_add(flag_ptr + o_p, 0, mask=m_p, sem="acquire", scope="gpu")
        low = tl.min(tl.where(m_p, f, target), axis=0)
        it += 1
    tl.debug_barrier()
    return failed | (low < target).to(tl.int32)
