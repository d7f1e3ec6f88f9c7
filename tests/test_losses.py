"""Every loss in rlhf_gym.losses against values worked out by hand, plus the gradients that matter."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import rlhf_gym.losses as losses_mod
from rlhf_gym.errors import ConfigError
from rlhf_gym.losses import (
    DPO_LOSS_TYPES,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    rloo_loss,
    sft_loss,
    token_logprobs,
)


def _softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x), for writing expected values."""
    return math.log1p(math.exp(x))


def test_docstring_examples_hold():
    result = doctest.testmod(losses_mod, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


# --- PPO ---------------------------------------------------------------------------------------------------------

# ratios and advantages chosen so each branch of the clipped objective occurs; the last token of row 0 is padding
RATIOS = torch.tensor([[1.5, 0.9, 7.0], [0.7, 1.1, 1.3]])
ADVANTAGES = torch.tensor([[1.0, -2.0, 100.0], [-1.0, 0.5, -0.5]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_ppo_policy_loss_matches_hand_computed_values():
    logp = RATIOS.log().requires_grad_()
    loss, stats = ppo_policy_loss(logp, torch.zeros(2, 3), ADVANTAGES, MASK, clip_range=0.2)
    # per token max(-A·ρ, -A·clip(ρ)):
    #   ρ=1.5 A=1  -> max(-1.5, -1.2) = -1.2 (clipped)    ρ=0.9 A=-2  -> max(1.8, 1.8) = 1.8
    #   ρ=0.7 A=-1 -> max(0.7, 0.8)   = 0.8  (clipped)    ρ=1.1 A=0.5 -> -0.55
    #   ρ=1.3 A=-0.5 -> max(0.65, 0.6) = 0.65 (outside the range but not clipped: the pessimistic side)
    assert loss.item() == pytest.approx((-1.2 + 1.8 + 0.8 - 0.55 + 0.65) / 5)
    assert stats.clipfrac.item() == pytest.approx(2 / 5)
    assert stats.ratio_mean.item() == pytest.approx((1.5 + 0.9 + 0.7 + 1.1 + 1.3) / 5)
    expected_kl = sum((r - 1) - math.log(r) for r in [1.5, 0.9, 0.7, 1.1, 1.3]) / 5
    assert stats.approx_kl.item() == pytest.approx(expected_kl, rel=1e-5)

    loss.backward()
    # clipped tokens and padding get no gradient; the others get -A·ρ / n_tokens
    expected_grad = [[0.0, 2.0 * 0.9 / 5, 0.0], [0.0, -0.5 * 1.1 / 5, 0.5 * 1.3 / 5]]
    assert logp.grad.tolist()[0] == pytest.approx(expected_grad[0], abs=1e-6)
    assert logp.grad.tolist()[1] == pytest.approx(expected_grad[1], abs=1e-6)


def test_ppo_sequence_level_advantages_spread_over_every_token():
    logp = RATIOS.log()
    per_seq = torch.tensor([1.0, -0.5])
    loss_seq, _ = ppo_policy_loss(logp, torch.zeros(2, 3), per_seq, MASK)
    loss_tok, _ = ppo_policy_loss(logp, torch.zeros(2, 3), per_seq[:, None].expand(2, 3), MASK)
    assert loss_seq.item() == pytest.approx(loss_tok.item())


def test_ppo_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    loss, stats = ppo_policy_loss(torch.full((2, 3), -1.3), torch.full((2, 3), -1.3), ADVANTAGES, MASK)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 - 1.0 + 0.5 - 0.5) / 5)
    assert stats.clipfrac.item() == 0.0 and stats.approx_kl.item() == 0.0


def test_ppo_value_loss_matches_hand_computed_values():
    values = torch.tensor([[1.0, 0.0, 0.5, 100.0]], requires_grad=True)
    old_values = torch.tensor([[0.0, 0.0, 0.4, 0.0]])
    returns = torch.tensor([[2.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.5)
    # token 0: unclipped (1-2)² = 1, clipped V = 0.5 -> (0.5-2)² = 2.25, the max is the clipped one
    # token 1: both 1.   token 2: change 0.1 is inside the range, both 0.25
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0 + 0.25) / 3)
    assert stats.vf_clipfrac.item() == pytest.approx(1 / 3)
    loss.backward()
    # the clipped branch is flat in V; elsewhere d/dV ½·mean (V-R)² = (V-R)/3
    assert values.grad.tolist()[0] == pytest.approx([0.0, 1 / 3, 0.5 / 3, 0.0])

    unclipped, stats = ppo_value_loss(values, old_values, returns, mask, clip_range_value=None)
    assert unclipped.item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.25) / 3)
    assert stats.vf_clipfrac.item() == 0.0


def test_bad_clip_ranges_are_config_errors():
    with pytest.raises(ConfigError, match="clip_range"):
        ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), None, clip_range=0.0)
    with pytest.raises(ConfigError, match="clip_range_value"):
        ppo_value_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), None, clip_range_value=-1.0)


# --- REINFORCE / RLOO --------------------------------------------------------------------------------------------


def test_reinforce_loss_weights_each_sequence_log_prob_by_its_advantage():
    logp = torch.tensor([[-1.0, -2.0, -50.0], [-0.5, -0.25, -0.25]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss = reinforce_loss(logp, torch.tensor([2.0, -1.0]), mask)
    # -(2·(-3) + (-1)·(-1)) / 2
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert logp.grad.tolist() == [[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]

    seq_logp = torch.tensor([-3.0, -1.0])
    assert reinforce_loss(seq_logp, torch.tensor([2.0, -1.0])).item() == pytest.approx(2.5)


def test_reinforce_loss_does_not_backpropagate_into_advantages():
    advantages = torch.tensor([1.0, 2.0], requires_grad=True)
    reinforce_loss(torch.tensor([-1.0, -2.0], requires_grad=True), advantages).backward()
    assert advantages.grad is None


def test_rloo_loss_is_reinforce_with_leave_one_out_advantages():
    logp = torch.tensor([-1.0, -2.0, -3.0, -1.0, -1.0, -1.0])
    scores = torch.tensor([3.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    loss, advantages = rloo_loss(logp, scores, None, group_size=3)
    assert advantages.tolist() == [3.0, -1.5, -1.5, 0.0, 0.0, 0.0]
    assert loss.item() == pytest.approx(-(3.0 * -1.0 - 1.5 * -2.0 - 1.5 * -3.0) / 6)


# --- DPO ---------------------------------------------------------------------------------------------------------

# pair 0: policy moved toward chosen, Δ = 2; pair 1: toward rejected, Δ = -1
PC, PR = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
RC, RR = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])


def test_dpo_sigmoid_loss_matches_hand_computed_values():
    losses, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="sigmoid")
    assert losses.tolist() == pytest.approx([_softplus(-1.0), _softplus(0.5)])
    assert chosen.tolist() == pytest.approx([0.5, 0.0])  # β (logπ - logπ_ref) of the chosen
    assert rejected.tolist() == pytest.approx([-0.5, 0.5])


def test_dpo_label_smoothing_mixes_in_the_flipped_preference():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert losses.tolist() == pytest.approx(
        [0.9 * _softplus(-1.0) + 0.1 * _softplus(1.0), 0.9 * _softplus(0.5) + 0.1 * _softplus(-0.5)]
    )


def test_dpo_ipo_loss_does_not_scale_the_log_ratio_by_beta():
    ones = torch.ones(2)
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo", chosen_lengths=ones, rejected_lengths=ones)
    # (Δ - 1/(2β))² with 1/(2β) = 1 (one-token completions: the per-token average is the sum)
    assert losses.tolist() == pytest.approx([(2.0 - 1.0) ** 2, (-1.0 - 1.0) ** 2])


def test_dpo_hinge_loss_matches_hand_computed_values():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge")
    assert losses.tolist() == pytest.approx([0.0, 1.5])  # relu(1 - 1), relu(1 + 0.5)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_at_init_has_zero_rewards_and_equal_and_opposite_gradients(loss_type):
    """Policy == reference: Δ = 0. The meaningful 'nothing learned yet' facts, for every loss type."""
    g = torch.Generator().manual_seed(0)
    ref_c, ref_r = -10 * torch.rand(4, generator=g), -10 * torch.rand(4, generator=g)
    pol_c, pol_r = ref_c.clone().requires_grad_(), ref_r.clone().requires_grad_()
    beta = 0.1
    lengths = torch.full((4,), 3)  # equal lengths: IPO's per-token average keeps the symmetry
    losses, chosen, rejected = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=beta, loss_type=loss_type,
                                        chosen_lengths=lengths, rejected_lengths=lengths)
    assert chosen.abs().max().item() == 0.0 and rejected.abs().max().item() == 0.0
    if loss_type == "sigmoid":
        assert losses.tolist() == pytest.approx([math.log(2.0)] * 4)
    losses.mean().backward()
    assert torch.allclose(pol_c.grad, -pol_r.grad)
    assert (pol_c.grad < 0).all()  # minimising raises the chosen log-prob
    if loss_type == "sigmoid":
        assert pol_c.grad.tolist() == pytest.approx([-beta / 2 / 4] * 4)


def test_dpo_with_label_smoothing_one_half_has_zero_gradient_at_init():
    pol_c, pol_r = torch.tensor([-3.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    losses, _, _ = dpo_loss(pol_c, pol_r, pol_c.detach(), pol_r.detach(), label_smoothing=0.5)
    losses.sum().backward()
    assert pol_c.grad.item() == 0.0 and pol_r.grad.item() == 0.0


def test_dpo_does_not_backpropagate_into_the_reference():
    ref_c = torch.tensor([-1.0], requires_grad=True)
    losses, _, _ = dpo_loss(
        torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0]), ref_c, torch.tensor([-2.0])
    )
    losses.sum().backward()
    assert ref_c.grad is None


def test_unknown_dpo_loss_type_is_an_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match="hinge, ipo, sigmoid") as info:
        dpo_loss(PC, PR, RC, RR, loss_type="sigmiod")
    assert "Did you mean 'sigmoid'" in str(info.value)


def test_label_smoothing_with_ipo_is_an_error():
    with pytest.raises(ConfigError, match="sigmoid"):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo", label_smoothing=0.1)


# --- Bradley–Terry -----------------------------------------------------------------------------------------------


def test_bradley_terry_loss_matches_hand_computed_values():
    r_c, r_r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert bradley_terry_loss(r_c, r_r).tolist() == pytest.approx([_softplus(-1.0), _softplus(1.0)])
    with_margin = bradley_terry_loss(r_c, r_r, margin=torch.tensor([0.5, 0.0]))
    assert with_margin.tolist() == pytest.approx([_softplus(-0.5), _softplus(1.0)])
    smoothed = bradley_terry_loss(r_c, r_r, label_smoothing=0.1)
    assert smoothed.tolist() == pytest.approx(
        [0.9 * _softplus(-1.0) + 0.1 * _softplus(1.0), 0.9 * _softplus(1.0) + 0.1 * _softplus(-1.0)]
    )


def test_bradley_terry_tie_label_pulls_rewards_together():
    r_c = torch.tensor([0.7, 3.0], requires_grad=True)
    r_r = torch.tensor([0.7, 1.0])
    losses = bradley_terry_loss(r_c, r_r, label=0.5)
    assert losses.tolist() == pytest.approx([math.log(2.0), 0.5 * _softplus(-2.0) + 0.5 * _softplus(2.0)])
    losses.sum().backward()
    assert r_c.grad[0].item() == pytest.approx(0.0, abs=1e-7)  # equal rewards: already optimal for a tie
    assert r_c.grad[1].item() > 0  # chosen above rejected: pushed down toward it


def test_bradley_terry_rejects_labels_outside_zero_one():
    with pytest.raises(ValueError, match="0.5 for a tie"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), label=torch.tensor([1.0, 1.5]))


# --- SFT, token log-probs, entropy -------------------------------------------------------------------------------


def test_sft_loss_on_logits_equals_cross_entropy_over_masked_tokens():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 11, generator=g)
    labels = torch.randint(0, 11, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    expected = F.cross_entropy(logits[mask.bool()], labels[mask.bool()])
    assert sft_loss(logits, mask, labels=labels).item() == pytest.approx(expected.item(), rel=1e-6)
    logps = token_logprobs(logits, labels)
    assert sft_loss(logps, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_sft_loss_with_logits_but_no_labels_says_what_to_pass():
    with pytest.raises(ValueError, match="labels="):
        sft_loss(torch.zeros(1, 2, 5), None)


def test_token_logprobs_pick_the_label_of_each_position():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]])
    assert token_logprobs(logits, torch.tensor([[1, 1]])).tolist()[0] == pytest.approx(
        [math.log(3 / 4), math.log(1 / 5)]
    )


def test_entropy_from_logits_matches_the_definition():
    g = torch.Generator().manual_seed(6)
    logits = 3 * torch.randn(2, 5, 17, generator=g)
    p = torch.softmax(logits, dim=-1)
    expected = -(p * torch.log_softmax(logits, dim=-1)).sum(-1)
    assert torch.allclose(entropy_from_logits(logits), expected, atol=1e-5)
    assert entropy_from_logits(torch.zeros(1, 17)).item() == pytest.approx(math.log(17))
    assert entropy_from_logits(torch.tensor([[0.0, -1e4, -1e4]])).item() == pytest.approx(0.0, abs=1e-6)
