"""Property-based comparison with torch.nn.LSTM: random configurations, every output and every gradient.

Each example builds an nn.LSTM in float64 (the oracle) and a tritonlstm.LSTM on the Triton kernels holding the
same weights, runs both on the same input (and initial state, when drawn), and compares output, h_n, c_n and
the gradients of the input, of h0/c0 and of every parameter with the tolerance of the drawn dtype.
The hypothesis profile (25 examples, no deadline, derandomized) comes from conftest.py; some tests set their own
max_examples. Under TRITON_INTERPRET=1, where the kernels run in Triton's interpreter, each test draws half its
examples (the same first ones: the draws are derandomized). Also covered: LSTMP (proj_size), padded batches
with `lengths=` and PackedSequence input (both against nn.LSTM on the packed batch), and LSTMCell against
nn.LSTMCell over several carried steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import tritonlstm
from tests.helpers import DEVICE, INTERPRETER, assert_close, compare_with_nn_lstm, make_pair, weighted_loss

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _examples(n: int) -> int:
    """Examples per test: half under the interpreter (CI's time; the plain leg draws them all)."""
    return n // 2 if INTERPRETER else n


def _proj_sizes(hidden: int):
    """proj_size: 0 (no projection) or, when hidden_size >= 2, any LSTMP size 1..hidden_size-1."""
    return st.just(0) if hidden < 2 else st.one_of(st.just(0), st.integers(1, hidden - 1))


def _state_sizes(config) -> tuple[int, int]:
    """(size of h, size of c): h has proj_size when there is a projection, c always hidden_size."""
    hidden = config["hidden_size"]
    return (config.get("proj_size") or hidden), hidden


def _draw_config(draw, max_input: int, max_hidden: int) -> dict:
    """nn.LSTM constructor arguments: every option, sizes up to the given bounds."""
    hidden = draw(st.integers(1, max_hidden), label="hidden_size")
    return {
        "input_size": draw(st.integers(1, max_input), label="input_size"),
        "hidden_size": hidden,
        "num_layers": draw(st.integers(1, 3), label="num_layers"),
        "bias": draw(st.booleans(), label="bias"),
        "batch_first": draw(st.booleans(), label="batch_first"),
        "bidirectional": draw(st.booleans(), label="bidirectional"),
        "proj_size": draw(_proj_sizes(hidden), label="proj_size"),
    }


@st.composite
def lstm_cases(draw):
    """A module configuration plus the shapes of one call: batched or unbatched, with or without hx."""
    config = _draw_config(draw, max_input=12, max_hidden=24)
    batched = draw(st.booleans(), label="batched")
    batch = draw(st.integers(0, 4), label="batch") if batched else None
    seq_len = draw(st.integers(1, 5), label="seq_len")
    with_hx = draw(st.booleans(), label="with_hx")
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    return config, batch, seq_len, with_hx, dtype


def _inputs(config, batch, seq_len, with_hx):
    """x of shape (T, B, I) / (B, T, I) / unbatched (T, I); h0 of shape (L*D, B, R) / unbatched (L*D, R) with
    R = proj_size or hidden_size, c0 of shape (L*D, B, H) / unbatched (L*D, H)."""
    num_states = config["num_layers"] * (2 if config["bidirectional"] else 1)
    h_size, c_size = _state_sizes(config)
    kw = {"dtype": torch.float64, "device": DEVICE}
    if batch is None:
        x = torch.randn(seq_len, config["input_size"], **kw)
        lead = (num_states,)
    else:
        shape = (batch, seq_len) if config["batch_first"] else (seq_len, batch)
        x = torch.randn(*shape, config["input_size"], **kw)
        lead = (num_states, batch)
    hx = (torch.randn(*lead, h_size, **kw), torch.randn(*lead, c_size, **kw)) if with_hx else None
    return x, hx


@settings(max_examples=_examples(25))
@given(case=lstm_cases())
def test_matches_nn_lstm(case):
    config, batch, seq_len, with_hx, dtype = case
    ref, ours = make_pair(dtype=dtype, backend="auto", **config)
    x, hx = _inputs(config, batch, seq_len, with_hx)
    # compare_with_nn_lstm is shape-agnostic: it passes x/hx straight to both modules, so it covers the
    # unbatched (T, I) / (L*D, H) call as well; it asserts every output and every gradient is present and close
    compare_with_nn_lstm(ref, ours, x, hx, dtype=dtype)


LOSS_TERMS = ("output", "h_n", "c_n")


def _kind(grad):
    return "None" if grad is None else f"a {tuple(grad.shape)} tensor"


@settings(max_examples=_examples(25))
@given(case=lstm_cases(), data=st.data())
def test_partial_requires_grad_and_inference(case, data):
    """Only some leaves require grad and the loss reaches only some outputs (so the backward gets None for the
    others); which gradients exist and their values must match nn.LSTM's. A no-grad forward must match too."""
    config, batch, seq_len, with_hx, dtype = case
    ref, ours = make_pair(dtype=dtype, backend="auto", **config)
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
        weights = {k: torch.randn(outs[k].shape, generator=g, dtype=torch.float64).to(outs[k].device) for k in terms}
        loss = sum((outs[k].to(torch.float64) * weights[k]).sum()
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


# ----------------------------------------------------------------------------------------------------------
# Variable-length batches: ours with `lengths=` on a padded batch, and both modules on the same PackedSequence.
# The oracle is always nn.LSTM on the packed batch (in float64).


@dataclass(frozen=True)
class VarlenCase:
    """A module configuration, a padded batch's T and per-sequence lengths (B = len(lengths)), and the call."""

    config: dict
    seq_len: int
    lengths: tuple[int, ...]
    with_hx: bool
    dtype: torch.dtype
    enforce_sorted: bool = False  # only for the PackedSequence test: lengths are then sorted descending
    lengths_dtype: torch.dtype = torch.int64  # the dtype of the `lengths=` tensor handed to ours


@st.composite
def varlen_cases(draw, sorted_option: bool = False):
    config = _draw_config(draw, max_input=8, max_hidden=16)
    seq_len = draw(st.integers(1, 6), label="T")
    batch = draw(st.integers(1, 5), label="B")
    lengths = draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch), label="lengths")
    enforce_sorted = sorted_option and draw(st.booleans(), label="enforce_sorted")
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    return VarlenCase(
        config=config,
        seq_len=seq_len,
        lengths=tuple(lengths),
        with_hx=draw(st.booleans(), label="with_hx"),
        dtype=DTYPES[draw(st.sampled_from(sorted(DTYPES)), label="dtype")],
        enforce_sorted=enforce_sorted,
        lengths_dtype=draw(st.sampled_from([torch.int64, torch.int32]), label="lengths dtype"),
    )


def _varlen_inputs(case: VarlenCase):
    """Padded x and hx in float64 holding values exactly representable in case.dtype (so the oracle sees what
    ours gets). x is random past each length too: those values must not reach any result."""
    x, hx = _inputs(case.config, len(case.lengths), case.seq_len, case.with_hx)
    x = x.to(case.dtype).to(torch.float64)
    hx = None if hx is None else tuple(t.to(case.dtype).to(torch.float64) for t in hx)
    return x, hx


def _leaves(x, hx, dtype):
    x = x.to(dtype, copy=True).requires_grad_(True)
    hx = None if hx is None else tuple(t.to(dtype, copy=True).requires_grad_(True) for t in hx)
    return x, hx


def _grads(module, x, hx):
    out = {"grad_input": x.grad}
    if hx is not None:
        out["grad_h0"], out["grad_c0"] = hx[0].grad, hx[1].grad
    out.update({f"grad_{name}": p.grad for name, p in module.named_parameters()})
    return out


def _assert_all_close(actual: dict, expected: dict, dtype):
    assert actual.keys() == expected.keys()
    for name, exp in expected.items():
        got = actual[name]
        assert got is not None, f"{name}: no gradient"
        assert exp is not None, f"{name}: nn.LSTM gave no gradient"
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
        assert_close(got, exp, dtype, name)


def _past_length_mask(case: VarlenCase) -> torch.Tensor:
    """Boolean mask of the padded (T, B) / (B, T) positions past each sequence's length."""
    lengths = torch.tensor(case.lengths)
    past = torch.arange(case.seq_len)[:, None] >= lengths[None, :]  # (T, B)
    past = past.t() if case.config["batch_first"] else past
    return past.to(DEVICE)


def _run_nn_lstm_packed(ref, x, hx, case: VarlenCase):
    """nn.LSTM (float64) on the batch packed with enforce_sorted=False, unpacked to padded (total_length=T)."""
    bf = case.config["batch_first"]
    x, hx = _leaves(x, hx, torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(case.lengths), batch_first=bf, enforce_sorted=False)
    out, (h, c) = ref(packed, hx)
    y, _ = pad_packed_sequence(out, batch_first=bf, total_length=case.seq_len)
    ref.zero_grad(set_to_none=True)
    weighted_loss(y, h, c).backward()
    return {"output": y.detach(), "h_n": h.detach(), "c_n": c.detach(), **_grads(ref, x, hx)}


# fixed edge cases that always run besides the drawn ones: unsorted lengths all shorter than T (the padded
# output's tail rows are all zero) under a bidirectional LSTMP with hx; and every length equal to T
@example(
    case=VarlenCase(
        config=dict(input_size=3, hidden_size=5, num_layers=2, bias=True, batch_first=True, bidirectional=True,
                    proj_size=2),
        seq_len=5, lengths=(2, 4, 1), with_hx=True, dtype=torch.float32, lengths_dtype=torch.int32,
    )
)
@example(
    case=VarlenCase(
        config=dict(input_size=2, hidden_size=4, num_layers=1, bias=False, batch_first=False, bidirectional=True,
                    proj_size=0),
        seq_len=3, lengths=(3, 3), with_hx=False, dtype=torch.float64,
    )
)
@settings(max_examples=_examples(30))
@given(case=varlen_cases())
def test_lengths_match_packed_nn_lstm(case: VarlenCase):
    """Ours on the padded batch with `lengths=` gives nn.LSTM's numbers for the same batch packed: padded output
    (zero past each length), h_n/c_n at each sequence's own last step, and every gradient."""
    dtype = case.dtype
    ref, ours = make_pair(dtype=dtype, backend="auto", **case.config)
    x, hx = _varlen_inputs(case)
    expected = _run_nn_lstm_packed(ref, x, hx, case)

    xi, hi = _leaves(x, hx, dtype)
    y, (h, c) = ours(xi, hi, lengths=torch.tensor(case.lengths, dtype=case.lengths_dtype))
    ours.zero_grad(set_to_none=True)
    weighted_loss(y, h, c).backward()
    actual = {"output": y.detach(), "h_n": h.detach(), "c_n": c.detach(), **_grads(ours, xi, hi)}
    _assert_all_close(actual, expected, dtype)

    past = _past_length_mask(case)
    for name, result in (("nn.LSTM", expected), ("ours", actual)):
        assert (result["output"][past] == 0).all(), f"{name}: output not zero past a sequence's length"
        assert (result["grad_input"][past] == 0).all(), f"{name}: input gradient not zero past a sequence's length"


# fixed edge case: enforce_sorted=False with unsorted lengths and hx given (nn.LSTM permutes hx into the
# sorted order and h_n/c_n back; ours keeps the caller's order throughout)
@example(
    case=VarlenCase(
        config=dict(input_size=2, hidden_size=6, num_layers=2, bias=True, batch_first=False, bidirectional=True,
                    proj_size=3),
        seq_len=4, lengths=(1, 4, 2, 4), with_hx=True, dtype=torch.float64, enforce_sorted=False,
    )
)
@settings(max_examples=_examples(30))
@given(case=varlen_cases(sorted_option=True))
def test_packed_matches_nn_lstm(case: VarlenCase):
    """Both modules on the same PackedSequence (enforce_sorted drawn; sorted lengths when True): packed output,
    its batch_sizes/sorted_indices/unsorted_indices, h_n, c_n (in the caller's batch order) and every gradient."""
    dtype = case.dtype
    bf = case.config["batch_first"]
    ref, ours = make_pair(dtype=dtype, backend="auto", **case.config)
    x, hx = _varlen_inputs(case)

    def run(module, dt):
        xi, hi = _leaves(x, hx, dt)
        lengths = torch.tensor(case.lengths)
        packed = pack_padded_sequence(xi, lengths, batch_first=bf, enforce_sorted=case.enforce_sorted)
        out, (h, c) = module(packed, hi)
        assert isinstance(out, PackedSequence), f"{type(module).__name__}: output is {type(out).__name__}"
        module.zero_grad(set_to_none=True)
        weighted_loss(out.data, h, c).backward()
        result = {"output.data": out.data.detach(), "h_n": h.detach(), "c_n": c.detach(), **_grads(module, xi, hi)}
        return out, result

    ref_out, expected = run(ref, torch.float64)
    our_out, actual = run(ours, dtype)
    assert torch.equal(our_out.batch_sizes, ref_out.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        exp, got = getattr(ref_out, name), getattr(our_out, name)
        assert (got is None) == (exp is None), f"{name}: nn.LSTM's is {exp}, ours is {got}"
        if exp is not None:
            assert torch.equal(got, exp), f"{name}: {got} != {exp}"
    _assert_all_close(actual, expected, dtype)


# ----------------------------------------------------------------------------------------------------------
# LSTMCell


@st.composite
def cell_cases(draw):
    config = {
        "input_size": draw(st.integers(1, 12), label="input_size"),
        "hidden_size": draw(st.integers(1, 24), label="hidden_size"),
        "bias": draw(st.booleans(), label="bias"),
    }
    batched = draw(st.booleans(), label="batched")
    batch = draw(st.integers(0, 4), label="batch") if batched else None
    steps = draw(st.integers(1, 4), label="steps")
    with_hx = draw(st.booleans(), label="with_hx")
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    return config, batch, steps, with_hx, dtype


@example(case=({"input_size": 3, "hidden_size": 5, "bias": True}, 0, 2, True, torch.float32))  # empty batch
@example(case=({"input_size": 1, "hidden_size": 1, "bias": False}, None, 3, False, torch.float64))  # unbatched
@settings(max_examples=_examples(40))
@given(case=cell_cases())
def test_lstm_cell_matches(case):
    """tritonlstm.LSTMCell against nn.LSTMCell over several steps with the state carried step to step
    (h, c = cell(x_t, (h, c))): every step's h, the final h and c, and the gradients of the inputs, h0/c0 and
    every parameter (the loss reaches every step's h and the final c)."""
    config, batch, steps, with_hx, dtype = case
    ref = torch.nn.LSTMCell(**config).to(device=DEVICE, dtype=torch.float64)
    ours = tritonlstm.LSTMCell(**config, backend="auto").to(device=DEVICE, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # the oracle sees exactly the weights ours rounded to dtype

    kw = {"dtype": torch.float64, "device": DEVICE}
    lead = () if batch is None else (batch,)
    xs = torch.randn(steps, *lead, config["input_size"], **kw).to(dtype).to(torch.float64)
    hx = None
    if with_hx:
        hx = tuple(torch.randn(*lead, config["hidden_size"], **kw).to(dtype).to(torch.float64) for _ in range(2))

    def run(module, dt):
        xi, hi = _leaves(xs, hx, dt)
        state, hs = hi, []
        for t in range(steps):
            state = module(xi[t]) if state is None else module(xi[t], state)
            assert isinstance(state, tuple) and len(state) == 2
            hs.append(state[0])
        h, c = state
        module.zero_grad(set_to_none=True)
        weighted_loss(torch.stack(hs), h, c).backward()
        return {"h_steps": torch.stack(hs).detach(), "h": h.detach(), "c": c.detach(), **_grads(module, xi, hi)}

    expected, actual = run(ref, torch.float64), run(ours, dtype)
    assert actual["h"].shape == (*lead, config["hidden_size"])
    _assert_all_close(actual, expected, dtype)
