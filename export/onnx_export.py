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
# float32 for every runtime; float16 for onnxruntime's CUDA execution provider (its CPU LSTM is float32 only)
EXPORT_DTYPES = (torch.float32, torch.float16)
# metadata_props keys of a stateful graph: its state inputs and outputs, comma-separated, in order
STATE_INPUTS_KEY = "tritonlstm.state_inputs"
STATE_OUTPUTS_KEY = "tritonlstm.state_outputs"


def _swap_torch_rnns(model: torch.nn.Module) -> None:
    """Replace torch.nn.LSTM / LSTMCell / GRU / GRUCell submodules by tritonlstm's, with the same weights."""
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.LSTM:
            twin = tritonlstm.LSTM(
                child.input_size, child.hidden_size, child.num_layers, child.bias, child.batch_first, child.dropout,
                child.bidirectional, child.proj_size,
            )  # fmt: skip
        elif type(child) is torch.nn.GRU:
            twin = tritonlstm.GRU(
                child.input_size, child.hidden_size, child.num_layers, child.bias, child.batch_first, child.dropout,
                child.bidirectional,
            )  # fmt: skip
        elif type(child) in (torch.nn.LSTMCell, torch.nn.GRUCell):
            cls = tritonlstm.LSTMCell if type(child) is torch.nn.LSTMCell else tritonlstm.GRUCell
            twin = cls(child.input_size, child.hidden_size, child.bias)
        else:
            _swap_torch_rnns(child)
            continue
        twin.load_state_dict(child.state_dict())
        setattr(model, name, twin.to(next(child.parameters()).device))


def _prepare(model: torch.nn.Module, args: tuple, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, tuple]:
    """An eval-mode copy of the model in ``dtype`` (torch RNNs swapped) and the arguments cast to match."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, EXPORT_DTYPES))}, got {dtype}")
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
    low = {p.dtype for p in model.parameters()} - {torch.float32, dtype}
    if low and dtype == torch.float32:
        warnings.warn(
            f"parameters of dtype {sorted(map(str, low))} are exported as float32: onnxruntime's LSTM runs float32 "
            "on the CPU (it has no bfloat16 LSTM kernel; dtype=torch.float16 writes a float16 graph for its CUDA "
            "execution provider)",
            stacklevel=3,
        )
    model = model.to(dtype)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
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
    stateful: bool = False,
    dtype: torch.dtype = torch.float32,
) -> onnx.ModelProto:
    """Export ``model`` (any nn.Module holding tritonlstm or torch.nn LSTM layers) to ONNX in one call.

    Args:
        model: the model; exported in eval mode (inter-layer dropout off) in ``dtype``, from a copy.
        args: example positional inputs (a tensor or a tuple). Pass a padded batch and ``lengths`` for variable
            lengths; ``PackedSequence`` is refused.
        f: file to write, if given.
        dynamic: make the batch and sequence-length dimensions symbolic (dims 0 and 1 of 3-D inputs, dim 0 of
            lower-rank ones), so the file runs at any B and T.
        opset: ONNX opset, at least 18 (default 18).
        input_names, output_names: names for the graph's inputs and outputs (with ``stateful``, for the model's
            own; the state names follow them).
        stateful: carry the state of every recurrent layer through the graph, for chunk-by-chunk inference
            (:class:`tritonlstm.Stateful`): after the model's inputs, one input per layer and state,
            ``h_in_l0, c_in_l0, h_in_l1, ...`` (``[B, R]`` and ``[B, H]``, prefixed by the module's path when the
            model holds several recurrent modules), and after its outputs ``h_out_l0, c_out_l0, ...`` of the
            same shapes and dtype, to feed back as the next chunk's state. The model's own outputs are named
            ``output`` (one) or ``output_0, output_1, ...`` unless ``output_names`` says otherwise. Bidirectional
            and ``reverse=True`` layers cannot stream and are refused.
        dtype: ``torch.float32`` (default; every runtime) or ``torch.float16``, a graph for onnxruntime's CUDA
            execution provider (its CPU LSTM runs float32 only; :func:`verify_onnx` checks such a graph on a
            CPU by running it widened to float32).

    Returns:
        The ``onnx.ModelProto``, checked with ``onnx.checker.check_model(full_check=True)``.

    Example::

        >>> proto = export_onnx(model, (x, lengths), "model.onnx")
        >>> verify_onnx(model, "model.onnx", (x, lengths))
        >>> export_onnx(model, (x,), "stream.onnx", stateful=True)   # h_in_l0, c_in_l0 -> h_out_l0, c_out_l0
    """
    opset = MIN_OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise ValueError(f"tritonlstm's ONNX export needs opset >= {MIN_OPSET} (the LSTM translation uses it), got {opset}")
    args = args if isinstance(args, tuple) else (args,)
    model, args = _prepare(model, args, dtype)
    if stateful:
        model, args, input_names, output_names = _stateful_form(model, args, input_names, output_names)
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
    if stateful:
        _check_state_names(model.stateful, proto)
        onnx.helper.set_model_props(proto, {
            STATE_INPUTS_KEY: ",".join(model.stateful.state_input_names),
            STATE_OUTPUTS_KEY: ",".join(model.stateful.state_output_names),
        })  # fmt: skip
    onnx.checker.check_model(proto, full_check=True)
    _check_not_unrolled(model, proto)
    if dynamic:
        _check_dynamic(args, proto)
    if dtype == torch.float16:
        check_float16(proto)
    if f is not None:
        onnx.save(proto, os.fspath(f))
    return proto


class _FlatStateful(torch.nn.Module):
    """:class:`tritonlstm.Stateful` with a flat signature for the exporter: ``(*args, *state) -> (*outputs,
    *state)``."""

    def __init__(self, stateful: tritonlstm.Stateful, n_args: int) -> None:
        super().__init__()
        self.stateful = stateful
        self.n_args = n_args

    def forward(self, *inputs):
        outputs, state = self.stateful(*inputs[: self.n_args], state=inputs[self.n_args :])
        return (*_flatten(outputs), *state)


def _stateful_form(model, args, input_names, output_names):
    """The model as :class:`_FlatStateful`, its example arguments with a zero state, and every graph name."""
    wrapper = tritonlstm.Stateful(model).eval()
    with torch.no_grad():
        outputs, state = wrapper(*args)
    n_outputs = len(_flatten(outputs))
    tensors = []  # the graph input names torch would give: the forward's parameters, *args numbered
    for name, value in inspect.signature(model.forward).bind(*args).arguments.items():
        if isinstance(value, tuple):
            tensors += [f"{name}_{k}" for k, v in enumerate(value) if isinstance(v, torch.Tensor)]
        elif isinstance(value, torch.Tensor):
            tensors.append(name)
    arg_names = list(input_names) if input_names else tensors
    if len(arg_names) != len(tensors):
        raise ValueError(f"input_names names {len(arg_names)} inputs; the model takes {len(tensors)} tensors")
    out_names = list(output_names) if output_names else (
        ["output"] if n_outputs == 1 else [f"output_{k}" for k in range(n_outputs)])  # fmt: skip
    if len(out_names) != n_outputs:
        raise ValueError(f"output_names names {len(out_names)} outputs; the model returns {n_outputs} tensors")
    clash = set(arg_names + out_names) & set(wrapper.state_input_names + wrapper.state_output_names)
    if clash:
        raise ValueError(f"input_names/output_names {sorted(clash)} are the state's names in a stateful graph")
    flat = _FlatStateful(wrapper, len(args)).eval()
    example = (*args, *(torch.zeros_like(t) for t in state))
    return flat, example, arg_names + wrapper.state_input_names, out_names + wrapper.state_output_names


def _check_state_names(wrapper, proto: onnx.ModelProto) -> None:
    """A stateful graph ends its inputs and outputs with the documented state names, in order; nothing else."""
    inputs = [i.name for i in proto.graph.input][-len(wrapper.state_input_names) :]
    outputs = [o.name for o in proto.graph.output][-len(wrapper.state_output_names) :]
    if inputs != wrapper.state_input_names or outputs != wrapper.state_output_names:
        raise RuntimeError(
            f"tritonlstm export: the stateful graph's state is named {inputs} -> {outputs}, not "
            f"{wrapper.state_input_names} -> {wrapper.state_output_names}; a runtime would feed the state under the "
            "wrong names. No file was written."
        )


def check_float16(proto: onnx.ModelProto) -> None:
    """A float16 graph: every floating input, output and initializer (subgraphs too) float16.

    Raises a ``RuntimeError`` naming the first float32 (or other floating) tensor found.
    """
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for v in values:
            elem = v.type.tensor_type.elem_type
            if elem in floating and elem != onnx.TensorProto.FLOAT16:
                raise RuntimeError(f"float16 graph: {kind} {v.name!r} is {onnx.TensorProto.DataType.Name(elem)}")
    for graph in _graphs(proto.graph):
        for t in graph.initializer:
            if t.data_type in floating and t.data_type != onnx.TensorProto.FLOAT16:
                name = onnx.TensorProto.DataType.Name(t.data_type)
                raise RuntimeError(f"float16 graph: initializer {t.name!r} is {name}")


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in it (a Loop's body, nested)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _float16_as_float32(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a float16 graph with every float16 type, initializer, constant and cast made float32.

    onnxruntime's CPU provider has no float16 LSTM; this runs the same graph, the same operators and wiring on
    weights already rounded to float16, to check what it computes on a machine without a GPU.
    """
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    wide = copy.deepcopy(proto)

    def widen(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == f16:
            wide = onnx.numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(onnx.numpy_helper.from_array(wide, tensor.name))

    for graph in _graphs(wide.graph):
        for t in graph.initializer:
            widen(t)
        for v in (*graph.input, *graph.output, *graph.value_info):
            if v.type.tensor_type.elem_type == f16:
                v.type.tensor_type.elem_type = f32
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    widen(attr.t)
                elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == f16:
                    attr.i = f32
    return wide


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
    """How many LSTM/GRU/Loop nodes the graph must hold: one per layer, or one Loop per direction with a
    projection."""
    count = 0
    for m in model.modules():
        if isinstance(m, (tritonlstm.LSTM, tritonlstm.GRU)):
            per_layer = (2 if m.bidirectional else 1) if getattr(m, "proj_size", 0) else 1
            count += m.num_layers * per_layer
        elif isinstance(m, (tritonlstm.LSTMCell, tritonlstm.GRUCell)):
            count += 1
    return count


def _check_not_unrolled(model: torch.nn.Module, proto: onnx.ModelProto) -> None:
    """Refuse a graph in which some recurrent layer was traced step by step (its T fixed to the example's)."""
    found = sum(node.op_type in ("LSTM", "GRU", "Loop") for node in proto.graph.node)
    expected = _expected_recurrent_nodes(model)
    if found < expected:
        raise RuntimeError(
            f"tritonlstm export: the graph has {found} LSTM/GRU/Loop nodes where the model's layers need {expected}; "
            "some recurrent layer was traced step by step, which fixes the sequence length. No file was written."
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
    rtol: float | None = None,
    atol: float | None = None,
    other_args: Sequence[tuple] | None = None,
    state: Sequence[torch.Tensor] | None = None,
    chunkings: int = 0,
    steps: Sequence[tuple] | None = None,
    time_dim: int | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    seed: int = 0,
) -> VerifyReport:
    """Run the ONNX model in onnxruntime and compare every output with the PyTorch model (eval mode, float32).

    Compares at ``args`` and at each tuple in ``other_args`` (other batch sizes and sequence lengths). A stateful
    graph (``export_onnx(..., stateful=True)``) starts from ``state`` (a tensor per state input, in their order;
    zeros when None) at ``args`` and from zeros elsewhere, and its state outputs are compared too. For such a graph:

    * ``chunkings=N`` cuts ``args`` along time at random points, N times (the first time into chunks of one step
      up to the shortest length, when that is at most 64), runs the chunks through onnxruntime one after another
      with the state fed back, and compares with PyTorch's one call on the whole sequence: outputs with a time dimension concatenated, the others and
      the state after the last chunk. 3-D floating inputs are cut along ``time_dim`` (default: 1 if the model's
      first recurrent layer is batch-first, else 0) and ``lengths`` (1-D integer inputs) per chunk; every row keeps
      at least one step in each chunk.
    * ``steps=[args_1, args_2, ...]`` runs a step graph (an ``LSTMCell`` decoder, say) call after call with the state
      fed back, against the PyTorch model run the same way, step by step.

    ``rtol``/``atol`` default to 1e-4/1e-5, or 1e-2/1e-2 for a float16 graph. onnxruntime's CPU provider has no
    float16 LSTM, so with it a float16 graph runs widened to float32 (the same operators and wiring on the weights
    rounded to float16); pass ``providers=["CUDAExecutionProvider"]`` (onnxruntime-gpu) to run it as it is.

    Raises:
        AssertionError: naming the input set and output that differ beyond ``atol + rtol * |expected|``.
        ValueError: a ``state`` of the wrong count, shape or dtype (naming the expected one), or ``chunkings``/
            ``steps`` on a graph without state.
    """
    import onnxruntime as ort

    proto = onnx_model_or_path if isinstance(onnx_model_or_path, onnx.ModelProto) else onnx.load(os.fspath(onnx_model_or_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    state_names = meta[STATE_INPUTS_KEY].split(",") if STATE_INPUTS_KEY in meta else []
    if (chunkings or steps or state is not None) and not state_names:
        raise ValueError(
            "this graph has no state inputs, so chunks and steps cannot carry state through it: export it with "
            "export_onnx(..., stateful=True)"
        )
    float16 = _is_float16(proto)
    widened = float16 and list(providers) == ["CPUExecutionProvider"]
    rtol = (1e-2 if float16 else 1e-4) if rtol is None else rtol
    atol = (1e-2 if float16 else 1e-5) if atol is None else atol
    runnable = _float16_as_float32(proto) if widened else proto
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not its notes on initializers the exporter left unused
    session = ort.InferenceSession(runnable.SerializeToString(), options, providers=list(providers))
    model, _ = _prepare(model, ())
    check = _Check(session, model, state_names, np.float16 if float16 and not widened else np.float32, rtol, atol)
    whole = None  # args' initial state and PyTorch's results there, which the chunkings compare against
    for k, call in enumerate([args, *(other_args or [])]):
        call = check.cast(call)
        start = check.validate_state(call, state) if k == 0 and state is not None else None
        expected, final = check.run_torch(call, start)
        start = start if start is not None else [torch.zeros_like(t) for t in final]
        actual, ort_final = check.run_ort(call, start)
        check.compare(check.shapes(call), actual + ort_final, expected + final)
        whole = (call, start, expected, final) if k == 0 else whole
    if chunkings:
        check.chunkings(*whole, chunkings, time_dim, seed)
    if steps:
        check.steps([check.cast(call) for call in steps])
    report = VerifyReport(check.rows, passed=not check.failures)
    if check.failures:
        raise AssertionError("ONNX output differs from PyTorch:\n" + "\n".join(check.failures) + f"\n{report}")
    return report


def _is_float16(proto: onnx.ModelProto) -> bool:
    return any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in proto.graph.input)


class _Check:
    """One verification's runs: PyTorch (stateful where the graph is) and onnxruntime, and their comparison."""

    def __init__(self, session, model, state_names, feed_dtype, rtol, atol) -> None:
        self.session, self.model, self.state_names = session, model, state_names
        self.stateful = tritonlstm.Stateful(model) if state_names else None
        self.names = [i.name for i in session.get_inputs()]
        self.feed_dtype, self.rtol, self.atol = feed_dtype, rtol, atol
        self.device = next(model.parameters()).device
        self.rows, self.failures = [], []

    @staticmethod
    def cast(call) -> tuple:
        call = call if isinstance(call, tuple) else (call,)
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in call)

    @staticmethod
    def shapes(call) -> str:
        return "x".join(str(tuple(a.shape)) for a in call if isinstance(a, torch.Tensor))

    def run_torch(self, call, state=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """PyTorch's outputs (flattened) and, for a stateful graph, its final state."""
        call = tuple(a.to(self.device) if isinstance(a, torch.Tensor) else a for a in call)
        with torch.no_grad():
            if self.stateful is None:
                return [t.cpu() for t in _flatten(self.model(*call))], []
            state = None if state is None else [t.to(self.device) for t in state]
            outputs, final = self.stateful(*call, state=state)
        return [t.cpu() for t in _flatten(outputs)], [t.cpu() for t in final]

    def run_ort(self, call, state) -> tuple[list[np.ndarray], list[torch.Tensor]]:
        """onnxruntime's outputs and its state outputs (as float32 tensors, to feed back)."""
        tensors = [a for a in call if isinstance(a, torch.Tensor)] + list(state)
        feeds = {}
        for name, t in zip(self.names, tensors):
            array = t.detach().cpu().numpy()
            feeds[name] = array.astype(self.feed_dtype) if t.is_floating_point() else array
        actual = self.session.run(None, feeds)
        n = len(actual) - len(state)
        return actual[:n], [torch.from_numpy(a.astype(np.float32)) for a in actual[n:]]

    def validate_state(self, call, state) -> list[torch.Tensor]:
        """``state`` as a list, after checking its count, shapes and dtype against what ``call`` needs."""
        _, zeros = self.run_torch(call)
        state = list(state)
        if len(state) != len(zeros):
            raise ValueError(
                f"state has {len(state)} tensors; this graph takes {len(zeros)}: {', '.join(self.state_names)}"
            )
        for name, given, want in zip(self.state_names, state, zeros):
            if not isinstance(given, torch.Tensor) or given.shape != want.shape or not given.is_floating_point():
                got = f"{tuple(given.shape)} {given.dtype}" if isinstance(given, torch.Tensor) else type(given).__name__
                raise ValueError(
                    f"state {name!r} must be a floating tensor of shape {tuple(want.shape)} (the batch of these "
                    f"inputs, {self.shapes(call)}), got {got}"
                )
        return [t.float() for t in state]

    def compare(self, label: str, actual: Sequence, expected: Sequence[torch.Tensor]) -> None:
        if len(actual) != len(expected):
            self.failures.append(f"inputs {label}: ONNX gives {len(actual)} outputs, PyTorch {len(expected)}")
        names = [o.name for o in self.session.get_outputs()]
        for k, (a, e) in enumerate(zip(actual, expected)):
            name = names[k] if len(names) == len(expected) else str(k)
            a, e = np.asarray(a, dtype=np.float64), e.detach().double().numpy()
            if a.shape != e.shape:
                self.failures.append(f"inputs {label}, output {name}: shape {a.shape} != PyTorch's {e.shape}")
                continue
            diff = np.abs(a - e)
            rel = diff / np.maximum(np.abs(e), 1e-12)
            self.rows.append({"shapes": label, "output": name, "max_abs_diff": float(diff.max(initial=0.0)),
                              "max_rel_diff": float(rel.max(initial=0.0))})  # fmt: skip
            if not np.all(diff <= self.atol + self.rtol * np.abs(e)):
                self.failures.append(f"inputs {label}, output {name}: max abs diff {diff.max():.3e} > atol "
                                     f"{self.atol} + rtol {self.rtol}")

    def chunkings(self, call, start, expected, final, count: int, time_dim: int | None, seed: int) -> None:
        """``count`` random chunkings of ``call`` through onnxruntime, each from the state ``start``, against
        PyTorch's whole-sequence results ``expected`` (outputs) and ``final`` (state)."""
        if time_dim is None:
            kinds = (tritonlstm.LSTM, tritonlstm.LSTMCell, tritonlstm.GRU, tritonlstm.GRUCell)
            first = next(m for m in self.model.modules() if isinstance(m, kinds))
            time_dim = 1 if getattr(first, "batch_first", False) else 0
        sequences = [a for a in call if _is_sequence(a)]
        if not sequences:
            raise ValueError("chunkings needs a 3-D floating input to cut along time")
        T = sequences[0].shape[time_dim]
        lengths = [a for a in call if _is_lengths(a)]
        # every row keeps a step in every chunk: cuts before the shortest length
        limit = int(min(int(t.min()) for t in lengths)) if lengths else T
        g = torch.Generator().manual_seed(seed)
        for r in range(count):
            if r == 0 and limit <= 64:
                cuts = list(range(1, limit))
            else:
                k = int(torch.randint(0, min(4, limit - 1) + 1, (1,), generator=g)) if limit > 1 else 0
                cuts = sorted(set(torch.randperm(limit - 1, generator=g)[:k].add(1).tolist())) if k else []
            bounds = [0, *cuts, T]
            carried, pieces = start, []
            for a, b in zip(bounds, bounds[1:]):
                chunk = tuple(_chunk(x, a, b, time_dim) for x in call)
                out, carried = self.run_ort(chunk, carried)
                pieces.append(out)
            joined = [
                np.concatenate([p[k] for p in pieces], axis=time_dim)
                if e.dim() >= 3 and e.shape[time_dim] == T and all(p[k].shape[time_dim] == b - a
                                                                     for p, a, b in zip(pieces, bounds, bounds[1:]))
                else pieces[-1][k]
                for k, e in enumerate(expected)
            ]  # fmt: skip
            self.compare(f"{self.shapes(call)} in {len(bounds) - 1} chunks", joined + carried, expected + final)

    def steps(self, calls) -> None:
        """A step graph called once per element of ``calls``, state fed back, against PyTorch the same way."""
        torch_state = ort_state = [torch.zeros_like(t) for t in self.run_torch(calls[0])[1]]
        for k, call in enumerate(calls):
            expected, torch_state = self.run_torch(call, torch_state)
            actual, ort_state = self.run_ort(call, ort_state)
            self.compare(f"step {k} {self.shapes(call)}", actual + ort_state, expected + torch_state)


def _is_sequence(a) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 3


def _is_lengths(a) -> bool:
    return isinstance(a, torch.Tensor) and not a.is_floating_point() and a.dim() == 1


def _chunk(a, start: int, end: int, time_dim: int):
    """Steps [start, end) of a sequence input; a lengths input's lengths within them; anything else as it is."""
    if _is_sequence(a):
        return a.narrow(time_dim, start, end - start)
    if _is_lengths(a):
        return (a - start).clamp(1, end - start)
    return a
