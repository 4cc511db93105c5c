"""tritonlstm.LSTM against torch.nn.LSTM: outputs, final states, every gradient, parameters and state_dict."""

from __future__ import annotations

import pytest
import torch

import tritonlstm
from tests.helpers import (
    CPU_DTYPES,
    DEVICE,
    TRITON_DEVICE,
    assert_close,
    compare_with_nn_lstm,
    make_pair,
    requires_triton,
    run_and_grad,
    weighted_loss,
)
from tritonlstm.dispatch import resolve_backend

CONFIGS = [
    pytest.param(dict(input_size=4, hidden_size=5), id="L1-I4-H5"),
    pytest.param(dict(input_size=7, hidden_size=33, num_layers=2, bidirectional=True, batch_first=True), id="L2-bi-bf-I7-H33"),
    pytest.param(dict(input_size=3, hidden_size=8, num_layers=3, bias=False), id="L3-nobias-I3-H8"),
    pytest.param(dict(input_size=6, hidden_size=6, num_layers=2, bidirectional=True, bias=False, batch_first=True), id="L2-bi-bf-nobias-H6"),
    pytest.param(dict(input_size=17, hidden_size=100, bidirectional=True), id="L1-bi-I17-H100"),
    pytest.param(dict(input_size=5, hidden_size=4, num_layers=3, bidirectional=True), id="L3-bi-I5-H4"),
    pytest.param(dict(input_size=5, hidden_size=9, proj_size=4, num_layers=2, bidirectional=True, batch_first=True), id="L2-bi-bf-H9-P4"),
    pytest.param(dict(input_size=3, hidden_size=6, proj_size=2, bias=False), id="L1-nobias-H6-P2"),
]


def _input(cfg, T, B, dtype=torch.float64):
    shape = (B, T, cfg["input_size"]) if cfg.get("batch_first") else (T, B, cfg["input_size"])
    return torch.randn(shape, device=DEVICE, dtype=dtype)


def _hx(cfg, B, dtype=torch.float64):
    layers = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    batch = (B,) if B is not None else ()
    h_size = cfg.get("proj_size") or cfg["hidden_size"]
    return (
        torch.randn(layers, *batch, h_size, device=DEVICE, dtype=dtype),
        torch.randn(layers, *batch, cfg["hidden_size"], device=DEVICE, dtype=dtype),
    )


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_nn_lstm(cfg, with_hx, dtype):
    ref, ours = make_pair(dtype, **cfg)
    compare_with_nn_lstm(ref, ours, _input(cfg, 5, 3), _hx(cfg, 3) if with_hx else None, dtype)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize(
    "T, B", [pytest.param(1, 1, id="T1-B1"), pytest.param(1, 4, id="T1-B4"), pytest.param(6, 1, id="T6-B1"), pytest.param(4, 0, id="T4-B0")]
)
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[2], CONFIGS[7]])
def test_edge_shapes(cfg, T, B, backend):
    ref, ours = make_pair(torch.float32, backend=backend, **cfg)
    compare_with_nn_lstm(ref, ours, _input(cfg, T, B), _hx(cfg, B), torch.float32)


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[5], CONFIGS[6]])
def test_unbatched(cfg, with_hx):
    ref, ours = make_pair(torch.float64, **cfg)
    x = torch.randn(4, cfg["input_size"], device=DEVICE, dtype=torch.float64)
    hx = _hx(cfg, None) if with_hx else None
    expected, actual = run_and_grad(ref, x, hx), run_and_grad(ours, x, hx)
    out_size = cfg.get("proj_size") or cfg["hidden_size"]
    assert actual["output"].shape == (4, out_size * (2 if cfg.get("bidirectional") else 1))
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)


@pytest.mark.parametrize("which", ["output", "h_n", "c_n"])
def test_gradient_through_one_output_only(which):
    """Autograd hands None for unused outputs; the backward treats them as zeros."""
    cfg = dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True)
    ref, ours = make_pair(torch.float64, **cfg)
    x = _input(cfg, 4, 2)
    grads = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        y, (h, c) = m(xi)
        out = {"output": y, "h_n": h, "c_n": c}[which]
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for e, a in zip(*grads):
        assert_close(a, e, torch.float64, which)


def test_frozen_parameters_and_input_without_grad():
    """Only what needs a gradient gets one (needs_input_grad is honoured)."""
    cfg = dict(input_size=3, hidden_size=5, num_layers=2)
    ref, ours = make_pair(torch.float64, **cfg)
    for m in (ref, ours):
        m.weight_ih_l0.requires_grad_(False)
        m.bias_hh_l1.requires_grad_(False)
    h0 = torch.randn(2, 2, 5, dtype=torch.float64, device=DEVICE)
    x = _input(cfg, 3, 2)
    results = []
    for m in (ref, ours):
        c0 = torch.zeros_like(h0).requires_grad_()
        y, (h, c) = m(x, (h0, c0))
        (y.sum() + c.sum()).backward()
        assert m.weight_ih_l0.grad is None and m.bias_hh_l1.grad is None
        results.append([c0.grad] + [p.grad for p in m.parameters() if p.requires_grad])
    for e, a in zip(*results):
        assert_close(a, e, torch.float64, "grad")


def test_no_grad_forward_matches_training_forward():
    ref, ours = make_pair(torch.float32, input_size=4, hidden_size=7, num_layers=2, bidirectional=True)
    x = _input(dict(input_size=4), 5, 3, torch.float32)
    y, (h, c) = ours(x)
    with torch.no_grad():
        y2, (h2, c2) = ours(x)
    assert torch.equal(y, y2) and torch.equal(h, h2) and torch.equal(c, c2)
    assert y.requires_grad and not y2.requires_grad


def test_deterministic_bitwise():
    """Same inputs, same outputs and gradients to the bit: no atomics anywhere."""
    cfg = dict(input_size=5, hidden_size=9, num_layers=2, bidirectional=True, batch_first=True)
    _, ours = make_pair(torch.float32, **cfg)
    x, hx = _input(cfg, 6, 4, torch.float32), _hx(cfg, 4, torch.float32)
    first, second = run_and_grad(ours, x, hx), run_and_grad(ours, x, hx)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_parameters_init_and_state_dict_match_nn_lstm():
    kwargs = dict(input_size=6, hidden_size=10, num_layers=2, bidirectional=True, bias=True)
    torch.manual_seed(3)
    ref = torch.nn.LSTM(**kwargs)
    torch.manual_seed(3)
    ours = tritonlstm.LSTM(**kwargs)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    for (_, a), (_, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert torch.equal(a, b), "same seed must give the same initialisation as nn.LSTM"
    bound = 1 / 10**0.5
    assert all(p.abs().max() <= bound for p in ours.parameters())
    assert ours._flat_weights_names == ref._flat_weights_names
    # state_dict both ways
    other = torch.nn.LSTM(**kwargs)
    other.load_state_dict(ours.state_dict())
    ours2 = tritonlstm.LSTM(**kwargs)
    ours2.load_state_dict(other.state_dict())
    for (_, a), (_, b) in zip(ours.state_dict().items(), ours2.state_dict().items()):
        assert torch.equal(a, b)
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_module_conversions_keep_working():
    ours = tritonlstm.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    ours.float()
    ours.flatten_parameters()  # drop-in: exists, does nothing
    assert all(p.dtype == torch.float32 for p in ours._flat_weights)
    y, (h, c) = ours(torch.randn(2, 1, 3))
    assert y.dtype == h.dtype == c.dtype == torch.float32
    assert repr(ours) == "LSTM(3, 4, num_layers=2)"
    assert repr(tritonlstm.LSTM(3, 4, backend="reference")) == "LSTM(3, 4, backend='reference')"


def test_return_structure_matches_nn_lstm():
    cfg = dict(input_size=3, hidden_size=4, batch_first=True)
    ref, ours = make_pair(torch.float32, **cfg)
    x = _input(cfg, 5, 2, torch.float32)
    r, o = ref.float()(x), ours(x)
    assert type(r) is type(o) and type(r[1]) is type(o[1]) and len(o) == 2 and len(o[1]) == 2
    assert o[0].shape == r[0].shape and o[1][0].shape == r[1][0].shape and o[1][1].shape == r[1][1].shape


def test_dropout_between_layers():
    cfg = dict(input_size=4, hidden_size=8, num_layers=3, dropout=0.5)
    x = _input(cfg, 5, 3, torch.float64)
    ref, ours = make_pair(torch.float64, **cfg)
    # eval: dropout off, exactly nn.LSTM
    ref.eval(), ours.eval()
    assert_close(ours(x)[0], ref(x)[0], torch.float64, "eval output")
    # train: same masks as the reference backend for the same seed (both draw them with F.dropout)
    ours.train()
    reference = tritonlstm.LSTM(**cfg, backend="reference", dtype=torch.float64, device=DEVICE)  # same RNG device
    reference.load_state_dict(ours.state_dict())
    torch.manual_seed(7)
    a = run_and_grad(ours, x)
    torch.manual_seed(7)
    b = run_and_grad(reference, x)
    for name in a:
        assert_close(a[name], b[name], torch.float64, name)
    torch.manual_seed(8)
    c = run_and_grad(ours, x)
    assert not torch.equal(a["output"], c["output"]), "dropout must change with the seed in training"
    ours.eval()
    assert not torch.equal(ours(x)[0], a["output"])


def test_backend_choice():
    expected = "triton" if TRITON_DEVICE == DEVICE else "reference"
    assert resolve_backend("auto", torch.device(DEVICE), torch.float32) == expected
    assert resolve_backend("reference", torch.device(DEVICE), torch.float32) == "reference"
    assert tritonlstm.LSTM(2, 3).backend == "auto"


def test_reference_backend_matches_nn_lstm():
    cfg = dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, batch_first=True)
    ref, ours = make_pair(torch.float64, backend="reference", **cfg)
    compare_with_nn_lstm(ref, ours, _input(cfg, 4, 3), _hx(cfg, 3), torch.float64)


def test_never_calls_aten_lstm(monkeypatch):
    """No backend may hand the work to cuDNN's or ATen's LSTM."""

    def boom(*args, **kwargs):
        raise AssertionError("torch._VF.lstm was called")

    monkeypatch.setattr(torch._VF, "lstm", boom)
    with pytest.raises(AssertionError, match="_VF.lstm was called"):
        torch.nn.LSTM(2, 3)(torch.randn(2, 1, 2))  # the patch is effective
    for backend in ("triton", "reference") if TRITON_DEVICE else ("reference",):
        m = tritonlstm.LSTM(2, 3, num_layers=2, bidirectional=True, backend=backend).to(DEVICE)
        y, _ = m(torch.randn(3, 2, 2, device=DEVICE, requires_grad=True))
        y.sum().backward()


# ------------------------------------------------------------------ variable lengths: PackedSequence and lengths=

LENGTH_CONFIGS = [
    pytest.param(dict(input_size=4, hidden_size=6), id="L1-H6"),
    pytest.param(dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, batch_first=True), id="L2-bi-bf-H5"),
    pytest.param(dict(input_size=4, hidden_size=7, proj_size=3, num_layers=2, bidirectional=True, bias=False), id="L2-bi-nobias-H7-P3"),
]


def _varlen_batch(cfg, T, lengths):
    B = len(lengths)
    x = _input(cfg, T, B)
    return x, _hx(cfg, B), torch.tensor(lengths)


def _grads_of(module, fn, x, hx):
    """Run fn(module, x, hx) -> (output, h_n, c_n); weighted loss; outputs and every gradient."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(t.detach().clone().requires_grad_() for t in hx)
    module.zero_grad(set_to_none=True)
    y, h, c = fn(module, x, hx)
    weighted_loss(y, h, c).backward()
    out = {"output": y.detach(), "h_n": h.detach(), "c_n": c.detach(), "grad_input": x.grad,
           "grad_h0": hx[0].grad, "grad_c0": hx[1].grad}  # fmt: skip
    out.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("cfg", LENGTH_CONFIGS)
def test_lengths_match_packed_nn_lstm(cfg, dtype):
    """lengths= on a padded batch gives nn.LSTM's packed numbers: output (zero-padded), final states, gradients."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, bf = 6, cfg.get("batch_first", False)
    x, hx, lengths = _varlen_batch(cfg, T, [3, 6, 1, 4, 6])
    ref, ours = make_pair(dtype, **cfg)

    def packed_ref(m, x, hx):
        out, (h, c) = m(pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), hx)
        return pad_packed_sequence(out, batch_first=bf, total_length=T)[0], h, c

    def with_lengths(m, x, hx):
        y, (h, c) = m(x, hx, lengths=lengths)
        return y, h, c

    expected = _grads_of(ref, packed_ref, x, hx)
    actual = _grads_of(ours, with_lengths, x.to(dtype), tuple(t.to(dtype) for t in hx))
    for name in expected:
        assert_close(actual[name], expected[name], dtype, name)
    past_end = torch.arange(T)[None, :] >= lengths[:, None]  # [B, T]
    if not bf:
        past_end = past_end.t()
    assert torch.all(actual["output"][past_end] == 0), "output must be zero past each length"
    assert torch.all(actual["grad_input"][past_end] == 0), "padding gets no gradient"


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("cfg", LENGTH_CONFIGS)
def test_packed_sequence_matches_nn_lstm(cfg, enforce_sorted):
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    T, bf = 5, cfg.get("batch_first", False)
    lens = [5, 4, 4, 2, 1] if enforce_sorted else [2, 5, 1, 4, 4]
    x, hx, lengths = _varlen_batch(cfg, T, lens)
    ref, ours = make_pair(torch.float64, **cfg)
    meta = {}

    def packed(m, x, hx):
        out, (h, c) = m(pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=enforce_sorted), hx)
        assert isinstance(out, PackedSequence)
        meta[m is ours] = (out.batch_sizes, out.sorted_indices, out.unsorted_indices)
        return out.data, h, c

    expected, actual = _grads_of(ref, packed, x, hx), _grads_of(ours, packed, x, hx)
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)
    for a, e in zip(meta[True], meta[False]):
        assert (a is None and e is None) or torch.equal(a, e)


def test_lengths_on_tensor_list_and_full_length():
    """lengths may be a list or a CPU tensor; all lengths == T equals no lengths, bitwise."""
    cfg = dict(input_size=3, hidden_size=5, bidirectional=True)
    _, ours = make_pair(torch.float32, **cfg)
    x = _input(cfg, 4, 3, torch.float32)
    y, (h, c) = ours(x)
    for lengths in ([4, 4, 4], torch.tensor([4, 4, 4], dtype=torch.int32)):
        y2, (h2, c2) = ours(x, lengths=lengths)
        assert torch.equal(y, y2) and torch.equal(h, h2) and torch.equal(c, c2)


# ------------------------------------------------------------------ LSTMCell


def _cell_pair(dtype, **kwargs):
    ref = torch.nn.LSTMCell(**kwargs).to(device=DEVICE, dtype=torch.float64)
    ours = tritonlstm.LSTMCell(**kwargs, backend="auto").to(device=DEVICE, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    return ref, ours


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", [3, None], ids=["B3", "unbatched"])
def test_lstm_cell_matches_nn_lstm_cell(batch, bias, dtype):
    """Three steps with the state carried, as a decoder runs: final state and every gradient."""
    ref, ours = _cell_pair(dtype, input_size=5, hidden_size=7, bias=bias)
    b = (batch,) if batch else ()
    xs = torch.randn(3, *b, 5, device=DEVICE, dtype=torch.float64)
    hx = (torch.randn(*b, 7, device=DEVICE, dtype=torch.float64), torch.randn(*b, 7, device=DEVICE, dtype=torch.float64))
    results = []
    for m, dt in ((ref, torch.float64), (ours, dtype)):
        x = xs.to(dt).detach().clone().requires_grad_()
        h0, c0 = (t.to(dt).detach().clone().requires_grad_() for t in hx)
        h, c = h0, c0
        for step in range(3):
            h, c = m(x[step], (h, c))
        weighted_loss(h, c, x[0]).backward()
        results.append([h.detach(), c.detach(), x.grad, h0.grad, c0.grad] + [p.grad for p in m.parameters()])
    for i, (e, a) in enumerate(zip(*results)):
        assert a.dtype == dtype
        assert_close(a, e.to(torch.float64), dtype, f"cell result {i}")


def test_lstm_cell_without_hx_and_module_parity():
    torch.manual_seed(5)
    ref = torch.nn.LSTMCell(4, 6)
    torch.manual_seed(5)
    ours = tritonlstm.LSTMCell(4, 6)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b), "same seed must give nn.LSTMCell's initialisation"
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref) == "LSTMCell(4, 6)"
    x = torch.randn(2, 4, device=DEVICE)
    for a, b in zip(ref.to(DEVICE)(x), ours.to(DEVICE)(x)):
        assert_close(b, a, torch.float32, "no-hx step")
