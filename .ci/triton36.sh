#!/usr/bin/env bash
# CI (CPU, no GPU): the kernels must compile, spill-free, for sm_90 and sm_80 under today's Triton and under the
# GPU image's (Triton 3.6.0, which torch's CUDA wheels pin there). Run from .ci/run after the venv is set up, with
# its python on PATH. Triton 3.6 goes into a folder beside the venv's own (pip --target, then PYTHONPATH), so the
# venv is not touched; the runs go in parallel on the two cores.
#
#   bash .ci/triton36.sh                     # TRITON36_DIR=... to put Triton 3.6 elsewhere (default .venv/triton36)
set -euo pipefail
cd "$(dirname "$0")/.."

TRITON36_VERSION=3.6.0
TRITON36_DIR=${TRITON36_DIR:-.venv/triton36}
LOGS=$(mktemp -d)

installed=$(PYTHONPATH="$TRITON36_DIR" python -c 'import triton; print(triton.__version__)' 2>/dev/null || true)
if [ "$installed" != "$TRITON36_VERSION" ]; then
    python -m pip install --quiet --no-deps --upgrade --target "$TRITON36_DIR" "triton==$TRITON36_VERSION"
fi

# what each run checks, compile-only under the fake driver: the compile matrix (tests/test_step_compile.py) under
# both versions, and the structure of the sequence kernels (tests/test_sequence_structure.py, the GRU's
# tests/test_gru_structure.py, the tile regime's tests/test_tile_structure.py) under 3.6 (the README's test command has just run them under today's Triton). Three
# runs on two cores: 3.6's matrix and structure runs are the long ones, so each gets its own process.
run() {  # run NAME PYTHONPATH TEST...
    local name=$1 path=$2
    shift 2
    (
        export PYTHONPATH="$path" TRITONLSTM_COMPILE_MATRIX=1
        unset TRITON_INTERPRET
        python -c 'import triton, numpy; print("triton", triton.__version__, triton.__file__, "numpy", numpy.__version__)'
        python -m pytest -q -p no:cacheprovider "$@"
    ) >"$LOGS/$name.log" 2>&1
}

start=$(date +%s)
pids=()
run triton-current-step-matrix "" tests/test_step_compile.py &
pids+=($!)
run "triton-$TRITON36_VERSION-step-matrix" "$TRITON36_DIR" tests/test_step_compile.py &
pids+=($!)
run "triton-$TRITON36_VERSION-structure" "$TRITON36_DIR" tests/test_sequence_structure.py tests/test_gru_structure.py \
    tests/test_tile_structure.py &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done

# the interpreter of the GPU image's Triton with this NumPy (Triton 3.6 + NumPy >= 2.4 broke `range` over a
# runtime bound; the kernels loop over constexpr bounds only): a few launcher tests, interpreted
(
    export PYTHONPATH="$TRITON36_DIR" TRITON_INTERPRET=1
    python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
        -k "test_layer_matches_reference and T4 or test_lengths_match_reference and proj"
) >"$LOGS/triton-$TRITON36_VERSION-interpreter.log" 2>&1 || status=1

for log in "$LOGS"/*.log; do
    echo "=== $(basename "$log" .log)"
    tail -n 25 "$log"
done
echo "triton36.sh: $(($(date +%s) - start)) s, $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
