"""float64 gradcheck of the op (each implementation behind it) and of the whole module (Jacobians, not just vs nn.LSTM)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import tritonlstm
from tests.helpers import BACKENDS, DEVICE, gradcheck_flat
from tritonlstm.functional import lstm_layer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse, bias", [(False, True), (True, False)], ids=["fwd-bias", "rev-nobias"])
def test_gradcheck_layer(reverse, bias, backend):
    T, B, I, H = 3, 2, 3, 4

    def leaf(*shape):
        return (torch.randn(*shape, dtype=torch.float64, device=DEVICE) * 0.5).requires_grad_()

    args = [leaf(T, B, I), leaf(B, H), leaf(B, H), leaf(4 * H, I), leaf(4 * H, H)]
    args += [leaf(4 * H), leaf(4 * H)] if bias else [None, None]

    def f(*a):
        return lstm_layer(*a, reverse=reverse, backend=backend)

    # the full Jacobian for the reference; a random projection of it for the kernels (each forward is slow in the
    # interpreter)
    assert gradcheck_flat(f, args, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_module_two_layers_bidirectional(backend):
    m = tritonlstm.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, backend=backend, dtype=torch.float64)
    m.to(DEVICE)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    x = torch.randn(2, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def f(x, h0, c0, *ps):
        y, (h, c) = functional_call(m, dict(zip(names, ps)), (x, (h0, c0)))
        return y, h, c

    assert gradcheck_flat(f, (x, h0, c0, *params))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_layer_projection_and_lengths(reverse, backend):
    T, B, I, H, P = 3, 3, 2, 4, 2

    def leaf(*shape):
        return (torch.randn(*shape, dtype=torch.float64, device=DEVICE) * 0.5).requires_grad_()

    args = (leaf(T, B, I), leaf(B, P), leaf(B, H), leaf(4 * H, I), leaf(4 * H, P), leaf(4 * H), leaf(4 * H), leaf(P, H))
    lengths = torch.tensor([3, 1, 2], device=DEVICE)

    def f(*a):
        return lstm_layer(*a, lengths=lengths, reverse=reverse, backend=backend)

    assert gradcheck_flat(f, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_lstm_cell(backend):
    cell = tritonlstm.LSTMCell(3, 4, backend=backend, dtype=torch.float64).to(DEVICE)
    names = [n for n, _ in cell.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in cell.parameters())
    x = torch.randn(2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def f(x, h, c, *ps):
        return functional_call(cell, dict(zip(names, ps)), (x, (h, c)))

    assert gradcheck_flat(f, (x, h, c, *params), fast_mode=backend == "triton")
