"""Learning tests: each online algorithm, with its default settings, started from the tiny kit's pre-trained (SFT)
review policy and trained against a noisy simulated human, must raise the *ground-truth* sentiment (VADER
compound) of fresh samples while its KL to the start policy stays inside the default KL budget's bound.

Nothing here sets a learning rate, β or batch size: the defaults are what is tested. Fixed seeds, generous but real
thresholds; every run stops on an update count, not on wall time. On two idle CPU cores each run below takes well
under the 90 s the algorithms are held to (the times are in docs/reward_hacking.md).
"""

from __future__ import annotations

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.online import KL_BUDGET
from rlhf_gym.policy import Policy
from rlhf_gym.rollout import evaluate

pytestmark = pytest.mark.slow

EVAL_SAMPLES = 128
#: the demo's update count (`rlhf-gym train`)
UPDATES = 120
#: the most KL to the start policy a default run may end with (the budget is 2 nats; fresh samples scatter around it)
KL_CEILING = 5.0


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
          f"KL {after['kl']:.2f}, β {algo.kl_ctl.value:.4f}; {after['samples'][0]['prompt']}|"
          f"{after['samples'][0]['completion']}")
    return before["mean"], after["mean"], after["kl"], algo


@pytest.mark.parametrize("name", ["ppo", "reinforce", "rloo", "grpo", "dpo"])
def test_default_settings_raise_the_ground_truth_inside_the_kl_budget(tiny_kit, name):
    before, after, kl, algo = train(tiny_kit, name, UPDATES)
    assert algo.config.kl_target == KL_BUDGET  # the shared default budget, nothing tuned for this test
    assert after - before >= 0.3, f"{name}: ground truth {before:.3f} → {after:.3f} (KL {kl:.2f})"
    assert kl <= KL_CEILING, f"{name}: KL {kl:.2f} to the start policy, over the {KL_BUDGET}-nat budget's bound"
