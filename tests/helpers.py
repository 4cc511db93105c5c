"""Shared test helpers: markers, nn.LSTM comparisons, gradchecks. The per-dtype tolerances live in one place,
:mod:`tritonlstm.testing`, which the benchmarks' correctness gate uses too."""

from __future__ import annotations

import os

import pytest
import torch

import tritonlstm
from tritonlstm.testing import TOLERANCES, Tol, assert_close  # noqa: F401  (the tests import them from here)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_CUDA = torch.cuda.is_available()
# what the Triton kernels can run on here: CUDA tensors on a GPU machine, CPU tensors under Triton's interpreter
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = "cuda" if HAS_CUDA else ("cpu" if INTERPRETER else None)

requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
requires_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="runs the Triton kernels on CPU tensors: needs TRITON_INTERPRET=1 (CI's interpreter leg)"
)
requires_triton = pytest.mark.skipif(
    TRITON_DEVICE is None, reason="needs the Triton kernels: a CUDA GPU, or TRITON_INTERPRET=1 on a CPU"
)
# both implementations behind the op, for tests that check each one against an oracle
BACKENDS = ["reference", pytest.param("triton", marks=requires_triton)]


def backend_device(backend: str) -> str:
    """Where a test of ``backend`` puts its tensors: the kernels' device for "triton", else the CPU."""
    return TRITON_DEVICE if backend == "triton" else "cpu"


# float64 gradchecks: finite differences of step eps against autograd
GRADCHECK_TOL = {"eps": 1e-6, "atol": 1e-7, "rtol": 1e-5}
# the interpreter runs fp16 fine but bf16 tl.dot wrongly: bf16 is a GPU-only dtype in the tests
CPU_DTYPES = [torch.float64, torch.float32, torch.float16]


def make_pair(dtype: torch.dtype = torch.float32, backend: str = "auto", **kwargs):
    """An nn.LSTM in float64 (the oracle) and a tritonlstm.LSTM of `dtype` holding the same weights."""
    ref = torch.nn.LSTM(**kwargs).to(device=DEVICE, dtype=torch.float64)
    ours = tritonlstm.LSTM(**kwargs, backend=backend).to(device=DEVICE, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # the oracle sees exactly the weights `ours` rounded to `dtype`
    return ref, ours


def weighted_loss(y: torch.Tensor, h: torch.Tensor, c: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A loss that reaches every element of every output with a distinct weight (so no gradient is trivial)."""
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for t in (y, h, c):
        w = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)
        loss = loss + (t.to(torch.float64) * w).sum()
    return loss


def run_and_grad(module, x, hx=None):
    """Forward, weighted loss over output and final states, backward. Returns outputs and grads by name.

    The inputs go to the module's device first (make_pair puts modules on DEVICE, tests often build CPU inputs)."""
    device = next(module.parameters()).device
    x = x.detach().to(device, copy=True).requires_grad_(True)
    if hx is not None:
        hx = tuple(t.detach().to(device, copy=True).requires_grad_(True) for t in hx)
    y, (h, c) = module(x, hx)
    module.zero_grad(set_to_none=True)
    weighted_loss(y, h, c).backward()
    out = {"output": y.detach(), "h_n": h.detach(), "c_n": c.detach(), "grad_input": x.grad}
    if hx is not None:
        out["grad_h0"], out["grad_c0"] = hx[0].grad, hx[1].grad
    for name, p in module.named_parameters():
        out[f"grad_{name}"] = p.grad
    return out


def compare_with_nn_lstm(ref, ours, x, hx=None, dtype=torch.float32):
    """Run both modules on the same inputs (rounded to `dtype`) and assert every output and gradient agrees."""
    x = x.to(dtype)
    hx = None if hx is None else tuple(t.to(dtype) for t in hx)
    expected = run_and_grad(ref, x.to(torch.float64), None if hx is None else tuple(t.to(torch.float64) for t in hx))
    actual = run_and_grad(ours, x.to(dtype), None if hx is None else tuple(t.to(dtype) for t in hx))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert actual[name] is not None, f"{name}: no gradient"
        assert actual[name].dtype == dtype, f"{name}: dtype {actual[name].dtype}"
        assert_close(actual[name], expected[name], dtype, name)


def gradcheck_flat(f, inputs, fast_mode: bool = True) -> bool:
    """float64 gradcheck of ``f(*inputs)`` through one flat leaf that holds every tensor input (``None`` passes).

    Fast mode perturbs each input along one random direction, two forwards per input; over one leaf that is two
    forwards in all, which keeps the kernels' gradchecks short in the interpreter. The inputs reach ``f`` as views
    at offsets into that leaf, which the kernels must handle too.
    """
    tensors = [t for t in inputs if t is not None]
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]).requires_grad_()

    def on_views(v):
        parts = iter(v.split([t.numel() for t in tensors]))
        return f(*[None if t is None else next(parts).view(t.shape) for t in inputs])

    return torch.autograd.gradcheck(on_views, (flat,), fast_mode=fast_mode, **GRADCHECK_TOL)


def one_direction(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None, reverse=False):
    """One direction's unstacked tensors as the launchers' bundle (its parameters and states stacked, D = 1)."""
    from tritonlstm.kernels.common import Layer

    def one(t):
        return t.unsqueeze(0) if t is not None else None

    return Layer(x, one(h0), one(c0), one(w_ih), one(w_hh), one(b_ih), one(b_hh), one(w_hr), lengths, (reverse,))


def step_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None, reverse=False,
                 store_for_backward=True, config=None, regs=None):  # fmt: skip
    """The per-step launcher on one direction: ``(y [T,B,R], h_n [B,R], c_n [B,H], gates [T,B,G], cs [T,B,H])``."""
    from tritonlstm.kernels import step
    from tritonlstm.kernels.common import NONE

    layer = one_direction(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    y, h_n, c_n, gates, cs = step.forward(layer, regs or NONE, store_for_backward, config)
    return y, h_n[0], c_n[0], gates[0] if gates is not None else None, cs[0] if cs is not None else None


def step_backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, y, gates, cs, w_hr=None, lengths=None, reverse=False,
                  needs=(True,) * 7, config=None, regs=None):  # fmt: skip
    """The per-step launcher's gradients of one direction: ``(dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr)`` unstacked."""
    from tritonlstm.kernels import step
    from tritonlstm.kernels.common import NONE, GradOutputs, Needs, Saved

    layer = one_direction(x, h0, c0, w_ih, w_hh, None, None, w_hr, lengths, reverse)
    one = [t.unsqueeze(0) if t is not None else None for t in (dh_n, dc_n, gates, cs)]
    grads = step.backward(
        layer, regs or NONE, Saved(y, one[2], one[3]), GradOutputs(dy, one[0], one[1]), Needs(*needs), config
    )
    return (grads.dx, *(g[0] if g is not None else None for g in grads[1:]))
