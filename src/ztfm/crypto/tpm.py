"""Cryptography for TPM 2.0 evidence (layer 1): the only place attestation touches `cryptography`.

What lives here, all pure (no I/O, no clock):

* ``kdfa`` / ``kdfe``: the TPM 2.0 key derivation functions (TPM 2.0 Part 1, section 11.4.10).
* ``make_credential_rsa`` / ``make_credential_ecc``: the verifier half of TPM2_MakeCredential,
  which wraps a secret so that only the TPM holding an EK can release it, and only to an object
  with a given name (the attestation key). ``activate_credential_ecc`` is the device half used by
  the software TPM; a real TPM does it in hardware.
* ``verify_ecdsa_sha256`` / ``verify_rsassa_sha256``: check a TPMT_SIGNATURE over TPMS_ATTEST.
* ``Certificate`` and ``verify_certificate_chain``: EK certificates and the manufacturer CA.
* ``EccP256Key`` and ``SoftManufacturerCa``: keys and an EK-issuing CA for the software TPM.

Public keys are passed as plain values (``RsaPublicNumbers``, ``EccPublicPoint``) so that callers
in higher layers never see a `cryptography` object.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

try:  # cryptography >= 47 moved CFB to "decrepit"; the TPM spec still mandates it.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB as _CFB
except ImportError:  # pragma: no cover - older cryptography
    _CFB = modes.CFB  # type: ignore[misc,unused-ignore]

from ztfm.errors import CryptoError

SHA256_BYTES = 32
P256_COORD_BYTES = 32
#: OID of the TCG "EK certificate" extended key usage (tcg-kp-EKCertificate).
TCG_KP_EK_CERTIFICATE = "2.23.133.8.1"
_MAX_CERT_BYTES = 16 * 1024


# --- public key values --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RsaPublicNumbers:
    """An RSA public key as integers."""

    n: int
    e: int

    @property
    def bits(self) -> int:
        return self.n.bit_length()


@dataclass(frozen=True, slots=True)
class EccPublicPoint:
    """An elliptic-curve public point; ``curve`` is ``"P-256"`` or ``"P-384"``."""

    curve: str
    x: int
    y: int

    @property
    def coord_bytes(self) -> int:
        return _CURVES[self.curve][1]


PublicKeyNumbers = RsaPublicNumbers | EccPublicPoint

_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
}


_ORDERS = {
    "P-256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "P-384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
}


def _scalar_from(entropy: bytes, order: int) -> int:
    """Map >= 40 bytes of entropy to a scalar in [1, order-1] with negligible bias."""
    if len(entropy) < 40:
        raise CryptoError("need at least 40 bytes of entropy for an ECC scalar")
    return 1 + int.from_bytes(entropy, "big") % (order - 1)


@functools.lru_cache(maxsize=16384)
def _ecc_public(point: EccPublicPoint) -> ec.EllipticCurvePublicKey:
    spec = _CURVES.get(point.curve)
    if spec is None:
        raise CryptoError(f"unsupported curve {point.curve!r}")
    try:
        return ec.EllipticCurvePublicNumbers(point.x, point.y, spec[0]).public_key()
    except ValueError as exc:
        raise CryptoError("ECC public point is not on the curve") from exc


def _rsa_public(numbers: RsaPublicNumbers) -> rsa.RSAPublicKey:
    if numbers.bits < 2048:
        raise CryptoError("RSA key shorter than 2048 bits")
    try:
        return rsa.RSAPublicNumbers(numbers.e, numbers.n).public_key()
    except ValueError as exc:
        raise CryptoError("invalid RSA public key") from exc


def _numbers_of(key: object) -> PublicKeyNumbers:
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return RsaPublicNumbers(n=nums.n, e=nums.e)
    if isinstance(key, ec.EllipticCurvePublicKey):
        pn = key.public_numbers()
        for name, (curve, _) in _CURVES.items():
            if curve.name == key.curve.name:
                return EccPublicPoint(curve=name, x=pn.x, y=pn.y)
        raise CryptoError(f"unsupported curve {key.curve.name}")
    raise CryptoError("unsupported public key type")


def check_public_key(key: PublicKeyNumbers) -> None:
    """Return None if ``key`` is a usable public key (point on curve, RSA >= 2048); raise if not."""
    if isinstance(key, EccPublicPoint):
        _ecc_public(key)
    else:
        _rsa_public(key)


# --- key derivation (TPM 2.0 Part 1, 11.4.10) ---------------------------------------------------
def _label(label: bytes) -> bytes:
    return label if label.endswith(b"\x00") else label + b"\x00"


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa with HMAC-SHA-256 (SP 800-108 counter mode as profiled by the TPM)."""
    if bits <= 0 or bits % 8:
        raise CryptoError("KDFa output size must be a positive multiple of 8 bits")
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        msg = (
            struct.pack(">I", counter)
            + _label(label)
            + context_u
            + context_v
            + struct.pack(">I", bits)
        )
        out += hmac.new(key, msg, hashlib.sha256).digest()
    return out[: bits // 8]


def kdfe(z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe with SHA-256 (SP 800-56A concatenation KDF as profiled by the TPM)."""
    if bits <= 0 or bits % 8:
        raise CryptoError("KDFe output size must be a positive multiple of 8 bits")
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        out += hashlib.sha256(
            struct.pack(">I", counter) + z + _label(label) + party_u + party_v
        ).digest()
    return out[: bits // 8]


# --- credential protection (TPM 2.0 Part 1, section 24) -----------------------------------------
def _b2(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _aes_cfb(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), _CFB(b"\x00" * 16))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _wrap_credential(seed: bytes, object_name: bytes, credential: bytes, sym_bits: int) -> bytes:
    """Return the TPM2B_ID_OBJECT contents: TPM2B_DIGEST(outer HMAC) || encrypted identity."""
    sym_key = kdfa(seed, b"STORAGE", object_name, b"", sym_bits)
    enc_identity = _aes_cfb(sym_key, _b2(credential), encrypt=True)
    hmac_key = kdfa(seed, b"INTEGRITY", b"", b"", SHA256_BYTES * 8)
    outer = hmac.new(hmac_key, enc_identity + object_name, hashlib.sha256).digest()
    return _b2(outer) + enc_identity


def _unwrap_credential(seed: bytes, object_name: bytes, blob: bytes, sym_bits: int) -> bytes:
    if len(blob) < 2:
        raise CryptoError("credential blob is truncated")
    (hlen,) = struct.unpack(">H", blob[:2])
    if hlen != SHA256_BYTES or len(blob) < 2 + hlen + 2:
        raise CryptoError("credential blob has a bad integrity field")
    outer, enc_identity = blob[2 : 2 + hlen], blob[2 + hlen :]
    hmac_key = kdfa(seed, b"INTEGRITY", b"", b"", SHA256_BYTES * 8)
    expected = hmac.new(hmac_key, enc_identity + object_name, hashlib.sha256).digest()
    if not hmac.compare_digest(outer, expected):
        raise CryptoError("credential integrity check failed (wrong EK or wrong object name)")
    sym_key = kdfa(seed, b"STORAGE", object_name, b"", sym_bits)
    plain = _aes_cfb(sym_key, enc_identity, encrypt=False)
    (clen,) = struct.unpack(">H", plain[:2])
    if clen != len(plain) - 2:
        raise CryptoError("credential has a bad length")
    return plain[2:]


@dataclass(frozen=True, slots=True)
class WrappedCredential:
    """Output of MakeCredential: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents."""

    credential_blob: bytes
    encrypted_secret: bytes


def make_credential_rsa(
    ek: RsaPublicNumbers,
    object_name: bytes,
    credential: bytes,
    seed: bytes,
    sym_bits: int = 128,
) -> WrappedCredential:
    """TPM2_MakeCredential for an RSA EK: the seed is RSA-OAEP(SHA-256, "IDENTITY") encrypted."""
    if len(seed) != SHA256_BYTES:
        raise CryptoError("credential seed must be 32 bytes")
    if not 1 <= len(credential) <= SHA256_BYTES:
        raise CryptoError("credential must be 1..32 bytes")
    key = _rsa_public(ek)
    secret = key.encrypt(
        seed,
        padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\x00"
        ),
    )
    return WrappedCredential(_wrap_credential(seed, object_name, credential, sym_bits), secret)


def make_credential_ecc(
    ek: EccPublicPoint,
    object_name: bytes,
    credential: bytes,
    ephemeral_entropy: bytes,
    sym_bits: int = 128,
) -> WrappedCredential:
    """TPM2_MakeCredential for an ECC EK: the seed is agreed with one-pass ECDH + KDFe.

    ``ephemeral_entropy`` (>= 40 unpredictable bytes) becomes the ephemeral ECDH scalar.
    """
    if not 1 <= len(credential) <= SHA256_BYTES:
        raise CryptoError("credential must be 1..32 bytes")
    curve, size = _CURVES.get(ek.curve, (None, 0))
    if curve is None:
        raise CryptoError(f"unsupported curve {ek.curve!r}")
    eph = ec.derive_private_key(_scalar_from(ephemeral_entropy, _ORDERS[ek.curve]), curve)
    z = eph.exchange(ec.ECDH(), _ecc_public(ek))
    ephn = eph.public_key().public_numbers()
    eph_x = ephn.x.to_bytes(size, "big")
    seed = kdfe(z, b"IDENTITY", eph_x, ek.x.to_bytes(size, "big"), SHA256_BYTES * 8)
    secret = _b2(eph_x) + _b2(ephn.y.to_bytes(size, "big"))
    return WrappedCredential(_wrap_credential(seed, object_name, credential, sym_bits), secret)


# --- signatures ---------------------------------------------------------------------------------
def verify_ecdsa_sha256(key: EccPublicPoint, r: int, s: int, message: bytes) -> None:
    """Return None if (r, s) is an ECDSA-SHA256 signature of ``message``; raise ``CryptoError``."""
    if r <= 0 or s <= 0:
        raise CryptoError("ECDSA signature has a zero component")
    try:
        _ecc_public(key).verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CryptoError("ECDSA signature does not verify") from exc


def verify_rsassa_sha256(key: RsaPublicNumbers, signature: bytes, message: bytes) -> None:
    """Return None if ``signature`` is RSASSA-PKCS1-v1_5/SHA-256 of ``message``; raise if not."""
    try:
        _rsa_public(key).verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise CryptoError("RSASSA signature does not verify") from exc


class EccP256Key:
    """An ECDSA/ECDH P-256 private key held in software (used by the software TPM only)."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    @classmethod
    def from_entropy(cls, entropy: bytes) -> EccP256Key:
        """Key from >= 40 bytes of entropy (e.g. ``rng.bytes(48)`` in a reproducible sim)."""
        return cls.from_scalar(_scalar_from(entropy, _ORDERS["P-256"]))

    @classmethod
    def from_scalar(cls, scalar: int) -> EccP256Key:
        """Key from a private scalar in [1, n-1] (derive it from an ``np.random.Generator``)."""
        try:
            return cls(ec.derive_private_key(scalar, ec.SECP256R1()))
        except ValueError as exc:
            raise CryptoError("P-256 private scalar out of range") from exc

    @property
    def public(self) -> EccPublicPoint:
        pn = self._key.public_key().public_numbers()
        return EccPublicPoint(curve="P-256", x=pn.x, y=pn.y)

    def sign_sha256(self, message: bytes) -> tuple[int, int]:
        """ECDSA-SHA256 over ``message``; returns (r, s)."""
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        return decode_dss_signature(der)

    def sign_digest(self, digest: bytes) -> tuple[int, int]:
        """ECDSA over a precomputed SHA-256 digest; returns (r, s)."""
        der = self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return decode_dss_signature(der)

    def activate_credential(
        self,
        object_name: bytes,
        credential_blob: bytes,
        encrypted_secret: bytes,
        sym_bits: int = 128,
    ) -> bytes:
        """The device half of MakeCredential for this key used as an ECC EK."""
        pos = 0
        coords: list[int] = []
        for _ in range(2):
            if len(encrypted_secret) < pos + 2:
                raise CryptoError("encrypted secret is truncated")
            (n,) = struct.unpack(">H", encrypted_secret[pos : pos + 2])
            if n != P256_COORD_BYTES or len(encrypted_secret) < pos + 2 + n:
                raise CryptoError("encrypted secret has a bad point")
            coords.append(int.from_bytes(encrypted_secret[pos + 2 : pos + 2 + n], "big"))
            pos += 2 + n
        if pos != len(encrypted_secret):
            raise CryptoError("encrypted secret has trailing bytes")
        peer = _ecc_public(EccPublicPoint("P-256", coords[0], coords[1]))
        z = self._key.exchange(ec.ECDH(), peer)
        size = P256_COORD_BYTES
        seed = kdfe(
            z,
            b"IDENTITY",
            coords[0].to_bytes(size, "big"),
            self.public.x.to_bytes(size, "big"),
            SHA256_BYTES * 8,
        )
        return _unwrap_credential(seed, object_name, credential_blob, sym_bits)


# --- X.509 (EK certificates and manufacturer CAs) -----------------------------------------------
@dataclass(frozen=True, slots=True)
class Certificate:
    """A parsed X.509 certificate (DER kept; parse with ``Certificate.load``)."""

    der: bytes
    subject: str
    issuer: str
    not_before: float
    not_after: float
    is_ca: bool
    public_key: PublicKeyNumbers
    ek_usage: bool

    @classmethod
    def load(cls, data: bytes) -> Certificate:
        """Parse a DER or PEM certificate; raise ``CryptoError`` on anything malformed."""
        if not isinstance(data, bytes) or not data:
            raise CryptoError("certificate is empty")
        if len(data) > _MAX_CERT_BYTES:
            raise CryptoError("certificate is too large")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
            der = cert.public_bytes(serialization.Encoding.DER)
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
                is_ca = bool(bc.ca)
            except x509.ExtensionNotFound:
                is_ca = False
            try:
                eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                ek_usage = any(o.dotted_string == TCG_KP_EK_CERTIFICATE for o in eku)
            except x509.ExtensionNotFound:
                ek_usage = False
            pub = _numbers_of(cert.public_key())
            return cls(
                der=der,
                subject=cert.subject.rfc4514_string(),
                issuer=cert.issuer.rfc4514_string(),
                not_before=cert.not_valid_before_utc.timestamp(),
                not_after=cert.not_valid_after_utc.timestamp(),
                is_ca=is_ca,
                public_key=pub,
                ek_usage=ek_usage,
            )
        except CryptoError:
            raise
        except (ValueError, TypeError) as exc:
            raise CryptoError("certificate is not valid DER/PEM X.509") from exc

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the DER encoding."""
        return hashlib.sha256(self.der).hexdigest()

    def _x509(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)


def load_certificates(data: bytes) -> list[Certificate]:
    """Parse every certificate of a PEM bundle (or one DER certificate)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise CryptoError("not a PEM certificate bundle") from exc
        return [Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in certs]
    return [Certificate.load(data)]


def verify_certificate_chain(
    leaf: Certificate,
    intermediates: Sequence[Certificate],
    roots: Sequence[Certificate],
    now: float,
    max_depth: int = 4,
) -> Certificate:
    """Check ``leaf`` chains to one of ``roots`` at time ``now``; return the root; raise if not.

    Each link is checked by name, by signature (``verify_directly_issued_by``), by validity at
    ``now``, and the issuer must be a CA. Roots are trusted by exact DER match.
    """
    if not roots:
        raise CryptoError("no trusted roots configured")
    root_ders = {r.der: r for r in roots}
    pool = list(intermediates) + list(roots)
    current = leaf
    for _ in range(max_depth + 1):
        if not current.not_before <= now <= current.not_after:
            raise CryptoError(f"certificate {current.subject!r} is not valid at this time")
        if current.der in root_ders:
            return root_ders[current.der]
        issuer = _find_issuer(current, pool)
        if issuer is None:
            raise CryptoError(f"certificate {current.subject!r} does not chain to a trusted root")
        current = issuer
    raise CryptoError("certificate chain is too long")


def _find_issuer(cert: Certificate, pool: Sequence[Certificate]) -> Certificate | None:
    child = cert._x509()
    for cand in pool:
        if cand.der == cert.der or cand.subject != cert.issuer or not cand.is_ca:
            continue
        try:
            child.verify_directly_issued_by(cand._x509())
        except (ValueError, TypeError, InvalidSignature):
            continue
        return cand
    return None


class SoftManufacturerCa:
    """A software "TPM manufacturer" CA that issues EK certificates to software TPMs.

    Not hardware-backed and not a real manufacturer: for simulations and tests only.
    """

    __slots__ = ("_cert", "_key", "_serial")

    def __init__(self, key: EccP256Key, name: str, now: float, ttl_s: float) -> None:
        self._key = key
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = _dt.datetime.fromtimestamp(now - 60, tz=_dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key._key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + _dt.timedelta(seconds=ttl_s))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .sign(key._key, hashes.SHA256())
        )
        self._cert = Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        self._serial = 1

    @property
    def certificate(self) -> Certificate:
        return self._cert

    def issue_ek_certificate(
        self, ek: EccPublicPoint, device_label: str, now: float, ttl_s: float
    ) -> bytes:
        """Issue a DER EK certificate for ``ek`` (EKU tcg-kp-EKCertificate, key agreement)."""
        self._serial += 1
        start = _dt.datetime.fromtimestamp(now - 60, tz=_dt.UTC)
        ca = self._cert._x509()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_label)]))
            .issuer_name(ca.subject)
            .public_key(_ecc_public(ek))
            .serial_number(self._serial)
            .not_valid_before(start)
            .not_valid_after(start + _dt.timedelta(seconds=ttl_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.ObjectIdentifier(TCG_KP_EK_CERTIFICATE)]),
                critical=False,
            )
            .sign(self._key._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)


__all__ = [
    "TCG_KP_EK_CERTIFICATE",
    "Certificate",
    "EccP256Key",
    "EccPublicPoint",
    "PublicKeyNumbers",
    "RsaPublicNumbers",
    "SoftManufacturerCa",
    "WrappedCredential",
    "check_public_key",
    "kdfa",
    "kdfe",
    "load_certificates",
    "make_credential_ecc",
    "make_credential_rsa",
    "verify_certificate_chain",
    "verify_ecdsa_sha256",
    "verify_rsassa_sha256",
]
