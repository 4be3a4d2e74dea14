"""Append-only, hash-chained, fsync'd JSON-lines audit log.

Each line is one record ``{"seq", "ts", "event", "fields", "prev", "hash"}`` in canonical JSON,
where ``hash`` is SHA-256 over the canonical encoding of the other five fields and ``prev`` is the
previous record's ``hash`` (64 zeros for the first). Rewriting, deleting or reordering a record
breaks the chain at a line that ``verify_log`` names. Cutting records off the *end* leaves a valid
chain, so every append also updates a small ``<log>.head`` anchor (seq + hash, written
atomically); ``verify_log`` compares the log with it, or with a head the caller got elsewhere
(a ledger entry, a signed checkpoint). A crash in the middle of a write leaves a torn last line:
it is reported (``AuditError``), never silently accepted, and ``repair_torn_tail`` removes it on
an operator's request.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

from ztfm.errors import AuditError

GENESIS: Final = "0" * 64
MAX_RECORD_BYTES: Final = 64 * 1024
_KEYS: Final = ("event", "fields", "hash", "prev", "seq", "ts")


class AuditSink(Protocol):
    """Where security decisions are recorded. ``record`` returns only once the event is durable."""

    def record(self, event: str, fields: Mapping[str, object], now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: float
    event: str
    fields: Mapping[str, Any]
    prev: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The last record of a log: enough to detect truncation later."""

    seq: int
    hash: str


def _canonical(obj: object) -> bytes:
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit fields must be finite JSON values: {exc}") from exc


def record_hash(seq: int, ts: float, event: str, fields: Mapping[str, Any], prev: str) -> str:
    body = {"seq": seq, "ts": ts, "event": event, "fields": dict(fields), "prev": prev}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def head_path_for(path: Path) -> Path:
    return Path(f"{path}.head")


def _parse_line(raw: bytes, lineno: int) -> AuditRecord:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuditError(f"line {lineno}: not valid JSON (record rewritten or corrupt)") from exc
    if not isinstance(obj, dict) or tuple(sorted(obj)) != _KEYS:
        raise AuditError(f"line {lineno}: record has the wrong fields")
    seq, ts, event, fields, prev, h = (
        obj[k] for k in ("seq", "ts", "event", "fields", "prev", "hash")
    )
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or not isinstance(ts, int | float)
        or not isinstance(event, str)
        or not isinstance(fields, dict)
        or not isinstance(prev, str)
        or not isinstance(h, str)
    ):
        raise AuditError(f"line {lineno}: record field has the wrong type")
    return AuditRecord(seq, float(ts), event, fields, prev, h)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    records: int
    head: AuditHead | None


def verify_log(
    path: Path, expected_head: AuditHead | None = None, use_anchor: bool = True
) -> VerifyResult:
    """Check the whole chain; raise ``AuditError`` naming the first bad line, or return a summary.

    ``expected_head`` (or, if ``use_anchor``, the ``<log>.head`` file) must be a record of the
    chain; if the log ends before it, the log was truncated. Streams the file: memory use does
    not grow with the log.
    """
    return _scan(Path(path), expected_head, use_anchor, None, None)


def tail_log(
    path: Path,
    count: int,
    *,
    event: str | None = None,
    expected_head: AuditHead | None = None,
    use_anchor: bool = True,
) -> tuple[VerifyResult, list[AuditRecord]]:
    """Verify the chain as ``verify_log`` does and return its last ``count`` records (only those
    of ``event``, if given) from the same single read, so what is returned is what was verified.

    Records appended while the log is read are left out: the answer is the log as it was when it
    was opened. Memory use is bounded by ``count``.
    """
    if count < 1:
        raise AuditError("count must be at least 1")
    kept: deque[AuditRecord] = deque(maxlen=count)
    res = _scan(Path(path), expected_head, use_anchor, kept, event)
    return res, list(kept)


def _snapshot_lines(fh: BinaryIO) -> Iterator[bytes]:
    """The lines of an open log as it was when opened: a line that ends past the size the file
    had then was (still) being appended by a writer and is left out, not reported as torn."""
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode):
        yield from fh
        return
    pos = 0
    for raw in fh:
        pos += len(raw)
        if pos > st.st_size:
            return
        yield raw


def _scan(
    path: Path,
    expected_head: AuditHead | None,
    use_anchor: bool,
    kept: deque[AuditRecord] | None,
    event: str | None,
) -> VerifyResult:
    anchors: list[AuditHead] = []
    if expected_head is not None:
        anchors.append(expected_head)
    hp = head_path_for(path)
    # The anchor is read before the log is opened: a writer updates it only after the records it
    # names are durable, so it never points past the log as opened below.
    if use_anchor and hp.exists():
        anchors.append(_read_head(hp))
    wanted = {a.seq for a in anchors}
    seen: dict[int, str] = {}
    prev = GENESIS
    n = 0
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; OSError mapped to AuditError
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from exc
    with fh:
        for raw in _snapshot_lines(fh):
            n += 1
            if not raw.endswith(b"\n"):
                raise AuditError(f"line {n}: torn last record (no newline; crash during write?)")
            if len(raw) > 2 * MAX_RECORD_BYTES:
                raise AuditError(f"line {n}: record is too large (corrupt)")
            rec = _parse_line(raw[:-1], n)
            if rec.seq != n:
                raise AuditError(
                    f"line {n}: sequence number {rec.seq}, expected {n} "
                    "(record deleted or reordered)"
                )
            if rec.prev != prev:
                raise AuditError(
                    f"line {n}: previous-hash link broken (record deleted, reordered "
                    "or rewritten before it)"
                )
            if record_hash(rec.seq, rec.ts, rec.event, rec.fields, rec.prev) != rec.hash:
                raise AuditError(f"line {n}: record hash mismatch (record rewritten)")
            prev = rec.hash
            if n in wanted:
                seen[n] = rec.hash
            if kept is not None and (event is None or rec.event == event):
                kept.append(rec)
    head = AuditHead(n, prev) if n else None
    for anchor in anchors:
        if anchor.seq > n:
            raise AuditError(
                f"log truncated: ends at record {n} but its head anchor is record {anchor.seq}"
            )
        if anchor.seq > 0 and seen.get(anchor.seq) != anchor.hash:
            raise AuditError(f"line {anchor.seq}: does not match the head anchor (log rewritten)")
    return VerifyResult(n, head)


def _read_head(hp: Path) -> AuditHead:
    try:
        obj = json.loads(hp.read_bytes())
        seq, h = obj["seq"], obj["hash"]
        if not isinstance(seq, int) or not isinstance(h, str):
            raise TypeError("bad types")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"head anchor {hp} is corrupt") from exc
    return AuditHead(seq, h)


def repair_torn_tail(path: Path) -> int:
    """Cut a torn (unterminated) last line off; return the number of bytes removed."""
    path = Path(path)
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return len(data) - keep


class AuditLog:
    """The writer. Thread-safe; every ``record`` is fsync'd before it returns (group commit:
    concurrent writers share one fsync)."""

    def __init__(self, path: Path, anchor: bool = True) -> None:
        self.path = Path(path)
        self.anchor = anchor
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._broken = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            res = verify_log(self.path, use_anchor=anchor)
            self._seq = res.records
            self._prev = res.head.hash if res.head else GENESIS
        else:
            self._seq, self._prev = 0, GENESIS
        self._synced = self._seq
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fsync_dir(self.path.parent)

    @property
    def head(self) -> AuditHead:
        return AuditHead(self._seq, self._prev)

    def record(self, event: str, fields: Mapping[str, object], now: float) -> None:
        self.append(event, fields, now)

    def append(self, event: str, fields: Mapping[str, object], now: float) -> AuditRecord:
        if not isinstance(event, str) or not 0 < len(event) <= 128:
            raise AuditError("audit event name must be 1..128 chars")
        if not math.isfinite(now):
            raise AuditError("audit timestamp must be finite")
        with self._lock:
            seq = self._seq + 1
            flds = dict(fields)
            h = record_hash(seq, now, event, flds, self._prev)
            line = (
                _canonical(
                    {
                        "seq": seq,
                        "ts": now,
                        "event": event,
                        "fields": flds,
                        "prev": self._prev,
                        "hash": h,
                    }
                )
                + b"\n"
            )
            if len(line) > MAX_RECORD_BYTES:
                raise AuditError(f"audit record is larger than {MAX_RECORD_BYTES} bytes")
            if self._broken:
                raise AuditError("audit log is unusable after an earlier write error")
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._broken = True
                raise AuditError(f"cannot write audit log: {exc.strerror}") from exc
            rec = AuditRecord(seq, now, event, flds, self._prev, h)
            self._seq, self._prev = seq, h
        self._sync(seq)
        return rec

    def _sync(self, seq: int) -> None:
        """Group commit: one fsync (and anchor update) covers every record written before it."""
        with self._sync_lock:
            if self._synced >= seq:
                return  # another thread's fsync already covered this record
            with self._lock:
                target = AuditHead(self._seq, self._prev)
            try:
                os.fsync(self._fd)
                if self.anchor:
                    self._write_head(target)
            except OSError as exc:
                with self._lock:
                    self._broken = True
                raise AuditError(f"cannot sync audit log: {exc.strerror}") from exc
            self._synced = target.seq

    def _write_head(self, head: AuditHead) -> None:
        hp = head_path_for(self.path)
        tmp = hp.with_name(hp.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _canonical({"seq": head.seq, "hash": head.hash}))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, hp)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryAuditSink:
    """Keeps events in a list (tests, simulations)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object], float]] = []
        self._lock = threading.Lock()

    def record(self, event: str, fields: Mapping[str, object], now: float) -> None:
        with self._lock:
            self.events.append((event, dict(fields), now))

    def of(self, event: str) -> list[dict[str, object]]:
        return [f for e, f, _ in self.events if e == event]
