"""The real ``rlhf-gym label`` terminal UI, driven through a pseudo-terminal (pexpect).

Sessions run ``python -m rlhf_gym.live.cli`` (the label command without loading the other subcommands, which
import torch); one test checks the command is wired as ``python -m rlhf_gym label``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from rlhf_gym.preference_store import PreferenceStore

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PAIR_PROMPT = r"your answer \[a/b/t/s/u/q\]: "


def _make_store(path: Path, n: int = 6) -> list[int]:
    with PreferenceStore(path) as store:
        ids = store.add_queries(
            [{"prompt": f"question {i}", "completion_a": f"alpha{i}", "completion_b": f"omega{i}"} for i in range(n)],
            requested_by="test")
    return [int(i) for i in ids if i is not None]


def _spawn(store: Path, *extra: str) -> pexpect.spawn:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    child = pexpect.spawn(sys.executable, ["-m", "rlhf_gym.live.cli", "--store", str(store), "--annotator", "ann",
                                           *extra],
                          env=env, encoding="utf-8", timeout=30, dimensions=(40, 100))
    return child


def _next_question(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the next pair; return (query index, which text the screen shows as A)."""
    child.expect(PAIR_PROMPT)
    screen = ANSI.sub("", child.before)
    screen = screen[screen.rfind("Prompt"):]
    index = int(re.search(r"question (\d+)", screen).group(1))  # type: ignore[union-attr]
    first = "alpha" if screen.find(f"alpha{index}") < screen.find(f"omega{index}") else "omega"
    return index, first


def _answer(child: pexpect.spawn, key: str) -> tuple[int, str | None]:
    """Answer the question on screen with ``key``; return (index, the stored choice it means)."""
    index, first = _next_question(child)
    child.sendline(key)
    if key in ("a", "b"):
        shown_first = key == "a"
        means_alpha = shown_first == (first == "alpha")
        return index, "a" if means_alpha else "b"
    return index, {"t": "tie", "s": "skip"}.get(key)


def _stored(path: Path) -> dict[str, tuple[str, str]]:
    with PreferenceStore(path) as store:
        return {store.get(a.query_id).prompt: (a.choice, a.annotator) for a in store.answers()}


def test_terminal_session_answers_undoes_quits_and_resumes_without_repeats(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    _make_store(path, 6)
    expected: dict[str, str] = {}
    child = _spawn(path)
    child.expect("0 answered .*6 pending")
    for key in ("a", "b", "t", "s"):
        index, choice = _answer(child, key)
        expected[f"question {index}"] = choice  # type: ignore[assignment]
    assert list(expected.values())[2:] == ["tie", "skip"]
    # undo takes back the skip of question 3 and asks it again at once
    child.expect(PAIR_PROMPT)
    child.sendline("u")
    child.expect("undone: query")
    index, choice = _answer(child, "a")
    assert index == 3
    expected["question 3"] = choice  # type: ignore[assignment]
    # an unknown key is refused with the help line, the question stays
    child.expect(PAIR_PROMPT)
    child.sendline("x")
    child.expect("is not an answer here")
    child.sendline("q")
    child.expect("stopped")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert _stored(path) == {k: (v, "ann") for k, v in expected.items()}

    child = _spawn(path, "--resume")
    child.expect("4 answered \\(4 by ann\\), 2 pending")
    seen = []
    for key in ("b", "a"):
        index, choice = _answer(child, key)
        seen.append(index)
        expected[f"question {index}"] = choice  # type: ignore[assignment]
    assert seen == [4, 5]  # never an answered query again
    child.expect("nothing left to label")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert _stored(path) == {k: (v, "ann") for k, v in expected.items()}
    with PreferenceStore(path) as store:
        assert store.stats()["skip"] == 0 and store.stats()["tie"] == 1
        assert all("swapped" in a.meta and a.source == "terminal" for a in store.answers())


def test_killed_between_answers_loses_no_answered_label(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    _make_store(path, 5)
    child = _spawn(path)
    given = dict(_answer(child, k) for k in ("a", "b"))
    _next_question(child)  # the third question is on screen: both answers were committed before it was drawn
    child.kill(signal.SIGKILL)
    child.close(force=True)
    assert child.signalstatus == signal.SIGKILL
    with PreferenceStore(path) as store:
        assert store.integrity_check() == "ok"
        assert {int(store.get(a.query_id).prompt.split()[1]): a.choice for a in store.answers()} == given
        assert [q.prompt for q in store.pending()] == ["question 2", "question 3", "question 4"]
    child = _spawn(path, "--resume")
    assert _next_question(child)[0] == 2
    child.sendline("q")
    child.expect(pexpect.EOF)


def test_a_query_another_labeller_is_answering_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    ids = _make_store(path, 3)
    with PreferenceStore(path) as store:
        assert store.claim("bob").id == ids[0]  # type: ignore[union-attr]  # bob is looking at question 0
    child = _spawn(path)
    assert [_answer(child, "a")[0], _answer(child, "b")[0]] == [1, 2]
    child.expect("nothing left to label")
    child.expect("1 more are being answered in other sessions")
    child.expect(pexpect.EOF)
    with PreferenceStore(path) as store:
        assert [q.id for q in store.pending()] == [ids[0]] and store.leased() == {ids[0]: "bob"}


def test_rating_questions_and_time_limit(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        slow = store.add_query("rate slowly", "first", scale=5)
        rated = store.add_query("rate me", "second", scale=5)
    child = _spawn(path, "--time-limit", "1")
    child.expect(r"your rating \[1-5/s/u/q\]: ")
    child.expect("time's up")  # nothing typed: the question stays queued and the next one is shown
    child.expect(r"your rating \[1-5/s/u/q\]: ")
    child.sendline("9")
    child.expect("is not an answer here")
    child.sendline("4")
    child.expect("nothing left to label")
    child.expect(pexpect.EOF)
    with PreferenceStore(path) as store:
        assert [(a.query_id, a.choice, a.label) for a in store.answers()] == [(rated, "rating", 4.0)]
        assert [q.id for q in store.pending()] == [slow]


def test_no_terminal_fails_fast_pointing_at_web_and_two_phase(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    _make_store(path, 1)
    result = subprocess.run([sys.executable, "-m", "rlhf_gym", "label", "--store", str(path)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert "not a TTY" in result.stderr and "--web" in result.stderr and "submit()/poll()" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--resume"], "nothing to resume"),
    (["--web", "--host", "0.0.0.0"], "only listens on this machine"),
])
def test_label_refuses_bad_options_with_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "rlhf_gym.live.cli", "--store", str(tmp_path / "none.db"), *args],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "none.db").exists()


_PROVIDER_SCRIPT = """
import sys
from rlhf_gym.live import LabellingStopped, LiveHuman
human = LiveHuman(sys.argv[1], ui="terminal", mode="compare", annotator="trainer-side")
print("RESULT", human.compare(["question 0", "question 1"], ["alpha0", "omega1"], ["omega0", "alpha1"]), flush=True)
try:
    human.compare(["question 2"], ["alpha2"], ["omega2"])
except LabellingStopped as exc:
    print("STOPPED", exc, flush=True)
"""


def test_provider_asks_in_the_terminal_and_quitting_stops_training_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    child = pexpect.spawn(sys.executable, ["-c", _PROVIDER_SCRIPT, str(path)], encoding="utf-8", timeout=30,
                          dimensions=(40, 100), env={**os.environ, "OMP_NUM_THREADS": "1"})
    picks = {}
    for _ in range(2):
        index, first = _next_question(child)
        child.sendline("a")  # whatever is shown as A wins
        picks[index] = first
    child.expect(r"RESULT \[(.*)\]")
    result = [float(x) for x in child.match.group(1).split(",")]
    # question 1 was submitted as (omega1, alpha1): P(a > b) is 1 when omega1 was shown as A
    assert result == [1.0 if picks[0] == "alpha" else 0.0, 1.0 if picks[1] == "omega" else 0.0]
    _next_question(child)
    child.sendline("q")
    child.expect("STOPPED labelling stopped by trainer-side; every answer given is saved")
    child.expect(pexpect.EOF)
    with PreferenceStore(path) as store:
        assert len(store.answers(annotator="trainer-side")) == 2
        assert [q.prompt for q in store.pending()] == ["question 2"]
