#!/usr/bin/env bash
# One call on a GPU machine: environment, the whole test suite on the compiled kernels (GPU tests included),
# then the benchmark grid (GRID=quick by default; GRID=default for the full one) and its plots.
# Everything lands under $OUT (default ./gpu-out); copy the CSV/PNGs into benchmarks/results/ and commit them.
set -uo pipefail
OUT=${OUT:-gpu-out}
GRID=${GRID:-quick}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  git rev-parse HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m pytest -q -rs -x --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log" | tail -15
python3 -m benchmarks.run --grid "$GRID" --out "$OUT" 2>&1 | tee "$OUT/bench.log"
python3 -m benchmarks.plot "$OUT"/*.csv
