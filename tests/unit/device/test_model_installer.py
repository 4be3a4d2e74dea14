"""The device's model installer against a coordinator's releases: a fork of the ledger at an
unchanged tree size is detected, not silently ignored."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ztfm.coordinator.server import ModelReleaser
from ztfm.crypto.signing import SigningKey
from ztfm.device.runner import ModelInstaller
from ztfm.errors import LedgerError
from ztfm.identity import Identity
from ztfm.ledger import Entry, EntryKind, Ledger, MemoryLedgerStore

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
