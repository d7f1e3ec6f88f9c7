"""The preference store: dedup, durability (WAL, SIGKILL, two writers), TRL export/import, errors, migrations."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhf_gym.errors import PreferenceStoreError
from rlhf_gym.preference_store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AlreadyAnsweredError,
    PreferenceStore,
    UnknownQueryError,
    migrate,
    open_store,
)


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(tmp_path / "prefs.db") as s:
        yield s


def _fill(store: PreferenceStore, n: int) -> list[int]:
    ids = store.add_queries(
        [{"prompt": f"p{i}", "completion_a": f"good {i}", "completion_b": f"bad {i}"} for i in range(n)],
        requested_by="test")
    assert all(i is not None for i in ids)
    return [int(i) for i in ids if i is not None]


def test_same_pair_is_never_queued_twice_in_either_order(store: PreferenceStore) -> None:
    first = store.add_query("prompt", "x", "y", requested_by="t")
    assert first is not None
    assert store.add_query("prompt", "x", "y") is None
    assert store.add_query("prompt", "y", "x") is None
    assert store.add_query("other prompt", "y", "x") is not None
    assert store.find("prompt", "y", "x").id == first  # type: ignore[union-attr]
    assert store.count() == 2
    # the key is enforced by the database itself, not by a scan in Python
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute("INSERT INTO queries (key, kind, prompt, completion_a, completion_b, requested_by, "
                           "created_at) SELECT key, kind, prompt, completion_a, completion_b, requested_by, "
                           "created_at FROM queries WHERE id = ?", (first,))


def test_store_uses_wal_and_foreign_keys(store: PreferenceStore) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert store.schema_version == SCHEMA_VERSION


def test_every_answer_is_visible_to_a_second_connection_when_answer_returns(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        ids = _fill(store, 4)
        other = sqlite3.connect(path)
        for n, (qid, label) in enumerate(zip(ids, ["a", "b", "tie", "skip"], strict=True), 1):
            store.answer(qid, label, annotator="ann", source="test")
            rows = other.execute("SELECT query_id, choice, label FROM answers ORDER BY id").fetchall()
            assert len(rows) == n
            assert rows[-1][0] == qid
        assert other.execute("SELECT choice, label FROM answers ORDER BY id").fetchall() == [
            ("a", 1.0), ("b", 0.0), ("tie", 0.5), ("skip", None)]
        other.close()


def test_labels_ties_and_skips_are_distinct_and_skip_leaves_the_queue(store: PreferenceStore) -> None:
    ids = _fill(store, 5)
    store.answer(ids[0], 1.0, annotator="ann", source="t")
    store.answer(ids[1], "b", annotator="ann", source="t")
    store.answer(ids[2], 0.5, annotator="ann", source="t")
    store.answer(ids[3], None, annotator="ann", source="t")
    assert [q.id for q in store.pending()] == [ids[4]]
    stats = store.stats()
    assert (stats["a"], stats["b"], stats["tie"], stats["skip"], stats["pending"]) == (1, 1, 1, 1, 1)
    assert [p["label"] for p in store.pairs()] == [1.0, 1.0]
    assert [p["chosen"] for p in store.pairs()] == ["good 0", "bad 1"]
    with_ties = store.pairs(include_ties=True)
    assert [(p["label"], p["margin"]) for p in with_ties] == [(1.0, 1.0), (1.0, 1.0), (0.5, 0.0)]


def test_answering_twice_or_a_missing_query_or_a_bad_label_is_refused(store: PreferenceStore) -> None:
    (qid,) = _fill(store, 1)
    store.answer(qid, "a", annotator="ann", source="t")
    with pytest.raises(AlreadyAnsweredError, match="already answered by 'ann'"):
        store.answer(qid, "b", annotator="bob", source="t")
    with pytest.raises(UnknownQueryError, match="no query 999"):
        store.answer(999, "a", annotator="ann", source="t")
    (qid2,) = store.add_queries([{"prompt": "q", "completion_a": "1", "completion_b": "2"}])
    with pytest.raises(ValueError, match="not one of 'a', 'b', 'tie', 'skip'"):
        store.answer(qid2, "maybe", annotator="ann", source="t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"not a probability in \[0, 1\]"):
        store.answer(qid2, 1.5, annotator="ann", source="t")
    assert store.stats()["answered"] == 1


def test_undo_last_reopens_only_that_annotators_latest_answer(store: PreferenceStore) -> None:
    ids = _fill(store, 3)
    store.answer(ids[0], "a", annotator="ann", source="t")
    store.answer(ids[1], "b", annotator="ann", source="t")
    store.answer(ids[2], "a", annotator="bob", source="t")
    undone = store.undo_last("ann")
    assert undone is not None and undone.id == ids[1]
    assert [q.id for q in store.pending()] == [ids[1]]
    assert [a.query_id for a in store.answers()] == [ids[0], ids[2]]
    assert store.undo_last("nobody") is None


def test_ratings_are_stored_raw_and_checked_against_their_scale(store: PreferenceStore) -> None:
    qid = store.add_query("p", "a completion", scale=7)
    assert qid is not None
    assert store.add_query("p", "a completion", scale=7) is None
    with pytest.raises(ValueError, match="outside the scale 1..7"):
        store.answer(qid, 9, annotator="ann", source="t")
    with pytest.raises(ValueError, match="for pairs"):
        store.answer(qid, "tie", annotator="ann", source="t")
    ans = store.answer(qid, 6, annotator="ann", source="t")
    assert (ans.choice, ans.label) == ("rating", 6.0)
    assert store.pairs(include_ties=True) == []


def test_withdraw_removes_only_unanswered_queries(store: PreferenceStore) -> None:
    ids = _fill(store, 3)
    store.answer(ids[0], "a", annotator="ann", source="t")
    assert store.withdraw(ids) == 2
    assert store.count() == 1
    assert store.pending() == []
    with pytest.raises(UnknownQueryError):
        store.get(ids[1])


_WORKER = textwrap.dedent("""
    import os, sys, time
    from rlhf_gym.preference_store import PreferenceStore, AlreadyAnsweredError
    path, annotator, go_file = sys.argv[1], sys.argv[2], sys.argv[3]
    store = PreferenceStore(path)
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.002)
    queries = store.pending()
    if annotator == "right":
        queries.reverse()  # the two writers start at opposite ends of the queue and meet in the middle
    for query in queries:
        try:
            store.answer(query.id, "a", annotator=annotator, source="worker")
        except AlreadyAnsweredError:
            continue
        print(query.id, flush=True)
        if len(sys.argv) > 4:
            time.sleep(float(sys.argv[4]))
""")


_CLAIMING_WORKER = textwrap.dedent("""
    import os, sys, time
    from rlhf_gym.preference_store import PreferenceStore, AlreadyAnsweredError
    path, annotator, go_file = sys.argv[1], sys.argv[2], sys.argv[3]
    store = PreferenceStore(path)
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.002)
    while (query := store.claim(annotator + "@worker")) is not None:
        try:
            store.answer(query.id, "a", annotator=annotator, source="worker")
        except AlreadyAnsweredError:
            print("conflict", flush=True)
            continue
        print(query.id, flush=True)
        time.sleep(0.003)
""")


def _spawn(path: Path, annotator: str, pause: float | None = None) -> subprocess.Popen[str]:
    """A worker answering every pending query it can; it prints "ready", waits for ``<path>.go``, then one id
    per committed answer."""
    args = [sys.executable, "-c", _WORKER, str(path), annotator, f"{path}.go"]
    if pause is not None:
        args.append(str(pause))
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sigkill_mid_collection_loses_no_committed_answer(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        _fill(store, 400)
    Path(f"{path}.go").touch()
    proc = _spawn(path, "killed", pause=0.002)
    reported = []
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    while len(reported) < 40:
        line = proc.stdout.readline()
        assert line, "the worker stopped before it was killed"
        reported.append(int(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with PreferenceStore(path) as store:
        assert store.integrity_check() == "ok"
        stored = {a.query_id for a in store.answers(annotator="killed")}
        assert set(reported) <= stored
        assert len(stored) < 400  # it really was killed mid-way
        assert len(store.pending()) == 400 - len(stored)


_OPENER = textwrap.dedent("""
    import os, sys, time
    from rlhf_gym.preference_store import PreferenceStore
    folder, go_file = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.001)
    for i in range(60):
        try:
            PreferenceStore(os.path.join(folder, f"store{i}.db")).close()
        except Exception as exc:
            print(f"store{i}: {exc}", flush=True)
""")


def test_processes_creating_the_same_new_stores_at_once_all_open_them(tmp_path: Path) -> None:
    # Each new store is created by whichever process gets there first while the others are opening it; none may
    # see it half-made (its tables but not yet its schema version) and refuse it as "not a preference store".
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(tmp_path), str(tmp_path / "go")],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    (tmp_path / "go").touch()
    errors = [line for p in procs for line in p.communicate(timeout=120)[0].splitlines()]
    assert errors == [] and all(p.returncode == 0 for p in procs)
    for i in range(60):
        with PreferenceStore(tmp_path / f"store{i}.db") as store:
            assert store.schema_version == SCHEMA_VERSION


def test_two_processes_answering_the_same_queue_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        _fill(store, 150)
    procs = {name: _spawn(path, name, pause=0.003) for name in ("left", "right")}
    for p in procs.values():
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    Path(f"{path}.go").touch()
    outputs = {name: p.communicate(timeout=60)[0] for name, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values())
    claimed = {name: {int(x) for x in out.split()} for name, out in outputs.items()}
    assert not claimed["left"] & claimed["right"]
    assert min(len(ids) for ids in claimed.values()) > 20  # both really wrote at the same time
    assert len(claimed["left"]) + len(claimed["right"]) == 150
    with PreferenceStore(path) as store:
        for name, ids in claimed.items():
            assert {a.query_id for a in store.answers(annotator=name)} == ids
        assert store.stats()["answered"] == 150


def test_claim_leases_each_query_to_one_session(store: PreferenceStore) -> None:
    ids = _fill(store, 4)
    assert store.claim("alice@t").id == ids[0]  # type: ignore[union-attr]
    assert store.claim("bob@t").id == ids[1]  # type: ignore[union-attr]
    assert store.claim("alice@t").id == ids[0]  # type: ignore[union-attr]  # her own lease, renewed
    assert store.leased() == {ids[0]: "alice@t", ids[1]: "bob@t"}
    assert store.stats()["leased"] == 2
    assert len(store.pending()) == 4  # a lease hides nothing from the queue itself
    store.answer(ids[0], "a", annotator="alice", source="t")
    assert store.leased() == {ids[1]: "bob@t"}  # answering ends the lease
    assert store.claim("alice@t").id == ids[2]  # type: ignore[union-attr]
    assert store.release(ids[2], "bob@t") is False  # only the holder can give it back
    assert store.release(ids[2], "alice@t") is True
    assert store.claim("carol@t", prefer=ids[3]).id == ids[3]  # type: ignore[union-attr]
    assert store.claim("dave@t", exclude=[ids[2]]) is None  # ids[1] is bob's, ids[3] carol's
    assert store.claim("dave@t", query_ids=[ids[1], ids[3]]) is None
    assert store.claim("dave@t").id == ids[2]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="holder"):
        store.claim("")
    with pytest.raises(ValueError, match="lease_s"):
        store.claim("erin@t", lease_s=0)


def test_an_expired_lease_lets_another_session_take_the_query(store: PreferenceStore) -> None:
    (qid,) = _fill(store, 1)
    assert store.claim("alice@t", lease_s=0.05).id == qid  # type: ignore[union-attr]
    assert store.claim("bob@t") is None
    time.sleep(0.1)
    assert store.leased() == {}
    assert store.claim("bob@t").id == qid  # type: ignore[union-attr]
    assert store.leased() == {qid: "bob@t"}


def test_two_processes_claiming_from_one_queue_never_get_the_same_query(tmp_path: Path) -> None:
    path = tmp_path / "prefs.db"
    with PreferenceStore(path) as store:
        _fill(store, 150)
    procs = {}
    for name in ("left", "right"):
        procs[name] = subprocess.Popen([sys.executable, "-c", _CLAIMING_WORKER, str(path), name, f"{path}.go"],
                                       stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for p in procs.values():
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    Path(f"{path}.go").touch()
    outputs = {name: p.communicate(timeout=60)[0].split() for name, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values())
    assert all("conflict" not in out for out in outputs.values())  # nobody answered a query someone else held
    got = {name: {int(x) for x in out} for name, out in outputs.items()}
    assert not got["left"] & got["right"]
    assert min(len(ids) for ids in got.values()) > 20  # both really worked at the same time
    with PreferenceStore(path) as store:
        assert store.stats()["answered"] == 150 and store.leased() == {}


def _labelled_store(path: Path) -> PreferenceStore:
    store = PreferenceStore(path)
    ids = _fill(store, 4)
    store.answer(ids[0], "a", annotator="ann", source="t")
    store.answer(ids[1], "b", annotator="bob", source="t")
    store.answer(ids[2], "tie", annotator="ann", source="t")
    store.answer(ids[3], 0.8, annotator="sim", source="simulated-human")
    return store


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_then_import_round_trips_the_pairs(tmp_path: Path, suffix: str) -> None:
    with _labelled_store(tmp_path / "a.db") as src:
        out = tmp_path / f"pairs{suffix}"
        assert src.export(out, include_ties=True) == 4
        expected = src.pairs(include_ties=True)
    with PreferenceStore(tmp_path / "b.db") as dst:
        result = dst.import_file(out)
        assert (result.added, result.duplicates) == (4, 0)
        assert dst.pairs(include_ties=True) == expected
        assert dst.import_file(out).duplicates == 4
        assert dst.pending() == []


def test_dataset_round_trip_keeps_trl_columns(tmp_path: Path) -> None:
    with _labelled_store(tmp_path / "a.db") as src:
        ds = src.to_dataset()
        expected = src.pairs()
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert ds.num_rows == 3  # the tie stays out unless asked for
    assert ds[2]["label"] == pytest.approx(0.8)
    with PreferenceStore(tmp_path / "b.db") as dst:
        assert dst.import_dataset(ds).added == 3
        assert dst.pairs() == expected


def test_hand_written_trl_jsonl_with_extra_columns_and_conversations_imports(tmp_path: Path) -> None:
    path = tmp_path / "external.jsonl"
    records = [
        {"prompt": "Q1", "chosen": "yes", "rejected": "no", "score_chosen": 9, "id": "x1"},
        {"prompt": "Q2", "chosen": "fine", "rejected": "bad", "margin": 3.0},
        {"prompt": [{"role": "user", "content": "hi"}],
         "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    with PreferenceStore(tmp_path / "s.db") as store:
        assert store.import_file(path).added == 3
        pairs = store.pairs()
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs[:2]] == [("Q1", "yes", "no"), ("Q2", "fine", "bad")]
    assert pairs[1]["margin"] == 3.0
    assert pairs[2]["chosen"] == [{"role": "assistant", "content": "hello"}]
    assert pairs[0]["source"] == "import:external.jsonl"


def test_import_in_the_wrong_format_names_the_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "wrong.jsonl"
    path.write_text(json.dumps({"question": "q", "chosen": "a", "answer_b": "b"}) + "\n", encoding="utf-8")
    with PreferenceStore(tmp_path / "s.db") as store:
        with pytest.raises(PreferenceStoreError, match=r"missing column\(s\) prompt, rejected; found question, "
                                                       r"chosen, answer_b"):
            store.import_file(path)
        kto = tmp_path / "kto.jsonl"
        kto.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True}) + "\n", encoding="utf-8")
        with pytest.raises(PreferenceStoreError, match="unpaired"):
            store.import_file(kto)
        with pytest.raises(PreferenceStoreError, match=r"use a \.jsonl, \.json or \.parquet"):
            (tmp_path / "x.csv").write_text("prompt,chosen,rejected\n")
            store.import_file(tmp_path / "x.csv")
        assert store.count() == 0


def test_a_file_that_is_not_a_database_gets_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(PreferenceStoreError, match=r"notes\.db.*is not a preference store database"):
        PreferenceStore(path)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(PreferenceStoreError, match="not a preference store .* customers"):
        PreferenceStore(other)


def test_a_newer_schema_asks_to_upgrade_rlhf_gym(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with PreferenceStore(path):
        pass
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(PreferenceStoreError, match="newer than this rlhf_gym knows.*upgrade rlhf_gym"):
        PreferenceStore(path)


def test_an_older_schema_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 2
    path = tmp_path / "old.db"
    con = sqlite3.connect(path, isolation_level=None)
    assert migrate(con, target=1) == 1
    con.execute("INSERT INTO queries (key, kind, prompt, completion_a, completion_b, requested_by, created_at) "
                "VALUES ('k', 'compare', 'p', 'x', 'y', 'old', '2024-01-01T00:00:00+00:00')")
    con.execute("INSERT INTO answers (query_id, choice, label, annotator, source, answered_at) "
                "VALUES (1, 'a', 1.0, 'ann', 'old', '2024-01-01T00:00:01+00:00')")
    con.close()
    with PreferenceStore(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        (ans,) = store.answers()
        assert (ans.label, ans.meta) == (1.0, {})
        assert store.pairs()[0]["chosen"] == "x"
        (qid,) = _fill(store, 1)
        assert store.answer(qid, "a", annotator="ann", source="t", meta={"swapped": True}).meta == {"swapped": True}
        assert store.answers()[-1].meta == {"swapped": True}


def test_server_urls_get_a_clear_error_until_a_backend_exists(tmp_path: Path) -> None:
    with pytest.raises(PreferenceStoreError, match="no preference store backend for postgresql://"):
        open_store("postgresql://db.example/prefs")
    with open_store(tmp_path / "x.db") as store:
        assert isinstance(store, PreferenceStore)
