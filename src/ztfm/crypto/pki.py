"""X.509 building blocks for the fleet PKI: keys, CSRs, certificates (layer 1).

Only this module touches ``cryptography.x509``; ``ztfm.identity`` builds the fleet CA, SPIFFE
identities and revocation on top of these values. Keys are ECDSA P-256 by default: it is what TPM
2.0 chips, BoringSSL (gRPC's TLS) and every TLS stack support, so the same device key can sign
TLS handshakes and request envelopes. Ed25519 public keys are accepted for verification too.

Every check returns ``None`` or raises ``CryptoError``; every value is parsed on construction, so a
``Certificate`` or ``CertificateRequest`` that exists is well formed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

from ztfm.errors import CryptoError

#: Largest PEM/DER blob we parse at a trust boundary (a real cert is ~1 KiB).
MAX_PKI_BLOB_BYTES = 16 * 1024


def _utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)


def _check_size(data: bytes, what: str) -> None:
    if not isinstance(data, bytes | bytearray):
        raise CryptoError(f"{what} must be bytes")
    if len(data) == 0:
        raise CryptoError(f"{what} is empty")
    if len(data) > MAX_PKI_BLOB_BYTES:
        raise CryptoError(f"{what} is larger than {MAX_PKI_BLOB_BYTES} bytes")


# --- public keys --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key (ECDSA P-256 or Ed25519) held as DER SubjectPublicKeyInfo."""

    spki_der: bytes
    algorithm: str = field(init=False)

    def __post_init__(self) -> None:
        _check_size(self.spki_der, "public key")
        try:
            key = serialization.load_der_public_key(bytes(self.spki_der))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CryptoError("not a DER SubjectPublicKeyInfo") from exc
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise CryptoError("only the P-256 curve is accepted")
            algo = "p256"
        elif isinstance(key, Ed25519PublicKey):
            algo = "ed25519"
        else:
            raise CryptoError("unsupported public key type (need P-256 or Ed25519)")
        object.__setattr__(self, "algorithm", algo)

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        _check_size(data, "public key PEM")
        try:
            key = serialization.load_pem_public_key(bytes(data))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CryptoError("not a PEM public key") from exc
        return cls(
            key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def to_pem(self) -> bytes:
        return serialization.load_der_public_key(self.spki_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def fingerprint(self) -> str:
        """Hex SHA-256 of the DER SubjectPublicKeyInfo: the key id used everywhere in ztfm."""
        return hashlib.sha256(self.spki_der).hexdigest()

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return None if ``signature`` over ``message`` is valid; raise ``CryptoError`` if not."""
        if not isinstance(signature, bytes) or not 0 < len(signature) <= 160:
            raise CryptoError("signature has an invalid length")
        key = serialization.load_der_public_key(self.spki_der)
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, Ed25519PublicKey):
                key.verify(signature, message)
            else:  # pragma: no cover - excluded in __post_init__
                raise CryptoError("unsupported public key type")
        except InvalidSignature as exc:
            raise CryptoError("signature does not verify") from exc


# --- private keys -------------------------------------------------------------------------------
class PrivateKey:
    """A software private key (P-256 by default). Never leaves the device's ``KeyStore``."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> None:
        if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
            raise CryptoError("only the P-256 curve is accepted")
        self._key = key

    @classmethod
    def generate(cls, algorithm: str = "p256") -> PrivateKey:
        if algorithm == "p256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if algorithm == "ed25519":
            return cls(Ed25519PrivateKey.generate())
        raise CryptoError(f"unknown key algorithm {algorithm!r} (use p256 or ed25519)")

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        _check_size(data, "private key PEM")
        try:
            key = serialization.load_pem_private_key(bytes(data), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CryptoError("not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey):
            raise CryptoError("private key is neither P-256 nor Ed25519")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def algorithm(self) -> str:
        return "p256" if isinstance(self._key, ec.EllipticCurvePrivateKey) else "ed25519"

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(message)

    def _hash(self) -> hashes.SHA256 | None:
        return hashes.SHA256() if isinstance(self._key, ec.EllipticCurvePrivateKey) else None


# --- certificate signing requests ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """A parsed PKCS#10 CSR whose self-signature (proof of possession) has been checked."""

    der: bytes
    public_key: PublicKey = field(init=False)
    uris: tuple[str, ...] = field(init=False)
    challenge: str = field(init=False)

    def __post_init__(self) -> None:
        _check_size(self.der, "CSR")
        try:
            csr = x509.load_der_x509_csr(bytes(self.der))
        except ValueError as exc:
            raise CryptoError("not a DER PKCS#10 CSR") from exc
        try:
            valid = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CryptoError("CSR signature cannot be checked") from exc
        if not valid:
            raise CryptoError("CSR is not signed by the key it names (no proof of possession)")
        pub = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "public_key", PublicKey(pub))
        object.__setattr__(self, "uris", _uris_of(csr.extensions))
        try:
            raw = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
            challenge = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except x509.AttributeNotFound:
            challenge = ""
        except (ValueError, UnicodeDecodeError) as exc:
            raise CryptoError("CSR challenge attribute is malformed") from exc
        object.__setattr__(self, "challenge", challenge)

    @classmethod
    def from_pem(cls, data: bytes) -> CertificateRequest:
        _check_size(data, "CSR PEM")
        try:
            csr = x509.load_pem_x509_csr(bytes(data))
        except ValueError as exc:
            raise CryptoError("not a PEM PKCS#10 CSR") from exc
        return cls(csr.public_bytes(serialization.Encoding.DER))

    def to_pem(self) -> bytes:
        return x509.load_der_x509_csr(self.der).public_bytes(serialization.Encoding.PEM)


def build_csr(
    key: PrivateKey, common_name: str, uri: str, challenge: str = ""
) -> CertificateRequest:
    """A CSR signed by ``key`` naming ``uri`` as its URI SAN, carrying an optional challenge."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    )
    if challenge:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    csr = builder.sign(key._key, key._hash())
    return CertificateRequest(csr.public_bytes(serialization.Encoding.DER))


# --- certificates -------------------------------------------------------------------------------
def _uris_of(extensions: x509.Extensions) -> tuple[str, ...]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True, slots=True)
class Certificate:
    """A parsed X.509 certificate; times are seconds since the epoch (UTC)."""

    der: bytes
    serial: int = field(init=False)
    subject_cn: str = field(init=False)
    issuer_cn: str = field(init=False)
    not_before: float = field(init=False)
    not_after: float = field(init=False)
    uris: tuple[str, ...] = field(init=False)
    is_ca: bool = field(init=False)
    public_key: PublicKey = field(init=False)

    def __post_init__(self) -> None:
        _check_size(self.der, "certificate")
        try:
            cert = x509.load_der_x509_certificate(bytes(self.der))
            pub = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            exts = cert.extensions
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CryptoError("not a well-formed DER X.509 certificate") from exc
        try:
            bc = exts.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bool(bc.ca)
        except x509.ExtensionNotFound:
            is_ca = False
        set_ = object.__setattr__
        set_(self, "serial", cert.serial_number)
        set_(self, "subject_cn", _cn(cert.subject))
        set_(self, "issuer_cn", _cn(cert.issuer))
        set_(self, "not_before", cert.not_valid_before_utc.timestamp())
        set_(self, "not_after", cert.not_valid_after_utc.timestamp())
        set_(self, "uris", _uris_of(exts))
        set_(self, "is_ca", is_ca)
        set_(self, "public_key", PublicKey(pub))

    @classmethod
    def from_pem(cls, data: bytes) -> Certificate:
        _check_size(data, "certificate PEM")
        try:
            cert = x509.load_pem_x509_certificate(bytes(data))
        except ValueError as exc:
            raise CryptoError("not a PEM X.509 certificate") from exc
        return cls(cert.public_bytes(serialization.Encoding.DER))

    def to_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.der).public_bytes(serialization.Encoding.PEM)

    def fingerprint(self) -> str:
        """Hex SHA-256 of the DER certificate."""
        return hashlib.sha256(self.der).hexdigest()

    def verify_issued_by(self, issuer: Certificate) -> None:
        """Return None if ``issuer`` signed this certificate (names match, signature valid)."""
        if not issuer.is_ca:
            raise CryptoError("issuer certificate is not a CA")
        cert = x509.load_der_x509_certificate(self.der)
        ca = x509.load_der_x509_certificate(issuer.der)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise CryptoError("certificate was not issued by this CA") from exc


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _random_serial() -> int:
    return x509.random_serial_number()


def self_signed_ca(
    key: PrivateKey, common_name: str, uri: str, not_before: float, not_after: float
) -> Certificate:
    """A self-signed CA certificate (path length 0: it may sign only end-entity certs)."""
    if not_after <= not_before:
        raise CryptoError("CA validity window is empty")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    pub = key._key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(_random_serial())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key._key, key._hash())
    )
    return Certificate(cert.public_bytes(serialization.Encoding.DER))


def issue_certificate(
    public_key: PublicKey,
    common_name: str,
    uri: str,
    ca_key: PrivateKey,
    ca_cert: Certificate,
    not_before: float,
    not_after: float,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> Certificate:
    """An end-entity cert for ``public_key`` (client and server auth) signed by the CA."""
    if not_after <= not_before:
        raise CryptoError("certificate validity window is empty")
    ca = x509.load_der_x509_certificate(ca_cert.der)
    pub = serialization.load_der_public_key(public_key.spki_der)
    if not isinstance(pub, ec.EllipticCurvePublicKey | Ed25519PublicKey):
        raise CryptoError("unsupported public key type")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns_names]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    except ValueError as exc:
        raise CryptoError("invalid IP address for a certificate") from exc
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(pub)
        .serial_number(_random_serial())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key._key, ca_key._hash())
    )
    return Certificate(cert.public_bytes(serialization.Encoding.DER))
