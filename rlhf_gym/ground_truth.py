"""Ground-truth scorers: the hidden objective that simulated annotators judge by and experiments report.

A ground truth maps ``(prompt, completion)`` pairs to floats in a documented range. Simulated humans add noise
on top of one; envs and algorithms log it next to the (noisy, learned or human) proxy reward, so an experiment
can tell progress on the real objective from reward hacking.

Shipped truths (all batched, all usable by name through :func:`get_ground_truth`):

====================  ===================================================  ===================
name                  value                                                range
====================  ===================================================  ===================
``sentiment``         VADER compound score of the completion               ``[-1, 1]``
``length``            ``-min(|n - target| / target, 1)``, n = length         ``[-1, 0]``
``keyword``           presence (1/0) or count of words / regex matches     ``[0, 1]`` / per word
``callable``          any ``f(prompts, completions) -> list[float]``        as declared
any provider name     a registered reward provider's score (a plugin's)    ``low``/``high`` given
``weighted``          ``Σ wᵢ · truthᵢ``                                    from the parts
====================  ===================================================  ===================

Every truth also gives a *normalised* value in ``[0, 1]`` (:meth:`GroundTruth.evaluate`): its known range mapped
linearly onto ``[0, 1]``, after dividing by the number of words for truths that grow with length (keyword
counts, callables declared ``per_token``), so a noise scale means the same for every truth and for short and
long texts.

Example:
    >>> truth = get_ground_truth({"name": "keyword", "words": ["great"]})
    >>> truth(["p", "p"], ["a great day", "a dull day"])
    [1.0, 0.0]
    >>> get_ground_truth("length", target=4).values(["p"], ["one two"]).tolist()
    [-0.5]
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from rlhf_gym.errors import ConfigError, RewardError, UnknownNameError, unknown_name_message
from rlhf_gym.providers import RewardProvider, Score


def word_counts(completions: Sequence[str]) -> np.ndarray:
    """Number of whitespace-separated words of each text (float64 array)."""
    return np.fromiter((len(c.split()) for c in completions), dtype=np.float64, count=len(completions))


class GroundTruth:
    """Base class: a batched, noiseless scorer of ``(prompt, completion)`` with a known range.

    Subclasses implement :meth:`values` and set ``name``, ``low`` and ``high`` (``None`` where unbounded) and
    ``per_token`` (True when the value grows with the length of the text, like a count).
    """

    name: str = "ground-truth"
    #: smallest and largest possible value (per word for ``per_token`` truths); ``None`` where unknown
    low: float | None = None
    high: float | None = None
    #: the value is a sum over the text (e.g. a count); normalisation divides it by the number of words first
    per_token: bool = False

    def values(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Raw ground-truth values, one float64 per completion."""
        raise NotImplementedError(f"{type(self).__name__} must implement values(prompts, completions)")

    @property
    def has_range(self) -> bool:
        """Whether :meth:`evaluate` can normalise this truth to ``[0, 1]``."""
        return self.low is not None and self.high is not None and self.high > self.low

    def normalize(self, raw: np.ndarray, completions: Sequence[str]) -> np.ndarray:
        """Map raw values to ``[0, 1]``.

        ``[low, high]`` maps linearly onto ``[0, 1]`` (values outside are clipped); ``per_token`` truths are
        divided by the number of words (at least 1) first.
        """
        if not self.has_range:
            raise ConfigError(no_range_message(self.name))
        raw = np.asarray(raw, dtype=np.float64)
        if self.per_token:
            raw = raw / np.maximum(word_counts(completions), 1.0)
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        return np.clip((raw - low) / (high - low), 0.0, 1.0)

    def evaluate(
        self, prompts: Sequence[str], completions: Sequence[str], normalize: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(raw values, values normalised to ``[0, 1]``); with ``normalize=False`` the second is the first."""
        raw = checked_values(self, self.values(prompts, completions), len(completions))
        return raw, (self.normalize(raw, completions) if normalize else raw)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float]:
        """TRL's reward-function signature: the raw values as a list."""
        return self.values(list(prompts), list(completions)).tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, range=[{self.low}, {self.high}])"


def no_range_message(name: str) -> str:
    """The error for a truth whose range is unknown where one is needed, naming the argument that declares it."""
    return (
        f"ground truth {name!r} has no known range, so its scores cannot be mapped onto [0, 1]; pass "
        f'ground_truth_kwargs={{"low": …, "high": …}} (its smallest and largest score; in a simulated human this '
        f"range sets the annotator's noise level, since beta, epsilon and the thresholds act on scores mapped from "
        f"[low, high] onto [0, 1]), or normalize='none' to apply them in the truth's own units"
    )


def checked_values(truth: Any, values: Any, expected: int) -> np.ndarray:
    """Validate a truth's output: ``expected`` finite numbers, else a :class:`RewardError` naming the truth."""
    name = getattr(truth, "name", None) or type(truth).__name__
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise RewardError(
            f"ground truth {name!r} returned {values!r:.80}; it must return one number per completion"
        ) from None
    if array.shape[0] != expected:
        raise RewardError(f"ground truth {name!r} returned {array.shape[0]} values for {expected} completions")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise RewardError(
            f"ground truth {name!r} returned {array[bad]} at index {bad}; a ground truth must be finite"
        )
    return array


@functools.cache
def _vader_analyzer() -> Any:
    """The one VADER analyzer of the process (its lexicon takes a moment to parse)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class Sentiment(GroundTruth):
    """VADER compound sentiment of the completion, in ``[-1, 1]`` (the prompt is ignored).

    Batches are de-duplicated and recent texts are memoised (up to ``cache_size``), so the several annotators of
    a panel, or ``score`` followed by ``compare`` on the same samples, run VADER once per text.

    Args:
        cache_size: how many texts to remember; 0 turns the memo off.
    """

    name = "sentiment"
    low = -1.0
    high = 1.0

    def __init__(self, cache_size: int = 8192):
        if cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0, got {cache_size}")
        self.cache_size = int(cache_size)
        self._cache: dict[str, float] = {}

    def values(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        cache = self._cache
        missing = [text for text in dict.fromkeys(completions) if text not in cache]
        fresh: dict[str, float] = {}
        if missing:
            polarity = _vader_analyzer().polarity_scores
            fresh = {text: polarity(text)["compound"] for text in missing}
        out = np.fromiter(
            (fresh[t] if t in fresh else cache[t] for t in completions), dtype=np.float64, count=len(completions)
        )
        if fresh and self.cache_size:
            if len(cache) + len(fresh) > self.cache_size:
                cache.clear()
            cache.update(list(fresh.items())[: self.cache_size])
        return out


class TargetLength(GroundTruth):
    """How close the completion is to a target length: ``-min(|n - target| / target, 1)``, in ``[-1, 0]``.

    0 at exactly ``target``, falling linearly to -1 at 0 or ``2 × target`` and staying there beyond.

    Args:
        target: the ideal length, in ``unit``.
        unit: ``"words"`` (whitespace split), ``"chars"``, or ``"tokens"`` (needs ``tokenizer``).
        tokenizer: for ``unit="tokens"``: a tokenizer object (Hugging Face style, or anything with ``encode``)
            or a local path/name loaded with ``AutoTokenizer.from_pretrained``.
    """

    name = "length"
    low = -1.0
    high = 0.0
    UNITS = ("words", "chars", "tokens")

    def __init__(self, target: float = 20, unit: str = "words", tokenizer: Any = None):
        if not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
            raise ConfigError(f"target length must be a positive number, got {target!r}")
        if unit not in self.UNITS:
            raise ConfigError(unknown_name_message("length unit", str(unit), self.UNITS))
        if unit == "tokens" and tokenizer is None:
            raise ConfigError("unit='tokens' needs a tokenizer= (an object or a local path); or use unit='words'")
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.target = float(target)
        self.unit = unit
        self.tokenizer = tokenizer

    def lengths(self, completions: Sequence[str]) -> np.ndarray:
        """Length of each completion in ``unit``."""
        if self.unit == "words":
            return word_counts(completions)
        if self.unit == "chars":
            return np.fromiter((len(c) for c in completions), dtype=np.float64, count=len(completions))
        encode = getattr(self.tokenizer, "encode", None) or self.tokenizer
        try:
            ids = [encode(c, add_special_tokens=False) for c in completions]
        except TypeError:
            ids = [encode(c) for c in completions]
        return np.fromiter((len(i) for i in ids), dtype=np.float64, count=len(completions))

    def values(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        gap = np.abs(self.lengths(completions) - self.target) / self.target
        return -np.minimum(gap, 1.0)


class Keyword(GroundTruth):
    """Presence or count of keywords (whole words, case-insensitive by default) or of a regex in the completion.

    ``mode="presence"`` gives 1.0 when anything matches, else 0.0 (range ``[0, 1]``). ``mode="count"`` gives the
    number of matches (``per_token``: normalised as matches per word, whose range is ``[0, 1]``).

    Args:
        words: words or phrases to look for, matched on word boundaries (a single string is one word).
        regex: a regular expression (string or compiled) instead of ``words``.
        mode: ``"presence"`` or ``"count"``.
        case_sensitive: match case exactly (only for ``words``; give a regex its own flags).
    """

    name = "keyword"
    MODES = ("presence", "count")

    def __init__(
        self,
        words: str | Sequence[str] | None = None,
        regex: str | re.Pattern[str] | None = None,
        mode: str = "presence",
        case_sensitive: bool = False,
    ):
        if (words is None) == (regex is None):
            raise ConfigError("keyword ground truth needs exactly one of words=[...] or regex='...'")
        if mode not in self.MODES:
            raise ConfigError(unknown_name_message("keyword mode", str(mode), self.MODES))
        if words is not None:
            words = [words] if isinstance(words, str) else list(words)
            if not words or not all(isinstance(w, str) and w for w in words):
                raise ConfigError(f"words must be a non-empty list of non-empty strings, got {words!r}")
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            self.pattern = re.compile(rf"\b(?:{alternatives})\b", 0 if case_sensitive else re.IGNORECASE)
        else:
            try:
                self.pattern = regex if isinstance(regex, re.Pattern) else re.compile(regex)  # type: ignore[arg-type]
            except re.error as exc:
                raise ConfigError(f"keyword regex {regex!r} does not compile: {exc}") from None
        self.words = words
        self.mode = mode
        self.low = 0.0
        self.high = 1.0
        self.per_token = mode == "count"

    def values(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        pattern = self.pattern
        if self.mode == "presence":
            hits = [float(pattern.search(c) is not None) for c in completions]
        else:
            hits = [float(sum(1 for _ in pattern.finditer(c))) for c in completions]
        return np.asarray(hits, dtype=np.float64).reshape(len(completions))


class CallableTruth(GroundTruth):
    """Any function as a ground truth.

    Args:
        fn: ``fn(prompts, completions) -> list[float]`` (TRL's reward-function signature; extra keyword arguments
            are not passed), or with ``batched=False`` ``fn(completion) -> float``.
        low, high: the function's range (per word when ``per_token``), needed to normalise it (``None``:
            unknown).
        per_token: the value grows with the text's length (a sum over tokens); normalisation divides it by the
            number of words.
        batched: see ``fn``.
        name: a name for logs and errors (default: the function's name).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        low: float | None = None,
        high: float | None = None,
        per_token: bool = False,
        batched: bool = True,
        name: str | None = None,
    ):
        if not callable(fn):
            raise ConfigError(f"CallableTruth needs a callable, got {type(fn).__name__}")
        if low is not None and high is not None and not high > low:
            raise ConfigError(f"the range of a ground truth needs high > low, got low={low}, high={high}")
        self.fn = fn
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        self.per_token = bool(per_token)
        self.batched = bool(batched)
        self.name = str(name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__))

    def values(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        out = self.fn(list(prompts), list(completions)) if self.batched else [self.fn(c) for c in completions]
        return checked_values(self, out, len(completions))


class ProviderTruth(CallableTruth):
    """Any registered reward provider (a plugin's too) as a ground truth, by name.

    The range comes from ``low``/``high`` when given, else from the provider's own ``low``/``high`` attributes
    when it declares them; a provider that leaves a completion unscored (``None``) is an error, since a ground
    truth scores everything.

    Args:
        name: the registered provider name (``rlhf-gym plugins --kind reward`` lists them).
        low, high, per_token: as for :class:`CallableTruth`.
        **provider_kwargs: the provider's own constructor arguments.
    """

    def __init__(self, name: str, low: float | None = None, high: float | None = None, per_token: bool = False,
                 **provider_kwargs: Any):
        from rlhf_gym.plugins import make_reward

        try:
            self.provider = make_reward(name, **provider_kwargs)
        except TypeError as exc:
            raise ConfigError(f"reward provider {name!r} as a ground truth got arguments {sorted(provider_kwargs)} "
                              f"it does not take ({exc}); give only its own arguments beside low/high") from None
        low = getattr(self.provider, "low", None) if low is None else low
        high = getattr(self.provider, "high", None) if high is None else high
        super().__init__(self._score, low=low, high=high, per_token=per_token, name=name)

    def _score(self, prompts: list[str], completions: list[str]) -> list[float]:
        from rlhf_gym.providers import checked_scores

        scores = checked_scores(self.provider, self.provider.score(prompts, completions), len(completions))
        if any(s is None for s in scores):
            raise RewardError(f"reward provider {self.name!r} left a completion unscored (None); a ground truth "
                              f"must score every completion")
        return [float(s) for s in scores]  # type: ignore[arg-type]


class WeightedTruth(GroundTruth):
    """``Σ wᵢ · truthᵢ`` over several truths, e.g. an annotator who cares 70 % about tone and 30 % about length.

    Its normalised value combines the parts' normalised values the same way and maps the result back onto
    ``[0, 1]`` (``(Σ wᵢ·nᵢ − Σ_{wᵢ<0} wᵢ) / Σ|wᵢ|``), so each part counts by its weight whatever its units.

    Args:
        components: ``{spec: weight}`` or a list of ``(spec, weight)``; a spec is anything
            :func:`get_ground_truth` accepts.
    """

    def __init__(self, components: Mapping[Any, float] | Sequence[tuple[Any, float]], name: str | None = None):
        items = list(components.items()) if isinstance(components, Mapping) else list(components)
        try:
            parts = [(get_ground_truth(spec), float(weight)) for spec, weight in items]
        except (TypeError, ValueError) as exc:
            if isinstance(exc, (ConfigError, UnknownNameError, RewardError)):
                raise
            raise ConfigError(
                f"weighted ground truth needs (truth, weight) pairs, got {components!r:.120}: {exc}"
            ) from None
        if not parts or all(w == 0 for _, w in parts) or not all(math.isfinite(w) for _, w in parts):
            raise ConfigError("weighted ground truth needs at least one finite, non-zero weight")
        self.components = parts
        self.name = name or "+".join(f"{w:g}*{t.name}" for t, w in parts)
        # The raw sum is bounded only when every part is (per-token parts are bounded per word, not in total).
        if all(t.has_range and not t.per_token for t, _ in parts):
            bounds = [(float(t.low), float(t.high)) for t, _ in parts]  # type: ignore[arg-type]
            self.low = sum(w * (lo if w >= 0 else hi) for (_, w), (lo, hi) in zip(parts, bounds, strict=True))
            self.high = sum(w * (hi if w >= 0 else lo) for (_, w), (lo, hi) in zip(parts, bounds, strict=True))
        else:
            self.low = self.high = None

    @property
    def has_range(self) -> bool:
        return all(t.has_range for t, _ in self.components)

    def values(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return self.evaluate(prompts, completions, normalize=False)[0]

    def evaluate(
        self, prompts: Sequence[str], completions: Sequence[str], normalize: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        raw = np.zeros(len(completions))
        unit = np.zeros(len(completions))
        for truth, weight in self.components:
            part_raw, part_unit = truth.evaluate(prompts, completions, normalize=normalize)
            raw += weight * part_raw
            unit += weight * part_unit
        if not normalize:
            return raw, raw
        negative = sum(w for _, w in self.components if w < 0)
        total = sum(abs(w) for _, w in self.components)
        return raw, np.clip((unit - negative) / total, 0.0, 1.0)


#: ground truths by name, for :func:`get_ground_truth`
GROUND_TRUTHS: Mapping[str, type[GroundTruth]] = MappingProxyType(
    {
        "sentiment": Sentiment,
        "length": TargetLength,
        "keyword": Keyword,
        "callable": CallableTruth,
        "weighted": WeightedTruth,
    }
)


def _build(name: str, kwargs: Mapping[str, Any]) -> GroundTruth:
    if name not in GROUND_TRUTHS:
        from rlhf_gym.plugins import list_plugins

        providers = {e.name for e in list_plugins("reward")}
        if name in providers:
            return ProviderTruth(name, **kwargs)
        raise UnknownNameError(unknown_name_message(
            "ground truth", name, set(GROUND_TRUTHS) | providers,
            "A ground truth is one of the built-in truths or any registered reward provider "
            "(`rlhf-gym plugins --kind reward`)."))
    cls = GROUND_TRUTHS[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError:
        params = ", ".join(p for p in inspect.signature(cls).parameters)
        raise ConfigError(
            f"ground truth {name!r} got arguments {sorted(kwargs)}; it accepts: {params}"
        ) from None
    return cls(**kwargs)


def get_ground_truth(spec: Any, **kwargs: Any) -> GroundTruth:
    """Resolve a ground-truth spec.

    Accepts a name (``"sentiment"``, ``"length"``, ``"keyword"``, with ``kwargs`` for its constructor, or any
    registered reward provider's, a plugin's too: a :class:`ProviderTruth` whose range is ``low``/``high``), a dict
    ``{"name": "keyword", "words": ["great"]}``, a :class:`GroundTruth`, a list of ``(spec, weight)`` pairs (a
    :class:`WeightedTruth`), or a TRL-style callable ``f(prompts, completions) -> list[float]`` (a
    :class:`CallableTruth`; ``kwargs`` such as ``low``/``high`` go to it).

    Raises:
        UnknownNameError: an unknown name (the message lists the known ones).
        ConfigError: arguments the truth does not take, or a spec of the wrong type.
    """
    if isinstance(spec, GroundTruth):
        if kwargs:
            raise ConfigError("extra arguments only apply when the ground truth is given by name or callable")
        return spec
    if isinstance(spec, str):
        return _build(spec, kwargs)
    if isinstance(spec, Mapping):
        spec = {**spec, **kwargs}
        if "name" not in spec:
            raise ConfigError(
                f"a ground-truth dict needs a 'name' key (one of {', '.join(GROUND_TRUTHS)}), got {dict(spec)!r}"
            )
        return _build(str(spec.pop("name")), spec)
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in spec):
        return WeightedTruth(spec, **kwargs)
    if callable(spec):
        return CallableTruth(spec, **kwargs)
    raise ConfigError(
        f"ground truth must be a name ({', '.join(GROUND_TRUTHS)}), a dict with 'name', a GroundTruth, a list of "
        f"(truth, weight) pairs or a callable f(prompts, completions) -> list[float]; got {type(spec).__name__}"
    )


class GroundTruthReward(RewardProvider):
    """A ground truth as a noiseless reward provider (the ``sentiment``, ``length`` and ``keyword`` providers).

    ``score`` returns the raw ground-truth values; ``score_with_info`` adds them as ``true_score`` too, the same
    extra a simulated human gives, so logs look alike whichever provider is used.
    """

    def __init__(self, ground_truth: Any = "sentiment", **kwargs: Any):
        self.truth = get_ground_truth(ground_truth, **kwargs)
        self.name = self.truth.name

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        return self.truth.values(prompts, completions).tolist()

    def score_with_info(
        self, prompts: list[str], completions: list[str], **row: Any
    ) -> tuple[list[Score], dict[str, list[Any]]]:
        scores = self.score(prompts, completions, **row)
        return scores, {"true_score": list(scores)}
