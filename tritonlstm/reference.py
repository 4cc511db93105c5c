"""Plain PyTorch LSTM step loop: the readable oracle beside the Triton kernels.

It computes what the kernels compute, in the same precision: the input projection of all steps at once,
then per step the recurrent product and the gate maths with the cell state (and every accumulation) in
float32 for float16/bfloat16/float32 inputs and float64 for float64, the optional projection
``h_t = (o * tanh(c_t)) W_hr^T``, and per-row lengths (a row stops updating past its length and outputs
zeros there). Autograd differentiates it.
"""

from __future__ import annotations

import torch


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
    gx = torch.nn.functional.linear(x, w_ih, b_ih)
    if b_hh is not None:
        gx = gx + b_hh
    w_hh_t = w_hh.to(acc).t()
    w_hr_t = w_hr.to(acc).t() if w_hr is not None else None
    lengths = lengths.to(x.device) if lengths is not None else None
    h, c = h0, c0.to(acc)
    ys: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
    for t in range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0]):
        gates = gx[t].to(acc) + h.to(acc) @ w_hh_t
        i, f, g, o = gates.chunk(4, dim=-1)
        c_t = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_t = (torch.sigmoid(o) * torch.tanh(c_t)).to(dtype)
        if w_hr_t is not None:
            h_t = (h_t.to(acc) @ w_hr_t).to(dtype)
        if lengths is None:
            h, c, ys[t] = h_t, c_t, h_t
        else:
            own = (t < lengths)[:, None]
            h, c, ys[t] = torch.where(own, h_t, h), torch.where(own, c_t, c), torch.where(own, h_t, 0)
    return torch.stack(ys), h, c.to(dtype)
