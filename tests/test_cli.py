"""Startup: ``tritonlstm --help`` and argument errors answer without importing torch; the package's lazy names,
and its eager import after torch (safe globals for ``torch.load``).

Each check runs in a fresh interpreter (a subprocess) and reads ``sys.modules`` there, rather than timing it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import tritonlstm


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


CLI = """
import sys
from tritonlstm import cli
try:
    cli.main({argv!r})
except SystemExit as e:
    print("exit", e.code)
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--help"], "usage: tritonlstm"),
        (["demo", "--help"], "--quick"),
        (["demo", "--horizon", "0"], "exit 2"),
        (["demo", "--task", "translate"], "exit 2"),
        (["demo", "--out", "/dev/null/demo"], "exit tritonlstm demo: cannot write to --out /dev/null/demo: Not a directory"),
    ],
    ids=["help", "demo-help", "bad-horizon", "bad-task", "unwritable-out"],
)
def test_cli_answers_before_importing_torch(argv, says):
    out = _run(CLI.format(argv=argv))
    assert says in out, out
    assert "torch imported: False" in out, out


def test_console_module_help():
    done = subprocess.run([sys.executable, "-m", "tritonlstm.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: tritonlstm"), done


def test_import_tritonlstm_is_lazy_and_its_names_resolve():
    out = _run(
        "import sys\n"
        "import tritonlstm\n"
        "print('after import:', 'torch' in sys.modules, tritonlstm.__version__)\n"
        "from tritonlstm import LSTM, LSTMCell, lstm\n"
        "import torch\n"
        "print('LSTM:', issubclass(LSTM, torch.nn.RNNBase), tritonlstm.LSTM is LSTM, LSTM.__module__)\n"
        "y, _ = tritonlstm.LSTM(3, 4, backend='reference')(torch.randn(2, 5, 3))\n"
        "print('forward:', tuple(y.shape))\n"
    )
    assert "after import: False 0.1.0" in out, out
    assert "LSTM: True True tritonlstm.modules" in out, out
    assert "forward: (2, 5, 4)" in out, out


def test_import_after_torch_registers_safe_globals_for_loading(tmp_path):
    # a loading script need not touch tritonlstm.LSTM before torch.load(weights_only=True) finds it allowed
    import torch

    path = tmp_path / "lstm.pt"
    torch.save(tritonlstm.LSTM(3, 4, num_layers=2), path)
    out = _run(
        "import sys\n"
        "import torch, tritonlstm\n"
        f"m = torch.load({str(path)!r})\n"
        "print('loaded:', type(m).__module__, type(m).__name__, m.num_layers, m.weight_hh_l1.shape)\n"
    )
    assert "loaded: tritonlstm.modules LSTM 2 torch.Size([16, 4])" in out, out


def test_lazy_names_in_process():
    import torch

    for name in tritonlstm.__all__:
        assert getattr(tritonlstm, name) is not None, name
    assert set(tritonlstm.__all__) <= set(dir(tritonlstm))
    assert tritonlstm.LSTMCell.__module__ == "tritonlstm.modules" and tritonlstm.BACKENDS == ("auto", "triton", "reference")
    assert tritonlstm.resolve_backend("reference", torch.device("cpu"), torch.float32) == "reference"
    with pytest.raises(AttributeError, match="module 'tritonlstm' has no attribute 'LTSM'"):
        tritonlstm.LTSM  # noqa: B018
    from tritonlstm import reference  # a submodule still imports through `from tritonlstm import ...`

    assert reference.__name__ == "tritonlstm.reference"
