"""The ``tritonlstm`` command: ``tritonlstm demo [options]``.

The arguments are parsed and the output folder checked before torch is imported (which takes seconds), so
``--help`` and mistakes in the arguments are answered at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


# the forecaster's regulariser by default: the lowest mean validation RMSE over 3 seeds of the settings tried
# (benchmarks/results/demo/regularisers.csv; chosen on the validation weeks, never the test weeks)
RECURRENT_DROPOUT = 0.0
ZONEOUT = 0.1


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tritonlstm", description="tritonlstm: torch.nn.LSTM on fused Triton kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train on a real series, export to ONNX, verify in onnxruntime, plot")
    d.add_argument("--task", choices=["forecast", "charlm"], default="forecast")
    d.add_argument("--quick", action="store_true", help="a smaller, shorter run (about 20 s on 2 CPU cores)")
    d.add_argument("--out", default="tritonlstm-demo", help="output folder (default: ./tritonlstm-demo)")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    d.add_argument("--backend", choices=["auto", "triton", "reference"], default="auto",
                   help="training backend; auto: Triton on CUDA, the reference loop on CPU (triton on a CPU: "
                        "Triton's interpreter, very slow)")  # fmt: skip
    d.add_argument("--features", choices=["uni", "multi"], default="multi",
                   help="forecast input: the series alone, or with the season (sin/cos of the week)")  # fmt: skip
    d.add_argument("--horizon", type=int, default=4, help="weeks forecast at once (1: single-step)")
    d.add_argument("--recurrent-dropout", type=float, default=RECURRENT_DROPOUT, metavar="P",
                   help="forecast: variational recurrent dropout on h_{t-1} in training, in [0, 1); 0: off "
                        f"(default: {RECURRENT_DROPOUT})")  # fmt: skip
    d.add_argument("--zoneout", type=float, default=ZONEOUT, metavar="P",
                   help=f"forecast: zoneout of h and c in training, in [0, 1); 0: off (default: {ZONEOUT})")
    d.add_argument("--cell", choices=["lstm", "gru"], default="lstm",
                   help="forecast: the recurrent layer; gru also trains the LSTM on the same split to compare")
    d.add_argument("--seed", type=int, default=0)
    return ap


def _unwritable(out: str) -> str | None:
    """Why no file can be written in the folder ``out`` (created if missing), or ``None`` when one can."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("tritonlstm demo: --device cuda: no CUDA GPU is available")
    return name


def _demo(args: argparse.Namespace) -> None:
    device = _device(args.device)
    if device == "cpu":
        # the kernels read this when first imported: it lets the demo run them once on CPU (Triton's interpreter)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from tritonlstm import demo

    backend = args.backend
    if backend == "triton":
        reason = demo.triton_unavailable(device)
        if reason is not None:
            sys.exit(f"tritonlstm demo: --backend triton cannot run here: {reason}")
        if device == "cpu":
            print("note: --backend triton on a CPU trains through Triton's interpreter, which runs the kernels' Python "
                  "source one program at a time: many minutes even with --quick. --backend auto trains with the "
                  "reference loop and checks the kernels once.", flush=True)  # fmt: skip
    elif backend == "auto" and device == "cpu":
        backend = "reference"  # the interpreter is far too slow to train with; the kernels are checked after
    print(f"tritonlstm demo: task {args.task}, device {device}, training backend {backend}"
          f"{' (quick)' if args.quick else ''}, output folder {args.out}", flush=True)  # fmt: skip
    threads = torch.get_num_threads()
    if device == "cpu":
        # the demo's tensors are small: one thread is as fast, and on a busy machine threads that wait for each
        # other at every small op cost 10x (--task charlm --quick: 16 s on one thread, 176 s on two; 2 cores, load 7)
        torch.set_num_threads(1)
    try:
        m, descriptions = _run(args, device, backend)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests)
    print(f"files in {args.out}{os.sep}:")
    for name in m["files"]:
        print(f"  {name:<19}{descriptions[name]}")


def _run(args: argparse.Namespace, device: str, backend: str) -> tuple[dict, dict]:
    """Run the task, print its results; returns the metrics and what each file written holds."""
    from tritonlstm import demo

    if args.task == "forecast":
        m = demo.forecast(args.out, args.quick, device, backend, args.features, args.horizon, args.seed,
                          args.recurrent_dropout, args.zoneout, args.cell)  # fmt: skip
        rows = [
            (f"model (tritonlstm.{m['cell'].upper()})", f"{m['rmse']:.3f}", f"{m['mae']:.3f}"),
            (f"baseline: {m['baseline']}", f"{m['baseline_rmse']:.3f}", f"{m['baseline_mae']:.3f}"),
        ]
        if "comparison" in m:
            lstm = m["comparison"]["lstm"]
            rows.insert(1, ("LSTM, same split (compared)", f"{lstm['rmse']:.3f}", f"{lstm['mae']:.3f}"))
        print(f"\nMauna Loa CO2, {m['features']}variate input, {m['horizon']}-week horizon, {m['test_weeks']} test weeks")
        print(f"regulariser: {demo.regulariser(m)}; validation RMSE {m['val_rmse']:.3f} ppm ({m['val_weeks']} weeks)")
        print(f"{'':<28}{'RMSE (ppm)':>12}{'MAE (ppm)':>12}")
        for name, rmse, mae in rows:
            print(f"{name:<28}{rmse:>12}{mae:>12}")
        print(f"onnxruntime vs PyTorch, max abs diff: {m['onnx_max_abs_diff']:.2e} ppm")
        s = m["streaming"]
        print(f"streamed one week per call ({s['file']}, state fed back) vs whole windows, max abs diff: "
              f"onnxruntime {s['onnx_max_abs_diff_ppm']:.2e} ppm, PyTorch {s['pytorch_max_abs_diff_ppm']:.2e} ppm")
        if m["triton_vs_reference_max_abs_diff"] is None:
            print(f"Triton kernels not checked: {m['triton_check']}")
        else:
            print(f"{m['triton_check']}: max abs diff {m['triton_vs_reference_max_abs_diff']:.2e}")
        beat = "beats" if m["rmse"] < m["baseline_rmse"] else "does NOT beat"
        print(f"the model {beat} the naive baseline; {m['seconds']:.0f} s")
        descriptions = demo.FORECAST_FILES
    else:
        m = demo.charlm(args.out, args.quick, device, backend, args.seed)
        print(f"\nvalidation perplexity {m['val_perplexity']:.2f} (unigram baseline {m['baseline_perplexity']:.2f}); {m['seconds']:.0f} s")
        for line in m["samples"]:
            print("  " + line.replace("\n", " / "))
        descriptions = {"metrics.json": "the perplexities and the samples above"}
    return m, descriptions


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.horizon < 1:
        ap.error("--horizon must be at least 1")
    for option, p in (("--recurrent-dropout", args.recurrent_dropout), ("--zoneout", args.zoneout)):
        if not 0 <= p < 1:
            ap.error(f"{option} must be in [0, 1), got {p}")
    reason = _unwritable(args.out)
    if reason is not None:
        sys.exit(f"tritonlstm demo: cannot write to --out {args.out}: {reason}")
    _demo(args)


if __name__ == "__main__":
    main()
