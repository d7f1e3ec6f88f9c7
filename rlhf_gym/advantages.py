"""Advantage estimation and reward shaping shared by every algorithm.

Masked statistics over right-padded ``(B, T)`` completion tensors, GAE, the RLOO leave-one-out and GRPO-style
group baselines, a moving-average baseline for REINFORCE, the missing-EOS penalty, and running reward
normalisation. Everything here is a pure function of tensors except the two small state holders
(:class:`MovingAverageBaseline`, :class:`RunningMoments`), which an algorithm owns and checkpoints through
``state_dict()``.

Masks are 1 (or ``True``) on real completion tokens, up to and including the first EOS, and 0 on padding. Values
at padded positions are never read, so they may hold anything (even NaN or ``-inf``).

With several data-parallel learners, whole-batch statistics (``masked_sum``/``masked_mean``/``masked_var``/
``masked_whiten`` without ``dim``, :func:`masked_scale`, the baselines' and moments' batch statistics) are taken
over every learner's shard while :func:`rlhf_gym.distributed.data_parallel.batch_reductions` is active — the
algorithm base does that around each update — so a loss or a whitening equals the single-process one on the
global batch. Alone, they are plain local statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rlhf_gym.distributed import data_parallel as dp
from rlhf_gym.errors import ConfigError

__all__ = [
    "MovingAverageBaseline",
    "RunningMoments",
    "apply_missing_eos_penalty",
    "clip_rewards",
    "contains_eos",
    "gae",
    "group_normalised_advantages",
    "masked_mean",
    "masked_scale",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "normalise_rewards",
    "rloo_advantages",
]


def _require_same_shape(**tensors: torch.Tensor) -> None:
    """Raise one ValueError naming every argument when the given tensors do not all share a shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}{list(shape)}" for name, shape in shapes.items())
        raise ValueError(
            f"Shapes must match, got {listed}. Pass (B, T) tensors aligned with the completion mask."
        )


def _as_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The mask as a boolean tensor shaped like ``like`` (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    _require_same_shape(x=like, mask=mask)
    return mask.bool()


def _as_scores(scores: torch.Tensor | Sequence[float], name: str = "scores") -> torch.Tensor:
    """Scores as a finite 1-D float tensor, or a ValueError that says how to fix them."""
    t = torch.as_tensor(scores)
    if not t.is_floating_point():
        t = t.float()
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one score per completion), got shape {list(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(
            f"{name} contains NaN or inf. Drop or mask completions that have no score (None) before "
            "computing advantages; a missing score is never a training signal."
        )
    return t


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the entries where ``mask`` is set: ``Σ m·x``.

    Padded entries are excluded, not multiplied by zero, so NaN or ``-inf`` there does no harm.

    Args:
        x: values, any shape.
        mask: same shape as ``x``; None means every entry counts.
        dim: dimension to sum over; None sums everything to a scalar.

    Example:
        >>> masked_sum(torch.tensor([[1.0, 2.0, float("nan")]]), torch.tensor([[1, 1, 0]]), dim=1)
        tensor([3.])
    """
    m = _as_mask(mask, x)
    kept = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return dp.global_sum(kept.sum()) if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the masked entries: ``Σ m·x / Σ m``.

    Args:
        x: values, any shape.
        mask: same shape as ``x``; None means every entry counts.
        dim: dimension to average over; None averages everything to a scalar. Along ``dim``, a slice with no
            masked entry has mean 0.

    Raises:
        ValueError: when ``dim`` is None and the mask selects nothing.

    Example:
        >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]]))
        tensor(1.5000)
    """
    m = _as_mask(mask, x)
    total = masked_sum(x, m, dim)
    if dim is None:
        count = dp.global_count(m.sum())
        if count == 0:
            raise ValueError(
                "The mask selects no entries, so their mean is undefined. Check the completion mask."
            )
        return total / count
    return total / m.sum(dim).clamp_min(1).to(total.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all masked entries: ``Σ m·(x - μ)² / (n - 1)`` (``/ n`` when not ``unbiased``).

    Args:
        x: values, any shape.
        mask: same shape as ``x``; None means every entry counts.
        unbiased: use Bessel's correction (``n - 1``).

    Raises:
        ValueError: when there are too few masked entries (none, or one with ``unbiased=True``).

    Example:
        >>> masked_var(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
        tensor(2.)
    """
    m = _as_mask(mask, x)
    n = dp.global_count(m.sum())
    if n == 0 or (unbiased and n == 1):
        raise ValueError(
            f"The mask selects {n} entr{'y' if n == 1 else 'ies'}; an {'unbiased ' if unbiased else ''}variance "
            "needs at least 2. Use a larger batch or unbiased=False."
        )
    mean = masked_sum(x, m) / n
    var = masked_sum((x - mean) ** 2, m) / n
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor | None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its masked entries: ``(x - μ) / √(σ² + eps)``.

    Padded entries come back as 0. With ``shift_mean=False`` the mean is added back, so only the scale changes
    (the usual choice for rewards, whose sign carries meaning).

    Example:
        >>> masked_whiten(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
        tensor([-0.7071,  0.7071,  0.0000])
    """
    m = _as_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def masked_scale(x: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    """``x`` divided by the (unbiased) standard deviation of its masked entries, unchanged when fewer than two
    entries are masked (no spread to measure). The sign and the zero point stay: for advantages.

    Example:
        >>> masked_scale(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
        tensor([ 0.7071,  2.1213, 70.7107])
    """
    m = _as_mask(mask, x)
    if dp.global_count(m.sum()) < 2:
        return x
    return x / (masked_var(x, m).sqrt() + eps)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions.

    For each real token ``t``, with ``m_{t+1}`` = 1 when the next token is real (0 after the last one)::

        δ_t = r_t + γ · m_{t+1} · V_{t+1} - V_t
        A_t = δ_t + γλ · m_{t+1} · A_{t+1}
        R_t = A_t + V_t

    The last real token is terminal: nothing is bootstrapped from padding. Vectorised over the batch, with one
    reverse loop over ``T``. Padded positions come back as 0. Inputs are detached: the results are targets.

    Args:
        rewards: per-token rewards ``(B, T)``, e.g. from :func:`rlhf_gym.kl.kl_penalised_rewards`.
        values: value estimates ``(B, T)``.
        mask: completion mask ``(B, T)``; None means no padding.
        gamma: discount.
        lam: GAE λ (1 gives Monte-Carlo returns minus values, 0 gives one-step TD errors).

    Returns:
        ``(advantages, returns)``, both ``(B, T)``; not whitened (see :func:`masked_whiten`).

    Example:
        >>> adv, ret = gae(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 0.0]]),
        ...                torch.tensor([[1, 1, 0]]), gamma=1.0, lam=1.0)
        >>> adv, ret
        (tensor([[0.5000, 0.5000, 0.0000]]), tensor([[1., 1., 0.]]))
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, T), got shape {list(rewards.shape)}.")
    _require_same_shape(rewards=rewards, values=values)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ConfigError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}.")
    m = _as_mask(mask, rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(m, rewards.detach(), zero)
    v = torch.where(m, values.detach().to(rewards.dtype), zero)
    mf = m.to(rewards.dtype)

    B, T = rewards.shape
    advantages = torch.zeros_like(r)
    next_adv = torch.zeros(B, dtype=r.dtype, device=r.device)
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)
    next_real = torch.zeros(B, dtype=r.dtype, device=r.device)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_real * next_value - v[:, t]
        adv_t = (delta + gamma * lam * next_real * next_adv) * mf[:, t]
        advantages[:, t] = adv_t
        next_adv, next_value, next_real = adv_t, v[:, t], mf[:, t]
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Scores reshaped to ``(n_groups, group_size)``; consecutive blocks form a group."""
    if not isinstance(group_size, int) or group_size < 2:
        raise ConfigError(f"group_size must be an int >= 2 (completions per prompt), got {group_size!r}.")
    if scores.numel() % group_size:
        raise ValueError(
            f"{scores.numel()} scores do not split into groups of {group_size}. Order scores as consecutive "
            f"blocks of {group_size} completions of the same prompt."
        )
    return scores.view(-1, group_size)


def _scored_groups(
    scores: torch.Tensor | Sequence[float], group_size: int, valid: torch.Tensor | Sequence[bool] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, valid)`` as ``(n_groups, group_size)`` tensors; scores are only checked where ``valid`` is set,
    and unscored entries come back as 0 so they can never leak into a sum."""
    if valid is None:
        s = _as_scores(scores)
        ok = torch.ones_like(s, dtype=torch.bool)
    else:
        raw = torch.as_tensor(scores)
        raw = raw if raw.is_floating_point() else raw.float()
        ok = torch.as_tensor(valid, dtype=torch.bool, device=raw.device)
        _require_same_shape(scores=raw, valid=ok)
        s = _as_scores(torch.where(ok, raw, torch.zeros((), dtype=raw.dtype, device=raw.device)))
    return _grouped(s, group_size), ok.view(-1, group_size)


def rloo_advantages(
    scores: torch.Tensor | Sequence[float], group_size: int, valid: torch.Tensor | Sequence[bool] | None = None
) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: each score minus the mean of the other scored members of its group.

    ``A_i = s_i - (Σ_{j scored} s_j - s_i) / (n - 1)``, where the ``k = group_size`` completions of one prompt are
    consecutive entries of ``scores`` and ``n`` is how many of them were scored (``valid``; all when None).

    Unscored samples (``valid`` False) are left out of every baseline and get advantage 0. A group with a single
    scored sample has no leave-one-out baseline, so that sample gets advantage 0 too (it is not compared with other
    prompts' scores). This matches TRL's ``RLOOTrainer`` for reward functions that return ``None``.

    Example:
        >>> rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0]), group_size=3)
        tensor([-1.5000,  0.0000,  1.5000, -2.0000, -2.0000,  4.0000])
        >>> rloo_advantages(torch.tensor([1.0, 2.0, 4.0, 0.0]), 4, valid=torch.tensor([True, True, True, False]))
        tensor([-2.0000, -0.5000,  2.5000,  0.0000])
    """
    g, ok = _scored_groups(scores, group_size, valid)
    n = ok.sum(dim=1, keepdim=True)
    total = g.sum(dim=1, keepdim=True)  # unscored entries are 0 here
    baseline = (total - g) / (n - 1).clamp_min(1).to(g.dtype)
    usable = ok & (n >= 2)
    return torch.where(usable, g - baseline, torch.zeros_like(g)).reshape(-1)


def group_normalised_advantages(
    scores: torch.Tensor | Sequence[float],
    group_size: int,
    scale: bool = True,
    eps: float = 1e-4,
    valid: torch.Tensor | Sequence[bool] | None = None,
) -> torch.Tensor:
    """GRPO-style advantages: ``(s_i - mean_g) / (std_g + eps)`` within each group of ``group_size``.

    ``mean_g`` and ``std_g`` (unbiased) are taken over the group's scored members only (``valid``; all when None),
    as TRL's ``GRPOTrainer`` does with ``None`` rewards. With ``scale=False`` only the mean is removed (the Dr. GRPO
    variant). Unscored samples, groups whose scores are all equal and groups with a single scored member get
    advantage 0.

    Example:
        >>> group_normalised_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2, eps=0.0)
        tensor([-0.7071,  0.7071,  0.0000,  0.0000])
    """
    g, ok = _scored_groups(scores, group_size, valid)
    okf = ok.to(g.dtype)
    n = okf.sum(dim=1, keepdim=True)
    mean = (g * okf).sum(dim=1, keepdim=True) / n.clamp_min(1)
    centred = torch.where(ok, g - mean, torch.zeros_like(g))
    usable = ok & (n >= 2)
    if scale:
        std = torch.sqrt((centred**2).sum(dim=1, keepdim=True) / (n - 1).clamp_min(1))
        usable = usable & (std > 0)
        centred = centred / (std + eps)
    return torch.where(usable, centred, torch.zeros_like(centred)).reshape(-1)


class MovingAverageBaseline:
    """Exponential moving average of scores, the classic REINFORCE baseline.

    Calling it on a batch returns ``scores - b`` with the baseline *before* the batch, then moves the baseline
    toward the batch mean: ``b ← decay · b + (1 - decay) · mean(scores)``. The first batch has no history, so
    the baseline starts at that batch's mean.

    Example:
        >>> baseline = MovingAverageBaseline(decay=0.5)
        >>> baseline(torch.tensor([1.0, 3.0]))
        tensor([-1.,  1.])
        >>> baseline(torch.tensor([6.0, 6.0]))
        tensor([4., 4.])
        >>> baseline.value
        4.0
    """

    def __init__(self, decay: float = 0.9) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"decay must lie in [0, 1), got {decay}.")
        self.decay = float(decay)
        #: current baseline; None until the first batch
        self.value: float | None = None

    def __call__(self, scores: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Advantages ``scores - baseline`` for this batch; updates the baseline afterwards."""
        s = _as_scores(scores)
        n = dp.global_count(s.numel())
        if n == 0:  # nothing scored: no advantage to give, and no evidence to move the baseline
            return s.clone()
        batch_mean = float(masked_sum(s, None)) / n
        if self.value is None:
            self.value = batch_mean
        advantages = s - self.value
        self.value = self.decay * self.value + (1.0 - self.decay) * batch_mean
        return advantages

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {"decay": self.decay, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.decay = float(state["decay"])
        self.value = None if state["value"] is None else float(state["value"])


def contains_eos(
    completion_ids: torch.Tensor, eos_token_id: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Which completions contain ``eos_token_id`` among their real tokens, as a ``(B,)`` bool tensor.

    Pass the completion mask when padding uses the EOS id (as GPT-2 tokenizers often do), so padding is not
    mistaken for an EOS.

    Example:
        >>> contains_eos(torch.tensor([[5, 0, 0], [5, 6, 7]]), eos_token_id=0, mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
        tensor([ True, False])
    """
    m = _as_mask(mask, completion_ids)
    return ((completion_ids == eos_token_id) & m).any(dim=-1)


def apply_missing_eos_penalty(
    scores: torch.Tensor | Sequence[float], has_eos: torch.Tensor | Sequence[bool], penalty: float | None
) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every completion that never emitted EOS.

    Truncated completions would otherwise be rewarded for text that simply stops. ``penalty=None`` (or 0)
    leaves the scores unchanged. A new tensor is returned.

    Args:
        scores: ``(B,)`` scores.
        has_eos: ``(B,)`` bools, e.g. from :func:`contains_eos`.
        penalty: a non-negative amount to subtract.

    Example:
        >>> apply_missing_eos_penalty(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), penalty=1.0)
        tensor([ 0.5000, -0.5000])
    """
    s = _as_scores(scores).clone()
    if penalty is None or penalty == 0:
        return s
    if penalty < 0 or not math.isfinite(penalty):
        raise ConfigError(f"missing_eos_penalty must be a finite amount >= 0 to subtract, got {penalty}.")
    eos = torch.as_tensor(has_eos, dtype=torch.bool, device=s.device)
    _require_same_shape(scores=s, has_eos=eos)
    return torch.where(eos, s, s - penalty)


class RunningMoments:
    """Running mean and variance of every score seen so far, for reward normalisation.

    Batches are merged with Chan et al.'s parallel update (Welford's algorithm batch by batch), in float64, so
    the result equals the statistics of all scores concatenated.

    Example:
        >>> moments = RunningMoments()
        >>> moments.update(torch.tensor([1.0, 2.0]))
        >>> moments.update(torch.tensor([3.0, 4.0, 5.0]))
        >>> moments.count, moments.mean, moments.var
        (5, 3.0, 2.0)
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        """Population variance (``ddof=0``) of the scores seen; 0 before any."""
        return self._m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation of the scores seen."""
        return math.sqrt(self.var)

    def update(self, scores: torch.Tensor | Sequence[float]) -> None:
        """Fold a batch of scores into the running statistics."""
        s = _as_scores(torch.as_tensor(scores).reshape(-1)).double()
        n_b = dp.global_count(s.numel())
        if n_b == 0:
            return
        mean_b = float(masked_sum(s, None)) / n_b
        m2_b = float(masked_sum((s - mean_b) ** 2, None))
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self._m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {"count": self.count, "mean": self.mean, "m2": self._m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.count, self.mean, self._m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def clip_rewards(x: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Clamp ``x`` to ``[-limit, limit]``; ``limit=None`` returns ``x`` unchanged.

    Example:
        >>> clip_rewards(torch.tensor([-5.0, 0.5, 5.0]), 1.0)
        tensor([-1.0000,  0.5000,  1.0000])
    """
    if limit is None:
        return x
    if not limit > 0:
        raise ConfigError(f"The reward clip limit must be > 0 (or None for no clipping), got {limit}.")
    return x.clamp(-limit, limit)


def normalise_rewards(
    scores: torch.Tensor | Sequence[float],
    moments: RunningMoments,
    clip: float | None = None,
    shift_mean: bool = True,
    update: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Normalise scores by running statistics: ``(s - μ) / (σ + eps)``, then clip to ``±clip``.

    ``moments`` is updated with this batch first (unless ``update=False``), so the very first batch is
    normalised by its own statistics. With ``shift_mean=False`` the scores are only scaled: ``s / (σ + eps)``.

    Example:
        >>> moments = RunningMoments()
        >>> normalise_rewards(torch.tensor([1.0, 3.0]), moments)
        tensor([-1.,  1.])
        >>> normalise_rewards(torch.tensor([10.0]), moments, clip=2.0, update=False)
        tensor([2.])
    """
    s = _as_scores(scores)
    if update:
        moments.update(s)
    if moments.count == 0:
        raise ValueError("RunningMoments has seen no scores yet; call with update=True first.")
    shifted = s - moments.mean if shift_mean else s
    return clip_rewards(shifted / (moments.std + eps), clip)
