"""Saving and loading: whole pickled models under torch.load's default weights_only=True, and state_dicts."""

from __future__ import annotations

import io

import torch
from torch import nn

import tritonlstm
from tests.helpers import assert_close


class RNNModel(nn.Module):
    """pytorch/examples' word_language_model model, with tritonlstm's LSTM swapped in for nn.LSTM."""

    def __init__(self, ntoken=20, ninp=8, nhid=12, nlayers=2, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = tritonlstm.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


# the allowlist that example passes to torch.serialization.safe_globals: torch's own modules and its model class
EXAMPLE_ALLOWLIST = [RNNModel, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM, nn.GRU, nn.RNN]


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    with torch.serialization.safe_globals(EXAMPLE_ALLOWLIST):
        return torch.load(buffer)  # weights_only=True, torch's default


def test_whole_model_loads_with_weights_only_and_the_examples_allowlist():
    model = RNNModel().eval()
    loaded = _roundtrip(model).eval()
    assert type(loaded.rnn) is tritonlstm.LSTM and loaded.rnn.backend == model.rnn.backend
    tokens = torch.randint(0, 20, (7, 3))
    hidden = (torch.zeros(2, 3, 12), torch.zeros(2, 3, 12))
    for a, b in zip(_flat(model(tokens, hidden)), _flat(loaded(tokens, hidden))):
        assert torch.equal(a, b)


def test_cell_and_options_survive_weights_only_loading():
    cell = tritonlstm.LSTMCell(4, 5, backend="reference")
    loaded = _roundtrip(cell)
    assert type(loaded) is tritonlstm.LSTMCell and loaded.backend == "reference"
    lstm = tritonlstm.LSTM(4, 5, reverse=True, proj_size=3, backend="reference")
    loaded = _roundtrip(lstm)
    assert loaded.reverse and loaded.proj_size == 3
    x = torch.randn(6, 2, 4)
    assert torch.equal(lstm(x)[0], loaded(x)[0])


def test_state_dict_moves_between_nn_lstm_and_tritonlstm():
    ref = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    ours = tritonlstm.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    ours.load_state_dict(_roundtrip(ref.state_dict()))
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        assert_close(ours(x)[0], ref(x)[0], torch.float32, "output")


def _flat(outputs):
    out, (h, c) = outputs
    return out, h, c
