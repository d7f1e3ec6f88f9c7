"""Reward providers: anything that scores (or compares) completions of prompts, in batches.

The contract::

    score(prompts, completions, **row)                    -> list[float | None]   # None: no score
    compare(prompts, completions_a, completions_b, **row) -> list[float | None]   # P(a > b); 0.5 tie; None skip

``row`` carries per-sample extra columns (lists as long as ``prompts``), e.g. a dataset's ``reference`` field.
Wherever a provider is accepted, a TRL-style reward function ``f(prompts, completions, **kwargs)`` is accepted
too: :func:`as_provider` wraps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_gym.errors import RewardError

Score = float | None


class RewardProvider:
    """Base class of reward providers. Subclass it and implement :meth:`score`.

    Override :meth:`compare` where pairwise judgement is native (humans, simulated humans); the default asks
    :meth:`score` for both sides and turns the difference into a Bradley–Terry probability.

    Example:
        >>> class LengthReward(RewardProvider):
        ...     def score(self, prompts, completions, **row):
        ...         return [min(len(c.split()) / 10, 1.0) for c in completions]
        >>> LengthReward().score(["Hi"], ["one two three"])
        [0.3]
        >>> round(LengthReward().compare(["Hi"], ["a b c d e"], ["a"])[0], 3)
        0.599
    """

    #: user-facing name, set by the registry when the provider is built by name
    name: str | None = None
    #: False where the same input may be judged differently (a live human); envs are then non-deterministic
    deterministic: bool = True
    #: scale of the Bradley–Terry link used by the default :meth:`compare`
    bt_temperature: float = 1.0

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        """One score per (prompt, completion); ``None`` where no score can be given."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(prompts, completions, **row)")

    def score_with_info(
        self, prompts: list[str], completions: list[str], **row: Any
    ) -> tuple[list[Score], dict[str, list[Any]]]:
        """Scores plus per-sample extras (lists as long as ``prompts``) that envs put into ``info``.

        Override to expose extras such as a simulated human's noiseless ground truth; the default has none.
        """
        return self.score(prompts, completions, **row), {}

    def compare(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **row: Any
    ) -> list[Score]:
        """P(a preferred over b) per pair: 1.0 a, 0.0 b, 0.5 tie, ``None`` skip."""
        score_a = checked_scores(self, self.score(prompts, completions_a, **row), len(prompts))
        score_b = checked_scores(self, self.score(prompts, completions_b, **row), len(prompts))
        out: list[Score] = []
        for a, b in zip(score_a, score_b):
            if a is None or b is None:
                out.append(None)
            else:
                out.append(1.0 / (1.0 + math.exp(-(a - b) / self.bt_temperature)))
        return out

    def rank(self, prompt: str, completions: list[str], **row: Any) -> list[int]:
        """Indices of ``completions`` from best to worst (k-wise feedback); default: by :meth:`score`."""
        scores = checked_scores(self, self.score([prompt] * len(completions), list(completions), **row), len(completions))
        keyed = [(-(s if s is not None else -math.inf), i) for i, s in enumerate(scores)]
        return [i for _, i in sorted(keyed)]

    def close(self) -> None:
        """Release resources (servers, files). Called by the env's ``close()``."""

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[Score]:
        """TRL's reward-function signature, so a provider can be handed to TRL trainers too."""
        return self.score(list(prompts), list(completions), **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CallableReward(RewardProvider):
    """Adapter for a plain TRL-style reward function ``f(prompts, completions, **kwargs) -> list``."""

    def __init__(self, fn: Callable[..., Sequence[Score]], name: str | None = None):
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        return list(self.fn(prompts, completions, **row))


def as_provider(reward: Any, reward_kwargs: Mapping[str, Any] | None = None) -> RewardProvider:
    """Turn a provider name, provider object or TRL-style callable into a :class:`RewardProvider`."""
    reward_kwargs = dict(reward_kwargs or {})
    if isinstance(reward, RewardProvider):
        if reward_kwargs:
            raise TypeError("reward_kwargs only apply when the reward is given by name")
        return reward
    if isinstance(reward, str):
        from rlhf_gym.plugins import make_reward

        return make_reward(reward, **reward_kwargs)
    if callable(reward):
        if reward_kwargs:
            raise TypeError("reward_kwargs only apply when the reward is given by name")
        return CallableReward(reward)
    raise TypeError(
        f"reward must be a provider name (see `rlhf-gym plugins`), a RewardProvider, or a callable "
        f"f(prompts, completions, **kwargs) -> list[float]; got {type(reward).__name__}"
    )


def checked_scores(provider: Any, scores: Any, expected: int, what: str = "scores") -> list[Score]:
    """Validate a provider's answer: one finite float or ``None`` per sample.

    Raises :class:`RewardError` naming the provider when the count is wrong or a value is NaN/inf or not a
    number, so a broken provider never becomes a silent training signal.
    """
    name = getattr(provider, "name", None) or type(provider).__name__
    if isinstance(scores, np.ndarray) or hasattr(scores, "tolist"):
        scores = scores.tolist()
    try:
        scores = list(scores)
    except TypeError:
        raise RewardError(
            f"reward provider {name!r} returned {type(scores).__name__}; it must return a list of {expected} "
            f"{what} (float or None)"
        ) from None
    if len(scores) != expected:
        raise RewardError(
            f"reward provider {name!r} returned {len(scores)} {what} for {expected} samples; return exactly "
            f"one value (or None) per sample"
        )
    out: list[Score] = []
    for i, value in enumerate(scores):
        if value is None:
            out.append(None)
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise RewardError(
                f"reward provider {name!r} returned {value!r} at index {i}; {what} must be numbers or None"
            ) from None
        if not math.isfinite(value):
            raise RewardError(
                f"reward provider {name!r} returned {value} at index {i}; NaN/inf is not a training signal — "
                f"return None to skip a sample, or fix the provider"
            )
        out.append(value)
    return out


def scores_to_array(scores: Sequence[Score]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 array with 0 where missing, bool mask of present scores)."""
    mask = np.array([s is not None for s in scores], dtype=bool)
    values = np.array([0.0 if s is None else s for s in scores], dtype=np.float32)
    return values, mask


class CompositeReward(RewardProvider):
    """Weighted sum of several providers: ``score = Σ wᵢ·scoreᵢ`` (``None`` if any component gives ``None``).

    Args:
        components: ``{name_or_provider: weight}`` or a list of ``(name_or_provider_or_callable, weight)``.
        component_kwargs: keyword arguments for components given by name, keyed by that name.

    Example:
        >>> r = CompositeReward([(lambda p, c, **k: [1.0] * len(p), 0.5), (lambda p, c, **k: [2.0] * len(p), 2.0)])
        >>> r.score(["a", "b"], ["x", "y"])
        [4.5, 4.5]
    """

    def __init__(
        self,
        components: Mapping[Any, float] | Sequence[tuple[Any, float]],
        component_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        items = list(components.items()) if isinstance(components, Mapping) else list(components)
        if not items:
            raise ValueError("composite reward needs at least one (provider, weight) component")
        component_kwargs = dict(component_kwargs or {})
        self.components: list[tuple[RewardProvider, float]] = []
        for reward, weight in items:
            kwargs = component_kwargs.get(reward, {}) if isinstance(reward, str) else {}
            self.components.append((as_provider(reward, kwargs), float(weight)))
        self.deterministic = all(p.deterministic for p, _ in self.components)

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        total: list[Score] = [0.0] * len(prompts)
        for provider, weight in self.components:
            part = checked_scores(provider, provider.score(prompts, completions, **row), len(prompts))
            total = [None if t is None or s is None else t + weight * s for t, s in zip(total, part)]
        return total

    def close(self) -> None:
        for provider, _ in self.components:
            provider.close()
