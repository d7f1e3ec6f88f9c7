"""Fault injection on the preference store's file: flipped bytes in random pages, truncation, zeroed pages, a
write-ahead log deleted while a labeller is working, and migration of a store written by an older schema.

The rule every variant must meet: the store either opens, passes :meth:`PreferenceStore.verify` and holds exactly
the answers it held before, or fails with one clear :class:`DamagedStoreError`; never a raw SQLite error, never a
silently shorter or altered set of answers. Randomness is seeded, so a failure names a reproducible case.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf_gym.preference_store import (
    SCHEMA_VERSION,
    DamagedStoreError,
    PreferenceStore,
    PreferenceStoreError,
    migrate,
)

PAGE = 4096


def _build(path: Path, n: int = 120, answered: int = 80) -> None:
    with PreferenceStore(path) as store:
        ids = store.add_queries([
            {"prompt": f"prompt {i}: " + "words " * 20, "completion_a": f"first answer {i}",
             "completion_b": f"second answer {i}", "meta": {"i": i}} for i in range(n)], requested_by="test")
        for k, qid in enumerate(ids[:answered]):
            store.answer(qid, ["a", "b", "tie", "skip"][k % 4], annotator=f"ann{k % 3}", source="test",
                         meta={"elapsed_s": k / 10})


def _snapshot(path: Path) -> tuple[list[tuple], list[tuple]]:
    """Every answer and every pending query, verified first (raises DamagedStoreError on damage)."""
    with PreferenceStore(path) as store:
        store.verify()
        answers = [(a.id, a.query_id, a.choice, a.label, a.annotator, a.source, a.answered_at, tuple(a.meta.items()))
                   for a in store.answers()]
        pending = [(q.id, q.prompt, q.completion_a, q.completion_b) for q in store.pending()]
    return answers, pending


def _outcome(path: Path, reference: tuple[list[tuple], list[tuple]]) -> str:
    try:
        got = _snapshot(path)
    except DamagedStoreError as exc:
        message = str(exc)
        assert "\n" not in message and "damaged" in message and "recover" in message, message
        return "damaged"
    assert got == reference, f"{path.name}: the store opened and verified, but its contents changed"
    return "intact"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[list[tuple], list[tuple]]]:
    path = tmp_path_factory.mktemp("pristine") / "prefs.db"
    _build(path)
    return path, _snapshot(path)


def test_flipped_bytes_in_random_pages_are_caught_or_harmless(
        pristine: tuple[Path, tuple[list[tuple], list[tuple]]], tmp_path: Path) -> None:
    source, reference = pristine
    size = source.stat().st_size
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    for trial in range(240):
        path = tmp_path / f"flip{trial}.db"
        data = bytearray(source.read_bytes())
        page = rng.randrange(size // PAGE)
        for _ in range(rng.randint(1, 6)):  # a few bit flips inside one page: a torn or decayed sector
            data[page * PAGE + rng.randrange(PAGE)] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        kind = _outcome(path, reference)
        outcomes[kind] = outcomes.get(kind, 0) + 1
        path.unlink()
    # both outcomes really happen (flips in free space are harmless), and none is a raw error or a silent change
    assert outcomes.get("damaged", 0) > 100 and outcomes.get("intact", 0) > 5, outcomes


@pytest.mark.parametrize("variant", ["truncate", "zero-page", "random-page", "header", "empty", "garbage"])
def test_truncated_zeroed_and_overwritten_files_fail_with_one_clear_error(
        pristine: tuple[Path, tuple[list[tuple], list[tuple]]], tmp_path: Path, variant: str) -> None:
    source, reference = pristine
    data = bytearray(source.read_bytes())
    pages = len(data) // PAGE
    rng = random.Random(variant)
    for trial in range(6):
        path = tmp_path / f"{variant}{trial}.db"
        damaged = bytearray(data)
        page = rng.randrange(1, pages)
        if variant == "truncate":
            damaged = damaged[:rng.randrange(100, len(data) - 1)]
        elif variant == "zero-page":
            damaged[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)
        elif variant == "random-page":
            damaged[page * PAGE:(page + 1) * PAGE] = rng.randbytes(PAGE)
        elif variant == "header":
            damaged[rng.randrange(16, 100)] ^= 0xFF
        elif variant == "empty":
            damaged = bytearray()
        else:
            damaged = bytearray(rng.randbytes(len(data)))
        path.write_bytes(bytes(damaged))
        if variant == "empty":  # a file cut to nothing cannot be told from a new one: it opens as an empty store
            assert _snapshot(path) == ([], [])
            continue
        try:
            kind = _outcome(path, reference)
        except PreferenceStoreError as exc:  # not a store at all (random bytes): said so, in one line
            assert variant == "garbage" and "not a preference store" in str(exc) and "\n" not in str(exc)
            continue
        assert kind in ("damaged", "intact")
        if variant in ("truncate", "zero-page", "random-page"):
            assert kind == "damaged", f"{variant} trial {trial} went unnoticed"


_LABELLER = textwrap.dedent("""
    import os, sys
    from rlhf_gym.preference_store import PreferenceStore
    path, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = PreferenceStore(path)
    ids = [q.id for q in store.pending()]
    for qid in ids[:first]:
        store.answer(qid, "a", annotator="worker", source="test", session="s1")
    print("answered", first, flush=True)
    sys.stdin.readline()                       # the test deletes the log files here
    for qid in ids[first:last]:
        store.answer(qid, "b", annotator="worker", source="test", session="s1")
    print("answered", last, flush=True)
    sys.stdin.readline()                       # killed here, without closing the store
""")


@pytest.mark.parametrize("delete", [("-wal",), ("-shm",), ("-wal", "-shm")])
def test_log_files_deleted_mid_session_lose_no_answer(tmp_path: Path, delete: tuple[str, ...]) -> None:
    path = tmp_path / "prefs.db"
    _build(path, n=60, answered=0)
    proc = subprocess.Popen([sys.executable, "-c", _LABELLER, str(path), "20", "35"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "answered 20\n"
        for suffix in delete:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        try:  # another process looking while the labeller works: a clear error, or every answer so far
            with PreferenceStore(path) as reader:
                reader.verify()
                assert reader.stats()["answered"] == 20
        except PreferenceStoreError as exc:
            assert "\n" not in str(exc) and "-wal/-shm files were removed" in str(exc), exc
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "answered 35\n"
        with PreferenceStore(path) as reader:
            assert reader.stats()["answered"] == 35
    finally:
        proc.kill()
        proc.wait()
    answers, pending = _snapshot(path)
    assert len(answers) == 35 and len(pending) == 25
    assert [a[2] for a in answers] == ["a"] * 20 + ["b"] * 15


def test_a_v3_store_with_answers_migrates_keeping_every_label(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, target=3) == 3
    for i in range(1, 6):
        conn.execute("INSERT INTO queries (key, kind, prompt, completion_a, completion_b, scale, requested_by, "
                     "created_at, meta) VALUES (?, 'compare', ?, ?, ?, NULL, 'old', '2025-01-01T00:00:00+00:00', "
                     "'{}')", (f"key{i}", f"prompt {i}", f"a{i}", f"b{i}"))
    conn.execute("INSERT INTO queries (key, kind, prompt, completion_a, completion_b, scale, requested_by, "
                 "created_at, meta) VALUES ('rate', 'rating', 'rate it', 'text', NULL, 5, 'old', 'then', '{}')")
    for qid, choice, label in [(1, "a", 1.0), (2, "b", 0.0), (3, "tie", 0.5), (4, "skip", None), (6, "rating", 4.0)]:
        conn.execute("INSERT INTO answers (query_id, choice, label, annotator, source, answered_at, meta) "
                     "VALUES (?, ?, ?, 'old-ann', 'terminal', 'then', '{\"swapped\": true}')", (qid, choice, label))
    conn.execute("INSERT INTO leases (query_id, holder, expires_at) VALUES (5, 'old-ann', 1e12)")
    conn.close()
    with PreferenceStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        store.verify()  # rows stored before checksums existed get theirs in the migration
        got = [(a.query_id, a.choice, a.label, a.annotator, a.meta) for a in store.answers()]
        assert got == [(1, "a", 1.0, "old-ann", {"swapped": True}), (2, "b", 0.0, "old-ann", {"swapped": True}),
                       (3, "tie", 0.5, "old-ann", {"swapped": True}), (4, "skip", None, "old-ann", {"swapped": True}),
                       (6, "rating", 4.0, "old-ann", {"swapped": True})]
        assert [(p["chosen"], p["rejected"]) for p in store.pairs()] == [("a1", "b1"), ("b2", "a2")]
        # the old lease is the labeller's own: any session of theirs may take it, nobody else
        (lease,) = store.leases()
        assert (lease.query_id, lease.holder, lease.session) == (5, "old-ann", "")
        assert store.claim("someone", session="x") is None
        assert store.claim("old-ann", session="terminal:1").id == 5  # type: ignore[union-attr]
        assert store.claim("old-ann", session="terminal:2") is None  # now that terminal's own
        store.answer(5, "a", annotator="old-ann", source="test", session="terminal:1")
        store.verify()


def test_train_rm_and_label_refuse_a_damaged_store_with_one_error_line(
        pristine: tuple[Path, tuple[list[tuple], list[tuple]]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from rlhf_gym.cli import main as rlhf_gym_main
    from rlhf_gym.live.cli import main as label_main

    source, _ = pristine
    path = tmp_path / "damaged.db"
    shutil.copy(source, path)
    with PreferenceStore(path) as store:  # a changed label that SQLite itself cannot see
        store.conn.execute("UPDATE answers SET label = 0.25 WHERE id = 3")
        assert store.integrity_check() == "ok"
    capsys.readouterr()
    assert rlhf_gym_main(["train-rm", "--data", str(path), "--out", str(tmp_path / "rm"),
                          "--backbone", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "damaged" in err and "answer 3" in err
    assert not (tmp_path / "rm").exists()
    from rlhf_gym.data import load_records

    with pytest.raises(DamagedStoreError, match="answer 3 does not match its checksum"):  # offline DPO/SFT data
        load_records(path, ("prompt", "chosen", "rejected"))

    torn = tmp_path / "torn.db"
    data = bytearray(source.read_bytes())
    data[5 * PAGE:6 * PAGE] = bytes(PAGE)
    torn.write_bytes(bytes(data))
    assert label_main(["--store", str(torn), "--web", "--port", "0"]) == 2  # before any page is served
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "is damaged" in err, err


_KILLED_LABELLER = textwrap.dedent("""
    import sys, time
    from rlhf_gym.preference_store import PreferenceStore
    store = PreferenceStore(sys.argv[1])
    for query in store.pending()[:30]:
        store.answer(query.id, "b", annotator="person", source="web", session="tab-1")
    print("done", flush=True)
    time.sleep(60)                              # killed here: the log is left behind, never cleaned up
""")


def test_a_damaged_log_left_by_a_killed_labeller_loses_no_answer(tmp_path: Path) -> None:
    # Answers from a labelling session reach the database file at once, so flipped bytes in the write-ahead log
    # (whose frames SQLite then ignores from the damaged one on) cannot take any of them away.
    path = tmp_path / "prefs.db"
    _build(path, n=50, answered=0)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_LABELLER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None and proc.stdout.readline() == "done\n"
    proc.kill()
    proc.wait()
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    rng = random.Random(99)
    for trial in range(30):
        folder = tmp_path / f"copy{trial}"
        folder.mkdir()
        for part in tmp_path.glob("prefs.db*"):
            shutil.copy(part, folder / part.name)
        log = bytearray((folder / wal.name).read_bytes())
        for _ in range(rng.randint(1, 5)):
            log[rng.randrange(len(log))] ^= 1 << rng.randrange(8)
        (folder / wal.name).write_bytes(bytes(log))
        answers, _ = _snapshot(folder / "prefs.db")
        assert len(answers) == 30 and {a[2] for a in answers} == {"b"}, trial
