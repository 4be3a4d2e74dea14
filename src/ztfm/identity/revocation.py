"""Signed, versioned revocation lists with a freshness window (stale lists are rejected).

The coordinator (which holds the fleet CA key) publishes a ``SignedRevocationList``; every verifier
keeps the newest valid list in a ``RevocationChecker`` and fails closed when it has none, when the
list is stale, or when someone tries to roll it back to an older version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from ztfm.crypto.pki import PrivateKey, PublicKey
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity.spiffe import Identity

PURPOSE: Final = b"ztfm/revocation-list/v1\n"
MAX_LIST_BYTES: Final = 4 * 1024 * 1024
DEFAULT_SKEW_S: Final = 60.0


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True)
class RevocationList:
    """Revoked cert serials and identity URIs, valid from ``issued_at`` to ``next_update``."""

    fleet: str
    version: int
    issued_at: float
    next_update: float
    serials: frozenset[int]
    identities: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 0:
            raise IdentityError("revocation list version must be a non-negative int")
        if not self.next_update > self.issued_at:
            raise IdentityError("revocation list next_update must be after issued_at")
        for s in self.serials:
            if not isinstance(s, int) or isinstance(s, bool) or s <= 0:
                raise IdentityError("revocation list serials must be positive ints")
        for uri in self.identities:
            Identity.from_uri(uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "version": self.version,
            "issued_at": self.issued_at,
            "next_update": self.next_update,
            "serials": [str(s) for s in sorted(self.serials)],
            "identities": sorted(self.identities),
        }

    @classmethod
    def from_dict(cls, obj: object) -> RevocationList:
        if not isinstance(obj, dict) or set(obj) != {
            "fleet",
            "version",
            "issued_at",
            "next_update",
            "serials",
            "identities",
        }:
            raise IdentityError("revocation list has the wrong fields")
        try:
            serials = frozenset(int(s) for s in obj["serials"] if isinstance(s, str))
            if len(serials) != len(obj["serials"]):
                raise IdentityError("revocation list serials must be decimal strings")
            idents = obj["identities"]
            if not isinstance(idents, list) or not all(isinstance(u, str) for u in idents):
                raise IdentityError("revocation list identities must be strings")
            for key in ("issued_at", "next_update"):
                if not isinstance(obj[key], int | float) or isinstance(obj[key], bool):
                    raise IdentityError(f"revocation list {key} must be a number")
            if not isinstance(obj["fleet"], str):
                raise IdentityError("revocation list fleet must be a string")
            return cls(
                fleet=obj["fleet"],
                version=obj["version"],
                issued_at=float(obj["issued_at"]),
                next_update=float(obj["next_update"]),
                serials=serials,
                identities=frozenset(idents),
            )
        except (TypeError, ValueError) as exc:
            raise IdentityError("revocation list is malformed") from exc


@dataclass(frozen=True, slots=True)
class SignedRevocationList:
    """A revocation list and the CA's signature over its canonical encoding."""

    body: RevocationList
    signature: bytes

    def signed_bytes(self) -> bytes:
        return PURPOSE + _canonical(self.body.to_dict())

    def to_bytes(self) -> bytes:
        return _canonical({"list": self.body.to_dict(), "signature": self.signature.hex()})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRevocationList:
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_LIST_BYTES:
            raise IdentityError("revocation list is empty or too large")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IdentityError("revocation list is not JSON") from exc
        if not isinstance(obj, dict) or set(obj) != {"list", "signature"}:
            raise IdentityError("revocation list envelope has the wrong fields")
        try:
            sig = bytes.fromhex(obj["signature"])
        except (TypeError, ValueError) as exc:
            raise IdentityError("revocation list signature is not hex") from exc
        return cls(RevocationList.from_dict(obj["list"]), sig)

    @classmethod
    def sign(cls, body: RevocationList, key: PrivateKey) -> SignedRevocationList:
        unsigned = cls(body, b"")
        return cls(body, key.sign(unsigned.signed_bytes()))

    def verify(self, ca_key: PublicKey) -> None:
        try:
            ca_key.verify(self.signature, self.signed_bytes())
        except CryptoError as exc:
            raise IdentityError("revocation list signature does not verify") from exc


class RevocationChecker:
    """Holds the newest valid revocation list; ``check`` fails closed without a fresh one."""

    __slots__ = ("_ca_key", "_current", "fleet", "skew_s")

    def __init__(self, ca_key: PublicKey, fleet: str, skew_s: float = DEFAULT_SKEW_S) -> None:
        if skew_s < 0:
            raise IdentityError("clock skew tolerance must be >= 0")
        self._ca_key = ca_key
        self.fleet = fleet
        self.skew_s = skew_s
        self._current: RevocationList | None = None

    @property
    def current(self) -> RevocationList | None:
        return self._current

    def update(self, signed: SignedRevocationList, now: float) -> None:
        """Accept a newer list: signed by the CA, this fleet, not stale, not from the future."""
        signed.verify(self._ca_key)
        body = signed.body
        if body.fleet != self.fleet:
            raise IdentityError("revocation list is for another fleet")
        if body.issued_at > now + self.skew_s:
            raise IdentityError("revocation list is issued in the future")
        if now > body.next_update + self.skew_s:
            raise IdentityError("revocation list is stale")
        cur = self._current
        if cur is not None:
            if body.version < cur.version:
                raise IdentityError(
                    f"revocation list rollback: version {body.version} < {cur.version}"
                )
            if body.version == cur.version and body != cur:
                raise IdentityError("two different revocation lists share one version")
            if not (cur.serials <= body.serials and cur.identities <= body.identities):
                raise IdentityError("a newer revocation list may not un-revoke anything")
        self._current = body

    def check(self, serial: int, identity: Identity, now: float) -> None:
        """Return None if the cert is not revoked and the list is fresh; raise otherwise."""
        cur = self._current
        if cur is None:
            raise IdentityError("no revocation list loaded (fail closed)")
        if now > cur.next_update + self.skew_s:
            raise IdentityError("revocation list is stale")
        if serial in cur.serials:
            raise IdentityError(f"certificate serial {serial:x} is revoked")
        if identity.uri in cur.identities:
            raise IdentityError(f"identity {identity.uri} is revoked")
