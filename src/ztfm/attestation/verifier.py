"""The attestation verifier: EK/AK enrolment and quote verification (pure: takes ``now``).

Enrolment (TPM 2.0 credential activation):
1. ``begin_enrolment``: the EK certificate must chain to a configured manufacturer root; its
   public key must equal the EK public the device presented; the EK must be a restricted
   decryption key and the AK a restricted, TPM-resident signing key. The verifier then wraps a
   fresh secret with MakeCredential for (EK, AK name).
2. The device runs TPM2_ActivateCredential: only the TPM that holds the EK, and only if it also
   holds an object named like the AK, can recover the secret.
3. ``finish_enrolment``: the returned secret must match (constant time) within the TTL; the AK
   is now bound to the device.

Quote verification (``check_quote``; ``assess_quote`` turns failures into verdicts):
signer = enrolled AK (before any signature work), signature by that AK, TPMS_ATTEST structure
(magic, type, PCR selection), nonce issued to this device and unused, freshness (age of the
nonce), TPM clock not rolled back, the measurement log replays to the quoted PCR digest, and the
log's firmware and model digests are in the allow-list.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztfm.attestation.evidence import (
    PCR_FIRMWARE,
    PCR_MODEL,
    CredentialChallenge,
    EnrolmentRequest,
    KeyCertification,
    QuoteEvidence,
)
from ztfm.attestation.nonce import NONCE_BYTES, NonceBook, NonceSource
from ztfm.attestation.reference import ReferenceValues
from ztfm.attestation.structures import (
    ALG_ECDSA,
    ALG_RSASSA,
    CertifyInfo,
    PcrSelection,
    QuoteInfo,
    TpmPublic,
    TpmSignature,
    composite_digest,
    qualified_name_in_endorsement,
    replay,
)
from ztfm.crypto.tpm import (
    Certificate,
    EccPublicPoint,
    RsaPublicNumbers,
    check_public_key,
    load_certificates,
    make_credential_ecc,
    make_credential_rsa,
    verify_certificate_chain,
    verify_ecdsa_sha256,
    verify_rsassa_sha256,
)
from ztfm.errors import AttestationError, ConfigError, CryptoError
from ztfm.types import DeviceId

log = logging.getLogger(__name__)

QUOTE_SELECTION = PcrSelection((PCR_FIRMWARE, PCR_MODEL))
_SECRET_BYTES = 32


class QuoteRejected(AttestationError):
    """A quote failed verification; ``reason`` is a short machine code for audit and trust."""

    code = "attestation"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnrolledDevice:
    """A device whose AK is bound to a certified EK."""

    device_id: DeviceId
    device_type: str
    ak: TpmPublic
    ek_fingerprint: str
    ek_root: str
    hardware_backed: bool
    enrolled_at: float

    @property
    def qualified_signer(self) -> bytes:
        return qualified_name_in_endorsement(self.ak.name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (for the identity ledger or the verifier's own storage)."""
        return {
            "device_id": self.device_id,
            "device_type": self.device_type,
            "ak_public": self.ak.raw.hex(),
            "ak_name": self.ak.name.hex(),
            "ek_fingerprint": self.ek_fingerprint,
            "ek_root": self.ek_root,
            "hardware_backed": self.hardware_backed,
            "enrolled_at": self.enrolled_at,
        }

    def ledger_body(self) -> dict[str, Any]:
        """Body of the ledger's ``enrolment`` entry (``public_key`` = the AK TPMT_PUBLIC)."""
        return {
            "device_id": self.device_id,
            "public_key": self.ak.raw.hex(),
            "key_kind": "tpm-ak",
            "ak_name": self.ak.name.hex(),
            "device_type": self.device_type,
            "ek_fingerprint": self.ek_fingerprint,
            "ek_root": self.ek_root,
            "hardware_backed": self.hardware_backed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnrolledDevice:
        """Parse a record written by ``to_dict``; raise ``AttestationError`` if malformed."""
        try:
            ak = TpmPublic.from_bytes(bytes.fromhex(data["ak_public"]))
            device = cls(
                DeviceId(str(data["device_id"])),
                str(data["device_type"]),
                ak,
                str(data["ek_fingerprint"]),
                str(data["ek_root"]),
                bool(data["hardware_backed"]),
                float(data["enrolled_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AttestationError(f"enrolment record is malformed: {exc}") from exc
        if data.get("ak_name") not in (None, ak.name.hex()):
            raise AttestationError("enrolment record AK name does not match its AK")
        return device


@dataclass(frozen=True, slots=True)
class AttestationVerdict:
    """The outcome of one quote check; feed ``ok`` and ``age_s`` to policy and trust."""

    device_id: DeviceId
    ok: bool
    reason: str
    detail: str
    time: float
    pcr_digest: bytes
    firmware_version: str | None = None
    model_digest: bytes | None = None
    hardware_backed: bool = False

    def age_s(self, now: float) -> float:
        return now - self.time

    def ledger_body(self) -> dict[str, Any]:
        """Body of the ledger's ``attestation_verdict`` entry (no floats, no nulls)."""
        body: dict[str, Any] = {
            "device_id": self.device_id,
            "verdict": "pass" if self.ok else "fail",
            "reason": self.reason,
            "hardware_backed": self.hardware_backed,
        }
        if self.pcr_digest:
            body["pcr_digest"] = self.pcr_digest.hex()
        if self.firmware_version is not None:
            body["firmware_version"] = self.firmware_version
        if self.model_digest is not None:
            body["model_digest"] = self.model_digest.hex()
        return body

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the audit log and storage)."""
        return {
            "device_id": self.device_id,
            "ok": self.ok,
            "reason": self.reason,
            "detail": self.detail,
            "time": self.time,
            "pcr_digest": self.pcr_digest.hex(),
            "firmware_version": self.firmware_version,
            "model_digest": self.model_digest.hex() if self.model_digest else None,
            "hardware_backed": self.hardware_backed,
        }

    def require_fresh(self, now: float, max_age_s: float) -> None:
        """Return None if this verdict is a pass no older than ``max_age_s``; raise if not."""
        if not self.ok:
            raise AttestationError(f"device {self.device_id} failed attestation: {self.reason}")
        if not 0 <= now - self.time <= max_age_s:
            raise AttestationError(f"device {self.device_id} has no fresh attestation")


@dataclass(frozen=True, slots=True)
class TpmRequestKey:
    """A device's request-signing key, proven by its AK to live in the same TPM."""

    device_id: DeviceId
    key: TpmPublic
    certified_at: float

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return None if ``signature`` (a TPMT_SIGNATURE) signs ``message``; raise if not."""
        try:
            sig = TpmSignature.from_bytes(signature)
        except AttestationError as exc:
            raise CryptoError(f"malformed TPM signature: {exc}") from exc
        if sig.alg != ALG_ECDSA or not isinstance(self.key.key, EccPublicPoint):
            raise CryptoError("request signature must be ECDSA")
        verify_ecdsa_sha256(self.key.key, sig.r, sig.s, message)


@dataclass(frozen=True, slots=True)
class _Pending:
    device_type: str
    request_ak: TpmPublic
    ek_fingerprint: str
    ek_root: str
    hardware_backed: bool
    secret: bytes
    issued_at: float
    nonce: bytes  # the enrolment quote must be over exactly this nonce


@dataclass(frozen=True, slots=True)
class _ClockMark:
    reset_count: int
    restart_count: int
    clock: int


@dataclass(slots=True)
class AttestationVerifier:
    """Verifier state: manufacturer roots, golden values, enrolled AKs, nonces, last verdicts.

    ``soft_roots`` are CAs of software TPMs (``SoftTpm``): accepted, logged as a warning, and
    every verdict for such a device says ``hardware_backed=False`` so policy can refuse it.
    """

    manufacturer_roots: Sequence[bytes]
    reference: ReferenceValues
    nonces: NonceSource
    intermediates: Sequence[bytes] = ()
    soft_roots: Sequence[bytes] = ()
    max_quote_age_s: float = 60.0
    enrolment_ttl_s: float = 300.0
    require_ek_usage: bool = True
    revoked_eks: set[str] = field(default_factory=set)
    _roots: list[Certificate] = field(default_factory=list)
    _soft: list[Certificate] = field(default_factory=list)
    _inter: list[Certificate] = field(default_factory=list)
    _pending: dict[DeviceId, _Pending] = field(default_factory=dict)
    _enrolled: dict[DeviceId, EnrolledDevice] = field(default_factory=dict)
    _book: NonceBook | None = None
    _clocks: dict[DeviceId, _ClockMark] = field(default_factory=dict)
    _verdicts: dict[DeviceId, AttestationVerdict] = field(default_factory=dict)
    _request_keys: dict[DeviceId, TpmRequestKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            # each entry may be one DER/PEM certificate or a PEM bundle
            self._roots = [c for d in self.manufacturer_roots for c in load_certificates(d)]
            self._soft = [c for d in self.soft_roots for c in load_certificates(d)]
            self._inter = [c for d in self.intermediates for c in load_certificates(d)]
        except CryptoError as exc:
            raise ConfigError(f"bad manufacturer CA certificate: {exc}") from exc
        if not self._roots and not self._soft:
            raise ConfigError("attestation verifier needs at least one manufacturer root")
        if self.max_quote_age_s <= 0 or self.enrolment_ttl_s <= 0:
            raise ConfigError("max_quote_age_s and enrolment_ttl_s must be positive")
        self._book = NonceBook(self.nonces)
        if self._soft:
            log.warning("attestation verifier trusts software TPM roots: not hardware-backed")

    # --- enrolment -------------------------------------------------------------------------------
    def begin_enrolment(
        self, device_id: DeviceId, device_type: str, request: EnrolmentRequest, now: float
    ) -> CredentialChallenge:
        """Check EK certificate and AK, then return a MakeCredential challenge for the device."""
        if not isinstance(request, EnrolmentRequest):
            raise AttestationError("enrolment request has the wrong type")
        if not isinstance(device_type, str) or not device_type:
            raise AttestationError("device type must be a non-empty string")
        try:
            cert = Certificate.load(request.ek_certificate)
        except CryptoError as exc:
            raise AttestationError(f"EK certificate is malformed: {exc}") from exc
        if cert.fingerprint in self.revoked_eks:
            raise AttestationError("EK certificate is revoked")
        if self.require_ek_usage and not cert.ek_usage:
            raise AttestationError("EK certificate lacks the TCG EK certificate key usage")
        hardware = True
        try:
            root = verify_certificate_chain(cert, self._inter, self._roots, now)
        except CryptoError as exc:
            if not self._soft:
                raise AttestationError(f"EK certificate rejected: {exc}") from exc
            try:
                root = verify_certificate_chain(cert, self._inter, self._soft, now)
            except CryptoError as exc2:
                raise AttestationError(f"EK certificate rejected: {exc2}") from exc2
            hardware = False
        ek = TpmPublic.from_bytes(request.ek_public)
        ek.check_endorsement_key()
        if ek.key != cert.public_key:
            raise AttestationError("EK public key does not match the EK certificate")
        ak = TpmPublic.from_bytes(request.ak_public)
        ak.check_attestation_key()
        try:
            check_public_key(ak.key)
        except CryptoError as exc:
            raise AttestationError(f"AK public key is invalid: {exc}") from exc
        current = self._enrolled.get(device_id)
        if current is not None and current.ek_fingerprint != cert.fingerprint:
            raise AttestationError("device is enrolled with another EK: revoke it first")
        self._check_ek_free(device_id, cert.fingerprint)
        secret = self.nonces.token(_SECRET_BYTES)
        try:
            if isinstance(ek.key, RsaPublicNumbers):
                wrapped = make_credential_rsa(ek.key, ak.name, secret, self.nonces.token(32))
            else:
                assert isinstance(ek.key, EccPublicPoint)
                wrapped = make_credential_ecc(ek.key, ak.name, secret, self.nonces.token(48))
        except CryptoError as exc:
            raise AttestationError(f"cannot make credential for this EK: {exc}") from exc
        # the enrolment nonce is not in the book of round nonces: it is good only for the
        # quote that finishes this enrolment, never for a round
        nonce = self.nonces.token(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise AttestationError("nonce source returned the wrong number of bytes")
        self._pending[device_id] = _Pending(
            device_type, ak, cert.fingerprint, root.subject, hardware, secret, now, nonce
        )
        if not hardware:
            log.info("device %s enrols with a software TPM (not hardware-backed)", device_id)
        return CredentialChallenge(wrapped.credential_blob, wrapped.encrypted_secret, nonce)

    def finish_enrolment(
        self,
        device_id: DeviceId,
        secret: bytes,
        now: float,
        quote: QuoteEvidence | None = None,
    ) -> EnrolledDevice:
        """Bind the AK if ``secret`` is the activated credential; raise if not.

        With ``quote`` (over the challenge's enrolment nonce) the first quote is checked too and
        the enrolment is rolled back if it fails: a tampered device cannot even enrol.
        """
        pending = self._pending.pop(device_id, None)
        if pending is None:
            raise AttestationError("no enrolment in progress for this device")
        if not 0 <= now - pending.issued_at <= self.enrolment_ttl_s:
            raise AttestationError("enrolment challenge expired")
        if not isinstance(secret, bytes) or not hmac.compare_digest(secret, pending.secret):
            raise AttestationError("credential activation failed: AK is not bound to the EK")
        # the EK rules again: another identity may have enrolled this EK, or it may have been
        # revoked, while this enrolment was pending
        if pending.ek_fingerprint in self.revoked_eks:
            raise AttestationError("EK certificate is revoked")
        self._check_ek_free(device_id, pending.ek_fingerprint)
        device = EnrolledDevice(
            device_id,
            pending.device_type,
            pending.request_ak,
            pending.ek_fingerprint,
            pending.ek_root,
            pending.hardware_backed,
            now,
        )
        previous = self._enrolled.get(device_id)
        self._enrolled[device_id] = device
        if previous is None or previous.ak.name != device.ak.name:
            # a new AK starts a new clock history; the same AK keeps its rollback mark
            self._clocks.pop(device_id, None)
        if quote is not None:
            try:
                self._check_enrolment_quote(device_id, quote, pending, now)
            except QuoteRejected:
                if previous is None:
                    self._enrolled.pop(device_id, None)
                else:
                    self._enrolled[device_id] = previous
                raise
        return device

    def _check_ek_free(self, device_id: DeviceId, ek_fingerprint: str) -> None:
        """One TPM, one device: a clean box must not attest for other identities' code."""
        for other, enrolled in self._enrolled.items():
            if other != device_id and enrolled.ek_fingerprint == ek_fingerprint:
                raise AttestationError(f"this TPM's EK is already enrolled for device {other}")

    def _check_enrolment_quote(
        self, device_id: DeviceId, quote: QuoteEvidence, pending: _Pending, now: float
    ) -> None:
        if not 0 <= now - pending.issued_at <= self.max_quote_age_s:
            raise QuoteRejected("stale", "enrolment quote is older than max_quote_age_s")
        try:
            self._verdicts[device_id] = self._check(device_id, quote, now, enrolment=pending.nonce)
        except QuoteRejected:
            raise
        except AttestationError as exc:
            raise QuoteRejected("evidence", str(exc)) from exc

    def enrolled(self, device_id: DeviceId) -> EnrolledDevice:
        device = self._enrolled.get(device_id)
        if device is None:
            raise AttestationError("device is not enrolled")
        return device

    def revoke_ek(self, ek_fingerprint: str) -> list[DeviceId]:
        """Revoke an EK certificate (SHA-256 of its DER): refuse it and drop devices bound to it.

        Returns the devices whose enrolment was dropped.
        """
        self.revoked_eks.add(ek_fingerprint)
        for device_id in [
            d for d, p in self._pending.items() if p.ek_fingerprint == ek_fingerprint
        ]:
            del self._pending[device_id]
        dropped = [d for d, e in self._enrolled.items() if e.ek_fingerprint == ek_fingerprint]
        for device_id in dropped:
            self.revoke(device_id)
        return dropped

    def restore_enrolment(self, device: EnrolledDevice) -> None:
        """Re-load an enrolment recorded earlier (e.g. from the ledger after a restart).

        The caller vouches for the record; it must come from this verifier's own storage.
        """
        device.ak.check_attestation_key()
        if device.ek_fingerprint in self.revoked_eks:
            raise AttestationError("EK certificate is revoked")
        self._enrolled[device.device_id] = device
        self._clocks.pop(device.device_id, None)

    def revoke(self, device_id: DeviceId) -> None:
        """Forget a device's AK: it must enrol again before any quote is accepted."""
        self._pending.pop(device_id, None)
        self._enrolled.pop(device_id, None)
        self._verdicts.pop(device_id, None)
        self._request_keys.pop(device_id, None)

    # --- quotes ----------------------------------------------------------------------------------
    def issue_nonce(self, device_id: DeviceId, now: float) -> bytes:
        """A fresh single-use nonce for this device's next quote (records the issue time)."""
        self.enrolled(device_id)
        assert self._book is not None
        return self._book.issue(device_id, now)

    def check_quote(
        self,
        device_id: DeviceId,
        evidence: QuoteEvidence,
        now: float,
        expected_nonce: bytes | None = None,
    ) -> AttestationVerdict:
        """Return a passing verdict, or raise ``QuoteRejected`` with a reason code.

        ``expected_nonce``: the quote must be over exactly this nonce (the one the caller issued
        for this challenge), not merely over some nonce the device still holds."""
        try:
            verdict = self._check(device_id, evidence, now, expected=expected_nonce)
        except QuoteRejected:
            raise
        except AttestationError as exc:
            raise QuoteRejected("evidence", str(exc)) from exc
        self._verdicts[device_id] = verdict
        return verdict

    def assess_quote(
        self,
        device_id: DeviceId,
        evidence: QuoteEvidence,
        now: float,
        expected_nonce: bytes | None = None,
    ) -> AttestationVerdict:
        """Like ``check_quote`` but a failure becomes a failing verdict (also recorded)."""
        try:
            return self.check_quote(device_id, evidence, now, expected_nonce)
        except QuoteRejected as exc:
            device = self._enrolled.get(device_id)
            verdict = AttestationVerdict(
                device_id,
                False,
                exc.reason,
                str(exc),
                now,
                b"",
                hardware_backed=device.hardware_backed if device else False,
            )
            self._verdicts[device_id] = verdict
            log.info("attestation of %s failed: %s", device_id, exc)
            return verdict

    def latest_verdict(self, device_id: DeviceId) -> AttestationVerdict | None:
        return self._verdicts.get(device_id)

    def status(self, device_id: DeviceId, now: float) -> tuple[bool, float | None]:
        """(ok, age_s) of the latest verdict, as policy's ``TrustContext`` wants it.

        (False, None) when the device never attested or the verdict is from the future.
        """
        verdict = self._verdicts.get(device_id)
        if verdict is None or now < verdict.time:
            return False, None
        return verdict.ok and device_id in self._enrolled, now - verdict.time

    def eligibility_gate(self, max_age_s: float) -> Callable[[str, float], str | None]:
        """A coordinator eligibility gate: None if the device has a fresh pass, else a reason."""
        if max_age_s <= 0:
            raise ConfigError("max_age_s must be positive")

        def gate(device_id: str, now: float) -> str | None:
            ok, age = self.status(DeviceId(device_id), now)
            if age is None:
                return "no attestation"
            if not ok:
                return "attestation failed"
            return None if age <= max_age_s else "attestation is not fresh"

        return gate

    def _check(
        self,
        device_id: DeviceId,
        ev: QuoteEvidence,
        now: float,
        *,
        expected: bytes | None = None,
        enrolment: bytes | None = None,
    ) -> AttestationVerdict:
        device = self._enrolled.get(device_id)
        if device is None:
            raise QuoteRejected("unknown_device", "quote from a device that is not enrolled")
        if not isinstance(ev, QuoteEvidence):
            raise QuoteRejected("evidence", "quote evidence has the wrong type")
        info = QuoteInfo.from_bytes(ev.attest)
        if not hmac.compare_digest(info.qualified_signer, device.qualified_signer):
            raise QuoteRejected("signer", "quote was not signed by the AK bound at enrolment")
        sig = TpmSignature.from_bytes(ev.signature)
        try:
            if sig.alg == ALG_ECDSA and isinstance(device.ak.key, EccPublicPoint):
                verify_ecdsa_sha256(device.ak.key, sig.r, sig.s, ev.attest)
            elif sig.alg == ALG_RSASSA and isinstance(device.ak.key, RsaPublicNumbers):
                verify_rsassa_sha256(device.ak.key, sig.rsa_sig, ev.attest)
            else:
                raise QuoteRejected("signature", "quote signature algorithm does not match the AK")
        except CryptoError as exc:
            raise QuoteRejected("signature", "quote signature does not verify") from exc
        if info.selection != QUOTE_SELECTION:
            raise QuoteRejected("selection", f"quote must cover {QUOTE_SELECTION}")
        wanted = enrolment if enrolment is not None else expected
        if wanted is not None and not hmac.compare_digest(info.extra_data, wanted):
            raise QuoteRejected("nonce", "quote is not over the nonce of this challenge")
        if enrolment is None:  # a round nonce: single use, from this device's book, fresh
            assert self._book is not None
            try:
                self._book.consume(device_id, info.extra_data, now, self.max_quote_age_s)
            except AttestationError as exc:
                reason = "stale" if "stale" in str(exc) else "nonce"
                raise QuoteRejected(reason, str(exc)) from exc
        self._check_clock(device_id, info)
        fw_log = [m.digest for m in ev.log if m.pcr == PCR_FIRMWARE]
        model_log = [m.digest for m in ev.log if m.pcr == PCR_MODEL]
        expected = composite_digest([replay(fw_log), replay(model_log)])
        if not hmac.compare_digest(expected, info.pcr_digest):
            raise QuoteRejected("pcr_log", "quoted PCR digest does not match the measurement log")
        if len(fw_log) != 1:
            raise QuoteRejected("firmware", "measurement log must hold exactly one firmware event")
        try:
            version = self.reference.firmware_version_of(device.device_type, fw_log[0])
        except AttestationError as exc:
            raise QuoteRejected("firmware", str(exc)) from exc
        if not model_log:
            raise QuoteRejected("model", "no model bundle has been measured")
        if model_log[-1] not in self.reference.models:
            raise QuoteRejected("model", "loaded model bundle is not in the allow-list")
        known = self.reference.models | self.reference.retired_models
        if any(d not in known for d in model_log[:-1]):
            raise QuoteRejected("model", "an unknown model bundle was loaded since boot")
        return AttestationVerdict(
            device_id,
            True,
            "ok",
            "quote verified",
            now,
            info.pcr_digest,
            version,
            model_log[-1],
            device.hardware_backed,
        )

    def certify_request_key(
        self, device_id: DeviceId, cert: KeyCertification, now: float
    ) -> TpmRequestKey:
        """Accept a TPM-resident request key certified by the device's AK over a fresh nonce.

        Nonce from ``issue_nonce``; raise ``AttestationError`` on any mismatch.
        """
        device = self.enrolled(device_id)
        if not isinstance(cert, KeyCertification):
            raise AttestationError("key certification has the wrong type")
        info = CertifyInfo.from_bytes(cert.attest)
        if not hmac.compare_digest(info.qualified_signer, device.qualified_signer):
            raise AttestationError("key certification was not signed by the enrolled AK")
        sig = TpmSignature.from_bytes(cert.signature)
        if sig.alg != ALG_ECDSA or not isinstance(device.ak.key, EccPublicPoint):
            raise AttestationError("key certification signature algorithm does not match the AK")
        try:
            verify_ecdsa_sha256(device.ak.key, sig.r, sig.s, cert.attest)
        except CryptoError as exc:
            raise AttestationError("key certification signature does not verify") from exc
        assert self._book is not None
        self._book.consume(device_id, info.extra_data, now, self.max_quote_age_s)
        key = TpmPublic.from_bytes(cert.key_public)
        key.check_request_key()
        if not hmac.compare_digest(info.name, key.name):
            raise AttestationError("certified object is not the presented request key")
        request_key = TpmRequestKey(device_id, key, now)
        self._request_keys[device_id] = request_key
        return request_key

    def request_key(self, device_id: DeviceId) -> TpmRequestKey:
        """The certified TPM request key of an enrolled device; raise if none."""
        key = self._request_keys.get(device_id)
        if key is None or device_id not in self._enrolled:
            raise AttestationError("device has no certified TPM request key")
        return key

    def _check_clock(self, device_id: DeviceId, info: QuoteInfo) -> None:
        mark = _ClockMark(info.reset_count, info.restart_count, info.clock)
        last = self._clocks.get(device_id)
        if last is not None and (
            mark.reset_count < last.reset_count
            or (mark.reset_count == last.reset_count and mark.clock < last.clock)
        ):
            raise QuoteRejected("clock", "TPM clock went backwards (rolled back or replayed)")
        self._clocks[device_id] = mark
