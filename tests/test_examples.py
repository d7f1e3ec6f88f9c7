"""Every script in examples/ runs with its small CI settings and reports what it claims, and the example plugin
package builds into a wheel that declares its entry point.

Each script prints a JSON summary as its last line; the tests check the numbers (a trained policy beats a random
one, and so on), not merely that the script ran. Seeds are fixed and torch runs on one thread, so the numbers are
reproducible on a given machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, timeout: float = 300) -> tuple[dict, str]:
    """Run ``examples/<name>`` in quick mode; return its JSON summary (the last line) and the whole output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_GYM_QUICK": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last), proc.stdout


@pytest.fixture(scope="module", autouse=True)
def built_kit(tiny_kit):
    """Build (or fetch) the tiny kit once, so no example subprocess pays for it."""
    return tiny_kit


@pytest.mark.slow
def test_gym_make_experiment_trained_policy_beats_random_and_pretrained() -> None:
    summary, out = run_example("gym_make_experiment.py")
    # The pre-trained policy writes mixed reviews, so its mean sentiment sits near random tokens' (about 0.1-0.2
    # each): only the RL-trained policy is expected to beat both, by several standard errors, not by noise.
    assert summary["trained"] > max(summary["pretrained"], summary["random"])
    assert summary["trained"] - summary["pretrained"] > 3 * summary["pretrained_stderr"]
    assert summary["updates"] > 0 and summary["kl"] > 0
    assert -1.0 <= summary["textgen_random"] <= 1.0 and -1.0 <= summary["textgen_trained"] <= 1.0
    assert "TextGen-v0" in out and "random agent" in out


@pytest.mark.slow
def test_custom_algorithm_is_registered_by_a_plugin_and_improves_the_reward() -> None:
    summary, out = run_example("custom_algorithm.py")
    assert summary["algorithm"] == "best-of-n" and summary["distribution"] == "<runtime>"
    assert summary["after"] > summary["before"] + 0.15
    # the imitated samples are the best of each group, so they score above the batch mean
    assert summary["best_scores"] >= summary["scores"]
    assert "registered 'best-of-n' (algorithm)" in out


@pytest.mark.slow
def test_full_pipeline_ppo_and_dpo_both_beat_the_base_policy(tmp_path: Path) -> None:
    summary, out = run_example("full_pipeline.py", "--out", str(tmp_path))
    assert summary["pairs"] >= 100
    assert summary["rm_accuracy"] > 0.5
    assert summary["truth_ppo"] > summary["truth_base"] and summary["truth_dpo"] > summary["truth_base"]
    assert summary["win_ppo_vs_base"] > 0.5 and summary["win_dpo_vs_base"] > 0.5
    assert (tmp_path / "preferences.sqlite").is_file()
    assert (tmp_path / "reward_model" / "rm_card.json").is_file()
    assert (tmp_path / "ppo_policy" / "config.json").is_file() and (tmp_path / "dpo_policy" / "config.json").is_file()
    assert "POLICY" in out  # the comparison table


@pytest.mark.slow
def test_multiturn_demo_learns_to_remember_the_opinion_and_the_last_message_control_cannot() -> None:
    """The multi-turn learning test: RLOO with β > 0 on whole conversations raises the true score of 128 fresh
    conversations by ≥ 0.3 over the SFT policy at ≤ 5 nats of KL per conversation, while the same training on the
    last user message alone stays below it."""
    summary, out = run_example("multiturn_demo.py")
    assert summary["episodes"] >= 128
    assert summary["trained"] - summary["sft"] >= 0.3, summary
    assert summary["kl"] <= 5.0, summary
    assert summary["control"] < summary["sft"] + 0.3 and summary["control"] < summary["trained"] - 0.2, summary
    assert "assistant" in out  # sample conversations are shown


def test_keyword_plugin_package_builds_a_wheel_with_its_entry_point(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "rlhf_keyword_plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rlhf_keyword_plugin-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "rlhf_keyword.py" in names
    assert "[rlhf_gym]" in entry_points and "keyword-count = rlhf_keyword" in entry_points


def test_every_example_script_is_covered_by_a_test() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    tested = {"gym_make_experiment.py", "custom_algorithm.py", "full_pipeline.py", "multiturn_demo.py"}
    assert scripts == tested, f"add a test for {sorted(scripts - tested)}"
