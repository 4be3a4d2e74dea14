"""The coordinator server writes trust's quarantine decisions to the identity ledger."""

from __future__ import annotations

import time

import numpy as np

from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.coordinator.server import CoordinatorServer, ModelReleaser, UnsafeAssumeAttested
from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.signing import SigningKey
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
