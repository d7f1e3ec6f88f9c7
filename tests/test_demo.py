"""The README's main job (`make demo` = set-up + `rlhf-gym train`), run with a reduced budget: the run directory has
every file it promises and the ground-truth score of fresh samples rises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_gym.run_logger import read_metrics

pytestmark = pytest.mark.slow


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlhf_gym", "train", "--out", str(out), "--sft-updates", "5",
           "--eval-samples", "64", "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_demo_trains_with_rlhf_and_writes_the_run_directory(tmp_path, tiny_kit):
    out = tmp_path / "demo"
    proc = run_demo(out, "--updates", "20")
    for name in ("config.json", "metrics.csv", "reward_curve.png", "samples.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last" / "trainer_state.json").is_file()
    assert (out / "policy" / "model.safetensors").is_file() and (out / "sft" / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["algorithm"] == "ppo" and config["run"]["reward"] == "simulated-human"
    rows = read_metrics(out)
    assert len(rows) == 20 and "objective/true_scores" in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["mean"] > summary["before"]["mean"] + 0.1, summary
    assert 0 < summary["kl"] < 10
    assert "before (SFT)" in proc.stdout and str(out) in proc.stdout


def test_demo_without_kl_penalty_runs_both_betas_side_by_side(tmp_path, tiny_kit):
    out = tmp_path / "demo-beta0"
    proc = run_demo(out, "--updates", "6", "--beta", "0")
    penalised = json.loads((out / "kl-budget" / "summary.json").read_text())
    free = json.loads((out / "beta-0" / "summary.json").read_text())
    assert penalised["kl"] >= 0 and free["kl"] >= 0
    assert json.loads((out / "beta-0" / "config.json").read_text())["beta"] == 0.0
    budget = json.loads((out / "kl-budget" / "config.json").read_text())
    assert budget["kl_target"] == 2.0 and budget["beta"] > 0  # the side with the penalty runs on the defaults
    assert "β=0 (no KL penalty)" in proc.stdout and "KL budget 2 nats" in proc.stdout
