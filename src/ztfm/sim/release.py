"""Signed model releases and the identity ledger inside ``ztfm simulate``.

With attestation on, a simulated fleet runs the same release path as ``ztfm up``: the initial
model and every round's model are published as signed bundles on an RFC 6962 ledger
(``bundle.publish_bundle``); every device moves its own trusted tree head forward with a
consistency proof, verifies each bundle (release signature, weights hash, version newer than the
installed one, ledger inclusion) before loading it, and measures it into its TPM's model PCR, so
the next quote covers the model it runs. Enrolments, attestation verdicts, round contributors and
quarantine decisions are ledger entries too.

The release and log keys are derived from the simulation seed: a simulation is reproducible, and
its keys protect nothing (a deployment generates them: ``ztfm coordinator serve``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.bundle import Bundle, BundleRejected, publish_bundle, verify_bundle
from ztfm.crypto.signing import SigningKey
from ztfm.errors import LedgerError
from ztfm.ledger import (
    Entry,
    EntryKind,
    Ledger,
    LedgerClient,
    MemoryLedgerStore,
    SqliteLedgerStore,
)

MODEL_ID = "ztfm-fleet"


def _seeded_key(seed: int, purpose: bytes) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(b"ztfm-sim:%d:" % seed + purpose).digest())


class FleetReleases:
    """One ledger, one release key, and each device's own trusted head and installed version."""

    def __init__(
        self,
        device_ids: Sequence[str],
        *,
        seed: int,
        architecture: str,
        on_install: Callable[[str, Bundle], None],
        path: Path | None = None,
    ) -> None:
        self.log_key = _seeded_key(seed, b"log")
        self.release_key = _seeded_key(seed, b"release")
        store = MemoryLedgerStore() if path is None else SqliteLedgerStore(path, durable=False)
        self.ledger = Ledger(store, self.log_key)
        if self.ledger.size:
            raise LedgerError(f"{path} already holds a ledger: give a new output folder")
        self.architecture = architecture
        self.on_install = on_install
        self.witnesses = {d: LedgerClient(self.log_key.verify_key) for d in device_ids}
        self.installed: dict[str, int] = {}
        self.latest: Bundle | None = None
        self.refused: list[dict[str, str]] = []

    def record(self, kind: EntryKind, body: Mapping[str, Any], now: float) -> int:
        return self.ledger.append(Entry.create(kind, body, now=max(0.0, now)))

    def release(self, params: Sequence[np.ndarray[Any, Any]], round_id: int, now: float) -> Bundle:
        """Publish ``params`` as the next version; every device verifies and installs it."""
        version = (self.latest.version + 1) if self.latest is not None else 1
        bundle = publish_bundle(
            self.ledger,
            self.release_key,
            model_id=MODEL_ID,
            version=version,
            parent_version=self.latest.version if self.latest is not None else None,
            architecture=self.architecture,
            quantisation="none",
            training_round=round_id,
            weights={f"param.{i}": np.asarray(p) for i, p in enumerate(params)},
            now=max(0.0, now),
        )
        self.latest = bundle
        head = self.ledger.latest_tree_head()
        assert head is not None
        proofs: dict[int, Any] = {}
        for dev, witness in self.witnesses.items():
            old = witness.head.tree_size if witness.has_head else 0
            if 0 < old < head.tree_size and old not in proofs:
                proofs[old] = self.ledger.consistency_proof(old, head.tree_size)
            try:
                witness.update(head, proofs.get(old))
                verify_bundle(
                    bundle,
                    release_key=self.release_key.verify_key,
                    ledger=witness,
                    installed_version=self.installed.get(dev),
                    model_id=MODEL_ID,
                )
            except (BundleRejected, LedgerError) as exc:  # the device keeps its model
                self.refused.append({"device": dev, "version": str(version), "reason": str(exc)})
                continue
            self.installed[dev] = version
            self.on_install(dev, bundle)
        return bundle

    def summary(self) -> dict[str, Any]:
        head = self.ledger.latest_tree_head()
        return {
            "entries": self.ledger.size,
            "root": self.ledger.root().hex() if self.ledger.size else None,
            "signed_head_size": head.tree_size if head is not None else 0,
            "releases": self.latest.version if self.latest is not None else 0,
            "devices_on_latest": sum(
                v == (self.latest.version if self.latest else -1) for v in self.installed.values()
            ),
            "refused_installs": list(self.refused),
            "release_key": self.release_key.verify_key.raw.hex(),
            "log_key": self.log_key.verify_key.raw.hex(),
        }
