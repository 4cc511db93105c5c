"""The unit-split sequence kernels under config variants, side by side in one process, against cuDNN.

    python -m benchmarks.variants [--T 256] [--shapes B,H ...] [--budget S] [--csv FILE]
    python -m benchmarks.variants --dry       # here, no GPU: the config each variant gives each shape

What a variant changes is the split regime's config (:func:`tritonlstm.kernels.config.sequence_config`'s dict),
for the forward and backward alike:

* ``rule``: as the rule gives it (the counter barrier; the backward's dot split one way per warp);
* ``plain``: every dot one plain ``tl.dot`` (:func:`tritonlstm.kernels.config.barrier_form`);
* ``ksplit``: the forward's dot split one way per warp too;
* ``tagged``: the tagged exchange (:func:`tritonlstm.kernels.config.tagged_form`: the forward's dots split);
* ``tagged-plain``: the tagged exchange with plain dots;
* ``*-wide``: twice the units per forward program, so half the programs poll the exchange;
* ``w4``, ``wide-w4``: 4 warps a forward program (8 with the rule), plain dots; ``wide-w4`` (16 units, a warp per 4)
  is the B=16 form whose warps each hold all four gates of their units, so its epilogue takes them apart in
  registers (benchmarks/NOTES.md, "The forward's epilogue");
* ``bwd-flags``: the backward's programs meet through one flag per program instead of the group's counter
  (:func:`tritonlstm.kernels.config.flags_form`);
* ``split32``: where the rule leaves the split regime (B=64 with H >= 768), the split kernels with 32-row batch
  tiles and 16 units a program (:func:`tritonlstm.kernels.config.split32_form`), forward and backward;
* ``graphed``: where the rule gives the tile regime (B >= 64 with H >= 768), the graphed per-step kernels it
  replaced (the tile regime's fallback), so the two are timed side by side;
* ``tile-wide``: the tile backward with 32 units a program where the rule gives 16 (B = 64).

(Until commit b020640 the rule was the tagged form; its first run, ``benchmarks/results/nvidia-h200/variants.csv``,
names the variants as they were then: ``rule`` the tagged form, ``barrier`` today's ``plain``, ``barrier-ksplit``
today's ``ksplit``.)

First come the tagged words' one-way latency between two programs by tile width and warps (``ping-pong`` rows,
:func:`benchmarks.exchange.ping_pong`; ``H`` is the tile's columns, 16 rows). Each row is a
``triton.testing.do_bench`` median after warm-up, fp16, through the public module with the plan in
auto mode (the variant replaces the rule the plan reads), so the backward runs wherever the plan sends it (the
per-step kernels where the split backward does not apply). Forward rows carry the error against nn.LSTM in
float64; a variant that fails records its error instead of a time. The rows go out one by one (``--csv`` is
rewritten after each), most important first, and the run stops starting new rows after ``--budget`` seconds, so
a device call that is cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import torch

from benchmarks.probe import _check, _time

FIELDS = ["what", "variant", "B", "H", "T", "fwd_plan", "bwd_plan", "us_per_step", "err", "note"]


def _drop(*keys):
    return lambda cfg, backward: {k: v for k, v in cfg.items() if k not in keys}


def _wide(transform):
    """``transform`` with twice the units per forward program where the rule gives at most 16 (else not
    applicable); the backward as ``transform`` gives it."""

    def wide(cfg, backward):
        if backward:
            return transform(cfg, backward)
        return {**transform(cfg, backward), "BLOCK_H": 2 * cfg["BLOCK_H"]} if cfg["BLOCK_H"] <= 16 else None

    return wide


def _identity(cfg, backward):
    return cfg


def _warps4(transform):
    """``transform`` with 4 warps a forward program (a plain 16-row dot of 8 units is then one MMA column tile a
    warp: no two warps on the same outputs)."""

    def w4(cfg, backward):
        cfg = transform(cfg, backward)
        return cfg if backward or cfg is None or "K_SPLIT" in cfg else {**cfg, "num_warps": 4}

    return w4


def _tagged(cfg, backward):
    from tritonlstm.kernels.config import tagged_form

    return tagged_form(cfg, 0, torch.float16, backward)


def _ksplit(cfg, backward):
    return cfg if backward else {**cfg, "K_SPLIT": cfg["num_warps"]}


def _tagged_plain(cfg, backward):
    return _drop("K_SPLIT", "K_BLOCK")(_tagged(cfg, backward), backward)


def _flags(cfg, backward):
    from tritonlstm.kernels.config import flags_form

    return flags_form(cfg, 0, backward)


VARIANTS = {
    "rule": _identity,
    "plain": _drop("TAGGED", "K_SPLIT", "K_BLOCK"),
    "ksplit": _ksplit,
    "tagged": _tagged,
    "tagged-plain": _tagged_plain,
    "rule-wide": _wide(_identity),
    "tagged-wide": _wide(_tagged),
    "w4": _warps4(_identity),
    "wide-w4": _warps4(_wide(_identity)),
    "bwd-flags": _flags,
}


def graphed_form(batch, hidden, proj_size, directions, dtype, sm_count, backward=False):
    """Where the rule gives the tile regime: the batch-owned config, which ``choose`` turns into the graphed per-step
    kernels (a W_hh that does not stay in one SM); elsewhere None."""
    from tritonlstm.kernels import config as C

    if _rule()(batch, hidden, proj_size, directions, dtype, sm_count, backward)["regime"] != "tile":
        return None
    return {"regime": "batch", **C.step_config(batch, hidden, 4 * hidden if backward else hidden, dtype, proj_size)}


def tile_wide_form(batch, hidden, proj_size, directions, dtype, sm_count, backward=False):
    """Where the rule's tile backward takes 16 units a program (B = 64 at H >= 768): 32, in two epilogue tiles (the
    per-step kernels' L2 bytes, half the programs); elsewhere None."""
    cfg = _rule()(batch, hidden, proj_size, directions, dtype, sm_count, backward)
    if not backward or cfg["regime"] != "tile" or cfg["BLOCK_H"] != 16:
        return None
    return {**cfg, "BLOCK_H": 32}


FORMS = {"split32": "split32_form", "graphed": graphed_form, "tile-wide": tile_wide_form}
"""Variants that give a config where the rule's is not unit-split: name -> the form's function
(``(batch, hidden, proj_size, directions, dtype, sm_count, backward)`` -> config or None), or its name in
:mod:`tritonlstm.kernels.config`."""
NAMES = [*VARIANTS, *FORMS]
CORE = ("rule", "plain", "tagged")
SHAPES = ["16,1024", "16,256", "16,768", "64,256", "64,1024", "256,1024"]


_RULE = []  # the rule's own sequence_config, kept at the first patch


def _rule():
    from tritonlstm.kernels import config as C

    if not _RULE:
        _RULE.append(C.sequence_config)
    return _RULE[0]


def patched(name: str):
    """``sequence_config`` with variant ``name`` applied: a :data:`VARIANTS` entry to the rule's split configs, a
    :data:`FORMS` entry where the rule's config is not split (elsewhere, and where the variant does not apply, the
    rule's config; see :func:`applies`)."""
    from tritonlstm.kernels import config as C

    rule = _rule()
    form = FORMS.get(name)
    form = getattr(C, form) if isinstance(form, str) else form
    transform = VARIANTS.get(name)

    def config(batch, hidden, proj_size, directions, dtype, sm_count, backward=False):
        shape = (batch, hidden, proj_size, directions, dtype, sm_count, backward)
        cfg = rule(*shape)
        if form is not None:
            new = form(*shape) if cfg["regime"] != "split" else None
        else:
            new = transform(cfg, backward) if cfg["regime"] == "split" else None
        return cfg if new is None else new

    return config


def applies(name: str, B: int, H: int, backward: bool) -> bool:
    """Whether variant ``name`` changes the rule's config at fp16 B, H on 132 SMs (``rule``: always timed)."""
    cfg = _rule()(B, H, 0, 1, torch.float16, 132, backward)
    return name == "rule" or patched(name)(B, H, 0, 1, torch.float16, 132, backward) != cfg


def use(name: str) -> None:
    """Make variant ``name`` the rule the plan reads (``choose`` reads ``sequence_config`` through the module)."""
    from tritonlstm.kernels import config as C

    C.sequence_config = _rule() if name == "rule" else patched(name)  # the rule itself, its cache and all
    C.choose.cache_clear()


def describe(device: torch.device, B: int, H: int, backward: bool) -> str:
    from tritonlstm import dispatch

    p = dispatch._kernel_plan(device, torch.float16, B, H, 0, 1, backward)
    cfg = {k: v for k, v in (p.config or {}).items() if k != "regime"}
    return f"{p.regime} {cfg}".replace(",", ";")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="B,H pairs, most important first")
    ap.add_argument("--budget", type=float, default=1e9, help="start no new row after this many seconds")
    ap.add_argument("--variants", nargs="+", choices=NAMES, default=NAMES,
                    help="the variants to time (default: all)")
    ap.add_argument("--what", choices=("fwd", "fwd+bwd", "both"), default="both")
    ap.add_argument("--no-ping-pong", action="store_true", help="skip the tagged words' latency rows")
    ap.add_argument("--csv")
    ap.add_argument("--dry", action="store_true", help="print each variant's config per shape (132 SMs) and exit")
    ap.add_argument("--device", default="cuda", help="cuda (a CPU runs the loop for its test, with no kernel)")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    if args.dry:
        for B, H in shapes:
            for name in args.variants:
                cfgs = [patched(name)(B, H, 0, 1, torch.float16, 132, bw) for bw in (False, True)]
                print(f"B={B} H={H} {name}: forward {cfgs[0]} backward {cfgs[1]}")
        return
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("the variants probe needs a CUDA GPU")
    import tritonlstm

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dtype, T, t0 = torch.float16, args.T, time.time()
    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        print(", ".join(f"{k}={row.get(k, '')}" for k in FIELDS), flush=True)
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                w.writeheader()
                w.writerows(rows)

    # the tagged words' one-way latency by tile size and warps (benchmarks/exchange.py's ping-pong)
    from benchmarks.exchange import ping_pong

    for cols in () if args.no_ping_pong else (64, 256, 512, 1024):
        for warps in (4, 8):
            r = ping_pong(16, cols, num_warps=warps)
            emit(dict(what="ping-pong", variant=f"{warps} warps", B=16, H=cols, us_per_step=r["us_per_hop"],
                      note=f"error {r['error']}"))  # fmt: skip
    setup = {}
    for B, H in shapes:
        torch.manual_seed(0)
        model = tritonlstm.LSTM(H, H).to(dev, dtype)
        ref = torch.nn.LSTM(H, H).to(dev, torch.float64)
        ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        cud = torch.nn.LSTM(H, H).to(dev, dtype)
        cud.load_state_dict(model.state_dict())
        x = torch.randn(T, B, H, device=dev, dtype=dtype)
        xg = x.clone().requires_grad_()
        g = torch.randn(T, B, H, device=dev, dtype=dtype)
        setup[B, H] = model, ref, x, xg, g
        with torch.no_grad():
            emit(dict(what="fwd", variant="cudnn", B=B, H=H, T=T, us_per_step=_time(lambda: cud(x)) * 1e3 / T))
        if args.what != "fwd":
            emit(dict(what="fwd+bwd", variant="cudnn", B=B, H=H, T=T,
                      us_per_step=_time(lambda: torch.autograd.backward(cud(xg)[0], g)) * 1e3 / T))  # fmt: skip
    # forward and forward+backward of the core variants at every shape, then the rest
    modes = ("fwd", "fwd+bwd") if args.what == "both" else (args.what,)
    core = [name for name in CORE if name in args.variants]
    rest = [name for name in args.variants if name not in CORE]
    names = core + rest
    for what, name in [(what, name) for group in (core, rest) for what in modes for name in group]:
        for B, H in shapes:
            if time.time() - t0 > args.budget:
                emit(dict(what=what, variant=name, B=B, H=H, T=T, note=f"not run: past the {args.budget:.0f} s budget"))
                continue
            model, ref, x, xg, g = setup[B, H]
            row = dict(what=what, variant=name, B=B, H=H, T=T)
            if not (applies(name, B, H, False) or (what != "fwd" and applies(name, B, H, True))):
                emit({**row, "note": f"not applicable: the variant leaves the rule's {what} configs as they are"})
                continue
            use(name)
            try:
                if what == "fwd":
                    row["err"] = f"{_check(model, ref, x, dtype):.2e}"
                    with torch.no_grad():
                        row["us_per_step"] = _time(lambda: model(x)) * 1e3 / T
                else:
                    row["us_per_step"] = _time(lambda: torch.autograd.backward(model(xg)[0], g)) * 1e3 / T
                # the plans after the run: a kernel that failed to compile has sent its shape to the per-step ones
                row.update(fwd_plan=describe(dev, B, H, False), bwd_plan=describe(dev, B, H, True))
            except Exception as e:  # recorded in the row and printed: a probe reports, the tests assert
                row["note"] = f"{type(e).__name__}: {str(e)[:160]}".replace(",", ";")
            emit(row)
    use("rule")
    print(f"{'what':8} {'variant':20} " + " ".join(f"{f'{B},{H}':>9}" for B, H in shapes) + "  (us/step)")
    for what in modes:
        for name in ("cudnn", *names):
            cells = []
            for B, H in shapes:
                r = [r for r in rows if (r["what"], r["variant"], r["B"], r["H"]) == (what, name, B, H)]
                v = r[0].get("us_per_step") if r else None
                cells.append(f"{v:9.2f}" if isinstance(v, float) else f"{'-':>9}")
            print(f"{what:8} {name:20} " + " ".join(cells))


if __name__ == "__main__":
    main()
