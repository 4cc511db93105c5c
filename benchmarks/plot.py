"""Turn benchmark CSVs into PNGs.

    python -m benchmarks.plot benchmarks/results/nvidia-h100-80gb-hbm3/bench-*.csv [--commit abc123] [--prefix P]

Writes ``<prefix>-time-per-step.png`` (µs per step against batch, a panel per hidden size, length and mode),
``<prefix>-speedup.png`` (tritonlstm's speed-up over the best cuDNN time of the same shape and mode) and
``<prefix>-memory.png`` (peak memory per provider and shape; GPU rows only). The prefix defaults to the CSV's
path without ``.csv`` for one CSV, and to ``<its folder>/bench`` for several (the parts of one grid). Uses the
rows of one commit: that of the newest row unless ``--commit`` names another.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _rows(paths: list[str], commit: str | None) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["ms"]]
    if not rows:
        raise SystemExit(f"{', '.join(paths)}: no timed rows")
    commit = commit or max(rows, key=lambda r: r["date"])["commit"]
    return [r for r in rows if r["commit"] == commit]


def _label(r: dict) -> str:
    return f"{r['provider']} {r['dtype']}" + (" graph" if r["cuda_graph"] == "True" else "")


def _save(fig, out: str) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_time_per_step(rows: list[dict], out: str) -> None:
    """One panel per (hidden size, sequence length) and mode: µs per step against batch, a line per provider."""
    panels = sorted({(int(r["hidden_size"]), int(r["seq_len"])) for r in rows})
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(len(modes), len(panels), figsize=(4.5 * len(panels), 3.6 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        for j, (hidden, seq_len) in enumerate(panels):
            ax = axes[i][j]
            series = defaultdict(list)
            for r in rows:
                if r["mode"] == mode and (int(r["hidden_size"]), int(r["seq_len"])) == (hidden, seq_len):
                    series[_label(r)].append((int(r["batch"]), float(r["us_per_step"])))
            for label, points in sorted(series.items()):
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            title = f"H={hidden}, T={seq_len}, {mode}"
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="µs per step", title=title)
            ax.grid(True, which="both", alpha=0.3)
            if series:
                ax.legend(fontsize=7)
    _save(fig, out)


# each tritonlstm provider against the cuDNN providers that do the same work (a full or a variable-length batch)
BASELINES = {
    "tritonlstm": ("cudnn", "cudnn-tf32"),
    "tritonlstm-tf32": ("cudnn", "cudnn-tf32"),
    "tritonlstm-lengths": ("cudnn-packed",),
    "tritonlstm-gru": ("cudnn-gru",),
}


def speedups(rows: list[dict]) -> dict[tuple, dict[str, float]]:
    """{(mode, B, T, H): {"<provider> <dtype>": best baseline ms / our ms}}; the baseline is the fastest of the
    provider's BASELINES on that shape and mode in any dtype (shared/ANCHORS.md's "best cuDNN time")."""
    best, ours = {}, defaultdict(dict)
    for r in rows:
        key = (r["mode"], int(r["batch"]), int(r["seq_len"]), int(r["hidden_size"]))
        for provider, baselines in BASELINES.items():
            if r["provider"] in baselines:
                best[provider, key] = min(best.get((provider, key), float("inf")), float(r["ms"]))
        if r["provider"] in BASELINES:
            ours[key][f"{r['provider']} {r['dtype']}"] = (r["provider"], float(r["ms"]))
    result = {}
    for key, entries in ours.items():
        ratios = {label: best[p, key] / ms for label, (p, ms) in entries.items() if (p, key) in best}
        if ratios:
            result[key] = ratios
    return result


def plot_speedup(rows: list[dict], out: str) -> None:
    ratios = speedups(rows)
    keys = sorted(ratios)
    labels = sorted({label for k in keys for label in ratios[k]})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(keys) * max(1, len(labels))), 4))
    width = 0.8 / max(1, len(labels))
    for n, label in enumerate(labels):
        xs = [i + n * width for i, k in enumerate(keys) if label in ratios[k]]
        ys = [ratios[k][label] for k in keys if label in ratios[k]]
        ax.bar(xs, ys, width=width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{m}\nB{b} T{t} H{h}" for m, b, t, h in keys], fontsize=7)
    title = "tritonlstm vs the best cuDNN time of the same shape (-lengths: vs cudnn-packed)"
    ax.set(ylabel="speed-up over best cuDNN (x)", title=title)
    if labels:
        ax.legend(fontsize=8)
    _save(fig, out)


def plot_memory(rows: list[dict], out: str) -> None:
    rows = [r for r in rows if r["peak_mem_mb"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    series = defaultdict(list)
    for r in rows:
        series[f"{_label(r)} {r['mode']}"].append((f"B{r['batch']} H{r['hidden_size']}", float(r["peak_mem_mb"])))
    for label, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set(ylabel="peak memory (MB)", title="peak memory per step" if rows else "no GPU rows: no memory figures")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    if series:
        ax.legend(fontsize=6)
    _save(fig, out)


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="CSVs written by benchmarks.run (e.g. the parts of one grid)")
    ap.add_argument("--commit", help="plot this commit's rows (default: the commit of the newest row)")
    ap.add_argument("--prefix", help="path prefix of the PNGs (default: see above)")
    args = ap.parse_args(argv)
    rows = _rows(args.csv, args.commit)
    if args.prefix:
        prefix = args.prefix
    elif len(args.csv) == 1:
        prefix = os.path.splitext(args.csv[0])[0]
    else:
        prefix = os.path.join(os.path.dirname(args.csv[0]), "bench")
    outs = [f"{prefix}-time-per-step.png", f"{prefix}-speedup.png", f"{prefix}-memory.png"]
    plot_time_per_step(rows, outs[0])
    plot_speedup(rows, outs[1])
    plot_memory(rows, outs[2])
    for o in outs:
        print(o)
    return outs


if __name__ == "__main__":
    main()
