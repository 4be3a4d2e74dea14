"""Where trust records live: a ``TrustStore`` protocol with memory, JSON-file and SQLite backends.

Both file backends are crash-safe: the JSON store writes a temporary file, fsyncs it, renames it
over the old one and fsyncs the directory (``identity._fs.atomic_write``: readers see the old or
the new file, never half of one); the SQLite store commits each round in one transaction with
``synchronous=FULL``. A corrupt or tampered store raises
``TrustError`` instead of starting over: resetting trust would release quarantined devices.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ztfm.errors import TrustError
from ztfm.identity._fs import atomic_write
from ztfm.trust.model import TrustChange, TrustRecord
from ztfm.types import DeviceId

FORMAT_VERSION = 1
MAX_STORE_BYTES = 256 * 1024 * 1024


class TrustStore(Protocol):
    """Persistence for trust records and their recent explanations."""

    def load(self, device: DeviceId) -> TrustRecord | None: ...

    def save(self, records: Sequence[TrustRecord], changes: Sequence[TrustChange]) -> None:
        """Store records and append changes atomically (all or nothing)."""
        ...

    def devices(self) -> list[DeviceId]: ...

    def history(self, device: DeviceId, limit: int = 20) -> list[TrustChange]:
        """The most recent changes for ``device``, oldest first."""
        ...


class MemoryTrustStore:
    """In-process store for tests and simulations."""

    def __init__(self, history_limit: int = 200) -> None:
        self._records: dict[DeviceId, TrustRecord] = {}
        self._history: dict[DeviceId, list[TrustChange]] = {}
        self._limit = history_limit

    def load(self, device: DeviceId) -> TrustRecord | None:
        return self._records.get(device)

    def save(self, records: Sequence[TrustRecord], changes: Sequence[TrustChange]) -> None:
        for r in records:
            self._records[r.device] = r
        for c in changes:
            h = self._history.setdefault(c.device, [])
            h.append(c)
            del h[: max(0, len(h) - self._limit)]

    def devices(self) -> list[DeviceId]:
        return sorted(self._records)

    def history(self, device: DeviceId, limit: int = 20) -> list[TrustChange]:
        return list(self._history.get(device, [])[-limit:]) if limit > 0 else []


def _check_mac_key(mac_key: object) -> None:
    if mac_key is not None and (not isinstance(mac_key, bytes) or len(mac_key) < 32):
        raise TrustError("trust store mac_key must be at least 32 bytes")


def _canonical(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


class JsonFileTrustStore(MemoryTrustStore):
    """One JSON file, rewritten atomically on every ``save``. Fine for thousands of devices;
    use ``SqliteTrustStore`` beyond that. One writer process at a time.

    With ``mac_key`` (>= 32 bytes, kept off the disk the store lives on) every write carries an
    HMAC-SHA256 over the canonical JSON and a ``generation`` counter, and a read with the key
    rejects any file whose MAC is missing or wrong. Anchor ``(generation, head_mac)`` in the
    audit log after each save to detect a rollback to an older, validly MACed file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        history_limit: int = 50,
        *,
        mac_key: bytes | None = None,
    ) -> None:
        super().__init__(history_limit)
        _check_mac_key(mac_key)
        self.path = Path(path)
        self._mac_key = mac_key
        self.generation = 0
        self.head_mac: str | None = None
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            size = self.path.stat().st_size
            if size > MAX_STORE_BYTES:
                raise TrustError(f"trust store {self.path} is too large ({size} bytes)")
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrustError(f"cannot read trust store {self.path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
            raise TrustError(f"trust store {self.path}: not a version {FORMAT_VERSION} store")
        mac = raw.pop("mac", None)
        if self._mac_key is not None:
            if not isinstance(mac, str):
                raise TrustError(f"trust store {self.path}: no MAC (unauthenticated file)")
            try:
                want = hmac.new(self._mac_key, _canonical(raw), hashlib.sha256).hexdigest()
            except (TypeError, ValueError) as exc:
                raise TrustError(f"trust store {self.path}: cannot canonicalise: {exc}") from exc
            if not hmac.compare_digest(mac, want):
                raise TrustError(f"trust store {self.path}: MAC mismatch (tampered or wrong key)")
        gen = raw.get("generation", 0)
        if isinstance(gen, bool) or not isinstance(gen, int) or gen < 0:
            raise TrustError(f"trust store {self.path}: bad generation {gen!r}")
        self.generation, self.head_mac = gen, mac if isinstance(mac, str) else None
        if set(raw) - {"version", "generation", "records", "history"}:
            raise TrustError(f"trust store {self.path}: unknown top-level fields")
        recs, hist = raw.get("records"), raw.get("history")
        if not isinstance(recs, dict) or not isinstance(hist, dict):
            raise TrustError(f"trust store {self.path}: records/history must be objects")
        for key, value in recs.items():
            rec = TrustRecord.from_dict(value)
            if rec.device != key:
                raise TrustError(f"trust store {self.path}: record key {key!r} != its device")
            self._records[rec.device] = rec
        for key, changes in hist.items():
            if not isinstance(changes, list):
                raise TrustError(f"trust store {self.path}: history of {key!r} is not a list")
            parsed = [TrustChange.from_dict(c) for c in changes]
            if any(c.device != key for c in parsed):
                raise TrustError(
                    f"trust store {self.path}: history of {key!r} names another device"
                )
            self._history[DeviceId(key)] = parsed[-self._limit :]

    def save(self, records: Sequence[TrustRecord], changes: Sequence[TrustChange]) -> None:
        old_records, old_history = (
            dict(self._records),
            {k: list(v) for k, v in self._history.items()},
        )
        super().save(records, changes)
        try:
            self._write()
        except BaseException:
            self._records, self._history = old_records, old_history
            raise

    def _write(self) -> None:
        doc: dict[str, object] = {
            "version": FORMAT_VERSION,
            "generation": self.generation + 1,
            "records": {d: r.to_dict() for d, r in sorted(self._records.items())},
            "history": {d: [c.to_dict() for c in h] for d, h in sorted(self._history.items())},
        }
        mac = None
        if self._mac_key is not None:
            mac = hmac.new(self._mac_key, _canonical(doc), hashlib.sha256).hexdigest()
            doc["mac"] = mac
        data = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            with contextlib.suppress(OSError):  # atomic_write's temporary file, if it was left
                self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}").unlink()
            with contextlib.suppress(OSError):
                if self.path.read_bytes() == data:  # renamed, only the directory fsync failed:
                    self.generation, self.head_mac = self.generation + 1, mac  # never reuse it
            raise TrustError(f"cannot write trust store {self.path}: {exc}") from exc
        self.generation += 1
        self.head_mac = mac


class SqliteTrustStore:
    """SQLite store: one transaction per ``save``, WAL journal, ``synchronous=FULL``.

    With ``mac_key`` (>= 32 bytes) every row carries an HMAC-SHA256 over (table, device, body)
    and reads with the key reject rows whose MAC is missing or wrong, so a row cannot be edited
    or moved to another device. Replacing a row with an older validly MACed copy of the same
    device (rollback) is not detected; anchor the audit log for that."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        history_limit: int = 200,
        *,
        mac_key: bytes | None = None,
    ) -> None:
        _check_mac_key(mac_key)
        self.path = Path(path)
        self._limit = history_limit
        self._mac_key = mac_key
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS trust_records "
                "(device TEXT PRIMARY KEY, body TEXT NOT NULL, mac TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS trust_changes (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "device TEXT NOT NULL, body TEXT NOT NULL, mac TEXT)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS trust_changes_device ON trust_changes(device, id)"
            )
        except sqlite3.Error as exc:
            raise TrustError(f"cannot open trust store {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _mac(self, table: str, device: str, body: str) -> str | None:
        if self._mac_key is None:
            return None
        msg = json.dumps([table, device, body]).encode()
        return hmac.new(self._mac_key, msg, hashlib.sha256).hexdigest()

    def _check(self, table: str, device: str, body: str, mac: object) -> None:
        want = self._mac(table, device, body)
        if want is None:
            return
        if not isinstance(mac, str) or not hmac.compare_digest(mac, want):
            raise TrustError(f"trust store {self.path}: bad or missing MAC on a {table} row")

    def load(self, device: DeviceId) -> TrustRecord | None:
        try:
            row = self._db.execute(
                "SELECT body, mac FROM trust_records WHERE device = ?", (device,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise TrustError(f"trust store {self.path}: {exc}") from exc
        if row is None:
            return None
        self._check("trust_records", device, row[0], row[1])
        rec = TrustRecord.from_dict(_loads(row[0]))
        if rec.device != device:
            raise TrustError(f"trust store {self.path}: row for {device!r} names another device")
        return rec

    def save(self, records: Sequence[TrustRecord], changes: Sequence[TrustChange]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rec_rows = [(r.device, json.dumps(r.to_dict(), allow_nan=False)) for r in records]
                chg_rows = [(c.device, json.dumps(c.to_dict(), allow_nan=False)) for c in changes]
                self._db.executemany(
                    "INSERT OR REPLACE INTO trust_records (device, body, mac) VALUES (?, ?, ?)",
                    [(d, b, self._mac("trust_records", d, b)) for d, b in rec_rows],
                )
                self._db.executemany(
                    "INSERT INTO trust_changes (device, body, mac) VALUES (?, ?, ?)",
                    [(d, b, self._mac("trust_changes", d, b)) for d, b in chg_rows],
                )
                for device in {c.device for c in changes}:
                    self._db.execute(
                        "DELETE FROM trust_changes WHERE device = ? AND id NOT IN (SELECT id FROM "
                        "trust_changes WHERE device = ? ORDER BY id DESC LIMIT ?)",
                        (device, device, self._limit),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise TrustError(f"cannot write trust store {self.path}: {exc}") from exc

    def devices(self) -> list[DeviceId]:
        rows = self._db.execute("SELECT device FROM trust_records ORDER BY device").fetchall()
        return [DeviceId(r[0]) for r in rows]

    def history(self, device: DeviceId, limit: int = 20) -> list[TrustChange]:
        if limit <= 0:
            return []
        rows = self._db.execute(
            "SELECT body, mac FROM trust_changes WHERE device = ? ORDER BY id DESC LIMIT ?",
            (device, limit),
        ).fetchall()
        out = []
        for body, mac in reversed(rows):
            self._check("trust_changes", device, body, mac)
            change = TrustChange.from_dict(_loads(body))
            if change.device != device:
                raise TrustError(f"trust store {self.path}: a change of {device!r} names another")
            out.append(change)
        return out


def _loads(body: str) -> object:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise TrustError(f"corrupt trust row: {exc}") from exc


def open_store(path: str | os.PathLike[str], *, mac_key: bytes | None = None) -> TrustStore:
    """Pick a backend from the file name: ``.sqlite``/``.db`` -> SQLite, otherwise JSON.
    ``mac_key`` authenticates the stored records (see each backend)."""
    p = Path(path)
    if p.suffix in {".sqlite", ".sqlite3", ".db"}:
        return SqliteTrustStore(p, mac_key=mac_key)
    return JsonFileTrustStore(p, mac_key=mac_key)
