"""GRU models in ONNX: one native ``GRU`` node per layer (both exporters), eval zoneout as a ``Loop``, the stateful
form, checked against PyTorch in onnxruntime at other batch sizes and sequence lengths."""

from __future__ import annotations

import io
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch

import tritonlstm
from tests.helpers import INTERPRETER, assert_close
from tritonlstm.export import export_onnx, verify_onnx

pytestmark = pytest.mark.skipif(
    INTERPRETER, reason="the exported graph is the same in both CPU conditions; CI's plain leg runs these (the "
    "kernels' numbers against nn.GRU are tests/test_gru.py's and tests/test_gru_sequence.py's)",
)


class GRUTagger(torch.nn.Module):
    """A GRU and a Linear head; ``rnn`` may be torch.nn.GRU (export_onnx swaps it for ours)."""

    def __init__(self, cls=tritonlstm.GRU, **kwargs):
        super().__init__()
        self.rnn = cls(4, 6, **kwargs)
        self.head = torch.nn.Linear(6 * (2 if kwargs.get("bidirectional") else 1), 2)

    def forward(self, x, lengths=None):
        y, h = self.rnn(x) if lengths is None else self.rnn(x, lengths=lengths)
        return self.head(y), h


def _batch(bf, B, T, lengths=True):
    x = torch.randn((B, T, 4) if bf else (T, B, 4))
    return (x, torch.randint(1, T + 1, (B,))) if lengths else (x,)


def _recurrent_nodes(proto):
    return [n.op_type for n in proto.graph.node if n.op_type in ("GRU", "LSTM", "Loop")]


@pytest.mark.parametrize(
    "kwargs, lengths",
    [
        pytest.param(dict(num_layers=2, bidirectional=True), True, id="L2-bi-lengths"),
        pytest.param(dict(batch_first=True), True, id="bf-lengths"),
        pytest.param(dict(bias=False, num_layers=2), False, id="nobias"),
        pytest.param(dict(bidirectional=True, zoneout=0.3), True, id="bi-zoneout-loop"),
    ],
)
def test_export_onnx_native_gru_nodes_verified_in_onnxruntime(kwargs, lengths):
    model = GRUTagger(**kwargs).eval()
    bf = kwargs.get("batch_first", False)
    proto = export_onnx(model, _batch(bf, 3, 5, lengths))
    layers, D = kwargs.get("num_layers", 1), 2 if kwargs.get("bidirectional") else 1
    expected = ["Loop"] * D if kwargs.get("zoneout") else ["GRU"] * layers
    assert _recurrent_nodes(proto) == expected
    gru = next(n for n in proto.graph.node if n.op_type == "GRU") if not kwargs.get("zoneout") else None
    if gru is not None:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}
        assert attrs["linear_before_reset"] == 1 and attrs["hidden_size"] == 6
    others = [_batch(bf, 1, 9, lengths), _batch(bf, 6, 2, lengths)]
    report = verify_onnx(model, proto, _batch(bf, 3, 5, lengths), other_args=others)
    assert report.passed and len(report.rows) == 3 * 2


def test_torch_nn_gru_and_gru_cell_are_swapped_and_exported():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 6, bidirectional=True)
            self.cell = torch.nn.GRUCell(4, 5)

        def forward(self, x):
            y, h = self.gru(x)
            return y, h, self.cell(x[0])

    model = Model().eval()
    x = torch.randn(5, 3, 4)
    proto = export_onnx(model, (x,))
    assert _recurrent_nodes(proto) == ["GRU", "GRU"]
    assert verify_onnx(model, proto, (x,), other_args=[(torch.randn(8, 2, 4),)]).passed


def test_plain_torch_onnx_export_both_exporters():
    model = GRUTagger(num_layers=2, bidirectional=True).eval()
    args = _batch(False, 3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = torch.export.Dim.AUTO
        dynamo = torch.onnx.export(model, args, dynamo=True, verbose=False,
                                   dynamic_shapes={"x": {0: auto, 1: auto}, "lengths": {0: auto}})  # fmt: skip
        f = io.BytesIO()
        torch.onnx.export(model, args, f, dynamo=False, opset_version=18, input_names=["x", "lengths"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "lengths": {0: "B"}})  # fmt: skip
    for proto in (dynamo.model_proto, onnx.load_from_string(f.getvalue())):
        assert _recurrent_nodes(proto) == ["GRU", "GRU"]
        session = ort.InferenceSession(proto.SerializeToString())
        for B, T in ((3, 5), (2, 8)):
            x, lengths = _batch(False, B, T)
            got = session.run(None, {"x": x.numpy(), "lengths": lengths.numpy()})
            with torch.no_grad():
                for g, e in zip(got, model(x, lengths)):
                    assert_close(torch.from_numpy(g), e, torch.float32, "onnxruntime")


def test_refusals_point_to_what_works():
    zoned = GRUTagger(zoneout=0.2).eval()
    with pytest.raises(RuntimeError, match="zoneout.*dynamo=True"):
        torch.onnx.export(zoned, _batch(False, 3, 5), io.BytesIO(), dynamo=False, opset_version=18)
    training = GRUTagger(recurrent_dropout=0.2).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        torch.onnx.export(training, _batch(False, 3, 5), dynamo=True, training=torch.onnx.TrainingMode.PRESERVE)


def test_stateful_export_streams_a_gru_and_a_gru_cell_decoder():
    """The stateful graph carries one h per GRU layer; chunked runs in onnxruntime give the whole sequence's
    numbers, and a GRUCell step graph runs call after call."""
    model = GRUTagger(num_layers=2).eval()
    x = torch.randn(9, 3, 4)
    proto = export_onnx(model, (x,), stateful=True)
    assert [i.name for i in proto.graph.input] == ["x", "h_in_l0", "h_in_l1"]
    assert [o.name for o in proto.graph.output][-2:] == ["h_out_l0", "h_out_l1"]
    state = [torch.randn(3, 6), torch.randn(3, 6)]
    assert verify_onnx(model, proto, (x,), state=state, chunkings=3).passed
    outputs, new_state = tritonlstm.stateful(model)(x, state=state)
    assert len(new_state) == 2 and new_state[0].shape == (3, 6)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = tritonlstm.GRUCell(4, 5)

        def forward(self, x):
            return self.cell(x)

    step = Step().eval()
    proto = export_onnx(step, (torch.randn(2, 4),), stateful=True)
    assert [i.name for i in proto.graph.input] == ["x", "h_in_l0"]
    assert verify_onnx(step, proto, (torch.randn(2, 4),), steps=[(torch.randn(2, 4),) for _ in range(3)]).passed
