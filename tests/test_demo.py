"""`tritonlstm demo --quick` end to end: train, export, verify in onnxruntime, plot; the model beats the baseline."""

from __future__ import annotations

import json

from tritonlstm import cli


def test_forecast_demo_quick(tmp_path, capsys):
    cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    for name in ("metrics.json", "model.onnx", "forecast.png", "model.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("task", "rmse", "mae", "baseline_rmse", "onnx_max_abs_diff", "backend", "device", "seconds"):
        assert key in m, key
    assert m["rmse"] < m["baseline_rmse"], f"the model must beat the naive baseline: {m}"
    assert m["onnx_max_abs_diff"] < 1e-3, "onnxruntime must reproduce PyTorch's forecast"
    assert m["triton_vs_training_backend_max_abs_diff"] < 1e-4, "the Triton kernels must agree with the training run"
    out = capsys.readouterr().out
    assert "beats the naive baseline" in out and "RMSE (ppm)" in out


def test_forecast_demo_univariate_single_step(tmp_path):
    cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--features", "uni", "--horizon", "1"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["features"] == "uni" and m["horizon"] == 1 and m["rmse"] < m["baseline_rmse"]


def test_charlm_demo_quick(tmp_path, capsys):
    cli.main(["demo", "--task", "charlm", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["val_perplexity"] < m["baseline_perplexity"]
    assert len(m["samples"]) == 3 and all(len(s) > 50 for s in m["samples"])
    assert "validation perplexity" in capsys.readouterr().out
