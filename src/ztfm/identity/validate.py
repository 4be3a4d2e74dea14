"""Certificate validation: chain to the fleet CA, validity window with skew, revocation, URI SAN.

``CertValidator.validate(cert, now)`` returns the ``Identity`` the cert names, or raises
``IdentityError``; there is no path that returns a cert unchecked.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Final, Protocol

from ztfm.crypto.pki import Certificate
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity.revocation import DEFAULT_SKEW_S
from ztfm.identity.spiffe import Identity, ca_uri

log = logging.getLogger(__name__)

DEFAULT_MARGIN_FRACTION: Final = 1.0 / 3.0


class RevocationSource(Protocol):
    def check(self, serial: int, identity: Identity, now: float) -> None: ...


class UnsafeNoRevocation:
    """Skips revocation checks. Insecure: for bootstrapping tests only; warns on every use."""

    def check(self, serial: int, identity: Identity, now: float) -> None:
        log.warning("UnsafeNoRevocation: revocation NOT checked for %s", identity.uri)


class CertValidator:
    """Validates end-entity certs against one fleet CA."""

    __slots__ = ("_chain_ok", "_lock", "ca_cert", "cache_size", "fleet", "revocations", "skew_s")

    def __init__(
        self,
        ca_cert: Certificate,
        fleet: str,
        revocations: RevocationSource,
        skew_s: float = DEFAULT_SKEW_S,
        cache_size: int = 10_000,
    ) -> None:
        if not ca_cert.is_ca or ca_cert.uris != (ca_uri(fleet),):
            raise IdentityError(f"not the CA certificate of fleet {fleet!r}")
        if skew_s < 0:
            raise IdentityError("clock skew tolerance must be >= 0")
        self.ca_cert = ca_cert
        self.fleet = fleet
        self.revocations = revocations
        self.skew_s = skew_s
        self.cache_size = cache_size
        # DER fingerprints whose CA signature already verified (the signature never changes;
        # validity window, URI and revocation are re-checked on every call).
        self._chain_ok: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def validate(self, cert: Certificate | bytes, now: float) -> Identity:
        """Return the identity of a valid cert; raise ``IdentityError`` with the reason if not."""
        if isinstance(cert, bytes):
            try:
                cert = (
                    Certificate(cert)
                    if not cert.startswith(b"-----")
                    else (Certificate.from_pem(cert))
                )
            except CryptoError as exc:
                raise IdentityError(f"malformed certificate: {exc}") from exc
        if cert.is_ca:
            raise IdentityError("a CA certificate cannot be used as an end-entity identity")
        fp = cert.fingerprint()
        with self._lock:
            known = fp in self._chain_ok
            if known:
                self._chain_ok.move_to_end(fp)
        if not known:
            try:
                cert.verify_issued_by(self.ca_cert)
            except CryptoError as exc:
                raise IdentityError("certificate is not issued by the fleet CA") from exc
            with self._lock:
                self._chain_ok[fp] = None
                while len(self._chain_ok) > self.cache_size:
                    self._chain_ok.popitem(last=False)
        if now + self.skew_s < cert.not_before:
            raise IdentityError("certificate is not yet valid (beyond clock-skew tolerance)")
        if now - self.skew_s > cert.not_after:
            raise IdentityError("certificate has expired")
        if len(cert.uris) != 1:
            raise IdentityError("certificate must carry exactly one URI SAN")
        identity = Identity.from_uri(cert.uris[0])
        if identity.fleet != self.fleet:
            raise IdentityError(f"certificate is for fleet {identity.fleet!r}")
        self.revocations.check(cert.serial, identity, now)
        return identity


def needs_renewal(cert: Certificate, now: float, margin_s: float | None = None) -> bool:
    """True once ``now`` is within ``margin_s`` of expiry (default: last third of the lifetime)."""
    if margin_s is None:
        margin_s = (cert.not_after - cert.not_before) * DEFAULT_MARGIN_FRACTION
    if margin_s < 0:
        raise IdentityError("renewal margin must be >= 0")
    return now >= cert.not_after - margin_s
