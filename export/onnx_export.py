"""ONNX export of models holding tritonlstm layers, and verification in onnxruntime.

The whole model goes through plain ``torch.onnx.export`` (the dynamo exporter), exactly as a user would call it:
tritonlstm's layers write their own ONNX while the exporter traces (:mod:`tritonlstm.onnx_graph`), so every layer
becomes

* without a projection, ONNX's native ``LSTM`` operator (gates reordered from PyTorch's i, f, g, o to ONNX's
  i, o, f, c; one node per layer, ``direction`` forward, reverse or bidirectional; ``sequence_lens`` from
  ``lengths=``; initial states always wired, from the zeros the module makes when none are given);
* with ``proj_size > 0``, which ONNX's LSTM lacks, an ONNX ``Loop`` over time per direction, dynamic in T and
  honouring ``lengths``.

:func:`export_onnx` adds the conveniences: an eval-mode float32 copy, ``torch.nn.LSTM``/``LSTMCell`` submodules
swapped for their tritonlstm twins (same state_dict), batch and time dimensions dynamic, a full ONNX check, and a
check that no layer was unrolled.
"""


import copy
import dataclasses
import inspect
import os
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch.nn.utils.rnn import PackedSequence

import tritonlstm

MIN_OPSET = 18


def _swap_torch_rnns(model: torch.nn.Module) -> None:
    """Replace torch.nn.LSTM / LSTMCell submodules by tritonlstm's, with the same weights."""
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.LSTM:
            twin = tritonlstm.LSTM(
                child.input_size, child.hidden_size, child.num_layers, child.bias, child.batch_first, child.dropout,
                child.bidirectional, child.proj_size,
            )  # fmt: skip
        elif type(child) is torch.nn.LSTMCell:
            twin = tritonlstm.LSTMCell(child.input_size, child.hidden_size, child.bias)
        else:
            _swap_torch_rnns(child)
            continue
        twin.load_state_dict(child.state_dict())
        setattr(model, name, twin.to(next(child.parameters()).device))


def _prepare(model: torch.nn.Module, args: tuple) -> tuple[torch.nn.Module, tuple]:
    """An eval-mode float32 copy of the model (torch RNNs swapped) and the arguments cast to match."""
    for a in args:
        if isinstance(a, PackedSequence):
            raise ValueError(
                "PackedSequence inputs cannot be exported to ONNX; pass the padded tensor and its lengths "
                "(tritonlstm.LSTM(..)(x, lengths=lengths)), which export as the LSTM's sequence_lens"
            )
    model = copy.deepcopy(model).eval()
    _swap_torch_rnns(model)
    device = next(model.parameters()).device
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    low = {p.dtype for p in model.parameters()} - {torch.float32}
    if low:
        warnings.warn(
            f"parameters of dtype {sorted(map(str, low))} are exported as float32: onnxruntime's LSTM runs float32 "
            "(it has no bfloat16 LSTM kernel)",
            stacklevel=3,
        )
        model = model.float()
    args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return model, args


def _dynamic_shape(a):
    """Batch and time dimensions symbolic: dims 0 and 1 of 3-D tensors, dim 0 of 1-D and 2-D ones."""
    if not isinstance(a, torch.Tensor) or a.dim() == 0:
        return None
    auto = torch.export.Dim.AUTO  # AUTO lets export keep a dimension static where the model fixes it
    return {0: auto, 1: auto} if a.dim() >= 3 else {0: auto}


def _dynamic_shapes(model: torch.nn.Module, args: tuple) -> dict:
    """One spec per forward parameter (a tuple of specs for ``*args``), as torch.export wants them."""
    bound = inspect.signature(model.forward).bind(*args)
    shapes = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(model.forward).parameters[name].kind
        shapes[name] = tuple(map(_dynamic_shape, value)) if kind is inspect.Parameter.VAR_POSITIONAL else _dynamic_shape(value)
    return shapes


def export_onnx(
    model: torch.nn.Module,
    args: tuple | torch.Tensor,
    f: str | os.PathLike | None = None,
    *,
    dynamic: bool = True,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Export ``model`` (any nn.Module holding tritonlstm or torch.nn LSTM layers) to ONNX in one call.

    Args:
        model: the model; exported in eval mode (inter-layer dropout off) as float32, from a copy.
        args: example positional inputs (a tensor or a tuple). Pass a padded batch and ``lengths`` for variable
            lengths; ``PackedSequence`` is refused.
        f: file to write, if given.
        dynamic: make the batch and sequence-length dimensions symbolic (dims 0 and 1 of 3-D inputs, dim 0 of
            lower-rank ones), so the file runs at any B and T.
        opset: ONNX opset, at least 18 (default 18).
        input_names, output_names: names for the graph's inputs and outputs.

    Returns:
        The ``onnx.ModelProto``, checked with ``onnx.checker.check_model(full_check=True)``.

    Example::

        >>> proto = export_onnx(model, (x, lengths), "model.onnx")
        >>> verify_onnx(model, "model.onnx", (x, lengths))
    """
    opset = MIN_OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise ValueError(f"tritonlstm's ONNX export needs opset >= {MIN_OPSET} (the LSTM translation uses it), got {opset}")
    args = args if isinstance(args, tuple) else (args,)
    model, args = _prepare(model, args)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.onnx")  # progress notes and torchvision absences
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)  # torch's own deprecation
        program = torch.onnx.export(
            model, args, dynamo=True, opset_version=opset,
            dynamic_shapes=_dynamic_shapes(model, args) if dynamic else None,
            input_names=list(input_names) if input_names else None,
            output_names=list(output_names) if output_names else None, verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    _check_not_unrolled(model, proto)
    if dynamic:
        _check_dynamic(args, proto)
    if f is not None:
        onnx.save(proto, os.fspath(f))
    return proto


def _check_dynamic(args: tuple, proto: onnx.ModelProto) -> None:
    """Refuse a graph that fixed a batch or time dimension to the example's size."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    for tensor, graph_input in zip(tensors, proto.graph.input):
        dims = graph_input.type.tensor_type.shape.dim
        for d, spec in (_dynamic_shape(tensor) or {}).items():
            if d < len(dims) and not dims[d].dim_param:
                raise RuntimeError(
                    f"tritonlstm export: input {graph_input.name!r} dimension {d} was fixed to {dims[d].dim_value} "
                    "(the example's size) while tracing, so the graph would reject any other batch size or "
                    "sequence length. No file was written; if the model really needs that size fixed, pass "
                    "dynamic=False."
                )


def _expected_recurrent_nodes(model: torch.nn.Module) -> int:
    """How many LSTM/Loop nodes the graph must hold: one per layer, or one Loop per direction with a projection."""
    count = 0
    for m in model.modules():
        if isinstance(m, tritonlstm.LSTM):
            per_layer = (2 if m.bidirectional else 1) if m.proj_size else 1
            count += m.num_layers * per_layer
        elif isinstance(m, tritonlstm.LSTMCell):
            count += 1
    return count


def _check_not_unrolled(model: torch.nn.Module, proto: onnx.ModelProto) -> None:
    """Refuse a graph in which some LSTM layer was traced step by step (its T fixed to the example's)."""
    found = sum(node.op_type in ("LSTM", "Loop") for node in proto.graph.node)
    expected = _expected_recurrent_nodes(model)
    if found < expected:
        raise RuntimeError(
            f"tritonlstm export: the graph has {found} LSTM/Loop nodes where the model's layers need {expected}; "
            "some LSTM was traced step by step, which fixes the sequence length. No file was written."
        )


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify_onnx` compared: per input set and output, the largest absolute and relative difference."""

    rows: list[dict]
    passed: bool

    def __str__(self) -> str:
        lines = [f"{'inputs':<28} {'output':<10} {'max_abs_diff':>13} {'max_rel_diff':>13}"]
        for r in self.rows:
            lines.append(f"{r['shapes']:<28} {r['output']:<10} {r['max_abs_diff']:>13.3e} {r['max_rel_diff']:>13.3e}")
        lines.append("passed" if self.passed else "FAILED")
        return "\n".join(lines)

    @property
    def max_abs_diff(self) -> float:
        return max((r["max_abs_diff"] for r in self.rows), default=0.0)


def _flatten(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    flat = []
    for o in outputs:
        flat.extend(_flatten(o))
    return flat


def verify_onnx(
    model: torch.nn.Module,
    onnx_model_or_path: onnx.ModelProto | str | os.PathLike,
    args: tuple | torch.Tensor,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    other_args: Sequence[tuple] | None = None,
) -> VerifyReport:
    """Run the ONNX model in onnxruntime and compare every output with the PyTorch model (eval mode, float32).

    Compares at ``args`` and at each tuple in ``other_args`` (other batch sizes and sequence lengths).

    Raises:
        AssertionError: naming the input set and output that differ beyond ``atol + rtol * |expected|``.
    """
    import onnxruntime as ort

    proto = onnx_model_or_path if isinstance(onnx_model_or_path, onnx.ModelProto) else onnx.load(os.fspath(onnx_model_or_path))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    model, _ = _prepare(model, ())
    rows, failures = [], []
    for call in [args, *(other_args or [])]:
        call = call if isinstance(call, tuple) else (call,)
        call = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in call)
        tensors = [a for a in call if isinstance(a, torch.Tensor)]
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
        device = next(model.parameters()).device
        with torch.no_grad():
            outputs = model(*(a.to(device) if isinstance(a, torch.Tensor) else a for a in call))
            expected = [t.detach().cpu().numpy() for t in _flatten(outputs)]
        actual = session.run(None, feeds)
        shapes = "x".join(str(tuple(t.shape)) for t in tensors)
        for k, (a, e) in enumerate(zip(actual, expected)):
            if a.shape != e.shape:
                failures.append(f"inputs {shapes}, output {k}: shape {a.shape} != PyTorch's {e.shape}")
                continue
            diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
            rel = diff / np.maximum(np.abs(e), 1e-12)
            rows.append({"shapes": shapes, "output": str(k), "max_abs_diff": float(diff.max(initial=0.0)),
                         "max_rel_diff": float(rel.max(initial=0.0))})  # fmt: skip
            if not np.all(diff <= atol + rtol * np.abs(e)):
                failures.append(f"inputs {shapes}, output {k}: max abs diff {diff.max():.3e} > atol {atol} + rtol {rtol}")
        if len(actual) != len(expected):
            failures.append(f"inputs {shapes}: ONNX gives {len(actual)} outputs, PyTorch {len(expected)}")
    report = VerifyReport(rows, passed=not failures)
    if failures:
        raise AssertionError("ONNX output differs from PyTorch:\n" + "\n".join(failures) + f"\n{report}")
    return report
