"""Evidence values exchanged between a device and the verifier, with strict parsing.

``to_dict``/``from_dict`` give a JSON-safe form (hex strings) used for recorded test vectors and
by the wire codec; ``from_dict`` checks types, sizes and hex before anything else looks at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ztfm.errors import AttestationError

#: PCR that holds the firmware image measurement (SHA-256 bank).
PCR_FIRMWARE = 8
#: PCR that holds the measurements of every model bundle loaded since boot (SHA-256 bank).
PCR_MODEL = 9
MEASURED_PCRS = (PCR_FIRMWARE, PCR_MODEL)

MAX_LOG_EVENTS = 256
MAX_LABEL_CHARS = 128
_MAX_BLOB = 4096


def _hex(value: object, what: str, *, size: int | None = None, max_size: int = _MAX_BLOB) -> bytes:
    if not isinstance(value, str):
        raise AttestationError(f"{what} must be a hex string")
    if len(value) > 2 * max_size:
        raise AttestationError(f"{what} is too large")
    try:
        out = bytes.fromhex(value)
    except ValueError as exc:
        raise AttestationError(f"{what} is not valid hex") from exc
    if size is not None and len(out) != size:
        raise AttestationError(f"{what} must be {size} bytes")
    return out


def _field(data: Mapping[str, Any], key: str, what: str) -> Any:
    if not isinstance(data, Mapping):
        raise AttestationError(f"{what} must be a mapping")
    if key not in data:
        raise AttestationError(f"{what} is missing field {key!r}")
    return data[key]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement-log event: ``digest`` (SHA-256) was extended into ``pcr``.

    ``label`` is informational only (never trusted): the verifier decides from the digest.
    """

    pcr: int
    digest: bytes
    label: str = ""

    def __post_init__(self) -> None:
        if self.pcr not in MEASURED_PCRS:
            raise AttestationError(f"measurement PCR must be one of {MEASURED_PCRS}")
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise AttestationError("measurement digest must be 32 bytes (SHA-256)")
        if not isinstance(self.label, str) or len(self.label) > MAX_LABEL_CHARS:
            raise AttestationError("measurement label is too long")

    def to_dict(self) -> dict[str, Any]:
        return {"pcr": self.pcr, "digest": self.digest.hex(), "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        pcr = _field(data, "pcr", "measurement")
        if not isinstance(pcr, int) or isinstance(pcr, bool):
            raise AttestationError("measurement PCR must be an integer")
        label = data.get("label", "")
        return cls(pcr, _hex(_field(data, "digest", "measurement"), "digest", size=32), label)


@dataclass(frozen=True, slots=True)
class QuoteEvidence:
    """A TPM quote (TPMS_ATTEST + TPMT_SIGNATURE) and the measurement log it covers."""

    attest: bytes
    signature: bytes
    log: tuple[Measurement, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.attest, bytes) or not 0 < len(self.attest) <= _MAX_BLOB:
            raise AttestationError("quote attest must be 1..4096 bytes")
        if not isinstance(self.signature, bytes) or not 0 < len(self.signature) <= _MAX_BLOB:
            raise AttestationError("quote signature must be 1..4096 bytes")
        if len(self.log) > MAX_LOG_EVENTS:
            raise AttestationError(f"measurement log has more than {MAX_LOG_EVENTS} events")
        if not all(isinstance(m, Measurement) for m in self.log):
            raise AttestationError("measurement log holds a non-measurement")

    def to_dict(self) -> dict[str, Any]:
        return {
            "attest": self.attest.hex(),
            "signature": self.signature.hex(),
            "log": [m.to_dict() for m in self.log],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuoteEvidence:
        log = _field(data, "log", "quote")
        if not isinstance(log, list) or len(log) > MAX_LOG_EVENTS:
            raise AttestationError(f"measurement log must be a list of <= {MAX_LOG_EVENTS}")
        return cls(
            _hex(_field(data, "attest", "quote"), "attest"),
            _hex(_field(data, "signature", "quote"), "signature"),
            tuple(Measurement.from_dict(m) for m in log),
        )


@dataclass(frozen=True, slots=True)
class EnrolmentRequest:
    """What a device presents to enrol: EK certificate, EK public and AK public (TPMT_PUBLIC)."""

    ek_certificate: bytes
    ek_public: bytes
    ak_public: bytes

    def __post_init__(self) -> None:
        for name in ("ek_certificate", "ek_public", "ak_public"):
            v = getattr(self, name)
            if not isinstance(v, bytes) or not 0 < len(v) <= _MAX_BLOB:
                raise AttestationError(f"{name} must be 1..4096 bytes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ek_certificate": self.ek_certificate.hex(),
            "ek_public": self.ek_public.hex(),
            "ak_public": self.ak_public.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnrolmentRequest:
        return cls(
            _hex(_field(data, "ek_certificate", "enrolment"), "ek_certificate"),
            _hex(_field(data, "ek_public", "enrolment"), "ek_public"),
            _hex(_field(data, "ak_public", "enrolment"), "ak_public"),
        )


@dataclass(frozen=True, slots=True)
class CredentialChallenge:
    """MakeCredential output sent to the device (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) and
    the enrolment nonce for the device's first quote."""

    credential_blob: bytes
    encrypted_secret: bytes
    nonce: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {
            "credential_blob": self.credential_blob.hex(),
            "encrypted_secret": self.encrypted_secret.hex(),
            "nonce": self.nonce.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CredentialChallenge:
        return cls(
            _hex(_field(data, "credential_blob", "challenge"), "credential_blob", max_size=512),
            _hex(_field(data, "encrypted_secret", "challenge"), "encrypted_secret", max_size=512),
            _hex(data.get("nonce", ""), "nonce", max_size=64),
        )


@dataclass(frozen=True, slots=True)
class KeyCertification:
    """A TPM-resident request-signing key (TPMT_PUBLIC) certified by the AK with TPM2_Certify."""

    key_public: bytes
    attest: bytes
    signature: bytes

    def __post_init__(self) -> None:
        for name in ("key_public", "attest", "signature"):
            v = getattr(self, name)
            if not isinstance(v, bytes) or not 0 < len(v) <= _MAX_BLOB:
                raise AttestationError(f"{name} must be 1..4096 bytes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_public": self.key_public.hex(),
            "attest": self.attest.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyCertification:
        return cls(
            _hex(_field(data, "key_public", "key certification"), "key_public"),
            _hex(_field(data, "attest", "key certification"), "attest"),
            _hex(_field(data, "signature", "key certification"), "signature"),
        )
