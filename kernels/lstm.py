"""Fused LSTM recurrence: Triton step kernels and the launchers that run one layer and direction.

Dimension legend (every shape comment below uses it):
    T   time steps                B   batch rows
    I   input features            H   hidden units
    G   4*H gate pre-activations, stored *unit-interleaved*: column 4*j + k holds gate k of unit j,
        k = 0, 1, 2, 3 for i, f, g, o (torch.nn.LSTM's gate order inside each unit)

The interleaved layout lets one ``tl.dot`` over a contiguous block of 4*BLOCK_H columns produce all four
gates of BLOCK_H units; a reshape and two splits then hand each gate to the epilogue as its own tile.

Maths (torch.nn.LSTM's):
    i, f, g, o = sigmoid(.), sigmoid(.), tanh(.), sigmoid(.)  of  x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Forward: one GEMM projects every time step's input (both biases folded in), then one launch per step runs
``_lstm_fwd_step_kernel``: the recurrent product for a (BLOCK_B x 4*BLOCK_H) tile, the projection added,
the activations, the cell update and the stores of h_t and c_t. When a backward will follow, the step also
overwrites its slice of the projection buffer with the activated gates and keeps every c_t.

Backward: one launch per step, in reverse processing order, runs ``_lstm_bwd_step_kernel``: it forms
dh_t = dy_t + dG_{next} W_hh (dG_{next}: the gate gradients of the step processed just before), then the
gate gradients dG_t and dc_{t-1}. Weight, input and bias gradients are GEMMs/reductions over all steps
afterwards. Nothing uses atomics, so results are bitwise reproducible.

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
def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Offsets and masks of this program's tile: batch rows, interleaved gate columns, hidden units."""
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_g = tl.program_id(1).to(tl.int64) * (4 * BLOCK_H) + tl.arange(0, 4 * BLOCK_H)
    o_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    return o_b, o_g, o_u, o_b < B, o_g < 4 * H, o_u < H


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
def _lstm_fwd_step_kernel(
    gx_ptr,  # [B, G]  x_t W_ih^T + b for this step (interleaved); overwritten by the activated gates if STORE_GATES
    w_ptr,  # [H, G]  W_hh^T with interleaved columns
    h_prev_ptr,  # [B, H]  h_{t-1}
    c_prev_ptr,  # [B, H]  c_{t-1}, accumulator dtype
    h_ptr,  # [B, H]  out: h_t
    c_ptr,  # [B, H]  out: c_t, accumulator dtype
    B,
    H,
    stride_gx,  # row strides (elements); the last dimension of every tensor is contiguous
    stride_hp,
    stride_cp,
    stride_h,
    stride_c,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STORE_GATES: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b, o_g, o_u, m_b, m_g, m_u = _tile(B, H, BLOCK_B, BLOCK_H)

    # recurrent product: [BLOCK_B, H] @ [H, 4*BLOCK_H] -> all four gates of BLOCK_H units
    b_acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=ACC_DTYPE)
    for k in range(0, H, BLOCK_K):
        o_k = k + tl.arange(0, BLOCK_K)
        m_k = o_k < H
        b_hp = tl.load(h_prev_ptr + o_b[:, None] * stride_hp + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(w_ptr + o_k[:, None] * (4 * H) + o_g[None, :], mask=m_k[:, None] & m_g[None, :], other=0.0)
        b_acc += tl.dot(b_hp, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)

    m_bg = m_b[:, None] & m_g[None, :]
    p_gx = gx_ptr + o_b[:, None] * stride_gx + o_g[None, :]
    b_acc += tl.load(p_gx, mask=m_bg, other=0.0).to(ACC_DTYPE)

    b_i, b_f, b_g, b_o = _split_gates(b_acc, BLOCK_B, BLOCK_H)
    b_i = tl.sigmoid(b_i)
    b_f = tl.sigmoid(b_f)
    b_g = _tanh(b_g)
    b_o = tl.sigmoid(b_o)

    m_bu = m_b[:, None] & m_u[None, :]
    b_c = tl.load(c_prev_ptr + o_b[:, None] * stride_cp + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_c = b_f * b_c + b_i * b_g
    b_h = b_o * _tanh(b_c)
    tl.store(c_ptr + o_b[:, None] * stride_c + o_u[None, :], b_c.to(c_ptr.dtype.element_ty), mask=m_bu)
    tl.store(h_ptr + o_b[:, None] * stride_h + o_u[None, :], b_h.to(h_ptr.dtype.element_ty), mask=m_bu)
    if STORE_GATES:
        b_gates = _join_gates(b_i, b_f, b_g, b_o, BLOCK_B, BLOCK_H)
        tl.store(p_gx, b_gates.to(gx_ptr.dtype.element_ty), mask=m_bg)


@triton.jit
def _lstm_bwd_step_kernel(
    dg_next_ptr,  # [B, G]  gate-gradients of the step processed before this one (read if HAS_NEXT)
    w_ptr,  # [G, H]  W_hh with interleaved rows
    dy_ptr,  # [B, H]  gradient of this step's output h_t (read if HAS_DY)
    dhn_ptr,  # [B, H]  gradient of h_n (read if HAS_DHN: the first step processed)
    gates_ptr,  # [B, G]  activated gates of this step
    c_ptr,  # [B, H]  c_t, accumulator dtype
    c_prev_ptr,  # [B, H]  c_{t-1}, accumulator dtype
    dc_ptr,  # [B, H]  in: dc_t, out: dc_{t-1}; accumulator dtype, updated in place
    dg_ptr,  # [B, G]  out: gradients of the gate pre-activations
    B,
    H,
    stride_dgn,
    stride_dy,
    stride_dhn,
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
    HAS_DHN: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    o_b, o_g, o_u, m_b, m_g, m_u = _tile(B, H, BLOCK_B, BLOCK_H)
    m_bu = m_b[:, None] & m_u[None, :]

    # dh_t = dy_t + dh_n (first step only) + dG_{next} @ W_hh  ([BLOCK_B, G] @ [G, BLOCK_H])
    b_dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_DTYPE)
    if HAS_NEXT:
        for k in range(0, 4 * H, BLOCK_K):
            o_k = k + tl.arange(0, BLOCK_K)
            m_k = o_k < 4 * H
            b_dgn = tl.load(dg_next_ptr + o_b[:, None] * stride_dgn + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
            b_w = tl.load(w_ptr + o_k[:, None] * H + o_u[None, :], mask=m_k[:, None] & m_u[None, :], other=0.0)
            b_dh += tl.dot(b_dgn, b_w, out_dtype=ACC_DTYPE, input_precision=INPUT_PRECISION)
    if HAS_DY:
        b_dh += tl.load(dy_ptr + o_b[:, None] * stride_dy + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    if HAS_DHN:
        b_dh += tl.load(dhn_ptr + o_b[:, None] * stride_dhn + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)

    m_bg = m_b[:, None] & m_g[None, :]
    b_gates = tl.load(gates_ptr + o_b[:, None] * stride_gates + o_g[None, :], mask=m_bg, other=0.0).to(ACC_DTYPE)
    b_i, b_f, b_g, b_o = _split_gates(b_gates, BLOCK_B, BLOCK_H)

    b_c = tl.load(c_ptr + o_b[:, None] * stride_c + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    b_cp = tl.load(c_prev_ptr + o_b[:, None] * stride_cp + o_u[None, :], mask=m_bu, other=0.0).to(ACC_DTYPE)
    p_dc = dc_ptr + o_b[:, None] * stride_dc + o_u[None, :]
    b_tc = _tanh(b_c)
    b_dc = tl.load(p_dc, mask=m_bu, other=0.0).to(ACC_DTYPE) + b_dh * b_o * (1.0 - b_tc * b_tc)

    b_di = b_dc * b_g * b_i * (1.0 - b_i)
    b_df = b_dc * b_cp * b_f * (1.0 - b_f)
    b_dgg = b_dc * b_i * (1.0 - b_g * b_g)
    b_do = b_dh * b_tc * b_o * (1.0 - b_o)
    b_dg = _join_gates(b_di, b_df, b_dgg, b_do, BLOCK_B, BLOCK_H)
    tl.store(dg_ptr + o_b[:, None] * stride_dg + o_g[None, :], b_dg.to(dg_ptr.dtype.element_ty), mask=m_bg)
    tl.store(p_dc, (b_dc * b_f).to(dc_ptr.dtype.element_ty), mask=m_bu)


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


def step_config(batch: int, hidden: int, reduce: int, dtype: torch.dtype = torch.float32) -> dict:
    """Tile sizes and warps for one step; ``reduce`` is the dot's inner length (H forward, 4H backward).

    Every dimension of a ``tl.dot`` must be at least 16 on the GPU, so tiles never shrink below that. The warp
    counts keep the sm_90 builds free of register spills (``benchmarks/compile_report.py``): 64 batch rows need
    8 warps, 32 or fewer fit in 4, and float64 (gradcheck only) fits with 16 rows.
    """
    block_b = min(16 if dtype == torch.float64 else 64, max(16, triton.next_power_of_2(batch)))
    return {
        "BLOCK_B": block_b,
        "BLOCK_H": min(32, max(4, triton.next_power_of_2(hidden))),
        "BLOCK_K": min(64, max(16, triton.next_power_of_2(reduce))),
        "num_warps": 8 if block_b == 64 else 4,
    }


def _check_config(config: dict) -> dict:
    if config["BLOCK_B"] < 16 or 4 * config["BLOCK_H"] < 16 or config["BLOCK_K"] < 16:
        raise ValueError(f"tl.dot needs every tile dimension >= 16, got {config}")
    return config


def lstm_layer_forward(
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, H]
    c0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [4H, I]
    w_hh: torch.Tensor,  # [4H, H]
    b_ih: torch.Tensor | None,  # [4H]
    b_hh: torch.Tensor | None,  # [4H]
    reverse: bool = False,
    store_for_backward: bool = True,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run one LSTM layer in one direction on the Triton step kernel.

    Returns ``(y [T, B, H], h_n [B, H], c_n [B, H], gates [T, B, G] | None, cs [T, B, H] | None)``. ``y``, ``h_n``
    and ``c_n`` have the input's dtype. ``gates`` (activated, interleaved, input dtype) and ``cs`` (every c_t, in
    the accumulator dtype) are what :func:`lstm_layer_backward` needs; they are ``None`` unless
    ``store_for_backward``. ``reverse`` processes time from T-1 down to 0 (the reverse direction).
    """
    T, B, I = x.shape
    H = w_hh.shape[1]
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
    w_t = interleave_gates(w_hh).t().contiguous()  # [H, G]

    y = torch.empty(T, B, H, device=x.device, dtype=dtype)
    cs = torch.empty(T if store_for_backward else 2, B, H, device=x.device, dtype=acc)
    h0 = h0.contiguous()
    c0 = c0.to(acc).contiguous()
    cfg = _check_config(config or step_config(B, H, H, dtype))
    if B > 0:
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))
        steps = range(T - 1, -1, -1) if reverse else range(T)
        h_prev, c_prev = h0, c0
        for n, t in enumerate(steps):
            c_out = cs[t] if store_for_backward else cs[n % 2]
            _lstm_fwd_step_kernel[grid](
                gx[t], w_t, h_prev, c_prev, y[t], c_out,
                B, H,
                gx.stride(1), h_prev.stride(0), c_prev.stride(0), y.stride(1), c_out.stride(0),
                BLOCK_B=cfg["BLOCK_B"], BLOCK_H=cfg["BLOCK_H"], BLOCK_K=cfg["BLOCK_K"],
                STORE_GATES=store_for_backward, ACC_DTYPE=_TL_DTYPE[acc],
                INPUT_PRECISION=_input_precision(dtype), num_warps=cfg["num_warps"],
            )  # fmt: skip
            h_prev, c_prev = y[t], c_out
        h_n, c_n = h_prev.clone(), c_prev.to(dtype, copy=True)
    else:
        h_n, c_n = h0.clone(), c0.to(dtype, copy=True)
    if not store_for_backward:
        return y, h_n, c_n, None, None
    return y, h_n, c_n, gx, cs


def lstm_layer_backward(
    dy: torch.Tensor | None,  # [T, B, H]
    dh_n: torch.Tensor | None,  # [B, H]
    dc_n: torch.Tensor | None,  # [B, H]
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, H]
    c0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [4H, I]
    w_hh: torch.Tensor,  # [4H, H]
    y: torch.Tensor,  # [T, B, H]   forward output
    gates: torch.Tensor,  # [T, B, G]   activated gates from the forward
    cs: torch.Tensor,  # [T, B, H]   every c_t from the forward
    reverse: bool = False,
    needs: tuple[bool, bool, bool, bool, bool, bool] = (True,) * 6,
    config: dict | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of one layer and direction: ``(dx, dh0, dc0, dw_ih, dw_hh, db)``.

    ``dy``, ``dh_n`` and ``dc_n`` may each be ``None`` (treated as zeros). ``needs`` says which of the six
    gradients to compute; the others come back as ``None``. ``db`` is the gradient of ``b_ih`` and of ``b_hh``
    alike. Reductions over time and batch are GEMMs or ``torch.sum``: deterministic, no atomics.
    """
    need_dx, need_dh0, need_dc0, need_dw_ih, need_dw_hh, need_db = needs
    T, B, I = x.shape
    H = w_hh.shape[1]
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    w_r = interleave_gates(w_hh).contiguous()  # [G, H]
    c0 = c0.to(acc).contiguous()
    dy = dy.contiguous() if dy is not None else None
    dh_n = dh_n.contiguous() if dh_n is not None else None
    dc = dc_n.to(acc, copy=True).contiguous() if dc_n is not None else torch.zeros(B, H, device=x.device, dtype=acc)
    dg = torch.empty(T, B, 4 * H, device=x.device, dtype=dtype)
    cfg = _check_config(config or step_config(B, H, 4 * H, dtype))

    # processing order of the backward: the forward's, reversed. `prev` of step t is the step before it in the
    # forward (t-1 forward, t+1 reverse); `first` is the time index the forward started at.
    steps = range(T) if reverse else range(T - 1, -1, -1)
    delta, first = (1, T - 1) if reverse else (-1, 0)
    if B > 0:
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), triton.cdiv(H, cfg["BLOCK_H"]))
        for n, t in enumerate(steps):
            c_prev = c0 if t == first else cs[t + delta]
            dg_next = dg[t - delta] if n > 0 else dg[t]  # not read on the first step
            dy_t = dy[t] if dy is not None else y[t]  # not read without dy
            dhn = dh_n if dh_n is not None else dc  # not read without dh_n
            _lstm_bwd_step_kernel[grid](
                dg_next, w_r, dy_t, dhn, gates[t], cs[t], c_prev, dc, dg[t],
                B, H,
                dg_next.stride(0), dy_t.stride(0), dhn.stride(0), gates.stride(1), cs.stride(1),
                c_prev.stride(0), dc.stride(0), dg.stride(1),
                BLOCK_B=cfg["BLOCK_B"], BLOCK_H=cfg["BLOCK_H"], BLOCK_K=cfg["BLOCK_K"],
                HAS_NEXT=n > 0, HAS_DY=dy is not None, HAS_DHN=(n == 0 and dh_n is not None),
                ACC_DTYPE=_TL_DTYPE[acc], INPUT_PRECISION=_input_precision(dtype), num_warps=cfg["num_warps"],
            )  # fmt: skip
    else:
        dg.zero_()

    dg2 = dg.view(T * B, 4 * H)
    dx = dh0 = dc0 = dw_ih = dw_hh = db = None
    if need_dh0:
        dh0 = torch.mm(dg[first], w_r)
    if need_dc0:
        dc0 = dc.to(dtype)
    if need_dx:
        dx = torch.mm(dg2, interleave_gates(w_ih)).view(T, B, I)
    if need_dw_ih:
        dw_ih = deinterleave_gates(torch.mm(dg2.t(), x.reshape(T * B, I)))
    if need_dw_hh:
        # h_{t-1} of every step is the output of its forward predecessor, h0 for the first
        if reverse:
            dg_rest, h_rest = dg[:-1], y[1:]
        else:
            dg_rest, h_rest = dg[1:], y[:-1]
        dw_hh = torch.mm(dg[first].t(), h0)
        if T > 1:
            dw_hh = torch.addmm(dw_hh, dg_rest.reshape(-1, 4 * H).t(), h_rest.reshape(-1, H))
        dw_hh = deinterleave_gates(dw_hh)
    if need_db:
        db = deinterleave_gates(dg2.sum(0, dtype=acc)).to(dtype)
    return dx, dh0, dc0, dw_ih, dw_hh, db
