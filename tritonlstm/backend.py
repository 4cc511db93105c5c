"""Which implementation runs a forward: the Triton kernels or the plain PyTorch reference loop.

``"triton"``    the fused Triton kernels: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set
                before tritonlstm's kernels were first imported (Triton's interpreter, for tests).
``"reference"`` a readable step loop in plain PyTorch (:mod:`tritonlstm.reference`), the tests' second oracle.
``"auto"``      ``"triton"`` wherever it can run, else ``"reference"``.

The default comes from the environment variable ``TRITONLSTM_BACKEND`` (``auto`` when unset). No backend
ever calls cuDNN's or ATen's LSTM.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TRITONLSTM_BACKEND"


def validate_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def default_backend() -> str:
    """The backend named by ``TRITONLSTM_BACKEND``, or ``"auto"``."""
    name = os.environ.get(ENV_VAR, "auto")
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    return name


def kernels():
    """The kernel package, imported on first use (so ``TRITON_INTERPRET`` may be set until then)."""
    return importlib.import_module("tritonlstm.kernels")


# the kernels' dtypes (tritonlstm.kernels.SUPPORTED_DTYPES; repeated so that choosing a backend imports nothing)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _interpreter_active() -> bool:
    # the kernels read TRITON_INTERPRET once, when first imported; before that, the variable says what they will do
    module = sys.modules.get("tritonlstm.kernels.lstm")
    if module is not None:
        return module.INTERPRETER
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# torch.compile cache-key tags of the two CPU conditions, by whether the interpreter is active
CACHE_TAGS = {True: "tritonlstm-triton-interpreter", False: "tritonlstm-no-interpreter"}


def tag_compile_caches() -> None:
    """Keep torch.compile's on-disk caches of the two CPU conditions apart.

    On a CPU the op's implementation, and so the shapes of the tensors it saves for the backward, depend on
    ``TRITON_INTERPRET``, which torch's cache keys do not see: a graph cached under the interpreter and reused
    without it (or the reverse) fails in inductor ("mismatch in length of strides and shape").
    ``torch.compiler.config.cache_key_tag`` therefore always carries the tag of the current condition
    (:data:`CACHE_TAGS`). Both conditions are tagged, so that neither reuses an untagged entry, such as one that
    a tritonlstm older than the tags left under the interpreter.
    """
    config = torch.compiler.config
    tag = getattr(config, "cache_key_tag", None)
    if tag is None:  # a torch without cache-key tags
        return
    kept = [part for part in tag.split(":") if part and part not in CACHE_TAGS.values()]
    config.cache_key_tag = ":".join([*kept, CACHE_TAGS[_interpreter_active()]])


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernels cannot run on tensors of this device and dtype, or ``None`` when they can.

    Imports nothing and depends only on the device type, the dtype and the interpreter flag, so torch.compile
    traces it into a constant.
    """
    if dtype not in _KERNEL_DTYPES:
        return f"the kernels support {', '.join(map(str, _KERNEL_DTYPES))}, not {dtype}"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not _interpreter_active():
            return (
                "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before tritonlstm's kernels are "
                "imported, or use CUDA tensors"
            )
        if dtype == torch.bfloat16:
            return "Triton's interpreter computes tl.dot on bfloat16 operands wrongly; run bfloat16 on CUDA"
        return None
    return f"Triton kernels run on CUDA (or on CPU through the interpreter), not on {device.type}"


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``"triton"`` or ``"reference"`` for a forward on tensors of ``device``/``dtype``."""
    validate_backend(backend)
    if backend == "reference":
        return "reference"
    reason = triton_unavailable_reason(device, dtype)
    if reason is None:
        return "triton"
    if backend == "triton":
        raise RuntimeError(f"backend='triton' cannot run here: {reason}")
    return "reference"
