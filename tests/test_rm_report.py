"""`train-rm` says what its numbers mean when the objective behind the labels is known: agreement of the model and
of the labels with the ground truth on held-out pairs, and a warning when most training pairs are ties on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf_gym.cli import main as cli_main
from rlhf_gym.ground_truth import get_ground_truth
from rlhf_gym.rm_report import format_report, truth_gaps, truth_report


class FixedModel:
    """A stand-in reward model whose reward is looked up per text."""

    def __init__(self, rewards: dict[str, float]):
        self.rewards = rewards

    def score_texts(self, prompts, completions, batch_size=64):
        return torch.tensor([self.rewards[c] for c in completions]), torch.zeros(len(completions))


def pair(chosen: str, rejected: str, label: float = 1.0) -> dict:
    return {"prompt": "The film was", "chosen": chosen, "rejected": rejected, "label": label}


GOOD, FINE, BAD, NEUTRAL_A, NEUTRAL_B = " wonderful and moving.", " good.", " awful, I hated it.", " a film.", " long."


def test_agreement_counts_only_pairs_the_truth_decides_and_labels_are_judged_too():
    pairs = [pair(GOOD, BAD), pair(GOOD, FINE), pair(FINE, BAD, label=0.0), pair(NEUTRAL_A, NEUTRAL_B),
             pair(BAD, GOOD, label=0.5)]
    gaps = truth_gaps(get_ground_truth("sentiment"), pairs)
    assert (gaps[:3] > 0).all() and gaps[3] == 0 and gaps[4] < 0
    # the model gets pair 2 wrong (FINE above GOOD), the rest right
    model = FixedModel({GOOD: 1.0, FINE: 2.0, BAD: -1.0, NEUTRAL_A: 0.0, NEUTRAL_B: 5.0})
    report = truth_report(model, pairs, pairs, "sentiment")
    assert report["truth_pairs"] == 4
    assert report["truth_agreement"] == pytest.approx(3 / 4)
    # labels: pair 1 and 2 agree, pair 3 says rejected ≻ chosen (wrong), pair 5 is a tie in the data (no agreement)
    assert report["truth_label_agreement"] == pytest.approx(2 / 4)
    assert report["truth_train_ties"] == pytest.approx(1 / 5)
    assert "warning" not in " ".join(format_report(report, "sentiment"))


@pytest.mark.parametrize("n_ties, warned", [(0, False), (2, False), (3, True), (4, True)])
def test_warns_when_most_training_pairs_tie_on_the_truth(n_ties, warned):
    pairs = [pair(NEUTRAL_A, NEUTRAL_B)] * n_ties + [pair(GOOD, BAD)] * (4 - n_ties)
    model = FixedModel({GOOD: 1.0, BAD: 0.0, NEUTRAL_A: 0.0, NEUTRAL_B: 0.0})
    report = truth_report(model, pairs, [pair(GOOD, BAD)], "sentiment")
    assert report["truth_train_ties"] == n_ties / 4
    text = "\n".join(format_report(report, "sentiment"))
    assert ("are ties on the ground truth 'sentiment'" in text) is warned
    if warned:
        assert f"{n_ties / 4:.0%}" in text


def test_no_held_out_pairs_reports_training_figures_and_all_ties_say_so():
    model = FixedModel({NEUTRAL_A: 0.0, NEUTRAL_B: 1.0, GOOD: 1.0, BAD: 0.0})
    report = truth_report(model, [pair(GOOD, BAD)], [], "sentiment")
    assert report["train_truth_agreement"] == 1.0 and "truth_agreement" not in report
    assert "training (no held-out pairs)" in format_report(report, "sentiment")[0]
    tied = truth_report(model, [pair(NEUTRAL_A, NEUTRAL_B)], [pair(NEUTRAL_A, NEUTRAL_B)], "sentiment")
    assert math.isnan(tied["truth_agreement"]) and "every held-out pair is a tie" in format_report(tied, "s")[0]


def test_train_rm_command_reports_agreement_with_a_ground_truth(random_model_path: str, tmp_path: Path, capsys):
    backbone = random_model_path
    rows = [pair(GOOD, BAD), pair(FINE, BAD), pair(GOOD, " dull."), pair(NEUTRAL_A, NEUTRAL_B)] * 3
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["train-rm", "--data", str(data), "--backbone", backbone, "--out", str(tmp_path / "rm"), "--epochs", "1",
            "--eval-data", str(data), "--no-progress", "--batch-size", "4"]
    assert cli_main([*args, "--ground-truth", "sentiment"]) == 0
    printed = capsys.readouterr().out
    assert "agreement with ground truth 'sentiment' on 3 held-out pairs it does not tie" in printed
    assert "the labels themselves 1.000" in printed and "warning" not in printed
    card = json.loads((tmp_path / "rm" / "rm_card.json").read_text())
    assert 0.0 <= card["metrics"]["truth_agreement"] <= 1.0 and card["metrics"]["truth_train_ties"] == 0.25
    assert cli_main([*args, "--ground-truth", "length", "--ground-truth-kwargs", '{"target": 0}']) == 2
    assert "target length must be a positive number" in capsys.readouterr().err
    assert cli_main([*args, "--ground-truth", "sentimnt"]) == 2
    assert "Did you mean 'sentiment'" in capsys.readouterr().err
