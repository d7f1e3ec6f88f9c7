"""Built-in plugin: simulated annotators over a ground truth, for experiments on noisy and disagreeing feedback.

Registers ``simulated-human`` (:class:`SimulatedHuman`), ``simulated-panel`` (:class:`SimulatedPanel`) and the
noiseless ground truths ``sentiment``, ``length`` and ``keyword`` as reward providers.

The noise model follows the simulated teachers of BPref (Lee et al., 2021, "B-Pref: Benchmarking
Preference-Based Reinforcement Learning"), applied to scores normalised to ``[0, 1]`` so that one β means the
same for every ground truth:

- *rationality* β: a Boltzmann (Bradley–Terry) choice, ``P(a ≻ b) = σ(β · Δ)`` with ``Δ = u(a) − u(b)``;
  ``β = inf`` always picks the better completion, ``β = 0`` picks at random;
- *mistakes* ε: with probability ε the sampled label is flipped;
- *ties*: ``|Δ| < tie_threshold`` answers 0.5;
- *skips*: when both completions score below ``skip_threshold`` the annotator declines (``None``);
- *bias*: a preference for the completion shown first (``bias``) and for longer texts (``length_bias``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

import rlhf_gym
from rlhf_gym.errors import ConfigError, UnknownNameError, unknown_name_message
from rlhf_gym.ground_truth import (
    GroundTruth,
    GroundTruthReward,
    WeightedTruth,
    get_ground_truth,
    no_range_message,
    word_counts,
)
from rlhf_gym.providers import RewardProvider, Score

#: BPref's simulated teachers, on normalised scores. Explicit keyword arguments override a preset's values.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # perfectly rational: always prefers the truly better completion
        "oracle": {"beta": math.inf, "epsilon": 0.0, "tie_threshold": 0.0, "skip_threshold": None},
        # Boltzmann-rational: a 0.1 gap is chosen right 73 % of the time, a 0.3 gap 95 %
        "noisy": {"beta": 10.0, "epsilon": 0.0, "tie_threshold": 0.0, "skip_threshold": None},
        # rational, but flips 10 % of its answers
        "mistake": {"beta": math.inf, "epsilon": 0.1, "tie_threshold": 0.0, "skip_threshold": None},
        # rational, answers "equally good" (0.5) when the gap is under 0.05
        "equal": {"beta": math.inf, "epsilon": 0.0, "tie_threshold": 0.05, "skip_threshold": None},
        # rational, declines to answer when both completions score under 0.3
        "skip": {"beta": math.inf, "epsilon": 0.0, "tie_threshold": 0.0, "skip_threshold": 0.3},
    }
)
_DEFAULTS: Mapping[str, Any] = {**PRESETS["oracle"], "bias": 0.0, "length_bias": 0.0}
NORMALIZATIONS = ("range", "none")
#: words at which :attr:`SimulatedHuman.length_bias` gives half its effect
LENGTH_BIAS_HALF_WORDS = 20.0


class _Preset:
    """Marker for "take this setting from the preset (or the default)"."""

    def __repr__(self) -> str:
        return "<preset>"


_PRESET: Any = _Preset()


def _bt_probability(delta: np.ndarray, beta: float) -> np.ndarray:
    """Bradley–Terry ``σ(β·Δ)``; ``β = inf`` gives 1, 0 or 0.5 (exactly equal)."""
    if math.isinf(beta):
        return 0.5 * (1.0 + np.sign(delta))
    return 0.5 * (1.0 + np.tanh(0.5 * beta * delta))


class SimulatedHuman(RewardProvider):
    """A seeded simulated annotator that rates, compares and ranks completions by a noisy ground truth.

    Scores are first normalised (``normalize="range"``): the ground truth's known range is mapped onto
    ``[0, 1]``, and truths that grow with length (keyword counts, ``per_token`` callables) are divided by the
    number of words first, so β, the thresholds and the biases mean the same for every truth and every text
    length. The annotator's *perceived utility* of a completion is its normalised score plus
    ``length_bias · n / (n + 20)`` (n = words).

    - :meth:`compare`: ``None`` if both utilities are under ``skip_threshold``; else 0.5 if
      ``|Δ| < tie_threshold`` (``Δ = u(a) − u(b) + bias``); else a hard label 1.0/0.0 drawn with
      ``P(a ≻ b) = σ(β·Δ)`` and then flipped with probability ε. At β = inf exactly equal utilities are a coin
      flip.
    - :meth:`score`: the utility plus logistic noise of scale 1/β, clipped to the rating range; with probability
      ε a uniformly random rating instead. Returned on the normalised ``[0, 1]`` scale (the truth's own units
      with ``normalize="none"``), or as a Likert level ``1..likert``. ``tie_threshold``/``skip_threshold`` apply
      to pairs only.
    - :meth:`rank`: a Plackett–Luce sample with weights ``exp(β·u)`` (sorted utilities at β = inf, equal ones in
      random order); with probability ε one random pair of neighbours is swapped (for two completions: the same
      flip as :meth:`compare`).

    Answers are reproducible: one ``numpy`` generator seeded by ``seed`` drives every draw.

    Args:
        ground_truth: what the annotator judges by; anything :func:`rlhf_gym.ground_truth.get_ground_truth`
            accepts (a built-in truth's or any registered reward provider's name, a dict, a callable, a list of
            ``(truth, weight)`` pairs). A provider without a declared range needs ``ground_truth_kwargs={"low": …,
            "high": …}``: the range sets the noise level, since β and ε act on scores mapped onto ``[0, 1]``.
        preset: ``"oracle"``, ``"noisy"``, ``"mistake"``, ``"equal"`` or ``"skip"`` (see :data:`PRESETS`);
            ``None`` is the oracle. Explicit arguments override the preset.
        beta: rationality β ≥ 0 on normalised scores; ``float("inf")`` always picks the better completion.
        epsilon: mistake rate in ``[0, 0.5]``.
        tie_threshold: ``|Δ|`` below this answers 0.5 (0 = never).
        skip_threshold: both utilities below this answers ``None`` (``None`` = never).
        bias: added to ``Δ``: a preference for the completion shown first (``a``), in normalised score units.
        length_bias: weight of the preference for longer texts, in normalised score units (see above).
        likert: quantise :meth:`score` to the integer levels ``1..likert`` (``None``: continuous).
        seed: seeds the generator (an int or a ``numpy.random.SeedSequence``); ``None`` draws fresh entropy, and
            the annotator is then not reproducible (``deterministic`` is False).
        normalize: ``"range"`` (above) or ``"none"`` (β and thresholds in the truth's own units).
        ground_truth_kwargs: constructor arguments for a ground truth given by name (for a provider: its own
            arguments plus ``low``/``high``, the range of its scores).

    Example:
        >>> human = SimulatedHuman("sentiment", preset="oracle")
        >>> human.compare(["Review:", "Review:"], ["I love it, great!", "awful"], ["awful", "I love it, great!"])
        [1.0, 0.0]
        >>> human.score(["Review:"], ["I love it, great!"])  # VADER compound 0.8622, normalised
        [0.9311]
    """

    deterministic = True

    def __init__(
        self,
        ground_truth: Any = "sentiment",
        preset: str | None = None,
        *,
        beta: float = _PRESET,
        epsilon: float = _PRESET,
        tie_threshold: float = _PRESET,
        skip_threshold: float | None = _PRESET,
        bias: float = _PRESET,
        length_bias: float = _PRESET,
        likert: int | None = None,
        seed: int | np.random.SeedSequence | None = 0,
        normalize: str = "range",
        ground_truth_kwargs: Mapping[str, Any] | None = None,
    ):
        if preset is not None and preset not in PRESETS:
            raise UnknownNameError(unknown_name_message("simulated-human preset", str(preset), PRESETS))
        explicit = {
            "beta": beta,
            "epsilon": epsilon,
            "tie_threshold": tie_threshold,
            "skip_threshold": skip_threshold,
            "bias": bias,
            "length_bias": length_bias,
        }
        settings = {**_DEFAULTS, **(PRESETS[preset] if preset else {})}
        settings.update({k: v for k, v in explicit.items() if v is not _PRESET})

        self.truth: GroundTruth = get_ground_truth(ground_truth, **dict(ground_truth_kwargs or {}))
        self.preset = preset
        self.beta = _number("beta", settings["beta"], low=0.0, allow_inf=True)
        self.epsilon = _number("epsilon", settings["epsilon"], low=0.0, high=0.5)
        self.tie_threshold = _number("tie_threshold", settings["tie_threshold"], low=0.0)
        self.skip_threshold = (
            None if settings["skip_threshold"] is None else _number("skip_threshold", settings["skip_threshold"])
        )
        self.bias = _number("bias", settings["bias"])
        self.length_bias = _number("length_bias", settings["length_bias"])
        if normalize not in NORMALIZATIONS:
            raise ConfigError(unknown_name_message("normalisation", str(normalize), NORMALIZATIONS))
        if normalize == "range" and not self.truth.has_range:
            raise ConfigError(no_range_message(self.truth.name))
        self.normalize = normalize
        if normalize == "range":
            self.rating_range: tuple[float, float] | None = (0.0, 1.0)
        elif self.truth.has_range and not self.truth.per_token:
            self.rating_range = (float(self.truth.low), float(self.truth.high))  # type: ignore[arg-type]
        else:
            self.rating_range = None
        if likert is not None:
            if isinstance(likert, bool) or not isinstance(likert, (int, np.integer)) or likert < 2:
                raise ConfigError(f"likert must be an integer number of levels >= 2 (e.g. 5), got {likert!r}")
            if self.rating_range is None:
                raise ConfigError(
                    f"likert ratings need a bounded rating scale, and ground truth {self.truth.name!r} has none "
                    f"with normalize={normalize!r}; use normalize='range' with a truth of known range"
                )
        self.likert = None if likert is None else int(likert)
        self.seed = seed
        self.deterministic = seed is not None
        self._rng = np.random.default_rng(seed)

    # -- the annotator's view of a batch -------------------------------------------------------------------
    def reset_rng(self, seed: int | np.random.SeedSequence | None = None) -> None:
        """Restart the random stream (from ``seed``, or from the constructor's seed when ``None``)."""
        self._rng = np.random.default_rng(self.seed if seed is None else seed)

    def state_dict(self) -> dict:
        """The random stream's position (JSON-able), so a checkpointed experiment resumes exactly."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]

    def _judge(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(raw ground truth, perceived utility) per completion."""
        raw, unit = self.truth.evaluate(prompts, completions, normalize=self.normalize == "range")
        if self.length_bias:
            words = word_counts(completions)
            unit = unit + self.length_bias * words / (words + LENGTH_BIAS_HALF_WORDS)
        return raw, unit

    def _to_likert(self, rating: np.ndarray) -> np.ndarray:
        low, high = self.rating_range  # type: ignore[misc]
        fraction = np.clip((rating - low) / (high - low), 0.0, 1.0)
        levels = float(self.likert or 1)
        return np.minimum(np.floor(fraction * levels) + 1.0, levels)

    def _noiseless_rating(self, prompts: Sequence[str], completions: Sequence[str], raw: np.ndarray) -> np.ndarray:
        rating = self.truth.normalize(raw, completions) if self.normalize == "range" else raw
        return self._to_likert(rating) if self.likert else rating

    def _ratings(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(noisy ratings, raw ground truth)."""
        raw, utility = self._judge(prompts, completions)
        n = len(completions)
        logistic = self._rng.logistic(size=n)
        mistake = self._rng.random(n) < self.epsilon
        uniform = self._rng.random(n)
        if self.beta == 0:
            if self.rating_range is None:
                raise ConfigError("ratings at beta=0 are uniformly random and need a bounded rating scale")
            rating = np.full(n, np.nan)
            mistake = np.ones(n, dtype=bool)
        elif math.isinf(self.beta):
            rating = utility
        else:
            rating = utility + logistic / self.beta
        if self.rating_range is not None:
            low, high = self.rating_range
            rating = np.where(mistake, low + uniform * (high - low), np.clip(rating, low, high))
        elif mistake.any() and n > 1:
            rating = np.where(mistake, rating[self._rng.integers(n, size=n)], rating)
        return (self._to_likert(rating) if self.likert else rating), raw

    # -- the provider API -----------------------------------------------------------------------------------
    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        """The annotator's rating of each completion (noisy below β = inf; see the class docstring)."""
        _check_lengths(prompts, completions)
        return self._ratings(prompts, completions)[0].tolist()

    def score_with_info(
        self, prompts: list[str], completions: list[str], **row: Any
    ) -> tuple[list[Score], dict[str, list[Any]]]:
        """Ratings plus ``true_score`` (the raw, noiseless ground truth, e.g. the VADER compound) and
        ``true_rating`` (the noiseless rating on the same scale as the score)."""
        _check_lengths(prompts, completions)
        rating, raw = self._ratings(prompts, completions)
        extras = {
            "true_score": raw.tolist(),
            "true_rating": self._noiseless_rating(prompts, completions, raw).tolist(),
        }
        return rating.tolist(), extras

    def compare(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **row: Any
    ) -> list[Score]:
        """Hard preference labels: 1.0 (a), 0.0 (b), 0.5 (tie), ``None`` (skip); see the class docstring."""
        _check_lengths(prompts, completions_a, completions_b)
        n = len(prompts)
        _, utility = self._judge(list(prompts) * 2, list(completions_a) + list(completions_b))
        u_a, u_b = utility[:n], utility[n:]
        delta = u_a - u_b + self.bias
        draw = self._rng.random(n)
        mistake = self._rng.random(n) < self.epsilon
        label = (draw < _bt_probability(delta, self.beta)).astype(np.float64)
        label = np.where(mistake, 1.0 - label, label)
        label = np.where(np.abs(delta) < self.tie_threshold, 0.5, label)
        if self.skip_threshold is None:
            return label.tolist()
        skip = np.maximum(u_a, u_b) < self.skip_threshold
        return [None if s else v for s, v in zip(skip.tolist(), label.tolist(), strict=True)]

    def rank(self, prompt: str, completions: list[str], **row: Any) -> list[int]:
        """Indices of ``completions`` from best to worst: a Plackett–Luce sample (see the class docstring)."""
        k = len(completions)
        if k == 0:
            return []
        _, utility = self._judge([prompt] * k, list(completions))
        gumbel = self._rng.gumbel(size=k)
        tiebreak = self._rng.random(k)
        mistake = self._rng.random() < self.epsilon
        swap_at = int(self._rng.integers(max(k - 1, 1)))
        if math.isinf(self.beta):
            order = np.lexsort((tiebreak, -utility))
        else:
            order = np.argsort(-(self.beta * utility + gumbel), kind="stable")
        order = order.tolist()
        if mistake and k > 1:
            order[swap_at], order[swap_at + 1] = order[swap_at + 1], order[swap_at]
        return order

    def __repr__(self) -> str:
        return (
            f"SimulatedHuman(truth={self.truth.name!r}, preset={self.preset!r}, beta={self.beta}, "
            f"epsilon={self.epsilon}, tie_threshold={self.tie_threshold}, skip_threshold={self.skip_threshold}, "
            f"bias={self.bias}, length_bias={self.length_bias}, likert={self.likert}, seed={self.seed!r})"
        )


PANEL_MODES = ("majority", "mean", "random")
_DEFAULT_PANEL_TRUTHS: tuple[Any, ...] = ("sentiment", {"name": "length", "target": 20})


class SimulatedPanel(RewardProvider):
    """Several simulated annotators who weigh the ground truths differently, so that they disagree.

    With ``annotators=n`` each member is a :class:`SimulatedHuman` whose ground truth is a
    :class:`~rlhf_gym.ground_truth.WeightedTruth` over ``truths`` with its own row of ``weights``. The default
    rows spread the members evenly between two truths (weights ``(1 − t, t)``, ``t = 0, 1/(n−1), …, 1``: by
    default from "only tone matters" to "only length matters"); with three or more truths they are Dirichlet(1)
    draws from ``seed``. Members may also be given one by one, as :class:`SimulatedHuman` objects or as dicts of
    its arguments.

    The panel answers by ``mode``:

    - ``"majority"``: :meth:`compare` returns the majority label of the members who answered (1.0/0.0, 0.5 on a
      split vote, ``None`` when all skipped); :meth:`score` the median rating; :meth:`rank` the Borda order.
    - ``"mean"``: the mean of the answered labels (a soft label) and the mean rating; :meth:`rank` by Borda.
    - ``"random"``: each query goes to one member drawn at random.

    Args:
        annotators: the number of members (default 3, or one per row of ``weights``), or the members themselves.
        truths: ground-truth specs the members weigh (for ``annotators=n``).
        weights: one row of weights over ``truths`` per member (overrides the default spread).
        mode: ``"majority"``, ``"mean"`` or ``"random"``.
        seed: seeds the panel's draws and, through spawned seeds, each member's (unless a member has its own).
        **human_kwargs: shared :class:`SimulatedHuman` arguments (``preset``, ``beta``, ``epsilon``, ...).
    """

    def __init__(
        self,
        annotators: int | Sequence[SimulatedHuman | Mapping[str, Any]] | None = None,
        truths: Sequence[Any] = _DEFAULT_PANEL_TRUTHS,
        weights: Sequence[Sequence[float]] | None = None,
        mode: str = "majority",
        seed: int | None = 0,
        **human_kwargs: Any,
    ):
        if mode not in PANEL_MODES:
            raise ConfigError(unknown_name_message("panel mode", str(mode), PANEL_MODES))
        if "ground_truth" in human_kwargs:
            raise ConfigError("a panel's members judge by truths= and weights=, not one ground_truth=")
        self.mode = mode
        self.seed = seed
        if annotators is None:
            annotators = 3 if weights is None else len(weights)
        if isinstance(annotators, (int, np.integer)) and not isinstance(annotators, bool):
            count = int(annotators)
            if count < 1 or (weights is not None and len(weights) != count):
                raise ConfigError(
                    f"a panel needs >= 1 annotators and one weight row per annotator; got annotators={annotators}, "
                    f"{len(weights) if weights is not None else 0} weight rows"
                )
            seeds = np.random.SeedSequence(seed).spawn(count + 1)
            parts = [get_ground_truth(t) for t in truths]
            rows = self._weight_rows(count, len(parts), weights, seeds[-1])
            self.members = [
                SimulatedHuman(
                    WeightedTruth([(t, w) for t, w in zip(parts, row, strict=True) if w != 0]),
                    seed=seeds[i] if seed is not None else None,
                    **human_kwargs,
                )
                for i, row in enumerate(rows)
            ]
            self.weights: np.ndarray | None = rows
        elif isinstance(annotators, Sequence) and annotators:
            seeds = np.random.SeedSequence(seed).spawn(len(annotators) + 1)
            self.members = []
            for i, member in enumerate(annotators):
                if isinstance(member, SimulatedHuman):
                    self.members.append(member)
                elif isinstance(member, Mapping):
                    kwargs = {"seed": seeds[i] if seed is not None else None, **human_kwargs, **member}
                    self.members.append(SimulatedHuman(**kwargs))
                else:
                    raise ConfigError(
                        f"panel member {i} must be a SimulatedHuman or a dict of its arguments, got "
                        f"{type(member).__name__}"
                    )
            self.weights = None
        else:
            raise ConfigError(
                f"annotators must be a number of members or a non-empty list of members, got {annotators!r}"
            )
        for i, member in enumerate(self.members):
            member.name = member.name or f"annotator-{i}"
        self._rng = np.random.default_rng(seeds[-1])
        self.deterministic = seed is not None and all(m.deterministic for m in self.members)

    def state_dict(self) -> dict:
        """Random-stream positions of the panel and every member."""
        return {"rng": self._rng.bit_generator.state, "members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
        for member, member_state in zip(self.members, state["members"]):
            member.load_state_dict(member_state)

    @staticmethod
    def _weight_rows(
        count: int, k: int, weights: Sequence[Sequence[float]] | None, seed: np.random.SeedSequence
    ) -> np.ndarray:
        if weights is not None:
            rows = np.asarray(weights, dtype=np.float64)
            if rows.ndim != 2 or rows.shape[1] != k or not np.all(np.isfinite(rows)):
                raise ConfigError(
                    f"weights must be {count} rows of {k} finite numbers (one per truth), got shape {rows.shape}"
                )
            if np.any(np.all(rows == 0, axis=1)):
                raise ConfigError("every annotator needs at least one non-zero weight")
            return rows
        if k == 1:
            return np.ones((count, 1))
        if k == 2:
            t = np.linspace(0.0, 1.0, count) if count > 1 else np.array([0.5])
            return np.stack([1.0 - t, t], axis=1)
        return np.random.default_rng(seed).dirichlet(np.ones(k), size=count)

    def _pick(self, n: int) -> np.ndarray:
        return self._rng.integers(len(self.members), size=n)

    def _combine_labels(self, answers: list[list[Score]]) -> list[Score]:
        if self.mode == "random":
            who = self._pick(len(answers[0]))
            return [answers[w][j] for j, w in enumerate(who.tolist())]
        out: list[Score] = []
        for votes in zip(*answers, strict=True):
            given = [v for v in votes if v is not None]
            if not given:
                out.append(None)
                continue
            mean = float(np.mean(given))
            out.append(mean if self.mode == "mean" else (1.0 if mean > 0.5 else 0.0 if mean < 0.5 else 0.5))
        return out

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        """The panel's rating: median (majority), mean, or one random member's rating per sample."""
        return self.score_with_info(prompts, completions, **row)[0]

    def score_with_info(
        self, prompts: list[str], completions: list[str], **row: Any
    ) -> tuple[list[Score], dict[str, list[Any]]]:
        """Ratings plus ``annotator_scores`` (every member's rating), ``true_score`` (the mean of the members'
        noiseless ratings: the panel's consensus objective) and, in random mode, ``annotator`` (who answered)."""
        results = [m.score_with_info(prompts, completions, **row) for m in self.members]
        scores = np.array([r[0] for r in results], dtype=np.float64)  # (members, samples)
        truth = np.array([r[1]["true_rating"] for r in results], dtype=np.float64)
        extras: dict[str, list[Any]] = {
            "annotator_scores": scores.T.tolist(),
            "true_score": truth.mean(axis=0).tolist(),
        }
        if self.mode == "random":
            who = self._pick(len(prompts))
            combined = scores[who, np.arange(len(prompts))]
            extras["annotator"] = who.tolist()
        elif self.mode == "mean":
            combined = scores.mean(axis=0)
        else:
            combined = np.median(scores, axis=0)
        return combined.tolist(), extras

    def compare(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **row: Any
    ) -> list[Score]:
        """The panel's label per pair (see the class docstring for each mode)."""
        answers = [m.compare(prompts, completions_a, completions_b, **row) for m in self.members]
        return self._combine_labels(answers)

    def rank(self, prompt: str, completions: list[str], **row: Any) -> list[int]:
        """One random member's ranking (random mode) or the Borda order of all members' rankings."""
        rankings = [m.rank(prompt, completions, **row) for m in self.members]
        if self.mode == "random":
            return rankings[int(self._pick(1)[0])]
        position = np.zeros(len(completions))
        for order in rankings:
            position[np.asarray(order, dtype=np.int64)] += np.arange(len(order))
        return np.argsort(position, kind="stable").tolist()

    def agreement_matrix(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **row: Any
    ) -> np.ndarray:
        """How often each pair of members gives the same label, over the pairs both answered.

        Returns:
            A symmetric ``(members, members)`` array of agreement rates in ``[0, 1]`` (1 on the diagonal where a
            member answered anything; NaN where two members never both answered).
        """
        answers = np.array(
            [
                [np.nan if v is None else v for v in m.compare(prompts, completions_a, completions_b, **row)]
                for m in self.members
            ],
            dtype=np.float64,
        ).reshape(len(self.members), len(prompts))
        answered = ~np.isnan(answers)
        both = answered[:, None, :] & answered[None, :, :]
        same = (answers[:, None, :] == answers[None, :, :]) & both
        counts = both.sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, same.sum(axis=2) / np.maximum(counts, 1), np.nan)

    def __repr__(self) -> str:
        return f"SimulatedPanel(mode={self.mode!r}, members={len(self.members)}, seed={self.seed!r})"


def _number(
    name: str, value: Any, low: float | None = None, high: float | None = None, allow_inf: bool = False
) -> float:
    """``value`` as a float, or a :class:`ConfigError` saying which range ``name`` must lie in."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    valid = not math.isnan(number) and (allow_inf or math.isfinite(number))
    valid = valid and (low is None or number >= low) and (high is None or number <= high)
    if not valid:
        bounds = f"[{-math.inf if low is None else low:g}, {math.inf if high is None else high:g}]"
        detail = {"beta": " (inf = always the better one)", "epsilon": " (a mistake rate; 0.5 is a coin flip)"}
        raise ConfigError(f"{name} must lie in {bounds}{detail.get(name, '')}, got {value!r}")
    return number


def _check_lengths(prompts: Sequence[str], *columns: Sequence[str]) -> None:
    for column in columns:
        if len(column) != len(prompts):
            raise ConfigError(f"got {len(prompts)} prompts but {len(column)} completions; give one per prompt")


def sentiment_reward(**kwargs: Any) -> GroundTruthReward:
    """Noiseless VADER compound sentiment of the completion, in [-1, 1]."""
    return GroundTruthReward(get_ground_truth("sentiment", **kwargs))


def length_reward(**kwargs: Any) -> GroundTruthReward:
    """Noiseless closeness to a target length (target=20 words by default), in [-1, 0]."""
    return GroundTruthReward(get_ground_truth("length", **kwargs))


def keyword_reward(**kwargs: Any) -> GroundTruthReward:
    """Noiseless keyword/regex presence (or count) in the completion."""
    return GroundTruthReward(get_ground_truth("keyword", **kwargs))


@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("simulated-human", SimulatedHuman)
    register("simulated-panel", SimulatedPanel)
    register("sentiment", sentiment_reward)
    register("length", length_reward)
    register("keyword", keyword_reward)
