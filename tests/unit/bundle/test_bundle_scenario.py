"""End to end on real files: coordinator releases over a SQLite ledger, a device reboots between
updates, and a compromised log operator rewrites history; the device keeps its model."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_fix import LOG_KEY, MODEL, RELEASE_KEY, weights

from ztfm.bundle import Bundle, BundleRejected, InstalledModel, Reason, publish_bundle, receipt_for
from ztfm.errors import BundleError, LedgerError
from ztfm.ledger import Entry, EntryKind, Ledger, LedgerClient, SqliteLedgerStore


def release(ledger: Ledger, version: int, seed: int | None = None) -> bytes:
    b = publish_bundle(
        ledger, RELEASE_KEY, model_id=MODEL, version=version, parent_version=version - 1,
        architecture="ae", quantisation="none", training_round=version,
        weights=weights(seed if seed is not None else version), now=100.0 * version,
    )  # fmt: skip
    return b.to_bytes()


def boot(tmp_path: Path) -> tuple[InstalledModel, LedgerClient]:
    dev = InstalledModel(tmp_path / "dev", model_id=MODEL, release_key=RELEASE_KEY.verify_key)
    return dev, dev.load_witness(LOG_KEY.verify_key)


def sync(dev: InstalledModel, client: LedgerClient, ledger: Ledger) -> None:
    head = ledger.latest_tree_head()
    assert head is not None
    old = client.head.tree_size if client.has_head else 0
    client.update(head, ledger.consistency_proof(old, head.tree_size) if old else None)
    dev.save_witness(client)


def test_updates_across_reboots_and_a_rewritten_log(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    ledger = Ledger(SqliteLedgerStore(db), LOG_KEY)
    ledger.append(Entry.create(EntryKind.ENROLMENT, {"device_id": "dev", "public_key": "k"}, now=1))
    v1 = release(ledger, 1)

    dev, client = boot(tmp_path)
    sync(dev, client, ledger)
    dev.install(v1, ledger=client)

    v2 = release(ledger, 2)
    dev, client = boot(tmp_path)  # reboot: witness state and model come back from disk
    assert dev.installed_version == 1 and client.head.tree_size == 2
    sync(dev, client, ledger)
    dev.install(v2, ledger=client)

    # The operator is compromised: it rewrites the v2 release entry in place (to point at other
    # weights), recomputes the whole tree and signs a fresh head, then releases v3 on top.
    ledger.store.close()
    evil_store = SqliteLedgerStore(tmp_path / "evil.db")
    evil = Ledger(evil_store, LOG_KEY)
    evil.append(Entry.create(EntryKind.ENROLMENT, {"device_id": "dev", "public_key": "k"}, now=1))
    release(evil, 1)
    release(evil, 2, seed=666)
    v3_evil = release(evil, 3, seed=667)
    dev, client = boot(tmp_path)
    with pytest.raises(LedgerError, match="not consistent"):
        sync(dev, client, evil)
    # the device never moved its trusted head, so a receipt against the evil log cannot verify
    b3 = v3_evil
    with pytest.raises(BundleRejected) as info:
        dev.install(b3, ledger=client)
    assert info.value.reason is Reason.NOT_IN_LEDGER
    assert dev.installed_version == 2 and boot(tmp_path)[1].head == client.head

    # The honest log continues; the device accepts v3 from it.
    honest = Ledger(SqliteLedgerStore(db), LOG_KEY)
    v3 = release(honest, 3)
    sync(dev, client, honest)
    dev.install(v3, ledger=client)
    assert boot(tmp_path)[0].installed_version == 3
    honest.verify_all(LOG_KEY.verify_key)


def test_device_refreshes_receipt_for_its_own_head(tmp_path: Path) -> None:
    ledger = Ledger(SqliteLedgerStore(tmp_path / "l.db"), LOG_KEY)
    v1 = release(ledger, 1)
    for i in range(5):  # the log moves on after the release
        ledger.append(
            Entry.create(EntryKind.REVOCATION, {"device_id": f"d{i}", "reason": "r"}, now=i)
        )
    ledger.sign_tree_head(now=10_000)
    dev, client = boot(tmp_path)
    sync(dev, client, ledger)
    with pytest.raises(BundleRejected, match="tree size"):
        dev.install(v1, ledger=client)
    fresh = receipt_for(ledger, Bundle.from_bytes(v1), client.head.tree_size)
    dev.install(v1, ledger=client, receipt=fresh)
    assert boot(tmp_path)[0].current.receipt == fresh  # type: ignore[union-attr]


def test_corrupt_witness_state_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    dev, client = boot(tmp_path)
    ledger = Ledger(SqliteLedgerStore(tmp_path / "l.db"), LOG_KEY)
    release(ledger, 1)
    sync(dev, client, ledger)
    state = tmp_path / "dev" / "ledger-head.json"
    state.write_bytes(state.read_bytes().replace(b'"tree_size":1', b'"tree_size":0'))
    with pytest.raises(BundleError, match="witness"):
        boot(tmp_path)
    state.write_bytes(b"{not json")
    with pytest.raises(BundleError, match="witness"):
        boot(tmp_path)
