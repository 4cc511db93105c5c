"""Property-based comparison with torch.nn.LSTM: random configurations, every output and every gradient.

Each example builds an nn.LSTM in float64 (the oracle) and a tritonlstm.LSTM on the Triton kernels holding the
same weights, runs both on the same input (and initial state, when drawn), and compares output, h_n, c_n and
the gradients of the input, of h0/c0 and of every parameter with the tolerance of the drawn dtype.
The hypothesis profile (25 examples, no deadline, derandomized) comes from conftest.py.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import DEVICE, assert_close, compare_with_nn_lstm, make_pair

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@st.composite
def lstm_cases(draw):
    """A module configuration plus the shapes of one call: batched or unbatched, with or without hx."""
    config = {
        "input_size": draw(st.integers(1, 12), label="input_size"),
        "hidden_size": draw(st.integers(1, 24), label="hidden_size"),
        "num_layers": draw(st.integers(1, 3), label="num_layers"),
        "bias": draw(st.booleans(), label="bias"),
        "batch_first": draw(st.booleans(), label="batch_first"),
        "bidirectional": draw(st.booleans(), label="bidirectional"),
    }
    batched = draw(st.booleans(), label="batched")
    batch = draw(st.integers(0, 4), label="batch") if batched else None
    seq_len = draw(st.integers(1, 5), label="seq_len")
    with_hx = draw(st.booleans(), label="with_hx")
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    return config, batch, seq_len, with_hx, dtype


def _inputs(config, batch, seq_len, with_hx):
    """x of shape (T, B, I) / (B, T, I) / unbatched (T, I), and hx of shape (L*D, B, H) / unbatched (L*D, H)."""
    num_states = config["num_layers"] * (2 if config["bidirectional"] else 1)
    hidden = config["hidden_size"]
    kw = {"dtype": torch.float64, "device": DEVICE}
    if batch is None:
        x = torch.randn(seq_len, config["input_size"], **kw)
        state_shape = (num_states, hidden)
    else:
        shape = (batch, seq_len) if config["batch_first"] else (seq_len, batch)
        x = torch.randn(*shape, config["input_size"], **kw)
        state_shape = (num_states, batch, hidden)
    hx = (torch.randn(state_shape, **kw), torch.randn(state_shape, **kw)) if with_hx else None
    return x, hx


@given(case=lstm_cases())
def test_matches_nn_lstm(case):
    config, batch, seq_len, with_hx, dtype = case
    ref, ours = make_pair(dtype=dtype, backend="triton", **config)
    x, hx = _inputs(config, batch, seq_len, with_hx)
    # compare_with_nn_lstm is shape-agnostic: it passes x/hx straight to both modules, so it covers the
    # unbatched (T, I) / (L*D, H) call as well; it asserts every output and every gradient is present and close
    compare_with_nn_lstm(ref, ours, x, hx, dtype=dtype)


LOSS_TERMS = ("output", "h_n", "c_n")


def _kind(grad):
    return "None" if grad is None else f"a {tuple(grad.shape)} tensor"


@given(case=lstm_cases(), data=st.data())
def test_partial_requires_grad_and_inference(case, data):
    """Only some leaves require grad and the loss reaches only some outputs (so the backward gets None for the
    others); which gradients exist and their values must match nn.LSTM's. A no-grad forward must match too."""
    config, batch, seq_len, with_hx, dtype = case
    ref, ours = make_pair(dtype=dtype, backend="triton", **config)
    x, hx = _inputs(config, batch, seq_len, with_hx)
    x = x.to(dtype)
    hx = None if hx is None else tuple(t.to(dtype) for t in hx)

    x_grad = data.draw(st.booleans(), label="input requires_grad")
    hx_grad = with_hx and data.draw(st.booleans(), label="hx requires_grad")
    names = [name for name, _ in ref.named_parameters()]
    frozen = data.draw(st.sets(st.sampled_from(names)), label="frozen parameters")
    terms = data.draw(st.sets(st.sampled_from(LOSS_TERMS), min_size=1), label="loss terms")
    for module in (ref, ours):
        for name, p in module.named_parameters():
            p.requires_grad_(name not in frozen)

    def run(module, dt):
        xi = x.to(dt, copy=True).requires_grad_(x_grad)
        hi = None if hx is None else tuple(t.to(dt, copy=True).requires_grad_(hx_grad) for t in hx)
        y, (h, c) = module(xi, hi)
        outs = dict(zip(LOSS_TERMS, (y, h, c)))
        g = torch.Generator().manual_seed(2)
        loss = sum((outs[k].to(torch.float64) * torch.randn(outs[k].shape, generator=g, dtype=torch.float64)).sum()
                   for k in sorted(terms))
        if loss.requires_grad:  # nothing requires grad (every leaf drawn frozen): forward only
            loss.backward()
        grads = {"grad_input": xi.grad}
        if hi is not None:
            grads["grad_h0"], grads["grad_c0"] = hi[0].grad, hi[1].grad
        grads.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
        return outs, loss.requires_grad, grads

    expected, ref_needs_grad, expected_grads = run(ref, torch.float64)
    actual, our_needs_grad, actual_grads = run(ours, dtype)
    assert our_needs_grad == ref_needs_grad
    for name in LOSS_TERMS:
        assert_close(actual[name].detach(), expected[name].detach(), dtype, name)
    for name, exp in expected_grads.items():
        got = actual_grads[name]
        assert (got is None) == (exp is None), f"{name}: nn.LSTM's is {_kind(exp)}, ours is {_kind(got)}"
        if exp is not None:
            assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
            assert_close(got, exp, dtype, name)

    # inference: the kernels' no-grad path (nothing stored for a backward) gives the same outputs
    with torch.no_grad():
        y, (h, c) = ours(x, hx)
    for name, got in zip(LOSS_TERMS, (y, h, c)):
        assert not got.requires_grad
        assert_close(got, expected[name].detach(), dtype, f"no_grad {name}")
