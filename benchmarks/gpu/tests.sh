#!/usr/bin/env bash
# GPU call 1: environment, install, then the test suite on the compiled kernels: the GPU-marked tests first
# (tests/test_gpu.py and every test marked `gpu`), then the rest of the suite. No -x: every failure is listed.
#
#   bash benchmarks/gpu/tests.sh [all|gpu|rest] [K/N]     # default: all; `rest K/N`: part K of N of the rest
#
# Writes 5 files under $OUT: env-tests-<what>.txt (device, driver, torch/triton/numpy versions, commit, install
# log), pytest-gpu.log/.xml and pytest-rest<part>.log/.xml (a phase not run in this call writes no files; the
# count is the most it writes: `DRY_RUN=1 bash benchmarks/gpu/tests.sh ARGS` lists them).
#
# Expected duration: `gpu` took 61-69 s on an H200 (2026-12-04, WORKERS=8: install ~15 s, the GPU tests 38-51 s); the rest
# took 158 s on an H100 (2026-11, WORKERS=4; compiling the kernel variants dominates). Each phase runs under
# `timeout`: GPU tests at most GPU_BUDGET s (240), the rest at most REST_BUDGET s (default: what is left of 540
# s), so the call returns with its logs before the device tool's 10-minute limit. A phase cut off says so and
# the script exits 1; then run the rest in parts (`rest 1/2`, `rest 2/2`) in calls of their own.
#
# Fails loudly (set -euo pipefail): a failed install, no CUDA GPU, a failing or cut-off phase all exit nonzero.
# How a GPU session runs it (benchmarks/gpu_run.sh plan prints the exact command strings):
#   device run, command: export GIT_COMMIT=<commit>; bash benchmarks/gpu_run.sh tests
#   then copy the returned files into benchmarks/results/<device-slug>/ (the last line printed names it).
# Environment: PYTHON (python3), OUT, GIT_COMMIT, SKIP_INSTALL=1, WORKERS (4; 0 = no xdist), GPU_BUDGET, REST_BUDGET,
# ALLOW_CPU=1 (run on a machine without a GPU, to try the script itself).
source "$(dirname "$0")/common.sh"

WHAT=${1:-all}
PART=${2:-1/1}
[[ $WHAT == all || $WHAT == gpu || $WHAT == rest ]] || die "first argument: all, gpu or rest (got $WHAT)"
[[ $PART =~ ^([0-9]+)/([0-9]+)$ ]] && (( BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= BASH_REMATCH[2] )) \
  || die "part must be K/N with 1 <= K <= N (got $PART)"
K=${BASH_REMATCH[1]}
N=${BASH_REMATCH[2]}
REST=rest$([[ $N != 1 ]] && echo "-${K}of${N}" || true)
SCRIPT_LINE="benchmarks/gpu/tests.sh $WHAT $PART"

files=("env-tests-$WHAT$([[ $WHAT == rest ]] && echo "${REST#rest}" || true).txt")
if [[ $WHAT != rest ]]; then files+=(pytest-gpu.log pytest-gpu.xml); fi
if [[ $WHAT != gpu ]]; then files+=("pytest-$REST.log" "pytest-$REST.xml"); fi
declare_files "${files[@]}"

write_env "$(out "${FILES[0]}")"
if [[ ${ALLOW_CPU:-0} != 1 ]]; then  # ALLOW_CPU=1: try the script itself on a CPU machine
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: these are the GPU tests')"
fi

common_args=(-q -rfEs -p no:cacheprovider)
if [[ ${WORKERS:-4} != 0 ]] && "$PY" -c "import xdist" 2>/dev/null; then
  common_args+=(-n "${WORKERS:-4}" --dist load)
fi
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  common_args+=(--timeout 300)  # one hung test (a kernel that never ends) must not take the whole phase
fi

status=0
# run_phase NAME BUDGET PYTEST_ARGS...: pytest under timeout (SIGINT first, so pytest still writes its summary)
run_phase() {
  local name=$1 budget=$2 rc
  shift 2
  echo "== $name: pytest $* (at most ${budget}s; started at ${SECONDS}s)"
  set +e
  timeout -s INT -k 20 "$budget" "$PY" -m pytest "${common_args[@]}" --junitxml="$(out "pytest-$name.xml")" "$@" \
    2>&1 | tee "$(out "pytest-$name.log")"
  rc=${PIPESTATUS[0]}
  set -e
  if (( rc == 124 || rc == 137 )); then
    if [[ $name == gpu ]]; then
      echo "== $name: CUT OFF after ${budget}s; next call: GPU_BUDGET=540 bash benchmarks/gpu_run.sh tests gpu"
    else
      echo "== $name: CUT OFF after ${budget}s; next calls: bash benchmarks/gpu_run.sh tests rest 1/2, then rest 2/2"
    fi
    status=1
  elif (( rc != 0 )); then
    echo "== $name: pytest exit status $rc"
    status=1
  fi
}

if [[ $WHAT != rest ]]; then
  run_phase gpu "${GPU_BUDGET:-240}" -m gpu tests
fi
if [[ $WHAT != gpu ]]; then
  mapfile -t all_files < <(ls tests/test_*.py | sort)
  part_files=()
  for i in "${!all_files[@]}"; do
    if (( i % N == K - 1 )); then part_files+=("${all_files[$i]}"); fi
  done
  budget=${REST_BUDGET:-$(( 540 - $(elapsed) ))}
  (( budget >= 60 )) || die "only ${budget}s left for the rest of the suite: run it in a call of its own (tests rest)"
  run_phase "$REST" "$budget" -m "not gpu" "${part_files[@]}"
fi

check_outputs
echo "== done in $(elapsed)s; copy the returned files into benchmarks/results/$(device_slug)/"
exit $status
