"""Enrolments and attestation verdicts land on the identity ledger, provably.

SoftTpm devices enrol and attest; each enrolment and verdict is appended with the ledger's own
entry kinds; a signed tree head and inclusion proofs then prove each record is in the log.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.crypto.signing import SigningKey
from ztfm.ledger import Entry, EntryKind, Ledger
from ztfm.ledger.store import MemoryLedgerStore
from ztfm.types import DeviceId

T0 = 1_800_000_000.0
FW = hashlib.sha256(b"fw").digest()
MODEL = hashlib.sha256(b"model").digest()


def test_enrolments_and_verdicts_are_provable_on_the_ledger() -> None:
    rng = np.random.default_rng(11)
    maker = SoftManufacturer(rng, T0)
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=ReferenceValues().with_firmware("sensor", "1", FW).with_models([MODEL]),
        nonces=UnsafeRngNonceSource(np.random.default_rng(12)),
    )
    ledger = Ledger(MemoryLedgerStore(), SigningKey.from_seed(b"\x07" * 32))
    records: list[tuple[int, bytes]] = []
    for i in range(5):
        did = DeviceId(f"d{i}")
        dev = AttestingDevice(SoftTpm(maker, rng, T0, did))
        dev.measure_firmware(FW if i != 4 else hashlib.sha256(b"implant").digest())
        dev.measure_model(MODEL)
        ch = verifier.begin_enrolment(did, "sensor", dev.enrolment_request(), T0)
        enrolled = verifier.finish_enrolment(did, dev.activate(ch), T0)
        entry = Entry.create(EntryKind.ENROLMENT, enrolled.ledger_body(), now=T0)
        records.append((ledger.append(entry), entry.to_bytes()))
        verdict = verifier.assess_quote(did, dev.quote(verifier.issue_nonce(did, T0)), T0 + 1)
        entry = Entry.create(EntryKind.ATTESTATION_VERDICT, verdict.ledger_body(), now=T0 + 1)
        records.append((ledger.append(entry), entry.to_bytes()))
    head = ledger.sign_tree_head(now=T0 + 2)
    for index, data in records:
        ledger.inclusion_proof(index, head.tree_size).verify_against(data, head)
    verdicts = [Entry.from_bytes(d) for _, d in records[1::2]]
    assert [v.body["verdict"] for v in verdicts] == ["pass"] * 4 + ["fail"]  # type: ignore[attr-defined]
