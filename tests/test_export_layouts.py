"""ONNX export from example inputs of any layout: views, transposes, expands, strided states and lengths.

The exporter traces a view with symbolic strides; every path (dynamo's native LSTM node, dynamo's Loop for a
projection or eval-mode zoneout, the TorchScript exporter) must export it without reading those strides into the
graph, and the graph must then compute PyTorch's numbers for plain contiguous inputs at other B and T.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX verification needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")

import tritonlstm  # noqa: E402
from tritonlstm.export import export_onnx, verify_onnx  # noqa: E402

I, H, P, T, B = 4, 6, 3, 5, 3


class Net(tritonlstm.LSTM):
    """The LSTM called with an explicit state or with lengths, per the example's arguments."""

    def __init__(self, extra=None, **kwargs):
        super().__init__(I, H, **kwargs)
        self.extra = extra

    def forward(self, x, *rest):
        if self.extra == "state":
            return super().forward(x, (rest[0], rest[1]))
        if self.extra == "lengths":
            return super().forward(x, lengths=rest[0])
        return super().forward(x)


def _x(layout: str, bf: bool) -> torch.Tensor:
    """A non-contiguous example input of ``layout``: a narrowed view, a transpose, or an expand."""
    if layout == "view":  # x[:, :T] of a batch-first tensor, x[:T] of a time-first one
        return torch.randn(B, T + 2, I)[:, :T] if bf else torch.randn(T + 2, B, I)[:T]
    if layout == "transposed":
        return torch.randn(T, B, I).transpose(0, 1) if bf else torch.randn(B, T, I).transpose(0, 1)
    if layout == "expanded":
        return torch.randn(1, T, I).expand(B, T, I) if bf else torch.randn(T, 1, I).expand(T, B, I)
    raise AssertionError(layout)


def _example(kwargs: dict, layout: str, extra: str | None) -> tuple:
    """The example arguments: ``x`` in ``layout``, then strided ``h0, c0`` or strided ``lengths``."""
    bf = kwargs.get("batch_first", False)
    args = [_x(layout, bf)]
    D = 2 if kwargs.get("bidirectional") else 1
    if extra == "state":
        R = kwargs.get("proj_size") or H
        args += [torch.randn(D, B, 2 * R)[..., ::2], torch.randn(D, B, 2 * H)[..., ::2]]
    elif extra == "lengths":
        args.append(torch.tensor([T, 1, T, 2, T, 3])[::2])
    assert all(a._base is not None for a in args)  # views all, the batch-first ones not contiguous either
    return tuple(args)


def _contiguous(kwargs: dict, extra: str | None, b: int, t: int) -> tuple:
    """Plain contiguous inputs at batch ``b`` and length ``t``, for the graph's check at other sizes."""
    bf = kwargs.get("batch_first", False)
    args = [torch.randn((b, t, I) if bf else (t, b, I))]
    D = 2 if kwargs.get("bidirectional") else 1
    if extra == "state":
        args += [torch.randn(D, b, kwargs.get("proj_size") or H), torch.randn(D, b, H)]
    elif extra == "lengths":
        lengths = torch.randint(1, t + 1, (b,))
        lengths[0] = t
        args.append(lengths)
    return tuple(args)


def _check(model, proto, kwargs, args, extra, op: str) -> None:
    assert op in {n.op_type for n in proto.graph.node}
    others = [_contiguous(kwargs, extra, b, t) for b, t in ((2, 7), (4, 2))]
    verify_onnx(model, proto, args, other_args=others)


DYNAMO_CASES = [
    # the Loop (proj_size > 0, eval-mode zoneout): these failed with aten.sym_stride
    pytest.param(dict(proj_size=P, batch_first=True), "view", None, "Loop", id="proj-bf-view"),
    pytest.param(dict(proj_size=P, batch_first=True, bidirectional=True), "view", None, "Loop", id="proj-bi-bf-view"),
    pytest.param(dict(proj_size=P, batch_first=True), "expanded", None, "Loop", id="proj-bf-expanded"),
    pytest.param(dict(proj_size=P), "view", "state", "Loop", id="proj-view-strided_state"),
    pytest.param(dict(zoneout=0.1, batch_first=True), "view", "lengths", "Loop", id="zoneout-bf-view-strided_lengths"),
    pytest.param(dict(zoneout=0.1, batch_first=True), "transposed", None, "Loop", id="zoneout-bf-transposed"),
    # the native LSTM node
    pytest.param(dict(batch_first=True), "view", "lengths", "LSTM", id="native-bf-view-strided_lengths"),
    pytest.param(dict(batch_first=True), "transposed", None, "LSTM", id="native-bf-transposed"),
    pytest.param(dict(), "expanded", "state", "LSTM", id="native-expanded-strided_state"),
]


@pytest.mark.parametrize("kwargs, layout, extra, op", DYNAMO_CASES)
def test_dynamo_export_of_any_input_layout(kwargs, layout, extra, op):
    torch.manual_seed(0)
    model = Net(extra, **kwargs).eval()
    args = _example(kwargs, layout, extra)
    proto = export_onnx(model, args)
    _check(model, proto, kwargs, args, extra, op)


TORCHSCRIPT_CASES = [
    pytest.param(dict(batch_first=True), "view", None, id="bf-view"),
    pytest.param(dict(), "expanded", "state", id="expanded-strided_state"),
]


@pytest.mark.parametrize("kwargs, layout, extra", TORCHSCRIPT_CASES)
def test_torchscript_export_of_any_input_layout(kwargs, layout, extra):
    torch.manual_seed(0)
    model = Net(extra, **kwargs).eval()
    args = _example(kwargs, layout, extra)
    bf = kwargs.get("batch_first", False)
    names = ["x", "h0", "c0"][: len(args)]
    axes = {"x": {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}, "h0": {1: "B"}, "c0": {1: "B"}}
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, f, dynamo=False, opset_version=18, input_names=names,
                          dynamic_axes={k: axes[k] for k in names})  # fmt: skip
    _check(model, onnx.load_from_string(f.getvalue()), kwargs, args, extra, "LSTM")
