"""KL to the starting policy is always measured: with β = 0 no penalty needs a reference, yet `objective/kl` is the
real (growing) divergence of a drifting policy, never a stand-in 0; `kl_monitor` sets how often, or turns it off."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.errors import ConfigError
from rlhf_gym.policy import Policy


def length_reward(prompts, completions, **kw):
    return [len(c.split()) / 6.0 for c in completions]


def run(random_model_path, updates: int, **config) -> list[dict]:
    policy = Policy.from_pretrained(random_model_path)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(16),
                   reward=length_reward, max_new_tokens=6, max_prompt_tokens=8, vocab_size=policy.vocab_size)
    history: list[dict] = []
    algo = rlhf_gym.make_algorithm(config.pop("algo", "rloo"), env=env, policy=policy, num_prompts=4, seed=1,
                                   **config)
    algo.learn(updates, callback=lambda a, m: history.append(dict(m)), progress_bar=False)
    return history


@pytest.mark.slow
@pytest.mark.parametrize("algo, extra", [("rloo", {"group_size": 2}), ("grpo", {"group_size": 2}),
                                         ("ppo", {"minibatch_size": 4})])
def test_beta_zero_run_that_drifts_logs_real_growing_kl(random_model_path, algo, extra):
    history = run(random_model_path, 12, algo=algo, beta=0.0, learning_rate=1e-2, **extra)
    kl = [m["objective/kl"] for m in history]
    assert all(math.isfinite(k) for k in kl) and len(kl) == 12
    assert abs(kl[0]) < 0.05, "the first batch is sampled from the starting policy itself"
    early, late = sum(kl[:4]) / 4, sum(kl[-4:]) / 4
    assert late > 2.0 and late > 3 * early and late > 3 * max(abs(k) for k in kl[:2]), kl
    assert all(m["objective/beta"] == 0.0 for m in history)


def test_kl_monitor_every_n_and_off(random_model_path):
    every = run(random_model_path, 6, beta=0.0, group_size=2, kl_monitor="every:3", learning_rate=3e-3)
    assert ["objective/kl" in m for m in every] == [True, False, False, True, False, False]
    off = run(random_model_path, 2, beta=0.0, group_size=2, kl_monitor="off")
    assert not any("objective/kl" in m for m in off), "no reference, no KL: never a fake 0"
    for bad in ("every:0", "sometimes", "every:x"):
        with pytest.raises(ConfigError, match="kl_monitor must be"):
            run(random_model_path, 0, beta=0.0, kl_monitor=bad)


def test_monitor_reference_is_for_logs_only(random_model_path):
    """With β = 0 the update is the same with and without the monitor: only the logs differ."""
    watched = run(random_model_path, 3, beta=0.0, group_size=2, learning_rate=3e-3)
    blind = run(random_model_path, 3, beta=0.0, group_size=2, learning_rate=3e-3, kl_monitor="off")
    for a, b in zip(watched, blind, strict=True):
        assert a["objective/scores"] == b["objective/scores"] and a["loss/policy_avg"] == b["loss/policy_avg"]
