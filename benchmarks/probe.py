"""GPU probe of the sequence kernels: the self-test per (dtype, regime), the regime the plan picks per
shape, and the forward / forward+backward time of the sequence kernels against the per-step kernels and cuDNN,
all in one run (``triton.testing.do_bench``, median, after warm-up).

    python -m benchmarks.probe [--T 256] [--shapes B,H ...] [--dtypes fp16 bf16 fp32] [--csv FILE]
    python -m benchmarks.probe --backward-k-split 4   # the unit-split backward's dot split 4 ways at every H

Needs a CUDA GPU. Prints one line per measurement and, last, a table; ``--csv`` writes the rows too.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _time(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def with_backward_k_split(rule, k_split: int):
    """``rule`` (:func:`sequence_config`) with every unit-split backward's dot split ``k_split`` ways over 8 warps
    (the rule's split is one per warp), where each slice keeps at least 16 gate rows (a ``tl.dot`` minimum)."""

    def config(batch, hidden, proj_size, directions, dtype, sm_count, backward=False):
        from tritonlstm.kernels.config import constexprs

        cfg = rule(batch, hidden, proj_size, directions, dtype, sm_count, backward)
        if backward and cfg["regime"] == "split" and not proj_size:
            rows = constexprs(cfg, hidden, hidden, 0, backward=True)[0]["BLOCK_G"]  # gate rows per chunk
            if rows // k_split >= 16:
                cfg = {**cfg, "K_SPLIT": k_split, "num_warps": 8}
        return cfg

    return config


def with_tagged(rule):
    """``rule`` (:func:`sequence_config`) with the unit-split kernels in their tagged form
    (:func:`tritonlstm.kernels.config.tagged_form`: the tagged exchange, the forward's dots split over the warps),
    to time it beside the rule's counter barrier."""
    from tritonlstm.kernels.config import tagged_form

    def config(batch, hidden, proj_size, directions, dtype, sm_count, backward=False):
        return tagged_form(rule(batch, hidden, proj_size, directions, dtype, sm_count, backward), proj_size, dtype,
                           backward)  # fmt: skip

    return config


def _kernel_env(kernel: str | None):
    if kernel is None:
        os.environ.pop("TRITONLSTM_KERNEL", None)
    else:
        os.environ["TRITONLSTM_KERNEL"] = kernel


def _check(model, ref, x, dtype) -> float:
    """max |y - y_ref| / max |y_ref| against nn.LSTM in float64 on the same weights and input."""
    with torch.no_grad():
        y = model(x)[0].double()
        y_ref = ref(x.double())[0]
    return ((y - y_ref).abs().max() / y_ref.abs().max()).item()


def probe(shapes, dtypes, T, bidirectional, rows, recurrent_dropout=0.0, zoneout=0.0):
    import tritonlstm
    from tritonlstm import dispatch
    from tritonlstm.kernels import config as C
    from tritonlstm.kernels.runtime import sm_count
    from tritonlstm.kernels.selftest import self_test

    dev = torch.device("cuda")
    sm = sm_count(dev)
    for name in dtypes:
        dtype = DTYPES[name]
        for regime in C.SELF_TESTED:
            failure = self_test(dev, dtype, regime)
            print(f"self-test {name} {regime}: {'passed' if failure is None else failure}", flush=True)
            rows.append(dict(what="self-test", dtype=name, regime=regime, result=failure or "passed"))
    D = 2 if bidirectional else 1
    for B, H in shapes:
        for name in dtypes:
            dtype = DTYPES[name]
            torch.manual_seed(0)
            model = tritonlstm.LSTM(H, H, bidirectional=bidirectional, recurrent_dropout=recurrent_dropout,
                                    zoneout=zoneout)
            model = model.to(dev, dtype)
            ref = torch.nn.LSTM(H, H, bidirectional=bidirectional).to(dev, torch.float64)
            ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
            x = torch.randn(T, B, H, device=dev, dtype=dtype)
            xg = x.clone().requires_grad_()
            cfg_f = C.sequence_config(B, H, 0, D, dtype, sm)
            cfg_b = C.sequence_config(B, H, 0, D, dtype, sm, True)
            _kernel_env(None)
            pick = tuple(dispatch._kernel_plan(dev, dtype, B, H, 0, D, bw).regime for bw in (False, True))
            row = dict(what="time", dtype=name, B=B, H=H, T=T, D=D, rdrop=recurrent_dropout, zoneout=zoneout,
                       fwd_regime=cfg_f["regime"], bwd_regime=cfg_b["regime"], auto_fwd=pick[0],
                       auto_bwd=pick[1])  # fmt: skip
            for kernel in ("sequence", "step", "auto"):
                _kernel_env(None if kernel == "auto" else kernel)
                try:
                    if not (recurrent_dropout or zoneout):  # masks drawn per call: no nn.LSTM to compare with
                        row[f"err_{kernel}"] = _check(model, ref, x, dtype)
                    with torch.no_grad():
                        row[f"fwd_{kernel}_ms"] = _time(lambda: model(x))
                    g = torch.randn(T, B, D * H, device=dev, dtype=dtype)
                    row[f"fb_{kernel}_ms"] = _time(lambda: torch.autograd.backward(model(xg)[0], g))
                except Exception as e:  # recorded in the row and printed: a probe reports, the tests assert
                    row[f"fwd_{kernel}_ms"] = f"{type(e).__name__}: {str(e)[:120]}"
            _kernel_env(None)
            cud = torch.nn.LSTM(H, H, bidirectional=bidirectional).to(dev, dtype)
            with torch.no_grad():
                row["fwd_cudnn_ms"] = _time(lambda: cud(x))
            g = torch.randn(T, B, D * H, device=dev, dtype=dtype)
            row["fb_cudnn_ms"] = _time(lambda: torch.autograd.backward(cud(xg)[0], g))
            print(row, flush=True)
            rows.append(row)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--shapes", nargs="+", default=["16,256", "16,768", "64,768", "256,1024"], help="B,H pairs")
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--recurrent-dropout", type=float, default=0.0, help="train-mode recurrent dropout p (default 0)")
    ap.add_argument("--zoneout", type=float, default=0.0, help="train-mode zoneout p for h and c (default 0)")
    ap.add_argument("--backward-k-split", type=int, choices=(2, 4, 8),
                    help="split the unit-split backward's dot this many ways at every H (default: the rule's)")
    ap.add_argument("--tagged", action="store_true",
                    help="the unit-split kernels in their tagged form: tagged exchange, the forward's dots split "
                         "(default: the rule's, the counter barrier)")
    ap.add_argument("--csv")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("the probe needs a CUDA GPU")
    if args.backward_k_split:
        from tritonlstm.kernels import config as C

        # the rule reads sequence_config through the module, so the override reaches the plan too
        C.sequence_config = with_backward_k_split(C.sequence_config, args.backward_k_split)
        C.choose.cache_clear()
    if args.tagged:
        from tritonlstm.kernels import config as C

        C.sequence_config = with_tagged(C.sequence_config)
        C.choose.cache_clear()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    rows: list[dict] = []
    probe(shapes, args.dtypes, args.T, args.bidirectional, rows, args.recurrent_dropout, args.zoneout)
    print(f"{'dtype':5} {'B':>5} {'H':>5} {'regime f/b':>12} {'auto':>14} {'seq fwd':>8} {'step fwd':>8} "
          f"{'cudnn fwd':>9} {'seq f+b':>8} {'step f+b':>8} {'auto f+b':>8} {'cudnn f+b':>9}  (us/step)")  # fmt: skip
    for r in rows:
        if r["what"] != "time":
            continue

        def us(key):
            v = r.get(key)
            return f"{v * 1000 / r['T']:8.2f}" if isinstance(v, float) else f"{'ERR':>8}"

        print(f"{r['dtype']:5} {r['B']:5} {r['H']:5} {r['fwd_regime'] + '/' + r['bwd_regime']:>12} "
              f"{r['auto_fwd'] + '/' + r['auto_bwd']:>14} {us('fwd_sequence_ms')} {us('fwd_step_ms')} "
              f"{us('fwd_cudnn_ms'):>9} {us('fb_sequence_ms')} {us('fb_step_ms')} {us('fb_auto_ms')} "
              f"{us('fb_cudnn_ms'):>9}")  # fmt: skip
    if args.csv:
        keys = sorted({k for r in rows for k in r})
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
