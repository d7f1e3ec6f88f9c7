"""Offline DPO learns honestly from noisy simulated preferences: the tiny kit's SFT review policy samples four
completions per prompt, a noisy simulated human (Boltzmann-rational on VADER sentiment) is asked about at most
2,000 pairs, tie-aware (pairs its own scores cannot separate are not asked), and DPO trains on the store with its
defaults plus the recipe docs/reward_models.md gives (conservative DPO, one pass over the pairs). The ground truth
of fresh samples must rise while the policy stays within a KL budget of the start. (Plain DPO trained for longer
drifts further than conservative DPO for the same gain, but by too small a factor at two epochs to pin here;
docs/reward_models.md has the measured figures.)

Fixed seeds, generous but real thresholds; the run stops on an update count (one epoch), not on wall time.
"""

from __future__ import annotations

import time

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.collect import collect_preferences
from rlhf_gym.policy import Policy
from rlhf_gym.preference_store import PreferenceStore
from rlhf_gym.rollout import evaluate

pytestmark = pytest.mark.slow

EVAL_SAMPLES = 128
MAX_PAIRS = 2000
#: the recipe of docs/reward_models.md ("Offline DPO from noisy pairs")
COLLECT = {"num_prompts": 600, "k": 4, "pairs_per_prompt": 4, "tie_margin": 0.1}
TRAIN = {"label_smoothing": 0.25, "epochs": 1}


@pytest.fixture(scope="module")
def demo(tiny_kit, tmp_path_factory):
    """(kit, env, start policy, its ground truth, the store's path, collection stats)."""
    start = Policy.from_pretrained(tiny_kit.path, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=start.tokenizer, prompts=tiny.review_prompts(),
                   reward="simulated-human", reward_kwargs={"preset": "noisy"}, max_new_tokens=24,
                   max_prompt_tokens=16, vocab_size=start.vocab_size)
    human = rlhf_gym.make_reward("simulated-human", ground_truth="sentiment", preset="noisy", seed=0)
    path = str(tmp_path_factory.mktemp("offline_dpo") / "prefs.sqlite")
    t0 = time.perf_counter()
    with PreferenceStore(path) as store:
        stats = collect_preferences(start, env, human, store, seed=0, **COLLECT)
    print(f"\n{stats.asked} pairs asked, {stats.inseparable} inseparable, collected in {time.perf_counter() - t0:.0f} s")
    before = evaluate(start, env, num_samples=EVAL_SAMPLES, reward="sentiment", seed=7)["mean"]
    return tiny_kit, env, start, before, path, stats


def train(demo, updates=10_000, **config):
    """(gain in ground truth, KL to the start, algorithm) after offline DPO on the demo's store."""
    kit, env, start, before, path, _ = demo
    policy = Policy.from_pretrained(kit.path, value_head=False)
    algo = rlhf_gym.make_algorithm("dpo", policy=policy, dataset=path, seed=0, **config)
    t0 = time.perf_counter()
    algo.learn(updates, progress_bar=False)
    seconds = time.perf_counter() - t0
    after = evaluate(policy, env, num_samples=EVAL_SAMPLES, reward="sentiment", seed=7, reference=start)
    gain = after["mean"] - before
    print(f"\noffline DPO {config}: {algo.num_updates} updates in {seconds:.0f} s; ground truth {before:.3f} → "
          f"{after['mean']:.3f} (gain {gain:+.3f}), KL {after['kl']:.2f}")
    return gain, after["kl"], algo


def test_offline_dpo_from_tie_aware_noisy_pairs_gains_within_the_kl_budget(demo):
    stats = demo[-1]
    assert 1500 <= stats.answered <= stats.asked <= MAX_PAIRS
    assert stats.inseparable >= 300  # the noisy annotator could not separate a good share of the sampled pairs
    gain, kl, algo = train(demo, **TRAIN)  # learn(10_000): the epochs rule stops it after one pass
    assert algo.num_updates == -(-stats.answered // algo.config.batch_size)
    assert gain >= 0.3, f"ground truth gain {gain:+.3f} (KL {kl:.2f})"
    assert kl <= 5.0, f"KL {kl:.2f} to the start policy (gain {gain:+.3f})"

