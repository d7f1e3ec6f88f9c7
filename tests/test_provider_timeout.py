"""Reward providers with a time limit: a hung provider costs one unscored batch, never a hung run or a process
that cannot exit; a live human's wait says whom it waits for; collection with a live human has one writer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.collect import collect_preferences
from rlhf_gym.errors import ConfigError
from rlhf_gym.live import LiveHuman
from rlhf_gym.plugins import make_algorithm, make_reward
from rlhf_gym.preference_store import PreferenceStore
from rlhf_gym.provider_timeout import RewardTimeoutError, RewardTimeoutWarning, TimeoutReward, with_timeout
from rlhf_gym.providers import RewardProvider

warnings.filterwarnings("ignore", message=".*requires_grad.*")


class Hangs(RewardProvider):
    """Answers at once, except on the calls listed in ``hang_on`` (1-based), where it blocks until released."""

    name = "hangs"

    def __init__(self, hang_on=(1,)):
        self.hang_on = set(hang_on)
        self.calls = 0
        self.release = threading.Event()

    def score(self, prompts, completions, **row):
        self.calls += 1
        if self.calls in self.hang_on:
            self.release.wait()
        return [float(len(c)) for c in completions]

    def rank(self, prompt, completions, **row):
        self.release.wait()
        return list(range(len(completions)))


@pytest.mark.parametrize("method", ["score", "score_with_info", "compare"])
def test_a_hung_call_returns_no_scores_after_the_limit(method):
    provider = Hangs()
    limited = with_timeout(provider, 0.2)
    args = (["p", "q"], ["a", "b"]) + ((["c", "d"],) if method == "compare" else ())
    start = time.monotonic()
    with pytest.warns(RewardTimeoutWarning, match="'hangs'.*0.2 s.*2 samples"):
        out = getattr(limited, method)(*args)
    assert time.monotonic() - start < 2.0
    scores = out[0] if method == "score_with_info" else out
    assert scores == [None, None]
    assert limited.last_call_timed_out and limited.timeouts == 1
    provider.release.set()


def test_a_provider_still_hung_is_not_called_again_and_recovers_once_it_returns():
    provider = Hangs(hang_on=(1,))
    limited = with_timeout(provider, 0.1)
    with pytest.warns(RewardTimeoutWarning):
        assert limited.score(["p"], ["a"]) == [None]
    with pytest.warns(RewardTimeoutWarning, match="still busy"):
        assert limited.score(["p"], ["a"]) == [None]
    assert provider.calls == 1  # never two calls at once
    provider.release.set()
    assert limited.score(["p"], ["abc"]) == [3.0]
    assert not limited.last_call_timed_out and limited.timeouts == 2 and provider.calls == 2


def test_errors_and_quick_answers_pass_through_and_empty_batches_need_no_thread():
    def broken(prompts, completions, **kw):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with_timeout(broken, 1).score(["p"], ["c"])
    assert with_timeout(lambda prompts, completions, **kw: [1.0] * len(prompts), 1).score([], []) == []
    with pytest.raises(RewardTimeoutError, match="rank"), pytest.warns(RewardTimeoutWarning):
        TimeoutReward(Hangs(), 0.05).rank("p", ["a", "b"])


@pytest.mark.parametrize("bad", [0, -1, "soon", float("nan"), float("inf"), True])
def test_a_timeout_must_be_a_positive_number_of_seconds(bad):
    with pytest.raises(ConfigError, match="timeout"):
        with_timeout(Hangs(), bad)


def test_timeout_is_a_keyword_of_every_named_provider_and_of_callables(tiny_tokenizer):
    limited = make_reward("length", timeout=5)
    assert isinstance(limited, TimeoutReward) and limited.score(["p"], ["one two"])[0] is not None
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=tiny_tokenizer, prompts=["Hi"], max_new_tokens=4,
                   reward=lambda prompts, completions, **kw: [1.0] * len(prompts), reward_kwargs={"timeout": 3})
    assert isinstance(env.unwrapped.provider, TimeoutReward)


def test_a_hung_call_does_not_keep_the_process_from_exiting(tmp_path: Path):
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent("""
        import threading, warnings
        from rlhf_gym.provider_timeout import with_timeout
        warnings.simplefilter("ignore")
        never = threading.Event()
        limited = with_timeout(lambda prompts, completions, **kw: never.wait() or [1.0], 0.2)
        print(limited.score(["p"], ["c"]), flush=True)
    """))
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[None]"
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("name", ["rloo", "ppo"])
def test_training_goes_on_past_a_hung_provider(name, random_model_path):
    provider = Hangs(hang_on=(2,))
    policy = rlhf_gym.Policy.from_pretrained(random_model_path, value_head=name == "ppo")
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(8),
                   reward=provider, reward_kwargs={"timeout": 0.3}, max_new_tokens=4, max_prompt_tokens=6,
                   vocab_size=policy.vocab_size)
    extra = {"group_size": 2, "num_prompts": 2} if name == "rloo" else {"num_prompts": 4, "minibatch_size": 4}
    algo = make_algorithm(name, env=env, policy=policy, seed=0, **extra)
    history = []

    def record(algo, metrics):
        history.append(metrics)
        if metrics["batch/timed_out"]:
            provider.release.set()  # the hung call returns later, while training has gone on

    with pytest.warns(RewardTimeoutWarning):
        algo.learn(3, callback=record, progress_bar=False)
    assert [m["batch/timed_out"] for m in history] == [0.0, 1.0, 0.0]
    assert [m["batch/skipped"] for m in history] == [0.0, 1.0, 0.0]
    assert history[-1]["provider/timeouts"] == 1.0
    assert all(torch.isfinite(p).all() for p in policy.parameters())


# -- the live human: waiting says for whom, and gives up on time ------------------------------------------------------


def test_live_human_wait_says_whom_it_waits_for_and_stops_at_the_timeout(tmp_path: Path, capsys):
    store_path = tmp_path / "prefs.db"
    human = with_timeout(LiveHuman(store_path, ui="queue", annotator="alice"), 0.5)
    assert isinstance(human, LiveHuman) and human.wait_policy.timeout_s == 0.5
    start = time.monotonic()
    assert human.score(["p1", "p2"], ["c1", "c2"]) == [None, None]
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "waiting for an annotator to answer 2 of 2 queries" in err
    assert str(store_path) in err and "rlhf-gym label --store" in err
    assert "2 of 2 queries unanswered after 0.5 s" in err
    assert human.last_call_timed_out and human.timeouts == 1
    human.close()


def test_live_human_keeps_answers_given_before_the_timeout(tmp_path: Path):
    store_path = tmp_path / "prefs.db"
    human = LiveHuman(store_path, ui="queue", wait_policy=("timeout", 30))
    human.apply_timeout(1.0)  # the tighter limit wins
    assert human.wait_policy.timeout_s == 1.0

    def answer_one():
        with PreferenceStore(store_path) as store:
            for _ in range(200):
                pending = store.pending(limit=1)
                if pending:
                    store.answer(pending[0].id, 5, annotator="bob", source="test")
                    return
                time.sleep(0.01)

    worker = threading.Thread(target=answer_one, daemon=True)
    worker.start()
    scores = human.score(["p1", "p2"], ["c1", "c2"])
    worker.join(5)
    assert sorted(scores, key=lambda s: s is None) == [1.0, None]
    human.close()


# -- collect_preferences with a live human on the same store ----------------------------------------------------------


@pytest.fixture(scope="module")
def collect_setup(tmp_path_factory):
    path = tiny.random_tiny_model(tmp_path_factory.mktemp("collect") / "policy", n_layer=2, n_embd=64, n_head=2)
    policy = rlhf_gym.Policy.from_pretrained(path, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(8),
                   reward=lambda prompts, completions, **kw: [0.0] * len(prompts), max_new_tokens=6,
                   max_prompt_tokens=8, vocab_size=policy.vocab_size)
    return policy, env


@pytest.mark.parametrize("behaviour", ["answers all", "skips all", "answers one then goes quiet"])
def test_collect_with_a_live_human_on_the_same_store_writes_each_answer_once(collect_setup, tmp_path, behaviour):
    policy, env = collect_setup
    store_path = tmp_path / "prefs.db"
    store = PreferenceStore(store_path)
    human = LiveHuman(store_path, ui="queue", annotator="carol",
                      wait_policy=("timeout", 1.0) if behaviour.endswith("quiet") else "wait")
    stop = threading.Event()

    def person():
        answered = 0
        with PreferenceStore(store_path) as own:
            while not stop.is_set():
                for query in own.pending(limit=1):
                    if behaviour.endswith("quiet") and answered == 1:
                        break
                    own.answer(query.id, None if behaviour == "skips all" else "a", annotator="carol",
                               source="terminal")
                    answered += 1
                time.sleep(0.01)

    worker = threading.Thread(target=person, daemon=True)
    worker.start()
    try:
        stats = collect_preferences(policy, env, human, store, num_prompts=3, k=2, seed=1)
    finally:
        stop.set()
        worker.join(5)
    answers = store.answers()
    assert len(answers) == len({a.query_id for a in answers})  # one answer per query
    assert all(a.annotator == "carol" for a in answers)  # written by the person's front-end only
    if behaviour == "answers all":
        assert stats.answered == stats.asked == len(answers) > 0
    elif behaviour == "skips all":
        assert stats.skipped == stats.asked == len(answers) > 0 and stats.answered == 0
    else:
        assert stats.answered == len(answers) == 1 and stats.unanswered == stats.asked - 1
    human.close()
    store.close()


def test_module_examples_run():
    import doctest

    import rlhf_gym.provider_timeout as timeout_mod
    import rlhf_gym.providers as providers_mod

    for module in (timeout_mod, providers_mod):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0


def test_collect_with_a_judge_that_times_out_records_no_skips(collect_setup, tmp_path):
    policy, env = collect_setup
    store = PreferenceStore(tmp_path / "prefs.db")
    judge = Hangs(hang_on=(1,))
    with pytest.warns(RewardTimeoutWarning):
        stats = collect_preferences(policy, env, with_timeout(judge, 0.2), store, num_prompts=3, k=2, seed=1)
    judge.release.set()
    assert stats.asked > 0 and stats.unanswered == stats.asked and stats.skipped == 0
    assert store.answers() == [] and store.pending() == []  # withdrawn: nothing recorded as a person's skip
    again = collect_preferences(policy, env, judge, store, num_prompts=3, k=2, seed=1)
    assert again.asked == stats.asked and again.answered == again.asked  # asked again once the judge answers
    store.close()


class Sleepy(RewardProvider):
    """Sleeps ``seconds`` per call (picklable, unlike a provider holding an Event)."""

    name = "sleepy"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def score(self, prompts, completions, **row):
        time.sleep(self.seconds)
        return [1.0] * len(prompts)


def test_a_limited_provider_can_be_copied_to_another_process_while_a_call_hangs():
    import pickle

    limited = TimeoutReward(Sleepy(1.0), 0.05)
    with pytest.warns(RewardTimeoutWarning):
        assert limited.score(["p"], ["c"]) == [None]  # a call is still running in this process
    copy = pickle.loads(pickle.dumps(limited))
    copy.provider.seconds = 0.0
    assert copy.score(["p"], ["c"]) == [1.0]  # the copy starts idle: nothing to wait for
    assert copy.timeouts == 1 and not copy.last_call_timed_out


class _IdsPlugin:
    @rlhf_gym.hookimpl
    def register_reward_providers(self, register):
        register("ids-length", lambda: (lambda completion_ids, **kw: [float(len(i)) for i in completion_ids]))


def test_a_named_reward_function_with_a_timeout_still_gets_completion_ids(tiny_tokenizer):
    name = rlhf_gym.register_plugin(_IdsPlugin(), name="ids-plugin")
    try:
        env = gym.make("rlhf_gym/Completion-v0", tokenizer=tiny_tokenizer, prompts=["Hi"], max_new_tokens=8,
                       reward="ids-length", reward_kwargs={"timeout": 5})
        provider = env.unwrapped.provider
        assert isinstance(provider, TimeoutReward) and provider.name == "ids-length"
        env.reset(seed=0)
        _, reward, *_, info = env.step(" a good film")
        assert reward == len(tiny_tokenizer(info["completion"], add_special_tokens=False)["input_ids"])
    finally:
        rlhf_gym.unregister_plugin(name)
