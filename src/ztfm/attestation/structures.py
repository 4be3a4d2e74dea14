"""TPM 2.0 wire structures needed by the verifier, parsed and built in pure Python.

Only the subset attestation needs: TPMT_PUBLIC (EK and AK), TPMS_ATTEST of a quote,
TPMT_SIGNATURE (ECDSA and RSASSA with SHA-256) and TPML_PCR_SELECTION. Every parser checks
lengths, rejects trailing bytes and unsupported algorithms, so an object that exists is valid.
References: TPM 2.0 Library, Part 2 (Structures).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ztfm.crypto.tpm import EccPublicPoint, PublicKeyNumbers, RsaPublicNumbers
from ztfm.errors import AttestationError

# TPM_ALG_ID
ALG_RSA = 0x0001
ALG_SHA256 = 0x000B
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_ECDSA = 0x0018
ALG_ECC = 0x0023
ALG_AES = 0x0006
ALG_CFB = 0x0043
# TPM_ECC_CURVE
ECC_NIST_P256 = 0x0003
ECC_NIST_P384 = 0x0004
_CURVE_NAMES = {ECC_NIST_P256: "P-256", ECC_NIST_P384: "P-384"}
_CURVE_IDS = {v: k for k, v in _CURVE_NAMES.items()}
# TPM_GENERATED / TPM_ST
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ST_ATTEST_CERTIFY = 0x8017
# TPM_RH
TPM_RH_ENDORSEMENT = 0x4000000B
# TPMA_OBJECT bits
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
ADMIN_WITH_POLICY = 1 << 7
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN_ENCRYPT = 1 << 18

MAX_PCR = 23
_MAX_STRUCT = 4096


class _Reader:
    """A bounds-checked big-endian reader; every error is an ``AttestationError``."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        if not isinstance(buf, bytes | bytearray):
            raise AttestationError(f"{what} must be bytes")
        if len(buf) > _MAX_STRUCT:
            raise AttestationError(f"{what} is too large")
        self.buf = bytes(buf)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise AttestationError(f"{self.what} is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def b2(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise AttestationError(f"{self.what} has trailing bytes")


def _b2(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


# --- PCR selection --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PcrSelection:
    """A set of PCR indices of the SHA-256 bank (the only bank ztfm quotes)."""

    pcrs: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.pcrs:
            raise AttestationError("PCR selection is empty")
        if list(self.pcrs) != sorted(set(self.pcrs)):
            raise AttestationError("PCR selection must be sorted and unique")
        if any(not 0 <= p <= MAX_PCR for p in self.pcrs):
            raise AttestationError("PCR index out of range")

    def to_bytes(self) -> bytes:
        """TPML_PCR_SELECTION with one TPMS_PCR_SELECTION (sha256, 3-byte bitmap)."""
        bitmap = bytearray(3)
        for p in self.pcrs:
            bitmap[p // 8] |= 1 << (p % 8)
        return struct.pack(">IHB", 1, ALG_SHA256, 3) + bytes(bitmap)

    @classmethod
    def read(cls, r: _Reader) -> PcrSelection:
        count = r.u32()
        if count != 1:
            raise AttestationError("quote must select exactly one PCR bank")
        if r.u16() != ALG_SHA256:
            raise AttestationError("quote must use the SHA-256 PCR bank")
        size = r.u8()
        if not 1 <= size <= 4:
            raise AttestationError("PCR bitmap has a bad size")
        bitmap = r.take(size)
        pcrs = tuple(i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1)
        return cls(pcrs)

    def __str__(self) -> str:
        return "sha256:" + ",".join(str(p) for p in self.pcrs)


# --- TPMT_PUBLIC ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC (RSA or ECC, SHA-256 name algorithm) and its raw bytes."""

    raw: bytes
    key_type: int
    attributes: int
    auth_policy: bytes
    symmetric: tuple[int, int, int]  # (alg, key bits, mode) or (NULL, 0, 0)
    scheme: tuple[int, int]  # (scheme, hash) or (NULL, 0)
    key: PublicKeyNumbers

    @classmethod
    def from_bytes(cls, data: bytes) -> TpmPublic:
        """Parse TPMT_PUBLIC bytes (no outer TPM2B size)."""
        r = _Reader(data, "TPMT_PUBLIC")
        key_type = r.u16()
        if r.u16() != ALG_SHA256:
            raise AttestationError("key name algorithm must be SHA-256")
        attributes = r.u32()
        auth_policy = r.b2()
        if len(auth_policy) not in (0, 32):
            raise AttestationError("key auth policy has a bad size")
        sym_alg = r.u16()
        symmetric = (sym_alg, 0, 0) if sym_alg == ALG_NULL else (sym_alg, r.u16(), r.u16())
        scheme_alg = r.u16()
        scheme = (scheme_alg, 0) if scheme_alg == ALG_NULL else (scheme_alg, r.u16())
        key: PublicKeyNumbers
        if key_type == ALG_RSA:
            bits = r.u16()
            exponent = r.u32() or 65537
            modulus = r.b2()
            if bits < 2048 or len(modulus) * 8 != bits:
                raise AttestationError("RSA key size is unsupported or inconsistent")
            key = RsaPublicNumbers(n=int.from_bytes(modulus, "big"), e=exponent)
        elif key_type == ALG_ECC:
            curve = r.u16()
            if curve not in _CURVE_NAMES:
                raise AttestationError("ECC curve is unsupported")
            if r.u16() != ALG_NULL:
                raise AttestationError("ECC key KDF must be NULL")
            x, y = r.b2(), r.b2()
            size = 32 if curve == ECC_NIST_P256 else 48
            if len(x) != size or len(y) != size:
                raise AttestationError("ECC point has a bad size")
            key = EccPublicPoint(
                _CURVE_NAMES[curve], int.from_bytes(x, "big"), int.from_bytes(y, "big")
            )
        else:
            raise AttestationError("key type must be RSA or ECC")
        r.end()
        return cls(bytes(data), key_type, attributes, auth_policy, symmetric, scheme, key)

    @property
    def name(self) -> bytes:
        """The TPM name: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC)."""
        return struct.pack(">H", ALG_SHA256) + hashlib.sha256(self.raw).digest()

    def has(self, bits: int) -> bool:
        return self.attributes & bits == bits

    def check_attestation_key(self) -> None:
        """Raise unless this is a TPM-resident restricted signing key (an AK)."""
        need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN_ENCRYPT
        if not self.has(need):
            raise AttestationError(
                "AK must be fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign"
            )
        if self.has(DECRYPT):
            raise AttestationError("AK must not be a decryption key")
        if self.key_type == ALG_ECC:
            assert isinstance(self.key, EccPublicPoint)
            if self.key.curve != "P-256" or self.scheme != (ALG_ECDSA, ALG_SHA256):
                raise AttestationError("ECC AK must be P-256 with ECDSA-SHA256")
        elif self.scheme != (ALG_RSASSA, ALG_SHA256):
            raise AttestationError("RSA AK must use RSASSA-SHA256")

    def check_request_key(self) -> None:
        """Raise unless this is a TPM-resident, unrestricted ECDSA-P256/SHA-256 signing key."""
        need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | SIGN_ENCRYPT
        if not self.has(need):
            raise AttestationError("request key must be fixedTPM, sensitiveDataOrigin, sign")
        if self.has(DECRYPT) or self.has(RESTRICTED):
            raise AttestationError("request key must be an unrestricted signing-only key")
        if not isinstance(self.key, EccPublicPoint) or self.key.curve != "P-256":
            raise AttestationError("request key must be ECC P-256")
        if self.scheme != (ALG_ECDSA, ALG_SHA256):
            raise AttestationError("request key must use ECDSA-SHA256")

    def check_endorsement_key(self) -> None:
        """Raise unless this is a restricted decryption key with AES-128-CFB (an EK)."""
        need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | DECRYPT
        if not self.has(need):
            raise AttestationError("EK must be fixedTPM, restricted, decrypt")
        if self.has(SIGN_ENCRYPT):
            raise AttestationError("EK must not be a signing key")
        if self.symmetric != (ALG_AES, 128, ALG_CFB):
            raise AttestationError("EK symmetric scheme must be AES-128-CFB")

    @staticmethod
    def build_ecc(
        point: EccPublicPoint,
        attributes: int,
        *,
        symmetric: tuple[int, int, int] = (ALG_NULL, 0, 0),
        scheme: tuple[int, int] = (ALG_NULL, 0),
        auth_policy: bytes = b"",
    ) -> TpmPublic:
        """Marshal an ECC TPMT_PUBLIC (used by the software TPM)."""
        size = point.coord_bytes
        out = struct.pack(">HHI", ALG_ECC, ALG_SHA256, attributes) + _b2(auth_policy)
        out += struct.pack(">H", symmetric[0])
        if symmetric[0] != ALG_NULL:
            out += struct.pack(">HH", symmetric[1], symmetric[2])
        out += struct.pack(">H", scheme[0])
        if scheme[0] != ALG_NULL:
            out += struct.pack(">H", scheme[1])
        out += struct.pack(">HH", _CURVE_IDS[point.curve], ALG_NULL)
        out += _b2(point.x.to_bytes(size, "big")) + _b2(point.y.to_bytes(size, "big"))
        return TpmPublic.from_bytes(out)


def qualified_name_in_endorsement(name: bytes) -> bytes:
    """Qualified name of a primary object of the endorsement hierarchy."""
    return (
        struct.pack(">H", ALG_SHA256)
        + hashlib.sha256(struct.pack(">I", TPM_RH_ENDORSEMENT) + name).digest()
    )


# --- TPMS_ATTEST (quote) --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE."""

    raw: bytes
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selection: PcrSelection
    pcr_digest: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteInfo:
        r = _Reader(data, "TPMS_ATTEST")
        if r.u32() != TPM_GENERATED_VALUE:
            raise AttestationError("attestation magic is not TPM_GENERATED_VALUE")
        if r.u16() != TPM_ST_ATTEST_QUOTE:
            raise AttestationError("attestation type is not a quote")
        signer = r.b2()
        extra = r.b2()
        clock, reset, restart, safe = r.u64(), r.u32(), r.u32(), r.u8()
        if safe not in (0, 1):
            raise AttestationError("attestation clock 'safe' flag is not boolean")
        fw = r.u64()
        selection = PcrSelection.read(r)
        digest = r.b2()
        if len(digest) != 32:
            raise AttestationError("quote PCR digest must be SHA-256")
        r.end()
        return cls(bytes(data), signer, extra, clock, reset, restart, safe == 1, fw, selection,
                   digest)  # fmt: skip

    @staticmethod
    def build(
        *,
        qualified_signer: bytes,
        extra_data: bytes,
        clock: int,
        reset_count: int,
        restart_count: int,
        firmware_version: int,
        selection: PcrSelection,
        pcr_digest: bytes,
    ) -> bytes:
        """Marshal a TPMS_ATTEST quote exactly as a TPM does (used by the software TPM)."""
        return (
            struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)
            + _b2(qualified_signer)
            + _b2(extra_data)
            + struct.pack(">QIIB", clock, reset_count, restart_count, 1)
            + struct.pack(">Q", firmware_version)
            + selection.to_bytes()
            + _b2(pcr_digest)
        )


@dataclass(frozen=True, slots=True)
class CertifyInfo:
    """A parsed TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY (TPM2_Certify of a loaded object)."""

    raw: bytes
    qualified_signer: bytes
    extra_data: bytes
    name: bytes
    qualified_name: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> CertifyInfo:
        r = _Reader(data, "TPMS_ATTEST")
        if r.u32() != TPM_GENERATED_VALUE:
            raise AttestationError("attestation magic is not TPM_GENERATED_VALUE")
        if r.u16() != TPM_ST_ATTEST_CERTIFY:
            raise AttestationError("attestation type is not a certification")
        signer, extra = r.b2(), r.b2()
        r.take(8 + 4 + 4 + 1 + 8)  # clockInfo, firmwareVersion
        name, qname = r.b2(), r.b2()
        r.end()
        return cls(bytes(data), signer, extra, name, qname)

    @staticmethod
    def build(*, qualified_signer: bytes, extra_data: bytes, name: bytes, qualified_name: bytes,
              clock: int) -> bytes:  # fmt: skip
        """Marshal a TPMS_ATTEST certification exactly as a TPM does (software TPM)."""
        return (
            struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY)
            + _b2(qualified_signer)
            + _b2(extra_data)
            + struct.pack(">QIIBQ", clock, 0, 0, 1, 0x5A54464D)
            + _b2(name)
            + _b2(qualified_name)
        )


# --- TPMT_SIGNATURE -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TpmSignature:
    """A parsed TPMT_SIGNATURE: ECDSA (r, s) or RSASSA bytes, always with SHA-256."""

    alg: int
    r: int
    s: int
    rsa_sig: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> TpmSignature:
        r = _Reader(data, "TPMT_SIGNATURE")
        alg = r.u16()
        if r.u16() != ALG_SHA256:
            raise AttestationError("signature hash must be SHA-256")
        if alg == ALG_ECDSA:
            sr, ss = r.b2(), r.b2()
            if not 1 <= len(sr) <= 48 or not 1 <= len(ss) <= 48:
                raise AttestationError("ECDSA signature has a bad size")
            r.end()
            return cls(alg, int.from_bytes(sr, "big"), int.from_bytes(ss, "big"), b"")
        if alg == ALG_RSASSA:
            sig = r.b2()
            if len(sig) < 256:
                raise AttestationError("RSASSA signature is too short")
            r.end()
            return cls(alg, 0, 0, sig)
        raise AttestationError("signature algorithm must be ECDSA or RSASSA")

    @staticmethod
    def build_ecdsa(r: int, s: int) -> bytes:
        return (
            struct.pack(">HH", ALG_ECDSA, ALG_SHA256)
            + _b2(r.to_bytes(32, "big"))
            + _b2(s.to_bytes(32, "big"))
        )


# --- PCR arithmetic -------------------------------------------------------------------------------
def extend(pcr: bytes, digest: bytes) -> bytes:
    """PCR_new = SHA-256(PCR_old || digest)."""
    if len(pcr) != 32 or len(digest) != 32:
        raise AttestationError("PCR extend needs 32-byte SHA-256 values")
    return hashlib.sha256(pcr + digest).digest()


def replay(digests: list[bytes] | tuple[bytes, ...], start: bytes = b"\x00" * 32) -> bytes:
    """The PCR value after extending ``digests`` in order into a PCR that held ``start``."""
    value = start
    for d in digests:
        value = extend(value, d)
    return value


def composite_digest(values: list[bytes] | tuple[bytes, ...]) -> bytes:
    """The quote's pcrDigest: SHA-256 over the selected PCR values in index order."""
    return hashlib.sha256(b"".join(values)).digest()
