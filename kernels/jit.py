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
def split_gates(b_x, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_B, 4*BLOCK_H] interleaved -> the i, f, g, o tiles, each [BLOCK_B, BLOCK_H]."""
    # column 4j+k -> [BLOCK_B, BLOCK_H, k1, k2] with k = 2*k1 + k2; splitting k2 then k1 separates the gates
    b_ig, b_fo = tl.split(tl.reshape(b_x, (BLOCK_B, BLOCK_H, 2, 2)))
    b_i, b_g = tl.split(b_ig)
    b_f, b_o = tl.split(b_fo)
    return b_i, b_f, b_g, b_o


@triton.jit
def join_gates(b_i, b_f, b_g, b_o, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Inverse of split_gates."""
    return tl.reshape(tl.join(tl.join(b_i, b_g), tl.join(b_f, b_o)), (BLOCK_B, 4 * BLOCK_H))


@triton.jit
def cell_forward(b_pre, b_c_prev, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gate pre-activations [BLOCK_B, 4*BLOCK_H] and c_{t-1} -> (activated gates interleaved, c_t, o*tanh(c_t))."""
    b_i, b_f, b_g, b_o = split_gates(b_pre, BLOCK_B, BLOCK_H)
    b_i = tl.sigmoid(b_i)
    b_f = tl.sigmoid(b_f)
    b_g = tanh(b_g)
    b_o = tl.sigmoid(b_o)
    b_c = b_f * b_c_prev + b_i * b_g
    return join_gates(b_i, b_f, b_g, b_o, BLOCK_B, BLOCK_H), b_c, b_o * tanh(b_c)


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
def and_(m, c):
    """m & c for a scalar condition c (written so the interpreter keeps a boolean mask)."""
    return tl.where(c, m, tl.zeros_like(m))


@triton.jit
def barrier(sync_ptr, target, failed, spin_limit):
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
def batch_rows(len_ptr, i_b, B, T, BLOCK_B: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    """The batch tile of program row i_b: offsets, in-range mask, each row's length (T without lengths)."""
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    if HAS_LENGTHS:
        b_len = tl.load(len_ptr + o_b, mask=m_b, other=0)
    else:
        b_len = tl.zeros([BLOCK_B], dtype=tl.int32) + T
    return o_b, m_b, b_len

