"""Tests of the simulated annotators (``simulated-human``, ``simulated-panel``) and their noise model.

Most tests judge synthetic texts whose ground truth is the number written in them, so thousands of pairs are
scored in milliseconds and the expected statistics are known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from rlhf_gym_plugins.simulated_human import PRESETS, SimulatedHuman, SimulatedPanel

import rlhf_gym
from rlhf_gym.errors import ConfigError, UnknownNameError
from rlhf_gym.ground_truth import CallableTruth

N_PAIRS = 5000


def number_truth(scale: float = 1.0, offset: float = 0.0, index: int = 0) -> CallableTruth:
    """Ground truth = ``scale * x + offset`` where x is the ``index``-th number written in the text, in [0, 1]."""

    def read(prompts, completions):
        return [scale * float(c.split()[index]) + offset for c in completions]

    return CallableTruth(read, low=offset, high=scale + offset, name=f"number{index}")


def as_texts(values: np.ndarray) -> list[str]:
    return [repr(float(v)) for v in values]


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    a, b = rng.random(N_PAIRS), rng.random(N_PAIRS)
    return ["prompt"] * N_PAIRS, as_texts(a), as_texts(b), a, b


def labels(answers: list) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in answers], dtype=np.float64)


def agreement(answers: list, a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of hard labels that pick the truly better completion."""
    values = labels(answers)
    hard = (values == 0.0) | (values == 1.0)
    return float(np.mean(values[hard] == (a[hard] > b[hard])))


# -- the three required statistical properties -----------------------------------------------------------------
def test_rational_annotator_agrees_with_its_ground_truth(pairs):
    prompts, ta, tb, a, b = pairs
    human = SimulatedHuman(number_truth(), beta=math.inf, epsilon=0.0, seed=0)
    answers = human.compare(prompts, ta, tb)
    assert set(answers) <= {0.0, 1.0}
    assert agreement(answers, a, b) >= 0.99


def test_mistake_rate_is_the_measured_disagreement(pairs):
    prompts, ta, tb, a, b = pairs
    human = SimulatedHuman(number_truth(), beta=math.inf, epsilon=0.2, seed=0)
    disagreement = 1.0 - agreement(human.compare(prompts, ta, tb), a, b)
    assert disagreement == pytest.approx(0.2, abs=0.03)


def test_ties_and_skips_appear_exactly_at_their_thresholds(pairs):
    prompts, ta, tb, a, b = pairs
    human = SimulatedHuman(number_truth(), tie_threshold=0.1, skip_threshold=0.25, seed=0)
    values = labels(human.compare(prompts, ta, tb))
    skipped = np.isnan(values)
    np.testing.assert_array_equal(skipped, np.maximum(a, b) < 0.25)
    tied = values == 0.5
    np.testing.assert_array_equal(tied, ~skipped & (np.abs(a - b) < 0.1))
    assert agreement(values.tolist(), a, b) == 1.0
    # with uniform scores the rates are known: P(max < s) = s², P(|Δ| < t) = 2t − t²
    assert skipped.mean() == pytest.approx(0.25**2, abs=0.015)
    ties_only = labels(SimulatedHuman(number_truth(), tie_threshold=0.1, seed=0).compare(prompts, ta, tb))
    assert np.mean(ties_only == 0.5) == pytest.approx(2 * 0.1 - 0.1**2, abs=0.02)


# -- Boltzmann rationality --------------------------------------------------------------------------------------
def test_boltzmann_choice_matches_bradley_terry_probability():
    n = 4000
    gap = 0.1
    human = SimulatedHuman(number_truth(), beta=10.0, seed=3)
    answers = labels(human.compare(["p"] * n, as_texts(np.full(n, 0.5 + gap)), as_texts(np.full(n, 0.5))))
    assert answers.mean() == pytest.approx(1 / (1 + math.exp(-10.0 * gap)), abs=0.025)


def test_beta_zero_chooses_at_random(pairs):
    prompts, ta, tb, a, b = pairs
    human = SimulatedHuman(number_truth(), beta=0.0, seed=0)
    assert agreement(human.compare(prompts, ta, tb), a, b) == pytest.approx(0.5, abs=0.03)


def test_normalisation_makes_beta_mean_the_same_for_truths_with_different_ranges(pairs):
    prompts, ta, tb, a, b = pairs
    small = number_truth()  # [0, 1]
    large = number_truth(scale=200.0, offset=-100.0)  # [-100, 100]
    normalised = [SimulatedHuman(t, preset="noisy", seed=5).compare(prompts, ta, tb) for t in (small, large)]
    assert normalised[0] == normalised[1]  # same seed, same normalised gaps: the very same answers
    raw = [SimulatedHuman(t, preset="noisy", seed=5, normalize="none").compare(prompts, ta, tb) for t in (small, large)]
    assert agreement(raw[1], a, b) - agreement(raw[0], a, b) > 0.1  # unnormalised, β means something else


def test_position_bias_favours_the_first_completion(pairs):
    prompts, ta, tb, a, b = pairs
    biased = labels(SimulatedHuman(number_truth(), bias=0.2, seed=0).compare(prompts, ta, tb))
    np.testing.assert_array_equal(biased == 1.0, a - b + 0.2 > 0)


def test_length_bias_prefers_longer_text_between_equally_good_ones():
    human = SimulatedHuman(number_truth(), length_bias=0.1, seed=0)
    short, long = "0.5", "0.5 " + " ".join(["filler"] * 30)
    assert human.compare(["p", "p"], [short, long], [long, short]) == [0.0, 1.0]
    neutral = SimulatedHuman(number_truth(), seed=0)
    many = neutral.compare(["p"] * 400, [short] * 400, [long] * 400)
    assert 0.35 < np.mean(many) < 0.65  # without bias: a coin flip between equal utilities


# -- presets ----------------------------------------------------------------------------------------------------
def test_presets_resolve_and_behave_differently(pairs):
    prompts, ta, tb, a, b = pairs
    results = {}
    for preset in PRESETS:
        human = SimulatedHuman(number_truth(), preset=preset, seed=0)
        answers = human.compare(prompts, ta, tb)
        values = labels(answers)
        results[preset] = {
            "agreement": agreement(answers, a, b),
            "ties": float(np.mean(values == 0.5)),
            "skips": float(np.mean(np.isnan(values))),
        }
    assert results["oracle"] == {"agreement": 1.0, "ties": 0.0, "skips": 0.0}
    assert 0.75 < results["noisy"]["agreement"] < 0.95
    assert results["mistake"]["agreement"] == pytest.approx(0.9, abs=0.02)
    assert results["equal"]["ties"] == pytest.approx(2 * 0.05 - 0.05**2, abs=0.015)
    assert results["equal"]["agreement"] == 1.0
    assert results["skip"]["skips"] == pytest.approx(0.3**2, abs=0.015)
    assert results["skip"]["agreement"] == 1.0


def test_explicit_arguments_override_the_preset(pairs):
    prompts, ta, tb, a, b = pairs
    human = SimulatedHuman(number_truth(), preset="mistake", epsilon=0.0, seed=0)
    assert (human.beta, human.epsilon) == (math.inf, 0.0)
    assert agreement(human.compare(prompts, ta, tb), a, b) == 1.0
    assert SimulatedHuman(number_truth(), preset="skip", skip_threshold=None).skip_threshold is None


def test_made_by_name_through_the_registry():
    human = rlhf_gym.make_reward("simulated-human", preset="noisy")
    assert isinstance(human, SimulatedHuman)
    assert human.name == "simulated-human" and human.beta == PRESETS["noisy"]["beta"]
    answers = human.compare(["Review:"] * 2, ["What a wonderful, lovely film!", "Dreadful."],
                            ["Dreadful.", "What a wonderful, lovely film!"])
    assert answers == [1.0, 0.0]
    panel = rlhf_gym.make_reward("simulated-panel", annotators=2)
    assert isinstance(panel, SimulatedPanel) and len(panel.members) == 2


# -- reproducibility --------------------------------------------------------------------------------------------
def test_same_seed_reproduces_every_answer_and_different_seeds_differ(pairs):
    prompts, ta, tb, _, _ = pairs

    def run(seed):
        human = SimulatedHuman(number_truth(), preset="noisy", epsilon=0.1, seed=seed)
        return human.compare(prompts, ta, tb), human.score(prompts, ta), human.rank("p", ta[:20])

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_reset_rng_replays_the_stream(pairs):
    prompts, ta, tb, _, _ = pairs
    human = SimulatedHuman(number_truth(), preset="noisy", seed=1)
    first = human.compare(prompts[:500], ta[:500], tb[:500])
    assert human.compare(prompts[:500], ta[:500], tb[:500]) != first  # the stream moves on
    human.reset_rng()
    assert human.compare(prompts[:500], ta[:500], tb[:500]) == first


def test_unseeded_annotator_is_marked_non_deterministic():
    assert SimulatedHuman(number_truth(), seed=0).deterministic is True
    assert SimulatedHuman(number_truth(), seed=None).deterministic is False


# -- ratings ----------------------------------------------------------------------------------------------------
def test_oracle_rating_is_the_normalised_ground_truth_with_raw_truth_in_extras():
    human = SimulatedHuman(number_truth(scale=10.0), seed=0)
    scores, extras = human.score_with_info(["p"] * 3, ["0.0", "0.25", "1.0"])
    assert scores == extras["true_rating"] == [0.0, 0.25, 1.0]
    assert extras["true_score"] == [0.0, 2.5, 10.0]


def test_noisy_ratings_scatter_around_the_truth_and_stay_in_range(pairs):
    prompts, ta, _, a, _ = pairs
    scores = np.array(SimulatedHuman(number_truth(), preset="noisy", seed=0).score(prompts, ta))
    assert np.all((scores >= 0) & (scores <= 1))
    assert 0.05 < np.mean(np.abs(scores - a)) < 0.2
    assert np.corrcoef(scores, a)[0, 1] > 0.8


def test_rating_mistakes_replace_that_share_of_ratings(pairs):
    prompts, ta, _, a, _ = pairs
    scores = np.array(SimulatedHuman(number_truth(), epsilon=0.3, seed=0).score(prompts, ta))
    assert np.mean(scores != a) == pytest.approx(0.3, abs=0.03)


def test_likert_levels_are_one_to_five_and_monotone_in_the_ground_truth(pairs):
    prompts, ta, _, a, _ = pairs
    levels = np.array(SimulatedHuman(number_truth(), likert=5, seed=0).score(prompts, ta))
    assert set(levels.tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(levels[np.argsort(a)]) >= 0)
    edges = SimulatedHuman(number_truth(), likert=5).score(["p"] * 4, ["0.0", "0.19", "0.2", "1.0"])
    assert edges == [1.0, 1.0, 2.0, 5.0]
    noisy = np.array(SimulatedHuman(number_truth(), preset="noisy", likert=5, seed=0).score(prompts, ta))
    assert set(noisy.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


# -- ranking ----------------------------------------------------------------------------------------------------
def test_rank_at_infinite_beta_sorts_by_ground_truth():
    rng = np.random.default_rng(0)
    human = SimulatedHuman(number_truth(), seed=0)
    for _ in range(20):
        values = rng.random(8)
        assert human.rank("p", as_texts(values)) == np.argsort(-values).tolist()


def test_rank_is_a_plackett_luce_sample():
    utilities = np.array([0.0, 0.1, 0.2])
    human = SimulatedHuman(number_truth(), beta=10.0, seed=0)
    firsts = np.bincount([human.rank("p", as_texts(utilities))[0] for _ in range(3000)], minlength=3) / 3000
    expected = np.exp(10.0 * utilities) / np.exp(10.0 * utilities).sum()
    np.testing.assert_allclose(firsts, expected, atol=0.03)


def test_rank_mistake_swaps_neighbours_like_a_flipped_comparison():
    human = SimulatedHuman(number_truth(), epsilon=0.2, seed=0)
    flipped = [human.rank("p", ["0.9", "0.1"]) == [1, 0] for _ in range(2000)]
    assert np.mean(flipped) == pytest.approx(0.2, abs=0.03)
    assert human.rank("p", []) == []


# -- panels -----------------------------------------------------------------------------------------------------
def two_number_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    values = np.random.default_rng(seed).random((n, 2))
    return [f"{x!r} {y!r}" for x, y in values.tolist()], values


def test_panel_members_weigh_truths_differently_and_disagree():
    texts_a, va = two_number_texts(2000, 1)
    texts_b, vb = two_number_texts(2000, 2)
    panel = SimulatedPanel(annotators=3, truths=[number_truth(index=0), number_truth(index=1)], seed=0)
    np.testing.assert_allclose(panel.weights, [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    matrix = panel.agreement_matrix(["p"] * 2000, texts_a, texts_b)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    np.testing.assert_allclose(matrix, matrix.T)
    # tone-only vs length-only judges of independent truths agree by chance; each agrees 75 % with the middle one
    assert matrix[0, 2] == pytest.approx(0.5, abs=0.04)
    assert matrix[0, 1] == pytest.approx(0.75, abs=0.04) and matrix[1, 2] == pytest.approx(0.75, abs=0.04)
    first = panel.members[0].compare(["p"] * 2000, texts_a, texts_b)
    assert agreement(first, va[:, 0], vb[:, 0]) == 1.0


def test_panel_majority_and_mean_combine_the_members_answers():
    truths = [number_truth(index=i) for i in range(3)]
    members = [SimulatedHuman(t) for t in truths]
    texts_a = ["0.9 0.9 0.1", "0.1 0.1 0.9", "0.9 0.1 0.1"]
    texts_b = ["0.1 0.1 0.9", "0.9 0.9 0.1", "0.1 0.9 0.9"]
    majority = SimulatedPanel(members, mode="majority")
    assert majority.compare(["p"] * 3, texts_a, texts_b) == [1.0, 0.0, 0.0]
    mean = SimulatedPanel(members, mode="mean")
    assert mean.compare(["p"] * 3, texts_a, texts_b) == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert majority.score(["p"], ["0.2 0.5 0.9"]) == [0.5]  # the median member
    assert mean.score(["p"], ["0.2 0.5 0.9"]) == pytest.approx([(0.2 + 0.5 + 0.9) / 3])
    assert majority.rank("p", ["0.1 0.1 0.1", "0.9 0.9 0.1", "0.5 0.5 0.5"]) == [1, 2, 0]


def test_panel_majority_skips_only_when_every_member_skips():
    members = [SimulatedHuman(number_truth(index=i), skip_threshold=0.5) for i in range(2)]
    panel = SimulatedPanel(members, mode="majority")
    assert panel.compare(["p", "p"], ["0.1 0.1", "0.1 0.9"], ["0.2 0.2", "0.2 0.2"]) == [None, 1.0]


def test_panel_random_mode_answers_with_one_drawn_member_per_query():
    texts, _ = two_number_texts(400, 3)
    panel = SimulatedPanel(annotators=3, truths=[number_truth(index=0), number_truth(index=1)], mode="random")
    scores, extras = panel.score_with_info(["p"] * 400, texts)
    who = np.array(extras["annotator"])
    assert set(who.tolist()) == {0, 1, 2}
    per_member = np.array(extras["annotator_scores"])
    np.testing.assert_allclose(scores, per_member[np.arange(400), who])
    np.testing.assert_allclose(extras["true_score"], per_member.mean(axis=1))  # oracle members: noiseless


def test_panel_is_reproducible_and_accepts_member_dicts():
    texts_a, _ = two_number_texts(300, 4)
    texts_b, _ = two_number_texts(300, 5)
    spec = [{"ground_truth": number_truth(index=0)}, {"ground_truth": number_truth(index=1), "preset": "mistake"}]

    def run(seed):
        return SimulatedPanel(spec, mode="random", preset="noisy", seed=seed).compare(["p"] * 300, texts_a, texts_b)

    assert run(0) == run(0) != run(1)
    panel = SimulatedPanel(spec, preset="noisy")
    assert [m.preset for m in panel.members] == ["noisy", "mistake"]


def test_panel_with_three_truths_draws_weights_from_the_seed():
    truths = [number_truth(index=i) for i in range(3)]
    first = SimulatedPanel(annotators=4, truths=truths, seed=0).weights
    assert first.shape == (4, 3)
    np.testing.assert_allclose(first.sum(axis=1), 1.0)
    np.testing.assert_array_equal(first, SimulatedPanel(annotators=4, truths=truths, seed=0).weights)


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"preset": "noisey"}, UnknownNameError, r"Did you mean 'noisy'\?.*Known simulated-human presets: equal, "),
        ({"ground_truth": "tone"}, UnknownNameError, r"Unknown ground truth 'tone'.*Known ground truths:"),
        ({"epsilon": 0.6}, ConfigError, r"epsilon must lie in \[0, 0.5\]"),
        ({"epsilon": -0.1}, ConfigError, r"epsilon must lie in \[0, 0.5\]"),
        ({"beta": -1.0}, ConfigError, r"beta must lie in \[0, inf\]"),
        ({"beta": "high"}, ConfigError, "beta must be a number"),
        ({"tie_threshold": float("nan")}, ConfigError, "tie_threshold must lie in"),
        ({"likert": 1}, ConfigError, "likert must be an integer number of levels >= 2"),
        ({"normalize": "minmax"}, ConfigError, "Known normalisations: none, range"),
    ],
)
def test_bad_settings_raise_one_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        SimulatedHuman(**kwargs)


def test_truth_without_range_needs_normalize_none():
    def unbounded(prompts, completions):
        return [float(len(c)) for c in completions]

    with pytest.raises(ConfigError, match="no known range.*normalize='none'"):
        SimulatedHuman(unbounded)
    human = SimulatedHuman(unbounded, normalize="none")
    assert human.compare(["p"], ["long text"], ["short"]) == [1.0]
    with pytest.raises(ConfigError, match="likert ratings need a bounded rating scale"):
        SimulatedHuman(unbounded, normalize="none", likert=5)


def test_mismatched_batch_lengths_are_an_error():
    human = SimulatedHuman(number_truth())
    with pytest.raises(ConfigError, match="got 2 prompts but 1 completions"):
        human.compare(["p", "p"], ["0.1"], ["0.2", "0.3"])


def test_bad_panel_settings_raise_clear_errors():
    with pytest.raises(ConfigError, match="Did you mean 'majority'"):
        SimulatedPanel(mode="majorty")
    with pytest.raises(ConfigError, match="one weight row per annotator"):
        SimulatedPanel(annotators=3, weights=[[1.0, 0.0]])
    with pytest.raises(ConfigError, match="rows of 2 finite numbers"):
        SimulatedPanel(weights=[[1.0, 0.0, 0.0]])
    with pytest.raises(ConfigError, match="truths= and weights="):
        SimulatedPanel(ground_truth="sentiment")
    with pytest.raises(ConfigError, match="member 0 must be a SimulatedHuman"):
        SimulatedPanel(["sentiment"])
