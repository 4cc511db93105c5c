"""The tile regime (issue 19's large-batch regime, kernels/config.py: tile_config), without a GPU.

In Triton's interpreter, against the per-step kernels (kernels/step.py, themselves tested against nn.LSTM): fp32
and fp16, lengths, both directions, several batch tiles, a partial last chunk of R, one and two epilogue tiles a
backward program, recurrent dropout, zoneout in eval and training. With the chunks of the per-step kernels' K
blocks the forward and dG_t are theirs bit for bit. The interpreter runs the programs of a grid one after
another, so a group here has one unit program (its flag code still runs, waiting on its own flag); a group of
two can only wait forever, which forces the time-out. Everywhere: the rule, the bytes it moves per step against
the per-step kernels and the resident backward it does not use, and a model of the flag protocol's slot reuse.
"""

from __future__ import annotations

import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import INTERPRETER, assert_close, requires_interpreter
from tritonlstm.kernels import config as C
from tritonlstm.kernels.common import GradOutputs, Layer, Needs, Regularisers, Saved

GRADS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db")


def _problem(dtype, T=5, B=20, I=7, H=24, D=2, lengths=True, masked=False, zoneout=0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).to(dtype)

    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    layer = Layer(r(T, B, I), r(D, B, H), r(D, B, H), r(D, 4 * H, I), r(D, 4 * H, H), r(D, 4 * H), r(D, 4 * H), None,
                  lens, (False, True)[:D])  # fmt: skip
    mask = (torch.rand(D, B, H, generator=g) > 0.3).to(dtype) / 0.7 if masked else None
    regs = Regularisers(mask, (0.25, 0.4) if zoneout else (0.0, 0.0), torch.tensor([97]) if zoneout == 2 else None)
    upstream = GradOutputs(r(T, B, D * H), r(D, B, H), r(D, B, H))
    return layer, regs, upstream


def _tile(H, K_CHUNK=16, BLOCK_B=16, units=None, **extra):
    """A tile config with one unit program per group (the interpreter's constraint)."""
    units = units or max(16, triton.next_power_of_2(H))
    return {"regime": "tile", "BLOCK_B": BLOCK_B, "BLOCK_H": units, "K_CHUNK": K_CHUNK, "num_warps": 4, **extra}


def _both(layer, regs, upstream, fcfg, bcfg, err=None):
    """(tile results, per-step results): y, h_n, c_n, gates, cs, then the gradients."""
    from tritonlstm.kernels import sequence_bwd, sequence_fwd, step

    y, h_n, c_n, gates, cs = sequence_fwd.forward(layer, regs, True, fcfg, err)
    grads = sequence_bwd.backward(layer, regs, Saved(y, gates, cs), upstream, Needs(), bcfg, err)
    wy, wh, wc, wgates, wcs = step.forward(layer, regs, True)
    want = step.backward(layer, regs, Saved(wy, wgates, wcs), upstream, Needs())
    return [y, h_n, c_n, gates, cs, *grads[:6]], [wy, wh, wc, wgates, wcs, *want[:6]]


NAMES = ("y", "h_n", "c_n", "gates", "cs", *GRADS)


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(dict(), id="lengths-bi"),
        pytest.param(dict(lengths=False, D=1, B=5), id="full-uni-one-tile"),
        pytest.param(dict(H=40), id="partial-chunk"),  # R = 40: chunks of 16, 16 and 8 (masked)
        pytest.param(dict(zoneout=1, D=1), id="zoneout-eval"),  # (recurrent dropout, training zoneout: bitwise below)
    ],
)
def test_tile_regime_matches_the_step_kernels(case, dtype):
    """Forward and backward of the tile kernels (several batch tiles of 16 rows; the backward with two epilogue tiles
    of 16 units a program, the rule's form at B=256) agree with the per-step kernels, and the error flag stays
    clear."""
    layer, regs, upstream = _problem(dtype, **case)
    H = layer.w_hh.shape[2]
    err = torch.zeros(1, dtype=torch.int32)
    got, want = _both(layer, regs, upstream, _tile(H), _tile(H, units=2 * max(16, triton.next_power_of_2(H) // 2)),
                      err)  # fmt: skip
    assert int(err.item()) == 0
    for name, a, e in zip(NAMES, got, want):
        if e is not None:
            assert_close(a, e, dtype, f"tile {name}")


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "dropout-zoneout"])
def test_tile_with_the_step_kernels_blocks_is_them_bit_for_bit(dtype, masked):
    """With chunks of the per-step kernels' K blocks (BLOCK_K) the tile forward sums h_{t-1} W_hh^T in their order,
    and its backward streams dG_{t+1} W_hh in theirs: outputs, states and dG_t (hence the weight and bias gradients,
    GEMMs of dG_t) are bitwise the same."""
    layer, regs, upstream = _problem(dtype, masked=masked, zoneout=2 if masked else 0)
    H = layer.w_hh.shape[2]
    fk = C.step_config(20, H, H, dtype)["BLOCK_K"]
    bk = C.step_config(20, H, 4 * H, dtype)["BLOCK_K"]
    got, want = _both(layer, regs, upstream, _tile(H, fk), _tile(H, bk))
    for name, a, e in zip(NAMES, got, want):
        if name in ("y", "h_n", "c_n", "gates", "cs", "dw_ih", "dw_hh", "db", "dc0"):
            assert torch.equal(a, e), f"{name} differs: max {(a.double() - e.double()).abs().max().item():.3g}"


@requires_interpreter
def test_a_flag_that_never_comes_sets_the_error_and_writes_nan():
    """Two unit programs per group: in the interpreter the first waits for the second's flag, which is raised only
    after the first has finished. The bounded spin gives up, the error flag is set, and what the programs wrote
    after that is NaN, never a silent wrong number (forward and backward)."""
    from tritonlstm.kernels import sequence_bwd, sequence_fwd, step

    layer, regs, upstream = _problem(torch.float32, T=3, B=4, H=32, D=1, lengths=False)
    stuck = {**_tile(32, units=16), "spin_limit": 3}
    err = torch.zeros(1, dtype=torch.int32)
    y, h_n, c_n, gates, cs = sequence_fwd.forward(layer, regs, True, stuck, err)
    assert int(err.item()) == 1 and torch.isnan(y[-1]).any() and torch.isnan(h_n).any()
    want = step.forward(layer, regs, True)
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), want):
        assert (torch.isnan(a) | torch.isclose(a, e, rtol=1e-4, atol=1e-5)).all(), f"{name}: neither NaN nor right"
    err_b = torch.zeros(1, dtype=torch.int32)
    grads = sequence_bwd.backward(layer, regs, Saved(*(want[0], want[3], want[4])), upstream, Needs(), stuck, err_b)
    assert int(err_b.item()) == 1 and torch.isnan(grads.dh0).any() and torch.isnan(grads.dw_hh).any()
    want_g = step.backward(layer, regs, Saved(want[0], want[3], want[4]), upstream, Needs())
    for name, a, e in zip(GRADS, grads, want_g):
        if a is not None:
            assert (torch.isnan(a) | torch.isclose(a, e, rtol=1e-4, atol=1e-5)).all(), f"{name}: neither NaN nor right"


# ------------------------------------------------------------------------------------------------------------
# the rule and the bytes it moves
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_tile_rule_fits_one_program_per_sm_with_wgmma_rows(backward):
    """Wherever the rule picks the tile regime: one program per SM, batch tiles of 64 or 128 rows (a wgmma is 64 rows
    a warpgroup), one warpgroup per 64 rows forward, the forward's resident slice within TILE_W_BYTES, 16 or 32
    units a backward program (one or two epilogue tiles), and none of it without an SM count, with a projection,
    outside 16-bit or for B <= 32."""
    seen = 0
    for dtype in (torch.float16, torch.bfloat16):
        for B in (33, 64, 100, 256, 512, 1024):
            for H in (256, 512, 768, 1000, 1024, 2048):
                for D in (1, 2):
                    cfg = C.sequence_config(B, H, 0, D, dtype, 132, backward)
                    if cfg["regime"] != "tile":
                        continue
                    seen += 1
                    grid = triton.cdiv(B, cfg["BLOCK_B"]) * D * triton.cdiv(H, cfg["BLOCK_H"])
                    assert grid <= 132 and cfg["BLOCK_B"] in C.TILE_ROWS, (B, H, D, dtype, cfg)
                    if backward:
                        assert cfg["BLOCK_H"] in (16, 32) and cfg["BLOCK_B"] == 64 and cfg["num_warps"] == 8
                    else:
                        assert cfg["BLOCK_H"] == 16 and H * 4 * 16 * 2 <= C.TILE_W_BYTES
                        assert cfg["num_warps"] == cfg["BLOCK_B"] // 16
                    assert C.choose(B, H, 0, D, dtype, 132, backward).fallback.regime == "graphed"
    assert seen > 20
    for args in ((256, 1024, 128, 1, torch.float16), (256, 1024, 0, 1, torch.float32), (32, 1024, 0, 1, torch.float16)):
        assert C.tile_config(*args, 132, backward) is None, args
    assert C.tile_config(256, 1024, 0, 1, torch.float16, None, backward) is None


def test_tile_moves_fewer_bytes_per_step_than_the_per_step_kernels():
    """Issue 19's item 3 at B=256, H=1024 (16-bit): the tile forward reads less from L2 per step than the per-step
    kernels (its W_hh^T slices stay in shared memory: 32 MiB against 48), and its backward streams W_hh, which
    reads less than keeping W_hh[:, 16 units] resident with 128-row tiles (96 MiB against 128: each unit slice
    reads the dG row block of every batch row) and the same as the per-step kernels' tiles. The figures are
    benchmarks/NOTES.md's."""
    B, H, dtype = 256, 1024, torch.float16
    MiB = 2**20
    forward, backward = (C.choose(B, H, 0, 1, dtype, 132, bw) for bw in (False, True))
    assert forward.regime == backward.regime == "tile"
    step_f = {"regime": "step", **C.step_config(B, H, H, dtype)}
    step_b = {"regime": "step", **C.step_config(B, H, 4 * H, dtype)}
    resident = {"regime": "resident", "BLOCK_B": 128, "BLOCK_H": 16}  # W_hh[:, 16 units] (128 KB) in shared memory
    assert C.l2_bytes_per_step(forward.config, B, H, 1, dtype) == 32 * MiB
    assert C.l2_bytes_per_step(step_f, B, H, 1, dtype) == 48 * MiB
    assert C.l2_bytes_per_step(backward.config, B, H, 1, dtype, True) == 96 * MiB
    assert C.l2_bytes_per_step(resident, B, H, 1, dtype, True) == 128 * MiB
    assert C.l2_bytes_per_step(step_b, B, H, 1, dtype, True) == 96 * MiB


@settings(max_examples=200, deadline=None)
@given(
    programs=st.integers(2, 6),
    steps=st.integers(1, 6),
    order=st.lists(st.integers(0, 5), min_size=1, max_size=400),
)
def test_flag_protocol_two_slots_are_enough(programs, steps, order):
    """A model of the flag protocol (kernels/jit.py: release_flag, wait_flags) under any interleaving: program s
    at step n waits until every flag holds at least n, reads slot (n - 1) % 2, writes slot n % 2, then raises its
    flag to n + 1. No read ever sees a slot that holds anything but step n - 1's value, so the recurrent dropout's
    two slots (and the forward's y, written once per step) need nothing more; and every program finishes."""
    flags = [0] * programs
    step = [0] * programs
    phase = [0] * programs  # 0: waiting to read, 1: wrote, about to release
    slots = [[-1, -1] for _ in range(programs)]  # slots[s][k]: the step whose value program s last wrote there
    for pick in order + list(range(programs)) * (3 * steps + 3):
        s = pick % programs
        if step[s] == steps:
            continue
        n = step[s]
        if phase[s] == 0:
            if min(flags) < n:
                continue  # still waiting
            if n > 0:
                for p in range(programs):  # the read of step n - 1's values, every producer's columns
                    assert slots[p][(n - 1) % 2] == n - 1, (s, n, p, slots[p])
            slots[s][n % 2] = n
            phase[s] = 1
        else:
            flags[s] = n + 1
            step[s], phase[s] = n + 1, 0
    assert step == [steps] * programs, "a program never finished"


@requires_interpreter
def test_plan_picks_the_tile_regime_and_names_it(monkeypatch):
    """With a GPU's SM count the plan of a large-batch layer is the tile regime (its self-test taken as passed: the
    interpreter cannot run its shape's grid), and its description says so."""
    from tritonlstm import dispatch
    from tritonlstm.kernels import selftest, sequence_bwd, sequence_fwd

    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    monkeypatch.setattr(dispatch.runtime, "sm_count", lambda device: 132)
    monkeypatch.setattr(selftest.HEALTH, "validate", lambda device, dtype, variant: True)
    monkeypatch.setattr(selftest.HEALTH, "passed", lambda device, dtype, variant: None)
    x = torch.empty(1, 256, 1, dtype=torch.float16)
    for backward in (False, True):
        p = dispatch.plan(x, torch.empty(1, 4096, 1024, dtype=torch.float16), None, "auto", backward=backward)
        assert p.regime == "tile" and p.kernel == "sequence", p
        assert "tile:" in p.describe() and "flags per producer" in p.why
    assert sequence_fwd.KERNELS["tile"] is sequence_fwd._seq_fwd_split_kernel
    assert sequence_bwd.KERNELS["tile"] is sequence_bwd._seq_bwd_tile_kernel
    assert C.LAUNCHERS["tile"].kernel == "sequence" and C.SELF_TESTED["tile"] == "tile"


@pytest.mark.skipif(INTERPRETER, reason="the interpreter leg runs the kernels above; this checks the rule's text")
def test_tile_why_counts_its_grid():
    choice = C.choose(256, 1024, 0, 1, torch.bfloat16, 132)
    assert choice.why.startswith("tile: 2 batch tiles of 128 rows x 64 unit slices"), choice.why
