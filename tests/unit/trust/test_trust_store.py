"""Trust stores: round trips, crash safety, and rejection of corrupt or tampered files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ztfm.errors import TrustError
from ztfm.trust import (
    JsonFileTrustStore,
    MemoryTrustStore,
    SqliteTrustStore,
    TokenBucket,
    TrustManager,
    TrustRecord,
    TrustState,
    open_store,
)
from ztfm.trust.model import TrustConfig
from ztfm.types import DeviceId

D = DeviceId("dev-1")


def _populate(m: TrustManager) -> None:
    m.observe_attestation(D, True, 1.0, round_id=1, detail="quote ok")
    m.observe_rejection(D, "bad_signature", 2.0, round_id=1)
    m.observe_attestation(DeviceId("dev-2"), False, 3.0, round_id=2)


@pytest.mark.parametrize("name", ["trust.json", "trust.sqlite"])
def test_round_trip_across_reopen(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _populate(TrustManager(open_store(path)))
    m = TrustManager(open_store(path))
    assert m.store.devices() == ["dev-1", "dev-2"]
    assert m.record(DeviceId("dev-2"), 9.0).state is TrustState.QUARANTINED
    hist = m.store.history(D)
    assert [c.reason for c in hist] == ["attestation_ok", "rejected:bad_signature"]
    assert hist[0].inputs["detail"] == "quote ok"
    assert m.store.history(D, limit=1)[0].reason == "rejected:bad_signature"
    assert m.store.history(D, limit=0) == []


@pytest.mark.parametrize("cls", [MemoryTrustStore, "json", "sqlite"])
def test_history_is_bounded(tmp_path: Path, cls: object) -> None:
    if cls == "json":
        store: object = JsonFileTrustStore(tmp_path / "t.json", history_limit=5)
    elif cls == "sqlite":
        store = SqliteTrustStore(tmp_path / "t.db", history_limit=5)
    else:
        store = MemoryTrustStore(history_limit=5)
    m = TrustManager(store)  # type: ignore[arg-type]
    for i in range(12):
        m.observe_alerts(D, 1, 0, float(i))
    assert len(m.store.history(D, limit=100)) == 5
    assert m.store.history(D, limit=100)[-1].at == 11.0


def test_json_write_failure_keeps_old_file_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.json"
    m = TrustManager(JsonFileTrustStore(path))
    m.observe_alerts(D, 1, 0, 1.0)
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(TrustError, match="disk full"):
        m.observe_rejection(D, "replay", 2.0)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temp file left behind
    assert len(m.store.history(D)) == 1  # memory rolled back too
    monkeypatch.undo()
    assert len(TrustManager(JsonFileTrustStore(path)).store.history(D)) == 1


def _good_doc(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "good.json"
    _populate(TrustManager(JsonFileTrustStore(path)))
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict)
    return doc


def _tamper(doc: dict, case: str) -> object:  # type: ignore[type-arg]
    rec = doc["records"]["dev-1"]
    if case == "version":
        doc["version"] = 2
    elif case == "records_list":
        doc["records"] = []
    elif case == "key_mismatch":
        doc["records"]["dev-9"] = rec
    elif case == "negative_beta":
        rec["beta"] = -1.0
    elif case == "nan_alpha":
        rec["alpha"] = "NaN"
    elif case == "nan_literal_beta":  # json.dumps writes a bare NaN, which json.loads accepts
        rec["beta"] = float("nan")
    elif case == "inf_tokens":
        rec["bucket_tokens"] = float("inf")
    elif case == "bad_state":
        rec["state"] = "trusted_forever"
    elif case == "extra_field":
        rec["admin"] = True
    elif case == "missing_field":
        del rec["alpha"]
    elif case == "bool_count":
        rec["good_replays"] = True
    elif case == "attested_str":
        rec["attested_ok"] = "yes"
    elif case == "history_other_device":
        doc["history"]["dev-1"][0]["device"] = "dev-2"
    elif case == "history_not_list":
        doc["history"]["dev-1"] = {}
    elif case == "history_nan_at":
        doc["history"]["dev-1"][0]["at"] = float("nan")
    elif case == "history_score_range":
        doc["history"]["dev-1"][0]["new_score"] = 7.0
    elif case == "history_bad_state":
        doc["history"]["dev-1"][0]["new_state"] = "x"
    elif case == "not_object":
        return [1, 2]
    return doc


TAMPER = [
    "version",
    "records_list",
    "key_mismatch",
    "negative_beta",
    "nan_alpha",
    "nan_literal_beta",
    "inf_tokens",
    "bad_state",
    "extra_field",
    "missing_field",
    "bool_count",
    "attested_str",
    "history_other_device",
    "history_not_list",
    "history_nan_at",
    "history_score_range",
    "history_bad_state",
    "not_object",
]


@pytest.mark.parametrize("case", TAMPER)
def test_tampered_json_store_rejected(tmp_path: Path, case: str) -> None:
    doc = _tamper(_good_doc(tmp_path), case)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TrustError):
        JsonFileTrustStore(path)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"null", b'{"version": 1}'])
def test_corrupt_json_store_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TrustError):
        JsonFileTrustStore(path)


def test_corrupt_sqlite_row_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SqliteTrustStore(path)
    TrustManager(store).observe_alerts(D, 1, 0, 1.0)
    store._db.execute('UPDATE trust_records SET body = \'{"device": "dev-1"}\'')
    with pytest.raises(TrustError):
        store.load(D)
    store._db.execute("UPDATE trust_records SET body = 'not json'")
    with pytest.raises(TrustError):
        store.load(D)
    rec = TrustRecord.new(DeviceId("dev-2"), TrustConfig(), 0.0)
    store._db.execute("UPDATE trust_records SET body = ?", (json.dumps(rec.to_dict()),))
    with pytest.raises(TrustError, match="another device"):
        store.load(D)


def test_sqlite_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TrustError):
        SqliteTrustStore(path)


def test_token_bucket() -> None:
    b = TokenBucket.full(2.0, 0.5, now=0.0)
    b = b.take(0.0).take(0.0)
    with pytest.raises(TrustError, match="retry in 2 s"):
        b.take(0.0)
    b = b.take(2.0)
    assert b.tokens == pytest.approx(0.0)
    assert b.refilled(100.0).tokens == 2.0
    assert b.refilled(-5.0) is b
    for bad in ({"cost": 0.0}, {"cost": float("nan")}, {"now": float("inf")}):
        with pytest.raises(TrustError):
            b.take(**{"now": 3.0, **bad})  # type: ignore[arg-type]
    for args in (
        (0.0, 1.0, 0.0, 0.0),
        (1.0, 0.0, 0.0, 0.0),
        (1.0, 1.0, 2.0, 0.0),
        (1.0, 1.0, float("nan"), 0.0),
    ):
        with pytest.raises(TrustError):
            TokenBucket(*args)


KEY = b"k" * 32


def test_mac_round_trip_and_generation(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = JsonFileTrustStore(path, mac_key=KEY)
    _populate(TrustManager(store))
    assert store.generation == 3 and store.head_mac is not None
    again = JsonFileTrustStore(path, mac_key=KEY)
    assert again.generation == 3 and again.head_mac == store.head_mac
    assert again.devices() == ["dev-1", "dev-2"]


@pytest.mark.parametrize("case", ["score", "state", "drop_mac", "wrong_key", "extra_top"])
def test_mac_rejects_tampering(tmp_path: Path, case: str) -> None:
    path = tmp_path / "t.json"
    _populate(TrustManager(JsonFileTrustStore(path, mac_key=KEY)))
    doc = json.loads(path.read_text())
    key = KEY
    if case == "score":
        doc["records"]["dev-2"]["beta"] = 0.001  # make a quarantined device look trusted
    elif case == "state":
        doc["records"]["dev-2"]["state"] = "active"
    elif case == "drop_mac":
        del doc["mac"]
    elif case == "wrong_key":
        key = b"x" * 32
    elif case == "extra_top":
        doc["note"] = "hi"
    path.write_text(json.dumps(doc))
    with pytest.raises(TrustError):
        JsonFileTrustStore(path, mac_key=key)


def test_mac_key_must_be_long(tmp_path: Path) -> None:
    for bad in (b"short", "x" * 40):
        with pytest.raises(TrustError):
            JsonFileTrustStore(tmp_path / "t.json", mac_key=bad)  # type: ignore[arg-type]
        with pytest.raises(TrustError):
            SqliteTrustStore(tmp_path / "t.db", mac_key=bad)  # type: ignore[arg-type]


def test_unauthenticated_read_of_macd_store_still_parses(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    _populate(TrustManager(JsonFileTrustStore(path, mac_key=KEY)))
    assert JsonFileTrustStore(path).devices() == ["dev-1", "dev-2"]  # e.g. `ztfm trust show`


@pytest.mark.parametrize("case", ["edit_body", "drop_mac", "move_row", "wrong_key", "edit_change"])
def test_sqlite_mac_rejects_tampering(tmp_path: Path, case: str) -> None:
    path = tmp_path / "t.db"
    store = open_store(path, mac_key=KEY)
    _populate(TrustManager(store))
    assert isinstance(store, SqliteTrustStore)
    assert store.load(DeviceId("dev-2")) is not None and len(store.history(D)) == 2
    db = store._db
    if case == "edit_body":
        body = db.execute("SELECT body FROM trust_records WHERE device='dev-2'").fetchone()[0]
        db.execute(
            "UPDATE trust_records SET body=? WHERE device='dev-2'",
            (body.replace('"quarantined"', '"active"'),),
        )
    elif case == "drop_mac":
        db.execute("UPDATE trust_records SET mac=NULL WHERE device='dev-2'")
    elif case == "move_row":  # give dev-2 the (valid) row of dev-1
        db.execute("DELETE FROM trust_records WHERE device='dev-1'")
        db.execute("UPDATE trust_records SET device='dev-1' WHERE device='dev-2'")
    elif case == "edit_change":
        db.execute("UPDATE trust_changes SET body=replace(body, 'bad_signature', 'late')")
    reader = SqliteTrustStore(path, mac_key=b"x" * 32 if case == "wrong_key" else KEY)
    with pytest.raises(TrustError):
        if case == "edit_change":
            reader.history(D)
        else:
            reader.load(DeviceId("dev-1" if case == "move_row" else "dev-2"))
