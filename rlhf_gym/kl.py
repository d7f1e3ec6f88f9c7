"""KL penalty against a frozen reference policy: per-token estimators, β controllers, penalised rewards.

Every algorithm that keeps the policy near its reference uses these, so the estimators and the controller rule
are written once. Estimators follow Schulman's "Approximating KL divergence" note; for tokens sampled from the
policy, with ``log r = ref_logp - logp``:

    k1 = -log r                 unbiased, can be negative per token
    k2 = ½ (log r)²             biased, low variance, always >= 0
    k3 = (r - 1) - log r        unbiased, always >= 0

When β = 0 the KL term is skipped entirely: a :class:`FixedKLController` with β = 0 reports
``needs_reference == False``, and :func:`kl_penalised_rewards` then accepts ``ref_logp=None``, so no reference
forward pass is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from rlhf_gym.advantages import _require_same_shape, masked_sum
from rlhf_gym.errors import ConfigError, unknown_name_message

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "PenalisedRewards",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalised_rewards",
    "make_kl_controller",
    "sequence_kl",
]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(π ‖ π_ref): ``logp - ref_logp``.

    Example:
        >>> kl_k1(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]))
        tensor([ 0.5000, -1.0000])
    """
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k2 estimator of KL(π ‖ π_ref): ``½ (logp - ref_logp)²``.

    Example:
        >>> kl_k2(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]))
        tensor([0.1250, 0.5000])
    """
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π ‖ π_ref): ``(r - 1) - log r`` with ``r = exp(ref_logp - logp)``.

    Never negative; computed with ``expm1`` so it stays accurate when the two log-probs are close.

    Example:
        >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0 + math.log(2.0)]))
        tensor([0.0000, 0.3069])
    """
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


#: estimator name -> per-token function ``f(logp, ref_logp)``
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate by name (``"k1"``, ``"k2"`` or ``"k3"``).

    Raises:
        ConfigError: for an unknown estimator name, listing the valid ones.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ConfigError(unknown_name_message("KL estimator", str(estimator), KL_ESTIMATORS)) from None
    _require_same_shape(logp=logp, ref_logp=ref_logp)
    return fn(logp, ref_logp)


def sequence_kl(per_token_kl: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL of each whole completion: the sum of per-token KL over its real tokens, shape ``(B,)``.

    The mean of this over the batch is what TRL logs as ``objective/kl``.

    Example:
        >>> sequence_kl(torch.tensor([[0.1, 0.2, 9.0]]), torch.tensor([[1, 1, 0]]))
        tensor([0.3000])
    """
    return masked_sum(per_token_kl, mask, dim=-1)


def _check_beta(beta: float) -> float:
    """``beta`` as a float, or a ConfigError unless it is a finite number >= 0."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(beta, bool) or not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"beta (the KL coefficient) must be a finite number >= 0, got {beta!r}.")
    return value


class PenalisedRewards(NamedTuple):
    """Output of :func:`kl_penalised_rewards`."""

    #: per-token rewards ``(B, T)``: ``-β·KL`` on every real token, plus the score on the last one; 0 on padding
    rewards: torch.Tensor
    #: per-token KL estimate ``(B, T)`` (0 on padding, and everywhere when no reference was given)
    kl: torch.Tensor
    #: the non-score part alone, ``-β·KL`` (B, T), logged as ``objective/non_score_reward`` by TRL
    non_score_rewards: torch.Tensor


def _last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last set entry of each row of a ``(B, T)`` mask; every row must have one."""
    m = mask.bool()
    empty = ~m.any(dim=-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"Completion rows {rows} have no real tokens, so there is no token to carry their score. "
            "Drop empty completions before computing rewards."
        )
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).amax(dim=-1)


def kl_penalised_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
    estimator: str = "k1",
) -> PenalisedRewards:
    """Per-token rewards for token-level RL (PPO style)::

        reward_t = -β · KL_t + [t is the last real token] · score

    Args:
        scores: ``(B,)`` score of each completion (from the reward provider).
        logp: ``(B, T)`` log-probs of the sampled completion tokens under the policy that sampled them.
        ref_logp: ``(B, T)`` log-probs of the same tokens under the frozen reference; may be None when
            ``beta == 0`` (the KL term is then skipped and reported as 0).
        mask: ``(B, T)`` completion mask.
        beta: KL coefficient, e.g. ``controller.value``.
        estimator: ``"k1"`` (as TRL's PPO), ``"k2"`` or ``"k3"``.

    Returns:
        :class:`PenalisedRewards` ``(rewards, kl, non_score_rewards)``.

    Example:
        >>> out = kl_penalised_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -1.0, -1.0]]),
        ...                            torch.tensor([[-1.5, -0.5, 0.0]]), torch.tensor([[1, 1, 0]]), beta=0.1)
        >>> out.rewards
        tensor([[-0.0500,  1.0500,  0.0000]])
    """
    beta = _check_beta(beta)
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {list(logp.shape)}.")
    _require_same_shape(logp=logp, mask=mask)
    scores = torch.as_tensor(scores, dtype=logp.dtype, device=logp.device)
    if tuple(scores.shape) != (logp.shape[0],):
        raise ValueError(f"scores must be (B,) = ({logp.shape[0]},), got shape {list(scores.shape)}.")
    m = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is None:
        if beta != 0:
            raise ValueError(f"ref_logp is None but beta={beta}; pass reference log-probs or set beta=0.")
        kl = torch.zeros_like(logp)
    else:
        kl = torch.where(m, kl_estimate(logp, ref_logp, estimator), zero)
    non_score = torch.where(m, -beta * kl, zero)
    last = _last_real_index(m)
    rewards = non_score.clone()
    rewards[torch.arange(logp.shape[0], device=logp.device), last] += scores
    return PenalisedRewards(rewards=rewards, kl=kl, non_score_rewards=non_score)


class KLController:
    """Holds the KL coefficient β. Subclasses decide how :meth:`update` moves it."""

    value: float

    @property
    def needs_reference(self) -> bool:
        """Whether a reference model is needed at all (False only for a fixed β of 0)."""
        return True

    def update(self, current_kl: float, n_steps: int) -> float:
        """Take the mean KL per completion measured on the last batch of ``n_steps`` samples; return new β."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.value = float(state["value"])


class FixedKLController(KLController):
    """A constant β.

    Example:
        >>> ctl = FixedKLController(0.05)
        >>> ctl.update(current_kl=100.0, n_steps=16)
        0.05
        >>> FixedKLController(0.0).needs_reference
        False
    """

    def __init__(self, beta: float) -> None:
        self.value = _check_beta(beta)

    @property
    def needs_reference(self) -> bool:
        return self.value > 0

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController(KLController):
    """Proportional control of β toward a target KL (Ziegler et al., 2019)::

        e = clip(KL / target - 1, -0.2 · relax, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    β grows while the measured KL per completion is above ``target`` and shrinks while it is below; the clipped
    error bounds how fast it can move. ``relax = 1`` is Ziegler's symmetric rule. ``relax < 1`` lets β fall only
    that fraction as fast as it rises: early in a run the KL sits far below the target for many updates, and a β
    that fell at full speed all that time would be too small to stop the policy once it reaches the target (the
    KL then overshoots, as an integral controller winds up). The rule stays a target, not a ceiling: a KL under
    the target still lowers β, only more slowly.

    Example:
        >>> ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=100)
        >>> round(ctl.update(current_kl=12.0, n_steps=10), 6)   # error clipped to +0.2
        0.102
    """

    def __init__(self, init_beta: float, target: float, horizon: int = 10000, relax: float = 1.0) -> None:
        self.value = _check_beta(init_beta)
        if self.value == 0:
            raise ConfigError("An adaptive KL controller needs init_beta > 0 (β = 0 would never move).")
        if not (math.isfinite(target) and target > 0):
            raise ConfigError(f"target KL must be > 0, got {target}.")
        if not horizon > 0:
            raise ConfigError(f"horizon must be > 0, got {horizon}.")
        if isinstance(relax, bool) or not (isinstance(relax, (int, float)) and 0 < relax <= 1):
            raise ConfigError(f"relax (how fast β may fall, as a fraction of how fast it may rise) must be in (0, 1], "
                              f"got {relax!r}.")
        self.target = float(target)
        self.horizon = horizon
        self.relax = float(relax)

    def update(self, current_kl: float, n_steps: int) -> float:
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}.")
        error = min(max(current_kl / self.target - 1.0, -0.2 * self.relax), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def make_kl_controller(beta: float, target: float | None = None, horizon: int = 10000,
                       relax: float = 1.0) -> KLController:
    """A :class:`FixedKLController` when ``target`` is None or ``beta`` is 0 (no penalty, so no budget to hold),
    else an :class:`AdaptiveKLController` starting from ``beta``.

    Example:
        >>> type(make_kl_controller(0.05)).__name__, type(make_kl_controller(0.05, target=6.0)).__name__
        ('FixedKLController', 'AdaptiveKLController')
        >>> make_kl_controller(0.0, target=6.0).needs_reference
        False
    """
    if target is None or _check_beta(beta) == 0:
        return FixedKLController(beta)
    return AdaptiveKLController(beta, target, horizon, relax)
