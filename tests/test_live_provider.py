"""The ``live-human`` provider: two-phase submit/poll, blocking score/compare, wait policies, front-end choice."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rlhf_gym
from rlhf_gym.errors import ConfigError
from rlhf_gym.live import LiveHuman, NoTerminalError, WaitPolicy
from rlhf_gym.preference_store import PreferenceStore, Query


class Labeller(threading.Thread):
    """Someone labelling the store from another connection (as the web page or another process would)."""

    def __init__(self, path: Path, decide: Callable[[Query], Any], limit: int | None = None):
        super().__init__(daemon=True)
        self.path, self.decide, self.limit = path, decide, limit
        self.halt = threading.Event()
        self.done = 0

    def run(self) -> None:
        with PreferenceStore(self.path) as store:
            while not self.halt.is_set() and (self.limit is None or self.done < self.limit):
                for query in store.pending(limit=1):
                    store.answer(query.id, self.decide(query), annotator="helper", source="test")
                    self.done += 1
                time.sleep(0.01)


@pytest.fixture
def labeller() -> Iterator[Callable[..., Labeller]]:
    started: list[Labeller] = []

    def start(path: Path, decide: Callable[[Query], Any], limit: int | None = None) -> Labeller:
        worker = Labeller(path, decide, limit)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.halt.set()
        worker.join(5)


def prefers_polite(query: Query) -> str:
    return "a" if "please" in query.completion_a else "b"


def test_registered_as_live_human_and_not_deterministic(tmp_path: Path) -> None:
    provider = rlhf_gym.make_reward("live-human", store=tmp_path / "p.db", ui="queue")
    try:
        assert isinstance(provider, LiveHuman)
        assert provider.name == "live-human"
        assert provider.deterministic is False
    finally:
        provider.close()


def test_submit_returns_at_once_and_poll_returns_each_answer_once(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    human = LiveHuman(path, ui="queue")
    ids = human.submit(["p1", "p2"], ["please help", "go away"], ["go away", "please help"])
    assert len(set(ids)) == 2 and human.poll() == []
    with PreferenceStore(path) as other:
        other.answer(ids[1], "b", annotator="helper", source="test")
    (first,) = human.poll()
    assert (first.query_id, first.label) == (ids[1], 0.0)
    assert human.poll() == []
    with PreferenceStore(path) as other:
        other.answer(ids[0], "tie", annotator="helper", source="test")
    assert [a.query_id for a in human.poll()] == [ids[0]]
    human.close()


def test_ratings_are_normalised_to_unit_interval_or_kept_raw(tmp_path: Path, labeller: Callable[..., Labeller]) -> None:
    path = tmp_path / "p.db"
    labeller(path, lambda q: {"great": 5, "fine": 3, "awful": 1}.get(q.completion_a, "skip"))
    with LiveHuman(path, ui="queue", scale=5, wait_policy=WaitPolicy(poll_interval_s=0.02)) as human:
        assert human.score(["p"] * 4, ["great", "fine", "awful", "???"]) == [1.0, 0.5, 0.0, None]
    with LiveHuman(path, ui="queue", normalize=False) as raw:
        # the same completions were rated before: the stored ratings come back without asking again
        assert raw.score(["p"] * 3, ["great", "fine", "awful"]) == [5.0, 3.0, 1.0]
    with PreferenceStore(path) as store:
        assert store.count() == 4


def test_compare_reuses_answers_in_either_order_and_ties_identical_texts(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with PreferenceStore(path) as store:
        qid = store.add_query("p", "please sit", "sit!")
        store.answer(qid, "a", annotator="earlier", source="test")
    with LiveHuman(path, ui="queue", wait_policy=("timeout", 5)) as human:
        t0 = time.monotonic()
        assert human.compare(["p", "p", "q"], ["sit!", "please sit", "same"], ["please sit", "sit!", "same"]) == [
            0.0, 1.0, 0.5]
        assert time.monotonic() - t0 < 1.0  # nothing had to be waited for
    with PreferenceStore(path) as store:
        assert store.count() == 1


def test_wait_for_a_fraction_goes_on_and_leaves_the_rest_queued(tmp_path: Path,
                                                                labeller: Callable[..., Labeller]) -> None:
    path = tmp_path / "p.db"
    labeller(path, prefers_polite, limit=2)
    policy = WaitPolicy(min_fraction=0.5, poll_interval_s=0.02)
    with LiveHuman(path, ui="queue", mode="compare", wait_policy=policy) as human:
        prompts = [f"p{i}" for i in range(4)]
        got = human.compare(prompts, ["please a", "rude b", "please c", "rude d"],
                            ["rude a", "please b", "rude c", "please d"])
    assert got[:2] == [1.0, 0.0] and got[2:] == [None, None]
    with PreferenceStore(path) as store:
        assert [q.prompt for q in store.pending()] == ["p2", "p3"]  # later answers still reach the store


def test_timeout_drops_unanswered_queries_from_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with LiveHuman(path, ui="queue", wait_policy=("timeout", 0.3)) as human:
        t0 = time.monotonic()
        assert human.score(["p", "q"], ["x", "y"]) == [None, None]
        assert 0.3 <= time.monotonic() - t0 < 3
    with PreferenceStore(path) as store:
        assert store.count() == 0


def test_score_in_compare_mode_asks_against_the_reference(tmp_path: Path, labeller: Callable[..., Labeller]) -> None:
    path = tmp_path / "p.db"
    labeller(path, prefers_polite)
    with LiveHuman(path, ui="queue", mode="compare", wait_policy=WaitPolicy(poll_interval_s=0.02)) as human:
        assert human.score(["p", "q"], ["please yes", "no"], reference=["no", "please yes"]) == [1.0, 0.0]
        with pytest.raises(ConfigError, match=r"row\['reference'\]"):
            human.score(["p"], ["x"])


def test_web_ui_serves_the_queue_while_score_waits(tmp_path: Path) -> None:
    human = LiveHuman(tmp_path / "p.db", ui="web", annotator="alice", wait_policy=WaitPolicy(poll_interval_s=0.02))
    answered: list[int] = []

    def browser() -> None:
        for _ in range(500):
            if human._web is not None:
                break
            time.sleep(0.01)
        base = f"http://127.0.0.1:{human._web.port}"
        headers = {"X-Label-Token": human._web.token, "Content-Type": "application/json"}
        while len(answered) < 2:
            with urllib.request.urlopen(urllib.request.Request(base + "/api/next", headers=headers)) as resp:
                query = json.load(resp)["query"]
            if query is None:
                time.sleep(0.02)
                continue
            body = json.dumps({"query_id": query["id"], "answer": 4}).encode()
            urllib.request.urlopen(urllib.request.Request(base + "/api/answer", data=body, headers=headers)).close()
            answered.append(query["id"])

    thread = threading.Thread(target=browser, daemon=True)
    thread.start()
    try:
        assert human.score(["p", "q"], ["one", "two"]) == [0.75, 0.75]
    finally:
        thread.join(5)
        human.close()
    with PreferenceStore(tmp_path / "p.db") as store:
        assert {(a.annotator, a.source) for a in store.answers()} == {("alice", "web")}


def test_terminal_ui_without_a_tty_fails_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(NoTerminalError, match=r"not a TTY.*--web.*submit\(\)/poll\(\)"):
        LiveHuman(tmp_path / "p.db", ui="terminal")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"wait_policy": ("soon", 1)}, "wait_policy .* is not understood"),
    ({"wait_policy": ("fraction", 0)}, r"min_fraction must be in \(0, 1\]"),
    ({"mode": "rank"}, "mode must be one of rating, compare"),
    ({"ui": "gui"}, "ui must be one of terminal, web, queue"),
    ({"scale": 1}, "at least 2 points"),
])
def test_bad_options_are_refused_with_the_valid_ones(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LiveHuman(tmp_path / "p.db", **{"ui": "queue", **kwargs})


def _tiny_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["a good film", "a bad film", "rate this review"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   padding_side="left")
    fast.save_pretrained(path)
    return str(path)


def test_env_with_live_human_is_nondeterministic_and_rewards_come_from_the_store(
        tmp_path: Path, labeller: Callable[..., Labeller]) -> None:
    import gymnasium as gym

    store = tmp_path / "p.db"
    labeller(store, lambda q: 5 if "good" in q.completion_a else 2)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=_tiny_tokenizer(tmp_path / "tok"), prompts=["rate this"],
                   reward="live-human", max_new_tokens=4,
                   reward_kwargs={"store": str(store), "ui": "queue", "wait_policy": WaitPolicy(poll_interval_s=0.02)})
    try:
        assert env.spec is not None and env.spec.nondeterministic
        env.reset(seed=0)
        _, reward, terminated, _, info = env.step("a good film")
        assert (reward, terminated) == (1.0, True)
        assert info["completion"] == "a good film"
    finally:
        env.close()
    with PreferenceStore(store) as s:
        (ans,) = s.answers()
        assert (ans.label, s.get(ans.query_id).completion_a) == (5.0, "a good film")
