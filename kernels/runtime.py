"""What the kernels need to know about the machine and the running process, in one small module.

Both sides import it: the kernels (``tritonlstm.kernels``) and the plan that chooses them
(:mod:`tritonlstm.dispatch`). It imports torch only, never triton at import time, so choosing an implementation
costs nothing on a machine without Triton.

* the interpreter flag (``TRITON_INTERPRET=1``: the kernels run on CPU tensors) and what the interpreter cannot do;
* the dtypes the kernels take and their accumulator dtype;
* torch.compile's cache-key tag of the two CPU conditions;
* CUDA-graph capture, the SM count, cooperative launches and the device a launch must run on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import sys

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The storage dtypes the kernels take."""

_KERNEL_MODULE = "tritonlstm.kernels.jit"  # imported by every kernel module: the interpreter flag is fixed then


def interpreter() -> bool:
    """Whether the kernels run in Triton's interpreter.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined, so once the kernel modules are imported
    their value holds; until then the variable says what they will do.
    """
    module = sys.modules.get(_KERNEL_MODULE)
    if module is not None:
        return module.INTERPRETER
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the cell state and of every accumulator for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@functools.cache
def interpreter_cannot_loop_over_t() -> bool:
    """Triton < 3.9's interpreter with NumPy >= 2.4 fails on ``range`` over a runtime bound (checked: Triton 3.6.0
    with NumPy 2.4.6 fails, 3.9.0 works); the sequence kernels' time loop is one."""
    import triton

    try:
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return False
    return _version(triton.__version__) < (3, 9) and _version(numpy_version) >= (2, 4)


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernels cannot run on tensors of this device and dtype, or ``None`` when they can.

    Depends only on the device type, the dtype and the interpreter flag, so torch.compile traces it into a constant.
    """
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported (the kernels take {', '.join(map(str, SUPPORTED_DTYPES))})"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not interpreter():
            return (
                "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before tritonlstm's kernels are "
                "imported, or use CUDA tensors"
            )
        if dtype == torch.bfloat16:
            return "Triton's interpreter computes tl.dot on bfloat16 operands wrongly; run bfloat16 on CUDA"
        return None
    return f"Triton kernels run on CUDA (or on CPU through the interpreter), not on {device.type}"


def regulariser_refusal(zoneout: tuple[float, float], has_proj: bool) -> str | None:
    """Why the kernels cannot apply these regularisers (the reference implementation runs them), or ``None``. Both
    the per-step and the sequence kernels apply recurrent dropout (with or without a projection) and zoneout
    (without one)."""
    if any(zoneout) and has_proj:
        return "zoneout with a projection (proj_size > 0) is not applied by the Triton kernels"
    return None


# torch.compile cache-key tags of the two CPU conditions, by whether the interpreter is active
CACHE_TAGS = {True: "tritonlstm-triton-interpreter", False: "tritonlstm-no-interpreter"}


def tag_compile_caches() -> None:
    """Keep torch.compile's on-disk caches of the two CPU conditions apart.

    On a CPU the op's implementation, and so the shapes of the tensors it saves for the backward, depend on
    ``TRITON_INTERPRET``, which torch's cache keys do not see: a graph cached under the interpreter and reused
    without it (or the reverse) fails in inductor ("mismatch in length of strides and shape").
    ``torch.compiler.config.cache_key_tag`` therefore always carries the tag of the current condition
    (:data:`CACHE_TAGS`). Both conditions are tagged, so that neither reuses an untagged entry.
    """
    config = torch.compiler.config
    tag = getattr(config, "cache_key_tag", None)
    if tag is None:  # a torch without cache-key tags
        return
    kept = [part for part in tag.split(":") if part and part not in CACHE_TAGS.values()]
    config.cache_key_tag = ":".join([*kept, CACHE_TAGS[interpreter()]])


def capturing(device: torch.device) -> bool:
    """Whether the current stream of a CUDA ``device`` is capturing a CUDA graph (no host sync, no new caches)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def current(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current index>``, so that cache keys name one device; other devices as they are."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


_SM_COUNT: dict[str, int | None] = {}


def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device (``None`` for CPU tensors through the interpreter)."""
    key = str(device)
    if key not in _SM_COUNT:
        _SM_COUNT[key] = (
            torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
        )
    return _SM_COUNT[key]


@functools.cache
def cooperative_supported() -> bool:
    """Whether this Triton can launch a grid cooperatively (the launch fails instead of hanging if the grid is not
    co-resident)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})


def launch_guard(device: torch.device):
    """Launch on ``device`` and its current stream: Triton launches on the *current* CUDA device's current stream,
    which need not be the tensors' device (cuda:1 tensors while cuda:0 is current: wrong stream, illegal address)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s precision for float32 operands: torch's own float32 matmul setting, so the recurrence is as exact
    as the input GEMM beside it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"
