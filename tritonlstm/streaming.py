"""Streaming: run recurrent layers chunk by chunk, carrying their state from one call to the next.

Speech, TTS and online forecasting feed a model a chunk at a time. Two forms:

* :class:`LSTMStream` (``lstm.stream(batch_size)``): one :class:`tritonlstm.LSTM` with its ``(h, c)`` held in
  fixed buffers and updated in place, so a CUDA graph captured around one call replays on the same memory; a
  :class:`tritonlstm.GRU`'s ``gru.stream(batch_size)`` holds its ``h`` the same way.
* :class:`Stateful` (``tritonlstm.stateful(model)``): any model holding tritonlstm ``LSTM``/``LSTMCell`` or
  ``GRU``/``GRUCell`` layers, with the state of every layer as explicit inputs and outputs: one ``h`` and one ``c``
  tensor per LSTM layer, one ``h`` per GRU layer.
  ``tritonlstm.export.export_onnx(..., stateful=True)`` exports this form, with the state names of
  :attr:`Stateful.state_input_names` and :attr:`Stateful.state_output_names` as graph inputs and outputs.

A chunked run gives the numbers of one call on the whole sequence: bit for bit on the reference implementation,
within the dtype's rounding on the Triton kernels (their sequence kernels may reduce in another order). A last
partial chunk takes ``lengths=`` as usual; every row needs at least one step in every chunk. Randomness is per
call: in training, dropout masks and zoneout draws are made per chunk, so only eval mode (or no regulariser)
reproduces the whole-sequence numbers. Bidirectional and ``reverse=True`` layers cannot stream: they start at
the end of the sequence, which a chunk does not have.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


def check_streamable(module: nn.Module, name: str = "this LSTM") -> None:
    """Refuse, with the reason, a layer whose state cannot be carried from one chunk to the next."""
    if getattr(module, "bidirectional", False):
        raise ValueError(
            f"{name} is bidirectional and cannot stream: its reverse direction starts at the end of the sequence, "
            "which a chunk does not have. Run whole sequences, or stream a unidirectional model"
        )
    if getattr(module, "reverse", False):
        raise ValueError(
            f"{name} has reverse=True and cannot stream: it starts at the end of the sequence, which a chunk does "
            "not have. Run whole sequences, or stream a forward model"
        )


def zero_state(lstm, batch_size: int | None, device=None, dtype=None):
    """``(h_0, c_0)`` zeros for a unidirectional ``lstm``: ``[L, B, R]`` and ``[L, B, H]`` (no ``B`` if None); a
    GRU's ``h_0`` alone."""
    check_streamable(lstm)
    weight = lstm.weight_hh_l0
    device = weight.device if device is None else device
    return lstm._zero_state(batch_size, device, weight.dtype if dtype is None else dtype)


class LSTMStream:
    """One :class:`tritonlstm.LSTM` (or :class:`tritonlstm.GRU`) run chunk by chunk, its state in fixed buffers
    updated in place.

    Made by ``lstm.stream(batch_size)``. Each call runs one chunk from the held state, copies the final state back
    into the same buffers and returns the chunk's output; nothing reads back to the host, so on a GPU a CUDA graph
    captured around a call (fixed chunk shape) replays on the same memory. The state is detached between chunks:
    gradients stay within a chunk (truncated backpropagation through time).

    Example::

        >>> stream = lstm.stream(batch_size=4)
        >>> for chunk in chunks:            # [4, T_chunk, I] each (batch_first=True)
        ...     y = stream(chunk)           # the numbers of lstm(torch.cat(chunks, 1)), chunk by chunk
        >>> h_n, c_n = stream.state         # a GRU's stream holds h_n alone
        >>> stream.reset()                  # zeros, in place, for the next utterance
    """

    def __init__(self, lstm, batch_size: int | None, device=None, dtype=None) -> None:
        self.lstm = lstm
        state = zero_state(lstm, batch_size, device, dtype)
        self.h, self.c = state if isinstance(state, tuple) else (state, None)

    @property
    def state(self):
        """The held ``(h, c)``: ``[L, B, R]`` and ``[L, B, H]``, the buffers themselves (not copies); a GRU's
        ``h``."""
        return self.h if self.c is None else (self.h, self.c)

    def reset(self) -> None:
        """Zero the state in place."""
        for buffer in (self.h, self.c):
            if buffer is not None:
                buffer.zero_()

    def __call__(self, chunk: torch.Tensor, *, lengths: torch.Tensor | None = None) -> torch.Tensor:
        batched = self.h.dim() == 3
        if chunk.dim() != (3 if batched else 2):
            raise ValueError(
                f"this stream holds {'batched' if batched else 'unbatched'} state {tuple(self.h.shape)}, so a chunk "
                f"must be {'3-D' if batched else '2-D'}, got {chunk.dim()}-D {tuple(chunk.shape)}"
            )
        if batched:
            B = chunk.size(0 if self.lstm.batch_first else 1)
            if B != self.h.size(1):
                shapes = f"h {tuple(self.h.shape)}" + (f", c {tuple(self.c.shape)}" if self.c is not None else "")
                raise ValueError(
                    f"the chunk's batch is {B}, the stream's is {self.h.size(1)} (state {shapes}): make a stream per "
                    f"batch size with {'lstm' if self.c is not None else 'gru'}.stream({B})"
                )
        # with autograd on, the op saves its initial state for the backward: give it a copy, since the buffers
        # change in place below
        buffers = (self.h,) if self.c is None else (self.h, self.c)
        hx = tuple(b.clone() for b in buffers) if torch.is_grad_enabled() else buffers
        y, state = self.lstm(chunk, hx[0] if self.c is None else hx, lengths=lengths)
        with torch.no_grad():
            for buffer, new in zip(buffers, (state,) if self.c is None else state):
                buffer.copy_(new)
        return y


def _recurrent_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from tritonlstm.modules import GRU, LSTM, GRUCell, LSTMCell

    return [(path, m) for path, m in model.named_modules() if isinstance(m, (LSTM, LSTMCell, GRU, GRUCell))]


def _kinds(module: nn.Module) -> tuple[str, ...]:
    """The state tensors of one layer of ``module``: ``h`` and ``c`` for an LSTM, ``h`` for a GRU."""
    return ("h",) if getattr(module, "_cell", "lstm") == "gru" else ("h", "c")


def _is_cell(module: nn.Module) -> bool:
    return isinstance(module, nn.RNNCellBase)


def _layer_count(module: nn.Module) -> int:
    return 1 if _is_cell(module) else module.num_layers


class Stateful(nn.Module):
    """``model`` with the state of every tritonlstm ``LSTM``/``LSTMCell``/``GRU``/``GRUCell`` in it as explicit
    inputs and outputs.

    ``outputs, state = stateful(*args, state=state)`` calls ``model(*args)``; each recurrent layer starts from its
    part of ``state`` (zeros, as the layer itself makes them, when ``state`` is None) and the layers' final states
    come back in the same order and shapes, ready for the next chunk. ``state`` is a tuple with, per recurrent
    module (in ``model.named_modules()`` order) and per layer, ``h`` ``[B, R]`` then ``c`` ``[B, H]`` (``[R]`` and
    ``[H]`` for unbatched input; a GRU layer has ``h`` ``[B, H]`` alone). Their names, as the stateful ONNX
    export writes them, are :attr:`state_input_names` and :attr:`state_output_names`: ``h_in_l0, c_in_l0,
    h_in_l1, ...`` and ``h_out_l0, ...`` when the model holds one recurrent module, prefixed by the module's path
    (``decoder_cell_h_in_l0``) when it holds more.

    The model must not pass a state to its recurrent modules itself (that is what this supplies). A module the
    model calls more than once per forward (a decoder cell in a loop) carries its state from call to call.

    Example::

        >>> stream = tritonlstm.stateful(model)
        >>> state = None
        >>> for chunk in chunks:
        ...     out, state = stream(chunk, state=state)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        layers = _recurrent_layers(model)
        if not layers:
            raise ValueError(
                "stateful: the model holds no tritonlstm.LSTM, LSTMCell, GRU or GRUCell, so there is no state to "
                "carry (build it with tritonlstm's layers; tritonlstm.export.export_onnx swaps torch.nn's for them)"
            )
        for path, module in layers:
            check_streamable(module, f"stateful: {path or 'the model'}")
        self._paths = [path for path, _ in layers]
        prefixes = [""] if len(layers) == 1 else [path.replace(".", "_") + "_" for path in self._paths]
        self.state_input_names, self.state_output_names = [], []
        for prefix, (_, module) in zip(prefixes, layers):
            for k in range(_layer_count(module)):
                self.state_input_names += [f"{prefix}{kind}_in_l{k}" for kind in _kinds(module)]
                self.state_output_names += [f"{prefix}{kind}_out_l{k}" for kind in _kinds(module)]

    def forward(self, *args, state=None, **kwargs):
        layers = [self.model.get_submodule(path) for path in self._paths]
        counts = [_layer_count(m) for m in layers]
        if state is not None:
            state = tuple(state)
            if len(state) != len(self.state_input_names):
                raise ValueError(
                    f"stateful: the state has {len(state)} tensors, the model's {sum(counts)} recurrent layers need "
                    f"{len(self.state_input_names)}: {', '.join(self.state_input_names)}"
                )
        offsets = [0]
        for count, module in zip(counts, layers):
            offsets.append(offsets[-1] + len(_kinds(module)) * count)
        # per module, its layers' tensors h, c, h, c, ... (h, h, ... for a GRU): the given state, then each call's
        # final state
        carried = [None if state is None else state[a:b] for a, b in zip(offsets, offsets[1:])]
        with contextlib.ExitStack() as hooks:
            for k, (path, module) in enumerate(zip(self._paths, layers)):
                names = self.state_input_names[offsets[k] : offsets[k + 1]]
                hooks.enter_context(_carry(module, path or "the model", names, carried, k))
            outputs = self.model(*args, **kwargs)
        new_state = []
        for path, part in zip(self._paths, carried):
            if part is None:
                raise ValueError(f"stateful: {path or 'the model'} was not called, so it has no state to return")
            new_state.extend(part)
        return outputs, tuple(new_state)


@contextlib.contextmanager
def _carry(module: nn.Module, path: str, names: list[str], carried: list, k: int):
    """Hooks that feed ``carried[k]`` (per-layer ``h, c, h, c, ...``; a GRU's ``h, h, ...``) to ``module`` and store
    its final state there."""
    lstm = len(_kinds(module)) == 2

    def before(mod, args, kwargs):
        if (len(args) > 1 and args[1] is not None) or kwargs.get("hx") is not None:
            raise ValueError(
                f"stateful: {path} is called with a state of its own; stateful() supplies every layer's state, so "
                "call the layer without one (or carry the state in the model yourself and export it as it is)"
            )
        part = carried[k]
        if part is None:
            return None
        _check_state(mod, path, names, part, args[0])
        if lstm:
            h, c = part[0::2], part[1::2]
            hx = (h[0], c[0]) if _is_cell(mod) else (torch.stack(h), torch.stack(c))
        else:
            hx = part[0] if _is_cell(mod) else torch.stack(part)
        return (args[0], hx, *args[2:]), kwargs

    def after(mod, args, kwargs, output):
        if _is_cell(mod):
            carried[k] = tuple(output) if lstm else (output,)
        elif lstm:
            h_n, c_n = output[1]
            carried[k] = tuple(t for pair in zip(h_n.unbind(0), c_n.unbind(0)) for t in pair)
        else:
            carried[k] = tuple(output[1].unbind(0))

    handles = [
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_state(module: nn.Module, path: str, names: list[str], part, input) -> None:
    """Every state tensor of ``module`` has the shape and dtype its input needs, else a ValueError naming them."""
    is_cell = _is_cell(module)
    if isinstance(input, PackedSequence):
        batch, dtype = (int(input.batch_sizes[0]),), input.data.dtype
    elif input.dim() == (2 if is_cell else 3):
        batch, dtype = (input.size(0 if is_cell or module.batch_first else 1),), input.dtype
    else:
        batch, dtype = (), input.dtype
    R = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    kinds = _kinds(module)
    for j, (name, t) in enumerate(zip(names, part)):
        shape = (*batch, R if kinds[j % len(kinds)] == "h" else module.hidden_size)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"stateful: state {name!r} of {path} must have shape {shape} and dtype {dtype} "
                f"(batch {batch[0] if batch else 'none'} from this call's input), got {got}"
            )


def stateful(model: nn.Module) -> Stateful:
    """:class:`Stateful` view of ``model``: the state of its recurrent layers as explicit inputs and outputs."""
    return Stateful(model)
