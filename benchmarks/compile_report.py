"""Compile the step kernels for a GPU target without a GPU and report registers, spills and matrix instructions.

    python benchmarks/compile_report.py                 # sm_90 (H100/H200), the configs step_config picks
    python benchmarks/compile_report.py --lengths       # the variable-length variants
    python benchmarks/compile_report.py --arch 80       # another compute capability

Triton compiles to PTX and cubin with its bundled ptxas, so this runs on any Linux machine; it reads the
cubin's resource usage and SASS with the bundled cuobjdump. A nonzero STACK means register spills.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels, not interpreted ones

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tritonlstm.kernels import lstm as K  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
DTYPES = {  # name: (storage dtype, triton storage name, accumulator, triton accumulator name)
    "bf16": (torch.bfloat16, "bf16", tl.float32, "fp32"),
    "fp16": (torch.float16, "fp16", tl.float32, "fp32"),
    "fp32": (torch.float32, "fp32", tl.float32, "fp32"),
    "fp64": (torch.float64, "fp64", tl.float64, "fp64"),
}
# pointer arguments that hold accumulator-dtype tensors (the cell state, its gradient, the carried gradient)
ACC_POINTERS = {"c_prev_ptr", "c_ptr", "dc_ptr", "dcarry_ptr"}


def _signature(kernel, storage: str, acc: str, constexprs: dict) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "len_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{acc if name in ACC_POINTERS else storage}"
        else:
            sig[name] = "i32"
    return sig


def _report(label: str, compiled) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([CUOBJDUMP, "--dump-sass", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    mma = sorted(set(re.findall(r"\b(HGMMA|HMMA|DMMA)\b", sass))) or ["no tensor-core MMA"]
    return f"{label:<44} REG={m.group(1):>3} STACK={m.group(2):>4}  {'/'.join(mma)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 256], help="batch sizes to pick configs for")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--proj", type=int, nargs="*", default=[0, 256], help="proj_size values (0: no projection)")
    ap.add_argument("--lengths", action="store_true", help="build the variable-length (HAS_LENGTHS) variants")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    H = args.hidden
    for name, (dtype, storage, acc, acc_name) in DTYPES.items():
        # float32 dots are exact ("ieee") by default, TF32 under torch.set_float32_matmul_precision("high")
        precisions = ("ieee", "tf32") if name == "fp32" else ("ieee",)
        for precision, batch, P in [(p, b, q) for p in precisions for b in args.batch for q in args.proj]:
            R = P or H
            fwd, bwd = (K._lstmp_fwd_step_kernel, K._lstmp_bwd_step_kernel) if P else (K._lstm_fwd_step_kernel, K._lstm_bwd_step_kernel)
            for kind, kernel, reduce, flags in (
                ("fwd", fwd, R, {"STORE_GATES": True}),
                ("bwd", bwd, 4 * H, {"HAS_NEXT": True, "HAS_DY": True}),
            ):
                cfg = K.step_config(batch, H, reduce, dtype, P)
                constexprs = {
                    **{k: v for k, v in cfg.items() if k.startswith("BLOCK_")},
                    "HAS_LENGTHS": args.lengths, "ACC_DTYPE": acc, "INPUT_PRECISION": precision, **flags,
                }  # fmt: skip
                src = ASTSource(kernel, _signature(kernel, storage, acc_name, constexprs), constexprs=constexprs)
                compiled = triton.compile(src, target=target, options={"num_warps": cfg["num_warps"]})
                tile = "x".join(str(cfg[k]) for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K", "BLOCK_P") if k in cfg)
                label = f"{kind} {name} B={batch} P={P} {tile} w{cfg['num_warps']} {precision}"
                print(_report(label, compiled), flush=True)


if __name__ == "__main__":
    main()
