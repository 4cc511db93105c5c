"""Compile-only structure of the sequence kernels for sm_90 (H100/H200), no GPU needed.

Each case launches a layer through its launcher under the fake sm_90 driver (``tritonlstm.kernels.fake_driver``,
132 SMs) with the tiles :func:`tritonlstm.kernels.config.sequence_config` picks, so the kernel compiles exactly as
it would launch on a GPU (the same specialisation: constexprs, alignment and value hints), then asserts on what
came out:

* unit-split: the time loop loads none of W_hh (or W_hr) from global memory (the loop body's loads, traced in
  the TTGIR back to the kernel's pointer arguments); the batch-owned kernel, which streams W_hh every step, is
  the positive control that the tracer does find such loads;
* the unit-split forward exchanges tagged words: no atomic, acquire/release access or fence in its PTX, and
  h_{t-1} is polled from the words with volatile loads, never read from y; its fallback and the backward meet at
  the counter barrier (the positive control of that check);
* bf16/fp16 recurrent dots run on tensor cores (``mma.sync``/``wgmma`` in the PTX);
* no register spills (the cubin's stack frame is 0 bytes), H <= 1024, B <= 64;
* the unit-split grid is co-resident on 132 SMs: at most one program per SM, and one program's registers and
  shared memory fit an SM (65536 registers, 227 KB of shared memory).

Written against what Triton 3.6 and 3.9 share (the driver interface the fake driver stands in for, and
``CompiledKernel.asm``/``.src``), and kept to a few compiles.
"""

from __future__ import annotations

import re
from functools import lru_cache

import pytest
import torch

from tests.helpers import INTERPRETER

pytestmark = pytest.mark.skipif(
    INTERPRETER, reason="TRITON_INTERPRET=1 replaces triton.jit with the interpreter: nothing to compile"
)

SMS = 132
REGISTERS_PER_SM = 65536
SHARED_PER_BLOCK = 227 * 1024
_STORAGE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@lru_cache(maxsize=None)
def _launched(
    B: int, H: int, P: int, D: int, dtype: torch.dtype, backward: bool, masked: bool = False, zoneout: int = 0,
    config=None,
):
    """Launch one layer's forward (or backward) through its launcher under the fake sm_90 driver (132 SMs), so
    the kernel compiles with the launch's own specialisation (alignment and value hints, constexprs), as on a GPU.
    ``config``: a tuple of config items instead of the rule's. Returns (config, grid size, asm, Variant, names of
    the kernel's runtime arguments)."""
    from tritonlstm.kernels import config as C
    from tritonlstm.kernels import sequence_bwd, sequence_fwd
    from tritonlstm.kernels.common import GradOutputs, Layer, Needs, Regularisers, Saved
    from tritonlstm.kernels.fake_driver import fake_cuda_driver

    cfg = dict(config) if config is not None else C.sequence_config(B, H, P, D, dtype, SMS, backward)
    T, I, R = 3, 16, P or H
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    layer = Layer(r(T, B, I), r(D, B, R), r(D, B, H), r(D, 4 * H, I), r(D, 4 * H, R), r(D, 4 * H), r(D, 4 * H),
                  r(D, P, H) if P else None, torch.full((B,), T), (False, True)[:D])  # fmt: skip
    h_mask = (torch.rand(D, B, R, generator=g) > 0.5).to(dtype) * 2 if masked else None
    regs = Regularisers(h_mask, (0.1, 0.2) if zoneout else (0.0, 0.0), torch.tensor([5]) if zoneout == 2 else None)
    kernel = (sequence_bwd if backward else sequence_fwd).KERNELS[cfg["regime"]]
    with fake_cuda_driver(90, SMS) as drv:
        y, h_n, c_n, gates, cs = sequence_fwd.forward(layer, regs, True, None if backward else cfg)
        if backward:
            drv.launches.clear()
            sequence_bwd.backward(layer, regs, Saved(y, gates, cs), GradOutputs(y, h_n, c_n), Needs(), cfg)
    (launch,) = [x for x in drv.launches if x.kernel == kernel.__name__]
    (variant,) = [v for v in drv.variants() if v.hash == launch.variant]
    compiled = next(
        k for caches in kernel.device_caches.values() for k in caches[0].values() if k.hash == variant.hash
    )
    grid = launch.grid[0] * launch.grid[1] * launch.grid[2]
    # the runtime arguments, in order: the specialisation made the others constants
    names = [n for n, kind in compiled.src.signature.items() if kind != "constexpr"]
    return cfg, grid, compiled.asm, variant, names


_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?\s*=\s*(.*)$")
_USE = re.compile(r"%[\w.$-]+")
_LOADS = ("tt.load ", "ttg.async_copy_global_to_local ", "tt.descriptor_load ", "ttng.async_tma_copy_global_to_local ")


def _time_loop(ttgir: str) -> tuple[int, list[str]]:
    """The time loop of a kernel's TTGIR (the first scf.for at the shallowest nesting depth): its first line's index
    and its lines."""
    lines = ttgir.splitlines()
    func = next(i for i, line in enumerate(lines) if "tt.func public" in line)
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
    return start, body


def _chain_conversions(loop: list[str]) -> list[str]:
    """The layout conversions on a forward step's critical path: between its last recurrent dot (``tt.dot`` or
    wgmma) and the release that publishes h_t (the barrier's arrive, the tile regime's flag). The stores that
    no program reads in the loop (c_t, the gates, the final states) come after the release, off the path."""
    dots = [i for i, line in enumerate(loop) if "tt.dot " in line or "ttng.warp_group_dot " in line]
    release = next(i for i, line in enumerate(loop) if re.search(r"tt\.atomic_rmw \w+, release", line))
    assert dots and dots[-1] < release, "no dot before the release"
    return [line.strip() for line in loop[dots[-1] : release] if "ttg.convert_layout" in line]


def _global_loads_in_time_loop(
    ttgir: str, arg_names: list[str], before: bool = False, where: dict | None = None
) -> list[str]:
    """Kernel pointer arguments that loads inside the time loop (the outermost scf.for) read from, in the order of
    their first load; ``before``: the loads ahead of the loop instead. ``where`` (a dict) receives each argument's
    loads' line numbers in the loop body (indices into :func:`_time_loop`'s lines)."""
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
    start, body = _time_loop(ttgir)

    def roots(name: str, seen: set) -> set:
        if name in seen:
            return set()
        seen.add(name)
        if name in arg_of:
            return {arg_of[name]}
        return set().union(*(roots(u, seen) for u in defs.get(name, [])))

    found: list[str] = []
    for i, line in enumerate(lines[func + 1 : start] if before else body[1:], 1):
        for op in _LOADS:
            if op in line:
                ptr = _USE.findall(line.split(op, 1)[1])[0].split("#")[0]
                names = roots(ptr, set())
                found += sorted(names - set(found))
                if where is not None and not before:
                    for name in names:
                        where.setdefault(name, []).append(i)
    return found


# (B, H, P, D, dtype, backward, masked, zoneout, tagged): the unit-split shapes of the latency regime, as the rule
# tiles them; masked: with recurrent dropout, zoneout: 2 = training masks (no spills from either); tagged: in the
# tagged form (config.tagged_form), which the rule does not pick but which stays built and self-tested
SPLIT_CASES = [
    pytest.param(16, 1024, 0, 1, torch.bfloat16, False, False, 0, False, id="fwd-B16-H1024-bf16"),
    pytest.param(16, 1024, 0, 1, torch.bfloat16, False, True, 2, False, id="fwd-B16-H1024-bf16-rdrop-zoneout"),
    pytest.param(16, 1024, 0, 1, torch.bfloat16, False, True, 2, True, id="fwd-B16-H1024-bf16-rdrop-zoneout-tagged"),
    pytest.param(64, 256, 0, 1, torch.float16, False, False, 0, False, id="fwd-B64-H256-fp16"),
    pytest.param(16, 768, 0, 1, torch.float16, False, False, 0, False, id="fwd-B16-H768-fp16-two-k-blocks"),
    pytest.param(16, 768, 0, 1, torch.float16, False, False, 0, True, id="fwd-B16-H768-fp16-two-k-blocks-tagged"),
    # float32 (exact dots on FMA units, no MMA): split over the warps, the forward holds no spills either
    pytest.param(16, 512, 0, 1, torch.float32, False, False, 0, False, id="fwd-B16-H512-fp32"),
    pytest.param(16, 256, 0, 1, torch.float32, False, True, 2, False, id="fwd-B16-H256-fp32-rdrop-zoneout"),
    pytest.param(16, 256, 0, 1, torch.float32, True, True, 2, False, id="bwd-B16-H256-fp32-rdrop-zoneout"),
    pytest.param(16, 512, 0, 1, torch.bfloat16, True, False, 0, False, id="bwd-B16-H512-bf16"),
    pytest.param(16, 512, 0, 1, torch.bfloat16, True, True, 2, False, id="bwd-B16-H512-bf16-rdrop-zoneout"),
    pytest.param(16, 512, 0, 1, torch.bfloat16, True, True, 2, True, id="bwd-B16-H512-bf16-rdrop-zoneout-tagged"),
    # beyond H=512 the backward holds W_hh in chunks of gate rows and splits each chunk's dot over the warps
    pytest.param(16, 1024, 0, 2, torch.bfloat16, True, False, 0, False, id="bwd-B16-H1024-D2-bf16-chunked"),
    pytest.param(16, 768, 0, 1, torch.float16, True, True, 2, False, id="bwd-B16-H768-fp16-chunked-rdrop-zoneout"),
    pytest.param(16, 256, 128, 1, torch.bfloat16, False, False, 0, False, id="fwd-proj-B16-H256-P128-bf16"),
    pytest.param(16, 256, 128, 1, torch.bfloat16, False, False, 0, True, id="fwd-proj-B16-H256-P128-bf16-tagged"),
    pytest.param(16, 256, 128, 1, torch.bfloat16, True, False, 0, False, id="bwd-proj-B16-H256-P128-bf16"),
]


def _forward_mma_work(cfg: dict, H: int, P: int) -> int:
    """m16n8k16 MMAs one warp of the unit-split forward must issue per step when no two warps compute the same
    output and the inner dimensions are padded to the granule (16) only: its program's recurrent dot
    ([BLOCK_B, R] @ [R, 4 * BLOCK_H]) and projection ([BLOCK_B, H] @ [H, BLOCK_P]), shared by its warps."""
    rows, granule = cfg["BLOCK_B"] // 16, lambda n: -(-n // 16)
    tiles = rows * (4 * cfg["BLOCK_H"] // 8) * granule(P or H)
    if P:
        tiles += rows * (cfg["BLOCK_P"] // 8) * granule(H)
    assert tiles % cfg["num_warps"] == 0, (cfg, tiles)
    return tiles // cfg["num_warps"]


def _backward_mma_work(cfg: dict, H: int) -> int:
    """As :func:`_forward_mma_work` for the unit-split backward without a projection: its recurrent dot
    ([BLOCK_B, 4H] @ [4H, BLOCK_H], in chunks of gate rows)."""
    tiles = cfg["BLOCK_B"] // 16 * (cfg["BLOCK_H"] // 8) * -(-4 * H // 16)
    assert tiles % cfg["num_warps"] == 0, (cfg, tiles)
    return tiles // cfg["num_warps"]


def _mmas(ptx: str) -> int:
    """``mma.m16n8k16`` instructions in the PTX: one warp's per step, the time loop's body being emitted once."""
    return len(re.findall(r"\bmma\.sync\.aligned\.m16n8k16\b", ptx))


def _assert_fits_an_sm(variant, grid: int, cfg: dict) -> None:
    """No register spills, and the grid co-resident on 132 SMs: one program per SM at most, one program's
    registers and shared memory within an SM."""
    assert variant.n_spills == 0, f"{variant.n_spills} bytes of register spills per thread ({variant.n_regs} registers)"
    assert grid <= SMS, f"grid {grid} > {SMS} SMs"
    assert variant.n_regs * 32 * cfg["num_warps"] <= REGISTERS_PER_SM
    assert variant.shared <= SHARED_PER_BLOCK, f"{variant.shared} bytes of shared memory"


_SYNC = re.compile(r"\batom\.|\bred\.global|\.(acquire|release)\b|\bfence\.|\bmembar\.")
"""PTX of cross-program synchronisation: atomics, acquire/release accesses, fences."""


@pytest.mark.parametrize("B, H, P, D, dtype, backward, masked, zoneout, tagged", SPLIT_CASES)
def test_unit_split_structure(B, H, P, D, dtype, backward, masked, zoneout, tagged):
    from tritonlstm.kernels import config as C

    rule = C.sequence_config(B, H, P, D, dtype, SMS, backward)
    # the rule: the counter barrier, the backward's dot split one way per warp (float32's forward's too), the
    # 16-bit forward's one plain dot (each measured faster than the alternative on an H200, benchmarks/NOTES.md)
    assert rule["regime"] == "split" and "TAGGED" not in rule, rule
    split = backward or dtype == torch.float32
    assert rule.get("K_SPLIT", 1) == (rule["num_warps"] if split else 1), rule
    form = C.tagged_form(rule, P, dtype, backward) if tagged else None
    assert not tagged or form["TAGGED"], "a tagged case must have a tagged form"
    cfg, grid, asm, variant, args = _launched(B, H, P, D, dtype, backward, masked, zoneout,
                                              tuple(form.items()) if tagged else None)  # fmt: skip
    # the weights stay on chip: nothing in the time loop reads them from global memory
    where: dict = {}
    loads = _global_loads_in_time_loop(asm["ttgir"], args, where=where)
    assert "w_ptr" not in loads and "wr_ptr" not in loads, f"time loop loads {sorted(loads)}"
    if backward:
        exchanged = "dgw_ptr" if tagged else "dg_ptr"
    else:
        exchanged = "xh_ptr" if tagged or masked else "y_ptr"  # h_{t-1} (times the mask) from its exchange
    assert exchanged in loads, "the tracer must see the exchanged rows loaded each step"
    assert "hm_ptr" not in loads, "the recurrent dropout mask is loaded once, before the time loop"
    ptx = asm["ptx"]
    if tagged:  # volatile loads of the words, no counter, no fence, no atomic
        assert not _SYNC.search(ptx), f"synchronisation in a tagged kernel: {_SYNC.search(ptx).group(0)}"
        assert "ld.volatile.global" in ptx, "the words are polled with volatile loads"
    else:  # the barrier: a release arrive and acquire polls (the positive control of the check above)
        assert _SYNC.search(ptx), "the barrier must show in the PTX"
    if backward:
        # a step's own inputs are loaded before the previous step's wait: the first step's ahead of the loop
        ahead = _global_loads_in_time_loop(asm["ttgir"], args, before=True)
        assert {"gates_ptr", "cs_ptr"} <= set(ahead) and "dg_ptr" not in ahead, ahead
        assert not tagged or "dg_ptr" not in loads, "dG_{t+1} comes from the words, not from dg"
    else:
        assert not tagged or "y_ptr" not in loads, "h_{t-1} comes from the words, not from y"
        # the gate projections a step ahead: step 0's before the loop, the next step's after this step's h_{t-1}
        # and before the wait that ends the step (the barrier's first acquire poll; tagged: the next step's load)
        assert "gx_ptr" in _global_loads_in_time_loop(asm["ttgir"], args, before=True)
        _, loop = _time_loop(asm["ttgir"])
        gx, = where["gx_ptr"]  # fmt: skip
        assert min(where[exchanged]) < gx, f"the gate projections are loaded before h_{{t-1}}: {where}"
        polls = [i for i, line in enumerate(loop) if re.search(r"tt\.atomic_rmw add, acquire", line)]
        assert tagged or P or gx < min(polls), "the gate projections are loaded after the wait"
    if dtype == torch.float32:
        assert "mma.sync" not in ptx, "float32 is exact: no TF32 MMA"
    else:
        assert "mma.sync" in ptx or "wgmma" in ptx, "bf16/fp16 dots must use tensor-core MMA"
    if dtype != torch.float32 and not (backward and P):  # (the backward's projection dot is not split)
        work = _backward_mma_work(cfg, H) if backward else _forward_mma_work(cfg, H, P)
        mmas = _mmas(ptx)
        if cfg.get("K_SPLIT", 1) > 1:  # split one way per warp: no two warps on the same outputs
            assert mmas == work, f"{mmas} MMAs per warp and step, the unreplicated unpadded work is {work}"
        elif not P:  # a plain dot: the warps beyond its MMA tiles repeat them; K padded to the granule only
            tiles = cfg["BLOCK_B"] // 16 * (4 * cfg["BLOCK_H"] // 8)
            assert mmas == work * max(1, cfg["num_warps"] // tiles), f"{mmas} MMAs per warp and step, share {work}"
        else:  # the projection's second dot has tiles of its own
            assert work <= mmas <= cfg["num_warps"] * work, (mmas, work)
    _assert_fits_an_sm(variant, grid, cfg)


@pytest.mark.parametrize("change", [{"num_warps": 4}, {"BLOCK_H": 16}], ids=["4-warps", "16-units"])
def test_plain_forward_variants_without_replicated_mmas(change):
    """The two plain forward configs the next GPU session times (benchmarks/NOTES.md; ``benchmarks.variants`` w4 and
    rule-wide): one MMA column tile a warp, so the MMAs per warp are the unreplicated share with no split, and the
    build fits an SM without spills (the rule's own 8-unit, 8-warp dot puts two warps on each tile: SPLIT_CASES)."""
    from tritonlstm.kernels import config as C

    rule = C.sequence_config(16, 1024, 0, 1, torch.float16, SMS, False)
    cfg = {**rule, **change}
    _, grid, asm, variant, _ = _launched(16, 1024, 0, 1, torch.float16, False, config=tuple(cfg.items()))
    mmas = _mmas(asm["ptx"])
    assert "K_SPLIT" not in cfg and mmas == _forward_mma_work(cfg, 1024, 0), (mmas, cfg)
    _assert_fits_an_sm(variant, grid, cfg)


@pytest.mark.parametrize(
    "H, masked, zoneout", [(256, False, 0), (1024, False, 0), (768, True, 2)], ids=["H256", "H1024", "H768-reg"]
)
def test_paired_forward_takes_its_gates_apart_without_conversions(H, masked, zoneout):
    """The permuted resident columns (kernels/jit.py: permuted_gates) with one warp per 4 units (the ``wide-w4``
    variant: 16 units, 4 warps): each warp holds both halves of its units' gate columns, so the gates come apart in
    registers. On the step's critical path, from the last recurrent dot to the release that publishes h_t, the one
    layout conversion is h_t's for its store; the step's other stores follow the release. The rule's 8 warps on 8
    units split each unit's gates over two warps' tiles: more conversions there (the positive control)."""
    from tritonlstm.kernels import config as C

    rule = C.sequence_config(16, H, 0, 1, torch.float16, SMS, False)
    paired = {**rule, "BLOCK_H": 16, "num_warps": 4}
    _, grid, asm, variant, _ = _launched(16, H, 0, 1, torch.float16, False, masked, zoneout, tuple(paired.items()))
    chain = _chain_conversions(_time_loop(asm["ttgir"])[1])
    assert len(chain) <= 1, chain
    assert _mmas(asm["ptx"]) == _forward_mma_work(paired, H, 0)
    _assert_fits_an_sm(variant, grid, paired)
    if not masked:
        _, _, asm, _, _ = _launched(16, H, 0, 1, torch.float16, False)
        assert len(_chain_conversions(_time_loop(asm["ttgir"])[1])) > 1


@pytest.mark.parametrize("H, masked", [(512, False), (1024, True)], ids=["H512", "H1024-chunked-reg"])
def test_flags_backward_meets_without_the_counter(H, masked):
    """The split backward in config.flags_form (a candidate): a program releases its own flag (an exchange) and
    acquires everyone's before it reads dG_{t+1}; no release-add on a counter. Its next step's inputs are loaded
    after its release (so before the next wait), its dot keeps the rule's unreplicated split, and it builds without
    spills on an SM per program, with recurrent dropout and zoneout too."""
    from tritonlstm.kernels import config as C

    rule = C.sequence_config(16, H, 0, 1, torch.bfloat16, SMS, True)
    cfg = C.flags_form(rule, 0, True)
    assert cfg["FLAGS"] and "FLAGS" not in rule
    _, grid, asm, variant, args = _launched(16, H, 0, 1, torch.bfloat16, True, masked, 2 if masked else 0,
                                            tuple(cfg.items()))  # fmt: skip
    atomics = re.findall(r"tt\.atomic_rmw (\w+), (\w+)", asm["ttgir"])
    assert ("exch", "release") in atomics and ("add", "acquire") in atomics and ("add", "release") not in atomics
    where: dict = {}
    _global_loads_in_time_loop(asm["ttgir"], args, where=where)
    _, loop = _time_loop(asm["ttgir"])
    release = next(i for i, line in enumerate(loop) if "tt.atomic_rmw exch, release" in line)
    assert min(where["gates_ptr"]) > release and min(where["cs_ptr"]) > release, where
    assert _mmas(asm["ptx"]) == _backward_mma_work(cfg, H)
    _assert_fits_an_sm(variant, grid, cfg)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_split32_form_builds_unreplicated_and_spill_free(backward):
    """The candidate for B=64 with H >= 768 (config.split32_form, timed by benchmarks.variants): 32-row batch tiles of
    16 units, where the rule runs the tile regime. W_hh stays on chip, one MMA tile a warp, no
    spills, an SM per program."""
    from tritonlstm.kernels import config as C

    assert C.choose(64, 1024, 0, 1, torch.float16, SMS, backward).regime == "tile", "not the rule's: a candidate"
    cfg = C.split32_form(64, 1024, 0, 1, torch.float16, SMS, backward)
    _, grid, asm, variant, args = _launched(64, 1024, 0, 1, torch.float16, backward, config=tuple(cfg.items()))
    loads = _global_loads_in_time_loop(asm["ttgir"], args)
    assert "w_ptr" not in loads and ("dg_ptr" if backward else "y_ptr") in loads, loads
    mmas = _mmas(asm["ptx"])
    work = _backward_mma_work(cfg, 1024) if backward else _forward_mma_work(cfg, 1024, 0)
    assert mmas == work, f"{mmas} MMAs per warp and step, share {work}"
    _assert_fits_an_sm(variant, grid, cfg)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_tagged_form_falls_back_to_the_barrier(backward, tagged_rule):
    """With the tagged exchange switched on, the rule's tagged kernels fall back to the same kernel without TAGGED or
    K_SPLIT, which synchronises through the counter and runs plain dots: the positive control of the PTX and MMA
    checks above, which would see both."""
    from tritonlstm.kernels import config as C

    choice = C.choose(16, 256, 0, 1, torch.bfloat16, SMS, backward)
    assert choice.config["TAGGED"] and choice.fallback.config == C.barrier_form(choice.config)
    assert "TAGGED" not in choice.fallback.config and "K_SPLIT" not in choice.fallback.config
    fallback = tuple(choice.fallback.config.items())
    _, _, asm, variant, args = _launched(16, 256, 0, 1, torch.bfloat16, backward, config=fallback)
    assert _SYNC.search(asm["ptx"]) and "ld.volatile.global" not in asm["ptx"]
    # a plain 16-row dot puts several warps on the same rows
    mmas = _mmas(asm["ptx"])
    plain = choice.fallback.config
    work = _backward_mma_work(plain, 256) if backward else _forward_mma_work(plain, 256, 0)
    assert mmas > work, (mmas, work)
    exchanged = "dg_ptr" if backward else "y_ptr"  # read after the barrier
    assert exchanged in _global_loads_in_time_loop(asm["ttgir"], args)
    assert variant.n_spills == 0


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_batch_owned_streams_w_hh_each_step_without_spills(backward):
    """Where the rule runs batch-owned (many batch tiles, a small W_hh), and the positive control of the loop
    check: this kernel does read W_hh inside the time loop."""
    cfg, _, asm, variant, args = _launched(4096, 64, 0, 1, torch.bfloat16, backward)
    from tritonlstm.kernels import config as C

    assert cfg["regime"] == "batch" and C.choose(4096, 64, 0, 1, torch.bfloat16, SMS, backward).regime == "batch"
    assert "w_ptr" in _global_loads_in_time_loop(asm["ttgir"], args)
    ptx = asm["ptx"]
    assert "mma.sync" in ptx or "wgmma" in ptx
    assert variant.n_spills == 0, f"{variant.n_spills} bytes of register spills per thread ({variant.n_regs} registers)"


# (H, P, dtype, backward, regime): what the GPU first saw fail to compile under Triton 3.6 (a retyped variable in
# the batch-owned backward with a projection; a 4-row dot operand at H=1), and the configs of the first-use self-test
COMPILE_CASES = [
    pytest.param(
        H, P, dtype, backward, regime, id=f"{regime}-{'bwd' if backward else 'fwd'}-H{H}-P{P}-{_STORAGE[dtype]}"
    )
    for regime in ("split", "split-tagged", "batch")
    for backward in (False, True)
    if not (regime == "split-tagged" and backward)  # the tagged exchange is the forward's
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
    _, _, asm, _, _ = _launched(3, H, P, 2, dtype, backward, masked, zoneout, config)
    assert asm["ptx"]
