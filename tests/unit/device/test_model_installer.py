"""The device's model installer against a coordinator's releases: a fork of the ledger at an
unchanged tree size is detected, not silently ignored; the final fetch after ``done`` and the
coordinator's wait for it."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ztfm.coordinator.server import ModelReleaser
from ztfm.crypto.signing import SigningKey
from ztfm.device.runner import ModelInstaller
from ztfm.errors import LedgerError
from ztfm.identity import Identity
from ztfm.ledger import Entry, EntryKind, Ledger, MemoryLedgerStore
from ztfm.transport.grpc_client import RpcFailed

DEVICE = Identity("fleet.local", "cams", "device", "cam-0")


class _Client:
    """What ModelInstaller.fetch needs of a FleetClient: GetModel answered by a releaser."""

    def __init__(self, releaser: ModelReleaser) -> None:
        self.releaser = releaser

    def call(self, method: str, payload: bytes) -> bytes:
        assert method == "GetModel"
        return self.releaser(DEVICE, payload)


def _releaser(log_key: SigningKey, release_key: SigningKey, revoked: str) -> ModelReleaser:
    """A log with one revocation entry, then release v1: two such logs have the same size and
    signer but different roots (a forked, or rewritten, log)."""
    ledger = Ledger(MemoryLedgerStore(), log_key)
    now = time.time()
    ledger.append(
        Entry.create(EntryKind.REVOCATION, {"device_id": revoked, "reason": "x"}, now=now)
    )
    rel = ModelReleaser(ledger, release_key, model_id="m", architecture="step")
    rel.release([np.zeros(3, np.float32)], 0, 1, now)
    return rel


def test_a_fork_at_the_same_tree_size_is_detected(tmp_path: Path) -> None:
    log_key, release_key = SigningKey.generate(), SigningKey.generate()
    honest = _releaser(log_key, release_key, "cam-7")
    forked = _releaser(log_key, release_key, "cam-8")
    assert honest.ledger.size == forked.ledger.size
    installer = ModelInstaller(
        tmp_path / "model", model_id="m", release_key=release_key.verify_key,
        log_key=log_key.verify_key,
    )  # fmt: skip
    installed = installer.fetch(_Client(honest))  # type: ignore[arg-type]
    assert installed is not None and installed.version == 1
    assert installer.fetch(_Client(honest)) is None  # type: ignore[arg-type]  # same head: fine
    trusted = installer.witness.head
    with pytest.raises(LedgerError, match="forked"):
        installer.fetch(_Client(forked))  # type: ignore[arg-type]
    assert installer.witness.head == trusted  # the trusted head is kept


def test_releaser_reports_devices_not_yet_sent_the_latest_release() -> None:
    # the coordinator lingers after the last round until every device that fetches bundles
    # was sent the final one (stopping first cancelled a device's final GetModel)
    log_key, release_key = SigningKey.generate(), SigningKey.generate()
    rel = _releaser(log_key, release_key, "cam-7")
    assert rel.behind(["cam-0", "cam-1"]) == set()  # neither has ever fetched
    rel(DEVICE, (0).to_bytes(8, "big"))
    assert rel.behind(["cam-0", "cam-1"]) == set()  # cam-0 has v1, the latest
    rel.release([np.ones(3, np.float32)], 1, 2, time.time())
    assert rel.behind(["cam-0", "cam-1"]) == {"cam-0"}
    rel(DEVICE, rel.ledger.size.to_bytes(8, "big"))
    assert rel.behind(["cam-0"]) == set()


class _Cancelled:
    def __init__(self, status: grpc.StatusCode) -> None:
        self.status = status

    def call(self, method: str, payload: bytes) -> bytes:
        raise RpcFailed(method, self.status, self.status.name)


@pytest.mark.parametrize(
    ("status", "ends"),
    [
        (grpc.StatusCode.CANCELLED, False),
        (grpc.StatusCode.UNAVAILABLE, False),
        (grpc.StatusCode.PERMISSION_DENIED, True),
    ],
)
def test_final_fetch_after_done_survives_a_coordinator_that_stopped(
    tmp_path: Path, status: grpc.StatusCode, ends: bool
) -> None:
    from ztfm.device.runner import DeviceRunner
    from ztfm.transport.grpc_fleet import LocalFleet

    log_key, release_key = SigningKey.generate(), SigningKey.generate()
    installer = ModelInstaller(
        tmp_path / "model", model_id="m", release_key=release_key.verify_key,
        log_key=log_key.verify_key,
    )  # fmt: skip
    installer.fetch(_Client(_releaser(log_key, release_key, "cam-7")))  # type: ignore[arg-type]
    now = time.time()
    fleet = LocalFleet.create("fleet.local", now)
    creds = fleet.enroll("cams", "cam-0", now)
    runner = DeviceRunner(
        creds.identity, creds.keystore, fleet.ca.cert, None, "unused:1",  # type: ignore[arg-type]
        np.random.default_rng(0), cert=creds.cert, installer=installer,
    )  # fmt: skip
    runner.client = _Cancelled(status)  # type: ignore[assignment]
    if ends:  # a refusal is not a stopped coordinator: it ends the device as before
        with pytest.raises(RpcFailed, match="PERMISSION_DENIED"):
            runner._fetch_final()
    else:
        runner._fetch_final()
        assert runner.stats.model_version == 1  # the verified bundle already installed stays
