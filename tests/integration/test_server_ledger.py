"""The coordinator server writes trust's quarantine decisions to the identity ledger."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.coordinator.server import CoordinatorServer, ModelReleaser, UnsafeAssumeAttested
from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.signing import SigningKey
from ztfm.errors import IdentityError, ZtfmError
from ztfm.fl.strategy import FedAvg
from ztfm.ledger import EntryKind, Ledger, MemoryLedgerStore
from ztfm.transport.grpc_fleet import LocalFleet


def _change(device: str, old: str, new: str, reason: str) -> dict[str, object]:
    return {"device": device, "old_state": old, "new_state": new, "reason": reason}


def test_moves_into_and_out_of_quarantine_become_ledger_entries() -> None:
    coord = Coordinator(
        [np.zeros(2, np.float32)], FedAvg(), RoundSettings(), rng=np.random.default_rng(0)
    )
    ledger = Ledger(MemoryLedgerStore(), SigningKey.generate())
    releaser = ModelReleaser(ledger, SigningKey.generate(), model_id="m", architecture="x")
    log: list[dict[str, object]] = [
        _change("cam-1", "active", "suspicious", "behaviour"),  # not a quarantine decision
        _change("cam-2", "suspicious", "quarantined", "behaviour: far from the aggregate"),
    ]
    server = CoordinatorServer(
        LocalFleet.create("fleet.local", time.time()),
        CoordinatorService(coord, rounds=1, expected_devices=1),
        MemoryAuditSink(),
        UnsafeAssumeAttested(),
        releaser=releaser,
        trust_log=log,
    )
    server._ledger_quarantine(3)
    log.append(_change("cam-2", "quarantined", "probation", "canary replay passed"))
    server._ledger_quarantine(4)
    server._ledger_quarantine(5)  # nothing new: nothing written twice
    bodies = [ledger.entry(i).body for i in range(ledger.size)]
    assert [ledger.entry(i).kind for i in range(ledger.size)] == [EntryKind.QUARANTINE_DECISION] * 2
    assert [(b["device_id"], b["action"], b["round"]) for b in bodies] == [
        ("cam-2", "quarantine", 3),
        ("cam-2", "release", 4),
    ]
    assert bodies[1]["reason"] == "canary replay passed"


def test_first_keys_are_enrolments_and_new_keys_are_rotations() -> None:
    fleet = LocalFleet.create("fleet.local", time.time())
    coord = Coordinator(
        [np.zeros(2, np.float32)], FedAvg(), RoundSettings(), rng=np.random.default_rng(0)
    )
    ledger = Ledger(MemoryLedgerStore(), SigningKey.generate())
    server = CoordinatorServer(
        fleet,
        CoordinatorService(coord, rounds=1, expected_devices=1),
        MemoryAuditSink(),
        UnsafeAssumeAttested(),
        releaser=ModelReleaser(ledger, SigningKey.generate(), model_id="m", architecture="x"),
    )
    first = fleet.enroll("cams", "cam-0", time.time())
    server._issued(first.identity, first.cert, "enrolled", 10.0)
    server._issued(first.identity, first.cert, "renewed", 11.0)  # same key: not a rotation
    again = fleet.enroll("cams", "cam-0", time.time())  # the device came back with a new key
    server._issued(again.identity, again.cert, "enrolled", 12.0)
    entries = [ledger.entry(i) for i in range(ledger.size)]
    assert [e.kind for e in entries] == [EntryKind.ENROLMENT, EntryKind.KEY_ROTATION]
    assert entries[0].body["public_key"] == first.cert.public_key.fingerprint()
    assert entries[1].body["previous_key"] == first.cert.public_key.fingerprint()
    assert entries[1].body["public_key"] == again.cert.public_key.fingerprint()
    assert entries[1].body["identity"] == again.identity.uri


def test_a_revocation_is_served_at_once_audited_and_on_the_ledger() -> None:
    fleet = LocalFleet.create("fleet.local", time.time())
    coord = Coordinator(
        [np.zeros(2, np.float32)], FedAvg(), RoundSettings(), rng=np.random.default_rng(0)
    )
    ledger = Ledger(MemoryLedgerStore(), SigningKey.generate())
    audit = MemoryAuditSink()
    server = CoordinatorServer(
        fleet,
        CoordinatorService(coord, rounds=1, expected_devices=1),
        audit,
        UnsafeAssumeAttested(),
        releaser=ModelReleaser(ledger, SigningKey.generate(), model_id="m", architecture="x"),
    )
    creds = fleet.enroll("cams", "cam-0", time.time())
    with pytest.raises(ZtfmError, match="reason"):
        server.revoke(creds.identity, " ")
    server.revoke(creds.identity, "stolen device")
    body = ledger.entry(ledger.size - 1).body
    assert ledger.entry(ledger.size - 1).kind == EntryKind.REVOCATION
    assert (body["device_id"], body["reason"]) == ("cam-0", "stolen device")
    assert [e for e, _f, _t in audit.events] == ["identity.revoked"]
    with pytest.raises(IdentityError):  # the served list already names it
        fleet.validator().validate(creds.cert, time.time())
    # the revocation is under a signed tree head at once (provable before the next release)
    head = ledger.latest_tree_head()
    assert head is not None and head.tree_size == ledger.size
    ledger.inclusion_proof(ledger.size - 1, head.tree_size)


def test_releases_survive_a_clock_step_back_and_stop_signs_the_last_entries() -> None:
    now = [2_000_000_000.0]

    class _Clock:
        def now(self) -> float:
            return now[0]

    ledger = Ledger(MemoryLedgerStore(), SigningKey.generate())
    releaser = ModelReleaser(ledger, SigningKey.generate(), model_id="m", architecture="x")
    releaser.release([np.zeros(2, np.float32)], 0, 1, now[0])
    # the wall clock steps back by a minute (NTP): the next release must not end the run
    second = releaser.release([np.ones(2, np.float32)], 1, 2, now[0] - 60)
    assert second.version == 2
    heads = ledger.tree_heads()
    assert heads[-1].head.timestamp_ms >= heads[-2].head.timestamp_ms
    # entries appended after the last release are signed when the server stops
    coord = Coordinator(
        [np.zeros(2, np.float32)], FedAvg(), RoundSettings(), rng=np.random.default_rng(0)
    )
    server = CoordinatorServer(
        LocalFleet.create("fleet.local", now[0]),
        CoordinatorService(coord, rounds=1, expected_devices=1),
        MemoryAuditSink(),
        UnsafeAssumeAttested(),
        releaser=releaser,
        trust_log=[_change("cam-2", "active", "quarantined", "behaviour")],
        clock=_Clock(),
    )
    server._ledger_quarantine(3)
    latest = ledger.latest_tree_head()
    assert latest is not None and latest.tree_size == ledger.size - 1
    server.stop()
    latest = ledger.latest_tree_head()
    assert latest is not None and latest.tree_size == ledger.size
