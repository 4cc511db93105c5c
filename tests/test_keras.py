"""tritonlstm.keras against Keras 3 itself (KERAS_BACKEND=torch), in float64.

Both directions of weight conversion give Keras's exact outputs for return_sequences, return_state,
go_backwards, Bidirectional (every merge mode) and right-padded masks (our lengths=); a model trained a few
steps in one framework predicts the same in the other; unsupported options are refused by name; Keras's
own initialisers have the properties tritonlstm.init.keras_ gives.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import math
import os

import numpy as np
import pytest
import torch

import tritonlstm
from tests.helpers import DEVICE, assert_close
from tritonlstm.init import keras_
from tritonlstm.keras import from_keras, keras_outputs, lengths_from_mask, to_keras


def _keras_version() -> tuple[int, ...]:
    if importlib.util.find_spec("keras") is None:
        return ()
    return tuple(int(part) for part in importlib.metadata.version("keras").split(".")[:2] if part.isdigit())


# from 3.15 Keras's torch backend runs an unmasked LSTM layer in the layer's dtype on the CPU; earlier it took the
# generic step loop, whose products are float32 (see KERAS_MATMUL)
HAS_KERAS = _keras_version() >= (3, 15)
pytestmark = pytest.mark.skipif(
    not HAS_KERAS, reason="needs keras >= 3.15 (pip install -e '.[test]' installs it on Python >= 3.11)"
)
if HAS_KERAS:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

F64 = torch.float64
B, T, I, H = 3, 6, 4, 5
LENGTHS = torch.tensor([6, 2, 4])  # a full row, a short one, one in between
# Keras's float64 layers are exact float64 on its fused LSTM path (an LSTM layer, no mask), but its generic step
# loop (masks, RNN over an LSTMCell) and Dense multiply through keras.ops.matmul, whose type promotion makes
# float64 @ float64 a float32 product on the torch and jax backends: those comparisons take the float32 tolerance.
KERAS_MATMUL = torch.float32


@pytest.fixture(autouse=True)
def keras_seed():
    keras.utils.set_random_seed(0)


def to_torch(t) -> torch.Tensor:
    return torch.from_numpy(np.array(keras.ops.convert_to_numpy(t)))


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_same(actual, expected, generic=False, name="output"):
    """Our tensors are Keras's, in number, order and value (``generic``: Keras ran its generic step loop, which
    masks and RNN-over-cell layers take, at the float32 tolerance of its products)."""
    actual, expected = as_tuple(actual), as_tuple(expected)
    assert len(actual) == len(expected), f"{name}: {len(actual)} tensors, Keras returns {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a.detach(), to_torch(e), KERAS_MATMUL if generic else F64, f"{name}[{k}]")


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=F64)
    h0, c0 = torch.randn(2, B, H, generator=g, dtype=F64)
    return x, h0, c0


def keras_mask(lengths=LENGTHS):
    return np.arange(T)[None, :] < lengths.numpy()[:, None]


def lstm_layer(**options):
    layer = keras.layers.LSTM(H, dtype="float64", **options)
    layer.build((None, None, I))
    return layer


def bidirectional(merge_mode="concat", **options):
    layer = keras.layers.Bidirectional(keras.layers.LSTM(H, dtype="float64", **options), merge_mode, dtype="float64")
    layer.build((None, None, I))
    return layer


def randomise_biases(layer):
    """Keras starts with zero biases (forget gate 1): make them nonzero so their conversion is checked."""
    g = np.random.default_rng(1)
    bidir = isinstance(layer, keras.layers.Bidirectional)
    for sub in (layer.forward_layer, layer.backward_layer) if bidir else (layer,):
        if sub.cell.use_bias:
            sub.cell.bias.assign(g.standard_normal(4 * H))
    return layer


# ------------------------------------------------------------------------------------------------ Keras -> ours

OUTPUT_OPTIONS = [
    pytest.param(dict(), id="last"),
    pytest.param(dict(return_sequences=True), id="seq"),
    pytest.param(dict(return_state=True), id="last-state"),
    pytest.param(dict(return_sequences=True, return_state=True), id="seq-state"),
]


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize(
    "options",
    # zero_output_for_mask without return_sequences: Keras zeroes the last output of the rows shorter than T
    OUTPUT_OPTIONS + [pytest.param(dict(zero_output_for_mask=True), id="last-zero-output-for-mask")],
)
def test_from_keras_lstm(options, masked):
    x, h0, c0 = inputs()
    layer = randomise_biases(lstm_layer(**options))
    lstm = from_keras(layer, backend="reference")
    assert lstm.batch_first and not lstm.bidirectional and lstm.weight_ih_l0.dtype == F64
    mask, lengths = (keras_mask(), LENGTHS) if masked else (None, None)
    expected = layer(x.numpy(), initial_state=[h0.numpy(), c0.numpy()], mask=mask)
    got = keras_outputs(lstm(x, (h0[None], c0[None]), lengths=lengths), layer, lengths)
    assert_same(got, expected, masked)


def test_from_keras_no_bias_and_rnn_over_cell():
    x, _, _ = inputs()
    layer = lstm_layer(use_bias=False, return_sequences=True)
    lstm = from_keras(layer, backend="reference")
    assert not lstm.bias
    assert_same(keras_outputs(lstm(x), layer), layer(x.numpy()))

    rnn = keras.layers.RNN(keras.layers.LSTMCell(H, dtype="float64"), return_state=True, dtype="float64")
    rnn.build((None, None, I))
    assert_same(keras_outputs(from_keras(rnn, backend="reference")(x), rnn), rnn(x.numpy()), generic=True)


@pytest.mark.parametrize(
    "return_sequences, merge_mode, masked",
    [
        pytest.param(rs, "concat", masked, id=f"{'seq' if rs else 'last'}-concat-{'masked' if masked else 'full'}")
        for rs in (False, True)
        for masked in (False, True)
    ]
    + [pytest.param(True, mode, True, id=f"seq-{mode}-masked") for mode in ("sum", "ave", "mul", None)],
)
def test_from_keras_bidirectional(return_sequences, merge_mode, masked):
    x, h0, c0 = inputs()
    layer = randomise_biases(bidirectional(merge_mode, return_sequences=return_sequences, return_state=True))
    lstm = from_keras(layer, backend="reference")
    assert lstm.bidirectional
    mask, lengths = (keras_mask(), LENGTHS) if masked else (None, None)
    g = torch.Generator().manual_seed(2)
    hb, cb = torch.randn(2, B, H, generator=g, dtype=F64)
    expected = layer(x.numpy(), initial_state=[t.numpy() for t in (h0, c0, hb, cb)], mask=mask)
    hx = (torch.stack([h0, hb]), torch.stack([c0, cb]))
    got = keras_outputs(lstm(x, hx, lengths=lengths), layer, lengths)
    assert_same(got, expected, masked)


@pytest.mark.parametrize(
    "options",
    [p.values[0] for p in OUTPUT_OPTIONS] + [dict(return_sequences=True, zero_output_for_mask=True)],
    ids=[p.id for p in OUTPUT_OPTIONS] + ["seq-zero-output-for-mask"],
)
def test_from_keras_go_backwards(options):
    """go_backwards is reverse=True; Keras returns the sequence in processing order (keras_outputs flips ours)."""
    x, h0, c0 = inputs()
    layer = randomise_biases(lstm_layer(go_backwards=True, **options))
    lstm = from_keras(layer, backend="reference")
    assert lstm.reverse
    for lengths in (None, LENGTHS):
        mask = None if lengths is None else keras_mask(lengths)
        expected = layer(x.numpy(), initial_state=[h0.numpy(), c0.numpy()], mask=mask)
        got = keras_outputs(lstm(x, (h0[None], c0[None]), lengths=lengths), layer, lengths)
        assert_same(got, expected, mask is not None)
    back = to_keras(lstm, return_sequences=layer.return_sequences, return_state=layer.return_state)
    assert back.go_backwards
    state = [h0.numpy(), c0.numpy()]
    assert_same(back(x.numpy(), initial_state=state), layer(x.numpy(), initial_state=state))


def test_from_keras_on_the_triton_kernels():
    """The default backend (Triton: a GPU, or TRITON_INTERPRET=1; else the reference loop) gives Keras's numbers."""
    x, h0, c0 = inputs()
    layer = randomise_biases(bidirectional(return_sequences=True, return_state=True))
    lstm = from_keras(layer, device=DEVICE)
    expected = layer(x.numpy(), mask=keras_mask())
    got = keras_outputs(lstm(x.to(DEVICE), lengths=LENGTHS), layer, LENGTHS)
    assert_same(tuple(t.cpu() for t in got), expected, generic=True)


# ------------------------------------------------------------------------------------------------ ours -> Keras


def lstm_(**kw):
    return tritonlstm.LSTM(I, H, batch_first=True, dtype=F64, **kw)


@pytest.mark.parametrize(
    "make, options",
    [pytest.param(lstm_, p.values[0], id=f"LSTM-{p.id}") for p in OUTPUT_OPTIONS]
    + [
        pytest.param(lambda: lstm_(bias=False), dict(return_sequences=True, return_state=True), id="LSTM-nobias"),
        pytest.param(lambda: lstm_(bidirectional=True), dict(return_state=True), id="LSTM-bidir-last"),
        pytest.param(lambda: lstm_(bidirectional=True), dict(return_sequences=True), id="LSTM-bidir-seq"),
        pytest.param(
            lambda: torch.nn.LSTM(I, H, bidirectional=True, batch_first=True, dtype=F64),
            dict(return_sequences=True, return_state=True),
            id="nn.LSTM-bidir",
        ),
    ],
)
def test_to_keras(make, options):
    x, _, _ = inputs()
    module = make()
    layer = to_keras(module, **options)
    assert isinstance(layer, keras.layers.Bidirectional) == module.bidirectional
    for lengths in (None, LENGTHS) if isinstance(module, tritonlstm.LSTM) else (None,):  # nn.LSTM: no lengths=
        mask = None if lengths is None else keras_mask(lengths)
        with torch.no_grad():
            ours = module(x, lengths=lengths) if lengths is not None else module(x)
        assert_same(keras_outputs(ours, layer, lengths), layer(x.numpy(), mask=mask), mask is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_round_trip(dtype):
    module = tritonlstm.LSTM(I, H, bidirectional=True, batch_first=True, dtype=dtype)
    layer = to_keras(module)
    assert layer.forward_layer.cell.kernel.dtype == str(dtype).removeprefix("torch.")
    back = from_keras(layer)
    for name, p in module.named_parameters():
        q = getattr(back, name)
        assert q.dtype == dtype
        if name.startswith("bias_ih"):  # Keras has one bias: b_ih + b_hh (summed in float64) lands in b_ih
            p = (p.double() + getattr(module, name.replace("bias_ih", "bias_hh")).double()).to(dtype)
        elif name.startswith("bias_hh"):
            p = torch.zeros_like(p)
        assert torch.equal(q, p.detach()), name


# ---------------------------------------------------------------------------------------------------- training


def test_trained_in_keras_predicts_the_same_in_torch():
    x = np.random.default_rng(0).standard_normal((8, T, I))
    target = np.sin(x.sum(axis=(1, 2)))[:, None]
    lstm_layer_, dense = keras.layers.LSTM(H, dtype="float64"), keras.layers.Dense(1, dtype="float64")
    model = keras.Sequential([keras.Input((T, I), dtype="float64"), lstm_layer_, dense])
    before = [w.copy() for w in lstm_layer_.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, target, batch_size=4, epochs=2, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, lstm_layer_.get_weights())), "training moved nothing"

    lstm = from_keras(lstm_layer_, backend="reference")
    head = torch.nn.Linear(H, 1, dtype=F64)
    with torch.no_grad():
        head.weight.copy_(to_torch(dense.kernel).T)
        head.bias.copy_(to_torch(dense.bias))
        ours = head(keras_outputs(lstm(torch.from_numpy(x)), lstm_layer_))
    assert_close(ours, torch.from_numpy(model.predict(x, verbose=0)), KERAS_MATMUL, "prediction")  # Keras's Dense


def test_trained_in_torch_predicts_the_same_in_keras():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, T, I, generator=g, dtype=F64)
    target = torch.sin(x.sum(dim=(1, 2)))[:, None]
    lstm = keras_(tritonlstm.LSTM(I, H, bidirectional=True, batch_first=True, dtype=F64))
    head = torch.nn.Linear(2 * H, 1, dtype=F64)
    before = lstm.weight_hh_l0_reverse.detach().clone()
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=0.05)
    for _ in range(4):
        optimizer.zero_grad()
        _, (h_n, _) = lstm(x)
        loss = torch.nn.functional.mse_loss(head(torch.cat([h_n[0], h_n[1]], dim=-1)), target)
        loss.backward()
        optimizer.step()
    assert not torch.equal(before, lstm.weight_hh_l0_reverse), "training moved nothing"

    dense = keras.layers.Dense(1, dtype="float64")
    model = keras.Sequential([keras.Input((T, I), dtype="float64"), to_keras(lstm, return_sequences=False), dense])
    dense.kernel.assign(head.weight.detach().T.numpy())
    dense.bias.assign(head.bias.detach().numpy())
    with torch.no_grad():
        _, (h_n, _) = lstm(x)
        ours = head(torch.cat([h_n[0], h_n[1]], dim=-1))
    assert_close(ours, torch.from_numpy(model.predict(x.numpy(), verbose=0)), KERAS_MATMUL, "prediction")


# ------------------------------------------------------------------------------------------------ initialisers


def test_keras_initialisers_have_the_properties_of_init_keras_():
    """A fresh Keras LSTM, in torch's layout: what tritonlstm.init.keras_ promises to match."""
    lstm = from_keras(lstm_layer())
    w_hh = lstm.weight_hh_l0.detach()
    assert_close(w_hh.T @ w_hh, torch.eye(H, dtype=F64), F64, "W_hh^T W_hh")
    assert lstm.weight_ih_l0.abs().max().item() <= math.sqrt(6 / (I + 4 * H))
    expected = torch.zeros(4 * H, dtype=F64)
    expected[H : 2 * H] = 1
    assert torch.equal(lstm.bias_ih_l0 + lstm.bias_hh_l0, expected)


def test_orthogonal_is_keras_construction():
    """From the same normal matrix, init.keras_'s orthogonal W_hh is Keras's Orthogonal kernel, transposed."""
    from tritonlstm.init import _orthonormal_columns

    a = to_torch(keras.random.normal((4 * H, H), seed=7, dtype="float64"))
    kernel = to_torch(keras.initializers.Orthogonal(seed=7)(shape=(H, 4 * H), dtype="float64"))
    assert_close(_orthonormal_columns(a), kernel.T, F64, "W_hh")


# ------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(activation="relu"), "activation='relu'"),
        (dict(recurrent_activation="hard_sigmoid"), "recurrent_activation='hard_sigmoid'"),
        (dict(stateful=True), "stateful=True"),
    ],
    ids=["activation", "recurrent_activation", "stateful"],
)
def test_from_keras_refuses(options, match):
    if options.get("stateful"):
        layer = keras.layers.LSTM(H, dtype="float64", **options)
        layer.build((B, T, I))
    else:
        layer = lstm_layer(**options)
    with pytest.raises(ValueError, match=match):
        from_keras(layer)


def test_from_keras_refuses_unbuilt_and_other_layers():
    with pytest.raises(ValueError, match="build it"):
        from_keras(keras.layers.LSTM(H))
    rnn = keras.layers.SimpleRNN(H)
    rnn.build((None, None, I))
    with pytest.raises(ValueError, match="expected a keras.layers.LSTM or GRU"):
        from_keras(rnn)
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(H), backward_layer=keras.layers.LSTM(H + 1, go_backwards=True)
    )
    layer.build((None, None, I))
    with pytest.raises(ValueError, match="units"):
        from_keras(layer)


@pytest.mark.parametrize("option", ["dropout", "recurrent_dropout"])
def test_from_keras_dropout(option):
    ours = {"dropout": "input_dropout", "recurrent_dropout": "recurrent_dropout"}[option]
    layer = lstm_layer(**{option: 0.25})
    if ours in inspect.signature(tritonlstm.LSTM.__init__).parameters:
        assert getattr(from_keras(layer), ours) == 0.25
    else:
        with pytest.raises(ValueError, match=f"{option}=0.25 is not supported"):
            from_keras(layer)


def test_from_keras_warns_about_training_setup():
    layer = lstm_layer(kernel_regularizer="l2")
    with pytest.warns(UserWarning, match="kernel_regularizer"):
        from_keras(layer)


def test_to_keras_refuses():
    with pytest.raises(ValueError, match="num_layers=2"):
        to_keras(tritonlstm.LSTM(I, H, num_layers=2))
    with pytest.raises(ValueError, match="proj_size=3"):
        to_keras(tritonlstm.LSTM(I, H, proj_size=3))
    with pytest.raises(ValueError, match="to_keras takes a tritonlstm.LSTM or GRU"):
        to_keras(torch.nn.RNN(I, H))


def test_unroll():
    """unroll=True computes the same; with a mask Keras agrees with itself forwards, not backwards (refused)."""
    x, _, _ = inputs()
    layer = lstm_layer(unroll=True, return_sequences=True)
    lstm = from_keras(layer, backend="reference")
    assert_same(keras_outputs(lstm(x), layer), layer(x.numpy()))
    got = keras_outputs(lstm(x, lengths=LENGTHS), layer, LENGTHS)
    assert_same(got, layer(x.numpy(), mask=keras_mask()), generic=True)
    backwards = lstm_layer(unroll=True, go_backwards=True)
    with pytest.raises(ValueError, match="unroll=True with masking"):
        keras_outputs(from_keras(backwards, backend="reference")(x, lengths=LENGTHS), backwards, LENGTHS)


def test_keras_outputs_from_a_dict_of_options():
    x, _, _ = inputs()
    layer = bidirectional("sum", return_sequences=True, return_state=True)
    ours = from_keras(layer, backend="reference")(x, lengths=LENGTHS)
    options = dict(return_sequences=True, return_state=True, bidirectional=True, merge_mode="sum")
    for a, b in zip(keras_outputs(ours, layer, LENGTHS), keras_outputs(ours, options, LENGTHS), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown Keras output options"):
        keras_outputs(ours, dict(return_sequence=True))


def test_lengths_from_mask():
    assert torch.equal(lengths_from_mask(keras_mask()), LENGTHS)
    assert torch.equal(lengths_from_mask(torch.tensor([[1, 1, 0], [1, 0, 0]])), torch.tensor([2, 1]))
    for mask in ([[True, False, True]], [[False, True, True]]):
        with pytest.raises(ValueError, match="not right-padded"):
            lengths_from_mask(mask)


# ------------------------------------------------------------------------------------------------------ GRU


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: keras.layers.GRU(H, return_sequences=True, return_state=True, dtype="float64"), id="GRU"),
        pytest.param(lambda: keras.layers.GRU(H, go_backwards=True, return_sequences=True, dtype="float64"),
                     id="backwards"),  # fmt: skip
        pytest.param(lambda: keras.layers.GRU(H, use_bias=False, dtype="float64"), id="nobias"),
        pytest.param(lambda: keras.layers.Bidirectional(
            keras.layers.GRU(H, return_sequences=True, return_state=True, dtype="float64"), dtype="float64"),
            id="Bidirectional"),  # fmt: skip
    ],
)
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_from_keras_gru_gives_keras_outputs(make, masked):
    """Keras's GRU (reset_after=True) through from_keras: the same outputs and states, masks as lengths=."""
    layer = make()
    x = inputs()[0]
    mask = (torch.arange(T)[None, :] < LENGTHS[:, None]) if masked else None
    expected = layer(x.numpy(), mask=mask.numpy() if masked else None)
    gru = from_keras(layer)
    assert isinstance(gru, tritonlstm.GRU) and gru.batch_first
    lengths = lengths_from_mask(mask) if masked else None
    actual = keras_outputs(gru(x, lengths=lengths), layer, lengths)
    assert_same(actual, expected, generic=True)


def test_to_keras_gru_round_trip_and_refusals():
    gru = tritonlstm.GRU(I, H, batch_first=True, bidirectional=True, dtype=F64)
    x = inputs()[0]
    layer = to_keras(gru, return_sequences=True, return_state=True)
    assert isinstance(layer.forward_layer, keras.layers.GRU) and layer.forward_layer.cell.reset_after
    assert_same(keras_outputs(gru(x), layer), layer(x.numpy()), generic=True)
    back = from_keras(layer)
    for (n, a), (_, b) in zip(back.state_dict().items(), gru.state_dict().items()):
        assert torch.equal(a, b), n
    old = keras.layers.GRU(H, reset_after=False)
    old.build((None, None, I))
    with pytest.raises(ValueError, match="reset_after=False is not supported"):
        from_keras(old)
    mixed = keras.layers.Bidirectional(keras.layers.GRU(H), backward_layer=keras.layers.LSTM(H, go_backwards=True))
    mixed.build((None, None, I))
    with pytest.raises(ValueError, match="must be of one kind, got GRUCell .forward. and LSTMCell"):
        from_keras(mixed)
    with pytest.raises(ValueError, match="zoneout=0.1 is not supported: Keras's GRU has no zoneout"):
        to_keras(tritonlstm.GRU(I, H, zoneout=0.1))
