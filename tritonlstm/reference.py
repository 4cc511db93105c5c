"""Plain PyTorch LSTM and GRU step loops: the readable oracles beside the Triton kernels.

It computes what the kernels compute, in the same precision: per step the input projection, the recurrent
product and the gate maths with the cell state (and every accumulation) in float32 for
float16/bfloat16/float32 inputs and float64 for float64, the optional projection
``h_t = (o * tanh(c_t)) W_hr^T``, and per-row lengths (a row stops updating past its length and outputs
zeros there). Autograd differentiates it.

Regularisers: ``h_mask`` (recurrent dropout) multiplies h_{t-1} in the recurrent product only; ``zoneout=(p_h, p_c)``
with ``zoneout_masks`` (a generator, training) lets each element of h and c keep its previous value with
probability p, a fresh draw every processed step; without masks (eval) it takes the expectation
``p * previous + (1 - p) * new``. Rows past their length keep their state either way.

:func:`gru_layer` is the same loop for torch.nn.GRU's cell (no cell state, no projection; zoneout on h alone).
"""

from __future__ import annotations

import torch


ZONEOUT_SEED_HIGH = 2**62
"""Zoneout seeds are drawn uniformly from [0, ZONEOUT_SEED_HIGH) (int64)."""


def draw_zoneout_seed(device: torch.device) -> torch.Tensor:
    """A fresh zoneout seed, ``[1]`` int64 on ``device``, from torch's RNG (``torch.manual_seed`` reproduces it;
    on CUDA it comes from the graph-safe Philox state, so each CUDA-graph replay draws a new one)."""
    return torch.randint(ZONEOUT_SEED_HIGH, (1,), device=device, dtype=torch.int64)


def zoneout_masks(seed: torch.Tensor, direction: int, p_h: float, p_c: float) -> torch.Generator:
    """The reference's zoneout stream for one direction: a generator seeded from ``seed`` (and the direction).

    :func:`lstm_layer` draws from it, at every processed step, ``rand(B, R) < p_h`` (h keeps its previous value)
    when ``p_h > 0``, then ``rand(B, H) < p_c`` when ``p_c > 0``, in the accumulator dtype, on the seed's device.
    Forward and backward build the same generator, so the VJP sees the forward's masks.
    """
    g = torch.Generator(device=seed.device)
    g.manual_seed((int(seed.reshape(-1)[0]) + 1_000_003 * direction) % ZONEOUT_SEED_HIGH)
    return g


def lstm_layer(
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, R]
    c0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [4H, I]
    w_hh: torch.Tensor,  # [4H, R]
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    w_hr: torch.Tensor | None = None,  # [P, H]
    lengths: torch.Tensor | None = None,  # [B]
    reverse: bool = False,
    h_mask: torch.Tensor | None = None,  # [B, R] recurrent dropout mask
    zoneout: tuple[float, float] = (0.0, 0.0),  # (p_h, p_c)
    zoneout_masks: torch.Generator | None = None,  # training: the stream of zoneout_masks(); None: expectation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer, one direction: ``(y [T, B, R], h_n [B, R], c_n [B, H])`` in the input's dtype."""
    if torch.compiler.is_compiling():
        # only the custom op may stand for a layer in a traced graph: tracing this loop would unroll it, fixing T
        raise RuntimeError(
            "tritonlstm: the reference step loop is being traced by torch.compile/torch.export/torch.onnx; that "
            "would unroll the time loop with the sequence length fixed. Call the layer through tritonlstm.LSTM, "
            "tritonlstm.lstm or tritonlstm.lstm_layer (the torch.library op) instead"
        )
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w_hh_t = w_hh.to(acc).t()
    w_hr_t = w_hr.to(acc).t() if w_hr is not None else None
    lengths = lengths.to(x.device) if lengths is not None else None
    h_mask = h_mask.to(acc) if h_mask is not None else None
    p_h, p_c = zoneout
    h, c = h0.clone(), c0.to(acc)
    ys: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
    for t in range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0]):
        # the input projection step by step, not one GEMM over T: a BLAS picks its kernel by the row count, so
        # one GEMM would round differently for another T, and a sequence fed in chunks must give the whole
        # sequence's numbers bit for bit. Fresh copies of x_t and h0 for the same reason: some BLAS kernels round
        # by the operand's address alignment, and a chunk's x_t or a carried state is often a view at any offset
        gx = torch.nn.functional.linear(x[t].clone(), w_ih, b_ih)
        if b_hh is not None:
            gx = gx + b_hh
        h_in = h.to(acc) if h_mask is None else h.to(acc) * h_mask
        gates = gx.to(acc) + h_in @ w_hh_t
        i, f, g, o = gates.chunk(4, dim=-1)
        c_t = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_t = (torch.sigmoid(o) * torch.tanh(c_t)).to(dtype)
        if w_hr_t is not None:
            h_t = (h_t.to(acc) @ w_hr_t).to(dtype)
        if p_h > 0 or p_c > 0:
            h_t, c_t = _zoneout(h, c, h_t, c_t, p_h, p_c, zoneout_masks, acc)
        if lengths is None:
            h, c, ys[t] = h_t, c_t, h_t
        else:
            own = (t < lengths)[:, None]
            h, c, ys[t] = torch.where(own, h_t, h), torch.where(own, c_t, c), torch.where(own, h_t, 0)
    return torch.stack(ys), h, c.to(dtype)


def _zoneout(h, c, h_t, c_t, p_h, p_c, masks, acc):
    """Zoned (h_t, c_t): in training the previous value where a mask drawn from ``masks`` says keep, else the
    expectation ``p * previous + (1 - p) * new``."""
    if masks is None:
        if p_h > 0:
            h_t = (p_h * h.to(acc) + (1 - p_h) * h_t.to(acc)).to(h_t.dtype)
        if p_c > 0:
            c_t = p_c * c + (1 - p_c) * c_t
        return h_t, c_t
    if p_h > 0:
        keep = torch.rand(h.shape, generator=masks, device=masks.device, dtype=acc) < p_h
        h_t = torch.where(keep.to(h_t.device), h, h_t)
    if p_c > 0:
        keep = torch.rand(c.shape, generator=masks, device=masks.device, dtype=acc) < p_c
        c_t = torch.where(keep.to(c_t.device), c, c_t)
    return h_t, c_t


def gru_layer(
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [3H, I]  gates r, z, n
    w_hh: torch.Tensor,  # [3H, H]
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    lengths: torch.Tensor | None = None,  # [B]
    reverse: bool = False,
    h_mask: torch.Tensor | None = None,  # [B, H] recurrent dropout mask
    zoneout: float = 0.0,  # p_h
    zoneout_masks: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU layer, one direction: ``(y [T, B, H], h_n [B, H])`` in the input's dtype.

    torch.nn.GRU's maths, with the recurrent product ``gh = (h_{t-1} * h_mask) W_hh^T + b_hh`` (the mask, if any,
    on the product only)::

        r = sigmoid(gx_r + gh_r)    z = sigmoid(gx_z + gh_z)    n = tanh(gx_n + r * gh_n)
        h_t = (1 - z) * n + z * h_{t-1}

    accumulated in float32 (float64 for float64); h_t is rounded to the input's dtype every step, as the kernels
    store it. Zoneout, lengths and the masks' stream as in :func:`lstm_layer` (one draw of ``rand(B, H) < p`` per
    processed step).
    """
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "tritonlstm: the reference GRU step loop is being traced by torch.compile/torch.export/torch.onnx; "
            "that would unroll the time loop with the sequence length fixed. Call the layer through "
            "tritonlstm.GRU or tritonlstm.gru_layer (the torch.library op) instead"
        )
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w_hh_t = w_hh.to(acc).t()
    b_hh = b_hh.to(acc) if b_hh is not None else None
    lengths = lengths.to(x.device) if lengths is not None else None
    h_mask = h_mask.to(acc) if h_mask is not None else None
    h = h0.clone()
    ys: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
    for t in range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0]):
        gx = torch.nn.functional.linear(x[t].clone(), w_ih, b_ih).to(acc)  # step by step: see lstm_layer
        h_prev = h.to(acc)
        gh = (h_prev if h_mask is None else h_prev * h_mask) @ w_hh_t
        if b_hh is not None:
            gh = gh + b_hh
        gx_r, gx_z, gx_n = gx.chunk(3, dim=-1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
        h_t = (1 - z) * n + z * h_prev
        if zoneout > 0:
            h_t, _ = _zoneout(h_prev, None, h_t, None, zoneout, 0.0, zoneout_masks, acc)
        h_t = h_t.to(dtype)
        if lengths is None:
            h, ys[t] = h_t, h_t
        else:
            own = (t < lengths)[:, None]
            h, ys[t] = torch.where(own, h_t, h), torch.where(own, h_t, 0)
    return torch.stack(ys), h
