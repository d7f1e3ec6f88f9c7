"""Preference collection: pairs within each prompt's k samples, never asked twice, sides randomised, answers stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_gym
from rlhf_gym.collect import collect_preferences
from rlhf_gym.errors import ConfigError
from rlhf_gym.preference_store import PreferenceStore
from rlhf_gym.providers import RewardProvider
from rlhf_gym.tiny import random_tiny_model, review_prompts


class LengthJudge(RewardProvider):
    """Prefers the longer completion; counts its batched calls."""

    def __init__(self) -> None:
        self.name = "length-judge"
        self.compare_calls: list[int] = []
        self.rank_calls = 0

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[float | None]:
        return [float(len(c)) for c in completions]

    def compare(self, prompts, completions_a, completions_b, **row):
        self.compare_calls.append(len(prompts))
        return [1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5
                for a, b in zip(completions_a, completions_b)]

    def rank(self, prompt, completions, **row):
        self.rank_calls += 1
        return sorted(range(len(completions)), key=lambda i: -len(completions[i]))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return random_tiny_model(tmp_path_factory.mktemp("collect") / "policy", n_layer=2, n_embd=64, n_head=2)


@pytest.fixture(scope="module")
def policy(model_path: str):
    torch.manual_seed(0)
    return rlhf_gym.Policy.from_pretrained(model_path, value_head=False)


@pytest.fixture
def env(model_path: str):
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=model_path, model=model_path, prompts=review_prompts(48),
                   reward=lambda prompts, completions, **kw: [0.0] * len(prompts), max_new_tokens=8)
    yield env
    env.close()


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(tmp_path / "prefs.db") as s:
        yield s


def test_one_batched_compare_call_and_every_answer_is_recorded(policy, env, store) -> None:
    judge = LengthJudge()
    stats = collect_preferences(policy, env, judge, store, num_prompts=12, k=3, pairs_per_prompt=2, seed=1)
    assert judge.compare_calls == [stats.asked]  # one call for the whole batch
    assert stats.asked == len(stats.query_ids) == stats.answered + stats.skipped > 0
    assert stats.prompts == 12 and stats.completions == 36
    assert store.stats()["answered"] == stats.asked
    for query, answer in store.answered_pairs(include_ties=True):
        assert answer.annotator == answer.source == "length-judge"
        a, b = query.completion_a, query.completion_b
        assert answer.label == (1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5)
        assert query.meta["selection"] == "random"


def test_never_asks_the_same_pair_twice_across_calls(policy, env, store) -> None:
    judge = LengthJudge()
    first = collect_preferences(policy, env, judge, store, num_prompts=8, k=3, pairs_per_prompt=3, seed=5)
    again = collect_preferences(policy, env, judge, store, num_prompts=8, k=3, pairs_per_prompt=3, seed=5)
    assert first.asked > 0
    assert again.asked == 0  # same seed: same samples, every pair already in the store
    assert again.already_asked == first.asked
    fresh = collect_preferences(policy, env, judge, store, num_prompts=8, k=3, pairs_per_prompt=3, seed=6)
    keys = {(q.prompt, frozenset((q.completion_a, q.completion_b))) for q, _ in store.answered_pairs(True)}
    assert len(keys) == store.count() == first.asked + fresh.asked


def test_sides_are_randomised_about_half_the_time(policy, env, store) -> None:
    stats = collect_preferences(policy, env, LengthJudge(), store, num_prompts=96, k=2, seed=3)
    assert stats.asked >= 80
    assert 0.35 < stats.swapped / stats.asked < 0.65
    # the first-sampled completion is shown as `a` only about half the time, so a first-position bias averages out
    wins_a = np.mean([ans.label == 1.0 for _, ans in store.answered_pairs()])
    assert 0.3 < wins_a < 0.7


def test_rank_feedback_labels_pairs_from_each_ranking(policy, env, store) -> None:
    judge = LengthJudge()
    stats = collect_preferences(policy, env, judge, store, num_prompts=6, k=4, pairs_per_prompt=2, seed=2,
                                feedback="rank")
    assert judge.compare_calls == [] and 0 < judge.rank_calls <= 6
    for query, answer in store.answered_pairs(include_ties=True):
        a, b = query.completion_a, query.completion_b
        if len(a) != len(b):
            assert answer.label == (1.0 if len(a) > len(b) else 0.0)
    assert stats.answered == stats.asked


def test_skipped_answers_are_stored_as_skips(policy, env, store) -> None:
    def never_sure(prompts, completions, **kw):
        return [None] * len(prompts)

    class Unsure(LengthJudge):
        def compare(self, prompts, completions_a, completions_b, **row):
            return never_sure(prompts, completions_a)

    stats = collect_preferences(policy, env, Unsure(), store, num_prompts=4, k=2, seed=0)
    assert stats.skipped == stats.asked > 0 and stats.answered == 0
    assert store.stats()["answered"] == stats.asked and store.pairs() == []


class FakeEnsemble:
    """Two members that agree on every completion except those containing the letter 'e'; records its input."""

    num_members = 2

    def __init__(self) -> None:
        self.seen: list[str] = []

    def member_rewards(self, prompts, completions, batch_size: int = 64) -> torch.Tensor:
        self.seen.extend(completions)
        base = torch.tensor([float(len(c)) for c in completions])
        spread = torch.tensor([5.0 * c.count("e") for c in completions])
        return torch.stack([base + spread, base - spread])


def _pair_std(rm: FakeEnsemble, a: str, b: str) -> float:
    rewards = FakeEnsemble.member_rewards(rm, [], [a, b])
    return float(torch.sigmoid(rewards[:, 0] - rewards[:, 1]).std())


def test_disagreement_selection_asks_the_most_disputed_pair(policy, env, store) -> None:
    rm, k = FakeEnsemble(), 4
    stats = collect_preferences(policy, env, LengthJudge(), store, num_prompts=8, k=k, pairs_per_prompt=1, seed=4,
                                selection="disagreement", reward_model=rm)
    groups = [rm.seen[i:i + k] for i in range(0, 8 * k, k)]
    asked = [(q.completion_a, q.completion_b) for q, _ in store.answered_pairs(include_ties=True)]
    assert stats.asked == len(asked) > 0
    disputed = 0
    for a, b in asked:
        group = next(g for g in groups if a in g and b in g)
        best = max(_pair_std(rm, x, y) for i, x in enumerate(group) for y in group[i + 1:] if x != y)
        assert _pair_std(rm, a, b) == pytest.approx(best)
        disputed += best > 0
    assert disputed > 0  # the test is not vacuous: some groups had a pair the members disagreed on


def test_disagreement_picks_highest_std_pair_among_candidates(policy, env, store) -> None:
    from rlhf_gym import collect

    candidates = [[(0, 1), (0, 2), (1, 2)]]
    rm = FakeEnsemble()
    completions = ["aaaa", "aaaa e", "bbbb"]  # only pairs with the 'e' completion are disputed
    std = collect._disagreement(rm, ["p"] * 3, completions, 3, candidates)[0]
    assert std[1] < std[0] and std[1] < std[2]  # (0, 2) has no 'e': the members agree on it


def test_disagreement_without_an_ensemble_is_a_clear_error(policy, env, store) -> None:
    class Single(FakeEnsemble):
        num_members = 1

    with pytest.raises(ConfigError, match="ensemble_size >= 2"):
        collect_preferences(policy, env, LengthJudge(), store, num_prompts=2, selection="disagreement",
                            reward_model=Single())
    with pytest.raises(ConfigError, match="reward_model="):
        collect_preferences(policy, env, LengthJudge(), store, num_prompts=2, selection="disagreement")


def test_bad_settings_are_rejected_with_the_valid_range(policy, env, store) -> None:
    with pytest.raises(ConfigError, match=r"1\.\.3"):
        collect_preferences(policy, env, LengthJudge(), store, num_prompts=2, k=3, pairs_per_prompt=4)
    with pytest.raises(ConfigError, match="k must be"):
        collect_preferences(policy, env, LengthJudge(), store, num_prompts=2, k=1)
    with pytest.raises(ConfigError, match="Did you mean 'random'"):
        collect_preferences(policy, env, LengthJudge(), store, num_prompts=2, selection="randm")


# -- tie-aware collection ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie_margin", [0.0, 3.0])
def test_tie_margin_leaves_inseparable_pairs_unasked_and_keeps_the_score_gap(policy, env, store, tmp_path,
                                                                             tie_margin) -> None:
    judge = LengthJudge()
    with PreferenceStore(tmp_path / "all.db") as everyone:
        everything = collect_preferences(policy, env, LengthJudge(), everyone, num_prompts=24, k=3,
                                         pairs_per_prompt=3, seed=7)
    stats = collect_preferences(policy, env, judge, store, num_prompts=24, k=3, pairs_per_prompt=3, seed=7,
                                tie_margin=tie_margin)
    assert stats.inseparable > 0 and stats.asked + stats.inseparable == everything.asked
    assert judge.compare_calls == [stats.asked]
    pairs = store.answered_pairs(include_ties=True)
    assert len(pairs) == stats.asked and stats.ties == 0
    for query, answer in pairs:
        gap = len(query.completion_a) - len(query.completion_b)
        assert abs(gap) > tie_margin
        assert answer.meta["score_margin"] == pytest.approx(abs(gap))  # chosen minus rejected


def test_score_margin_is_negative_when_the_judge_picks_the_lower_scored_side(policy, env, store) -> None:
    class Contrary(LengthJudge):
        def compare(self, prompts, completions_a, completions_b, **row):
            return [1.0 - v for v in super().compare(prompts, completions_a, completions_b)]

    stats = collect_preferences(policy, env, Contrary(), store, num_prompts=8, k=2, seed=1, tie_margin=0.0)
    margins = [answer.meta["score_margin"] for _, answer in store.answered_pairs()]
    assert len(margins) == stats.asked > 0 and all(m < 0 for m in margins)
    assert all(row["margin"] == 1.0 for row in store.pairs())  # the training margin column is untouched


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_tie_margin_rejects_bad_values(policy, env, store, bad) -> None:
    with pytest.raises(ConfigError, match="tie_margin must be"):
        collect_preferences(policy, env, LengthJudge(), store, num_prompts=2, tie_margin=bad)


def test_tie_margin_refuses_a_judge_that_would_ask_a_person(policy, env, store) -> None:
    class Person(LengthJudge):
        deterministic = False

    with pytest.raises(ConfigError, match="without asking a person"):
        collect_preferences(policy, env, Person(), store, num_prompts=2, tie_margin=0.0)
    assert store.answered_pairs(include_ties=True) == []
