"""A stand-in CUDA driver for Triton: compile real GPU code on a machine without a GPU, launch nothing.

    from tritonlstm.kernels.fake_driver import fake_cuda_driver

    with fake_cuda_driver(arch=90) as drv:           # sm_90, 132 SMs (H100 SXM)
        step.forward(layer)                           # CPU tensors; every launch compiles for sm_90, runs nothing
    drv.launches[0]     # Launch(kernel='_lstm_fwd_step_kernel', grid=(1, 2, 1), device=0, stream=0, variant=...)
    drv.variant_counts()                              # {'_lstm_fwd_step_kernel': 1}: compiled variants launched
    drv.variants()[0].n_regs, drv.variants()[0].n_spills

Inside the context Triton's active driver is a :class:`FakeCudaDriver`: ``@triton.jit`` kernels called on CPU
tensors are specialised exactly as on a GPU (the binder reads the tensors' pointers, so 16-byte alignment hints
come out as they would for device memory allocated the same way), compiled to a cubin by Triton's bundled ptxas
(and cached on disk like any build), and "launched" by recording what the launch asked for: kernel, grid, device
index, stream, and the compiled variant. Registers and spills of each variant come from the cubin (the bundled
``cuobjdump``). Nothing executes, so outputs stay whatever they were: use it for launch counts, compiled-variant
counts, host time and resource usage, not for numbers.

The kernels must be real ``JITFunction``s: import them without ``TRITON_INTERPRET=1`` (under the interpreter
``triton.jit`` returns interpreted functions that never reach a driver).

``num_sms`` is what ``triton.runtime.driver.active.utils.get_device_properties(i)["multiprocessor_count"]``
answers inside the context (code that sizes a persistent grid from it sees the GPU asked for).

Device and stream come from ``current_device()`` and ``current_stream(index)``, by default device 0 and stream 0.
Pass ``torch_queries=True`` to ask ``torch.cuda.current_device()`` and ``torch.cuda.current_stream(i)`` instead, as
Triton's own driver does (tests mock those to check a launcher's device guard on a CPU machine).

Works with Triton 3.6 and 3.9 (same driver interface: ``triton.runtime.driver.set_active``, ``launcher_cls``,
``utils.load_binary`` and ``utils.get_device_properties``).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as _driver_config

# per compute capability: the most shared memory one block may use (bytes), as the real driver reports it
_SHARED_MEM = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: a distinct specialization (signature, constexprs, alignment hints, options)."""

    kernel: str
    hash: str
    n_regs: int
    n_spills: int  # bytes of stack frame per thread (cuobjdump's STACK): nonzero here means register spills
    num_warps: int
    shared: int
    attrs: str  # the specialization hints, e.g. which pointers are 16-byte aligned
    cubin: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple[int, int, int]
    device: int
    stream: int
    variant: str  # Variant.hash


def cubin_resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) of a cubin's kernel, read with Triton's bundled cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        cmd = [_CUOBJDUMP, "--dump-resource-usage", f.name]
        usage = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage.stdout)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {usage.stdout!r}")
    return int(m.group(1)), int(m.group(2))


_FAKE_MODULE = object()


class _FakeLauncher:
    """Stands in for CudaLauncher: built once per compiled kernel (before load_binary), called once per launch."""

    def __init__(self, src, metadata):
        self.name = metadata.name
        self.hash = metadata.hash
        self.num_warps = metadata.num_warps
        self.shared = metadata.shared
        self.attrs = repr(getattr(src, "attrs", None))
        self.resources: tuple[int, int] | None = None  # filled by load_binary, which Triton calls right after
        self.cubin = b""
        drv = _active_fake()
        drv._pending = self
        if getattr(src, "fn", None) is not None:
            drv._used_fns.add(src.fn)

    def __call__(self, grid_x, grid_y, grid_z, stream, function, *args):
        _active_fake()._record(self, (grid_x, grid_y, grid_z), stream)

    def variant(self) -> Variant:
        n_regs, n_spills = self.resources
        return Variant(self.name, self.hash, n_regs, n_spills, self.num_warps, self.shared, self.attrs, self.cubin)


def _active_fake() -> "FakeCudaDriver":
    drv = _driver_config._active
    if not isinstance(drv, FakeCudaDriver):
        raise RuntimeError("a kernel compiled under fake_cuda_driver was launched outside it")
    return drv


class _FakeUtils:
    def __init__(self, drv: "FakeCudaDriver"):
        self._drv = drv

    def get_device_properties(self, device):
        return {
            "max_shared_mem": _SHARED_MEM.get(self._drv.arch, 101376),
            "multiprocessor_count": self._drv.num_sms,
            "max_num_regs": 65536,
            "warpSize": 32,
        }

    def load_binary(self, name, kernel, shared, device):
        n_regs, n_spills = cubin_resources(kernel)
        self._drv._pending.resources = (n_regs, n_spills)
        self._drv._pending.cubin = kernel
        # a module handle that is not None, so Triton does not reload the kernel at every launch; the context
        # resets it to None on exit, so CompiledKernel.__del__ never hands it to a real driver
        return _FAKE_MODULE, name, n_regs, n_spills, 1024

    def unload_module(self, module):
        pass


class FakeCudaDriver:
    """Triton's driver interface for a GPU of compute capability ``arch`` that is not there (see the module doc)."""

    def __init__(
        self,
        arch: int = 90,
        num_sms: int = 132,
        current_device: Callable[[], int] | None = None,
        current_stream: Callable[[int], int] | None = None,
    ):
        self.arch = arch
        self.num_sms = num_sms
        self.target = GPUTarget("cuda", arch, 32)
        self._current_device = current_device or (lambda: 0)
        self._current_stream = current_stream or (lambda index: 0)
        self.utils = _FakeUtils(self)
        self.launcher_cls = _FakeLauncher
        self.launches: list[Launch] = []
        self._launchers: dict[str, _FakeLauncher] = {}  # variant hash -> its launcher, in first-launch order
        self._pending: _FakeLauncher | None = None
        self._used_fns: set = set()  # JITFunctions whose compiled kernels hold _FAKE_MODULE

    # --- what Triton's runtime asks of a driver ---------------------------------------------------------
    @staticmethod
    def is_active():
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        # the key of JITFunction.device_caches: it carries the arch, so a second fake arch in the same process
        # does not reuse the binders (and targets) built for the first
        return _DeviceKey(self._current_device(), self.arch)

    def get_current_stream(self, device):
        return self._current_stream(int(device))

    def set_current_device(self, device):
        raise RuntimeError("fake_cuda_driver cannot change the device; use torch.cuda.device in the code under test")

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_device_interface(self):
        import torch

        return torch.cuda

    def map_python_to_cpp_type(self, ty: str) -> str:
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    def get_benchmarker(self):
        raise RuntimeError("fake_cuda_driver launches nothing: there is nothing to benchmark")

    # --- records ----------------------------------------------------------------------------------------
    def _record(self, launcher: _FakeLauncher, grid, stream) -> None:
        self._launchers.setdefault(launcher.hash, launcher)
        device = int(self._current_device())
        self.launches.append(Launch(launcher.name, tuple(int(g) for g in grid), device, stream, launcher.hash))

    def variants(self, kernel: str | None = None) -> list[Variant]:
        """Compiled variants launched in this context (first-launch order), optionally of one kernel only."""
        return [lc.variant() for lc in self._launchers.values() if kernel is None or lc.name == kernel]

    def variant_counts(self) -> dict[str, int]:
        """Kernel name -> number of distinct compiled variants launched in this context."""
        counts: dict[str, int] = {}
        for launcher in self._launchers.values():
            counts[launcher.name] = counts.get(launcher.name, 0) + 1
        return counts

    def launch_counts(self) -> dict[str, int]:
        """Kernel name -> number of launches in this context."""
        counts: dict[str, int] = {}
        for launch in self.launches:
            counts[launch.kernel] = counts.get(launch.kernel, 0) + 1
        return counts

    def clear(self) -> None:
        """Forget the launches and variants recorded so far (the compiled kernels stay cached)."""
        self.launches.clear()
        self._launchers.clear()


class _DeviceKey(int):
    """A device index that also carries the fake arch, for Triton's per-device caches."""

    def __new__(cls, index: int, arch: int):
        obj = super().__new__(cls, index)
        obj.arch = arch
        return obj

    def __eq__(self, other):
        return isinstance(other, _DeviceKey) and (int(self), self.arch) == (int(other), other.arch)

    def __hash__(self):
        return hash(("fake-cuda", int(self), self.arch))


@contextlib.contextmanager
def fake_cuda_driver(
    arch: int = 90,
    num_sms: int = 132,
    torch_queries: bool = False,
    current_device: Callable[[], int] | None = None,
    current_stream: Callable[[int], int] | None = None,
) -> Iterator[FakeCudaDriver]:
    """Make Triton compile for sm_<arch> and record launches instead of running them, inside the block.

    ``torch_queries``: take the current device and stream from ``torch.cuda`` (looked up at each launch, so
    mocks apply), as Triton's CUDA driver does; otherwise ``current_device``/``current_stream`` or 0 and 0.
    """
    if torch_queries:
        import torch

        current_device = lambda: torch.cuda.current_device()  # noqa: E731
        current_stream = lambda index: torch.cuda.current_stream(index).cuda_stream  # noqa: E731
    drv = FakeCudaDriver(arch, num_sms, current_device, current_stream)
    previous = _driver_config._active  # not .active: on a machine without a GPU there is no default driver
    _driver_config.set_active(drv)
    try:
        yield drv
    finally:
        _driver_config._active = previous
        for fn in drv._used_fns:
            for key, caches in list(fn.device_caches.items()):
                if isinstance(key, _DeviceKey):
                    for kernel in list(caches[0].values()):
                        if getattr(kernel, "module", None) is _FAKE_MODULE:
                            kernel.module = None  # loaded again (no compile) on its next fake launch


# ----------------------------------------------------------------------------------------------------------
# builds of the per-step launchers for a GPU target (benchmarks/compile_report.py prints them; the tests assert them)
# ----------------------------------------------------------------------------------------------------------

# name: (storage dtype, float32 matmul precision torch is set to while building)
DTYPES = {
    "bf16": (torch.bfloat16, "highest"),
    "fp16": (torch.float16, "highest"),
    "fp32": (torch.float32, "highest"),  # exact fp32 dots ("ieee"), torch's default
    "tf32": (torch.float32, "high"),  # torch.set_float32_matmul_precision("high"): TF32 dots
    "fp64": (torch.float64, "highest"),
}


@dataclass(frozen=True)
class Build:
    """One configuration to build: both step kernels (forward and backward) of one layer shape."""

    dtype: str
    batch: int
    hidden: int
    proj: int = 0
    lengths: bool = False
    cell: str = "lstm"  # or "gru" (no projection)

    def label(self) -> str:
        cell = "GRU " if self.cell == "gru" else ""
        return f"{cell}{self.dtype} B={self.batch} H={self.hidden} P={self.proj}{' lengths' if self.lengths else ''}"


def kernels_compile() -> bool:
    """Whether the kernels are real JIT functions here (not Triton's interpreter)."""
    from tritonlstm.kernels import step

    return isinstance(step._lstm_fwd_step_kernel, triton.runtime.jit.JITFunction)


@contextlib.contextmanager
def _matmul_precision(precision: str):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def build(b: Build, arch: int = 90, steps: int = 2, config: dict | None = None) -> dict[str, Variant]:
    """Compile ``b``'s forward and backward step kernels (the LSTM's, or with ``cell="gru"`` the GRU's) for
    sm_<arch> as the launchers specialise them.

    Returns ``{"fwd": Variant, "bwd": Variant}`` with registers, spills and the cubin. Raises if a launcher
    compiled more than one variant per kernel (every step must share one). ``config`` overrides ``step_config``.
    """
    from tritonlstm.kernels import step
    from tritonlstm.kernels.common import NONE, GradOutputs, Layer, Needs, Saved

    dtype, precision = DTYPES[b.dtype]
    g = torch.Generator().manual_seed(0)
    H, P, B, T, I = b.hidden, b.proj, b.batch, steps, 16
    R = P or H

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    w_hr = r(P, H) if P else None
    G = 3 * H if b.cell == "gru" else 4 * H
    x, h0, c0, w_ih, w_hh = r(T, B, I), r(B, R), r(B, H), r(G, I), r(G, R)
    lengths = torch.full((B,), T) if b.lengths else None
    one = [t.unsqueeze(0) if t is not None else None for t in (h0, c0, w_ih, w_hh, w_hr)]
    layer = Layer(x, *one[:4], None, None, one[4], lengths, (False,))
    with fake_cuda_driver(arch) as drv, _matmul_precision(precision):
        if b.cell == "gru":
            from tritonlstm.kernels import gru_step

            layer = layer._replace(c0=None)
            y, _, gates = gru_step.forward(layer, NONE, True, config)
            gru_step.backward(layer, NONE, y, gates, y, None, (False,) * 6, config)
        else:
            y, _, _, gates, cs = step.forward(layer, NONE, True, config)
            step.backward(layer, NONE, Saved(y, gates, cs), GradOutputs(y, None, None), Needs(*(False,) * 7), config)
    out = {}
    for kind in ("fwd", "bwd"):
        variants = [v for v in drv.variants() if f"_{kind}_step_kernel" in v.kernel]
        if len(variants) != 1:
            raise RuntimeError(f"{b.label()}: {len(variants)} {kind} variants compiled, expected 1")
        out[kind] = variants[0]
    return out


def mma_kinds(cubin: bytes) -> str:
    """Tensor-core instructions in the cubin's SASS (HGMMA: Hopper warpgroup MMA; HMMA/DMMA: mma.sync)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([_CUOBJDUMP, "--dump-sass", f.name], capture_output=True, text=True, check=True).stdout
    return "/".join(sorted(set(re.findall(r"\b(HGMMA|HMMA|DMMA)\b", sass)))) or "no tensor-core MMA"
