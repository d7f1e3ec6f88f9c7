"""The preference store's SQLite schema: the ordered migrations that build and upgrade it, and the checksum
each stored row carries (SQLite keeps none, so a flipped byte inside a text or a label would read back unnoticed)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

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
        for row in conn.execute(f"SELECT {CHECKSUMMED_COLUMNS[table]} FROM {table}").fetchall():
            conn.execute(f"UPDATE {table} SET checksum = ? WHERE id = ?", (row_checksum(row), row[0]))


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
CHECKSUMMED_COLUMNS = {
    "queries": "id, key, kind, prompt, completion_a, completion_b, scale, requested_by, created_at, meta",
    "answers": "id, query_id, choice, label, annotator, source, answered_at, meta",
}


def row_checksum(row: Sequence[Any]) -> str:
    # a damaged record can read back as bytes where text was stored: hashed as such, it then fails the check
    body = json.dumps(list(row), ensure_ascii=False, default=lambda v: f"<{type(v).__name__}>{v!r}")
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def stamp_checksum(conn: sqlite3.Connection, table: str, row_id: int | None) -> None:
    """Inside a write: store the checksum of the row just inserted."""
    assert row_id is not None
    row = conn.execute(f"SELECT {CHECKSUMMED_COLUMNS[table]} FROM {table} WHERE id = ?", (row_id,)).fetchone()
    conn.execute(f"UPDATE {table} SET checksum = ? WHERE id = ?", (row_checksum(row), row_id))
