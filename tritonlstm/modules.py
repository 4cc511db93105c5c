"""``tritonlstm.LSTM``/``LSTMCell`` and ``tritonlstm.GRU``/``GRUCell``: torch.nn's interfaces on the Triton kernels."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from tritonlstm import functional, reference
from tritonlstm.dispatch import default_backend, validate_backend

_SCALAR_TYPE_NAMES = {
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.float32: "Float",
    torch.float64: "Double",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.bool: "Bool",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def _scalar_type_name(dtype: torch.dtype) -> str:
    # ATen prints dtypes by their C++ ScalarType names in its messages
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _check_attributes(
    input: torch.Tensor, hx: tuple[torch.Tensor, ...], params: list[torch.Tensor], states: int = 2
) -> None:
    """The checks ATen's LSTM (GRU: ``states=1``) makes after nn.LSTM's Python ones, in the same order and with
    the same messages.

    nn.LSTM's own message for a hidden state or parameter of another dtype depends on which ATen backend the
    call lands in (mkldnn on CPU says "get_mkldnn_dtype: unsupported data type"); ours is ATen's generic
    check_attributes wording, with the same exception type.
    """
    if len(hx) != states:  # the LSTM's two, the GRU's one
        raise RuntimeError("lstm expects two hidden states")
    for name, tensors in (("hidden", hx), ("parameter", params)):
        for t in tensors:
            if t.device != input.device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor at "
                    f"{input.device} and {name} tensor at {t.device}"
                )
    if input.size(0) == 0:  # input is time-major here
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    for name, tensors in (("hidden", hx), ("parameter", params)):
        for t in tensors:
            if t.dtype != input.dtype:
                raise RuntimeError(
                    f"Input and {name} tensors are not the same dtype, found input tensor with "
                    f"{_scalar_type_name(input.dtype)} and {name} tensor with {_scalar_type_name(t.dtype)}"
                )


# Device types with an autocast mode, asked once here: under torch.compile, torch 2.11's dynamo cannot trace
# torch.amp.is_autocast_available (2.13's can), and torch.is_autocast_enabled raises for the other types.
_AUTOCAST_DEVICES = frozenset(
    t for t in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", torch._C._get_privateuse1_backend_name())
    if torch.amp.is_autocast_available(t)
)


def _autocast(tensors, device: torch.device):
    """Under torch.autocast, the recurrent op runs in the autocast dtype like a matmul: cast its float inputs.

    The casts are differentiable, so gradients reach fp32 master weights in fp32. The cell state stays fp32
    inside the kernels whatever the dtype.
    """
    if device.type not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device.type):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device.type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


class LSTM(nn.RNNBase):
    r"""Multi-layer LSTM with ``torch.nn.LSTM``'s constructor, parameters, state_dict, inputs, outputs and errors,
    computed by fused Triton kernels.

    For each layer and time step (gates i, f, g, o as in torch.nn.LSTM)::

        c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
        h_t = sigmoid(o_t) * tanh(c_t)

    It derives from ``nn.RNNBase(mode="LSTM")`` rather than ``nn.LSTM``, so parameters, initialisation and
    argument checks are torch's own, while dynamo does not treat the module as an ``nn.LSTM``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype:
            as for ``torch.nn.LSTM`` (``proj_size > 0`` included: LSTMP, projected in the same step pass).
        backend: ``"auto"`` (Triton wherever it can run, else the PyTorch reference loop), ``"triton"`` or
            ``"reference"``; ``None`` reads ``TRITONLSTM_BACKEND`` (default ``"auto"``). May be reassigned later.
            Every backend runs behind the same custom op, so compile, export and ONNX see one graph.
        reverse: run every layer from the last time step to the first (a single direction; Keras's
            ``go_backwards``). Outputs stay aligned with the input's time axis: ``output[t]`` belongs to input
            step ``t``, and ``h_n``/``c_n`` are the states after step 0 (with ``lengths``, each row starts at its
            own last step).
        recurrent_dropout: variational recurrent dropout (Gal & Ghahramani; Keras's ``recurrent_dropout``), a
            probability in [0, 1), default 0. In training each forward call draws one Bernoulli(1-p)/(1-p) mask per
            layer, direction, batch row and recurrent feature; it multiplies h_{t-1} where it enters the recurrent
            product at every step, shared by the four gates, never the output or h_n. Identity in eval.
        input_dropout: Keras's ``dropout``: in training one Bernoulli(1-p)/(1-p) mask per layer, batch row and input
            feature, shared over time, on every layer's input before the input GEMM. Identity in eval.
        zoneout: ``p`` or ``(p_h, p_c)`` (Krueger et al.), default 0. In training every element of h and of c
            keeps its previous value with probability p_h / p_c, a new mask at every step; the output is the
            zoned h. In eval the expectation ``p * previous + (1 - p) * new``.
        weight_drop: DropConnect on ``W_hh`` (AWD-LSTM): in training each forward call uses
            ``F.dropout(weight_hh, p)`` (scaled by 1/(1-p)); gradients reach the parameter, which stays as it is.

    Inputs: ``input, (h_0, c_0)`` as for ``torch.nn.LSTM``: batched 3-D, unbatched 2-D, or a ``PackedSequence``
    (sorted or not). Extension: ``lengths=`` (keyword) gives per-sequence lengths of a padded batch, the fast
    variable-length path: same numbers as the packed input, no PackedSequence built.

    Outputs: ``output, (h_n, c_n)`` as for ``torch.nn.LSTM``.

    Example::

        >>> lstm = tritonlstm.LSTM(64, 256, num_layers=2, batch_first=True).cuda()
        >>> y, (h_n, c_n) = lstm(torch.randn(8, 100, 64, device="cuda"))
        >>> y.shape, h_n.shape
        (torch.Size([8, 100, 256]), torch.Size([2, 8, 256]))
        >>> y, (h_n, c_n) = lstm(x_padded, lengths=torch.tensor([100, 37, 5, 80, 1, 64, 99, 100]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        reverse: bool = False,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
            device, dtype,
        )  # fmt: skip
        if reverse and bidirectional:
            raise ValueError("reverse=True runs a single direction; it cannot be combined with bidirectional=True")
        self.backend = validate_backend(backend) if backend is not None else default_backend()
        self.reverse = bool(reverse)
        self.recurrent_dropout = functional.check_probability("recurrent_dropout", recurrent_dropout)
        self.input_dropout = functional.check_probability("input_dropout", input_dropout)
        self.zoneout = functional.zoneout_pair(zoneout)
        self.weight_drop = functional.check_probability("weight_drop", weight_drop)

    def _regularisers(self) -> dict:
        return {
            "recurrent_dropout": self.recurrent_dropout, "input_dropout": self.input_dropout,
            "zoneout": self.zoneout, "weight_drop": self.weight_drop,
        }  # fmt: skip

    def initial_state(self, batch_size: int | None, *, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h_0, c_0)`` to stream this LSTM chunk by chunk: ``y, state = lstm(chunk, state)``.

        Shapes ``[num_layers, B, R]`` and ``[num_layers, B, hidden_size]`` (R = proj_size or hidden_size; no ``B``
        for ``batch_size=None``, unbatched chunks), on the parameters' device and dtype unless given. A
        bidirectional or ``reverse=True`` LSTM cannot stream (it starts at the end of the sequence): ValueError.
        """
        from tritonlstm import streaming

        return streaming.zero_state(self, batch_size, device, dtype)

    def stream(self, batch_size: int | None, *, device=None, dtype=None):
        """A :class:`tritonlstm.streaming.LSTMStream`: chunk by chunk with the state held in place (CUDA graphs)."""
        from tritonlstm import streaming

        return streaming.LSTMStream(self, batch_size, device, dtype)

    def flatten_parameters(self) -> None:
        """No-op kept for drop-in use: the kernels take the parameters as they are, no cuDNN weight buffer."""

    # torch.nn.LSTM's own shape checks; they read only attributes that RNNBase sets
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def extra_repr(self) -> str:
        return _options_repr(self, super().extra_repr())

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("reverse", False)  # modules pickled before the option existed
        for name in ("recurrent_dropout", "input_dropout", "weight_drop"):
            self.__dict__.setdefault(name, 0.0)
        self.__dict__.setdefault("zoneout", (0.0, 0.0))

    def forward(self, input, hx=None, *, lengths=None):
        """``torch.nn.LSTM.forward``, plus ``lengths``: per-sequence lengths of a padded batch.

        With ``lengths`` (an integer tensor of shape ``(B,)``, on the CPU or the input's device, 1 <= len <= T),
        the output is zero past each sequence's length and ``(h_n, c_n)`` are taken at each sequence's own last
        step (the reverse direction starts there): the numbers nn.LSTM gives for the same batch packed, without
        building a PackedSequence.
        """
        params = [getattr(self, name) for name in self._flat_weights_names]
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths= cannot be combined with PackedSequence input: the PackedSequence holds them")
            return self._forward_packed(input, hx, params)

        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        max_batch_size = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = self._zero_state(max_batch_size, input.device, input.dtype)
            self.check_forward_args(input, hx, None)
        else:
            if is_batched:
                if hx[0].dim() != 3 or hx[1].dim() != 3:
                    raise RuntimeError(
                        "For batched 3-D input, hx and cx should "
                        f"also be 3-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
            else:
                if hx[0].dim() != 2 or hx[1].dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should "
                        f"also be 2-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self.check_forward_args(input, hx, None)

        hx = tuple(_autocast(hx, input.device))
        input, *params = _autocast([input, *params], input.device)
        _check_attributes(input.transpose(0, 1) if self.batch_first else input, hx, params)
        if lengths is not None:
            if not is_batched:
                raise ValueError("lengths= needs batched (3-D) input")
            lengths = _check_lengths(lengths, input, self.batch_first)
        output, h_n, c_n = functional.lstm(
            input, hx, params, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
            self.batch_first, backend=self.backend, lengths=lengths, reverse=self.reverse, **self._regularisers(),
        )  # fmt: skip
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _zero_state(self, batch: int | None, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h_0, c_0)``: ``[layers * directions, B, R]`` and ``[..., B, hidden_size]`` (no B for None)."""
        layers = self.num_layers * (2 if self.bidirectional else 1)
        rows = () if batch is None else (batch,)
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(layers, *rows, real_hidden_size, dtype=dtype, device=device)
        c = torch.zeros(layers, *rows, self.hidden_size, dtype=dtype, device=device)
        return h, c

    def _forward_packed(self, input: PackedSequence, hx, params):
        output, h_n, c_n = _run_packed(self, functional.lstm, input, hx, params)
        return output, (h_n, c_n)


def _run_packed(module, run, input: PackedSequence, hx, params):
    """PackedSequence in and out, computed on the padded batch with per-sequence lengths (original order) by
    ``run`` (:func:`functional.lstm` or :func:`functional.gru`): ``(packed output, *final states)``."""
    data, batch_sizes, sorted_indices, unsorted_indices = input
    max_batch_size = int(batch_sizes[0])
    hx = module._zero_state(max_batch_size, data.device, data.dtype) if hx is None else hx
    # nn.LSTM/nn.GRU sort hx into the packed order; here the batch stays in the caller's order, so hx is used as given
    module.check_forward_args(data, hx, batch_sizes)
    single = isinstance(hx, torch.Tensor)  # a GRU's h_0; an LSTM's (h_0, c_0) as a tuple or list
    states = tuple(_autocast((hx,) if single else hx, data.device))
    data, *params = _autocast([data, *params], data.device)
    _check_attributes(data.unsqueeze(0), states, params, 1 if single else 2)
    t_index, b_index, lengths = functional.packed_layout(batch_sizes, sorted_indices, data.device)
    padded = data.new_zeros(len(batch_sizes), max_batch_size, data.size(-1)).index_put((t_index, b_index), data)
    output, *finals = run(
        padded, states[0] if single else states, params, module.bias, module.num_layers,
        module.dropout, module.training, module.bidirectional, False, backend=module.backend, lengths=lengths,
        reverse=module.reverse, **module._regularisers(),
    )  # fmt: skip
    return PackedSequence(output[t_index, b_index], batch_sizes, sorted_indices, unsorted_indices), *finals


def _options_repr(module, s: str) -> str:
    """nn.RNNBase's ``extra_repr`` ``s`` with the options torch's modules do not have, where they are set."""
    if getattr(module, "reverse", False):
        s += ", reverse=True"
    for name, value in module._regularisers().items():
        if any(value) if isinstance(value, tuple) else value:
            s += f", {name}={value}"
    return s if module.backend == "auto" else f"{s}, backend={module.backend!r}"


def _check_lengths(lengths, input: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Validate ``lengths=`` for a padded batch; returns it as an int64 tensor on the input's device."""
    T, B = (input.size(1), input.size(0)) if batch_first else (input.size(0), input.size(1))
    lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one length per batch element, got {tuple(lengths.shape)}")
    if lengths.device.type != "cpu" and lengths.device != input.device:
        raise ValueError(f"lengths must be on the CPU or on the input's device ({input.device}), got {lengths.device}")
    # the value check reads the lengths on the host: impossible while a CUDA graph is being captured (skipped
    # there), and a runtime assert in the graph under torch.compile / torch.export
    capturing = lengths.is_cuda and torch.cuda.is_current_stream_capturing()
    if B > 0 and not capturing:
        low, high = lengths.min().item(), lengths.max().item()  # symbolic (unbacked) under compile and export
        if torch.compiler.is_compiling():
            # dynamo takes only constant messages (T may be symbolic here)
            torch._check(low >= 1, lambda: "lengths must lie between 1 and the sequence length")
            torch._check(high <= T, lambda: "lengths must lie between 1 and the sequence length")
        elif low < 1 or high > T:
            raise ValueError(
                f"lengths must lie between 1 and the sequence length {T}, got values from {low} to {high}"
            )
    return lengths.to(device=input.device, dtype=torch.int64)


class LSTMCell(nn.RNNCellBase):
    r"""One LSTM step with ``torch.nn.LSTMCell``'s constructor, parameters, inputs, outputs and errors, computed
    by the same fused Triton step kernel as :class:`LSTM` (forward and backward).

    Args:
        input_size, hidden_size, bias, device, dtype: as for ``torch.nn.LSTMCell``.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``; ``None`` reads ``TRITONLSTM_BACKEND``.
        zoneout: ``p`` or ``(p_h, p_c)`` as for :class:`LSTM` (the Tacotron decoder's cell): in training each
            element of h_1 / c_1 is the previous one with probability p (a new mask every call), in eval the
            expectation ``p * previous + (1 - p) * new``.

    Inputs: ``input`` ``(B, input_size)`` or unbatched ``(input_size,)``, and optional ``(h_0, c_0)``. Keyword
    ``recurrent_mask`` ``(B, hidden_size)`` (or ``(hidden_size,)``): a recurrent dropout mask multiplying h_0 in the
    recurrent product only (applied in eval too). Draw it once per sequence and pass the same mask at every step,
    e.g. ``torch.bernoulli(torch.full((B, H), 1 - p)) / (1 - p)``: a new draw per call would not be variational.
    Outputs: ``(h_1, c_1)``.

    Example::

        >>> cell = tritonlstm.LSTMCell(10, 20).cuda()
        >>> h, c = cell(torch.randn(3, 10, device="cuda"))
        >>> for _ in range(5):          # state carried step to step, e.g. autoregressive decoding
        ...     h, c = cell(torch.randn(3, 10, device="cuda"), (h, c))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        zoneout: float | tuple[float, float] = 0.0,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)
        self.backend = validate_backend(backend) if backend is not None else default_backend()
        self.zoneout = functional.zoneout_pair(zoneout)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if any(getattr(self, "zoneout", (0.0, 0.0))):
            s += f", zoneout={self.zoneout}"
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("zoneout", (0.0, 0.0))  # modules pickled before the option existed

    def forward(
        self,
        input: torch.Tensor,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        recurrent_mask: torch.Tensor | None = None,
    ):
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if not is_batched else hx
        params = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        if not isinstance(hx, torch.Tensor):
            hx = tuple(_autocast(hx, input.device))
        input, *params = _autocast([input, *params], input.device)
        self._check_cell_args(input, hx, *params)
        if recurrent_mask is not None:
            recurrent_mask = recurrent_mask if is_batched else recurrent_mask.unsqueeze(0)
            if recurrent_mask.shape != hx[0].shape:
                raise ValueError(
                    f"recurrent_mask must have h_0's shape {tuple(hx[0].shape)}, got {tuple(recurrent_mask.shape)}"
                )
            recurrent_mask = recurrent_mask.to(input.dtype)
        seed = reference.draw_zoneout_seed(input.device) if self.training and any(self.zoneout) else None
        _, h, c = functional.lstm_layer(
            input.unsqueeze(0), hx[0], hx[1], *params, backend=self.backend, h_mask=recurrent_mask,
            zoneout=self.zoneout, zoneout_seed=seed,
        )  # fmt: skip
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c

    def _check_cell_args(self, input: torch.Tensor, hx, weight_ih, weight_hh, bias_ih, bias_hh) -> None:
        """ATen's lstm_cell checks, in its order and with its messages.

        Device and dtype mismatches fail inside nn.LSTMCell's first matmul on the CPU; the messages below are
        those matmuls' (which operand is named first depends on the operation, hence the asymmetry). One case
        differs on purpose: a c_0 of another dtype, which nn.LSTMCell's CPU path silently promotes, is an error.
        """
        if isinstance(hx, torch.Tensor):
            raise TypeError("lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, not Tensor")
        if len(hx) != 2:
            raise RuntimeError("lstm_cell expects two hidden states")
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        for idx, h in enumerate(hx):
            if input.size(0) != h.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{idx} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{idx} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}")

        def device_error(found: torch.device, expected: torch.device) -> RuntimeError:
            return RuntimeError(f"Tensor on device {found} is not on the expected device {expected}!")

        if weight_ih.device != input.device:
            raise device_error(weight_ih.device, input.device)
        if hx[0].device != input.device:
            raise device_error(input.device, hx[0].device)
        for t in (hx[1], weight_hh, bias_ih, bias_hh):
            if t is not None and t.device != input.device:
                raise device_error(t.device, input.device)

        def dtype_error(first: str, a: torch.dtype, b: torch.dtype) -> RuntimeError:
            return RuntimeError(
                f"{first} and mat2 must have the same dtype, but got {_scalar_type_name(a)} and {_scalar_type_name(b)}"
            )

        w_ih, w_hh = weight_ih.dtype, weight_hh.dtype
        if input.dtype != w_ih:  # the input is the odd one out when the weights agree, else the weight is
            raise dtype_error("mat1" if w_ih == w_hh else "self", input.dtype, w_ih)
        if w_hh != input.dtype:
            raise dtype_error("self", input.dtype, w_hh)
        if hx[0].dtype != w_hh:
            raise dtype_error("mat1", hx[0].dtype, w_hh)
        for b in (bias_ih, bias_hh):
            if b is not None and b.dtype != input.dtype:  # addmm(bias, ...) names the bias "self"
                raise dtype_error("self", b.dtype, input.dtype)
        if hx[1].dtype != input.dtype:
            raise RuntimeError(
                "Input and hidden tensors are not the same dtype, found input tensor with "
                f"{_scalar_type_name(input.dtype)} and hidden tensor with {_scalar_type_name(hx[1].dtype)}"
            )


class GRU(nn.RNNBase):
    r"""Multi-layer GRU with ``torch.nn.GRU``'s constructor, parameters, state_dict, inputs, outputs and errors,
    computed by the Triton kernels (gates r, z, n as in torch.nn.GRU)::

        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    It derives from ``nn.RNNBase(mode="GRU")``, as :class:`LSTM` does from ``mode="LSTM"``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as for
            ``torch.nn.GRU`` (which has no ``proj_size``: passing one is its ValueError).
        backend, reverse, recurrent_dropout, input_dropout, weight_drop: as for :class:`LSTM`.
        zoneout: one probability p, for h (the GRU has no cell state): in training each element of h keeps its
            previous value with probability p, a new mask every step; in eval ``p * previous + (1 - p) * new``.

    Inputs: ``input, h_0`` as for ``torch.nn.GRU`` (batched, unbatched or a ``PackedSequence``), and keyword
    ``lengths=`` as for :class:`LSTM`. Outputs: ``output, h_n``.

    Example::

        >>> gru = tritonlstm.GRU(64, 256, num_layers=2, batch_first=True).cuda()
        >>> y, h_n = gru(torch.randn(8, 100, 64, device="cuda"))
    """

    _cell = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        reverse: bool = False,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        **kwargs,
    ) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype
        )
        if reverse and bidirectional:
            raise ValueError("reverse=True runs a single direction; it cannot be combined with bidirectional=True")
        self.backend = validate_backend(backend) if backend is not None else default_backend()
        self.reverse = bool(reverse)
        self.recurrent_dropout = functional.check_probability("recurrent_dropout", recurrent_dropout)
        self.input_dropout = functional.check_probability("input_dropout", input_dropout)
        self.zoneout = functional.check_probability("zoneout", zoneout)
        self.weight_drop = functional.check_probability("weight_drop", weight_drop)

    _regularisers = LSTM._regularisers
    flatten_parameters = LSTM.flatten_parameters

    def extra_repr(self) -> str:
        return _options_repr(self, super().extra_repr())

    def forward(self, input, hx=None, *, lengths=None):
        """``torch.nn.GRU.forward``, plus ``lengths`` as for :meth:`LSTM.forward`."""
        params = [getattr(self, name) for name in self._flat_weights_names]
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths= cannot be combined with PackedSequence input: the PackedSequence holds them")
            return self._forward_packed(input, hx, params)
        if input.dim() not in (2, 3):
            raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if hx is None:
            hx = self._zero_state(input.size(0) if self.batch_first else input.size(1), input.device, input.dtype)
        self.check_forward_args(input, hx, None)
        input, hx, *params = _autocast([input, hx, *params], input.device)
        _check_attributes(input.transpose(0, 1) if self.batch_first else input, (hx,), params, states=1)
        if lengths is not None:
            if not is_batched:
                raise ValueError("lengths= needs batched (3-D) input")
            lengths = _check_lengths(lengths, input, self.batch_first)
        output, h_n = functional.gru(
            input, hx, params, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
            self.batch_first, backend=self.backend, lengths=lengths, reverse=self.reverse, **self._regularisers(),
        )  # fmt: skip
        if not is_batched:
            output, h_n = output.squeeze(batch_dim), h_n.squeeze(1)
        return output, h_n

    def initial_state(self, batch_size: int | None, *, device=None, dtype=None) -> torch.Tensor:
        """Zero ``h_0`` ``[num_layers, B, hidden_size]`` (no ``B`` for ``batch_size=None``) to stream this GRU chunk
        by chunk, ``y, h = gru(chunk, h)``; as :meth:`LSTM.initial_state` (bidirectional or ``reverse=True``:
        ValueError)."""
        from tritonlstm import streaming

        return streaming.zero_state(self, batch_size, device, dtype)

    def stream(self, batch_size: int | None, *, device=None, dtype=None):
        """A :class:`tritonlstm.streaming.LSTMStream` holding this GRU's ``h`` in place, as :meth:`LSTM.stream`."""
        from tritonlstm import streaming

        return streaming.LSTMStream(self, batch_size, device, dtype)

    def _zero_state(self, batch: int | None, device, dtype) -> torch.Tensor:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        rows = () if batch is None else (batch,)
        return torch.zeros(layers, *rows, self.hidden_size, dtype=dtype, device=device)

    def _forward_packed(self, input: PackedSequence, hx, params):
        return _run_packed(self, functional.gru, input, hx, params)


class GRUCell(nn.RNNCellBase):
    r"""One GRU step with ``torch.nn.GRUCell``'s constructor, parameters, inputs, outputs and errors, computed by
    the GRU's step kernel (forward and backward).

    Args:
        input_size, hidden_size, bias, device, dtype: as for ``torch.nn.GRUCell``.
        backend: as for :class:`LSTMCell`. zoneout: one probability, for h, as for :class:`GRU`.

    Inputs: ``input`` ``(B, input_size)`` or unbatched, optional ``h_0``, and keyword ``recurrent_mask`` as for
    :class:`LSTMCell`. Output: ``h_1``.
    """

    _cell = "gru"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
        backend: str | None = None, zoneout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)
        self.backend = validate_backend(backend) if backend is not None else default_backend()
        self.zoneout = functional.check_probability("zoneout", zoneout)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None, *, recurrent_mask=None) -> torch.Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        params = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        input, hx, *params = _autocast([input, hx, *params], input.device)
        _check_gru_cell_args(self, input, hx, *params)
        if recurrent_mask is not None:
            recurrent_mask = recurrent_mask if is_batched else recurrent_mask.unsqueeze(0)
            if recurrent_mask.shape != hx.shape:
                raise ValueError(
                    f"recurrent_mask must have h_0's shape {tuple(hx.shape)}, got {tuple(recurrent_mask.shape)}"
                )
            recurrent_mask = recurrent_mask.to(input.dtype)
        seed = reference.draw_zoneout_seed(input.device) if self.training and self.zoneout else None
        _, h = functional.gru_layer(
            input.unsqueeze(0), hx, *params, backend=self.backend, h_mask=recurrent_mask, zoneout=self.zoneout,
            zoneout_seed=seed,
        )  # fmt: skip
        return h if is_batched else h.squeeze(0)


def _check_gru_cell_args(cell: GRUCell, input, hx, weight_ih, weight_hh, bias_ih, bias_hh) -> None:
    """ATen's gru_cell checks, in its order and with its messages (the dtype ones are its matmuls')."""
    if input.size(1) != cell.input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {cell.input_size}")
    if input.size(0) != hx.size(0):
        raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}")
    if hx.size(1) != cell.hidden_size:
        raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {cell.hidden_size}")
    for t in (hx, weight_ih, weight_hh, bias_ih, bias_hh):
        if t is not None and t.device != input.device:
            raise RuntimeError(f"Tensor on device {t.device} is not on the expected device {input.device}!")
    for a, w in ((input, weight_ih), (hx, weight_hh)):
        if a.dtype != w.dtype:
            raise RuntimeError(
                "mat1 and mat2 must have the same dtype, but got "
                f"{_scalar_type_name(a.dtype)} and {_scalar_type_name(w.dtype)}"
            )
    for b in (bias_ih, bias_hh):
        if b is not None and b.dtype != input.dtype:
            raise RuntimeError(
                "self and mat2 must have the same dtype, but got "
                f"{_scalar_type_name(b.dtype)} and {_scalar_type_name(input.dtype)}"
            )


# torch.load(weights_only=True) rebuilds pickled modules only from allow-listed classes. Ours run no code on load
# beyond nn.Module's own, so they are allowed as torch.nn's modules are; user code can keep its allowlist as is.
torch.serialization.add_safe_globals([LSTM, LSTMCell, GRU, GRUCell])
