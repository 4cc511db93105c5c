"""`tritonlstm demo` end to end (train, export, verify in onnxruntime, plot; the model beats the baseline), with
and without a regulariser (``--recurrent-dropout``, ``--zoneout``), and the CLI's answers before training: an
unwritable output folder, a probability out of range, ``--backend triton`` on a CPU.

The demo runs in this process with ``TRITON_INTERPRET`` as this test run has it, so the Triton check is tested
both ways: a number with the interpreter (CI's interpreter leg), ``None`` and a printed reason without it.
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

from tests.helpers import INTERPRETER
from tritonlstm import cli

QUIET = ("torchvision is not installed", "[torch.onnx]", "_flat_weights", "LeafSpec")


# the demo's optional packages (pip install -e ".[demo]"): a missing one skips the tests that need it, with the reason
DEMO_EXTRAS = ("numpy", "tqdm", "matplotlib", "onnx", "onnxscript", "onnxruntime")


PLAIN_LEG_ONLY = (
    "trains on the reference path in either CPU condition; CI's plain leg runs it, and the interpreter would add "
    "only the Triton check that test_forecast_demo_quick makes"
)


@pytest.fixture
def interpret_as_this_run(monkeypatch):
    """Pin TRITON_INTERPRET to this run's mode (the CLI sets it on a CPU when unset), restored afterwards; skip
    where the demo's optional packages are missing."""
    for name in DEMO_EXTRAS:
        pytest.importorskip(name, reason=f"the demo needs {name}: pip install -e '.[demo]'")
    monkeypatch.setenv("TRITON_INTERPRET", "1" if INTERPRETER else "0")


def test_forecast_demo_quick(tmp_path, capsys, interpret_as_this_run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    for name in ("metrics.json", "model.onnx", "forecast.png", "model.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["task"] == "forecast" and m["backend"] == "reference" and m["device"] == "cpu"
    assert (m["recurrent_dropout"], m["zoneout"]) == (cli.RECURRENT_DROPOUT, cli.ZONEOUT), "the CLI's defaults"
    assert m["seed"] == 0 and m["val_weeks"] == 340 and 0 < m["val_mae"] <= m["val_rmse"] < 1.0, m
    assert m["rmse"] < m["baseline_rmse"], f"the model must beat the naive baseline: {m}"
    assert m["onnx_max_abs_diff"] < 1e-3, "onnxruntime must reproduce PyTorch's forecast"
    s = m["streaming"]
    assert (s["weeks_per_call"], s["calls"], s["windows"]) == (1, 52, 340), s  # --quick: 52-week windows
    assert (tmp_path / s["file"]).stat().st_size > 0
    assert s["pytorch_max_abs_diff_ppm"] == 0.0, "streamed week by week, the reference loop gives the whole window's"
    assert s["onnx_max_abs_diff_ppm"] < 1e-4, "the stateful graph, one week per call, gives the whole-window forecast"
    out, err = capsys.readouterr()
    if INTERPRETER:
        assert m["triton_vs_reference_max_abs_diff"] < 1e-4, "the Triton kernels must agree with the reference loop"
        assert "Triton kernels (interpreter) vs the reference loop" in out
    else:
        assert m["triton_vs_reference_max_abs_diff"] is None
        assert "Triton kernels not checked: CPU tensors need Triton's interpreter" in out
    assert "beats the naive baseline" in out and "RMSE (ppm)" in out
    files = out[out.index(f"files in {tmp_path}") :]
    written = ("metrics.json", "model.pt", "model.onnx", "model_stream.onnx", "forecast.png")
    assert all(name in files for name in written), files
    assert "streamed one week per call" in out
    for text in QUIET:
        assert text not in out + err, f"{text!r} reached the demo's output"
    noisy = [str(w.message) for w in caught if any(text in str(w.message) for text in QUIET)]
    assert not noisy, noisy


@pytest.mark.skipif(INTERPRETER, reason=PLAIN_LEG_ONLY)
def test_forecast_demo_univariate_single_step(tmp_path, interpret_as_this_run):
    cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--features", "uni", "--horizon", "1"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["features"] == "uni" and m["horizon"] == 1 and m["rmse"] < m["baseline_rmse"]


@pytest.mark.skipif(INTERPRETER, reason=PLAIN_LEG_ONLY)
@pytest.mark.parametrize(
    "argv, recurrent_dropout, zoneout, says",
    [
        (["--recurrent-dropout", "0.2", "--zoneout", "0"], 0.2, (0.0, 0.0), "regulariser: recurrent_dropout 0.2;"),
        (["--recurrent-dropout", "0", "--zoneout", "0.1"], 0.0, (0.1, 0.1), "regulariser: zoneout 0.1;"),
        (["--recurrent-dropout", "0", "--zoneout", "0"], 0.0, (0.0, 0.0), "regulariser: none;"),
    ],
    ids=["recurrent-dropout", "zoneout", "off"],
)
def test_forecast_demo_regulariser_option(tmp_path, capsys, monkeypatch, interpret_as_this_run, argv,
                                          recurrent_dropout, zoneout, says):  # fmt: skip
    from tritonlstm import demo

    built = []

    class Recorded(demo.Forecaster):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)

    monkeypatch.setattr(demo, "Forecaster", Recorded)
    cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", *argv])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert (m["recurrent_dropout"], m["zoneout"]) == (recurrent_dropout, zoneout[0]), m
    assert m["rmse"] < m["baseline_rmse"] and m["onnx_max_abs_diff"] < 1e-3, m
    assert says in capsys.readouterr().out
    (model,) = built
    assert model.lstm.recurrent_dropout == recurrent_dropout and model.lstm.zoneout == zoneout
    # the regulariser acts in training (a new mask each call) and leaves eval deterministic
    x = torch.randn(4, 20, 3)
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)
        b = model(x)
    assert torch.equal(a, b) == (recurrent_dropout == 0 and zoneout == (0.0, 0.0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.skipif(INTERPRETER, reason=PLAIN_LEG_ONLY)
def test_forecast_demo_as_a_gru_compares_with_the_lstm_on_the_same_split(tmp_path, capsys, interpret_as_this_run):
    cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--cell", "gru"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["cell"] == "gru" and m["rmse"] < m["baseline_rmse"] and m["onnx_max_abs_diff"] < 1e-3, m
    gru, lstm = m["comparison"]["gru"], m["comparison"]["lstm"]
    assert (gru["rmse"], gru["val_rmse"]) == (m["rmse"], m["val_rmse"])
    assert 0 < lstm["mae"] <= lstm["rmse"] < m["baseline_rmse"] and 0 < lstm["val_mae"] <= lstm["val_rmse"]
    assert m["streaming"]["onnx_max_abs_diff_ppm"] < 1e-4 and m["streaming"]["pytorch_max_abs_diff_ppm"] == 0.0
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert any(k.startswith("gru.") for k in weights) and not any(k.startswith("lstm.") for k in weights)
    out = capsys.readouterr().out
    assert "model (tritonlstm.GRU)" in out and "LSTM, same split (compared)" in out


def test_charlm_demo_quick(tmp_path, capsys, interpret_as_this_run):
    cli.main(["demo", "--task", "charlm", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["val_perplexity"] < m["baseline_perplexity"]
    assert len(m["samples"]) == 3 and all(len(s) > 50 for s in m["samples"])
    out = capsys.readouterr().out
    assert "validation perplexity" in out and f"files in {tmp_path}" in out and "metrics.json" in out


def test_unwritable_out_fails_before_training(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(cli, "_demo", lambda args: pytest.fail("the demo started before --out was checked"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--quick", "--out", str(tmp_path / "a-file" / "demo")])
    assert exit_.value.code == f"tritonlstm demo: cannot write to --out {tmp_path / 'a-file' / 'demo'}: Not a directory"


@pytest.mark.parametrize("option", ["--recurrent-dropout", "--zoneout"])
@pytest.mark.parametrize("value", ["1", "-0.1", "nan"])
def test_probability_out_of_range_fails_before_training(tmp_path, capsys, monkeypatch, option, value):
    monkeypatch.setattr(cli, "_demo", lambda args: pytest.fail("the demo started before the option was checked"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--quick", "--out", str(tmp_path), option, value])
    assert exit_.value.code == 2
    assert f"error: {option} must be in [0, 1), got {float(value)}" in capsys.readouterr().err


def test_demo_help_lists_the_regularisers(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help to the terminal's width
    assert "--recurrent-dropout P forecast: variational recurrent dropout" in out, out
    assert f"0: off (default: {cli.RECURRENT_DROPOUT})" in out and "--zoneout P forecast: zoneout of h and c" in out
    assert f"0: off (default: {cli.ZONEOUT})" in out


class _Trained(Exception):
    pass


def test_backend_triton_on_cpu_says_interpreter_up_front(tmp_path, capsys, monkeypatch, interpret_as_this_run):
    from tritonlstm import demo

    def forecast(*args):
        raise _Trained  # stop where training would start (minutes in the interpreter)

    monkeypatch.setattr(demo, "forecast", forecast)
    argv = ["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--backend", "triton"]
    if INTERPRETER:
        with pytest.raises(_Trained):
            cli.main(argv)
        out = capsys.readouterr().out
        assert out.startswith("note: --backend triton on a CPU trains through Triton's interpreter"), out
    else:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert str(exit_.value.code).startswith(
            "tritonlstm demo: --backend triton cannot run here: CPU tensors need Triton's interpreter"
        )


def test_quiet_export_hides_only_the_exporters_noise(capfd):
    from tritonlstm.demo import quiet_export

    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_export():
            registry.warning("torchvision is not installed. Skipping torchvision::nms")
            print("[torch.onnx] Run decompositions...")
            warnings.warn("The tensor attributes self.lstm._flat_weights[0] were assigned during export.", UserWarning)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
            warnings.warn("a warning of the user's own", UserWarning)
    out, err = capfd.readouterr()
    assert "torchvision" not in out + err and "[torch.onnx]" not in out + err
    assert [str(w.message) for w in caught] == ["a warning of the user's own"]
    assert registry.level == level, "the logger's level must be restored"

    with pytest.raises(RuntimeError, match="export failed"), quiet_export():
        print("[torch.onnx] Translate the graph into ONNX...")
        raise RuntimeError("export failed")
    assert "[torch.onnx] Translate the graph into ONNX..." in capfd.readouterr().err, "shown when the export fails"

