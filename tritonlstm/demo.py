"""``tritonlstm demo``: train on real data, deploy to ONNX, verify in onnxruntime, plot.

Tasks:

* ``forecast`` (default): weekly Mauna Loa CO2 (public domain, shipped in ``tritonlstm/data``). Univariate input
  (the series) or multivariate (the series plus the season as sin/cos of the week of the year), single-step
  (``--horizon 1``) or multi-step output. Windows are encoded relative to their last value, so the model
  forecasts changes and keeps working at CO2 levels it never saw in training. Split in time order
  (70/15/15), scaling fitted on the training part only, Adam with gradient clipping, best-on-validation
  checkpoint; test RMSE/MAE in ppm against the better of two naive baselines (last value, seasonal naive).
  The trained model is exported with ``tritonlstm.export.export_onnx``, checked with ``verify_onnx`` and run in
  onnxruntime on the whole test set.
* ``charlm``: a character-level language model on a short public-domain text; validation perplexity against a
  unigram baseline, and a few lines sampled one character at a time with ``(h, c)`` carried step to step.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import nn

import tritonlstm

WEEKS_PER_YEAR = 365.25 / 7


# ---------------------------------------------------------------------------------------------- data


def load_co2() -> tuple[list[str], torch.Tensor]:
    """Dates (YYYYMMDD) and weekly CO2 in ppmv, the missing weeks interpolated linearly."""
    with resources.files("tritonlstm.data").joinpath("co2_weekly.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    dates = [r["date"] for r in rows]
    values = torch.tensor([float(r["co2"]) if r["co2"] else float("nan") for r in rows], dtype=torch.float64)
    idx = torch.arange(len(values), dtype=torch.float64)
    known = ~torch.isnan(values)
    values[~known] = torch.from_numpy(np.interp(idx[~known].numpy(), idx[known].numpy(), values[known].numpy()))
    return dates, values


@dataclass
class Windows:
    x: torch.Tensor  # [N, L, F] inputs, relative to each window's last value and scaled
    y: torch.Tensor  # [N, horizon] targets: future minus last value, scaled
    last: torch.Tensor  # [N] the window's last value (ppm), to undo the encoding
    truth: torch.Tensor  # [N, horizon] the future in ppm
    target_index: torch.Tensor  # [N] index of the first target week


def make_windows(series, start, end, lookback, horizon, features, scale) -> Windows:
    """Every window whose targets lie in [start, end) (inputs may reach back before start)."""
    xs, ys, lasts, truths, targets = [], [], [], [], []
    week = torch.arange(len(series), dtype=torch.float64)
    season = torch.stack([torch.sin(2 * math.pi * week / WEEKS_PER_YEAR), torch.cos(2 * math.pi * week / WEEKS_PER_YEAR)], -1)
    for t in range(max(start, lookback), end - horizon + 1):
        window = series[t - lookback : t]
        last = window[-1]
        rel = ((window - last) / scale).unsqueeze(-1)
        if features == "multi":
            rel = torch.cat([rel, season[t - lookback : t]], dim=-1)
        xs.append(rel)
        future = series[t : t + horizon]
        ys.append((future - last) / scale)
        lasts.append(last)
        truths.append(future)
        targets.append(t)
    return Windows(torch.stack(xs).float(), torch.stack(ys).float(), torch.stack(lasts), torch.stack(truths), torch.tensor(targets))


class Forecaster(nn.Module):
    """tritonlstm.LSTM over the history window, a Linear head on the last step's output."""

    def __init__(self, n_features: int, horizon: int, hidden: int, layers: int, backend: str):
        super().__init__()
        self.lstm = tritonlstm.LSTM(n_features, hidden, num_layers=layers, batch_first=True, backend=backend,
                                    dropout=0.1 if layers > 1 else 0.0)  # fmt: skip
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


def _batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------- forecast


def forecast(out: str, quick: bool, device: str, backend: str, features: str, horizon: int, seed: int) -> dict:
    from tqdm import tqdm

    from tritonlstm.export import export_onnx, verify_onnx

    t0 = time.time()
    torch.manual_seed(seed)
    dates, series = load_co2()
    n = len(series)
    train_end, val_end = int(0.70 * n), int(0.85 * n)
    lookback = 52 if quick else 78
    steps = series[1:train_end] - series[: train_end - 1]
    scale = float(steps.std())  # fitted on the training part only
    train = make_windows(series, 0, train_end, lookback, horizon, features, scale)
    val = make_windows(series, train_end, val_end, lookback, horizon, features, scale)
    test = make_windows(series, val_end, n, lookback, horizon, features, scale)

    n_features = 3 if features == "multi" else 1
    model = Forecaster(n_features, horizon, hidden=32 if quick else 48, layers=1 if quick else 2, backend=backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    epochs = 6 if quick else 12
    gen = torch.Generator().manual_seed(seed)
    best, best_val = None, float("inf")
    xv, yv = val.x.to(device), val.y.to(device)
    for epoch in range(epochs):
        model.train()
        bar = tqdm(_batches(len(train.x), 64, gen), desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        running = 0.0
        for k, idx in enumerate(bar):
            loss = nn.functional.mse_loss(model(train.x[idx].to(device)), train.y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running += (loss.item() - running) / (k + 1)
            bar.set_postfix(loss=f"{running:.4f}")
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(xv), yv).item()
        if val_loss < best_val:  # best-on-validation checkpoint
            best_val, best = val_loss, copy.deepcopy(model.state_dict())
        tqdm.write(f"epoch {epoch + 1:>2}: train loss {running:.4f}  val loss {val_loss:.4f}")
    model.load_state_dict(best)
    model.eval()
    os.makedirs(out, exist_ok=True)
    torch.save(best, os.path.join(out, "model.pt"))

    with torch.no_grad():
        pred_scaled = model(test.x.to(device)).cpu().double()
    pred = test.last[:, None] + pred_scaled * scale
    err = pred - test.truth
    rmse, mae = float(err.square().mean().sqrt()), float(err.abs().mean())
    # naive baselines: the last value repeated, and the value one year (52 weeks) earlier
    last_value = test.last[:, None].expand_as(test.truth)
    offsets = test.target_index[:, None] + torch.arange(horizon)[None, :]
    seasonal = series[offsets - 52]
    baselines = {name: (float((b - test.truth).square().mean().sqrt()), float((b - test.truth).abs().mean()))
                 for name, b in (("last value", last_value), ("seasonal naive", seasonal))}  # fmt: skip
    baseline = min(baselines, key=lambda k: baselines[k][0])

    # Triton kernels once on the trained model (on CPU through the interpreter) against the training backend
    agreement = None
    trained_backend = tritonlstm.resolve_backend(backend, torch.device(device), torch.float32)
    if trained_backend != "triton":
        twin = copy.deepcopy(model)
        twin.lstm.backend = "triton"
        with torch.no_grad():
            agreement = float((twin(test.x[:64].to(device)).cpu() - model(test.x[:64].to(device)).cpu()).abs().max())

    # deploy: ONNX, verified in onnxruntime at the example and at another batch size and window length. The
    # exported copy uses the Triton backend, whose custom op the exporter translates (traced, not run).
    export_model = copy.deepcopy(model)
    export_model.lstm.backend = "triton"
    example = (test.x[:8],)
    onnx_path = os.path.join(out, "model.onnx")
    export_onnx(export_model, example, onnx_path, input_names=["history"], output_names=["forecast"])
    longer = make_windows(series, val_end, n, lookback + 13, horizon, features, scale).x[:5]
    report = verify_onnx(model, onnx_path, example, other_args=[(test.x[:3],), (longer,)])
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_scaled = torch.from_numpy(session.run(None, {"history": test.x.numpy()})[0]).double()
    onnx_pred = test.last[:, None] + onnx_scaled * scale
    onnx_diff = float((onnx_pred - pred).abs().max())

    _plot_forecast(os.path.join(out, "forecast.png"), series, dates, test, pred, onnx_pred, val_end, horizon)
    metrics = {
        "task": "forecast", "features": features, "horizon": horizon, "lookback": lookback, "epochs": epochs,
        "rmse": rmse, "mae": mae, "baseline": baseline, "baseline_rmse": baselines[baseline][0],
        "baseline_mae": baselines[baseline][1],
        "baselines": {k: {"rmse": v[0], "mae": v[1]} for k, v in baselines.items()},
        "onnx_max_abs_diff": onnx_diff, "onnx_verify_max_abs_diff": report.max_abs_diff,
        "backend": trained_backend, "device": device, "triton_vs_training_backend_max_abs_diff": agreement,
        "test_weeks": int(len(test.x)), "seconds": time.time() - t0,
    }  # fmt: skip
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def _plot_forecast(path, series, dates, test, pred, onnx_pred, val_end, horizon) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lead = horizon - 1  # plot the furthest lead: each target week as forecast `horizon` weeks ahead
    t = (test.target_index + lead).numpy()
    year = lambda i: int(dates[i][:4]) + (int(dates[i][4:6]) - 1) / 12 + (int(dates[i][6:]) - 1) / 365  # noqa: E731
    hist = range(max(0, val_end - 3 * 52), int(t[-1]) + 1)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.plot([year(i) for i in hist if i < val_end], [float(series[i]) for i in hist if i < val_end], color="0.5", label="history")
    ax.plot([year(i) for i in t], test.truth[:, lead].numpy(), color="black", label="truth (test)")
    ax.plot([year(i) for i in t], pred[:, lead].numpy(), color="tab:blue", label=f"PyTorch forecast ({horizon} weeks ahead)")
    ax.plot([year(i) for i in t], onnx_pred[:, lead].numpy(), color="tab:orange", linestyle="--", label="onnxruntime forecast")
    ax.set(xlabel="year", ylabel="CO2 (ppmv)", title="Mauna Loa weekly CO2: tritonlstm forecaster, test period")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- charlm


class CharLM(nn.Module):
    def __init__(self, vocab: int, hidden: int, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = tritonlstm.LSTM(32, hidden, batch_first=True, backend=backend)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, hx=None):
        y, hx = self.lstm(self.embed(x), hx)
        return self.head(y), hx


def charlm(out: str, quick: bool, device: str, backend: str, seed: int) -> dict:
    from tqdm import tqdm

    t0 = time.time()
    torch.manual_seed(seed)
    text = resources.files("tritonlstm.data").joinpath("charlm_text.txt").read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    model = CharLM(len(vocab), 64 if quick else 128, backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    seq, epochs = 64, (15 if quick else 60)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.arange(0, len(train) - seq - 1, seq // 2)
    best, best_val = None, float("inf")
    bar = tqdm(range(epochs), desc="charlm", leave=False)
    for _ in bar:
        model.train()
        for idx in _batches(len(starts), 16, gen):
            s = starts[idx]
            x = torch.stack([train[i : i + seq] for i in s]).to(device)
            y = torch.stack([train[i + 1 : i + seq + 1] for i in s]).to(device)
            loss = nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.cross_entropy(model(val[None, :-1].to(device))[0][0], val[1:].to(device)).item()
        if val_loss < best_val:
            best_val, best = val_loss, copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val_loss:.3f}")
    model.load_state_dict(best)
    counts = torch.bincount(train, minlength=len(vocab)).double() + 1
    unigram = float(-(counts / counts.sum()).log()[val].mean())
    samples = [_sample(model, vocab, prompt, 80, device, gen) for prompt in ("Four score", "Shall I", "Love ")]
    os.makedirs(out, exist_ok=True)
    metrics = {
        "task": "charlm", "val_perplexity": math.exp(best_val), "baseline": "unigram",
        "baseline_perplexity": math.exp(unigram), "samples": samples, "epochs": epochs,
        "backend": tritonlstm.resolve_backend(backend, torch.device(device), torch.float32), "device": device,
        "seconds": time.time() - t0,
    }  # fmt: skip
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


@torch.no_grad()
def _sample(model, vocab, prompt, length, device, gen) -> str:
    """Autoregressive sampling, one character per call, the LSTM's (h, c) carried from step to step."""
    model.eval()
    hx, logits = None, None
    for ch in prompt:
        logits, hx = model(torch.tensor([[vocab.index(ch) if ch in vocab else 0]], device=device), hx)
    text = prompt
    for _ in range(length):
        probs = torch.softmax(logits[0, -1].double().cpu() / 0.8, -1)
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        text += vocab[nxt]
        logits, hx = model(torch.tensor([[nxt]], device=device), hx)
    return text
