"""The ``live-human`` reward provider: a person answers, through the preference store's queue.

Every question goes into the store first (``submit``) and every answer comes out of it (``poll``), so training
can go on while labels arrive, and nothing answered is lost if anything stops. The blocking ``score`` /
``compare`` calls are the special case that submits, then waits according to a :class:`WaitPolicy`, while a
front-end collects the answers:

* ``ui="terminal"``: the terminal prompt asks the submitted questions right here (needs a TTY),
* ``ui="web"``: the local labelling page is served on 127.0.0.1 and its address printed,
* ``ui="queue"``: no front-end; someone labels the store elsewhere (``rlhf-gym label --store …``).

Ratings: ``score`` asks for a rating on ``1..scale``; with ``normalize=True`` (default) it is mapped linearly to
[0, 1] (1 → 0.0, scale → 1.0), otherwise the raw rating is returned. Pairs: ``compare`` returns P(a ≻ b): 1.0,
0.0, 0.5 for a tie, ``None`` for a skip. A question already asked (the same pair in either order, or the same
completion to rate) is never asked again: its stored answer is reused.
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_gym.errors import ConfigError, RLHFGymError
from rlhf_gym.preference_store import Answer, PreferenceBackend, PreferenceStore
from rlhf_gym.providers import RewardProvider, Score

UIS = ("terminal", "web", "queue")
MODES = ("rating", "compare")


class LabellingStopped(RLHFGymError):
    """The person quit the terminal labeller while training was waiting for answers."""


@dataclass(frozen=True)
class WaitPolicy:
    """What a blocking ``score``/``compare`` does while answers are missing.

    Build one directly or from the short forms :meth:`parse` accepts: ``"wait"`` (every answer),
    ``("fraction", 0.8)`` (go on once 80 % are in; the rest stay queued and their answers still reach the store,
    but this batch gets ``None`` for them), ``("timeout", 30)`` (go on after 30 s; unanswered questions are
    withdrawn from the queue and get ``None``).
    """

    min_fraction: float = 1.0  #: share of the batch that must be answered before going on
    timeout_s: float | None = None  #: go on after this many seconds regardless (None: no limit)
    drop_unanswered: bool = False  #: withdraw the questions still unanswered when going on
    poll_interval_s: float = 0.25  #: how often the store is checked while waiting (web and queue)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_fraction <= 1.0:
            raise ConfigError(f"WaitPolicy.min_fraction must be in (0, 1], got {self.min_fraction}")
        if self.timeout_s is not None and not self.timeout_s >= 0:
            raise ConfigError(f"WaitPolicy.timeout_s must be >= 0 seconds or None, got {self.timeout_s}")
        if self.poll_interval_s <= 0:
            raise ConfigError(f"WaitPolicy.poll_interval_s must be > 0, got {self.poll_interval_s}")

    @classmethod
    def parse(cls, spec: Any) -> WaitPolicy:
        """``"wait"``, ``("fraction", f)``, ``("timeout", seconds)`` or a :class:`WaitPolicy`."""
        if isinstance(spec, WaitPolicy):
            return spec
        if spec is None or spec == "wait":
            return cls()
        if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
            name, value = spec
            if name == "fraction":
                return cls(min_fraction=float(value))
            if name == "timeout":
                return cls(timeout_s=float(value), drop_unanswered=True)
        raise ConfigError(
            f"wait_policy {spec!r} is not understood; use 'wait', ('fraction', 0.8), ('timeout', 30) or a "
            f"rlhf_gym.live.WaitPolicy(...)")


def default_annotator() -> str:
    """The login name, or ``"human"`` where there is none."""
    try:
        return getpass.getuser() or "human"
    except Exception:  # no login name in some containers
        return "human"


class LiveHuman(RewardProvider):
    """A person scoring (rating) or comparing completions, through a preference store.

    Args:
        store: the store file (or an open :class:`~rlhf_gym.preference_store.PreferenceBackend` to share). Default:
            a new file in a temporary folder, printed so you can label it with ``rlhf-gym label --store``.
        mode: what :meth:`score` asks: ``"rating"`` (a rating per completion) or ``"compare"`` (a comparison
            with ``row["reference"]``, returning P(completion ≻ reference)). :meth:`compare` always asks pairs.
        scale: the top of the rating scale (``1..scale``).
        ui: ``"terminal"``, ``"web"`` or ``"queue"`` (two-phase only: nothing is shown here).
        wait_policy: see :class:`WaitPolicy`.
        annotator: the id stored with every answer (default: the login name).
        normalize: map ratings to [0, 1] (True) or return the raw rating (False).
        time_limit: seconds per question in the terminal.
        host, port: where the web page listens (``ui="web"``); port 0 picks a free one.
    """

    deterministic = False

    def __init__(self, store: str | os.PathLike[str] | PreferenceBackend | None = None, *, mode: str = "rating",
                 scale: int = 5, ui: str = "terminal", wait_policy: Any = "wait", annotator: str | None = None,
                 normalize: bool = True, time_limit: float | None = None, host: str = "127.0.0.1", port: int = 0):
        if mode not in MODES:
            raise ConfigError(f"live-human mode must be one of {', '.join(MODES)}, got {mode!r}")
        if ui not in UIS:
            raise ConfigError(f"live-human ui must be one of {', '.join(UIS)}, got {ui!r}")
        if int(scale) < 2:
            raise ConfigError(f"live-human scale needs at least 2 points, got {scale}")
        if ui == "terminal":
            from rlhf_gym.live.terminal import require_terminal

            require_terminal()
        self.mode, self.scale, self.ui = mode, int(scale), ui
        self.wait_policy = WaitPolicy.parse(wait_policy)
        self.annotator = annotator or default_annotator()
        self.normalize = normalize
        self.time_limit = time_limit
        self.host, self.port = host, port
        self._owns_store = not isinstance(store, PreferenceBackend)
        if isinstance(store, PreferenceBackend):
            self.store = store
        else:
            path = Path(store) if store is not None else Path(tempfile.mkdtemp(prefix="rlhf_gym_live_")) / "preferences.db"
            self.store = PreferenceStore(path)
            if store is None:
                print(f"live-human: preference store at {path}", file=sys.stderr)
        #: seconds between "still waiting" reminders while a batch waits for answers (web and queue)
        self.reminder_interval_s = 60.0
        #: batches that went on with answers missing (wait policy's timeout), and whether the last one did
        self.timeouts = 0
        self.last_call_timed_out = False
        self._submitted: dict[int, None] = {}  # ordered set of ids handed out by submit()
        self._polled: set[int] = set()
        self._web: Any = None

    # -- two-phase API ---------------------------------------------------------------------------------------------
    def submit(self, prompts: Sequence[str], completions_a: Sequence[str],
               completions_b: Sequence[str] | None = None) -> list[int]:
        """Queue questions and return their query ids at once (pairs when ``completions_b`` is given, else ratings).

        A question asked before returns the existing id; if it was answered, :meth:`poll` has the answer at once.
        Answers are in the stored query's orientation (check ``store.get(id).completion_a``).
        """
        n = len(prompts)
        if len(completions_a) != n or (completions_b is not None and len(completions_b) != n):
            raise ValueError("submit() needs prompts and completions of the same length")
        rows = []
        for i in range(n):
            row: dict[str, Any] = {"prompt": prompts[i], "completion_a": completions_a[i]}
            if completions_b is None:
                row["scale"] = self.scale
            else:
                row["completion_b"] = completions_b[i]
            rows.append(row)
        new_ids = self.store.add_queries(rows, requested_by=self.name or "live-human")
        ids = []
        for row, qid in zip(rows, new_ids, strict=True):
            if qid is None:
                found = self.store.find(row["prompt"], row["completion_a"], row.get("completion_b"),
                                        scale=row.get("scale"))
                assert found is not None
                qid = found.id
            ids.append(qid)
            self._submitted[qid] = None
        return ids

    def poll(self) -> list[Answer]:
        """Answers to submitted questions that arrived since the last poll (never blocks)."""
        waiting = [i for i in self._submitted if i not in self._polled]
        fresh = self.store.answers(query_ids=waiting) if waiting else []
        self._polled.update(a.query_id for a in fresh)
        return fresh

    def wait(self, query_ids: Sequence[int], policy: Any = None) -> dict[int, Answer]:
        """Block until the policy is satisfied while the front-end collects answers; returns the answers in."""
        policy = self.wait_policy if policy is None else WaitPolicy.parse(policy)
        ids = list(dict.fromkeys(int(i) for i in query_ids))
        if not ids:
            return {}
        need = math.ceil(policy.min_fraction * len(ids) - 1e-9)
        deadline = None if policy.timeout_s is None else time.monotonic() + policy.timeout_s

        def answered() -> dict[int, Answer]:
            return {a.query_id: a for a in self.store.answers(query_ids=ids)}

        got = answered()
        self.last_call_timed_out = False
        announced = None
        while len(got) < need and (deadline is None or time.monotonic() < deadline):
            if self.ui == "terminal":
                got = self._ask_in_terminal(ids, need, deadline)
                if len(got) < need and (deadline is None or time.monotonic() < deadline):
                    # questions timed out one by one: nothing more can be asked right now
                    break
            else:
                if self.ui == "web":
                    self._ensure_web()
                if announced is None or time.monotonic() - announced >= self.reminder_interval_s:
                    self._announce_wait(len(ids), len(got), need, policy, first=announced is None)
                    announced = time.monotonic()
                time.sleep(policy.poll_interval_s)
                got = answered()
        if len(got) < need:
            self.timeouts += 1
            self.last_call_timed_out = True
            if self.ui != "terminal" and policy.timeout_s is not None:
                print(f"live-human: {len(ids) - len(got)} of {len(ids)} queries unanswered after "
                      f"{policy.timeout_s:g} s; training goes on without their scores", file=sys.stderr, flush=True)
        if policy.drop_unanswered:
            self.store.withdraw([i for i in ids if i not in got])
            got = answered()  # an answer may have landed just before the withdrawal
        return got

    def _announce_wait(self, total: int, answered: int, need: int, policy: WaitPolicy, first: bool) -> None:
        """Say on stderr that training waits, for whom and where (once, then every ``reminder_interval_s``)."""
        where = f"the page at {self._web.url}" if self._web is not None else \
            f"`rlhf-gym label --store {self.store.location}`"
        who = f"annotator {self.annotator!r}" if self.ui == "web" else "an annotator"
        limit = "" if policy.timeout_s is None else f" (at most {policy.timeout_s:g} s)"
        if first:
            print(f"live-human: waiting for {who} to answer {need - answered} of {total} queries in store "
                  f"{self.store.location} — answer them with {where}{limit}", file=sys.stderr, flush=True)
        else:
            print(f"live-human: still waiting for {who}: {answered} of {total} answered, {need} needed{limit}",
                  file=sys.stderr, flush=True)

    def apply_timeout(self, seconds: float) -> None:
        """Give up waiting after ``seconds`` per batch (tighter limits already set stay); unanswered queries are
        withdrawn and score ``None``, answers given in time are kept."""
        current = self.wait_policy.timeout_s
        limit = seconds if current is None else min(current, seconds)
        self.wait_policy = dataclasses.replace(self.wait_policy, timeout_s=limit, drop_unanswered=True)

    # -- provider API ------------------------------------------------------------------------------------------------
    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        """Ratings (mode ``"rating"``) or P(completion ≻ ``row["reference"]``) (mode ``"compare"``)."""
        if self.mode == "compare":
            reference = row.get("reference")
            if reference is None or len(reference) != len(prompts):
                raise ConfigError(
                    "live-human in mode='compare' scores a completion against row['reference'] (one reference "
                    "completion per prompt, e.g. a dataset's 'reference' column); pass it, call compare(), or use "
                    "mode='rating'")
            return self.compare(prompts, completions, [str(r) for r in reference])
        ids = self.submit(prompts, completions)
        got = self.wait(ids)
        out: list[Score] = []
        for qid in ids:
            ans = got.get(qid)
            if ans is None or ans.label is None:
                out.append(None)
            elif self.normalize:
                scale = self.store.get(qid).scale or self.scale
                out.append((ans.label - 1.0) / (scale - 1.0))
            else:
                out.append(ans.label)
        return out

    def compare(self, prompts: list[str], completions_a: list[str], completions_b: list[str],
                **row: Any) -> list[Score]:
        """P(a ≻ b) per pair from the person's answers: 1.0, 0.0, 0.5 (tie) or ``None`` (skip, unanswered)."""
        n = len(prompts)
        out: list[Score] = [None] * n
        ask = [i for i in range(n) if completions_a[i] != completions_b[i]]
        for i in range(n):
            if completions_a[i] == completions_b[i]:
                out[i] = 0.5  # identical texts: nothing to ask
        if not ask:
            return out
        ids = self.submit([prompts[i] for i in ask], [completions_a[i] for i in ask], [completions_b[i] for i in ask])
        got = self.wait(ids)
        for i, qid in zip(ask, ids, strict=True):
            ans = got.get(qid)
            if ans is None or ans.label is None:
                continue
            same_order = self.store.get(qid).completion_a == completions_a[i]
            out[i] = ans.label if same_order else 1.0 - ans.label
        return out

    def close(self) -> None:
        """Stop the web page (if any) and close the store (if this provider opened it)."""
        if self._web is not None:
            self._web.stop()
            self._web = None
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> LiveHuman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- front-ends --------------------------------------------------------------------------------------------------
    def _ask_in_terminal(self, ids: list[int], need: int, deadline: float | None) -> dict[int, Answer]:
        from rlhf_gym.live.terminal import TerminalLabeler

        def answered() -> dict[int, Answer]:
            return {a.query_id: a for a in self.store.answers(query_ids=ids)}

        labeler = TerminalLabeler(self.store, annotator=self.annotator, time_limit=self.time_limit,
                                  source=self.name or "live-human")
        summary = labeler.run(ids, deadline=deadline, enough=lambda: len(answered()) >= need)
        if summary.stopped_by in ("quit", "eof"):
            raise LabellingStopped(
                f"labelling stopped by {self.annotator}; every answer given is saved in {self.store.location}. "
                f"Continue with `rlhf-gym label --store {self.store.location} --resume`.")
        return answered()

    def _ensure_web(self) -> None:
        if self._web is None:
            from rlhf_gym.live.web import WebLabelServer

            self._web = WebLabelServer(self.store, annotator=self.annotator, host=self.host, port=self.port).start()
            print(f"live-human: answer the queries at {self._web.url}", file=sys.stderr, flush=True)
