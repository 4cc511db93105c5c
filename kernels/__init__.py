"""Triton kernels of tritonlstm and their launchers (installed as ``tritonlstm.kernels``).

Set ``TRITON_INTERPRET=1`` before importing this package to run the kernels on CPU tensors.
"""

from tritonlstm.kernels.lstm import (
    INTERPRETER,
    SUPPORTED_DTYPES,
    acc_dtype,
    deinterleave_gates,
    interleave_gates,
    lstm_layer_backward,
    lstm_layer_forward,
    step_config,
)

__all__ = [
    "INTERPRETER",
    "SUPPORTED_DTYPES",
    "acc_dtype",
    "deinterleave_gates",
    "interleave_gates",
    "lstm_layer_backward",
    "lstm_layer_forward",
    "step_config",
]
