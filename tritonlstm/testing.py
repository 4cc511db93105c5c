"""The per-dtype tolerances against torch.nn.LSTM, in one place: the tests and the benchmarks' correctness gate
both compare with :func:`assert_close`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


# Tolerances against torch.nn.LSTM computed in float64. atol is scaled by max|expected| of each tensor.
# float64 through the same maths agrees to rounding; float32 carries ~1e-7 per op; float16/bfloat16 store
# h, gates and gradients in 11/8-bit mantissas (cell state and accumulation stay fp32).
TOLERANCES = {
    torch.float64: Tol(atol=1e-12, rtol=1e-10),
    torch.float32: Tol(atol=2e-5, rtol=1e-4),
    torch.float16: Tol(atol=1e-2, rtol=1e-2),
    torch.bfloat16: Tol(atol=5e-2, rtol=5e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """Compare with the tolerance of `dtype`; atol is relative to the largest expected magnitude."""
    tol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN in result (unwritten or poisoned element)"
    expected = expected.to(torch.float64)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.to(torch.float64), expected, atol=tol.atol * scale, rtol=tol.rtol, msg=lambda m: f"{name} ({dtype}): {m}"
    )
