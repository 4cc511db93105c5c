#!/usr/bin/env bash
# The one GPU call of a session with a GPU (device time is about 15 minutes a task): everything the kernels are judged
# by, in at most 5 minutes.
#
#   bash benchmarks/gpu/perf.sh
#
# Writes 8 files under $OUT: env-perf.txt (device, driver, versions, commit, install log), perf.log (everything
# printed), exchange.csv (the self-test of every regime in fp16/bf16/fp32, the tagged words' one-way latency
# between two programs, the counter barrier and the tile regime's per-producer flags alone at 2-128 programs:
# python -m benchmarks.exchange),
# bench-perf.csv and bench-perf-peaks.json (tritonlstm against cuDNN, fp16 and bf16, B in 16, 64, 256 x H in
# 256, 768, 1024 at T=1024, fwd and fwd+bwd: benchmarks/run.py's schema; then the GRU row, tritonlstm-gru against
# cudnn-gru on the quick grid's fp16 shapes, appended to the same CSV), and the plots bench-time-per-step.png,
# bench-speedup.png, bench-memory.png. `DRY_RUN=1 bash benchmarks/gpu/perf.sh` lists them.
#
# Expected duration: 212 s on an H200 (2026-12-04: install, self-tests and latency ~65 s, the grid ~145 s, plots),
# before the GRU row and the tile regime (its self-tests, the flags rows) were added (neither timed on a GPU yet:
# the exchange probe runs under a 150 s `timeout`, the GRU row in what is left of 285 s); the
# grid runs under `timeout` (what is left of 250 s). A cut-off grid keeps its rows and the script exits 1.
# Fails loudly (set -euo pipefail): a failed install, no GPU, a failed self-test or timed-out wait, a provider
# that raised, or a cut-off grid exit nonzero (after writing what it has).
# How a GPU session runs it: device run, command: export GIT_COMMIT=<commit>; bash benchmarks/gpu_run.sh perf
# then copy the returned files into benchmarks/results/<device-slug>/ (the last line printed names it).
# Environment: PYTHON (python3), OUT, GIT_COMMIT, SKIP_INSTALL=1.
source "$(dirname "$0")/common.sh"

SCRIPT_LINE="benchmarks/gpu/perf.sh $*"
declare_files env-perf.txt perf.log exchange.csv bench-perf.csv bench-perf-peaks.json \
  bench-time-per-step.png bench-speedup.png bench-memory.png

write_env "$(out env-perf.txt)"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: perf needs one')"
LOG=$(out perf.log)
status=0

echo "== python -m benchmarks.exchange (self-tests, tagged-word ping-pong, barrier)" | tee "$LOG"
set +e
timeout -s INT -k 10 150 "$PY" -m benchmarks.exchange --csv "$(out exchange.csv)" 2>&1 | tee -a "$LOG"
(( PIPESTATUS[0] == 0 )) || { echo "== benchmarks.exchange failed" | tee -a "$LOG"; status=1; }

budget=$(( 250 - $(elapsed) ))
echo "== python -m benchmarks.run --grid perf (at most ${budget}s)" | tee -a "$LOG"
timeout -s INT -k 20 "$budget" "$PY" -m benchmarks.run \
  --grid perf --providers tritonlstm cudnn --dtypes fp16 bf16 --out "$OUT" --name bench-perf 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if (( rc != 0 )); then
  echo "== benchmarks.run exit status $rc (124/137: cut off; the rows so far are kept)" | tee -a "$LOG"
  status=1
fi

budget=$(( 285 - $(elapsed) ))
echo "== python -m benchmarks.run --grid quick, the GRU (at most ${budget}s)" | tee -a "$LOG"
timeout -s INT -k 10 "$budget" "$PY" -m benchmarks.run \
  --grid quick --providers tritonlstm-gru cudnn-gru --dtypes fp16 --out "$OUT" --name bench-perf 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if (( rc != 0 )); then
  echo "== benchmarks.run (GRU) exit status $rc (124/137: cut off; the rows so far are kept)" | tee -a "$LOG"
  status=1
fi

"$PY" -m benchmarks.plot "$(out bench-perf.csv)" --prefix "$OUT/bench" 2>&1 | tee -a "$LOG"
(( PIPESTATUS[0] == 0 )) || status=1
set -e
check_outputs
echo "== done in $(elapsed)s (status $status); copy the returned files into benchmarks/results/$(device_slug)/"
exit $status
