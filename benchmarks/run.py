"""Benchmark runner: LSTM (and GRU) kernels side by side, one CSV schema.

    python -m benchmarks.run --grid default --out benchmarks/results/     # on a GPU machine
    python -m benchmarks.run --grid default --part 1/2 --name bench-default-1of2   # half the grid, own CSV
    python -m benchmarks.run --grid quick                                  # a few minutes of device time
    python -m benchmarks.run --smoke --out /tmp/bench                      # CPU: interpreter, tiny shapes

Every provider times one LSTM layer *including its input GEMM* (x W_ih^T), in two modes: ``fwd`` (inference,
no grad) and ``fwd+bwd`` (forward, a loss over output and final states, backward). On a GPU each row is the
median and 20/80 % quantiles of CUDA-event timings (at least 5 repetitions after warm-up, the L2 cache flushed
before each, as ``triton.testing.do_bench`` does); on CPU (smoke mode) a wall-clock timer with the same
statistics.

Correctness gate: before a tritonlstm provider is timed on a shape, its forward (output, h_n, c_n) must match
nn.LSTM computed in float64 on the same weights and input rounded to the row's dtype, within the dtype's test
tolerance (tritonlstm/testing.py; TF32 rows use float16's, the precision of a TF32 operand). A mismatch is
written as a marked row, never timed. The gate is exact on purpose: cuDNN's own float32 RNN runs in TF32 by
default (``torch.backends.cudnn.rnn.fp32_precision == "tf32"``), so it is no reference for float32.

Float32 precision per provider: ``tritonlstm`` and ``cudnn`` run exact fp32 (TF32 off for cuBLAS and cuDNN),
``tritonlstm-tf32`` and ``cudnn-tf32`` with TF32 on. ``tritonlstm-lengths`` and ``cudnn-packed`` time a
variable-length batch (lengths drawn once per shape, uniform in [T/2, T], the longest T): tritonlstm with
``lengths=`` (a CUDA tensor), nn.LSTM through ``pack_padded_sequence``/``pad_packed_sequence`` (packing timed).
``tritonlstm+rdrop`` (``recurrent_dropout=0.25``) and ``tritonlstm+zoneout`` (``zoneout=0.1``) time the module in
training mode, masks drawn every call; their gate runs them in eval mode against tritonlstm's reference
implementation in float64 (eval recurrent dropout is nn.LSTM; eval zoneout is its expectation, not nn.LSTM's maths).
``tritonlstm-gru`` and ``cudnn-gru`` time a GRU layer of the same shape (tritonlstm.GRU and torch.nn.GRU), the
gate against nn.GRU in float64; their rows' FLOPs and floors count three gates.

Rows are appended to ``<out>/<name>.csv`` (``<name>`` defaults to the device's slug) and the measured peaks
go to ``<out>/<name>-peaks.json``; ``python -m benchmarks.plot`` turns CSVs into PNGs. A row whose provider
raised is written with ``ERROR`` in its note; the run then exits with status 1 after finishing the grid.
The ``commit`` column is ``$GIT_COMMIT`` when set (machines without the repository's .git), else git's.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

if __name__ == "__main__" and not torch.cuda.is_available():
    # CPU: the kernels run in Triton's interpreter, which must be on before triton is first imported. Only as a
    # script: imported (by the tests) this module leaves the process's choice alone.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import tritonlstm  # noqa: E402
from tritonlstm.dispatch import triton_unavailable_reason  # noqa: E402
from tritonlstm.testing import TOLERANCES, assert_close  # noqa: E402  (the per-dtype tolerances, in one place)

COLUMNS = [
    "date", "commit", "device", "torch", "triton", "provider", "dtype", "mode", "batch", "seq_len", "input_size",
    "hidden_size", "num_layers", "bidirectional", "cuda_graph", "ms", "ms_p20", "ms_p80", "us_per_step",
    "tokens_per_s", "tflops", "peak_mem_mb", "floor_ms", "floor_kind", "achieved_over_floor", "note",
]  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
PROVIDERS = (
    "tritonlstm", "tritonlstm-tf32", "tritonlstm-lengths", "cudnn", "cudnn-tf32", "cudnn-packed", "torch_compile",
    "flashrnn", "tritonlstm+rdrop", "tritonlstm+zoneout", "tritonlstm-gru", "cudnn-gru",
)  # fmt: skip
REGULARISED = {"tritonlstm+rdrop": {"recurrent_dropout": 0.25}, "tritonlstm+zoneout": {"zoneout": 0.1}}
DEFAULT_PROVIDERS = ("tritonlstm", "cudnn", "cudnn-tf32", "flashrnn")
GATED = tuple(p for p in PROVIDERS if p.startswith("tritonlstm"))
GRU_PROVIDERS = ("tritonlstm-gru", "cudnn-gru")


def gates(provider: str) -> int:
    """The provider's gate count: 3 for a GRU, 4 for an LSTM (FLOPs, floors)."""
    return 3 if provider in GRU_PROVIDERS else 4
# the sequential chain's floor per step and pass: one grid-wide sync with weights on chip (shared/ANCHORS.md);
# an assumption from the anchors, not a measurement of this project
STEP_LATENCY_FLOOR_US = 1.0


@dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int
    hidden: int
    input_size: int
    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")


def _grid(name: str) -> list[Shape]:
    if name == "default":
        shapes = [Shape(b, 1024, h, h) for h in (256, 768, 1024) for b in (16, 64, 256)]
        shapes.append(Shape(1024, 256, 1024, 1024))  # compute-bound
        shapes.append(Shape(16, 1024, 768, 768, ("bf16",)))  # FlashRNN's headline shape
        return shapes
    if name == "perf":  # benchmarks/gpu/perf.sh: against cuDNN in 16-bit, B x H at T=1024
        return [Shape(b, 1024, h, h, ("fp16", "bf16")) for h in (256, 768, 1024) for b in (16, 64, 256)]
    if name == "quick":
        return [Shape(16, 256, 768, 768), Shape(256, 256, 1024, 1024), Shape(1024, 64, 1024, 1024, ("bf16",))]
    if name == "smoke":
        return [Shape(2, 4, 8, 5, ("fp32",)), Shape(3, 3, 6, 6, ("fp32",))]
    raise ValueError(f"unknown grid {name!r}")


GRIDS = ("default", "perf", "quick", "smoke")


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"--part takes K/N with 1 <= K <= N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def grid_part(name: str, part: tuple[int, int] = (1, 1)) -> list[Shape]:
    """Part K of N of a grid: every N-th shape from the K-th, so that each part gets its share of big shapes."""
    k, n = part
    return _grid(name)[k - 1 :: n]


# ---------------------------------------------------------------------------------------------- environment


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{os.uname().machine}"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _version(package: str) -> str:
    """The installed version, read without importing the package (Triton ships Linux wheels only)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextlib.contextmanager
def float32_precision(tf32: bool):
    """TF32 on or off for cuBLAS (hence tritonlstm's recurrence, which follows it) and for cuDNN, RNNs included.

    Only the legacy switches are touched, so the new per-operator flags (``torch.backends.cudnn.rnn.
    fp32_precision``) follow them and torch never sees the two APIs mixed.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def measure_peaks(device: str) -> dict:
    """Measured ceilings for the roofline: a big bf16 (CPU: fp32) matmul and a big device copy."""
    if device == "cuda":
        n = 8192
        a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        a @ b  # cuBLAS handle and kernel selection
        ms = _cuda_bench(lambda: a @ b, warmup_ms=100, rep_ms=500)[0]
        src = torch.randn(2**28, device="cuda")  # 1 GiB
        dst = torch.empty_like(src)
        dst.copy_(src)
        copy_ms = _cuda_bench(lambda: dst.copy_(src), warmup_ms=50, rep_ms=300)[0]
        del a, b, src, dst
        return {"matmul_tflops": 2 * n**3 / ms / 1e9, "copy_tb_s": 2 * 2**28 * 4 / copy_ms / 1e9,
                "matmul": f"bf16 {n}^3", "copy": "1 GiB fp32, read+write"}  # fmt: skip
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = _cpu_bench(lambda: a @ b)[0]
    src = torch.randn(2**24)
    dst = torch.empty_like(src)
    copy_ms = _cpu_bench(lambda: dst.copy_(src))[0]
    return {"matmul_tflops": 2 * n**3 / ms / 1e9, "copy_tb_s": 2 * src.numel() * 4 / copy_ms / 1e9,
            "matmul": f"fp32 {n}^3 (CPU)", "copy": "64 MiB fp32 (CPU)"}  # fmt: skip


# ---------------------------------------------------------------------------------------------- timing


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _cpu_bench(fn: Callable, reps: int = 3) -> tuple[float, float, float]:  # smoke runs: few reps
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(times)


def _cuda_bench(fn: Callable, warmup_ms: float = 25, rep_ms: float = 200, min_reps: int = 5, max_reps: int = 500):
    """Median and 20/80 % quantiles (ms) of per-call CUDA-event timings, L2 flushed before each call.

    The caller has run ``fn`` once (compilation). Unlike do_bench's fixed time budget, at least ``min_reps``
    timed calls are made even when one call outlasts ``rep_ms``, and no more than ``max_reps``.
    """
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")  # larger than any L2 so far
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, min(max_reps, round(warmup_ms / estimate)))):
        fn()
    n = max(min_reps, min(max_reps, round(rep_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return _quantiles([s.elapsed_time(e) for s, e in zip(starts, ends)])


def _capture(fn: Callable) -> Callable:
    """A CUDA graph of one call of ``fn`` (warmed up on a side stream, as capture requires); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _bench(fn: Callable, device: str, cuda_graph: bool) -> tuple[tuple[float, float, float], float | None]:
    """(median, p20, p80) in ms and the peak memory of one eager call in MB (None on CPU)."""
    if device != "cuda":
        return _cpu_bench(fn), None
    fn()  # compile and allocate (gradients) before measuring anything
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return _cuda_bench(_capture(fn) if cuda_graph else fn), peak


# ---------------------------------------------------------------------------------------------- providers


def _cudnn_algorithm(shape: Shape, dtype: torch.dtype) -> str:
    """Which cuDNN algorithm PyTorch's heuristics pick (aten/src/ATen/native/cudnn/RNN.cpp), for the note."""
    if dtype == torch.bfloat16:
        return "bf16: no cuDNN path in nn.LSTM, ATen's native per-step cell"
    persistent = (
        dtype == torch.float16 and shape.hidden <= 1024 and shape.hidden % 128 == 0
        and shape.input_size % 128 == 0 and shape.batch % 8 == 0 and shape.batch <= 128
    )  # fmt: skip
    return "cuDNN persistent (PyTorch's rule)" if persistent else "cuDNN standard"


def draw_lengths(shape: Shape) -> torch.Tensor:
    """The lengths of the variable-length providers: uniform in [T/2, T], the first one T (int64, CPU)."""
    g = torch.Generator().manual_seed(shape.batch * 7919 + shape.seq_len)
    lengths = torch.randint(max(1, shape.seq_len // 2), shape.seq_len + 1, (shape.batch,), generator=g)
    lengths[0] = shape.seq_len
    return lengths


def _provider_module(provider: str, shape: Shape, dtype: torch.dtype, device: str, ref: torch.nn.RNNBase):
    """(module, note) for a provider, or (None, reason) when it cannot run here. ``ref`` is the shape's nn.LSTM,
    or its nn.GRU for a GRU provider: the module takes its weights."""
    if provider.endswith("-tf32") and dtype != torch.float32:
        return None, "TF32 applies to float32 only"
    fp32 = ("; TF32 on" if provider.endswith("-tf32") else "; exact fp32 (TF32 off)") if dtype == torch.float32 else ""
    if provider == "tritonlstm-gru":
        m = tritonlstm.GRU(shape.input_size, shape.hidden, backend="triton")
        note = "tritonlstm.GRU: the Triton kernels as the op picks them" + fp32
    elif provider == "cudnn-gru":
        m = torch.nn.GRU(shape.input_size, shape.hidden)
        note = ("nn.GRU on CPU (ATen, not cuDNN)" if device != "cuda" else "cuDNN GRU") + fp32
    elif provider.startswith("tritonlstm"):
        regularisers = REGULARISED.get(provider, {})
        m = tritonlstm.LSTM(shape.input_size, shape.hidden, backend="triton", **regularisers)
        note = "Triton kernels as the op picks them (sequence or per-step: TRITONLSTM_KERNEL)" + fp32
        if provider == "tritonlstm-lengths":
            note += f"; lengths= on {device}, uniform in [T/2, T]"
        if regularisers:
            from tritonlstm.ops import _triton_refusal

            reason = _triton_refusal(*m.zoneout, has_proj=m.proj_size > 0)
            kernels_note = "the per-step kernels (the sequence kernels take no regulariser)"
            note += f"; training mode, {regularisers}; " + (f"REFERENCE LOOP ({reason})" if reason else kernels_note)
    elif provider.startswith("cudnn"):
        m = torch.nn.LSTM(shape.input_size, shape.hidden)
        note = ("nn.LSTM on CPU (ATen, not cuDNN)" if device != "cuda" else _cudnn_algorithm(shape, dtype)) + fp32
        if provider == "cudnn-packed":
            note += "; pack_padded_sequence + pad_packed_sequence timed, lengths uniform in [T/2, T]"
    elif provider == "torch_compile":
        m = tritonlstm.LSTM(shape.input_size, shape.hidden, backend="reference")
        m.forward = torch.compile(m.forward)
        note = "the reference step loop under torch.compile"
    elif provider == "flashrnn":
        try:
            import flashrnn  # noqa: F401
        except Exception as e:  # reported in the row's note, never swallowed
            return None, f"flashrnn not importable: {type(e).__name__}: {e}"
        return None, "flashrnn is importable but its adapter is not written yet (head-wise API differs)"
    else:
        raise ValueError(f"unknown provider {provider!r}")
    m.load_state_dict(ref.state_dict())
    return m.to(device=device, dtype=dtype), note + "; input GEMM included"


def _forward(provider: str, module: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> Callable:
    """A call of the provider on the padded batch ``x`` (T, B, I): returns (y padded, h_n, c_n), a GRU's (y, h_n)."""
    if provider in GRU_PROVIDERS:

        def forward():
            return module(x)

    elif provider == "tritonlstm-lengths":
        lengths_dev = lengths.to(x.device)

        def forward():
            y, (h, c) = module(x, lengths=lengths_dev)
            return y, h, c

    elif provider == "cudnn-packed":

        def forward():
            y, (h, c) = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
            return pad_packed_sequence(y, total_length=x.size(0))[0], h, c

    else:

        def forward():
            y, (h, c) = module(x)
            return y, h, c

    return forward


def _make_step(forward: Callable, mode: str) -> Callable:
    if mode == "fwd":

        def step():
            with torch.no_grad():
                return forward()[0]

        return step

    def step():
        outputs = forward()
        sum(t.float().sum() for t in outputs).backward()
        return outputs[0]

    return step


def _oracle(ref: torch.nn.RNNBase, x: torch.Tensor, dtype: torch.dtype, lengths: torch.Tensor | None):
    """nn.LSTM (nn.GRU) in float64 on the weights and input rounded to ``dtype``, i.e. what the provider sees."""
    exact = copy.deepcopy(ref).to(device=x.device, dtype=dtype).to(torch.float64)
    x64 = x.to(dtype).to(torch.float64)
    with torch.no_grad():
        if isinstance(ref, torch.nn.GRU):
            return exact(x64)
        if lengths is None:
            y, (h, c) = exact(x64)
        else:
            y, (h, c) = exact(pack_padded_sequence(x64, lengths, enforce_sorted=False))
            y = pad_packed_sequence(y, total_length=x.size(0))[0]
    return y, h, c


def correctness_gate(provider: str, module, ref, x32, dtype, lengths) -> str | None:
    """None when the provider's forward matches the float64 oracle on this shape; else the mismatch."""
    tol_dtype = torch.float16 if provider.endswith("-tf32") else dtype  # a TF32 operand has fp16's mantissa
    uses_lengths = provider == "tritonlstm-lengths"
    if provider in REGULARISED:  # eval mode against tritonlstm's reference implementation in float64
        exact = copy.deepcopy(module).to(torch.float64).eval()
        exact.backend = "reference"
        with torch.no_grad():
            y, (h, c) = exact(x32.to(dtype).to(torch.float64))
        expected = (y, h, c)
        module.eval()
    else:
        expected = _oracle(ref, x32, dtype, lengths if uses_lengths else None)
    with torch.no_grad(), float32_precision(provider.endswith("-tf32")):
        actual = _forward(provider, module, x32.to(dtype), lengths)()
    module.train()
    try:
        for a, e, name in zip(actual, expected, ("output", "h_n", "c_n")):
            assert_close(a, e, tol_dtype, name)
    except AssertionError as err:
        tol = TOLERANCES[tol_dtype]
        first = " ".join(str(err).split())[:200]
        oracle = "nn.GRU" if provider in GRU_PROVIDERS else "nn.LSTM"
        return f"MISMATCH vs float64 {oracle} (atol {tol.atol:g}*max|ref|, rtol {tol.rtol:g}): {first}"
    return None


def _floors(shape: Shape, mode: str, dtype: torch.dtype, peaks: dict, n_gates: int = 4) -> tuple[float, str]:
    """The larger of the compute, memory and sequential-latency floors, in ms, and which one it is."""
    B, T, H, I = shape.batch, shape.seq_len, shape.hidden, shape.input_size
    e = torch.finfo(dtype).bits // 8
    flops = _flops(shape, mode, n_gates)
    bytes_fwd = e * (T * B * I + T * B * H + n_gates * H * (I + H))
    nbytes = bytes_fwd if mode == "fwd" else 2 * bytes_fwd + e * 2 * T * B * 4 * H  # + gates saved and re-read
    floors = {
        "compute": flops / (peaks["matmul_tflops"] * 1e12) * 1e3,
        "memory": nbytes / (peaks["copy_tb_s"] * 1e12) * 1e3,
        "latency": STEP_LATENCY_FLOOR_US * T * (2 if mode == "fwd+bwd" else 1) / 1e3,
    }
    kind = max(floors, key=floors.get)
    return floors[kind], kind


def _flops(shape: Shape, mode: str, n_gates: int = 4) -> float:
    per_step = 2 * n_gates * shape.batch * shape.hidden * (shape.input_size + shape.hidden)
    return per_step * shape.seq_len * (3 if mode == "fwd+bwd" else 1)


# ---------------------------------------------------------------------------------------------- main loop


def run(grid: str, providers: list[str], dtypes: list[str], modes: list[str], out: str, cuda_graph: bool,
        part: tuple[int, int] = (1, 1), name: str | None = None) -> tuple[str, int]:  # fmt: skip
    """Times the grid (or one part of it); returns the CSV's path and the number of rows that raised."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = _device_name()
    name = name or _slug(device_name)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.csv")
    peaks = measure_peaks(device)
    with open(os.path.join(out, f"{name}-peaks.json"), "w") as f:
        json.dump({"device": device_name, "date": datetime.date.today().isoformat(), **peaks}, f, indent=1)
    shapes = grid_part(grid, part)
    print(f"# {device_name}: matmul {peaks['matmul_tflops']:.4g} TFLOP/s ({peaks['matmul']}), copy "
          f"{peaks['copy_tb_s']:.4g} TB/s ({peaks['copy']}); every provider includes the input GEMM\n"
          f"# grid {grid} part {part[0]}/{part[1]}: {len(shapes)} shapes; providers {' '.join(providers)}")  # fmt: skip
    base = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": _commit(), "device": device_name,
        "torch": torch.__version__, "triton": _version("triton"), "num_layers": 1, "bidirectional": False,
        "cuda_graph": cuda_graph,
    }  # fmt: skip
    errors = 0
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        for shape in shapes:
            for dtype_name in [d for d in dtypes if d in shape.dtypes]:
                dtype = DTYPES[dtype_name]
                torch.manual_seed(0)
                ref = torch.nn.LSTM(shape.input_size, shape.hidden)
                ref_gru = torch.nn.GRU(shape.input_size, shape.hidden)
                x32 = torch.randn(shape.seq_len, shape.batch, shape.input_size, device=device)
                lengths = draw_lengths(shape)
                for provider in providers:
                    oracle = ref_gru if provider in GRU_PROVIDERS else ref
                    rows = _provider_rows(provider, shape, dtype, modes, device, oracle, x32, lengths, cuda_graph,
                                          peaks)  # fmt: skip
                    for mode, result in zip(modes, rows):
                        row = dict(base, provider=provider, dtype=dtype_name, mode=mode, batch=shape.batch,
                                   seq_len=shape.seq_len, input_size=shape.input_size, hidden_size=shape.hidden)  # fmt: skip
                        row.update(result)
                        errors += row["note"].startswith("ERROR")
                        writer.writerow(row)
                        f.flush()
                        print(_summary(row), flush=True)
    return path, errors


def _error(err: BaseException) -> str:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()  # the next rows still get the memory
    return f"ERROR: {type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _provider_rows(provider, shape, dtype, modes, device, ref, x32, lengths, cuda_graph, peaks) -> list[dict]:
    """One result per mode: timings, or a note saying why the row is not timed."""
    try:
        module, note = _provider_module(provider, shape, dtype, device, ref)
        if module is None:
            return [{"note": f"skipped: {note}"} for _ in modes]
        if provider in GATED:
            gate = correctness_gate(provider, module, ref, x32, dtype, lengths)
            if gate is not None:
                return [{"note": f"{gate} (not timed)"} for _ in modes]
            oracle = "eval, float64 reference" if provider in REGULARISED else "float64 " + (
                "nn.GRU" if provider in GRU_PROVIDERS else "nn.LSTM")  # fmt: skip
            note += f"; gate passed ({oracle})"
    except Exception as err:  # recorded in the row and counted: the run exits 1 at the end
        return [{"note": _error(err)} for _ in modes]
    results = []
    x = x32.to(dtype)
    for mode in modes:
        try:
            step = _make_step(_forward(provider, module, x, lengths), mode)
            with float32_precision(provider.endswith("-tf32")):
                (ms, p20, p80), mem = _bench(step, device, cuda_graph)
        except Exception as err:  # as above
            results.append({"note": _error(err)})
            continue
        module.zero_grad(set_to_none=True)
        floor, kind = _floors(shape, mode, dtype, peaks, gates(provider))
        results.append({
            "ms": f"{ms:.4f}", "ms_p20": f"{p20:.4f}", "ms_p80": f"{p80:.4f}",
            "us_per_step": f"{ms * 1e3 / shape.seq_len:.3f}",
            "tokens_per_s": f"{shape.batch * shape.seq_len / ms * 1e3:.1f}",
            "tflops": f"{_flops(shape, mode, gates(provider)) / ms / 1e9:.3f}",
            "peak_mem_mb": "" if mem is None else f"{mem:.1f}",
            "floor_ms": f"{floor:.4f}", "floor_kind": kind, "achieved_over_floor": f"{ms / floor:.2f}",
            "note": note + ("; CPU wall-clock timer" if device == "cpu" else ""),
        })  # fmt: skip
    return results


def _summary(row: dict) -> str:
    shape = f"B={row['batch']:<5} T={row['seq_len']:<5} H={row['hidden_size']:<5}"
    timing = f"{row.get('ms', '-') or '-':>10} ms  {row.get('us_per_step', '') or '':>9} us/step" if row.get("ms") else "  (not timed)"
    return f"{row['provider']:<18} {row['dtype']:<5} {row['mode']:<8} {shape} {timing}  {row.get('note', '')}"


def _check_kernels_can_run() -> None:
    reason = triton_unavailable_reason(torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available() and reason is not None:
        sys.exit(f"no CUDA GPU, and the Triton kernels cannot run on CPU here: {reason}")


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--grid", choices=GRIDS, default="default", help=f"shape grid: {', '.join(GRIDS)} (default: default)")
    ap.add_argument("--quick", action="store_true", help="same as --grid quick")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke run: --grid smoke, providers tritonlstm and cudnn, fp32")
    ap.add_argument("--part", type=parse_part, default=(1, 1), metavar="K/N",
                    help="run part K of N of the grid (every N-th shape from the K-th), e.g. 1/2")  # fmt: skip
    ap.add_argument("--providers", nargs="+", choices=PROVIDERS, default=None,
                    help=f"providers: {', '.join(PROVIDERS)} (default: {' '.join(DEFAULT_PROVIDERS)})")  # fmt: skip
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None, help="dtypes: fp32 fp16 bf16")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes: fwd, fwd+bwd")
    ap.add_argument("--cuda-graph", action="store_true", help="time replays of a captured CUDA graph")
    ap.add_argument("--out", default="benchmarks/results", help="folder of the CSV and the peaks")
    ap.add_argument("--name", help="file stem of the CSV and peaks (default: the device's slug)")
    args = ap.parse_args(argv)
    grid = "quick" if args.quick else args.grid
    providers, dtypes = args.providers or list(DEFAULT_PROVIDERS), args.dtypes or list(DTYPES)
    if args.smoke:
        grid = "smoke"
        providers, dtypes = args.providers or ["tritonlstm", "cudnn"], args.dtypes or ["fp32"]
    if grid != "smoke" and not torch.cuda.is_available():
        sys.exit("the default and quick grids need a CUDA GPU; on CPU use --smoke")
    if any(p.startswith("tritonlstm") for p in providers):
        _check_kernels_can_run()
    path, errors = run(grid, providers, dtypes, args.modes, args.out, args.cuda_graph, args.part, args.name)
    print(f"# rows appended to {path}")
    if errors:
        sys.exit(f"# {errors} rows raised an error (ERROR in their note): see {path}")
    return path


if __name__ == "__main__":
    main()
