"""ONNX export of models holding tritonlstm layers, and verification in onnxruntime.

The whole model goes through ``torch.onnx.export`` (the dynamo exporter). Each tritonlstm layer/direction, the
custom op ``tritonlstm::layer_forward``, is translated through the exporter's ``custom_translation_table``:

* without a projection, into the native ONNX ``LSTM`` operator (gates reordered from PyTorch's i, f, g, o to
  ONNX's i, o, f, c; W, R and B packed as ONNX wants; ``direction`` forward or reverse; ``sequence_lens`` from
  ``lengths=``; initial states always wired, from the zeros the module makes when none are given);
* with ``proj_size > 0``, which ONNX's LSTM lacks, into an ONNX ``Loop`` over time (MatMul, Sigmoid, Tanh, Mul,
  Add, Where) that keeps the sequence length dynamic and honours ``lengths``.

``torch.nn.LSTM``/``LSTMCell`` submodules are swapped for their tritonlstm twins (same state_dict) before export.
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
from onnxscript import FLOAT, script
from onnxscript import opset18 as op
from torch.nn.utils.rnn import PackedSequence

import tritonlstm

MIN_OPSET = 18
_INT64_MIN = -(2**63)


@script()
def _lstmp_loop(
    gx: FLOAT["T", "B", "G"],
    keep: FLOAT["T", "B", 1],
    h0: FLOAT["B", "P"],
    c0: FLOAT["B", "H"],
    r_t: FLOAT["P", "G"],
    wr_t: FLOAT["H", "P"],
) -> tuple[FLOAT["T", "B", "P"], FLOAT["B", "P"], FLOAT["B", "H"]]:
    """LSTM with projection over time; gx holds x W_ih^T + biases, keep is 1 where a step belongs to its row."""
    n = op.Squeeze(op.Shape(gx, start=0, end=1))
    h = h0
    c = c0
    ys = op.SequenceEmpty(dtype=1)
    for t in range(n):
        gates = op.Add(op.Gather(gx, t, axis=0), op.MatMul(h, r_t))
        i, f, g, o = op.Split(gates, num_outputs=4, axis=-1)
        c_new = op.Add(op.Mul(op.Sigmoid(f), c), op.Mul(op.Sigmoid(i), op.Tanh(g)))
        h_new = op.MatMul(op.Mul(op.Sigmoid(o), op.Tanh(c_new)), wr_t)
        k = op.Gather(keep, t, axis=0)
        own = op.Cast(k, to=9)
        h = op.Where(own, h_new, h)
        c = op.Where(own, c_new, c)
        ys = op.SequenceInsert(ys, op.Mul(k, h_new))
    y = op.ConcatFromSequence(ys, axis=0, new_axis=1)
    return y, h, c


def _empty():
    return op.Constant(value=onnx.helper.make_tensor("empty", onnx.TensorProto.FLOAT, [0], []))


def _gate_order(hidden: int):
    """Row indices taking PyTorch's gate blocks (i, f, g, o) to ONNX's (i, o, f, c)."""
    blocks = [np.arange(k * hidden, (k + 1) * hidden) for k in (0, 3, 1, 2)]
    return op.Constant(value_ints=np.concatenate(blocks).tolist())


def _translate_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse: bool, store_for_backward: bool):
    """ONNX for ``tritonlstm::layer_forward``: (y [T,B,R], h_n [B,R], c_n [B,H], and two unused empties)."""
    hidden = w_hh.shape[0] // 4
    if w_hr is None:
        order = _gate_order(hidden)
        W = op.Unsqueeze(op.Gather(w_ih, order, axis=0), [0])
        R = op.Unsqueeze(op.Gather(w_hh, order, axis=0), [0])
        B = None
        if b_ih is not None:
            B = op.Unsqueeze(op.Concat(op.Gather(b_ih, order, axis=0), op.Gather(b_hh, order, axis=0), axis=0), [0])
        seq = op.Cast(lengths, to=onnx.TensorProto.INT32) if lengths is not None else None
        Y, Y_h, Y_c = op.LSTM(
            x, W, R, B, seq, op.Unsqueeze(h0, [0]), op.Unsqueeze(c0, [0]),
            hidden_size=hidden, direction="reverse" if reverse else "forward", layout=0,
        )  # fmt: skip
        return op.Squeeze(Y, [1]), op.Squeeze(Y_h, [0]), op.Squeeze(Y_c, [0]), _empty(), _empty()

    gx = op.MatMul(x, op.Transpose(w_ih, perm=[1, 0]))
    if b_ih is not None:
        gx = op.Add(gx, op.Add(b_ih, b_hh))
    if lengths is not None:
        steps = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(x, start=0, end=1), [0]), op.Constant(value_int=1))
        keep = op.Cast(op.Less(op.Unsqueeze(steps, [1]), op.Unsqueeze(op.Cast(lengths, to=7), [0])), to=1)
    else:
        keep = op.Expand(op.Constant(value_float=1.0), op.Shape(x, start=0, end=2))
    keep = op.Unsqueeze(keep, [2])
    r_t, wr_t = op.Transpose(w_hh, perm=[1, 0]), op.Transpose(w_hr, perm=[1, 0])
    if reverse:  # run the reversed sequence forward, then reverse its outputs back
        flip = lambda v: op.Slice(v, [-1], [_INT64_MIN], [0], [-1])  # noqa: E731
        y, h_n, c_n = _lstmp_loop(flip(gx), flip(keep), h0, c0, r_t, wr_t)
        y = flip(y)
    else:
        y, h_n, c_n = _lstmp_loop(gx, keep, h0, c0, r_t, wr_t)
    return y, h_n, c_n, _empty(), _empty()


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
    with torch.no_grad():
        program = torch.onnx.export(
            model, args, dynamo=True, opset_version=opset,
            dynamic_shapes=_dynamic_shapes(model, args) if dynamic else None,
            input_names=list(input_names) if input_names else None,
            output_names=list(output_names) if output_names else None,
            custom_translation_table={torch.ops.tritonlstm.layer_forward.default: _translate_layer},
        )  # fmt: skip
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    if f is not None:
        onnx.save(proto, os.fspath(f))
    return proto


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
