"""Device side of attestation: the ``TpmBackend`` plug point and the measuring agent.

``Tpm`` (tpm2-pytss, real TPM or swtpm) and ``SoftTpm`` (pure software) both implement
``TpmBackend``; ``AttestingDevice`` measures firmware and model bundles into PCR 8 and 9,
keeps the measurement log, answers enrolment challenges and produces quotes.
"""

from __future__ import annotations

from typing import Protocol

from ztfm.attestation.evidence import (
    PCR_FIRMWARE,
    PCR_MODEL,
    CredentialChallenge,
    EnrolmentRequest,
    KeyCertification,
    Measurement,
    QuoteEvidence,
)
from ztfm.attestation.nonce import NONCE_BYTES
from ztfm.attestation.structures import PcrSelection
from ztfm.errors import AttestationError

#: What every quote covers.
QUOTE_PCRS = PcrSelection((PCR_FIRMWARE, PCR_MODEL))


class TpmBackend(Protocol):
    """The TPM operations attestation needs (hardware TPM, swtpm or SoftTpm)."""

    @property
    def hardware_backed(self) -> bool: ...

    def ek_certificate(self) -> bytes: ...

    def ek_public(self) -> bytes: ...

    def ak_public(self) -> bytes: ...

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes: ...

    def extend_pcr(self, pcr: int, digest: bytes) -> None: ...

    def read_pcrs(self, selection: PcrSelection) -> dict[int, bytes]: ...

    def quote(self, nonce: bytes, selection: PcrSelection) -> tuple[bytes, bytes]: ...


class TpmSigningBackend(TpmBackend, Protocol):
    """A TPM that also holds a request-signing key (unrestricted ECDSA-P256, fixedTPM)."""

    def signing_key_public(self) -> bytes: ...

    def certify_signing_key(self, nonce: bytes) -> tuple[bytes, bytes]: ...

    def sign(self, message: bytes) -> bytes: ...


class AttestingDevice:
    """Measures firmware and models into the TPM and answers the verifier.

    The log is kept in memory since boot (the PCRs reset with the TPM); a device agent that
    restarts without a TPM reset must measure again from a fresh TPM boot.
    """

    __slots__ = ("_log", "tpm")

    def __init__(self, tpm: TpmBackend) -> None:
        self.tpm = tpm
        self._log: list[Measurement] = []

    @property
    def log(self) -> tuple[Measurement, ...]:
        return tuple(self._log)

    def tpm_was_reset(self) -> None:
        """Forget the log after a TPM reset (power cycle): PCRs are zero again; measure anew."""
        self._log.clear()

    def measure_firmware(self, image_digest: bytes, label: str = "firmware") -> None:
        """Extend the firmware image digest into PCR 8 (once per boot)."""
        if any(m.pcr == PCR_FIRMWARE for m in self._log):
            raise AttestationError("firmware was already measured since boot")
        self._measure(Measurement(PCR_FIRMWARE, image_digest, label))

    def measure_model(self, bundle_digest: bytes, label: str = "model") -> None:
        """Extend a loaded model bundle's digest into PCR 9 (every load)."""
        self._measure(Measurement(PCR_MODEL, bundle_digest, label))

    def _measure(self, m: Measurement) -> None:
        self.tpm.extend_pcr(m.pcr, m.digest)
        self._log.append(m)

    def enrolment_request(self) -> EnrolmentRequest:
        tpm = self.tpm
        return EnrolmentRequest(tpm.ek_certificate(), tpm.ek_public(), tpm.ak_public())

    def activate(self, challenge: CredentialChallenge) -> bytes:
        """Run ActivateCredential; return the secret to send back to the verifier."""
        return self.tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)

    def certify_request_key(self, nonce: bytes) -> KeyCertification:
        """Have the AK certify the TPM-resident request-signing key (TPM2_Certify)."""
        tpm = self._signer()
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise AttestationError(f"nonce must be {NONCE_BYTES} bytes")
        attest, signature = tpm.certify_signing_key(nonce)
        return KeyCertification(tpm.signing_key_public(), attest, signature)

    def sign_request(self, message: bytes) -> bytes:
        """Sign with the TPM-resident request key; returns a TPMT_SIGNATURE (ECDSA-SHA256)."""
        return self._signer().sign(message)

    def _signer(self) -> TpmSigningBackend:
        tpm = self.tpm
        if not all(hasattr(tpm, m) for m in ("signing_key_public", "certify_signing_key", "sign")):
            raise AttestationError("this TPM backend has no request-signing key")
        return tpm  # type: ignore[return-value]

    def quote(self, nonce: bytes) -> QuoteEvidence:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise AttestationError(f"nonce must be {NONCE_BYTES} bytes")
        attest, signature = self.tpm.quote(nonce, QUOTE_PCRS)
        return QuoteEvidence(attest, signature, tuple(self._log))
