"""Simulate with attestation runs the release path of ``ztfm up``: every model is a signed
bundle on the ledger, every device verifies it before loading and measures it into its TPM, and
the ledger records enrolments, verdicts, round contributors and releases, provably."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ztfm.crypto.signing import VerifyKey
from ztfm.ledger import Entry, EntryKind, Ledger, SqliteLedgerStore
from ztfm.sim.config import load_config
from ztfm.sim.runner import Simulation, run_simulation


def _cfg(tampered: int = 1, rounds: int = 2):  # type: ignore[no-untyped-def]
    cfg = load_config(None)
    return replace(
        cfg,
        fleet=replace(cfg.fleet, devices=5),
        detector=replace(cfg.detector, name="pca"),
        rounds=replace(cfg.rounds, rounds=rounds),
        compare=replace(cfg.compare, local_only=False, centralised=False),
        attestation=replace(cfg.attestation, backend="soft", tampered=tampered),
    )


def test_every_model_is_a_verified_bundle_and_the_ledger_proves_the_run(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    m = run_simulation(_cfg(), ledger_path=db).metrics
    led = m["ledger"]
    assert led["releases"] == 3  # the initial model and one per round
    assert led["devices_on_latest"] == 5 and led["refused_installs"] == []
    ledger = Ledger(SqliteLedgerStore(db, create=False))
    entries = [Entry.from_bytes(ledger.entry_bytes(i)) for i in range(ledger.size)]
    kinds = [e.kind for e in entries]
    assert kinds.count(EntryKind.ENROLMENT) == 5
    assert kinds.count(EntryKind.MODEL_RELEASE) == 3
    assert kinds.count(EntryKind.ROUND_CONTRIBUTORS) == 2
    verdicts = [e.body for e in entries if e.kind == EntryKind.ATTESTATION_VERDICT]
    assert len(verdicts) == 5 * 2  # one quote per device per round
    (bad,) = {v["device_id"] for v in verdicts if v["verdict"] == "fail"}
    assert all(v["reason"] == "firmware" for v in verdicts if v["device_id"] == bad)
    contributors = [
        e.body["contributors"] for e in entries if e.kind == EntryKind.ROUND_CONTRIBUTORS
    ]
    assert all(bad not in c and len(c) == 4 for c in contributors)
    # passing quotes name the release each device had installed when it quoted
    release_digests = [e for e in entries if e.kind == EntryKind.MODEL_RELEASE]
    assert len({v.get("model_digest") for v in verdicts if v["verdict"] == "pass"}) == 2
    assert len(release_digests) == 3
    # the whole log verifies under the published log key, with proofs for every entry
    ledger.verify_all(VerifyKey(bytes.fromhex(led["log_key"])))
    head = ledger.latest_tree_head()
    assert head is not None and head.tree_size == ledger.size == led["entries"]


def test_a_device_refuses_a_release_that_is_not_newer_and_keeps_its_model() -> None:
    sim = Simulation(_cfg(tampered=0, rounds=1))
    assert sim.releases is not None and sim.attestation is not None
    dev = sorted(sim.releases.installed)[0]
    sim.releases.installed[dev] = 99  # it already runs a newer model
    log_before = len(sim.attestation.devices[dev].log)
    sim._release(1)
    (refused,) = sim.releases.refused
    assert refused["device"] == dev and "not newer" in refused["reason"]
    assert sim.releases.installed[dev] == 99
    assert len(sim.attestation.devices[dev].log) == log_before  # nothing new measured
    others = [d for d in sim.releases.installed if d != dev]
    assert all(sim.releases.installed[d] == 2 for d in others)
    assert np.isfinite(sim.coordinator.params[0]).all()
