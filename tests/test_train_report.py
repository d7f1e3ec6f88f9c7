"""What `rlhf-gym train` prints is true: the start policy is called "SFT" only when SFT ran, the trained reward
stands beside the ground truth, "Built the tiny kit" appears only when it was built, `--no-progress` silences
transformers' bars too, and offline DPO evaluates on the prompts of its own preference file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rlhf_gym import tiny
from rlhf_gym.cli import main
from rlhf_gym.train import RunOptions, prepare_policy, print_report


@pytest.fixture
def progress_bars_restored():
    yield
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()


def result(mean: float, trained: float | None = None) -> dict:
    out = {"mean": mean, "mean_length": 7.0, "kl": 1.5,
           "samples": [{"prompt": "The film", "completion": " was fine.", "score": mean}] * 4}
    if trained is not None:
        out["trained_reward"] = trained
    return out


@pytest.mark.parametrize("opts, label", [
    (RunOptions(sft_updates=30), "before (SFT)"),
    (RunOptions(sft_updates=0), "before (tiny kit, no SFT)"),
    (RunOptions(model="some/model", sft_updates=30), "before (start)"),
])
def test_start_policy_is_called_sft_only_when_sft_ran(opts, label, capsys):
    print_report(result(0.1, 0.5), [("after ppo", {"after": result(0.6, 0.9), "kl": 1.5, "run_dir": "r"})], opts)
    out = capsys.readouterr().out
    assert label in out and ("(SFT)" in out) == (label == "before (SFT)")
    assert "sentiment (ground truth)" in out and "simulated-human (trained reward)" in out
    assert "0.900" in out and "0.600" in out and "(k1, nats/seq)" in out


def test_negative_kl_is_explained_with_its_estimator(capsys):
    print_report(result(0.1), [("after ppo", {"after": result(0.2), "kl": -0.03, "run_dir": "r"})],
                 RunOptions(ground_truth=None))
    out = capsys.readouterr().out
    assert "-0.03" in out and "k1 estimate" in out and "trained reward" not in out


@pytest.mark.parametrize("built", [True, False])
def test_tiny_kit_message_only_when_it_is_built(built, monkeypatch, tmp_path, tiny_kit, capsys):
    monkeypatch.setattr(tiny, "build_tiny_kit", lambda **kw: SimpleNamespace(path=tiny_kit.path, built=built))
    prepare_policy(RunOptions(sft_updates=0), tmp_path, progress=False)
    assert ("Built the tiny kit" in capsys.readouterr().out) is built


def test_offline_dpo_reads_prompts_from_its_preference_file(random_model_path, tmp_path, capsys,
                                                            progress_bars_restored):
    pairs = [{"prompt": f"Review {i}: the film", "chosen": " was great.", "rejected": " was bad."} for i in range(6)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "run"
    code = main(["train", "--algo", "dpo", "--model", random_model_path, "--dataset", str(data), "--updates", "2",
                 "--batch-size", "4", "--eval-samples", "8", "--max-new-tokens", "6", "--out", str(out),
                 "--report-to", "none", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    prompts = {p["prompt"] for p in pairs}
    assert {s["prompt"] for s in summary["before"]["samples"] + summary["after"]["samples"]} <= prompts
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert summary["start"] == "start" and summary["kl_estimator"] == "k1"
