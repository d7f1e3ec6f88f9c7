"""Unscored samples: a batch nobody scored is skipped (no optimizer step, no NaN), partly scored batches train on
their scored samples, and the group baselines leave unscored samples out exactly as TRL's trainers do."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import pytest
import torch

from rlhf_gym import tiny
from rlhf_gym.advantages import group_normalised_advantages, rloo_advantages
from rlhf_gym.errors import ConfigError
from rlhf_gym.losses import rloo_loss
from rlhf_gym.plugins import make_algorithm
from rlhf_gym.policy import Policy
from rlhf_gym.providers import RewardProvider

warnings.filterwarnings("ignore", message=".*requires_grad.*")

ALGOS = ["rloo", "ppo", "grpo", "reinforce", "dpo"]


class PatternedReward(RewardProvider):
    """Scores by completion length; which samples (or whole batches) go unscored follows ``pattern``.

    ``pattern``: ``"none"`` (nothing is ever scored), ``"some"`` (every third sample unscored), ``"alternate"``
    (every other batch entirely unscored, starting with the second).
    """

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.batches = 0

    def _unscored(self, i: int) -> bool:
        if self.pattern == "none":
            return True
        if self.pattern == "some":
            return i % 3 == 1
        return self.batches % 2 == 0  # counted from 1: the 2nd, 4th, ... batches

    def score(self, prompts, completions, **row):
        self.batches += 1
        return [None if self._unscored(i) else len(c) / 10.0 for i, c in enumerate(completions)]

    def compare(self, prompts, completions_a, completions_b, **row):
        self.batches += 1
        return [None if self._unscored(i) else float(len(a) > len(b)) if len(a) != len(b) else 0.5
                for i, (a, b) in enumerate(zip(completions_a, completions_b))]


@pytest.fixture(scope="module")
def policy_path(random_model_path):
    return random_model_path


def _config(name: str) -> dict:
    cfg = {"num_prompts": 6, "seed": 1, "learning_rate": 1e-3, "sample_every": 0}  # 6 samples per batch
    if name in ("rloo", "grpo", "dpo"):
        cfg.update(num_prompts=2, group_size=3)
    if name == "ppo":
        cfg.update(minibatch_size=3, ppo_epochs=1)
    if name == "grpo":
        cfg["beta"] = 0.05
    return cfg


def _run(name: str, pattern: str, policy_path: str, updates: int = 4, max_new_tokens: int = 5):
    policy = Policy.from_pretrained(policy_path, value_head=name == "ppo")
    provider = PatternedReward(pattern)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(8),
                   reward=provider, max_new_tokens=max_new_tokens, max_prompt_tokens=6, vocab_size=policy.vocab_size)
    algo = make_algorithm(name, env=env, policy=policy, **_config(name))
    history: list[tuple[dict, torch.Tensor, int]] = []

    def record(algo, metrics):
        flat = torch.cat([p.detach().reshape(-1) for p in algo.policy.parameters()]).clone()
        steps = sum(int(s["step"]) for s in algo.optimizer.state.values() if "step" in s)
        history.append((dict(metrics), flat, steps))

    start = torch.cat([p.detach().reshape(-1) for p in policy.parameters()]).clone()
    algo.learn(updates, callback=record, progress_bar=False)
    return algo, start, history


@pytest.mark.parametrize("name", ALGOS)
def test_a_batch_with_no_scores_is_skipped_without_a_step(name, policy_path):
    algo, start, history = _run(name, "none", policy_path, updates=2)
    assert algo.num_updates == 2  # skipped batches still count as updates (one collected batch each)
    for metrics, params, steps in history:
        assert metrics["batch/skipped"] == 1.0
        assert metrics["batch/scored_fraction"] == 0.0
        assert steps == 0  # the optimizer never stepped
        assert torch.equal(params, start)  # and no weight moved
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in metrics.values())


@pytest.mark.parametrize("name", ALGOS)
def test_unscored_batches_alternating_with_scored_ones(name, policy_path):
    algo, start, history = _run(name, "alternate", policy_path, updates=4)
    assert algo.num_updates == 4
    skipped = [m["batch/skipped"] for m, _, _ in history]
    if name == "dpo":
        # a scored DPO batch may still have no decided pair (all ties); the unscored ones are always skipped
        assert skipped[1] == skipped[3] == 1.0
    else:
        assert skipped == [0.0, 1.0, 0.0, 1.0]
    for i in (1, 3):  # a skipped update leaves weights and optimizer exactly as they were
        assert torch.equal(history[i][1], history[i - 1][1])
        assert history[i][2] == history[i - 1][2]
    for _, params, _ in history:
        assert torch.isfinite(params).all()
    if name != "dpo":
        assert not torch.equal(history[0][1], start)  # the scored batch did train


@pytest.mark.parametrize("name", ALGOS)
def test_partly_scored_batches_train_on_the_scored_samples(name, policy_path):
    algo, start, history = _run(name, "some", policy_path, updates=2)
    for metrics, params, _ in history:
        assert torch.isfinite(params).all()
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
        if name != "dpo":
            assert metrics["batch/skipped"] == 0.0
            assert metrics["batch/scored_fraction"] == pytest.approx(4 / 6)
    if name != "dpo":
        assert not torch.equal(history[-1][1], start)


@pytest.mark.parametrize("name", ALGOS)
def test_one_token_completions_with_unscored_samples(name, policy_path):
    """The smallest batches there are: one token per completion (often an empty text), a third unscored."""
    algo, _, history = _run(name, "some", policy_path, updates=2, max_new_tokens=1)
    assert algo.num_updates == 2
    for metrics, params, _ in history:
        assert torch.isfinite(params).all()
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))


# -- the baselines, by hand and against TRL's formulas ---------------------------------------------------------------


def test_rloo_baseline_uses_only_the_scored_members_k4_with_3_scored():
    scores = torch.tensor([1.0, 2.0, 4.0, 123.0])  # the last one is unscored: its value must not matter
    valid = torch.tensor([True, True, True, False])
    adv = rloo_advantages(scores, 4, valid)
    # each scored sample minus the mean of the other TWO scored ones
    assert adv.tolist() == pytest.approx([1 - (2 + 4) / 2, 2 - (1 + 4) / 2, 4 - (1 + 2) / 2, 0.0])
    assert adv.tolist() == pytest.approx([-2.0, -0.5, 2.5, 0.0])
    # NaN where unscored is ignored too
    nan_scores = torch.tensor([1.0, 2.0, 4.0, float("nan")])
    assert torch.equal(rloo_advantages(nan_scores, 4, valid), adv)


def test_rloo_group_with_one_scored_sample_gets_zero_advantage():
    scores = torch.tensor([5.0, 0.0, 0.0, 0.0, 1.0, 3.0, 0.0, 0.0])
    valid = torch.tensor([True, False, False, False, True, True, False, False])
    assert rloo_advantages(scores, 4, valid).tolist() == pytest.approx([0.0, 0, 0, 0, -2.0, 2.0, 0, 0])
    assert rloo_advantages(scores, 4, torch.zeros(8, dtype=torch.bool)).tolist() == [0.0] * 8


def test_grpo_mean_and_std_over_the_scored_members_k4_with_3_scored():
    scores = torch.tensor([1.0, 2.0, 4.0, -50.0])
    valid = torch.tensor([True, True, True, False])
    adv = group_normalised_advantages(scores, 4, eps=0.0, valid=valid)
    mean = 7 / 3
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)  # unbiased, over 3
    assert std == pytest.approx(math.sqrt(7 / 3))
    assert adv.tolist() == pytest.approx([(1 - mean) / std, (2 - mean) / std, (4 - mean) / std, 0.0], rel=1e-6)
    dr = group_normalised_advantages(scores, 4, scale=False, valid=valid)
    assert dr.tolist() == pytest.approx([1 - mean, 2 - mean, 4 - mean, 0.0], rel=1e-6)
    lone = group_normalised_advantages(torch.tensor([3.0, 0.0]), 2, valid=torch.tensor([True, False]))
    assert lone.tolist() == [0.0, 0.0]


def _trl_reference(rewards: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's RLOO and GRPO advantages (NaN = unscored), written with its own nanstd."""
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, k)
    count = (~torch.isnan(grouped)).sum(1, keepdim=True)
    rloo = (grouped - (torch.nansum(grouped, 1, keepdim=True) - grouped) / (count - 1)).view(-1)
    mean = torch.nanmean(grouped, 1, keepdim=True)
    std = nanstd(grouped, dim=1, keepdim=True)
    grpo = ((grouped - mean) / (std + 1e-4)).view(-1)
    return torch.nan_to_num(rloo, nan=0.0), torch.nan_to_num(grpo, nan=0.0)


def test_group_baselines_match_trl_on_random_partly_scored_batches():
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 4, 8):
        for _ in range(20):
            scores = torch.randn(5 * k, generator=g, dtype=torch.float64)
            valid = torch.rand(5 * k, generator=g) < 0.7
            rloo_ref, grpo_ref = _trl_reference(torch.where(valid, scores, torch.nan), k)
            assert torch.allclose(rloo_advantages(scores, k, valid), rloo_ref, atol=1e-9)
            assert torch.allclose(group_normalised_advantages(scores, k, valid=valid), grpo_ref, atol=1e-9)


def test_rloo_loss_ignores_unscored_rows():
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    loss, adv = rloo_loss(logp, torch.tensor([1.0, 3.0, 0.0, 9.0]), None, 2, valid=torch.tensor([1, 1, 1, 0]).bool())
    assert adv.tolist() == [-2.0, 2.0, 0.0, 0.0]
    loss.backward()
    assert logp.grad[2:].tolist() == [0.0, 0.0]


def test_empty_batches_give_empty_advantages():
    empty = torch.zeros(0)
    assert rloo_advantages(empty, 4).numel() == 0
    assert group_normalised_advantages(empty, 4, valid=torch.zeros(0, dtype=torch.bool)).numel() == 0


# -- evaluation with a provider that scores little or nothing -----------------------------------------------------


def test_evaluation_with_a_provider_that_never_scores_ends_with_an_error(policy_path):
    from rlhf_gym.errors import RewardError
    from rlhf_gym.rollout import evaluate

    policy = Policy.from_pretrained(policy_path, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(8),
                   reward=PatternedReward("none"), max_new_tokens=3, max_prompt_tokens=6, vocab_size=policy.vocab_size)
    with pytest.raises(RewardError, match="scored none of the 32 samples"):
        evaluate(policy, env, num_samples=8, batch_size=4)
    rare = PatternedReward("alternate")  # every other batch scored: fills up within the allowance
    assert len(evaluate(policy, env, num_samples=8, batch_size=4, reward=rare)["scores"]) == 8
    with pytest.raises(ConfigError, match="num_samples"):
        evaluate(policy, env, num_samples=0)
