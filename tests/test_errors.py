"""Error parity with torch.nn.LSTM / nn.LSTMCell: bad input raises exactly torch's exception type and message.

Every parity case builds the torch module and the tritonlstm one (``backend="auto"``) with the same arguments
and weights, makes the same call on both, and requires both to raise, with the same type and the same text.
The error cases run on CPU tensors: their messages come from torch's Python checks and ATen's argument
checks, which run before any kernel. Then: what still works like nn.LSTM (empty batch, hx as a list,
non-contiguous states, PackedSequence, proj_size), PackedSequence errors (ATen's wording differs, type compared),
the ``lengths=`` extension's validation (ours only), ``LSTMCell`` parity, and backend choice.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import tritonlstm
from tests.helpers import DEVICE, assert_close, requires_interpreter

I, H = 3, 5  # input_size, hidden_size of every case
T, B = 2, 3  # sequence length, batch size of every case (T != B, so a swapped dimension is caught)
P = 2  # proj_size of the projection cases


def _pair(device="cpu", dtype=torch.float32, **kwargs):
    """nn.LSTM and tritonlstm.LSTM(backend="auto") built with the same arguments, holding the same weights."""
    kwargs = {"input_size": I, "hidden_size": H, **kwargs}
    ref = nn.LSTM(**kwargs).to(device=device, dtype=dtype)
    ours = tritonlstm.LSTM(**kwargs, backend="auto").to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _raised(fn, who):
    """The exception `fn()` raises; an AssertionError (a test failure) when it raises none."""
    try:
        fn()
    except Exception as e:  # any exception is the result under test: it is returned and compared
        return e
    raise AssertionError(f"{who} did not raise")


def assert_same_error(ref_call, our_call, names=("nn.LSTM", "tritonlstm.LSTM")):
    """Both calls raise; same exception type, same message."""
    expected = _raised(ref_call, names[0])
    actual = _raised(our_call, names[1])
    assert type(actual) is type(expected), f"{names[0]} raised {expected!r}, {names[1]} raised {actual!r}"
    assert str(actual) == str(expected)


def x_(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device)


def hx_(*shape, h_device="cpu", c_device="cpu", dtype=torch.float32, c_shape=None):
    return (
        torch.randn(*shape, dtype=dtype, device=h_device),
        torch.randn(*(c_shape or shape), dtype=dtype, device=c_device),
    )


# (module kwargs, lambda -> call args); shapes are written out so every id says what it tests
FORWARD_CASES = [
    # input rank
    pytest.param({}, lambda: (x_(I),), id="input-1d"),
    pytest.param({}, lambda: (x_(T, B, 1, I),), id="input-4d"),
    pytest.param({"batch_first": True}, lambda: (x_(B, T, 1, I),), id="input-4d-batch_first"),
    pytest.param({}, lambda: (x_(T, B, 1, I), hx_(1, B, H)), id="input-4d-with-hx"),
    # input.size(-1)
    pytest.param({}, lambda: (x_(T, B, I + 1),), id="input_size-batched"),
    pytest.param({"batch_first": True}, lambda: (x_(B, T, I + 1),), id="input_size-batched-batch_first"),
    pytest.param({}, lambda: (x_(T, I + 1),), id="input_size-unbatched"),
    pytest.param({}, lambda: (x_(T, B, I - 1), hx_(1, B, H)), id="input_size-batched-with-hx"),
    pytest.param({"bidirectional": True}, lambda: (x_(T, I + 2), hx_(2, H)), id="input_size-unbatched-bidir-with-hx"),
    # input dtype differs from the weights
    pytest.param({}, lambda: (x_(T, B, I, dtype=torch.float64),), id="input-float64"),
    pytest.param({}, lambda: (x_(T, I, dtype=torch.float64),), id="input-float64-unbatched"),
    pytest.param({}, lambda: (x_(T, B, I, dtype=torch.float64), hx_(1, B, H)), id="input-float64-with-hx"),
    pytest.param({}, lambda: (x_(T, B, I, dtype=torch.float16),), id="input-float16"),
    pytest.param({}, lambda: (torch.zeros(T, B, I, dtype=torch.int64),), id="input-int64"),
    # hidden[0] size
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B - 1, H, c_shape=(1, B, H))), id="h0-batch-mismatch"),
    pytest.param(
        {"batch_first": True},
        lambda: (x_(B, T, I), hx_(1, T, H, c_shape=(1, B, H))),
        id="h0-batch-mismatch-batch_first",
    ),
    pytest.param({"num_layers": 2}, lambda: (x_(T, B, I), hx_(1, B, H, c_shape=(2, B, H))), id="h0-layers-mismatch"),
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H + 1, c_shape=(1, B, H))), id="h0-hidden-mismatch"),
    pytest.param(
        {"bidirectional": True}, lambda: (x_(T, B, I), hx_(1, B, H, c_shape=(2, B, H))), id="h0-layers-bidirectional"
    ),
    pytest.param(
        {"num_layers": 2, "bidirectional": True, "batch_first": True},
        lambda: (x_(B, T, I), hx_(2, B, H)),
        id="hx-layers-bidirectional-2layers-batch_first",
    ),
    pytest.param({}, lambda: (x_(T, I), hx_(1, H + 1)), id="h0-hidden-mismatch-unbatched"),
    pytest.param({"bidirectional": True}, lambda: (x_(T, I), hx_(1, H)), id="h0-layers-unbatched-bidirectional"),
    # hidden[1] size (hidden[0] correct)
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, c_shape=(1, B + 1, H))), id="c0-batch-mismatch"),
    pytest.param(
        {"batch_first": True},
        lambda: (x_(B, T, I), hx_(1, B, H, c_shape=(1, T, H))),
        id="c0-batch-mismatch-batch_first",
    ),
    pytest.param({"num_layers": 2}, lambda: (x_(T, B, I), hx_(2, B, H, c_shape=(3, B, H))), id="c0-layers-mismatch"),
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, c_shape=(1, B, H - 1))), id="c0-hidden-mismatch"),
    pytest.param(
        {"bidirectional": True}, lambda: (x_(T, B, I), hx_(2, B, H, c_shape=(1, B, H))), id="c0-layers-bidirectional"
    ),
    pytest.param({}, lambda: (x_(T, I), hx_(1, H, c_shape=(1, H + 2))), id="c0-hidden-mismatch-unbatched"),
    # hx rank
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, H)), id="hx-2d-with-3d-input"),
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, c_shape=(1, H))), id="c0-2d-with-3d-input"),
    pytest.param({"batch_first": True}, lambda: (x_(B, T, I), hx_(1, H)), id="hx-2d-with-3d-input-batch_first"),
    pytest.param({}, lambda: (x_(T, I), hx_(1, 1, H)), id="hx-3d-with-2d-input"),
    pytest.param({}, lambda: (x_(T, I), hx_(1, H, c_shape=(1, 1, H))), id="c0-3d-with-2d-input"),
    # hx a single tensor instead of a tuple (indexing it gives nn.LSTM's IndexError / rank errors)
    pytest.param({}, lambda: (x_(T, B, I), x_(1, B, H)), id="hx-single-tensor"),
    pytest.param({"num_layers": 2}, lambda: (x_(T, B, I), x_(2, B, H)), id="hx-single-tensor-2layers"),
    pytest.param({"num_layers": 2}, lambda: (x_(T, I), x_(2, H)), id="hx-single-tensor-unbatched-2layers"),
    # hx with more than two tensors: ATen's lstm checks "lstm expects two hidden states" before anything else
    pytest.param({}, lambda: (x_(T, B, I), (*hx_(1, B, H), x_(1, B, H))), id="hx-three-tensors"),
    pytest.param({}, lambda: (x_(T, B, I), [*hx_(1, B, H), x_(1, B, H)]), id="hx-three-tensors-list"),
    pytest.param(
        {},
        lambda: (x_(T, B, I), (*hx_(1, B, H, h_device="meta"), x_(1, B, H))),
        id="hx-three-tensors-h0-meta",
    ),
    pytest.param(
        {}, lambda: (x_(0, B, I), (*hx_(1, B, H), x_(1, B, H))), id="hx-three-tensors-seq-len-0"
    ),
    pytest.param({}, lambda: (x_(T, B, I), (x_(1, B, H),)), id="hx-one-tensor-tuple"),
    # proj_size: hidden[0]'s last size is proj_size, hidden[1]'s stays hidden_size
    pytest.param({"proj_size": P}, lambda: (x_(T, B, I), hx_(1, B, H)), id="proj-h0-hidden_size"),
    pytest.param(
        {"proj_size": P}, lambda: (x_(T, B, I), hx_(1, B, P + 1, c_shape=(1, B, H))), id="proj-h0-proj_size+1"
    ),
    pytest.param({"proj_size": P}, lambda: (x_(T, B, I), hx_(1, B, P)), id="proj-c0-proj_size"),
    pytest.param(
        {"proj_size": P}, lambda: (x_(T, B, I), hx_(1, B, P, c_shape=(1, B, H + 1))), id="proj-c0-hidden_size+1"
    ),
    pytest.param({"proj_size": P}, lambda: (x_(T, I), hx_(1, H)), id="proj-h0-hidden_size-unbatched"),
    pytest.param({"proj_size": P}, lambda: (x_(T, I), hx_(1, P)), id="proj-c0-proj_size-unbatched"),
    pytest.param(
        {"proj_size": P, "bidirectional": True},
        lambda: (x_(T, B, I), hx_(1, B, P, c_shape=(2, B, H))),
        id="proj-h0-layers-bidirectional",
    ),
    pytest.param(
        {"proj_size": P, "num_layers": 2, "bidirectional": True, "batch_first": True},
        lambda: (x_(B, T, I), hx_(4, B, P)),
        id="proj-c0-proj_size-bidir-2layers-batch_first",
    ),
    pytest.param({"proj_size": P}, lambda: (x_(T, B, I + 1),), id="proj-input_size"),
    pytest.param({"proj_size": P}, lambda: (x_(T, B, I), hx_(1, P)), id="proj-hx-2d-with-3d-input"),
    # sequence length 0
    pytest.param({}, lambda: (x_(0, B, I),), id="seq-len-0"),
    pytest.param({}, lambda: (x_(0, B, I), hx_(1, B, H)), id="seq-len-0-with-hx"),
    pytest.param({"batch_first": True}, lambda: (x_(B, 0, I),), id="seq-len-0-batch_first"),
    pytest.param({"batch_first": True}, lambda: (x_(B, 0, I), hx_(1, B, H)), id="seq-len-0-batch_first-with-hx"),
    pytest.param({}, lambda: (x_(0, I),), id="seq-len-0-unbatched"),
    pytest.param({}, lambda: (x_(0, I), hx_(1, H)), id="seq-len-0-unbatched-with-hx"),
    pytest.param(
        {"num_layers": 2, "bidirectional": True}, lambda: (x_(0, B, I), hx_(4, B, H)), id="seq-len-0-bidir-2layers"
    ),
    pytest.param({}, lambda: (x_(0, 0, I),), id="seq-len-0-batch-0"),
    # devices: "meta" stands in for a second device
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, h_device="meta")), id="h0-meta"),
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, c_device="meta")), id="c0-meta"),
    pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, h_device="meta", c_device="meta")), id="hx-meta"),
    pytest.param(
        {"batch_first": True, "bidirectional": True},
        lambda: (x_(B, T, I), hx_(2, B, H, c_device="meta")),
        id="c0-meta-batch_first-bidir",
    ),
    pytest.param({}, lambda: (x_(T, I), hx_(1, H, h_device="meta")), id="h0-meta-unbatched"),
    pytest.param({}, lambda: (x_(0, B, I), hx_(1, B, H, h_device="meta")), id="h0-meta-seq-len-0"),
    pytest.param({}, lambda: (x_(T, B, I, device="meta"),), id="input-meta"),
    pytest.param({}, lambda: (x_(T, I, device="meta"),), id="input-meta-unbatched"),
    pytest.param({"batch_first": True}, lambda: (x_(B, T, I, device="meta"),), id="input-meta-batch_first"),
    pytest.param({}, lambda: (x_(T, B, I, device="meta"), hx_(1, B, H)), id="input-meta-hx-cpu"),
    pytest.param(
        {},
        lambda: (x_(T, B, I, device="meta"), hx_(1, B, H, h_device="meta", c_device="meta")),
        id="input-meta-hx-meta",
    ),
    pytest.param({}, lambda: (x_(0, B, I, device="meta"),), id="input-meta-seq-len-0"),
]


@pytest.mark.parametrize("kwargs, make_args", FORWARD_CASES)
def test_forward_error_matches_nn_lstm(kwargs, make_args):
    ref, ours = _pair(**kwargs)
    args = make_args()
    assert_same_error(lambda: ref(*args), lambda: ours(*args))


@pytest.mark.parametrize(
    "kwargs, make_args",
    [
        pytest.param({}, lambda: (x_(T, B, I), hx_(1, B, H, dtype=torch.float64)), id="hx-float64"),
        pytest.param({}, lambda: (x_(T, B, I), (x_(1, B, H, dtype=torch.float64), x_(1, B, H))), id="h0-float64"),
        pytest.param({}, lambda: (x_(T, B, I), (x_(1, B, H), x_(1, B, H, dtype=torch.float64))), id="c0-float64"),
        pytest.param({"batch_first": True}, lambda: (x_(B, T, I), hx_(1, B, H, dtype=torch.float64)), id="batch_first"),
        pytest.param({}, lambda: (x_(T, I), hx_(1, H, dtype=torch.float64)), id="unbatched"),
    ],
)
def test_hidden_dtype_mismatch(kwargs, make_args):
    # nn.LSTM's message for this case depends on the CPU backend ATen picks (through mkldnn it is
    # "get_mkldnn_dtype: unsupported data type"), so only its exception type is compared; ours must say exactly
    # what ATen's own check_attributes says for it.
    ref, ours = _pair(**kwargs)
    args = make_args()
    expected = _raised(lambda: ref(*args), "nn.LSTM")
    actual = _raised(lambda: ours(*args), "tritonlstm.LSTM")
    assert type(expected) is RuntimeError
    assert type(actual) is type(expected)
    assert str(actual) == (
        "Input and hidden tensors are not the same dtype, found input tensor with Float and hidden tensor with Double"
    )


def _set_param(name, dtype=None, device=None):
    """A module edit: replace parameter `name` by a copy in another dtype or on another device."""

    def edit(module):
        old = getattr(module, name).detach()
        setattr(module, name, nn.Parameter(old.to(dtype=dtype or old.dtype, device=device or old.device)))

    return edit


@pytest.mark.parametrize(
    "edit, exact",
    [
        # nn.LSTM checks weight_ih_l0's dtype against the input in Python: same type and text
        pytest.param(_set_param("weight_ih_l0", dtype=torch.float64), True, id="weight_ih_l0-float64"),
        # ATen's device check of every parameter: same type and text
        pytest.param(_set_param("weight_hh_l1", device="meta"), True, id="weight_hh_l1-meta"),
        pytest.param(_set_param("bias_ih_l0_reverse", device="meta"), True, id="bias_ih_l0_reverse-meta"),
        # any other parameter in another dtype: nn.LSTM's message depends on the CPU backend (mkldnn says
        # "get_mkldnn_dtype: unsupported data type", ATen's own loop a matmul dtype error): type only
        pytest.param(
            _set_param("weight_hh_l0", dtype=torch.float64), False, id="weight_hh_l0-float64"
        ),
        pytest.param(
            _set_param("weight_hh_l1", dtype=torch.float64), False, id="weight_hh_l1-float64"
        ),
        pytest.param(_set_param("weight_ih_l1", dtype=torch.float64), False, id="weight_ih_l1-float64"),
        pytest.param(_set_param("bias_hh_l0", dtype=torch.float64), False, id="bias_hh_l0-float64"),
        pytest.param(_set_param("bias_ih_l1_reverse", dtype=torch.float64), False, id="bias_ih_l1_reverse-float64"),
    ],
)
def test_parameter_dtype_or_device_mismatch(edit, exact):
    ref, ours = _pair(num_layers=2, bidirectional=True)
    edit(ref)
    edit(ours)
    x = x_(T, B, I)
    if exact:
        assert_same_error(lambda: ref(x), lambda: ours(x))
    else:
        expected = _raised(lambda: ref(x), "nn.LSTM")
        actual = _raised(lambda: ours(x), "tritonlstm.LSTM")
        assert type(expected) is RuntimeError
        assert type(actual) is type(expected), f"nn.LSTM raised {expected!r}, tritonlstm raised {actual!r}"
        # ATen's generic check_attributes wording (see tritonlstm.modules._check_attributes)
        assert str(actual) == (
            "Input and parameter tensors are not the same dtype, found input tensor with Float and parameter "
            "tensor with Double"
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"dropout": 2}, id="dropout=2"),
        pytest.param({"dropout": True}, id="dropout=True"),
        pytest.param({"dropout": -0.1}, id="dropout=-0.1"),
        pytest.param({"dropout": "0.5"}, id="dropout=str"),
        pytest.param({"hidden_size": 0}, id="hidden_size=0"),
        pytest.param({"hidden_size": 1.5}, id="hidden_size=1.5"),
        pytest.param({"input_size": 0}, id="input_size=0"),
        pytest.param({"input_size": 3.0}, id="input_size=3.0"),
        pytest.param({"num_layers": 0}, id="num_layers=0"),
        pytest.param({"proj_size": -1}, id="proj_size=-1"),
        pytest.param({"proj_size": H}, id="proj_size=hidden_size"),
        pytest.param({"proj_size": H + 1}, id="proj_size>hidden_size"),
        pytest.param({"bias": 1}, id="bias=1"),
        pytest.param({"batch_first": 1}, id="batch_first=1"),
    ],
)
def test_constructor_error_matches_nn_lstm(kwargs):
    kwargs = {"input_size": I, "hidden_size": H, **kwargs}
    assert_same_error(lambda: nn.LSTM(**kwargs), lambda: tritonlstm.LSTM(**kwargs, backend="auto"))


def test_dropout_with_one_layer_warns_like_nn_lstm():
    kwargs = {"input_size": I, "hidden_size": H, "dropout": 0.5, "num_layers": 1}
    caught = {}
    for name, cls in (("ref", nn.LSTM), ("ours", tritonlstm.LSTM)):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            cls(**kwargs)
        caught[name] = [(w.category, str(w.message)) for w in record]
    assert len(caught["ref"]) == 1 and caught["ref"][0][0] is UserWarning
    assert caught["ours"] == caught["ref"]


# ---------------------------------------------------------------- what still works like nn.LSTM


def _pair64(**kwargs):
    return _pair(device=DEVICE, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize(
    "kwargs, with_hx",
    [
        pytest.param({}, False, id="plain"),
        pytest.param({}, True, id="with-hx"),
        pytest.param({"batch_first": True}, True, id="batch_first-with-hx"),
        pytest.param({"num_layers": 2, "bidirectional": True}, False, id="bidir-2layers"),
        pytest.param(
            {"num_layers": 2, "bidirectional": True, "batch_first": True}, True, id="bidir-2layers-bf-with-hx"
        ),
    ],
)
def test_batch_size_zero_returns_empty_outputs(kwargs, with_hx):
    ref, ours = _pair64(**kwargs)
    states = ref.num_layers * (2 if ref.bidirectional else 1)
    x = torch.randn((0, T, I) if ref.batch_first else (T, 0, I), dtype=torch.float64, device=DEVICE)
    hx = tuple(torch.randn(states, 0, H, dtype=torch.float64, device=DEVICE) for _ in range(2)) if with_hx else None
    y_ref, (h_ref, c_ref) = ref(x, hx)
    y, (h, c) = ours(x, hx)
    for name, got, exp in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert got.shape == exp.shape, f"{name}: {tuple(got.shape)} != nn.LSTM's {tuple(exp.shape)}"
        assert got.numel() == 0 and got.dtype == exp.dtype and got.device == exp.device, name


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_hx_as_list(batched):
    ref, ours = _pair64(num_layers=2)
    x = torch.randn((T, B, I) if batched else (T, I), dtype=torch.float64, device=DEVICE)
    shape = (2, B, H) if batched else (2, H)
    hx = [torch.randn(shape, dtype=torch.float64, device=DEVICE) for _ in range(2)]
    y_ref, (h_ref, c_ref) = ref(x, hx)
    y, (h, c) = ours(x, hx)
    for name, got, exp in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(got, exp, torch.float64, name)
    if batched:  # a PackedSequence with hx as a list too (the packed path tells it from a GRU's one tensor)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, [T] + [1] * (B - 1))
        (y_ref, (h_ref, c_ref)), (y, (h, c)) = ref(packed, hx), ours(packed, hx)
        for name, got, exp in (("output", y.data, y_ref.data), ("h_n", h, h_ref), ("c_n", c, c_ref)):
            assert_close(got, exp, torch.float64, f"packed {name}")


def test_unbatched_hx_with_extra_tensor_works_like_nn_lstm():
    """Unbatched, nn.LSTM rebuilds hx from hx[0] and hx[1] before ATen sees it, so a third tensor is ignored."""
    ref, ours = _pair64(num_layers=2)
    x = torch.randn(T, I, dtype=torch.float64, device=DEVICE)
    hx = tuple(torch.randn(2, H, dtype=torch.float64, device=DEVICE) for _ in range(3))
    y_ref, (h_ref, c_ref) = ref(x, hx)
    y, (h, c) = ours(x, hx)
    for name, got, exp in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(got, exp, torch.float64, name)


def _strided(shape, layout, requires_grad=True, device=DEVICE):
    """A float64 leaf and a non-contiguous view of it with `shape`: transposed, or every other element."""
    if layout == "transposed":  # (d0, d1, d2) stored as (d1, d0, d2)
        base = torch.randn(shape[1], shape[0], *shape[2:], dtype=torch.float64).to(device)  # CPU draws
        base.requires_grad_(requires_grad)
        view = base.transpose(0, 1)
    else:  # "step": every other element of the last dimension
        base = torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64).to(device)
        base.requires_grad_(requires_grad)
        view = base[..., ::2]
    assert view.shape == shape and not view.is_contiguous()
    return base, view


@pytest.mark.parametrize("layout", ["transposed", "step"])
@pytest.mark.parametrize("what", ["hx", "input"])
def test_non_contiguous_inputs(what, layout):
    """Non-contiguous hx (or input): same outputs and same gradients (of the strided leaves) as nn.LSTM.

    The oracle runs on the CPU: on CUDA, nn.LSTM (cuDNN) refuses a non-contiguous hx, which tritonlstm accepts."""
    ref, ours = _pair64(num_layers=2, bidirectional=True)
    results = []
    for module, dev in ((ref.cpu(), "cpu"), (ours, DEVICE)):
        torch.manual_seed(1)  # the same draws on the CPU, then moved
        if what == "hx":
            x_leaf = x_view = torch.randn(T, B, I, dtype=torch.float64).to(dev).requires_grad_()
            (h_leaf, h_view), (c_leaf, c_view) = (_strided((4, B, H), layout, device=dev) for _ in range(2))
        else:
            x_leaf, x_view = _strided((T, B, I), layout, device=dev)
            h_leaf = h_view = torch.randn(4, B, H, dtype=torch.float64).to(dev).requires_grad_()
            c_leaf = c_view = torch.randn(4, B, H, dtype=torch.float64).to(dev).requires_grad_()
        y, (h, c) = module(x_view, (h_view, c_view))
        g = torch.Generator().manual_seed(3)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(dev)).sum() for t in (y, h, c))
        loss.backward()
        results.append({"output": y, "h_n": h, "c_n": c, "grad_x": x_leaf.grad, "grad_h0": h_leaf.grad,
                        "grad_c0": c_leaf.grad})  # fmt: skip
    expected, actual = results
    for name in expected:
        assert actual[name] is not None, f"{name}: no gradient"
        assert_close(actual[name].detach().cpu(), expected[name].detach(), torch.float64, name)


# ---------------------------------------------------------------- PackedSequence and proj_size: work like nn.LSTM


def _packed(enforce_sorted=True):
    """A batch_first padded batch of B sequences packed; unsorted lengths need enforce_sorted=False."""
    lengths = [T, T - 1, 1] if enforce_sorted else [1, T, T - 1]
    return pack_padded_sequence(x_(B, T, I), lengths, batch_first=True, enforce_sorted=enforce_sorted)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"bidirectional": True}, id="bidir"),
        pytest.param({"proj_size": P}, id="proj"),
    ],
)
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_sequence_returns_packed_sequence(kwargs, enforce_sorted):
    """Packed in, packed out, with nn.LSTM's batch_sizes and index tensors (values are compared in the other test files)."""
    ref, ours = _pair(**kwargs)
    packed = _packed(enforce_sorted)
    assert (packed.sorted_indices is None) == enforce_sorted
    y_ref, (h_ref, c_ref) = ref(packed)
    y, (h, c) = ours(packed)
    assert isinstance(y, PackedSequence), type(y)
    assert torch.equal(y.batch_sizes, y_ref.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        got, exp = getattr(y, name), getattr(y_ref, name)
        if exp is None:
            assert got is None, f"{name}: {got} where nn.LSTM has None"
        else:
            assert got is not None and torch.equal(got, exp), f"{name}: {got} != nn.LSTM's {exp}"
    for name, got, exp in (("output.data", y.data, y_ref.data), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert got.shape == exp.shape, f"{name}: {tuple(got.shape)} != nn.LSTM's {tuple(exp.shape)}"


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(
    "kwargs, batched, with_hx",
    [
        pytest.param({}, True, False, id="batched"),
        pytest.param({}, False, True, id="unbatched-with-hx"),
        pytest.param({"num_layers": 2, "bidirectional": True, "batch_first": True}, True, True, id="bidir-2layers-bf"),
    ],
)
def test_proj_size_forward_shapes(kwargs, batched, with_hx):
    """proj_size > 0 runs, with nn.LSTM's parameters and output shapes (values are compared in the other test files)."""
    ref, ours = _pair(proj_size=P, **kwargs)
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    states = ref.num_layers * (2 if ref.bidirectional else 1)
    if batched:
        x = x_(B, T, I) if ref.batch_first else x_(T, B, I)
        hx = hx_(states, B, P, c_shape=(states, B, H))
    else:
        x, hx = x_(T, I), hx_(states, P, c_shape=(states, H))
    args = (x, hx) if with_hx else (x,)
    y_ref, (h_ref, c_ref) = ref(*args)
    y, (h, c) = ours(*args)
    assert h_ref.shape[-1] == P and c_ref.shape[-1] == H  # what the case is about
    for name, got, exp in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert got.shape == exp.shape, f"{name}: {tuple(got.shape)} != nn.LSTM's {tuple(exp.shape)}"


# ---------------------------------------------------------------- PackedSequence: hx errors
# nn.LSTM's packed branch skips check_forward_args in Python, so ATen raises there, in its own words ("The size
# of tensor a (4) must match ...", "got an incorrect number of RNN parameters", an index_select bound error).
# Ours runs check_forward_args on packed input too: same exception type, and nn.LSTM's batched wording.


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(
    "kwargs, enforce_sorted, make_hx, message",
    [
        pytest.param(
            {}, True, lambda: hx_(1, B + 1, H, c_shape=(1, B, H)),
            "Expected hidden[0] size (1, 3, 5), got [1, 4, 5]", id="h0-batch-sorted",
        ),
        pytest.param(
            {}, True, lambda: hx_(1, B, H, c_shape=(1, B + 1, H)),
            "Expected hidden[1] size (1, 3, 5), got [1, 4, 5]", id="c0-batch-sorted",
        ),
        pytest.param(
            {}, True, lambda: hx_(1, B, H + 1, c_shape=(1, B, H)),
            "Expected hidden[0] size (1, 3, 5), got [1, 3, 6]", id="h0-hidden-sorted",
        ),
        pytest.param(
            {}, True, lambda: hx_(1, B, H, c_shape=(1, B, H - 1)),
            "Expected hidden[1] size (1, 3, 5), got [1, 3, 4]", id="c0-hidden-sorted",
        ),
        pytest.param(
            {}, False, lambda: hx_(1, B - 1, H, c_shape=(1, B, H)),
            "Expected hidden[0] size (1, 3, 5), got [1, 2, 5]", id="h0-batch-small-unsorted",
        ),
        pytest.param(
            {}, False, lambda: hx_(1, B, H + 1, c_shape=(1, B, H)),
            "Expected hidden[0] size (1, 3, 5), got [1, 3, 6]", id="h0-hidden-unsorted",
        ),
        pytest.param(
            {}, True, lambda: hx_(2, B, H),
            "Expected hidden[0] size (1, 3, 5), got [2, 3, 5]", id="hx-layers-sorted",
        ),
        pytest.param(
            {"proj_size": P}, True, lambda: hx_(1, B, H),
            "Expected hidden[0] size (1, 3, 2), got [1, 3, 5]", id="proj-h0-hidden_size",
        ),
        pytest.param(
            {"proj_size": P}, True, lambda: hx_(1, B, P),
            "Expected hidden[1] size (1, 3, 5), got [1, 3, 2]", id="proj-c0-proj_size",
        ),
    ],
)  # fmt: skip
def test_packed_hx_size_error(kwargs, enforce_sorted, make_hx, message):
    ref, ours = _pair(**kwargs)
    packed, hx = _packed(enforce_sorted), make_hx()
    expected = _raised(lambda: ref(packed, hx), "nn.LSTM")
    actual = _raised(lambda: ours(packed, hx), "tritonlstm.LSTM")
    assert type(expected) is RuntimeError
    assert type(actual) is RuntimeError, f"nn.LSTM raised {expected!r}, tritonlstm raised {actual!r}"
    assert str(actual) == message


@pytest.mark.parametrize(
    "enforce_sorted, make_hx, message",
    [
        # nn.LSTM index_selects hx into the packed order and silently drops the extra row: ours refuses it
        pytest.param(
            False, lambda: hx_(1, B + 1, H, c_shape=(1, B, H)),
            "Expected hidden[0] size (1, 3, 5), got [1, 4, 5]", id="h0-batch-large-unsorted",
        ),
        # nn.LSTM (torch 2.13, CPU) crashes the process with a segfault here, so it is not called
        pytest.param(
            True, lambda: hx_(2, B, H, c_shape=(1, B, H)),
            "Expected hidden[0] size (1, 3, 5), got [2, 3, 5]", id="h0-layers-sorted",
        ),
        # nn.LSTM runs and ignores c_0's extra layer
        pytest.param(
            False, lambda: hx_(1, B, H, c_shape=(2, B, H)),
            "Expected hidden[1] size (1, 3, 5), got [2, 3, 5]", id="c0-layers-unsorted",
        ),
    ],
)  # fmt: skip
def test_packed_hx_size_error_ours_only(enforce_sorted, make_hx, message):
    """Packed cases where nn.LSTM raises nothing, or crashes: ours raises its batched-input RuntimeError."""
    _, ours = _pair()
    with pytest.raises(RuntimeError) as info:
        ours(_packed(enforce_sorted), make_hx())
    assert str(info.value) == message


@pytest.mark.parametrize("lengths", [torch.tensor([T, T - 1, 1]), [T, T - 1, 1]], ids=["tensor", "list"])
def test_lengths_with_packed_sequence(lengths):
    _, ours = _pair()
    with pytest.raises(ValueError, match="lengths= cannot be combined with PackedSequence input"):
        ours(_packed(), lengths=lengths)


# ---------------------------------------------------------------- lengths= (tritonlstm only: nn.LSTM has none)


_RANGE = f"between 1 and the sequence length {T}, got values from"


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        pytest.param(torch.tensor([1.0, 2.0, 2.0]), TypeError, "integer tensor, got dtype torch.float32", id="float"),
        pytest.param([1.0, 2.0, 2.0], TypeError, "integer tensor, got dtype torch.float32", id="float-list"),
        pytest.param(torch.tensor([True, True, True]), TypeError, "integer tensor, got dtype torch.bool", id="bool"),
        pytest.param(torch.tensor([1, 2, 2, 1]), ValueError, r"must have shape \(3,\).* got \(4,\)$", id="shape-B+1"),
        pytest.param(torch.tensor([[1], [2], [2]]), ValueError, r"shape \(3,\).* got \(3, 1\)$", id="shape-Bx1"),
        pytest.param(torch.tensor(2), ValueError, r"must have shape \(3,\).* got \(\)$", id="shape-0d"),
        pytest.param(torch.tensor([1, 0, 2]), ValueError, f"{_RANGE} 0 to 2", id="zero"),
        pytest.param(torch.tensor([2, 3, 1]), ValueError, f"{_RANGE} 1 to 3", id="gt-T"),
        pytest.param(torch.tensor([2, -1, 2]), ValueError, f"{_RANGE} -1 to 2", id="negative"),
        pytest.param(
            torch.tensor([1, 2, 2], device="meta"),
            ValueError,
            r"on the CPU or on the input's device \(cpu\), got meta",
            id="device-meta",
        ),
    ],
)
def test_lengths_validation(lengths, error, match):
    _, ours = _pair()
    with pytest.raises(error, match=match):
        ours(x_(T, B, I), lengths=lengths)


def test_lengths_with_unbatched_input():
    _, ours = _pair()
    with pytest.raises(ValueError, match=r"lengths= needs batched \(3-D\) input"):
        ours(x_(T, I), lengths=torch.tensor([T]))


@pytest.mark.parametrize(
    "lengths",
    [pytest.param([T, 1, T], id="list"), pytest.param(torch.tensor([T, 1, T], dtype=torch.int32), id="int32")],
)
def test_lengths_other_integer_forms_accepted(lengths):
    """A Python list, or an int32 tensor, gives exactly what the int64 tensor gives."""
    _, ours = _pair()
    x = x_(T, B, I)
    y_ref, (h_ref, c_ref) = ours(x, lengths=torch.tensor([T, 1, T]))
    y, (h, c) = ours(x, lengths=lengths)
    for name, got, exp in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert torch.equal(got, exp), name
    assert torch.all(y[1:, 1] == 0)  # the lengths were applied: sequence 1 stops after one step


def test_lengths_batch_first_checked_against_its_own_sizes():
    """batch_first input is (B, T, I) with B=3, T=2: lengths are (B,) and bounded by T, not the other way round."""
    _, ours = _pair(batch_first=True)
    x = x_(B, T, I)
    y, (h, c) = ours(x, lengths=torch.tensor([T, 1, T]))
    assert y.shape == (B, T, H) and h.shape == c.shape == (1, B, H)
    with pytest.raises(ValueError, match=f"between 1 and the sequence length {T}, got values from 1 to {B}"):
        ours(x, lengths=torch.tensor([B, 1, 1]))
    with pytest.raises(ValueError, match=rf"must have shape \({B},\).* got \({T},\)$"):
        ours(x, lengths=torch.ones(T, dtype=torch.int64))


# ---------------------------------------------------------------- LSTMCell: parity with nn.LSTMCell

CELL_NAMES = ("nn.LSTMCell", "tritonlstm.LSTMCell")


def _cell_pair(**kwargs):
    """nn.LSTMCell and tritonlstm.LSTMCell(backend="auto") with the same arguments, holding the same weights."""
    kwargs = {"input_size": I, "hidden_size": H, **kwargs}
    ref = nn.LSTMCell(**kwargs)
    ours = tritonlstm.LSTMCell(**kwargs, backend="auto")
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# (lambda -> call args)
CELL_CASES = [
    # ranks
    pytest.param(lambda: (x_(),), id="input-0d"),
    pytest.param(lambda: (x_(1, B, I),), id="input-3d"),
    pytest.param(lambda: (x_(B, I), hx_(1, B, H, c_shape=(B, H))), id="h0-3d"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, c_shape=(1, B, H))), id="c0-3d"),
    pytest.param(lambda: (x_(I), hx_(1, H)), id="unbatched-input-2d-hx"),
    pytest.param(lambda: (x_(B, I), hx_(H)), id="batched-input-1d-hx"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, c_shape=(H,))), id="batched-input-1d-c0"),
    # sizes
    pytest.param(lambda: (x_(B, I + 1),), id="input_size"),
    pytest.param(lambda: (x_(B, I - 1), hx_(B, H)), id="input_size-with-hx"),
    pytest.param(lambda: (x_(I + 1),), id="input_size-unbatched"),
    pytest.param(lambda: (x_(B, I), hx_(B + 1, H, c_shape=(B, H))), id="h0-batch"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, c_shape=(B - 1, H))), id="c0-batch"),
    pytest.param(lambda: (x_(B, I), hx_(B, H + 1, c_shape=(B, H))), id="h0-hidden"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, c_shape=(B, H + 2))), id="c0-hidden"),
    pytest.param(lambda: (x_(I), hx_(H, c_shape=(H - 1,))), id="c0-hidden-unbatched"),
    pytest.param(lambda: (x_(0, I), hx_(1, H)), id="batch-0-hx-batch-1"),
    # number of hidden states
    pytest.param(lambda: (x_(B, I), (x_(B, H),)), id="hx-one-tensor"),
    pytest.param(lambda: (x_(B, I), (*hx_(B, H), x_(B, H))), id="hx-three-tensors"),
    pytest.param(lambda: (x_(B, I), [*hx_(B, H), x_(B, H)]), id="hx-three-tensors-list"),
    pytest.param(lambda: (x_(I), (x_(H),)), id="hx-one-tensor-unbatched"),
    pytest.param(lambda: (x_(B, I), x_(B, H)), id="hx-single-tensor"),
    # dtypes
    pytest.param(lambda: (x_(B, I, dtype=torch.float64),), id="input-float64"),
    pytest.param(lambda: (x_(B, I, dtype=torch.float64), hx_(B, H)), id="input-float64-with-hx"),
    pytest.param(lambda: (x_(B, I, dtype=torch.float16),), id="input-float16"),
    pytest.param(lambda: (torch.zeros(B, I, dtype=torch.int64),), id="input-int64"),
    pytest.param(lambda: (x_(B, I), (x_(B, H, dtype=torch.float64), x_(B, H))), id="h0-float64"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, dtype=torch.float64)), id="hx-float64"),
    pytest.param(lambda: (x_(I), (x_(H, dtype=torch.float64), x_(H))), id="h0-float64-unbatched"),
    # devices: "meta" stands in for a second device
    pytest.param(lambda: (x_(B, I, device="meta"),), id="input-meta"),
    pytest.param(lambda: (x_(B, I, device="meta"), hx_(B, H)), id="input-meta-hx-cpu"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, h_device="meta")), id="h0-meta"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, h_device="meta", c_device="meta")), id="hx-meta"),
    pytest.param(lambda: (x_(I), hx_(H, h_device="meta")), id="h0-meta-unbatched"),
    pytest.param(lambda: (x_(B, I), hx_(B, H, c_device="meta")), id="c0-meta"),
    pytest.param(lambda: (x_(I), hx_(H, c_device="meta")), id="c0-meta-unbatched"),
]


@pytest.mark.parametrize("make_args", CELL_CASES)
def test_cell_error_matches_nn_lstmcell(make_args):
    ref, ours = _cell_pair()
    args = make_args()
    assert_same_error(lambda: ref(*args), lambda: ours(*args), CELL_NAMES)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_set_param("bias_ih", dtype=torch.float64), id="bias_ih-float64"),
        pytest.param(_set_param("bias_hh", dtype=torch.float64), id="bias_hh-float64"),
        pytest.param(_set_param("bias_hh", device="meta"), id="bias_hh-meta"),
        pytest.param(_set_param("weight_ih", dtype=torch.float64), id="weight_ih-float64"),
        pytest.param(_set_param("weight_hh", dtype=torch.float64), id="weight_hh-float64"),
        pytest.param(_set_param("bias_ih", device="meta"), id="bias_ih-meta"),
    ],
)
def test_cell_parameter_dtype_or_device_mismatch(edit):
    ref, ours = _cell_pair()
    edit(ref)
    edit(ours)
    x = x_(B, I)
    assert_same_error(lambda: ref(x), lambda: ours(x), CELL_NAMES)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"hidden_size": 1.5}, id="hidden_size=1.5"),
        pytest.param({"input_size": 3.5}, id="input_size=3.5"),
        pytest.param({"hidden_size": -1}, id="hidden_size=-1"),
    ],
)
def test_cell_constructor_error_matches_nn_lstmcell(kwargs):
    kwargs = {"input_size": I, "hidden_size": H, **kwargs}
    assert_same_error(
        lambda: nn.LSTMCell(**kwargs), lambda: tritonlstm.LSTMCell(**kwargs, backend="auto"), CELL_NAMES
    )


@pytest.mark.parametrize(
    "make_args",
    [
        pytest.param(lambda: (x_(0, I),), id="batch-0"),
        pytest.param(lambda: (x_(0, I), hx_(0, H)), id="batch-0-with-hx"),
        pytest.param(lambda: (x_(I),), id="unbatched"),
        pytest.param(lambda: (x_(I), hx_(H)), id="unbatched-with-hx"),
        # unbatched, nn.LSTMCell rebuilds hx from hx[0] and hx[1] in Python: a third tensor is ignored
        pytest.param(lambda: (x_(I), (*hx_(H), x_(H))), id="unbatched-hx-three-tensors"),
        pytest.param(lambda: (x_(B, I),), id="no-hx"),
        pytest.param(lambda: (x_(B, I), list(hx_(B, H))), id="hx-list"),
    ],
)
def test_cell_still_works_like_nn_lstmcell(make_args):
    """Outputs with nn.LSTMCell's shapes, dtype and device: (0, H) for batch 0, (H,) unbatched."""
    ref, ours = _cell_pair()
    args = make_args()
    expected, actual = ref(*args), ours(*args)
    assert isinstance(actual, tuple) and len(actual) == 2
    for name, got, exp in zip(("h_1", "c_1"), actual, expected):
        assert (got.shape, got.dtype, got.device) == (exp.shape, exp.dtype, exp.device), name
    assert expected[0].shape == ((H,) if args[0].dim() == 1 else (args[0].size(0), H))  # what the case is about


def test_cell_c0_of_another_dtype_is_an_error():
    """nn.LSTMCell's CPU path promotes a float64 c_0 silently; the fused kernel takes one dtype, so ours refuses."""
    _, ours = _cell_pair()
    with pytest.raises(RuntimeError, match="found input tensor with Float and hidden tensor with Double"):
        ours(x_(B, I), (x_(B, H), x_(B, H, dtype=torch.float64)))


# ---------------------------------------------------------------- backend choice


def test_invalid_backend_argument():
    with pytest.raises(ValueError, match="backend"):
        tritonlstm.LSTM(I, H, backend="nope")


def test_invalid_backend_env_var(monkeypatch):
    monkeypatch.setenv("TRITONLSTM_BACKEND", "nope")
    with pytest.raises(ValueError, match="TRITONLSTM_BACKEND"):
        tritonlstm.LSTM(I, H)


def test_backend_env_var_reference(monkeypatch):
    monkeypatch.setenv("TRITONLSTM_BACKEND", "reference")
    assert tritonlstm.LSTM(I, H).backend == "reference"
    assert tritonlstm.LSTM(I, H, backend="triton").backend == "triton"  # the argument wins over the env var


def test_backend_env_var_unset_is_auto(monkeypatch):
    monkeypatch.delenv("TRITONLSTM_BACKEND", raising=False)
    assert tritonlstm.LSTM(I, H).backend == "auto"


@requires_interpreter
def test_triton_backend_refuses_bfloat16_on_cpu():
    ours = tritonlstm.LSTM(I, H, backend="triton", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bfloat16"):
        ours(x_(T, B, I, dtype=torch.bfloat16))
