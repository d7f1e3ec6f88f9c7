"""Reward providers: anything that scores (or compares) completions of prompts, in batches.

The contract::

    score(prompts, completions, **row)                    -> list[float | None]   # None: no score
    compare(prompts, completions_a, completions_b, **row) -> list[float | None]   # P(a > b); 0.5 tie; None skip

``row`` carries per-sample extra columns (lists as long as ``prompts``), e.g. a dataset's ``reference`` field.
Wherever a provider is accepted, a TRL-style reward function ``f(prompts, completions, **kwargs)`` (or
``f(completions, **kwargs)``) is accepted too: :func:`as_provider` wraps it in :class:`CallableReward`, which calls
it by keyword as TRL's trainers do.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_gym.errors import ConfigError, RewardError

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


#: keyword arguments TRL's trainers pass every reward function, besides the dataset columns
TRL_REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids")


class CallableReward(RewardProvider):
    """Adapter for a TRL-style reward function, called by keyword as TRL's trainers call it.

    The function gets ``prompts=``, ``completions=``, ``completion_ids=`` (the completions' token ids, when a
    tokenizer is known) and every per-sample column of the prompt set as keyword arguments, so both
    ``f(prompts, completions, **kwargs)`` and ``f(completions, **kwargs)`` work, as do TRL's shipped reward
    functions (``trl.rewards.think_format_reward``, ``get_soft_overlong_punishment(...)``, ...). A function without
    ``**kwargs`` gets only the arguments it names. A function whose required parameters are not among those names
    (``lambda p, c, **kw: ...``) is called positionally, ``f(prompts, completions, **columns)``. A function that
    annotates ``completions`` as messages (``list[list[dict]]``, as TRL's conversational ones do) gets each
    prompt and completion as a one-message conversation; ``conversational=`` forces either form.

    Args:
        fn: the reward function (or a callable object, or an ``async`` function).
        name: the provider's name (default: the function's ``__name__``).
        tokenizer: tokenizer for ``completion_ids`` (the envs pass theirs); ids are the completion text
            tokenised without special tokens, as far as the env kept it (cut at the first EOS).
        conversational: pass messages (True) or plain text (False); None decides from ``fn``'s annotation.

    Example:
        >>> def short(completions, **kwargs):
        ...     return [-float(len(c)) for c in completions]
        >>> CallableReward(short).score(["Hi"], ["abc"])
        [-3.0]
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None, tokenizer: Any = None,
                 conversational: bool | None = None):
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.tokenizer = tokenizer
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # builtins without a signature: TRL's calling convention
            params = []
            self._var_keyword = True
        else:
            self._var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        self._named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        required = [p.name for p in params if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        positional_only = any(p.kind is p.POSITIONAL_ONLY for p in params)
        self._required = required
        # Keyword calls unless the function's own names say it expects (prompts, completions) by position.
        self._by_keyword = not positional_only and (
            not required or any(r in TRL_REWARD_ARGUMENTS for r in required))
        if conversational is None:
            annotation = next((p.annotation for p in params if p.name == "completions"), inspect.Parameter.empty)
            conversational = annotation is not inspect.Parameter.empty and "dict" in str(annotation)
        self.conversational = bool(conversational)

    def _completion_ids(self, completions: list[str]) -> list[list[int]] | None:
        if self.tokenizer is None:
            return None
        return [list(ids) for ids in self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]]

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        if not self._by_keyword:
            return _resolve(self.fn(prompts, completions, **row))
        if self.conversational:
            shown_prompts: list[Any] = [[{"role": "user", "content": p}] for p in prompts]
            shown: list[Any] = [[{"role": "assistant", "content": c}] for c in completions]
        else:
            shown_prompts, shown = list(prompts), list(completions)
        available: dict[str, Any] = {**row, "prompts": shown_prompts, "completions": shown}
        wants_ids = self._var_keyword or "completion_ids" in self._named
        if "completion_ids" not in available and wants_ids:
            ids = self._completion_ids(completions)
            if ids is not None:
                available["completion_ids"] = ids
        missing = [r for r in self._required if r not in available]
        if missing:
            raise ConfigError(
                f"reward function {self.name!r} needs {', '.join(repr(m) for m in missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not available; it is called with "
                f"{', '.join(sorted(available))}. Add the missing column to the prompt set (a .jsonl field or "
                f"dataset column){' or pass a tokenizer for completion_ids' if 'completion_ids' in missing else ''}."
            )
        kwargs = available if self._var_keyword else {k: v for k, v in available.items() if k in self._named}
        return _resolve(self.fn(**kwargs))


def _resolve(result: Any) -> Any:
    """The value of an ``async`` reward function's coroutine; anything else as it is."""
    if inspect.isawaitable(result):
        import asyncio

        async def wait() -> Any:
            return await result

        return asyncio.run(wait())
    return result


def as_provider(reward: Any, reward_kwargs: Mapping[str, Any] | None = None, *,
                tokenizer: Any = None) -> RewardProvider:
    """Turn a provider name, provider object or TRL-style callable into a :class:`RewardProvider`.

    ``reward_kwargs`` are the keyword arguments of a provider given by name. One key applies to any reward:
    ``timeout`` (seconds), see :func:`rlhf_gym.provider_timeout.with_timeout`. ``tokenizer`` lets a callable be
    given ``completion_ids``.
    """
    reward_kwargs = dict(reward_kwargs or {})
    timeout = reward_kwargs.pop("timeout", None) if not isinstance(reward, str) else None
    if isinstance(reward, RewardProvider):
        if reward_kwargs:
            raise ConfigError(f"reward_kwargs {sorted(reward_kwargs)} only apply when the reward is given by name "
                              f"(only 'timeout' applies to a provider object)")
        provider = reward
    elif isinstance(reward, str):
        from rlhf_gym.plugins import make_reward

        provider = make_reward(reward, **reward_kwargs)
    elif callable(reward):
        if reward_kwargs:
            raise ConfigError(f"reward_kwargs {sorted(reward_kwargs)} only apply when the reward is given by name "
                              f"(only 'timeout' applies to a reward function)")
        provider = CallableReward(reward, tokenizer=tokenizer)
    else:
        raise ConfigError(
            f"reward must be a provider name (see `rlhf-gym plugins`), a RewardProvider, or a callable "
            f"f(prompts, completions, **kwargs) -> list[float]; got {type(reward).__name__}"
        )
    if tokenizer is not None:
        _give_tokenizer(provider, tokenizer)
    if timeout is not None:
        from rlhf_gym.provider_timeout import with_timeout

        provider = with_timeout(provider, timeout)
    return provider


def _give_tokenizer(provider: Any, tokenizer: Any) -> None:
    """Let every reward function inside ``provider`` (a time limit, a composite) compute ``completion_ids``."""
    if isinstance(provider, CallableReward):
        if provider.tokenizer is None:
            provider.tokenizer = tokenizer
        return
    inner = provider.__dict__.get("provider")  # a TimeoutReward
    if inner is not None:
        _give_tokenizer(inner, tokenizer)
    for component, _ in provider.__dict__.get("components", ()):
        _give_tokenizer(component, tokenizer)


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
