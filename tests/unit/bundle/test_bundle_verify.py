"""Bundles: parse strictly, verify signer, signature, hash, version and ledger inclusion."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct

import numpy as np
import pytest
from bundle_fix import ATTACKER_KEY, LOG_KEY, MODEL, RELEASE_KEY, World, weights, world

from ztfm.bundle import (
    Bundle,
    BundleRejected,
    LedgerReceipt,
    Manifest,
    Reason,
    encode_tensors,
    receipt_for,
    verify_bundle,
)
from ztfm.bundle.bundle import MAGIC, MANIFEST, RECEIPT, SIGNATURE, WEIGHTS, _member
from ztfm.crypto.signing import SigningKey
from ztfm.errors import BundleError
from ztfm.ledger import Entry, EntryKind, Ledger, LedgerClient, MemoryLedgerStore


def check(w: World, b: Bundle, installed: int | None = None, **kw: object) -> None:
    verify_bundle(
        b,
        release_key=RELEASE_KEY.verify_key,
        ledger=w.client,
        installed_version=installed,
        model_id=MODEL,
        **kw,  # type: ignore[arg-type]
    )


def reason(w: World, data: bytes, installed: int | None = None) -> Reason:
    with pytest.raises(BundleRejected) as info:
        check(w, Bundle.from_bytes(data), installed)
    return info.value.reason


@pytest.fixture
def w1() -> tuple[World, Bundle]:
    w = world()
    b = w.publish(1)
    w.sync()
    return w, b


def test_published_bundle_verifies_and_round_trips(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    check(w, b)
    again = Bundle.from_bytes(b.to_bytes())
    assert again.manifest == b.manifest and again.receipt == b.receipt
    assert np.array_equal(again.weights["enc.weight"], weights(1)["enc.weight"])
    assert b.manifest.ledger_index == 0
    entry = w.ledger.entry(0)
    assert entry.kind is EntryKind.MODEL_RELEASE and entry.body["version"] == 1


def test_every_flipped_byte_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    data = b.to_bytes()
    accepted = []
    for i in range(len(data)):
        forged = bytearray(data)
        forged[i] ^= 0x01
        try:
            check(w, Bundle.from_bytes(bytes(forged)))
        except BundleError:
            continue
        accepted.append(i)
    assert accepted == []


def test_every_truncation_is_refused(w1: tuple[World, Bundle]) -> None:
    data = w1[1].to_bytes()
    for n in range(len(data)):
        cut = data[:n]
        if n == len(data) - len(_member(RECEIPT, w1[1].receipt.to_bytes())):  # type: ignore[union-attr]
            # dropping the whole (unsigned) receipt leaves a valid bundle without ledger proof
            assert reason(w1[0], cut) is Reason.NOT_IN_LEDGER
            continue
        with pytest.raises(BundleRejected):
            Bundle.from_bytes(cut)


def test_trailing_bytes_and_bad_magic_are_refused(w1: tuple[World, Bundle]) -> None:
    data = w1[1].to_bytes()
    with pytest.raises(BundleRejected, match="magic"):
        Bundle.from_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(BundleRejected):
        Bundle.from_bytes(data + b"\x00")
    with pytest.raises(BundleRejected):
        Bundle.from_bytes(b"")


def _container(*members: tuple[str, bytes]) -> bytes:
    return MAGIC + b"".join(_member(n, d) for n, d in members)


def _parts(b: Bundle) -> dict[str, bytes]:
    assert b.receipt is not None
    return {
        MANIFEST: b.manifest_bytes,
        WEIGHTS: b.weights_blob,
        SIGNATURE: b.signature,
        RECEIPT: b.receipt.to_bytes(),
    }


def test_duplicate_unknown_and_reordered_members_are_refused(w1: tuple[World, Bundle]) -> None:
    p = _parts(w1[1])
    cases = [
        [(MANIFEST, p[MANIFEST]), (MANIFEST, p[MANIFEST]), (WEIGHTS, p[WEIGHTS])],
        [
            (MANIFEST, p[MANIFEST]),
            (WEIGHTS, p[WEIGHTS]),
            (SIGNATURE, p[SIGNATURE]),
            (SIGNATURE, p[SIGNATURE]),
        ],
        [(WEIGHTS, p[WEIGHTS]), (MANIFEST, p[MANIFEST]), (SIGNATURE, p[SIGNATURE])],
        [(MANIFEST, p[MANIFEST]), (WEIGHTS, p[WEIGHTS])],
        [
            (MANIFEST, p[MANIFEST]),
            (WEIGHTS, p[WEIGHTS]),
            (SIGNATURE, p[SIGNATURE]),
            (RECEIPT, p[RECEIPT]),
            (RECEIPT, p[RECEIPT]),
        ],
        [
            (MANIFEST, p[MANIFEST]),
            ("../../etc/cron.d/x", b"x"),
            (WEIGHTS, p[WEIGHTS]),
            (SIGNATURE, p[SIGNATURE]),
        ],
        [
            (MANIFEST, p[MANIFEST]),
            (WEIGHTS, p[WEIGHTS]),
            (SIGNATURE, p[SIGNATURE]),
            ("weights.pkl", b"x"),
        ],
    ]
    for members in cases:
        with pytest.raises(BundleRejected):
            Bundle.from_bytes(_container(*members))
    raw_name = MAGIC + bytes([3]) + b"\xff\xfe\xfd" + struct.pack(">Q", 0)
    with pytest.raises(BundleRejected, match="ASCII"):
        Bundle.from_bytes(raw_name)


def test_oversized_members_are_refused_before_reading(w1: tuple[World, Bundle]) -> None:
    p = _parts(w1[1])
    huge = MAGIC + _member(MANIFEST, p[MANIFEST])[: 1 + len(MANIFEST)] + struct.pack(">Q", 2**40)
    with pytest.raises(BundleRejected) as info:
        Bundle.from_bytes(huge)
    assert info.value.reason is Reason.TOO_LARGE
    big_manifest = MAGIC + bytes([len(MANIFEST)]) + MANIFEST.encode() + struct.pack(">Q", 17_000)
    with pytest.raises(BundleRejected) as info:
        Bundle.from_bytes(big_manifest + b" " * 17_000)
    assert info.value.reason is Reason.TOO_LARGE
    with pytest.raises(BundleRejected):
        Bundle.from_bytes(
            _container(
                (MANIFEST, p[MANIFEST]), (WEIGHTS, p[WEIGHTS]), (SIGNATURE, p[SIGNATURE] + b"\x00")
            )
        )


def _resign(w: World, b: Bundle, key: SigningKey = RELEASE_KEY, **changes: object) -> bytes:
    m = dataclasses.replace(b.manifest, **changes)  # type: ignore[arg-type]
    p = _parts(b)
    p[MANIFEST] = m.to_bytes()
    p[SIGNATURE] = key.sign(m.signing_bytes())
    return _container(*p.items())


def test_hash_mismatch_is_refused_even_when_signed(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    other = encode_tensors(weights(99))
    p = _parts(b)
    p[WEIGHTS] = other
    with pytest.raises(BundleRejected) as info:
        Bundle.from_bytes(_container(*p.items()))
    assert info.value.reason is Reason.HASH_MISMATCH
    # a properly signed manifest naming another hash is still refused
    with pytest.raises(BundleRejected) as info:
        Bundle.from_bytes(_resign(w, b, weights_sha256=hashlib.sha256(other).hexdigest()))
    assert info.value.reason is Reason.HASH_MISMATCH


def test_pickle_inside_is_refused(w1: tuple[World, Bundle]) -> None:
    _w, b = w1
    payload = pickle.dumps(weights(1))
    p = _parts(b)
    p[WEIGHTS] = payload
    m = dataclasses.replace(
        b.manifest, weights_sha256=hashlib.sha256(payload).hexdigest(), weights_bytes=len(payload)
    )
    p[MANIFEST] = m.to_bytes()
    p[SIGNATURE] = RELEASE_KEY.sign(m.signing_bytes())
    data = _container(*p.items())
    with pytest.raises(BundleRejected) as info:
        Bundle.from_bytes(data)
    assert info.value.reason is Reason.MALFORMED


def test_wrong_signer_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    # attacker signs with their own key and names it in the manifest
    data = _resign(w, b, ATTACKER_KEY, release_key=ATTACKER_KEY.verify_key.fingerprint())
    assert reason(w, data) is Reason.UNKNOWN_SIGNER
    # attacker signs with their own key but names the real release key
    assert reason(w, _resign(w, b, ATTACKER_KEY)) is Reason.BAD_SIGNATURE


def test_attacker_published_bundle_is_refused_even_if_logged() -> None:
    w = world()
    b = w.publish(1, key=ATTACKER_KEY)
    w.sync()
    with pytest.raises(BundleRejected) as info:
        check(w, b)
    assert info.value.reason is Reason.UNKNOWN_SIGNER


def test_older_or_equal_version_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    assert reason(w, b.to_bytes(), installed=1) is Reason.ROLLBACK
    assert reason(w, b.to_bytes(), installed=5) is Reason.ROLLBACK
    check(w, b, installed=0)


def test_wrong_model_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    with pytest.raises(BundleRejected) as info:
        verify_bundle(
            b,
            release_key=RELEASE_KEY.verify_key,
            ledger=w.client,
            installed_version=None,
            model_id="camera-model",
        )
    assert info.value.reason is Reason.WRONG_MODEL


def test_bundle_missing_from_ledger_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    with pytest.raises(BundleRejected) as info:
        check(w, b.with_receipt(None))
    assert info.value.reason is Reason.NOT_IN_LEDGER
    # a release that was signed but never logged: the receipt comes from another log
    rogue = Ledger(MemoryLedgerStore(), SigningKey.from_seed(b"\x09" * 32))
    rogue_bundle = World(rogue, LedgerClient(LOG_KEY.verify_key)).publish(2)
    with pytest.raises(BundleRejected) as info:
        check(w, rogue_bundle)
    assert info.value.reason is Reason.NOT_IN_LEDGER


def test_receipt_for_wrong_index_or_entry_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    w.ledger.append(Entry.create(EntryKind.REVOCATION, {"device_id": "d", "reason": "r"}, now=5))
    w.ledger.sign_tree_head(now=2000)
    w.sync()
    good = receipt_for(w.ledger, b, w.client.head.tree_size)
    check(w, b, receipt=good)
    other = LedgerReceipt(w.ledger.entry_bytes(1), w.ledger.inclusion_proof(1))
    with pytest.raises(BundleRejected) as info:
        check(w, b, receipt=other)
    assert info.value.reason is Reason.LEDGER_MISMATCH
    # right index, but the entry bytes are for a different release
    fake_entry = Entry.create(
        EntryKind.MODEL_RELEASE,
        {
            "model_id": MODEL,
            "version": 1,
            "weights_sha256": "00" * 32,
            "release_key": RELEASE_KEY.verify_key.fingerprint(),
        },
        now=1,
    )
    with pytest.raises(BundleRejected) as info:
        check(w, b, receipt=LedgerReceipt(fake_entry.to_bytes(), good.proof))
    assert info.value.reason is Reason.LEDGER_MISMATCH
    # a non-release entry at that index
    with pytest.raises(BundleRejected) as info:
        check(w, b, receipt=LedgerReceipt(w.ledger.entry_bytes(1), dataclasses.replace(good.proof)))
    assert info.value.reason is Reason.LEDGER_MISMATCH


def test_receipt_for_untrusted_head_is_refused(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    fresh = LedgerClient(LOG_KEY.verify_key)
    with pytest.raises(BundleRejected) as info:
        verify_bundle(b, release_key=RELEASE_KEY.verify_key, ledger=fresh, installed_version=None)
    assert info.value.reason is Reason.UNTRUSTED_LEDGER
    w.publish(2)  # the log grew, the device has not synced: proof is for a head it never saw
    b2 = Bundle.from_bytes(w.publish(3).to_bytes())
    with pytest.raises(BundleRejected) as info:
        check(w, b2)
    assert info.value.reason is Reason.NOT_IN_LEDGER
    w.sync()
    check(w, b2)


def test_manifest_rules() -> None:
    base = dict(
        model_id="m",
        version=2,
        parent_version=1,
        architecture="a",
        quantisation="none",
        training_round=0,
        weights_sha256="00" * 32,
        weights_bytes=8,
        ledger_index=0,
        release_key="11" * 32,
        created_ms=0,
    )
    Manifest(**base)  # type: ignore[arg-type]
    for field, bad in [
        ("model_id", "../x"),
        ("model_id", ""),
        ("version", 0),
        ("version", True),
        ("parent_version", 2),
        ("parent_version", -1),
        ("quantisation", "int4"),
        ("training_round", -1),
        ("weights_sha256", "zz" * 32),
        ("release_key", "11"),
        ("architecture", ""),
        ("ledger_index", 1.5),
        ("created_ms", None),
    ]:
        with pytest.raises(BundleRejected):
            Manifest(**{**base, field: bad})  # type: ignore[arg-type]
    m = Manifest(**base)  # type: ignore[arg-type]
    assert Manifest.from_bytes(m.to_bytes()) == m
    for bad_bytes in (
        m.to_bytes().replace(b'"format":"ztfm-bundle/1"', b'"format":"ztfm-bundle/2"'),
        m.to_bytes()[:-1] + b',"x":1}',
        m.to_bytes() + b"\n",
        m.to_bytes().replace(b'"version":2', b'"version":2,"version":9'),
    ):
        with pytest.raises(BundleRejected):
            Manifest.from_bytes(bad_bytes)


def test_publish_refuses_bad_input_without_logging() -> None:
    w = world()
    with pytest.raises(BundleError):
        w.publish(0)
    for bad in (
        {"parent_version": 1},
        {"quantisation": "int3"},
        {"model_id": "a/b"},
        {"weights": {"w": np.array([np.nan], np.float32)}},
    ):
        with pytest.raises(BundleError):
            w.publish(1, **bad)
    assert w.ledger.size == 0


def test_bundle_cannot_be_built_by_hand(w1: tuple[World, Bundle]) -> None:
    b = w1[1]
    evil = {"enc.weight": np.full((8, 4), 1e6, np.float32)}
    with pytest.raises(BundleError, match="from_bytes"):
        Bundle(b.manifest, b.manifest_bytes, b.weights_blob, b.signature, b.receipt, evil)
    assert b.with_receipt(None).weights is b.weights


def test_publish_at_a_nonsense_time_is_refused() -> None:
    w = world()
    for now in (float("nan"), -5.0):
        with pytest.raises(BundleRejected):
            w.publish(1, now=now)
    assert w.ledger.size == 0


def test_release_key_rotation_with_a_trust_set() -> None:
    w = world()
    new_key = SigningKey.from_seed(b"\x07" * 32)
    old_b = w.publish(1)
    new_b = w.publish(2, key=new_key)
    w.sync()
    old_b = old_b.with_receipt(receipt_for(w.ledger, old_b, w.client.head.tree_size))
    both = [RELEASE_KEY.verify_key, new_key.verify_key]
    for b in (old_b, new_b):
        verify_bundle(b, release_key=both, ledger=w.client, installed_version=None)
    # after the rotation the old key is dropped from the set: its bundles are refused
    with pytest.raises(BundleRejected) as info:
        verify_bundle(old_b, release_key=[new_key.verify_key], ledger=w.client,
                      installed_version=None)  # fmt: skip
    assert info.value.reason is Reason.UNKNOWN_SIGNER
    with pytest.raises(BundleRejected) as info:
        verify_bundle(new_b, release_key=[], ledger=w.client, installed_version=None)
    assert info.value.reason is Reason.UNKNOWN_SIGNER


def test_publish_refuses_a_version_already_released() -> None:
    w = world()
    w.publish(3)
    size = w.ledger.size
    for v in (3, 2):
        with pytest.raises(BundleRejected) as info:
            w.publish(v, weights=weights(42), now=2000.0)
        assert info.value.reason is Reason.ROLLBACK
    assert w.ledger.size == size
    w.publish(4, now=3000.0)
    w.publish(1, model_id="other-model", now=5000.0)  # versions are per model
    size = w.ledger.size
    with pytest.raises(BundleRejected, match="older"):  # checked before anything is logged
        w.publish(9, now=10.0)
    assert w.ledger.size == size


def test_measurement_changes_with_any_manifest_field(w1: tuple[World, Bundle]) -> None:
    w, b = w1
    assert b.measurement() == hashlib.sha256(b.manifest_bytes).digest()
    assert Bundle.from_bytes(b.to_bytes()).measurement() == b.measurement()
    assert b.with_receipt(None).measurement() == b.measurement()  # receipt is not measured
    other = w.publish(2)
    assert other.measurement() != b.measurement()
