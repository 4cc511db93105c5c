"""The exchange on a GPU: every regime's self-test, tagged words between two programs, the counter barrier and the
per-producer flags alone.

    python -m benchmarks.exchange [--csv FILE]

* self-test: each regime of ``kernels/config.py``'s ``SELF_TESTED`` against the per-step kernels, in fp16, bf16
  and fp32 (``kernels/selftest.py``, what the plan runs at first use);
* ping-pong: two programs bounce a tile of tagged words (``kernels/jit.py``: ``publish_words``/``wait_words``,
  the unit-split forward's exchange) N times; a round trip is two one-way hops, so one hop is the time / 2N.
* barrier: P programs meet N times at the counter barrier (``kernels/jit.py``: ``barrier``, the exchange of the
  split backward and of the forward's fallback); one meeting is the time / N.
* flags: P programs meet N times through one flag each (``kernels/jit.py``: ``release_flag``/``wait_flags``,
  the tile regime's exchange): each releases its flag, then waits for all of them, in 8 groups of producers (the
  forward's chunks at H=1024 under Triton 3.6); one meeting is the time / N.

Both are timed with ``triton.testing.do_bench`` after warm-up. Every wait is bounded and sets an error flag, so a
grid that is not co-resident gives an error row, not a hang.
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch
import triton
import triton.language as tl

from tritonlstm.kernels.config import DEFAULT_SPIN_LIMIT
from tritonlstm.kernels.jit import barrier, publish_words, release_flag, step_tag, wait_flags, wait_words

ROUNDS = 2000
PROGRAMS = (2, 32, 96, 128)  # barrier groups: the split forward at B=16 runs 32, 96 and 128 programs a group


@triton.jit(do_not_specialize=["rounds", "spin_limit"])
def _ping_pong_kernel(words_ptr, err_ptr, rounds, spin_limit, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Program 0 publishes step i's words in slot 0 and waits for program 1's in slot 1; program 1 answers."""
    me = tl.program_id(0)
    o = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    mask = o >= 0
    values = (o * 0).to(tl.float16)
    mine, theirs = words_ptr + me * ROWS * COLS + o, words_ptr + (1 - me) * ROWS * COLS + o
    failed = me * 0
    for i in range(rounds):
        tag = step_tag(i, tl.int32)
        if me == 0:
            publish_words(mine, values, tag, mask, tl.int32)
            _, failed = wait_words(theirs, mask, tag, failed, spin_limit)
        else:
            _, failed = wait_words(theirs, mask, tag, failed, spin_limit)
            publish_words(mine, values, tag, mask, tl.int32)
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit(do_not_specialize=["rounds", "spin_limit"])
def _barrier_kernel(sync_ptr, err_ptr, rounds, spin_limit):
    programs = tl.num_programs(0)
    failed = tl.program_id(0) * 0
    for i in range(rounds):
        failed = barrier(sync_ptr, programs * (i + 1), failed, spin_limit)
    tl.store(err_ptr, failed, mask=failed != 0)


@triton.jit(do_not_specialize=["rounds", "spin_limit"])
def _flags_kernel(flags_ptr, err_ptr, rounds, spin_limit, GROUPS: tl.constexpr, BLOCK: tl.constexpr):
    programs = tl.num_programs(0)
    per = tl.cdiv(programs, GROUPS)
    failed = tl.program_id(0) * 0
    for i in range(rounds):
        release_flag(flags_ptr + tl.program_id(0), i)
        for g in tl.static_range(GROUPS):  # in producer order, a group at a time, as the tile forward's chunks
            failed = wait_flags(flags_ptr, g * per, tl.minimum(programs, (g + 1) * per), i + 1, failed, spin_limit,
                                BLOCK)  # fmt: skip
    tl.store(err_ptr, failed, mask=failed != 0)


def _options() -> dict:
    from tritonlstm.kernels.runtime import cooperative_supported

    return {"launch_cooperative_grid": True} if cooperative_supported() else {}


def ping_pong(rows: int = 16, cols: int = 64, rounds: int = ROUNDS, num_warps: int = 4) -> dict:
    """One-way latency of a [rows, cols] tile of int32 words between two programs of ``num_warps`` warps, in
    microseconds."""
    words = torch.zeros(2, rows, cols, device="cuda", dtype=torch.int32)
    err = torch.zeros(1, device="cuda", dtype=torch.int32)

    def run():
        words.zero_()  # a fresh exchange each run: tags start again at step 0
        _ping_pong_kernel[(2,)](words, err, rounds, DEFAULT_SPIN_LIMIT, ROWS=rows, COLS=cols, num_warps=num_warps,
                                **_options())  # fmt: skip

    ms = triton.testing.do_bench(run, warmup=20, rep=200, return_mode="median")
    return {"what": "ping-pong", "programs": 2, "tile": f"{rows}x{cols} int32", "rounds": rounds,
            "us_per_hop": ms * 1e3 / (2 * rounds), "error": int(err.item())}  # fmt: skip


def barrier_latency(programs: int, rounds: int = ROUNDS) -> dict:
    """Microseconds per meeting of ``programs`` programs at the counter barrier."""
    sync = torch.zeros(1, device="cuda", dtype=torch.int32)
    err = torch.zeros(1, device="cuda", dtype=torch.int32)

    def run():
        sync.zero_()
        _barrier_kernel[(programs,)](sync, err, rounds, DEFAULT_SPIN_LIMIT, num_warps=4, **_options())

    ms = triton.testing.do_bench(run, warmup=20, rep=200, return_mode="median")
    return {"what": "barrier", "programs": programs, "tile": "", "rounds": rounds,
            "us_per_hop": ms * 1e3 / rounds, "error": int(err.item())}  # fmt: skip


def flags_latency(programs: int, rounds: int = ROUNDS, groups: int = 8) -> dict:
    """Microseconds per meeting of ``programs`` programs through one flag each, waited for in ``groups`` groups."""
    flags = torch.zeros(programs, device="cuda", dtype=torch.int32)
    err = torch.zeros(1, device="cuda", dtype=torch.int32)
    block = max(2, triton.next_power_of_2(triton.cdiv(programs, groups)))

    def run():
        flags.zero_()
        _flags_kernel[(programs,)](flags, err, rounds, DEFAULT_SPIN_LIMIT, GROUPS=groups, BLOCK=block, num_warps=4,
                                   **_options())  # fmt: skip

    ms = triton.testing.do_bench(run, warmup=20, rep=200, return_mode="median")
    return {"what": "flags", "programs": programs, "tile": f"{groups} groups", "rounds": rounds,
            "us_per_hop": ms * 1e3 / rounds, "error": int(err.item())}  # fmt: skip


FIELDS = ["what", "programs", "tile", "rounds", "us_per_hop", "error"]


def self_tests() -> list[dict]:
    from tritonlstm.kernels.config import SELF_TESTED
    from tritonlstm.kernels.selftest import self_test

    rows = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for regime in SELF_TESTED:
            failure = self_test(torch.device("cuda"), dtype, regime)
            rows.append({"what": f"self-test {regime} {str(dtype).split('.')[-1]}", "programs": "", "tile": "",
                         "rounds": "", "us_per_hop": "", "error": failure or 0})  # fmt: skip
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="write the rows here too")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("the exchange probe needs a CUDA GPU")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = self_tests() + [ping_pong(16, 64), ping_pong(16, 1024)]
    rows += [barrier_latency(p) for p in PROGRAMS if p <= sms]
    rows += [flags_latency(p) for p in PROGRAMS if p <= sms]
    for row in rows:
        print(", ".join(f"{k}={row[k]:.3f}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in FIELDS))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    if any(row["error"] for row in rows):
        sys.exit("a self-test failed or a wait timed out (error rows above)")


if __name__ == "__main__":
    main()
