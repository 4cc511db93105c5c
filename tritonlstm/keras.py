"""Keras 3 ``LSTM`` and ``GRU`` layers to and from ``tritonlstm.LSTM`` and ``tritonlstm.GRU``, with Keras's output
structure.

Weights (Keras names, torch names; the gate order i, f, g, o is the same, Keras calls g "c")::

    kernel            [I, 4H]   = weight_ih_l0.T
    recurrent_kernel  [H, 4H]   = weight_hh_l0.T
    bias              [4H]      = bias_ih_l0 + bias_hh_l0    (from_keras puts it all in bias_ih_l0)

A GRU (``keras.layers.GRU`` with ``reset_after=True``, Keras 3's default: the same maths as torch.nn.GRU) orders
its gates z, r, h where torch orders them r, z, n, and keeps two biases::

    kernel            [I, 3H]   = weight_ih_l0.T, gate blocks r and z swapped
    recurrent_kernel  [H, 3H]   = weight_hh_l0.T, likewise
    bias              [2, 3H]   = (bias_ih_l0, bias_hh_l0), likewise

``reset_after=False`` (the reset gate applied before the recurrent product) is another cell: refused.

Layer options:

- ``go_backwards=True`` is ``tritonlstm.LSTM(..., reverse=True)``: time runs from the last step to the first.
  Keras returns the output sequence in processing order (its first row is the last time step); ours is aligned
  with the input's time. :func:`keras_outputs` flips it.
- ``Bidirectional(LSTM(...))`` is ``bidirectional=True``; our output is Keras's ``merge_mode="concat"``, and
  :func:`keras_outputs` computes the other merge modes from it.
- ``return_sequences`` / ``return_state`` choose among our outputs: :func:`keras_outputs`.
- Keras is batch-first: :func:`from_keras` returns a ``batch_first=True`` module. Keras's
  ``initial_state=[h, c]`` is our ``hx=(h[None], c[None])``; for ``Bidirectional``, ``[h_f, c_f, h_b, c_b]`` is
  ``hx=(torch.stack([h_f, h_b]), torch.stack([c_f, c_b]))``.

Masking: a Keras mask that keeps a prefix of each sequence (``mask[b, t] = t < len[b]``, what
``Embedding(mask_zero=True)`` or ``Masking`` give for right-padded batches) is our ``lengths=``
(:func:`lengths_from_mask`). The states are the same, and so is the last output; the output sequences differ
only past each length: ours is zero there, while Keras repeats the last valid output (zeros with
``zero_output_for_mask=True``, which ``Bidirectional`` sets when it returns sequences, and which also zeroes a
short row's last output when the layer returns no sequence). With ``go_backwards`` the masked steps come first
in Keras's processing order and are zeros in both. :func:`keras_outputs` given
``lengths`` returns exactly Keras's tensors. Masks with holes or left padding have no ``lengths=`` form.
``unroll=True`` computes what the loop does; with a mask it is refused for ``go_backwards`` and
``Bidirectional`` layers, whose unrolled masked loop Keras runs differently on each backend.

Keras is imported on first use. It picks its backend from ``KERAS_BACKEND`` when first imported; if keras is
not imported yet and the variable is unset, this module sets it to ``"torch"``. Weights pass through numpy, so
a Keras running on another backend works too.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import tritonlstm

__all__ = ["from_keras", "keras_outputs", "lengths_from_mask", "to_keras"]


def _keras():
    """``import keras`` (Keras 3), with ``KERAS_BACKEND`` defaulting to ``"torch"`` when keras is not loaded yet."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as e:
        raise ImportError("tritonlstm.keras needs Keras 3: pip install keras") from e
    if int(keras.version().split(".")[0]) < 3:
        raise ImportError(f"tritonlstm.keras needs Keras 3, found keras {keras.version()}")
    return keras


def _module_options(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _swap_rz(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A GRU's three gate blocks along ``dim`` from Keras's order (z, r, h) to torch's (r, z, n), or back: the
    first two swapped."""
    z, r, h = t.chunk(3, dim=dim)
    return torch.cat([r, z, h], dim=dim)


# ---------------------------------------------------------------------------------------------------- from Keras


def from_keras(layer, *, device=None, backend: str | None = None) -> tritonlstm.LSTM | tritonlstm.GRU:
    """A ``tritonlstm.LSTM`` holding the weights of a built Keras 3 ``LSTM`` or ``Bidirectional(LSTM)`` layer
    (a ``tritonlstm.GRU`` for a ``GRU`` or ``Bidirectional(GRU)`` layer, ``reset_after=True``).

    The module is ``batch_first=True`` with ``bidirectional`` from ``Bidirectional`` and ``reverse`` from
    ``go_backwards``, ``bias`` from ``use_bias``, and the dtype of the layer's variables. Called on the same
    input (and ``lengths=`` for a right-padded mask) it computes Keras's numbers; :func:`keras_outputs` arranges
    them as the layer returns them (``return_sequences``, ``return_state``, ``merge_mode``, ``go_backwards``).
    ``keras.layers.RNN(keras.layers.LSTMCell(...))`` is accepted as an ``LSTM``.

    Keras's ``dropout``/``recurrent_dropout`` (active in training only) carry over as ``input_dropout``/
    ``recurrent_dropout`` where ``tritonlstm.LSTM`` has them; the draws differ: with ``recurrent_dropout > 0``
    Keras 3 draws one mask per gate (for the input too), ours are shared by the four gates. Regularisers and
    constraints are training set-up that stays with Keras (a warning names those that are set), as do the
    initialisers; a mixed-precision dtype policy is not carried over (the module runs in its variables' dtype:
    use ``torch.autocast``).

    Args:
        layer: a built ``keras.layers.LSTM`` (or ``RNN`` over an ``LSTMCell``), or ``keras.layers.Bidirectional``
            around one.
        device: where the module's parameters go (default: the CPU).
        backend: the module's backend (see ``tritonlstm.LSTM``).

    Raises:
        ValueError: an option the module cannot compute, named: ``activation``, ``recurrent_activation``,
            ``stateful``, a dropout the module does not have, a ``Bidirectional`` whose two layers differ.

    Example::

        >>> layer = keras.layers.LSTM(64, return_sequences=True)
        >>> y_keras = layer(x)                                   # x: (B, T, I)
        >>> lstm = tritonlstm.keras.from_keras(layer)
        >>> y = tritonlstm.keras.keras_outputs(lstm(torch.as_tensor(x)), layer)   # == y_keras
    """
    keras = _keras()
    if isinstance(layer, keras.layers.Bidirectional):
        forward, backward = layer.forward_layer, layer.backward_layer
        for name, sub in (("forward_layer", forward), ("backward_layer", backward)):
            _check_rnn(keras, sub, f"Bidirectional.{name}")
        if forward.go_backwards or not backward.go_backwards:
            raise ValueError(
                "go_backwards: a Bidirectional's forward layer must run forwards and its backward layer backwards, "
                f"got forward_layer.go_backwards={forward.go_backwards}, "
                f"backward_layer.go_backwards={backward.go_backwards}"
            )
        if type(forward.cell) is not type(backward.cell):
            raise ValueError(
                f"a Bidirectional's two layers must be of one kind, got {type(forward.cell).__name__} (forward) and "
                f"{type(backward.cell).__name__} (backward)"
            )
        for option in ("units", "use_bias", "dropout", "recurrent_dropout"):
            f, b = getattr(forward.cell, option), getattr(backward.cell, option)
            if f != b:
                raise ValueError(
                    f"{option}: the two layers of a Bidirectional must agree to become one tritonlstm module, "
                    f"got {f!r} (forward) and {b!r} (backward)"
                )
        directions, reverse = [forward, backward], False
    else:
        _check_rnn(keras, layer, "layer")
        directions, reverse = [layer], layer.go_backwards

    cell = directions[0].cell
    gru = isinstance(cell, keras.layers.GRUCell)
    cls = tritonlstm.GRU if gru else tritonlstm.LSTM
    kernels = [[_to_torch(keras, v) for v in (d.cell.kernel, d.cell.recurrent_kernel)] for d in directions]
    dtype = kernels[0][0].dtype
    module = cls(
        kernels[0][0].shape[0], cell.units, bias=cell.use_bias, batch_first=True, bidirectional=len(directions) == 2,
        device=device, dtype=dtype, backend=backend, reverse=reverse, **_dropout_options(cell, cls),
    )  # fmt: skip
    params = [getattr(module, name) for name in module._flat_weights_names]
    per_direction = len(params) // len(directions)
    with torch.no_grad():
        for d, (sub, (kernel, recurrent_kernel)) in enumerate(zip(directions, kernels)):
            w = params[d * per_direction : (d + 1) * per_direction]
            if gru:
                w[0].copy_(_swap_rz(kernel.T, 0))
                w[1].copy_(_swap_rz(recurrent_kernel.T, 0))
                if sub.cell.use_bias:
                    bias = _to_torch(keras, sub.cell.bias)
                    w[2].copy_(_swap_rz(bias[0], 0))
                    w[3].copy_(_swap_rz(bias[1], 0))
                continue
            w[0].copy_(kernel.T)
            w[1].copy_(recurrent_kernel.T)
            if sub.cell.use_bias:
                w[2].copy_(_to_torch(keras, sub.cell.bias))
                w[3].zero_()
    return module


def _check_rnn(keras, layer, where: str) -> None:
    """Refuse, by name, what a tritonlstm.LSTM cannot compute for this Keras RNN layer."""
    cells = (keras.layers.LSTMCell, keras.layers.GRUCell)
    if not (isinstance(layer, keras.layers.RNN) and isinstance(layer.cell, cells)):
        raise ValueError(
            f"{where}: expected a keras.layers.LSTM or GRU (or Bidirectional around one), got {type(layer).__name__}"
            + (f" over {type(layer.cell).__name__}" if isinstance(layer, keras.layers.RNN) else "")
        )
    if isinstance(layer.cell, keras.layers.GRUCell) and not layer.cell.reset_after:
        raise ValueError(
            f"{where}: reset_after=False is not supported: it applies the reset gate before the recurrent product, "
            "another cell than torch.nn.GRU's; tritonlstm.GRU computes reset_after=True (Keras 3's default)"
        )
    if not layer.built:
        raise ValueError(f"{where}: the layer has no weights yet: build it (call it once, or layer.build(input_shape))")
    cell = layer.cell
    for option, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        fn = getattr(cell, option)
        if fn is not keras.activations.get(expected):
            raise ValueError(
                f"{option}={keras.activations.serialize(fn)!r} is not supported: tritonlstm's layers compute "
                f"{option}={expected!r} (Keras's default)"
            )
    if layer.stateful:
        raise ValueError(
            "stateful=True is not supported: pass the state explicitly, y, (h, c) = lstm(x, (h, c)), "
            "carrying (h, c) from one batch to the next"
        )
    training_only = [
        name
        for name in (
            "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "kernel_constraint",
            "recurrent_constraint", "bias_constraint",
        )  # fmt: skip
        if getattr(cell, name) is not None
    ] + (["activity_regularizer"] if layer.activity_regularizer is not None else [])
    if training_only:
        warnings.warn(
            f"{where}: {', '.join(training_only)} not carried over: the weights and outputs are converted, "
            "Keras's training set-up (losses added, constraints applied after updates) is not",
            stacklevel=3,
        )


def _dropout_options(cell, cls=tritonlstm.LSTM) -> dict:
    """Keras's dropout rates as options of ``cls``; a rate the module cannot take is an error naming it."""
    options = _module_options(cls)
    kwargs = {}
    for keras_name, ours in (("dropout", "input_dropout"), ("recurrent_dropout", "recurrent_dropout")):
        p = getattr(cell, keras_name)
        if p == 0:
            continue
        if ours not in options:
            raise ValueError(
                f"{keras_name}={p} is not supported: this tritonlstm.{cls.__name__} has no {ours}= option "
                f"(set {keras_name}=0 on the Keras layer to convert it for inference)"
            )
        kwargs[ours] = p
    return kwargs


def _to_torch(keras, variable) -> torch.Tensor:
    array = np.array(keras.ops.convert_to_numpy(variable))
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, which torch.from_numpy does not read
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(array)


# ------------------------------------------------------------------------------------------------------ to Keras


def to_keras(
    module: nn.Module, *, return_sequences: bool = False, return_state: bool = False, merge_mode: str = "concat"
):
    """A built Keras 3 layer with the weights of a one-layer ``tritonlstm.LSTM`` or ``torch.nn.LSTM`` (a
    ``keras.layers.GRU``, ``reset_after=True``, for a ``tritonlstm.GRU`` or ``torch.nn.GRU``).

    A bidirectional module becomes ``keras.layers.Bidirectional(keras.layers.LSTM(...), merge_mode)``; a
    ``reverse=True`` module an ``LSTM(go_backwards=True)``. The layer's dtype is the module's, its bias is
    ``bias_ih + bias_hh`` (``use_bias=False`` without biases), and the module's ``input_dropout``/
    ``recurrent_dropout``, where it has them, become Keras's ``dropout``/``recurrent_dropout``. Keras is
    batch-first whatever the module's ``batch_first``. :func:`keras_outputs` maps the module's outputs to the
    layer's.

    Args:
        module: a one-layer LSTM without projection (Keras has neither stacked layers in one nor projections).
        return_sequences, return_state: the Keras layer's options, with Keras's defaults (the last output only).
        merge_mode: the ``Bidirectional`` merge (``"concat"`` is what the module returns).

    Returns:
        The Keras layer, built for inputs ``(batch, time, module.input_size)``.

    Example::

        >>> lstm = tritonlstm.LSTM(16, 32, batch_first=True)
        >>> layer = tritonlstm.keras.to_keras(lstm, return_sequences=True)
        >>> layer(x)           # == lstm(x)[0]
    """
    keras = _keras()
    if not (isinstance(module, nn.RNNBase) and module.mode in ("LSTM", "GRU")):
        raise ValueError(
            f"to_keras takes a tritonlstm.LSTM or GRU, or a torch.nn.LSTM or GRU, got {type(module).__name__}"
        )
    gru = module.mode == "GRU"
    if module.num_layers != 1:
        raise ValueError(
            f"num_layers={module.num_layers} is not supported: a Keras LSTM layer is one layer; "
            "stack one Keras layer per layer"
        )
    if module.proj_size > 0:
        raise ValueError(f"proj_size={module.proj_size} is not supported: Keras's LSTM has no projection")
    for option in ("zoneout", "weight_drop"):
        value = getattr(module, option, 0)
        if value not in (0, 0.0, None, (0, 0), (0.0, 0.0)):
            raise ValueError(f"{option}={value} is not supported: Keras's {module.mode} has no {option}")
    dtype = str(module.weight_ih_l0.dtype).removeprefix("torch.")
    reverse = bool(getattr(module, "reverse", False))
    options = dict(
        units=module.hidden_size,
        use_bias=module.bias,
        dropout=float(getattr(module, "input_dropout", 0.0)),
        recurrent_dropout=float(getattr(module, "recurrent_dropout", 0.0)),
        return_sequences=return_sequences,
        return_state=return_state,
        dtype=dtype,
    )
    cls = keras.layers.GRU if gru else keras.layers.LSTM
    if gru:
        options["reset_after"] = True
    if module.bidirectional:
        layer = keras.layers.Bidirectional(cls(**options), merge_mode=merge_mode, dtype=dtype)
        directions = [layer.forward_layer, layer.backward_layer]
    else:
        layer = cls(**options, go_backwards=reverse)
        directions = [layer]
    # built with zero kernels, which are overwritten at once (no random draws thrown away, and no QR, which torch
    # lacks for float16 on the CPU); the layer's config keeps Keras's initialisers
    saved = [(sub.cell.kernel_initializer, sub.cell.recurrent_initializer) for sub in directions]
    for sub in directions:
        sub.cell.kernel_initializer = sub.cell.recurrent_initializer = keras.initializers.Zeros()
    layer.build((None, None, module.input_size))
    for sub, (kernel_init, recurrent_init) in zip(directions, saved):
        sub.cell.kernel_initializer, sub.cell.recurrent_initializer = kernel_init, recurrent_init
    params = [getattr(module, name).detach().to("cpu", torch.float64) for name in module._flat_weights_names]
    per_direction = len(params) // len(directions)
    for d, sub in enumerate(directions):
        w = params[d * per_direction : (d + 1) * per_direction]
        if gru:
            sub.cell.kernel.assign(_swap_rz(w[0], 0).T.numpy())
            sub.cell.recurrent_kernel.assign(_swap_rz(w[1], 0).T.numpy())
            if module.bias:
                sub.cell.bias.assign(torch.stack([_swap_rz(w[2], 0), _swap_rz(w[3], 0)]).numpy())
            continue
        sub.cell.kernel.assign(w[0].T.numpy())  # Keras casts to the variable's dtype
        sub.cell.recurrent_kernel.assign(w[1].T.numpy())
        if module.bias:
            sub.cell.bias.assign((w[2] + w[3]).numpy())
    return layer


# ------------------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class _OutputConfig:
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    bidirectional: bool = False
    merge_mode: str | None = "concat"
    zero_output_for_mask: bool | None = None  # None: Keras's default (Bidirectional: return_sequences)
    unroll: bool = False


def _output_config(keras, layer) -> _OutputConfig:
    if isinstance(layer, Mapping):
        unknown = set(layer) - set(_OutputConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Keras output options {sorted(unknown)}")
        return _OutputConfig(**layer)
    if isinstance(layer, keras.layers.Bidirectional):
        forward = layer.forward_layer
        return _OutputConfig(
            forward.return_sequences, forward.return_state, False, True, layer.merge_mode,
            forward.zero_output_for_mask, forward.unroll,
        )  # fmt: skip
    if isinstance(layer, keras.layers.RNN):
        return _OutputConfig(
            layer.return_sequences, layer.return_state, layer.go_backwards, False, None, layer.zero_output_for_mask,
            layer.unroll,
        )  # fmt: skip
    raise ValueError(
        f"expected a Keras LSTM or GRU layer or a Bidirectional, or a dict of its options, got {type(layer).__name__}"
    )


def keras_outputs(outputs, layer, lengths: torch.Tensor | None = None, *, batch_first: bool = True):
    """Arrange a module's ``(output, (h_n, c_n))`` (a GRU's ``(output, h_n)``) as the Keras layer returns it,
    tensor for tensor.

    The module is the one :func:`from_keras` made from ``layer`` (or the one ``layer`` was made from with
    :func:`to_keras`); ``lengths`` the ``lengths=`` it was called with, the Keras call's mask being
    ``lengths_from_mask``'s inverse. What comes back is what ``layer(x, mask=...)`` returns:

    - ``return_sequences``: the sequence ``(B, T, ·)``, else the last output ``(B, ·)`` (the state ``h`` at
      each sequence's last step; with ``go_backwards``, at time 0).
    - ``go_backwards``: the sequence in processing order, last time step first.
    - ``Bidirectional``: the two directions merged by ``merge_mode`` (``"concat"``, ``"sum"``, ``"ave"``,
      ``"mul"``, or ``None`` for the pair), the backward one aligned with the input's time.
    - with ``lengths``, past each sequence's length: the last valid output repeated, or zeros where Keras zeros
      them (``zero_output_for_mask``; a ``Bidirectional`` returning sequences; processing-order steps before the
      first valid one).
    - ``return_state``: a tuple ``(output, h, c)`` (``Bidirectional``: ``(output, h_f, c_f, h_b, c_b)``; with
      ``merge_mode=None`` the output is two entries); a GRU's has no ``c``.

    Args:
        outputs: ``(output, (h_n, c_n))`` from a one-layer ``tritonlstm.LSTM`` (or ``torch.nn.LSTM``).
        layer: the Keras layer, or a dict of its options: ``return_sequences``, ``return_state``,
            ``go_backwards``, ``bidirectional``, ``merge_mode``, ``zero_output_for_mask``, ``unroll``.
        lengths: ``(B,)`` the per-sequence lengths given to the module, or ``None`` (no mask).
        batch_first: whether ``output`` is ``(B, T, ·)`` (as from :func:`from_keras`) or ``(T, B, ·)``.

    Example::

        >>> layer = keras.layers.Bidirectional(keras.layers.LSTM(8, return_state=True))
        >>> y, h_f, c_f, h_b, c_b = layer(x, mask=mask)
        >>> lstm, lengths = tritonlstm.keras.from_keras(layer), tritonlstm.keras.lengths_from_mask(mask)
        >>> same = tritonlstm.keras.keras_outputs(lstm(x, lengths=lengths), layer, lengths)
    """
    config = _output_config(_keras() if not isinstance(layer, Mapping) else None, layer)
    y, state = outputs
    h_n, c_n = state if isinstance(state, (tuple, list)) else (state, None)
    if y.dim() != 3:
        raise ValueError(f"expected a batched (3-D) output, got {y.dim()}-D")
    if not batch_first:
        y = y.transpose(0, 1)
    directions = 2 if config.bidirectional else 1
    if h_n.shape[0] != directions:
        raise ValueError(
            f"expected the outputs of a one-layer {'bi' if directions == 2 else 'uni'}directional LSTM or GRU "
            f"(h_n of {directions} rows), got h_n of shape {tuple(h_n.shape)}"
        )
    if lengths is not None and config.unroll and (config.go_backwards or config.bidirectional):
        # forwards, Keras's unrolled masked loop computes what its symbolic loop does (checked); backwards, the
        # torch backend fails and the tensorflow one zeroes outputs by the unreversed mask
        raise ValueError(
            "unroll=True with masking is not supported for go_backwards or Bidirectional layers: Keras's unrolled "
            "loop handles a reversed mask differently on each backend; use unroll=False"
        )
    valid = None
    if lengths is not None:
        valid = torch.arange(y.shape[1], device=y.device) < torch.as_tensor(lengths, device=y.device)[:, None]
    zero_output = config.zero_output_for_mask
    if zero_output is None:
        zero_output = config.return_sequences if config.bidirectional else False

    sequences = y.chunk(directions, dim=-1)
    merged = []
    for d, seq in enumerate(sequences):
        go_backwards = config.go_backwards or d == 1
        out = _keras_direction(seq, valid, go_backwards, zero_output)
        if config.return_sequences:
            merged.append(out.flip(1) if d == 1 else out)  # Bidirectional flips its backward sequence back
        else:
            merged.append(out[:, -1])
    if directions == 1:
        output = (merged[0],)
    else:
        a, b = merged
        merge = config.merge_mode
        if merge == "concat":
            output = (torch.cat([a, b], dim=-1),)
        elif merge == "sum":
            output = (a + b,)
        elif merge == "ave":
            output = ((a + b) / 2,)
        elif merge == "mul":
            output = (a * b,)
        elif merge is None:
            output = (a, b)
        else:
            raise ValueError(f"merge_mode={merge!r}: expected 'concat', 'sum', 'ave', 'mul' or None")
    if config.return_state:
        states = tuple(s for d in range(directions) for s in ((h_n[d], c_n[d]) if c_n is not None else (h_n[d],)))
        return output + states
    return output[0] if len(output) == 1 else output


def _keras_direction(seq: torch.Tensor, valid: torch.Tensor | None, go_backwards: bool, zero_output: bool):
    """One direction's output sequence in Keras's processing order, masked steps as Keras fills them."""
    if go_backwards:
        seq = seq.flip(1)
        valid = valid.flip(1) if valid is not None else None
    if valid is None or zero_output:
        return seq  # the module's output is already zero past each length
    # Keras repeats the previous output at a masked step (zeros before the first valid one)
    T = seq.shape[1]
    steps = torch.arange(T, device=seq.device).expand_as(valid)
    last_valid = torch.where(valid, steps, -1).cummax(dim=1).values  # (B, T)
    taken = seq.gather(1, last_valid.clamp(min=0)[..., None].expand_as(seq))
    return torch.where((last_valid >= 0)[..., None], taken, 0)


def lengths_from_mask(mask) -> torch.Tensor:
    """The ``lengths=`` of a Keras mask ``(B, T)`` that keeps a prefix of each sequence (right padding).

    Raises ``ValueError`` for any other mask (holes, left padding), which ``lengths=`` cannot express.

    Example::

        >>> lengths_from_mask(torch.tensor([[True, True, False], [True, True, True]]))
        tensor([2, 3])
    """
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"expected a (batch, time) mask, got shape {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]
    if not torch.equal(prefix, mask):
        rows = (prefix != mask).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"the mask is not right-padded (a run of True then only False) in rows {rows[:8]}: "
            "lengths= cannot express it"
        )
    return lengths.to(torch.int64)
