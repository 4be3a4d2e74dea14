"""The zero-trust request gate, independent of gRPC so it can be tested without sockets.

``RequestGate.admit(peer_cert, method, raw, now)`` runs, in order: peer certificate -> identity
(chain, validity with skew, revocation, SPIFFE URI) -> size and protobuf parsing -> request
binding (unknown key, replay, staleness, signature, payload digest, signer == certificate
identity == claimed device id) -> policy (Cedar, with the live trust context) -> audit. It returns
an ``Admitted`` request or raises ``Rejected`` carrying an opaque reference for the peer; the
detail goes to the audit log, and rejected updates are kept as forensic snapshots.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Final, Protocol

from ztfm.audit import AuditSink, SnapshotStore
from ztfm.crypto.pki import Certificate
from ztfm.errors import CryptoError, IdentityError, PolicyDenied, RequestRejected, ZtfmError
from ztfm.identity import CertValidator, Envelope, Identity, InMemoryKeyRegistry, RequestVerifier
from ztfm.policy import AccessRequest, Policy, Resource, TrustContext, TrustSource
from ztfm.trust.manager import TrustManager
from ztfm.types import DeviceId
from ztfm.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES, SIGNED_METHODS, decode_signed_request

log = logging.getLogger(__name__)

#: The resource kind each signed method acts on.
METHOD_KIND: Final = {
    "RenewCert": "cert",
    "GetRound": "round",
    "SubmitUpdate": "update",
    "GetModel": "model",
    "GetRevocations": "revocations",
    "Attest": "attestation",
}
assert set(METHOD_KIND) == set(SIGNED_METHODS)


class RpcHandler(Protocol):
    """What the coordinator (or a gateway) plugs into the server: bytes in, bytes out.

    ``identity`` is the authenticated, authorised caller (from its certificate). Raise a
    ``ZtfmError`` to refuse; its ``code`` (not its message) is what the caller sees.
    """

    def __call__(self, identity: Identity, method: str, payload: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    identity: Identity
    envelope: Envelope
    payload: bytes
    resource: Resource


class Rejected(ZtfmError):
    """A request was refused. ``stage`` and ``cause`` stay local; the peer sees only ``ref``."""

    code = "rejected"

    def __init__(self, stage: str, ref: str, cause: ZtfmError) -> None:
        super().__init__(f"request rejected at {stage}: {cause} (ref {ref})")
        self.stage = stage
        self.ref = ref
        self.cause = cause

    @property
    def public_message(self) -> str:
        return f"request rejected (ref {self.ref})"


class RejectionBudget:
    """Per-identity token bucket of *rejections*: a peer that keeps sending bad requests is
    throttled before any parsing, signature or disk work, and its throttled requests are
    summarised in one audit record per ``log_interval_s`` instead of one each (bounded disk)."""

    def __init__(
        self,
        capacity: float = 20.0,
        refill_per_s: float = 0.5,
        log_interval_s: float = 60.0,
        max_peers: int = 100_000,
    ) -> None:
        if capacity <= 0 or refill_per_s < 0 or log_interval_s <= 0 or max_peers <= 0:
            raise ZtfmError("rejection budget parameters must be positive")
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.log_interval_s = log_interval_s
        self.max_peers = max_peers
        # uri -> (tokens, at, suppressed since last log, last log time)
        self._state: dict[str, tuple[float, float, int, float]] = {}
        self._lock = threading.Lock()

    def _tokens(self, uri: str, now: float) -> tuple[float, int, float]:
        tokens, at, suppressed, logged = self._state.get(uri, (self.capacity, now, 0, -1e18))
        tokens = min(self.capacity, tokens + max(0.0, now - at) * self.refill_per_s)
        return tokens, suppressed, logged

    def exhausted(self, uri: str, now: float) -> tuple[bool, int]:
        """(throttled?, suppressed count to log now or 0 if this one need not be logged)."""
        with self._lock:
            tokens, suppressed, logged = self._tokens(uri, now)
            if tokens >= 1.0:
                return False, 0
            suppressed += 1
            if now - logged >= self.log_interval_s:
                self._state[uri] = (tokens, now, 0, now)
                return True, suppressed
            self._state[uri] = (tokens, now, suppressed, logged)
            return True, 0

    def spend(self, uri: str, now: float) -> None:
        with self._lock:
            tokens, suppressed, logged = self._tokens(uri, now)
            if uri not in self._state and len(self._state) >= self.max_peers:
                self._state.pop(next(iter(self._state)))
            self._state[uri] = (max(0.0, tokens - 1.0), now, suppressed, logged)


class StaticTrustSource:
    """The same trust context for everyone (tests, or a fleet without attestation yet)."""

    def __init__(self, context: TrustContext) -> None:
        self.context = context

    def context_for(self, identity: Identity, now: float) -> TrustContext:
        return self.context


class RejectionObserver(Protocol):
    """Told about every rejected request of an authenticated caller (e.g. to lower its trust)."""

    def __call__(self, identity: Identity, code: str, now: float) -> None: ...


class AttestationAge(Protocol):
    """Seconds since the identity's last passing attestation, or None if it never attested."""

    def __call__(self, identity: Identity, now: float) -> float | None: ...


class TrustManagerSource:
    """Live ``TrustContext`` from ``ztfm.trust.TrustManager`` plus an attestation-age lookup.

    Quarantined or suspicious devices are also rate-limited here (``admit_request``): an empty
    token bucket raises ``TrustError``, which the gate turns into a denial.
    """

    def __init__(
        self, manager: TrustManager, attestation_age: AttestationAge, rate_limit: bool = True
    ) -> None:
        self.manager = manager
        self.attestation_age = attestation_age
        self.rate_limit = rate_limit

    def observe_rejection(self, identity: Identity, code: str, now: float) -> None:
        """A ``RejectionObserver``: each rejected request counts against the device's trust."""
        self.manager.observe_rejection(DeviceId(identity.device_id), code, now)

    def context_for(self, identity: Identity, now: float) -> TrustContext:
        device = DeviceId(identity.device_id)
        if self.rate_limit:
            self.manager.admit_request(device, now)
        info = self.manager.policy_input(device, now)
        return TrustContext(
            trust_score=float(info["trust_score"]),
            attestation_ok=bool(info["attested_ok"]),
            attestation_age_s=self.attestation_age(identity, now),
            revoked=False,  # the gate has already checked the signed revocation list
            quarantined=bool(info["quarantined"]),
        )


def _resource_for(method: str, env: Envelope, identity: Identity) -> Resource:
    kind = METHOD_KIND[method]
    if not env.resource:
        return Resource(kind, identity.fleet, identity.segment)
    parts = env.resource.split(":")
    if len(parts) not in (2, 3) or parts[0] != kind:
        raise RequestRejected(f"resource {env.resource!r} does not fit method {method}")
    return Resource(kind, identity.fleet, parts[1], parts[2] if len(parts) == 3 else "default")


class RequestGate:
    """Authenticates, verifies, authorises and audits every signed request."""

    def __init__(
        self,
        validator: CertValidator,
        verifier: RequestVerifier,
        registry: InMemoryKeyRegistry,
        policy: Policy,
        trust: TrustSource,
        audit: AuditSink,
        snapshots: SnapshotStore | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        on_reject: RejectionObserver | None = None,
        budget: RejectionBudget | None = None,
    ) -> None:
        self.on_reject = on_reject
        self.budget = budget if budget is not None else RejectionBudget()
        self.validator = validator
        self.verifier = verifier
        self.registry = registry
        self.policy = policy
        self.trust = trust
        self.audit = audit
        self.snapshots = snapshots
        self.max_payload_bytes = max_payload_bytes
        self._lock = threading.Lock()

    def _reject(
        self,
        stage: str,
        cause: ZtfmError,
        method: str,
        peer: str,
        raw: bytes,
        now: float,
        payload: bytes | None = None,
        identity: Identity | None = None,
    ) -> Rejected:
        ref = secrets.token_hex(6)
        fields: dict[str, object] = {
            "ref": ref,
            "stage": stage,
            "code": cause.code,
            "detail": str(cause)[:500],
            "method": method[:64],
            "peer": peer,
            "bytes": len(raw),
        }
        if self.snapshots is not None and method == "SubmitUpdate":
            try:
                fields["snapshot"] = self.snapshots.save(
                    "rejected_update",
                    payload if payload is not None else raw,
                    {k: v for k, v in fields.items() if k != "bytes"},
                    now,
                )
            except ZtfmError as exc:  # a full disk must not turn a rejection into a crash
                fields["snapshot_error"] = str(exc)
        self.audit.record("rpc.rejected", fields, now)
        if identity is not None:
            self.budget.spend(identity.uri, now)
        if self.on_reject is not None and identity is not None:
            try:
                self.on_reject(identity, cause.code, now)
            except Exception as exc:  # the trust store failing must not hide the rejection
                log.warning("rejection observer failed: %r", exc)
        log.info("rejected %s from %s at %s: %s (ref %s)", method, peer, stage, cause, ref)
        return Rejected(stage, ref, cause)

    def authenticate(self, peer_cert: bytes | None, now: float) -> Identity:
        """Peer certificate (PEM or DER) -> validated identity; raises ``IdentityError``."""
        if not peer_cert:
            raise IdentityError("no client certificate")
        try:
            cert = (
                Certificate.from_pem(peer_cert)
                if peer_cert.lstrip().startswith(b"-----")
                else Certificate(peer_cert)
            )
        except CryptoError as exc:
            raise IdentityError(f"client certificate is malformed: {exc}") from exc
        identity = self.validator.validate(cert, now)
        if self.registry.lookup(cert.public_key.fingerprint()) is None:
            try:
                self.registry.register(cert.public_key, identity)
            except RequestRejected as exc:
                raise IdentityError(f"certificate key is bound to another identity: {exc}") from exc
        return identity

    def admit(self, peer_cert: bytes | None, method: str, raw: bytes, now: float) -> Admitted:
        """Return the admitted request or raise ``Rejected`` (already audited)."""
        if method not in METHOD_KIND:
            raise self._reject(
                "method",
                RequestRejected(f"unknown method {method!r}"),
                method,
                "unauthenticated",
                raw,
                now,
            )
        try:
            identity = self.authenticate(peer_cert, now)
        except IdentityError as exc:
            raise self._reject("identity", exc, method, "unauthenticated", raw, now) from exc
        peer = identity.uri
        throttled, to_log = self.budget.exhausted(peer, now)
        if throttled:
            ref = secrets.token_hex(6)
            if to_log:
                self.audit.record(
                    "rpc.throttled",
                    {"ref": ref, "peer": peer, "method": method, "suppressed": to_log},
                    now,
                )
            raise Rejected("throttled", ref, RequestRejected("too many rejected requests"))
        try:
            env, payload = decode_signed_request(raw, self.max_payload_bytes)
        except RequestRejected as exc:
            raise self._reject("parse", exc, method, peer, raw, now, None, identity) from exc
        try:
            with self._lock:
                self.verifier.verify(env, payload, identity, now, expected_method=method)
            resource = _resource_for(method, env, identity)
        except (RequestRejected, PolicyDenied) as exc:
            raise self._reject("binding", exc, method, peer, raw, now, payload, identity) from exc
        try:
            ctx = self.trust.context_for(identity, now)
            decision = self.policy.authorize(AccessRequest(identity, method, resource, ctx), now)
        except PolicyDenied as exc:
            raise self._reject("policy", exc, method, peer, raw, now, payload, identity) from exc
        except Exception as exc:  # a failing trust source or policy bug denies (fail closed)
            denied = PolicyDenied(f"policy/trust error (fail closed): {exc!r}"[:300])
            raise self._reject("policy", denied, method, peer, raw, now, payload, identity) from exc
        self.audit.record(
            "rpc.admitted",
            {
                "method": method,
                "peer": peer,
                "round": env.round_id,
                "resource": resource.uid,
                "bytes": len(payload),
                "policy": decision.reason,
                "context": ctx.to_cedar(),
            },
            now,
        )
        return Admitted(identity, env, payload, resource)
