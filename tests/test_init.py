"""tritonlstm.init.keras_: Keras 3's LSTM initialisation, checked statistically on every LSTM module kind.

Glorot-uniform W_ih (bounds, a Kolmogorov-Smirnov test against U(-a, a)), orthogonal W_hh over the whole
matrix (W_hh^T W_hh = I, while single gate blocks are not orthogonal), the forget-gate bias, determinism
under a seed, in place on the module's device and dtype. test_keras.py checks the orthogonal construction
against Keras's own initializer and Keras's fresh layers against the same properties.
"""

from __future__ import annotations

import math

import pytest
import torch

import tritonlstm
from tests.helpers import DEVICE, assert_close
from tritonlstm.init import keras_

I, H, P = 24, 16, 5

MODULES = {
    "LSTM-2layers-bidir": lambda **kw: tritonlstm.LSTM(I, H, num_layers=2, bidirectional=True, **kw),
    "LSTM-proj": lambda **kw: tritonlstm.LSTM(I, H, proj_size=P, **kw),
    "LSTM-nobias": lambda **kw: tritonlstm.LSTM(I, H, bias=False, **kw),
    "nn.LSTM-bidir": lambda **kw: torch.nn.LSTM(I, H, bidirectional=True, **kw),
    "LSTMCell": lambda **kw: tritonlstm.LSTMCell(I, H, **kw),
    "nn.LSTMCell": lambda **kw: torch.nn.LSTMCell(I, H, **kw),
}
DTYPES = [torch.float64, torch.float32, torch.float16]


def groups(module):
    """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` per layer and direction, by parameter name."""
    names = dict(module.named_parameters())
    sfxs = sorted({n.removeprefix("weight_ih") for n in names if n.startswith("weight_ih")})
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return [tuple(names.get(k + s) for k in kinds) for s in sfxs]


def build(kind, dtype, seed=0):
    module = MODULES[kind](device=DEVICE, dtype=dtype)
    torch.manual_seed(seed)  # after the constructor, whose own initialisation draws per dtype
    return keras_(module)


def ks_uniform(values: torch.Tensor, limit: float) -> float:
    """Kolmogorov-Smirnov distance between the values and U(-limit, limit)."""
    x = ((values.double().flatten().sort().values + limit) / (2 * limit)).cpu()
    n = x.numel()
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - x
    lower = x - torch.arange(n, dtype=torch.float64) / n
    return max(upper.max().item(), lower.max().item())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", MODULES)
def test_recurrent_kernel_orthogonal_as_a_whole(kind, dtype):
    module = build(kind, dtype)
    for _, w_hh, *_ in groups(module):
        assert w_hh.dtype == dtype and w_hh.device.type == DEVICE
        w = w_hh.detach().double()
        R = w.shape[1]
        assert_close(w.T @ w, torch.eye(R, dtype=torch.float64, device=w.device), dtype, "W_hh^T W_hh")
        # the whole [4H, R] matrix is orthonormal, not each gate's block: a block alone carries about a quarter
        # of each column's norm
        for block in w.chunk(4, dim=0):
            assert (block.T @ block - torch.eye(R, dtype=torch.float64, device=w.device)).abs().max() > 0.2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", MODULES)
def test_input_kernel_glorot_uniform(kind, dtype):
    module = build(kind, dtype)
    pooled = {}
    for w_ih, _, _, _, w_hr in groups(module):
        for w in (w_ih, w_hr):
            if w is None:
                continue
            fan_out, fan_in = w.shape  # Keras's [fan_in, fan_out] kernel, transposed
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max().item() <= limit * (1 + torch.finfo(dtype).eps)
            pooled.setdefault(limit, []).append(w.detach().flatten())
    for limit, values in pooled.items():
        values = torch.cat(values)
        # the KS distance's 0.1% critical value (the seed is fixed, so the test is deterministic; a normal draw
        # of the same variance is over ten times it at these sizes)
        assert ks_uniform(values, limit) < 1.95 / math.sqrt(values.numel()), f"limit {limit}: not uniform"
        assert values.abs().max().item() > 0.95 * limit  # the bound is the glorot limit, not a smaller one


@pytest.mark.parametrize("unit_forget_bias", [True, False])
@pytest.mark.parametrize("kind", MODULES)
def test_biases(kind, unit_forget_bias):
    torch.manual_seed(0)
    module = keras_(MODULES[kind](device=DEVICE, dtype=torch.float64), unit_forget_bias=unit_forget_bias)
    expected = torch.zeros(4 * H, dtype=torch.float64, device=DEVICE)
    if unit_forget_bias:
        expected[H : 2 * H] = 1.0  # Keras's forget gate, second in its i, f, c, o order as in torch's i, f, g, o
    for _, _, b_ih, b_hh, _ in groups(module):
        if "nobias" in kind:
            assert b_ih is None and b_hh is None
        else:
            assert torch.equal(b_ih + b_hh, expected)


def test_seeded_and_in_place():
    module = tritonlstm.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, device=DEVICE)
    params = [p for p in module.parameters()]
    torch.manual_seed(3)
    assert keras_(module) is module
    first = {k: v.clone() for k, v in module.state_dict().items()}
    assert all(a is b for a, b in zip(params, module.parameters()))
    assert all(p.requires_grad and p.grad_fn is None for p in module.parameters())

    torch.manual_seed(3)
    again = {k: v.clone() for k, v in keras_(module).state_dict().items()}
    assert all(torch.equal(first[k], again[k]) for k in first)
    torch.manual_seed(4)
    other = keras_(module).state_dict()
    assert not torch.equal(first["weight_ih_l0"], other["weight_ih_l0"])
    assert not torch.equal(first["weight_hh_l1_reverse"], other["weight_hh_l1_reverse"])

    # an explicit generator gives the same numbers for the same seed and leaves the default one alone
    a = keras_(tritonlstm.LSTM(I, H), generator=torch.Generator().manual_seed(9)).state_dict()
    module = tritonlstm.LSTM(I, H)  # torch's own initialisation draws from the default generator
    state = torch.get_rng_state()
    b = keras_(module, generator=torch.Generator().manual_seed(9)).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_numbers_on_every_device_and_dtype():
    # drawn on the CPU in float64, then cast: the dtype and the device change only the rounding
    ref = build("LSTM-proj", torch.float64, seed=5).state_dict()
    for dtype in (torch.float32, torch.float16):
        got = build("LSTM-proj", dtype, seed=5).state_dict()
        for k in ref:
            assert torch.equal(got[k], ref[k].to(dtype)), k


@pytest.mark.parametrize(
    "module", [torch.nn.RNN(4, 8), torch.nn.RNNCell(4, 8), torch.nn.Linear(4, 8)], ids=["RNN", "RNNCell", "Linear"]
)
def test_refuses_other_modules(module):
    with pytest.raises(TypeError, match="LSTM"):
        keras_(module)


@pytest.mark.parametrize(
    "make", [lambda: tritonlstm.GRU(5, 8, num_layers=2, bidirectional=True), lambda: tritonlstm.GRUCell(5, 8),
             lambda: torch.nn.GRU(5, 8)], ids=["GRU", "GRUCell", "torch-GRU"],
)  # fmt: skip
def test_gru_modules_initialise_as_keras_gru(make):
    """Glorot-uniform W_ih, orthogonal W_hh over the whole [3H, H] matrix, every bias zero (no forget gate)."""
    module = keras_(make())
    for name, p in module.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif name.startswith("weight_hh"):
            torch.testing.assert_close(p.T @ p, torch.eye(8), atol=1e-5, rtol=0)
        else:
            fan_in = 5 if name in ("weight_ih_l0", "weight_ih_l0_reverse", "weight_ih") else 16  # layer 1: 2H in
            limit = math.sqrt(6 / (fan_in + 24))
            assert p.abs().max() <= limit and p.abs().max() > 0.8 * limit, name
