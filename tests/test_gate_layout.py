"""The unit-split and tile forwards' permuted gate columns (kernels/jit.py: permuted_gates, permute_gates,
unpermute_gates, split_gates4), run in Triton's interpreter: the column order the resident W_hh^T slice is loaded in
is the order the gate projections are permuted into, and taking the accumulator apart gives each gate of each unit
back, for every program width the configs use. (That the permutation puts a unit's four gates in one thread's
registers is a property of the sm_90 build: tests/test_sequence_structure.py and tests/test_tile_structure.py count
its layout conversions.)
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from tests.helpers import requires_interpreter
from tritonlstm.kernels.jit import permute_gates, permuted_gates, split_gates4, unpermute_gates

pytestmark = requires_interpreter


@triton.jit
def _layout_kernel(x_ptr, perm_ptr, unit_ptr, gate_ptr, out_ptr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    o_b = tl.arange(0, BLOCK_B)[:, None]
    o_c = tl.arange(0, 4 * BLOCK_H)[None, :]
    b_x = tl.load(x_ptr + o_b * (4 * BLOCK_H) + o_c)  # interleaved: column 4 * unit + gate
    u_p, k_p = permuted_gates(BLOCK_H)
    tl.store(unit_ptr + tl.arange(0, 4 * BLOCK_H), u_p)
    tl.store(gate_ptr + tl.arange(0, 4 * BLOCK_H), k_p)
    b_p = permute_gates(b_x, BLOCK_B, BLOCK_H)
    tl.store(perm_ptr + o_b * (4 * BLOCK_H) + o_c, b_p)
    b_i, b_f, b_g, b_o = split_gates4(unpermute_gates(b_p, BLOCK_B, BLOCK_H))
    o_u = tl.arange(0, BLOCK_H)[None, :]
    tl.store(out_ptr + o_b * (4 * BLOCK_H) + 0 * BLOCK_H + o_u, b_i)
    tl.store(out_ptr + o_b * (4 * BLOCK_H) + 1 * BLOCK_H + o_u, b_f)
    tl.store(out_ptr + o_b * (4 * BLOCK_H) + 2 * BLOCK_H + o_u, b_g)
    tl.store(out_ptr + o_b * (4 * BLOCK_H) + 3 * BLOCK_H + o_u, b_o)


@pytest.mark.parametrize("units", [4, 8, 16, 32])
def test_permuted_columns_round_trip_to_each_gate(units):
    rows = 16
    x = torch.randn(rows, 4 * units)
    perm, out = torch.empty_like(x), torch.empty_like(x)
    unit, gate = torch.empty(4 * units, dtype=torch.int32), torch.empty(4 * units, dtype=torch.int32)
    _layout_kernel[(1,)](x, perm, unit, gate, out, BLOCK_B=rows, BLOCK_H=units)
    # every (unit, gate) exactly once, and the loaded columns in that order
    pairs = sorted(zip(unit.tolist(), gate.tolist()))
    assert pairs == [(u, k) for u in range(units) for k in range(4)]
    assert torch.equal(perm, x[:, (4 * unit + gate).long()])
    # the columns' 8-wide tiles: a tile's pairs (p = 0, 1) are two gates of one unit, and the matching tile of the
    # other half holds that unit's other two gates
    tiles = 4 * units // 8
    for c in range(0, 4 * units, 2):
        other = (c + 8 * (tiles // 2)) % (4 * units)
        assert unit[c] == unit[c + 1] == unit[other] == unit[other + 1]
    # taken apart: gate k of unit u, as the interleaved input held it at column 4u + k
    want = x.view(rows, units, 4).permute(0, 2, 1).reshape(rows, 4 * units)
    assert torch.equal(out, want)
