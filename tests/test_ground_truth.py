"""Tests of the ground-truth scorers in ``rlhf_gym.ground_truth``."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import rlhf_gym
from rlhf_gym import ground_truth as gt_module
from rlhf_gym.errors import ConfigError, RewardError, UnknownNameError
from rlhf_gym.ground_truth import (
    CallableTruth,
    GroundTruthReward,
    Keyword,
    Sentiment,
    TargetLength,
    WeightedTruth,
    get_ground_truth,
)


def _p(n: int) -> list[str]:
    return ["prompt"] * n


# -- sentiment -------------------------------------------------------------------------------------------------
def test_sentiment_is_the_vader_compound_and_orders_tone():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["I love this, it is wonderful!", "It is a table.", "Awful, I hate it."]
    values = Sentiment().values(_p(3), texts)
    expected = [SentimentIntensityAnalyzer().polarity_scores(t)["compound"] for t in texts]
    assert values.tolist() == pytest.approx(expected)
    assert values[0] > 0.5 and values[2] < -0.5 and values[1] == 0.0
    assert Sentiment.low == -1.0 and Sentiment.high == 1.0


class _CountingAnalyzer:
    def __init__(self):
        self.calls: list[str] = []

    def polarity_scores(self, text: str) -> dict[str, float]:
        self.calls.append(text)
        return {"compound": len(text) / 100}


def test_sentiment_runs_vader_once_per_distinct_text(monkeypatch):
    fake = _CountingAnalyzer()
    monkeypatch.setattr(gt_module, "_vader_analyzer", lambda: fake)
    truth = Sentiment()
    first = truth.values(_p(4), ["aa", "bbb", "aa", "aa"])
    assert first.tolist() == [0.02, 0.03, 0.02, 0.02]
    assert sorted(fake.calls) == ["aa", "bbb"]
    truth.values(_p(3), ["bbb", "aa", "cccc"])  # two remembered, one new
    assert sorted(fake.calls) == ["aa", "bbb", "cccc"]


def test_sentiment_without_memo_recomputes(monkeypatch):
    fake = _CountingAnalyzer()
    monkeypatch.setattr(gt_module, "_vader_analyzer", lambda: fake)
    truth = Sentiment(cache_size=0)
    truth.values(_p(2), ["aa", "aa"])
    truth.values(_p(1), ["aa"])
    assert fake.calls == ["aa", "aa"]


# -- target length -------------------------------------------------------------------------------------------
def test_target_length_peaks_at_target_and_clips_at_minus_one():
    truth = TargetLength(target=4)
    texts = ["", "a b", "a b c d", "a b c d e f", "a b c d e f g h", " ".join("x" * 20)]
    assert truth.values(_p(6), texts).tolist() == [-1.0, -0.5, 0.0, -0.5, -1.0, -1.0]


def test_target_length_counts_chars_and_tokens():
    assert TargetLength(target=10, unit="chars").values(_p(1), ["abcde"]).tolist() == [-0.5]

    class CharTokenizer:
        def encode(self, text, add_special_tokens=False):
            return [ord(ch) for ch in text] + ([0] if add_special_tokens else [])

    truth = TargetLength(target=4, unit="tokens", tokenizer=CharTokenizer())
    assert truth.values(_p(2), ["abcd", "ab"]).tolist() == [0.0, -0.5]


def test_target_length_rejects_bad_settings():
    with pytest.raises(ConfigError, match="positive"):
        TargetLength(target=0)
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        TargetLength(unit="tokens")
    with pytest.raises(ConfigError, match="Did you mean 'words'"):
        TargetLength(unit="word")


# -- keyword ---------------------------------------------------------------------------------------------------
def test_keyword_presence_matches_whole_words_case_insensitively():
    truth = Keyword(words=["great", "love it"])
    texts = ["A GREAT film", "greatly overrated", "I love it", "I love item", "nothing"]
    assert truth.values(_p(5), texts).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert Keyword(words="great", case_sensitive=True).values(_p(1), ["GREAT"]).tolist() == [0.0]


def test_keyword_regex_and_count_mode():
    truth = Keyword(regex=r"\d+", mode="count")
    assert truth.values(_p(2), ["1 and 22 and 333", "none"]).tolist() == [3.0, 0.0]
    assert Keyword(regex=re.compile("^yes")).values(_p(2), ["yes sir", "oh yes"]).tolist() == [1.0, 0.0]


def test_keyword_count_is_normalised_per_word_so_length_does_not_inflate_it():
    truth = Keyword(words=["good"], mode="count")
    texts = ["good bad", "good bad good bad good bad good bad", "bad bad bad bad"]
    raw, unit = truth.evaluate(_p(3), texts)
    assert raw.tolist() == [1.0, 4.0, 0.0]
    assert unit.tolist() == [0.5, 0.5, 0.0]


def test_keyword_rejects_bad_settings():
    with pytest.raises(ConfigError, match="exactly one of words"):
        Keyword()
    with pytest.raises(ConfigError, match="exactly one of words"):
        Keyword(words=["a"], regex="b")
    with pytest.raises(ConfigError, match="does not compile"):
        Keyword(regex="(")
    with pytest.raises(ConfigError, match="Known keyword modes: count, presence"):
        Keyword(words=["a"], mode="sum")


# -- callables and weighted sums -------------------------------------------------------------------------------
def test_callable_truth_batched_and_per_sample():
    batched = CallableTruth(lambda prompts, completions: [len(c) for c in completions], low=0, high=10)
    per_sample = CallableTruth(len, batched=False, low=0, high=10)
    texts = ["abc", "", "abcdefghijkl"]
    assert batched.values(_p(3), texts).tolist() == per_sample.values(_p(3), texts).tolist() == [3.0, 0.0, 12.0]
    assert batched.evaluate(_p(3), texts)[1].tolist() == [0.3, 0.0, 1.0]  # normalised and clipped


def test_callable_truth_returning_nan_or_wrong_count_is_an_error_naming_it():
    def broken(prompts, completions):
        return [math.nan] * len(completions)

    with pytest.raises(RewardError, match=r"'broken' returned nan at index 0"):
        CallableTruth(broken).values(_p(2), ["a", "b"])
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        CallableTruth(lambda p, c: [1.0], name="short").values(_p(2), ["a", "b"])


def test_truth_without_range_cannot_be_normalised():
    truth = CallableTruth(lambda p, c: [1.0] * len(c), name="free")
    assert not truth.has_range
    with pytest.raises(ConfigError, match="'free' has no known range.*normalize='none'"):
        truth.evaluate(_p(1), ["x"])
    assert truth.evaluate(_p(1), ["x"], normalize=False)[1].tolist() == [1.0]


def test_weighted_truth_sums_values_and_combines_normalised_parts_by_weight():
    length = TargetLength(target=2)  # [-1, 0]
    keyword = Keyword(words=["good"])  # [0, 1]
    truth = WeightedTruth([(length, 0.75), (keyword, 0.25)])
    texts = ["good good", "bad", "good"]
    raw, unit = truth.evaluate(_p(3), texts)
    assert raw.tolist() == pytest.approx([0.25, -0.375, -0.125])
    assert unit.tolist() == pytest.approx([1.0, 0.375, 0.625])
    assert (truth.low, truth.high) == (-0.75, 0.25)


def test_weighted_truth_with_a_negative_weight_still_maps_onto_unit_interval():
    keyword = Keyword(words=["bad"])
    truth = WeightedTruth({"sentiment": 1.0, keyword: -1.0})
    raw, unit = truth.evaluate(_p(2), ["bad", "wonderful"])
    assert raw[0] < 0 < raw[1]
    assert 0.0 <= unit[0] < 0.5 < unit[1] <= 1.0
    assert (truth.low, truth.high) == (-2.0, 1.0)


def test_weighted_truth_needs_a_non_zero_weight():
    with pytest.raises(ConfigError, match="non-zero weight"):
        WeightedTruth([("sentiment", 0.0)])


# -- resolver --------------------------------------------------------------------------------------------------
def test_get_ground_truth_accepts_names_dicts_objects_pairs_and_callables():
    assert isinstance(get_ground_truth("sentiment"), Sentiment)
    assert get_ground_truth("length", target=5).target == 5
    keyword = get_ground_truth({"name": "keyword", "words": ["great"]})
    assert isinstance(keyword, Keyword) and keyword.words == ["great"]
    assert get_ground_truth(keyword) is keyword
    weighted = get_ground_truth([("sentiment", 0.5), (keyword, 0.5)])
    assert isinstance(weighted, WeightedTruth) and len(weighted.components) == 2
    from_fn = get_ground_truth(lambda p, c: [0.0] * len(c), low=-1, high=1)
    assert isinstance(from_fn, CallableTruth) and (from_fn.low, from_fn.high) == (-1.0, 1.0)


def test_unknown_ground_truth_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'sentiment'\?.*Known ground truths: .*keyword.*length"):
        get_ground_truth("sentimnet")


def test_ground_truth_with_wrong_arguments_says_which_it_accepts():
    with pytest.raises(ConfigError, match=r"got arguments \['length'\]; it accepts: target, unit, tokenizer"):
        get_ground_truth("length", length=3)
    with pytest.raises(ConfigError, match="needs a 'name' key"):
        get_ground_truth({"words": ["x"]})
    with pytest.raises(ConfigError, match="must be a name"):
        get_ground_truth(3.5)


def test_ground_truth_is_a_trl_style_reward_function():
    truth = get_ground_truth("keyword", words=["yes"])
    assert truth(["p", "p"], ["yes", "no"], extra_column=[1, 2]) == [1.0, 0.0]
    provider = rlhf_gym.as_provider(truth)
    assert provider.score(["p"], ["yes"]) == [1.0]


def test_ground_truth_reward_reports_its_values_as_true_score():
    provider = GroundTruthReward("length", target=2)
    scores, extras = provider.score_with_info(_p(2), ["a b", "a"])
    assert scores == extras["true_score"] == [0.0, -0.5]
    assert provider.name == "length"


def test_noiseless_providers_are_registered_by_name():
    sentiment = rlhf_gym.make_reward("sentiment")
    assert sentiment.score(_p(2), ["I love it", "I hate it"])[0] > 0 > sentiment.score(_p(1), ["I hate it"])[0]
    assert rlhf_gym.make_reward("keyword", words=["ok"]).score(_p(2), ["ok", "no"]) == [1.0, 0.0]
    assert rlhf_gym.make_reward("length", target=1).score(_p(1), ["one"]) == [0.0]
    with pytest.raises(ConfigError, match="accepts: words, regex, mode, case_sensitive"):
        rlhf_gym.make_reward("keyword", word=["ok"])


def test_all_truths_stay_in_their_documented_range_on_varied_text():
    rng = np.random.default_rng(0)
    vocab = ["good", "bad", "great", "awful", "the", "film", "was", "not", "!", "love", "hate"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(0, 40))) for _ in range(300)]
    for truth in (Sentiment(), TargetLength(target=10), Keyword(words=["good"]), Keyword(words=["good"], mode="count")):
        raw, unit = truth.evaluate(_p(len(texts)), texts)
        assert np.all((unit >= 0) & (unit <= 1)), truth.name
        if not truth.per_token:
            assert np.all((raw >= truth.low) & (raw <= truth.high)), truth.name
