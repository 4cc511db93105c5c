"""Test setup: Triton's interpreter when there is no GPU, NaN-filled `empty`, fixed seeds.

TRITON_INTERPRET must be set before tritonlstm's kernels are imported (Triton reads it when the kernels
are decorated), so this runs before any test module imports them.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True, print_blob=True)
settings.load_profile("default")

_empty, _empty_like, _new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() and t.device.type != "meta":
        t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_empty(monkeypatch):
    """Every float tensor from `empty`/`empty_like`/`new_empty` starts as NaN, so an unwritten element fails."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: _poison(_new_empty(self, *a, **k)))


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (Triton interpreter)"
    return f"tritonlstm tests on {device}; torch {torch.__version__}"
