"""``tritonlstm.LSTM``: torch.nn.LSTM's interface on the Triton kernels."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from tritonlstm import functional
from tritonlstm.backend import default_backend, validate_backend

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


def _check_attributes(input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor], params: list[torch.Tensor]) -> None:
    """The checks ATen's LSTM makes after nn.LSTM's Python ones, in the same order and with the same messages.

    nn.LSTM's own message for a hidden state or parameter of another dtype depends on which ATen backend the
    call lands in (mkldnn on CPU says "get_mkldnn_dtype: unsupported data type"); ours is ATen's generic
    check_attributes wording, with the same exception type.
    """
    if len(hx) != 2:
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
            as for ``torch.nn.LSTM``. ``proj_size > 0`` is not supported yet and raises ``NotImplementedError``
            at forward.
        backend: ``"auto"`` (Triton wherever it can run, else the PyTorch reference loop), ``"triton"`` or
            ``"reference"``; ``None`` reads ``TRITONLSTM_BACKEND`` (default ``"auto"``). May be reassigned later.

    Inputs: ``input, (h_0, c_0)`` as for ``torch.nn.LSTM`` (a tensor, batched 3-D or unbatched 2-D;
    ``PackedSequence`` is not supported yet and raises ``NotImplementedError``).

    Outputs: ``output, (h_n, c_n)`` as for ``torch.nn.LSTM``.

    Example::

        >>> lstm = tritonlstm.LSTM(64, 256, num_layers=2, batch_first=True).cuda()
        >>> y, (h_n, c_n) = lstm(torch.randn(8, 100, 64, device="cuda"))
        >>> y.shape, h_n.shape
        (torch.Size([8, 100, 256]), torch.Size([2, 8, 256]))
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
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
            device, dtype,
        )  # fmt: skip
        self.backend = validate_backend(backend) if backend is not None else default_backend()

    def flatten_parameters(self) -> None:
        """No-op kept for drop-in use: the kernels take the parameters as they are, no cuDNN weight buffer."""

    # torch.nn.LSTM's own shape checks; they read only attributes that RNNBase sets
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def forward(self, input, hx=None):
        self._update_flat_weights()
        if isinstance(input, PackedSequence):
            raise NotImplementedError(
                "tritonlstm.LSTM does not accept PackedSequence input yet; pass the padded tensor "
                "(torch.nn.utils.rnn.pad_packed_sequence) instead"
            )
        if self.proj_size > 0:
            raise NotImplementedError(f"tritonlstm.LSTM does not support proj_size > 0 yet (got proj_size={self.proj_size})")

        num_directions = 2 if self.bidirectional else 1
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        max_batch_size = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            zeros = torch.zeros(
                self.num_layers * num_directions, max_batch_size, self.hidden_size,
                dtype=input.dtype, device=input.device,
            )  # fmt: skip
            hx = (zeros, zeros)
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

        params = [getattr(self, name) for name in self._flat_weights_names]
        _check_attributes(input.transpose(0, 1) if self.batch_first else input, hx, params)
        output, h_n, c_n = functional.lstm(
            input, hx, params, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
            self.batch_first, backend=self.backend,
        )  # fmt: skip
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)
