"""``tritonlstm demo``: train on real data, deploy to ONNX, verify in onnxruntime, plot.

Tasks:

* ``forecast`` (default): weekly Mauna Loa CO2 (public domain, shipped in ``tritonlstm/data``). Univariate input
  (the series) or multivariate (the series plus the season as sin/cos of the week of the year), single-step
  (``--horizon 1``) or multi-step output. Windows are encoded relative to their last value, so the model
  forecasts changes and keeps working at CO2 levels it never saw in training. Split in time order
  (70/15/15), scaling fitted on the training part only, Adam with gradient clipping, best-on-validation
  checkpoint; optional recurrent dropout or zoneout in the LSTM (``--recurrent-dropout``, ``--zoneout``).
  ``--cell gru`` trains the same forecaster as a GRU and then, for comparison, the LSTM on the same split, seed
  and settings: ``metrics.json`` holds both models' validation and test errors (``"comparison"``).
  Validation and test RMSE/MAE in ppm, the test's against the better of two naive baselines (last value,
  seasonal naive).
  The trained model is exported with ``tritonlstm.export.export_onnx``, checked with ``verify_onnx`` and run in
  onnxruntime on the whole test set.
* ``charlm``: a character-level language model on a short public-domain text; validation perplexity against a
  unigram baseline, and a few lines sampled one character at a time with ``(h, c)`` carried step to step.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import io
import json
import logging
import math
import os
import sys
import time
import warnings
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
    """tritonlstm.LSTM (``cell="gru"``: tritonlstm.GRU, held as ``gru``) over the history window, a Linear head
    on the last step's output. ``recurrent_dropout`` and ``zoneout`` (one probability, for h and c) are the
    layer's options of those names, 0 for off; they change training only (zoneout's eval mode is its
    expectation), not the parameters or the ``state_dict``."""

    def __init__(self, n_features: int, horizon: int, hidden: int, layers: int, backend: str,
                 recurrent_dropout: float = 0.0, zoneout: float = 0.0, cell: str = "lstm"):  # fmt: skip
        super().__init__()
        cls = {"lstm": tritonlstm.LSTM, "gru": tritonlstm.GRU}[cell]
        layer = cls(n_features, hidden, num_layers=layers, batch_first=True, backend=backend,
                    dropout=0.1 if layers > 1 else 0.0, recurrent_dropout=recurrent_dropout,
                    zoneout=zoneout)  # fmt: skip
        setattr(self, cell, layer)
        self.cell = cell
        self.head = nn.Linear(hidden, horizon)

    @property
    def rnn(self) -> nn.Module:
        """The recurrent layer, whichever cell it is."""
        return getattr(self, self.cell)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def _batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------- forecast

# what each file of a forecast run holds (the CLI lists them)
FORECAST_FILES = {
    "metrics.json": "the numbers above",
    "model.pt": "the trained weights: the state_dict of tritonlstm.demo.Forecaster",
    "model.onnx": "the model for onnxruntime: input 'history' [batch, weeks, features], output 'forecast'",
    "model_stream.onnx": "the same model, stateful: one or more weeks 'week' [batch, weeks, features] and the "
    "state (h_in_l0, c_in_l0, ...; a GRU's h alone) in, 'forecast' and the state (h_out_l0, ...) out",
    "forecast.png": "the test period: truth, forecast, naive baseline and their errors",
}


# the forecaster's size and training: lookback (weeks of history), hidden units, layers, epochs, batch, learning rate
FORECAST_SETTINGS = {
    "quick": {"lookback": 52, "hidden": 32, "layers": 1, "epochs": 6, "batch": 128, "lr": 5e-3},
    "full": {"lookback": 78, "hidden": 48, "layers": 2, "epochs": 12, "batch": 64, "lr": 3e-3},
}


def _fit(model: nn.Module, train: Windows, val: Windows, cfg: dict, device: str, seed: int) -> dict:
    """Adam with gradient clipping for ``cfg["epochs"]`` epochs; leaves ``model`` in eval mode holding its best
    state on the validation windows, and returns that state."""
    from tqdm import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    epochs = cfg["epochs"]
    gen = torch.Generator().manual_seed(seed)
    best, best_val = None, float("inf")
    xv, yv = val.x.to(device), val.y.to(device)
    for epoch in range(epochs):
        model.train()
        batches = _batches(len(train.x), cfg["batch"], gen)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=None)  # a bar on terminals only
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
        tqdm.write(f"{model.cell} epoch {epoch + 1:>2}: train loss {running:.4f}  val loss {val_loss:.4f}")
    model.load_state_dict(best)
    model.eval()
    return best


def _scored(model: nn.Module, windows: Windows, scale: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's scaled output on ``windows`` and its forecast in ppm."""
    with torch.no_grad():
        scaled = model(windows.x.to(device)).cpu().double()
    return scaled, windows.last[:, None] + scaled * scale


def forecast(out: str, quick: bool, device: str, backend: str, features: str, horizon: int, seed: int,
             recurrent_dropout: float, zoneout: float, cell: str = "lstm") -> dict:  # fmt: skip
    from tritonlstm.export import export_onnx, verify_onnx

    t0 = time.time()
    torch.manual_seed(seed)
    dates, series = load_co2()
    n = len(series)
    train_end, val_end = int(0.70 * n), int(0.85 * n)
    cfg = FORECAST_SETTINGS["quick" if quick else "full"]
    lookback = cfg["lookback"]
    steps = series[1:train_end] - series[: train_end - 1]
    scale = float(steps.std())  # fitted on the training part only
    train = make_windows(series, 0, train_end, lookback, horizon, features, scale)
    val = make_windows(series, train_end, val_end, lookback, horizon, features, scale)
    test = make_windows(series, val_end, n, lookback, horizon, features, scale)

    n_features = 3 if features == "multi" else 1
    epochs = cfg["epochs"]

    def trained(kind: str) -> Forecaster:
        torch.manual_seed(seed)  # the same initial draws for either cell's run
        model = Forecaster(n_features, horizon, cfg["hidden"], cfg["layers"], backend, recurrent_dropout, zoneout,
                           kind).to(device)  # fmt: skip
        _fit(model, train, val, cfg, device, seed)
        return model

    model = trained(cell)
    os.makedirs(out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))

    # the validation errors choose the checkpoint and the regulariser; the test errors only report
    val_rmse, val_mae = _errors(_scored(model, val, scale, device)[1], val.truth)
    pred_scaled, pred = _scored(model, test, scale, device)
    rmse, mae = _errors(pred, test.truth)
    comparison = None
    if cell == "gru":  # the LSTM on the same split, seed and settings, for comparison (not exported)
        comparison = {"gru": {"val_rmse": val_rmse, "val_mae": val_mae, "rmse": rmse, "mae": mae}}
        lstm = trained("lstm")
        (lstm_val_rmse, lstm_val_mae), (lstm_rmse, lstm_mae) = (
            _errors(_scored(lstm, w, scale, device)[1], w.truth) for w in (val, test)
        )
        comparison["lstm"] = {"val_rmse": lstm_val_rmse, "val_mae": lstm_val_mae, "rmse": lstm_rmse, "mae": lstm_mae}
    # naive baselines: the last value repeated, and the value one year (52 weeks) earlier
    offsets = test.target_index[:, None] + torch.arange(horizon)[None, :]
    naive = {"last value": test.last[:, None].expand_as(test.truth), "seasonal naive": series[offsets - 52]}
    baselines = {name: _errors(b, test.truth) for name, b in naive.items()}
    baseline = min(baselines, key=lambda k: baselines[k][0])

    # the interpreter's cost grows with the steps: the last half year of 16 test windows is check enough
    triton_diff, triton_check = check_triton(model, test.x[:16, -26:], device)

    # deploy: ONNX, verified in onnxruntime at the example and at another batch size and window length
    example = (test.x[:8],)
    onnx_path = os.path.join(out, "model.onnx")
    with quiet_export():
        export_onnx(model, example, onnx_path, input_names=["history"], output_names=["forecast"])
    longer = make_windows(series, val_end, n, lookback + 13, horizon, features, scale).x[:5]
    report = verify_onnx(model, onnx_path, example, other_args=[(test.x[:3],), (longer,)])
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_scaled = torch.from_numpy(session.run(None, {"history": test.x.numpy()})[0]).double()
    onnx_pred = test.last[:, None] + onnx_scaled * scale
    onnx_diff = float((onnx_pred - pred).abs().max())

    # streaming deployment: the stateful graph fed one week per call, the state fed back; after a window's last
    # week its forecast must be the whole-window one (windows are encoded relative to their own last value, so
    # each window is a stream of its own: all test windows run side by side as one batch)
    stream_path = os.path.join(out, "model_stream.onnx")
    with quiet_export():
        export_onnx(model, example, stream_path, stateful=True, input_names=["week"], output_names=["forecast"])
    stream_scaled = torch.from_numpy(stream_weeks(stream_path, test.x.numpy())).double()
    stream_torch = _stream_torch(model, test.x.to(device)).cpu().double()
    streaming = {
        "file": "model_stream.onnx", "weeks_per_call": 1, "calls": lookback, "windows": int(len(test.x)),
        "onnx_max_abs_diff_ppm": float(((stream_scaled - pred_scaled) * scale).abs().max()),
        "pytorch_max_abs_diff_ppm": float(((stream_torch - pred_scaled) * scale).abs().max()),
    }  # fmt: skip

    metrics = {
        "task": "forecast", "cell": cell, "features": features, "horizon": horizon, "lookback": lookback,
        "epochs": epochs,
        "recurrent_dropout": recurrent_dropout, "zoneout": zoneout, "seed": seed,
        "val_rmse": val_rmse, "val_mae": val_mae, "val_weeks": int(len(val.x)),
        "rmse": rmse, "mae": mae, "baseline": baseline, "baseline_rmse": baselines[baseline][0],
        "baseline_mae": baselines[baseline][1],
        "baselines": {k: {"rmse": v[0], "mae": v[1]} for k, v in baselines.items()},
        "onnx_max_abs_diff": onnx_diff, "onnx_verify_max_abs_diff": report.max_abs_diff,
        "backend": tritonlstm.resolve_backend(backend, torch.device(device), torch.float32), "device": device,
        "triton_vs_reference_max_abs_diff": triton_diff, "triton_check": triton_check, "streaming": streaming,
        "test_weeks": int(len(test.x)), "files": list(FORECAST_FILES),
    }  # fmt: skip
    if comparison is not None:
        metrics["comparison"] = comparison
    plot_path = os.path.join(out, "forecast.png")
    _plot_forecast(plot_path, series, dates, test, pred, onnx_pred, naive[baseline], metrics, val_end)
    metrics["seconds"] = time.time() - t0
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def stream_weeks(path: str, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the stateful forecaster, one week per call with the state fed back; the forecast after the
    last week of each window of ``x`` ``[windows, weeks, features]``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state_in = [i for i in session.get_inputs() if i.name != "week"]
    # every state is [batch, units]: the units are fixed in the graph, the batch is the windows'
    state = {i.name: np.zeros((len(x), i.shape[1]), np.float32) for i in state_in}
    outputs = [o.name for o in session.get_outputs()]
    for week in range(x.shape[1]):
        result = dict(zip(outputs, session.run(outputs, {"week": x[:, week : week + 1], **state})))
        state = {i.name: result[i.name.replace("_in_", "_out_")] for i in state_in}  # by name, never by position
    return result["forecast"]


@torch.no_grad()
def _stream_torch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same in PyTorch (``tritonlstm.stateful``): one week per call, the forecast after the last."""
    stream, state = tritonlstm.stateful(model), None
    for week in range(x.shape[1]):
        forecast, state = stream(x[:, week : week + 1], state=state)
    return forecast


def regulariser(metrics: dict) -> str:
    """The forecaster's regulariser in words: ``"zoneout 0.1"``, ``"recurrent_dropout 0.2, zoneout 0.05"``,
    ``"none"``."""
    on = [f"{name} {metrics[name]:g}" for name in ("recurrent_dropout", "zoneout") if metrics[name] > 0]
    return ", ".join(on) or "none"


def _errors(forecast: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """RMSE and MAE in ppm over every window and lead."""
    err = forecast - truth
    return float(err.square().mean().sqrt()), float(err.abs().mean())


def triton_unavailable(device: str) -> str | None:
    """Why the Triton kernels cannot run float32 tensors on ``device`` here, or ``None`` when they can."""
    from tritonlstm.dispatch import triton_unavailable_reason

    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (it ships for Linux only)"
    return triton_unavailable_reason(torch.device(device), torch.float32)


def check_triton(model: nn.Module, x: torch.Tensor, device: str) -> tuple[float | None, str]:
    """Run the trained model once on the Triton kernels and once on the reference loop; their largest difference.

    Returns ``(max abs diff, what was compared)``, or ``(None, why the kernels cannot run here)``: on a CPU they
    need Triton's interpreter (``TRITON_INTERPRET=1`` before tritonlstm's kernels are first imported), and
    Triton itself installs on Linux only.
    """
    reason = triton_unavailable(device)
    if reason is not None:
        return None, reason
    outputs = []
    for backend in ("triton", "reference"):
        twin = copy.deepcopy(model)
        twin.rnn.backend = backend
        with torch.no_grad():
            outputs.append(twin(x.to(device)).cpu())
    kernels = "Triton kernels (interpreter)" if device == "cpu" else "Triton kernels"
    what = f"{kernels} vs the reference loop, {x.shape[0]} test windows of {x.shape[1]} weeks"
    return float((outputs[0] - outputs[1]).abs().max()), what


@contextlib.contextmanager
def quiet_export():
    """Around the ONNX export only: hide what torch's exporter says that a demo user cannot act on.

    Its progress lines (``[torch.onnx] ...``, printed), its notices that torchvision is not installed (logged),
    a ``LeafSpec`` FutureWarning from torch's own internals, and the UserWarning about ``_flat_weights`` (the
    list of parameters that ``nn.RNNBase`` keeps, rebuilt while the exporter traces). The progress lines are
    printed after all if the export fails.
    """
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.filterwarnings("ignore", r"The tensor attributes .*_flat_weights", UserWarning)
            warnings.filterwarnings("ignore", r".*LeafSpec", FutureWarning)
            yield
    except BaseException:
        sys.stderr.write(printed.getvalue())
        raise
    finally:
        registry_log.setLevel(level)


def _plot_forecast(path, series, dates, test, pred, onnx_pred, baseline_pred, metrics, val_end) -> None:
    """Top: truth, the model's forecast, the naive baseline and onnxruntime's run of the exported model, at the
    furthest lead. Bottom: the absolute error of the model and of the baseline at that lead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = metrics["horizon"]
    lead = horizon - 1  # each target week as forecast `horizon` weeks ahead
    t = (test.target_index + lead).numpy()
    year = lambda i: int(dates[i][:4]) + (int(dates[i][4:6]) - 1) / 12 + (int(dates[i][6:]) - 1) / 365  # noqa: E731
    years = [year(i) for i in t]
    hist = range(max(0, val_end - 52), val_end)
    truth = test.truth[:, lead].numpy()
    ahead = f"{horizon} week{'s' if horizon > 1 else ''} ahead"
    fig, (ax, ax_err) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[2, 1])
    ax.plot([year(i) for i in hist], [float(series[i]) for i in hist], color="0.6", label="history (not scored)")
    ax.plot(years, truth, color="black", lw=1.2, label="truth (test weeks)")
    ax.plot(years, baseline_pred[:, lead].numpy(), color="tab:red", lw=1, alpha=0.8,
            label=f"naive baseline ({metrics['baseline']}): RMSE {metrics['baseline_rmse']:.2f} ppm")  # fmt: skip
    model_label = f"tritonlstm forecast (PyTorch, regulariser {regulariser(metrics)}): RMSE {metrics['rmse']:.2f} ppm"
    ax.plot(years, pred[:, lead].numpy(), color="tab:blue", lw=1.6, label=model_label)
    every = slice(0, None, 8)  # markers on every 8th week, so the PyTorch line stays visible underneath
    ax.plot(years[every], onnx_pred[every, lead].numpy(), "o", ms=3.5, mfc="none", color="tab:orange",
            label=f"the same model in onnxruntime (max |diff| {metrics['onnx_max_abs_diff']:.0e} ppm)")  # fmt: skip
    rmses = f"RMSE over leads 1–{horizon}: model {metrics['rmse']:.2f}, baseline {metrics['baseline_rmse']:.2f} ppm"
    ax.set(ylabel="CO2 (ppmv)", title=f"Mauna Loa weekly CO2, test period: forecasts {ahead} ({rmses})")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8, loc="upper left")
    ax_err.plot(years, abs(baseline_pred[:, lead].numpy() - truth), color="tab:red", lw=1, alpha=0.8,
                label="naive baseline")  # fmt: skip
    ax_err.plot(years, abs(pred[:, lead].numpy() - truth), color="tab:blue", lw=1.2, label="tritonlstm")
    ax_err.set(xlabel="year", ylabel="|error| (ppm)")
    ax_err.set_ylim(bottom=0)
    ax_err.legend(fontsize=8, loc="upper left")
    for a in (ax, ax_err):
        a.grid(alpha=0.3)
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
    bar = tqdm(range(epochs), desc="charlm", leave=False, disable=None)
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
        "files": ["metrics.json"], "seconds": time.time() - t0,
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
