"""``rlhf-gym eval`` and its Python API: scoring saved policies, win rates judged by ``compare``, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf_gym.cli import main as cli_main
from rlhf_gym.errors import ConfigError
from rlhf_gym.evaluate import compare_policies, evaluate_policies, format_table, resolve_policy_path, win_rate
from rlhf_gym.policy import Policy


def length_in_chars(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def silent_policy_path(random_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A policy that ends every completion at once: its final layer norm outputs the EOS embedding everywhere."""
    policy = Policy.from_pretrained(random_model_path, value_head=False)
    model = policy.model
    eos = policy.eos_token_id
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        row = model.lm_head.weight[eos]
        model.transformer.ln_f.bias.copy_(row * (100.0 / row.dot(row)))  # EOS logit 100, the others near 0
    path = tmp_path_factory.mktemp("silent") / "policy"
    policy.save_pretrained(path)
    return str(path)


def test_win_rate_counts_ties_half_and_ignores_skips() -> None:
    class Judge:
        def compare(self, prompts, a, b, **row):
            return [1.0, 0.0, 0.5, None, 1.0]

    from rlhf_gym.providers import RewardProvider

    judge = type("FixedJudge", (RewardProvider,), {"compare": Judge.compare})()
    result = win_rate(["p"] * 5, ["a"] * 5, ["b"] * 5, judge)
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    assert (result["wins"], result["losses"], result["ties"], result["skipped"], result["pairs"]) == (2, 1, 1, 1, 5)


def test_win_rate_of_score_based_judge_prefers_the_higher_scored_side() -> None:
    result = win_rate(["p", "p"], ["a long answer", "a longer answer"], ["x", "y"], length_in_chars)
    assert result["wins"] == 2 and result["win_rate"] > 0.99


def test_win_rate_rejects_misaligned_inputs() -> None:
    with pytest.raises(ConfigError, match="one completion of each policy per prompt"):
        win_rate(["p", "q"], ["a"], ["b", "c"], length_in_chars)


def test_every_policy_sees_the_same_prompts_so_equal_policies_score_equal(random_model_path: str) -> None:
    results = evaluate_policies({"first": random_model_path, "second": random_model_path}, reward=length_in_chars,
                                num_samples=12, max_new_tokens=6, batch_size=6, seed=3)
    first, second = results
    assert [r["policy"] for r in results] == ["first", "second"]
    assert first["num_samples"] == second["num_samples"] == 12
    assert [s["prompt"] for s in first["samples"]] == [s["prompt"] for s in second["samples"]]
    assert first["mean"] == second["mean"]
    assert first["stderr"] == pytest.approx(first["std"] / math.sqrt(12))


def test_a_policy_that_stops_at_once_scores_below_one_that_talks(random_model_path: str,
                                                                silent_policy_path: str) -> None:
    talk, silent = evaluate_policies([random_model_path, silent_policy_path], reward=length_in_chars,
                                     num_samples=8, max_new_tokens=8, seed=0)
    assert silent["mean"] == 0.0 and silent["mean_length"] <= 1.0
    assert talk["mean"] > 5.0
    table = format_table([talk, silent], "length")
    assert random_model_path in table and silent_policy_path in table


def test_compare_policies_judges_completions_of_the_same_prompts(random_model_path: str,
                                                                  silent_policy_path: str) -> None:
    result = compare_policies(random_model_path, silent_policy_path, length_in_chars, num_samples=8,
                              max_new_tokens=8)
    assert result["pairs"] == 8 and result["wins"] == 8 and result["win_rate"] > 0.99
    assert all(ex["b"] == "" and ex["a"] for ex in result["examples"])
    against_itself = compare_policies(random_model_path, random_model_path, length_in_chars, num_samples=8,
                                      max_new_tokens=8)
    assert against_itself["ties"] == 8 and against_itself["win_rate"] == 0.5


def test_eval_command_prints_a_json_summary_with_the_win_rate(random_model_path: str, silent_policy_path: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["eval", "--policy", random_model_path, "--policy", silent_policy_path, "--reward", "length",
                     "--judge", "length", "--samples", "8", "--max-new-tokens", "8", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    talk, silent = summary["policies"]
    assert talk["policy"] == random_model_path and talk["num_samples"] == 8
    assert talk["mean"] > silent["mean"]  # closer to the 20-word target than an empty completion
    comparison = summary["comparison"]
    assert comparison["a"] == random_model_path and comparison["judge"] == "length"
    assert comparison["win_rate"] > 0.5 and comparison["pairs"] == 8


def test_eval_command_prints_a_table_and_reads_a_prompt_file(random_model_path: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The film was\nThe plot felt\n")
    code = cli_main(["eval", "--policy", random_model_path, "--prompts", str(prompts), "--reward", "length",
                     "--reward-kwargs", '{"target": 5}', "--samples", "4", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].startswith("POLICY") and random_model_path in out
    sample_lines = [line for line in out.splitlines() if line.startswith("  [")]
    assert sample_lines and all("The film was|" in line or "The plot felt|" in line for line in sample_lines)


def test_a_run_directory_resolves_to_its_policy(random_model_path: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    Policy.from_pretrained(random_model_path, value_head=False).save_pretrained(run_dir / "policy")
    assert resolve_policy_path(str(run_dir)) == str(run_dir / "policy")
    with pytest.raises(ConfigError, match="holds no saved policy"):
        resolve_policy_path(str(tmp_path))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval"], "at least one --policy"),
        (["eval", "--policy", "no/such/dir"], "does not exist"),
        (["eval", "--policy", "A", "--judge", "length"], "exactly two policies"),
        (["eval", "--policy", "A", "--reward-kwargs", "[1]"], "must be a JSON object"),
    ],
)
def test_bad_eval_arguments_give_one_clear_error(argv: list[str], message: str, random_model_path: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = [random_model_path if a == "A" else a for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:")
