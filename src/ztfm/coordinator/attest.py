"""TPM attestation of networked devices: enrolment over the ``Attest`` RPC, a quote every round.

``FleetAttestation`` sits beside the round service in the coordinator and owns the
``AttestationVerifier``:

* ``Attest`` RPC (``__call__``, identity from the peer certificate, device type = its segment):

  - ``{"op": "enrol", "request": EnrolmentRequest}`` -> ``{"challenge": CredentialChallenge}``
    (EK certificate checked against the manufacturer CA, MakeCredential for the AK);
  - ``{"op": "activate", "secret": hex, "quote": QuoteEvidence}`` -> ``{"ok": true, ...}``: the
    AK is bound only if the TPM could activate the credential, and the first quote (over the
    challenge's nonce) must pass, so a device with tampered firmware or model cannot even enrol.
    A failure is a ``RoundError`` (the caller sees ``failed_precondition``) with the reason.

* Every round, before training, ``round_tasks`` gives each enrolled device an ``AttestTask`` with
  a fresh nonce; ``submit`` checks the ``AttestReply`` quote. ``gate`` (a coordinator eligibility
  gate) admits only devices whose quote over *this round's* nonce passed.

* ``context_for`` is the transport gate's ``TrustSource``: the policy's ``attestation_ok`` and
  ``attestation_age_s`` come from the latest verdict, so a device whose quote fails loses
  ``GetRound``/``SubmitUpdate`` at once (trust score and quarantine from ``trust`` if given).

Every enrolment and verdict goes to the audit log and, with a ledger, to the identity ledger;
``allow_model`` adds each released bundle's measurement to the golden values.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from ztfm.attestation import (
    AttestationVerdict,
    AttestationVerifier,
    EnrolmentRequest,
    QuoteEvidence,
    QuoteRejected,
)
from ztfm.audit import AuditSink
from ztfm.errors import AttestationError, RoundError, UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import AttestReply, AttestTask
from ztfm.identity import Identity
from ztfm.ledger import Entry, EntryKind, Ledger
from ztfm.policy import TrustContext, TrustSource
from ztfm.trust import TrustManager
from ztfm.types import DeviceId

log = logging.getLogger(__name__)

MAX_ATTEST_BYTES = 256 * 1024
KEEP_MODELS = 2  # released bundles a device may be running: the newest and the one before


def _json(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_ATTEST_BYTES:
        raise RoundError(f"Attest payload exceeds {MAX_ATTEST_BYTES} bytes")
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise RoundError("Attest payload is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("op"), str):
        raise RoundError('Attest payload must be a JSON object with an "op"')
    return body


class FleetAttestation:
    """The coordinator's attestation service (thread-safe; all state under one lock)."""

    def __init__(
        self,
        verifier: AttestationVerifier,
        audit: AuditSink,
        *,
        ledger: Ledger | None = None,
        trust: TrustManager | None = None,
        base: TrustSource | None = None,
        require_hardware: bool = False,
        trust_log: list[dict[str, Any]] | None = None,
    ) -> None:
        """``trust`` is told every verdict; ``base`` supplies the rest of the policy context
        (e.g. a ``TrustManagerSource``); ``require_hardware`` refuses software TPMs; each trust
        change a verdict causes is appended to ``trust_log`` (for the owner to audit)."""
        self.verifier = verifier
        self.audit = audit
        self.ledger = ledger
        self.trust = trust
        self.base = base
        self.trust_log = trust_log
        self._trust_pending: list[tuple[AttestationVerdict, float]] = []
        self.require_hardware = require_hardware
        self.round_id = 0
        # each attest phase (a round, or its retry after the round failed to open) has its own
        # number; a pass counts only in the phase whose nonce it answered
        self._phase = 0
        self._passed: dict[str, int] = {}  # device -> attest phase it passed
        self._nonces: dict[str, bytes] = {}  # device -> the nonce of the current phase
        self._models: list[bytes] = []
        self._lock = threading.Lock()

    # --- golden values ---------------------------------------------------------------------
    def allow_model(self, measurement: bytes) -> None:
        """A new bundle was released: devices may run it (and the previous one, in transit)."""
        with self._lock:
            self._models = [*self._models, measurement][-KEEP_MODELS:]
            self.verifier.reference = self.verifier.reference.with_models(self._models)

    def revoke(self, device_id: str) -> None:
        """Forget the device's AK and verdicts: it must enrol its TPM again."""
        with self._lock:
            self.verifier.revoke(DeviceId(device_id))
            self._passed.pop(device_id, None)

    # --- the Attest RPC ----------------------------------------------------------------------
    def __call__(self, identity: Identity, payload: bytes, now: float) -> bytes:
        if identity.role != "device":
            raise RoundError(f"role {identity.role} does not attest")
        body = _json(payload)
        did = DeviceId(identity.device_id)
        op = body["op"]
        with self._lock:
            if op == "enrol":
                return self._enrol(did, identity.segment, body, now)
            if op == "activate":
                return self._activate(did, body, now)
        raise RoundError(f"unknown Attest op {op!r}")

    def _enrol(self, did: DeviceId, device_type: str, body: dict[str, Any], now: float) -> bytes:
        try:
            request = EnrolmentRequest.from_dict(body["request"])
            challenge = self.verifier.begin_enrolment(did, device_type, request, now)
        except (KeyError, TypeError, ValueError, AttestationError) as exc:
            reason = str(exc) if isinstance(exc, AttestationError) else f"malformed: {exc!r}"
            self._refused(did, "enrol", reason, now)
            raise RoundError(f"TPM enrolment refused: {reason}") from exc
        return json.dumps({"challenge": challenge.to_dict()}).encode()

    def _activate(self, did: DeviceId, body: dict[str, Any], now: float) -> bytes:
        try:
            secret = bytes.fromhex(str(body["secret"]))
            quote = QuoteEvidence.from_dict(body["quote"])
            device = self.verifier.finish_enrolment(did, secret, now, quote=quote)
        except QuoteRejected as exc:
            verdict = self._failed_verdict(did, exc, now)
            self._record_verdict(verdict, now, enrolment=True)
            raise RoundError(f"TPM enrolment refused: {exc.reason}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttestationError) as exc:
            reason = str(exc) if isinstance(exc, AttestationError) else f"malformed: {exc!r}"
            self._refused(did, "activate", reason, now)
            raise RoundError(f"TPM enrolment refused: {reason}") from exc
        if self.require_hardware and not device.hardware_backed:
            self.verifier.revoke(did)
            self._passed.pop(str(did), None)
            self._refused(did, "activate", "software TPM, hardware required", now)
            raise RoundError("TPM enrolment refused: a hardware TPM is required")
        self.audit.record("attest.enrolled", device.to_dict(), now)
        if self.ledger is not None:
            self.ledger.append(Entry.create(EntryKind.ENROLMENT, device.ledger_body(), now=now))
        passed = self.verifier.latest_verdict(did)
        assert passed is not None and passed.ok
        self._record_verdict(passed, now, enrolment=True)
        return json.dumps({"ok": True, "hardware_backed": device.hardware_backed}).encode()

    def _failed_verdict(self, did: DeviceId, exc: QuoteRejected, now: float) -> AttestationVerdict:
        return AttestationVerdict(did, False, exc.reason, str(exc), now, b"")

    def _refused(self, did: DeviceId, step: str, reason: str, now: float) -> None:
        self.audit.record("attest.refused", {"device": did, "step": step, "reason": reason}, now)

    def _record_verdict(
        self, verdict: AttestationVerdict, now: float, *, enrolment: bool = False
    ) -> None:
        self.audit.record("attest.verdict", {**verdict.to_dict(), "at_enrolment": enrolment}, now)
        if self.ledger is not None:
            self.ledger.append(
                Entry.create(EntryKind.ATTESTATION_VERDICT, verdict.ledger_body(), now=now)
            )
        if self.trust is not None:
            # applied by the round service's thread (``round_tasks``/``submit`` run under its
            # lock), never concurrently with its own trust updates
            self._trust_pending.append((verdict, now))

    def _flush_trust(self) -> None:
        pending, self._trust_pending = self._trust_pending, []
        if self.trust is None:
            return
        for verdict, at in pending:
            change = self.trust.observe_attestation(
                DeviceId(verdict.device_id), verdict.ok, at, detail=verdict.reason
            )
            if self.trust_log is not None:
                self.trust_log.append(change.to_dict())

    # --- one quote a round -------------------------------------------------------------------
    def round_tasks(self, devices: Iterable[str], round_id: int, now: float) -> dict[str, bytes]:
        """A fresh-nonce ``AttestTask`` for each enrolled device, before round ``round_id``."""
        with self._lock:
            self._flush_trust()
            self.round_id = round_id
            self._phase += 1
            self._nonces = {}
            tasks: dict[str, bytes] = {}
            for dev in devices:
                did = DeviceId(dev)
                try:
                    nonce = self.verifier.issue_nonce(did, now)
                except AttestationError:
                    continue  # not enrolled (revoked): the gate leaves it out
                self._nonces[dev] = nonce
                tasks[dev] = codec.encode(AttestTask(round_id, nonce))
            return tasks

    def submit(self, device_id: str, data: bytes, now: float) -> None:
        """Check one device's ``AttestReply``; a failing quote is recorded, then refused."""
        msg = codec.decode(data, max_bytes=MAX_ATTEST_BYTES)
        if not isinstance(msg, AttestReply):
            raise UpdateRejected("expected an attestation reply")
        if msg.device_id != device_id:
            raise UpdateRejected("attestation reply names another device")
        did = DeviceId(device_id)
        with self._lock:
            if msg.round_id != self.round_id:
                raise UpdateRejected(f"attestation reply is for round {msg.round_id}")
            expected = self._nonces.get(device_id)
            if expected is None:
                raise UpdateRejected("no attestation challenge is open for this device")
            try:
                evidence = QuoteEvidence.from_dict(json.loads(msg.evidence))
            except (ValueError, TypeError, KeyError, AttestationError) as exc:
                verdict = AttestationVerdict(did, False, "evidence", f"malformed: {exc}", now, b"")
            else:
                # the quote must be over this phase's nonce: a quote held back from an
                # earlier challenge (made while the device was clean) is refused
                verdict = self.verifier.assess_quote(did, evidence, now, expected_nonce=expected)
            self._record_verdict(verdict, now)
            self._flush_trust()
            if verdict.ok:
                self._nonces.pop(device_id, None)  # answered: one pass per challenge
                self._passed[device_id] = self._phase
                return
            self._passed.pop(device_id, None)
        raise UpdateRejected(f"attestation failed: {verdict.reason}: {verdict.detail}")

    def gate(self, device_id: str, now: float) -> str | None:
        """Eligibility: a passing quote over this round's nonce (None), else the reason."""
        with self._lock:
            if self._passed.get(device_id) == self._phase:
                return None
            verdict = self.verifier.latest_verdict(DeviceId(device_id))
        if verdict is None:
            return "attestation: no quote"
        if not verdict.ok:
            return f"attestation failed: {verdict.reason}"
        return "attestation: no quote for this round"

    # --- TrustSource for the transport gate --------------------------------------------------
    def context_for(self, identity: Identity, now: float) -> TrustContext:
        """``base``'s context (trust score, quarantine, rate limit) with the attestation
        fields from this verifier's latest verdict for the caller."""
        base = (
            self.base.context_for(identity, now)
            if self.base is not None
            else TrustContext(1.0, False, None, False)
        )
        if identity.role != "device":  # gateways and coordinators are not TPM-attested here
            return replace(base, attestation_ok=True, attestation_age_s=0.0)
        with self._lock:
            ok, age = self.verifier.status(DeviceId(identity.device_id), now)
        return replace(base, attestation_ok=ok, attestation_age_s=age)

    def passed(self) -> Sequence[str]:
        """Devices whose quote passed for the current round (for metrics)."""
        with self._lock:
            return sorted(d for d, p in self._passed.items() if p == self._phase)
