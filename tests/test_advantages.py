"""Masked statistics, GAE, group baselines, EOS penalty and reward normalisation in rlhf_gym.advantages."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import rlhf_gym.advantages as adv_mod
from rlhf_gym.advantages import (
    MovingAverageBaseline,
    RunningMoments,
    apply_missing_eos_penalty,
    clip_rewards,
    contains_eos,
    gae,
    group_normalised_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    normalise_rewards,
    rloo_advantages,
)
from rlhf_gym.errors import ConfigError


def _right_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def test_docstring_examples_hold():
    result = doctest.testmod(adv_mod, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


# --- masked statistics -------------------------------------------------------------------------------------------


def test_masked_mean_ignores_padding_even_when_it_holds_nan():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("-inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4) / 3)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_mean_of_row_without_tokens_is_zero_along_dim_but_error_overall():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 0.0]
    with pytest.raises(ValueError, match="selects no entries"):
        masked_mean(x, torch.zeros_like(mask))


def test_masked_mean_rejects_a_mask_of_another_shape():
    with pytest.raises(ValueError, match=r"x\[2, 3\], mask\[2, 2\]"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 2))


def test_masked_var_equals_variance_of_selected_entries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g)
    mask = _right_padded_mask([7, 3, 1, 5], 7)
    selected = x[mask.bool()]
    assert masked_var(x, mask).item() == pytest.approx(selected.var(unbiased=True).item(), rel=1e-5)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(
        selected.var(unbiased=False).item(), rel=1e-5
    )


def test_unbiased_variance_of_a_single_entry_is_an_error_that_says_what_to_do():
    with pytest.raises(ValueError, match="unbiased=False"):
        masked_var(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]))


def test_whitening_gives_zero_mean_unit_variance_over_masked_entries_only():
    g = torch.Generator().manual_seed(1)
    x = 5.0 + 3.0 * torch.randn(3, 6, generator=g)
    x[0, 4:] = 1e6  # padding far off must not leak into the statistics
    mask = _right_padded_mask([4, 6, 2], 6)
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-5)
    assert (w[~mask.bool()] == 0).all()


def test_whitening_without_mean_shift_only_rescales():
    x = torch.tensor([1.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 0])
    w = masked_whiten(x, mask, shift_mean=False)
    # std of [1, 3] is sqrt(2): (x - 2) / sqrt(2) + 2
    assert w[:2].tolist() == pytest.approx([2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2)], rel=1e-5)


# --- GAE ---------------------------------------------------------------------------------------------------------


def _gae_reference(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Textbook GAE for one unpadded episode whose last step is terminal."""
    n = len(rewards)
    advantages = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_a_plain_reference_loop_with_right_padding(gamma, lam):
    g = torch.Generator().manual_seed(2)
    B, T = 5, 9
    lengths = [9, 1, 4, 7, 2]
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    mask = _right_padded_mask(lengths, T)
    # garbage in the padding must not matter
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e3))
    values = torch.where(mask.bool(), values, torch.full_like(values, float("nan")))

    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)

    for b, n in enumerate(lengths):
        expected = _gae_reference(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        assert advantages[b, :n].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert returns[b, :n].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[b, :n].tolist(), strict=True)], rel=1e-5, abs=1e-5
        )
        assert (advantages[b, n:] == 0).all() and (returns[b, n:] == 0).all()


def test_gae_with_gamma_and_lambda_one_gives_reward_to_go_as_returns():
    rewards = torch.tensor([[0.0, -0.1, 2.0, 0.0]])
    values = torch.tensor([[0.3, 0.7, -0.2, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist()[0] == pytest.approx([1.9, 1.9, 2.0, 0.0])


def test_gae_rejects_gamma_outside_unit_interval():
    with pytest.raises(ConfigError, match="gamma"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), None, gamma=1.5)


# --- group baselines ---------------------------------------------------------------------------------------------


def test_rloo_baseline_equals_mean_of_the_other_completions_in_the_group():
    g = torch.Generator().manual_seed(3)
    k = 4
    scores = torch.randn(3 * k, generator=g)
    advantages = rloo_advantages(scores, group_size=k)
    for i in range(scores.numel()):
        start = (i // k) * k
        others = [scores[j].item() for j in range(start, start + k) if j != i]
        assert advantages[i].item() == pytest.approx(scores[i].item() - sum(others) / (k - 1), abs=1e-6)
    assert advantages.view(-1, k).sum(dim=1).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_rloo_rejects_scores_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        rloo_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ConfigError, match="group_size"):
        rloo_advantages(torch.zeros(6), group_size=1)


def test_missing_scores_are_an_error_not_a_zero_advantage():
    with pytest.raises(ValueError, match="no score"):
        rloo_advantages(torch.tensor([1.0, float("nan")]), group_size=2)


def test_group_normalised_advantages_use_the_group_mean_and_std():
    scores = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    adv = group_normalised_advantages(scores, group_size=3, eps=0.0)
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)
    assert adv.tolist()[:3] == pytest.approx([-2 / std, -1 / std, 3 / std], rel=1e-5)
    assert adv.tolist()[3:] == [0.0, 0.0, 0.0]  # equal scores carry no signal
    assert group_normalised_advantages(scores, 3, scale=False).tolist()[:3] == pytest.approx(
        [-2.0, -1.0, 3.0]
    )


def test_moving_average_baseline_uses_the_history_before_each_batch():
    baseline = MovingAverageBaseline(decay=0.9)
    first = baseline(torch.tensor([2.0, 4.0]))
    assert first.tolist() == [-1.0, 1.0]  # first batch: its own mean
    assert baseline.value == pytest.approx(3.0)
    second = baseline(torch.tensor([13.0]))
    assert second.tolist() == pytest.approx([10.0])
    assert baseline.value == pytest.approx(0.9 * 3.0 + 0.1 * 13.0)

    restored = MovingAverageBaseline()
    restored.load_state_dict(baseline.state_dict())
    assert restored(torch.tensor([0.0])).tolist() == pytest.approx([-baseline.value])


# --- EOS penalty, normalisation, clipping ------------------------------------------------------------------------


def test_contains_eos_does_not_count_padding_that_reuses_the_eos_id():
    eos = 0
    ids = torch.tensor([[5, 6, 0, 0], [5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert contains_eos(ids, eos, mask).tolist() == [True, False, False]
    assert contains_eos(ids, eos).tolist() == [True, True, False]  # without the mask padding looks like EOS


def test_missing_eos_penalty_subtracts_only_from_truncated_completions():
    scores = torch.tensor([1.0, 1.0, -2.0])
    out = apply_missing_eos_penalty(scores, torch.tensor([True, False, False]), penalty=1.5)
    assert out.tolist() == [1.0, -0.5, -3.5]
    assert scores.tolist() == [1.0, 1.0, -2.0]  # input untouched
    assert apply_missing_eos_penalty(scores, [False, False, False], None).tolist() == scores.tolist()
    with pytest.raises(ConfigError, match=">= 0"):
        apply_missing_eos_penalty(scores, [True, True, True], penalty=-1.0)


def test_running_moments_match_numpy_over_chunks():
    rng = np.random.default_rng(4)
    data = rng.normal(3.0, 2.0, size=103)
    moments = RunningMoments()
    start = 0
    for size in [1, 7, 30, 1, 64]:
        moments.update(torch.tensor(data[start : start + size], dtype=torch.float32))
        start += size
        seen = data[:start].astype(np.float32).astype(np.float64)
        assert moments.count == start
        assert moments.mean == pytest.approx(seen.mean(), rel=1e-9)
        assert moments.var == pytest.approx(seen.var(), rel=1e-9)
        assert moments.std == pytest.approx(seen.std(), rel=1e-9)

    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.count, restored.mean, restored.var) == (moments.count, moments.mean, moments.var)


def test_normalise_rewards_uses_running_statistics_and_clips():
    moments = RunningMoments()
    first = normalise_rewards(torch.tensor([0.0, 4.0]), moments)  # mean 2, std 2
    assert first.tolist() == pytest.approx([-1.0, 1.0])
    second = normalise_rewards(torch.tensor([8.0, 2.0]), moments, clip=1.0)
    # all scores seen: [0, 4, 8, 2] -> mean 3.5, population std sqrt(35 / 4); 4.5 / 2.958 = 1.52 clips to 1
    std = math.sqrt(35 / 4)
    assert moments.mean == pytest.approx(3.5)
    assert second.tolist() == pytest.approx([1.0, -1.5 / std])
    scaled = normalise_rewards(torch.tensor([7.0]), moments, shift_mean=False, update=False)
    assert scaled.tolist() == pytest.approx([7.0 / std])
    assert moments.count == 4


def test_clip_rewards_clamps_symmetrically_and_none_means_no_clipping():
    x = torch.tensor([-3.0, 0.2, 3.0])
    assert clip_rewards(x, 1.0).tolist() == pytest.approx([-1.0, 0.2, 1.0])
    assert clip_rewards(x, None) is x
    with pytest.raises(ConfigError, match="> 0"):
        clip_rewards(x, 0.0)
