#!/usr/bin/env bash
# Step 3: the plots of the benchmark CSVs of one device folder. Needs no GPU: run it here, after copying the
# bench calls' files into benchmarks/results/<device-slug>/ (a device call works too, but spends device time).
#
#   bash benchmarks/gpu/plots.sh benchmarks/results/<device-slug> [--commit SHA]
#
# Writes 5 files under $OUT (default: the device folder itself): env-plots.txt (versions, commit),
# plots.log, and bench-time-per-step.png, bench-speedup.png, bench-memory.png (benchmarks/plot.py, from every
# bench-*.csv in the folder, the rows of the newest commit). `DRY_RUN=1 bash benchmarks/gpu/plots.sh DIR` lists them.
#
# Expected duration: under 30 s (matplotlib only).
# Fails loudly (set -euo pipefail): no CSV in the folder, no timed rows, or a missing matplotlib exit nonzero.
# On a device call: export GIT_COMMIT=<commit>; bash benchmarks/gpu_run.sh plots benchmarks/results/<device-slug>
# (the folder must then be in the working tree that travels), and copy the PNGs back into that folder.
# Environment: PYTHON (python3), OUT, GIT_COMMIT.
source "$(dirname "$0")/common.sh"

DIR=${1:?usage: plots.sh benchmarks/results/<device-slug> [--commit SHA]}
shift
[[ -d $DIR ]] || die "$DIR is not a folder"
[[ -n $OUT_GIVEN ]] || OUT=$DIR
SCRIPT_LINE="benchmarks/gpu/plots.sh $DIR $*"
declare_files env-plots.txt plots.log bench-time-per-step.png bench-speedup.png bench-memory.png

SKIP_INSTALL=1 write_env "$(out env-plots.txt)"
mapfile -t csvs < <(ls "$DIR"/bench-*.csv 2>/dev/null | sort)
(( ${#csvs[@]} > 0 )) || die "no bench-*.csv in $DIR"
"$PY" -m benchmarks.plot "${csvs[@]}" --prefix "$OUT/bench" "$@" 2>&1 | tee "$(out plots.log)"
[[ $OUT == "$DIR" ]] || check_outputs
echo "== done in $(elapsed)s: $OUT/bench-*.png"
