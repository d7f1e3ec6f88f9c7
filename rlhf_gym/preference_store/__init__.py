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

Modules: :mod:`~rlhf_gym.preference_store.backend` (types, label parsing, the :class:`PreferenceBackend` interface,
TRL formats), :mod:`~rlhf_gym.preference_store.sqlite` (:class:`PreferenceStore`) and
:mod:`~rlhf_gym.preference_store.schema` (migrations and row checksums). Import everything from here.

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

from rlhf_gym.errors import PreferenceStoreError
from rlhf_gym.preference_store.backend import (
    DEFAULT_LEASE_S,
    EXPORT_COLUMNS,
    QUERY_KINDS,
    TRL_REQUIRED_COLUMNS,
    AlreadyAnsweredError,
    Answer,
    DamagedStoreError,
    ImportResult,
    Lease,
    LeasedElsewhereError,
    PreferenceBackend,
    Query,
    UnknownQueryError,
    check_query,
    iter_jsonl,
    parse_label,
    prepare_query,
    query_key,
    utc_now,
)
from rlhf_gym.preference_store.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from rlhf_gym.preference_store.sqlite import CHECKPOINT_EVERY_S, PreferenceStore, open_store

__all__ = [
    "CHECKPOINT_EVERY_S", "DEFAULT_LEASE_S", "EXPORT_COLUMNS", "MIGRATIONS", "QUERY_KINDS", "SCHEMA_VERSION",
    "TRL_REQUIRED_COLUMNS", "AlreadyAnsweredError", "Answer", "DamagedStoreError", "ImportResult", "Lease",
    "LeasedElsewhereError", "PreferenceBackend", "PreferenceStore", "PreferenceStoreError", "Query", "UnknownQueryError",
    "check_query", "iter_jsonl", "migrate", "open_store", "parse_label", "prepare_query", "query_key", "utc_now",
]
