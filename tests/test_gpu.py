"""GPU-only: the compiled kernels (not the interpreter) on CUDA tensors, in float32, float16 and bfloat16.

Needs a CUDA GPU; skipped, with that reason, everywhere else (with or without TRITON_INTERPRET). Run them on a GPU
with `bash benchmarks/gpu_run.sh tests` (benchmarks/gpu/tests.sh), which runs these first.

The oracle is nn.LSTM / nn.LSTMCell in float64 on the same (rounded) weights and inputs, with the tolerances of
tests/helpers.py. float32 is compared exactly: every test here runs with TF32 off for cuBLAS and cuDNN (cuDNN's
float32 RNN defaults to TF32, `torch.backends.cudnn.rnn.fp32_precision == "tf32"`), and each test ends with a
device synchronisation, so an asynchronous kernel fault is reported by the test that caused it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import tritonlstm
from tests.helpers import assert_close, compare_with_nn_lstm, make_pair, requires_gpu, run_and_grad, weighted_loss

pytestmark = [pytest.mark.gpu, requires_gpu]

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def exact_float32_and_synchronised():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the legacy switches only:
    try:  # the per-operator flags (cudnn.rnn.fp32_precision) follow them, and torch never sees both APIs mixed
        yield
        torch.cuda.synchronize()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_gpu_float32_comparisons_are_exact():
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.rnn.fp32_precision != "tf32"


def _packed_oracle(ref, x, lengths, batch_first=True):
    """Packed nn.LSTM (float64) on a padded batch: (padded output, h_n, c_n)."""
    T = x.size(1) if batch_first else x.size(0)
    with torch.no_grad():
        packed = pack_padded_sequence(x.to(torch.float64), lengths.cpu(), batch_first=batch_first, enforce_sorted=False)
        y, (h, c) = ref(packed)
    return pad_packed_sequence(y, batch_first=batch_first, total_length=T)[0], h, c


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize(
    "cfg, T, B",
    [
        pytest.param(dict(input_size=64, hidden_size=256, num_layers=2, bidirectional=True, batch_first=True), 32, 16, id="L2-bi-H256"),
        pytest.param(dict(input_size=128, hidden_size=768), 64, 16, id="L1-H768-B16"),
        pytest.param(dict(input_size=100, hidden_size=300, num_layers=3, bias=False), 17, 70, id="L3-H300-B70-odd"),
        pytest.param(dict(input_size=5, hidden_size=33, bidirectional=True), 9, 1, id="L1-bi-H33-B1"),
        pytest.param(dict(input_size=64, hidden_size=256, proj_size=64, num_layers=2, bidirectional=True), 24, 16, id="L2-bi-H256-P64"),
        pytest.param(dict(input_size=40, hidden_size=200, proj_size=100, batch_first=True), 11, 37, id="L1-bf-H200-P100-odd"),
    ],
)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_gpu_matches_nn_lstm(cfg, T, B, dtype, with_hx):
    ref, ours = make_pair(dtype, **cfg)
    shape = (B, T, cfg["input_size"]) if cfg.get("batch_first") else (T, B, cfg["input_size"])
    layers = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    hx = None
    if with_hx:
        h_size = cfg.get("proj_size") or cfg["hidden_size"]
        hx = (
            torch.randn(layers, B, h_size, device="cuda", dtype=torch.float64),
            torch.randn(layers, B, cfg["hidden_size"], device="cuda", dtype=torch.float64),
        )
    compare_with_nn_lstm(ref, ours, torch.randn(shape, device="cuda", dtype=torch.float64), hx, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B, H, bidirectional", [(64, 768, False), (256, 1024, False), (128, 1024, True)])
def test_gpu_tile_regime_matches_nn_lstm(B, H, bidirectional, dtype):
    """The large-batch tile regime (many unit programs meeting through per-producer flags, which the interpreter
    cannot run) against nn.LSTM in float64, forward and every gradient, plain and with lengths."""
    ref, ours = make_pair(dtype, input_size=64, hidden_size=H, bidirectional=bidirectional)
    plan = tritonlstm.explain(ours, torch.empty(12, B, 64, device="cuda", dtype=dtype))
    assert plan.count("tile regime") == 2, plan
    x = torch.randn(12, B, 64, device="cuda", dtype=torch.float64).to(dtype)
    compare_with_nn_lstm(ref, ours, x.double(), None, dtype)
    lengths = torch.randint(1, 13, (B,), device="cuda")
    want_y, want_h, want_c = _packed_oracle(ref, x, lengths, batch_first=False)
    with torch.no_grad():
        y, (h, c) = ours(x, lengths=lengths)
    for name, a, e in (("y", y, want_y), ("h_n", h, want_h), ("c_n", c, want_c)):
        assert_close(a, e, dtype, f"tile with lengths: {name}")


@pytest.mark.parametrize("regime", ["tile", "split-flags"])  # (never run on a GPU yet)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_new_regimes_pass_their_self_tests(regime, dtype):
    from tritonlstm.kernels import selftest

    assert selftest.self_test("cuda", dtype, regime) is None


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_deterministic(dtype):
    m = tritonlstm.LSTM(64, 256, num_layers=2, bidirectional=True, backend="triton").to("cuda", dtype)
    x = torch.randn(50, 32, 64, device="cuda", dtype=dtype)
    a, b = run_and_grad(m, x), run_and_grad(m, x)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_gpu_auto_backend_is_triton():
    assert tritonlstm.resolve_backend("auto", torch.device("cuda"), torch.bfloat16) == "triton"


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("proj_size", [0, 48], ids=["plain", "proj"])
def test_gpu_lengths_match_packed_nn_lstm(dtype, proj_size):
    cfg = dict(input_size=32, hidden_size=128, proj_size=proj_size, num_layers=2, bidirectional=True, batch_first=True)
    ref, ours = make_pair(dtype, **cfg)
    B, T = 24, 40
    lengths = torch.randint(1, T + 1, (B,))
    x = torch.randn(B, T, 32, device="cuda", dtype=torch.float64).to(dtype)
    expected = _packed_oracle(ref, x, lengths)
    out, (h, c) = ours(x, lengths=lengths)
    for name, a, e in zip(("output", "h_n", "c_n"), (out, h, c), expected):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_lstm_cell(dtype):
    ref = torch.nn.LSTMCell(48, 96).to("cuda", torch.float64)
    ours = tritonlstm.LSTMCell(48, 96, backend="triton").to("cuda", dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 33, 48, device="cuda", dtype=torch.float64).to(dtype)
    hr = cr = h = c = None
    for t in range(5):
        hr, cr = ref(x[t].to(torch.float64), None if t == 0 else (hr, cr))
        h, c = ours(x[t], None if t == 0 else (h, c))
    assert_close(h, hr, dtype, "h")
    assert_close(c, cr, dtype, "c")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("proj_size", [0, 16], ids=["plain", "proj"])
def test_gpu_cuda_graph_captures_a_forward_with_cuda_lengths(dtype, proj_size):
    """An inference forward with `lengths` as a CUDA tensor, captured in a CUDA graph (the range check, which needs
    the host, is skipped during capture). Replays on new inputs and new lengths, copied into the captured tensors,
    match packed nn.LSTM in float64: nothing about the lengths was baked into the graph."""
    cfg = dict(input_size=24, hidden_size=64, proj_size=proj_size, num_layers=2, bidirectional=True, batch_first=True)
    ref, ours = make_pair(dtype, **cfg)
    ours.eval()
    B, T = 6, 30
    x = torch.randn(B, T, 24, device="cuda", dtype=dtype)
    lengths = torch.full((B,), T, device="cuda", dtype=torch.int64)

    def forward():
        with torch.no_grad():
            y, (h, c) = ours(x, lengths=lengths)
        return y, h, c

    graph, static = _captured(forward)
    for replay in range(3):
        new_lengths = torch.randint(1, T + 1, (B,))
        new_lengths[replay % B] = T if replay else 1  # the extremes of the range, too
        x.copy_(torch.randn(B, T, 24, device="cuda", dtype=torch.float64))
        lengths.copy_(new_lengths)
        graph.replay()
        torch.cuda.synchronize()
        expected = _packed_oracle(ref, x, new_lengths)
        for name, a, e in zip(("output", "h_n", "c_n"), static, expected):
            assert_close(a, e, dtype, f"replay {replay} {name}")


def _captured(forward):
    """``forward()`` captured in a CUDA graph after two warm-up calls (compilation, allocator) on a side stream, as
    capture requires: ``(graph, its outputs)``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = forward()
    return graph, static


@pytest.mark.parametrize("variant", ["bf16-module", "autocast-fp32-master"])
def test_gpu_bfloat16_training_step_matches_float64(variant):
    """One SGD step in bfloat16 (the module in bf16, or fp32 master weights under autocast) against the same step
    in float64 on the bf16-rounded weights and input: the loss, the output, every gradient and every update."""
    autocast = variant.startswith("autocast")
    cfg = dict(input_size=32, hidden_size=128, num_layers=2, bidirectional=True, batch_first=True)
    ours = tritonlstm.LSTM(**cfg, backend="triton").to("cuda", torch.float32 if autocast else torch.bfloat16)
    ref = torch.nn.LSTM(**cfg).to("cuda", torch.float64)
    ref.load_state_dict({k: v.to(torch.bfloat16) for k, v in ours.state_dict().items()})
    x = torch.randn(16, 48, 32, device="cuda").to(torch.bfloat16)
    # bf16 parameters round each updated value to their spacing (2^-8 relative): a large step keeps that error,
    # divided by lr, far inside the tolerance, while a gradient 10 % off still fails
    lr = 0.1

    def step(module, inputs, context):
        before = {n: p.detach().to(torch.float64, copy=True) for n, p in module.named_parameters()}
        module.zero_grad(set_to_none=True)
        with context:
            y, (h, c) = module(inputs)
        loss = weighted_loss(y, h, c)
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        torch.optim.SGD(module.parameters(), lr=lr).step()
        # per unit of lr, so that the tolerance (relative to the largest value, at least 1) sees the update's size
        updates = {n: (p.detach().to(torch.float64) - before[n]) / lr for n, p in module.named_parameters()}
        return loss.detach(), y.detach(), grads, updates

    context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    loss, y, grads, updates = step(ours, x if not autocast else x.float(), context)
    loss_ref, y_ref, grads_ref, updates_ref = step(ref, x.to(torch.float64), contextlib.nullcontext())
    assert y.dtype == torch.bfloat16
    assert_close(loss, loss_ref, torch.bfloat16, "loss")
    assert_close(y, y_ref, torch.bfloat16, "output")
    for name in grads_ref:
        assert grads[name].dtype == (torch.float32 if autocast else torch.bfloat16), name
        assert_close(grads[name], grads_ref[name], torch.bfloat16, f"grad {name}")
        assert updates_ref[name].abs().max() > 0, name
        assert_close(updates[name], updates_ref[name], torch.bfloat16, f"update/lr {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "B, H, lengths", [(3, 40, False), (16, 256, True), (64, 512, False), (256, 768, True)],
    ids=["B3-H40", "B16-H256-lengths", "B64-H512", "B256-H768-lengths"],
)
def test_gpu_gru_matches_nn_gru(B, H, lengths, dtype):
    """tritonlstm.GRU on the kernels the plan picks (unit-split, batch-owned or graphed) against nn.GRU in float64,
    bidirectional, every gradient; the plan must not fall back to the per-step kernels after a failed self-test."""
    import tritonlstm
    from tests.test_gru import _compare, _grads

    ref = torch.nn.GRU(H, H, bidirectional=True).cuda().double()
    ours = tritonlstm.GRU(H, H, bidirectional=True, backend="triton").cuda().to(dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(12, B, H, device="cuda", dtype=torch.float64)
    text = tritonlstm.explain(ours, x.to(dtype))
    assert "failed its self-test" not in text, text
    lens = torch.randint(1, 13, (B,)) if lengths else None
    if lens is not None:
        lens[0] = 12

    def packed(m, x, h0):
        if lens is None:
            return m(x, h0)
        out, h = m(torch.nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False), h0)
        return torch.nn.utils.rnn.pad_packed_sequence(out, total_length=12)[0], h

    def call(m, x, h0):
        return m(x, h0) if lens is None else m(x, h0, lengths=lens)

    with torch.backends.cudnn.flags(enabled=False):  # the float64 oracle: ATen's GRU
        expected = _grads(ref, x, None, packed)
    _compare(expected, _grads(ours, x.to(dtype), None, call), dtype)


@pytest.mark.parametrize("regime", ["gru-split", "gru-split-k", "gru-split-chunked", "gru-batch", "gru-graphed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_gru_self_tests_pass(regime, dtype):
    from tritonlstm.kernels import selftest

    assert selftest.self_test("cuda", dtype, regime) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_cuda_graph_captures_a_gru_forward_with_cuda_lengths(dtype):
    """As for the LSTM above: a GRU forward with CUDA lengths captured once, replayed on new inputs and lengths
    copied into the captured tensors, against packed nn.GRU in float64."""
    import tritonlstm

    ref = torch.nn.GRU(24, 64, num_layers=2, bidirectional=True, batch_first=True).cuda().double()
    ours = tritonlstm.GRU(24, 64, num_layers=2, bidirectional=True, batch_first=True).cuda().to(dtype).eval()
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    B, T = 6, 30
    x = torch.randn(B, T, 24, device="cuda", dtype=dtype)
    lengths = torch.full((B,), T, device="cuda", dtype=torch.int64)

    def forward():
        with torch.no_grad():
            return ours(x, lengths=lengths)

    graph, static = _captured(forward)
    for replay in range(3):
        new_lengths = torch.randint(1, T + 1, (B,))
        new_lengths[replay % B] = T if replay else 1
        x.copy_(torch.randn(B, T, 24, device="cuda", dtype=torch.float64))
        lengths.copy_(new_lengths)
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
            packed = torch.nn.utils.rnn.pack_padded_sequence(x.double(), new_lengths, batch_first=True,
                                                             enforce_sorted=False)  # fmt: skip
            out, h = ref(packed)
            y = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)[0]
        assert_close(static[0], y, dtype, f"replay {replay} output")
        assert_close(static[1], h, dtype, f"replay {replay} h_n")
