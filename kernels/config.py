"""The config rule: which kernel and regime run a layer, with which tiles, and why. Nothing here launches.

Regimes (each one a kernel in its own file, registered in :data:`LAUNCHERS`):

* ``"step"`` (:mod:`tritonlstm.kernels.step`): one launch per time step and direction; the fallback and the
  oracle of the others.
* ``"batch"`` (:mod:`tritonlstm.kernels.sequence_fwd`/``sequence_bwd``): one launch for the whole sequence; a
  program owns a tile of batch rows and every hidden unit and streams W_hh from L2 every step. No cross-program
  synchronisation. With the per-step kernels' tiles it reproduces them bitwise; it is the form the interpreter runs.
* ``"gru-step"``, ``"gru-batch"``, ``"gru-split"``, ``"gru-graphed"``: the GRU's per-step kernels
  (:mod:`tritonlstm.kernels.gru_step`), its two sequence regimes (:mod:`tritonlstm.kernels.gru_sequence`) and its
  graphed per-step kernels, the LSTM's regimes with the GRU's cell; :func:`gru_choose` is their rule.
* ``"graphed"`` (:mod:`tritonlstm.kernels.graphed`): the per-step kernels, their time loop captured once per
  shape as a CUDA graph and replayed (GPU only); the rule's choice wherever it would pick the per-step kernels on
  a GPU.
* ``"split"``: one launch; the programs of a (batch tile, direction) group split the hidden units, keep their slice
  of the weights and their cell state on chip and exchange h_t (backward: dG_t) every step (the latency regime,
  small B). They meet at a barrier on a counter each step; the backward's dot (and float32's forward's) is split
  over the warps (``K_SPLIT``, self-tested as ``"split-k"``), the 16-bit forward's is one plain ``tl.dot``.
  ``"split-chunked"`` is the backward beyond H=512 (W_hh in chunks of gate rows). The tagged exchange
  (``TAGGED``, ``"split-tagged"``: one store publishes a value with its step, one load waits for it and fetches
  it) is a built and tested form the rule does not pick (:data:`TAGGED_EXCHANGE`: it measured slower), and so is
  the backward through one flag per program (:func:`flags_form`, ``"split-flags"``: not timed yet). Each variant
  is self-tested at first use, and a failed one falls back to its plain form.

* ``"tile"`` (the large-batch regime): the split kernels on a persistent 2-D grid of batch tiles of 64 or 128
  rows x unit slices, at most one program per SM, where the 16-row unit-split form does not fit. The forward keeps
  W_hh^T[:, its gate columns] resident (chunks of ``K_CHUNK`` rows, wgmma operands in shared memory) and reads
  h_{t-1} a chunk at a time; the backward streams W_hh and dG_{t+1} from L2 in chunks of gate rows (it moves fewer
  bytes than a resident slice: :func:`tile_config`). The programs of a group meet through one flag per producer
  (:func:`tritonlstm.kernels.jit.wait_flags`), not a counter. Self-tested as ``"tile"``; its fallback
  is the graphed per-step kernels.

:func:`choose` is the rule for a shape; the plan (:mod:`tritonlstm.dispatch`) adds what a rule cannot know (the
environment, the self-test, compile failures). T plays no part anywhere.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton

class Launcher(NamedTuple):
    """Where a regime's launchers live (modules imported on first use) and which kind of kernel it is."""

    forward: str
    backward: str
    kernel: str  # "step" (one launch per step) or "sequence" (one launch per layer)
    prefix: str = ""  # the launcher functions' names: prefix + "forward" / "backward"


_SEQUENCE = Launcher("tritonlstm.kernels.sequence_fwd", "tritonlstm.kernels.sequence_bwd", "sequence")
LAUNCHERS = {
    "step": Launcher("tritonlstm.kernels.step", "tritonlstm.kernels.step", "step"),
    "batch": _SEQUENCE,
    "split": _SEQUENCE,
    "tile": _SEQUENCE,
    "graphed": Launcher("tritonlstm.kernels.graphed", "tritonlstm.kernels.graphed", "step"),
    "gru-step": Launcher("tritonlstm.kernels.gru_step", "tritonlstm.kernels.gru_step", "step"),
    "gru-batch": Launcher("tritonlstm.kernels.gru_sequence", "tritonlstm.kernels.gru_sequence", "sequence"),
    "gru-split": Launcher("tritonlstm.kernels.gru_sequence", "tritonlstm.kernels.gru_sequence", "sequence"),
    "gru-graphed": Launcher("tritonlstm.kernels.graphed", "tritonlstm.kernels.graphed", "step", "gru_"),
}
"""Regime -> its launchers: ``forward(layer, regs, store, config, err)`` and ``backward(layer, regs, saved,
grad_out, needs, config, err)``, taking the bundles of :mod:`tritonlstm.kernels.common` (the GRU's ``backward(layer,
regs, y, gates, dy, dh_n, needs, config, err)``: no cell state, six gradients)."""

STEP_REGIMES = {"lstm": "step", "gru": "gru-step"}
"""Each cell's per-step kernels: the oracle and the last fallback of its other regimes."""

SELF_TESTED = {
    "split": "split", "split-tagged": "split", "split-k": "split", "split-chunked": "split", "split-flags": "split",
    "batch": "batch",
    "graphed": "graphed", "tile": "tile", "gru-split": "gru-split", "gru-split-k": "gru-split",
    "gru-split-chunked": "gru-split",
    "gru-batch": "gru-batch", "gru-graphed": "gru-graphed",
}
"""What the first-use self-test validates separately (:func:`variant` names a config's entry), and the regime of
:data:`LAUNCHERS` each one runs. The per-step kernels are the oracle: never self-tested."""

DEFAULT_SPIN_LIMIT = 1 << 22
"""Polls of the barrier counter, or of the tagged words, before a wait gives up (each poll is an L2 round trip,
about 0.5-1 us)."""


class Choice(NamedTuple):
    """What the rule picks for one pass of one layer."""

    regime: str  # a key of LAUNCHERS
    config: dict  # that regime's tiles and warps (do not modify: cached)
    why: str
    fallback: Choice | None = None  # what runs if this variant fails its self-test (else the per-step kernels)


def step_config(
    batch: int, hidden: int, reduce: int, dtype: torch.dtype = torch.float32, proj_size: int = 0
) -> dict:
    """Tile sizes and warps for one step; ``reduce`` is the dot's inner length (R forward, 4H backward).

    Every dimension of a ``tl.dot`` must be at least 16 on the GPU, so tiles never shrink below that. Warps and
    tiles keep every default build free of register spills for sm_90 and sm_80 under Triton 3.6 and 3.9
    (``tests/test_step_compile.py``; ``benchmarks/compile_report.py`` prints the table): 8 warps per program,
    on 64 batch rows x 32 units, or on 32 or fewer rows x 16 units (with 32 units and 4 warps Triton 3.6's
    ptxas spills a 64-bit value in the bf16 backward with lengths); float32 takes 32-long K blocks (with 64, exact
    fp32 dots, which run on FMA units, spill on sm_90 and collapse to 32 registers and kilobytes of stack on
    sm_80), and at most 32 rows x 32 units when H is not a multiple of 16 (no stride is then known to be
    16-aligned: the 64-row float32 backward spills on sm_80, and so does 32 x 16 on either version's ptxas);
    float64 (gradcheck only) fits 16 rows x 32 units in 4 warps. With a projection a program holds whole
    rows of h_t (BLOCK_P >= P) and loops over 16-unit tiles (also a dot's inner length there).
    """
    if proj_size:
        # spill-free for P <= 256 in every dtype (larger P may spill: the row of h_t lives in registers)
        wide = dtype in (torch.float16, torch.bfloat16)
        return {
            "BLOCK_B": 16,
            "BLOCK_H": 16,
            "BLOCK_K": min(32 if wide else 16, max(16, triton.next_power_of_2(reduce))),
            "BLOCK_P": max(16, triton.next_power_of_2(proj_size)),
            "num_warps": 8,
        }
    if dtype == torch.float64:
        block_b, block_h, warps = 16, 32, 4
    else:
        unaligned_fp32 = dtype == torch.float32 and hidden % 16 != 0
        block_b = min(32 if unaligned_fp32 else 64, max(16, triton.next_power_of_2(batch)))
        block_h, warps = (32 if block_b >= (32 if unaligned_fp32 else 64) else 16), 8
    return {
        "BLOCK_B": block_b,
        "BLOCK_H": min(block_h, max(4, triton.next_power_of_2(hidden))),
        "BLOCK_K": min(32 if dtype == torch.float32 else 64, max(16, triton.next_power_of_2(reduce))),
        "num_warps": warps,
    }


def gru_step_config(batch: int, hidden: int, reduce: int, dtype: torch.dtype = torch.float32) -> dict:
    """The GRU's per-step tiles: :func:`step_config`'s, with at least 16 units a program, since each of its three
    gate dots is BLOCK_H columns wide (the LSTM's one dot is 4 * BLOCK_H), and 32-long K blocks for 32 rows or
    fewer (with 64, the 16-bit forward of 16 rows x 16 units in 8 warps spills 8-16 bytes on sm_90 and sm_80).
    ``reduce``: H forward, 3H backward. Spill-free builds: tests/test_step_compile.py, as for the LSTM's."""
    cfg = step_config(batch, hidden, reduce, dtype)
    cfg["BLOCK_H"] = max(16, cfg["BLOCK_H"])
    if cfg["BLOCK_B"] <= 32:
        cfg["BLOCK_K"] = min(32, cfg["BLOCK_K"])
    return cfg


OPERAND_BUDGET = {False: 96 * 1024, True: 128 * 1024}
"""Bytes of dot operands (resident weight slice + the exchanged row block) one unit-split program may hold, forward
and backward: the largest that compile spill-free for sm_90 (H=1024 bf16 forward: 193 registers, 97 KB shared;
backward H=512: 254 registers, 129 KB shared; backward H=1024 spills and needs 257 KB of shared memory)."""

CHUNK_ROWS = 1024
"""Gate rows per resident chunk of W_hh in the unit-split backward beyond ``OPERAND_BUDGET`` (up to 4 chunks:
H <= 1024, bf16/fp16, 16 units per program), each step's dot over a chunk split 4 ways over 8 warps."""

SMALL_W_BYTES = 96 * 1024
"""A W_hh this small stays in one SM's L1/shared memory: the batch-owned form then beats the per-step kernels."""



def p2(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def operand_bytes(B_tile: int, H: int, P: int, units: int, block_p: int, elt: int, backward: bool) -> int:
    """Dot operands a unit-split program holds per step: its resident weights and the whole exchanged rows."""
    R = P or H
    if backward:
        g = p2(4 * H)
        n = g * (block_p or units) + B_tile * g  # W_hh[:, its columns], dG_{t+1}
        n += (p2(P) * units + B_tile * p2(P)) if P else 0  # W_hr[:, its units], dh_t
    else:
        n = p2(R) * 4 * units + B_tile * p2(R)  # W_hh^T[:, its gate columns], h_{t-1}
        n += (p2(H) * block_p + B_tile * p2(H)) if P else 0  # W_hr^T[:, its P slice], m_t
    return n * elt


MAX_K_BLOCK = 512
"""The widest block of h_{t-1} the unit-split forward fetches at once in 16-bit (half as wide in float32, whose
tagged words are 64-bit): a 16 x 1024 block of 32-bit words holds 64 registers a thread of 8 warps, and Triton
3.6's build with recurrent dropout and zoneout spills (so does 16 x 512 in float32)."""


def k_blocks(R: int, widest: int = MAX_K_BLOCK) -> tuple[int, int]:
    """The unit-split forward's blocks of the recurrent dot's inner dimension: ``(BLOCK_R, BLOCK_R2)``, powers of
    two (a tensor's dimensions must be), at least 16 (the MMA granule), covering R. A second block (``BLOCK_R2``,
    else 0) where it saves work (768 = 512 + 256 instead of 1024, 320 = 256 + 64, 40 = 32 + 16), or where one
    block would be wider than ``widest`` (1024 = 512 + 512)."""
    one = max(16, triton.next_power_of_2(R))
    first = one // 2
    if first < 16 or one > 2 * widest:
        return one, 0
    second = max(16, triton.next_power_of_2(R - first))
    return (first, second) if first + second < one or one > widest else (one, 0)


@functools.lru_cache(maxsize=1024)
def sequence_config(
    batch: int,
    hidden: int,
    proj_size: int,
    directions: int,
    dtype: torch.dtype,
    sm_count: int | None,
    backward: bool = False,
) -> dict:
    """Regime and tiles for one layer's sequence kernel (forward, or ``backward``). T plays no part.

    * No SM count (CPU tensors through the interpreter): batch-owned with the per-step kernels' tiles
      (``step_config``), so the results are theirs bit for bit and nothing waits across programs.
    * Unit-split (the latency regime, small B) when one program per SM covers every group and each program's dot
      operands fit: batch tiles of 16 rows, ``groups = ceil(B/16) * D``, each group ``ceil(H/units)`` programs
      with the fewest units per program such that ``groups * programs <= sm_count`` (so the grid is co-resident
      whatever the kernel's registers), at least 8 units forward (a 16x32 gate dot) and 16 backward or with a
      projection (every dot dimension >= 16), and the resident weight slice plus the exchanged row block within
      ``OPERAND_BUDGET`` (compile-checked spill-free for sm_90 in ``tests/test_sequence_structure.py``). The
      backward beyond it, up to H=1024 in 16-bit with 16 units, holds W_hh in ``CHUNK_ROWS`` chunks of gate rows
      (``G_CHUNKS``). The backward's dot is split over its gate rows one way per warp (``K_SPLIT``), and so is
      float32's forward dot over R; the forward fetches R in one or two blocks (:func:`k_blocks`). The
      programs meet at the counter barrier (:data:`TAGGED_EXCHANGE`).
    * Otherwise batch-owned (32x32 tiles, K-blocks of 32, 8 warps without a projection; the per-step tiles
      with one): a program owns a batch tile and streams W_hh from L2 every
      step. It beats the per-step kernels only where W_hh is small (``SMALL_W_BYTES``: it stays in the SM's
      L1 and the launches saved dominate); elsewhere (large B with a large W_hh: the per-step kernels have the
      same tiles, more programs, and their launches amortise) :func:`choose` picks the (graphed) per-step kernels.
      float64 (gradcheck only) is never unit-split.

    Cached per shape (a host-time saving on every call); the returned dict must not be modified.
    """
    R = proj_size or hidden
    step = step_config(batch, hidden, 4 * hidden if backward else R, dtype, proj_size)
    batch_owned = {"regime": "batch", **step}
    if sm_count is None or batch == 0:
        return batch_owned
    elt = torch.finfo(dtype).bits // 8
    if not proj_size and dtype != torch.float64:
        # 32-row tiles, K-blocks of 32 and 8 warps: the largest spill-free for sm_90 (64-row tiles spill here)
        batch_owned.update(BLOCK_B=32, BLOCK_H=min(32, max(4, p2(hidden))), BLOCK_K=32, num_warps=8)
    if dtype == torch.float64:
        return batch_owned
    block_b = 16
    groups = triton.cdiv(batch, block_b) * directions
    min_units = 16 if (backward or proj_size) else 8
    units = max(min_units, p2(triton.cdiv(hidden * groups, sm_count)))
    programs = triton.cdiv(hidden, units)
    if groups * programs > sm_count:
        return _large_batch(batch_owned, batch, hidden, proj_size, directions, dtype, sm_count, backward)
    block_p = max(16, p2(triton.cdiv(proj_size, programs))) if proj_size else 0
    operands = operand_bytes(block_b, hidden, proj_size, units, block_p, elt, backward)
    cfg = {"regime": "split", "BLOCK_B": block_b, "BLOCK_H": units}
    cfg["num_warps"] = 8 if operands > 16384 else 4
    if operands > OPERAND_BUDGET[backward]:
        chunks = triton.cdiv(4 * hidden, CHUNK_ROWS)
        if not backward or proj_size or elt != 2 or units != 16 or chunks > 4:
            return _large_batch(batch_owned, batch, hidden, proj_size, directions, dtype, sm_count, backward)
        # the backward beyond H=512: W_hh[:, 16 units] resident in chunks of gate rows, each step's dot split over
        # the warps (a spill-free build up to H=1024 for sm_90, tests/test_sequence_structure.py)
        cfg.update(G_CHUNKS=chunks, num_warps=8)
    if proj_size:
        cfg["BLOCK_P"] = block_p
    if backward:
        _split_backward_dot(cfg, hidden)
    if not backward and elt == 4:
        # float32's forward dots split over R (and H with a projection) one way per warp: its plain FMA dot spills
        # 1.9-2.5 KB a thread at H=256-512 (sm_90), split it builds with none (tests/test_sequence_structure.py)
        cfg["K_SPLIT"] = cfg["num_warps"]
        cfg["K_BLOCK"] = MAX_K_BLOCK // 2
    # the 16-bit forward keeps one plain tl.dot and every form meets at the counter barrier (TAGGED_EXCHANGE)
    return tagged_form(cfg, proj_size, dtype, backward) if TAGGED_EXCHANGE else cfg


TILE_W_BYTES = 128 * 1024
"""The most shared memory the tile regime's forward gives its resident W_hh^T slice, 1024 x 64 in 16-bit (the rest
of the SM's 227 KB holds a staged h_{t-1} chunk and the epilogue's layout conversions:
tests/test_tile_structure.py)."""

TILE_K_CHUNK = 128 if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7) else 64
"""Rows of the tile forward's resident W_hh^T per chunk in 16-bit (a flag wait and a load of h_{t-1} each: fewer
chunks, fewer round trips a step). Under Triton 3.9 only 64 builds spill-free (sm_90, B=64-256, H=768-1024; 128
spills a kilobyte); under 3.6, 128 builds spill-free but for 64-row tiles at H=1024 (8 bytes a thread), and 64
would double the chunks: tests/test_tile_structure.py checks the installed version's choice under both."""

TILE_ROWS = (64, 128)
"""The tile regime's batch tiles: a wgmma is 64 rows a warpgroup, so no MMA runs on fewer."""


def tile_config(
    batch: int, hidden: int, proj_size: int, directions: int, dtype: torch.dtype, sm_count: int | None,
    backward: bool = False,
) -> dict | None:
    """The large-batch regime's config (``"tile"``), or None where it does not apply: no SM count, a projection,
    B <= 32, or no tiling with one program per SM, and float32 (its exact dots run on FMA units, not wgmma, and
    keep the graphed per-step kernels).

    Forward: 16 units a program (a 64-column wgmma), whose W_hh^T[:, 64 gate columns] must fit ``TILE_W_BYTES``
    (H <= 1024), and the smallest batch tile of :data:`TILE_ROWS` with ``tiles * D * slices <= sm_count``. The L2
    traffic per step is the h_{t-1} row block each program reads, B * R * 2 * (H / units) bytes over the grid.
    Backward: W_hh streamed. A resident W_hh[:, units] slice is 4H * units * 2 bytes, so at most 16 units at
    H=1024 with 128-row tiles, whose programs read the dG row block B * 4H * 2 * (H / units) bytes a step (128 MiB
    at B=256); the streamed 64-row x 32-unit tiles read 96 MiB, dG's row blocks and W_hh's columns
    (:func:`l2_bytes_per_step`, benchmarks/NOTES.md). 64-row tiles, and 16 or 32 units (one or two epilogue tiles of
    16), the fewest with one program per SM."""
    if sm_count is None or proj_size or torch.finfo(dtype).bits != 16 or batch <= 32 or batch * 4 * hidden >= 2**31:
        return None  # (B <= 32: at least half of a 64-row tile would be padding; its offsets are 32-bit)
    if backward:
        for units in (16, 32):
            if triton.cdiv(batch, TILE_ROWS[0]) * directions * triton.cdiv(hidden, units) <= sm_count:
                return {"regime": "tile", "BLOCK_B": TILE_ROWS[0], "BLOCK_H": units, "K_CHUNK": 64, "num_warps": 8}
        return None
    if hidden * 4 * 16 * 2 > TILE_W_BYTES:
        return None
    slices = triton.cdiv(hidden, 16) * directions
    for tile in TILE_ROWS:
        if triton.cdiv(batch, tile) * slices <= sm_count:
            # one warpgroup per 64 rows (8 warps at 64 rows spill under Triton 3.6: tests/test_tile_structure.py)
            chunk = min(TILE_K_CHUNK, max(16, p2(hidden)))
            return {"regime": "tile", "BLOCK_B": tile, "BLOCK_H": 16, "K_CHUNK": chunk, "num_warps": tile // 16}
    return None


def l2_bytes_per_step(
    cfg: dict, batch: int, hidden: int, directions: int, dtype: torch.dtype, backward: bool = False
) -> int:
    """The bytes one step of a layer reads from L2 across its grid for the recurrent product, for a tile config
    (``"tile"``), a per-step config (``"step"``/``"graphed"``, :func:`step_config`'s tiles) or ``"resident"`` (the
    backward design the tile regime does not use: W_hh[:, BLOCK_H units] kept in shared memory). Forward: each
    program's row block of h_{t-1}, plus its W_hh^T columns where they are not resident; backward: dG_{t+1}'s row
    block plus W_hh's columns where streamed. The gate projections, states and outputs, which every regime moves
    alike, are left out (benchmarks/NOTES.md states both)."""
    elt = torch.finfo(dtype).bits // 8
    K = 4 * hidden if backward else hidden  # the inner length (no projection)
    rows, units = cfg["BLOCK_B"], cfg["BLOCK_H"]
    slices, tiles = triton.cdiv(hidden, units), triton.cdiv(batch, rows)
    activations = slices * batch * K  # every unit slice reads the whole row block of its batch tile
    if cfg["regime"] == "resident" or (cfg["regime"] == "tile" and not backward):
        weights = 0
    else:  # W_hh's columns of each program's units (backward) or gates (forward), streamed by every batch tile
        weights = tiles * K * slices * units * (1 if backward else 4)
    return directions * (activations + weights) * elt


def _large_batch(batch_owned: dict, batch, hidden, proj_size, directions, dtype, sm_count, backward) -> dict:
    """Where the 16-row unit-split form does not fit: the tile regime, except where W_hh is small enough to stay
    in one SM (``SMALL_W_BYTES``: the batch-owned form then has no cross-program exchange at all)."""
    w_bytes = 4 * hidden * (proj_size or hidden) * (torch.finfo(dtype).bits // 8)
    tile = tile_config(batch, hidden, proj_size, directions, dtype, sm_count, backward)
    return tile if tile is not None and w_bytes > SMALL_W_BYTES else batch_owned


def _split_backward_dot(cfg: dict, hidden: int) -> None:
    """Split a unit-split backward's recurrent dot over its gate rows, one split per warp, where each split keeps at
    least 16 rows (a ``tl.dot`` minimum): a plain 16-row dot puts 2-4 warps on the same rows, and Triton 3.6 puts
    every warp on a batched dot's batch dimension. Measured faster on an H200 (benchmarks/NOTES.md)."""
    if 4 * hidden // cfg.get("G_CHUNKS", 1) >= 16 * cfg["num_warps"]:
        cfg["K_SPLIT"] = cfg["num_warps"]


TAGGED_EXCHANGE = False
"""Whether :func:`sequence_config` gives the unit-split kernels the tagged exchange (:func:`tagged_form`). Off: on
an H200 (fp16, B=16-256, H=256-1024; benchmarks/NOTES.md, ``python -m benchmarks.variants``) the tagged exchange
and the forward's dot split over the warps were each slower than the counter barrier and one plain dot, at every
shape timed. The tagged form stays a built, tested and self-tested config (``"split-tagged"``), for the probes; a
change here takes ``sequence_config.cache_clear()`` and ``choose.cache_clear()``."""


def tagged_form(cfg: dict, proj_size: int, dtype: torch.dtype, backward: bool) -> dict:
    """A unit-split config of :func:`sequence_config` with the tagged exchange (``TAGGED``) where the kernel has
    one: the forward (its dots split one way per warp, ``K_SPLIT``), and the backward that holds W_hh in one chunk,
    without a projection, in 16-bit (the chunked and projected forms exchange twice a step or a 16 x 4H block of
    words too wide for registers; float32's 64-bit words of that block spilled in Triton 3.6's build with the
    regularisers). Other configs come back as they are."""
    if cfg.get("regime") != "split":
        return cfg
    if not backward:  # (float32's forward has its split and K_BLOCK from the rule already)
        return {**cfg, "TAGGED": True, "K_SPLIT": cfg["num_warps"]}
    if not proj_size and cfg.get("G_CHUNKS", 1) == 1 and torch.finfo(dtype).bits == 16:
        return {**cfg, "TAGGED": True}
    return cfg


def flags_form(cfg: dict, proj_size: int, backward: bool) -> dict:
    """A candidate the rule does not pick (not timed on a GPU; benchmarks/NOTES.md): the unit-split backward's
    programs meet through one flag per program (each releases its step, each waits for all of them before it
    reads dG_{t+1}: :func:`tritonlstm.kernels.jit.release_flag`, :func:`~tritonlstm.kernels.jit.wait_flags`), not
    the group's counter, and each loads its next step's inputs between its release and that wait. The backward
    of a split config without a projection or tagged words; other configs come back unchanged."""
    if not backward or cfg.get("regime") != "split" or proj_size or cfg.get("TAGGED"):
        return cfg
    return {**cfg, "FLAGS": True}


def split32_form(
    batch: int, hidden: int, proj_size: int, directions: int, dtype: torch.dtype, sm_count: int | None,
    backward: bool = False,
) -> dict | None:
    """A candidate the rule does not pick (not timed on a GPU; benchmarks/NOTES.md): where the rule leaves the
    unit-split regime at 16 rows for the tile regime (B=64 with H >= 768 on 132 SMs), the split kernels with 32-row
    batch tiles and 16 units per program, so every group still has an SM per program:
    ``ceil(B/32) * D * ceil(H/16) <= sm_count``.
    Each dot is then 2 MMA row tiles by 8 column tiles, one tile per warp of 8 (no replication); the backward holds
    W_hh in chunks of ``CHUNK_ROWS`` gate rows with its dot split over the warps. 16-bit, no projection, H <= 1024
    (spill-free for sm_90, tests/test_sequence_structure.py); None where it does not apply."""
    if sm_count is None or proj_size or torch.finfo(dtype).bits != 16 or not 16 < batch or hidden > 1024:
        return None
    groups, programs = triton.cdiv(batch, 32) * directions, triton.cdiv(hidden, 16)
    if groups * programs > sm_count:
        return None
    cfg = {"regime": "split", "BLOCK_B": 32, "BLOCK_H": 16, "num_warps": 8}
    if backward:
        chunks = triton.cdiv(4 * hidden, CHUNK_ROWS)
        if chunks > 1:
            cfg["G_CHUNKS"] = chunks
        _split_backward_dot(cfg, hidden)
    return cfg


def constexprs(cfg: dict, H: int, R: int, P: int, backward: bool) -> tuple[dict, int]:
    """Kernel constexprs for a config, and the number of unit programs per (batch tile, direction) group."""
    split = cfg.get("regime", "batch") in ("split", "tile")
    tile = cfg.get("regime") == "tile"
    bh = cfg["BLOCK_H"]
    ns = triton.cdiv(H, bh) if split else 1
    if split:
        bp = cfg.get("BLOCK_P", max(16, triton.next_power_of_2(triton.cdiv(P, ns)))) if P else 16
        assert not P or bp * ns >= P, f"BLOCK_P {bp} x {ns} programs does not cover P={P}"
    else:
        bp = cfg.get("BLOCK_P", 16)
    k = dict(BLOCK_B=cfg["BLOCK_B"], BLOCK_H=bh, BLOCK_K=cfg.get("BLOCK_K", 16), BLOCK_P=bp)
    if backward:
        k.update(
            # at least 16: a tl.dot dimension (H < 4 would give a smaller one; the rows past 4H are masked)
            BLOCK_G=max(16, triton.next_power_of_2(triton.cdiv(4 * H, cfg.get("G_CHUNKS", 1)))) if split else 16,
            G_CHUNKS=cfg.get("G_CHUNKS", 1) if split else 1,
            K_SPLIT=cfg.get("K_SPLIT", 1) if split else 1,  # the rule keeps 16 gate rows a split (the GPU's minimum)
            BLOCK_F=max(16, triton.next_power_of_2(P)) if split and P else 16,
        )
        if tile:  # W_hh and dG_{t+1} streamed in blocks of K_CHUNK gate rows; one flag per program
            k.update(BLOCK_G=cfg["K_CHUNK"], FLAG_ALL=max(2, p2(ns)), SUB_H=bh if bh <= 16 else bh // 2)
        elif split and cfg.get("FLAGS"):  # one flag per program instead of the group's counter
            k.update(FLAGS=True, FLAG_ALL=max(2, p2(ns)))
    elif tile:  # the resident W_hh^T in chunks of K_CHUNK rows covering R; h_{t-1} waited for chunk by chunk
        kc = cfg["K_CHUNK"]
        k.update(BLOCK_R=kc, BLOCK_F=16, K_CHUNK=kc, K_CHUNKS=triton.cdiv(R, kc), EVEN_K=R % kc == 0,
                 FLAG_BLOCK=max(2, kc // bh))
    else:
        k.update(BLOCK_R=16, BLOCK_F=max(16, triton.next_power_of_2(H)) if split and P else 16)
        if split:
            k["BLOCK_R"], k["BLOCK_R2"] = k_blocks(R, cfg.get("K_BLOCK", MAX_K_BLOCK))
            # each split of a block at least 16 long: a tl.dot's inner dimension
            k["K_SPLIT"] = min(cfg.get("K_SPLIT", 1), k["BLOCK_R"] // 16)
            k["K_SPLIT2"] = max(1, min(cfg.get("K_SPLIT", 1), k["BLOCK_R2"] // 16))
            k["K_SPLIT_F"] = min(cfg.get("K_SPLIT", 1), k["BLOCK_F"] // 16) if P else 1
    return k, ns


def barrier_form(cfg: dict) -> dict:
    """A unit-split config in its proven form, the fallback of the tagged one: the programs meet at the counter
    barrier and each dot is one plain ``tl.dot`` (no ``TAGGED``, no ``K_SPLIT``)."""
    return {k: v for k, v in cfg.items() if k not in ("TAGGED", "K_SPLIT", "K_BLOCK")}


@functools.lru_cache(maxsize=1024)
def choose(
    batch: int,
    hidden: int,
    proj_size: int,
    directions: int,
    dtype: torch.dtype,
    sm_count: int | None,
    backward: bool = False,
) -> Choice:
    """The rule for one pass of one layer: the sequence kernels' regime (:func:`sequence_config`), or the per-step
    kernels where they are faster: a batch-owned layer whose W_hh does not stay in one SM (``SMALL_W_BYTES``)."""
    cfg = sequence_config(batch, hidden, proj_size, directions, dtype, sm_count, backward)
    if cfg["regime"] == "split":
        why = f"unit-split: {cfg['BLOCK_H']} units per program, every group co-resident"
        if cfg.get("TAGGED"):
            fallback = Choice("split", barrier_form(cfg), why + ", barrier")
            return Choice("split", cfg, why + ", tagged exchange, dots split over the warps", fallback)
        if cfg.get("FLAGS"):
            counter = {k: v for k, v in cfg.items() if k != "FLAGS"}
            return Choice("split", cfg, why + ", a flag per program", Choice("split", counter, why))
        if cfg.get("K_SPLIT", 1) > 1 and cfg.get("G_CHUNKS", 1) == 1:  # split over the backward's gate rows or R
            plain = {k: v for k, v in cfg.items() if k not in ("K_SPLIT", "K_BLOCK")}
            return Choice("split", cfg, why + ", dot split over the warps", Choice("split", plain, why))
        return Choice("split", cfg, why)
    if cfg["regime"] == "tile":
        slices = triton.cdiv(hidden, cfg["BLOCK_H"])
        why = (f"tile: {triton.cdiv(batch, cfg['BLOCK_B']) * directions} batch tiles of {cfg['BLOCK_B']} rows x "
               f"{slices} unit slices, one program per SM, flags per producer")
        return Choice("tile", cfg, why, _graphed(batch, hidden, proj_size, directions, dtype, backward))
    if sm_count is None:
        return Choice("batch", cfg, "batch-owned: no SM count (the interpreter), the per-step kernels' tiles")
    R = proj_size or hidden
    w_bytes = 4 * hidden * R * (torch.finfo(dtype).bits // 8)
    if batch > 0 and w_bytes > SMALL_W_BYTES:
        return _graphed(batch, hidden, proj_size, directions, dtype, backward)
    return Choice("batch", cfg, "batch-owned: W_hh stays in one SM's L1")


def _graphed(batch: int, hidden: int, proj_size: int, directions: int, dtype: torch.dtype, backward: bool) -> Choice:
    """The per-step kernels, their launches replayed from a CUDA graph (a GPU: there is an SM count)."""
    R = proj_size or hidden
    w_bytes = 4 * hidden * R * (torch.finfo(dtype).bits // 8)
    step = {"regime": "graphed", **step_config(batch, hidden, 4 * hidden if backward else R, dtype, proj_size)}
    return Choice("graphed", step, f"per-step, graphed: W_hh ({w_bytes // 1024} KB) is streamed from L2 either "
                  f"way, and neither the unit-split nor the tile form fits ({triton.cdiv(batch, 16) * directions} "
                  "groups)")


def _gru_operands(H: int, elt: int, backward: bool) -> int:
    """Bytes of a unit-split GRU program's dot operands (16 rows, 16 units): forward the r, z, n columns of W_hh^T
    over H plus h_{t-1}'s row block; backward W_hh's 3H gate rows plus dG_{t+1}'s row block (each inner length
    covered by :func:`k_blocks`)."""
    k = sum(k_blocks(3 * H, CHUNK_ROWS) if backward else k_blocks(H))
    return (k * 16 * elt) * (2 if backward else 4)


@functools.lru_cache(maxsize=1024)
def gru_sequence_config(
    batch: int, hidden: int, directions: int, dtype: torch.dtype, sm_count: int | None, backward: bool = False
) -> dict:
    """The GRU's sequence regime and tiles, :func:`sequence_config`'s rule with three gates and no projection:
    without an SM count (the interpreter) batch-owned on the per-step kernels' tiles (bit for bit theirs);
    unit-split with 16 rows and 16 units a program where one program per SM covers every group and the dot
    operands fit ``OPERAND_BUDGET`` (:func:`_gru_operands`), the backward's dot (and float32's forward's) split
    over the warps, the forward's inner length in blocks of at most 256 up to H = 512; the 16-bit backward beyond
    the budget (to H = 1024) with W_hh in chunks of ``CHUNK_ROWS`` gate rows, as the LSTM's; else batch-owned.
    float64 is never unit-split."""
    step = gru_step_config(batch, hidden, 3 * hidden if backward else hidden, dtype)
    batch_owned = {"regime": "gru-batch", **step}
    if sm_count is None or batch == 0 or dtype == torch.float64:
        return batch_owned
    elt = torch.finfo(dtype).bits // 8
    groups = triton.cdiv(batch, 16) * directions
    operands = _gru_operands(hidden, elt, backward)
    if groups * triton.cdiv(hidden, 16) > sm_count:
        return batch_owned
    cfg = {"regime": "gru-split", "BLOCK_B": 16, "BLOCK_H": 16, "num_warps": 8 if operands > 16384 else 4}
    if operands > OPERAND_BUDGET[backward]:
        chunks = triton.cdiv(3 * hidden, CHUNK_ROWS)
        if not backward or elt != 2 or chunks > 3:
            return batch_owned
        # the backward beyond H=512, as the LSTM's: W_hh[:, 16 units] resident in chunks of gate rows
        cfg.update(G_CHUNKS=chunks, num_warps=8)
    if backward and 3 * hidden // cfg.get("G_CHUNKS", 1) >= 16 * cfg["num_warps"]:
        cfg["K_SPLIT"] = cfg["num_warps"]
    if not backward and elt == 4:
        cfg.update(K_SPLIT=cfg["num_warps"], K_BLOCK=MAX_K_BLOCK // 2)
    elif not backward and hidden <= MAX_K_BLOCK:
        # h_{t-1} in blocks of at most 256: three 512-long resident dots spill 24 bytes in 16-bit (sm_90, 8 warps),
        # two blocks of 256 none (tests/test_gru_structure.py); H = 768 stays 512 + 256
        cfg["K_BLOCK"] = MAX_K_BLOCK // 2
    return cfg


def gru_constexprs(cfg: dict, H: int, backward: bool) -> tuple[dict, int]:
    """The GRU sequence kernels' tile constexprs for a config, and the unit programs per group."""
    k = {"BLOCK_B": cfg["BLOCK_B"], "BLOCK_H": cfg["BLOCK_H"]}
    if cfg["regime"] != "gru-split":
        return {**k, "BLOCK_K": cfg["BLOCK_K"]}, 1
    chunks = cfg.get("G_CHUNKS", 1)
    if not backward:
        blocks = k_blocks(H, cfg.get("K_BLOCK", MAX_K_BLOCK))
    elif chunks > 1:  # equal chunks of gate rows, the last padded
        blocks = (max(16, triton.next_power_of_2(triton.cdiv(3 * H, chunks))),) * chunks
    else:  # the 3H gate rows in one or two power-of-two blocks (1536 as 1024 + 512)
        blocks = k_blocks(3 * H, CHUNK_ROWS)
    blocks = (*blocks, 0, 0, 0)[: 4 if backward else 2]
    split = cfg.get("K_SPLIT", 1)  # each split of a block at least 16 long: a tl.dot's inner dimension
    name = "BLOCK_G" if backward else "BLOCK_R"
    k.update({name: blocks[0], f"{name}2": blocks[1], "K_SPLIT": min(split, blocks[0] // 16),
              "K_SPLIT2": max(1, min(split, blocks[1] // 16))})  # fmt: skip
    if backward:
        k.update(BLOCK_G3=blocks[2], BLOCK_G4=blocks[3])
    return k, triton.cdiv(H, cfg["BLOCK_H"])


@functools.lru_cache(maxsize=1024)
def gru_choose(
    batch: int, hidden: int, directions: int, dtype: torch.dtype, sm_count: int | None, backward: bool = False
) -> Choice:
    """The GRU's rule, :func:`choose`'s with its regimes: the sequence kernels (:func:`gru_sequence_config`), or on
    a GPU the graphed per-step kernels where a batch-owned layer's W_hh (3H x H) does not stay in one SM."""
    cfg = gru_sequence_config(batch, hidden, directions, dtype, sm_count, backward)
    if cfg["regime"] == "gru-split":
        why = "unit-split: 16 units per program, every group co-resident"
        if cfg.get("G_CHUNKS", 1) > 1:  # as the LSTM's chunked backward: no plainer form to fall back to
            return Choice("gru-split", cfg, why + f", W_hh in {cfg['G_CHUNKS']} chunks of gate rows, dots split")
        if cfg.get("K_SPLIT", 1) > 1:
            plain = {k: v for k, v in cfg.items() if k not in ("K_SPLIT", "K_BLOCK")}
            return Choice("gru-split", cfg, why + ", dot split over the warps", Choice("gru-split", plain, why))
        return Choice("gru-split", cfg, why)
    if sm_count is None:
        return Choice("gru-batch", cfg, "batch-owned: no SM count (the interpreter), the per-step kernels' tiles")
    w_bytes = 3 * hidden * hidden * (torch.finfo(dtype).bits // 8)
    if batch > 0 and w_bytes > SMALL_W_BYTES:
        step = {"regime": "gru-graphed", **gru_step_config(batch, hidden, 3 * hidden if backward else hidden, dtype)}
        return Choice("gru-graphed", step, f"per-step, graphed: W_hh ({w_bytes // 1024} KB) is streamed from L2 either "
                      "way, and the unit-split form does not fit")  # fmt: skip
    return Choice("gru-batch", cfg, "batch-owned: W_hh stays in one SM's L1")


def variant(cfg: dict) -> str:
    """The :data:`SELF_TESTED` entry a sequence config belongs to."""
    if cfg["regime"].startswith("gru-"):
        if cfg.get("G_CHUNKS", 1) > 1:
            return "gru-split-chunked"
        return "gru-split-k" if cfg.get("K_SPLIT", 1) > 1 else cfg["regime"]
    if cfg["regime"] == "tile":
        return "tile"
    if cfg.get("TAGGED"):
        return "split-tagged"
    if cfg.get("FLAGS"):
        return "split-flags"
    if cfg.get("G_CHUNKS", 1) > 1:
        return "split-chunked"
    return "split-k" if cfg.get("K_SPLIT", 1) > 1 else cfg["regime"]


def self_test_config(device: torch.device, dtype: torch.dtype, regime: str, H: int, P: int, backward: bool):
    if regime in ("gru-graphed", "gru-batch"):
        return {"regime": regime, **gru_step_config(3, H, 3 * H if backward else H, dtype)}
    if regime.startswith("gru-split"):  # one program per group in the interpreter, as for the LSTM
        units = 16 if device.type == "cuda" else max(16, triton.next_power_of_2(H))
        cfg = {"regime": "gru-split", "BLOCK_B": 16, "BLOCK_H": units, "num_warps": 4}
        if regime == "gru-split-k":
            cfg["K_SPLIT"] = 4
        if regime == "gru-split-chunked" and backward:  # three chunks of gate rows, each dot split 4 ways
            cfg.update(G_CHUNKS=3, K_SPLIT=4, num_warps=8)
        return cfg
    if regime == "graphed":
        return {"regime": "graphed", **step_config(3, H, 4 * H if backward else (P or H), dtype, P)}
    if regime == "batch":
        return {"regime": "batch", **step_config(3, H, 4 * H if backward else (P or H), dtype, P)}
    if regime == "tile":
        # on a GPU (H=40) the forward has 3 unit slices and 3 chunks of R (the last one partial), the backward 2
        # slices of 2 epilogue tiles (as at B=256); one slice in the interpreter, which runs programs in turn
        units = (32 if backward else 16) if device.type == "cuda" else triton.next_power_of_2(H)
        return {"regime": "tile", "BLOCK_B": 64, "BLOCK_H": units, "K_CHUNK": 16, "num_warps": 8 if backward else 4}
    # on a GPU several programs per group, so the barrier really synchronises; the interpreter runs programs one
    # after another, so there a single program per group (the barrier code still runs)
    units = 16 if device.type == "cuda" else triton.next_power_of_2(H)
    cfg = {"regime": "split", "BLOCK_B": 16, "BLOCK_H": units, "num_warps": 4}
    if regime == "split-chunked" and backward and not P:
        # three chunks of gate rows, each dot split 4 ways (on a GPU at H=40: 64 rows a chunk, 16 a slice)
        cfg.update(G_CHUNKS=3, K_SPLIT=4, num_warps=8)
    if regime == "split-k":  # the dot split over the gate rows, or R (interpreter: 64 rows or R=40, 16 a slice)
        cfg["K_SPLIT"] = 4
    if regime == "split-tagged" and not (backward and (P or dtype == torch.float32)):  # the rule's tagged forms
        cfg.update(TAGGED=True, K_SPLIT=4)  # one split per warp
    if regime == "split-flags" and backward and not P:  # flags_form: the backward's dot split as the rule's
        cfg.update(FLAGS=True, K_SPLIT=4)
    return cfg

