"""Functional LSTM: one layer and direction (:func:`lstm_layer`), and the multi-layer driver.

On the Triton backend a layer is the custom op ``torch.ops.tritonlstm.layer_forward`` (:mod:`tritonlstm.ops`),
whose registered autograd runs ``layer_backward``. :func:`lstm` mirrors ``torch._VF.lstm`` (what ``torch.nn.LSTM.forward`` calls): it takes the flat parameter
list in ``_flat_weights_names`` order and runs every layer and direction through the chosen backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tritonlstm import ops, reference
from tritonlstm.backend import resolve_backend


def lstm_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer in one direction.

    Args:
        x: ``[T, B, I]`` time-major input.
        h0: ``[B, R]`` initial hidden state (R = P with a projection, else H); c0: ``[B, H]`` initial cell state.
        w_ih, w_hh: ``[4H, I]`` and ``[4H, R]``, gates in torch.nn.LSTM's order (i, f, g, o).
        b_ih, b_hh: ``[4H]`` biases, or both ``None``.
        w_hr: ``[P, H]`` projection (``proj_size > 0``), or ``None``.
        lengths: ``[B]`` integer sequence lengths (1 <= len <= T, validated by the caller), or ``None``: a row
            stops updating past its length, its output is zero there, and ``h_n``/``c_n`` are its last step's.
        reverse: process time from the last step to the first (the reverse direction of a bidirectional LSTM);
            with ``lengths`` each row starts at its own last step.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see :mod:`tritonlstm.backend`).

    Returns:
        ``(y [T, B, R], h_n [B, R], c_n [B, H])`` in the input's dtype.
    """
    if resolve_backend(backend, x.device, x.dtype) == "reference":
        return reference.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, h_n, c_n, _, _ = ops.layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, need_grad)
    return y, h_n, c_n


def lstm(
    input: torch.Tensor,
    hx: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    backend: str = "auto",
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-layer, optionally bidirectional LSTM with ``torch._VF.lstm``'s arguments.

    Args:
        input: ``[T, B, I]`` (``[B, T, I]`` if ``batch_first``).
        hx: ``(h0, c0)``: ``[num_layers * num_directions, B, R]`` and ``[..., B, H]``.
        params: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``, in ``torch.nn.LSTM._flat_weights``
            order; a projection is recognised, as ``_VF.lstm`` does, by the number of tensors per layer.
        dropout, train: dropout on the outputs of every layer but the last, when ``train``.
        lengths: ``[B]`` sequence lengths of a padded batch (validated by the caller), or ``None``.

    Returns:
        ``(output, h_n, c_n)`` exactly as ``torch.nn.LSTM`` returns them for a padded (or packed) batch.
    """
    num_directions = 2 if bidirectional else 1
    per_layer = len(params) // (num_layers * num_directions)
    has_proj = per_layer == (5 if has_biases else 3)
    x = input.transpose(0, 1) if batch_first else input
    h_n, c_n = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            idx = layer * num_directions + direction
            w = params[idx * per_layer : (idx + 1) * per_layer]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            w_hr = w[-1] if has_proj else None
            y, h, c = lstm_layer(
                x, hx[0][idx], hx[1][idx], w[0], w[1], b_ih, b_hh, w_hr, lengths, direction == 1, backend
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    output = x.transpose(0, 1) if batch_first else x
    return output, torch.stack(h_n), torch.stack(c_n)


def packed_layout(batch_sizes: torch.Tensor, sorted_indices: torch.Tensor | None, device: torch.device):
    """Where each row of a PackedSequence's data sits in the padded ``[T, B]`` batch, and every sequence's length.

    Returns ``(t_index, b_index, lengths)``: ``data[k]`` is ``padded[t_index[k], b_index[k]]`` and ``lengths[b]``
    the length of the sequence in batch column ``b`` (columns in the caller's original order).
    """
    batch_sizes = batch_sizes.to("cpu", torch.int64)
    T, B = len(batch_sizes), int(batch_sizes[0])
    t_index = torch.repeat_interleave(torch.arange(T), batch_sizes)
    slot = torch.cat([torch.arange(int(n)) for n in batch_sizes])  # position in the sorted batch
    lengths_sorted = (batch_sizes[None, :] > torch.arange(B)[:, None]).sum(1)
    if sorted_indices is None:
        b_index, lengths = slot, lengths_sorted
    else:
        order = sorted_indices.to("cpu", torch.int64)
        b_index = order[slot]
        lengths = torch.empty_like(lengths_sorted).scatter_(0, order, lengths_sorted)
    return t_index.to(device), b_index.to(device), lengths.to(device)
