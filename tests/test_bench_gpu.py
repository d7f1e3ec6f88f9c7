"""bench/bench_gpu.py gets one run on a GPU machine, so its CPU miniature (``--device cpu --quick``) is run here:
every section measures, the JSON and the marked RESULTS.md section are written (replaced, not repeated, on a
second run), and without CUDA the full run says it skipped and succeeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_measures_every_section_and_writes_its_section(bench_gpu, tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\nother rows stay\n")
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--quick", "--json", str(out), "--results", str(results)]
    assert bench_gpu.main(argv) == 0
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"rollout bf16", "rollout fp32", "PPO step bf16", "PPO step fp32"}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["rollout bf16"]["tokens_per_s"] > 0 and rows["PPO step bf16"]["step_s_median"] > 0
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\nother rows stay\n")
    assert text.count(bench_gpu.START_MARK) == 1 and "| PPO step bf16 | bfloat16 |" in text
    assert "Quick CPU miniature" in capsys.readouterr().out
    # A second write replaces the section instead of adding another.
    bench_gpu.write_section(results, "new rows\n")
    text = results.read_text()
    assert text.count(bench_gpu.START_MARK) == 1 and "new rows" in text and "PPO step bf16" not in text
    assert "other rows stay" in text


def test_a_failing_section_is_reported_and_the_others_still_run(bench_gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu.Bench, "ppo_step", lambda self, dtype: 1 / 0)
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--device", "cpu", "--quick", "--json", str(out), "--results", "none"]) == 1
    rows = {r["name"]: r["status"] for r in json.loads(out.read_text())["rows"]}
    assert rows["PPO step bf16"].startswith("error: ZeroDivisionError") and rows["rollout fp32"] == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_the_full_run_skips_and_succeeds(bench_gpu, capsys, tmp_path):
    assert bench_gpu.main(["--results", str(tmp_path / "untouched.md")]) == 0
    assert capsys.readouterr().out.startswith("skipped: no CUDA")
    assert not (tmp_path / "untouched.md").exists()
