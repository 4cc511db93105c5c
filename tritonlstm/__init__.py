"""tritonlstm: torch.nn.LSTM (and torch.nn.GRU) on fused Triton kernels, forward and backward.

The top-level names are imported on first use (a module ``__getattr__``), so that ``import tritonlstm`` and the
``tritonlstm`` command's ``--help`` do not wait for torch to import. Imported after torch (``import torch,
tritonlstm``), the package loads its modules at once, which costs little then and registers the modules (``LSTM``,
``LSTMCell``, ``GRU``, ``GRUCell``) as safe globals for ``torch.load(weights_only=True)`` before any model is loaded.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "BACKENDS": "tritonlstm.dispatch",
    "ENV_VAR": "tritonlstm.dispatch",
    "default_backend": "tritonlstm.dispatch",
    "resolve_backend": "tritonlstm.dispatch",
    "explain": "tritonlstm.dispatch",
    "lstm": "tritonlstm.functional",
    "gru": "tritonlstm.functional",
    "gru_layer": "tritonlstm.functional",
    "lstm_layer": "tritonlstm.functional",
    "LSTM": "tritonlstm.modules",
    "LSTMCell": "tritonlstm.modules",
    "GRU": "tritonlstm.modules",
    "GRUCell": "tritonlstm.modules",
    "Stateful": "tritonlstm.streaming",
    "stateful": "tritonlstm.streaming",
    "from_keras": "tritonlstm.keras",
    "to_keras": "tritonlstm.keras",
}
# submodules reached as attributes (tritonlstm.init.keras_, tritonlstm.keras.from_keras) without their own import
_SUBMODULES = ("init", "keras", "streaming")

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "Stateful",
    "__version__",
    "default_backend",
    "explain",
    "from_keras",
    "gru",
    "gru_layer",
    "lstm",
    "lstm_layer",
    "resolve_backend",
    "stateful",
    "to_keras",
]

if TYPE_CHECKING:  # what static tools and IDEs should see
    from tritonlstm.dispatch import BACKENDS, ENV_VAR, default_backend, explain, resolve_backend
    from tritonlstm.functional import gru, gru_layer, lstm, lstm_layer
    from tritonlstm import init, keras, streaming
    from tritonlstm.keras import from_keras, to_keras
    from tritonlstm.modules import GRU, LSTM, GRUCell, LSTMCell
    from tritonlstm.streaming import Stateful, stateful


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _LAZY.get(name)
    if module is None:
        # an AttributeError also lets `from tritonlstm import <submodule>` fall back to importing the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "torch" in sys.modules:
    importlib.import_module("tritonlstm.modules")
