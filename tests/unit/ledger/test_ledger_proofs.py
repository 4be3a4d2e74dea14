"""Strict parsing of signed tree heads and proofs from their JSON form."""

from __future__ import annotations

from typing import Any

import pytest

from ztfm.crypto.signing import SigningKey
from ztfm.errors import LedgerError
from ztfm.ledger import ConsistencyProof, InclusionProof, SignedTreeHead, TreeHead

KEY = SigningKey.from_seed(b"\x33" * 32)
STH = SignedTreeHead.sign(KEY, 5, b"\x42" * 32, now=1.5)


def test_head_round_trips_and_verifies() -> None:
    again = SignedTreeHead.from_bytes(STH.to_bytes())
    assert again == STH
    again.verify(KEY.verify_key)
    assert again.head.timestamp_ms == 1500


@pytest.mark.parametrize("field", ["tree_size", "root_hash", "timestamp_ms", "log_id"])
def test_every_signed_field_is_covered(field: str) -> None:
    h = STH.head
    changes: dict[str, Any] = {
        "tree_size": TreeHead(h.log_id, 6, h.root_hash, h.timestamp_ms),
        "root_hash": TreeHead(h.log_id, 5, b"\x43" * 32, h.timestamp_ms),
        "timestamp_ms": TreeHead(h.log_id, 5, h.root_hash, h.timestamp_ms + 1),
        "log_id": TreeHead(b"\x00" * 32, 5, h.root_hash, h.timestamp_ms),
    }
    with pytest.raises(LedgerError):
        SignedTreeHead(changes[field], STH.signature).verify(KEY.verify_key)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("signature"),
        lambda d: d.update(extra=1),
        lambda d: d.update(tree_size=-1),
        lambda d: d.update(tree_size=True),
        lambda d: d.update(tree_size="5"),
        lambda d: d.update(timestamp_ms=1.5),
        lambda d: d.update(root_hash="42" * 31),
        lambda d: d.update(root_hash="XY" * 32),
        lambda d: d.update(root_hash="AB" * 32),
        lambda d: d.update(signature="00" * 63),
        lambda d: d.update(log_id=None),
    ],
)
def test_malformed_heads_are_refused(mutate: Any) -> None:
    d = STH.to_json()
    mutate(d)
    with pytest.raises(LedgerError):
        SignedTreeHead.from_json(d)


def test_head_bytes_must_be_canonical() -> None:
    with pytest.raises(LedgerError):
        SignedTreeHead.from_bytes(STH.to_bytes().replace(b":", b": ", 1))
    with pytest.raises(LedgerError):
        SignedTreeHead.from_bytes(b"[" * 100_000)


def test_tree_head_value_checks() -> None:
    with pytest.raises(LedgerError):
        TreeHead(b"\x00" * 31, 1, b"\x00" * 32, 0)
    with pytest.raises(LedgerError):
        TreeHead(b"\x00" * 32, 1, b"\x00" * 32, -1)


def test_proofs_round_trip() -> None:
    p = InclusionProof(3, 9, (b"\x01" * 32, b"\x02" * 32))
    assert InclusionProof.from_json(p.to_json()) == p
    c = ConsistencyProof(3, 9, (b"\x01" * 32,))
    assert ConsistencyProof.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {"index": 0, "tree_size": 1},
        {"index": 0, "tree_size": 1, "path": "00"},
        {"index": 0, "tree_size": 1, "path": ["00" * 31]},
        {"index": 0, "tree_size": 1, "path": ["00" * 32] * 65},
        {"index": -1, "tree_size": 1, "path": []},
        {"index": 0, "tree_size": 2**70, "path": []},
        {"index": 0, "tree_size": 1, "path": [], "x": 1},
    ],
)
def test_malformed_inclusion_proofs_are_refused(obj: Any) -> None:
    with pytest.raises(LedgerError):
        InclusionProof.from_json(obj)


@pytest.mark.parametrize(
    "obj",
    [
        {"old_size": 1, "new_size": 2},
        {"old_size": 1.0, "new_size": 2, "path": []},
        {"old_size": 1, "new_size": 2, "path": [1]},
    ],
)
def test_malformed_consistency_proofs_are_refused(obj: Any) -> None:
    with pytest.raises(LedgerError):
        ConsistencyProof.from_json(obj)


def test_signing_at_a_nonsense_time_is_refused() -> None:
    for now in (float("nan"), float("inf"), -1.0, 1e300):
        with pytest.raises(LedgerError):
            SignedTreeHead.sign(KEY, 1, b"\x00" * 32, now=now)
