#!/usr/bin/env bash
# One call on a GPU machine: environment, then the whole test suite on the compiled kernels (GPU tests
# included). Logs go under $OUT (default ./gpu-out); copy what matters into benchmarks/results/.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  git rev-parse HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m pytest -q -rs --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log"
