"""Triton kernels of tritonlstm and their launchers (installed as ``tritonlstm.kernels``).

``lstm`` holds the per-step kernels (one launch per time step: the fallback and the oracle), ``sequence`` the
sequence kernels (one launch per layer and pass). Set ``TRITON_INTERPRET=1`` before importing this package to run
the kernels on CPU tensors.
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
from tritonlstm.kernels.sequence import choose_kernel, sequence_backward, sequence_forward, sequence_supported
from tritonlstm.backend import tag_compile_caches

tag_compile_caches()  # now that the interpreter flag is read: see its docstring

__all__ = [
    "INTERPRETER",
    "SUPPORTED_DTYPES",
    "acc_dtype",
    "choose_kernel",
    "deinterleave_gates",
    "interleave_gates",
    "lstm_layer_backward",
    "lstm_layer_forward",
    "sequence_backward",
    "sequence_forward",
    "sequence_supported",
    "step_config",
]
