"""X25519 key agreement, HKDF-SHA256 and AES-GCM sealing for pairwise channels.

Used by secure aggregation: every pair of neighbours agrees on a key, derives one key per purpose
and direction with HKDF (the ``info`` label binds purpose, round and parties), and seals Shamir
shares with AES-GCM. Each derived key is used for exactly one message, so the fixed all-zero nonce
is never reused under one key.

Randomness comes from a ``RandomSource`` (anything with ``bytes(n)``): ``os.urandom`` in
production (``SystemRandomSource``), a seeded ``np.random.Generator`` in tests and simulations
(reproducible, but *not* cryptographically secure).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ztfm.errors import CryptoError

X25519_KEY_BYTES = 32
AEAD_KEY_BYTES = 16
AEAD_TAG_BYTES = 16
_ZERO_NONCE = bytes(12)


class RandomSource(Protocol):
    """Anything that returns ``n`` random bytes; ``np.random.Generator`` qualifies."""

    def bytes(self, length: int) -> bytes: ...


class SystemRandomSource:
    """The operating system's CSPRNG (``os.urandom``): use this outside tests and simulations."""

    def bytes(self, length: int) -> bytes:
        return os.urandom(length)


@dataclass(frozen=True, slots=True)
class KexPublicKey:
    """An X25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != X25519_KEY_BYTES:
            raise CryptoError(f"X25519 public key must be {X25519_KEY_BYTES} bytes")


class KexPrivateKey:
    """An X25519 private key; ``exchange`` refuses low-order peer keys."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = KexPublicKey(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls, rng: RandomSource) -> KexPrivateKey:
        """A fresh key from ``rng`` (pass ``SystemRandomSource()`` outside simulations)."""
        return cls.from_bytes(rng.bytes(X25519_KEY_BYTES))

    @classmethod
    def from_bytes(cls, raw: bytes) -> KexPrivateKey:
        if len(raw) != X25519_KEY_BYTES:
            raise CryptoError(f"X25519 private key must be {X25519_KEY_BYTES} bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @property
    def public(self) -> KexPublicKey:
        return self._public

    def private_bytes(self) -> bytes:
        """The raw 32-byte scalar (secure aggregation secret-shares it)."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def exchange(self, peer: KexPublicKey) -> bytes:
        """The 32-byte X25519 shared secret with ``peer``; raise on a low-order peer key."""
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer.raw))
        except ValueError as exc:
            raise CryptoError("X25519 exchange failed: invalid or low-order peer key") from exc
        if shared == bytes(X25519_KEY_BYTES):
            raise CryptoError("X25519 exchange produced the all-zero secret")
        return shared


def derive_key(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret``; ``info`` names purpose and context."""
    if not secret:
        raise CryptoError("HKDF input key material is empty")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM encrypt under a single-use ``key`` (fixed nonce; never reuse a key)."""
    _check_aead_key(key)
    return AESGCM(key).encrypt(_ZERO_NONCE, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """AES-GCM decrypt; raise ``CryptoError`` if the ciphertext or its context was altered."""
    _check_aead_key(key)
    if len(ciphertext) < AEAD_TAG_BYTES:
        raise CryptoError("sealed message is shorter than its tag")
    try:
        return AESGCM(key).decrypt(_ZERO_NONCE, ciphertext, aad)
    except InvalidTag as exc:
        raise CryptoError("sealed message failed authentication") from exc


def mac(key: bytes, data: bytes | memoryview) -> bytes:
    """A 16-byte GMAC tag (AES-GCM over empty plaintext, ``data`` as AAD); single-use key."""
    _check_aead_key(key)
    return AESGCM(key).encrypt(_ZERO_NONCE, b"", data)


def verify_mac(key: bytes, tag: bytes, data: bytes | memoryview) -> None:
    """Return None if ``tag`` authenticates ``data`` under ``key``; raise ``CryptoError`` if not."""
    if len(tag) != AEAD_TAG_BYTES:
        raise CryptoError("MAC tag has the wrong length")
    if not hmac.compare_digest(mac(key, data), tag):
        raise CryptoError("MAC tag does not verify")


def _check_aead_key(key: bytes) -> None:
    if len(key) != AEAD_KEY_BYTES:
        raise CryptoError(f"AEAD key must be {AEAD_KEY_BYTES} bytes")
