"""What every launcher shares on the host: the argument bundles, the gate layout, and the weight gradient of W_hh.

A launcher takes a layer's tensors as one :class:`Layer`, its regularisers as one :class:`Regularisers` and, in the
backward, what the forward kept (:class:`Saved`), the incoming gradients (:class:`GradOutputs`) and which gradients
to form (:class:`Needs`). Every regime's launcher takes the same bundles, so the plan can hand a call to any of them.
Shapes follow the legend of :mod:`tritonlstm.kernels.jit`; the parameters of the D directions are stacked on a
leading dimension. Imports no Triton: the reference implementation takes the same bundles.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tritonlstm.kernels.runtime import SUPPORTED_DTYPES, capturing, regulariser_refusal


class Layer(NamedTuple):
    """One layer's tensors, every direction."""

    x: torch.Tensor  # [T, B, I]
    h0: torch.Tensor  # [D, B, R]
    c0: torch.Tensor | None  # [D, B, H]; None for the GRU
    w_ih: torch.Tensor  # [D, G, I]  torch's gate-major rows
    w_hh: torch.Tensor  # [D, G, R]
    b_ih: torch.Tensor | None  # [D, G]
    b_hh: torch.Tensor | None  # [D, G]
    w_hr: torch.Tensor | None  # [D, P, H]
    lengths: torch.Tensor | None  # [B] int on x's device, 1 <= len <= T (validated by the caller)
    reverse: tuple[bool, ...]  # per direction: runs from the last step to the first

    @property
    def cell(self) -> str:
        """``"lstm"``, or ``"gru"`` for a GRU layer (no cell state)."""
        return "gru" if self.c0 is None else "lstm"

    @property
    def dims(self) -> tuple[int, int, int, int, int, int]:
        """``(T, B, D, H, R, P)``; P is 0 without a projection (always for a GRU, whose R is H)."""
        T, B = self.x.shape[0], self.x.shape[1]
        D, G, R = self.w_hh.shape
        H = R if self.cell == "gru" else G // 4
        return T, B, D, H, R, (self.w_hr.shape[1] if self.w_hr is not None else 0)

    def bias(self) -> torch.Tensor | None:
        """``b_ih + b_hh`` ([D, G]), the one bias the input projection adds."""
        return self.b_ih + self.b_hh if self.b_ih is not None else None

    def direction(self, d: int) -> Layer:
        """Direction d alone, its parameters and states still stacked (D = 1)."""
        one = slice(d, d + 1)
        return self._replace(
            h0=self.h0[one], c0=self.c0[one] if self.c0 is not None else None, w_ih=self.w_ih[one], w_hh=self.w_hh[one],
            b_ih=self.b_ih[one] if self.b_ih is not None else None,
            b_hh=self.b_hh[one] if self.b_hh is not None else None,
            w_hr=self.w_hr[one] if self.w_hr is not None else None, reverse=(self.reverse[d],),
        )  # fmt: skip


class Regularisers(NamedTuple):
    """Recurrent dropout and zoneout, applied inside the kernels (see :mod:`tritonlstm.ops`)."""

    h_mask: torch.Tensor | None = None  # [D, B, R] multiplies h_{t-1} in the recurrent product
    zoneout: tuple[float, float] = (0.0, 0.0)  # (p_h, p_c); not with a projection
    seed: torch.Tensor | None = None  # [1] int64: the training masks' Philox seed; None: the eval expectation

    @property
    def mode(self) -> int:
        """The kernels' ``ZONEOUT``: 0 off, 1 eval (the expectation), 2 training (Philox masks)."""
        return 0 if not any(self.zoneout) else (2 if self.seed is not None else 1)


NONE = Regularisers()


class Saved(NamedTuple):
    """What the forward kept for the backward."""

    y: torch.Tensor  # [T, B, D*R]
    gates: torch.Tensor  # [D, T, B, G]  activated, interleaved, input dtype
    cs: torch.Tensor  # [D, T, B, H]  every c_t, accumulator dtype


class GradOutputs(NamedTuple):
    """Gradients of the forward's outputs; ``None`` stands for zeros."""

    dy: torch.Tensor | None  # [T, B, D*R]
    dh_n: torch.Tensor | None  # [D, B, R]
    dc_n: torch.Tensor | None  # [D, B, H]


class Needs(NamedTuple):
    """Which gradients a backward forms; ``db`` is the gradient of ``b_ih`` and of ``b_hh`` alike."""

    dx: bool = True
    dh0: bool = True
    dc0: bool = True
    dw_ih: bool = True
    dw_hh: bool = True
    db: bool = True
    dw_hr: bool = True


class Grads(NamedTuple):
    """``dx [T, B, I]``, ``dh0 [D, B, R]``, ``dc0 [D, B, H]``, ``dw_ih [D, G, I]``, ``dw_hh [D, G, R]``,
    ``db [D, G]``, ``dw_hr [D, P, H]``; ``None`` for each one not needed."""

    dx: torch.Tensor | None
    dh0: torch.Tensor | None
    dc0: torch.Tensor | None
    dw_ih: torch.Tensor | None
    dw_hh: torch.Tensor | None
    db: torch.Tensor | None
    dw_hr: torch.Tensor | None


def check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"tritonlstm kernels support {SUPPORTED_DTYPES}, got {dtype}")


def check_regularisers(layer: Layer, regs: Regularisers) -> None:
    reason = regulariser_refusal(regs.zoneout, layer.w_hr is not None)
    if reason is not None:
        raise NotImplementedError(f"{reason} (the reference implementation runs it)")


_GATE_ROWS: dict[tuple[int, str, bool], torch.Tensor] = {}


def _gate_rows(h: int, device: torch.device, inverse: bool) -> torch.Tensor:
    """The source row of each row of :func:`interleave_gates` (4j + k <- kh + j), or of its ``inverse``, as an
    ``index_select`` index. Kept per (h, device), except one made during CUDA-graph capture: its values exist only
    inside the graph."""
    key = (h, str(device), inverse)
    rows = _GATE_ROWS.get(key)
    if rows is None:
        o = torch.arange(4 * h, device=device)
        rows = (o % h) * 4 + o // h if inverse else (o % 4) * h + o // 4
        if not capturing(device):
            _GATE_ROWS[key] = rows
    return rows


def interleave_gates(w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """4H rows along ``dim`` in torch's gate-major order (i block, f block, g block, o block) -> unit-interleaved
    (a copy: one ``index_select``)."""
    return torch.index_select(w, dim, _gate_rows(w.shape[dim] // 4, w.device, False))


def deinterleave_gates(w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`interleave_gates`."""
    return torch.index_select(w, dim, _gate_rows(w.shape[dim] // 4, w.device, True))


def dw_hh(dg: torch.Tensor, y: torch.Tensor, h0: torch.Tensor, lengths, reverse: bool, h_mask=None) -> torch.Tensor:
    """Interleaved dW_hh ``[G, R]`` of one direction: the sum over steps of dG_t^T h_{t-1}, two GEMMs.

    h_{t-1} of every step is the output of its forward predecessor, or h0 where that step was the row's first (the
    reverse direction starts at each row's own end); with recurrent dropout the product saw h_{t-1} * ``h_mask``.
    ``dg [T, B, G]``, ``y [T, B, R]`` (this direction's outputs), ``h0``/``h_mask [B, R]``.
    """
    T = dg.shape[0]
    G, R = dg.shape[-1], h0.shape[-1]
    first = T - 1 if reverse else 0
    dw = torch.mm(dg[first].t(), h0 if h_mask is None else h0 * h_mask)
    if T > 1:
        dg_rest, h_rest = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
        if lengths is not None and reverse:
            own = (torch.arange(1, T, device=dg.device)[:, None] < lengths[None, :])[..., None]
            h_rest = torch.where(own, h_rest, h0[None])
        if h_mask is not None:
            h_rest = h_rest * h_mask
        dw = torch.addmm(dw, dg_rest.reshape(-1, G).t(), h_rest.reshape(-1, R))
    return dw
