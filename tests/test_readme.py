"""The README's Python blocks run as written, in order, as a reader would paste them, on a CPU machine.

Each block is written to work on CUDA or CPU (``device = "cuda" if torch.cuda.is_available() else "cpu"``), so
the test runs them unchanged. They run in a fresh interpreter (no test fixtures, no NaN-poisoned ``empty``) with
``TRITON_INTERPRET`` unset: a user's machine without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HAS_CUDA, INTERPRETER

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 6, "the README's examples were not found"


@pytest.mark.skipif(INTERPRETER, reason="runs once, in the suite's leg without the interpreter (a user's CPU machine)")
@pytest.mark.skipif(HAS_CUDA, reason="the GPU machine runs the GPU tests; this checks a CPU user's first run")
def test_readme_python_blocks_run_in_order(tmp_path):
    for name, extra in (("onnxruntime", "onnx"), ("onnxscript", "onnx"), ("keras", "keras")):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"the README's blocks need {name}: pip install -e '.[{extra}]'")
    script = "\n\n".join(python_blocks(README.read_text()))
    (tmp_path / "readme_blocks.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "readme_blocks.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"README blocks failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
