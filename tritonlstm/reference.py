"""Plain PyTorch LSTM step loop: the readable oracle beside the Triton kernels.

It computes what the kernels compute, in the same precision: the input projection of all steps at once,
then per step the recurrent product and the gate maths with the cell state (and every accumulation) in
float32 for float16/bfloat16/float32 inputs and float64 for float64. Autograd differentiates it.
"""

from __future__ import annotations

import torch


def lstm_layer(
    x: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, H]
    c0: torch.Tensor,  # [B, H]
    w_ih: torch.Tensor,  # [4H, I]
    w_hh: torch.Tensor,  # [4H, H]
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer, one direction: ``(y [T, B, H], h_n [B, H], c_n [B, H])`` in the input's dtype."""
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gx = torch.nn.functional.linear(x, w_ih, b_ih)
    if b_hh is not None:
        gx = gx + b_hh
    w_hh_t = w_hh.to(acc).t()
    h, c = h0, c0.to(acc)
    ys: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        gates = gx[t].to(acc) + h.to(acc) @ w_hh_t
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)).to(dtype)
        ys[t] = h
    return torch.stack(ys), h, c.to(dtype)
