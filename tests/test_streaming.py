"""Streaming in PyTorch: chunk by chunk with the state carried equals one whole-sequence call.

Bitwise on the reference implementation; within the dtype's tolerance on the Triton kernels (interpreter or GPU).
"""

from __future__ import annotations

import pytest
import torch

import tritonlstm
from tritonlstm import dispatch
from tests.helpers import BACKENDS, assert_close, backend_device, requires_gpu

# cut points (T = 7): one step at a time, uneven chunks, one chunk
CHUNKINGS = [
    pytest.param([1, 2, 3, 4, 5, 6], id="steps"), pytest.param([2, 3], id="uneven"), pytest.param([], id="whole"),
]
CONFIGS = [
    pytest.param(dict(num_layers=2, batch_first=True), id="L2-bf"),
    pytest.param(dict(proj_size=3), id="proj"),
    pytest.param(dict(num_layers=2, proj_size=3, zoneout=0.2), id="L2-proj-zoneout"),
    pytest.param(dict(bias=False, batch_first=True, zoneout=(0.1, 0.3)), id="nobias-zoneout"),
]


def _chunks(x: torch.Tensor, cuts: list[int], time_dim: int) -> list[torch.Tensor]:
    bounds = [0, *cuts, x.shape[time_dim]]
    return [x.narrow(time_dim, a, b - a) for a, b in zip(bounds, bounds[1:])]


def _assert_equal(actual: torch.Tensor, expected: torch.Tensor, backend: str, dtype: torch.dtype, name: str) -> None:
    if backend == "reference":
        diff = (actual - expected).abs().max()
        assert torch.equal(actual, expected), f"{name}: chunked differs from whole, max {diff}"
    else:
        assert_close(actual, expected, dtype, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("cuts", CHUNKINGS)
def test_chunked_equals_whole_sequence(backend, kwargs, cuts):
    device = backend_device(backend)
    lstm = tritonlstm.LSTM(4, 6, backend=backend, **kwargs).to(device).eval()  # eval: zoneout's expectation
    bf = kwargs.get("batch_first", False)
    x = torch.randn((3, 7, 4) if bf else (7, 3, 4), device=device)
    with torch.no_grad():
        y, (h, c) = lstm(x)
        state = lstm.initial_state(3)
        pieces = []
        for chunk in _chunks(x, cuts, 1 if bf else 0):
            out, state = lstm(chunk, state)
            pieces.append(out)
    _assert_equal(torch.cat(pieces, 1 if bf else 0), y, backend, torch.float32, "output")
    _assert_equal(state[0], h, backend, torch.float32, "h_n")
    _assert_equal(state[1], c, backend, torch.float32, "c_n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_partial_chunk_takes_lengths(backend):
    device = backend_device(backend)
    lstm = tritonlstm.LSTM(4, 6, num_layers=2, batch_first=True, backend=backend).to(device).eval()
    x = torch.randn(3, 9, 4, device=device)
    lengths = torch.tensor([9, 6, 7])
    with torch.no_grad():
        y, (h, c) = lstm(x, lengths=lengths)
        stream = lstm.stream(3)
        first = stream(x[:, :5])  # every row has at least 5 steps
        last = stream(x[:, 5:], lengths=lengths - 5)
    _assert_equal(torch.cat([first, last], 1), y, backend, torch.float32, "output")
    _assert_equal(stream.h, h, backend, torch.float32, "h_n")
    _assert_equal(stream.c, c, backend, torch.float32, "c_n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_chunks(backend):
    device = backend_device(backend)
    lstm = tritonlstm.LSTM(4, 6, proj_size=2, backend=backend).to(device).eval()
    x = torch.randn(7, 4, device=device)
    with torch.no_grad():
        y, (h, c) = lstm(x)
        state = lstm.initial_state(None)
        assert state[0].shape == (1, 2) and state[1].shape == (1, 6)
        a, state = lstm(x[:3], state)
        b, state = lstm(x[3:], state)
    _assert_equal(torch.cat([a, b]), y, backend, torch.float32, "output")
    _assert_equal(state[0], h, backend, torch.float32, "h_n")


def test_stream_keeps_its_state_in_place_and_detaches_it():
    lstm = tritonlstm.LSTM(4, 6, num_layers=2, batch_first=True)
    stream = lstm.stream(2)
    h, c = stream.state
    pointers = (h.data_ptr(), c.data_ptr())
    x = torch.randn(2, 6, 4, requires_grad=True)
    y1 = stream(x[:, :2])
    y2 = stream(x[:, 2:])
    assert (stream.h.data_ptr(), stream.c.data_ptr()) == pointers, "the buffers a CUDA graph captures stay put"
    assert not stream.h.requires_grad and not stream.c.requires_grad, "truncated BPTT: state detached"
    y2.sum().backward()  # gradients stay within the chunk
    assert x.grad[:, :2].abs().sum() == 0 and x.grad[:, 2:].abs().sum() > 0
    with torch.no_grad():
        whole, (h_n, c_n) = lstm(x)
    assert torch.equal(torch.cat([y1, y2], 1).detach(), whole)
    assert torch.equal(stream.h, h_n) and torch.equal(stream.c, c_n)
    stream.reset()
    assert stream.h.abs().sum() == 0 and stream.c.abs().sum() == 0 and stream.h.data_ptr() == pointers[0]


def test_stream_step_reads_nothing_back_to_the_host():
    # on the meta device any read of a value (.item(), .tolist(), a Python branch on a tensor) raises
    lstm = tritonlstm.LSTM(4, 6, num_layers=2, proj_size=3, batch_first=True).to("meta").eval()
    stream = lstm.stream(5)
    y = stream(torch.empty(5, 8, 4, device="meta"))
    assert y.shape == (5, 8, 3) and stream.h.shape == (2, 5, 3) and stream.c.shape == (2, 5, 6)


class Tagger(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.lstm = tritonlstm.LSTM(4, 6, batch_first=True, **kwargs)
        self.head = torch.nn.Linear(kwargs.get("proj_size") or 6, 2)

    def forward(self, x, lengths=None):
        y, _ = self.lstm(x, lengths=lengths)
        return self.head(y)


class EncoderDecoder(torch.nn.Module):
    """Two recurrent modules, and a decoder cell called in a loop inside forward (it carries its own state)."""

    def __init__(self):
        super().__init__()
        self.encoder = tritonlstm.LSTM(4, 6, num_layers=2, batch_first=True)
        self.decoder = torch.nn.ModuleDict({"cell": tritonlstm.LSTMCell(6, 5)})

    def forward(self, x):
        y, _ = self.encoder(x)
        outs = [self.decoder["cell"](y[:, t])[0] for t in range(y.shape[1])]
        return torch.stack(outs, 1)


def test_stateful_model_chunked_equals_whole():
    model = Tagger(num_layers=2, proj_size=3).eval()
    stream = tritonlstm.stateful(model)
    assert stream.state_input_names == ["h_in_l0", "c_in_l0", "h_in_l1", "c_in_l1"]
    assert stream.state_output_names == ["h_out_l0", "c_out_l0", "h_out_l1", "c_out_l1"]
    x, lengths = torch.randn(3, 8, 4), torch.tensor([8, 5, 7])
    with torch.no_grad():
        whole, final = stream(x, lengths)
        _, (h_n, c_n) = model.lstm(x, lengths=lengths)
        a, state = stream(x[:, :1])
        b, state = stream(x[:, 1:4], state=state)
        c, state = stream(x[:, 4:], lengths - 4, state=state)
    assert [tuple(t.shape) for t in state] == [(3, 3), (3, 6), (3, 3), (3, 6)]
    # the state after the last chunk is the whole run's: bitwise on the reference; the kernels' input projection
    # is one GEMM over T x B rows, whose rounding the BLAS may choose by the row count
    backend = dispatch.resolve_backend("auto", x.device, x.dtype)
    for name, s, f in zip(stream.state_output_names, state, final):
        _assert_equal(s, f, backend, torch.float32, name)
    assert torch.equal(torch.stack(final[0::2]), h_n) and torch.equal(torch.stack(final[1::2]), c_n)
    # the head is a GEMM over B x T_chunk rows: its rounding may depend on the row count, the LSTM's does not
    torch.testing.assert_close(torch.cat([a, b, c], 1), whole, rtol=1e-6, atol=1e-7)


def test_stateful_names_every_module_and_carries_a_cell_called_in_a_loop():
    model = EncoderDecoder().eval()
    stream = tritonlstm.stateful(model)
    assert stream.state_input_names == [
        "encoder_h_in_l0", "encoder_c_in_l0", "encoder_h_in_l1", "encoder_c_in_l1",
        "decoder_cell_h_in_l0", "decoder_cell_c_in_l0",
    ]  # fmt: skip
    x = torch.randn(2, 6, 4)
    with torch.no_grad():
        whole, final = stream(x)
        a, state = stream(x[:, :2])
        b, state = stream(x[:, 2:], state=state)
    assert torch.equal(torch.cat([a, b], 1), whole)
    assert all(torch.equal(s, f) for s, f in zip(state, final))
    assert [tuple(t.shape) for t in state][-2:] == [(2, 5), (2, 5)]


@pytest.mark.parametrize(
    "make, match",
    [
        pytest.param(lambda: tritonlstm.LSTM(4, 6, bidirectional=True).initial_state(2), "bidirectional and cannot stream", id="bi-initial"),
        pytest.param(lambda: tritonlstm.LSTM(4, 6, reverse=True).stream(2), r"reverse=True and cannot stream", id="reverse-stream"),
        pytest.param(lambda: tritonlstm.stateful(Tagger(bidirectional=True)), "stateful: lstm is bidirectional", id="bi-stateful"),
        pytest.param(lambda: tritonlstm.stateful(torch.nn.Linear(2, 2)), "holds no tritonlstm.LSTM", id="no-lstm"),
    ],
)  # fmt: skip
def test_what_cannot_stream_is_refused_with_the_reason(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_state_gets_a_clear_error_naming_the_expected_shape():
    model = Tagger(num_layers=2, proj_size=3).eval()
    stream = tritonlstm.stateful(model)
    x = torch.randn(3, 5, 4)
    _, state = stream(x)
    with pytest.raises(ValueError, match=r"the state has 2 tensors, .* need 4: h_in_l0, c_in_l0, h_in_l1, c_in_l1"):
        stream(x, state=state[:2])  # layer count
    with pytest.raises(ValueError, match=r"'h_in_l0' of lstm must have shape \(2, 3\) .*batch 2.* got \(3, 3\)"):
        stream(x[:2], state=state)  # a chunk whose batch differs from the state's
    with pytest.raises(ValueError, match=r"'c_in_l1' of lstm must have shape \(3, 6\) and dtype torch.float32.*float64"):
        stream(x, state=(*state[:3], state[3].double()))
    lstm = tritonlstm.LSTM(4, 6, batch_first=True)
    with pytest.raises(ValueError, match=r"the chunk's batch is 2, the stream's is 3 .* lstm.stream\(2\)"):
        lstm.stream(3)(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"must be 3-D, got 2-D"):
        lstm.stream(3)(torch.randn(5, 4))
    # nn.LSTM's own check of a state passed by hand, message included
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 6\), got \[1, 3, 6\]"):
        lstm(torch.randn(2, 5, 4), lstm.initial_state(3))


def test_a_model_passing_its_own_state_is_refused():
    class OwnState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = tritonlstm.LSTM(4, 6)

        def forward(self, x):
            return self.lstm(x, self.lstm.initial_state(x.shape[1]))[0]

    with pytest.raises(ValueError, match="lstm is called with a state of its own"):
        tritonlstm.stateful(OwnState())(torch.randn(5, 2, 4))


@pytest.mark.gpu
@requires_gpu
def test_stream_captured_as_a_cuda_graph_replays_chunk_after_chunk():
    lstm = tritonlstm.LSTM(16, 32, num_layers=2, batch_first=True).cuda().eval()
    x = torch.randn(4, 24, 16, device="cuda")
    with torch.no_grad():
        whole, (h_n, c_n) = lstm(x)
        stream = lstm.stream(4)
        static = x[:, :8].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            stream(static)  # warm-up (compiles, self-tests) outside the capture
        torch.cuda.current_stream().wait_stream(side)
        stream.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = stream(static)
        stream.reset()
        pieces = []
        for k in range(3):
            static.copy_(x[:, 8 * k : 8 * (k + 1)])
            graph.replay()
            pieces.append(out.clone())
    assert_close(torch.cat(pieces, 1), whole, torch.float32, "output")
    assert_close(stream.h, h_n, torch.float32, "h_n")
    assert_close(stream.c, c_n, torch.float32, "c_n")
