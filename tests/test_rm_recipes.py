"""The reward-model recipes docs/reward_models.md recommends, measured: the defaults against `dropout=0.1,
pooling="mean"` on a task nobody tuned them for (closeness to a target length), labels from a noisy simulated
human, agreement with the ground truth on held-out pairs of other reviews. The figures in the docs are these."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

import rlhf_gym
from rlhf_gym.ground_truth import get_ground_truth
from rlhf_gym.reward_model import train_reward_model
from rlhf_gym.tiny import review_corpus

pytestmark = pytest.mark.slow
LENGTH = {"name": "length", "target": 8}


def corpus_pairs(n_rows: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, completion 1, completion 2): two different reviews sharing an opener."""
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for row in review_corpus(n_rows, seed=seed):
        by_prompt[row["prompt"]].append(row["completion"])
    return [(p, cs[i], cs[i + 1]) for p, cs in by_prompt.items() for i in range(0, len(cs) - 1, 2)
            if cs[i] != cs[i + 1]]


def labelled(pairs: list[tuple[str, str, str]], truth) -> list[dict]:
    human = rlhf_gym.make_reward("simulated-human", ground_truth=truth, preset="noisy", seed=0)
    labels = human.compare([p for p, _, _ in pairs], [a for _, a, _ in pairs], [b for _, _, b in pairs])
    return [{"prompt": p, "chosen": a if label >= 0.5 else b, "rejected": b if label >= 0.5 else a,
             "label": max(label, 1 - label)} for (p, a, b), label in zip(pairs, labels) if label is not None]


def agreement(model, pairs: list[tuple[str, str, str]], truth) -> float:
    truth = get_ground_truth(truth)
    true_a = truth.values([], [a for _, a, _ in pairs])
    true_b = truth.values([], [b for _, _, b in pairs])
    prompts = [p for p, _, _ in pairs]
    r_a, _ = model.score_texts(prompts, [a for _, a, _ in pairs])
    r_b, _ = model.score_texts(prompts, [b for _, _, b in pairs])
    decided = true_a != true_b
    return float((np.sign(r_a.numpy() - r_b.numpy()) == np.sign(true_a - true_b))[decided].mean())


@pytest.fixture(scope="module")
def length_task():
    return labelled(corpus_pairs(6000, seed=101)[:400], LENGTH), corpus_pairs(1200, seed=202)


@pytest.mark.parametrize("name, config, floor", [
    ("defaults", {}, 0.82),                                  # measured 84.8%
    ("dropout 0.1, mean pooling", {"dropout": 0.1, "pooling": "mean"}, 0.85),  # measured 87.6%
])
def test_recipe_agreement_with_a_length_ground_truth(name, config, floor, length_task, tiny_kit):
    train, heldout = length_task
    model, _ = train_reward_model(train, {"backbone": tiny_kit.path, **config}, progress=False)
    assert agreement(model, heldout, LENGTH) >= floor, name
