"""Audit log: tamper, delete, reorder, truncate and torn-write detection; snapshot store bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ztfm.audit import (
    AuditHead,
    AuditLog,
    AuditRecord,
    SnapshotStore,
    repair_torn_tail,
    tail_log,
    verify_log,
)
from ztfm.errors import AuditError

T0 = 1_800_000_000.0


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    p = tmp_path / "audit.jsonl"
    with AuditLog(p) as log:
        for i in range(5):
            log.append("policy.decision", {"i": i, "allow": i % 2 == 0}, T0 + i)
    return p


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def test_valid_log_verifies_and_reopens(log_path: Path) -> None:
    res = verify_log(log_path)
    assert res.records == 5 and res.head is not None
    with AuditLog(log_path) as log:
        rec = log.append("x", {}, T0 + 10)
        assert rec.seq == 6 and rec.prev == res.head.hash
    assert verify_log(log_path).records == 6


def test_rewritten_record(log_path: Path) -> None:
    lines = _lines(log_path)
    obj = json.loads(lines[2])
    obj["fields"]["allow"] = False
    lines[2] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 3: record hash mismatch"):
        verify_log(log_path)


def test_rewritten_record_with_recomputed_hash(log_path: Path) -> None:
    from ztfm.audit.log import record_hash

    lines = _lines(log_path)
    obj = json.loads(lines[1])
    obj["fields"]["allow"] = True
    obj["hash"] = record_hash(obj["seq"], obj["ts"], obj["event"], obj["fields"], obj["prev"])
    lines[1] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 3: previous-hash link broken"):
        verify_log(log_path)


def test_deleted_record(log_path: Path) -> None:
    lines = _lines(log_path)
    del lines[1]
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 2: sequence number 3"):
        verify_log(log_path)


def test_reordered_records(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 2"):
        verify_log(log_path)


def test_truncated_log_detected_by_anchor(log_path: Path) -> None:
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:3]))
    with pytest.raises(AuditError, match="truncated"):
        verify_log(log_path)


def test_truncated_log_detected_by_external_head(log_path: Path) -> None:
    head = verify_log(log_path).head
    assert head is not None
    log_path.write_bytes(b"".join(_lines(log_path)[:4]))
    log_path.with_name(log_path.name + ".head").unlink()
    with pytest.raises(AuditError, match="truncated"):
        verify_log(log_path, expected_head=head)


def test_whole_log_replaced_detected_by_anchor(log_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    with AuditLog(other, anchor=False) as log:
        for _ in range(6):
            log.append("forged", {}, T0)
    log_path.write_bytes(other.read_bytes())
    with pytest.raises(AuditError, match="head anchor"):
        verify_log(log_path)


def test_torn_last_line_is_reported_not_accepted(log_path: Path) -> None:
    with open(log_path, "ab") as fh:
        fh.write(b'{"seq":6,"ts":1,"ev')
    with pytest.raises(AuditError, match="line 6: torn"):
        verify_log(log_path)
    with pytest.raises(AuditError, match="torn"):
        AuditLog(log_path)
    assert repair_torn_tail(log_path) > 0
    assert verify_log(log_path).records == 5


def test_garbage_line(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[0] = b"hello\n"
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 1: not valid JSON"):
        verify_log(log_path)


def test_extra_field_rejected(log_path: Path) -> None:
    lines = _lines(log_path)
    obj = json.loads(lines[0])
    obj["extra"] = 1
    lines[0] = (json.dumps(obj) + "\n").encode()
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 1: record has the wrong fields"):
        verify_log(log_path)


def test_bad_fields_rejected(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl") as log:
        with pytest.raises(AuditError):
            log.append("x", {"v": float("nan")}, T0)
        with pytest.raises(AuditError):
            log.append("x", {"v": b"bytes"}, T0)
        with pytest.raises(AuditError):
            log.append("", {}, T0)
        with pytest.raises(AuditError):
            log.append("x", {"big": "a" * 70000}, T0)
        assert log.head == AuditHead(0, "0" * 64)


def test_missing_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read"):
        verify_log(tmp_path / "nope.jsonl")


# --- snapshots ----------------------------------------------------------------------------------
def test_snapshot_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps", max_total_bytes=10_000, max_payload_bytes=1000)
    seq = store.save("rejected_update", b"\x00\x01payload", {"device": "cam-1"}, T0)
    snap = store.load(seq)
    assert snap.payload == b"\x00\x01payload" and snap.context == {"device": "cam-1"}
    assert not snap.truncated


def test_snapshot_store_evicts_oldest_under_cap(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps", max_total_bytes=3000, max_payload_bytes=1000)
    seqs = [store.save("r", bytes([i]) * 800, {"i": i}, T0 + i) for i in range(10)]
    assert store.total_bytes <= 3000
    assert store.seqs() == seqs[-len(store.seqs()) :]
    with pytest.raises(AuditError, match="evicted"):
        store.load(seqs[0])
    # the cap survives a restart
    again = SnapshotStore(tmp_path / "snaps", max_total_bytes=3000, max_payload_bytes=1000)
    assert again.total_bytes == store.total_bytes
    assert again.save("r", b"x", {}, T0) == seqs[-1] + 1


def test_snapshot_truncates_huge_payload(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s", max_total_bytes=100_000, max_payload_bytes=100)
    snap = store.load(store.save("r", b"a" * 5000, {}, T0))
    assert snap.truncated and snap.payload_len == 5000 and len(snap.payload) == 100


def test_snapshot_rejects_bad_input(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s", max_total_bytes=500, max_payload_bytes=10_000)
    with pytest.raises(AuditError, match="larger than"):
        store.save("r", b"a" * 1000, {}, T0)
    with pytest.raises(AuditError):
        store.save("r", b"a", {"x": float("inf")}, T0)
    with pytest.raises(AuditError):
        SnapshotStore(tmp_path / "t", max_total_bytes=0)


def test_tampered_snapshot_detected(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s")
    seq = store.save("r", b"abc", {}, T0)
    p = tmp_path / "s" / f"{seq:012d}.snap.json"
    obj = json.loads(p.read_text())
    obj["payload_b64"] = "YWJk"
    p.write_text(json.dumps(obj))
    with pytest.raises(AuditError, match="digest"):
        store.load(seq)


def test_concurrent_appends_keep_one_valid_chain(tmp_path: Path) -> None:
    import threading

    p = tmp_path / "c.jsonl"
    with AuditLog(p) as log:

        def work(k: int) -> None:
            for i in range(25):
                log.append("e", {"k": k, "i": i}, T0)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.head.seq == 200
    res = verify_log(p)
    assert res.records == 200 and res.head == AuditHead(200, res.head.hash if res.head else "")


def test_tail_log_returns_the_verified_last_records(log_path: Path) -> None:
    res, recs = tail_log(log_path, 2)
    assert res.records == 5 and [r.seq for r in recs] == [4, 5]
    assert res.head is not None and recs[-1].hash == res.head.hash
    _, evs = tail_log(log_path, 10, event="policy.decision")
    assert [r.fields["i"] for r in evs] == [0, 1, 2, 3, 4]
    _, none = tail_log(log_path, 3, event="other")
    assert none == []
    with pytest.raises(AuditError, match="at least 1"):
        tail_log(log_path, 0)


def test_tail_log_refuses_a_tampered_log_and_returns_nothing(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[4] = lines[4].replace(b'"i":4', b'"i":9')
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 5: record hash mismatch"):
        tail_log(log_path, 5)


def test_tail_log_leaves_out_records_appended_while_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ztfm.audit.log as mod

    p = tmp_path / "big.jsonl"
    # Larger than one read buffer, so the reader is still reading when the writer appends.
    with AuditLog(p) as writer:
        for i in range(300):
            writer.append("e", {"i": i, "pad": "x" * 64}, T0 + i)
        real = mod._parse_line
        calls = {"n": 0}

        def parse_and_append(raw: bytes, lineno: int) -> AuditRecord:
            calls["n"] += 1
            if calls["n"] == 1:
                writer.append("late", {}, T0 + 999)
            return real(raw, lineno)

        monkeypatch.setattr(mod, "_parse_line", parse_and_append)
        res, recs = tail_log(p, 3)
        monkeypatch.setattr(mod, "_parse_line", real)
    assert res.records == 300 and [r.seq for r in recs] == [298, 299, 300]
    assert all(r.event == "e" for r in recs)
    assert verify_log(p).records == 301  # the late record is there, just not in that answer
