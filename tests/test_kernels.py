"""Launcher level: one layer and direction on the Triton kernels against the plain PyTorch step loop."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import CPU_DTYPES, DEVICE, assert_close
from tritonlstm import reference
from tritonlstm.kernels import (
    deinterleave_gates,
    interleave_gates,
    lstm_layer_backward,
    lstm_layer_forward,
    step_config,
)

# tiles far smaller than the problem, so several programs cover batch and hidden units in every step
SMALL_TILES = {"BLOCK_B": 16, "BLOCK_H": 4, "BLOCK_K": 16, "num_warps": 4}


def _layer_inputs(T, B, I, H, dtype, bias=True):
    def r(*shape):
        return (torch.randn(*shape, device=DEVICE, dtype=torch.float64) * 0.5).to(dtype)

    return {
        "x": r(T, B, I),
        "h0": r(B, H),
        "c0": r(B, H),
        "w_ih": r(4 * H, I),
        "w_hh": r(4 * H, H),
        "b_ih": r(4 * H) if bias else None,
        "b_hh": r(4 * H) if bias else None,
    }


def _reference_grads(inp, reverse, dy, dh_n, dc_n):
    """Outputs and gradients of the float64 reference loop for the given upstream gradients."""
    leaves = {k: (v.to(torch.float64).requires_grad_() if v is not None else None) for k, v in inp.items()}
    y, h_n, c_n = reference.lstm_layer(*leaves.values(), reverse=reverse)
    outs, grads = [], []
    for o, g in ((y, dy), (h_n, dh_n), (c_n, dc_n)):
        if g is not None:
            outs.append(o)
            grads.append(g.to(torch.float64))
    torch.autograd.backward(outs, grads)
    return (y, h_n, c_n), {k: (v.grad if v is not None else None) for k, v in leaves.items()}


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "T, B, I, H, config",
    [
        pytest.param(4, 3, 5, 7, None, id="T4-B3-I5-H7-default"),
        pytest.param(3, 20, 6, 9, SMALL_TILES, id="T3-B20-I6-H9-tiled"),
        pytest.param(1, 1, 2, 33, SMALL_TILES, id="T1-B1-I2-H33-tiled"),
    ],
)
def test_layer_matches_reference(T, B, I, H, config, reverse, dtype):
    inp = _layer_inputs(T, B, I, H, dtype)
    y, h_n, c_n, gates, cs = lstm_layer_forward(**inp, reverse=reverse, config=config)
    dy, dh_n, dc_n = (torch.randn_like(t) for t in (y, h_n, c_n))
    dx, dh0, dc0, dw_ih, dw_hh, db = lstm_layer_backward(
        dy, dh_n, dc_n, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], y, gates, cs,
        reverse=reverse, config=config,
    )  # fmt: skip
    (ry, rh, rc), rg = _reference_grads(inp, reverse, dy, dh_n, dc_n)
    for name, a, e in [
        ("y", y, ry), ("h_n", h_n, rh), ("c_n", c_n, rc), ("dx", dx, rg["x"]), ("dh0", dh0, rg["h0"]),
        ("dc0", dc0, rg["c0"]), ("dw_ih", dw_ih, rg["w_ih"]), ("dw_hh", dw_hh, rg["w_hh"]),
        ("db_ih", db, rg["b_ih"]), ("db_hh", db, rg["b_hh"]),
    ]:  # fmt: skip
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, name)
    assert cs.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), "cell state must be fp32/fp64"


@pytest.mark.parametrize(
    "given", [("dy",), ("dh_n",), ("dc_n",), ("dy", "dc_n"), ()], ids=lambda g: "+".join(g) or "none"
)
def test_none_upstream_gradients(given):
    """A missing upstream gradient (e.g. only h_n is used) counts as zeros."""
    inp = _layer_inputs(3, 2, 3, 5, torch.float64)
    y, h_n, c_n, gates, cs = lstm_layer_forward(**inp)
    ups = {name: (torch.randn_like(t) if name in given else None) for name, t in zip(("dy", "dh_n", "dc_n"), (y, h_n, c_n))}
    grads = lstm_layer_backward(*ups.values(), inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], y, gates, cs)
    if not given:
        for g in grads:
            assert torch.equal(g, torch.zeros_like(g))
        return
    _, rg = _reference_grads(inp, False, *ups.values())
    for name, g in zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih"), grads):
        assert_close(g, rg[name], torch.float64, name)


def test_needs_selects_gradients():
    inp = _layer_inputs(3, 2, 3, 5, torch.float32, bias=False)
    y, h_n, c_n, gates, cs = lstm_layer_forward(**inp)
    args = (torch.randn_like(y), None, None, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], y, gates, cs)
    full = lstm_layer_backward(*args)
    for k in range(6):
        needs = tuple(i == k for i in range(6))
        part = lstm_layer_backward(*args, needs=needs)
        assert all(p is None for i, p in enumerate(part) if i != k)
        assert torch.equal(part[k], full[k])


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_inference_path_matches_training_path(reverse):
    """Without storage for the backward the kernel keeps two cell buffers; results must not change."""
    inp = _layer_inputs(5, 3, 4, 6, torch.float32)
    y, h_n, c_n, _, _ = lstm_layer_forward(**{k: (v.clone() if v is not None else None) for k, v in inp.items()}, reverse=reverse)
    y2, h2, c2, gates, cs = lstm_layer_forward(**inp, reverse=reverse, store_for_backward=False)
    assert gates is None and cs is None
    for a, b in ((y, y2), (h_n, h2), (c_n, c2)):
        assert torch.equal(a, b)


def test_batch_zero():
    inp = _layer_inputs(3, 0, 4, 5, torch.float32)
    y, h_n, c_n, gates, cs = lstm_layer_forward(**inp)
    assert y.shape == (3, 0, 5) and h_n.shape == (0, 5) and c_n.shape == (0, 5)
    grads = lstm_layer_backward(torch.zeros_like(y), None, None, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], y, gates, cs)
    assert grads[0].shape == (3, 0, 4)
    for g in grads[3:]:
        assert torch.equal(g, torch.zeros_like(g))


def test_interleave_roundtrip_and_layout():
    H = 3
    w = torch.arange(4 * H * 2, dtype=torch.float32).view(4 * H, 2)
    r = interleave_gates(w)
    for j in range(H):
        for k in range(4):
            assert torch.equal(r[4 * j + k], w[k * H + j])
    assert torch.equal(deinterleave_gates(r), w)
    b = torch.arange(4 * H, dtype=torch.float32)
    assert torch.equal(deinterleave_gates(interleave_gates(b)), b)


@pytest.mark.parametrize("B, H, K", [(1, 1, 1), (3, 5, 20), (1000, 1024, 4096)])
def test_step_config_respects_dot_minimum(B, H, K):
    cfg = step_config(B, H, K)
    assert cfg["BLOCK_B"] >= 16 and 4 * cfg["BLOCK_H"] >= 16 and cfg["BLOCK_K"] >= 16


def test_config_below_dot_minimum_is_rejected():
    inp = _layer_inputs(2, 2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="tl.dot needs every tile dimension >= 16"):
        lstm_layer_forward(**inp, config={"BLOCK_B": 8, "BLOCK_H": 4, "BLOCK_K": 16, "num_warps": 4})
