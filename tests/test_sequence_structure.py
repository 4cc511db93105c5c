"""Compile-only structure of the sequence kernels for sm_90 (H100/H200), no GPU needed.

Each case compiles the tiles :func:`tritonlstm.kernels.config.sequence_config` picks for a 132-SM GPU through ``triton.compile`` with
``GPUTarget("cuda", 90, 32)`` (Triton's bundled ptxas), then asserts on what came out:

* unit-split: the time loop loads none of W_hh (or W_hr) from global memory (the loop body's loads, traced in
  the TTGIR back to the kernel's pointer arguments); the batch-owned kernel, which streams W_hh every step, is
  the positive control that the tracer does find such loads;
* bf16/fp16 recurrent dots run on tensor cores (``mma.sync``/``wgmma`` in the PTX);
* no register spills (the cubin's stack frame is 0 bytes), H <= 1024, B <= 64;
* the unit-split grid is co-resident on 132 SMs: at most one program per SM, and one program's registers and
  shared memory fit an SM (65536 registers, 227 KB of shared memory).

Written against the compile API shared by Triton 3.6 and 3.9 (``ASTSource`` with named constexprs), and
kept to a few compiles.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import lru_cache

import pytest
import torch
import triton
import triton.language as tl

from tests.helpers import INTERPRETER

pytestmark = pytest.mark.skipif(
    INTERPRETER, reason="TRITON_INTERPRET=1 replaces triton.jit with the interpreter: nothing to compile"
)

SMS = 132
REGISTERS_PER_SM = 65536
SHARED_PER_BLOCK = 227 * 1024
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
_STORAGE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_ACC_POINTERS = {"cs_ptr", "dc_ptr", "dcarry_ptr"}
_I32_POINTERS = {"len_ptr", "sync_ptr", "err_ptr"}


@lru_cache(maxsize=None)
def _compiled(
    B: int, H: int, P: int, D: int, dtype: torch.dtype, backward: bool, regime: str | None = None, config=None,
    masked: bool = False, zoneout: int = 0,
):
    """Compile one kernel as the launcher would launch it; returns (config, grid size, CompiledKernel).
    ``config``: a tuple of the config dict's items, instead of the one :func:`sequence_config` picks; ``masked``:
    with a recurrent dropout mask; ``zoneout``: 0 off, 1 eval, 2 training."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tritonlstm.kernels import config as C
    from tritonlstm.kernels import sequence_bwd, sequence_fwd

    cfg = dict(config) if config is not None else C.sequence_config(B, H, P, D, dtype, SMS, backward)
    assert regime is None or cfg["regime"] == regime, f"the rule picked {cfg} for B={B} H={H} P={P} D={D}"
    k, ns = C.constexprs(cfg, H, P or H, P, backward)
    kernel = (sequence_bwd if backward else sequence_fwd).KERNELS[cfg["regime"]]
    flags = dict(HAS_LENGTHS=True, HAS_PROJ=P > 0, HAS_MASK=masked, ZONEOUT=zoneout, ACC_DTYPE=tl.float32,
                 INPUT_PRECISION="ieee")  # fmt: skip
    flags.update(dict(HAS_DY=True, HAS_DHN=True, HAS_DCN=True) if backward else dict(STORE_GATES=True))
    constexprs = {**k, **flags}
    storage = _STORAGE[dtype]
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _I32_POINTERS:
            signature[name] = "*i32"
        elif name == "zs_ptr":
            signature[name] = "*i64"
        elif name in ("zo_h", "zo_c"):
            signature[name] = "fp64"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in _ACC_POINTERS else f"*{storage}"
        else:
            signature[name] = "i32"
    src = ASTSource(kernel, signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg["num_warps"]})
    grid = triton.cdiv(B, k["BLOCK_B"]) * D * ns
    return cfg, grid, compiled, [n for n in kernel.arg_names if n not in constexprs]


def _resources(compiled) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) from the cubin."""
    assert os.path.exists(CUOBJDUMP), f"Triton's bundled cuobjdump is missing: {CUOBJDUMP}"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    assert m, usage
    return int(m.group(1)), int(m.group(2))


_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*(.*)$")
_USE = re.compile(r"%[\w.$-]+")
_LOADS = ("tt.load ", "ttg.async_copy_global_to_local ", "tt.descriptor_load ", "ttng.async_tma_copy_global_to_local ")


def _global_loads_in_time_loop(ttgir: str, arg_names: list[str]) -> set[str]:
    """Kernel pointer arguments that loads inside the time loop (the outermost scf.for) read from."""
    lines = ttgir.splitlines()
    func = next(i for i, line in enumerate(lines) if "tt.func public" in line)
    params = re.findall(r"(%[\w.$-]+): !tt\.ptr|(%[\w.$-]+): (?:i|f)\d+", lines[func])
    params = [a or b for a, b in params]
    assert len(params) == len(arg_names), (params, arg_names)
    arg_of = dict(zip(params, arg_names))
    defs: dict[str, list[str]] = {}
    for line in lines[func + 1 :]:
        m = _DEF.match(line)
        if m:
            defs[m.group(1)] = [u.split("#")[0] for u in _USE.findall(m.group(2))]
        for a, b in (
            re.findall(r"(%[\w.$-]+) = (%[\w.$-]+)", line.split("iter_args(", 1)[1]) if "iter_args(" in line else ()
        ):
            defs[a] = [b]  # a loop-carried value starts as its initial value
    # the time loop: the first scf.for at the shallowest nesting depth
    depth, best = 0, None
    for i, line in enumerate(lines[func + 1 :], func + 1):
        if "scf.for" in line and (best is None or depth < best[1]):
            best = (i, depth)
        depth += line.count("{") - line.count("}")
    assert best is not None, "no loop in the kernel"
    start, d0 = best
    body, depth = [], d0
    for line in lines[start:]:
        body.append(line)
        depth += line.count("{") - line.count("}")
        if depth == d0:
            break

    def roots(name: str, seen: set) -> set:
        if name in seen:
            return set()
        seen.add(name)
        if name in arg_of:
            return {arg_of[name]}
        return set().union(*(roots(u, seen) for u in defs.get(name, [])))

    found = set()
    for line in body[1:]:
        for op in _LOADS:
            if op in line:
                ptr = _USE.findall(line.split(op, 1)[1])[0].split("#")[0]
                found |= roots(ptr, set())
    return found


# (B, H, P, D, dtype, backward, masked, zoneout): the unit-split shapes of the latency regime, as the rule tiles
# them; masked: with recurrent dropout, zoneout: 2 = training masks (no spills from either)
SPLIT_CASES = [
    pytest.param(16, 1024, 0, 1, torch.bfloat16, False, False, 0, id="fwd-B16-H1024-bf16"),
    pytest.param(16, 1024, 0, 1, torch.bfloat16, False, True, 2, id="fwd-B16-H1024-bf16-rdrop-zoneout"),
    pytest.param(64, 256, 0, 1, torch.float16, False, False, 0, id="fwd-B64-H256-fp16"),
    pytest.param(16, 512, 0, 1, torch.bfloat16, True, False, 0, id="bwd-B16-H512-bf16"),
    pytest.param(16, 512, 0, 1, torch.bfloat16, True, True, 2, id="bwd-B16-H512-bf16-rdrop-zoneout"),
    # beyond H=512 the backward holds W_hh in chunks of gate rows and splits each chunk's dot over the warps
    pytest.param(16, 1024, 0, 2, torch.bfloat16, True, False, 0, id="bwd-B16-H1024-D2-bf16-chunked"),
    pytest.param(16, 768, 0, 1, torch.float16, True, True, 2, id="bwd-B16-H768-fp16-chunked-rdrop-zoneout"),
    pytest.param(16, 256, 128, 1, torch.bfloat16, False, False, 0, id="fwd-proj-B16-H256-P128-bf16"),
    pytest.param(16, 256, 128, 1, torch.bfloat16, True, False, 0, id="bwd-proj-B16-H256-P128-bf16"),
]


@pytest.mark.parametrize("B, H, P, D, dtype, backward, masked, zoneout", SPLIT_CASES)
def test_unit_split_structure(B, H, P, D, dtype, backward, masked, zoneout):
    cfg, grid, compiled, args = _compiled(B, H, P, D, dtype, backward, "split", masked=masked, zoneout=zoneout)
    # the weights stay on chip: nothing in the time loop reads them from global memory
    loads = _global_loads_in_time_loop(compiled.asm["ttgir"], args)
    assert "w_ptr" not in loads and "wr_ptr" not in loads, f"time loop loads {sorted(loads)}"
    exchanged = "dg_ptr" if backward else ("xh_ptr" if masked else "y_ptr")
    assert exchanged in loads, "the tracer must see the exchanged rows loaded each step"
    assert "hm_ptr" not in loads, "the recurrent dropout mask is loaded once, before the time loop"
    ptx = compiled.asm["ptx"]
    assert "mma.sync" in ptx or "wgmma" in ptx, "bf16/fp16 dots must use tensor-core MMA"
    regs, stack = _resources(compiled)
    assert stack == 0, f"{stack} bytes of register spills per thread ({regs} registers)"
    # co-resident on 132 SMs: one program per SM at most, and one program fits an SM
    assert grid <= SMS, f"grid {grid} > {SMS} SMs"
    assert regs * 32 * cfg["num_warps"] <= REGISTERS_PER_SM
    assert compiled.metadata.shared <= SHARED_PER_BLOCK, f"{compiled.metadata.shared} bytes of shared memory"


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_batch_owned_streams_w_hh_each_step_without_spills(backward):
    """Where the rule runs batch-owned (many batch tiles, a small W_hh), and the positive control of the loop
    check: this kernel does read W_hh inside the time loop."""
    cfg, _, compiled, args = _compiled(4096, 64, 0, 1, torch.bfloat16, backward, "batch")
    from tritonlstm.kernels import config as C

    assert C.choose(4096, 64, 0, 1, torch.bfloat16, SMS, backward).regime == "batch"
    assert "w_ptr" in _global_loads_in_time_loop(compiled.asm["ttgir"], args)
    ptx = compiled.asm["ptx"]
    assert "mma.sync" in ptx or "wgmma" in ptx
    regs, stack = _resources(compiled)
    assert stack == 0, f"{stack} bytes of register spills per thread ({regs} registers)"


# (H, P, dtype, backward, regime): what the GPU first saw fail to compile under Triton 3.6 (a retyped variable in
# the batch-owned backward with a projection; a 4-row dot operand at H=1), and the configs of the first-use self-test
COMPILE_CASES = [
    pytest.param(
        H, P, dtype, backward, regime, id=f"{regime}-{'bwd' if backward else 'fwd'}-H{H}-P{P}-{_STORAGE[dtype]}"
    )
    for regime in ("split", "batch")
    for backward in (False, True)
    for dtype in (torch.float16, torch.float32)
    for H, P in ((40, 0), (40, 16))
] + [
    pytest.param(1, 0, torch.float16, True, "split", id="split-bwd-H1-P0-fp16"),
    pytest.param(40, 0, torch.float16, True, "split-chunked", id="split-chunked-bwd-H40-P0-fp16"),
    pytest.param(40, 0, torch.float32, True, "split-chunked", id="split-chunked-bwd-H40-P0-fp32"),
]


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "regularised"])
@pytest.mark.parametrize("H, P, dtype, backward, regime", COMPILE_CASES)
def test_every_regime_compiles(H, P, dtype, backward, regime, masked):
    """Each regime, direction and dtype compiles for sm_90 with the self-test's tiles (and the tiniest H), with and
    without the regularisers (recurrent dropout; training zoneout too where there is no projection)."""
    from tritonlstm.kernels import config as C

    cfg = C.self_test_config(torch.device("cuda"), dtype, regime, H, P, backward)
    cfg.setdefault("num_warps", 4)
    zoneout = 2 if masked and not P else 0
    config = tuple(sorted(cfg.items()))
    _, _, compiled, _ = _compiled(3, H, P, 2, dtype, backward, cfg["regime"], config, masked, zoneout)
    assert compiled.asm["ptx"]
