"""The per-step kernels with their time loop captured once per shape as a CUDA graph (regime ``"graphed"``).

Where the rule still picks the per-step kernels on a GPU (large B with a large W_hh), one Python launch per step
costs more host time than the kernel takes. Here the whole loop of launches (the per-step launchers of
:mod:`tritonlstm.kernels.step`, unchanged) is captured once per shape into a CUDA graph and replayed: the inputs
are copied into the graph's static buffers, one replay runs every step, and the outputs are copied out (a caller
may keep them, for the backward, while the next call replays the same buffers). The numbers are the per-step
kernels' bit for bit: the same kernels on the same values.

It protects itself: never while the caller is capturing a graph of its own (the step launchers then run into the
caller's graph, as they always did); a capture that raises warns once and that shape runs the step launchers from
then on; the first use on each device and dtype is self-tested against them (:mod:`tritonlstm.kernels.selftest`).
Graphs are kept per shape (T included) up to :data:`MAX_GRAPHS`, the least recently used dropped first.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable

import torch

from tritonlstm.kernels import gru_step, step
from tritonlstm.kernels.common import NONE, GradOutputs, Grads, Layer, Needs, Regularisers, Saved
from tritonlstm.kernels.runtime import capturing, current

MAX_GRAPHS = 16
"""Captured graphs kept per process (each holds its static buffers and the loop's intermediates)."""


def graphable(device: torch.device) -> bool:
    """Whether a call on ``device`` may be captured: CUDA tensors, and the caller is not capturing."""
    return device.type == "cuda" and not capturing(device)


def capture(fn: Callable[[], tuple]) -> tuple[Callable[[], None], tuple]:
    """Capture ``fn()`` (launches on static buffers) into a CUDA graph: ``(replay, outputs)``, where ``replay()``
    reruns it into the same ``outputs``. A warm-up call on a side stream first compiles every kernel."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


class _Graphs:
    """Captured loops by key, least recently used first; keys whose capture failed."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, tuple] = OrderedDict()
        self.failed: set[tuple] = set()
        self.captures = 0

    def reset(self) -> None:
        self.entries.clear()
        self.failed.clear()
        self.captures = 0

    def run(self, key: tuple, inputs: list, build: Callable[[list], tuple], fallback: Callable[[], tuple]) -> tuple:
        """Copy ``inputs`` into the static buffers of ``key``'s graph (captured now from ``build(static)`` if new),
        replay it and return copies of its outputs; ``fallback()`` where the key cannot be captured."""
        if key in self.failed:
            return fallback()
        entry = self.entries.get(key)
        if entry is None:
            static = [t.clone() if isinstance(t, torch.Tensor) else t for t in inputs]
            try:
                replay, outputs = capture(lambda: build(static))
            except Exception as e:  # noqa: BLE001  a capture that fails is a fallback, never a wrong number
                self.failed.add(key)
                warnings.warn(
                    f"tritonlstm: capturing the per-step kernels as a CUDA graph failed ({type(e).__name__}: "
                    f"{str(e).strip()[:200]}); this shape runs them launch by launch.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return fallback()
            self.captures += 1
            entry = (replay, static, outputs)
            self.entries[key] = entry
            if len(self.entries) > MAX_GRAPHS:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
        replay, static, outputs = entry
        for buffer, value in zip(static, inputs):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(value)
        replay()
        return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in outputs)


GRAPHS = _Graphs()


def _signature(t: torch.Tensor | None):
    return None if t is None else (tuple(t.shape), t.dtype, tuple(t.stride()))


def _key(pass_: str, layer: Layer, regs: Regularisers, tensors: list, extra: tuple) -> tuple:
    device = current(layer.x.device)
    return (pass_, str(device), layer.reverse, regs.zoneout, *map(_signature, tensors), *extra)


def forward(
    layer: Layer, regs: Regularisers = NONE, store: bool = True, config: dict | None = None, err=None,
):  # fmt: skip
    """:func:`tritonlstm.kernels.step.forward`, replayed from a graph captured once per shape (see the module)."""
    if not graphable(layer.x.device):
        return step.forward(layer, regs, store, config)
    tensors = [*layer[:9], *regs[::2]]  # every tensor: the layer's and the mask and seed (zoneout's p is in the key)

    def build(static):
        return step.forward(Layer(*static[:9], layer.reverse), Regularisers(static[9], regs.zoneout, static[10]),
                            store, config)  # fmt: skip

    key = _key("forward", layer, regs, tensors, (store, tuple(sorted((config or {}).items()))))
    return GRAPHS.run(key, tensors, build, lambda: step.forward(layer, regs, store, config))


def backward(
    layer: Layer, regs: Regularisers, saved: Saved, grad_out: GradOutputs, needs: Needs = Needs(),
    config: dict | None = None, err=None,
) -> Grads:  # fmt: skip
    """:func:`tritonlstm.kernels.step.backward`, replayed from a graph captured once per shape."""
    if not graphable(layer.x.device):
        return step.backward(layer, regs, saved, grad_out, needs, config)
    tensors = [*layer[:9], *regs[::2], *saved, *grad_out]

    def build(static):
        return tuple(step.backward(
            Layer(*static[:9], layer.reverse), Regularisers(static[9], regs.zoneout, static[10]), Saved(*static[11:14]),
            GradOutputs(*static[14:17]), needs, config,
        ))  # fmt: skip

    key = _key("backward", layer, regs, tensors, (tuple(needs), tuple(sorted((config or {}).items()))))
    out = GRAPHS.run(key, tensors, build, lambda: tuple(step.backward(layer, regs, saved, grad_out, needs, config)))
    return Grads(*out)


def gru_forward(
    layer: Layer, regs: Regularisers = NONE, store: bool = True, config: dict | None = None, err=None,
):  # fmt: skip
    """:func:`tritonlstm.kernels.gru_step.forward`, replayed from a graph captured once per shape."""
    if not graphable(layer.x.device):
        return gru_step.forward(layer, regs, store, config)
    tensors = [*layer[:9], *regs[::2]]

    def build(static):
        return gru_step.forward(Layer(*static[:9], layer.reverse), Regularisers(static[9], regs.zoneout, static[10]),
                                store, config)  # fmt: skip

    key = _key("gru-forward", layer, regs, tensors, (store, tuple(sorted((config or {}).items()))))
    return GRAPHS.run(key, tensors, build, lambda: gru_step.forward(layer, regs, store, config))


def gru_backward(layer: Layer, regs: Regularisers, y, gates, dy, dh_n, needs, config: dict | None = None, err=None):
    """:func:`tritonlstm.kernels.gru_step.backward`, replayed from a graph captured once per shape."""
    if not graphable(layer.x.device):
        return gru_step.backward(layer, regs, y, gates, dy, dh_n, needs, config)
    tensors = [*layer[:9], *regs[::2], y, gates, dy, dh_n]

    def build(static):
        return tuple(gru_step.backward(
            Layer(*static[:9], layer.reverse), Regularisers(static[9], regs.zoneout, static[10]), *static[11:15],
            needs, config,
        ))  # fmt: skip

    key = _key("gru-backward", layer, regs, tensors, (tuple(needs), tuple(sorted((config or {}).items()))))
    out = GRAPHS.run(key, tensors, build, lambda: tuple(gru_step.backward(layer, regs, y, gates, dy, dh_n, needs,
                                                                           config)))  # fmt: skip
    return list(out)
