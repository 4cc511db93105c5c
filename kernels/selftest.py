"""The safety of the fast paths: a self-test of every regime at first use, and what the process has learnt.

:data:`HEALTH` holds, for this process, which (device, dtype, regime) passed or failed its self-test and which
shapes did not compile. The plan (:mod:`tritonlstm.dispatch`) reads it before it picks a sequence kernel; tests
start from a clean one with :meth:`KernelHealth.reset`.
"""

from __future__ import annotations

import importlib
import warnings

import torch

from tritonlstm.kernels import gru_step, step
from tritonlstm.kernels.common import GradOutputs, Layer, Needs, Regularisers, Saved
from tritonlstm.kernels.config import LAUNCHERS, SELF_TESTED, self_test_config

_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


class SequenceCompileError(RuntimeError):
    """A sequence kernel did not compile for a layer's shape: the plan runs the per-step kernels for that shape
    from then on (warned once)."""


class KernelHealth:
    """Self-test results per (device, dtype, regime) and the shapes whose sequence kernel did not compile."""

    def __init__(self) -> None:
        self.validated: dict[tuple[str, torch.dtype, str], bool] = {}
        self.uncompilable: set[tuple] = set()

    def reset(self) -> None:
        """Forget everything: the next call self-tests again and retries every shape."""
        self.validated.clear()
        self.uncompilable.clear()

    def passed(self, device: torch.device, dtype: torch.dtype, regime: str) -> bool | None:
        """The self-test's verdict, or ``None`` when it has not run in this process."""
        return self.validated.get((str(device), dtype, regime))

    def validate(self, device: torch.device, dtype: torch.dtype, regime: str) -> bool:
        """Run the self-test once per (device, dtype, regime); a failure warns once, saying what failed."""
        key = (str(device), dtype, regime)
        if key not in self.validated:
            failure = self_test(device, dtype, regime)
            if failure is not None:
                warnings.warn(
                    f"tritonlstm: the {regime} regime failed its self-test on {device} in {dtype}: "
                    f"{failure}. Falling back to the proven form: the barrier exchange and plain dots for "
                    "split-tagged, the plain dot for split-k, else the per-step kernels (tritonlstm.explain shows "
                    "the plan; TRITONLSTM_KERNEL forces a kernel).",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self.validated[key] = failure is None
        return self.validated[key]

    def compiled(self, key: tuple) -> bool:
        return key not in self.uncompilable

    def uncompiled(self, key: tuple, what: str, error: Exception) -> SequenceCompileError:
        """Record that a shape's sequence kernel did not compile, warn once, and return the error to raise."""
        self.uncompilable.add(key)
        warnings.warn(
            f"tritonlstm: the {what} did not compile ({str(error).strip().splitlines()[-1][:200]}); this shape runs "
            "the per-step kernels.",
            RuntimeWarning,
            stacklevel=4,
        )
        return SequenceCompileError(what)


HEALTH = KernelHealth()


def self_test(device: torch.device | str, dtype: torch.dtype, regime: str) -> str | None:
    """Run the kernels of ``regime`` (a :data:`SELF_TESTED` entry) against the per-step kernels on small random
    problems.

    Returns ``None`` when they agree and no barrier timed out, else what failed. Bidirectional, lengths, h0/c0,
    with and without a projection, with recurrent dropout and training zoneout, forward and backward.
    """
    device = torch.device(device)
    try:
        # plain numbers whatever the caller's context: no autocast, no autograd recording
        with torch.autocast(device.type, enabled=False), torch.no_grad():
            return _self_test(device, dtype, regime)
    except Exception as e:  # a compile or launch failure is a failed self-test too: the caller falls back
        return f"raised {type(e).__name__}: {e}"


def _self_test(device: torch.device, dtype: torch.dtype, regime: str) -> str | None:
    if regime.startswith("gru-"):
        return _self_test_gru(device, dtype, regime)
    gen = torch.Generator().manual_seed(1234)
    # on a GPU H=40 gives three unit programs per group (16 units each); the interpreter gets a smaller H
    T, B, I, H, D = 5, 3, 7, 40 if device.type == "cuda" else 12, 2
    tol = _TOLERANCE[dtype]
    launcher = LAUNCHERS[SELF_TESTED[regime]]
    forward = importlib.import_module(launcher.forward).forward
    backward = importlib.import_module(launcher.backward).backward
    cases = ((0, False), (16, False), (0, True)) if regime != "tile" else ((0, False), (0, True))  # (no projection)
    for P, masked in cases:  # the masked case also runs training zoneout
        R = P or H

        def r(*shape):
            return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype)

        x, h0, c0 = r(T, B, I), r(D, B, R), r(D, B, H)
        w_ih, w_hh, bias = r(D, 4 * H, I), r(D, 4 * H, R), r(D, 4 * H)
        w_hr = r(D, P, H) if P else None
        lengths = torch.tensor([5, 2, 4], device=device)
        h_mask = (torch.rand(D, B, R, generator=gen) > 0.3).to(device=device, dtype=dtype) / 0.7 if masked else None
        zoneout, seed = ((0.25, 0.4), torch.tensor([97], device=device)) if masked else ((0.0, 0.0), None)
        layer = Layer(x, h0, c0, w_ih, w_hh, bias, torch.zeros_like(bias), w_hr, lengths, (False, True))
        regs = Regularisers(h_mask, zoneout, seed)
        fcfg = self_test_config(device, dtype, regime, H, P, False)
        bcfg = self_test_config(device, dtype, regime, H, P, True)
        err_f, err_b = (torch.zeros(1, device=device, dtype=torch.int32) for _ in range(2))
        y, h_n, c_n, gates, cs = forward(layer, regs, True, fcfg, err_f)
        upstream = GradOutputs(r(*y.shape), r(*h_n.shape), r(*c_n.shape))
        grads = backward(layer, regs, Saved(y, gates, cs), upstream, Needs(), bcfg, err_b)
        if int(err_f.item()) or int(err_b.item()):
            return f"a barrier wait timed out (error flag set; P={P})"
        want_y, want_h, want_c, want_gates, want_cs = step.forward(layer, regs, True)
        want = step.backward(layer, regs, Saved(want_y, want_gates, want_cs), upstream, Needs())
        pairs = {"y": (y, want_y), "h_n": (h_n, want_h), "c_n": (c_n, want_c)}
        pairs.update((name, (grads[i], want[i])) for i, name in enumerate(grads._fields) if name != "dw_hr" or P)
        mask = ", recurrent dropout and zoneout" if masked else ""
        failure = _differs(pairs, tol, f"P={P}{mask}, {dtype}, {regime}")
        if failure:
            return failure
    return None


def _differs(pairs: dict, tol: float, where: str) -> str | None:
    """The first of ``{name: (have, expected)}`` off by more than ``tol`` (relative to max(1, max|expected|); NaN
    and a shape mismatch count), said in words, or ``None``."""
    for name, (have, expected) in pairs.items():
        have, expected = have.to(torch.float64), expected.to(torch.float64)
        scale = max(1.0, expected.abs().max().item())
        bad = (have - expected).abs().max().item() if have.shape == expected.shape else float("inf")
        if not bad <= tol * scale:  # NaN fails too
            return f"{name} differs from the per-step kernels by {bad:.3g} ({where})"
    return None



def _self_test_gru(device: torch.device, dtype: torch.dtype, regime: str) -> str | None:
    """The GRU's regimes against its per-step kernels: bidirectional, lengths, h0, biases, then with recurrent
    dropout and training zoneout, forward and backward."""
    gen = torch.Generator().manual_seed(4321)
    T, B, I, H, D = 5, 3, 7, 40 if device.type == "cuda" else 12, 2
    tol = _TOLERANCE[dtype]
    launcher = LAUNCHERS[SELF_TESTED[regime]]
    forward = getattr(importlib.import_module(launcher.forward), launcher.prefix + "forward")
    backward = getattr(importlib.import_module(launcher.backward), launcher.prefix + "backward")
    for masked in (False, True):

        def r(*shape):
            return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype)

        layer = Layer(r(T, B, I), r(D, B, H), None, r(D, 3 * H, I), r(D, 3 * H, H), r(D, 3 * H), r(D, 3 * H), None,
                      torch.tensor([5, 2, 4], device=device), (False, True))  # fmt: skip
        h_mask = (torch.rand(D, B, H, generator=gen) > 0.3).to(device=device, dtype=dtype) / 0.7 if masked else None
        regs = Regularisers(h_mask, (0.25, 0.0), torch.tensor([97], device=device)) if masked else Regularisers()
        err_f, err_b = (torch.zeros(1, device=device, dtype=torch.int32) for _ in range(2))
        y, h_n, gates = forward(layer, regs, True, self_test_config(device, dtype, regime, H, 0, False), err_f)
        dy, dh = r(*y.shape), r(*h_n.shape)
        bcfg = self_test_config(device, dtype, regime, H, 0, True)
        grads = backward(layer, regs, y, gates, dy, dh, (True,) * 6, bcfg, err_b)
        if int(err_f.item()) or int(err_b.item()):
            return "a barrier wait timed out (error flag set)"
        want_y, want_h, want_gates = gru_step.forward(layer, regs, True)
        want = gru_step.backward(layer, regs, want_y, want_gates, dy, dh, (True,) * 6)
        names = ("y", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
        pairs = dict(zip(names, zip((y, h_n, *grads), (want_y, want_h, *want))))
        failure = _differs(pairs, tol, f"{dtype}, {regime}" + (", recurrent dropout and zoneout" if masked else ""))
        if failure:
            return failure
    return None
