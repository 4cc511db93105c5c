#!/usr/bin/env bash
# The first-contact GPU run, as a short sequence of device calls, each well under the device tool's 10-minute
# limit and writing at most 8 files under $OUT (the most that come back). Run from the repository root:
#
#   bash benchmarks/gpu_run.sh plan                 # here: prints the device command strings for this commit
#   bash benchmarks/gpu_run.sh perf                 # call 1 (<= 5 min): self-tests, exchange latency, the grid
#   bash benchmarks/gpu_run.sh variants             # (<= 5 min): the split kernels' config variants side by side
#   bash benchmarks/gpu_run.sh tests [all|gpu|rest] [K/N]   # call 2: env + install + GPU tests, then the rest
#   bash benchmarks/gpu_run.sh bench GRID [K/N] [run.py options]   # more: quick, or default 1/2 and 2/2
#   bash benchmarks/gpu_run.sh plots DIR            # here (no GPU needed): PNGs of DIR/bench-*.csv
#
# A GPU session (device `status`: can_start_another true) does, in order:
#   1. here: `bash benchmarks/gpu_run.sh plan`, and commit or note the commit it names (GIT_COMMIT: the device
#      copy of the tree may lack .git, so the commit travels in the command string);
#   2. device run with each command string it prints (each well under 2000 characters), one call at a time:
#      perf, then the GPU tests, then the variants, as device time allows (about 15 min a task, all calls
#      together, start-up included: on an H200 they took 217, 66 and 109 s, a fresh machine 30-60 s to start,
#      and one left idle 30 s is given back);
#   3. after each call, here: mkdir -p benchmarks/results/<device-slug> and copy the call's returned files
#      (files_at) into it, the commit in each name (perf.log -> perf-<commit>.log); the last line each call
#      prints names <device-slug> (e.g. nvidia-h200);
#   4. here: bash benchmarks/gpu_run.sh plots benchmarks/results/<device-slug>, then commit that folder.
# A call that fails or is cut off still returns its logs; each script's header says what to run next.
# More rows when time allows, each a call of its own whose files go to the same folder (TAG keeps names apart):
#   export GIT_COMMIT=<commit> TAG=lengths; bash benchmarks/gpu_run.sh bench quick 1/1 --providers tritonlstm-lengths cudnn-packed
#   export GIT_COMMIT=<commit> TAG=graph; bash benchmarks/gpu_run.sh bench quick 1/1 --cuda-graph --providers tritonlstm cudnn
# The scripts live in benchmarks/gpu/ (common.sh holds the shared strict mode, env record and install).
set -euo pipefail
HERE=$(dirname "$0")
step=${1:-}
[[ $# -gt 0 ]] && shift
case $step in
  perf) exec bash "$HERE/gpu/perf.sh" "$@" ;;
  variants) exec bash "$HERE/gpu/variants.sh" "$@" ;;
  tests) exec bash "$HERE/gpu/tests.sh" "$@" ;;
  bench) exec bash "$HERE/gpu/bench.sh" "$@" ;;
  plots) exec bash "$HERE/gpu/plots.sh" "$@" ;;
  plan)
    commit=$(git rev-parse --short=12 HEAD)$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty || true)
    for args in "perf" "tests gpu" "variants"; do
      echo "export GIT_COMMIT=$commit; bash benchmarks/gpu_run.sh $args"
    done
    ;;
  *)
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    [[ -z $step ]] || { echo "unknown step: $step" >&2; exit 2; }
    exit 2
    ;;
esac
