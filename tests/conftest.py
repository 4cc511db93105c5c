"""Test setup: NaN-filled `empty`, fixed seeds, and a header saying which machine the suite sees.

The suite runs as it finds the machine, so it sees what users see: a GPU machine runs the Triton kernels on
CUDA tensors (and the reference implementation behind the op for CPU tensors); a CPU machine runs the reference
implementation, or, with ``TRITON_INTERPRET=1`` set before the run, the real kernel source in Triton's
interpreter. CI runs both CPU conditions. Each test states what it needs with the markers of tests/helpers.py.
"""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True, print_blob=True)
settings.load_profile("default")

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # under pytest-xdist (`-n 2`, the README's test command) the workers share the cores: torch's threads per
    # worker are divided accordingly, or the workers' thread pools oversubscribe the machine
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

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


@pytest.fixture
def tagged_rule(monkeypatch):
    """The rule with the tagged exchange switched on (``config.TAGGED_EXCHANGE``), its caches cleared around."""
    from tritonlstm.kernels import config

    monkeypatch.setattr(config, "TAGGED_EXCHANGE", True)
    config.sequence_config.cache_clear(), config.choose.cache_clear()
    yield
    monkeypatch.undo()
    config.sequence_config.cache_clear(), config.choose.cache_clear()


def pytest_report_header(config):
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    elif os.environ.get("TRITON_INTERPRET", "0") == "1":
        device = "CPU, Triton kernels through the interpreter"
    else:
        device = "CPU, reference implementation (TRITON_INTERPRET unset: Triton kernel tests skipped)"
    return f"tritonlstm tests on {device}; torch {torch.__version__}"
