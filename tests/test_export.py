"""ONNX export: every configuration exported, checked, run in onnxruntime at the example and other B and T."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX verification needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")

import tritonlstm  # noqa: E402
from tests.helpers import INTERPRETER  # noqa: E402
from tritonlstm import functional  # noqa: E402
from tritonlstm.export import MIN_OPSET, export_onnx, verify_onnx  # noqa: E402

pytestmark = pytest.mark.skipif(
    INTERPRETER, reason="the exported graph is the same in both CPU conditions; CI's plain leg runs these against "
    "onnxruntime (the kernels' numbers against nn.LSTM are tests/test_lstm.py's and tests/test_sequence.py's)",
)


class Tagger(torch.nn.Module):
    """An LSTM (or LSTMCell loop) and a Linear head: the shape of most deployed models."""

    def __init__(self, cls=tritonlstm.LSTM, with_state=False, **kwargs):
        super().__init__()
        self.lstm = cls(4, 6, **kwargs)
        self.with_state = with_state
        out = (kwargs.get("proj_size") or 6) * (2 if kwargs.get("bidirectional") else 1)
        self.head = torch.nn.Linear(out, 2)

    def forward(self, x, *rest):
        if self.with_state:
            y, (h, c) = self.lstm(x, (rest[0], rest[1]))
        elif rest:
            y, (h, c) = self.lstm(x, lengths=rest[0])
        else:
            y, (h, c) = self.lstm(x)
        return torch.relu(self.head(y)), h, c


def _inputs(kwargs, B, T, with_state=False, with_lengths=False, unbatched=False):
    bf = kwargs.get("batch_first", False)
    if unbatched:
        x = torch.randn(T, 4)
    else:
        x = torch.randn((B, T, 4) if bf else (T, B, 4))
    args = [x]
    if with_state:
        layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
        batch = () if unbatched else (B,)
        args += [torch.randn(layers, *batch, kwargs.get("proj_size") or 6), torch.randn(layers, *batch, 6)]
    if with_lengths:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        args.append(lengths)
    return tuple(args)


CASES = [
    pytest.param(dict(), False, False, id="L1"),
    pytest.param(dict(num_layers=2), False, False, id="L2"),
    pytest.param(dict(bidirectional=True, batch_first=True), False, False, id="bi-batch_first"),
    pytest.param(dict(bias=False, num_layers=2, bidirectional=True), False, False, id="L2-bi-nobias"),
    pytest.param(dict(num_layers=2, bidirectional=True), True, False, id="L2-bi-h0c0"),
    pytest.param(dict(proj_size=3), False, False, id="proj"),
    pytest.param(dict(proj_size=3, num_layers=2, bidirectional=True, batch_first=True), True, False, id="proj-L2-bi-bf-h0c0"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), False, True, id="lengths-L2-bi-bf"),
    pytest.param(dict(proj_size=2, bidirectional=True), False, True, id="lengths-proj-bi"),
]


@pytest.mark.parametrize("kwargs, with_state, with_lengths", CASES)
def test_export_runs_in_onnxruntime_at_any_batch_and_length(kwargs, with_state, with_lengths, tmp_path):
    model = Tagger(with_state=with_state, **kwargs)
    args = _inputs(kwargs, 3, 5, with_state, with_lengths)
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, args, path)
    assert path.exists() and onnx.load(str(path)).graph.node  # written, loadable
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    if kwargs.get("proj_size"):
        assert "Loop" in ops and "LSTM" not in ops, "a projection has no native ONNX equivalent: a Loop over time"
    else:
        assert "LSTM" in ops, "the native ONNX LSTM operator must be used"
        assert ("Loop" not in ops) and ("Scan" not in ops)
    others = [_inputs(kwargs, b, t, with_state, with_lengths) for b, t in ((7, 2), (1, 9))]
    report = verify_onnx(model, proto, args, other_args=others)
    assert report.passed and report.max_abs_diff <= 1e-5
    assert len({r["shapes"] for r in report.rows}) == 3, "example plus two other (B, T)"


def _computed_from_constants(proto, name: str) -> bool:
    """True when the value `name` depends on initializers and constants only (never on a graph input)."""
    if name in {i.name for i in proto.graph.initializer}:
        return True
    if name in {i.name for i in proto.graph.input}:
        return False
    producer = next(n for n in proto.graph.node if name in n.output)
    return all(_computed_from_constants(proto, i) for i in producer.input if i)


def test_one_lstm_node_per_layer_with_weights_from_initializers():
    """A bidirectional layer is one direction="bidirectional" node; W, R, B depend on the weights alone."""
    proto = export_onnx(Tagger(num_layers=2, bidirectional=True), _inputs({}, 3, 5))
    lstm_nodes = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == 2  # 2 layers, both directions in each node
    for node in lstm_nodes:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["hidden_size"].i == 6 and attrs["direction"].s == b"bidirectional"
        assert all(_computed_from_constants(proto, name) for name in node.input[1:4]), "W, R, B must be constants"


def test_batch_first_uses_layout_zero_with_transposes():
    proto = export_onnx(Tagger(batch_first=True), _inputs({"batch_first": True}, 3, 5))
    for node in proto.graph.node:
        if node.op_type == "LSTM":
            layout = [a.i for a in node.attribute if a.name == "layout"]
            assert layout in ([], [0]), "onnxruntime rejects layout=1"
    assert any(n.op_type == "Transpose" for n in proto.graph.node)


@pytest.mark.parametrize("use_lengths", [False, True], ids=["plain", "lengths"])
def test_lengths_become_sequence_lens(use_lengths):
    kwargs = dict(bidirectional=True)
    proto = export_onnx(Tagger(**kwargs), _inputs(kwargs, 3, 5, with_lengths=use_lengths))
    for node in proto.graph.node:
        if node.op_type == "LSTM":
            assert (len(node.input) > 4 and node.input[4] != "") == use_lengths


def test_unbatched_input():
    model = Tagger(num_layers=2)
    args = _inputs({}, None, 5, unbatched=True)
    proto = export_onnx(model, args)
    verify_onnx(model, proto, args, other_args=[_inputs({}, None, 2, unbatched=True), _inputs({}, None, 11, unbatched=True)])


class CellDecoder(torch.nn.Module):
    def __init__(self, cls=tritonlstm.LSTMCell):
        super().__init__()
        self.cell = cls(4, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x, h, c):
        for t in range(3):
            h, c = self.cell(x[t], (h, c))
        return self.head(h), c


@pytest.mark.parametrize("cls", [tritonlstm.LSTMCell, torch.nn.LSTMCell], ids=["tritonlstm", "torch"])
def test_lstm_cell(cls):
    model = CellDecoder(cls)

    def inputs(b):
        return torch.randn(3, b, 4), torch.randn(b, 6), torch.randn(b, 6)

    proto = export_onnx(model, inputs(2))
    assert any(n.op_type == "LSTM" for n in proto.graph.node)
    verify_onnx(model, proto, inputs(2), other_args=[inputs(5), inputs(1)])


def test_torch_nn_lstm_model_exports_as_native_lstm():
    model = Tagger(torch.nn.LSTM, num_layers=2, bidirectional=True, batch_first=True)
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True)
    args = _inputs(kwargs, 3, 5)
    proto = export_onnx(model, args)
    assert sum(n.op_type == "LSTM" for n in proto.graph.node) == 2  # one bidirectional node per layer
    verify_onnx(model, proto, args, other_args=[_inputs(kwargs, 6, 8)])


class Forecaster(torch.nn.Module):
    """Univariate forecaster: LSTM over the history, Linear head on the last step."""

    def __init__(self):
        super().__init__()
        self.lstm = tritonlstm.LSTM(1, 16, num_layers=2, batch_first=True, dropout=0.2)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


def test_forecaster_in_training_mode_exports_in_eval_mode():
    """The export copies the model in eval mode: inter-layer dropout off, the caller's model untouched."""
    model = Forecaster().train()
    args = (torch.randn(8, 24, 1),)
    proto = export_onnx(model, args)
    assert model.training, "export must not change the caller's model"
    verify_onnx(model, proto, args, other_args=[(torch.randn(2, 100, 1),)])


def test_half_precision_model_exports_as_float32_with_a_note():
    model = Tagger(num_layers=2).to(torch.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proto = export_onnx(model, (torch.randn(5, 3, 4, dtype=torch.float16),))
    assert any("exported as float32" in str(w.message) for w in caught)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert next(model.parameters()).dtype == torch.float16


def test_packed_sequence_is_refused_with_a_pointer_to_lengths():
    x = pack_padded_sequence(torch.randn(5, 3, 4), [5, 3, 2])
    with pytest.raises(ValueError, match="lengths="):
        export_onnx(Tagger(), (x,))


def test_opset_below_minimum_is_refused():
    with pytest.raises(ValueError, match=f"opset >= {MIN_OPSET}"):
        export_onnx(Tagger(), (torch.randn(5, 3, 4),), opset=MIN_OPSET - 1)


def test_names_and_mismatch_detection():
    model = Tagger()
    args = (torch.randn(5, 3, 4),)
    proto = export_onnx(model, args, input_names=["signal"], output_names=["scores", "h_n", "c_n"])
    assert [i.name for i in proto.graph.input] == ["signal"]
    assert [o.name for o in proto.graph.output] == ["scores", "h_n", "c_n"]
    with torch.no_grad():
        model.head.bias.add_(1e-3)  # the PyTorch model drifts from the exported file
    with pytest.raises(AssertionError, match="ONNX output differs from PyTorch"):
        verify_onnx(model, proto, args)


# ------------------------------------------------------------------ plain torch.onnx.export, as nn.LSTM users call it


def _run_onnx(proto, args):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})


def _assert_matches_torch(model, proto, calls):
    for args in calls:
        with torch.no_grad():
            expected = [t.numpy() for t in functional_outputs(model, args)]
        actual = _run_onnx(proto, args)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape
            torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(e), atol=1e-5, rtol=1e-4)


def functional_outputs(model, args):
    out = model(*args)
    return list(out) if isinstance(out, tuple) else [out]


def _dims(kwargs, with_lengths):
    B, T = torch.export.Dim("B"), torch.export.Dim("T")
    x = {0: B, 1: T} if kwargs.get("batch_first") else {0: T, 1: B}
    return (x, ({0: B},)) if with_lengths else (x,)  # Tagger.forward(x, *rest)


PLAIN_CASES = [
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), False, id="L2-bi-bf"),
    pytest.param(dict(num_layers=2, bidirectional=True), True, id="L2-bi-lengths"),
    pytest.param(dict(proj_size=3, num_layers=2, bidirectional=True), True, id="proj-L2-bi-lengths"),
    pytest.param(dict(proj_size=2, batch_first=True), False, id="proj-bf"),
]


@pytest.mark.parametrize("kwargs, with_lengths", PLAIN_CASES)
def test_plain_torch_onnx_export_dynamo(kwargs, with_lengths):
    """torch.onnx.export(model, args, dynamic_shapes=...) with no tritonlstm helper: native LSTM, or a Loop."""
    model = Tagger(**kwargs).eval()
    args = _inputs(kwargs, 3, 5, with_lengths=with_lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=_dims(kwargs, with_lengths)).model_proto
    ops = [n.op_type for n in proto.graph.node]
    if kwargs.get("proj_size"):
        assert ops.count("Loop") == kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    else:
        assert ops.count("LSTM") == kwargs.get("num_layers", 1) and "Loop" not in ops
    _assert_matches_torch(model, proto, [_inputs(kwargs, b, t, with_lengths=with_lengths) for b, t in ((3, 5), (7, 2), (1, 11))])


@pytest.mark.parametrize(
    "kwargs, with_lengths",
    [
        pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), False, id="L2-bi-bf"),
        pytest.param(dict(num_layers=2, bidirectional=True), True, id="L2-bi-lengths"),
    ],
)
def test_plain_torch_onnx_export_torchscript(kwargs, with_lengths):
    """The deprecated TorchScript exporter (dynamo=False) with dynamic_axes: native LSTM nodes."""
    model = Tagger(**kwargs).eval()
    args = _inputs(kwargs, 3, 5, with_lengths=with_lengths)
    bf = kwargs.get("batch_first")
    axes = {"x": {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}, "lengths": {0: "B"}}
    names = ["x", "lengths"] if with_lengths else ["x"]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, f, dynamo=False, opset_version=18, input_names=names,
                          dynamic_axes={k: v for k, v in axes.items() if k in names})  # fmt: skip
    proto = onnx.load_from_string(f.getvalue())
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 2
    _assert_matches_torch(model, proto, [_inputs(kwargs, b, t, with_lengths=with_lengths) for b, t in ((3, 5), (7, 2), (1, 11))])


def test_torchscript_exporter_refuses_projections_with_a_pointer():
    model = Tagger(proj_size=3).eval()
    with pytest.raises(RuntimeError, match="dynamo=True"):
        torch.onnx.export(model, _inputs({}, 3, 5), io.BytesIO(), dynamo=False, opset_version=18)


def test_export_onnx_refuses_an_unrolled_graph(monkeypatch, tmp_path):
    """Were a layer ever traced step by step, export_onnx raises instead of writing a T-specialised file."""

    def unrolled(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, backend):
        from tritonlstm.reference import lstm_layer as loop

        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
        y, h, c = loop(x, h0[0], c0[0], w_ih[0], w_hh[0], b_ih[0], b_hh[0], None, lengths, reverse)
        return y, h[None], c[None]

    monkeypatch.setattr(functional, "_layer", unrolled)
    path = tmp_path / "unrolled.onnx"
    with pytest.raises(RuntimeError, match="traced step by step"):
        export_onnx(Tagger(), _inputs({}, 3, 5), path)
    assert not path.exists()


def test_tagger_graph_is_small_and_native():
    """The README's Tagger: one LSTM node per layer and a handful of shape ops, whatever T the example had."""
    model = ReadmeTagger()
    x, lengths = torch.randn(4, 20, 16), torch.tensor([20, 7, 13, 1])
    proto = export_onnx(model, (x, lengths))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("LSTM") == 2 and len(ops) < 40, ops


class ReadmeTagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = tritonlstm.LSTM(16, 32, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(64, 5)

    def forward(self, x, lengths):
        y, _ = self.lstm(x, lengths=lengths)
        return self.head(y)
