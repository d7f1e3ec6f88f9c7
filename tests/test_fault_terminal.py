"""Hostile text and sessions at the terminal labeller: escape sequences in completions, two terminals of one
labeller, follow mode for live training, and the label command's one-line errors.

Shown text comes from models and files; whatever it holds, nothing in it may reach the terminal as a control
sequence (clear the screen, retitle the window, plant a link, move the cursor, reverse the reading order).
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import sys
import unicodedata
from pathlib import Path

import pexpect
import pytest
from rich.console import Console

from rlhf_gym.live.terminal import TerminalLabeler
from rlhf_gym.live.visible import escape, hidden, visible, visible_text
from rlhf_gym.preference_store import PreferenceStore, Query

# (name, hostile text, an escape its visible form must show)
HOSTILE = [
    ("clear screen + home", "hi\x1b[2J\x1b[H", "\\x1b[2J"),
    ("full reset", "\x1bc", "\\x1bc"),
    ("OSC retitle (BEL)", "\x1b]0;pwned\x07text", "\\x1b]0;pwned\\x07"),
    ("OSC retitle (ST)", "\x1b]2;pwned\x1b\\text", "\\x1b]2;pwned\\x1b\\"),
    ("OSC 8 hyperlink", "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\", "\\x1b]8;;http://evil.example"),
    ("OSC 52 clipboard", "\x1b]52;c;cm0gLXJmIH4=\x07", "\\x1b]52;c;"),
    ("cursor up + erase line", "good\x1b[1A\x1b[2Kbad", "\\x1b[1A"),
    ("save/restore cursor", "\x1b7\x1b[10;10Hx\x1b8", "\\x1b7"),
    ("C1 CSI", "a\x9b2Jb", "\\x9b"),
    ("C1 OSC + ST", "\x9d0;title\x9c", "\\x9d"),
    ("DCS", "\x1bPq#0;2;0;0;0\x1b\\", "\\x1bP"),
    ("APC", "\x1b_Gf=100;AAAA\x1b\\", "\\x1b_"),
    ("bell and backspace", "bad\x08\x08\x08ok\x07", "\\x08"),
    ("carriage return overwrite", "I hate this\rI love this", "\\x0d"),
    ("shift out (charset)", "\x0eabc\x0f", "\\x0e"),
    ("NUL", "a\x00b", "\\x00"),
    ("DEL", "a\x7fb", "\\x7f"),
    ("bidi RLO", "good \u202edab\u202c", "\\u202e"),
    ("bidi isolates", "\u2067evil\u2069", "\\u2067"),
    ("RLM / LRM", "a\u200fb\u200ec", "\\u200f"),
    ("zero-width space", "he\u200bllo", "\\u200b"),
    ("zero-width joiner", "he\u200dllo", "\\u200d"),
    ("BOM", "\ufeffhello", "\\ufeff"),
    ("soft hyphen", "pass\u00adword", "\\xad"),
    ("tag characters", "ok\U000e0041\U000e0042", "\\U000e0041"),
    ("line separator", "one\u2028two", "\\u2028"),
    ("Hangul filler", "a\u3164b", "\\u3164"),
    ("lone surrogate", "a\ud800b", "\\ud800"),
]
NORMAL = ["plain text", "two\nlines\tand a tab", "accents: é ü ñ", "中文 テキスト", "emoji 🙂👍", "quotes \" ' `",
          "markup [bold]not markup[/bold]", "backslash \\x1b literal"]


def _leaks(text: str) -> list[str]:
    """The characters of ``text`` that would reach a terminal raw and are not layout."""
    return [c for c in text if hidden(c)]


@pytest.mark.parametrize(("name", "text", "shown"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_text_is_shown_as_visible_escapes(name: str, text: str, shown: str) -> None:
    out = visible(text)
    assert _leaks(out) == [] and "\x1b" not in out and "\r" not in out
    assert shown in out
    # the readable parts survive, in order, around the escapes
    readable = re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})", "", out)
    assert readable == "".join(c for c in text if not hidden(c))


def test_normal_text_is_shown_unchanged_and_crlf_is_a_newline() -> None:
    for text in NORMAL:
        assert visible(text) == text
    assert visible("a\r\nb") == "a\nb"
    assert escape("\x1b") == "\\x1b" and escape("\u202e") == "\\u202e" and escape("\U000e0041") == "\\U000e0041"


def test_random_mixtures_never_leak_a_control_character() -> None:
    rng = random.Random(7)
    pool = [c for _, text, _ in HOSTILE for c in text] + list("abc xyz\n\t\u00e9\u4e2d")
    pool += [chr(c) for c in range(0x00, 0x20)] + [chr(c) for c in range(0x7f, 0xa0)]
    pool += [chr(c) for c in (0x061c, 0x180e, 0x2060, 0x2061, 0x2064, 0x206a, 0x206f, 0xfff9, 0xfffb)]
    for _ in range(400):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 60)))
        out = visible(text)
        assert _leaks(out) == [], (text, out)
        assert all(unicodedata.category(c) not in ("Cc", "Cf") or c in "\n\t" for c in out)


def test_the_labeller_draws_hostile_completions_without_emitting_them(tmp_path: Path) -> None:
    sgr = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours are the only escapes allowed out
    queries = [Query(i, "compare", f"prompt {i} {text}", f"A{i} {text}", f"B{i} {text}", None, "test", "now")
               for i, (_, text, _) in enumerate(HOSTILE)]
    queries.append(Query(99, "rating", "rate \x1b]0;x\x07", "completion \u202eevil", None, 5, "test", "now"))
    with PreferenceStore(tmp_path / "p.db") as store:
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=100)
        labeler = TerminalLabeler(store, annotator="ann", console=console)
        for query in queries:
            labeler._show(query, swapped=bool(query.id % 2), done=0, left=1)
    raw = sgr.sub("", buffer.getvalue())
    assert "\x1b" not in raw and _leaks(raw.replace("\r", "")) == [] and "\r" not in raw
    for _, _, shown in HOSTILE:
        assert shown in raw
    assert "1 = worst" in TerminalLabeler._help(labeler, Query(1, "rating", "p", "c", None, 5, "t", "now"))
    styled = visible_text("x\x1by")
    assert [span.style for span in styled.spans] == ["reverse red"]


def _spawn(store: Path, *extra: str, annotator: str = "ann") -> pexpect.spawn:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    return pexpect.spawn(sys.executable, ["-m", "rlhf_gym.live.cli", "--store", str(store), "--annotator",
                                          annotator, *extra], env=env, encoding="utf-8", timeout=30,
                         dimensions=(40, 100))


def test_two_terminals_of_one_labeller_get_different_queries_and_both_answers_count(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with PreferenceStore(path) as store:
        store.add_queries([{"prompt": f"question {i} \x1b]0;pwned\x07", "completion_a": f"alpha{i} \x1b[2J",
                            "completion_b": f"omega{i}"} for i in range(3)])
    first, second = _spawn(path), _spawn(path)
    try:
        shown = []
        for child in (first, second):
            child.expect(r"your answer \[a/b/t/s/u/q\]: ")
            assert "\x1b]0;pwned" not in child.before and "\x1b[2J" not in child.before
            assert "\\x1b]0;pwned\\x07" in re.sub(r"\x1b\[[0-9;]*m", "", child.before)
            shown.append(int(re.findall(r"question (\d+)", child.before)[-1]))
        assert shown[0] != shown[1]
        for child in (first, second):
            child.sendline("a")
        for child in (first, second):  # the third query goes to one of them; the other has nothing left
            more = child.expect([r"your answer \[a/b/t/s/u/q\]: ", "nothing left to label"]) == 0
            assert "already answered" not in child.before and "moving on" not in child.before
            if more:
                child.sendline("q")
            child.expect(pexpect.EOF)
    finally:
        first.close(force=True)
        second.close(force=True)
    with PreferenceStore(path) as store:  # both answers were taken, none refused
        answered = sorted(int(store.get(a.query_id).prompt.split()[1]) for a in store.answers())
        assert answered == sorted(shown) and store.leases() == []


def test_follow_mode_waits_for_new_queries_and_ctrl_c_gives_the_lease_back(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    PreferenceStore(path).close()
    child = _spawn(path, "--follow")
    try:
        child.expect("waiting for new queries")
        with PreferenceStore(path) as store:
            store.add_queries([{"prompt": "fresh 0", "completion_a": "x0", "completion_b": "y0"},
                               {"prompt": "fresh 1", "completion_a": "x1", "completion_b": "y1"}])
        child.expect(r"your answer \[a/b/t/s/u/q\]: ")
        child.sendline("t")
        child.expect(r"your answer \[a/b/t/s/u/q\]: ")  # the second one, on screen and leased
        with PreferenceStore(path) as store:
            assert len(store.leases()) == 1
        child.kill(signal.SIGINT)
        child.expect("interrupted; every answer given is saved")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    with PreferenceStore(path) as store:
        assert [(a.choice, store.get(a.query_id).prompt) for a in store.answers()] == [("tie", "fresh 0")]
        assert store.leases() == []  # given back: another labeller gets it at once


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("none", ["--import", "{tmp}/missing.jsonl", "--web"], "does not exist"),
    ("none", ["--import", "{tmp}", "--web"], "is a folder"),
    ("binary", ["--import", "{tmp}/q.jsonl", "--web"], "not UTF-8"),
    ("nested", ["--import", "{tmp}/q.jsonl", "--web"], "not valid JSON"),
    ("same", ["--import", "{tmp}/q.jsonl", "--web"], "identical"),
    ("surrogate", ["--import", "{tmp}/q.jsonl", "--web"], "lone surrogate"),
    ("escape-keys", ["--import", "{tmp}/q.jsonl", "--web"], "\\x1b[2J"),
    ("none", ["--web", "--follow"], "--follow is for the terminal"),
])
def test_label_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, args: list[str],
                                   message: str) -> None:
    from rlhf_gym.live.cli import main as label_main

    query_file = tmp_path / "q.jsonl"
    contents = {
        "binary": b"\xff\xfe\x00garbage\n",
        "nested": b"[" * 5000 + b"\n",
        "same": b'{"prompt": "p", "completion_a": "x", "completion_b": "x"}\n',
        "surrogate": b'{"prompt": "p", "completion_a": "x\\ud800", "completion_b": "y"}\n',
        "escape-keys": b'{"\\u001b[2J": 1}\n',
    }
    if setup in contents:
        query_file.write_bytes(contents[setup])
    argv = ["--store", str(tmp_path / "store.db"), *[a.format(tmp=tmp_path) for a in args]]
    assert label_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "\x1b" not in err
    assert not (tmp_path / "store.db").exists() or setup not in ("none",)


def test_a_slow_answer_keeps_its_query_and_is_stored(tmp_path: Path) -> None:
    import pty
    import threading
    import time

    master, slave = pty.openpty()
    with PreferenceStore(tmp_path / "p.db") as store, os.fdopen(slave, "r") as stdin:
        (qid,) = store.add_queries([{"prompt": "slow", "completion_a": "x", "completion_b": "y"}])
        labeler = TerminalLabeler(store, annotator="ann", stdin=stdin, lease_s=0.3,
                                  console=Console(file=io.StringIO()))
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(labeler.run()))
        thread.start()
        try:
            time.sleep(1.2)  # four lease lengths of thinking: renewed all along, so nobody else is given it
            assert store.claim("ann", session="another-tab") is None
            assert store.claim("bob", session="bob-1") is None
            os.write(master, b"t\n")
            thread.join(timeout=10)
        finally:
            os.close(master)
        assert [(a.query_id, a.choice) for a in store.answers()] == [(qid, "tie")]
        assert result and result[0].answered == [qid]  # type: ignore[attr-defined]
