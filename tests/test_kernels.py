"""Launcher level: one layer and direction on the Triton kernels against the plain PyTorch step loop.

The launchers run where the kernels can (TRITON_DEVICE: CUDA tensors on a GPU, CPU tensors under the interpreter);
tests that launch kernels skip elsewhere, with the reason. Compiled-variant counts, the device guard on a CPU and
register spills are checked in tests/test_step_compile.py (compile-only, no GPU needed).
"""

from __future__ import annotations

import pytest
import torch

import tritonlstm
from tests.helpers import CPU_DTYPES, HAS_CUDA, TRITON_DEVICE, assert_close, requires_triton, run_and_grad
from tests.helpers import step_backward, step_forward
from tritonlstm import reference
from tritonlstm.kernels import deinterleave_gates, interleave_gates, step_config

DEVICE = TRITON_DEVICE or "cpu"  # where the kernels run; "cpu" for the tests that never launch one
requires_two_gpus = pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")

# tiles far smaller than the problem, so several programs cover batch and hidden units in every step
SMALL_TILES = {"BLOCK_B": 16, "BLOCK_H": 4, "BLOCK_K": 16, "num_warps": 4}


def _layer_inputs(T, B, I, H, dtype, bias=True, P=0):
    def r(*shape):
        return (torch.randn(*shape, device=DEVICE, dtype=torch.float64) * 0.5).to(dtype)

    R = P or H
    return {
        "x": r(T, B, I),
        "h0": r(B, R),
        "c0": r(B, H),
        "w_ih": r(4 * H, I),
        "w_hh": r(4 * H, R),
        "b_ih": r(4 * H) if bias else None,
        "b_hh": r(4 * H) if bias else None,
        "w_hr": r(P, H) if P else None,
    }


def _backward(inp, y, gates, cs, ups, **kwargs):
    return step_backward(
        *ups, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], y, gates, cs, inp["w_hr"], **kwargs
    )


def _reference_grads(inp, reverse, dy, dh_n, dc_n, lengths=None):
    """Outputs and gradients of the float64 reference loop for the given upstream gradients."""
    leaves = {k: (v.to(torch.float64).requires_grad_() if v is not None else None) for k, v in inp.items()}
    y, h_n, c_n = reference.lstm_layer(*leaves.values(), lengths=lengths, reverse=reverse)
    outs, grads = [], []
    for o, g in ((y, dy), (h_n, dh_n), (c_n, dc_n)):
        if g is not None:
            outs.append(o)
            grads.append(g.to(torch.float64))
    torch.autograd.backward(outs, grads)
    return (y, h_n, c_n), {k: (v.grad if v is not None else None) for k, v in leaves.items()}


GRAD_NAMES = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db", "dw_hr")
REF_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "w_hr")


def _check_layer(inp, dtype, reverse, config, lengths=None):
    """Forward and backward on the launchers against the float64 reference loop, every output and gradient."""
    y, h_n, c_n, gates, cs = step_forward(**inp, lengths=lengths, reverse=reverse, config=config)
    dy, dh_n, dc_n = (torch.randn_like(t) for t in (y, h_n, c_n))
    grads = _backward(inp, y, gates, cs, (dy, dh_n, dc_n), lengths=lengths, reverse=reverse, config=config)
    (ry, rh, rc), rg = _reference_grads(inp, reverse, dy, dh_n, dc_n, lengths)
    pairs = [("y", y, ry), ("h_n", h_n, rh), ("c_n", c_n, rc)]
    pairs += [(n, g, rg[r]) for n, g, r in zip(GRAD_NAMES, grads, REF_NAMES) if inp[r] is not None]
    pairs += [("db_hh", grads[5], rg["b_hh"])] if inp["b_hh"] is not None else []
    for name, a, e in pairs:
        assert a is not None, name
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, name)
    if inp["w_hr"] is None:
        assert grads[6] is None
    assert cs.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), "cell state must be fp32/fp64"


@requires_triton
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
    _check_layer(_layer_inputs(T, B, I, H, dtype), dtype, reverse, config)


# with a projection a program holds whole rows of h_t and loops over hidden-unit tiles of 16
PROJ_TILES = {"BLOCK_B": 16, "BLOCK_H": 16, "BLOCK_K": 16, "BLOCK_P": 16, "num_warps": 4}


@requires_triton
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "T, B, I, H, P, bias, config",
    [
        pytest.param(4, 3, 5, 7, 3, True, None, id="T4-B3-I5-H7-P3-default"),
        pytest.param(3, 20, 4, 37, 11, False, PROJ_TILES, id="T3-B20-I4-H37-P11-nobias-tiled"),
        pytest.param(1, 2, 3, 6, 1, True, None, id="T1-B2-H6-P1"),
    ],
)
def test_projected_layer_matches_reference(T, B, I, H, P, bias, config, reverse, dtype):
    _check_layer(_layer_inputs(T, B, I, H, dtype, bias=bias, P=P), dtype, reverse, config)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "P, config", [pytest.param(0, SMALL_TILES, id="plain-tiled"), pytest.param(3, None, id="proj")]
)
def test_lengths_match_reference(P, config, reverse, dtype):
    """Rows stop at their own length: zeros past it, final states from their last step, gradients carried."""
    T, B = 5, 19
    lengths = torch.randint(1, T + 1, (B,), device=DEVICE)
    lengths[:3] = torch.tensor([1, T, 2])
    _check_layer(_layer_inputs(T, B, 4, 6, dtype, P=P), dtype, reverse, config, lengths)


@requires_triton
def test_full_lengths_equal_no_lengths():
    """lengths == T everywhere must give bitwise the same numbers as no lengths at all (both directions)."""
    inp = _layer_inputs(4, 3, 5, 6, torch.float32)
    for reverse in (False, True):
        a = step_forward(**inp, reverse=reverse)
        b = step_forward(**inp, lengths=torch.full((3,), 4, device=DEVICE), reverse=reverse)
        for x, z in zip(a, b):
            assert torch.equal(x, z)
        ups = [torch.randn_like(t) for t in a[:3]]
        ga = _backward(inp, a[0], a[3], a[4], ups, reverse=reverse)
        gb = _backward(inp, b[0], b[3], b[4], ups, reverse=reverse, lengths=torch.full((3,), 4, device=DEVICE))
        for name, x, z in zip(GRAD_NAMES[:6], ga, gb):
            assert torch.equal(x, z), name


@requires_triton
@pytest.mark.parametrize(
    "given", [("dy",), ("dh_n",), ("dc_n",), ("dy", "dc_n"), ()], ids=lambda g: "+".join(g) or "none"
)
def test_none_upstream_gradients(given):
    """A missing upstream gradient (e.g. only h_n is used) counts as zeros."""
    inp = _layer_inputs(3, 2, 3, 5, torch.float64)
    y, h_n, c_n, gates, cs = step_forward(**inp)
    ups = {name: (torch.randn_like(t) if name in given else None) for name, t in zip(("dy", "dh_n", "dc_n"), (y, h_n, c_n))}
    grads = _backward(inp, y, gates, cs, ups.values())
    assert grads[6] is None  # no projection
    if not given:
        for g in grads[:6]:
            assert torch.equal(g, torch.zeros_like(g))
        return
    _, rg = _reference_grads(inp, False, *ups.values())
    for name, g in zip(REF_NAMES[:6], grads):
        assert_close(g, rg[name], torch.float64, name)


@requires_triton
def test_needs_selects_gradients():
    inp = _layer_inputs(3, 2, 3, 5, torch.float32, bias=True, P=2)
    y, h_n, c_n, gates, cs = step_forward(**inp)
    ups = (torch.randn_like(y), None, None)
    full = _backward(inp, y, gates, cs, ups)
    for k in range(7):
        needs = tuple(i == k for i in range(7))
        part = _backward(inp, y, gates, cs, ups, needs=needs)
        assert all(p is None for i, p in enumerate(part) if i != k)
        assert torch.equal(part[k], full[k])


@requires_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_inference_path_matches_training_path(reverse):
    """Without storage for the backward the kernel keeps two cell buffers; results must not change."""
    inp = _layer_inputs(5, 3, 4, 6, torch.float32)
    y, h_n, c_n, _, _ = step_forward(**{k: (v.clone() if v is not None else None) for k, v in inp.items()}, reverse=reverse)
    y2, h2, c2, gates, cs = step_forward(**inp, reverse=reverse, store_for_backward=False)
    assert gates is None and cs is None
    for a, b in ((y, y2), (h_n, h2), (c_n, c2)):
        assert torch.equal(a, b)


def test_batch_zero():
    """No step to run: no launch, so this passes wherever torch runs."""
    inp = _layer_inputs(3, 0, 4, 5, torch.float32)
    y, h_n, c_n, gates, cs = step_forward(**inp)
    assert y.shape == (3, 0, 5) and h_n.shape == (0, 5) and c_n.shape == (0, 5)
    grads = _backward(inp, y, gates, cs, (torch.zeros_like(y), None, None))
    assert grads[0].shape == (3, 0, 4)
    for g in grads[3:6]:
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
    # along another dim (the sequence kernels' [D, 4H, ...] weights): each direction as above
    wd = torch.stack([w, w + 100])
    assert torch.equal(interleave_gates(wd, 1), torch.stack([r, r + 100]))
    assert torch.equal(deinterleave_gates(interleave_gates(wd, 1), 1), wd)


def test_gate_rows_are_not_kept_from_a_graph_capture(monkeypatch):
    """The re-layout index is kept per (H, device), but not when made during CUDA-graph capture (its values
    would exist only inside the graph)."""
    from tritonlstm.kernels import common

    monkeypatch.setattr(common, "_GATE_ROWS", {})
    monkeypatch.setattr(common, "capturing", lambda device: True)
    rows = common._gate_rows(3, torch.device("cpu"), False)
    assert rows.tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11] and not common._GATE_ROWS
    monkeypatch.setattr(common, "capturing", lambda device: False)
    assert common._gate_rows(3, torch.device("cpu"), False).tolist() == rows.tolist()
    assert list(common._GATE_ROWS) == [(3, "cpu", False)]


@pytest.mark.parametrize("P", [0, 1, 100])
@pytest.mark.parametrize("B, H, K", [(1, 1, 1), (3, 5, 20), (1000, 1024, 4096)])
def test_step_config_respects_dot_minimum(B, H, K, P):
    cfg = step_config(B, H, K, proj_size=min(P, H))
    assert cfg["BLOCK_B"] >= 16 and 4 * cfg["BLOCK_H"] >= 16 and cfg["BLOCK_K"] >= 16
    if P:
        assert cfg["BLOCK_H"] >= 16 and cfg["BLOCK_P"] >= max(16, min(P, H))


def test_config_below_dot_minimum_is_rejected():
    inp = _layer_inputs(2, 2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="tl.dot needs every tile dimension >= 16"):
        step_forward(**inp, config={"BLOCK_B": 8, "BLOCK_H": 4, "BLOCK_K": 16, "num_warps": 4})
    inp = _layer_inputs(2, 2, 3, 8, torch.float32, P=20)
    with pytest.raises(ValueError, match="BLOCK_P"):
        step_forward(**inp, config=PROJ_TILES)


@pytest.mark.gpu
@requires_two_gpus
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_second_gpu_matches_nn_lstm(dtype):
    """Tensors on cuda:1 while cuda:0 is current, on a side stream: the launches must follow the tensors."""
    kwargs = dict(input_size=5, hidden_size=33, num_layers=2, bidirectional=True)
    ref = torch.nn.LSTM(**kwargs).to(torch.float64)  # the oracle, on the CPU
    ours = tritonlstm.LSTM(**kwargs, backend="triton").to(device="cuda:1", dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    expected = run_and_grad(ref, x)
    torch.cuda.set_device(0)
    stream = torch.cuda.Stream(device="cuda:1")
    with torch.cuda.stream(stream):
        actual = run_and_grad(ours, x.to(device="cuda:1", dtype=dtype))
    stream.synchronize()
    assert torch.cuda.current_device() == 0
    for name in expected:
        assert actual[name].device == torch.device("cuda", 1), name
        assert_close(actual[name].cpu(), expected[name], dtype, name)


def test_kernels_import_nothing_from_the_rest_of_tritonlstm():
    """kernels/ stands alone (its own package, tritonlstm.kernels): every import of tritonlstm inside it, at any
    depth, names a tritonlstm.kernels module."""
    import ast
    from pathlib import Path

    folder = Path(__file__).parents[1] / "kernels"
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [(path.name, n) for n in names if n.startswith("tritonlstm")]
    assert found, "the scan must see the kernels' own imports"
    assert all(n.startswith("tritonlstm.kernels") for _, n in found), [f for f in found if "kernels" not in f[1]]
