"""GPU-only: the compiled kernels (not the interpreter) against nn.LSTM, in float32, float16 and bfloat16.

Skipped, with the reason, on machines without CUDA; run them with `bash benchmarks/gpu_run.sh` on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import tritonlstm
from tests.helpers import compare_with_nn_lstm, make_pair, requires_gpu, run_and_grad

pytestmark = [pytest.mark.gpu, requires_gpu]

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


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
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    cfg = dict(input_size=32, hidden_size=128, proj_size=proj_size, num_layers=2, bidirectional=True, batch_first=True)
    ref, ours = make_pair(dtype, **cfg)
    B, T = 24, 40
    lengths = torch.randint(1, T + 1, (B,))
    x = torch.randn(B, T, 32, device="cuda", dtype=torch.float64)
    out_ref, (h_ref, c_ref) = ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    out_ref = pad_packed_sequence(out_ref, batch_first=True, total_length=T)[0]
    out, (h, c) = ours(x.to(dtype), lengths=lengths)
    from tests.helpers import assert_close

    for name, a, e in (("output", out, out_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_lstm_cell(dtype):
    from tests.helpers import assert_close

    ref = torch.nn.LSTMCell(48, 96).to("cuda", torch.float64)
    ours = tritonlstm.LSTMCell(48, 96, backend="triton").to("cuda", dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 33, 48, device="cuda", dtype=torch.float64)
    hr = cr = h = c = None
    for t in range(5):
        hr, cr = ref(x[t], None if t == 0 else (hr, cr))
        h, c = ours(x[t].to(dtype), None if t == 0 else (h, c))
    assert_close(h, hr, dtype, "h")
    assert_close(c, cr, dtype, "c")
