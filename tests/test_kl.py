"""KL estimators against their definitions, KL controllers, and KL-penalised per-token rewards."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import rlhf_gym.kl as kl_mod
from rlhf_gym.errors import ConfigError
from rlhf_gym.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalised_rewards,
    make_kl_controller,
    sequence_kl,
)


def test_docstring_examples_hold():
    result = doctest.testmod(kl_mod, extraglobs={"torch": torch, "math": math})
    assert result.attempted > 0 and result.failed == 0


# --- estimators --------------------------------------------------------------------------------------------------

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)  # policy
Q = torch.tensor([0.1, 0.3, 0.2, 0.2, 0.2], dtype=torch.float64)  # reference
TRUE_KL = float((P * (P / Q).log()).sum())  # KL(P || Q) ≈ 0.542 nats


def test_estimators_match_their_definitions_token_by_token():
    p_tok = torch.tensor([0.5, 0.2, 0.05], dtype=torch.float64)
    q_tok = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    logp, ref = p_tok.log(), q_tok.log()
    ratios = (q_tok / p_tok).tolist()  # r = q / p
    assert kl_k1(logp, ref).tolist() == pytest.approx([-math.log(r) for r in ratios])
    assert kl_k2(logp, ref).tolist() == pytest.approx([0.5 * math.log(r) ** 2 for r in ratios])
    assert kl_k3(logp, ref).tolist() == pytest.approx([(r - 1) - math.log(r) for r in ratios])


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_average_to_the_true_kl_over_sampled_tokens(estimator):
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(P, 200_000, replacement=True, generator=g)
    estimate = kl_estimate(P.log()[tokens], Q.log()[tokens], estimator).mean().item()
    # the standard error of these means is below 0.002 at this sample size
    assert estimate == pytest.approx(TRUE_KL, abs=0.01)


def test_k2_averages_to_half_the_squared_log_ratio_not_the_kl():
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(P, 200_000, replacement=True, generator=g)
    estimate = kl_estimate(P.log()[tokens], Q.log()[tokens], "k2").mean().item()
    expected_k2 = float((P * 0.5 * (P / Q).log() ** 2).sum())
    assert estimate == pytest.approx(expected_k2, abs=0.01)
    assert abs(estimate - TRUE_KL) > 0.05  # biased for distributions this far apart


def test_k3_is_never_negative_while_k1_can_be():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(10_000, generator=g) * 3
    ref = torch.randn(10_000, generator=g) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()


def test_k3_stays_accurate_when_logprobs_are_close():
    d = 1e-4
    value = kl_k3(torch.tensor([0.0]), torch.tensor([d])).item()
    assert value == pytest.approx(0.5 * d**2, rel=1e-2)  # naive (r - 1) - log r loses this in float32


def test_unknown_estimator_is_an_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match="k1, k2, k3") as info:
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")
    assert "Did you mean" in str(info.value)


def test_sequence_kl_sums_real_tokens_only():
    per_token = torch.tensor([[0.1, 0.2, 7.0], [0.5, -0.2, 0.3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sequence_kl(per_token, mask).tolist() == pytest.approx([0.3, 0.6])


# --- controllers -------------------------------------------------------------------------------------------------


def test_fixed_controller_never_moves_and_needs_no_reference_at_zero():
    ctl = FixedKLController(0.05)
    assert ctl.update(1000.0, 64) == 0.05 and ctl.value == 0.05
    assert ctl.needs_reference
    assert not FixedKLController(0.0).needs_reference


def test_adaptive_controller_raises_beta_above_target_and_lowers_it_below():
    up = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=1000)
    up.update(current_kl=6.6, n_steps=100)  # error 0.1, inside the clip
    assert up.value == pytest.approx(0.1 * (1 + 0.1 * 100 / 1000))

    down = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=1000)
    down.update(current_kl=5.4, n_steps=100)
    assert down.value == pytest.approx(0.1 * (1 - 0.1 * 100 / 1000))

    steady = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=1000)
    steady.update(current_kl=6.0, n_steps=100)
    assert steady.value == pytest.approx(0.1)


def test_adaptive_controller_clips_the_proportional_error_at_point_two():
    far_above = AdaptiveKLController(0.1, target=1.0, horizon=100)
    far_above.update(current_kl=50.0, n_steps=10)
    assert far_above.value == pytest.approx(0.1 * 1.02)
    far_below = AdaptiveKLController(0.1, target=1.0, horizon=100)
    far_below.update(current_kl=0.0, n_steps=10)
    assert far_below.value == pytest.approx(0.1 * 0.98)


def test_adaptive_controller_state_round_trips():
    ctl = AdaptiveKLController(0.2, target=4.0, horizon=50)
    for _ in range(5):
        ctl.update(10.0, 8)
    other = AdaptiveKLController(0.2, target=4.0, horizon=50)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value != 0.2


def test_make_kl_controller_picks_fixed_or_adaptive():
    assert isinstance(make_kl_controller(0.05), FixedKLController)
    adaptive = make_kl_controller(0.05, target=6.0, horizon=500)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.05, 6.0, 500)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -0.1}, ">= 0"),
        ({"beta": float("nan")}, ">= 0"),
        ({"beta": -0.1, "target": 6.0}, ">= 0"),
        ({"beta": 0.1, "target": 0.0}, "target KL"),
        ({"beta": 0.1, "target": -2.0}, "target KL"),
        ({"beta": 0.1, "target": float("inf")}, "target KL"),
        ({"beta": 0.1, "target": 6.0, "horizon": 0}, "horizon"),
    ],
)
def test_bad_controller_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_kl_controller(**kwargs)


def test_beta_zero_turns_the_budget_off_rather_than_building_a_controller_that_cannot_move():
    # β = 0 means "no penalty": a default kl_target must not turn it into an error, nor into a penalty
    ctl = make_kl_controller(0.0, target=2.0, horizon=1024)
    assert isinstance(ctl, FixedKLController) and ctl.value == 0.0 and not ctl.needs_reference
    with pytest.raises(ConfigError, match="init_beta > 0"):
        AdaptiveKLController(0.0, target=2.0)


def test_the_controller_holds_beta_where_the_kl_meets_its_budget():
    # a toy plant whose KL falls as β rises (KL = c/β): the controller settles β near c/target, from either side
    for start in (0.001, 0.05, 5.0):
        ctl = AdaptiveKLController(start, target=2.0, horizon=1024)
        for _ in range(3000):
            ctl.update(current_kl=0.1 / ctl.value, n_steps=64)
        assert ctl.value == pytest.approx(0.05, rel=0.05), start


# --- penalised rewards -------------------------------------------------------------------------------------------


def test_penalised_rewards_put_minus_beta_kl_on_each_token_and_the_score_on_the_last():
    scores = torch.tensor([2.0, -1.0])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, float("nan")], [-0.5, -1.5, -0.1]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = kl_penalised_rewards(scores, logp, ref, mask, beta=0.5)
    # k1 per token: row 0 [0.5, -1.0, pad], row 1 [0.0, 1.0, -0.4]
    assert out.kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0])
    assert out.kl.tolist()[1] == pytest.approx([0.0, 1.0, -0.4])
    assert out.rewards.tolist()[0] == pytest.approx([-0.25, 0.5 + 2.0, 0.0])
    assert out.rewards.tolist()[1] == pytest.approx([0.0, -0.5, 0.2 - 1.0])
    assert out.non_score_rewards.tolist()[1] == pytest.approx([0.0, -0.5, 0.2])


def test_penalised_rewards_with_k3_use_the_k3_estimate():
    logp = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-1.0 + math.log(2.0), -1.0]])
    out = kl_penalised_rewards(torch.tensor([0.0]), logp, ref, torch.ones(1, 2), beta=1.0, estimator="k3")
    assert out.rewards.tolist()[0] == pytest.approx([-(1.0 - math.log(2.0)), 0.0])


def test_beta_zero_skips_the_reference_entirely():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    out = kl_penalised_rewards(torch.tensor([1.5]), logp, None, torch.tensor([[1, 0, 0]]), beta=0.0)
    assert out.rewards.tolist() == [[1.5, 0.0, 0.0]]
    assert out.kl.abs().sum().item() == 0.0


def test_missing_reference_with_positive_beta_is_an_error():
    with pytest.raises(ValueError, match="set beta=0"):
        kl_penalised_rewards(torch.tensor([1.0]), torch.zeros(1, 2), None, torch.ones(1, 2), beta=0.1)


def test_completion_without_tokens_is_an_error_naming_the_row():
    mask = torch.tensor([[1, 0], [0, 0]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_penalised_rewards(torch.tensor([1.0, 1.0]), torch.zeros(2, 2), torch.zeros(2, 2), mask, beta=0.1)


def test_scores_of_the_wrong_shape_are_an_error():
    with pytest.raises(ValueError, match=r"scores must be \(B,\)"):
        kl_penalised_rewards(
            torch.tensor([1.0, 2.0]), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0.1
        )


def test_relax_slows_only_the_fall_of_beta():
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=256, relax=0.25)
    ctl.update(current_kl=0.0, n_steps=64)  # far under the budget: error clipped to -0.2 · 0.25
    assert ctl.value == pytest.approx(0.1 * (1 - 0.05 * 64 / 256))
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=256, relax=0.25)
    ctl.update(current_kl=10.0, n_steps=64)  # far over it: the full +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 256))
    ziegler = AdaptiveKLController(0.1, target=2.0, horizon=256)
    ziegler.update(current_kl=0.0, n_steps=64)
    assert ziegler.value == pytest.approx(0.1 * (1 - 0.2 * 64 / 256))


@pytest.mark.parametrize("relax", [0, -0.5, 1.5, float("nan"), True, "fast"])
def test_bad_relax_is_a_config_error(relax):
    with pytest.raises(ConfigError, match="relax"):
        AdaptiveKLController(0.1, target=2.0, relax=relax)
