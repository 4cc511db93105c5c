"""Regularisers: recurrent and input dropout, zoneout, weight drop.

The oracle is :func:`_oracle`, a plain float64 PyTorch step loop written here (not tritonlstm's reference) that
takes every mask explicitly; the masks a module drew are recovered by replaying torch's RNG from the same seed in
the documented order (input mask, weight-drop mask, recurrent mask, zoneout seed, per layer). Where a regulariser
is off or is the identity (eval), torch.nn.LSTM in float64 is the oracle.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

import tritonlstm
from tests.helpers import (
    BACKENDS,
    CPU_DTYPES,
    DEVICE,
    TRITON_DEVICE,
    backend_device,
    assert_close,
    gradcheck_flat,
    compare_with_nn_lstm,
    make_pair,
    requires_triton,
    weighted_loss,
)
from tritonlstm import functional, ops, reference

H, I = 5, 3


def _oracle(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *, h_mask=None, zoneout=(0.0, 0.0), keep=None, lengths=None,
            reverse=False):  # fmt: skip
    """One layer and direction in float64 with explicit masks. ``keep``: per processed step ``(keep_h, keep_c)``
    booleans (training zoneout) or ``None`` (expectation)."""
    x, h, c = x.double(), h0.double(), c0.double()
    T = x.shape[0]
    ys = [None] * T
    for n, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):
        h_in = h if h_mask is None else h * h_mask.double()
        i, f, g, o = (x[t] @ w_ih.double().t() + b_ih.double() + b_hh.double() + h_in @ w_hh.double().t()).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        p_h, p_c = zoneout
        if keep is not None:
            keep_h, keep_c = keep[n]
            h_new = torch.where(keep_h, h, h_new) if keep_h is not None else h_new
            c_new = torch.where(keep_c, c, c_new) if keep_c is not None else c_new
        else:
            h_new, c_new = p_h * h + (1 - p_h) * h_new, p_c * c + (1 - p_c) * c_new
        if lengths is not None:
            own = (t < lengths)[:, None]
            h_new, c_new, ys[t] = torch.where(own, h_new, h), torch.where(own, c_new, c), torch.where(own, h_new, 0)
        else:
            ys[t] = h_new
        h, c = h_new, c_new
    return torch.stack(ys), h, c


def _keep_masks(seed, direction, p_h, p_c, T, B, Hd, acc=torch.float64):
    """The zoneout masks a layer draws from ``seed``: the documented stream of reference.zoneout_masks."""
    g = reference.zoneout_masks(seed, direction, p_h, p_c)
    out = []
    for _ in range(T):
        kh = torch.rand(B, Hd, generator=g, dtype=acc) < p_h if p_h > 0 else None
        kc = torch.rand(B, Hd, generator=g, dtype=acc) < p_c if p_c > 0 else None
        out.append((kh, kc))
    return out


def _params(module, suffix=""):
    return [getattr(module, f"{n}_l0{suffix}").detach() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("option", ["recurrent_dropout", "input_dropout", "zoneout", "weight_drop"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1"])
def test_probability_outside_range_is_a_value_error_naming_the_option(option, value):
    with pytest.raises(ValueError, match=rf"{option}.*\[0, 1\)"):
        tritonlstm.LSTM(I, H, **{option: value})


def test_zoneout_pair_and_cell_checks():
    with pytest.raises(ValueError, match=r"zoneout \(p_c\).*\[0, 1\)"):
        tritonlstm.LSTM(I, H, zoneout=(0.1, 1.0))
    with pytest.raises(ValueError, match="pair"):
        tritonlstm.LSTM(I, H, zoneout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"zoneout.*\[0, 1\)"):
        tritonlstm.LSTMCell(I, H, zoneout=-0.5)
    assert tritonlstm.LSTM(I, H, zoneout=0.25).zoneout == (0.25, 0.25)
    with pytest.raises(ValueError, match="recurrent_mask must have h_0's shape"):
        tritonlstm.LSTMCell(I, H)(torch.randn(2, I), recurrent_mask=torch.ones(3, H))


# ----------------------------------------------------------------------------- identity and p = 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_is_nn_lstm(backend):
    """Recurrent/input dropout and weight drop are the identity in eval: nn.LSTM's numbers and gradients."""
    ref, ours = make_pair(torch.float64, backend, input_size=I, hidden_size=H, num_layers=2)
    ours.recurrent_dropout, ours.input_dropout, ours.weight_drop = 0.5, 0.3, 0.4
    ours.eval()
    compare_with_nn_lstm(ref, ours, torch.randn(4, 3, I), dtype=torch.float64)


def test_zero_probabilities_in_training_are_nn_lstm_and_draw_nothing():
    ref, ours = make_pair(torch.float64, "reference", input_size=I, hidden_size=H, num_layers=2)
    x = torch.randn(4, 3, I)

    def rng_states():
        return [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if torch.cuda.is_available() else [])

    state = rng_states()
    compare_with_nn_lstm(ref, ours, x, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(state, rng_states()))


# ------------------------------------------------------------------------------ recurrent dropout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "lengths"])
def test_recurrent_dropout_matches_oracle(backend, dtype, lengths):
    """Bidirectional layer in training: the replayed [D, B, H] mask on h_{t-1} only; outputs and every gradient."""
    p, T, B = 0.4, 4, 3
    dev = backend_device(backend)
    m = tritonlstm.LSTM(I, H, bidirectional=True, recurrent_dropout=p, backend=backend).to(dev, dtype)
    x = torch.randn(T, B, I, dtype=dtype, device=dev)
    lens = torch.tensor(lengths, device=dev) if lengths is not None else None
    torch.manual_seed(7)
    xg = x.clone().requires_grad_()
    y, (h, c) = m(xg, lengths=lens)
    weighted_loss(y, h, c).backward()
    torch.manual_seed(7)  # the module drew its mask on x's device: replay it there
    mask = torch.bernoulli(torch.full((2, B, H), 1 - p, dtype=dtype, device=dev)) / (1 - p)
    assert (mask == 0).any() and (mask != 0).any()
    leaves = {k: v.double().requires_grad_() for k, v in zip(("x", "w_ih", "w_hh", "b_ih", "b_hh", "w_ih_r", "w_hh_r",
              "b_ih_r", "b_hh_r"), (x, *_params(m), *_params(m, "_reverse")))}  # fmt: skip
    z = torch.zeros(B, H, dtype=torch.float64, device=dev)
    yf, hf, cf = _oracle(leaves["x"], z, z, leaves["w_ih"], leaves["w_hh"], leaves["b_ih"], leaves["b_hh"],
                         h_mask=mask[0], lengths=lens)  # fmt: skip
    yr, hr, cr = _oracle(leaves["x"], z, z, leaves["w_ih_r"], leaves["w_hh_r"], leaves["b_ih_r"], leaves["b_hh_r"],
                         h_mask=mask[1], lengths=lens, reverse=True)  # fmt: skip
    ye, he, ce = torch.cat([yf, yr], -1), torch.stack([hf, hr]), torch.stack([cf, cr])
    weighted_loss(ye, he, ce).backward()
    for name, a, e in (("output", y, ye), ("h_n", h, he), ("c_n", c, ce), ("grad_input", xg.grad, leaves["x"].grad),
                       ("grad_w_hh", m.weight_hh_l0.grad, leaves["w_hh"].grad),
                       ("grad_w_hh_reverse", m.weight_hh_l0_reverse.grad, leaves["w_hh_r"].grad),
                       ("grad_w_ih", m.weight_ih_l0.grad, leaves["w_ih"].grad),
                       ("grad_b_hh", m.bias_hh_l0.grad, leaves["b_hh"].grad)):  # fmt: skip
        assert_close(a.detach(), e.detach(), dtype, name)


def test_recurrent_mask_is_drawn_per_call_and_reproduced_by_the_seed():
    m = tritonlstm.LSTM(I, H, num_layers=2, recurrent_dropout=0.5, backend="reference")
    x = torch.randn(6, 2, I)
    torch.manual_seed(3)
    a = m(x)[0]
    torch.manual_seed(3)
    b = m(x)[0]
    c = m(x)[0]
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def test_recurrent_mask_statistics():
    """Bernoulli(1-p)/(1-p): mean 1, a fraction p of zeros, values in {0, 1/(1-p)} (F.dropout's scaling)."""
    p = 0.3
    mask = functional.dropout_mask((2, 4000, 64), p, torch.empty(0))
    zeros = (mask == 0).double().mean().item()
    assert abs(zeros - p) < 0.01
    assert abs(mask.double().mean().item() - 1) < 0.015
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_with_a_fixed_recurrent_mask_and_zoneout_seed(backend):
    """float64 gradcheck through the op with a fixed mask and seed (both zoneout forms, lengths, two directions)."""
    T, B, D, I, H = 2, 2, 2, 2, 3

    def r(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=DEVICE, requires_grad=True)

    mask = functional.dropout_mask((D, B, H), 0.5, torch.empty(0, dtype=torch.float64, device=DEVICE))
    seed = torch.tensor([12345], device=DEVICE)
    inputs = (r(T, B, I), r(D, B, H), r(D, B, H), r(D, 4 * H, I), r(D, 4 * H, H), r(D, 4 * H), r(D, 4 * H))
    lens = torch.tensor([2, 1])
    # the kernels' eval form is checked against autograd in test_zoneout_kernels_match_oracle_with_the_masks_they_drew
    for zoneout_seed in (seed, None) if backend == "reference" else (seed,):

        def f(*a, zoneout_seed=zoneout_seed):
            return ops.layer_forward(*a, None, lens, False, True, backend, mask, 0.3, 0.4, zoneout_seed)[:3]

        assert gradcheck_flat(f, inputs)


def test_opcheck_with_regularisers():
    T, B = 3, 2
    args = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in
            ((T, B, I), (1, B, H), (1, B, H), (1, 4 * H, I), (1, 4 * H, H), (1, 4 * H), (1, 4 * H))]  # fmt: skip
    mask = functional.dropout_mask((1, B, H), 0.5, args[0])
    torch.library.opcheck(
        torch.ops.tritonlstm.layer_forward.default,
        (*args, None, None, False, True, "reference", mask, 0.2, 0.1, torch.tensor([5])),
    )


# ---------------------------------------------------------------------------------- input dropout


def test_input_dropout_is_one_mask_per_sequence_before_the_input_gemm():
    p, T, B = 0.5, 5, 3
    ref, ours = make_pair(torch.float64, "reference", input_size=I, hidden_size=H)
    ours.input_dropout = p
    x = torch.randn(T, B, I, dtype=torch.float64, device=DEVICE)
    torch.manual_seed(11)
    y, (h, c) = ours(x)
    torch.manual_seed(11)
    mask = torch.bernoulli(torch.full((B, I), 1 - p, dtype=torch.float64, device=DEVICE)) / (1 - p)
    ye, (he, ce) = ref(x * mask)
    for a, e, n in ((y, ye, "output"), (h, he, "h_n"), (c, ce, "c_n")):
        assert_close(a.detach(), e.detach(), torch.float64, n)


# ----------------------------------------------------------------------------------- weight drop


def test_weight_drop_masks_w_hh_once_per_call_and_grads_reach_the_raw_parameter():
    p, T, B = 0.5, 4, 3
    ref, ours = make_pair(torch.float64, "reference", input_size=I, hidden_size=H)
    ours.weight_drop = p
    keys = list(ours.state_dict())
    raw = ours.weight_hh_l0.detach().clone()
    x = torch.randn(T, B, I, dtype=torch.float64, device=DEVICE)
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no flatten_parameters / non-contiguous weight warnings
        ours.flatten_parameters()
        y, (h, c) = ours(x)
        weighted_loss(y, h, c).backward()
    torch.manual_seed(5)
    dropped = F.dropout(raw, p, training=True)
    assert (dropped == 0).any()
    mask = dropped / raw
    with torch.no_grad():
        ref.weight_hh_l0.copy_(dropped)
    ye, (he, ce) = ref(x)
    weighted_loss(ye, he, ce).backward()
    assert_close(y.detach(), ye.detach(), torch.float64, "output")
    assert_close(ours.weight_hh_l0.grad, ref.weight_hh_l0.grad * mask, torch.float64, "grad_w_hh")
    assert torch.equal(ours.weight_hh_l0.detach(), raw)
    assert list(ours.state_dict()) == keys


# ------------------------------------------------------------------------------------------ zoneout


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("lengths", [None, [5, 2, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_zoneout_training_matches_oracle(dtype, lengths, reverse):
    """Training zoneout in the reference implementation: the masks of its documented stream for the replayed seed,
    y_t the zoned h_t, rows past their length keep state. (The kernels draw theirs with Philox in-kernel: tested
    with the masks they store on request, below.)"""
    backend = "reference"
    p_h, p_c, T, B = 0.3, 0.5, 5, 3
    m = tritonlstm.LSTM(I, H, zoneout=(p_h, p_c), reverse=reverse, backend=backend).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    lens = torch.tensor(lengths) if lengths is not None else None
    torch.manual_seed(9)
    xg = x.clone().requires_grad_()
    y, (h, c) = m(xg, lengths=lens)
    weighted_loss(y, h, c).backward()
    torch.manual_seed(9)
    seed = reference.draw_zoneout_seed(torch.device("cpu"))
    keep = _keep_masks(seed, 0, p_h, p_c, T, B, H, acc=torch.float64 if dtype == torch.float64 else torch.float32)
    leaves = [t.double().requires_grad_() for t in (x, *_params(m))]
    z = torch.zeros(B, H, dtype=torch.float64)
    ye, he, ce = _oracle(*leaves[:1], z, z, *leaves[1:], zoneout=(p_h, p_c), keep=keep, lengths=lens, reverse=reverse)
    weighted_loss(ye, he[None], ce[None]).backward()
    for name, a, e in (("output", y, ye), ("h_n", h[0], he), ("c_n", c[0], ce), ("grad_input", xg.grad, leaves[0].grad),
                       ("grad_w_hh", m.weight_hh_l0.grad, leaves[2].grad)):  # fmt: skip
        assert_close(a.detach(), e.detach(), dtype, name)


def test_zoneout_mask_statistics_and_fresh_masks_every_step():
    """With p_h = p, a fraction p of h's elements equal their previous value, in every step; with a new draw
    per step (the kept positions differ between steps)."""
    p, T, B, Hb = 0.3, 6, 64, 32
    m = tritonlstm.LSTM(2, Hb, zoneout=(p, 0.0), backend="reference")
    x = torch.randn(T, B, 2)
    with torch.no_grad():
        y = m(x)[0]
    kept = y[1:] == y[:-1]
    for t in range(T - 1):
        assert abs(kept[t].double().mean().item() - p) < 0.05
    assert not torch.equal(kept[0], kept[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_zoneout_eval_is_the_expectation(backend):
    p_h, p_c, T, B = 0.2, 0.6, 4, 3
    dev = backend_device(backend)
    m = tritonlstm.LSTM(I, H, bidirectional=True, zoneout=(p_h, p_c), backend=backend).to(dev, torch.float64).eval()
    x = torch.randn(T, B, I, dtype=torch.float64, device=dev)
    lens = torch.tensor([4, 1, 3], device=dev)
    y, (h, c) = m(x, lengths=lens)
    z = torch.zeros(B, H, dtype=torch.float64, device=dev)
    yf, hf, cf = _oracle(x, z, z, *_params(m), zoneout=(p_h, p_c), lengths=lens)
    yr, hr, cr = _oracle(x, z, z, *_params(m, "_reverse"), zoneout=(p_h, p_c), lengths=lens, reverse=True)
    assert_close(y, torch.cat([yf, yr], -1), torch.float64, "output")
    assert_close(h, torch.stack([hf, hr]), torch.float64, "h_n")
    assert_close(c, torch.stack([cf, cr]), torch.float64, "c_n")


def test_zoneout_seed_reproduces_and_packed_sequence_keeps_its_meaning():
    m = tritonlstm.LSTM(I, H, zoneout=0.4, backend="reference").double()
    x = torch.randn(5, 3, I, dtype=torch.float64)
    lens = torch.tensor([5, 2, 4])
    torch.manual_seed(1)
    y, (h, c) = m(x, lengths=lens)
    torch.manual_seed(1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False)
    yp, (hp, cp) = m(packed)
    yp = torch.nn.utils.rnn.pad_packed_sequence(yp, total_length=5)[0]
    assert torch.equal(y, yp) and torch.equal(h, hp) and torch.equal(c, cp)
    assert (y[2:, 1] == 0).all()


# ------------------------------------------------------------------------------------------ LSTMCell


def _cell_and_weights(backend, zoneout=(0.25, 0.5), device=DEVICE):
    cell = tritonlstm.LSTMCell(I, H, backend=backend, zoneout=zoneout).double().to(device)
    return cell, [cell.weight_ih.detach(), cell.weight_hh.detach(), cell.bias_ih.detach(), cell.bias_hh.detach()]


def test_cell_training_zoneout_and_recurrent_mask():
    """A decoder loop in training (reference implementation): a new zoneout draw per call, the same recurrent mask
    at every step; the oracle replays the seeds."""
    B = 3
    cell, w = _cell_and_weights("reference", device="cpu")  # the oracle replays CPU seeds
    xs = torch.randn(3, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    mask = functional.dropout_mask((B, H), 0.5, xs)
    torch.manual_seed(4)
    h, c = h0, c0
    for x in xs:
        h, c = cell(x, (h, c), recurrent_mask=mask)
    torch.manual_seed(4)
    he, ce = h0, c0
    for x in xs:
        keep = _keep_masks(reference.draw_zoneout_seed(torch.device("cpu")), 0, 0.25, 0.5, 1, B, H)
        _, he, ce = _oracle(x[None], he, ce, *w, h_mask=mask, zoneout=(0.25, 0.5), keep=keep)
    assert_close(h, he, torch.float64, "h")
    assert_close(c, ce, torch.float64, "c")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_eval_zoneout_and_recurrent_mask(backend):
    """Eval: the expectation, with the recurrent mask still applied (it is an explicit argument); unbatched input
    takes an unbatched mask; gradients too."""
    B = 3
    cell, w = _cell_and_weights(backend)
    cell.eval()
    x = torch.randn(B, I, dtype=torch.float64, device=DEVICE)
    h0, c0 = (torch.randn(B, H, dtype=torch.float64, device=DEVICE) for _ in range(2))
    mask = functional.dropout_mask((B, H), 0.5, x)
    h, c = cell(x[0], (h0[0], c0[0]), recurrent_mask=mask[0])
    _, he, ce = _oracle(x[:1][None], h0[:1], c0[:1], *w, h_mask=mask[:1], zoneout=(0.25, 0.5))
    assert_close(h, he[0], torch.float64, "h")
    assert_close(c, ce[0], torch.float64, "c")
    xg = x.clone().requires_grad_()
    h, c = cell(xg, (h0, c0), recurrent_mask=mask)
    (h.sum() + 2 * c.sum()).backward()
    leaf = x.clone().requires_grad_()
    _, he, ce = _oracle(leaf[None], h0, c0, *w, h_mask=mask, zoneout=(0.25, 0.5))
    (he.sum() + 2 * ce.sum()).backward()
    assert_close(xg.grad, leaf.grad, torch.float64, "grad_input")


# ---------------------------------------------------------------------------- compile and export


def test_compile_fullgraph_and_export():
    """torch.compile(fullgraph=True) and torch.export take every option. With the aot_eager backend, or inductor
    with ``fallback_random``, the compiled module draws the masks eager draws for the same seed (inductor's own
    RNG draws others); in eval mode the export gives eager's numbers."""
    m = tritonlstm.LSTM(I, H, num_layers=2, recurrent_dropout=0.3, input_dropout=0.2, zoneout=(0.1, 0.2),
                        weight_drop=0.3, backend="reference")  # fmt: skip
    x = torch.randn(4, 2, I)
    torch.manual_seed(2)
    eager = m(x)[0]
    import torch._inductor.config as inductor_config

    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        with inductor_config.patch(fallback_random=True):
            compiled = torch.compile(m, fullgraph=True, backend=backend)
            torch.manual_seed(2)
            assert torch.equal(compiled(x)[0], eager), backend
    m.eval()
    ep = torch.export.export(m, (x,), dynamic_shapes={"input": {0: torch.export.Dim("T"), 1: torch.export.Dim("B")}})
    x2 = torch.randn(7, 3, I)
    assert_close(ep.module()(x2)[0], m(x2)[0], torch.float32, "exported eval")


# --------------------------------------------------------------------------------------------- ONNX


class _Decoder(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.lstm = tritonlstm.LSTM(I, H, batch_first=True, **kwargs)
        self.head = torch.nn.Linear(H * (2 if kwargs.get("bidirectional") else 1), 2)

    def forward(self, x, lengths):
        y, (h, c) = self.lstm(x, lengths=lengths)
        return self.head(y), h, c


def test_eval_zoneout_exports_as_a_loop_verified_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX verification needs the onnx extra: pip install -e '.[onnx]'")
    from tritonlstm.export import export_onnx, verify_onnx

    model = _Decoder(zoneout=(0.3, 0.1), bidirectional=True, recurrent_dropout=0.5, weight_drop=0.2).eval()
    args = (torch.randn(3, 5, I), torch.tensor([5, 2, 4]))
    proto = export_onnx(model, args, tmp_path / "z.onnx")
    ops_used = {n.op_type for n in proto.graph.node}
    assert "Loop" in ops_used and "LSTM" not in ops_used
    report = verify_onnx(model, tmp_path / "z.onnx", args, other_args=[(torch.randn(2, 9, I), torch.tensor([9, 1]))])
    assert report.passed


def test_plain_torch_onnx_export_of_eval_zoneout_and_refusals():
    ort = pytest.importorskip("onnxruntime", reason="ONNX verification needs the onnx extra: pip install -e '.[onnx]'")
    model = _Decoder(zoneout=0.25).eval()
    x, lengths = torch.randn(2, 4, I), torch.tensor([4, 3])
    B, T = torch.export.Dim("B"), torch.export.Dim("T")
    program = torch.onnx.export(model, (x, lengths), dynamo=True, dynamic_shapes={"x": {0: B, 1: T}, "lengths": {0: B}})
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    for xb, lb in ((x, lengths), (torch.randn(3, 11, I), torch.tensor([11, 5, 1]))):
        got = session.run(None, {"x": xb.numpy(), "lengths": lb.numpy()})
        for g, e in zip(got, model(xb, lb)):
            assert_close(torch.from_numpy(g), e.detach(), torch.float32, "onnxruntime")
    with pytest.raises(RuntimeError, match="zoneout.*dynamo=True"):
        torch.onnx.export(model, (x, lengths), io.BytesIO(), dynamo=False, opset_version=18)
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        torch.onnx.export(model, (x, lengths), dynamo=True, training=torch.onnx.TrainingMode.PRESERVE)


# ------------------------------------------------------------------------------ inside the kernels


class _Launches:
    """Stands in for a kernel (kernels/step.py, or a KERNELS entry of the sequence modules): counts
    ``kernel[grid](...)`` launches, then launches."""

    def __init__(self, kernel, counts: dict, name: str):
        self.kernel, self.counts, self.name = kernel, counts, name

    def __getitem__(self, grid):
        self.counts[self.name] = self.counts.get(self.name, 0) + 1
        return self.kernel[grid]


def _count_launches_and_big_tensors(monkeypatch, module, x, threshold):
    """Kernel launches and the (shape, dtype) of every tensor of >= threshold elements made by a forward+backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tritonlstm.kernels import sequence_bwd, sequence_fwd, step

    counts: dict = {}
    names = ("_lstm_fwd_step_kernel", "_lstm_bwd_step_kernel", "_lstmp_fwd_step_kernel", "_lstmp_bwd_step_kernel")
    for name in names:
        monkeypatch.setattr(step, name, _Launches(getattr(step, name), counts, name))
    for table in (sequence_fwd.KERNELS, sequence_bwd.KERNELS):
        for regime, kernel in table.items():
            monkeypatch.setitem(table, regime, _Launches(kernel, counts, kernel.__name__))
    big: list = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.numel() >= threshold:
                    big.append((tuple(t.shape), t.dtype))
            return out

    torch.manual_seed(0)
    xg = x.clone().requires_grad_()
    with Record():
        y, (h, c) = module(xg)
        (y.sum() + h.sum() + c.sum()).backward()
    for name in names:
        monkeypatch.setattr(step, name, getattr(step, name).kernel)
    for table in (sequence_fwd.KERNELS, sequence_bwd.KERNELS):
        for regime, launches in table.items():
            monkeypatch.setitem(table, regime, launches.kernel)
    return counts, sorted(big, key=repr)


@requires_triton
def test_regularisers_add_no_launch_and_no_sequence_sized_mask(monkeypatch):
    """The host-overhead probe: per layer the same Triton launches with or without the regularisers (the masks
    are applied inside the step kernels), and zoneout allocates nothing of T x B x H; recurrent dropout's forward
    neither (its mask is [D, B, H]). The per-step kernels here; the sequence kernels in the next test."""
    monkeypatch.setenv("TRITONLSTM_KERNEL", "step")
    T, B, Hb = 4, 4, 8
    x = torch.randn(T, B, I, device=TRITON_DEVICE)
    base = tritonlstm.LSTM(I, Hb, bidirectional=True, backend="triton").to(TRITON_DEVICE)
    launches, big = _count_launches_and_big_tensors(monkeypatch, base, x, T * B * Hb)
    assert launches == {"_lstm_fwd_step_kernel": 2 * T, "_lstm_bwd_step_kernel": 2 * T}
    for options in ({"zoneout": (0.2, 0.3)}, {"zoneout": 0.1, "recurrent_dropout": 0.2}):
        m = tritonlstm.LSTM(I, Hb, bidirectional=True, backend="triton", **options).to(TRITON_DEVICE)
        m.load_state_dict(base.state_dict())
        got, big_reg = _count_launches_and_big_tensors(monkeypatch, m, x, T * B * Hb)
        assert got == launches, options
        extra = [s for s in big_reg if s not in big or big_reg.count(s) > big.count(s)]
        if "recurrent_dropout" in options:  # the backward forms h_{t-1} * mask for dW_hh, one [T-1, B, H] per direction
            assert all(s == ((T - 1, B, Hb), torch.float32) for s in extra), extra
        else:
            assert extra == [], extra
        assert not any(dtype in (torch.bool, torch.int8, torch.uint8) for _, dtype in big_reg)


@requires_triton
def test_regularisers_keep_the_sequence_kernels(monkeypatch):
    """With recurrent dropout or zoneout a layer still takes one sequence-kernel launch forward and one backward
    (both directions), and allocates nothing of T x B x H beyond the backward's h_{t-1} * mask for dW_hh."""
    monkeypatch.setenv("TRITONLSTM_KERNEL", "sequence")
    T, B, Hb = 4, 4, 8
    x = torch.randn(T, B, I, device=TRITON_DEVICE)
    base = tritonlstm.LSTM(I, Hb, bidirectional=True, backend="triton").to(TRITON_DEVICE)
    launches, big = _count_launches_and_big_tensors(monkeypatch, base, x, T * B * Hb)
    assert launches == {"_seq_fwd_batch_kernel": 1, "_seq_bwd_batch_kernel": 1}
    for options in ({"recurrent_dropout": 0.3}, {"zoneout": (0.2, 0.3)}, {"zoneout": 0.1, "recurrent_dropout": 0.2}):
        m = tritonlstm.LSTM(I, Hb, bidirectional=True, backend="triton", **options).to(TRITON_DEVICE)
        m.load_state_dict(base.state_dict())
        got, big_reg = _count_launches_and_big_tensors(monkeypatch, m, x, T * B * Hb)
        assert got == launches, options
        extra = [s for s in big_reg if s not in big or big_reg.count(s) > big.count(s)]
        if "recurrent_dropout" in options:
            assert all(s == ((T - 1, B, Hb), torch.float32) for s in extra), (options, extra)
        else:
            assert extra == [], (options, extra)


@requires_triton
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([5, 2, 4], True)], ids=["full-fwd", "lengths-rev"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_zoneout_kernels_match_oracle_with_the_masks_they_drew(dtype, lengths, reverse, train):
    """The step kernels draw zoneout masks in-kernel (Philox); with the test-only store of those masks a plain
    loop reproduces the outputs, and the backward (which draws them again) matches its autograd. Eval: the
    expectation. A recurrent dropout mask rides along."""
    from tritonlstm.kernels import step
    from tritonlstm.kernels.common import GradOutputs, Layer, Regularisers, Saved

    T, B, p = 5, 3, (0.3, 0.5)

    def r(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * 0.5).to(dtype).to(TRITON_DEVICE)

    x, h0, c0, w_ih, w_hh, b_ih, b_hh = r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H)
    mask = functional.dropout_mask((B, H), 0.4, h0)
    lens = torch.tensor(lengths, device=TRITON_DEVICE) if lengths is not None else None
    seed = torch.tensor([2024], device=TRITON_DEVICE) if train else None
    drawn = torch.full((2, 2, T, B, H), -1, dtype=torch.int8, device=TRITON_DEVICE)
    # the direction under test is direction 1 of two identical ones: its masks come from Philox streams 2 and 3
    two = [torch.stack([t, t]) for t in (h0, c0, w_ih, w_hh, b_ih, b_hh)]
    layer = Layer(x, *two, None, lens, (reverse, reverse))
    regs = Regularisers(torch.stack([mask, mask]), p, seed)
    y2, h_n, c_n, gates, cs = step.forward(layer, regs, True, zoneout_masks_out=drawn if train else None)
    y, h_n, c_n, drawn = y2[..., H:], h_n[1], c_n[1], drawn[1]
    if train:
        assert ((drawn == 0) | (drawn == 1)).all()
        assert abs(drawn[0].double().mean().item() - p[0]) < 0.2 and abs(drawn[1].double().mean().item() - p[1]) < 0.2
        order = range(T - 1, -1, -1) if reverse else range(T)
        keep = [(drawn[0, t].bool().cpu(), drawn[1, t].bool().cpu()) for t in order]
    leaves = [t.detach().cpu().double().requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]
    lens_cpu = lens.cpu() if lens is not None else None
    ye, he, ce = _oracle(*leaves, h_mask=mask.cpu(), zoneout=p, keep=keep if train else None, lengths=lens_cpu,
                         reverse=reverse)  # fmt: skip
    g = torch.Generator().manual_seed(3)
    dy, dh, dc = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (ye, he, ce))
    ((ye * dy).sum() + (he * dh).sum() + (ce * dc).sum()).backward()
    # direction 1's gradients alone: direction 0 gets no upstream gradient (its part of dx is then zero)
    dy2, dh2, dc2 = (torch.zeros(2, *t.shape, dtype=dtype, device=TRITON_DEVICE) for t in (dy, dh, dc))
    dy2[1], dh2[1], dc2[1] = (t.to(dtype).to(TRITON_DEVICE) for t in (dy, dh, dc))
    up = GradOutputs(torch.cat([dy2[0], dy2[1]], -1), dh2, dc2)
    both = step.backward(layer, regs, Saved(y2, gates, cs), up)
    grads = [both.dx] + [g[1] for g in both[1:6]]
    for name, a, e in (("output", y, ye), ("h_n", h_n, he), ("c_n", c_n, ce)):
        assert_close(a.cpu(), e.detach(), dtype, name)
    for name, a, leaf in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db"), grads, leaves):
        assert_close(a.cpu(), leaf.grad, dtype, name)


@requires_triton
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
def test_recurrent_dropout_with_a_projection_in_the_kernels_matches_the_reference(lengths):
    """LSTMP (mask [D, B, P] on the projected h_{t-1}): the kernels against the reference implementation, same
    host-drawn mask (same seed), float64 outputs and gradients."""
    kwargs = dict(input_size=I, hidden_size=H, proj_size=2, bidirectional=True, recurrent_dropout=0.5)
    ours = tritonlstm.LSTM(**kwargs, backend="triton").double().to(TRITON_DEVICE)
    ref = tritonlstm.LSTM(**kwargs, backend="reference").double().to(TRITON_DEVICE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, I, dtype=torch.float64, device=TRITON_DEVICE)
    lens = torch.tensor(lengths) if lengths is not None else None
    results = []
    for m in (ours, ref):
        torch.manual_seed(8)
        xg = x.clone().requires_grad_()
        y, (h, c) = m(xg, lengths=lens)
        weighted_loss(y, h, c).backward()
        results.append([y, h, c, xg.grad, m.weight_hh_l0.grad, m.weight_hr_l0_reverse.grad])
    for name, a, e in zip(("output", "h_n", "c_n", "grad_input", "grad_w_hh", "grad_w_hr_reverse"), *results):
        assert_close(a.detach(), e.detach(), torch.float64, name)
