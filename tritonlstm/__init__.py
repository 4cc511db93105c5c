"""tritonlstm: torch.nn.LSTM on fused Triton kernels, forward and backward."""

from tritonlstm.backend import BACKENDS, ENV_VAR, default_backend, resolve_backend
from tritonlstm.functional import lstm, lstm_layer
from tritonlstm.modules import LSTM, LSTMCell

__version__ = "0.1.0"

__all__ = ["BACKENDS", "ENV_VAR", "LSTM", "LSTMCell", "__version__", "default_backend", "lstm", "lstm_layer", "resolve_backend"]
