#!/usr/bin/env bash
# A GPU call that times the unit-split kernels under config variants (python -m benchmarks.variants), with cuDNN in
# the same run: the rule against the candidates that have not run on a GPU yet (benchmarks/NOTES.md: the plain
# forward with 4 warps or 16 units a program, wide-w4 first, whose epilogue takes the gates apart in registers,
# the backward meeting through flags, and split32 for B=64 at H >= 768), and the rule's tile regime
# against the graphed per-step kernels it replaced (B=64 and 256 at H=1024). VARIANTS overrides the list
# (all of them, and the tagged words' latency rows: VARIANTS=all).
#
#   bash benchmarks/gpu/variants.sh
#
# Writes 3 files under $OUT: env-variants.txt (device, driver, versions, commit, install log), variants.log
# (everything printed, the table last) and variants.csv (one row per measurement, written as they come).
# Expected duration: 105 s on an H200 (2026-12-04, all variants of that commit, 56 rows of four shapes); new rows
# stop after BUDGET seconds (270), so the call ends inside 5 minutes.
# Fails loudly (set -euo pipefail): a failed install, no GPU, or a cut-off run exit nonzero (after writing what
# it has); a variant that fails is a row with its error, and the run goes on.
# How a GPU session runs it: device run, command: export GIT_COMMIT=<commit>; bash benchmarks/gpu_run.sh variants
# then copy the returned files into benchmarks/results/<device-slug>/ (the last line printed names it).
# Environment: PYTHON (python3), OUT, GIT_COMMIT, SKIP_INSTALL=1, BUDGET, VARIANTS.
source "$(dirname "$0")/common.sh"

SCRIPT_LINE="benchmarks/gpu/variants.sh $*"
declare_files env-variants.txt variants.log variants.csv

write_env "$(out env-variants.txt)"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: variants needs one')"
budget=$(( ${BUDGET:-270} - $(elapsed) ))
set +e
if [[ ${VARIANTS:-} == all ]]; then
  pick=()
else
  read -ra pick <<<"--no-ping-pong --variants ${VARIANTS:-rule wide-w4 bwd-flags graphed tile-wide w4 rule-wide split32}"
fi
timeout -s INT -k 20 $(( budget + 60 )) "$PY" -m benchmarks.variants "${pick[@]}" --budget "$budget" \
  --csv "$(out variants.csv)" 2>&1 | tee "$(out variants.log)"
rc=${PIPESTATUS[0]}
set -e
check_outputs
echo "== done in $(elapsed)s (exit status $rc); copy the returned files into benchmarks/results/$(device_slug)/"
exit "$rc"
