"""The SQLite preference store: one file per experiment, WAL mode, schema migrations, leases per labelling
session, a checksum per stored row, and damage reported as :class:`DamagedStoreError` rather than SQLite errors."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_gym.errors import PreferenceStoreError
from rlhf_gym.preference_store.backend import (
    DEFAULT_LEASE_S,
    QUERY_KINDS,
    AlreadyAnsweredError,
    Answer,
    DamagedStoreError,
    ImportResult,
    Lease,
    LeasedElsewhereError,
    PreferenceBackend,
    Query,
    UnknownQueryError,
    parse_label,
    prepare_query,
    query_key,
    utc_now,
)
from rlhf_gym.preference_store.schema import (
    CHECKSUMMED_COLUMNS,
    SCHEMA_VERSION,
    migrate,
    row_checksum,
    stamp_checksum,
)

#: the most often a store copies its write-ahead log into the database file after bulk writes (seconds); an answer
#: from a labelling session (``answer(..., session=...)``) is copied at once
CHECKPOINT_EVERY_S = 1.0

# ---------------------------------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------------------------------

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
        prepared = [prepare_query(q, requested_by) for q in queries]
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
                    stamp_checksum(conn, "queries", cur.lastrowid)
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
            stamp_checksum(conn, "answers", answer_id)
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
                prepared = prepare_query(query, query["requested_by"])
                cur = conn.execute(
                    "INSERT INTO queries (key, kind, prompt, completion_a, completion_b, scale, requested_by, "
                    "created_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                    (prepared["key"], "compare", prepared["prompt"], prepared["completion_a"],
                     prepared["completion_b"], None, prepared["requested_by"], query["created_at"],
                     json.dumps(prepared["meta"], ensure_ascii=False)))
                if cur.rowcount != 1:
                    duplicates += 1
                    continue
                stamp_checksum(conn, "queries", cur.lastrowid)
                cur = conn.execute(
                    "INSERT INTO answers (query_id, choice, label, annotator, source, answered_at, meta) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (cur.lastrowid, ans["choice"], ans["label"], ans["annotator"], ans["source"],
                     ans["answered_at"], json.dumps(ans["meta"], ensure_ascii=False)))
                stamp_checksum(conn, "answers", cur.lastrowid)
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
                for row in conn.execute(f"SELECT {CHECKSUMMED_COLUMNS[table]}, checksum FROM {table}"):
                    if row_checksum(row[:-1]) != row[-1]:
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


def open_store(location: str | os.PathLike[str], **kwargs: Any) -> PreferenceBackend:
    """Open the store at ``location``: a file path (SQLite). Server URLs are reserved for server backends."""
    text = str(location)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise PreferenceStoreError(
            f"no preference store backend for {scheme}:// URLs in this rlhf_gym; give a SQLite file path")
    return PreferenceStore(location, **kwargs)


