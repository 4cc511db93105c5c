"""Benchmark runner: LSTM kernels side by side, one CSV schema.

    python -m benchmarks.run --grid default --out benchmarks/results/     # on a GPU machine
    python -m benchmarks.run --grid quick                                  # a few minutes of device time
    python -m benchmarks.run --smoke --out /tmp/bench                      # CPU: interpreter, tiny shapes

Every provider times one LSTM layer *including its input GEMM* (x W_ih^T), in two modes: ``fwd`` (inference,
no grad) and ``fwd+bwd`` (forward, a loss over output and final states, backward). Timing is
``triton.testing.do_bench`` (median and 20/80 % quantiles, after warm-up) on random data; on CPU (smoke mode) a
wall-clock timer with the same statistics. Before tritonlstm is timed on a shape its output must match cuDNN
float32 within the dtype's test tolerance; a mismatch is written as a marked row, never timed.

Rows are appended to ``<out>/<device-slug>.csv``; ``python -m benchmarks.plot`` turns that file into PNGs.
"""

from __future__ import annotations

import argparse
import csv
import datetime
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

if not torch.cuda.is_available():  # the kernels must be decorated for the interpreter before their first import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

import tritonlstm  # noqa: E402
from tests.helpers import assert_close  # noqa: E402  (the per-dtype tolerances live there, in one place)

COLUMNS = [
    "date", "commit", "device", "torch", "triton", "provider", "dtype", "mode", "batch", "seq_len", "input_size",
    "hidden_size", "num_layers", "bidirectional", "cuda_graph", "ms", "ms_p20", "ms_p80", "us_per_step",
    "tokens_per_s", "tflops", "peak_mem_mb", "floor_ms", "floor_kind", "achieved_over_floor", "note",
]  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
PROVIDERS = ("tritonlstm", "cudnn", "cudnn-tf32", "torch_compile", "flashrnn")
DEFAULT_PROVIDERS = ("tritonlstm", "cudnn", "cudnn-tf32", "flashrnn")
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
    if name == "quick":
        return [Shape(16, 256, 768, 768), Shape(256, 256, 1024, 1024), Shape(1024, 64, 1024, 1024, ("bf16",))]
    if name == "smoke":
        return [Shape(2, 4, 8, 5, ("fp32",)), Shape(3, 3, 6, 6, ("fp32",))]
    raise ValueError(f"unknown grid {name!r}")


GRIDS = ("default", "quick", "smoke")


# ---------------------------------------------------------------------------------------------- environment


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{os.uname().machine}"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure_peaks(device: str) -> dict:
    """Measured ceilings for the roofline: a big bf16 (CPU: fp32) matmul and a big device copy."""
    if device == "cuda":
        n = 8192
        a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        ms = triton.testing.do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
        src = torch.randn(2**28, device="cuda")  # 1 GiB
        dst = torch.empty_like(src)
        copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
        return {"matmul_tflops": 2 * n**3 / ms / 1e9, "copy_tb_s": 2 * src.numel() * 4 / copy_ms / 1e9,
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


def _cpu_bench(fn: Callable, reps: int = 5) -> tuple[float, float, float]:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _bench(fn: Callable, device: str, cuda_graph: bool) -> tuple[float, float, float]:
    if device != "cuda":
        return _cpu_bench(fn)
    if cuda_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        fn = graph.replay
    ms, p20, p80 = triton.testing.do_bench(fn, warmup=50, rep=300, quantiles=[0.5, 0.2, 0.8])
    return ms, p20, p80


def _peak_mem_mb(fn: Callable, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


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


def _make_step(module: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable:
    if mode == "fwd":

        def step():
            with torch.no_grad():
                return module(x)

        return step

    def step():
        y, (h, c) = module(x)
        (y.float().sum() + h.float().sum() + c.float().sum()).backward()
        return y

    return step


def _provider_module(provider: str, shape: Shape, dtype: torch.dtype, device: str, ref: torch.nn.LSTM):
    """(module, note) for a provider, or (None, reason) when it cannot run here."""
    if provider == "tritonlstm":
        m = tritonlstm.LSTM(shape.input_size, shape.hidden, backend="triton")
        note = "per-step launch kernels; input GEMM included"
    elif provider in ("cudnn", "cudnn-tf32"):
        m = torch.nn.LSTM(shape.input_size, shape.hidden)
        if device != "cuda":
            note = "nn.LSTM on CPU (ATen, not cuDNN); input GEMM included"
        else:
            note = _cudnn_algorithm(shape, dtype) + "; input GEMM included"
        if provider == "cudnn-tf32" and dtype != torch.float32:
            return None, "TF32 applies to float32 only"
    elif provider == "torch_compile":
        m = tritonlstm.LSTM(shape.input_size, shape.hidden, backend="reference")
        m.forward = torch.compile(m.forward)
        note = "the reference step loop under torch.compile; input GEMM included"
    elif provider == "flashrnn":
        try:
            import flashrnn  # noqa: F401
        except Exception as e:  # reported in the row's note, never swallowed
            return None, f"flashrnn not importable: {type(e).__name__}: {e}"
        return None, "flashrnn is importable but its adapter is not written yet (head-wise API differs)"
    else:
        raise ValueError(f"unknown provider {provider!r}")
    m.load_state_dict(ref.state_dict())
    return m.to(device=device, dtype=dtype), note


def _floors(shape: Shape, mode: str, dtype: torch.dtype, peaks: dict) -> tuple[float, str]:
    """The larger of the compute, memory and sequential-latency floors, in ms, and which one it is."""
    B, T, H, I = shape.batch, shape.seq_len, shape.hidden, shape.input_size
    e = torch.finfo(dtype).bits // 8
    flops = 8 * B * H * (I + H) * T * (3 if mode == "fwd+bwd" else 1)
    bytes_fwd = e * (T * B * I + T * B * H + 4 * H * (I + H))
    nbytes = bytes_fwd if mode == "fwd" else 2 * bytes_fwd + e * 2 * T * B * 4 * H  # + gates saved and re-read
    floors = {
        "compute": flops / (peaks["matmul_tflops"] * 1e12) * 1e3,
        "memory": nbytes / (peaks["copy_tb_s"] * 1e12) * 1e3,
        "latency": STEP_LATENCY_FLOOR_US * T * (2 if mode == "fwd+bwd" else 1) / 1e3,
    }
    kind = max(floors, key=floors.get)
    return floors[kind], kind


def _flops(shape: Shape, mode: str) -> float:
    return 8 * shape.batch * shape.hidden * (shape.input_size + shape.hidden) * shape.seq_len * (3 if mode == "fwd+bwd" else 1)


# ---------------------------------------------------------------------------------------------- main loop


def run(grid: str, providers: list[str], dtypes: list[str], modes: list[str], out: str, cuda_graph: bool) -> str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = _device_name()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{_slug(device_name)}.csv")
    peaks = measure_peaks(device)
    with open(os.path.join(out, f"{_slug(device_name)}-peaks.json"), "w") as f:
        json.dump({"device": device_name, "date": datetime.date.today().isoformat(), **peaks}, f, indent=1)
    print(f"# {device_name}: matmul {peaks['matmul_tflops']:.4g} TFLOP/s ({peaks['matmul']}), copy "
          f"{peaks['copy_tb_s']:.4g} TB/s ({peaks['copy']}); every provider includes the input GEMM")  # fmt: skip
    base = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": _commit(), "device": device_name,
        "torch": torch.__version__, "triton": triton.__version__, "num_layers": 1, "bidirectional": False,
        "cuda_graph": cuda_graph,
    }  # fmt: skip
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        for shape in _grid(grid):
            for dtype_name in [d for d in dtypes if d in shape.dtypes]:
                dtype = DTYPES[dtype_name]
                torch.manual_seed(0)
                ref = torch.nn.LSTM(shape.input_size, shape.hidden)
                x32 = torch.randn(shape.seq_len, shape.batch, shape.input_size, device=device)
                gate = _correctness_gate(ref, x32, dtype, device) if "tritonlstm" in providers else None
                for provider in providers:
                    for mode in modes:
                        row = dict(base, provider=provider, dtype=dtype_name, mode=mode, batch=shape.batch,
                                   seq_len=shape.seq_len, input_size=shape.input_size, hidden_size=shape.hidden)  # fmt: skip
                        row.update(_measure(provider, shape, dtype, mode, device, ref, x32, cuda_graph, gate, peaks))
                        writer.writerow(row)
                        f.flush()
                        print(_summary(row), flush=True)
    return path


def _correctness_gate(ref: torch.nn.LSTM, x32: torch.Tensor, dtype: torch.dtype, device: str) -> str | None:
    """None when tritonlstm matches nn.LSTM float32 on this shape; else the mismatch, which marks its rows."""
    if device == "cpu" and dtype == torch.bfloat16:
        return "bf16 is not gated on CPU (the interpreter cannot run it)"
    ours = tritonlstm.LSTM(ref.input_size, ref.hidden_size, backend="triton")
    ours.load_state_dict(ref.state_dict())
    ours = ours.to(device=device, dtype=dtype)
    with torch.no_grad():
        expected = ref.to(device)(x32)
        actual = ours(x32.to(dtype))
    try:
        for a, e, name in ((actual[0], expected[0], "output"), (actual[1][0], expected[1][0], "h_n"), (actual[1][1], expected[1][1], "c_n")):
            assert_close(a, e, dtype, name)
    except AssertionError as err:
        return "MISMATCH vs cuDNN fp32: " + str(err).splitlines()[0][:200]
    return None


def _measure(provider, shape, dtype, mode, device, ref, x32, cuda_graph, gate, peaks) -> dict:
    if provider == "tritonlstm" and gate is not None and gate.startswith("MISMATCH"):
        return {"note": gate + " (not timed)"}
    module, note = _provider_module(provider, shape, dtype, device, ref)
    if module is None:
        return {"note": f"skipped: {note}"}
    x = x32.to(dtype)
    step = _make_step(module, x, mode)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = provider == "cudnn-tf32"
    try:
        ms, p20, p80 = _bench(step, device, cuda_graph)
        mem = _peak_mem_mb(step, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    floor, kind = _floors(shape, mode, dtype, peaks)
    if device == "cpu":
        note += "; CPU wall-clock timer"
    return {
        "ms": f"{ms:.4f}", "ms_p20": f"{p20:.4f}", "ms_p80": f"{p80:.4f}",
        "us_per_step": f"{ms * 1e3 / shape.seq_len:.3f}",
        "tokens_per_s": f"{shape.batch * shape.seq_len / ms * 1e3:.1f}",
        "tflops": f"{_flops(shape, mode) / ms / 1e9:.3f}",
        "peak_mem_mb": "" if mem is None else f"{mem:.1f}",
        "floor_ms": f"{floor:.4f}", "floor_kind": kind, "achieved_over_floor": f"{ms / floor:.2f}",
        "note": note + (f"; {gate}" if gate and provider == "tritonlstm" else ""),
    }  # fmt: skip


def _summary(row: dict) -> str:
    shape = f"B={row['batch']:<5} T={row['seq_len']:<5} H={row['hidden_size']:<5}"
    timing = f"{row.get('ms', '-') or '-':>10} ms  {row.get('us_per_step', '') or '':>9} us/step" if row.get("ms") else "  (not timed)"
    return f"{row['provider']:<14} {row['dtype']:<5} {row['mode']:<8} {shape} {timing}  {row.get('note', '')}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--grid", choices=GRIDS, default="default", help=f"shape grid: {', '.join(GRIDS)} (default: default)")
    ap.add_argument("--quick", action="store_true", help="same as --grid quick")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke run: --grid smoke, providers tritonlstm and cudnn, fp32")
    ap.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(DEFAULT_PROVIDERS),
                    help=f"providers: {', '.join(PROVIDERS)} (default: {' '.join(DEFAULT_PROVIDERS)})")  # fmt: skip
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="dtypes: fp32 fp16 bf16")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes: fwd, fwd+bwd")
    ap.add_argument("--cuda-graph", action="store_true", help="time replays of a captured CUDA graph")
    ap.add_argument("--out", default="benchmarks/results", help="folder of the CSV (<device-slug>.csv) and peaks")
    args = ap.parse_args(argv)
    grid, providers, dtypes = args.grid, args.providers, args.dtypes
    if args.quick:
        grid = "quick"
    if args.smoke:
        grid, providers, dtypes = "smoke", ["tritonlstm", "cudnn"], ["fp32"]
    if grid != "smoke" and not torch.cuda.is_available():
        sys.exit("the default and quick grids need a CUDA GPU; on CPU use --smoke")
    path = run(grid, providers, dtypes, args.modes, args.out, args.cuda_graph)
    print(f"# rows appended to {path}")


if __name__ == "__main__":
    main()
