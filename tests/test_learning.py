"""Learning tests: each algorithm, started from the tiny kit's pre-trained (SFT) review policy, must raise the
*ground-truth* sentiment (VADER compound) of fresh samples while trained against a simulated human; and the KL
penalty must keep the policy near its start while β = 0 drifts several times further.

Fixed seeds, generous but real thresholds; every run stops on an update count, not on wall time. On two free CPU
cores each run below takes well under the 90 s the algorithms are held to.
"""

from __future__ import annotations

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.policy import Policy
from rlhf_gym.rollout import evaluate

pytestmark = pytest.mark.slow

EVAL_SAMPLES = 128


def make_env(policy, reward_kwargs=None):
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(),
                    reward="simulated-human", reward_kwargs=reward_kwargs or {"preset": "noisy"},
                    max_new_tokens=24, max_prompt_tokens=16, vocab_size=policy.vocab_size)


def train(kit, name, updates, **config):
    """(ground truth before, after, KL of fresh samples to the start policy, algorithm)."""
    start = Policy.from_pretrained(kit.path, value_head=False)
    policy = Policy.from_pretrained(kit.path)
    env = make_env(policy)
    before = evaluate(start, env, num_samples=EVAL_SAMPLES, reward="sentiment", seed=7)
    algo = rlhf_gym.make_algorithm(name, env=env, policy=policy, seed=0, **config)
    algo.learn(updates, progress_bar=False)
    after = evaluate(policy, env, num_samples=EVAL_SAMPLES, reward="sentiment", seed=7, reference=start)
    print(f"\n{name} {config}: ground truth {before['mean']:.3f} → {after['mean']:.3f} after {updates} updates, "
          f"KL {after['kl']:.2f}; {after['samples'][0]['prompt']}|{after['samples'][0]['completion']}")
    return before["mean"], after["mean"], after["kl"], algo


PPO = {"num_prompts": 16, "learning_rate": 1e-4, "beta": 0.05}
RLOO = {"num_prompts": 16, "group_size": 4, "learning_rate": 2e-4, "beta": 0.05}
DPO = {"num_prompts": 16, "group_size": 2, "learning_rate": 1.5e-4, "beta": 0.1}
GRPO = {"num_prompts": 8, "group_size": 4, "learning_rate": 2e-4, "beta": 0.05}


@pytest.mark.parametrize(
    ("name", "updates", "config"), [("ppo", 40, PPO), ("rloo", 40, RLOO), ("dpo", 40, DPO), ("grpo", 40, GRPO)],
)
def test_algorithm_raises_the_ground_truth_score_of_fresh_samples(tiny_kit, name, updates, config):
    before, after, kl, _ = train(tiny_kit, name, updates, **config)
    assert after - before >= 0.3, f"{name}: ground truth {before:.3f} → {after:.3f} (KL {kl:.2f})"


def test_kl_penalty_keeps_the_policy_close_while_beta_zero_drifts_further(tiny_kit):
    config = {**RLOO, "learning_rate": 3e-4}
    _, penalised, kl_penalised, _ = train(tiny_kit, "rloo", 40, **config)
    _, free, kl_free, free_algo = train(tiny_kit, "rloo", 40, **{**config, "beta": 0.0})
    assert free_algo.reference is None  # β = 0: no reference model was built at all
    assert kl_free >= 3 * kl_penalised, f"KL β=0.05: {kl_penalised:.2f}, β=0: {kl_free:.2f}"
    assert free >= penalised - 0.05  # the unpenalised policy optimises the proxy at least as hard
