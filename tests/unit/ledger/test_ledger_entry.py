"""Typed ledger entries: one canonical spelling, every kind's required fields, hostile input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztfm.errors import LedgerError
from ztfm.ledger import Entry, EntryKind

H = "ab" * 32
GOOD: dict[EntryKind, dict[str, Any]] = {
    EntryKind.ENROLMENT: {"device_id": "dev-1", "public_key": H, "segment": "cameras"},
    EntryKind.KEY_ROTATION: {"device_id": "dev-1", "public_key": H},
    EntryKind.REVOCATION: {"device_id": "dev-1", "reason": "key compromised"},
    EntryKind.ATTESTATION_VERDICT: {"device_id": "dev-1", "verdict": "fail", "pcr": [0, 7]},
    EntryKind.MODEL_RELEASE: {
        "model_id": "m",
        "version": 3,
        "weights_sha256": H,
        "release_key": H,
    },
    EntryKind.QUARANTINE_DECISION: {"device_id": "d", "action": "quarantine", "reason": "x"},
    EntryKind.ROUND_CONTRIBUTORS: {"round": 4, "contributors": ["a", "b"]},
}


@pytest.mark.parametrize("kind", list(EntryKind))
def test_every_kind_round_trips(kind: EntryKind) -> None:
    e = Entry.create(kind, GOOD[kind], now=12.3456)
    assert e.time_ms == 12346
    again = Entry.from_bytes(e.to_bytes())
    assert again == e
    assert again.body == GOOD[kind]


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=8)))
def test_extra_fields_round_trip_canonically(extra: dict[str, Any]) -> None:
    body = {**extra, **GOOD[EntryKind.REVOCATION]}
    e = Entry.create(EntryKind.REVOCATION, body, now=1.0)
    assert Entry.from_bytes(e.to_bytes()).to_bytes() == e.to_bytes()


def test_body_copy_does_not_alias() -> None:
    e = Entry.create(EntryKind.ROUND_CONTRIBUTORS, GOOD[EntryKind.ROUND_CONTRIBUTORS], now=0)
    e.body["contributors"].append("evil")
    assert e.body["contributors"] == ["a", "b"]


@pytest.mark.parametrize("kind", list(EntryKind))
def test_each_required_field_is_required(kind: EntryKind) -> None:
    for field in GOOD[kind]:
        if field in ("segment", "pcr"):
            continue
        body = {k: v for k, v in GOOD[kind].items() if k != field}
        with pytest.raises(LedgerError, match=field):
            Entry.create(kind, body, now=0)


@pytest.mark.parametrize(
    ("kind", "field", "bad"),
    [
        (EntryKind.MODEL_RELEASE, "version", -1),
        (EntryKind.MODEL_RELEASE, "version", True),
        (EntryKind.MODEL_RELEASE, "version", "3"),
        (EntryKind.MODEL_RELEASE, "weights_sha256", "AB" * 32),
        (EntryKind.MODEL_RELEASE, "weights_sha256", "ab" * 31),
        (EntryKind.ATTESTATION_VERDICT, "verdict", "maybe"),
        (EntryKind.QUARANTINE_DECISION, "action", "ban"),
        (EntryKind.ROUND_CONTRIBUTORS, "contributors", ["a", "a"]),
        (EntryKind.ROUND_CONTRIBUTORS, "contributors", "a"),
        (EntryKind.ROUND_CONTRIBUTORS, "contributors", [""]),
        (EntryKind.REVOCATION, "device_id", ""),
        (EntryKind.REVOCATION, "device_id", "x" * 600),
        (EntryKind.REVOCATION, "device_id", 7),
    ],
)
def test_invalid_field_values_are_refused(kind: EntryKind, field: str, bad: Any) -> None:
    with pytest.raises(LedgerError):
        Entry.create(kind, {**GOOD[kind], field: bad}, now=0)


def test_unknown_kind_and_bad_time_are_refused() -> None:
    with pytest.raises(LedgerError, match="unknown"):
        Entry.create("promotion", {}, now=0)
    for now in (float("nan"), float("inf"), -1.0, 1e300, 2**63 / 1000):
        with pytest.raises(LedgerError):
            Entry.create(EntryKind.REVOCATION, GOOD[EntryKind.REVOCATION], now=now)


def test_non_json_values_and_nan_are_refused() -> None:
    body = GOOD[EntryKind.REVOCATION]
    for bad in (float("nan"), float("inf"), b"bytes", {1, 2}, object()):
        with pytest.raises(LedgerError):
            Entry.create(EntryKind.REVOCATION, {**body, "x": bad}, now=0)


def test_deep_nesting_and_oversize_are_refused() -> None:
    body: dict[str, Any] = dict(GOOD[EntryKind.REVOCATION])
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(LedgerError, match="deep"):
        Entry.create(EntryKind.REVOCATION, {**body, "x": deep}, now=0)
    with pytest.raises(LedgerError, match="larger"):
        Entry.create(EntryKind.REVOCATION, {**body, "x": "a" * 70_000}, now=0)
    big = b'{"body":{"device_id":"d","reason":"' + b"a" * 70_000 + b'"},"kind":"revocation"}'
    with pytest.raises(LedgerError, match="larger"):
        Entry.from_bytes(big)


GOOD_BYTES = Entry.create(EntryKind.REVOCATION, {"device_id": "d", "reason": "r"}, now=1).to_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"null",
        b"[]",
        b"\xff\xfe",
        GOOD_BYTES + b" ",
        b" " + GOOD_BYTES,
        GOOD_BYTES.replace(b",", b", ", 1),
        # keys out of order
        b'{"kind":"revocation","body":{"device_id":"d","reason":"r"},"time_ms":1000,"v":1}',
        # duplicate key (the second would win in a lax parser)
        b'{"body":{"device_id":"d","device_id":"e","reason":"r"},"kind":"revocation",'
        b'"time_ms":1000,"v":1}',
        b'{"body":{"device_id":"d","reason":"r"},"kind":"revocation","time_ms":1000,"v":2}',
        b'{"body":{"device_id":"d","reason":"r"},"kind":"revocation","time_ms":1000,"v":true}',
        b'{"body":{"device_id":"d","reason":"r"},"kind":"revocation","time_ms":-1,"v":1}',
        b'{"body":{"device_id":"d","reason":"r"},"kind":"revocation","time_ms":1.5,"v":1}',
        b'{"body":{"device_id":"d","reason":"r"},"kind":"nope","time_ms":1000,"v":1}',
        b'{"body":[],"kind":"revocation","time_ms":1000,"v":1}',
        b'{"body":{"device_id":"d","reason":"r"},"kind":"revocation","time_ms":1000}',
        b'{"body":{"device_id":"d","reason":"r"},"extra":0,"kind":"revocation",'
        b'"time_ms":1000,"v":1}',
        b'{"body":{"device_id":"d","reason":"r","x":NaN},"kind":"revocation","time_ms":1000,"v":1}',
        # escaped spelling of the same string is a second encoding
        b'{"body":{"device_id":"\\u0064","reason":"r"},"kind":"revocation","time_ms":1000,"v":1}',
    ],
)
def test_non_canonical_or_malformed_bytes_are_refused(bad: bytes) -> None:
    with pytest.raises(LedgerError):
        Entry.from_bytes(bad)


def test_good_bytes_parse() -> None:
    assert Entry.from_bytes(GOOD_BYTES).body == {"device_id": "d", "reason": "r"}


def test_regression_huge_integer_literal_raised_valueerror() -> None:
    """json.loads raises a bare ValueError for ints over 4300 digits; it escaped the parser."""
    big = b'{"body":{"device_id":"d","reason":"r","x":1' + b"0" * 5000 + b'},"kind":"revocation"'
    with pytest.raises(LedgerError):
        Entry.from_bytes(big + b',"time_ms":1,"v":1}')


def test_typed_constructors() -> None:
    from ztfm.ledger import entry as E

    made = [
        E.enrolment("d", "k", now=1, segment="cams"),
        E.key_rotation("d", "k2", now=2),
        E.revocation("d", "lost", now=3),
        E.attestation_verdict("d", True, now=4, nonce="ab"),
        E.attestation_verdict("d", 1, now=4),  # type: ignore[arg-type]  # not True: fail
        E.quarantine_decision("d", True, "poisoning", now=5),
        E.round_contributors(7, ["a", "b"], now=6),
    ]
    assert [e.kind.value for e in made] == [
        "enrolment", "key_rotation", "revocation", "attestation_verdict", "attestation_verdict",
        "quarantine_decision", "round_contributors",
    ]  # fmt: skip
    assert made[3].body["verdict"] == "pass" and made[4].body["verdict"] == "fail"
    assert made[0].body["segment"] == "cams"
    assert made[6].subjects() == ("a", "b")
    with pytest.raises(LedgerError):
        E.revocation("", "x", now=1)
    with pytest.raises(LedgerError):
        E.round_contributors(-1, ["a"], now=1)
