# Sourced by the scripts beside it (not run on its own): strict mode, the declared output files, the environment
# record, the install. Each script declares every file it writes under $OUT before writing anything, so that
# `DRY_RUN=1 bash <script> ARGS` can list them (tests/test_benchmarks.py checks the count against the script's
# header, and the device tool brings back at most 8 files per call).
set -euo pipefail
export PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
OUT_GIVEN=${OUT:+1}  # the device tool sets OUT; plots.sh writes beside its CSVs when it is not set
OUT=${OUT:-/tmp/tritonlstm-gpu-out}
FILES=()
T0=$(date +%s)

die() { echo "FAILED: $*" >&2; exit 1; }

# declare_files NAME...: the files this call writes under $OUT (at most 8); DRY_RUN=1 lists them and exits
declare_files() {
  FILES=("$@")
  (( ${#FILES[@]} <= 8 )) || die "${#FILES[@]} files declared; the device tool returns at most 8"
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%s\n' "${FILES[@]}"
    exit 0
  fi
  mkdir -p "$OUT"
}

# out NAME: the path of a declared output file (an undeclared name is an error, not a silent 9th file)
out() {
  local f
  for f in "${FILES[@]}"; do
    [[ $f == "$1" ]] && { echo "$OUT/$1"; return 0; }
  done
  die "undeclared output file $1 (declared: ${FILES[*]})"
}

elapsed() { echo $(( $(date +%s) - T0 )); }

# check_outputs: everything under $OUT was declared (run last; on the device $OUT starts empty)
check_outputs() {
  local path name n=0 f ok
  while IFS= read -r path; do
    name=${path#"$OUT"/}
    ok=0
    for f in "${FILES[@]}"; do [[ $f == "$name" ]] && ok=1; done
    (( ok )) || die "$OUT holds $name, which this script did not declare"
    n=$((n + 1))
  done < <(find "$OUT" -type f)
  (( n <= 8 )) || die "$n files under $OUT; the device tool returns at most 8"
}

device_slug() {
  "$PY" -c 'import re, os, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{os.uname().machine}"
print(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))'
}

# write_env FILE: device, driver, versions, commit, TF32 flags; then the install (unless SKIP_INSTALL=1)
write_env() {
  local file=$1
  {
    echo "script: $SCRIPT_LINE"
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if [[ -n ${GIT_COMMIT:-} ]]; then
      echo "git_commit: $GIT_COMMIT (from GIT_COMMIT)"
    elif git rev-parse HEAD >/dev/null 2>&1; then
      echo "git_commit: $(git rev-parse HEAD)$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty)"
    else
      echo "git_commit: unknown (no .git here and GIT_COMMIT unset)"
    fi
    if command -v nvidia-smi >/dev/null; then
      echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader)"
    else
      echo "nvidia-smi: not found"
    fi
    "$PY" - <<'PY'
import os, platform, sys
from importlib.metadata import PackageNotFoundError, version
import torch
def v(package):
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
print("python:", platform.python_version(), sys.executable)
print("torch:", torch.__version__, "| cuda:", torch.version.cuda, "| cudnn:", torch.backends.cudnn.version())
print("triton:", v("triton"), "| numpy:", v("numpy"), "| matplotlib:", v("matplotlib"))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"| sm_{p.major}{p.minor} | {p.multi_processor_count} SMs | {p.total_memory / 2**30:.1f} GiB",
          f"| {torch.cuda.device_count()} visible")
else:
    print("device: no CUDA GPU visible")
print("float32_matmul_precision:", torch.get_float32_matmul_precision(), "| cudnn.rnn.fp32_precision:",
      getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", "n/a"))
print("TRITON_INTERPRET:", os.environ.get("TRITON_INTERPRET", "unset"))
PY
  } 2>&1 | tee "$file"
  if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
    local log
    log=$(mktemp)
    echo "install: $PY -m pip install --no-deps --no-build-isolation -e ." | tee -a "$file"
    if ! "$PY" -m pip install --no-deps --no-build-isolation --no-input -e . >"$log" 2>&1; then
      tee -a "$file" <"$log"
      die "pip install -e . failed (log above and in $file)"
    fi
    cat "$log" >>"$file"
    "$PY" -c "import tritonlstm.kernels" || die "tritonlstm.kernels does not import after the install"
  fi
}
