"""Functional LSTM and GRU: one layer and direction (:func:`lstm_layer`, :func:`gru_layer`), and the multi-layer
drivers (:func:`lstm`, :func:`gru`).

Every layer goes through a custom op of :mod:`tritonlstm.ops`, ``torch.ops.tritonlstm.layer_forward`` (the GRU's:
``gru_forward``), whose registered autograd runs ``layer_backward`` (``gru_backward``); the op picks the Triton
kernels or the reference loop behind it. The one exception is ``torch.onnx.export`` with the dynamo exporter, which
has no translation for our ops: there each layer is written as the ONNX graph itself (:mod:`tritonlstm.onnx_graph`:
the native ``LSTM`` or ``GRU`` operator, or a ``Loop`` where that cannot express the layer). :func:`lstm` mirrors
``torch._VF.lstm`` (what ``torch.nn.LSTM.forward`` calls) and :func:`gru` ``torch._VF.gru``: they take the flat
parameter list in ``_flat_weights_names`` order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tritonlstm import onnx_graph, ops, reference


def _exporting_with_dynamo() -> bool:
    # torch.onnx.export(dynamo=True); the TorchScript exporter (dynamo=False) traces the op and uses its symbolic
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def _layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, backend, h_mask=None, zoneout=(0.0, 0.0),
           zoneout_seed=None):  # fmt: skip
    """One layer, parameters stacked over its D directions: ``(y [T,B,D*R], h_n [D,B,R], c_n [D,B,H])``."""
    if _exporting_with_dynamo():
        if h_mask is not None or zoneout_seed is not None:
            raise RuntimeError(onnx_graph.TRAINING_EXPORT)
        return onnx_graph.layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, zoneout=zoneout)
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, h_n, c_n, _, _ = ops.layer_forward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, need_grad, backend, h_mask, float(zoneout[0]),
        float(zoneout[1]), zoneout_seed,
    )  # fmt: skip
    return y, h_n, c_n


def check_probability(name: str, p) -> float:
    """A regulariser's probability as a float in [0, 1), else a ValueError naming the option."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def zoneout_pair(zoneout) -> tuple[float, float]:
    """``zoneout`` as ``(p_h, p_c)``: a float for both, or a pair; each checked to lie in [0, 1)."""
    if isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(f"zoneout must be a probability or a pair (p_h, p_c), got {zoneout!r}")
        return check_probability("zoneout (p_h)", zoneout[0]), check_probability("zoneout (p_c)", zoneout[1])
    p = check_probability("zoneout", zoneout)
    return p, p


def dropout_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(1 - p) / (1 - p) of ``shape``, ``like``'s dtype and device, from torch's RNG (F.dropout's scaling)."""
    return torch.bernoulli(torch.full(shape, 1 - p, dtype=like.dtype, device=like.device)).div_(1 - p)


def _one(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.unsqueeze(0) if t is not None else None


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
    *,
    h_mask: torch.Tensor | None = None,
    zoneout: float | tuple[float, float] = 0.0,
    zoneout_seed: torch.Tensor | None = None,
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
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see :mod:`tritonlstm.dispatch`).
        h_mask: ``[B, R]`` recurrent dropout mask multiplying h_{t-1} in the recurrent product at every step
            (not differentiated), or ``None``.
        zoneout: ``p`` or ``(p_h, p_c)``; with ``zoneout_seed`` (int64 ``[1]``, e.g.
            :func:`tritonlstm.reference.draw_zoneout_seed`) the training form, masks drawn from the seed; without
            it the expectation ``p * previous + (1 - p) * new``.

    Returns:
        ``(y [T, B, R], h_n [B, R], c_n [B, H])`` in the input's dtype.
    """
    y, h_n, c_n = _layer(
        x, _one(h0), _one(c0), _one(w_ih), _one(w_hh), _one(b_ih), _one(b_hh), _one(w_hr), lengths, reverse, backend,
        _one(h_mask), zoneout_pair(zoneout), zoneout_seed,
    )  # fmt: skip
    return y, h_n[0], c_n[0]


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
    reverse: bool = False,
    *,
    recurrent_dropout: float = 0.0,
    input_dropout: float = 0.0,
    zoneout: float | tuple[float, float] = 0.0,
    weight_drop: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-layer, optionally bidirectional LSTM with ``torch._VF.lstm``'s arguments.

    Args:
        input: ``[T, B, I]`` (``[B, T, I]`` if ``batch_first``).
        hx: ``(h0, c0)``: ``[num_layers * num_directions, B, R]`` and ``[..., B, H]``.
        params: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``, in ``torch.nn.LSTM._flat_weights``
            order; a projection is recognised, as ``_VF.lstm`` does, by the number of tensors per layer.
        dropout, train: dropout on the outputs of every layer but the last, when ``train``.
        lengths: ``[B]`` sequence lengths of a padded batch (validated by the caller), or ``None``.
        reverse: run every layer from the last step to the first (one direction only).
        recurrent_dropout, input_dropout, zoneout, weight_drop: the regularisers of :class:`tritonlstm.LSTM`
            (probabilities in [0, 1)). With ``train``, each layer draws, in this order and from torch's RNG on the
            input's device: the input mask ``[B, I]``, the weight-drop mask of ``W_hh``, the recurrent mask
            ``[D, B, R]``, the zoneout seed. Without ``train`` all but zoneout are the identity, and zoneout takes
            its expectation.

    Returns:
        ``(output, h_n, c_n)`` exactly as ``torch.nn.LSTM`` returns them for a padded (or packed) batch.
    """
    zoneout = zoneout_pair(zoneout)
    output, states = _stack(
        "lstm", input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first, backend, lengths,
        reverse, recurrent_dropout, input_dropout, zoneout, weight_drop,
    )  # fmt: skip
    return output, *states


def _stack(cell, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first, backend,
           lengths, reverse, recurrent_dropout, input_dropout, zoneout, weight_drop):  # fmt: skip
    """The layers of :func:`lstm` or :func:`gru` (``cell``) one after another: ``(output, final states)``, the
    states one tensor per kind (h_n, c_n for the LSTM; h_n for the GRU) over every layer and direction."""
    D = 2 if bidirectional else 1
    per_layer = len(params) // (num_layers * D)
    has_proj = cell == "lstm" and per_layer == (5 if has_biases else 3)
    recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
    input_dropout = check_probability("input_dropout", input_dropout)
    weight_drop = check_probability("weight_drop", weight_drop)
    if train and (recurrent_dropout or input_dropout or weight_drop or any(zoneout)) and _exporting_with_dynamo():
        raise RuntimeError(onnx_graph.TRAINING_EXPORT)
    x = input.transpose(0, 1) if batch_first else input
    B = x.shape[1]
    finals = [[] for _ in hx]
    for layer in range(num_layers):
        w = [params[(layer * D + d) * per_layer : (layer * D + d + 1) * per_layer] for d in range(D)]

        def stacked(k: int) -> torch.Tensor:
            return w[0][k].unsqueeze(0) if D == 1 else torch.stack([wd[k] for wd in w])

        b_ih, b_hh = (stacked(2), stacked(3)) if has_biases else (None, None)
        states = slice(layer * D, (layer + 1) * D)
        w_hh, h_mask, seed = stacked(1), None, None
        if train:
            if input_dropout > 0:
                x = x * dropout_mask((B, x.shape[2]), input_dropout, x)  # one mask per sequence, shared over time
            if weight_drop > 0:
                w_hh = F.dropout(w_hh, p=weight_drop, training=True)
            if recurrent_dropout > 0:
                h_mask = dropout_mask((D, B, w_hh.shape[2]), recurrent_dropout, x)
            if any(zoneout):
                seed = reference.draw_zoneout_seed(x.device)
        regularisers = {}
        if any(zoneout) or h_mask is not None:
            regularisers = {"h_mask": h_mask, "zoneout": zoneout, "zoneout_seed": seed}
        if cell == "lstm":
            w_hr = stacked(per_layer - 1) if has_proj else None
            x, *out = _layer(
                x, hx[0][states], hx[1][states], stacked(0), w_hh, b_ih, b_hh, w_hr, lengths, reverse, backend,
                **regularisers,
            )  # fmt: skip
        else:
            x, *out = _gru_layer(
                x, hx[0][states], stacked(0), w_hh, b_ih, b_hh, lengths, reverse, backend, **regularisers
            )
        for kind, state in zip(finals, out):
            kind.append(state)
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    output = x.transpose(0, 1) if batch_first else x
    return output, [torch.cat(kind) for kind in finals]


def _gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, backend, h_mask=None, zoneout=(0.0, 0.0),
               zoneout_seed=None):  # fmt: skip
    """One GRU layer, parameters stacked over its D directions: ``(y [T,B,D*H], h_n [D,B,H])``."""
    if _exporting_with_dynamo():
        if h_mask is not None or zoneout_seed is not None:
            raise RuntimeError(onnx_graph.TRAINING_EXPORT)
        return onnx_graph.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, zoneout=zoneout[0])
    tensors = (x, h0, w_ih, w_hh, b_ih, b_hh)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, h_n, _ = ops.gru_forward(
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, need_grad, backend, h_mask, float(zoneout[0]), zoneout_seed
    )
    return y, h_n


def gru_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
    *,
    h_mask: torch.Tensor | None = None,
    zoneout: float = 0.0,
    zoneout_seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU layer in one direction: :func:`lstm_layer`'s arguments without ``c0`` and ``w_hr``.

    ``w_ih``/``w_hh`` are ``[3H, I]``/``[3H, H]`` and the biases ``[3H]``, gates in torch.nn.GRU's order (r, z, n);
    ``zoneout`` is one probability, for h. Returns ``(y [T, B, H], h_n [B, H])`` in the input's dtype.
    """
    y, h_n = _gru_layer(
        x, _one(h0), _one(w_ih), _one(w_hh), _one(b_ih), _one(b_hh), lengths, reverse, backend, _one(h_mask),
        (check_probability("zoneout", zoneout), 0.0), zoneout_seed,
    )  # fmt: skip
    return y, h_n[0]


def gru(
    input: torch.Tensor,
    hx: torch.Tensor,
    params: Sequence[torch.Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    backend: str = "auto",
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    *,
    recurrent_dropout: float = 0.0,
    input_dropout: float = 0.0,
    zoneout: float = 0.0,
    weight_drop: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-layer, optionally bidirectional GRU with ``torch._VF.gru``'s arguments: :func:`lstm`'s, with one
    state ``hx [num_layers * num_directions, B, H]`` and ``zoneout`` one probability (for h).

    Returns ``(output, h_n)`` exactly as ``torch.nn.GRU`` returns them for a padded (or packed) batch.
    """
    output, (h_n,) = _stack(
        "gru", input, (hx,), params, has_biases, num_layers, dropout, train, bidirectional, batch_first, backend,
        lengths, reverse, recurrent_dropout, input_dropout, (check_probability("zoneout", zoneout), 0.0), weight_drop,
    )  # fmt: skip
    return output, h_n


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
