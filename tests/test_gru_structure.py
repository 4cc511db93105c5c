"""Compile-only structure of the GRU's sequence kernels for sm_90 (H100/H200), no GPU needed, as
tests/test_sequence_structure.py checks the LSTM's: each kernel launched through its launcher under the fake
sm_90 driver (132 SMs) with the tiles the GRU's rule picks, then

* unit-split: the time loop loads none of W_hh from global memory (the batch-owned kernel, which streams it every
  step, is the positive control), the exchanged rows (h_{t-1}, or dG_{t+1}) are loaded each step, the recurrent
  mask once before the loop; the counter barrier shows in the PTX;
* bf16/fp16 dots on tensor cores, float32 exact (no MMA);
* no register spills, and the unit-split grid co-resident on 132 SMs.

.ci/triton36.sh runs this file under Triton 3.6 too.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from tests.helpers import INTERPRETER
from tests.test_sequence_structure import SMS, _assert_fits_an_sm, _global_loads_in_time_loop, _SYNC

pytestmark = pytest.mark.skipif(
    INTERPRETER, reason="TRITON_INTERPRET=1 replaces triton.jit with the interpreter: nothing to compile"
)


@lru_cache(maxsize=None)
def _launched(B: int, H: int, D: int, dtype: torch.dtype, backward: bool, masked: bool = False, zoneout: int = 0):
    """One GRU layer's forward (or backward) through the sequence launcher under the fake sm_90 driver, with the
    rule's config: (config, grid size, asm, Variant, the kernel's runtime argument names)."""
    from tritonlstm.kernels import config as C
    from tritonlstm.kernels import gru_sequence
    from tritonlstm.kernels.common import Layer, Regularisers
    from tritonlstm.kernels.fake_driver import fake_cuda_driver

    cfg = C.gru_sequence_config(B, H, D, dtype, SMS, backward)
    T, I = 3, 16
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    layer = Layer(r(T, B, I), r(D, B, H), None, r(D, 3 * H, I), r(D, 3 * H, H), r(D, 3 * H), r(D, 3 * H), None,
                  torch.full((B,), T), (False, True)[:D])  # fmt: skip
    h_mask = (torch.rand(D, B, H, generator=g) > 0.5).to(dtype) * 2 if masked else None
    regs = Regularisers(h_mask, (0.1, 0.0) if zoneout else (0.0, 0.0), torch.tensor([5]) if zoneout == 2 else None)
    split = cfg["regime"] == "gru-split"
    name = f"_gru_seq_{'bwd' if backward else 'fwd'}_{'split' if split else 'batch'}_kernel"
    kernel = getattr(gru_sequence, name)
    with fake_cuda_driver(90, SMS) as drv:
        y, h_n, gates = gru_sequence.forward(layer, regs, True, None if backward else cfg)
        if backward:
            drv.launches.clear()
            gru_sequence.backward(layer, regs, y, gates, y, h_n, (True,) * 6, cfg)
    (launch,) = [x for x in drv.launches if x.kernel == name]
    (variant,) = [v for v in drv.variants() if v.hash == launch.variant]
    compiled = next(
        k for caches in kernel.device_caches.values() for k in caches[0].values() if k.hash == variant.hash
    )
    grid = launch.grid[0] * launch.grid[1] * launch.grid[2]
    names = [n for n, kind in compiled.src.signature.items() if kind != "constexpr"]
    return cfg, grid, compiled.asm, variant, names


# (B, H, D, dtype, backward, masked, zoneout): the unit-split shapes the GRU's rule gives, at their largest H
SPLIT_CASES = [
    pytest.param(16, 40, 1, torch.float16, False, True, 1, id="fwd-B16-H40-fp16-4-warps-rdrop-zoneout"),
    pytest.param(16, 768, 1, torch.bfloat16, False, True, 2, id="fwd-B16-H768-bf16-two-k-blocks-rdrop-zoneout"),
    pytest.param(64, 512, 1, torch.float16, False, False, 0, id="fwd-B64-H512-fp16"),
    pytest.param(16, 256, 1, torch.float32, False, True, 2, id="fwd-B16-H256-fp32-rdrop-zoneout"),
    pytest.param(16, 512, 1, torch.bfloat16, True, False, 0, id="bwd-B16-H512-bf16-two-g-blocks"),
    pytest.param(16, 1024, 2, torch.bfloat16, True, False, 0, id="bwd-B16-H1024-D2-bf16-chunked"),
    pytest.param(16, 256, 1, torch.float16, True, True, 2, id="bwd-B16-H256-fp16-rdrop-zoneout"),
    pytest.param(16, 256, 1, torch.float32, True, False, 0, id="bwd-B16-H256-fp32"),
]


@pytest.mark.parametrize("B, H, D, dtype, backward, masked, zoneout", SPLIT_CASES)
def test_unit_split_structure(B, H, D, dtype, backward, masked, zoneout):
    cfg, grid, asm, variant, args = _launched(B, H, D, dtype, backward, masked, zoneout)
    assert cfg["regime"] == "gru-split", cfg
    loads = _global_loads_in_time_loop(asm["ttgir"], args)
    assert "w_ptr" not in loads, f"the time loop reads W_hh from global memory: {sorted(loads)}"
    exchanged = "dg_ptr" if backward else ("xh_ptr" if masked else "y_ptr")
    assert exchanged in loads, f"the exchanged rows must be loaded each step: {sorted(loads)}"
    assert "hm_ptr" not in loads, "the recurrent dropout mask is loaded once, before the time loop"
    ptx = asm["ptx"]
    assert _SYNC.search(ptx), "the counter barrier must show in the PTX"
    if dtype == torch.float32:
        assert "mma.sync" not in ptx, "float32 is exact: no TF32 MMA"
    else:
        assert "mma.sync" in ptx or "wgmma" in ptx, "bf16/fp16 dots must use tensor-core MMA"
    _assert_fits_an_sm(variant, grid, cfg)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_batch_owned_streams_w_hh_each_step_without_spills(backward):
    """The positive control of the W_hh check above, and the batch-owned kernels' spill-free build."""
    cfg, _, asm, variant, args = _launched(2048, 64, 1, torch.bfloat16, backward)
    assert cfg["regime"] == "gru-batch", cfg
    assert "w_ptr" in _global_loads_in_time_loop(asm["ttgir"], args)
    assert variant.n_spills == 0, f"{variant.n_spills} bytes of spills ({variant.n_regs} registers)"
    assert "mma.sync" in asm["ptx"] or "wgmma" in asm["ptx"]
