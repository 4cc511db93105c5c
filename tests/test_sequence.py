"""Sequence kernels (kernels/sequence_fwd.py, sequence_bwd.py) against the per-step launchers, their safety net,
the plan's choice between them (tritonlstm/dispatch.py) and the rule (kernels/config.py).

The oracle is the per-step kernels (kernels/step.py), themselves tested against nn.LSTM and the reference loop.
The batch-owned regime with the per-step tiles reduces in the same order, so its forward must match bit for
bit; everything else agrees at the dtype's tolerance. The interpreter runs the programs of a grid one after
another, so the unit-split form runs here with one program per (batch tile, direction): the barrier code still
executes. A grid of several unit programs can only wait forever there, which is how the time-out is forced.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import triton
import triton.language as tl

from tests.helpers import CPU_DTYPES, INTERPRETER, assert_close, requires_interpreter
from tritonlstm import dispatch
from tritonlstm.kernels import config as C
from tritonlstm.kernels.common import GradOutputs, Layer, Needs, Regularisers, Saved
from tritonlstm.kernels.selftest import HEALTH

from tritonlstm.kernels import selftest, sequence_bwd, sequence_fwd, step

GRADS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db", "dw_hr")


def _inputs(T, B, I, H, P=0, D=1, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, exact=False):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5
        # multiples of 1/8: the input GEMM is then exact in every dtype, whatever order any BLAS sums in, so the
        # recurrence (the kernels' own work) can be compared bit for bit
        return ((t * 8).round() / 8 if exact else t).to(dtype)

    R = P or H
    return {
        "x": r(T, B, I, exact=True), "h0": r(D, B, R), "c0": r(D, B, H), "w_ih": r(D, 4 * H, I, exact=True),
        "w_hh": r(D, 4 * H, R), "bias": r(D, 4 * H, exact=True) if bias else None, "w_hr": r(D, P, H) if P else None,
    }  # fmt: skip


def _split(H: int) -> dict:
    """Unit-split with one program per (batch tile, direction): it owns every unit and still runs the barrier."""
    return {"regime": "split", "BLOCK_B": 16, "BLOCK_H": max(8, triton.next_power_of_2(H)), "num_warps": 4}


def _config(regime: str, H: int) -> dict | None:
    """A CASES regime's config: ``batch`` (the rule's, None), ``split``, or ``split-GxK``: the backward holds W_hh
    in G chunks of gate rows and splits each chunk's dot K ways (the rule's form beyond H=512); ``...-b32``: with
    32-row batch tiles (config.split32_form's)."""
    if regime == "batch":
        return None
    if regime.endswith("-b32"):
        return {**_config(regime.removesuffix("-b32"), H), "BLOCK_B": 32}
    if regime == "split":
        return _split(H)
    if regime == "split-tagged":  # tagged words (the backward takes them without a projection or chunks)
        return {**_split(H), "TAGGED": True}
    if regime == "split-tagged-k4":  # the rule's forward at 8 warps: tagged, the recurrent dot split 4 ways
        return {**_split(H), "TAGGED": True, "K_SPLIT": 4}
    chunks, k_split = map(int, regime.removeprefix("split-").split("x"))
    return {**_split(H), "G_CHUNKS": chunks, "K_SPLIT": k_split}


def _layer(inp, lengths, reverse):
    b = inp["bias"]
    zero = torch.zeros_like(b) if b is not None else None
    return Layer(inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], b, zero, inp["w_hr"], lengths, reverse)


def _seq(inp, lengths, reverse, upstream, config=None, needs=(True,) * 7, store=True):
    layer, regs = _layer(inp, lengths, reverse), Regularisers(**_regularisers(inp))
    y, h_n, c_n, gates, cs = sequence_fwd.forward(layer, regs, store, config)
    if not store:
        return (y, h_n, c_n, gates, cs), None
    grads = sequence_bwd.backward(
        layer, regs, Saved(y, gates, cs), GradOutputs(*upstream(y, h_n, c_n)), Needs(*needs), config
    )
    return (y, h_n, c_n, gates, cs), grads


def _regularisers(inp) -> dict:
    """The regularisers in ``inp`` (recurrent dropout mask, zoneout and its seed) as Regularisers' fields."""
    names = {"h_mask": "h_mask", "zoneout": "zoneout", "zoneout_seed": "seed"}
    return {field: inp[k] for k, field in names.items() if inp.get(k) is not None}


def _step(inp, lengths, reverse, upstream):
    """The per-step launchers on the same layer: the oracle."""
    layer, regs = _layer(inp, lengths, reverse), Regularisers(**_regularisers(inp))
    y, h_n, c_n, gates, cs = step.forward(layer, regs, True)
    grads = step.backward(layer, regs, Saved(y, gates, cs), GradOutputs(*upstream(y, h_n, c_n)))
    return (y, h_n, c_n, gates, cs), list(grads)


def _upstream(seed=1, dy=True, dh=True, dc=True):
    def make(y, h_n, c_n):
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) if use else None
                     for t, use in ((y, dy), (h_n, dh), (c_n, dc)))  # fmt: skip

    return make


def _compare(got, want, dtype, bitwise_forward):
    for name, a, e in zip(("y", "h_n", "c_n", "gates", "cs"), got[0], want[0]):
        if bitwise_forward:
            assert torch.equal(a, e), f"{name}: not bitwise equal to the per-step kernels"
        else:
            assert_close(a, e, dtype if name != "cs" else e.dtype, name)
        assert a.dtype == e.dtype and a.shape == e.shape, name
    for name, a, e in zip(GRADS, got[1], want[1]):
        assert (a is None) == (e is None), name
        if a is not None:
            assert a.dtype == dtype, name
            assert_close(a, e, dtype, name)


# (id, T, B, I, H, P, reverse per direction, lengths, bias, regime)
CASES = [
    ("plain-T5-B3-H5", 5, 3, 4, 5, 0, (False,), None, True, "batch"),
    ("reverse-B1-H7", 4, 1, 3, 7, 0, (True,), None, True, "batch"),
    ("bidir-lengths-H9", 5, 3, 4, 9, 0, (False, True), [5, 2, 4], True, "batch"),
    ("bidir-H33-two-unit-tiles", 3, 2, 3, 33, 0, (False, True), None, True, "batch"),
    ("proj-bidir-lengths", 4, 3, 4, 6, 3, (False, True), [1, 4, 3], True, "batch"),
    ("no-bias-reverse-lengths", 4, 2, 3, 6, 0, (True,), [2, 4], False, "batch"),
    ("split-bidir-lengths-H9", 5, 3, 4, 9, 0, (False, True), [5, 2, 4], True, "split"),
    ("split-proj-bidir-lengths", 4, 3, 4, 6, 3, (False, True), [1, 4, 3], True, "split"),
    ("split-reverse-B1-H17", 3, 1, 3, 17, 0, (True,), None, True, "split"),
    ("split-2-gate-chunks-lengths", 4, 3, 4, 9, 0, (False, True), [4, 1, 3], True, "split-2x1"),
    ("split-4-chunks-k-split-lengths", 4, 3, 4, 15, 0, (False, True), [4, 1, 3], True, "split-4x4"),
    ("split-3-chunks-k-split-reverse", 3, 2, 3, 12, 0, (True,), None, True, "split-3x2"),
    ("split-tagged-bidir-lengths-H9", 5, 3, 4, 9, 0, (False, True), [5, 2, 4], True, "split-tagged"),
    ("split-tagged-proj-reverse-lengths", 4, 3, 4, 6, 3, (True,), [1, 4, 3], True, "split-tagged"),
    # R = 80 in two blocks of the dot's inner dimension (64 split 4 ways, then 16), both directions
    ("split-tagged-k-split-two-blocks-H80", 3, 2, 3, 80, 0, (False, True), [3, 1], True, "split-tagged-k4"),
    # 32-row batch tiles: one full tile and one of 3 rows, lengths across both; chunked W_hh with a split dot
    ("split-b32-bidir-lengths-B35", 4, 35, 3, 9, 0, (False, True), [1 + i % 4 for i in range(35)], True, "split-b32"),
    ("split-b32-3-chunks-k-split-reverse-B33", 3, 33, 3, 12, 0, (True,), None, True, "split-3x2-b32"),
]


# every configuration in float32; the four richest also in float64 and float16 (interpreter time on CI's 2 cores)
RICH = ("bidir-lengths-H9", "proj-bidir-lengths", "split-bidir-lengths-H9", "split-proj-bidir-lengths")
PARITY = [
    pytest.param(case, dtype, id=f"{case[0]}-{str(dtype).split('.')[-1]}")
    for case in CASES
    for dtype in CPU_DTYPES
    if dtype == torch.float32 or case[0] in RICH
]


@requires_interpreter
@pytest.mark.parametrize("case, dtype", PARITY)
def test_parity_with_step_kernels(case, dtype):
    _, T, B, I, H, P, reverse, lengths, bias, regime = case
    inp = _inputs(T, B, I, H, P, len(reverse), dtype, bias)
    lengths = torch.tensor(lengths) if lengths is not None else None
    config = _config(regime, H)
    got = _seq(inp, lengths, reverse, _upstream(), config)
    want = _step(inp, lengths, reverse, _upstream())
    # batch-owned with the per-step tiles reduces in their order: the forward is theirs bit for bit
    _compare(got, want, dtype, bitwise_forward=regime == "batch")


TAGGED = [
    pytest.param(dtype, P, masked, zoneout, id=f"{str(dtype).split('.')[-1]}-P{P}{'-dropout' * masked}"
                 f"{'-zoneout' * (zoneout > 0)}")
    for dtype in (torch.float32, torch.float16)
    for P in (0, 3)
    for masked in (False, True)
    for zoneout in ((0, 1, 2) if not P else (0,))  # off, eval, training; zoneout never with a projection
]  # fmt: skip


@requires_interpreter
@pytest.mark.parametrize("dtype, P, masked, zoneout", TAGGED)
def test_tagged_exchange_is_the_barrier_bit_for_bit(dtype, P, masked, zoneout):
    """The split kernels with the tagged exchange against the same kernels meeting at a barrier (tested against
    the per-step kernels above): every output and gradient bit for bit, bidirectional with lengths."""
    case = ("", 5, 3, 4, 9, P, (False, True), [5, 2, 4], True, "split")
    inp = _inputs(5, 3, 4, 9, P, 2, dtype)
    regs = Regularisers(
        _dropout_mask(case, dtype, 0.6, seed=3) if masked else None,
        (0.25, 0.4) if zoneout else (0.0, 0.0),
        torch.tensor([11]) if zoneout == 2 else None,
    )
    layer = _layer(inp, torch.tensor([5, 2, 4]), (False, True))
    err = torch.zeros(1, dtype=torch.int32)
    want = sequence_fwd.forward(layer, regs, True, _split(9))
    got = sequence_fwd.forward(layer, regs, True, {**_split(9), "TAGGED": True}, err)
    assert int(err) == 0
    for name, a, e in zip(("y", "h_n", "c_n", "gates", "cs"), got, want):
        assert torch.equal(a, e), f"{name}: the tagged exchange differs from the barrier"
    # the backward (tagged without a projection) on the same saved tensors: every gradient bit for bit
    saved, upstream = Saved(want[0], want[3], want[4]), GradOutputs(*_upstream()(*want[:3]))
    err_b = torch.zeros(1, dtype=torch.int32)
    plain = sequence_bwd.backward(layer, regs, saved, upstream, Needs(), _split(9))
    tagged = sequence_bwd.backward(layer, regs, saved, upstream, Needs(), {**_split(9), "TAGGED": True}, err_b)
    assert int(err_b) == 0
    for name, a, e in zip(GRADS, tagged, plain):
        assert (a is None and e is None) or torch.equal(a, e), f"{name}: the tagged backward differs from the barrier"


@requires_interpreter
@pytest.mark.parametrize(
    "dtype, masked, zoneout",
    [(torch.float32, False, 0), (torch.float16, True, 2), (torch.float32, False, 1)],
    ids=["fp32", "fp16-dropout-zoneout", "fp32-zoneout-eval"],
)
def test_flags_backward_is_the_barrier_bit_for_bit(dtype, masked, zoneout):
    """The split backward meeting through one flag per program (config.flags_form) against the same kernel at the
    counter barrier: every gradient bit for bit, bidirectional with lengths, the backward's dot split 4 ways and
    in two chunks of gate rows (the rule's forms beyond H=512)."""
    inp = _inputs(5, 3, 4, 9, 0, 2, dtype)
    case = ("", 5, 3, 4, 9, 0, (False, True), [5, 2, 4], True, "split")
    regs = Regularisers(
        _dropout_mask(case, dtype, 0.6, seed=3) if masked else None,
        (0.25, 0.4) if zoneout else (0.0, 0.0),
        torch.tensor([11]) if zoneout == 2 else None,
    )
    layer = _layer(inp, torch.tensor([5, 2, 4]), (False, True))
    y, h_n, c_n, gates, cs = sequence_fwd.forward(layer, regs, True, _split(9))
    saved, upstream = Saved(y, gates, cs), GradOutputs(*_upstream()(y, h_n, c_n))
    for extra in ({}, {"K_SPLIT": 4}, {"G_CHUNKS": 2, "K_SPLIT": 2}):
        counter = {**_split(9), **extra}
        flags = C.flags_form(counter, 0, backward=True)
        assert flags["FLAGS"] and C.variant(flags) == "split-flags"
        err = torch.zeros(1, dtype=torch.int32)
        want = sequence_bwd.backward(layer, regs, saved, upstream, Needs(), counter)
        got = sequence_bwd.backward(layer, regs, saved, upstream, Needs(), flags, err)
        assert int(err) == 0
        for name, a, e in zip(GRADS, got, want):
            assert (a is None and e is None) or torch.equal(a, e), f"{name}: the flags differ from the barrier {extra}"


def test_tagged_words_carry_16_and_32_bit_values_only():
    assert sequence_fwd.tagged_words({"TAGGED": True}, torch.bfloat16) == {"TAGGED": True, "WORD": tl.int32}
    assert sequence_fwd.tagged_words({"TAGGED": True}, torch.float32) == {"TAGGED": True, "WORD": tl.int64}
    assert sequence_fwd.tagged_words({"regime": "split"}, torch.float32) == {}
    with pytest.raises(ValueError, match="tagged exchange carries 16- and 32-bit values, not torch.float64"):
        sequence_fwd.tagged_words({"TAGGED": True}, torch.float64)


def _regularised_parity(case, dtype, **regularisers):
    """The sequence kernels with ``regularisers`` (the sequence API's arguments) against the per-step kernels, and
    against themselves without them (the regulariser must change the output)."""
    _, T, B, I, H, P, reverse, lengths, bias, regime = case
    inp = {**_inputs(T, B, I, H, P, len(reverse), dtype, bias), **regularisers}
    lengths = torch.tensor(lengths) if lengths is not None else None
    config = _config(regime, H)
    got = _seq(inp, lengths, reverse, _upstream(), config)
    want = _step(inp, lengths, reverse, _upstream())
    _compare(got, want, dtype, bitwise_forward=regime == "batch")
    plain = _seq({k: v for k, v in inp.items() if k not in regularisers}, lengths, reverse, _upstream(), config)
    assert not torch.equal(plain[0][0], got[0][0]), f"{sorted(regularisers)} must change the output"


def _dropout_mask(case, dtype, keep, seed):
    """A [D, B, R] recurrent dropout mask, zeros and 1/keep."""
    D, B, R = len(case[6]), case[2], case[5] or case[4]
    g = torch.Generator().manual_seed(seed)
    drawn = torch.bernoulli(torch.full((D, B, R), keep, dtype=torch.float64), generator=g)
    assert (drawn == 0).any() and (drawn == 1).any()
    return (drawn / keep).to(dtype)


MASKED = [
    pytest.param(case, dtype, id=f"{case[0]}-{str(dtype).split('.')[-1]}")
    for case in CASES
    if case[0] in RICH + ("split-4-chunks-k-split-lengths",)
    for dtype in (torch.float64, torch.float32)
] + [pytest.param(CASES[6], torch.float16, id=f"{CASES[6][0]}-float16")]


@requires_interpreter
@pytest.mark.parametrize("case, dtype", MASKED)
def test_recurrent_dropout_parity_with_step_kernels(case, dtype):
    """A recurrent dropout mask on h_{t-1}: the same numbers as the per-step kernels, which are tested against a
    plain loop with the same mask (tests/test_regularisers.py)."""
    _regularised_parity(case, dtype, h_mask=_dropout_mask(case, dtype, 0.6, seed=5))


ZONED = [
    pytest.param(case, dtype, train, id=f"{case[0]}-{str(dtype).split('.')[-1]}-{'train' if train else 'eval'}")
    for case in CASES
    if not case[5] and case[0] in ("bidir-lengths-H9", "split-bidir-lengths-H9", "split-4-chunks-k-split-lengths",
                                   "reverse-B1-H7", "bidir-H33-two-unit-tiles")
    for dtype in (torch.float64, torch.float32)
    for train in (True, False)
    if dtype == torch.float64 or train
] + [pytest.param(CASES[6], torch.float16, True, id=f"{CASES[6][0]}-float16-train"),
      pytest.param(CASES[-1], torch.float32, True, id=f"{CASES[-1][0]}-float32-train")]


@requires_interpreter
@pytest.mark.parametrize("case, dtype, train", ZONED)
def test_zoneout_parity_with_step_kernels(case, dtype, train):
    """Zoneout (training: the same Philox masks, drawn again in the backward; eval: the expectation), with a
    recurrent dropout mask along: the same numbers as the per-step kernels, which are tested against a plain loop
    replaying the masks they drew (tests/test_regularisers.py)."""
    seed = torch.tensor([4321]) if train else None
    _regularised_parity(
        case, dtype, h_mask=_dropout_mask(case, dtype, 0.75, seed=6), zoneout=(0.3, 0.45), zoneout_seed=seed
    )


@requires_interpreter
def test_small_tiles_many_unit_tiles():
    """Batch-owned with tiles far below the problem: several unit tiles and K-blocks in every step."""
    cfg = {"regime": "batch", "BLOCK_B": 16, "BLOCK_H": 4, "BLOCK_K": 16, "num_warps": 4}
    inp = _inputs(3, 3, 5, 9, 0, 2, torch.float32)
    lengths = torch.tensor([3, 1, 2])
    got = _seq(inp, lengths, (False, True), _upstream(), cfg)
    want = _step(inp, lengths, (False, True), _upstream())
    _compare(got, want, torch.float32, bitwise_forward=False)


@requires_interpreter
def test_inference_partial_needs_and_missing_upstream():
    """store_for_backward=False returns no gates/cs; needs leaves gradients out; None upstream gradients."""
    inp = _inputs(4, 2, 3, 6, 0, 2, torch.float32)
    (y, h_n, c_n, gates, cs), _ = _seq(inp, None, (False, True), None, store=False)
    assert gates is None and cs is None
    want = _step(inp, None, (False, True), _upstream(dh=False, dc=False))
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), want[0]):
        assert torch.equal(a, e), name
    needs = (True, False, False, False, True, False, False)
    _, grads = _seq(inp, None, (False, True), _upstream(dh=False, dc=False), needs=needs)
    for name, g, need, e in zip(GRADS, grads, needs, want[1]):
        if need:
            assert_close(g, e, torch.float32, name)
        else:
            assert g is None, name


@requires_interpreter
@pytest.mark.parametrize("regime", ["batch", "split"])
def test_batch_zero(regime):
    inp = _inputs(3, 0, 4, 5, 0, 2, torch.float32)
    (y, h_n, c_n, gates, cs), grads = _seq(
        inp, None, (False, True), _upstream(), _split(5) if regime == "split" else None
    )
    assert y.shape == (3, 0, 10) and h_n.shape == (2, 0, 5) and c_n.shape == (2, 0, 5)
    assert gates.shape == (2, 3, 0, 20) and cs.shape == (2, 3, 0, 5)
    assert grads[0].shape == (3, 0, 4)
    for name, g, shape in zip(GRADS[3:6], grads[3:6], ((2, 20, 4), (2, 20, 5), (2, 20))):
        assert g.shape == shape and torch.equal(g, torch.zeros(shape)), name


@requires_interpreter
@pytest.mark.parametrize("P", [0, 3], ids=["plain", "proj"])
def test_interchangeable_with_step_kernels(P):
    """The sequence forward feeds the per-step backward, and the per-step forward feeds the sequence backward."""
    dtype, reverse, lengths = torch.float32, (False, True), torch.tensor([3, 1, 4])
    inp = _inputs(4, 3, 4, 6, P, 2, dtype)
    want = _step(inp, lengths, reverse, _upstream())
    dy, dh_n, dc_n = _upstream()(*want[0][:3])
    layer = _layer(inp, lengths, reverse)
    up = GradOutputs(dy, dh_n, dc_n)
    # sequence forward -> per-step backward
    y, _, _, gates, cs = sequence_fwd.forward(layer)
    grads = step.backward(layer, Regularisers(), Saved(y, gates, cs), up)
    for d in range(2):
        for name, i in (("dh0", 1), ("dw_ih", 3), ("dw_hh", 4), ("db", 5)):
            assert_close(grads[i][d], want[1][i][d], dtype, f"seq fwd -> step bwd: {name}[{d}]")
    # per-step forward -> sequence backward
    grads = sequence_bwd.backward(layer, Regularisers(), Saved(want[0][0], want[0][3], want[0][4]), up)
    for name, a, e in zip(GRADS, grads, want[1]):
        if e is not None:
            assert_close(a, e, dtype, f"step fwd -> seq bwd: {name}")


# ------------------------------------------------------------------------------------------------------------
# safety: bounded spin, error flag, NaN, TRITONLSTM_CHECK, self-test and fallback
# ------------------------------------------------------------------------------------------------------------


def _stuck(H, spin_limit=3):
    """Two unit programs per group: in the interpreter the first waits for a second that runs only after it."""
    return {"regime": "split", "BLOCK_B": 16, "BLOCK_H": H // 2, "num_warps": 4, "spin_limit": spin_limit}


@requires_interpreter
@pytest.mark.parametrize(
    "P, exchange", [(0, "barrier"), (0, "tagged"), (0, "flags"), (4, "barrier"), (4, "tagged")],
    ids=["plain-barrier", "plain-tagged", "plain-flags", "proj-barrier", "proj-tagged"],
)
def test_forced_timeout_sets_flag_and_nan(P, exchange):
    inp = _inputs(3, 2, 4, 16, P, 1, torch.float32)
    layer = _layer(inp, None, (False,))
    err = torch.zeros(1, dtype=torch.int32)
    # (flags: the backward's; its forward is the barrier's)
    stuck = {**_stuck(16), "TAGGED": exchange == "tagged", "FLAGS": exchange == "flags"}
    y, h_n, c_n, _, _ = sequence_fwd.forward(layer, Regularisers(), True, stuck, err)
    assert int(err.item()) == 1, "the error flag must be set"
    assert torch.isnan(y[-1]).any() and torch.isnan(h_n).any() and torch.isnan(c_n).any()
    # never a silent wrong number: every element is NaN or the right value
    want = _step(inp, None, (False,), _upstream())[0]
    for name, a, e in zip(("y", "h_n", "c_n"), (y, h_n, c_n), want):
        ok = torch.isnan(a) | torch.isclose(a, e, rtol=1e-4, atol=1e-5)
        assert ok.all(), f"{name}: a value that is neither NaN nor correct"
    # the backward times out the same way (tagged or flags without a projection, at the barrier with one)
    err_b = torch.zeros(1, dtype=torch.int32)
    saved = Saved(want[0], want[3], want[4])
    grads = sequence_bwd.backward(
        layer, Regularisers(), saved, GradOutputs(*_upstream()(*want[:3])), Needs(), stuck, err_b
    )
    assert int(err_b.item()) == 1
    assert torch.isnan(grads[1]).any() and torch.isnan(grads[4]).any(), "dh0 and dW_hh must show the failure"
    want_grads = _step(inp, None, (False,), _upstream())[1]
    for name, a, e in zip(GRADS, grads, want_grads):
        if a is not None:
            assert (torch.isnan(a) | torch.isclose(a, e, rtol=1e-4, atol=1e-5)).all(), f"{name}: neither NaN nor right"


def _plan(B, H, P, D, dtype=torch.float32, backward=False, backend="auto"):
    """The plan of a layer of this shape on CPU tensors."""
    x = torch.empty(1, B, 1, dtype=dtype)
    w_hr = torch.empty(D, P, H, dtype=dtype) if P else None
    return dispatch.plan(x, torch.empty(D, 4 * H, P or H, dtype=dtype), w_hr, backend, backward=backward)


@requires_interpreter
def test_check_env_raises_on_timeout(monkeypatch):
    inp = _inputs(2, 2, 3, 16, 0, 1, torch.float32)
    layer = _layer(inp, None, (False,))
    monkeypatch.setenv("TRITONLSTM_CHECK", "1")
    monkeypatch.setenv("TRITONLSTM_KERNEL", "sequence")
    checked = _plan(2, 16, 0, 1)
    assert checked.check and checked.kernel == "sequence"
    with pytest.raises(RuntimeError, match="timed out"):
        checked._replace(config=_stuck(16)).forward(layer, Regularisers(), False)
    checked.forward(layer, Regularisers(), False)  # a healthy launch passes the check
    monkeypatch.setenv("TRITONLSTM_CHECK", "0")
    unchecked = _plan(2, 16, 0, 1)
    assert not unchecked.check
    y = unchecked._replace(config=_stuck(16)).forward(layer, Regularisers(), False)[0]  # no host sync: NaN signals
    assert torch.isnan(y).any()


@requires_interpreter
@pytest.mark.parametrize("regime", C.SELF_TESTED)
def test_self_test_passes(regime):
    # the caller's autocast must not leak into the self-test's own GEMMs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert selftest.self_test("cpu", torch.float32, regime) is None


@pytest.fixture
def health():
    """A process that has self-tested nothing and seen no compile failure, restored afterwards."""
    saved = dict(HEALTH.validated), set(HEALTH.uncompilable)
    HEALTH.reset()
    yield HEALTH
    HEALTH.reset()
    HEALTH.validated.update(saved[0])
    HEALTH.uncompilable.update(saved[1])


@requires_interpreter
def test_failed_tagged_self_test_falls_back_to_the_barrier(monkeypatch, health, tagged_rule):
    """With the tagged exchange switched on the rule's split forward is tagged; if that form fails its self-test
    the plan runs the same kernel with the barrier (self-tested on its own), not the per-step kernels, and says
    why."""
    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    monkeypatch.setattr(dispatch.runtime, "sm_count", lambda device: 132)  # as a GPU would: the rule may split
    real = selftest.self_test

    def self_test(device, dtype, regime):
        return "broken" if regime == "split-tagged" else real(device, dtype, regime)

    monkeypatch.setattr(selftest, "self_test", self_test)
    assert C.choose(3, 6, 0, 2, torch.float32, 132).config["TAGGED"], "the rule's forward is tagged"
    with pytest.warns(RuntimeWarning, match="split-tagged regime failed its self-test.*broken.*barrier exchange"):
        forward = _plan(3, 6, 0, 2)
    assert forward.regime == "split" and "TAGGED" not in forward.config, forward
    assert "barrier" in forward.why and "split-tagged regime failed its self-test" in forward.why
    assert health.passed(torch.device("cpu"), torch.float32, "split") is True
    backward = _plan(3, 6, 0, 2, backward=True)  # its tagged form failed too (one self-test for both passes)
    assert backward.regime == "split" and "TAGGED" not in backward.config


@requires_interpreter
def test_failed_split_k_self_test_falls_back_to_the_plain_dot(monkeypatch, health):
    """The rule's split backward with a projection (which meets at the barrier) splits its dot over the gate rows;
    if that form fails its self-test the plan runs the kernel with one plain dot (self-tested on its own)."""
    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    monkeypatch.setattr(dispatch.runtime, "sm_count", lambda device: 132)
    real = selftest.self_test
    monkeypatch.setattr(selftest, "self_test", lambda d, t, r: "broken" if r == "split-k" else real(d, t, r))
    rule = C.choose(3, 16, 8, 2, torch.float32, 132, True).config
    assert rule["K_SPLIT"] == 4 and "TAGGED" not in rule, "the rule's projected backward splits, at the barrier"
    with pytest.warns(RuntimeWarning, match="split-k regime failed its self-test.*broken.*plain dot for split-k"):
        backward = _plan(3, 16, 8, 2, backward=True)
    assert backward.regime == "split" and "K_SPLIT" not in backward.config, backward
    assert "split-k regime failed its self-test" in backward.why
    assert health.passed(torch.device("cpu"), torch.float32, "split") is True


@requires_interpreter
def test_failed_self_test_warns_once_and_falls_back(monkeypatch, health):
    """A self-test whose barrier really times out: one warning naming the failure, then the per-step kernels."""
    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    monkeypatch.setattr(selftest, "self_test_config", lambda device, dtype, regime, H, P, backward: _stuck(16, 2))
    with pytest.warns(RuntimeWarning, match="failed its self-test.*timed out"):
        assert _plan(3, 6, 0, 2).kernel == "step"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fallback = _plan(5, 9, 0, 1)  # same (device, dtype, regime): no warning
    assert fallback.kernel == "step" and "failed its self-test" in fallback.why
    # the fallback computes the right numbers: the per-step kernels against the float64 reference loop
    from tritonlstm import reference

    inp = _inputs(4, 3, 4, 6, 0, 1, torch.float32)
    y, h_n, c_n, _, _ = fallback.forward(_layer(inp, None, (False,)), Regularisers(), True)
    ry, rh, rc = reference.lstm_layer(
        inp["x"].double(), inp["h0"][0].double(), inp["c0"][0].double(), inp["w_ih"][0].double(),
        inp["w_hh"][0].double(), inp["bias"][0].double(), None,
    )  # fmt: skip
    for name, a, e in (("y", y, ry), ("h_n", h_n[0], rh), ("c_n", c_n[0], rc)):
        assert_close(a, e, torch.float32, name)


@requires_interpreter
def test_plan_validates_once_and_honours_env(monkeypatch, health):
    calls = []
    monkeypatch.setattr(selftest, "self_test", lambda device, dtype, regime: calls.append((device, dtype, regime)))
    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    assert _plan(3, 6, 0, 2).kernel == "sequence"
    assert _plan(30, 60, 4, 1).kernel == "sequence"
    assert calls == [(torch.device("cpu"), torch.float32, "batch")]
    # unsupported here: the per-step kernels, no error (and the op's plan runs the reference for such tensors)
    assert dispatch._kernel_plan(torch.device("cpu"), torch.bfloat16, 3, 6, 0, 2, False).kernel == "step"
    assert _plan(3, 6, 0, 2, torch.bfloat16).implementation == "reference"
    monkeypatch.setenv("TRITONLSTM_KERNEL", "step")
    assert _plan(3, 6, 0, 2).kernel == "step"
    monkeypatch.setenv("TRITONLSTM_KERNEL", "sequence")
    health.validated[("cpu", torch.float32, "batch")] = False
    assert _plan(3, 6, 0, 2).kernel == "sequence"  # forced: no self-test
    with pytest.raises(RuntimeError, match="bfloat16"):
        dispatch._kernel_plan(torch.device("cpu"), torch.bfloat16, 3, 6, 0, 2, False)
    monkeypatch.setenv("TRITONLSTM_KERNEL", "fast")
    with pytest.raises(ValueError, match="auto, sequence or step"):
        _plan(3, 6, 0, 2)


@requires_interpreter
def test_plan_during_capture_never_self_tests(monkeypatch, health):
    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    monkeypatch.setattr(dispatch.runtime, "capturing", lambda device: True)

    def no_self_test(*a):
        raise AssertionError("self-test during CUDA-graph capture")

    monkeypatch.setattr(selftest, "self_test", no_self_test)
    assert _plan(3, 6, 0, 1).kernel == "step"
    health.validated[("cpu", torch.float32, "batch")] = True
    assert _plan(3, 6, 0, 1).kernel == "sequence"


@requires_interpreter
def test_uncompilable_shape_runs_the_step_kernels_from_then_on(monkeypatch, health):
    """A sequence kernel that does not compile for a shape: one warning, the per-step kernels' numbers for that
    call, and the per-step kernels for that shape (and pass) from then on."""
    from triton.compiler.errors import CompilationError

    monkeypatch.delenv("TRITONLSTM_KERNEL", raising=False)
    health.validated[("cpu", torch.float32, "batch")] = True
    inp = _inputs(3, 2, 4, 6, 0, 1, torch.float32)
    layer = _layer(inp, None, (False,))

    def uncompilable(*a, **k):
        raise CompilationError("kernel.py", None, "out of resources")

    plan = _plan(2, 6, 0, 1)
    assert plan.kernel == "sequence"
    monkeypatch.setitem(sequence_fwd.KERNELS, "batch", type("K", (), {"__getitem__": lambda self, g: uncompilable})())
    with pytest.warns(RuntimeWarning, match="did not compile"):
        y = plan.forward(layer, Regularisers(), False)[0]
    assert torch.equal(y, step.forward(layer, Regularisers(), False)[0])
    after = _plan(2, 6, 0, 1)
    assert after.kernel == "step" and "did not compile" in after.why
    assert _plan(2, 6, 0, 1, backward=True).kernel == "sequence", "the backward's kernel is its own"


def test_explain_names_the_plan_of_each_pass():
    import tritonlstm

    model = tritonlstm.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True)
    text = tritonlstm.explain(model, torch.randn(5, 4, 3))
    assert text.splitlines()[0] == "LSTM: B=5, H=6, P=0, D=2, torch.float32 on cpu"
    forward, backward = text.splitlines()[1:3]
    assert forward.startswith("  forward : ") and backward.startswith("  backward: ")
    if INTERPRETER:
        assert "sequence kernel, batch regime [BLOCK_B=16" in forward, forward
    else:
        assert "reference loop (CPU tensors need Triton's interpreter" in forward, forward
    assert "2 layers" in text.splitlines()[3]
    cell = tritonlstm.LSTMCell(3, 6, backend="reference")
    lines = tritonlstm.explain(cell, torch.randn(3)).splitlines()
    assert lines[1] == "  forward : reference loop (backend='reference')"


def test_sequence_unavailable_reasons():
    assert "dtype" in dispatch.sequence_unavailable("cpu", torch.int32, 1)
    assert "directions" in dispatch.sequence_unavailable("cpu", torch.float32, 3)
    if INTERPRETER:
        assert dispatch.sequence_unavailable("cpu", torch.float32, 2) is None
        assert "bfloat16" in dispatch.sequence_unavailable("cpu", torch.bfloat16, 2)
    else:
        assert "TRITON_INTERPRET" in dispatch.sequence_unavailable("cpu", torch.float32, 2)


# ------------------------------------------------------------------------------------------------------------
# the choice rule (pure Python: runs everywhere)
# ------------------------------------------------------------------------------------------------------------


def test_choice_rule_without_gpu_is_batch_owned_with_step_tiles():
    for B, H, P in ((3, 5, 0), (64, 1024, 0), (16, 768, 256)):
        want = {"regime": "batch", **C.step_config(B, H, P or H, torch.float32, P)}
        assert C.sequence_config(B, H, P, 2, torch.float32, None) == want
        assert C.choose(B, H, P, 2, torch.float32, None) == C.Choice(
            "batch", want, "batch-owned: no SM count (the interpreter), the per-step kernels' tiles"
        )


def test_forward_k_blocks_pad_to_the_mma_granule_only():
    """The unit-split forward's blocks of R: powers of two, 16 to MAX_K_BLOCK wide, covering R with no more than
    the granule's padding at the benchmark's sizes and wherever two blocks can (and never more than one block)."""
    for R in range(1, 1025):
        first, second = C.k_blocks(R)
        one = max(16, triton.next_power_of_2(R))
        assert first & (first - 1) == 0 and second & (second - 1) == 0 and 16 <= first <= C.MAX_K_BLOCK, R
        assert second == 0 or 16 <= second <= first, R
        assert R <= first + second <= one, R
        if R % 16 == 0 and (R // 16).bit_count() <= 2:  # 256, 768, 1024, 320, ...: a sum of two powers of two
            assert first + second == R, R
    assert C.k_blocks(768) == (512, 256) and C.k_blocks(1024) == (512, 512) and C.k_blocks(256) == (256, 0)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_choice_rule_grid_is_co_resident(backward):
    """Every unit-split grid the rule picks for a 132-SM GPU fits one program per SM; large B goes batch-owned."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for B in (1, 16, 17, 64, 256, 1024):
            for H in (32, 255, 256, 768, 1024):
                for P in (0, 128):
                    for D in (1, 2):
                        cfg = C.sequence_config(B, H, P, D, dtype, 132, backward)
                        if cfg["regime"] != "split":
                            continue
                        grid = triton.cdiv(B, cfg["BLOCK_B"]) * D * triton.cdiv(H, cfg["BLOCK_H"])
                        assert grid <= 132, (B, H, P, D, dtype, cfg)
                        assert cfg["BLOCK_H"] >= (16 if backward or P else 8)
                        if P:
                            assert cfg["BLOCK_P"] * triton.cdiv(H, cfg["BLOCK_H"]) >= P
                        if cfg.get("G_CHUNKS", 1) > 1:  # chunked W_hh: 16-bit, 16 units, chunks cover 4H
                            assert backward and not P and dtype != torch.float32 and cfg["BLOCK_H"] == 16, cfg
                            assert cfg["G_CHUNKS"] <= 4 and cfg["G_CHUNKS"] * C.CHUNK_ROWS >= 4 * H
    # the latency regime splits units, forward and backward up to H=1024 (what compiles spill-free); the backward
    # beyond H=512 holds W_hh in chunks of 1024 gate rows and splits each chunk's dot 4 ways
    for H, chunks in ((512, 1), (768, 3), (1024, 4)):
        cfg = C.sequence_config(16, H, 0, 1, torch.bfloat16, 132, backward)
        assert cfg["regime"] == "split" and cfg.get("G_CHUNKS", 1) == (chunks if backward else 1), (H, cfg)
        assert "TAGGED" not in cfg, "the rule meets at the counter barrier"
        split = cfg["num_warps"] if backward else 1
        assert cfg.get("K_SPLIT", 1) == split, "the backward's dot splits one way per warp, the 16-bit forward's is plain"
    # float32's resident slice would not fit: batch-owned, which prefers the (graphed) per-step kernels at this W_hh
    assert C.sequence_config(16, 768, 0, 1, torch.float32, 132, True)["regime"] == "batch"
    assert C.choose(16, 768, 0, 1, torch.float32, 132, True).regime == "graphed"
    # large B with a large W_hh: the per-step kernels, graphed; large B with a small one: batch-owned
    assert C.sequence_config(1024, 1024, 0, 1, torch.bfloat16, 132, backward)["regime"] == "batch"
    assert C.choose(1024, 1024, 0, 1, torch.bfloat16, 132, backward).regime == "graphed"
    small = C.choose(4096, 64, 0, 1, torch.bfloat16, 132, backward)
    assert small.regime == "batch" and small.config == C.sequence_config(4096, 64, 0, 1, torch.bfloat16, 132, backward)
    assert C.sequence_config(16, 768, 0, 1, torch.float64, 132, backward)["regime"] == "batch"


# ------------------------------------------------------------------------------------------------------------
# launches and host time (fake sm_90 driver: compiles, launches nothing)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    INTERPRETER, reason="needs real JITFunctions for the fake driver; TRITON_INTERPRET=1 replaces them"
)
def test_one_launch_per_layer_and_host_time_flat_in_T():
    from benchmarks.host_overhead import measure

    which = ("sequence fwd", "sequence bwd")
    # the fastest of the reps: other jobs on the machine only ever add time
    short = measure(16, D=2, reps=15, which=which, stat=min)
    long = measure(1024, D=2, reps=15, which=which, stat=min)
    for m in (short, long):
        assert m["sequence fwd"][1] == {"_seq_fwd_batch_kernel": 1}, "one forward launch for both directions, any T"
        assert m["sequence bwd"][1] == {"_seq_bwd_batch_kernel": 1}, "one backward launch for both directions, any T"
    # no per-step host work: 64x the steps may not even triple the host time (the GEMMs on tiny tensors grow a
    # little); one microsecond of host work per step would already add a millisecond
    for name in which:
        assert long[name][0] < 3 * short[name][0] + 500, (name, short[name][0], long[name][0])


@pytest.mark.skipif(
    INTERPRETER, reason="needs real JITFunctions for the fake driver; TRITON_INTERPRET=1 replaces them"
)
def test_unit_split_launch_grid_under_fake_driver(monkeypatch):
    """The rule's unit-split configs launch (cooperatively, when Triton has it) one grid of at most 132 programs."""
    from tritonlstm.kernels.fake_driver import fake_cuda_driver
    from tritonlstm.kernels.runtime import cooperative_supported

    def cooperative(x, split, num_warps):  # what a CUDA tensor gets; these are CPU tensors under the fake driver
        cooperative = split and cooperative_supported()
        return {"num_warps": num_warps, **({"launch_cooperative_grid": True} if cooperative else {})}

    monkeypatch.setattr(sequence_fwd, "launch_options", cooperative)
    monkeypatch.setattr(sequence_bwd, "launch_options", cooperative)
    T, B, I, H, D, dtype = 8, 16, 32, 256, 2, torch.bfloat16
    inp = _inputs(T, B, I, H, 0, D, dtype)
    layer = _layer(inp, torch.full((B,), T), (False, True))
    fcfg, bcfg = (C.sequence_config(B, H, 0, D, dtype, 132, bw) for bw in (False, True))
    assert fcfg["regime"] == bcfg["regime"] == "split"
    with fake_cuda_driver(arch=90, num_sms=132) as drv:
        y, h_n, c_n, gates, cs = sequence_fwd.forward(layer, Regularisers(), True, fcfg)
        sequence_bwd.backward(layer, Regularisers(), Saved(y, gates, cs), GradOutputs(y, h_n, c_n), Needs(), bcfg)
        launches = [launch for launch in drv.launches if launch.kernel.startswith("_seq")]
        variants = {v.kernel: v for v in drv.variants()}
    assert [(la.kernel, la.grid) for la in launches] == [
        ("_seq_fwd_split_kernel", (1, D, H // fcfg["BLOCK_H"])),
        ("_seq_bwd_split_kernel", (1, D, H // bcfg["BLOCK_H"])),
    ]
    for name in ("_seq_fwd_split_kernel", "_seq_bwd_split_kernel"):
        assert variants[name].n_spills == 0, (name, variants[name].n_regs)


@pytest.mark.skipif(
    INTERPRETER, reason="needs real JITFunctions for the fake driver; TRITON_INTERPRET=1 replaces them"
)
def test_no_recompile_across_T_and_batch_sizes_of_one_tile():
    """T, B and the direction mask are runtime values and every pointer is a base allocation: one variant each."""
    from tritonlstm.kernels.fake_driver import fake_cuda_driver

    with fake_cuda_driver(arch=90, num_sms=132) as drv:
        for T, B in ((3, 2), (7, 3), (16, 5), (5, 16)):
            layer = _layer(_inputs(T, B, 4, 8, 0, 2, torch.float32), None, (False, True))
            y, h_n, c_n, gates, cs = sequence_fwd.forward(layer)
            sequence_bwd.backward(layer, Regularisers(), Saved(y, gates, cs), GradOutputs(y, h_n, c_n))
        counts = drv.variant_counts()
    assert counts == {"_seq_fwd_batch_kernel": 1, "_seq_bwd_batch_kernel": 1}, counts


# ------------------------------------------------------------------------------------------------------------
# the graphed per-step regime (kernels/graphed.py): its logic on a CPU, with a stand-in for CUDA-graph capture
# ------------------------------------------------------------------------------------------------------------


def test_rule_runs_no_benchmark_shape_on_the_per_step_kernels():
    """Issue 19's criterion: on a 132-SM GPU no shape of the benchmark grid (B 16/64/256 x H 256/768/1024, 16-bit)
    runs the per-step kernels, graphed or not: the unit-split regime, or the tile regime for large B with a large
    W_hh, whose fallback (if its self-test fails) is the graphed per-step kernels. Without an SM count (CPU
    tensors) the rule picks neither."""
    for B in (16, 64, 256):
        for H in (256, 768, 1024):
            for dtype in (torch.float16, torch.bfloat16):
                for backward in (False, True):
                    choice = C.choose(B, H, 0, 1, dtype, 132, backward)
                    assert choice.regime in ("split", "tile"), (B, H, choice)
                    if choice.regime == "tile":
                        assert B >= 64 and H >= 768, (B, H)
                        assert choice.fallback.regime == "graphed" and choice.fallback.fallback is None
                        step_tiles = C.step_config(B, H, 4 * H if backward else H, dtype, 0)
                        assert choice.fallback.config == {"regime": "graphed", **step_tiles}
                    assert C.choose(B, H, 0, 1, dtype, None, backward).regime == "batch"
    # beyond the tile regime (more tiles than SMs), the graphed per-step kernels
    beyond = C.choose(1024, 1024, 0, 1, torch.bfloat16, 132, False)
    assert beyond.regime == "graphed" and beyond.why.startswith("per-step, graphed")
    assert C.LAUNCHERS["graphed"].kernel == "step" and "graphed" in C.SELF_TESTED and "tile" in C.SELF_TESTED


@pytest.fixture
def graphs(monkeypatch):
    """kernels/graphed.py with CPU tensors taken as capturable and a stand-in capture: ``replay()`` reruns the
    launches into the captured outputs, as a CUDA graph does on its static buffers."""
    from tritonlstm.kernels import graphed

    def capture(fn):
        outputs = fn()

        def replay():
            for out, new in zip(outputs, fn()):
                if out is not None:
                    out.copy_(new)

        return replay, outputs

    monkeypatch.setattr(graphed, "graphable", lambda device: not graphed.capturing(device))
    monkeypatch.setattr(graphed, "capture", capture)
    graphed.GRAPHS.reset()
    yield graphed
    graphed.GRAPHS.reset()


def _graph_inputs(T, seed, lengths=None, masked=False):
    inp = _inputs(T, 3, 4, 6, 0, 2, torch.float32, seed=seed)
    regs = Regularisers()
    if masked:
        regs = Regularisers(_dropout_mask(("", 0, 3, 0, 6, 0, (False, True)), torch.float32, 0.7, seed), (0.2, 0.3),
                            torch.tensor([seed]))  # fmt: skip
    return _layer(inp, lengths, (False, True)), regs


@requires_interpreter
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "dropout-zoneout"])
def test_graphed_replays_are_the_step_kernels_bit_for_bit(graphs, masked):
    """New inputs each call reach the graph through its static buffers; results are copies, so a call's outputs
    (saved for its backward) survive the next replay."""
    lengths = torch.tensor([4, 1, 3])
    results = []
    for seed in (0, 1):
        layer, regs = _graph_inputs(4, seed, lengths, masked)
        fwd = graphs.forward(layer, regs, True)
        up = GradOutputs(*_upstream(seed)(*fwd[:3]))
        bwd = graphs.backward(layer, regs, Saved(fwd[0], fwd[3], fwd[4]), up)
        want_fwd = step.forward(layer, regs, True)
        want_bwd = step.backward(layer, regs, Saved(want_fwd[0], want_fwd[3], want_fwd[4]), up)
        for name, a, e in zip(("y", "h_n", "c_n", "gates", "cs", *GRADS), (*fwd, *bwd), (*want_fwd, *want_bwd)):
            assert (a is None and e is None) if name == "dw_hr" else torch.equal(a, e), name
        results.append([t.clone() for t in fwd])
    assert graphs.GRAPHS.captures == 2, "one forward and one backward graph for the shape, replayed the second time"
    assert not torch.equal(results[0][0], results[1][0])
    layer, regs = _graph_inputs(4, 0, lengths, masked)
    assert torch.equal(graphs.forward(layer, regs, True)[0], results[0][0]), "the first call's outputs were copies"


@requires_interpreter
def test_graphed_cache_key_is_the_shape_and_options(graphs, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_GRAPHS", 7)  # the eviction below in fewer interpreted captures
    layer, regs = _graph_inputs(4, 0)
    graphs.forward(layer, regs, True)
    graphs.forward(_graph_inputs(4, 1)[0], regs, True)
    assert graphs.GRAPHS.captures == 1, "same shape: one capture"
    graphs.forward(_graph_inputs(5, 0)[0], regs, True)
    graphs.forward(layer, regs, False)
    graphs.forward(layer._replace(lengths=torch.tensor([4, 2, 3])), regs, True)
    graphs.forward(layer, regs, True, {"BLOCK_B": 16, "BLOCK_H": 4, "BLOCK_K": 16, "num_warps": 4})
    assert graphs.GRAPHS.captures == 5, "T, store, lengths and the tiles are each part of the key"
    assert len(graphs.GRAPHS.entries) == 5
    for T in range(6, 6 + graphs.MAX_GRAPHS):
        graphs.forward(_graph_inputs(T, 0)[0], regs, True)
    assert len(graphs.GRAPHS.entries) == graphs.MAX_GRAPHS, "the least recently used graphs are dropped"


@requires_interpreter
def test_graphed_never_captures_inside_a_callers_capture(graphs, monkeypatch):
    monkeypatch.setattr(graphs, "capturing", lambda device: True)

    def no_capture(fn):
        raise AssertionError("captured inside the caller's capture")

    monkeypatch.setattr(graphs, "capture", no_capture)
    layer, regs = _graph_inputs(3, 0)
    assert torch.equal(graphs.forward(layer, regs, True)[0], step.forward(layer, regs, True)[0])
    assert graphs.GRAPHS.captures == 0 and not graphs.GRAPHS.entries


@requires_interpreter
def test_graphed_capture_failure_warns_once_and_falls_back(graphs, monkeypatch):
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "capture", broken)
    layer, regs = _graph_inputs(3, 0)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed.*not permitted"):
        y = graphs.forward(layer, regs, True)[0]
    assert torch.equal(y, step.forward(layer, regs, True)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(graphs.forward(layer, regs, True)[0], y), "that shape is not tried again"
