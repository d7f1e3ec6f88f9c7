"""What every preference store offers, whatever database is behind it: the query and answer types, label
parsing, the storage-agnostic :class:`PreferenceBackend` interface, and TRL-format conversion and files."""

from __future__ import annotations

import abc
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
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



def check_query(query: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (saying what is wrong) unless ``query`` can be queued (see ``add_queries``)."""
    prepare_query(query, "check")


def _text(value: Any, name: str) -> str:
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not valid Unicode text (a lone surrogate at character {exc.start})") from None
    return text


def prepare_query(query: Mapping[str, Any], requested_by: str) -> dict[str, Any]:
    """A query checked and normalised for storing (its dedup key, kind, texts, scale); ``ValueError`` if invalid."""
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

