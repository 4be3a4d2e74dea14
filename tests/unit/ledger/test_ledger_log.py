"""The Ledger over both stores: appends, proofs, signed heads, and an attacker with the storage."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_ref import mth, path, proof

from ztfm.crypto.signing import SigningKey
from ztfm.errors import LedgerError
from ztfm.ledger import (
    Entry,
    EntryKind,
    Ledger,
    LedgerStore,
    MemoryLedgerStore,
    SignedTreeHead,
    SqliteLedgerStore,
)
from ztfm.ledger.merkle import leaf_hash

LOG_KEY = SigningKey.from_seed(b"\x11" * 32)
OTHER_KEY = SigningKey.from_seed(b"\x22" * 32)


def entries(n: int, start: int = 0) -> list[Entry]:
    return [
        Entry.create(EntryKind.REVOCATION, {"device_id": f"d{i}", "reason": "test"}, now=i)
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    s: LedgerStore = (
        MemoryLedgerStore() if request.param == "memory" else SqliteLedgerStore(tmp_path / "l.db")
    )
    yield s
    s.close()


def test_append_prove_and_match_reference(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    datas: list[bytes] = []
    for batch in (1, 1, 3, 11, 17):
        es = entries(batch, len(datas))
        idx = ledger.append_many(es)
        assert list(idx) == list(range(len(datas), len(datas) + batch))
        datas.extend(e.to_bytes() for e in es)
        assert ledger.root() == mth(datas)
    n = len(datas)
    for m in range(n):
        p = ledger.inclusion_proof(m)
        assert list(p.path) == path(m, datas)
        p.verify(datas[m], ledger.root())
    for m in range(1, n + 1):
        assert list(ledger.consistency_proof(m).path) == proof(m, datas)
    assert ledger.entry(5) == Entry.from_bytes(datas[5])
    assert [i for i, _ in ledger.tail(3)] == [n - 3, n - 2, n - 1]


def test_signed_heads_verify_and_full_recompute(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.append_many(entries(10))
    h1 = ledger.sign_tree_head(now=100)
    ledger.append_many(entries(7, 10))
    h2 = ledger.sign_tree_head(now=101)
    h1.verify(LOG_KEY.verify_key)
    assert ledger.latest_tree_head() == h2
    assert ledger.tree_heads() == [h1, h2]
    report = ledger.verify_all(LOG_KEY.verify_key)
    assert (report.entries, report.tree_heads) == (17, 2)
    assert report.root_hash == h2.root_hash


def test_reader_without_key_can_prove_but_not_sign(store: LedgerStore) -> None:
    Ledger(store, LOG_KEY).append_many(entries(4))
    reader = Ledger(store)
    assert reader.size == 4
    assert reader.log_key == LOG_KEY.verify_key
    with pytest.raises(LedgerError, match="signing key"):
        reader.sign_tree_head(now=1)


def test_other_log_key_is_refused(store: LedgerStore) -> None:
    Ledger(store, LOG_KEY)
    with pytest.raises(LedgerError, match="different log key"):
        Ledger(store, OTHER_KEY)


def test_verify_all_with_wrong_expected_key_fails(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.append_many(entries(3))
    ledger.sign_tree_head(now=1)
    with pytest.raises(LedgerError):
        ledger.verify_all(OTHER_KEY.verify_key)


def test_head_older_than_latest_is_refused(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.sign_tree_head(now=100)
    with pytest.raises(LedgerError, match="older"):
        ledger.sign_tree_head(now=99)


def test_bad_indices_and_sizes(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.append_many(entries(5))
    for bad in (-1, 5, 100):
        with pytest.raises(LedgerError):
            ledger.entry(bad)
        with pytest.raises(LedgerError):
            ledger.inclusion_proof(bad)
    with pytest.raises(LedgerError):
        ledger.inclusion_proof(3, 3)
    with pytest.raises(LedgerError):
        ledger.inclusion_proof(0, 6)
    with pytest.raises(LedgerError):
        ledger.consistency_proof(0)
    with pytest.raises(LedgerError):
        ledger.consistency_proof(3, 6)
    with pytest.raises(LedgerError):
        ledger.root(6)


def test_append_raw_refuses_non_entries_and_keeps_state(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.append_many(entries(2))
    root = ledger.root()
    with pytest.raises(LedgerError):
        ledger.append_raw([entries(1)[0].to_bytes(), b"not an entry"])
    assert ledger.size == 2 and ledger.root() == root and store.size() == 2


def test_store_refuses_append_at_wrong_index(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.append_many(entries(2))
    e = entries(1)[0].to_bytes()
    for first in (0, 1, 3):
        with pytest.raises(LedgerError):
            store.append(first, [(e, leaf_hash(e))], [])
    assert store.size() == 2


def test_second_writer_is_detected(tmp_path: Path) -> None:
    a = Ledger(SqliteLedgerStore(tmp_path / "l.db"), LOG_KEY)
    b = Ledger(SqliteLedgerStore(tmp_path / "l.db"), LOG_KEY)
    a.append_many(entries(2))
    with pytest.raises(LedgerError, match="another writer"):
        b.append_many(entries(1))
    assert Ledger(SqliteLedgerStore(tmp_path / "l.db")).size == 2


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    ledger = Ledger(SqliteLedgerStore(db), LOG_KEY)
    ledger.append_many(entries(9))
    sth = ledger.sign_tree_head(now=5)
    ledger.store.close()
    again = Ledger(SqliteLedgerStore(db, create=False), LOG_KEY)
    assert again.size == 9 and again.root() == sth.root_hash
    assert again.latest_tree_head() == sth
    again.append_many(entries(3, 9))
    again.verify_all(LOG_KEY.verify_key)


def test_sqlite_refuses_missing_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger"):
        SqliteLedgerStore(tmp_path / "missing.db", create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError):
        SqliteLedgerStore(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(LedgerError, match="schema"):
        SqliteLedgerStore(other, create=False)


def test_sqlite_triggers_refuse_in_place_edits(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    Ledger(SqliteLedgerStore(db), LOG_KEY).append_many(entries(4))
    con = sqlite3.connect(db)
    for sql in (
        "UPDATE entries SET data = x'00' WHERE idx = 1",
        "DELETE FROM entries WHERE idx = 3",
        "UPDATE nodes SET hash = x'00' WHERE level = 1",
        "DELETE FROM nodes",
        "DELETE FROM subjects",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()


# --- an attacker with write access to the database --------------------------------------------
def _signed_ledger(tmp_path: Path, n: int = 20) -> tuple[Path, SignedTreeHead]:
    db = tmp_path / "l.db"
    ledger = Ledger(SqliteLedgerStore(db), LOG_KEY)
    ledger.append_many(entries(n))
    sth = ledger.sign_tree_head(now=1000)
    ledger.store.close()
    return db, sth


def _raw(db: Path, *sql: tuple[str, tuple[object, ...]]) -> None:
    con = sqlite3.connect(db)
    for name in (
        "entries_no_update",
        "entries_no_delete",
        "nodes_no_update",
        "nodes_no_delete",
        "heads_no_update",
        "heads_no_delete",
        "subjects_no_update",
        "subjects_no_delete",
    ):
        con.execute(f"DROP TRIGGER IF EXISTS {name}")
    for stmt, args in sql:
        con.execute(stmt, args)
    con.commit()
    con.close()


def _verify(db: Path) -> None:
    Ledger(SqliteLedgerStore(db, create=False)).verify_all(LOG_KEY.verify_key)


def test_rewritten_entry_with_its_leaf_hash_fails_verification(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    forged = Entry.create(EntryKind.REVOCATION, {"device_id": "x", "reason": "y"}, now=7)
    data = forged.to_bytes()
    _raw(db, ("UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 7", (data, leaf_hash(data))))
    with pytest.raises(LedgerError, match=r"level|rewritten"):
        _verify(db)


def test_rewritten_entry_alone_fails_verification(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    data = Entry.create(EntryKind.REVOCATION, {"device_id": "x", "reason": "y"}, now=7).to_bytes()
    _raw(db, ("UPDATE entries SET data = ? WHERE idx = 7", (data,)))
    with pytest.raises(LedgerError, match="entry 7"):
        _verify(db)


def test_malformed_entry_fails_verification(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    _raw(
        db, ("UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 2", (b"{}", leaf_hash(b"{}")))
    )
    with pytest.raises(LedgerError, match="malformed"):
        _verify(db)


def test_fully_recomputed_rewrite_is_caught_by_the_signed_head(tmp_path: Path) -> None:
    """The attacker rewrites entry 3 and recomputes every node; only the signed head catches it."""
    db, _ = _signed_ledger(tmp_path)
    forged = [e.to_bytes() for e in entries(20)]
    forged[3] = Entry.create(
        EntryKind.REVOCATION, {"device_id": "x", "reason": "y"}, now=3
    ).to_bytes()
    shadow = Ledger(MemoryLedgerStore())
    shadow.append_raw(forged)
    stmts: list[tuple[str, tuple[object, ...]]] = [("DELETE FROM nodes", ())]
    stmts.append(
        (
            "UPDATE entries SET data = ?, leaf_hash = ? WHERE idx = 3",
            (forged[3], leaf_hash(forged[3])),
        )
    )
    for level in range(1, 6):
        for ix, h in enumerate(shadow.store.node_range(level, 0, 1 << 20)):
            stmts.append(("INSERT INTO nodes VALUES (?, ?, ?)", (level, ix, h)))
    _raw(db, *stmts)
    with pytest.raises(LedgerError, match="rewritten"):
        _verify(db)


def test_truncated_ledger_fails_verification(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    _raw(
        db,
        ("DELETE FROM entries WHERE idx >= 15", ()),
        ("DELETE FROM nodes WHERE idx * (1 << level) >= 15", ()),
    )
    with pytest.raises(LedgerError, match="truncated"):
        _verify(db)


def test_hole_in_the_ledger_fails(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    _raw(db, ("DELETE FROM entries WHERE idx = 4", ()))
    with pytest.raises(LedgerError, match="missing"):
        _verify(db)


def test_tampered_interior_node_fails(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    _raw(db, ("UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 1", (b"\x00" * 32,)))
    with pytest.raises(LedgerError, match="level 2"):
        _verify(db)


def test_forged_tree_head_signature_fails(tmp_path: Path) -> None:
    db, sth = _signed_ledger(tmp_path)
    forged = SignedTreeHead(sth.head, bytes([sth.signature[0] ^ 1]) + sth.signature[1:])
    _raw(db, ("INSERT INTO tree_heads (tree_size, data) VALUES (?, ?)", (20, forged.to_bytes())))
    with pytest.raises(LedgerError, match="signature"):
        _verify(db)


def test_head_signed_by_another_key_fails(tmp_path: Path) -> None:
    db, sth = _signed_ledger(tmp_path)
    other = SignedTreeHead.sign(OTHER_KEY, sth.tree_size, sth.root_hash, now=2000)
    _raw(db, ("INSERT INTO tree_heads (tree_size, data) VALUES (?, ?)", (20, other.to_bytes())))
    with pytest.raises(LedgerError, match="different log"):
        _verify(db)


def test_swapped_log_key_is_caught_when_pinned(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    _raw(
        db, ("UPDATE meta SET value = ? WHERE key = 'log_public_key'", (OTHER_KEY.verify_key.raw,))
    )
    with pytest.raises(LedgerError, match="expected key"):
        _verify(db)


def test_heads_going_backwards_fail(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    ledger = Ledger(SqliteLedgerStore(db), LOG_KEY)
    old = SignedTreeHead.sign(LOG_KEY, 10, ledger.root(10), now=3000)
    _raw(db, ("INSERT INTO tree_heads (tree_size, data) VALUES (?, ?)", (10, old.to_bytes())))
    with pytest.raises(LedgerError, match="backwards"):
        _verify(db)


def test_regression_text_instead_of_blob_raised_typeerror(tmp_path: Path) -> None:
    """SQLite's replace() turns a BLOB into TEXT; reading it used to crash with TypeError."""
    db, _ = _signed_ledger(tmp_path)
    _raw(db, ("UPDATE entries SET data = replace(data, 'd3', 'd9') WHERE idx = 3", ()))
    with pytest.raises(LedgerError, match="altered"):
        _verify(db)
    with pytest.raises(LedgerError, match="altered"):
        Ledger(SqliteLedgerStore(db, create=False)).entry(3)
    _raw(db, ("UPDATE nodes SET hash = 'x' WHERE level = 4 AND idx = 0", ()))
    with pytest.raises(LedgerError, match="altered"):
        Ledger(SqliteLedgerStore(db, create=False))


def test_threads_appending_through_one_ledger(tmp_path: Path) -> None:
    import threading

    ledger = Ledger(SqliteLedgerStore(tmp_path / "l.db"), LOG_KEY)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                ledger.append(entries(1, t * 1000 + i)[0])
                if i % 5 == 0:
                    ledger.sign_tree_head(now=10_000 + t * 100 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # timestamps may interleave backwards between threads: that is refused, not corrupting
    assert all(isinstance(e, LedgerError) and "older" in str(e) for e in errors)
    assert ledger.size == Ledger(SqliteLedgerStore(tmp_path / "l.db")).size
    ledger.verify_all(LOG_KEY.verify_key)


def test_history_by_subject(store: LedgerStore) -> None:
    ledger = Ledger(store, LOG_KEY)
    ledger.append(Entry.create(EntryKind.ENROLMENT, {"device_id": "cam", "public_key": "k"}, now=1))
    ledger.append_many(entries(3))
    ledger.append(
        Entry.create(
            EntryKind.ROUND_CONTRIBUTORS, {"round": 1, "contributors": ["cam", "d1"]}, now=2
        )
    )
    ledger.append(
        Entry.create(EntryKind.REVOCATION, {"device_id": "cam", "reason": "stolen"}, now=3)
    )
    assert [i for i, _ in ledger.history("cam")] == [0, 4, 5]
    assert [e.kind for _, e in ledger.history("cam")][-1] is EntryKind.REVOCATION
    assert [i for i, _ in ledger.history("d1")] == [2, 4]
    assert ledger.history("nobody") == []
    ledger.verify_all(LOG_KEY.verify_key)


def test_subject_index_tampering_is_detected(tmp_path: Path) -> None:
    db, _ = _signed_ledger(tmp_path)
    _raw(db, ("DELETE FROM subjects WHERE subject = 'd4'", ()))  # hide an entry from lookups
    with pytest.raises(LedgerError, match="subject index"):
        _verify(db)
    (tmp_path / "b").mkdir()
    db2, _ = _signed_ledger(tmp_path / "b")
    _raw(db2, ("INSERT INTO subjects VALUES ('d4', 9)", ()))  # point a lookup at a wrong entry
    with pytest.raises(LedgerError, match="subject index"):
        Ledger(SqliteLedgerStore(db2, create=False)).history("d4")
    with pytest.raises(LedgerError, match="subject index"):
        _verify(db2)
    _raw(
        db2,
        ("DELETE FROM subjects WHERE subject = 'd4' AND idx = 9", ()),
        ("INSERT INTO subjects VALUES ('d4', 999)", ()),
    )
    with pytest.raises(LedgerError, match="outside"):
        Ledger(SqliteLedgerStore(db2, create=False)).history("d4")


def test_reader_refresh_follows_writer_and_notices_truncation(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    writer = Ledger(SqliteLedgerStore(db), LOG_KEY)
    writer.append_many(entries(3))
    reader = Ledger(SqliteLedgerStore(db, create=False))
    writer.append_many(entries(4, 3))
    assert reader.size == 3
    assert reader.refresh() == 7 and reader.root() == writer.root()
    reader.inclusion_proof(6).verify(writer.entry_bytes(6), writer.root())
    _raw(db, ("DELETE FROM entries WHERE idx >= 5", ()))
    with pytest.raises(LedgerError, match="truncated"):
        reader.refresh()


def test_regression_batched_node_read_must_use_the_primary_key(tmp_path: Path) -> None:
    """`(level, idx) IN (VALUES ...)` made SQLite scan the whole nodes table: 17 ms per proof
    at 100k entries instead of 0.1 ms. Check the plan of every query a proof runs."""
    store = SqliteLedgerStore(tmp_path / "l.db")
    ledger = Ledger(store, LOG_KEY)
    ledger.append_many(entries(100))
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    ledger.inclusion_proof(37, 90)
    ledger.consistency_proof(13, 77)
    store._db.set_trace_callback(None)
    selects = [q for q in seen if "SELECT" in q and "nodes" in q]
    assert selects
    for q in selects:
        plan = " ".join(str(r[3]) for r in store._db.execute("EXPLAIN QUERY PLAN " + q))
        assert "SCAN nodes" not in plan and "SCAN n " not in plan + " ", plan
