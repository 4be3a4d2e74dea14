"""Typed ledger records and their canonical byte form.

An entry is canonical JSON: UTF-8, keys sorted, no insignificant whitespace, no NaN/Infinity,
no duplicate keys, ``{"body": {...}, "kind": "...", "time_ms": <int>, "v": 1}``. The leaf hashed
into the Merkle tree is exactly these bytes, so ``Entry.from_bytes`` refuses any other spelling
of the same record (a second spelling would be a second, unlogged identity for it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ztfm.errors import LedgerError

ENTRY_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024
MAX_DEPTH = 8
_HEX64 = re.compile(r"[0-9a-f]{64}")


class EntryKind(StrEnum):
    ENROLMENT = "enrolment"
    KEY_ROTATION = "key_rotation"
    REVOCATION = "revocation"
    ATTESTATION_VERDICT = "attestation_verdict"
    MODEL_RELEASE = "model_release"
    QUARANTINE_DECISION = "quarantine_decision"
    ROUND_CONTRIBUTORS = "round_contributors"


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 512


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and _HEX64.fullmatch(v) is not None


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(_nonempty_str(x) for x in v) and len(set(v)) == len(v)


# Required body fields per kind (extra fields are allowed and logged as they are).
_REQUIRED: dict[EntryKind, dict[str, Any]] = {
    EntryKind.ENROLMENT: {"device_id": _nonempty_str, "public_key": _nonempty_str},
    EntryKind.KEY_ROTATION: {"device_id": _nonempty_str, "public_key": _nonempty_str},
    EntryKind.REVOCATION: {"device_id": _nonempty_str, "reason": _nonempty_str},
    EntryKind.ATTESTATION_VERDICT: {
        "device_id": _nonempty_str,
        "verdict": lambda v: v in ("pass", "fail"),
    },
    EntryKind.MODEL_RELEASE: {
        "model_id": _nonempty_str,
        "version": _nonneg_int,
        "weights_sha256": _hex64,
        "release_key": _hex64,
    },
    EntryKind.QUARANTINE_DECISION: {
        "device_id": _nonempty_str,
        "action": lambda v: v in ("quarantine", "release"),
        "reason": _nonempty_str,
    },
    EntryKind.ROUND_CONTRIBUTORS: {"round": _nonneg_int, "contributors": _str_list},
}


def to_time_ms(now: float) -> int:
    """Seconds since the epoch -> integer milliseconds; ``LedgerError`` if not a sane time."""
    if not isinstance(now, int | float) or not math.isfinite(now) or not 0 <= now < 2**63 / 1000:
        raise LedgerError(f"time {now!r} is not a finite, non-negative number of seconds")
    return round(now * 1000)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise LedgerError(f"duplicate key {k!r} in ledger entry")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise LedgerError(f"{name} is not allowed in a ledger entry")


def _check_value(v: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise LedgerError("ledger entry is nested too deeply")
    if isinstance(v, float) and not math.isfinite(v):
        raise LedgerError("non-finite number in ledger entry")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise LedgerError("ledger entry keys must be strings")
            _check_value(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            _check_value(x, depth + 1)
    elif v is not None and not isinstance(v, str | int | float | bool):
        raise LedgerError(f"unsupported value of type {type(v).__name__} in ledger entry")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, compact, UTF-8, finite numbers only)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"value cannot be encoded canonically: {exc}") from exc


def parse_canonical_json(data: bytes, *, what: str, limit: int) -> Any:
    """Parse JSON that must already be in canonical form; raise ``LedgerError`` otherwise."""
    if len(data) > limit:
        raise LedgerError(f"{what} is larger than {limit} bytes")
    try:
        text = data.decode("utf-8")
        obj = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError, JSONDecodeError
        raise LedgerError(f"{what} is not valid UTF-8 JSON") from exc
    if canonical_json(obj) != data:
        raise LedgerError(f"{what} is not in canonical form")
    return obj


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger record. Build with ``Entry.create``; parse with ``Entry.from_bytes``."""

    kind: EntryKind
    time_ms: int
    body_json: bytes  # canonical JSON of the body (keeps the value immutable and hashable)

    @classmethod
    def create(cls, kind: EntryKind | str, body: Mapping[str, Any], *, now: float) -> Entry:
        """Validate ``body`` for ``kind`` and stamp it with ``now`` (seconds since the epoch)."""
        try:
            k = EntryKind(kind)
        except ValueError as exc:
            raise LedgerError(f"unknown ledger entry kind {kind!r}") from exc
        time_ms = to_time_ms(now)
        body_dict = dict(body)
        _check_body(k, body_dict)
        entry = cls(k, time_ms, canonical_json(body_dict))
        if len(entry.to_bytes()) > MAX_ENTRY_BYTES:
            raise LedgerError(f"ledger entry is larger than {MAX_ENTRY_BYTES} bytes")
        return entry

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        obj = parse_canonical_json(data, what="ledger entry", limit=MAX_ENTRY_BYTES)
        if not isinstance(obj, dict) or set(obj) != {"body", "kind", "time_ms", "v"}:
            raise LedgerError("ledger entry must have exactly body, kind, time_ms and v")
        if obj["v"] != ENTRY_VERSION or isinstance(obj["v"], bool):
            raise LedgerError(f"unsupported ledger entry version {obj['v']!r}")
        if not _nonneg_int(obj["time_ms"]):
            raise LedgerError("ledger entry time_ms must be a non-negative integer")
        try:
            kind = EntryKind(obj["kind"])
        except ValueError as exc:
            raise LedgerError(f"unknown ledger entry kind {obj['kind']!r}") from exc
        body = obj["body"]
        if not isinstance(body, dict):
            raise LedgerError("ledger entry body must be an object")
        _check_body(kind, body)
        return cls(kind, obj["time_ms"], canonical_json(body))

    def to_bytes(self) -> bytes:
        # Same bytes as canonical_json of the whole record (keys in sorted order), built
        # without re-encoding the body.
        return b"".join(
            (
                b'{"body":',
                self.body_json,
                b',"kind":"',
                self.kind.value.encode("ascii"),
                b'","time_ms":',
                str(self.time_ms).encode("ascii"),
                b',"v":1}',
            )
        )

    @property
    def body(self) -> dict[str, Any]:
        """A fresh copy of the body (mutating it does not change the entry)."""
        out = json.loads(self.body_json)
        assert isinstance(out, dict)
        return out

    @property
    def time_s(self) -> float:
        return self.time_ms / 1000.0

    def subjects(self) -> tuple[str, ...]:
        """Who or what the entry is about (device ids, model id, round contributors): the keys
        of the ledger's lookup index."""
        body = self.body
        out = [body[k] for k in ("device_id", "model_id") if isinstance(body.get(k), str)]
        if self.kind is EntryKind.ROUND_CONTRIBUTORS:
            out.extend(body["contributors"])
        return tuple(dict.fromkeys(out))


def _check_body(kind: EntryKind, body: dict[str, Any]) -> None:
    for key in body:
        if not isinstance(key, str):
            raise LedgerError("ledger entry keys must be strings")
    _check_value(body, 1)
    for field, ok in _REQUIRED[kind].items():
        if field not in body:
            raise LedgerError(f"{kind.value} entry lacks the field {field!r}")
        if not ok(body[field]):
            raise LedgerError(f"{kind.value} entry has an invalid {field!r}")


# --- typed constructors (thin, so callers get the required fields right) ----------------------
def enrolment(device_id: str, public_key: str, *, now: float, **extra: Any) -> Entry:
    return Entry.create(
        EntryKind.ENROLMENT, {**extra, "device_id": device_id, "public_key": public_key}, now=now
    )


def key_rotation(device_id: str, public_key: str, *, now: float, **extra: Any) -> Entry:
    return Entry.create(
        EntryKind.KEY_ROTATION,
        {**extra, "device_id": device_id, "public_key": public_key},
        now=now,
    )


def revocation(device_id: str, reason: str, *, now: float, **extra: Any) -> Entry:
    return Entry.create(
        EntryKind.REVOCATION, {**extra, "device_id": device_id, "reason": reason}, now=now
    )


def attestation_verdict(device_id: str, passed: bool, *, now: float, **extra: Any) -> Entry:
    verdict = "pass" if passed is True else "fail"
    return Entry.create(
        EntryKind.ATTESTATION_VERDICT, {**extra, "device_id": device_id, "verdict": verdict},
        now=now,
    )  # fmt: skip


def quarantine_decision(
    device_id: str, quarantine: bool, reason: str, *, now: float, **extra: Any
) -> Entry:
    action = "quarantine" if quarantine else "release"
    body = {**extra, "device_id": device_id, "action": action, "reason": reason}
    return Entry.create(EntryKind.QUARANTINE_DECISION, body, now=now)


def round_contributors(
    round_id: int, contributors: list[str], *, now: float, **extra: Any
) -> Entry:
    body = {**extra, "round": round_id, "contributors": list(contributors)}
    return Entry.create(EntryKind.ROUND_CONTRIBUTORS, body, now=now)
