"""Stateful ONNX export: named state inputs and outputs, dynamic batch and chunk length, and onnxruntime fed chunk
after chunk (state fed back) equal to PyTorch on the whole sequence; LSTMCell step graphs; the float16 variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX verification needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")

import tritonlstm  # noqa: E402
from tritonlstm.export import check_float16, export_onnx, verify_onnx  # noqa: E402
from tritonlstm.export.onnx_export import _check_state_names  # noqa: E402


class Tagger(torch.nn.Module):
    """``backend="reference"`` where a test checks the graph, not the kernels: under the interpreter the PyTorch
    side of a verification would otherwise run the kernels there, for minutes in all."""

    def __init__(self, **kwargs):
        super().__init__()
        self.lstm = tritonlstm.LSTM(4, 6, batch_first=True, **kwargs)
        self.head = torch.nn.Linear(kwargs.get("proj_size") or 6, 2)

    def forward(self, x, lengths):
        y, _ = self.lstm(x, lengths=lengths)
        return self.head(y)


class Decoder(torch.nn.Module):
    """Tacotron-style: one LSTMCell step, its output the next step's input."""

    def __init__(self):
        super().__init__()
        self.cell = tritonlstm.LSTMCell(2, 6, zoneout=0.1)
        self.out = torch.nn.Linear(6, 2)

    def forward(self, frame):
        h, _ = self.cell(frame)
        return self.out(h)


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(
    "kwargs, ops",
    [
        pytest.param(dict(num_layers=2), {"LSTM"}, id="L2-native"),
        pytest.param(dict(proj_size=3, backend="reference"), {"Loop"}, id="proj-loop"),
        pytest.param(dict(zoneout=0.2, backend="reference"), {"Loop"}, id="zoneout-loop"),
    ],
)
def test_stateful_graph_streams_in_onnxruntime_as_the_whole_sequence(kwargs, ops, tmp_path):
    model = Tagger(**kwargs).eval()
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 5, 6])
    path = tmp_path / "stream.onnx"
    proto = export_onnx(model, (x, lengths), path, stateful=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert ops <= {n.op_type for n in proto.graph.node}
    L = kwargs.get("num_layers", 1)
    states_in = [f"{s}_in_l{k}" for k in range(L) for s in "hc"]
    states_out = [f"{s}_out_l{k}" for k in range(L) for s in "hc"]
    assert [i.name for i in proto.graph.input] == ["x", "lengths", *states_in]
    assert [o.name for o in proto.graph.output] == ["output", *states_out]
    inputs = {i.name: i for i in proto.graph.input}
    outputs = {o.name: o for o in proto.graph.output}
    batch, time = _dims(inputs["x"])[:2]
    assert isinstance(batch, str) and isinstance(time, str), "batch and chunk length dynamic"
    R = kwargs.get("proj_size") or 6
    for name_in, name_out in zip(states_in, states_out):
        want = [batch, R if name_in.startswith("h") else 6]
        assert _dims(inputs[name_in]) == want, name_in
        # a runtime feeds one to the other: the same shape and dtype
        assert _dims(outputs[name_out]) == want, name_out
        assert outputs[name_out].type.tensor_type.elem_type == inputs[name_in].type.tensor_type.elem_type
    report = verify_onnx(
        model, path, (x, lengths), other_args=[(torch.randn(5, 9, 4), torch.tensor([9, 1, 4, 9, 2]))],
        state=[torch.randn(3, R if n.startswith("h") else 6) for n in states_in], chunkings=3,
    )  # fmt: skip
    chunked = [r for r in report.rows if "chunks" in r["shapes"]]
    assert {r["shapes"] for r in chunked} >= {"(3, 7, 4)x(3,) in 5 chunks"}, "one-step chunks up to the shortest row"
    assert {r["output"] for r in chunked} == {"output", *states_out}


def test_streaming_check_catches_a_graph_that_drops_the_state(tmp_path):
    model = Tagger(num_layers=2, backend="reference").eval()
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 5, 6])
    proto = export_onnx(model, (x, lengths), stateful=True)
    # what a runtime that reads the state under the wrong name does: every chunk starts from zeros again
    broken = onnx.load_from_string(proto.SerializeToString())
    for value in broken.graph.input:
        if value.name == "c_in_l0":
            value.name = "c_in_l0_unused"
    for node in broken.graph.node:
        node.input[:] = ["zero_c" if i == "c_in_l0" else i for i in node.input]
    zeros = onnx.helper.make_node("ConstantOfShape", ["c_shape"], ["zero_c"])
    shape = onnx.helper.make_node("Shape", ["c_in_l0_unused"], ["c_shape"])
    broken.graph.node.insert(0, zeros)
    broken.graph.node.insert(0, shape)
    with pytest.raises(AssertionError, match="in [0-9]+ chunks, output c_out_l0"):
        verify_onnx(model, broken, (x, lengths), chunkings=1)


def test_cell_decoder_exports_as_one_step_with_state_and_is_checked_step_by_step(tmp_path):
    model = Decoder().eval()
    path = tmp_path / "decoder.onnx"
    proto = export_onnx(model, (torch.randn(3, 2),), path, stateful=True, input_names=["frame"],
                        output_names=["next_frame"])  # fmt: skip
    assert [i.name for i in proto.graph.input] == ["frame", "h_in_l0", "c_in_l0"]
    assert [o.name for o in proto.graph.output] == ["next_frame", "h_out_l0", "c_out_l0"]
    verify_onnx(model, path, (torch.randn(3, 2),), steps=[(torch.randn(4, 2),) for _ in range(5)])
    # the decoding loop as deployed: the output fed back as the next input, the state by name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frame = np.zeros((2, 2), np.float32)
    state = {"h_in_l0": np.zeros((2, 6), np.float32), "c_in_l0": np.zeros((2, 6), np.float32)}
    h = c = torch.zeros(2, 6)
    expected = torch.zeros(2, 2)
    with torch.no_grad():
        for _ in range(6):
            frame, state["h_in_l0"], state["c_in_l0"] = session.run(["next_frame", "h_out_l0", "c_out_l0"],
                                                                   {"frame": frame, **state})  # fmt: skip
            h, c = model.cell(expected, (h, c))
            expected = model.out(h)
    np.testing.assert_allclose(frame, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_float16_graph_for_the_cuda_provider(tmp_path):
    model = Tagger(num_layers=2, backend="reference").eval()
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 5, 6])
    path = tmp_path / "stream16.onnx"
    proto = export_onnx(model, (x, lengths), path, stateful=True, dtype=torch.float16)
    float16 = onnx.TensorProto.FLOAT16
    assert all(i.type.tensor_type.elem_type == float16 for i in proto.graph.input if i.name != "lengths")
    assert all(o.type.tensor_type.elem_type == float16 for o in proto.graph.output)
    assert {t.data_type for t in proto.graph.initializer} <= {float16, onnx.TensorProto.INT64}
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 2
    # on the CPU (no float16 LSTM there) the same graph runs widened to float32, against PyTorch in float32
    report = verify_onnx(model, path, (x, lengths), chunkings=1)
    assert 0 < report.max_abs_diff < 1e-2, "float16 weights: rounded, not exact"
    with pytest.raises(RuntimeError, match="float16 graph: input 'x' is FLOAT"):
        check_float16(export_onnx(model, (x, lengths)))


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu and a GPU (onnxruntime's CUDA execution provider)",
)
def test_float16_graph_runs_on_the_cuda_provider(tmp_path):
    model = Tagger(num_layers=2).eval()
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 5, 6])
    proto = export_onnx(model, (x, lengths), stateful=True, dtype=torch.float16)
    verify_onnx(model, proto, (x, lengths), chunkings=2, providers=["CUDAExecutionProvider"])


def test_bad_streaming_input_gets_a_clear_error(tmp_path):
    model = Tagger(backend="reference").eval()
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 5, 6])
    plain = export_onnx(model, (x, lengths))
    with pytest.raises(ValueError, match=r"no state inputs.*stateful=True"):
        verify_onnx(model, plain, (x, lengths), chunkings=2)
    proto = export_onnx(model, (x, lengths), stateful=True)
    with pytest.raises(ValueError, match=r"state has 1 tensors; this graph takes 2: h_in_l0, c_in_l0"):
        verify_onnx(model, proto, (x, lengths), state=[torch.zeros(3, 6)])
    with pytest.raises(ValueError, match=r"state 'c_in_l0' must be a floating tensor of shape \(3, 6\).*got \(2, 6\)"):
        verify_onnx(model, proto, (x, lengths), state=[torch.zeros(3, 6), torch.zeros(2, 6)])
    with pytest.raises(ValueError, match=r"state 'h_in_l0' must be a floating tensor.*torch.int64"):
        verify_onnx(model, proto, (x, lengths), state=[torch.zeros(3, 6, dtype=torch.long), torch.zeros(3, 6)])
    with pytest.raises(ValueError, match="bidirectional and cannot stream"):
        export_onnx(Tagger(bidirectional=True), (x, lengths), stateful=True)
    with pytest.raises(ValueError, match=r"\['h_out_l0'\] are the state's names"):
        export_onnx(model, (x, lengths), stateful=True, output_names=["h_out_l0"])
    # the export refuses a graph whose state would be read under other names
    renamed = onnx.load_from_string(proto.SerializeToString())
    renamed.graph.output[1].name = "h_n"
    with pytest.raises(RuntimeError, match="wrong names. No file was written"):
        _check_state_names(tritonlstm.Stateful(model), renamed)
