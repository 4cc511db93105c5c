"""Smoke run of the benchmark runner and plot script on CPU, so neither can rot."""

from __future__ import annotations

import csv

import pytest
import torch

from benchmarks import plot, run

REQUIRED = (
    "date, commit, device, torch, triton, provider, dtype, mode, batch, seq_len, input_size, hidden_size, num_layers, "
    "bidirectional, cuda_graph, ms, ms_p20, ms_p80, us_per_step, tokens_per_s, tflops, peak_mem_mb, note"
).split(", ")


def _read(folder):
    (path,) = folder.glob("*.csv")
    with open(path, newline="") as f:
        return path, list(csv.DictReader(f))


def test_help_lists_grids_providers_dtypes_and_modes(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    for word in (*run.GRIDS, *run.PROVIDERS, "fp32", "fp16", "bf16", "fwd+bwd", "input GEMM"):
        assert word in text, word


def test_smoke_run_writes_the_csv_schema_and_plots(tmp_path):
    run.main(["--smoke", "--out", str(tmp_path)])
    path, rows = _read(tmp_path)
    assert set(REQUIRED) <= set(rows[0])
    assert len(rows) == 2 * 2 * 2  # shapes x providers x modes
    assert {r["provider"] for r in rows} == {"tritonlstm", "cudnn"} and {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["ms_p20"]) <= float(r["ms"]) <= float(r["ms_p80"]), r
        assert float(r["us_per_step"]) == pytest.approx(float(r["ms"]) * 1e3 / int(r["seq_len"]), rel=1e-3)
        assert r["floor_kind"] in ("compute", "memory", "latency") and float(r["achieved_over_floor"]) > 0
        assert "input GEMM included" in r["note"] and "MISMATCH" not in r["note"]
    run.main(["--smoke", "--out", str(tmp_path)])  # appends, one header
    assert len(_read(tmp_path)[1]) == 16
    for png in plot.main([str(path)]):
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_correctness_gate_marks_a_mismatch_and_does_not_time_it(tmp_path, monkeypatch):
    forward = run.tritonlstm.LSTM.forward

    def wrong(self, *args, **kwargs):
        y, (h, c) = forward(self, *args, **kwargs)
        return y + 0.1, (h, c)

    monkeypatch.setattr(run.tritonlstm.LSTM, "forward", wrong)
    run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd"])
    _, rows = _read(tmp_path)
    ours = [r for r in rows if r["provider"] == "tritonlstm"]
    assert ours and all(r["ms"] == "" and "MISMATCH" in r["note"] and "not timed" in r["note"] for r in ours)
    assert all(r["ms"] for r in rows if r["provider"] == "cudnn")


def test_floors_pick_the_binding_limit():
    peaks = {"matmul_tflops": 800.0, "copy_tb_s": 3.0}
    small = run.Shape(16, 1024, 768, 768)
    big = run.Shape(1024, 256, 1024, 1024)
    assert run._floors(small, "fwd", torch.bfloat16, peaks)[1] == "latency"
    floor, kind = run._floors(big, "fwd+bwd", torch.bfloat16, peaks)
    assert kind == "compute" and abs(floor - 3 * 8 * 1024 * 1024 * 2048 * 256 / 800e12 * 1e3) < 1e-9


def test_cudnn_algorithm_note_follows_pytorch_rule():
    assert "persistent" in run._cudnn_algorithm(run.Shape(64, 1024, 768, 768), torch.float16)
    assert "standard" in run._cudnn_algorithm(run.Shape(256, 1024, 768, 768), torch.float16)  # batch > 128
    assert "standard" in run._cudnn_algorithm(run.Shape(64, 1024, 768, 768), torch.float32)
    assert "no cuDNN path" in run._cudnn_algorithm(run.Shape(64, 1024, 768, 768), torch.bfloat16)
