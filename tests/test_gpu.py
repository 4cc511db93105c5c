"""GPU-only: the compiled kernels (not the interpreter) against nn.LSTM, in float32, float16 and bfloat16.

Skipped, with the reason, on machines without CUDA; run them with `bash benchmarks/gpu_check.sh` on a GPU.
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
    ],
)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_gpu_matches_nn_lstm(cfg, T, B, dtype, with_hx):
    ref, ours = make_pair(dtype, **cfg)
    shape = (B, T, cfg["input_size"]) if cfg.get("batch_first") else (T, B, cfg["input_size"])
    layers = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
    hx = None
    if with_hx:
        hx = tuple(torch.randn(layers, B, cfg["hidden_size"], device="cuda", dtype=torch.float64) for _ in range(2))
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
