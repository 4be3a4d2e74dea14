"""The fleet CA: issues short-lived SPIFFE-named certs from CSRs, enrols with one-time tokens.

Pure logic: every call takes ``now``; persistence lives in ``ztfm.identity.store``. The CA never
sees a device's private key: enrolment is CSR-based and the CSR's self-signature proves the device
holds the key it names. A one-time enrolment token (carried as the CSR's challenge attribute) ties
a first enrolment to an identity the operator approved; renewal is authorised by the device's
current, still-valid certificate instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from ztfm.crypto.pki import (
    Certificate,
    CertificateRequest,
    PrivateKey,
    self_signed_ca,
)
from ztfm.crypto.pki import issue_certificate as _issue
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity.revocation import RevocationList, SignedRevocationList
from ztfm.identity.spiffe import Identity, ca_uri

DEFAULT_CERT_TTL_S: Final = 3600.0
MAX_CERT_TTL_S: Final = 7 * 24 * 3600.0
DEFAULT_CA_TTL_S: Final = 5 * 365 * 24 * 3600.0
DEFAULT_TOKEN_TTL_S: Final = 24 * 3600.0
DEFAULT_CRL_TTL_S: Final = 600.0
#: Backdate not_before a little so that a verifier whose clock is slightly behind accepts it.
BACKDATE_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """What the CA remembers about a certificate it issued."""

    serial: int
    identity: Identity
    not_after: float
    key_fingerprint: str


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """A pending one-time enrolment: SHA-256 of the secret token, the identity, the expiry."""

    token_sha256: str
    identity: Identity
    expires_at: float


class FleetCA:
    """A fleet certificate authority holding its key in memory."""

    __slots__ = (
        "_key",
        "cert",
        "crl_version",
        "fleet",
        "issued",
        "revoked_identities",
        "revoked_serials",
        "tokens",
    )

    def __init__(self, key: PrivateKey, cert: Certificate, fleet: str) -> None:
        if not cert.is_ca:
            raise IdentityError("CA certificate lacks basicConstraints CA=true")
        if cert.public_key != key.public_key:
            raise IdentityError("CA key does not match the CA certificate")
        if cert.uris != (ca_uri(fleet),):
            raise IdentityError(f"CA certificate is not for fleet {fleet!r}")
        self._key = key
        self.cert = cert
        self.fleet = fleet
        self.issued: dict[int, IssuedCert] = {}
        self.revoked_serials: set[int] = set()
        self.revoked_identities: set[str] = set()
        self.crl_version = 0
        self.tokens: dict[str, EnrollmentToken] = {}

    @classmethod
    def create(cls, fleet: str, now: float, ttl_s: float = DEFAULT_CA_TTL_S) -> FleetCA:
        key = PrivateKey.generate()
        cert = self_signed_ca(
            key, f"ztfm fleet CA {fleet}", ca_uri(fleet), now - BACKDATE_S, now + ttl_s
        )
        return cls(key, cert, fleet)

    @property
    def key(self) -> PrivateKey:
        return self._key

    # --- issuing --------------------------------------------------------------------------------
    def issue(
        self,
        csr: CertificateRequest,
        identity: Identity,
        now: float,
        ttl_s: float = DEFAULT_CERT_TTL_S,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> Certificate:
        """Issue a cert for the key in ``csr``; the CSR must name exactly ``identity``."""
        if identity.fleet != self.fleet:
            raise IdentityError(f"identity is for fleet {identity.fleet!r}, not {self.fleet!r}")
        if csr.uris != (identity.uri,):
            raise IdentityError("CSR does not name exactly the identity being enrolled")
        if identity.uri in self.revoked_identities:
            raise IdentityError(f"identity {identity.uri} is revoked")
        self._check_unique_device_id(identity)
        if not 0 < ttl_s <= MAX_CERT_TTL_S:
            raise IdentityError(f"certificate TTL must be in (0, {MAX_CERT_TTL_S:.0f}] s")
        if now + ttl_s > self.cert.not_after:
            raise IdentityError("certificate would outlive the CA certificate")
        try:
            cert = _issue(
                csr.public_key,
                identity.device_id,
                identity.uri,
                self._key,
                self.cert,
                now - BACKDATE_S,
                now + ttl_s,
                dns_names,
                ip_addresses,
            )
        except CryptoError as exc:
            raise IdentityError(f"cannot issue certificate: {exc}") from exc
        self.issued[cert.serial] = IssuedCert(
            cert.serial, identity, cert.not_after, csr.public_key.fingerprint()
        )
        return cert

    def _check_unique_device_id(self, identity: Identity) -> None:
        """A device id names one device in the fleet, whatever its segment: peers (SecAgg
        neighbours, the coordinator) know each other by device id, so a second certificate for
        the same id under another segment (or after the first was revoked) would let its holder
        speak for that device."""
        if identity.role != "device":
            return
        # every renewal comes through here: compare the issued identities as they are (no URI
        # parsing, no copies); only the few revoked identities are kept as URIs
        others = [c.identity for c in self.issued.values()]
        for uri in self.revoked_identities:
            try:
                others.append(Identity.from_uri(uri))
            except IdentityError:
                continue
        for other in others:
            if (
                other.device_id == identity.device_id
                and other.role == "device"
                and other != identity
            ):
                raise IdentityError(
                    f"device id {identity.device_id!r} is already issued as {other.uri}: "
                    "device ids are unique in a fleet"
                )

    # --- enrolment ------------------------------------------------------------------------------
    def create_token(
        self, identity: Identity, now: float, ttl_s: float = DEFAULT_TOKEN_TTL_S
    ) -> str:
        """A one-time enrolment token for ``identity`` (secret: from the OS CSPRNG)."""
        if identity.fleet != self.fleet:
            raise IdentityError("token identity is for another fleet")
        self._check_unique_device_id(identity)
        token = secrets.token_urlsafe(24)
        digest = hashlib.sha256(token.encode()).hexdigest()
        self.tokens[digest] = EnrollmentToken(digest, identity, now + ttl_s)
        return token

    def enroll(
        self,
        csr: CertificateRequest,
        now: float,
        ttl_s: float = DEFAULT_CERT_TTL_S,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> tuple[Identity, Certificate]:
        """First enrolment: the CSR's challenge must be an unused, unexpired token for its URI."""
        if not csr.challenge:
            raise IdentityError("CSR carries no enrolment token")
        digest = hashlib.sha256(csr.challenge.encode()).hexdigest()
        entry = None
        for known, tok in self.tokens.items():
            if hmac.compare_digest(known, digest):
                entry = tok
        if entry is None:
            raise IdentityError("unknown or already used enrolment token")
        if now > entry.expires_at:
            del self.tokens[entry.token_sha256]
            raise IdentityError("enrolment token has expired")
        if csr.uris != (entry.identity.uri,):
            raise IdentityError("CSR names a different identity than its enrolment token")
        cert = self.issue(csr, entry.identity, now, ttl_s, dns_names, ip_addresses)
        del self.tokens[entry.token_sha256]
        return entry.identity, cert

    def renew(
        self,
        csr: CertificateRequest,
        current: Identity,
        now: float,
        ttl_s: float = DEFAULT_CERT_TTL_S,
    ) -> Certificate:
        """Renewal for a caller already authenticated as ``current`` (by its valid cert)."""
        if csr.uris != (current.uri,):
            raise IdentityError("renewal CSR names a different identity than the caller")
        return self.issue(csr, current, now, ttl_s)

    # --- revocation -----------------------------------------------------------------------------
    def revoke_serial(self, serial: int) -> None:
        if serial not in self.issued:
            raise IdentityError(f"serial {serial:x} was not issued by this CA")
        self.revoked_serials.add(serial)

    def revoke_identity(self, identity: Identity) -> None:
        """Revoke every cert of ``identity``, now and in future (it may not re-enrol)."""
        if identity.fleet != self.fleet:
            raise IdentityError("identity is for another fleet")
        self.revoked_identities.add(identity.uri)
        for rec in self.issued.values():
            if rec.identity == identity:
                self.revoked_serials.add(rec.serial)

    def publish_revocations(
        self, now: float, ttl_s: float = DEFAULT_CRL_TTL_S
    ) -> SignedRevocationList:
        """A new signed list (version + 1) valid for ``ttl_s`` seconds from ``now``."""
        if ttl_s <= 0:
            raise IdentityError("revocation list TTL must be > 0")
        self.crl_version += 1
        body = RevocationList(
            fleet=self.fleet,
            version=self.crl_version,
            issued_at=now,
            next_update=now + ttl_s,
            serials=frozenset(self.revoked_serials),
            identities=frozenset(self.revoked_identities),
        )
        return SignedRevocationList.sign(body, self._key)
