"""Triton kernels of tritonlstm and their launchers (installed as ``tritonlstm.kernels``), one file a job:

``runtime``       the machine and the process: interpreter, dtypes, compile-cache tag, capture, SM count
``jit``           the ``@triton.jit`` helpers every kernel shares (the cell, the gate layout, zoneout, the barrier)
``common``        the launchers' argument bundles, the gate layout on the host, dW_hh
``config``        the rule: which regime runs a layer, with which tiles, and why
``step``          the per-step kernels (one launch per step and direction): the fallback and the oracle
``sequence_fwd``  the sequence forward kernels (one launch per layer), one per regime
``sequence_bwd``  the sequence backward kernels
``selftest``      the first-use self-test and what the process learnt (self-test verdicts, compile failures)
``fake_driver``   a stand-in CUDA driver: compile real GPU code on a machine without a GPU

Nothing here imports the rest of tritonlstm, and importing this package loads no kernel: the names below load
their module on first use. Set ``TRITON_INTERPRET=1`` before the kernel modules are imported to run the kernels
on CPU tensors.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "SUPPORTED_DTYPES": "runtime",
    "acc_dtype": "runtime",
    "GradOutputs": "common",
    "Grads": "common",
    "Layer": "common",
    "Needs": "common",
    "Regularisers": "common",
    "Saved": "common",
    "deinterleave_gates": "common",
    "interleave_gates": "common",
    "choose": "config",
    "sequence_config": "config",
    "step_config": "config",
    "HEALTH": "selftest",
    "self_test": "selftest",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
