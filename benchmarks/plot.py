"""Turn a benchmark CSV into PNGs beside it.

    python -m benchmarks.plot benchmarks/results/nvidia-h100-80gb-hbm3.csv [--commit abc123]

Writes ``<csv stem>-time-per-step.png`` (µs per step against batch, one panel per hidden size and mode),
``<csv stem>-speedup.png`` (tritonlstm's speed-up over the best cuDNN time of the same shape and mode) and
``<csv stem>-memory.png`` (peak memory per provider and shape; GPU rows only). Uses the rows of one commit:
the newest one in the file unless ``--commit`` names another.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _rows(path: str, commit: str | None) -> list[dict]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["ms"]]
    if not rows:
        raise SystemExit(f"{path}: no timed rows")
    commit = commit or rows[-1]["commit"]
    return [r for r in rows if r["commit"] == commit]


def _label(r: dict) -> str:
    return f"{r['provider']} {r['dtype']}" + (" graph" if r["cuda_graph"] == "True" else "")


def _save(fig, out: str) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_time_per_step(rows: list[dict], out: str) -> None:
    hiddens = sorted({int(r["hidden_size"]) for r in rows})
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(len(modes), len(hiddens), figsize=(4.5 * len(hiddens), 3.6 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        for j, hidden in enumerate(hiddens):
            ax = axes[i][j]
            series = defaultdict(list)
            for r in rows:
                if r["mode"] == mode and int(r["hidden_size"]) == hidden:
                    series[_label(r)].append((int(r["batch"]), float(r["us_per_step"])))
            for label, points in sorted(series.items()):
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="µs per step", title=f"H={hidden}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            if series:
                ax.legend(fontsize=7)
    _save(fig, out)


def plot_speedup(rows: list[dict], out: str) -> None:
    best_cudnn, ours = {}, defaultdict(dict)
    for r in rows:
        key = (r["mode"], int(r["batch"]), int(r["seq_len"]), int(r["hidden_size"]))
        if r["provider"].startswith("cudnn"):
            best_cudnn[key] = min(best_cudnn.get(key, float("inf")), float(r["ms"]))
        elif r["provider"].startswith("tritonlstm"):
            ours[key][r["dtype"]] = float(r["ms"])
    keys = sorted(k for k in ours if k in best_cudnn)
    dtypes = sorted({d for k in keys for d in ours[k]})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(keys) * max(1, len(dtypes))), 4))
    width = 0.8 / max(1, len(dtypes))
    for n, dtype in enumerate(dtypes):
        xs = [i + n * width for i, k in enumerate(keys) if dtype in ours[k]]
        ys = [best_cudnn[k] / ours[k][dtype] for k in keys if dtype in ours[k]]
        ax.bar(xs, ys, width=width, label=f"tritonlstm {dtype}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(dtypes) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{m}\nB{b} T{t} H{h}" for m, b, t, h in keys], fontsize=7)
    ax.set(ylabel="speed-up over best cuDNN (x)", title="tritonlstm vs the best cuDNN time of the same shape")
    if dtypes:
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
    ap.add_argument("csv", help="a CSV written by benchmarks.run")
    ap.add_argument("--commit", help="plot this commit's rows (default: the newest commit in the file)")
    args = ap.parse_args(argv)
    rows = _rows(args.csv, args.commit)
    stem = os.path.splitext(args.csv)[0]
    outs = [f"{stem}-time-per-step.png", f"{stem}-speedup.png", f"{stem}-memory.png"]
    plot_time_per_step(rows, outs[0])
    plot_speedup(rows, outs[1])
    plot_memory(rows, outs[2])
    for o in outs:
        print(o)
    return outs


if __name__ == "__main__":
    main()
