"""The plan: everything about how one call runs, decided in one place.

For each layer and pass, :func:`plan` decides

* the implementation behind the op: ``"triton"`` (the kernels) or ``"reference"`` (the plain PyTorch loop,
  :mod:`tritonlstm.reference`), from the ``backend`` argument, the device, the dtype and the regularisers;
* with ``"triton"``, the kernel: the sequence kernels (one launch per layer) or the per-step kernels (one launch
  per step), their regime and tiles (the rule of :mod:`tritonlstm.kernels.config`), and whether the launch's error
  flag is checked;
* and why, in words.

The forward, the backward and the fake registration of the op (:mod:`tritonlstm.ops`) all ask it, and every
environment variable tritonlstm reads is read here:

``TRITONLSTM_BACKEND``  the default ``backend`` of new modules: ``auto`` (default), ``triton`` or ``reference``.
``TRITONLSTM_KERNEL``   ``auto`` (default): the rule, behind each sequence regime's first-use self-test;
                        ``sequence``: the sequence kernels wherever they can run (no self-test); ``step``: the
                        per-step kernels.
``TRITONLSTM_CHECK``    ``1``: read the sequence kernels' error flag after each launch (a host sync) and raise if a
                        barrier wait timed out. Off by default: a timed-out wait writes NaN, never a wrong number.

Backends:

``"triton"``    the fused Triton kernels: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set
                before tritonlstm's kernels were first imported (Triton's interpreter, for tests).
``"reference"`` a readable step loop in plain PyTorch, the tests' second oracle.
``"auto"``      ``"triton"`` wherever it can run, else ``"reference"``.

No backend ever calls cuDNN's or ATen's LSTM. :func:`explain` prints the plans a module's call would get.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple

import torch

from tritonlstm.kernels import runtime
from tritonlstm.kernels.runtime import tag_compile_caches

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TRITONLSTM_BACKEND"
KERNEL_ENV = "TRITONLSTM_KERNEL"
CHECK_ENV = "TRITONLSTM_CHECK"
KERNEL_MODES = ("auto", "sequence", "step")


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


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernels cannot run on tensors of this device and dtype, or ``None`` when they can.

    Imports no kernel and depends only on the device type, the dtype and the interpreter flag, so torch.compile
    traces it into a constant.
    """
    return runtime.unavailable(device, dtype)


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


def kernels():
    """The kernel modules, imported on first use (so ``TRITON_INTERPRET`` may be set until then)."""
    first = "tritonlstm.kernels.selftest" not in sys.modules
    selftest = importlib.import_module("tritonlstm.kernels.selftest")
    if first:
        tag_compile_caches()  # the interpreter flag is fixed now that the kernels exist
    return selftest


class Plan(NamedTuple):
    """How one pass of one layer runs."""

    implementation: str  # "triton" or "reference"
    kernel: str | None  # "sequence" or "step" with "triton"; None with "reference" or when not asked for
    regime: str | None  # a key of kernels/config.py's LAUNCHERS, or None
    config: dict | None  # that regime's tiles and warps
    why: str
    check: bool = False  # read the error flag after the launch (TRITONLSTM_CHECK=1)

    def describe(self) -> str:
        if self.implementation == "reference":
            return f"reference loop ({self.why})"
        if self.kernel is None:
            return "Triton kernels"
        tiles = ", ".join(f"{k}={v}" for k, v in (self.config or {}).items() if k != "regime")
        from tritonlstm.kernels.config import STEP_REGIMES

        per_step = self.regime in STEP_REGIMES.values()
        kind = "per-step kernels" if per_step else f"{self.kernel} kernel, {self.regime} regime"
        return f"{kind} [{tiles}] ({self.why})"

    def forward(self, layer, regs, store: bool):
        """Run the forward this plan describes (``layer``/``regs``: the bundles of ``tritonlstm.kernels.common``)."""
        return self._run("forward", layer, regs, store)

    def backward(self, layer, regs, *args):
        """Run the backward: the LSTM's ``(saved, grad_out, needs)`` bundles, the GRU's
        ``(y, gates, dy, dh_n, needs)``."""
        return self._run("backward", layer, regs, *args)

    def _run(self, pass_: str, layer, regs, *args):
        from triton.compiler.errors import CompilationError

        from tritonlstm.kernels.config import LAUNCHERS, STEP_REGIMES

        entry = LAUNCHERS[self.regime]
        launcher = getattr(importlib.import_module(getattr(entry, pass_)), entry.prefix + pass_)
        checked = self.check and self.kernel == "sequence"
        err = torch.zeros(1, device=layer.x.device, dtype=torch.int32) if checked else None
        try:
            out = launcher(layer, regs, *args, self.config, err)
        except CompilationError as e:
            if self.regime in STEP_REGIMES.values():
                raise
            T, B, D, H, R, P = layer.dims
            what = f"{pass_} {self.regime} kernel for B={B} H={H} P={P} D={D} {layer.x.dtype}"
            key = _shape_key(layer.x.device, layer.x.dtype, B, H, P, D, pass_, layer.cell)
            kernels().HEALTH.uncompiled(key, what, e)
            step = self._replace(kernel="step", regime=STEP_REGIMES[layer.cell], config=None,
                                 why="the kernel did not compile for this shape")  # fmt: skip
            return step._run(pass_, layer, regs, *args)
        if err is not None and not runtime.capturing(layer.x.device) and int(err.item()) != 0:
            raise RuntimeError(f"tritonlstm {pass_} {self.regime} kernel: a barrier wait timed out (outputs hold NaN)")
        return out


def _shape_key(device, dtype, B, H, P, D, pass_, cell="lstm") -> tuple:
    return str(runtime.current(device)), dtype, B, H, P, D, pass_, cell


def sequence_unavailable(device: torch.device, dtype: torch.dtype, D: int) -> str | None:
    """``None`` if the sequence kernels can run a layer of D directions here, else the reason they cannot."""
    if D not in (1, 2):
        return f"{D} directions (only 1 or 2)"
    reason = runtime.unavailable(torch.device(device), dtype)
    if reason is None and torch.device(device).type == "cpu" and runtime.interpreter_cannot_loop_over_t():
        return "Triton < 3.9's interpreter cannot run a loop over a runtime bound (T) with NumPy >= 2.4"
    return reason


def plan(
    x: torch.Tensor,
    w_hh: torch.Tensor,
    w_hr: torch.Tensor | None,
    backend: str,
    zoneout: tuple[float, float] = (0.0, 0.0),
    backward: bool = False,
    kernel: bool = True,
    cell: str = "lstm",
) -> Plan:
    """The plan of one layer's forward (or ``backward``) on input ``x [T, B, I]`` with ``w_hh [D, G, R]``.

    ``kernel=False`` decides the implementation only (what the fake registration needs: nothing is imported or
    self-tested, and the shapes may be symbolic). ``cell``: ``"lstm"`` or ``"gru"`` (``w_hr`` None, zoneout on h).
    """
    name = resolve_backend(backend, x.device, x.dtype)
    if name == "reference":
        why = "backend='reference'" if backend == "reference" else triton_unavailable_reason(x.device, x.dtype)
        return Plan("reference", None, None, None, why)
    reason = runtime.regulariser_refusal(zoneout, w_hr is not None)
    if reason is not None:
        return Plan("reference", None, None, None, reason)
    if not kernel:
        return Plan("triton", None, None, None, "")
    D, G, R = w_hh.shape
    if cell == "gru":
        return _kernel_plan(x.device, x.dtype, x.shape[1], R, 0, D, backward, "gru")
    B, H, P = x.shape[1], G // 4, w_hr.shape[1] if w_hr is not None else 0
    return _kernel_plan(x.device, x.dtype, B, H, P, D, backward)


def _kernel_plan(device, dtype, B: int, H: int, P: int, D: int, backward: bool, cell: str = "lstm") -> Plan:
    health = kernels().HEALTH
    from tritonlstm.kernels import config

    mode = os.environ.get(KERNEL_ENV, "auto")
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNEL_ENV} must be auto, sequence or step, got {mode!r}")
    check = os.environ.get(CHECK_ENV, "0") == "1"
    pass_ = "backward" if backward else "forward"
    device = torch.device(device)
    sm = runtime.sm_count(device)
    gru = cell == "gru"
    step_cfg = config.gru_step_config(B, H, 3 * H if backward else H, dtype) if gru else None
    step = Plan("triton", "step", config.STEP_REGIMES[cell], step_cfg, "", check)
    if mode == "step":
        return step._replace(why=f"{KERNEL_ENV}=step")
    reason = sequence_unavailable(device, dtype, D)
    if mode == "sequence":
        if reason:
            raise RuntimeError(f"{KERNEL_ENV}=sequence, but the sequence kernels cannot run here: {reason}")
        if gru:
            cfg = config.gru_sequence_config(B, H, D, dtype, sm, backward)
        else:
            cfg = config.sequence_config(B, H, P, D, dtype, sm, backward)
        return Plan("triton", "sequence", cfg["regime"], cfg, f"{KERNEL_ENV}=sequence", check)
    if reason:
        return step._replace(why=f"the sequence kernels cannot run here: {reason}")
    if not health.compiled(_shape_key(device, dtype, B, H, P, D, pass_, cell)):
        return step._replace(why="the kernel did not compile for this shape")
    choice = config.gru_choose(B, H, D, dtype, sm, backward) if gru else config.choose(B, H, P, D, dtype, sm, backward)
    if choice.regime == "step":
        return step._replace(config=choice.config, why=choice.why)
    device = runtime.current(device)
    failed = None
    while choice is not None:  # the rule's pick, then its fallbacks, each self-tested at first use
        variant = config.variant(choice.config)
        verdict = health.passed(device, dtype, variant)
        if verdict is None:
            if runtime.capturing(device):
                return step._replace(why=f"capturing a CUDA graph before the {variant} regime's self-test ran")
            verdict = health.validate(device, dtype, variant)
        if verdict:
            why = choice.why if failed is None else f"{choice.why}; {failed}"
            return Plan("triton", config.LAUNCHERS[choice.regime].kernel, choice.regime, choice.config, why, check)
        failed = failed or f"the {variant} regime failed its self-test on {device} in {dtype}"
        choice = choice.fallback
    return step._replace(why=failed)


def explain(module, input: torch.Tensor) -> str:
    """The plans a call ``module(input)`` would get, one line per pass of each layer, for users and bug reports.

    ``module`` is a :class:`tritonlstm.LSTM`, :class:`tritonlstm.LSTMCell`, :class:`tritonlstm.GRU` or
    :class:`tritonlstm.GRUCell`. Nothing runs but the kernels' first-use self-tests. Returns the text;
    ``print(tritonlstm.explain(model, x))`` shows it.
    """
    param = next(module.parameters())
    cell = not hasattr(module, "num_layers")
    batched = input.dim() == (2 if cell else 3)
    if cell:
        B = input.shape[0] if batched else 1
    else:
        B = (input.shape[0] if module.batch_first else input.shape[1]) if batched else 1
    D = 2 if getattr(module, "bidirectional", False) else 1
    H, P = module.hidden_size, getattr(module, "proj_size", 0)
    kind = getattr(module, "_cell", "lstm")
    zoneout = tuple(module.zoneout) if kind == "lstm" else (module.zoneout, 0.0)
    x = torch.empty(1, B, 1, device=param.device, dtype=param.dtype)
    w_hh = torch.empty(D, (4 if kind == "lstm" else 3) * H, P or H, device=param.device, dtype=param.dtype)
    w_hr = torch.empty(D, P, H, device=param.device, dtype=param.dtype) if P else None
    lines = [f"{type(module).__name__}: B={B}, H={H}, P={P}, D={D}, {param.dtype} on {param.device}"]
    for backward in (False, True):
        p = plan(x, w_hh, w_hr, module.backend, zoneout, backward, cell=kind)
        lines.append(f"  {'backward' if backward else 'forward '}: {p.describe()}")
    layers = getattr(module, "num_layers", 1)
    if layers > 1:
        lines.append(f"  (every one of the {layers} layers: the plan depends on B, H, P, D and the dtype only)")
    return "\n".join(lines)
