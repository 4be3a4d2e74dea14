"""Shared set-up for bundle tests: a log, a release key, a published bundle, a device client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ztfm.bundle import Bundle, publish_bundle
from ztfm.crypto.signing import SigningKey
from ztfm.ledger import Ledger, LedgerClient, MemoryLedgerStore

LOG_KEY = SigningKey.from_seed(b"\x01" * 32)
RELEASE_KEY = SigningKey.from_seed(b"\x02" * 32)
ATTACKER_KEY = SigningKey.from_seed(b"\x03" * 32)
MODEL = "iot-ae"


def weights(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {
        "enc.weight": rng.normal(size=(8, 4)).astype(np.float32),
        "enc.bias": np.zeros(8, np.float32),
        "dec.weight": rng.normal(size=(4, 8)).astype(np.float32),
    }


@dataclass
class World:
    ledger: Ledger
    client: LedgerClient

    def publish(self, version: int, *, key: SigningKey = RELEASE_KEY, **kw: Any) -> Bundle:
        args: dict[str, Any] = {
            "model_id": MODEL,
            "version": version,
            "parent_version": version - 1 if version > 1 else None,
            "architecture": "autoencoder-8",
            "quantisation": "none",
            "training_round": version,
            "weights": weights(version),
            "now": 1000.0 + version,
        }
        args.update(kw)
        return publish_bundle(self.ledger, key, **args)

    def sync(self) -> None:
        """Move the device's trusted head to the log's latest, with a consistency proof."""
        new = self.ledger.latest_tree_head()
        assert new is not None
        if self.client.has_head and self.client.head.tree_size > 0:
            self.client.update(new, self.ledger.consistency_proof(self.client.head.tree_size))
        else:
            self.client.update(new)


def world() -> World:
    return World(Ledger(MemoryLedgerStore(), LOG_KEY), LedgerClient(LOG_KEY.verify_key))
