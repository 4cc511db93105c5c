"""tritonlstm.GRU and GRUCell against torch.nn.GRU / GRUCell (float64 oracle): outputs, final states, every
gradient, lengths and packing, errors, parameters, regularisers, compile and export, and the GRU's step kernels
against the reference loop."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import tritonlstm
from tests.helpers import (
    BACKENDS,
    CPU_DTYPES,
    DEVICE,
    INTERPRETER,
    assert_close,
    backend_device,
    gradcheck_flat,
    requires_interpreter,
)

CONFIGS = [
    pytest.param(dict(input_size=4, hidden_size=5), id="L1-I4-H5"),
    pytest.param(dict(input_size=7, hidden_size=33, num_layers=2, bidirectional=True, batch_first=True),
                 id="L2-bi-bf-H33"),  # fmt: skip
    pytest.param(dict(input_size=3, hidden_size=8, num_layers=2, bias=False), id="L2-nobias-H8"),
    pytest.param(dict(input_size=17, hidden_size=40, bidirectional=True), id="L1-bi-I17-H40"),
]


def _pair(dtype=torch.float32, cell=False, backend="auto", **kwargs):
    """An nn.GRU (or GRUCell) in float64, the oracle, and ours in ``dtype`` holding the same (rounded) weights."""
    ref = (torch.nn.GRUCell if cell else torch.nn.GRU)(**kwargs).to(device=DEVICE, dtype=torch.float64)
    ours = (tritonlstm.GRUCell if cell else tritonlstm.GRU)(**kwargs, backend=backend).to(device=DEVICE, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    return ref, ours


def _input(cfg, T, B, dtype=torch.float64):
    shape = (B, T, cfg["input_size"]) if cfg.get("batch_first") else (T, B, cfg["input_size"])
    return torch.randn(shape, device=DEVICE, dtype=dtype)


def _h0(cfg, B, dtype=torch.float64):
    layers = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    return torch.randn(layers, *((B,) if B is not None else ()), cfg["hidden_size"], device=DEVICE, dtype=dtype)


def _grads(module, x, h0=None, call=None, seed=1):
    """Forward, a loss reaching every output element with its own weight, backward: everything by name."""
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_() if h0 is not None else None
    module.zero_grad(set_to_none=True)
    y, h = call(module, x, h0) if call else module(x, h0)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum() for t in (y, h))
    loss.backward()
    out = {"output": y.detach(), "h_n": h.detach(), "grad_input": x.grad}
    if h0 is not None:
        out["grad_h0"] = h0.grad
    out.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return out


def _compare(expected, actual, dtype):
    assert expected.keys() == actual.keys()
    for name in expected:
        assert actual[name] is not None, f"{name}: no gradient"
        assert actual[name].dtype == dtype, f"{name}: dtype {actual[name].dtype}"
        assert_close(actual[name], expected[name], dtype, name)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_nn_gru(cfg, with_hx, dtype):
    if INTERPRETER and not with_hx and cfg != CONFIGS[0].values[0]:
        pytest.skip("the interpreter leg runs the zero initial state on the first configuration (the plain leg on all)")
    ref, ours = _pair(dtype, **cfg)
    x, h0 = _input(cfg, 5, 3), (_h0(cfg, 3) if with_hx else None)
    expected = _grads(ref, x, h0)
    actual = _grads(ours, x.to(dtype), h0.to(dtype) if h0 is not None else None)
    _compare(expected, actual, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T, B", [(1, 1), (1, 4), (6, 1), (4, 0)], ids=["T1-B1", "T1-B4", "T6-B1", "T4-B0"])
def test_edge_shapes(T, B, backend):
    cfg = dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True)
    ref, ours = _pair(torch.float32, backend=backend, **cfg)
    ref, ours = ref.to(backend_device(backend)), ours.to(backend_device(backend))
    x, h0 = _input(cfg, T, B).to(backend_device(backend)), _h0(cfg, B).to(backend_device(backend))
    _compare(_grads(ref, x, h0), _grads(ours, x.float(), h0.float()), torch.float32)


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_unbatched(with_hx):
    cfg = dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, batch_first=True)
    ref, ours = _pair(torch.float64, **cfg)
    x = torch.randn(5, 4, device=DEVICE, dtype=torch.float64)
    h0 = _h0(cfg, None) if with_hx else None
    expected, actual = _grads(ref, x, h0), _grads(ours, x, h0)
    assert actual["output"].shape == (5, 12) and actual["h_n"].shape == (4, 6)
    _compare(expected, actual, torch.float64)


LENGTH_CONFIGS = [
    pytest.param(dict(input_size=3, hidden_size=7, bidirectional=True), id="bi"),
    pytest.param(dict(input_size=4, hidden_size=5, num_layers=2, batch_first=True), id="L2-bf"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("cfg", LENGTH_CONFIGS)
def test_lengths_match_packed_nn_gru(cfg, dtype):
    T, bf = 6, cfg.get("batch_first", False)
    lengths = torch.tensor([3, 6, 1, 4, 6])
    x, h0 = _input(cfg, T, 5), _h0(cfg, 5)
    ref, ours = _pair(dtype, **cfg)

    def packed(m, x, h0):
        out, h = m(pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), h0)
        return pad_packed_sequence(out, batch_first=bf, total_length=T)[0], h

    expected = _grads(ref, x, h0, packed)
    actual = _grads(ours, x.to(dtype), h0.to(dtype), lambda m, x, h0: m(x, h0, lengths=lengths))
    _compare(expected, actual, dtype)
    past_end = torch.arange(T)[None, :] >= lengths[:, None]
    past_end = past_end if bf else past_end.t()
    assert torch.all(actual["output"][past_end] == 0) and torch.all(actual["grad_input"][past_end] == 0)


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_sequence_matches_nn_gru(enforce_sorted):
    cfg = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    lengths = [5, 4, 4, 2, 1] if enforce_sorted else [2, 5, 1, 4, 4]
    x, h0 = _input(cfg, 5, 5), _h0(cfg, 5)
    ref, ours = _pair(torch.float64, **cfg)
    meta = {}

    def packed(m, x, h0):
        out, h = m(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), h0)
        assert isinstance(out, PackedSequence)
        meta[m is ours] = (out.batch_sizes, out.sorted_indices, out.unsorted_indices)
        return out.data, h

    _compare(_grads(ref, x, h0, packed), _grads(ours, x, h0, packed), torch.float64)
    for a, e in zip(meta[True], meta[False]):
        assert (a is None and e is None) or torch.equal(a, e)


def test_parameters_init_state_dict_and_repr_match_nn_gru():
    kwargs = dict(input_size=6, hidden_size=10, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ref = torch.nn.GRU(**kwargs)
    torch.manual_seed(3)
    ours = tritonlstm.GRU(**kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    assert repr(ours) == repr(ref)
    assert "zoneout=0.1" in repr(tritonlstm.GRU(2, 3, zoneout=0.1))
    cell = tritonlstm.GRUCell(3, 4, bias=False)
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh"]
    assert cell.weight_ih.shape == (12, 3)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_matches_nn_gru_cell(bias, dtype):
    ref, ours = _pair(dtype, cell=True, input_size=5, hidden_size=20, bias=bias)
    x = torch.randn(3, 5, dtype=torch.float64, device=DEVICE)
    h0 = torch.randn(3, 20, dtype=torch.float64, device=DEVICE)
    results = []
    for m, dt in ((ref, torch.float64), (ours, dtype)):
        xi, hi = x.to(dt).detach().requires_grad_(), h0.to(dt).detach().requires_grad_()
        h = m(xi, hi)
        (h.double() * torch.linspace(-1, 1, h.numel(), dtype=torch.float64, device=DEVICE).view_as(h)).sum().backward()
        results.append([h.detach(), xi.grad, hi.grad, *(p.grad for p in m.parameters())])
    names = ["h_1", "grad_input", "grad_h0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for name, e, a in zip(names, *results):
        assert_close(a, e, dtype, name)
    assert_close(ours(x[0].to(dtype)), ref(x[0]), dtype, "unbatched, no hx")


def test_deterministic_bitwise_and_never_calls_aten_gru(monkeypatch):
    cfg = dict(input_size=5, hidden_size=9, num_layers=2, bidirectional=True, batch_first=True)
    _, ours = _pair(torch.float32, **cfg)
    x, h0 = _input(cfg, 6, 4, torch.float32), _h0(cfg, 4, torch.float32)

    def refuse(*args, **kwargs):
        raise AssertionError("ATen's GRU was called")

    monkeypatch.setattr(torch._VF, "gru", refuse)
    monkeypatch.setattr(torch._VF, "gru_cell", refuse)
    first, second = _grads(ours, x, h0), _grads(ours, x, h0)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    tritonlstm.GRUCell(5, 9)(torch.randn(2, 5))


def test_dropout_between_layers_and_no_grad():
    ours = tritonlstm.GRU(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(1)
    y1, _ = ours(x)
    torch.manual_seed(1)
    y2, _ = ours(x)
    assert torch.equal(y1, y2)
    ours.eval()
    with torch.no_grad():
        y3, h3 = ours(x)
    y4, h4 = ours(x)
    assert torch.equal(y3, y4) and torch.equal(h3, h4) and not y3.requires_grad and y4.requires_grad
    ref = torch.nn.GRU(3, 4, num_layers=2, dropout=0.5).eval()
    ref.load_state_dict(ours.state_dict())
    assert_close(y3, ref(x)[0], torch.float32, "eval")


# ------------------------------------------------------------------ errors


def _both(make, *args, **kwargs):
    """Call ``make(module_class)`` for nn's and ours; assert the same exception type and message."""
    caught = []
    for cls in args:
        try:
            make(cls)
        except Exception as e:  # noqa: BLE001  (the test compares whatever each raises)
            caught.append((type(e), str(e)))
        else:
            caught.append(None)
    assert caught[0] is not None, "nn raised nothing"
    assert caught[1] == caught[0]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m(torch.randn(2, 3, 4, 1)), id="4d"),
        pytest.param(lambda m: m(torch.randn(2, 3, 6)), id="input-size"),
        pytest.param(lambda m: m(torch.randn(2, 3, 4), torch.randn(3, 5)), id="hx-2d-batched"),
        pytest.param(lambda m: m(torch.randn(2, 4), torch.randn(1, 1, 5)), id="hx-3d-unbatched"),
        pytest.param(lambda m: m(torch.randn(2, 3, 4), torch.randn(1, 2, 5)), id="hx-shape"),
        pytest.param(lambda m: m(torch.randn(0, 3, 4)), id="T0"),
        pytest.param(
            lambda m: m(pack_padded_sequence(torch.randn(3, 2, 4), [3, 1]), torch.randn(1, 3, 5)), id="packed-hx"
        ),
    ],
)
def test_forward_errors_match_nn_gru(call):
    torch.manual_seed(0)
    _both(lambda cls: call(cls(4, 5)), torch.nn.GRU, tritonlstm.GRU)


@pytest.mark.parametrize(
    "kwargs",
    [dict(proj_size=2), dict(proj_size=0), dict(num_layers=0), dict(dropout=1.5), dict(hidden_size=0)],
    ids=["proj", "proj0", "layers0", "dropout", "hidden0"],
)
def test_constructor_errors_match_nn_gru(kwargs):
    args = dict(input_size=4, hidden_size=5)
    args.update(kwargs)
    _both(lambda cls: cls(**args), torch.nn.GRU, tritonlstm.GRU)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c(torch.randn(1, 3, 4)), id="3d"),
        pytest.param(lambda c: c(torch.randn(3, 4), torch.randn(1, 3, 5)), id="h-3d"),
        pytest.param(lambda c: c(torch.randn(3, 6)), id="input-size"),
        pytest.param(lambda c: c(torch.randn(3, 4), torch.randn(2, 5)), id="batch"),
        pytest.param(lambda c: c(torch.randn(3, 4), torch.randn(3, 6)), id="hidden-size"),
        pytest.param(lambda c: c(torch.randn(3, 4), torch.randn(3, 5, dtype=torch.float64)), id="h-dtype"),
        pytest.param(lambda c: c(torch.randn(3, 4, dtype=torch.float64)), id="x-dtype"),
    ],
)
def test_cell_errors_match_nn_gru_cell(call):
    _both(lambda cls: call(cls(4, 5)), torch.nn.GRUCell, tritonlstm.GRUCell)


def test_new_options_give_clear_errors():
    with pytest.raises(ValueError, match="zoneout must be a probability"):
        tritonlstm.GRU(3, 4, zoneout=1.0)
    with pytest.raises(ValueError, match="zoneout must be a probability"):
        tritonlstm.GRU(3, 4, zoneout=(0.1, 0.1))  # one probability: the GRU has no cell state
    with pytest.raises(ValueError, match="reverse=True runs a single direction"):
        tritonlstm.GRU(3, 4, reverse=True, bidirectional=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        tritonlstm.GRU(3, 4, backend="cudnn")
    with pytest.raises(TypeError, match="unexpected keyword argument 'hidden'"):
        tritonlstm.GRU(3, 4, hidden=2)
    with pytest.raises(ValueError, match="lengths= cannot be combined with PackedSequence"):
        tritonlstm.GRU(3, 4)(pack_padded_sequence(torch.randn(2, 1, 3), [2]), lengths=[2])
    with pytest.raises(ValueError, match="lengths must lie between 1 and the sequence length 2"):
        tritonlstm.GRU(3, 4)(torch.randn(2, 1, 3), lengths=[3])
    with pytest.raises(ValueError, match="recurrent_mask must have h_0's shape"):
        tritonlstm.GRUCell(3, 4)(torch.randn(2, 3), recurrent_mask=torch.ones(2, 5))


# ------------------------------------------------------------------ regularisers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
def test_recurrent_dropout_and_eval_zoneout_match_the_reference_loop(lengths, backend):
    """With a fixed mask and eval zoneout, the op (either implementation) matches the plain loop in float64."""
    from tritonlstm import functional, reference

    device = backend_device(backend)
    T, B, I, H = 4, 3, 5, 6
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    h0 = torch.randn(B, H, dtype=torch.float64, device=device)
    w = [torch.randn(3 * H, n, dtype=torch.float64, device=device) * 0.4 for n in (I, H)]
    b = [torch.randn(3 * H, dtype=torch.float64, device=device) for _ in range(2)]
    mask = functional.dropout_mask((B, H), 0.3, x)
    lens = torch.tensor(lengths) if lengths else None
    for reverse in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, h0, *w, *b)]
        y, h = tritonlstm.gru_layer(*leaves, lengths=lens, reverse=reverse, backend=backend, h_mask=mask, zoneout=0.2)
        ref_leaves = [t.clone().requires_grad_() for t in (x, h0, *w, *b)]
        ye, he = reference.gru_layer(*ref_leaves, lengths=lens, reverse=reverse, h_mask=mask, zoneout=0.2)
        assert_close(y, ye, torch.float64, "output")
        assert_close(h, he, torch.float64, "h_n")
        grads = torch.autograd.grad((y * y.detach()).sum() + h.sum(), leaves)
        expected = torch.autograd.grad((ye * ye.detach()).sum() + he.sum(), ref_leaves)
        for name, a, e in zip(["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"], grads, expected):
            assert_close(a, e, torch.float64, f"grad {name} (reverse={reverse})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_layer_with_lengths_mask_and_training_zoneout(backend):
    """float64 gradcheck of the op, training zoneout included (the backward regenerates the forward's masks)."""
    device = backend_device(backend)
    T, B, I, H = 3, 2, 3, 4
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    h0 = torch.randn(B, H, dtype=torch.float64, device=device)
    w_ih, w_hh = (torch.randn(3 * H, n, dtype=torch.float64, device=device) * 0.5 for n in (I, H))
    b_ih, b_hh = (torch.randn(3 * H, dtype=torch.float64, device=device) for _ in range(2))
    mask = (torch.rand(B, H, device=device) > 0.3).double() / 0.7
    seed = torch.tensor([12345], device=device)
    for reverse, lengths in ((False, None), (True, torch.tensor([3, 1]))):
        def f(*a):
            return tritonlstm.gru_layer(*a, lengths=lengths, reverse=reverse, backend=backend, h_mask=mask,
                                        zoneout=0.3, zoneout_seed=seed)  # fmt: skip

        assert gradcheck_flat(f, (x, h0, w_ih, w_hh, b_ih, b_hh))


def test_training_zoneout_keeps_about_p_and_draws_fresh_masks():
    gru = tritonlstm.GRU(4, 32, zoneout=0.4)
    x = torch.randn(20, 16, 4)
    y, _ = gru(x)
    kept = (y[1:] == y[:-1]).double().mean().item()
    assert 0.35 < kept < 0.45, kept
    y2, _ = gru(x)
    assert not torch.equal(y, y2)
    gru.eval()
    ref = torch.nn.GRU(4, 32)
    ref.load_state_dict(gru.state_dict())
    with torch.no_grad():
        assert not torch.allclose(gru(x)[0], ref(x)[0])  # eval zoneout is the expectation, not nn.GRU


def test_regularisers_in_training_and_identity_in_eval():
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2)
    ours = tritonlstm.GRU(**kwargs, recurrent_dropout=0.3, input_dropout=0.2, weight_drop=0.25)
    ref = torch.nn.GRU(**kwargs)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 3)
    torch.manual_seed(5)
    y1, _ = ours(x)
    torch.manual_seed(5)
    y2, _ = ours(x)
    assert torch.equal(y1, y2) and not torch.allclose(y1, ref(x)[0])
    y1.sum().backward()
    assert all(p.grad is not None for p in ours.parameters())
    ours.eval()
    assert_close(ours(x)[0], ref(x)[0], torch.float32, "eval")


# ------------------------------------------------------------------ the ops: compile, export, opcheck


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_gru_forward(backend):
    device = backend_device(backend)
    T, B, I, H, D = 3, 2, 4, 5, 2
    args = (
        torch.randn(T, B, I, device=device), torch.randn(D, B, H, device=device),
        torch.randn(D, 3 * H, I, device=device), torch.randn(D, 3 * H, H, device=device),
        torch.randn(D, 3 * H, device=device), torch.randn(D, 3 * H, device=device),
    )  # fmt: skip
    torch.library.opcheck(torch.ops.tritonlstm.gru_forward, (*args, None, False, False, backend))  # inference
    args = tuple(a.requires_grad_() for a in args)
    torch.library.opcheck(torch.ops.tritonlstm.gru_forward, (*args, torch.tensor([3, 1]), False, True, backend))


def test_compile_fullgraph_and_export_with_dynamic_batch_and_time():
    gru = tritonlstm.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 4, 3)
    compiled = torch.compile(gru, fullgraph=True, backend="aot_eager")
    y, h = compiled(x)
    ye, he = gru(x)
    assert torch.equal(y, ye) and torch.equal(h, he)
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1)
    program = torch.export.export(gru, (x,), dynamic_shapes={"input": {0: batch, 1: time}})
    x2 = torch.randn(5, 7, 3)
    y2, h2 = program.module()(x2)
    ye2, he2 = gru(x2)
    assert torch.equal(y2, ye2) and torch.equal(h2, he2)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "tritonlstm.gru_forward.default" in ops


def test_autocast_runs_the_op_in_the_autocast_dtype_with_fp32_master_weights():
    gru = tritonlstm.GRU(3, 16)
    x = torch.randn(4, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = gru(x)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.bfloat16
    y.float().sum().backward()
    assert gru.weight_hh_l0.grad.dtype == torch.float32


def test_save_and_load_weights_only(tmp_path):
    gru = tritonlstm.GRU(3, 4, num_layers=2, zoneout=0.1)
    torch.save(gru, tmp_path / "gru.pt")
    loaded = torch.load(tmp_path / "gru.pt", weights_only=True)
    assert isinstance(loaded, tritonlstm.GRU) and loaded.zoneout == 0.1
    x = torch.randn(3, 2, 3)
    gru.eval(), loaded.eval()
    assert torch.equal(gru(x)[0], loaded(x)[0])


def test_explain_names_the_gru_kernels():
    text = tritonlstm.explain(tritonlstm.GRU(3, 20), torch.randn(4, 2, 3))
    assert text.startswith("GRU: B=2, H=20")
    if INTERPRETER:
        assert "sequence kernel, gru-batch regime [BLOCK_B=16, BLOCK_H=16" in text and "no SM count" in text
    else:
        assert "reference loop" in text


# ------------------------------------------------------------------ the step kernels, directly


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_step_kernels_match_the_reference_loop_in_their_dtype(dtype):
    """The launchers against the reference loop run in the same dtype (same roundings of h_t): H not a multiple of
    the tile (masks), both directions, lengths, a recurrent mask and eval zoneout, every gradient."""
    from tritonlstm import reference
    from tritonlstm.kernels import gru_step
    from tritonlstm.kernels.common import Layer, Regularisers

    T, B, I, H, D = 5, 3, 6, 20, 2
    x = torch.randn(T, B, I, dtype=dtype)
    h0 = torch.randn(D, B, H, dtype=dtype)
    w_ih, w_hh = ((torch.randn(D, 3 * H, n) * 0.3).to(dtype) for n in (I, H))
    b_ih, b_hh = (torch.randn(D, 3 * H).to(dtype) for _ in range(2))
    mask = ((torch.rand(D, B, H) > 0.3).float() / 0.7).to(dtype)
    lengths = torch.tensor([5, 2, 4])
    regs = Regularisers(mask, (0.25, 0.0), None)
    layer = Layer(x, h0, None, w_ih, w_hh, b_ih, b_hh, None, lengths, (False, True))
    y, h_n, gates = gru_step.forward(layer, regs, True)
    dy, dh = torch.randn(T, B, D * H, dtype=dtype), torch.randn(D, B, H, dtype=dtype)
    grads = gru_step.backward(layer, regs, y, gates, dy, dh, (True,) * 6)
    leaves = [t.clone().requires_grad_() for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
    runs = [
        reference.gru_layer(leaves[0], leaves[1][d], leaves[2][d], leaves[3][d], leaves[4][d], leaves[5][d], lengths,
                            d == 1, mask[d], 0.25)  # fmt: skip
        for d in range(D)
    ]
    ye, he = torch.cat([r[0] for r in runs], -1), torch.stack([r[1] for r in runs])
    expected = torch.autograd.grad((ye.float() * dy.float()).sum() + (he.float() * dh.float()).sum(), leaves)
    assert_close(y, ye, dtype, "output")
    assert_close(h_n, he, dtype, "h_n")
    for name, a, e in zip(["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"], grads, expected):
        assert_close(a, e, dtype, f"grad {name}")


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_runs_give_the_whole_sequence_and_the_stream_holds_h_in_place(backend):
    device = backend_device(backend)
    gru = tritonlstm.GRU(4, 6, num_layers=2, batch_first=True, backend=backend).to(device).eval()
    x = torch.randn(3, 11, 4, device=device)
    with torch.no_grad():
        y_whole, h_whole = gru(x)
        h = gru.initial_state(3)
        assert h.shape == (2, 3, 6) and not h.any()
        pieces = []
        for chunk in x.split(4, dim=1):
            y, h = gru(chunk, h)
            pieces.append(y)
        y_chunked = torch.cat(pieces, 1)
        if backend == "reference":
            assert torch.equal(y_chunked, y_whole) and torch.equal(h, h_whole)
        else:
            assert_close(y_chunked, y_whole, torch.float32, "chunked output")
        stream = gru.stream(3)
        buffer = stream.state
        stream(x[:, :8])
        last = stream(x[:, 8:], lengths=torch.tensor([3, 1, 2]))
        assert stream.state is buffer and last.shape == (3, 3, 6)
        stream.reset()
        assert not stream.state.any()
    with pytest.raises(ValueError, match="is bidirectional and cannot stream"):
        tritonlstm.GRU(2, 3, bidirectional=True).initial_state(1)


# ------------------------------------------------------------------ property-based


@pytest.mark.parametrize("seed", range(4 if INTERPRETER else 12))
def test_random_configurations_match_nn_gru(seed):
    """Random options, shapes (B = 0 included), unbatched input, h0 or none, lengths: outputs and gradients."""
    g = torch.Generator().manual_seed(seed)

    def pick(*values):
        return values[int(torch.randint(len(values), (1,), generator=g))]

    cfg = dict(input_size=pick(1, 3, 7), hidden_size=pick(1, 5, 17, 24), num_layers=pick(1, 2, 3),
               bias=pick(True, False), batch_first=pick(True, False), bidirectional=pick(True, False))  # fmt: skip
    dtype = pick(torch.float64, torch.float32)
    ref, ours = _pair(dtype, **cfg)
    T, B = pick(1, 2, 5), pick(None, 0, 1, 4)
    if B is None:
        x, h0 = torch.randn(T, cfg["input_size"], dtype=torch.float64, device=DEVICE), None
    else:
        x, h0 = _input(cfg, T, B), pick(None, _h0(cfg, B))
    lengths = None
    if B and pick(False, True):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T

    def packed(m, x, h0):
        if lengths is None:
            return m(x, h0)
        bf = cfg["batch_first"]
        out, h = m(pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), h0)
        return pad_packed_sequence(out, batch_first=bf, total_length=T)[0], h

    def ours_call(m, x, h0):
        return m(x, h0) if lengths is None else m(x, h0, lengths=lengths)

    expected = _grads(ref, x, h0, packed)
    actual = _grads(ours, x.to(dtype), h0.to(dtype) if h0 is not None else None, ours_call)
    _compare(expected, actual, dtype)
