"""Device side of attestation: the ``TpmBackend`` plug point and the measuring agent.

``Tpm`` (tpm2-pytss, real TPM or swtpm) and ``SoftTpm`` (pure software) both implement
``TpmBackend``; ``AttestingDevice`` measures firmware and model bundles into PCR 8 and 9,
keeps the measurement log, answers enrolment challenges and produces quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from ztfm.attestation.structures import PcrSelection, replay
from ztfm.errors import AttestationError

#: What every quote covers.
QUOTE_PCRS = PcrSelection((PCR_FIRMWARE, PCR_MODEL))
_PCR_RESET_VALUE = b"\x00" * 32

#: Called with the log *including* a measurement about to be extended (write-ahead).
MeasurementJournal = Callable[[tuple[Measurement, ...]], None]


@dataclass(frozen=True, slots=True)
class BootCounts:
    """TPMS_CLOCK_INFO ``resetCount`` / ``restartCount``: which TPM boot the PCRs belong to.

    ``reset_count`` goes up on every TPM Reset (power cycle, Startup(CLEAR) without a saved
    state), which zeroes the PCRs; ``restart_count`` on TPM Restart/Resume (a resume from
    suspend keeps the PCRs)."""

    reset_count: int
    restart_count: int


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

    def boot_counts(self) -> BootCounts: ...


class TpmSigningBackend(TpmBackend, Protocol):
    """A TPM that also holds a request-signing key (unrestricted ECDSA-P256, fixedTPM)."""

    def signing_key_public(self) -> bytes: ...

    def certify_signing_key(self, nonce: bytes) -> tuple[bytes, bytes]: ...

    def sign(self, message: bytes) -> bytes: ...


class AttestingDevice:
    """Measures firmware and models into the TPM and answers the verifier.

    The log covers the TPM's PCRs since its last reset. An agent that restarts while the TPM
    keeps its PCRs (a hardware TPM, no reboot) continues from its saved log with ``resume``;
    ``journal`` (optional) is called with the log plus each new measurement *before* it is
    extended, so a saved log is never behind the PCRs by more than the last, unextended, event.
    """

    __slots__ = ("_journal", "_log", "tpm")

    def __init__(self, tpm: TpmBackend, *, journal: MeasurementJournal | None = None) -> None:
        self.tpm = tpm
        self._log: list[Measurement] = []
        self._journal = journal

    @staticmethod
    def pcrs_at_reset(tpm: TpmBackend) -> bool:
        """Are the measured PCRs (8, 9) at their reset value (all zero), i.e. unmeasured?"""
        values = tpm.read_pcrs(QUOTE_PCRS)
        return all(values[p] == _PCR_RESET_VALUE for p in QUOTE_PCRS.pcrs)

    @classmethod
    def resume(
        cls,
        tpm: TpmBackend,
        log: Sequence[Measurement],
        *,
        journal: MeasurementJournal | None = None,
    ) -> AttestingDevice:
        """Continue with ``log``, made since the TPM's last reset by an earlier agent.

        Accepted only if it replays exactly to the PCR values read from the TPM, or does so
        without its last event (written ahead, then the agent stopped before extending it:
        that event is dropped). Raises ``AttestationError`` otherwise: something this log
        does not account for extended the PCRs.
        """
        values = tpm.read_pcrs(QUOTE_PCRS)

        def replays(events: Sequence[Measurement]) -> bool:
            return all(
                replay([m.digest for m in events if m.pcr == p]) == values[p]
                for p in QUOTE_PCRS.pcrs
            )

        events = list(log)
        if not replays(events):
            if not events or not replays(events[:-1]):
                raise AttestationError("the saved measurement log does not replay to the PCRs")
            events.pop()
        device = cls(tpm, journal=journal)
        device._log = events
        return device

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
        if self._journal is not None:
            self._journal((*self._log, m))
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
