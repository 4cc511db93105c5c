"""The compiler stack: torch.library custom ops, torch.compile(fullgraph=True), torch.export, autocast, CUDA graphs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.export import Dim

import tritonlstm
from tests.helpers import BACKENDS, DEVICE, INTERPRETER, assert_close, requires_gpu, weighted_loss
from tritonlstm import ops
from tritonlstm.kernels.runtime import CACHE_TAGS, tag_compile_caches


def _layer_args(T=3, B=2, I=3, H=4, P=0, D=1, lengths=None, store=True, dtype=torch.float64, backend="auto"):
    def r(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=dtype, requires_grad=store)

    R = P or H
    return (r(T, B, I), r(D, B, R), r(D, B, H), r(D, 4 * H, I), r(D, 4 * H, R), r(D, 4 * H), r(D, 4 * H),
            r(D, P, H) if P else None, lengths, False, store, backend)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="plain"),
        pytest.param({"P": 2}, id="proj"),
        pytest.param({"D": 2, "P": 2}, id="bidirectional-proj"),
        pytest.param({"lengths": torch.tensor([3, 1])}, id="lengths"),
        pytest.param({"store": False}, id="inference"),
    ],
)
def test_opcheck_layer_forward(kwargs, backend):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the custom op."""
    torch.library.opcheck(torch.ops.tritonlstm.layer_forward.default, _layer_args(**kwargs, backend=backend))


class Forecaster(torch.nn.Module):
    """An LSTM with a Linear head, as users hold it."""

    def __init__(self, proj_size=0, cell=False):
        super().__init__()
        self.lstm = tritonlstm.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=proj_size)
        self.cell = tritonlstm.LSTMCell(4, 5) if cell else None
        self.head = torch.nn.Linear(2 * (proj_size or 6), 1)

    def forward(self, x, lengths=None):
        y, (h, c) = self.lstm(x, lengths=lengths)
        out = self.head(y).squeeze(-1)
        if self.cell is not None:
            hc = self.cell(x[:, 0])
            for t in range(1, 3):
                hc = self.cell(x[:, t], hc)
            out = out + hc[0].sum(-1, keepdim=True)
        return out, h, c


def _outputs_and_grads(model, x, lengths=None):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out, h, c = model(x, lengths)
    weighted_loss(out, h, c).backward()
    return [out.detach(), h.detach(), c.detach(), x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize(
    "backend, kwargs, use_lengths",
    [
        pytest.param("aot_eager", {}, False, id="aot_eager-plain"),
        pytest.param("aot_eager", {"proj_size": 3}, True, id="aot_eager-proj-lengths"),
        pytest.param("aot_eager", {"cell": True}, False, id="aot_eager-cell"),
        pytest.param("inductor", {"proj_size": 3, "cell": True}, True, id="inductor-proj-cell-lengths"),
    ],
)
def test_compile_fullgraph_matches_eager(backend, kwargs, use_lengths):
    """No graph break (fullgraph=True), and forward and backward equal to eager."""
    torch._dynamo.reset()
    model = Forecaster(**kwargs).to(DEVICE, torch.float32)
    x = torch.randn(3, 5, 4, device=DEVICE)
    lengths = torch.tensor([5, 2, 4]) if use_lengths else None
    eager = _outputs_and_grads(model, x, lengths)
    compiled = _outputs_and_grads(torch.compile(model, fullgraph=True, backend=backend), x, lengths)
    for i, (a, e) in enumerate(zip(compiled, eager)):
        assert_close(a, e, torch.float32, f"compiled result {i}")


_TRAIN_COMPILED = """
import torch, tritonlstm
torch.manual_seed(0)
model = tritonlstm.LSTM(2, 3)
x = torch.randn(2, 2, 2, requires_grad=True)
y, _ = torch.compile(model, fullgraph=True, backend="inductor")(x)
y.sum().backward()
print(torch.compiler.config.cache_key_tag or "-", float(x.grad.abs().sum()))
"""


@pytest.mark.skipif(INTERPRETER, reason="runs both CPU conditions itself, in two processes")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the two CPU conditions: the GPU machine runs CUDA tensors")
def test_compile_caches_of_the_two_cpu_conditions_stay_apart(tmp_path):
    """A graph compiled under the interpreter (Triton kernels: gates saved for the backward) and the same graph
    without it (the reference: nothing saved) share torch's on-disk caches unless tritonlstm tags the key; reusing
    the other condition's entry failed in inductor ("mismatch in length of strides and shape"). The first process
    strips the tag, as tritonlstm did before it tagged the plain condition too: CI's machine kept such an entry
    from an earlier run, and the plain condition reused it."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    # after tritonlstm and its kernels have imported (each tags it)
    strip = "import tritonlstm.dispatch\ntritonlstm.dispatch.kernels()\ntorch.compiler.config.cache_key_tag = ''\n"
    untagged = _TRAIN_COMPILED.replace("torch.manual_seed(0)", strip + "torch.manual_seed(0)")
    grads = []
    for interpret, source, expected_tag in (("1", untagged, "-"), ("0", _TRAIN_COMPILED, CACHE_TAGS[False])):
        done = subprocess.run(
            [sys.executable, "-c", source], env={**env, "TRITON_INTERPRET": interpret},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"TRITON_INTERPRET={interpret}:\n{done.stderr[-3000:]}"
        tag, grad = done.stdout.split()[-2:]
        assert tag == expected_tag, (interpret, tag)
        grads.append(float(grad))
    assert max(grads) - min(grads) < 1e-5 * max(1.0, abs(grads[-1])), grads


def test_compile_cache_key_carries_the_tag_of_this_condition():
    """Set when tritonlstm and its kernels import (this module imports both); a tag of the user's own is kept."""
    expected = CACHE_TAGS[INTERPRETER]
    assert torch.compiler.config.cache_key_tag.split(":")[-1] == expected
    with torch.compiler.config.patch(cache_key_tag=f"mine:{CACHE_TAGS[not INTERPRETER]}"):
        tag_compile_caches()
        assert torch.compiler.config.cache_key_tag == f"mine:{expected}"


@pytest.mark.parametrize(
    "kwargs, use_lengths",
    [pytest.param({}, False, id="plain"), pytest.param({"proj_size": 3}, False, id="proj"), pytest.param({}, True, id="lengths")],
)
def test_export_dynamic_batch_and_time(kwargs, use_lengths):
    """One exported program serves other batch sizes and sequence lengths, matching eager."""
    model = Forecaster(**kwargs).to(DEVICE).eval()
    B, T = Dim("B", min=1, max=1024), Dim("T", min=1, max=4096)
    x = torch.randn(3, 5, 4, device=DEVICE)
    if use_lengths:
        args, dynamic = (x, torch.tensor([5, 2, 4], device=DEVICE)), {"x": {0: B, 1: T}, "lengths": {0: B}}
    else:
        args, dynamic = (x,), {"x": {0: B, 1: T}}
    program = torch.export.export(model, args, dynamic_shapes=dynamic)
    for b, t in ((3, 5), (7, 2), (1, 9), (2, 1)):
        xx = torch.randn(b, t, 4, device=DEVICE)
        call = (xx, torch.randint(1, t + 1, (b,), device=DEVICE)) if use_lengths else (xx,)
        for i, (a, e) in enumerate(zip(program.module()(*call), model(*call))):
            assert_close(a, e, torch.float32, f"exported result {i} at B={b}, T={t}")


def test_autocast_runs_in_autocast_dtype_with_fp32_master_weights():
    """Under autocast the layer computes in the autocast dtype; gradients reach fp32 weights in fp32."""
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter cannot run bf16 dots
    model = tritonlstm.LSTM(4, 6, num_layers=2, bidirectional=True).to(DEVICE)
    low = tritonlstm.LSTM(4, 6, num_layers=2, bidirectional=True).to(DEVICE, dtype)
    low.load_state_dict(model.state_dict())
    x = torch.randn(5, 3, 4, device=DEVICE)
    with torch.autocast(device_type, dtype=dtype):
        y, (h, c) = model(x)
    assert y.dtype == h.dtype == c.dtype == dtype
    weighted_loss(y, h, c).backward()
    y2, (h2, c2) = low(x.to(dtype))
    weighted_loss(y2, h2, c2).backward()
    assert torch.equal(y, y2) and torch.equal(c, c2), "autocast must compute what the same module in that dtype does"
    for p, q in zip(model.parameters(), low.parameters()):
        assert p.grad.dtype == torch.float32
        assert torch.equal(p.grad, q.grad.float())
    cell = tritonlstm.LSTMCell(4, 6).to(DEVICE)
    with torch.autocast(device_type, dtype=dtype):
        assert all(t.dtype == dtype for t in cell(x[0]))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("use_lengths", [False, True], ids=["plain", "lengths"])
def test_cuda_graph_captures_a_training_step(use_lengths):
    """Forward, loss and backward captured in one CUDA graph; replays on new data equal eager steps."""
    model = tritonlstm.LSTM(32, 64, num_layers=2, bidirectional=True, batch_first=True).cuda()
    x = torch.randn(8, 20, 32, device="cuda")
    lengths = torch.randint(1, 21, (8,), device="cuda") if use_lengths else None

    def step():
        model.zero_grad(set_to_none=False)
        y, (h, c) = model(x, lengths=lengths)
        (y.square().mean() + h.sum() + c.sum()).backward()
        return y

    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = step()
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        grads = [p.grad.clone() for p in model.parameters()]
        y_eager = step()
        assert_close(y_static, y_eager, torch.float32, "graph output")
        for g, p in zip(grads, model.parameters()):
            assert_close(g, p.grad, torch.float32, "graph gradient")


@pytest.mark.gpu
@requires_gpu
def test_compile_reduce_overhead_on_gpu():
    torch._dynamo.reset()
    model = Forecaster(proj_size=3).cuda()
    x = torch.randn(4, 16, 4, device="cuda")
    eager = _outputs_and_grads(model, x)
    compiled_model = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        compiled = _outputs_and_grads(compiled_model, x)
    for i, (a, e) in enumerate(zip(compiled, eager)):
        assert_close(a, e, torch.float32, f"reduce-overhead result {i}")


def test_ops_module_exports_the_registered_ops():
    assert ops.layer_forward._qualname == "tritonlstm::layer_forward"
    assert hasattr(torch.ops.tritonlstm, "layer_backward")


def test_packed_input_compiles_with_graph_breaks():
    """PackedSequence needs the batch sizes on the host: it compiles (not fullgraph) and matches eager."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch._dynamo.reset()
    lstm = tritonlstm.LSTM(4, 6, bidirectional=True, batch_first=True).to(DEVICE)
    x, lengths = torch.randn(3, 5, 4, device=DEVICE), torch.tensor([5, 2, 3])

    def run(x):
        out, (h, c) = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return out.data, h, c

    for a, e in zip(torch.compile(run, backend="aot_eager")(x), run(x)):
        assert_close(a, e, torch.float32, "packed under compile")
