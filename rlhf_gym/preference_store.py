"""The preference store: one database per experiment holding the queue of queries and every answer.

Preference labels are expensive (a person's time), so they live in a real database rather than in files
appended by hand. A labelling page, a terminal prompt and a training process can all use the same store at once;
every answer is committed the moment it is given, so a killed process loses nothing that was answered.

Two kinds of query are kept:

* ``compare``: a prompt and two completions; the answer is P(a preferred over b): ``1.0`` (a), ``0.0`` (b),
  ``0.5`` (tie), a soft probability from a simulated judge, or a skip ("can't tell", no label).
* ``rating``: a prompt and one completion rated on a ``1..scale`` scale (or skipped).

The same query is never asked twice: a unique key on a hash of (kind, prompt, the completions — for pairs, in
sorted order) makes :meth:`PreferenceBackend.add_query` return ``None`` for a pair already asked in either order.
Nor is one query shown to two labellers at once: front-ends take the next query with :meth:`PreferenceBackend.claim`,
which leases it to one labelling session (a terminal, a browser tab) of a labeller until it is answered, released,
or the lease (10 minutes by default, renewed while it is on screen) runs out; a lease whose process has died on this
machine is free at once. A front-end answers with its ``session``, so a query leased to someone else is refused
(:class:`LeasedElsewhereError`) rather than answered twice.

A damaged file (a torn page, flipped bytes) raises :class:`DamagedStoreError` with what to do, never a bare SQLite
error; :meth:`PreferenceStore.verify` runs SQLite's full integrity check before anything trusts every row.

Preference pairs export to, and import from, TRL's column format (``prompt``, ``chosen``, ``rejected``, plus
``margin``, ``label``, ``annotator``, ``source``, ``created_at``, ``answered_at``) as JSONL, Parquet or a
``datasets.Dataset``.

:class:`PreferenceBackend` is the storage-agnostic interface (label parsing, TRL conversion and file formats
live there); :class:`PreferenceStore` implements it on SQLite from the standard library (WAL mode). A server
database (PostgreSQL, for many labellers on many machines) implements the same abstract methods.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "prefs.db")
    >>> with PreferenceStore(path) as store:
    ...     qid = store.add_query("Say hi", "Hello!", "Go away.", requested_by="doc")
    ...     store.add_query("Say hi", "Go away.", "Hello!") is None      # same pair, other order
    ...     store.answer(qid, "a", annotator="ann", source="doc").label
    ...     [(p["chosen"], p["rejected"]) for p in store.pairs()]
    True
    1.0
    [('Hello!', 'Go away.')]
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlhf_gym.errors import PreferenceStoreError

#: the TRL columns a preference file must have
TRL_REQUIRED_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")
#: every column :meth:`PreferenceBackend.pairs` writes
EXPORT_COLUMNS: tuple[str, ...] = (
    "prompt", "chosen", "rejected", "margin", "label", "annotator", "source", "created_at", "answered_at",
)
QUERY_KINDS: tuple[str, ...] = ("compare", "rating")

_CHOICE_LABELS: dict[str, float | None] = {"a": 1.0, "b": 0.0, "tie": 0.5, "t": 0.5, "skip": None, "s": None}


class AlreadyAnsweredError(PreferenceStoreError):
    """The query already has an answer (another labeller or page got there first)."""


class LeasedElsewhereError(PreferenceStoreError):
    """The query is leased to another labelling session (another labeller, or another tab of the same one)."""


class DamagedStoreError(PreferenceStoreError):
    """The store's file is damaged (SQLite reports a malformed page or fails its integrity check)."""


class UnknownQueryError(PreferenceStoreError, KeyError):
    """No query with that id (never added, or withdrawn)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


#: the most often a store copies its write-ahead log into the database file after bulk writes (seconds); an answer
#: from a labelling session (``answer(..., session=...)``) is copied at once
CHECKPOINT_EVERY_S = 1.0
#: seconds a claimed query stays reserved for its labeller without an answer (see PreferenceBackend.claim)
DEFAULT_LEASE_S = 600.0


def utc_now() -> str:
    """The current time as UTC ISO-8601 with milliseconds, e.g. ``2025-01-31T12:00:00.123+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def query_key(kind: str, prompt: str, completion_a: str, completion_b: str | None = None,
              scale: int | None = None) -> str:
    """The dedup key of a query: a SHA-256 of (kind, prompt, completions in sorted order, scale)."""
    if kind == "compare":
        body: list[Any] = [kind, prompt, sorted([completion_a, completion_b or ""])]
    else:
        body = [kind, prompt, completion_a, scale]
    return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Query:
    """One question for a labeller."""

    id: int
    kind: str  #: ``"compare"`` or ``"rating"``
    prompt: str
    completion_a: str
    completion_b: str | None  #: ``None`` for ratings
    scale: int | None  #: the rating scale's top value (ratings only)
    requested_by: str  #: who asked (a provider, a collection run, an import)
    created_at: str  #: UTC ISO-8601
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """One answer to a query."""

    id: int
    query_id: int
    choice: str  #: ``"a"``, ``"b"``, ``"tie"``, ``"skip"`` (pairs) or ``"rating"``
    label: float | None  #: P(a preferred over b) for pairs, the raw rating for ratings; ``None`` when skipped
    annotator: str
    source: str  #: the front-end or provider that produced it (``terminal``, ``web``, ``simulated-human``...)
    answered_at: str  #: UTC ISO-8601
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """True for "skip / can't tell" (different from a tie)."""
        return self.choice == "skip"


@dataclass(frozen=True)
class Lease:
    """A pending query on someone's screen: who holds it, in which labelling session, until when."""

    query_id: int
    holder: str  #: the labeller (annotator id)
    session: str  #: the labelling session (a terminal process, a browser tab); ``""`` for the labeller as a whole
    expires_at: float  #: unix seconds


@dataclass(frozen=True)
class ImportResult:
    """What an import did."""

    added: int  #: pairs stored (each as a query with its answer)
    duplicates: int  #: pairs already in the store (in either order), left untouched


def parse_label(label: Any, kind: str = "compare", scale: int | None = None) -> tuple[str, float | None]:
    """Normalise an answer to ``(choice, label)``.

    Pairs accept ``1.0``/``0.0``/``0.5``/``None``, any probability in [0, 1], or ``"a"``/``"b"``/``"tie"``/``"skip"``
    (also ``"t"``/``"s"``). Ratings accept a number in ``1..scale`` or ``None``/``"skip"``.
    """
    if isinstance(label, str):
        key = label.strip().lower()
        if key not in _CHOICE_LABELS:
            if kind == "rating":
                try:
                    label = float(key)
                except ValueError:
                    raise ValueError(f"rating {label!r} is not a number; give 1..{scale} or 'skip'") from None
            else:
                raise ValueError(f"answer {label!r} is not one of 'a', 'b', 'tie', 'skip' (or 1.0/0.0/0.5/None)")
        else:
            value = _CHOICE_LABELS[key]
            if value is None:
                return "skip", None
            if kind == "rating":
                raise ValueError(f"answer {label!r} is for pairs; a rating query needs a number 1..{scale} or 'skip'")
            return {1.0: "a", 0.0: "b", 0.5: "tie"}[value], value
    if label is None:
        return "skip", None
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        raise ValueError(f"answer {label!r} must be a number, None, or one of 'a', 'b', 'tie', 'skip'")
    value = float(label)
    if not math.isfinite(value):
        raise ValueError(f"answer {label!r} is not finite; use None (or 'skip') for no answer")
    if kind == "rating":
        top = scale or 5
        if not 1 <= value <= top:
            raise ValueError(f"rating {label!r} is outside the scale 1..{top}")
        return "rating", value
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"answer {label!r} is not a probability in [0, 1] (1.0 = a, 0.0 = b, 0.5 = tie)")
    return ("a" if value > 0.5 else "b" if value < 0.5 else "tie"), value


# ---------------------------------------------------------------------------------------------------------------
# The storage-agnostic interface
# ---------------------------------------------------------------------------------------------------------------


class PreferenceBackend(abc.ABC):
    """What every preference store offers, whatever database is behind it.

    A backend implements the abstract methods (the queue, answers and the bulk insert used by imports); the
    TRL conversion and the file formats are shared here. Backends are context managers.
    """

    #: where the data lives (a file path or a server URL), for messages
    location: str = ""

    # -- abstract: the queue --------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_queries(self, queries: Iterable[Mapping[str, Any]], *, requested_by: str = "unknown") -> list[int | None]:
        """Queue several queries in one transaction; ``None`` for each one already asked.

        Each mapping has ``prompt``, ``completion_a`` and, for pairs, ``completion_b``; optional ``kind``
        (default: ``compare`` when ``completion_b`` is given, else ``rating``), ``scale``, ``meta`` and
        ``requested_by``.
        """

    @abc.abstractmethod
    def find(self, prompt: str, completion_a: str, completion_b: str | None = None, *,
             scale: int | None = None) -> Query | None:
        """The query already asked for this pair (either order) or rating, or ``None``."""

    @abc.abstractmethod
    def get(self, query_id: int) -> Query:
        """The query with this id; :class:`UnknownQueryError` if there is none."""

    @abc.abstractmethod
    def pending(self, limit: int | None = None, *, kind: str | None = None,
                query_ids: Iterable[int] | None = None) -> list[Query]:
        """Unanswered queries, oldest first (a skip counts as answered). Filter by kind or by ids."""

    @abc.abstractmethod
    def withdraw(self, query_ids: Iterable[int]) -> int:
        """Remove those of ``query_ids`` that are still unanswered from the queue; returns how many."""

    @abc.abstractmethod
    def claim(self, holder: str, *, session: str = "", kind: str | None = None,
              query_ids: Iterable[int] | None = None, exclude: Iterable[int] = (), prefer: int | None = None,
              lease_s: float = DEFAULT_LEASE_S) -> Query | None:
        """Lease a pending query to ``holder``'s ``session`` so no other session is shown it; ``None`` when there is
        none to claim.

        The session's own lease comes first (a reload shows the same query), then ``prefer`` if it is claimable,
        then the oldest pending query nobody else holds. A session holds one lease: claiming another gives back
        the previous one. A lease lasts ``lease_s`` seconds, ends when the query is answered or released, and is
        free at once when the process that took it has died on this machine, so a labeller whose terminal was
        killed gets the query back on restart. ``holder`` names the labeller (front-ends pass the annotator id);
        ``session`` tells apart two terminals or tabs of the same labeller (``""``: the labeller as a whole).
        """

    @abc.abstractmethod
    def renew(self, query_id: int, holder: str, *, session: str = "", lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Extend ``session``'s lease on a query still on its screen (or take it again if nobody else holds it
        and it is unanswered); whether the session holds it now."""

    @abc.abstractmethod
    def release(self, query_id: int, holder: str, *, session: str = "") -> bool:
        """Give back ``holder``'s (``session``'s) lease on ``query_id`` (the query stays pending); whether there
        was one."""

    @abc.abstractmethod
    def release_session(self, holder: str, session: str = "") -> int:
        """Give back every lease of one session (a front-end closing); returns how many."""

    @abc.abstractmethod
    def leases(self) -> list[Lease]:
        """Unexpired leases on pending queries, by query id."""

    def leased(self) -> dict[int, str]:
        """Unexpired leases on pending queries: ``{query_id: holder}``."""
        return {lease.query_id: lease.holder for lease in self.leases()}

    # -- abstract: answers -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def answer(self, query_id: int, label: Any, *, annotator: str, source: str,
               meta: Mapping[str, Any] | None = None, session: str | None = None) -> Answer:
        """Record an answer and commit it before returning (see :func:`parse_label` for accepted labels).

        A front-end passes its ``session``: the answer is then refused with :class:`LeasedElsewhereError` when
        another session holds a live lease on the query (an expired lease, or none, does not stop it).

        Raises :class:`AlreadyAnsweredError` if the query already has one, :class:`UnknownQueryError` if it
        does not exist.
        """

    @abc.abstractmethod
    def undo_last(self, annotator: str) -> Query | None:
        """Delete ``annotator``'s most recent answer, so its query is pending again; returns that query."""

    @abc.abstractmethod
    def answers(self, *, query_ids: Iterable[int] | None = None, annotator: str | None = None,
                after_id: int | None = None) -> list[Answer]:
        """Answers in the order given, optionally only for some queries, one annotator, or newer than an id."""

    @abc.abstractmethod
    def answered_pairs(self, include_ties: bool = False) -> list[tuple[Query, Answer]]:
        """Every answered ``compare`` query with its answer (skips never; ties only when asked)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts: ``queries``, ``answered``, ``pending``, per choice, ``annotators`` and ``leased`` (pending
        queries another labeller is being shown)."""

    @abc.abstractmethod
    def _insert_answered(self, rows: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> ImportResult:
        """Store (query, answer) pairs in one transaction, leaving duplicates alone. Used by imports."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Safe to call twice."""

    @abc.abstractmethod
    def verify(self) -> None:
        """Raise :class:`DamagedStoreError` unless every stored row can be trusted (the database's own integrity
        check, and each row against its checksum)."""

    # -- shared conveniences ----------------------------------------------------------------------------------

    def add_query(self, prompt: str, completion_a: str, completion_b: str | None = None, *,
                  requested_by: str = "unknown", scale: int | None = None,
                  meta: Mapping[str, Any] | None = None) -> int | None:
        """Queue one query (a pair, or a rating when ``completion_b`` is ``None``); ``None`` if already asked."""
        row: dict[str, Any] = {"prompt": prompt, "completion_a": completion_a, "completion_b": completion_b,
                               "meta": dict(meta or {})}
        if scale is not None:
            row["scale"] = scale
        return self.add_queries([row], requested_by=requested_by)[0]

    def count(self) -> int:
        """Number of queries in the store (answered or not)."""
        return int(self.stats()["queries"])

    def pairs(self, include_ties: bool = False) -> list[dict[str, Any]]:
        """Answered pairs in TRL's columns (see :data:`EXPORT_COLUMNS`); skips are never exported.

        ``chosen`` is the preferred completion and ``label`` is P(chosen preferred over rejected): 1.0 for a clear
        answer, a soft probability from a simulated judge, 0.5 for ties (only with ``include_ties``). ``margin``
        is the one imported with the pair, otherwise ``2 * label - 1`` (1 for a clear answer, 0 for a tie), the
        quantity TRL's reward trainer subtracts from the reward difference.
        """
        out = []
        for query, ans in self.answered_pairs(include_ties=include_ties):
            assert ans.label is not None and query.completion_b is not None
            a_wins = ans.label >= 0.5
            chosen, rejected = (query.completion_a, query.completion_b) if a_wins else (
                query.completion_b, query.completion_a)
            label = ans.label if a_wins else 1.0 - ans.label
            margin = ans.meta.get("margin", 2.0 * label - 1.0)
            fmt = query.meta.get("format")
            out.append({
                "prompt": _restore(query.prompt, fmt),
                "chosen": _restore(chosen, fmt),
                "rejected": _restore(rejected, fmt),
                "margin": float(margin),
                "label": float(label),
                "annotator": ans.annotator,
                "source": ans.source,
                "created_at": query.created_at,
                "answered_at": ans.answered_at,
            })
        return out

    def export(self, path: str | os.PathLike[str], include_ties: bool = False) -> int:
        """Write the answered pairs to ``.jsonl`` or ``.parquet`` in TRL's format; returns how many rows."""
        path = Path(path)
        rows = self.pairs(include_ties=include_ties)
        suffix = path.suffix.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".jsonl":
            with path.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in EXPORT_COLUMNS})
            pq.write_table(table, path)
        else:
            raise PreferenceStoreError(f"cannot export to {str(path)!r}: use a .jsonl or .parquet file name")
        return len(rows)

    def to_dataset(self, include_ties: bool = False) -> Any:
        """The answered pairs as a ``datasets.Dataset`` with TRL's columns."""
        import datasets

        rows = self.pairs(include_ties=include_ties)
        if not rows:
            return datasets.Dataset.from_dict({c: [] for c in EXPORT_COLUMNS})
        return datasets.Dataset.from_list(rows)

    def import_file(self, path: str | os.PathLike[str], *, source: str | None = None,
                    annotator: str = "imported") -> ImportResult:
        """Load a TRL-format preference file (``.jsonl``, ``.json`` list, or ``.parquet``) into the store."""
        path = Path(path)
        if not path.is_file():
            raise PreferenceStoreError(f"preference file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        records: list[dict[str, Any]]
        if suffix == ".jsonl":
            records = list(iter_jsonl(path))
        elif suffix == ".json":
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise PreferenceStoreError(f"{path} is not valid JSON ({exc.msg})") from None
            if not isinstance(value, list):
                raise PreferenceStoreError(f"{path} must hold a JSON list of records (or use .jsonl)")
            records = value
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                records = pq.read_table(path).to_pylist()
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise PreferenceStoreError(f"{path} is not a readable Parquet file ({exc})") from None
        else:
            raise PreferenceStoreError(
                f"cannot import {str(path)!r}: use a .jsonl, .json or .parquet file in TRL's prompt/chosen/rejected "
                f"format")
        return self.import_records(records, source=source or f"import:{path.name}", annotator=annotator,
                                   where=str(path))

    def import_dataset(self, dataset: Any, *, source: str = "import:dataset",
                       annotator: str = "imported") -> ImportResult:
        """Load a ``datasets.Dataset`` (or anything iterable of dicts) in TRL's format into the store."""
        columns = list(getattr(dataset, "column_names", None) or [])
        if columns:
            _check_columns(columns, "the dataset")
        return self.import_records(list(dataset), source=source, annotator=annotator, where="the dataset")

    def import_records(self, records: Iterable[Mapping[str, Any]], *, source: str = "import",
                       annotator: str = "imported", where: str = "the records") -> ImportResult:
        """Store TRL-format records; each becomes a query (a = chosen, b = rejected) with its answer.

        A ``label`` column, when present, is P(chosen preferred over rejected) (0.5 imports a tie); ``margin``,
        ``annotator``, ``source``, ``created_at`` and ``answered_at`` are kept when present. Conversational
        records (lists of ``{"role", "content"}`` messages) round-trip unchanged. Extra columns are ignored.
        """
        records = list(records)
        if not records:
            return ImportResult(0, 0)
        seen: list[str] = []
        for rec in records:
            for key in rec:
                if key not in seen:
                    seen.append(key)
        _check_columns(seen, where)
        rows = []
        now = utc_now()
        for i, rec in enumerate(records):
            missing = [c for c in TRL_REQUIRED_COLUMNS if rec.get(c) is None]
            if missing:
                raise PreferenceStoreError(f"record {i} of {where} has no value for {', '.join(missing)}")
            conversational = any(isinstance(rec[c], list) for c in TRL_REQUIRED_COLUMNS)
            texts = [_flatten(rec[c], c, i, where) for c in TRL_REQUIRED_COLUMNS]
            prompt, chosen, rejected = texts
            if chosen == rejected:
                raise PreferenceStoreError(f"record {i} of {where} has the same text as chosen and rejected")
            label_value = rec.get("label", 1.0)
            try:
                choice, label = parse_label(1.0 if isinstance(label_value, bool) else label_value)
            except ValueError as exc:
                raise PreferenceStoreError(f"record {i} of {where}: {exc}") from None
            if label is None:
                raise PreferenceStoreError(f"record {i} of {where} has no label; a TRL pair must have a winner")
            query_meta: dict[str, Any] = {"format": "conversational"} if conversational else {}
            answer_meta: dict[str, Any] = {}
            if rec.get("margin") is not None:
                answer_meta["margin"] = float(rec["margin"])
            rows.append((
                {"kind": "compare", "prompt": prompt, "completion_a": chosen, "completion_b": rejected,
                 "scale": None, "requested_by": source, "created_at": str(rec.get("created_at") or now),
                 "meta": query_meta},
                {"choice": choice, "label": label, "annotator": str(rec.get("annotator") or annotator),
                 "source": str(rec.get("source") or source), "answered_at": str(rec.get("answered_at") or now),
                 "meta": answer_meta},
            ))
        return self._insert_answered(rows)

    def __enter__(self) -> PreferenceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_columns(columns: Sequence[str], where: str) -> None:
    missing = [c for c in TRL_REQUIRED_COLUMNS if c not in columns]
    if missing:
        hint = ""
        if "prompt" in missing and "chosen" in columns:
            hint = (" (TRL's implicit-prompt format is not supported: put the shared prompt in a 'prompt' column)")
        elif "chosen" in missing and "completion" in columns:
            hint = " (this looks like TRL's unpaired prompt/completion/label format, which has no pairs)"
        raise PreferenceStoreError(
            f"{where} is not in TRL's preference format: missing column(s) {', '.join(missing)}; found "
            f"{', '.join(columns) if columns else 'no columns'}. Need {', '.join(TRL_REQUIRED_COLUMNS)}{hint}.")


def _flatten(value: Any, column: str, index: int, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return json.dumps([dict(m) for m in value], ensure_ascii=False)
    raise PreferenceStoreError(
        f"record {index} of {where}: column {column!r} must be text or a list of {{'role', 'content'}} messages, "
        f"got {type(value).__name__}")


def _restore(text: str, fmt: str | None) -> Any:
    return json.loads(text) if fmt == "conversational" else text


# ---------------------------------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------------------------------

#: Ordered migrations: ``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``. Append to this
#: list to change the schema; never edit a step that has shipped.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def _migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append(fn)
    return fn


@_migration
def _v1_queries_and_answers(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE queries (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            key           TEXT NOT NULL UNIQUE,
            kind          TEXT NOT NULL CHECK (kind IN ('compare', 'rating')),
            prompt        TEXT NOT NULL,
            completion_a  TEXT NOT NULL,
            completion_b  TEXT,
            scale         INTEGER,
            requested_by  TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            meta          TEXT NOT NULL DEFAULT '{}'
        )""")
    conn.execute("""
        CREATE TABLE answers (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            query_id     INTEGER NOT NULL UNIQUE REFERENCES queries(id) ON DELETE CASCADE,
            choice       TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip', 'rating')),
            label        REAL,
            annotator    TEXT NOT NULL,
            source       TEXT NOT NULL,
            answered_at  TEXT NOT NULL
        )""")


@_migration
def _v2_answer_meta(conn: sqlite3.Connection) -> None:
    # per-answer extras (sides shown swapped, seconds taken, an imported margin) and a quick undo lookup
    conn.execute("ALTER TABLE answers ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")
    conn.execute("CREATE INDEX answers_by_annotator ON answers(annotator, id)")


@_migration
def _v3_leases(conn: sqlite3.Connection) -> None:
    # who is being shown which pending query, until when (unix seconds); gone with the query or its answer
    conn.execute("""
        CREATE TABLE leases (
            query_id    INTEGER PRIMARY KEY REFERENCES queries(id) ON DELETE CASCADE,
            holder      TEXT NOT NULL,
            expires_at  REAL NOT NULL
        )""")


@_migration
def _v4_lease_sessions(conn: sqlite3.Connection) -> None:
    # leases per labelling session (two terminals or tabs of one labeller), and the process that took each, so a
    # lease of a process that died on this machine is free at once; existing leases become the labeller's own
    conn.execute("ALTER TABLE leases ADD COLUMN session TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE leases ADD COLUMN host TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE leases ADD COLUMN pid INTEGER NOT NULL DEFAULT 0")
    # a checksum per stored row: SQLite has none, and a flipped byte inside a text or a label reads back without
    # error; verify() recomputes them (rows already stored are trusted as they are now)
    conn.execute("ALTER TABLE queries ADD COLUMN checksum TEXT")
    conn.execute("ALTER TABLE answers ADD COLUMN checksum TEXT")
    for table in ("queries", "answers"):
        for row in conn.execute(f"SELECT {_CHECKSUMMED[table]} FROM {table}").fetchall():
            conn.execute(f"UPDATE {table} SET checksum = ? WHERE id = ?", (_row_checksum(row), row[0]))


SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring an open SQLite store up to schema ``target``, one step per transaction; returns the new version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the write lock: another process may have migrated meanwhile
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < target:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


#: the columns each table's row checksum covers, in order (the id first)
_CHECKSUMMED = {
    "queries": "id, key, kind, prompt, completion_a, completion_b, scale, requested_by, created_at, meta",
    "answers": "id, query_id, choice, label, annotator, source, answered_at, meta",
}


def _row_checksum(row: Sequence[Any]) -> str:
    # a damaged record can read back as bytes where text was stored: hashed as such, it then fails the check
    body = json.dumps(list(row), ensure_ascii=False, default=lambda v: f"<{type(v).__name__}>{v!r}")
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def _stamp(conn: sqlite3.Connection, table: str, row_id: int | None) -> None:
    """Inside a write: store the checksum of the row just inserted."""
    assert row_id is not None
    row = conn.execute(f"SELECT {_CHECKSUMMED[table]} FROM {table} WHERE id = ?", (row_id,)).fetchone()
    conn.execute(f"UPDATE {table} SET checksum = ? WHERE id = ?", (_row_checksum(row), row_id))


_QUERY_COLUMNS = "q.id, q.kind, q.prompt, q.completion_a, q.completion_b, q.scale, q.requested_by, q.created_at, q.meta"
_ANSWER_COLUMNS = "a.id, a.query_id, a.choice, a.label, a.annotator, a.source, a.answered_at, a.meta"


def _queue_filters(kind: str | None, query_ids: Iterable[int] | None) -> tuple[str, list[Any]] | None:
    """SQL conditions (and their parameters) restricting a queue read to a kind and/or ids; ``None`` when the
    ids given are none at all (nothing can match)."""
    sql, params = "", []
    if kind is not None:
        if kind not in QUERY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(QUERY_KINDS)}, got {kind!r}")
        sql += " AND q.kind = ?"
        params.append(kind)
    if query_ids is not None:
        ids = [int(i) for i in query_ids]
        if not ids:
            return None
        sql += f" AND q.id IN ({_id_list(ids)})"
    return sql, params


def _query_from_row(row: Sequence[Any]) -> Query:
    return Query(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], json.loads(row[8] or "{}"))


def _answer_from_row(row: Sequence[Any]) -> Answer:
    return Answer(row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7] or "{}"))


class PreferenceStore(PreferenceBackend):
    """The SQLite preference store: one file per experiment, WAL mode, safe for several processes at once.

    Every write is its own short ``BEGIN IMMEDIATE`` transaction, committed (``synchronous=FULL``) before the
    method returns; readers never block writers. One object may be shared between threads (a web server's and
    a trainer's); separate processes each open their own.

    Args:
        path: the database file (created, with its parent folders, if missing).
        timeout: seconds to wait for another process's write lock before failing.

    Raises:
        PreferenceStoreError: the file is not a SQLite database, is a database of something else, or was written
            by a newer rlhf_gym (a schema this version does not know).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0):
        self.path = Path(path)
        self.location = str(self.path)
        self._timeout = timeout
        self._checkpointed_at = -math.inf
        self._logs: tuple[int | None, int | None] | None = None  # inodes of the -wal and -shm files in use
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise PreferenceStoreError(f"preference store {self.location!r} is a folder; give a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PreferenceStoreError(f"cannot create the folder of preference store {self.location!r}: "
                                       f"{exc.strerror or exc}; give a path in a folder you can write") from None
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise PreferenceStoreError(f"cannot open preference store {self.location!r}: {exc}") from None
        # Two processes opening a new store at once can meet while one switches it to WAL or migrates it; SQLite
        # then answers "locked" without waiting, so the set-up is retried until `timeout`.
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    self._initialise(conn, timeout)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            conn.close()
            if isinstance(exc, UnicodeDecodeError):
                raise DamagedStoreError(_damaged_message(self.location, "its table list is not text")) from None
            if _looks_like_sqlite(self.path):
                error = _as_store_error(exc, self.location)
                raise (error if type(error) is not PreferenceStoreError or "I/O" in str(error)
                       else DamagedStoreError(_damaged_message(self.location, str(exc)))) from None
            raise PreferenceStoreError(
                f"{self.location!r} is not a preference store database ({exc}); give the path of a store created "
                f"by rlhf_gym, or a new file name") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _initialise(self, conn: sqlite3.Connection, timeout: float) -> None:
        """Check the file is a store this rlhf_gym can open, switch it to WAL and migrate it to the current schema."""
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        # Version and tables are read in one transaction (one snapshot): another process creating the store at the
        # same moment must not be seen half-way (its tables without its version).
        conn.execute("BEGIN")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if version > SCHEMA_VERSION:
            raise PreferenceStoreError(
                f"preference store {self.location!r} has schema version {version}, newer than this rlhf_gym "
                f"knows (version {SCHEMA_VERSION}); upgrade rlhf_gym (pip install -U rlhf_gym) to open it")
        if version == 0 and tables:
            raise PreferenceStoreError(
                f"{self.location!r} is a SQLite database but not a preference store (it has the tables "
                f"{', '.join(tables)}); give a new file name for the store")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise PreferenceStoreError(
                f"preference store {self.location!r} cannot use WAL mode (got {mode!r}); put it on a local disk")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)

    # -- plumbing -----------------------------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PreferenceStoreError(f"preference store {self.location!r} is closed")
        return self._conn

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _write(self, durable: bool = False, urgent: bool = False) -> _WriteTransaction:
        return _WriteTransaction(self, durable, urgent)

    def _settle(self, urgent: bool = False) -> None:
        """After a write of labels or queries: copy the log into the database file (a passive checkpoint: at once
        for an answer from a labelling session, else at most once per :data:`CHECKPOINT_EVERY_S`), so the file
        alone holds the answers; and
        if the write-ahead log or its index (-wal, -shm) was deleted or replaced under this connection, open a new
        connection, whose files other processes can see (closing the old one copies the old log into the file
        first)."""
        now = time.monotonic()
        if urgent or now - self._checkpointed_at >= CHECKPOINT_EVERY_S:
            self._checkpointed_at = now
            # the write is committed in the log either way; a busy checkpoint is retried later
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        logs = _log_files(self.path)
        if self._logs is None:
            self._logs = logs  # the files this connection writes through
        elif logs != self._logs:  # deleted or replaced under this connection
            old, self._conn = self._conn, None
            if old is not None:
                old.close()  # this process's last connection to the old log: SQLite copies it into the file first
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            self._initialise(conn, self._timeout)
            self._conn = conn
            self._logs = _log_files(self.path)

    def _read(self) -> _Read:
        return _Read(self)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PreferenceStore({self.location!r})"

    # -- the queue ----------------------------------------------------------------------------------------------
    def add_queries(self, queries: Iterable[Mapping[str, Any]], *, requested_by: str = "unknown") -> list[int | None]:
        prepared = [_prepare_query(q, requested_by) for q in queries]
        ids: list[int | None] = []
        with self._write(durable=True) as conn:
            for row in prepared:
                cur = conn.execute(
                    "INSERT INTO queries (key, kind, prompt, completion_a, completion_b, scale, requested_by, "
                    "created_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                    (row["key"], row["kind"], row["prompt"], row["completion_a"], row["completion_b"], row["scale"],
                     row["requested_by"], row["created_at"], json.dumps(row["meta"], ensure_ascii=False)))
                ids.append(cur.lastrowid if cur.rowcount == 1 else None)
                if cur.rowcount == 1:
                    _stamp(conn, "queries", cur.lastrowid)
        return ids

    def find(self, prompt: str, completion_a: str, completion_b: str | None = None, *,
             scale: int | None = None) -> Query | None:
        kind = "compare" if completion_b is not None else "rating"
        key = query_key(kind, prompt, completion_a, completion_b, scale)
        with self._read() as conn:
            row = conn.execute(f"SELECT {_QUERY_COLUMNS} FROM queries q WHERE q.key = ?", (key,)).fetchone()
            return _query_from_row(row) if row else None

    def get(self, query_id: int) -> Query:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_QUERY_COLUMNS} FROM queries q WHERE q.id = ?", (int(query_id),)).fetchone()
            if row is None:
                raise UnknownQueryError(f"no query {query_id} in {self.location!r} (never added, or withdrawn)")
            return _query_from_row(row)

    def pending(self, limit: int | None = None, *, kind: str | None = None,
                query_ids: Iterable[int] | None = None) -> list[Query]:
        filters = _queue_filters(kind, query_ids)
        if filters is None:
            return []
        sql = (f"SELECT {_QUERY_COLUMNS} FROM queries q LEFT JOIN answers a ON a.query_id = q.id "
               "WHERE a.id IS NULL" + filters[0])
        params = filters[1]
        sql += " ORDER BY q.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            return [_query_from_row(r) for r in conn.execute(sql, params)]

    def withdraw(self, query_ids: Iterable[int]) -> int:
        ids = [int(i) for i in query_ids]
        if not ids:
            return 0
        with self._write(durable=True) as conn:
            cur = conn.execute(
                f"DELETE FROM queries WHERE id IN ({_id_list(ids)}) "
                "AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = queries.id)")
            return cur.rowcount

    def claim(self, holder: str, *, session: str = "", kind: str | None = None,
              query_ids: Iterable[int] | None = None, exclude: Iterable[int] = (), prefer: int | None = None,
              lease_s: float = DEFAULT_LEASE_S) -> Query | None:
        if not holder:
            raise ValueError("claim() needs a holder id (the labeller asking, e.g. the annotator id)")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s}")
        filters = _queue_filters(kind, query_ids)
        if filters is None:
            return None
        now = time.time()
        # a lease taken without a session (before sessions existed) belongs to the labeller's every session
        sql = (f"SELECT {_QUERY_COLUMNS}, (l.holder IS ? AND l.session IN (?, '')) AS mine FROM queries q "
               "LEFT JOIN answers a ON a.query_id = q.id LEFT JOIN leases l ON l.query_id = q.id "
               "WHERE a.id IS NULL AND (l.query_id IS NULL OR l.expires_at <= ? OR "
               "(l.holder = ? AND l.session IN (?, '')))" + filters[0])
        params: list[Any] = [holder, session, now, holder, session, *filters[1]]
        skip = [int(i) for i in exclude]
        if skip:
            sql += f" AND q.id NOT IN ({_id_list(skip)})"
        sql += " ORDER BY mine DESC, q.id = ? DESC, q.id LIMIT 1"
        params.append(-1 if prefer is None else int(prefer))
        with self._write() as conn:
            self._free_dead_leases(conn, now)
            row = conn.execute(sql, params).fetchone()
            conn.execute("DELETE FROM leases WHERE holder = ? AND session = ? AND query_id != ?",
                         (holder, session, -1 if row is None else row[0]))
            if row is None:
                return None
            conn.execute("INSERT OR REPLACE INTO leases (query_id, holder, session, host, pid, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (row[0], holder, session, _HOST, os.getpid(), now + lease_s))
        return _query_from_row(row[:9])

    def renew(self, query_id: int, holder: str, *, session: str = "", lease_s: float = DEFAULT_LEASE_S) -> bool:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s}")
        now = time.time()
        with self._write() as conn:
            self._free_dead_leases(conn, now)
            row = conn.execute(
                "SELECT a.id, l.holder, l.session, l.expires_at FROM queries q LEFT JOIN answers a ON a.query_id = q.id "
                "LEFT JOIN leases l ON l.query_id = q.id WHERE q.id = ?", (int(query_id),)).fetchone()
            if row is None or row[0] is not None:
                return False  # withdrawn or answered
            if row[1] is not None and row[3] > now and (row[1], row[2]) != (holder, session):
                return False  # someone else took it after this session's lease ran out
            conn.execute("INSERT OR REPLACE INTO leases (query_id, holder, session, host, pid, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (int(query_id), holder, session, _HOST, os.getpid(),
                                                       now + lease_s))
        return True

    def release(self, query_id: int, holder: str, *, session: str = "") -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM leases WHERE query_id = ? AND holder = ? AND session = ?",
                               (int(query_id), holder, session))
            return cur.rowcount > 0

    def release_session(self, holder: str, session: str = "") -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM leases WHERE holder = ? AND session = ?", (holder, session)).rowcount

    def leases(self) -> list[Lease]:
        now = time.time()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT l.query_id, l.holder, l.session, l.expires_at, l.host, l.pid FROM leases l "
                "LEFT JOIN answers a ON a.query_id = l.query_id WHERE a.id IS NULL AND l.expires_at > ? "
                "ORDER BY l.query_id", (now,)).fetchall()
        return [Lease(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows if not _dead(r[4], r[5])]

    @staticmethod
    def _free_dead_leases(conn: sqlite3.Connection, now: float) -> None:
        """Inside a write: drop the live leases of processes that have died on this machine."""
        rows = conn.execute("SELECT query_id, pid FROM leases WHERE host = ? AND pid != ? AND expires_at > ?",
                            (_HOST, os.getpid(), now)).fetchall()
        dead = [int(r[0]) for r in rows if _dead(_HOST, r[1])]
        if dead:
            conn.execute(f"DELETE FROM leases WHERE query_id IN ({_id_list(dead)})")

    # -- answers --------------------------------------------------------------------------------------------------
    def answer(self, query_id: int, label: Any, *, annotator: str, source: str,
               meta: Mapping[str, Any] | None = None, session: str | None = None) -> Answer:
        if not annotator:
            raise ValueError("answer() needs an annotator id (who gave the answer)")
        with self._write(durable=True, urgent=session is not None) as conn:
            row = conn.execute("SELECT kind, scale FROM queries WHERE id = ?", (int(query_id),)).fetchone()
            if row is None:
                raise UnknownQueryError(f"no query {query_id} in {self.location!r} (never added, or withdrawn)")
            choice, value = parse_label(label, row[0], row[1])
            if session is not None:
                lease = conn.execute("SELECT holder, session, host, pid FROM leases WHERE query_id = ? AND "
                                     "expires_at > ?", (int(query_id), time.time())).fetchone()
                answered = conn.execute("SELECT 1 FROM answers WHERE query_id = ?", (int(query_id),)).fetchone()
                if (lease is not None and answered is None and not (lease[0] == annotator and lease[1] in (session, ""))
                        and not _dead(lease[2], lease[3])):
                    whose = "your other labelling session" if lease[0] == annotator else repr(lease[0])
                    raise LeasedElsewhereError(
                        f"query {query_id} is on the screen of {whose} (its lease here ran out or it was never "
                        f"yours); nothing was stored, take the next query")
            now = utc_now()
            meta_json = json.dumps(dict(meta or {}), ensure_ascii=False)
            try:
                cur = conn.execute(
                    "INSERT INTO answers (query_id, choice, label, annotator, source, answered_at, meta) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (int(query_id), choice, value, annotator, source, now, meta_json))
            except sqlite3.IntegrityError:
                who = conn.execute("SELECT annotator FROM answers WHERE query_id = ?", (int(query_id),)).fetchone()
                raise AlreadyAnsweredError(
                    f"query {query_id} was already answered by {who[0] if who else 'someone'!r}; undo that answer "
                    f"first to change it") from None
            answer_id = cur.lastrowid
            _stamp(conn, "answers", answer_id)
            conn.execute("DELETE FROM leases WHERE query_id = ?", (int(query_id),))
        assert answer_id is not None
        return Answer(answer_id, int(query_id), choice, value, annotator, source, now, dict(meta or {}))

    def undo_last(self, annotator: str) -> Query | None:
        with self._write(durable=True) as conn:
            row = conn.execute("SELECT id, query_id FROM answers WHERE annotator = ? ORDER BY id DESC LIMIT 1",
                               (annotator,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM answers WHERE id = ?", (row[0],))
            qrow = conn.execute(f"SELECT {_QUERY_COLUMNS} FROM queries q WHERE q.id = ?", (row[1],)).fetchone()
        return _query_from_row(qrow)

    def answers(self, *, query_ids: Iterable[int] | None = None, annotator: str | None = None,
                after_id: int | None = None) -> list[Answer]:
        sql = f"SELECT {_ANSWER_COLUMNS} FROM answers a WHERE 1 = 1"
        params: list[Any] = []
        if query_ids is not None:
            ids = [int(i) for i in query_ids]
            if not ids:
                return []
            sql += f" AND a.query_id IN ({_id_list(ids)})"
        if annotator is not None:
            sql += " AND a.annotator = ?"
            params.append(annotator)
        if after_id is not None:
            sql += " AND a.id > ?"
            params.append(int(after_id))
        sql += " ORDER BY a.id"
        with self._read() as conn:
            return [_answer_from_row(r) for r in conn.execute(sql, params)]

    def answered_pairs(self, include_ties: bool = False) -> list[tuple[Query, Answer]]:
        choices = "('a', 'b', 'tie')" if include_ties else "('a', 'b')"
        sql = (f"SELECT {_QUERY_COLUMNS}, {_ANSWER_COLUMNS} FROM queries q JOIN answers a ON a.query_id = q.id "
               f"WHERE q.kind = 'compare' AND a.choice IN {choices} ORDER BY a.id")
        with self._read() as conn:
            rows = conn.execute(sql).fetchall()
            return [(_query_from_row(r[:9]), _answer_from_row(r[9:])) for r in rows]

    def stats(self) -> dict[str, Any]:
        with self._read() as conn:
            queries = conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
            by_choice = dict(conn.execute("SELECT choice, COUNT(*) FROM answers GROUP BY choice").fetchall())
            annotators = dict(conn.execute(
                "SELECT annotator, COUNT(*) FROM answers GROUP BY annotator").fetchall())
        answered = sum(by_choice.values())
        out: dict[str, Any] = {"queries": queries, "answered": answered, "pending": queries - answered}
        out.update({c: by_choice.get(c, 0) for c in ("a", "b", "tie", "skip", "rating")})
        out["annotators"] = annotators
        out["leased"] = len(self.leased())
        return out

    def _insert_answered(self, rows: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> ImportResult:
        added = duplicates = 0
        with self._write(durable=True) as conn:
            for query, ans in rows:
                prepared = _prepare_query(query, query["requested_by"])
                cur = conn.execute(
                    "INSERT INTO queries (key, kind, prompt, completion_a, completion_b, scale, requested_by, "
                    "created_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                    (prepared["key"], "compare", prepared["prompt"], prepared["completion_a"],
                     prepared["completion_b"], None, prepared["requested_by"], query["created_at"],
                     json.dumps(prepared["meta"], ensure_ascii=False)))
                if cur.rowcount != 1:
                    duplicates += 1
                    continue
                _stamp(conn, "queries", cur.lastrowid)
                cur = conn.execute(
                    "INSERT INTO answers (query_id, choice, label, annotator, source, answered_at, meta) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (cur.lastrowid, ans["choice"], ans["label"], ans["annotator"], ans["source"],
                     ans["answered_at"], json.dumps(ans["meta"], ensure_ascii=False)))
                _stamp(conn, "answers", cur.lastrowid)
                added += 1
        return ImportResult(added, duplicates)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` for a healthy file; else its problems, joined)."""
        with self._read() as conn:
            rows = conn.execute("PRAGMA integrity_check(20)").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    def verify(self) -> None:
        """Run SQLite's full integrity check; raise :class:`DamagedStoreError` (saying what to do) unless it passes.

        Training and labelling call it before trusting every row: a damaged page can hide answers from a read
        that otherwise succeeds.
        """
        result = self.integrity_check()
        if result != "ok":
            problems = [p for p in result.split("; ") if not p.startswith("***")]
            more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
            raise DamagedStoreError(_damaged_message(
                self.location, f"SQLite's integrity check reports: {'; '.join(problems[:2])[:300]}{more}"))
        with self._read() as conn:
            orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
            if orphans:
                raise DamagedStoreError(_damaged_message(
                    self.location, f"{len(orphans)} row(s) of {orphans[0][0]} point at a query that is not there"))
            for table in ("queries", "answers"):
                for row in conn.execute(f"SELECT {_CHECKSUMMED[table]}, checksum FROM {table}"):
                    if _row_checksum(row[:-1]) != row[-1]:
                        raise DamagedStoreError(_damaged_message(
                            self.location, f"the stored {table[:-1]} {row[0]} does not match its checksum"))


_HOST = socket.gethostname()


def _dead(host: Any, pid: Any) -> bool:
    """Whether a lease's process is known to have died: it ran on this machine and is gone."""
    if host != _HOST or not pid or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _log_files(path: Path) -> tuple[int | None, int | None]:
    """The inodes of a store's -wal and -shm files (``None`` for a missing one)."""
    out: list[int | None] = []
    for suffix in ("-wal", "-shm"):
        try:
            out.append(os.stat(f"{path}{suffix}").st_ino)
        except OSError:
            out.append(None)
    return out[0], out[1]


def _looks_like_sqlite(path: Path) -> bool:
    """Whether the file starts with SQLite's header (so an error opening it means damage, not a foreign file)."""
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _damaged_message(location: str, detail: str) -> str:
    detail = " ".join(detail.split())  # one line, whatever SQLite said
    return (f"preference store {location!r} is damaged ({detail}); its rows cannot be trusted, so it is not used. "
            f"Restore it from a backup, or salvage the readable rows with `sqlite3 {location} .recover | sqlite3 "
            f"recovered.db` and use recovered.db")


#: what reading a damaged file raises: SQLite's errors, text that is no longer UTF-8, extras that are no longer JSON
_DAMAGE_ERRORS = (sqlite3.Error, UnicodeDecodeError, json.JSONDecodeError)


def _as_store_error(exc: Exception, location: str) -> PreferenceStoreError:
    """A SQLite error met while reading or writing an open store, as the store error that says what to do."""
    text = str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return DamagedStoreError(_damaged_message(location, f"a stored row's extras are not JSON: {exc.msg}"))
    if isinstance(exc, UnicodeDecodeError):
        return DamagedStoreError(_damaged_message(location, "a stored text is no longer UTF-8"))
    if "disk I/O" in text:
        return PreferenceStoreError(
            f"preference store {location!r} could not be read or written (disk I/O error): the disk failed or is "
            f"full, or its -wal/-shm files were removed while a program had it open. Try again once the programs "
            f"using it have written or closed (an open one writes its answers back), and keep those files in place")
    if isinstance(exc, sqlite3.DatabaseError) and any(
            w in text for w in ("malformed", "not a database", "corrupt", "no such", "decode")):
        return DamagedStoreError(_damaged_message(location, text))
    return PreferenceStoreError(f"preference store {location!r} failed: {text}")


class _Read:
    """``with store._read() as conn``: the thread lock, with SQLite's errors turned into store errors."""

    def __init__(self, store: PreferenceStore):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            return self.store.conn
        except BaseException:
            self.store._lock.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.store._lock.release()
        if isinstance(exc, _DAMAGE_ERRORS):
            raise _as_store_error(exc, self.store.location) from None


class _WriteTransaction:
    """``with store._write() as conn``: the thread lock plus one ``BEGIN IMMEDIATE`` … ``COMMIT``."""

    def __init__(self, store: PreferenceStore, durable: bool = False, urgent: bool = False):
        self.store = store
        self.durable = durable
        self.urgent = urgent

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            conn = self.store.conn
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self.store._lock.release()
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise _as_store_error(exc, self.store.location) from None
            raise PreferenceStoreError(
                f"preference store {self.store.location!r} stayed locked by another process ({exc}); try again, "
                f"or raise the store's timeout") from None
        except BaseException:
            self.store._lock.release()
            raise
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            try:
                self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
                if self.durable and exc_type is None:
                    self.store._settle(self.urgent)
            except _DAMAGE_ERRORS as failed:
                if exc is None:
                    raise _as_store_error(failed, self.store.location) from None
        finally:
            self.store._lock.release()
        if isinstance(exc, _DAMAGE_ERRORS):
            raise _as_store_error(exc, self.store.location) from None


def _id_list(ids: Sequence[int]) -> str:
    # ids are ints (cast by the callers), so inlining them is safe and avoids SQLite's variable limit
    return ", ".join(str(int(i)) for i in ids)


def check_query(query: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (saying what is wrong) unless ``query`` can be queued (see ``add_queries``)."""
    _prepare_query(query, "check")


def _text(value: Any, name: str) -> str:
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not valid Unicode text (a lone surrogate at character {exc.start})") from None
    return text


def _prepare_query(query: Mapping[str, Any], requested_by: str) -> dict[str, Any]:
    missing = [k for k in ("prompt", "completion_a") if query.get(k) is None]
    if missing:
        raise ValueError(f"a query needs {', '.join(missing)} (got keys {', '.join(query) or 'none'})")
    completion_b = query.get("completion_b")
    kind = query.get("kind") or ("compare" if completion_b is not None else "rating")
    if kind not in QUERY_KINDS:
        raise ValueError(f"query kind must be one of {', '.join(QUERY_KINDS)}, got {kind!r}")
    prompt, completion_a = _text(query["prompt"], "prompt"), _text(query["completion_a"], "completion_a")
    scale: int | None = None
    if kind == "compare":
        if completion_b is None:
            raise ValueError("a compare query needs completion_b")
        completion_b = _text(completion_b, "completion_b")
        if completion_a == completion_b:
            raise ValueError("completion_a and completion_b are identical; there is nothing to compare")
    else:
        if completion_b is not None:
            raise ValueError("a rating query has one completion; drop completion_b or use kind='compare'")
        scale = int(query.get("scale") or 5)
        if not 2 <= scale <= 1000:
            raise ValueError(f"a rating scale needs 2 to 1000 points, got {scale}")
    return {
        "key": query_key(kind, prompt, completion_a, completion_b, scale),
        "kind": kind, "prompt": prompt, "completion_a": completion_a, "completion_b": completion_b,
        "scale": scale, "requested_by": str(query.get("requested_by") or requested_by),
        "created_at": utc_now(), "meta": dict(query.get("meta") or {}),
    }


def open_store(location: str | os.PathLike[str], **kwargs: Any) -> PreferenceBackend:
    """Open the store at ``location``: a file path (SQLite). Server URLs are reserved for server backends."""
    text = str(location)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise PreferenceStoreError(
            f"no preference store backend for {scheme}:// URLs in this rlhf_gym; give a SQLite file path")
    return PreferenceStore(location, **kwargs)


def iter_jsonl(path: str | os.PathLike[str], error: type[Exception] = PreferenceStoreError) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a ``.jsonl`` file; a line that is not one (or a file that cannot be read) raises
    ``error`` naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise error(f"{str(path)!r} {what}; give the path of a JSONL file (one JSON object per line)")
    try:
        with path.open(encoding="utf-8") as fh:
            yield from _jsonl_lines(path, fh, error)
    except OSError as exc:
        raise error(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{str(path)!r} is not UTF-8 text (byte {exc.start} of a line); give a JSONL file") from None


def _jsonl_lines(path: Path, fh: Any, error: type[Exception]) -> Iterator[dict[str, Any]]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise error(f"{path}:{lineno} is not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})") from None
        if not isinstance(value, dict):
            raise error(
                f"{path}:{lineno} is a JSON {type(value).__name__}; each line must be an object (a record with "
                f"named columns)")
        yield value
