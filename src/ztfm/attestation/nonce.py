"""Fresh nonces: where their bytes come from, and the book of nonces issued and not yet used."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ztfm.errors import AttestationError
from ztfm.types import DeviceId

NONCE_BYTES = 32
log = logging.getLogger(__name__)


class NonceSource(Protocol):
    """Where unpredictable bytes come from (nonces, credential secrets, ECDH ephemerals)."""

    def token(self, n: int) -> bytes: ...


class SystemNonceSource:
    """Operating-system CSPRNG (``secrets``): the production choice."""

    def token(self, n: int) -> bytes:
        return secrets.token_bytes(n)


@dataclass(slots=True)
class UnsafeRngNonceSource:
    """Bytes from an ``np.random.Generator``: reproducible, therefore predictable.

    For tests and simulations only: anyone who knows the seed can predict every nonce (and
    every enrolment secret). Logs a warning when created.
    """

    rng: np.random.Generator

    def __post_init__(self) -> None:
        log.warning("UnsafeRngNonceSource: nonces are predictable (simulations and tests only)")

    def token(self, n: int) -> bytes:
        return self.rng.bytes(n)


@dataclass(slots=True)
class NonceBook:
    """Nonces issued per device with their issue time; each one can be used once.

    ``max_outstanding`` bounds memory per device: issuing more drops the oldest.
    """

    source: NonceSource
    max_outstanding: int = 4
    _issued: dict[DeviceId, dict[bytes, float]] = field(default_factory=dict)

    def issue(self, device_id: DeviceId, now: float) -> bytes:
        nonce = self.source.token(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise AttestationError("nonce source returned the wrong number of bytes")
        book = self._issued.setdefault(device_id, {})
        book[nonce] = now
        while len(book) > self.max_outstanding:
            del book[next(iter(book))]
        return nonce

    def consume(self, device_id: DeviceId, nonce: bytes, now: float, max_age_s: float) -> float:
        """Use ``nonce`` up; return its issue time; raise if unknown, reused or stale."""
        book = self._issued.get(device_id, {})
        issued_at = book.pop(nonce, None)
        if issued_at is None:
            raise AttestationError("quote nonce was not issued to this device (or already used)")
        if now < issued_at:
            raise AttestationError("quote nonce was issued in the future (clock skew)")
        if now - issued_at > max_age_s:
            raise AttestationError(
                f"quote is stale: nonce issued {now - issued_at:.1f} s ago (max {max_age_s:g} s)"
            )
        return issued_at

    def outstanding(self, device_id: DeviceId) -> int:
        return len(self._issued.get(device_id, {}))
