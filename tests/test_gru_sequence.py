"""The GRU's sequence kernels (kernels/gru_sequence.py) and its rule, without a GPU.

In Triton's interpreter: the batch-owned kernels reproduce the per-step kernels bit for bit (forward and
backward: lengths, both directions, recurrent dropout, zoneout in eval and training); the unit-split kernels
(one program per group, as the interpreter runs programs one after another) agree within rounding, with their
dots split over the warps and with R covered by two blocks; a barrier that cannot be met sets the error flag and
turns the outputs into NaN. Everywhere: the rule's regimes, the plan, the self-tests and the fallback chain.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tritonlstm
from tests.helpers import INTERPRETER, assert_close, requires_interpreter
from tritonlstm import dispatch
from tritonlstm.kernels import config as C


def _problem(dtype, T=5, B=3, I=6, H=20, D=2, lengths=(5, 2, 4), masked=False, zoneout=0, seed=0):
    from tritonlstm.kernels.common import Layer, Regularisers

    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.4).to(dtype)

    layer = Layer(r(T, B, I), r(D, B, H), None, r(D, 3 * H, I), r(D, 3 * H, H), r(D, 3 * H), r(D, 3 * H), None,
                  torch.tensor(lengths) if lengths else None, (False, True)[:D])  # fmt: skip
    mask = (torch.rand(D, B, H, generator=g) > 0.3).to(dtype) / 0.7 if masked else None
    regs = Regularisers(mask, (0.3, 0.0) if zoneout else (0.0, 0.0), torch.tensor([11]) if zoneout == 2 else None)
    upstream = (r(T, B, D * H), r(D, B, H))
    return layer, regs, upstream


def _both(layer, regs, upstream, config_f=None, config_b=None):
    """(sequence kernels' results, per-step kernels' results): y, h_n, gates, then the six gradients."""
    from tritonlstm.kernels import gru_sequence, gru_step

    results = []
    for module, cf, cb in ((gru_sequence, config_f, config_b), (gru_step, None, None)):
        y, h_n, gates = module.forward(layer, regs, True, cf)
        grads = module.backward(layer, regs, y, gates, *upstream, (True,) * 6, cb)
        results.append([y, h_n, gates, *grads])
    return results


NAMES = ("y", "h_n", "gates", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(dict(), id="lengths-bi"),
        pytest.param(dict(lengths=None, D=1), id="full-uni"),
        pytest.param(dict(masked=True, zoneout=1), id="mask-eval-zoneout"),
        pytest.param(dict(masked=True, zoneout=2, H=40), id="mask-train-zoneout-H40"),
    ],
)
def test_batch_regime_reproduces_the_step_kernels_bitwise(case, dtype):
    layer, regs, upstream = _problem(dtype, **case)
    H = layer.w_hh.shape[2]
    B = layer.x.shape[1]
    fwd = {"regime": "gru-batch", **C.gru_step_config(B, H, H, dtype)}
    bwd = {"regime": "gru-batch", **C.gru_step_config(B, H, 3 * H, dtype)}
    given = [t.clone() for t in (*layer[:2], *upstream)]
    ours, theirs = _both(layer, regs, upstream, fwd, bwd)
    for name, a, e in zip(NAMES, ours, theirs):
        assert torch.equal(a, e), f"{name}: max diff {(a.double() - e.double()).abs().max().item():.3g}"
    for before, after in zip(given, (*layer[:2], *upstream)):
        assert torch.equal(before, after), "a launcher wrote into its inputs (x, h0, dy or dh_n)"


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "H, k_split, chunks, case",
    [
        pytest.param(20, 1, 1, dict(), id="H20-lengths-bi"),
        pytest.param(48, 1, 1, dict(masked=True, zoneout=2), id="H48-two-blocks-mask-train-zoneout"),
        pytest.param(64, 4, 1, dict(masked=True, zoneout=1, lengths=(3, 5, 1)), id="H64-k-split-mask-eval-zoneout"),
        pytest.param(40, 4, 3, dict(masked=True, zoneout=2), id="H40-chunked-k-split-mask-train-zoneout"),
    ],
)
def test_split_regime_matches_the_step_kernels(H, k_split, chunks, case, dtype):
    layer, regs, upstream = _problem(dtype, H=H, **case)
    cfg = {"regime": "gru-split", "BLOCK_B": 16, "BLOCK_H": max(16, 1 << (H - 1).bit_length()), "num_warps": 4}
    if k_split > 1:
        cfg["K_SPLIT"] = k_split
    if chunks > 1:
        cfg["G_CHUNKS"] = chunks
    k_fwd, ns = C.gru_constexprs(cfg, H, backward=False)
    k_bwd, _ = C.gru_constexprs(cfg, H, backward=True)
    assert ns == 1, "one program per group: the interpreter runs programs one after another"
    if H == 48:
        assert (k_fwd["BLOCK_R"], k_fwd["BLOCK_R2"]) == (32, 16) and (k_bwd["BLOCK_G"], k_bwd["BLOCK_G2"]) == (128, 16)
    if k_split > 1:  # split one way per warp, each split at least 16 long
        assert k_fwd["K_SPLIT"] == min(4, k_fwd["BLOCK_R"] // 16) > 1 and k_bwd["K_SPLIT"] == 4
    if chunks > 1:  # 120 gate rows in three resident chunks of 64
        assert [k_bwd[f"BLOCK_G{s}"] for s in ("", "2", "3", "4")] == [64, 64, 64, 0]
    ours, theirs = _both(layer, regs, upstream, cfg, cfg)
    for name, a, e in zip(NAMES, ours, theirs):
        assert_close(a, e, dtype, name)


@requires_interpreter
def test_a_barrier_that_cannot_be_met_sets_the_flag_and_writes_nan():
    """Two programs per group: in the interpreter the first waits for the second, which runs only after it, so
    every wait gives up after spin_limit polls (forward and backward)."""
    from tritonlstm.kernels import gru_sequence

    layer, regs, upstream = _problem(torch.float32, H=32)
    cfg = {"regime": "gru-split", "BLOCK_B": 16, "BLOCK_H": 16, "num_warps": 4, "spin_limit": 3}
    err = torch.zeros(1, dtype=torch.int32)
    y, h_n, gates = gru_sequence.forward(layer, regs, True, cfg, err)
    assert int(err) == 1 and torch.isnan(y[:, :, :16]).any()
    err = torch.zeros(1, dtype=torch.int32)
    grads = gru_sequence.backward(layer, regs, y.nan_to_num(), gates.nan_to_num(), *upstream, (True,) * 6, cfg, err)
    assert int(err) == 1 and torch.isnan(grads[0]).any()


def test_rule_regimes_and_reasons():
    f16 = torch.float16
    assert C.gru_choose(16, 256, 1, f16, None).regime == "gru-batch"  # the interpreter: no SM count
    small = C.gru_choose(16, 256, 2, f16, 132)
    assert small.regime == "gru-split" and small.config["BLOCK_H"] == 16 and "co-resident" in small.why
    back = C.gru_choose(16, 512, 1, f16, 132, backward=True)
    assert back.regime == "gru-split" and back.config["K_SPLIT"] == 8 and back.fallback.config.get("K_SPLIT") is None
    assert C.variant(back.config) == "gru-split-k" and C.variant(back.fallback.config) == "gru-split"
    k, _ = C.gru_constexprs(back.config, 512, backward=True)
    assert (k["BLOCK_G"], k["BLOCK_G2"]) == (1024, 512), "1536 gate rows as 1024 + 512, not padded to 2048"
    chunked = C.gru_choose(16, 1024, 1, f16, 132, backward=True)
    assert chunked.config["G_CHUNKS"] == 3 and chunked.fallback is None and "3 chunks" in chunked.why
    assert C.variant(chunked.config) == "gru-split-chunked"
    assert C.gru_choose(16, 1024, 1, torch.float32, 132, backward=True).regime == "gru-graphed"  # 16-bit only
    # H=1024 does not fit a unit-split program, and B=256 at H=768 does not fit one program per SM
    for B, H in ((16, 1024), (256, 768)):
        big = C.gru_choose(B, H, 1, f16, 132)
        assert big.regime == "gru-graphed" and "streamed from L2" in big.why, (B, H)
    assert C.gru_choose(256, 64, 1, f16, 132).regime == "gru-split"  # 16 groups of 4 programs
    assert C.gru_choose(2048, 64, 1, f16, 132).regime == "gru-batch"  # 512 programs; a 24 KB W_hh stays in L1
    assert C.gru_sequence_config(16, 256, 1, torch.float64, 132)["regime"] == "gru-batch"
    f32 = C.gru_sequence_config(16, 256, 1, torch.float32, 132)
    assert f32["regime"] == "gru-split" and f32["K_SPLIT"] == f32["num_warps"]
    for regime in ("gru-batch", "gru-split", "gru-graphed"):
        assert regime in C.LAUNCHERS and regime in C.SELF_TESTED.values()


def test_plan_for_a_gru_names_its_regime(monkeypatch):
    x = torch.empty(1, 4, 1)
    w_hh = torch.empty(1, 60, 20)
    plan = dispatch.plan(x, w_hh, None, "auto", cell="gru")
    if not INTERPRETER:
        assert plan.implementation == "reference"
        return
    assert (plan.kernel, plan.regime) == ("sequence", "gru-batch") and "no SM count" in plan.why
    monkeypatch.setenv(dispatch.KERNEL_ENV, "step")
    assert dispatch.plan(x, w_hh, None, "auto", cell="gru").regime == "gru-step"
    monkeypatch.setenv(dispatch.KERNEL_ENV, "sequence")
    assert dispatch.plan(x, w_hh, None, "auto", backward=True, cell="gru").regime == "gru-batch"
    text = tritonlstm.explain(tritonlstm.GRU(3, 20), torch.randn(4, 2, 3))
    assert "sequence kernel, gru-batch regime" in text


@requires_interpreter
def test_a_failed_self_test_warns_once_and_falls_back_to_the_step_kernels(monkeypatch):
    from tritonlstm.kernels import selftest

    selftest.HEALTH.reset()
    monkeypatch.setattr(selftest, "_self_test_gru", lambda device, dtype, regime: "forced failure")
    x, w_hh = torch.empty(1, 4, 1), torch.empty(1, 60, 20)
    try:
        with pytest.warns(RuntimeWarning, match="gru-batch regime failed its self-test"):
            plan = dispatch.plan(x, w_hh, None, "auto", cell="gru")
        assert plan.regime == "gru-step" and "failed its self-test" in plan.why
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once
            assert dispatch.plan(x, w_hh, None, "auto", cell="gru").regime == "gru-step"
        gru = tritonlstm.GRU(1, 20)
        ref = torch.nn.GRU(1, 20)
        ref.load_state_dict(gru.state_dict())
        xs = torch.randn(3, 4, 1)
        assert_close(gru(xs)[0], ref(xs)[0], torch.float32, "fallback output")
    finally:
        selftest.HEALTH.reset()


@requires_interpreter
@pytest.mark.parametrize("regime", ["gru-batch", "gru-split", "gru-split-k", "gru-split-chunked", "gru-graphed"])
def test_self_tests_pass_in_the_interpreter(regime):
    from tritonlstm.kernels import selftest

    assert selftest.self_test("cpu", torch.float32, regime) is None
