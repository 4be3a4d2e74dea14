"""TPM 2.0 attestation (layer 2): enrolment of EK/AK, measured firmware and model, quotes.

Verifier side (pure, takes ``now``): ``AttestationVerifier``, ``ReferenceValues``,
``AttestationVerdict``. Device side: ``AttestingDevice`` over a ``TpmBackend`` — ``Tpm``
(tpm2-pytss: hardware TPM or swtpm, in ``ztfm.attestation.tpm``) or ``SoftTpm`` (software,
NOT hardware-backed, for large simulations). ``ztfm.attestation.swtpm`` provisions and runs
swtpm processes. See docs/attestation.md.
"""

from ztfm.attestation.device import (
    QUOTE_PCRS,
    AttestingDevice,
    BootCounts,
    MeasurementJournal,
    TpmBackend,
    TpmSigningBackend,
)
from ztfm.attestation.evidence import (
    PCR_FIRMWARE,
    PCR_MODEL,
    CredentialChallenge,
    EnrolmentRequest,
    KeyCertification,
    Measurement,
    QuoteEvidence,
)
from ztfm.attestation.nonce import NonceBook, NonceSource, SystemNonceSource, UnsafeRngNonceSource
from ztfm.attestation.reference import ReferenceValues
from ztfm.attestation.soft import SoftManufacturer, SoftTpm
from ztfm.attestation.verifier import (
    AttestationVerdict,
    AttestationVerifier,
    EnrolledDevice,
    QuoteRejected,
    TpmRequestKey,
)

__all__ = [
    "PCR_FIRMWARE",
    "PCR_MODEL",
    "QUOTE_PCRS",
    "AttestationVerdict",
    "AttestationVerifier",
    "AttestingDevice",
    "BootCounts",
    "CredentialChallenge",
    "EnrolledDevice",
    "EnrolmentRequest",
    "KeyCertification",
    "Measurement",
    "MeasurementJournal",
    "NonceBook",
    "NonceSource",
    "QuoteEvidence",
    "QuoteRejected",
    "ReferenceValues",
    "SoftManufacturer",
    "SoftTpm",
    "SystemNonceSource",
    "TpmBackend",
    "TpmRequestKey",
    "TpmSigningBackend",
    "UnsafeRngNonceSource",
]
