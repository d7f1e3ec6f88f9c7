"""The terminal labeller: asks a person the pending queries of a preference store, one at a time.

Used by ``rlhf-gym label`` and by the ``live-human`` provider with ``ui="terminal"``. It shows the prompt and
the two completions (sides shuffled per question, so position bias does not become a label) or one completion
to rate, and reads one answer per line:

* pairs: ``a`` (A is better), ``b`` (B is better), ``t`` (tie), ``s`` (skip / can't tell),
* ratings: a number ``1..scale`` or ``s``,
* always: ``u`` (undo my last answer and ask it again), ``q`` (quit), ``?`` (help).

Shown text is untrusted (model output): control characters, escape sequences and invisible format characters are
drawn as visible escapes (:mod:`rlhf_gym.live.visible`), never sent to the terminal.

Every answer goes to the store, which commits it before the next question is shown, so quitting, Ctrl-C, a
closed terminal or a killed process loses nothing that was answered. With a time limit per question, a question
left unanswered stays in the queue and the next one is shown.
"""

from __future__ import annotations

import os
import random
import secrets
import select
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from rlhf_gym.errors import RLHFGymError
from rlhf_gym.live.visible import visible, visible_text
from rlhf_gym.preference_store import (
    DEFAULT_LEASE_S,
    AlreadyAnsweredError,
    LeasedElsewhereError,
    PreferenceBackend,
    Query,
    UnknownQueryError,
)

#: how often a session waiting for answers other sessions are giving looks again (seconds)
WAIT_FOR_OTHERS_S = 0.5
#: how often ``follow`` mode looks for new queries (seconds)
FOLLOW_POLL_S = 0.5
#: the longest time between renewals of the lease on the query on screen while the person thinks (seconds)
RENEW_EVERY_S = 60.0
PAIR_HELP = "a = A is better · b = B is better · t = tie · s = skip/can't tell · u = undo last · q = quit"


class NoTerminalError(RLHFGymError):
    """The terminal labeller was asked to run where nobody can type (stdin is not a terminal)."""


def no_terminal_message() -> str:
    """What to do when there is no interactive terminal."""
    return ("the terminal labeller needs an interactive terminal, but stdin is not a TTY (a pipe, a batch job, a "
            "notebook?). Label in a browser with `rlhf-gym label --web --store <file>`, or build the provider with "
            "ui='web', or ui='queue' and use its submit()/poll() methods while someone labels the store elsewhere.")


def require_terminal(stream: IO[Any] | None = None) -> None:
    """Raise :class:`NoTerminalError` (with what to do instead) unless ``stream`` (default stdin) is a TTY."""
    stream = sys.stdin if stream is None else stream
    try:
        interactive = bool(stream.isatty())
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        raise NoTerminalError(no_terminal_message())


@dataclass
class SessionSummary:
    """What one labelling session did."""

    answered: list[int] = field(default_factory=list)  #: query ids answered, in order (undone ones removed)
    undone: int = 0  #: answers taken back with ``u``
    timed_out: list[int] = field(default_factory=list)  #: queries left in the queue when their time ran out
    stopped_by: str = "done"  #: ``done`` (nothing left), ``quit``, ``eof`` (terminal closed), ``enough``, ``deadline``
    held_by_others: list[int] = field(default_factory=list)  #: pending queries other sessions were answering at the end


class _LineReader:
    """Reads whole lines from a file descriptor with a timeout, keeping any extra typed-ahead lines."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def readline(self, timeout: float | None) -> str | None:
        """The next line without its newline; ``None`` on timeout; ``""`` plus ``eof`` set at end of input."""
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.eof:
                line, self.buffer = self.buffer, b""
                return line.decode("utf-8", "replace")
            wait = None if end is None else max(0.0, end - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.eof = True
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace").strip("\r")


class TerminalLabeler:
    """Ask the pending queries of ``store`` in the terminal and record the answers.

    Args:
        store: the preference store holding the queue.
        annotator: the id recorded with every answer (and whose answers ``u`` takes back).
        kind: ask only ``"compare"`` or ``"rating"`` queries (default: both).
        time_limit: seconds per question; an unanswered question stays queued and the next one is shown.
        stdin: where answers are read from (default ``sys.stdin``; must be a terminal).
        console: where questions are drawn (default: a rich console on stdout).
        seed: seeds the side shuffling (default: fresh randomness).
        source: recorded with each answer as the front-end that produced it.
        follow: when the queue is empty, wait for new queries (live training) instead of returning.
        lease_s: how long the query on screen stays reserved without renewal; it is renewed every third of that
            (at most every :data:`RENEW_EVERY_S`) while the person thinks.
    """

    def __init__(self, store: PreferenceBackend, *, annotator: str, kind: str | None = None,
                 time_limit: float | None = None, stdin: IO[Any] | None = None, console: Console | None = None,
                 seed: int | None = None, source: str = "terminal", follow: bool = False,
                 lease_s: float = DEFAULT_LEASE_S):
        if time_limit is not None and time_limit <= 0:
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
        self.store = store
        self.annotator = annotator
        self.kind = kind
        self.time_limit = time_limit
        self.stdin = sys.stdin if stdin is None else stdin
        self.console = console or Console(highlight=False)
        self.rng = random.Random(seed)
        self.source = source
        self.follow = follow
        if not lease_s > 0:
            raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s}")
        self.lease_s = lease_s
        #: this labelling session: two terminals of one annotator lease different queries
        self.session = f"terminal:{secrets.token_hex(6)}"
        self._renewed_at = 0.0  # when the lease on the query on screen was last taken or renewed

    def run(self, query_ids: Iterable[int] | None = None, *, deadline: float | None = None,
            enough: Callable[[], bool] | None = None) -> SessionSummary:
        """Ask until the queue (or ``query_ids``) is empty, the person quits, ``enough()`` or ``deadline``.

        With ``follow``, an empty queue is waited on instead (``q`` + Enter or Ctrl-C stops). ``deadline`` is a
        ``time.monotonic()`` value. Whatever ends the session (Ctrl-C included), the query on screen is given back
        to the queue. Raises :class:`NoTerminalError` when stdin is not a TTY.
        """
        require_terminal(self.stdin)
        try:
            return self._run(query_ids, deadline, enough)
        finally:
            self.store.release_session(self.annotator, self.session)

    def _run(self, query_ids: Iterable[int] | None, deadline: float | None,
             enough: Callable[[], bool] | None) -> SessionSummary:
        ids = None if query_ids is None else [int(i) for i in query_ids]
        reader = _LineReader(self.stdin.fileno())
        summary = SessionSummary()
        ask_first: int | None = None
        waiting = False
        while True:
            if enough is not None and enough():
                summary.stopped_by = "enough"
                break
            if deadline is not None and time.monotonic() >= deadline:
                summary.stopped_by = "deadline"
                break
            # Leased to this session: other labellers, and this labeller's other terminals and tabs, are not shown it.
            query = self.store.claim(self.annotator, session=self.session, kind=self.kind, query_ids=ids,
                                     exclude=summary.timed_out, prefer=ask_first, lease_s=self.lease_s)
            ask_first = None
            if query is None:
                queue = [q for q in self.store.pending(kind=self.kind, query_ids=ids)
                         if q.id not in summary.timed_out]
                leased = self.store.leased()
                held = [q.id for q in queue if q.id in leased]
                if held and enough is not None:  # a caller waits for these: another session is answering them
                    time.sleep(WAIT_FOR_OTHERS_S)
                    continue
                if self.follow:
                    if not waiting:
                        others = f" ({len(held)} on other screens)" if held else ""
                        self.console.print(f"[dim]waiting for new queries{others}… q + Enter stops[/]")
                        waiting = True
                    line = reader.readline(FOLLOW_POLL_S)
                    if reader.eof and not line:
                        summary.stopped_by = "eof"
                        return summary
                    if line is not None and line.strip().lower() in ("q", "quit"):
                        summary.stopped_by = "quit"
                        self.console.print("stopped; every answer so far is saved.")
                        return summary
                    continue
                summary.held_by_others = held
                summary.stopped_by = "done"
                break
            waiting = False
            left = len(self.store.pending(kind=self.kind, query_ids=ids))
            swapped = query.kind == "compare" and self.rng.random() < 0.5
            self._show(query, swapped, done=len(summary.answered), left=left)
            shown_at = self._renewed_at = time.monotonic()
            while True:
                limit = self.time_limit
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    limit = remaining if limit is None else min(limit, remaining)
                if limit is not None:
                    limit = max(0.0, limit - (time.monotonic() - shown_at))
                self.console.print(self._ask_line(query), end="")
                line = self._read_renewing(reader, query, limit)
                if line is None:
                    self.console.print()
                    self.console.print("[yellow]time's up — the question stays in the queue[/]")
                    summary.timed_out.append(query.id)
                    self.store.release(query.id, self.annotator, session=self.session)
                    break
                if reader.eof and not line:
                    self.console.print()
                    summary.stopped_by = "eof"
                    return summary
                key = line.strip().lower()
                if key in ("q", "quit"):
                    summary.stopped_by = "quit"
                    self.console.print("stopped; every answer so far is saved.")
                    return summary
                if key in ("?", "h", "help"):
                    self.console.print(Text(self._help(query)))
                    continue
                if key in ("u", "undo"):
                    undone = self.store.undo_last(self.annotator)
                    if undone is None:
                        self.console.print("[yellow]nothing to undo[/]")
                        continue
                    summary.undone += 1
                    if undone.id in summary.answered:
                        summary.answered.remove(undone.id)
                    self.console.print(f"[cyan]undone: query {undone.id} will be asked again[/]")
                    self.store.release(query.id, self.annotator, session=self.session)
                    ask_first = undone.id
                    break
                label = self._parse(query, key, swapped)
                if label is _INVALID:
                    self.console.print(Text(f"{visible(repr(line.strip()))} is not an answer here. ", style="red")
                                       + Text(self._help(query)))
                    continue
                meta = {"elapsed_s": round(time.monotonic() - shown_at, 3)}
                if query.kind == "compare":
                    meta["swapped"] = swapped
                try:
                    self.store.answer(query.id, label, annotator=self.annotator, source=self.source, meta=meta,
                                      session=self.session)
                except (AlreadyAnsweredError, UnknownQueryError, LeasedElsewhereError) as exc:
                    self.console.print(Text(f"{visible(str(exc))}; moving on", style="yellow"))
                    break
                summary.answered.append(query.id)
                break
        if summary.stopped_by == "done":
            others = (f"; {len(summary.held_by_others)} more are being answered in other sessions"
                      if summary.held_by_others else "")
            self.console.print(f"[green]nothing left to label[/] ({len(summary.answered)} answered this "
                               f"session{others})")
        return summary

    def _read_renewing(self, reader: _LineReader, query: Query, limit: float | None) -> str | None:
        """Read the answer line within ``limit`` seconds, renewing this session's lease on ``query`` while the
        person thinks, so a slow answer is never refused because the query went to someone else meanwhile."""
        end = None if limit is None else time.monotonic() + limit
        while True:
            wait = min(RENEW_EVERY_S, self.lease_s / 3) - (time.monotonic() - self._renewed_at)
            if end is not None:
                wait = min(wait, end - time.monotonic())
            line = reader.readline(max(0.0, wait))
            if line is not None or (end is not None and time.monotonic() >= end):
                return line
            self.store.renew(query.id, self.annotator, session=self.session, lease_s=self.lease_s)
            self._renewed_at = time.monotonic()

    # -- drawing -------------------------------------------------------------------------------------------------
    def _show(self, query: Query, swapped: bool, done: int, left: int) -> None:
        self.console.print()
        self.console.rule(f"query {query.id} · {done} answered this session · {left} pending", style="dim")
        self.console.print(Panel(visible_text(query.prompt), title="Prompt", title_align="left", border_style="blue"))
        if query.kind == "compare":
            assert query.completion_b is not None
            first, second = (query.completion_b, query.completion_a) if swapped else (
                query.completion_a, query.completion_b)
            self.console.print(Panel(visible_text(first), title="A", title_align="left", border_style="green"))
            self.console.print(Panel(visible_text(second), title="B", title_align="left", border_style="magenta"))
        else:
            self.console.print(Panel(visible_text(query.completion_a), title="Completion", title_align="left",
                                     border_style="green"))
        self.console.print(Text(self._help(query), style="dim"))

    def _help(self, query: Query) -> str:
        if query.kind == "compare":
            text = PAIR_HELP
        else:
            text = f"1-{query.scale} = your rating (1 = worst, {query.scale} = best) · s = skip · u = undo last · q = quit"
        if self.time_limit is not None:
            text += f" · {self.time_limit:g} s per question"
        return text

    def _ask_line(self, query: Query) -> Text:
        return Text("your answer [a/b/t/s/u/q]: " if query.kind == "compare"
                    else f"your rating [1-{query.scale}/s/u/q]: ", style="bold")

    @staticmethod
    def _parse(query: Query, key: str, swapped: bool) -> Any:
        if key in ("s", "skip"):
            return "skip"
        if query.kind == "compare":
            if key in ("t", "tie"):
                return "tie"
            if key in ("a", "b"):
                shown_first = key == "a"
                return "a" if shown_first != swapped else "b"
            return _INVALID
        try:
            value = int(key)
        except ValueError:
            return _INVALID
        return value if 1 <= value <= (query.scale or 5) else _INVALID


_INVALID = object()
