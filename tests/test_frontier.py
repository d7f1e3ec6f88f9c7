"""Tests of the β sweep and the reward–KL frontier: the files it writes, that dropping the KL penalty lets the
policy drift further from its start, the degeneracy measures, and the errors bad input gets.

One short sweep (tiny kit, β ∈ {0, 5}, a high learning rate and a handful of updates, 32 evaluation samples) is
shared by the tests that read its output, so the file stays within a few seconds of training.
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import rlhf_gym  # noqa: F401  (registers the env ids)
from rlhf_gym import tiny
from rlhf_gym.errors import ConfigError, UnknownNameError
from rlhf_gym.frontier import (
    CSV_COLUMNS,
    FrontierPoint,
    configure_parser,
    distinct_n,
    parse_betas,
    read_frontier,
    repetition_rate,
    run,
    sweep_beta,
    write_frontier,
)
from rlhf_gym.policy import Policy

BETAS = (0.0, 5.0)
UPDATES = 8
EVAL_SAMPLES = 32
SHOWN = 3
CONFIG = {"num_prompts": 4, "group_size": 4, "learning_rate": 1e-3}


def make_env(policy: Policy, reward: str = "simulated-human", reward_kwargs: dict | None = None):
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(),
                    reward=reward, reward_kwargs=reward_kwargs, max_new_tokens=16, max_prompt_tokens=16,
                    vocab_size=policy.vocab_size)


@pytest.fixture(scope="module")
def sweep(tiny_kit, tmp_path_factory):
    """(points, output directory, start policy, its weights before the sweep) of one short sweep."""
    out = tmp_path_factory.mktemp("frontier")
    start = Policy.from_pretrained(tiny_kit.path, value_head=False)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    points = sweep_beta(start, lambda p: make_env(p, reward_kwargs={"preset": "noisy"}), betas=BETAS, algo="rloo",
                        updates=UPDATES, config=CONFIG, ground_truth="sentiment", eval_samples=EVAL_SAMPLES, seed=0,
                        out_dir=out, progress=False, num_shown=SHOWN)
    return points, out, start, before


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# -- the sweep's output ---------------------------------------------------------------------------------------------
def test_csv_has_one_row_per_beta_with_every_column(sweep):
    points, out, _, _ = sweep
    with (out / "frontier.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert [float(r["beta"]) for r in rows] == list(BETAS)
    for row, point in zip(rows, points, strict=True):
        assert float(row["kl"]) == pytest.approx(point.kl)
        assert float(row["true_score"]) == pytest.approx(point.true_score)
        assert int(row["num_samples"]) == EVAL_SAMPLES
        assert row["algo"] == "rloo" and int(row["updates"]) == UPDATES
        assert row["sample"] == point.samples[0]["completion"]
    assert [r["beta"] for r in read_frontier(out)] == list(BETAS)


def test_beta_zero_drifts_further_from_the_start_policy_than_a_strong_penalty(sweep):
    points, _, _, _ = sweep
    free, penalised = points
    assert free.beta == 0.0 and penalised.beta == 5.0
    # Five seeds of this setting gave ratios of 5 to 37; twice is a margin the ordering never came near.
    assert free.kl >= 2 * penalised.kl > 0.0, f"KL β=0: {free.kl:.2f}, β=5: {penalised.kl:.2f}"
    assert free.start is not None and free.start.kl == 0.0


def test_proxy_and_ground_truth_are_measured_separately(sweep):
    """The proxy (a noisy simulated human, ratings in [0, 1]) and the truth (VADER compound) are different numbers."""
    points, _, _, _ = sweep
    for point in points:
        assert point.true_score is not None and -1.0 <= point.true_score <= 1.0
        assert 0.0 <= point.proxy_score <= 1.0
        assert point.proxy_score != pytest.approx(point.true_score)
        for sample in point.samples:
            assert sample["true_score"] is not None and sample["proxy_score"] is not None


def test_png_is_a_real_two_panel_figure(sweep):
    _, out, _, _ = sweep
    width, height = png_size(out / "frontier.png")
    assert width >= 1000 and height >= 400
    assert (out / "frontier.png").stat().st_size > 20_000


def test_samples_file_holds_the_same_prompts_for_the_start_policy_and_every_beta(sweep):
    _, out, _, _ = sweep
    rows = [json.loads(line) for line in (out / "frontier_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    by_policy: dict[str, list[dict]] = {}
    for row in rows:
        by_policy.setdefault(row["policy"], []).append(row)
    assert list(by_policy) == ["start", "β=0", "β=5"]
    prompts = [r["prompt"] for r in by_policy["start"]]
    assert len(prompts) == SHOWN
    for policy, samples in by_policy.items():
        assert [r["prompt"] for r in samples] == prompts, policy
        assert all(isinstance(r["completion"], str) for r in samples)
        assert all(set(r) >= {"beta", "kl", "proxy_score", "true_score"} for r in samples)


def test_each_beta_has_its_own_run_directory_logging_the_ground_truth(sweep):
    points, out, _, _ = sweep
    for point in points:
        assert point.run_dir == out / f"beta-{point.beta:g}"
        with (point.run_dir / "metrics.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == UPDATES
        assert "objective/true_scores" in rows[0] and "objective/kl" in rows[0]
        config = json.loads((point.run_dir / "config.json").read_text(encoding="utf-8"))
        assert config["beta"] == point.beta and config["seed"] == 0


def test_start_policy_is_left_untouched(sweep):
    _, _, start, before = sweep
    for name, value in start.state_dict().items():
        assert torch.equal(value, before[name]), name


# -- degeneracy measures ---------------------------------------------------------------------------------------------
def test_degenerate_text_scores_lower_distinct_n_and_higher_repetition_than_fluent_text():
    fluent = ["the acting was great and the plot was clever.", "I thought the music was lovely."]
    degenerate = ["great great wonderful great great wonderful great", "great wonderful great wonderful great"]
    assert distinct_n(degenerate, 2) < 0.5 < distinct_n(fluent, 2)
    assert repetition_rate(degenerate) > 0.5 > repetition_rate(fluent)
    assert distinct_n([], 1) == 0.0 and repetition_rate(["", "  "]) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(fluent, 0)


def test_figure_and_files_without_a_ground_truth_and_with_dollar_signs(tmp_path):
    """Written from points alone (e.g. to redraw a sweep); a missing ground truth leaves the cells empty."""
    def point(beta, kl, text):
        return FrontierPoint(beta=beta, proxy_score=0.5 + kl / 100, proxy_score_std=0.1, true_score=None,
                             true_score_std=None, kl=kl, mean_length=12.0, distinct_1=0.5, distinct_2=0.7,
                             repetition=0.1, num_samples=1,
                             samples=[{"prompt": "The movie", "completion": text, "proxy_score": 0.5,
                                       "true_score": None}])

    paths = write_frontier([point(0.0, 80.0, "costs $5 $$ great great"), point(0.2, 2.0, "was fine.")], tmp_path)
    png_size(paths["png"])
    rows = read_frontier(paths["csv"])
    assert [r["true_score"] for r in rows] == [None, None]
    assert rows[0]["sample"] == "costs $5 $$ great great"


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("betas", "message"),
    [((), "betas is empty"), ((0.0, -0.1), "≥ 0"), ((float("nan"),), "finite"), ((0.05, 0.05), "twice"),
     ("0,0.05", "not the string"), ((0.0, "a lot"), "must be a number")],
)
def test_bad_betas_are_rejected_before_any_work(betas, message, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        sweep_beta("does-not-matter", None, betas=betas, out_dir=out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [({"config": {"beta": 0.1}}, ConfigError, "may not set beta"),
     ({"config": {"learning_rat": 1e-3}}, ConfigError, "learning_rate"),
     ({"updates": 0}, ConfigError, "updates must be"),
     ({"eval_samples": 0}, ConfigError, "eval_samples"),
     ({"algo": "rlooo"}, UnknownNameError, "rloo")],
)
def test_bad_settings_get_one_clear_error_before_any_work(kwargs, error, message, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(error, match=message):
        sweep_beta("does-not-matter", None, betas=(0.0,), out_dir=out, progress=False, **kwargs)
    assert not out.exists()


# -- command line ------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf-gym frontier")
    configure_parser(p)
    return p


def test_every_option_has_help_text():
    for action in parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


def test_betas_option_is_parsed_and_checked():
    assert parse_betas("0, 0.05,0.2") == [0.0, 0.05, 0.2]
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        parse_betas("0,abc")
    with pytest.raises(ConfigError, match="≥ 0"):
        parse_betas("0,-1")
    with pytest.raises(ConfigError, match="empty"):
        parse_betas(" , ")


def test_command_sweeps_a_given_model_and_prints_the_table(random_model_path, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The movie\nThe plot\nThe acting\n", encoding="utf-8")
    out = tmp_path / "cli"
    args = parser().parse_args(["--model", random_model_path, "--prompts", str(prompts), "--betas", "0.1",
                                "--updates", "2", "--eval-samples", "8", "--reward", "length",
                                "--ground-truth", "none", "--set", "num_prompts=2", "--set", "group_size=2",
                                "--out", str(out), "--no-progress"])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "start" in printed and "0.1" in printed and "frontier.csv" in printed
    (row,) = read_frontier(out)
    assert row["beta"] == 0.1 and row["true_score"] is None
    assert (out / "beta-0.1" / "metrics.csv").is_file()


def test_command_with_a_model_needs_prompts(random_model_path, tmp_path):
    args = parser().parse_args(["--model", random_model_path, "--out", str(tmp_path / "x"), "--no-progress"])
    with pytest.raises(ConfigError, match="--prompts"):
        run(args)
