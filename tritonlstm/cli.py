"""The ``tritonlstm`` command: ``tritonlstm demo [options]``."""

from __future__ import annotations

import argparse
import os
import sys


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    return name


def _demo(args: argparse.Namespace) -> None:
    device = _device(args.device)
    if device == "cpu":
        # the kernels read this when first imported: it lets the demo run them once on CPU (Triton's interpreter)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from tritonlstm import demo

    backend = args.backend
    if backend == "auto" and device == "cpu":
        backend = "reference"  # the interpreter is far too slow to train with; the kernels are checked after
    print(f"tritonlstm demo: task {args.task}, device {device}, training backend {backend}"
          f"{' (quick)' if args.quick else ''}", flush=True)  # fmt: skip
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.task == "forecast":
        m = demo.forecast(args.out, args.quick, device, backend, args.features, args.horizon, args.seed)
        rows = [
            ("model (tritonlstm)", f"{m['rmse']:.3f}", f"{m['mae']:.3f}"),
            (f"baseline: {m['baseline']}", f"{m['baseline_rmse']:.3f}", f"{m['baseline_mae']:.3f}"),
        ]
        print(f"\nMauna Loa CO2, {m['features']}variate input, {m['horizon']}-week horizon, {m['test_weeks']} test weeks")
        print(f"{'':<28}{'RMSE (ppm)':>12}{'MAE (ppm)':>12}")
        for name, rmse, mae in rows:
            print(f"{name:<28}{rmse:>12}{mae:>12}")
        print(f"onnxruntime vs PyTorch, max abs diff: {m['onnx_max_abs_diff']:.2e} ppm")
        if m["triton_vs_training_backend_max_abs_diff"] is not None:
            print(f"Triton kernels (interpreter) vs {m['backend']} backend, max abs diff: "
                  f"{m['triton_vs_training_backend_max_abs_diff']:.2e}")  # fmt: skip
        beat = "beats" if m["rmse"] < m["baseline_rmse"] else "does NOT beat"
        print(f"the model {beat} the naive baseline; {m['seconds']:.0f} s; files in {args.out}/: metrics.json model.onnx forecast.png")
    else:
        m = demo.charlm(args.out, args.quick, device, backend, args.seed)
        print(f"\nvalidation perplexity {m['val_perplexity']:.2f} (unigram baseline {m['baseline_perplexity']:.2f}); {m['seconds']:.0f} s")
        for line in m["samples"]:
            print("  " + line.replace("\n", " / "))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tritonlstm", description="tritonlstm: torch.nn.LSTM on fused Triton kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train on a real series, export to ONNX, verify in onnxruntime, plot")
    d.add_argument("--task", choices=["forecast", "charlm"], default="forecast")
    d.add_argument("--quick", action="store_true", help="a smaller, shorter run (about 30 s on 2 CPU cores)")
    d.add_argument("--out", default="tritonlstm-demo", help="output folder (default: ./tritonlstm-demo)")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    d.add_argument("--backend", choices=["auto", "triton", "reference"], default="auto",
                   help="training backend; auto: Triton on CUDA, the reference loop on CPU")  # fmt: skip
    d.add_argument("--features", choices=["uni", "multi"], default="multi",
                   help="forecast input: the series alone, or with the season (sin/cos of the week)")  # fmt: skip
    d.add_argument("--horizon", type=int, default=4, help="weeks forecast at once (1: single-step)")
    d.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.horizon < 1:
        ap.error("--horizon must be at least 1")
    _demo(args)


if __name__ == "__main__":
    main()
