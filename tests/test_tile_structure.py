"""Compile-only structure of the tile regime (the large-batch kernels) for sm_90, no GPU needed.

Each case launches a layer through its launcher under the fake sm_90 driver (132 SMs) with the tiles the rule
picks, so the kernel compiles as it would launch (tests/test_sequence_structure.py's ``_launched``), then asserts:

* the forward's time loop loads none of W_hh from global memory, and its dots take W_hh^T's chunks as wgmma
  operands in shared memory, allocated once before the loop (no ``local_load`` of them: no re-read through
  registers); the backward streams W_hh (its loads are in the loop: the rule's choice, fewer bytes);
* every MMA is a wgmma (M = 64 a warpgroup) with no replicated rows or columns: the layout's warps cover at most the
  tile, and the forward's wgmma work per step is exactly BLOCK_B x 4 units x R, R a multiple of 16 (no padding
  beyond the granule);
* the forward's gates come apart without a layout conversion: between its last dot and the release of its flag
  the one conversion is h_t's, for its store (with zoneout, also h_{t-1}'s own units, read back);
* no register spills, one program per SM (grid <= 132, registers and shared memory within an SM);
* the programs meet through flags (acquire/release atomics), never the group's counter barrier.

CI runs it under today's Triton (the README's test command) and under Triton 3.6, the GPU image's
(.ci/triton36.sh).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import triton

from tests.helpers import INTERPRETER
from tests.test_sequence_structure import (
    SMS,
    _STORAGE,
    _assert_fits_an_sm,
    _chain_conversions,
    _global_loads_in_time_loop,
    _launched,
    _time_loop,
)

pytestmark = pytest.mark.skipif(
    INTERPRETER, reason="TRITON_INTERPRET=1 replaces triton.jit with the interpreter: nothing to compile"
)

TRITON36 = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7)

# (B, H, D, dtype, backward, masked, zoneout): the benchmark grid's large-batch shapes, and the regularisers (a
# bidirectional layer is the same kernel on a grid twice as tall: tests/test_tile.py checks its rule)
TILE_CASES = [
    pytest.param(B, H, D, dtype, backward, masked, zoneout,
                 id=f"{'bwd' if backward else 'fwd'}-B{B}-H{H}-D{D}-{_STORAGE[dtype]}{'-reg' if masked else ''}")
    for backward in (False, True)
    for B, H, D, dtype, masked, zoneout in (
        (64, 768, 1, torch.float16, False, 0),
        (64, 1024, 1, torch.bfloat16, False, 0),
        (256, 768, 1, torch.bfloat16, False, 0),
        (256, 1024, 1, torch.float16, False, 0),
        (256, 1024, 1, torch.float16, True, 2),
    )
]  # fmt: skip

_MMA = re.compile(r"#mma\d* = #ttg\.nvidia_mma<\{versionMajor = 3, versionMinor = \d+, warpsPerCTA = \[(\d+), (\d+)\], "
                  r"instrShape = \[16, (\d+), \d+\]")  # fmt: skip
_WGMMA = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k(\d+)\.")


@pytest.mark.parametrize("B, H, D, dtype, backward, masked, zoneout", TILE_CASES)
def test_tile_structure(B, H, D, dtype, backward, masked, zoneout):
    from tritonlstm.kernels import config as C

    cfg = C.sequence_config(B, H, 0, D, dtype, SMS, backward)
    assert cfg["regime"] == "tile", cfg
    cfg, grid, asm, variant, args = _launched(B, H, 0, D, dtype, backward, masked, zoneout)
    ttgir, ptx = asm["ttgir"], asm["ptx"]
    start, loop = _time_loop(ttgir)
    loads = _global_loads_in_time_loop(ttgir, args)
    units, rows = cfg["BLOCK_H"], cfg["BLOCK_B"]
    if backward:
        assert "w_ptr" in loads and "dg_ptr" in loads, loads  # W_hh and dG_{t+1} streamed
    else:
        assert "w_ptr" not in loads and ("xh_ptr" if masked else "y_ptr") in loads, loads  # h_{t-1}
        # W_hh^T's chunks: shared-memory allocations before the loop, wgmma's B operands in place
        dots = [line for line in loop if "ttng.warp_group_dot " in line]
        assert dots and not any("ttg.local_load" in line for line in loop), "the resident slice is re-read"
        allocated = {m.group(1) for line in ttgir.splitlines()[:start]
                     for m in [re.match(r"\s*(%[\w.]+) = ttg\.local_alloc", line)] if m}  # fmt: skip
        operands = [re.search(r"warp_group_dot %[\w.#]+, (%[\w.]+)", line).group(1) for line in dots]
        assert all(op in allocated for op in operands), "a dot's W_hh^T chunk is not the resident allocation"
    # wgmma only (64 rows a warpgroup), no warp on another's rows or columns
    assert "mma.sync" not in ptx and _WGMMA.search(ptx), "the recurrent dots must be wgmma"
    (wm, wn, n), = {m.groups() for m in _MMA.finditer(ttgir)}
    columns = (units if not backward else (16 if units > 16 else units)) * (1 if backward else 4)
    assert int(wm) * 16 <= rows and int(wn) * int(n) <= columns, (wm, wn, n, cfg)
    if not backward:  # the forward's work per step: BLOCK_B x 4 units x R, R covered with no padding
        warpgroups = cfg["num_warps"] // 4
        body = "\n".join(loop)
        work = warpgroups * sum(64 * int(n) * int(k) for n, k in _WGMMA.findall(ptx))
        assert H % 16 == 0 and work == rows * 4 * units * H, (work, rows * 4 * units * H)
        assert body.count("ttng.warp_group_dot ") == triton.cdiv(H, cfg["K_CHUNK"])
        # the permuted resident columns: the gates come apart in registers, and the one layout conversion between
        # the last dot and the flag's release is h_t's for its store (the others' stores follow the release); with
        # zoneout, h_{t-1} of the program's units is read back after the dot and converted too (carried in
        # registers instead, it spills Triton 3.6's build)
        chain = _chain_conversions(loop)
        assert len(chain) <= (2 if zoneout else 1), chain
    # flags, not the counter: a program releases its own flag (an exchange) and acquires the others' (adds of 0);
    # the barrier's release-add on the group's counter is absent
    atomics = re.findall(r"tt\.atomic_rmw (\w+), (\w+)", ttgir)
    assert ("exch", "release") in atomics and ("add", "acquire") in atomics and ("add", "release") not in atomics
    if TRITON36 and not backward and rows == 64 and H == 1024:
        # Triton 3.6's forward of 64-row tiles at H=1024 spills 8 bytes a thread with the 128-row chunks
        # (config.TILE_K_CHUNK), which halve its flag waits against 64-row chunks (spill-free): benchmarks/NOTES.md
        assert variant.n_spills <= 16, variant.n_spills
        variant = dataclasses.replace(variant, n_spills=0)
    _assert_fits_an_sm(variant, grid, cfg)


@pytest.mark.parametrize("dtype, masked", [(torch.float16, False), (torch.bfloat16, True)], ids=["fp16", "bf16-reg"])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_tile_self_test_configs_compile(backward, dtype, masked):
    """The first-use self-test's GPU configs (3 unit slices and a partial chunk forward, 2 slices of 2 epilogue
    tiles backward, at H=40) build for sm_90, with and without the regularisers (a correctness check: its tiny
    chunks may spill, which costs only its own time)."""
    from tritonlstm.kernels import config as C

    cfg = C.self_test_config(torch.device("cuda"), dtype, "tile", 40, 0, backward)
    _, grid, asm, variant, _ = _launched(3, 40, 0, 2, dtype, backward, masked, 2 if masked else 0,
                                         tuple(sorted(cfg.items())))  # fmt: skip
    assert _WGMMA.search(asm["ptx"]) and grid == 2 * (3 if not backward else 2)
