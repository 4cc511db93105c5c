"""Compile the step kernels for a GPU target without a GPU and report registers, spills and matrix instructions.

    python benchmarks/compile_report.py                       # sm_90 (H100/H200), H=1024 and odd H=1023
    python benchmarks/compile_report.py --arch 80 --hidden 512
    python benchmarks/compile_report.py --lengths only        # just the variable-length variants

It builds what actually runs: the launchers (``lstm_layer_forward``/``lstm_layer_backward``) are called on CPU
tensors under :func:`benchmarks.fake_driver.fake_cuda_driver`, so each kernel is specialised exactly as at run
time (the configuration ``step_config`` picks, the 16-byte alignment hints of the buffers and the divisibility
of the strides, which hold when H, P and the batch make them multiples of 16) and compiled by Triton's bundled
ptxas; nothing is launched. An odd H is the worst case: no stride is divisible by 16, so no access is known to
be aligned. Registers and spills come from each cubin (the bundled ``cuobjdump``); a nonzero STACK means spills.

``tests/test_step_compile.py`` asserts the same builds spill-free for sm_90 and sm_80 (``.ci/triton36.sh`` runs it
under the GPU image's Triton too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels, not interpreted ones
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

from benchmarks.fake_driver import _CUOBJDUMP, Variant, fake_cuda_driver  # noqa: E402
from tritonlstm.kernels import lstm as K  # noqa: E402

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

    def label(self) -> str:
        return f"{self.dtype} B={self.batch} H={self.hidden} P={self.proj}{' lengths' if self.lengths else ''}"


def kernels_compile() -> bool:
    """Whether the kernels are real JIT functions here (not Triton's interpreter)."""
    return isinstance(K._lstm_fwd_step_kernel, triton.runtime.jit.JITFunction)


@contextlib.contextmanager
def _matmul_precision(precision: str):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def build(b: Build, arch: int = 90, steps: int = 2, config: dict | None = None) -> dict[str, Variant]:
    """Compile ``b``'s forward and backward step kernels for sm_<arch> as the launchers specialise them.

    Returns ``{"fwd": Variant, "bwd": Variant}`` with registers, spills and the cubin. Raises if a launcher
    compiled more than one variant per kernel (every step must share one). ``config`` overrides ``step_config``.
    """
    dtype, precision = DTYPES[b.dtype]
    g = torch.Generator().manual_seed(0)
    H, P, B, T, I = b.hidden, b.proj, b.batch, steps, 16
    R = P or H

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    w_hr = r(P, H) if P else None
    x, h0, c0, w_ih, w_hh = r(T, B, I), r(B, R), r(B, H), r(4 * H, I), r(4 * H, R)
    lengths = torch.full((B,), T) if b.lengths else None
    with fake_cuda_driver(arch) as drv, _matmul_precision(precision):
        y, _, _, gates, cs = K.lstm_layer_forward(
            x, h0, c0, w_ih, w_hh, None, None, w_hr, lengths=lengths, config=config
        )
        K.lstm_layer_backward(
            y, None, None, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr, lengths=lengths, needs=(False,) * 7, config=config
        )
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


def report_line(b: Build, kind: str, v: Variant) -> str:
    cfg = K.step_config(b.batch, b.hidden, (b.proj or b.hidden) if kind == "fwd" else 4 * b.hidden,
                        DTYPES[b.dtype][0], b.proj)  # fmt: skip
    tile = "x".join(str(cfg[k]) for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K", "BLOCK_P") if k in cfg)
    label = f"{kind} {b.label()} {tile} w{v.num_warps}"
    return f"{label:<52} REG={v.n_regs:>3} STACK={v.n_spills:>4}  {mma_kinds(v.cubin)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 256], help="batch sizes (each picks its config)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 1023], help="hidden sizes (odd: the worst case)")
    ap.add_argument("--proj", type=int, nargs="*", default=[0, 256], help="proj_size values (0: no projection)")
    ap.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--lengths", choices=["both", "only", "no"], nargs="?", const="only", default="both",
                    help="variable-length variants: both (default), only (also plain --lengths), no")
    args = ap.parse_args()
    lengths = {"both": (False, True), "only": (True,), "no": (False,)}[args.lengths]
    print(f"triton {triton.__version__}, sm_{args.arch}", flush=True)
    for name in args.dtype:
        for H in args.hidden:
            for P in args.proj:
                # with a projection the configuration does not depend on the batch
                for B in args.batch[:1] if P else args.batch:
                    for use_len in lengths:
                        b = Build(name, B, H, P, use_len)
                        variants = build(b, args.arch)
                        for kind in ("fwd", "bwd"):
                            print(report_line(b, kind, variants[kind]), flush=True)


if __name__ == "__main__":
    main()
