"""Compile the step kernels for a GPU target without a GPU and report registers, spills and matrix instructions.

    python benchmarks/compile_report.py                       # sm_90 (H100/H200), H=1024 and odd H=1023
    python benchmarks/compile_report.py --arch 80 --hidden 512
    python benchmarks/compile_report.py --lengths only        # just the variable-length variants

It builds what actually runs: :func:`tritonlstm.kernels.fake_driver.build` calls the per-step launchers
(``tritonlstm.kernels.step``) on CPU tensors under the fake driver, so each kernel is specialised exactly as at run
time (the configuration ``step_config`` picks, the 16-byte alignment hints of the buffers and the divisibility
of the strides, which hold when H, P and the batch make them multiples of 16) and compiled by Triton's bundled
ptxas; nothing is launched. An odd H is the worst case: no stride is divisible by 16, so no access is known to
be aligned. Registers and spills come from each cubin (the bundled ``cuobjdump``); a nonzero STACK means spills.

``tests/test_step_compile.py`` asserts the same builds spill-free for sm_90 and sm_80 (``.ci/triton36.sh`` runs it
under the GPU image's Triton too).
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels, not interpreted ones
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402

from tritonlstm.kernels.config import step_config  # noqa: E402
from tritonlstm.kernels.fake_driver import DTYPES, Build, Variant, build, mma_kinds  # noqa: E402

def report_line(b: Build, kind: str, v: Variant) -> str:
    cfg = step_config(b.batch, b.hidden, (b.proj or b.hidden) if kind == "fwd" else 4 * b.hidden,
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
