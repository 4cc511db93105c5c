"""The benchmark runner, its correctness gate, the plot script and the GPU scripts, exercised on CPU so none can rot.

Runner tests that time tritonlstm need the Triton kernels (CPU: TRITON_INTERPRET=1); the plots need matplotlib
(skipped, with the reason, without it); the GPU scripts are checked with `bash -n`, their dry runs (the files
each call writes, against the count its header claims and the device tool's limit of 8) and a real CPU run
of the smoke grid.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import run
from tests.helpers import INTERPRETER, TOLERANCES, TRITON_DEVICE, requires_triton

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {  # script: the invocations the plan uses (the first is the one its header's count describes)
    "benchmarks/gpu/tests.sh": [[], ["gpu"], ["rest", "1/2"], ["rest", "2/2"]],
    "benchmarks/gpu/bench.sh": [["quick"], ["default", "1/2"], ["default", "2/2"], ["smoke"]],
    "benchmarks/gpu/plots.sh": [["benchmarks"]],
    "benchmarks/gpu/perf.sh": [[]],
    "benchmarks/gpu/variants.sh": [[]],
}
REQUIRED = (
    "date, commit, device, torch, triton, provider, dtype, mode, batch, seq_len, input_size, hidden_size, num_layers, "
    "bidirectional, cuda_graph, ms, ms_p20, ms_p80, us_per_step, tokens_per_s, tflops, peak_mem_mb, note"
).split(", ")


def _read(folder):
    (path,) = Path(folder).glob("*.csv")
    with open(path, newline="") as f:
        return path, list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- runner


def test_help_lists_grids_providers_dtypes_and_modes(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    for word in (*run.GRIDS, *run.PROVIDERS, "fp32", "fp16", "bf16", "fwd+bwd", "input GEMM", "--part", "float64"):
        assert word in text, word


def test_grid_parts_split_the_grid_without_overlap():
    for grid in ("default", "quick"):
        for n in (1, 2, 3):
            parts = [run.grid_part(grid, (k, n)) for k in range(1, n + 1)]
            assert sorted(sum(parts, []), key=repr) == sorted(run.grid_part(grid), key=repr)
            assert all(parts), f"{grid} in {n} parts leaves one empty"
    assert run.parse_part("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(Exception, match="K/N"):
            run.parse_part(bad)


def test_float32_precision_switches_tf32_for_cublas_and_cudnn_rnns_and_restores_it():
    rnn = torch.backends.cudnn.rnn  # the flag that makes cuDNN's fp32 LSTM TF32 by default
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, rnn.fp32_precision)
    with run.float32_precision(False):
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cudnn.allow_tf32 and rnn.fp32_precision != "tf32"
    with run.float32_precision(True):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 and rnn.fp32_precision == "tf32"
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, rnn.fp32_precision) == before


@requires_triton
def test_smoke_run_writes_the_csv_schema(tmp_path):
    run.main(["--smoke", "--out", str(tmp_path)])
    path, rows = _read(tmp_path)
    assert set(REQUIRED) <= set(rows[0])
    assert len(rows) == 2 * 2 * 2  # shapes x providers x modes
    assert {r["provider"] for r in rows} == {"tritonlstm", "cudnn"} and {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["ms_p20"]) <= float(r["ms"]) <= float(r["ms_p80"]), r
        assert float(r["us_per_step"]) == pytest.approx(float(r["ms"]) * 1e3 / int(r["seq_len"]), rel=1e-3)
        assert r["floor_kind"] in ("compute", "memory", "latency") and float(r["achieved_over_floor"]) > 0
        assert "input GEMM included" in r["note"] and "MISMATCH" not in r["note"] and "ERROR" not in r["note"]
        assert ("gate passed (float64 nn.LSTM)" in r["note"]) == (r["provider"] == "tritonlstm"), r["note"]
    run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd", "--providers", "cudnn"])  # appends, one header
    assert len(_read(tmp_path)[1]) == 10


@requires_triton
def test_variable_length_and_tf32_providers_pass_the_gate_and_are_timed(tmp_path):
    providers = ["tritonlstm-tf32", "tritonlstm-lengths", "cudnn-packed"]
    run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd+bwd", "--providers", *providers])
    _, rows = _read(tmp_path)
    assert [r["provider"] for r in rows] == providers * 2
    for r in rows:
        assert float(r["ms"]) > 0 and "ERROR" not in r["note"] and "MISMATCH" not in r["note"], r
    assert all("lengths" in r["note"] for r in rows if r["provider"] != "tritonlstm-tf32")


@requires_triton
def test_gru_providers_pass_the_gate_against_nn_gru_and_count_three_gates(tmp_path, monkeypatch):
    run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd", "fwd+bwd", "--providers", "tritonlstm-gru",
              "cudnn-gru"])  # fmt: skip
    _, rows = _read(tmp_path)
    assert [r["provider"] for r in rows] == (["tritonlstm-gru"] * 2 + ["cudnn-gru"] * 2) * 2  # 2 shapes
    for r in rows:
        assert float(r["ms"]) > 0 and "ERROR" not in r["note"] and "MISMATCH" not in r["note"], r
    shape = run.Shape(2, 4, 8, 5)
    assert run._flops(shape, "fwd", run.gates("cudnn-gru")) == 3 / 4 * run._flops(shape, "fwd", run.gates("cudnn"))
    assert all("float64 nn.GRU" in r["note"] for r in rows if r["provider"] == "tritonlstm-gru")
    forward = run.tritonlstm.GRU.forward

    def wrong(self, *args, **kwargs):
        y, h = forward(self, *args, **kwargs)
        return y, h + 0.1

    monkeypatch.setattr(run.tritonlstm.GRU, "forward", wrong)
    run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd", "--providers", "tritonlstm-gru", "--name", "bad"])
    bad = list(csv.DictReader(open(tmp_path / "bad.csv")))
    assert all("MISMATCH vs float64 nn.GRU" in r["note"] and "h_n" in r["note"] and r["ms"] == "" for r in bad)


@requires_triton
@pytest.mark.parametrize("provider", ["tritonlstm", "tritonlstm-lengths"])
def test_correctness_gate_marks_a_mismatch_and_does_not_time_it(tmp_path, monkeypatch, provider):
    forward = run.tritonlstm.LSTM.forward

    def wrong(self, *args, **kwargs):
        y, (h, c) = forward(self, *args, **kwargs)
        return y, (h, c + 0.1)  # only the cell state: the gate must check every output

    monkeypatch.setattr(run.tritonlstm.LSTM, "forward", wrong)
    run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd", "fwd+bwd", "--providers", provider, "cudnn"])
    _, rows = _read(tmp_path)
    ours = [r for r in rows if r["provider"] == provider]
    assert len(ours) == 4
    for r in ours:
        assert r["ms"] == "" and r["us_per_step"] == "", r
        assert "MISMATCH vs float64 nn.LSTM" in r["note"] and "c_n" in r["note"] and "not timed" in r["note"], r
    assert all(float(r["ms"]) > 0 for r in rows if r["provider"] == "cudnn")


@requires_triton
def test_gate_uses_the_float64_oracle_and_the_tolerance_of_the_dtype():
    """An error of 10x the float32 tolerance fails an fp32 row and passes a TF32 one (float16's tolerance)."""
    shape = run.Shape(3, 4, 8, 5)
    ref = torch.nn.LSTM(shape.input_size, shape.hidden)
    x = torch.randn(shape.seq_len, shape.batch, shape.input_size, device=TRITON_DEVICE)
    lengths = run.draw_lengths(shape)
    module, _ = run._provider_module("tritonlstm", shape, torch.float32, TRITON_DEVICE, ref)
    assert run.correctness_gate("tritonlstm", module, ref, x, torch.float32, lengths) is None
    error = 10 * TOLERANCES[torch.float32].atol
    assert error < TOLERANCES[torch.float16].atol
    forward = module.forward
    module.forward = lambda *a, **k: (lambda y, hc: (y + error, hc))(*forward(*a, **k))
    assert "output" in run.correctness_gate("tritonlstm", module, ref, x, torch.float32, lengths)
    assert run.correctness_gate("tritonlstm-tf32", module, ref, x, torch.float32, lengths) is None


def test_a_provider_that_raises_is_recorded_and_fails_the_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.nn.LSTM, "forward", broken)
    with pytest.raises(SystemExit, match="2 rows raised an error"):
        run.main(["--smoke", "--out", str(tmp_path), "--modes", "fwd", "--providers", "cudnn"])
    _, rows = _read(tmp_path)
    assert len(rows) == 2
    assert all(r["ms"] == "" and r["note"].startswith("ERROR: RuntimeError: CUDA error") for r in rows), rows


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


def test_lengths_are_reproducible_and_in_range():
    shape = run.Shape(64, 100, 8, 8)
    lengths = run.draw_lengths(shape)
    assert torch.equal(lengths, run.draw_lengths(shape)) and lengths.dtype == torch.int64
    assert lengths.max() == 100 and lengths.min() >= 50


# ---------------------------------------------------------------------------------------------- plots


def _fake_rows(commit: str, date: str) -> list[dict]:
    """GPU-like rows: two batches, cuDNN in two dtypes, tritonlstm full and variable-length, one untimed row."""
    rows = []
    for batch in (16, 64):
        for provider, dtype, ms in (
            ("cudnn", "fp16", 2.0), ("cudnn", "bf16", 8.0), ("tritonlstm", "bf16", 4.0), ("tritonlstm", "fp16", 1.0),
            ("cudnn-packed", "fp16", 10.0), ("tritonlstm-lengths", "fp16", 5.0), ("tritonlstm", "fp32", None),
        ):  # fmt: skip
            timed = ms is not None
            rows.append(dict(
                date=date, commit=commit, device="NVIDIA H100", torch="2.11", triton="3.6", provider=provider,
                dtype=dtype, mode="fwd", batch=batch, seq_len=1024, input_size=768, hidden_size=768, num_layers=1,
                bidirectional=False, cuda_graph=False, ms=ms if timed else "", ms_p20=ms if timed else "",
                ms_p80=ms if timed else "", us_per_step=ms if timed else "", tokens_per_s="", tflops="",
                peak_mem_mb=100.0 if timed else "", floor_ms="", floor_kind="", achieved_over_floor="",
                note="" if timed else "MISMATCH vs float64 nn.LSTM (not timed)",
            ))  # fmt: skip
    return rows


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=run.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_plot_merges_parts_and_uses_the_newest_commit(tmp_path):
    pytest.importorskip("matplotlib", reason="benchmarks/plot.py needs matplotlib (pip install -e '.[bench]')")
    from benchmarks import plot

    _write_csv(tmp_path / "bench-default-1of2.csv", _fake_rows("old", "2026-01-01T00:00:00")[:7])
    _write_csv(tmp_path / "bench-default-2of2.csv", _fake_rows("new", "2026-02-01T00:00:00")[7:])
    rows = plot._rows([str(p) for p in sorted(tmp_path.glob("*.csv"))], None)
    assert {r["commit"] for r in rows} == {"new"} and len(rows) == 6  # the untimed row is left out
    ratios = plot.speedups(rows)
    # against the best cuDNN time in any dtype (2.0 ms, fp16); the variable-length one against cudnn-packed
    expected = {"tritonlstm bf16": 0.5, "tritonlstm fp16": 2.0, "tritonlstm-lengths fp16": 2.0}
    assert ratios[("fwd", 64, 1024, 768)] == expected
    outs = plot.main([str(p) for p in sorted(tmp_path.glob("*.csv"))] + ["--commit", "old"])
    assert outs == [str(tmp_path / f"bench-{k}.png") for k in ("time-per-step", "speedup", "memory")]
    for png in outs:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- GPU scripts


def _bash(*args, env=None, check=True):
    return subprocess.run(["bash", *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, check=check, timeout=120)  # fmt: skip


@pytest.mark.parametrize("script", [*SCRIPTS, "benchmarks/gpu/common.sh", "benchmarks/gpu_run.sh"])
def test_script_parses(script):
    _bash("-n", script)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_writes_at_most_8_files_and_as_many_as_its_header_says(script):
    header = (ROOT / script).read_text().split("\nsource ")[0]
    claim = int(re.search(r"# Writes (\d+) files under \$OUT", header).group(1))
    assert re.search(r"# Expected duration", header) and "set -euo pipefail" in header, script
    for n, args in enumerate(SCRIPTS[script]):
        files = _bash(script, *args, env={"DRY_RUN": "1"}).stdout.split()
        assert len(files) == len(set(files)) <= 8, (args, files)
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files  # names the device tool returns
        assert len(files) == claim if n == 0 else len(files) <= claim, (args, files, claim)


@pytest.mark.skipif(
    not (ROOT / ".git").exists() or shutil.which("git") is None,
    reason="gpu_run.sh plan reads the commit: needs git and the repository's .git (a device copy may have neither)",
)
def test_plan_prints_short_device_commands_with_the_commit():
    lines = _bash("benchmarks/gpu_run.sh", "plan").stdout.splitlines()
    steps = [line.split("gpu_run.sh ")[1] for line in lines]
    assert steps == ["perf", "tests gpu", "variants"], "the measuring call first: device time is about 15 minutes a task"
    for line in lines:
        assert len(line) < 2000 and re.match(r"export GIT_COMMIT=[0-9a-f]{12}(-dirty)?; bash ", line), line


def test_perf_grid_is_the_cudnn_comparison_grid():
    """B in {16, 64, 256} x H in {256, 768, 1024} at T=1024 in fp16 and bf16: the grid the kernels are judged on."""
    shapes = run.grid_part("perf")
    grid = sorted((b, h) for b in (16, 64, 256) for h in (256, 768, 1024))
    assert sorted((s.batch, s.hidden) for s in shapes) == grid
    assert all(s.seq_len == 1024 and s.input_size == s.hidden and s.dtypes == ("fp16", "bf16") for s in shapes)
    script = (ROOT / "benchmarks/gpu/perf.sh").read_text()
    assert "--grid perf --providers tritonlstm cudnn --dtypes fp16 bf16" in script
    assert "benchmarks.exchange" in script and "benchmarks.plot" in script


def test_exchange_kernels_compile_for_sm90_without_and_with_synchronisation():
    """The latency probe's kernels, built as they launch (fake sm_90 driver): the ping-pong uses the tagged words
    alone (volatile polls, no atomic, acquire/release or fence), the barrier the counter, the flags one release a
    program and acquire polls; none spills."""
    from benchmarks import exchange
    from tritonlstm.kernels.fake_driver import fake_cuda_driver, kernels_compile

    if not kernels_compile():
        pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted, nothing compiles (the plain leg builds them)")
    sync = re.compile(r"\batom\.|\bred\.global|\.(acquire|release)\b|\bfence\.|\bmembar\.")
    words = torch.zeros(2, 16, 64, dtype=torch.int32)
    err, counter = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    with fake_cuda_driver(90) as drv:
        exchange._ping_pong_kernel[(2,)](words, err, 10, 100, ROWS=16, COLS=64, num_warps=4)
        exchange._barrier_kernel[(32,)](counter, err, 10, 100, num_warps=4)
        exchange._flags_kernel[(96,)](torch.zeros(96, dtype=torch.int32), err, 10, 100, GROUPS=8, BLOCK=16,
                                      num_warps=4)  # fmt: skip
    assert [launch.grid for launch in drv.launches] == [(2, 1, 1), (32, 1, 1), (96, 1, 1)]
    asm = {}
    for kernel in (exchange._ping_pong_kernel, exchange._barrier_kernel, exchange._flags_kernel):
        (compiled,) = [k for caches in kernel.device_caches.values() for k in caches[0].values()]
        asm[kernel.__name__] = compiled.asm["ptx"]
    assert "ld.volatile.global" in asm["_ping_pong_kernel"] and not sync.search(asm["_ping_pong_kernel"])
    assert sync.search(asm["_barrier_kernel"])
    # the flags: one release exchange a round, acquire adds of 0 in every group's poll (the tile regime's meeting)
    assert "atom.global.gpu.release.exch" in asm["_flags_kernel"] and "acquire.add" in asm["_flags_kernel"]
    assert all(v.n_spills == 0 for v in drv.variants())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exchange probe's refusal on a machine without a GPU")
def test_exchange_probe_refuses_without_a_gpu():
    from benchmarks import exchange

    with pytest.raises(SystemExit) as e:
        exchange.main([])
    assert "needs a CUDA GPU" in str(e.value)


def test_bench_script_runs_the_smoke_grid_on_cpu_and_writes_exactly_its_files(tmp_path):
    out = tmp_path / "out"
    env = {"OUT": str(out), "SKIP_INSTALL": "1", "PYTHON": sys.executable, "GIT_COMMIT": "abc123"}
    args = ["benchmarks/gpu/bench.sh", "smoke", "1/1", "--providers", "cudnn", "--modes", "fwd"]
    result = _bash(*args, env=env)
    declared = _bash(*args, env={**env, "DRY_RUN": "1"}).stdout.split()
    assert sorted(p.name for p in out.iterdir()) == sorted(declared)
    envfile = (out / "env-bench-smoke.txt").read_text()
    for key in ("git_commit: abc123", "nvidia-smi:", "torch:", "triton:", "numpy:", "device:", "python:"):
        assert key in envfile, key
    _, rows = _read(out)
    assert len(rows) == 2 and all(r["commit"] == "abc123" and float(r["ms"]) > 0 for r in rows)
    assert re.search(r"copy the returned files into benchmarks/results/[a-z0-9-]+/\n", result.stdout)


def test_scripts_fail_loudly_on_a_failed_install(tmp_path):
    fake = tmp_path / "python3"  # the real interpreter, except that `-m pip` fails as a broken install would
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then echo "ERROR: no matching wheel" >&2; exit 1; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    env = {"OUT": str(tmp_path / "out"), "PYTHON": str(fake)}
    result = _bash("benchmarks/gpu/bench.sh", "smoke", env=env, check=False)
    assert result.returncode != 0
    assert "ERROR: no matching wheel" in result.stdout + result.stderr
    assert "FAILED: pip install -e . failed" in result.stderr
    assert not (tmp_path / "out" / "bench-smoke.csv").exists(), "nothing may run after a failed install"


def test_plots_script_writes_its_files_beside_the_csvs(tmp_path):
    pytest.importorskip("matplotlib", reason="benchmarks/plot.py needs matplotlib (pip install -e '.[bench]')")
    _write_csv(tmp_path / "bench-quick.csv", _fake_rows("c1", "2026-01-01T00:00:00"))
    _bash("benchmarks/gpu/plots.sh", str(tmp_path), env={"PYTHON": sys.executable, "OUT": ""})
    declared = _bash("benchmarks/gpu/plots.sh", str(tmp_path), env={"DRY_RUN": "1"}).stdout.split()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(declared + ["bench-quick.csv"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the probe's refusal on a machine without a GPU")
def test_probe_refuses_without_a_gpu_and_lists_its_options(capsys):
    from benchmarks import probe

    with pytest.raises(SystemExit) as e:
        probe.main(["--zoneout", "0.1", "--recurrent-dropout", "0.25"])
    assert "needs a CUDA GPU" in str(e.value)
    with pytest.raises(SystemExit):
        probe.main(["--help"])
    out = capsys.readouterr().out
    options = ("--shapes", "--recurrent-dropout", "--zoneout", "--bidirectional", "--backward-k-split", "--tagged",
               "--csv")  # fmt: skip
    assert all(opt in out for opt in options)


def test_probe_backward_k_split_overrides_only_the_unit_split_backward():
    from benchmarks.probe import with_backward_k_split
    from tritonlstm.kernels import config as C

    config = with_backward_k_split(C.sequence_config, 4)
    cfg = config(16, 256, 0, 1, torch.float16, 132, True)
    assert cfg["regime"] == "split" and (cfg["K_SPLIT"], cfg["num_warps"]) == (4, 8)
    assert C.variant(cfg) == "split-k", "the rule's backward, split 4 ways instead of 8"
    assert C.sequence_config(16, 256, 0, 1, torch.float16, 132, True)["K_SPLIT"] == 8, "the rule is untouched"
    assert config(16, 256, 0, 1, torch.float16, 132) == C.sequence_config(16, 256, 0, 1, torch.float16, 132)
    proj = C.sequence_config(16, 256, 64, 1, torch.float16, 132, True)
    assert config(16, 256, 64, 1, torch.float16, 132, True) == proj, "not with a projection"
    assert "K_SPLIT" not in config(16, 8, 0, 1, torch.float16, 132, True), "slices of 8 gate rows: too small"


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_probe_tagged_is_the_tagged_form_and_the_rule_is_untouched(backward):
    from benchmarks.probe import with_tagged
    from tritonlstm.kernels import config as C

    shape = (16, 256, 0, 1, torch.float16, 132, backward)
    rule = C.sequence_config(*shape)
    assert "TAGGED" not in rule and rule.get("K_SPLIT", 1) == (8 if backward else 1), rule
    config = with_tagged(C.sequence_config)
    assert config(*shape) == C.tagged_form(rule, 0, torch.float16, backward)
    assert config(*shape)["TAGGED"] and C.variant(config(*shape)) == "split-tagged"
    assert C.choose(*shape).config == rule, "the rule is untouched"
    chunked = (16, 1024, 0, 1, torch.float16, 132, True)  # no tagged form: as the rule has it
    assert config(*chunked) == C.sequence_config(*chunked)


def test_variants_dry_run_gives_each_variant_its_config_and_leaves_the_rule(capsys):
    """``python -m benchmarks.variants --dry`` (the README's line): each variant's forward and backward config for a
    132-SM GPU, as the variant says; the rule itself is untouched afterwards."""
    from benchmarks import variants
    from tritonlstm.kernels import config as C

    before = C.sequence_config(16, 256, 0, 1, torch.float16, 132)
    variants.main(["--dry", "--shapes", "16,256", "16,1024"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(variants.NAMES)
    got = {line.split(":")[0]: line for line in lines}
    assert "'TAGGED'" not in got["B=16 H=256 rule"] and "'TAGGED': True" in got["B=16 H=256 tagged"]
    assert got["B=16 H=256 plain"].count("'K_SPLIT'") == 0 and got["B=16 H=256 ksplit"].count("'K_SPLIT'") == 2
    assert "'BLOCK_H': 16" in got["B=16 H=1024 rule-wide"].split("backward")[0]
    assert C.sequence_config is variants._rule() and C.sequence_config(16, 256, 0, 1, torch.float16, 132) == before
    assert variants.applies("tagged", 16, 256, False) and not variants.applies("tagged", 4096, 64, False)
    assert variants.applies("rule", 4096, 64, False), "the rule is timed whatever its regime"
    assert variants.applies("split32", 64, 1024, True) and not variants.applies("split32", 16, 1024, False)
    assert variants.patched("split32")(64, 1024, 0, 1, torch.float16, 132, True) == C.split32_form(
        64, 1024, 0, 1, torch.float16, 132, True)
    # the tile regime's shapes: the graphed per-step kernels it replaced, and its backward with 32 units
    assert variants.applies("graphed", 256, 1024, False) and not variants.applies("graphed", 16, 1024, False)
    assert variants.patched("graphed")(256, 1024, 0, 1, torch.float16, 132)["regime"] == "batch"
    assert variants.applies("tile-wide", 64, 1024, True) and not variants.applies("tile-wide", 64, 1024, False)
    assert variants.patched("tile-wide")(64, 1024, 0, 1, torch.float16, 132, True)["BLOCK_H"] == 32
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            variants.main([])


@pytest.mark.skipif(INTERPRETER, reason="runs in the plain leg: the interpreter would run the kernels at H=1024 (minutes)")
def test_variants_loop_runs_every_row_kind_on_a_cpu(tmp_path, monkeypatch, capsys):
    """The timing loop of ``benchmarks.variants`` on CPU tensors (the plan runs what a CPU has; a fixed time stands
    in for do_bench): cuDNN rows, the rule at every shape, not-applicable rows, the table; the rule restored."""
    from benchmarks import variants
    from tritonlstm.kernels import config as C

    monkeypatch.setattr(variants, "_time", lambda fn: (fn(), 2.56)[1])  # runs the call once, "2.56 ms"
    csv_path = tmp_path / "v.csv"
    variants.main(["--device", "cpu", "--no-ping-pong", "--T", "4", "--shapes", "16,8", "64,1024", "--variants",
                   "rule", "w4", "split32", "--csv", str(csv_path)])  # fmt: skip
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {(r["what"], r["variant"], r["B"], r["H"]): r for r in rows}
    assert len(rows) == 2 * 2 + 2 * 3 * 2  # cuDNN fwd and fwd+bwd per shape, then 3 variants x 2 modes x 2 shapes
    assert float(kinds["fwd", "rule", "16", "8"]["us_per_step"]) == pytest.approx(640.0)  # 2.56 ms over T=4
    assert float(kinds["fwd", "rule", "16", "8"]["err"]) < 1e-2 and kinds["fwd+bwd", "rule", "64", "1024"]["fwd_plan"]
    assert "not applicable" in kinds["fwd", "split32", "16", "8"]["note"]
    assert kinds["fwd", "split32", "64", "1024"]["us_per_step"], "applies at B=64, H=1024 (a CPU runs its plan)"
    assert "not applicable" in kinds["fwd", "w4", "64", "1024"]["note"]
    assert "split32" in capsys.readouterr().out.splitlines()[-1]
    assert C.sequence_config is variants._rule() and hasattr(C.sequence_config, "cache_clear"), "the rule restored"
