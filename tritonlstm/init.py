"""Initialisers for LSTM and GRU modules. :func:`keras_` gives a module the weights a Keras 3 ``LSTM`` (``GRU``)
starts from.

Shapes (torch layout, gates i, f, g, o in blocks of H rows): ``W_ih [4H, I]``, ``W_hh [4H, R]``, ``b_ih, b_hh
[4H]``, ``W_hr [P, H]``; R = P with a projection (``proj_size = P > 0``), else H. Keras stores the transposes,
``kernel [I, 4H]`` and ``recurrent_kernel [R, 4H]``, in the same gate order (it names g "c"). A GRU has 3H rows
(r, z, n; Keras orders them z, r, h) and no projection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["keras_"]


@torch.no_grad()
def keras_(module: nn.Module, unit_forget_bias: bool = True, *, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise an LSTM (GRU) module in place as Keras 3 initialises ``keras.layers.LSTM`` (``GRU``); returns it.

    For every layer and direction:

    - ``W_ih`` (Keras ``kernel``): glorot-uniform over the whole ``[4H, I]`` matrix, ``U(-a, a)`` with
      ``a = sqrt(6 / (I + 4H))`` (Keras's fans for its ``[I, 4H]`` kernel: fan_in I, fan_out 4H).
    - ``W_hh`` (Keras ``recurrent_kernel``): orthogonal as ``keras.initializers.Orthogonal`` makes the
      ``[R, 4H]`` recurrent kernel: the QR factor of a standard normal matrix, signs fixed by ``diag(r)``, so
      the whole matrix (not each gate block) has orthonormal rows in Keras's layout, that is
      ``W_hh^T W_hh = I_R`` in torch's ``[4H, R]`` layout.
    - biases zero, except the forget gate's ``H`` entries of ``b_ih``, which are 1 with ``unit_forget_bias``
      (``b_hh`` stays zero, so ``b_ih + b_hh`` is Keras's single bias).
    - ``W_hr`` (``proj_size > 0``; Keras's LSTM has no projection): glorot-uniform over ``[P, H]``, what Keras
      gives a ``Dense(P, use_bias=False)`` kernel ``[H, P]`` applied to the cell output.
    - a GRU the same way over its ``[3H, I]`` and ``[3H, H]`` matrices, every bias zero (``keras.layers.GRU``
      has no forget gate, so ``unit_forget_bias`` does not apply).

    Works on ``tritonlstm.LSTM``, ``LSTMCell``, ``GRU``, ``GRUCell`` and their ``torch.nn`` counterparts. The
    numbers are drawn on the CPU in float64 from torch's default generator (or ``generator``), per layer and
    direction in ``W_ih, W_hh, W_hr`` order, then copied into the parameters, which keep their device and
    dtype: ``torch.manual_seed(s)`` reproduces them on every device.

    Args:
        module: the LSTM or LSTM cell to initialise.
        unit_forget_bias: set the forget-gate bias to 1 (Keras's default), else all biases are zero.
        generator: a CPU ``torch.Generator`` to draw from instead of the default one.

    Returns:
        ``module``, initialised.

    Example::

        >>> lstm = tritonlstm.init.keras_(tritonlstm.LSTM(32, 64, num_layers=2, batch_first=True))
        >>> w = lstm.weight_hh_l1
        >>> torch.allclose(w.T @ w, torch.eye(64), atol=1e-5)
        True
    """
    for w_ih, w_hh, b_ih, b_hh, w_hr in _parameters(module):
        _glorot_uniform_(w_ih, generator)
        _orthogonal_(w_hh, generator)
        if w_hr is not None:
            _glorot_uniform_(w_hr, generator)
        for b in (b_ih, b_hh):
            if b is not None:
                b.zero_()
        if unit_forget_bias and b_ih is not None and _is_lstm(module):
            H = b_ih.shape[0] // 4
            b_ih[H : 2 * H] = 1.0
    return module


def _parameters(module: nn.Module):
    """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` of every layer and direction (absent ones ``None``)."""
    if isinstance(module, nn.RNNBase):
        if module.mode not in ("LSTM", "GRU"):
            raise TypeError(
                f"keras_ initialises LSTMs and GRUs, got a {type(module).__name__} with mode {module.mode!r}"
            )
        directions = ["", "_reverse"] if module.bidirectional else [""]
        suffixes = [f"_l{layer}{d}" for layer in range(module.num_layers) for d in directions]
    elif isinstance(module, nn.RNNCellBase):
        if module.weight_ih.shape[0] not in (3 * module.hidden_size, 4 * module.hidden_size):
            raise TypeError(f"keras_ initialises LSTM and GRU cells, got a {type(module).__name__} (one gate)")
        suffixes = [""]
    else:
        raise TypeError(
            "keras_ takes tritonlstm.LSTM, LSTMCell, GRU or GRUCell, or their torch.nn counterparts, "
            f"got {type(module).__name__}"
        )
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return [tuple(getattr(module, f"{kind}{sfx}", None) for kind in kinds) for sfx in suffixes]


def _is_lstm(module: nn.Module) -> bool:
    """Four gates (an LSTM or LSTM cell) rather than a GRU's three."""
    if isinstance(module, nn.RNNBase):
        return module.mode == "LSTM"
    return module.weight_ih.shape[0] == 4 * module.hidden_size


def _glorot_uniform_(w: torch.Tensor, generator: torch.Generator | None) -> None:
    # torch's [out, in] is Keras's [in, out] transposed: fan_in + fan_out is the same sum either way
    fan_out, fan_in = w.shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    u = torch.rand(w.shape, generator=generator, dtype=torch.float64, device="cpu")
    w.copy_((2.0 * u - 1.0) * limit)


def _orthogonal_(w: torch.Tensor, generator: torch.Generator | None) -> None:
    # Keras draws a normal matrix of the kernel's shape, made tall, and transposes its Q back when the kernel is
    # wide. Torch's W_hh is Keras's wide [R, 4H] kernel transposed, [4H, R] (tall): Q as it comes.
    rows, cols = w.shape
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64, device="cpu")
    q = _orthonormal_columns(a)
    w.copy_(q if rows >= cols else q.T)


def _orthonormal_columns(a: torch.Tensor) -> torch.Tensor:
    """Q of ``a = QR`` (``a`` tall), columns signed by ``R``'s diagonal, as ``keras.initializers.Orthogonal`` does."""
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))
