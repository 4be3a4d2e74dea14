"""``SoftTpm``: a software stand-in for a TPM, for simulations of thousands of devices.

NOT HARDWARE-BACKED. Keys live in process memory; anything that can read that memory can forge
quotes. It exists so that large simulations exercise the same evidence format (TPMS_ATTEST,
ECDSA-P256/SHA-256 TPMT_SIGNATURE, ECC MakeCredential) and the same verifier as real TPMs.
Its EK certificates come from a ``SoftManufacturer`` whose root a verifier must list under
``soft_roots``, so every verdict says ``hardware_backed=False``.
"""

from __future__ import annotations

import logging

import numpy as np

from ztfm.attestation.device import BootCounts
from ztfm.attestation.structures import (
    ADMIN_WITH_POLICY,
    ALG_AES,
    ALG_CFB,
    ALG_ECDSA,
    ALG_SHA256,
    DECRYPT,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN_ENCRYPT,
    USER_WITH_AUTH,
    CertifyInfo,
    PcrSelection,
    QuoteInfo,
    TpmPublic,
    TpmSignature,
    composite_digest,
    extend,
    qualified_name_in_endorsement,
)
from ztfm.crypto.tpm import EccP256Key, SoftManufacturerCa
from ztfm.errors import AttestationError, CryptoError, TpmError

log = logging.getLogger(__name__)

#: Attributes of the AK created by every backend (a restricted ECDSA-P256 signing key).
AK_ATTRIBUTES = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN_ENCRYPT
)
#: Attributes of the request-signing key (unrestricted ECDSA-P256 signing key, TPM-resident).
SIGNER_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | SIGN_ENCRYPT
EK_ATTRIBUTES = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT
)
#: PolicySecret(TPM_RH_ENDORSEMENT): the standard EK auth policy (TCG EK profile).
EK_AUTH_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
_YEAR_S = 365.0 * 24 * 3600


class SoftManufacturer:
    """A software CA that "manufactures" SoftTpms (issues their EK certificates)."""

    __slots__ = ("_ca",)

    def __init__(self, rng: np.random.Generator, now: float, name: str = "ztfm SOFTWARE TPM CA"):
        log.warning("SoftManufacturer %r: its SoftTpms are NOT hardware-backed", name)
        self._ca = SoftManufacturerCa(
            EccP256Key.from_entropy(rng.bytes(48)), name, now, ttl_s=20 * _YEAR_S
        )

    @property
    def root_certificate(self) -> bytes:
        """DER of the root: pass it to ``AttestationVerifier(soft_roots=[...])``."""
        return self._ca.certificate.der

    def issue(self, ek: TpmPublic, label: str, now: float) -> bytes:
        from ztfm.crypto.tpm import EccPublicPoint

        assert isinstance(ek.key, EccPublicPoint)
        return self._ca.issue_ek_certificate(ek.key, label, now, ttl_s=10 * _YEAR_S)


class SoftTpm:
    """A TPM 2.0 simulated in Python (ECC P-256 EK and AK, SHA-256 PCR bank).

    Satisfies ``TpmBackend``. ``hardware_backed`` is False; a debug line is logged per instance
    and a warning per manufacturer.
    """

    __slots__ = (
        "_ak",
        "_ak_pub",
        "_clock",
        "_ek",
        "_ek_cert",
        "_ek_pub",
        "_pcrs",
        "_reset",
        "_signer",
        "_signer_pub",
    )

    def __init__(
        self,
        manufacturer: SoftManufacturer,
        rng: np.random.Generator,
        now: float,
        label: str = "soft-tpm",
    ) -> None:
        log.debug("SoftTpm %s is not hardware-backed", label)
        self._ek = EccP256Key.from_entropy(rng.bytes(48))
        self._ak = EccP256Key.from_entropy(rng.bytes(48))
        self._ek_pub = TpmPublic.build_ecc(
            self._ek.public,
            EK_ATTRIBUTES,
            symmetric=(ALG_AES, 128, ALG_CFB),
            auth_policy=EK_AUTH_POLICY,
        )
        self._ak_pub = TpmPublic.build_ecc(
            self._ak.public, AK_ATTRIBUTES, scheme=(ALG_ECDSA, ALG_SHA256)
        )
        self._signer = EccP256Key.from_entropy(rng.bytes(48))
        self._signer_pub = TpmPublic.build_ecc(
            self._signer.public, SIGNER_ATTRIBUTES, scheme=(ALG_ECDSA, ALG_SHA256)
        )
        self._ek_cert = manufacturer.issue(self._ek_pub, label, now)
        self._pcrs: dict[int, bytes] = {}
        self._clock = int(rng.integers(0, 1 << 32))
        self._reset = 0

    @property
    def hardware_backed(self) -> bool:
        return False

    def ek_certificate(self) -> bytes:
        return self._ek_cert

    def ek_public(self) -> bytes:
        return self._ek_pub.raw

    def ak_public(self) -> bytes:
        return self._ak_pub.raw

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        try:
            name = self._ak_pub.name
            return self._ek.activate_credential(name, credential_blob, encrypted_secret)
        except CryptoError as exc:
            raise TpmError(f"ActivateCredential failed: {exc}") from exc

    def extend_pcr(self, pcr: int, digest: bytes) -> None:
        if not 0 <= pcr <= 15:
            raise TpmError("SoftTpm only extends PCR 0..15")
        self._pcrs[pcr] = extend(self._pcrs.get(pcr, b"\x00" * 32), digest)

    def read_pcrs(self, selection: PcrSelection) -> dict[int, bytes]:
        return {p: self._pcrs.get(p, b"\x00" * 32) for p in selection.pcrs}

    def reboot(self) -> None:
        """TPM reset: PCRs back to zero, reset counter up (like a power cycle)."""
        self._pcrs.clear()
        self._reset += 1

    def boot_counts(self) -> BootCounts:
        return BootCounts(self._reset, 0)

    def quote(self, nonce: bytes, selection: PcrSelection) -> tuple[bytes, bytes]:
        if len(nonce) > 64:
            raise AttestationError("qualifying data is too long")
        values = self.read_pcrs(selection)
        self._clock += 1
        attest = QuoteInfo.build(
            qualified_signer=qualified_name_in_endorsement(self._ak_pub.name),
            extra_data=nonce,
            clock=self._clock,
            reset_count=self._reset,
            restart_count=0,
            firmware_version=0x5A54464D,  # "ZTFM"
            selection=selection,
            pcr_digest=composite_digest([values[p] for p in selection.pcrs]),
        )
        r, s = self._ak.sign_sha256(attest)
        return attest, TpmSignature.build_ecdsa(r, s)

    # --- request-signing key (TpmSigningBackend) ------------------------------------------------
    def signing_key_public(self) -> bytes:
        return self._signer_pub.raw

    def certify_signing_key(self, nonce: bytes) -> tuple[bytes, bytes]:
        if len(nonce) > 64:
            raise AttestationError("qualifying data is too long")
        self._clock += 1
        attest = CertifyInfo.build(
            qualified_signer=qualified_name_in_endorsement(self._ak_pub.name),
            extra_data=nonce,
            name=self._signer_pub.name,
            qualified_name=qualified_name_in_endorsement(self._signer_pub.name),
            clock=self._clock,
        )
        r, s = self._ak.sign_sha256(attest)
        return attest, TpmSignature.build_ecdsa(r, s)

    def sign(self, message: bytes) -> bytes:
        r, s = self._signer.sign_sha256(message)
        return TpmSignature.build_ecdsa(r, s)
