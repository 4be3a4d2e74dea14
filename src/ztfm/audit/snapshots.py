"""Forensic snapshots of rejected updates (payload + context), bounded in total bytes.

One file per snapshot, ``<seq>.snap.json``, written with temp + fsync + rename. When the total
size would pass ``max_total_bytes`` the oldest snapshots are deleted first. A payload larger
than ``max_payload_bytes`` is kept truncated, with the full length and SHA-256 recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ztfm.errors import AuditError

_NAME: Final = re.compile(r"(\d{12})\.snap\.json")


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    ts: float
    kind: str
    context: Mapping[str, Any]
    payload: bytes
    payload_len: int
    payload_sha256: str

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.payload_len


class SnapshotStore:
    """A directory of snapshots whose total size stays under ``max_total_bytes``."""

    def __init__(
        self,
        directory: Path,
        max_total_bytes: int = 64 * 1024 * 1024,
        max_payload_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if max_total_bytes <= 0 or max_payload_bytes <= 0:
            raise AuditError("snapshot store limits must be > 0")
        self.dir = Path(directory)
        self.max_total_bytes = max_total_bytes
        self.max_payload_bytes = max_payload_bytes
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self._sizes: dict[int, int] = {}
        for p in self.dir.iterdir():
            m = _NAME.fullmatch(p.name)
            if m:
                self._sizes[int(m.group(1))] = p.stat().st_size
        self._next = max(self._sizes, default=0) + 1

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def seqs(self) -> list[int]:
        return sorted(self._sizes)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.snap.json"

    def save(self, kind: str, payload: bytes, context: Mapping[str, object], now: float) -> int:
        """Store a snapshot, evicting the oldest ones to stay under the cap; return its seq."""
        if not isinstance(payload, bytes):
            raise AuditError("snapshot payload must be bytes")
        kept = payload[: self.max_payload_bytes]
        try:
            doc = json.dumps(
                {
                    "ts": now,
                    "kind": kind,
                    "context": dict(context),
                    "payload_len": len(payload),
                    "payload_sha256": hashlib.sha256(payload).hexdigest(),
                    "payload_b64": base64.b64encode(kept).decode(),
                },
                sort_keys=True,
                allow_nan=False,
            ).encode()
        except (TypeError, ValueError) as exc:
            raise AuditError(f"snapshot context must be finite JSON values: {exc}") from exc
        if len(doc) > self.max_total_bytes:
            raise AuditError("one snapshot is larger than the store's total cap")
        with self._lock:
            while self._sizes and self.total_bytes + len(doc) > self.max_total_bytes:
                oldest = min(self._sizes)
                self._path(oldest).unlink(missing_ok=True)
                del self._sizes[oldest]
            seq = self._next
            self._next += 1
            final = self._path(seq)
            tmp = self.dir / f".{final.name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(doc)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            self._sizes[seq] = len(doc)
        return seq

    def load(self, seq: int) -> Snapshot:
        try:
            obj = json.loads(self._path(seq).read_bytes())
            payload = base64.b64decode(obj["payload_b64"], validate=True)
            snap = Snapshot(
                seq,
                float(obj["ts"]),
                str(obj["kind"]),
                obj["context"],
                payload,
                int(obj["payload_len"]),
                str(obj["payload_sha256"]),
            )
        except FileNotFoundError as exc:
            raise AuditError(f"snapshot {seq} does not exist (evicted?)") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"snapshot {seq} is corrupt") from exc
        if not snap.truncated and hashlib.sha256(payload).hexdigest() != snap.payload_sha256:
            raise AuditError(f"snapshot {seq} payload does not match its digest")
        return snap
