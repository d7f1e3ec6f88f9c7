"""Offline DPO's stopping rule: ``epochs`` ends training after that many passes over the pairs, whatever update
count ``learn()`` is given, and a resumed run keeps to it. Quick: a random-init tiny GPT-2 and a few pairs;
learning from noisy pairs is pinned in test_offline_dpo_learning.py."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.errors import ConfigError
from rlhf_gym.policy import Policy


def pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": p, "chosen": " great and fun.", "rejected": " dull and bad."} for p in tiny.review_prompts(n)]


def dpo(model_path, n=10, **config):
    return rlhf_gym.make_algorithm("dpo", policy=model_path, dataset=pairs(n), batch_size=4, learning_rate=1e-3,
                                   **config)


@pytest.mark.parametrize(("epochs", "expected"), [(1, 3), (2, 5), (0.5, 2), (0.01, 1), (3.0, 8)])
def test_epochs_stop_training_after_that_many_passes_over_the_pairs(random_model_path, epochs, expected):
    algo = dpo(random_model_path, epochs=epochs)
    assert algo.epoch_limit == expected == max(1, math.ceil(epochs * 10 / 4))
    steps = []
    algo.learn(100, callback=lambda a, m: steps.append(a.num_updates), progress_bar=False)
    assert algo.num_updates == expected and steps == list(range(1, expected + 1))
    algo.learn(200, progress_bar=False)  # the limit holds across calls
    assert algo.num_updates == expected


def test_a_smaller_update_count_still_stops_first(random_model_path):
    algo = dpo(random_model_path, epochs=2)
    algo.learn(2, progress_bar=False)
    assert algo.num_updates == 2
    algo.learn(4, progress_bar=False)
    assert algo.num_updates == 4
    with pytest.raises(ValueError, match="below the 4 updates already made"):
        algo.learn(3, progress_bar=False)


def test_without_epochs_the_update_count_alone_decides(random_model_path):
    algo = dpo(random_model_path)
    assert algo.epoch_limit is None
    algo.learn(7, progress_bar=False)  # almost three passes over 10 pairs in batches of 4
    assert algo.num_updates == 7


def test_a_resumed_run_keeps_to_its_epochs_and_trains_the_same_weights(random_model_path, tmp_path):
    straight = dpo(random_model_path, epochs=2, seed=1)
    straight.learn(50, progress_bar=False)
    first = dpo(random_model_path, epochs=2, seed=1)
    first.learn(2, progress_bar=False)
    first.save(tmp_path / "ckpt")
    second = type(first).load(tmp_path / "ckpt")
    assert second.config.epochs == 2 and second.num_updates == 2
    second.learn(50, progress_bar=False)
    assert second.num_updates == straight.num_updates == 5
    for p, q in zip(straight.policy.parameters(), second.policy.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, [1]])
def test_epochs_must_be_a_positive_number(random_model_path, bad):
    with pytest.raises(ConfigError, match=r"epochs must be a finite number > 0 of passes over the pairs"):
        dpo(random_model_path, epochs=bad)


def test_epochs_are_refused_for_online_dpo(random_model_path):
    policy = Policy.from_pretrained(random_model_path, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(4),
                   reward=lambda prompts, completions, **kw: [0.0] * len(completions), max_new_tokens=4,
                   max_prompt_tokens=8, vocab_size=policy.vocab_size)
    with pytest.raises(ConfigError, match=r"epochs counts passes over an offline preference dataset"):
        rlhf_gym.make_algorithm("dpo", env=env, policy=policy, epochs=1)


def test_epochs_from_the_command_line_are_a_number(random_model_path):
    algo = rlhf_gym.make_algorithm("dpo", policy=random_model_path, dataset=pairs(10), batch_size=4, epochs="1.5")
    assert algo.config.epochs == 1.5 and algo.epoch_limit == 4
    assert rlhf_gym.make_algorithm("dpo", policy=random_model_path, dataset=pairs(10), epochs="none").epoch_limit is None
