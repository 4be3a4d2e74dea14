"""Request binding: every device message is signed over its full context, and verified in order.

The signature covers a canonical, length-prefixed encoding of (purpose label, method, round id,
device id, nonce, timestamp, SHA-256 of the payload, key id, target resource), so a signature
cannot be moved to another method, round, device, resource or payload.
``RequestVerifier.verify`` checks, in this order: unknown key (before any signature work),
replay, staleness, payload digest + signature, and finally that the signer, the claimed device
id and the peer certificate name one identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Protocol

from ztfm.crypto.pki import PublicKey
from ztfm.errors import CryptoError, ReplayDetected, RequestRejected, StaleRequest, UnknownKey
from ztfm.identity.keystore import KeyStore
from ztfm.identity.spiffe import Identity

DOMAIN: Final = b"ztfm/request/v1\x00"
DEFAULT_PURPOSE: Final = "ztfm/rpc"
NONCE_BYTES: Final = 16
MAX_FIELD_CHARS: Final = 128
DEFAULT_MAX_AGE_S: Final = 30.0
DEFAULT_SKEW_S: Final = 60.0
DEFAULT_NONCE_CAPACITY: Final = 100_000


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS:
        raise RequestRejected(f"envelope {what} must be a non-empty string of <= 128 chars")
    if not value.isprintable():
        raise RequestRejected(f"envelope {what} has non-printable characters")
    return value


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed request header. Construct with ``sign_request``; parse from the wire by fields."""

    purpose: str
    method: str
    round_id: int
    device_id: str
    nonce: bytes
    timestamp_ms: int
    payload_sha256: bytes
    key_id: str
    signature: bytes
    resource: str = ""

    def __post_init__(self) -> None:
        _text(self.purpose, "purpose")
        _text(self.method, "method")
        _text(self.device_id, "device id")
        if not isinstance(self.round_id, int) or not 0 <= self.round_id < 2**63:
            raise RequestRejected("envelope round id must be an int in [0, 2^63)")
        if not isinstance(self.timestamp_ms, int) or not 0 <= self.timestamp_ms < 2**63:
            raise RequestRejected("envelope timestamp must be an int in [0, 2^63) ms")
        if not isinstance(self.nonce, bytes) or not NONCE_BYTES <= len(self.nonce) <= 64:
            raise RequestRejected("envelope nonce must be 16..64 bytes")
        if not isinstance(self.payload_sha256, bytes) or len(self.payload_sha256) != 32:
            raise RequestRejected("envelope payload digest must be 32 bytes")
        if (
            not isinstance(self.key_id, str)
            or len(self.key_id) != 64
            or any(c not in "0123456789abcdef" for c in self.key_id)
        ):
            raise RequestRejected("envelope key id must be 64 lowercase hex chars")
        if not isinstance(self.signature, bytes) or not 0 <= len(self.signature) <= 160:
            raise RequestRejected("envelope signature must be at most 160 bytes")
        if self.resource:
            _text(self.resource, "resource")

    def signed_bytes(self) -> bytes:
        return DOMAIN + b"".join(
            (
                _lp(self.purpose.encode()),
                _lp(self.method.encode()),
                struct.pack(">q", self.round_id),
                _lp(self.device_id.encode()),
                _lp(self.nonce),
                struct.pack(">q", self.timestamp_ms),
                _lp(self.payload_sha256),
                _lp(self.key_id.encode()),
                _lp(self.resource.encode()),
            )
        )


def sign_request(
    keystore: KeyStore,
    method: str,
    round_id: int,
    device_id: str,
    payload: bytes,
    now: float,
    purpose: str = DEFAULT_PURPOSE,
    nonce: bytes | None = None,
    resource: str = "",
) -> Envelope:
    """Sign ``payload`` for ``method``; the nonce comes from the OS CSPRNG unless given."""
    unsigned = Envelope(
        purpose=purpose,
        method=method,
        round_id=round_id,
        device_id=device_id,
        nonce=nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES),
        timestamp_ms=round(now * 1000),
        payload_sha256=hashlib.sha256(payload).digest(),
        key_id=keystore.public_key.fingerprint(),
        signature=b"",
        resource=resource,
    )
    return dataclasses.replace(unsigned, signature=keystore.sign(unsigned.signed_bytes()))


# --- key registry -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RegisteredKey:
    public_key: PublicKey
    identity: Identity


class KeyRegistry(Protocol):
    def lookup(self, key_id: str) -> RegisteredKey | None: ...


class InMemoryKeyRegistry:
    """Key id -> (public key, identity) for every key bound to a valid fleet certificate."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[str, RegisteredKey] = {}

    def register(self, public_key: PublicKey, identity: Identity) -> None:
        kid = public_key.fingerprint()
        prev = self._keys.get(kid)
        if prev is not None and prev.identity != identity:
            raise RequestRejected("key is already bound to another identity")
        self._keys[kid] = RegisteredKey(public_key, identity)

    def unregister(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def lookup(self, key_id: str) -> RegisteredKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)


# --- replay protection --------------------------------------------------------------------------
class NonceCache:
    """Bounded set of (key id, nonce) seen, each kept until its timestamp leaves the window.

    When full of live entries it refuses new ones (fail closed) rather than forgetting a nonce
    that could then be replayed.
    """

    __slots__ = ("_entries", "capacity", "window_s")

    def __init__(self, window_s: float, capacity: int = DEFAULT_NONCE_CAPACITY) -> None:
        if window_s <= 0 or capacity <= 0:
            raise RequestRejected("nonce cache window and capacity must be > 0")
        self.window_s = window_s
        self.capacity = capacity
        # insertion-ordered; expiry times are not monotone, so eviction scans from the front
        self._entries: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def __contains__(self, key: tuple[str, bytes]) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, key_id: str, nonce: bytes, now: float) -> bool:
        exp = self._entries.get((key_id, nonce))
        return exp is not None and exp >= now

    def add(self, key_id: str, nonce: bytes, timestamp: float, now: float) -> None:
        if len(self._entries) >= self.capacity:
            self._evict(now)
        if len(self._entries) >= self.capacity:
            raise RequestRejected("nonce cache is full (too many live requests)")
        self._entries[(key_id, nonce)] = timestamp + self.window_s

    def _evict(self, now: float) -> None:
        dead = [k for k, exp in self._entries.items() if exp < now]
        for k in dead:
            del self._entries[k]


class RequestVerifier:
    """Verifies signed envelopes; ``verify`` returns None or raises a ``RequestRejected``."""

    __slots__ = ("max_age_s", "nonces", "not_before", "purpose", "registry", "skew_s")

    def __init__(
        self,
        registry: KeyRegistry,
        purpose: str = DEFAULT_PURPOSE,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        skew_s: float = DEFAULT_SKEW_S,
        nonce_capacity: int = DEFAULT_NONCE_CAPACITY,
        not_before: float | None = None,
    ) -> None:
        """``not_before``: reject requests timestamped before this instant. Set it to the start
        time of a process whose nonce cache starts empty, so that messages captured before a
        restart cannot be replayed after it (clients whose clocks run behind are refused for up
        to ``skew_s`` after the start, and sign again)."""
        if max_age_s <= 0 or skew_s < 0:
            raise RequestRejected("max_age_s must be > 0 and skew_s >= 0")
        self.not_before = not_before
        self.registry = registry
        self.purpose = purpose
        self.max_age_s = max_age_s
        self.skew_s = skew_s
        # a message is fresh while ts in [now - max_age - skew, now + skew]: remember its nonce
        # until ts + max_age + skew, after which a replay is stale anyway.
        self.nonces = NonceCache(max_age_s + skew_s, nonce_capacity)

    def verify(
        self,
        envelope: Envelope,
        payload: bytes,
        peer_identity: Identity,
        now: float,
        expected_method: str | None = None,
    ) -> None:
        reg = self.registry.lookup(envelope.key_id)
        if reg is None:
            raise UnknownKey(f"unknown signing key {envelope.key_id[:16]}")
        if self.nonces.seen(envelope.key_id, envelope.nonce, now):
            raise ReplayDetected(f"nonce {envelope.nonce.hex()[:16]} already seen for this key")
        ts = envelope.timestamp_ms / 1000.0
        if ts < now - self.max_age_s - self.skew_s:
            raise StaleRequest(f"request is {now - ts:.1f} s old (limit {self.max_age_s:.0f} s)")
        if ts > now + self.skew_s:
            raise StaleRequest(f"request is {ts - now:.1f} s in the future")
        if self.not_before is not None and envelope.timestamp_ms < int(self.not_before * 1000):
            raise StaleRequest("request predates this verifier's start (possible replay)")
        try:
            reg.public_key.verify(envelope.signature, envelope.signed_bytes())
        except CryptoError as exc:
            raise RequestRejected("request signature does not verify") from exc
        if hashlib.sha256(payload).digest() != envelope.payload_sha256:
            raise RequestRejected("payload does not match the signed digest")
        if envelope.purpose != self.purpose:
            raise RequestRejected(f"request purpose {envelope.purpose!r} is not {self.purpose!r}")
        if expected_method is not None and envelope.method != expected_method:
            raise RequestRejected(
                f"request was signed for {envelope.method!r}, not {expected_method!r}"
            )
        if reg.identity != peer_identity:
            raise RequestRejected(
                f"signer {reg.identity.uri} is not the certificate identity {peer_identity.uri}"
            )
        if envelope.device_id != peer_identity.device_id:
            raise RequestRejected(
                f"claimed device id {envelope.device_id!r} is not {peer_identity.device_id!r}"
            )
        self.nonces.add(envelope.key_id, envelope.nonce, ts, now)
