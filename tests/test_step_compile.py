"""Compiled step kernels without a GPU: the fake driver, one variant per shape, the device guard, no spills.

Everything here compiles real kernels for sm_90/sm_80 with Triton's bundled ptxas under
``tritonlstm.kernels.fake_driver.fake_cuda_driver`` (CPU tensors, nothing launched), so it needs the kernels compiled,
not interpreted: it skips, with that reason, under ``TRITON_INTERPRET=1``. ``.ci/triton36.sh`` runs this file
under today's Triton and the GPU image's (3.6) with ``TRITONLSTM_COMPILE_MATRIX=1``, which adds the full matrix
of default configurations (dtypes x {plain, lengths, projection} x {small, large batch} x fwd/bwd, sm_90 and
sm_80); the ordinary suite builds a few representative ones.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import triton
import triton.language as tl

from tests.helpers import step_backward, step_forward
from tritonlstm.kernels import runtime, step
from tritonlstm.kernels.fake_driver import Build, build, fake_cuda_driver, kernels_compile

pytestmark = pytest.mark.skipif(
    not kernels_compile(), reason="compiles the kernels for a GPU target: needs TRITON_INTERPRET unset"
)
FULL_MATRIX = os.environ.get("TRITONLSTM_COMPILE_MATRIX") == "1"


@triton.jit
def _add_one_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + o, tl.load(x_ptr + o, mask=o < n) + 1.0, mask=o < n)


def test_fake_driver_compiles_records_and_launches_nothing():
    x = torch.arange(40, dtype=torch.float32)
    y = torch.zeros(40)
    with fake_cuda_driver(arch=90) as drv:
        _add_one_kernel[(3,)](x, y, 40, BLOCK=16)
        _add_one_kernel[(3,)](x, y, 40, BLOCK=16)  # same variant
        _add_one_kernel[(2,)](x[1:], y[1:], 39, BLOCK=16)  # 4-byte offset: not 16-byte aligned, a new variant
    assert torch.equal(y, torch.zeros(40)), "a fake launch must not run the kernel"
    assert [(launch.kernel, launch.grid, launch.device, launch.stream) for launch in drv.launches] == [
        ("_add_one_kernel", (3, 1, 1), 0, 0),
        ("_add_one_kernel", (3, 1, 1), 0, 0),
        ("_add_one_kernel", (2, 1, 1), 0, 0),
    ]
    assert drv.launch_counts() == {"_add_one_kernel": 3}
    assert drv.variant_counts() == {"_add_one_kernel": 2}
    v = drv.variants("_add_one_kernel")[0]
    assert 0 < v.n_regs <= 255 and v.n_spills == 0 and v.num_warps == 4
    assert v.cubin.startswith(b"\x7fELF")
    # the 16-byte alignment hint sits on the aligned launch's pointers only
    assert "tt.divisibility" in drv.variants()[0].attrs
    assert drv.variants()[0].attrs != drv.variants()[1].attrs
    with pytest.raises(RuntimeError, match="outside"):
        # a kernel compiled under the fake driver cannot be launched without it (and nothing else is active here)
        drv.launcher_cls.__call__(SimpleNamespace(), 1, 1, 1, 0, None)


def test_fake_driver_arch_changes_the_build():
    x, y = torch.zeros(16), torch.zeros(16)
    with fake_cuda_driver(arch=90) as d90:
        _add_one_kernel[(1,)](x, y, 16, BLOCK=16)
    with fake_cuda_driver(arch=80) as d80:
        _add_one_kernel[(1,)](x, y, 16, BLOCK=16)
    assert d90.variants()[0].hash != d80.variants()[0].hash


def test_fake_driver_reuses_builds_across_contexts():
    x, y = torch.zeros(16), torch.zeros(16)
    hashes = []
    for _ in range(2):
        with fake_cuda_driver(arch=90) as drv:
            _add_one_kernel[(1,)](x, y, 16, BLOCK=16)
        assert drv.launch_counts() == {"_add_one_kernel": 1}
        hashes += [v.hash for v in drv.variants()]
    assert len(hashes) == 2 and hashes[0] == hashes[1]


def _layer(T, B, H, dtype, P=0, lengths=False):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    R = P or H
    inp = dict(x=r(T, B, 3), h0=r(B, R), c0=r(B, H), w_ih=r(4 * H, 3), w_hh=r(4 * H, R), b_ih=r(4 * H), b_hh=r(4 * H),
               w_hr=r(P, H) if P else None)  # fmt: skip
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    return inp, lens


def _fwd_bwd(inp, lens, reverse):
    y, h_n, c_n, gates, cs = step_forward(**inp, lengths=lens, reverse=reverse)
    step_backward(
        y, h_n, c_n, inp["x"], inp["h0"], inp["c0"], inp["w_ih"], inp["w_hh"], y, gates, cs, inp["w_hr"],
        lengths=lens, reverse=reverse, needs=(False,) * 7,
    )  # fmt: skip


@pytest.mark.parametrize(
    "dtype, B, H, P, lengths",
    [
        pytest.param(torch.float16, 1, 33, 0, False, id="fp16-B1-H33"),
        pytest.param(torch.float32, 3, 7, 0, True, id="fp32-B3-H7-lengths"),
        pytest.param(torch.float16, 1, 33, 17, False, id="fp16-B1-H33-P17"),
    ],
)
def test_one_compiled_variant_per_shape(dtype, B, H, P, lengths):
    """Per-step views change their 16-byte alignment with t (odd H): the kernels take buffers and indices instead,
    so every step of both directions shares one forward and one backward build (before: 7 and 8 at fp16 B=1 H=33)."""
    T = 6
    inp, lens = _layer(T, B, H, dtype, P, lengths)
    with fake_cuda_driver() as drv:
        for reverse in (False, True):
            _fwd_bwd(inp, lens, reverse)
    fwd, bwd = (f"_lstm{'p' if P else ''}_{kind}_step_kernel" for kind in ("fwd", "bwd"))
    assert drv.launch_counts() == {fwd: 2 * T, bwd: 2 * T}
    assert drv.variant_counts() == {fwd: 1, bwd: 1}


def test_gru_step_kernels_compile_one_variant_per_shape():
    """The GRU's step kernels share the LSTM's buffers-and-indices form: one build per shape for every step."""
    from tritonlstm.kernels import gru_step
    from tritonlstm.kernels.common import Layer, Regularisers

    T, B, H = 6, 1, 33
    g = torch.Generator().manual_seed(0)
    x, h0 = torch.randn(T, B, 3, generator=g).half(), torch.randn(1, B, H, generator=g).half()
    w_ih, w_hh = torch.randn(1, 3 * H, 3, generator=g).half(), torch.randn(1, 3 * H, H, generator=g).half()
    regs = Regularisers(torch.ones(1, B, H).half(), (0.2, 0.0), torch.tensor([3]))
    with fake_cuda_driver() as drv:
        for reverse in (False, True):
            layer = Layer(x, h0, None, w_ih, w_hh, None, None, None, torch.tensor([4]), (reverse,))
            y, _, gates = gru_step.forward(layer, regs, True)
            gru_step.backward(layer, regs, y, gates, y, None, (True,) * 6)
    assert drv.launch_counts() == {"_gru_fwd_step_kernel": 2 * T, "_gru_bwd_step_kernel": 2 * T}
    assert drv.variant_counts() == {"_gru_fwd_step_kernel": 1, "_gru_bwd_step_kernel": 1}


def test_launches_go_to_the_tensors_device_and_stream(monkeypatch):
    """Triton launches on torch's *current* device and its current stream: the launchers must make the inputs'
    device current. Here cuda:0 is current, the inputs (as the guard is told) live on cuda:1, and every launch
    must ask for device 1 and cuda:1's current stream; the current device is restored afterwards."""
    state = {"current": 0, "entered": []}

    def exchange(index):
        previous, state["current"] = state["current"], (index if index >= 0 else state["current"])
        return previous

    monkeypatch.setattr(torch.cuda, "_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: SimpleNamespace(cuda_stream=1000 + int(device)))
    real_guard = runtime.launch_guard

    def guard(device):
        state["entered"].append(device)
        return real_guard(torch.device("cuda", 1))  # what the guard does for tensors on cuda:1

    monkeypatch.setattr(step, "launch_guard", guard)
    inp, lens = _layer(3, 2, 5, torch.float32, lengths=True)
    with fake_cuda_driver(torch_queries=True) as drv:
        _fwd_bwd(inp, lens, reverse=False)
    assert state["entered"] == [torch.device("cpu")] * 2  # the launchers ask for their inputs' device
    assert len(drv.launches) == 6
    assert {(launch.device, launch.stream) for launch in drv.launches} == {(1, 1001)}
    assert state["current"] == 0


def test_launch_guard_leaves_cpu_alone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "_exchange_device", lambda index: pytest.fail("CPU tensors need no CUDA device"))
    with runtime.launch_guard(torch.device("cpu")):
        pass


# Default configurations that must compile without spills. The ordinary suite builds a few; .ci/triton36.sh the
# matrix (H=1024 as in benchmarks/compile_report.py; H=1023 for the worst case: nothing known to be aligned).
H = 1024
SMOKE = [
    (90, Build("bf16", 256, H, lengths=True)), (80, Build("fp32", 256, H, lengths=True)),
    (90, Build("fp16", 256, H, lengths=True, cell="gru")),
]  # fmt: skip
MATRIX = [
    # the GRU's step kernels at both tile sizes (odd H with lengths: nothing aligned): every dtype on sm_90, bf16
    # and fp32 on sm_80
    *[(arch, Build(d, b, H - 1 if ln else H, 0, ln, "gru")) for arch, dtypes in ((90, ("bf16", "fp16", "fp32", "tf32")),
      (80, ("bf16", "fp32"))) for d in dtypes for b, ln in ((16, False), (256, True))],
    (90, Build("fp64", 16, H, 0, True, "gru")),
    *[(90, Build(d, b, H, 0, ln)) for d in ("bf16", "fp16", "fp32", "tf32") for b in (16, 256) for ln in (False, True)],
    *[(90, Build(d, 16, H, 256, ln)) for d in ("bf16", "fp16", "fp32", "tf32") for ln in (False, True)],
    *[(90, Build("fp64", 16, H, p, ln)) for p in (0, 256) for ln in (False, True)],
    *[(90, Build(d, 32, H, 0, True)) for d in ("bf16", "fp32")],
    *[(arch, Build(d, 256, H - 1, 0, True)) for arch in (90, 80) for d in ("bf16", "fp32", "tf32")],
    *[(arch, Build("fp32", 16, H - 1, 0, True)) for arch in (90, 80)],
    *[(80, Build(d, 256, H, 0, True)) for d in ("bf16", "fp32", "tf32")],
    *[(80, Build(d, 16, H, 256, True)) for d in ("bf16", "fp32")],
    (80, Build("fp64", 16, H, 0, True)),
]


@pytest.mark.parametrize(
    "arch, b",
    [
        pytest.param(arch, b, id=f"sm{arch}-{b.label().replace(' ', '-')}",
                     marks=[] if (arch, b) in SMOKE or FULL_MATRIX else pytest.mark.skip(
                         reason="full compile matrix: runs in .ci/triton36.sh (TRITONLSTM_COMPILE_MATRIX=1)"))
        for arch, b in MATRIX + [s for s in SMOKE if s not in MATRIX]
    ],
)  # fmt: skip
def test_default_configs_compile_without_spills(arch, b):
    variants = build(b, arch)
    for kind, v in variants.items():
        assert v.n_spills == 0, f"sm_{arch} {kind} {b.label()}: {v.n_regs} registers, {v.n_spills} bytes of stack"
        assert v.n_regs <= 255
