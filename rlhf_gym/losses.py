"""Loss functions of the built-in algorithms, as pure functions that plugin authors can reuse.

Token-level losses take right-padded ``(B, T)`` tensors and a completion ``mask`` (1 on real tokens up to and
including EOS) and return a scalar averaged over the masked tokens, plus a small NamedTuple of detached
statistics for logging. Pairwise losses (DPO, Bradley–Terry) return one loss per pair, shape ``(B,)``, so pairs
can be weighted or filtered before the caller takes the mean.

Quantities that act as constants (advantages, old log-probs, old values, returns, reference log-probs) are
detached inside, so gradients only flow into the current policy's outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhf_gym.advantages import _require_same_shape, masked_mean, masked_sum, rloo_advantages
from rlhf_gym.errors import ConfigError, unknown_name_message
from rlhf_gym.kl import kl_k3

__all__ = [
    "DPO_LOSS_TYPES",
    "DPOOutput",
    "PolicyLossStats",
    "ValueLossStats",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reinforce_loss",
    "rloo_loss",
    "sft_loss",
    "token_logprobs",
]

#: the ``loss_type`` values :func:`dpo_loss` accepts
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _broadcast_advantages(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Sequence-level ``(B,)`` advantages spread over the tokens of ``(B, T)`` log-probs; detached."""
    advantages = advantages.detach().to(logp.dtype)
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    _require_same_shape(logp=logp, advantages=advantages)
    return advantages


class PolicyLossStats(NamedTuple):
    """Detached statistics of :func:`ppo_policy_loss`."""

    #: fraction of masked tokens whose objective was clipped (``policy/clipfrac_avg``)
    clipfrac: torch.Tensor
    #: k3 estimate of KL(π_old ‖ π) over masked tokens, ``(ρ - 1) - log ρ``
    approx_kl: torch.Tensor
    #: mean probability ratio ``ρ = π / π_old`` over masked tokens
    ratio_mean: torch.Tensor


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """PPO's clipped surrogate objective, as a loss to minimise::

        ρ_t  = exp(logp_t - old_logp_t)
        loss = mean_masked( max(-A_t · ρ_t, -A_t · clip(ρ_t, 1 - ε, 1 + ε)) )

    Args:
        logp: ``(B, T)`` log-probs of the sampled tokens under the current policy (with gradient).
        old_logp: ``(B, T)`` log-probs under the policy that sampled them.
        advantages: ``(B, T)`` per-token advantages, or ``(B,)`` sequence-level ones spread over every token
            (as GRPO/RLOO with several epochs per batch do).
        mask: ``(B, T)`` completion mask; None when nothing is padded.
        clip_range: ε.

    Returns:
        ``(loss, PolicyLossStats(clipfrac, approx_kl, ratio_mean))``.

    Example:
        >>> loss, stats = ppo_policy_loss(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2),
        ...                               torch.tensor([[1.0, 1.0]]), None, clip_range=0.2)
        >>> loss, stats.clipfrac
        (tensor(-0.8500), tensor(0.5000))
    """
    if not clip_range > 0:
        raise ConfigError(f"clip_range must be > 0, got {clip_range}.")
    _require_same_shape(logp=logp, old_logp=old_logp)
    adv = _broadcast_advantages(advantages, logp)
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = PolicyLossStats(
            clipfrac=masked_mean((clipped > unclipped).to(logp.dtype), mask),
            approx_kl=masked_mean(kl_k3(old_logp.detach(), logp.detach()), mask),
            ratio_mean=masked_mean(ratio.detach(), mask),
        )
    return loss, stats


class ValueLossStats(NamedTuple):
    """Detached statistics of :func:`ppo_value_loss`."""

    #: fraction of masked tokens where the clipped error was the larger one (``val/clipfrac_avg``)
    vf_clipfrac: torch.Tensor


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None,
    clip_range_value: float | None = 0.2,
) -> tuple[torch.Tensor, ValueLossStats]:
    """PPO's clipped value loss::

        V_clip = old_V + clip(V - old_V, -ε_v, ε_v)
        loss   = ½ · mean_masked( max((V - R)², (V_clip - R)²) )

    ``clip_range_value=None`` turns clipping off (plain ``½ · mean (V - R)²``).

    Example:
        >>> loss, stats = ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]),
        ...                              torch.tensor([[2.0, 2.0]]), None, clip_range_value=0.5)
        >>> loss, stats.vf_clipfrac
        (tensor(1.5625), tensor(0.5000))
    """
    _require_same_shape(values=values, old_values=old_values, returns=returns)
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns) ** 2
    if clip_range_value is None:
        loss = 0.5 * masked_mean(unclipped, mask)
        return loss, ValueLossStats(vf_clipfrac=torch.zeros((), dtype=values.dtype, device=values.device))
    if not clip_range_value > 0:
        raise ConfigError(f"clip_range_value must be > 0 (or None for no clipping), got {clip_range_value}.")
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask)
    return loss, ValueLossStats(vf_clipfrac=vf_clipfrac)


def reinforce_loss(
    logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """REINFORCE: ``loss = -mean_b( Σ_t m_bt · A_bt · logp_bt )``.

    With sequence-level advantages ``(B,)`` this is ``-mean_b A_b · log π(y_b | x_b)``, the score-function
    gradient of the expected score; ``logp`` may also be ``(B,)`` sequence log-probs directly.

    Args:
        logp: ``(B, T)`` token log-probs (with gradient), or ``(B,)`` sequence log-probs.
        advantages: ``(B,)``, or ``(B, T)`` per-token advantages.
        mask: ``(B, T)`` completion mask (ignored for ``(B,)`` log-probs).

    Example:
        >>> reinforce_loss(torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]]), torch.tensor([1.0, 1.0]),
        ...                torch.tensor([[1, 1, 0], [1, 1, 1]]))
        tensor(2.2500)
    """
    adv = _broadcast_advantages(advantages, logp)
    if logp.dim() == 1:
        return -(adv * logp).mean()
    return -masked_sum(adv * logp, mask, dim=-1).mean()


def rloo_loss(
    logp: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    group_size: int,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with the leave-one-out baseline (RLOO, Ahmadian et al., 2024).

    The ``k = group_size`` completions of each prompt are consecutive rows; each gets the advantage
    ``s_i - mean_{j≠i} s_j`` over the scored members ``j`` of its group (see
    :func:`rlhf_gym.advantages.rloo_advantages`; ``valid`` marks the scored rows, all when None), then
    :func:`reinforce_loss`. Unscored rows get advantage 0, so they add nothing to the loss.

    Returns:
        ``(loss, advantages)`` with the ``(B,)`` advantages for logging.

    Example:
        >>> loss, adv = rloo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 0.0]), None, group_size=2)
        >>> loss, adv
        (tensor(-0.5000), tensor([ 1., -1.]))
    """
    advantages = rloo_advantages(torch.as_tensor(scores).detach(), group_size, valid).to(logp.device)
    return reinforce_loss(logp, advantages, mask), advantages


class DPOOutput(NamedTuple):
    """Output of :func:`dpo_loss`; unpacks as ``losses, chosen_rewards, rejected_rewards``."""

    #: per-pair loss ``(B,)``
    losses: torch.Tensor
    #: implicit reward of the chosen completion, ``β (logπ(y_w) - logπ_ref(y_w))``, detached (``rewards/chosen``)
    chosen_rewards: torch.Tensor
    #: implicit reward of the rejected completion, detached (``rewards/rejected``)
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOOutput:
    """Direct preference optimisation losses on summed sequence log-probs ``(B,)``.

    With ``Δ = (logπ(y_w) - logπ(y_l)) - (logπ_ref(y_w) - logπ_ref(y_l))``:

    - ``"sigmoid"`` (DPO, Rafailov et al. 2023; conservative DPO when ``label_smoothing = ε > 0``):
      ``-(1 - ε) · log σ(βΔ) - ε · log σ(-βΔ)``
    - ``"ipo"`` (Azar et al. 2023): ``(Δ̄ - 1 / (2β))²`` with the log-ratios averaged per token,
      ``Δ̄ = (logπ(y_w) - logπ_ref(y_w)) / |y_w| - (logπ(y_l) - logπ_ref(y_l)) / |y_l|``, as the IPO authors and
      TRL compute it (summed log-probs would make the loss grow with completion length). ``chosen_lengths`` and
      ``rejected_lengths`` (completion token counts, ``(B,)``) are required for it; Δ̄ is not multiplied by β.
    - ``"hinge"`` (SLiC): ``relu(1 - βΔ)``

    At initialisation (policy == reference) Δ = 0: the sigmoid loss is exactly ``log 2``, both implicit rewards
    are 0, and the gradients on the chosen and rejected log-probs are equal and opposite (``∓β/2`` per pair
    before averaging). So the first step only pushes the two completions apart; anything that moves both
    log-probs equally (a shared prefix, say) gets zero gradient. The gradient itself is not zero.

    Raises:
        ConfigError: for an unknown ``loss_type`` (listing the valid ones), ``beta <= 0``, or label smoothing
            outside ``[0, 0.5]`` or used with a loss other than ``"sigmoid"``.

    Example:
        >>> out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-2.0]))
        >>> out.losses, out.chosen_rewards
        (tensor([0.6931]), tensor([0.]))
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(unknown_name_message("DPO loss_type", str(loss_type), DPO_LOSS_TYPES))
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 for DPO, got {beta}.")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ConfigError(f"label_smoothing must lie in [0, 0.5], got {label_smoothing}.")
    if label_smoothing and loss_type != "sigmoid":
        raise ConfigError(
            f"label_smoothing applies to loss_type='sigmoid' only; set it to 0 for {loss_type!r}."
        )
    _require_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    ref_chosen_logps, ref_rejected_logps = ref_chosen_logps.detach(), ref_rejected_logps.detach()
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        eps = label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ConfigError(
                "loss_type='ipo' averages the log-ratios per token: pass chosen_lengths= and rejected_lengths= "
                "(the number of completion tokens of each pair, e.g. completion_mask.sum(-1))."
            )
        n_chosen = torch.as_tensor(chosen_lengths, device=delta.device).to(delta.dtype).clamp_min(1.0)
        n_rejected = torch.as_tensor(rejected_lengths, device=delta.device).to(delta.dtype).clamp_min(1.0)
        _require_same_shape(delta=delta, chosen_lengths=n_chosen, rejected_lengths=n_rejected)
        per_token_delta = chosen_logratio / n_chosen - rejected_logratio / n_rejected
        losses = (per_token_delta - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = torch.relu(1.0 - beta * delta)
    return DPOOutput(
        losses=losses,
        chosen_rewards=beta * chosen_logratio.detach(),
        rejected_rewards=beta * rejected_logratio.detach(),
    )


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    label: torch.Tensor | float | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Reward-model loss on pairs: cross-entropy of the Bradley–Terry probability ``σ(z)``, per pair ``(B,)``::

        z    = r_chosen - r_rejected - margin
        p    = (1 - ε) · label + ε · (1 - label)
        loss = -p · log σ(z) - (1 - p) · log σ(-z)

    Args:
        r_chosen: ``(B,)`` rewards of the preferred completions (with gradient).
        r_rejected: ``(B,)`` rewards of the other completions.
        margin: required reward gap (scalar or ``(B,)``), as in Llama 2's margin loss; None means 0.
        label: ``P(chosen ≻ rejected)`` (scalar or ``(B,)``); None means 1. Use 0.5 for ties: the loss is then
            lowest when the two rewards are equal.
        label_smoothing: ε in ``[0, 0.5]``.

    Example:
        >>> bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), label=torch.tensor([1.0, 0.5]))
        tensor([0.6931, 0.6931])
    """
    _require_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ConfigError(f"label_smoothing must lie in [0, 0.5], got {label_smoothing}.")
    z = r_chosen - r_rejected
    if margin is not None:
        z = z - torch.as_tensor(margin, dtype=z.dtype, device=z.device)
    if label is None:
        p = torch.ones((), dtype=z.dtype, device=z.device)
    else:
        p = torch.as_tensor(label, dtype=z.dtype, device=z.device)
        if ((p < 0) | (p > 1)).any() or not torch.isfinite(p).all():
            raise ValueError(
                "label must hold probabilities P(chosen > rejected) in [0, 1]; use 0.5 for a tie."
            )
    p = (1.0 - label_smoothing) * p + label_smoothing * (1.0 - p)
    return -p * F.logsigmoid(z) - (1.0 - p) * F.logsigmoid(-z)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under its logits: ``log_softmax(logits)[..., label]``, shape ``(B, T)``.

    ``logits[:, t]`` must already be the prediction for ``labels[:, t]`` (shift before calling). Computed in at
    least float32.

    Example:
        >>> token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))
        tensor([[-1.3863, -1.3863]])
    """
    if logits.dim() != labels.dim() + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {list(logits.shape)} and labels {list(labels.shape)} do not line up; expected logits "
            "(B, T, V) and labels (B, T)."
        )
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def sft_loss(
    logits_or_logps: torch.Tensor, mask: torch.Tensor | None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Supervised fine-tuning loss: mean negative log-likelihood over the masked tokens, ``-mean_masked logp``.

    Args:
        logits_or_logps: ``(B, T)`` token log-probs, or ``(B, T, V)`` logits together with ``labels``.
        mask: ``(B, T)`` mask of the tokens to learn (typically the completion, not the prompt).
        labels: ``(B, T)`` target ids, required with logits (aligned: ``logits[:, t]`` predicts ``labels[:, t]``).

    Example:
        >>> sft_loss(torch.tensor([[-1.0, -3.0, -50.0]]), torch.tensor([[1, 1, 0]]))
        tensor(2.)
    """
    if labels is not None:
        logps = token_logprobs(logits_or_logps, labels)
    elif logits_or_logps.dim() == 3:
        raise ValueError(
            "sft_loss got (B, T, V) logits without labels; pass labels=, or (B, T) token log-probs."
        )
    else:
        logps = logits_or_logps
    return -masked_mean(logps, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: ``H = logsumexp(z) - Σ softmax(z) · z``.

    Takes ``(..., V)`` logits and returns ``(...)``; average it with :func:`rlhf_gym.advantages.masked_mean`
    for ``objective/entropy``.

    Example:
        >>> entropy_from_logits(torch.zeros(1, 4))
        tensor([1.3863])
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
