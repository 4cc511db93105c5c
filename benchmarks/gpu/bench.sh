#!/usr/bin/env bash
# GPU call 2: environment, install, then the benchmark grid (or one part of it) with benchmarks/run.py.
#
#   bash benchmarks/gpu/bench.sh quick                  # the quick grid in one call
#   bash benchmarks/gpu/bench.sh default 1/2            # the default grid in two calls: 1/2, then 2/2
#   bash benchmarks/gpu/bench.sh GRID K/N [run.py options...]   # e.g. --providers tritonlstm-lengths cudnn-packed
#
# Writes 4 files under $OUT, named after the grid, part and $TAG (<g> = quick, default-1of2, quick-lengths, ...):
# env-bench-<g>.txt (device, driver, torch/triton/numpy versions, commit, install log), bench-<g>.log (the
# runner's output), bench-<g>.csv (the rows, benchmarks/run.py's schema) and bench-<g>-peaks.json (measured
# matmul and copy ceilings). `DRY_RUN=1 bash benchmarks/gpu/bench.sh ARGS` lists them.
#
# Expected duration (estimate; not yet run on a GPU): install ~15 s, peaks ~5 s, then per shape and dtype the
# float64 gate, kernel compiles and ~10-40 s of timing: quick ~2-4 min, each half of default ~3-5 min. The
# runner runs under `timeout` (BENCH_BUDGET s, default what is left of 540 s), so the call returns before the
# device tool's 10-minute limit; rows are written as they are measured, so a cut-off part keeps its rows, and
# the script then exits 1 (run that part again split finer, e.g. default 1/4 ... 4/4).
#
# Fails loudly (set -euo pipefail): a failed install, a missing GPU (except for the CPU-only smoke grid), a
# provider that raised (ERROR rows) or a cut-off run exit nonzero.
# How a GPU session runs it (benchmarks/gpu_run.sh plan prints the exact command strings):
#   device run, command: export GIT_COMMIT=<commit>; bash benchmarks/gpu_run.sh bench default 1/2
#   then copy the returned files into benchmarks/results/<device-slug>/ (the last line printed names it).
# Environment: PYTHON (python3), OUT, GIT_COMMIT (the CSV's commit column), SKIP_INSTALL=1, BENCH_BUDGET,
# TAG (added to the file names, for runs with other options: TAG=lengths ... --providers tritonlstm-lengths ...).
source "$(dirname "$0")/common.sh"

GRID=${1:-quick}
PART=${2:-1/1}
shift $(( $# < 2 ? $# : 2 ))
[[ $GRID == quick || $GRID == default || $GRID == smoke ]] || die "grid: quick, default or smoke (got $GRID)"
[[ $PART =~ ^([0-9]+)/([0-9]+)$ ]] && (( BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= BASH_REMATCH[2] )) \
  || die "part must be K/N with 1 <= K <= N (got $PART)"
NAME=bench-$GRID$([[ $PART != 1/1 ]] && echo "-${BASH_REMATCH[1]}of${BASH_REMATCH[2]}" || true)${TAG:+-$TAG}
[[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "TAG may hold letters, digits, '.', '_' and '-' only (got $TAG)"
SCRIPT_LINE="benchmarks/gpu/bench.sh $GRID $PART $*"

declare_files "env-$NAME.txt" "$NAME.log" "$NAME.csv" "$NAME-peaks.json"

write_env "$(out "env-$NAME.txt")"
if [[ $GRID != smoke ]]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: grid $GRID needs one')"
fi

budget=${BENCH_BUDGET:-$(( 540 - $(elapsed) ))}
(( budget >= 60 )) || die "only ${budget}s left for the grid"
echo "== python -m benchmarks.run --grid $GRID --part $PART --name $NAME $* (at most ${budget}s)"
set +e
timeout -s INT -k 20 "$budget" "$PY" -m benchmarks.run --grid "$GRID" --part "$PART" --out "$OUT" --name "$NAME" "$@" \
  2>&1 | tee "$(out "$NAME.log")"
rc=${PIPESTATUS[0]}
set -e
if (( rc == 124 || rc == 137 )); then
  echo "== CUT OFF after ${budget}s: the rows so far are in $NAME.csv; run this part again split finer"
elif (( rc != 0 )); then
  echo "== benchmarks.run exit status $rc"
fi
check_outputs
echo "== done in $(elapsed)s; copy the returned files into benchmarks/results/$(device_slug)/"
exit $(( rc != 0 ))
