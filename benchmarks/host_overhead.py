"""Host time and launches per layer call: the sequence launchers against the per-step launchers, no GPU needed.

    python -m benchmarks.host_overhead                      # prints the table (committed as results/host_overhead.txt)
    python -m benchmarks.host_overhead --T 16 1024 --reps 50

Triton's active driver is replaced by ``kernels/fake_driver.py``'s: every kernel compiles for sm_90 as on an
H100 (132 SMs) and its launch is recorded instead of run. What is timed is everything the host does for one
layer call: the launcher's torch ops (input GEMM on tiny tensors, re-layouts, allocations) and Triton's
dispatch of each launch. Tensors are tiny (B=2, I=H=4) so torch ops cost only their dispatch, and the sequence
kernels' time is the same for every T; the per-step launchers pay per step. Each call's launches are counted
per kernel. Nothing executes on a device: the outputs are not numbers to read.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.pop("TRITON_INTERPRET", None)  # real JITFunctions: they reach the (fake) driver

import torch  # noqa: E402
import triton  # noqa: E402

from tritonlstm.kernels import sequence_bwd, sequence_fwd, step  # noqa: E402
from tritonlstm.kernels.common import NONE, GradOutputs, Layer, Saved  # noqa: E402
from tritonlstm.kernels.fake_driver import fake_cuda_driver  # noqa: E402


def _inputs(T: int, B: int, I: int, H: int, D: int):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.5

    return r(T, B, I), r(D, B, H), r(D, B, H), r(D, 4 * H, I), r(D, 4 * H, H), r(D, 4 * H)


def _calls(T: int, B: int, I: int, H: int, D: int) -> dict:
    """name -> zero-argument function running one layer call (forward or backward, every direction)."""
    x, h0, c0, w_ih, w_hh, bias = _inputs(T, B, I, H, D)
    layer = Layer(x, h0, c0, w_ih, w_hh, bias, torch.zeros_like(bias), None, None, (False, True)[:D])
    y, h_n, c_n, gates, cs = sequence_fwd.forward(layer)
    saved = Saved(y, gates, cs)
    grads = GradOutputs(torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n))

    def seq_fwd():
        sequence_fwd.forward(layer, NONE, True)

    def seq_bwd():
        sequence_bwd.backward(layer, NONE, saved, grads)

    def step_fwd_call():
        step.forward(layer, NONE, True)

    def step_bwd_call():  # fed by the sequence forward: the saved tensors are interchangeable
        step.backward(layer, NONE, saved, grads)

    return {
        "sequence fwd": seq_fwd,
        "sequence bwd": seq_bwd,
        "per-step fwd": step_fwd_call,
        "per-step bwd": step_bwd_call,
    }


def _memoize_loads(drv) -> None:
    """Load each cubin once. The fake driver's ``load_binary`` returns no module, so Triton calls it again on
    every launch (a cuobjdump subprocess, ~5 ms); a real driver loads once. Memoized here, what remains per launch
    (a new launcher object) still over-counts a real driver's dispatch slightly."""
    cache: dict = {}
    load = drv.utils.load_binary

    def load_binary(name, kernel, shared, device):
        key = (name, kernel)  # the same bytes object every launch: its hash is computed once
        if key not in cache:
            cache[key] = (load(name, kernel, shared, device), drv._pending.resources, drv._pending.cubin)
        else:
            drv._pending.resources, drv._pending.cubin = cache[key][1:]
        return cache[key][0]

    drv.utils.load_binary = load_binary


def measure(
    T: int, B: int = 2, I: int = 4, H: int = 4, D: int = 1, reps: int = 20, which=None, stat=statistics.median
) -> dict:
    """name -> (host µs per layer call, {kernel: launches per call}) under the fake driver; ``stat`` of the reps
    (``min`` is the robust choice on a shared machine)."""
    threads = torch.get_num_threads()
    # one thread: on a GPU the GEMMs run on the device; here a busy machine would make OpenMP's threads spin
    torch.set_num_threads(1)
    try:
        with fake_cuda_driver(arch=90, num_sms=132) as drv:
            out = _measure_in(drv, T, B, I, H, D, reps, which, stat)
    finally:
        torch.set_num_threads(threads)
    return out


def _measure_in(drv, T, B, I, H, D, reps, which, stat) -> dict:
    out = {}
    _memoize_loads(drv)
    for name, fn in _calls(T, B, I, H, D).items():
        if which is not None and name not in which:
            continue
        fn()  # compile (or load from Triton's cache) outside the timing
        drv.clear()
        fn()
        launches = drv.launch_counts()
        reps_here = reps if name.startswith("sequence") or T <= 64 else max(3, reps // 10)
        times = []
        for _ in range(reps_here):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = (stat([t * 1e6 for t in times]), launches)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[16, 1024])
    ap.add_argument("--D", type=int, nargs="+", default=[1, 2], help="directions")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    print("# host time per layer call, fake sm_90 driver (nothing runs on a device); B=2, I=H=4, float32")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"# load average {load} (other jobs share the cores: times are upper bounds)")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"# {machine}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"# median and fastest of --reps {args.reps} calls (per-step launchers at T > 64: reps/10)")
    print(f"{'path':<14} {'D':>2} {'T':>6} {'median us':>10} {'min us':>8} {'us/step':>8}  launches per call")
    for D in args.D:
        for T in args.T:
            both = measure(T, D=D, reps=args.reps, stat=lambda ts: (statistics.median(ts), min(ts)))
            for name, ((us, fastest), launches) in both.items():
                counts = ", ".join(f"{k} x{v}" for k, v in sorted(launches.items()))
                print(f"{name:<14} {D:>2} {T:>6} {us:>10.1f} {fastest:>8.1f} {us / T:>8.2f}  {counts}", flush=True)


if __name__ == "__main__":
    main()
