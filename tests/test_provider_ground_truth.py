"""Any registered reward provider, a plugin's included, is a ground truth wherever a truth's name is accepted: the
simulated human's `ground_truth`, `get_ground_truth`, weighted mixes and `rlhf-gym train --ground-truth`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rlhf_gym
from rlhf_gym.errors import ConfigError, UnknownNameError
from rlhf_gym.ground_truth import ProviderTruth, get_ground_truth
from rlhf_gym.run_logger import read_metrics

rlhf_keyword = pytest.importorskip("rlhf_keyword", reason="the example plugin (examples/rlhf_keyword_plugin) is "
                                                          "not installed")
RANGE = {"low": 0.0, "high": 1.0}
TEXTS = ["a great and fun film", "a great film", "dull", "fun"]


def keyword_scores(keywords, texts):
    return rlhf_keyword.KeywordCount(keywords).score(["p"] * len(texts), texts)


@pytest.mark.parametrize("spec, kwargs", [
    ("keyword-count", {"keywords": ["great", "fun"], **RANGE}),
    ({"name": "keyword-count", "keywords": ["great", "fun"], **RANGE}, {}),
])
def test_plugin_provider_is_a_ground_truth_by_name_with_its_own_arguments(spec, kwargs):
    truth = get_ground_truth(spec, **kwargs)
    assert isinstance(truth, ProviderTruth) and truth.has_range
    raw, unit = truth.evaluate(["p"] * 4, TEXTS)
    assert raw.tolist() == keyword_scores(["great", "fun"], TEXTS) == [1.0, 0.5, 0.0, 0.5]
    assert unit.tolist() == raw.tolist()  # [0, 1] maps onto itself


def test_simulated_human_judges_by_a_plugin_provider():
    human = rlhf_gym.make_reward("simulated-human", ground_truth="keyword-count", preset="oracle",
                                 ground_truth_kwargs={"keywords": ["great"], **RANGE})
    assert human.compare(["p", "p"], ["a great day", "dull"], ["dull", "a great day"]) == [1.0, 0.0]
    _, info = human.score_with_info(["p", "p"], ["a great day", "dull"])
    assert info["true_score"] == [1.0, 0.0]
    mixed = get_ground_truth([({"name": "keyword-count", "keywords": ["great"], **RANGE}, 1.0), ("sentiment", 0.5)])
    assert mixed.has_range and mixed.values(["p"], ["a great day"])[0] == pytest.approx(1.0 + 0.5 * 0.6249, abs=1e-3)


@pytest.mark.parametrize("make", [
    lambda: rlhf_gym.make_reward("simulated-human", ground_truth="keyword-count"),
    lambda: rlhf_gym.make_reward("simulated-human", ground_truth={"name": "keyword-count", "keywords": ["fun"]}),
    lambda: rlhf_gym.make_reward("simulated-human", ground_truth="keyword-count", ground_truth_kwargs={"low": 0}),
    lambda: get_ground_truth("keyword-count").normalize([0.5], ["x"]),
])
def test_truth_without_a_range_names_the_argument_and_what_the_range_means(make):
    with pytest.raises(ConfigError) as err:
        make()
    assert 'ground_truth_kwargs={"low": …, "high": …}' in str(err.value) and "noise level" in str(err.value)


def test_unknown_truth_suggests_providers_too():
    with pytest.raises(UnknownNameError, match="Did you mean 'keyword-count'"):
        get_ground_truth("keyword-cout")
    with pytest.raises(ConfigError, match="does not take"):
        get_ground_truth("keyword-count", colour="red", **RANGE)


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_gym", "train", "--sft-updates", "0", "--eval-samples", "16",
                           "--num-prompts", "4", "--max-new-tokens", "8", "--no-progress", "--report-to", "csv",
                           *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_trains_against_a_simulated_human_judging_by_a_plugin_and_reports_it_as_ground_truth(tmp_path, tiny_kit):
    human = {"ground_truth": "keyword-count", "ground_truth_kwargs": {"keywords": ["great"], **RANGE}}
    proc = train("--out", str(tmp_path / "run"), "--updates", "2", "--reward-kwargs", json.dumps(human),
                 "--ground-truth", "keyword-count")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "keyword-count (ground truth)" in proc.stdout and "simulated-human (trained reward)" in proc.stdout
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(0.0 <= r["objective/true_scores"] <= 1.0 for r in rows)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for part in ("before", "after"):
        samples = summary[part]["samples"]
        assert [s["score"] for s in samples] == keyword_scores(["great"], [s["completion"] for s in samples])

    proc = train("--out", str(tmp_path / "bad"), "--updates", "1", "--reward-kwargs",
                 json.dumps({"ground_truth": "keyword-count"}))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert 'ground_truth_kwargs={"low": …, "high": …}' in proc.stderr and "noise level" in proc.stderr
