"""Zero-trust authorisation with Cedar (``cedarpy``): deny by default, audited, fail closed.

``PolicyEngine.authorize(request, now)`` returns an allow ``Decision`` or raises ``PolicyDenied``;
every decision (allow or deny) is written to the audit sink with its reason. Requests carry the
live trust inputs (trust score, attestation verdict and age, revocation status) so each call is
re-authorised with the current state: continuous verification, not a one-time login.

Fail closed in three places Cedar alone would not: a policy file that does not validate against
the schema is refused at load; a policy that errors while evaluating turns the whole decision
into a deny (Cedar would skip an erroring ``forbid`` and could allow); any exception inside the
engine is a deny.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import cedarpy

from ztfm.audit import AuditSink
from ztfm.errors import ConfigError, PolicyDenied
from ztfm.identity import Identity

log = logging.getLogger(__name__)

ACTIONS: Final = (
    "Enroll",
    "RenewCert",
    "GetRound",
    "SubmitUpdate",
    "GetModel",
    "GetRevocations",
    "Attest",
)
RESOURCE_KINDS: Final = frozenset(
    {"round", "update", "model", "revocations", "enrollment", "cert", "attestation"}
)
_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
MAX_POLICY_BYTES: Final = 1024 * 1024

SCHEMA: Final = """
namespace Ztfm {
  entity Segment;
  entity Workload in [Segment] {
    fleet: String, segment: String, role: String, device_id: String
  };
  entity Resource { kind: String, fleet: String, segment: String, name: String };
  type Ctx = {
    trust_milli: Long, attestation_ok: Bool, attestation_age_s: Long, revoked: Bool,
    quarantined: Bool
  };
  action Enroll, RenewCert, GetRound, SubmitUpdate, GetModel, GetRevocations, Attest
    appliesTo { principal: [Workload], resource: [Resource], context: Ctx };
}
"""


@dataclass(frozen=True, slots=True)
class TrustContext:
    """Live trust inputs from other modules (trust scores, attestation, revocation).

    ``attestation_age_s`` is None when the device has never attested (treated as infinitely old).
    """

    trust_score: float
    attestation_ok: bool
    attestation_age_s: float | None
    revoked: bool
    quarantined: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.trust_score) or not 0.0 <= self.trust_score <= 1.0:
            raise PolicyDenied("trust score must be a finite number in [0, 1]")
        if self.attestation_age_s is not None and (
            not math.isfinite(self.attestation_age_s) or self.attestation_age_s < 0
        ):
            raise PolicyDenied("attestation age must be finite and >= 0")

    def to_cedar(self) -> dict[str, Any]:
        age = self.attestation_age_s
        return {
            "trust_milli": int(self.trust_score * 1000),
            "attestation_ok": bool(self.attestation_ok),
            "attestation_age_s": 2**62 if age is None else min(math.ceil(age), 2**62),
            "revoked": bool(self.revoked),
            "quarantined": bool(self.quarantined),
        }


class TrustSource(Protocol):
    """Supplies the current ``TrustContext`` of an identity (the trust/attestation modules)."""

    def context_for(self, identity: Identity, now: float) -> TrustContext: ...


@dataclass(frozen=True, slots=True)
class Resource:
    """What is acted on: a kind (round, model, ...), the segment that owns it, and a name."""

    kind: str
    fleet: str
    segment: str
    name: str = "default"

    def __post_init__(self) -> None:
        if self.kind not in RESOURCE_KINDS:
            raise PolicyDenied(f"unknown resource kind {self.kind!r}")
        for label, v in (("segment", self.segment), ("name", self.name)):
            if not isinstance(v, str) or not _NAME.fullmatch(v):
                raise PolicyDenied(f"invalid resource {label} {v!r}")
        if not isinstance(self.fleet, str) or not self.fleet:
            raise PolicyDenied("resource fleet must be set")

    @property
    def uid(self) -> str:
        return f"{self.kind}:{self.fleet}:{self.segment}:{self.name}"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    principal: Identity
    action: str
    resource: Resource
    context: TrustContext

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise PolicyDenied(f"unknown action {self.action!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    policy_ids: tuple[str, ...]


class Policy(Protocol):
    """Anything that authorises: returns an allow ``Decision`` or raises ``PolicyDenied``."""

    def authorize(self, request: AccessRequest, now: float) -> Decision: ...


def _fields(req: AccessRequest, decision: Decision) -> dict[str, object]:
    return {
        "principal": req.principal.uri,
        "action": req.action,
        "resource": req.resource.uid,
        "allowed": decision.allowed,
        "reason": decision.reason,
        "policies": list(decision.policy_ids),
        "context": req.context.to_cedar(),
    }


def _load_policy_text(text: str, source: str) -> cedarpy.PolicySet:
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise ConfigError(f"policy {source} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        result = cedarpy.validate_policies(text, SCHEMA)
    except Exception as exc:  # cedarpy raises plain exceptions on parse errors
        raise ConfigError(f"policy {source} does not parse: {exc}") from exc
    if not result.validation_passed:
        first = result.errors[0].error if result.errors else "unknown error"
        raise ConfigError(f"policy {source} does not validate against the schema: {first}")
    try:
        pset = cedarpy.PolicySet.from_str(text)
    except Exception as exc:
        raise ConfigError(f"policy {source} does not parse: {exc}") from exc
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(text))
    except Exception as exc:
        raise ConfigError(f"policy {source} does not parse: {exc}") from exc
    for pid, pol in parsed.get("staticPolicies", {}).items():
        if not (pol.get("annotations") or {}).get("id"):
            raise ConfigError(f'policy {source}: {pid} needs an @id("...") annotation')
    if parsed.get("templates"):
        raise ConfigError(f"policy {source}: templates are not supported")
    return pset


def default_policy_text() -> str:
    return (importlib.resources.files("ztfm.policy") / "default.cedar").read_text()


class PolicyEngine:
    """Cedar policies from a file (or the shipped default), reloadable, audited."""

    def __init__(
        self, audit: AuditSink, path: Path | None = None, *, audit_allows: bool = True
    ) -> None:
        """``audit_allows=False`` leaves recording allows to a caller that writes one record per
        admitted request anyway (the transport gate); denials are always recorded here."""
        self.audit = audit
        self.audit_allows = audit_allows
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._pset = self._read()
        self.generation = 1

    def _read(self) -> cedarpy.PolicySet:
        if self.path is None:
            return _load_policy_text(default_policy_text(), "default.cedar")
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read policy file {self.path}: {exc}") from exc
        return _load_policy_text(text, str(self.path))

    @classmethod
    def from_text(cls, audit: AuditSink, text: str, *, audit_allows: bool = True) -> PolicyEngine:
        eng = cls.__new__(cls)
        eng.audit = audit
        eng.audit_allows = audit_allows
        eng.path = None
        eng._lock = threading.Lock()
        eng._pset = _load_policy_text(text, "<text>")
        eng.generation = 1
        return eng

    def reload(self, now: float) -> None:
        """Re-read the policy file. A bad file is refused and the previous policies stay."""
        try:
            pset = self._read()
        except ConfigError as exc:
            self.audit.record("policy.reload_failed", {"error": str(exc)}, now)
            raise
        with self._lock:
            self._pset = pset
            self.generation += 1
        self.audit.record(
            "policy.reloaded", {"generation": self.generation, "path": str(self.path)}, now
        )

    def _evaluate(self, req: AccessRequest) -> Decision:
        p = req.principal
        principal = {"type": "Ztfm::Workload", "id": p.uri}
        resource = {"type": "Ztfm::Resource", "id": req.resource.uid}
        entities: list[dict[str, Any]] = [
            {
                "uid": principal,
                "attrs": {
                    "fleet": p.fleet,
                    "segment": p.segment,
                    "role": p.role,
                    "device_id": p.device_id,
                },
                "parents": [{"type": "Ztfm::Segment", "id": p.segment}],
            },
            {"uid": {"type": "Ztfm::Segment", "id": p.segment}, "attrs": {}, "parents": []},
            {
                "uid": resource,
                "attrs": {
                    "kind": req.resource.kind,
                    "fleet": req.resource.fleet,
                    "segment": req.resource.segment,
                    "name": req.resource.name,
                },
                "parents": [],
            },
        ]
        request = {
            "principal": principal,
            "action": {"type": "Ztfm::Action", "id": req.action},
            "resource": resource,
            "context": req.context.to_cedar(),
        }
        with self._lock:
            pset = self._pset
        result = cedarpy.is_authorized(request, pset, entities)
        raw = result._authz_resp.get("diagnostics", {})
        by_id: Mapping[str, str] = raw.get("id_annotations_by_reason", {}) or {}
        reasons = tuple(by_id.get(r, r) for r in result.diagnostics.reasons)
        errors: Sequence[str] = result.diagnostics.errors
        if errors:
            return Decision(False, f"policy evaluation error (fail closed): {errors[0]}", reasons)
        if result.allowed:
            return Decision(True, "permitted by " + ", ".join(reasons), reasons)
        if reasons:
            return Decision(False, "forbidden by " + ", ".join(reasons), reasons)
        return Decision(False, "no policy permits this (deny by default)", ())

    def authorize(self, request: AccessRequest, now: float) -> Decision:
        try:
            decision = self._evaluate(request)
        except Exception as exc:  # fail closed on anything unexpected inside Cedar
            decision = Decision(False, f"policy engine error (fail closed): {exc}", ())
        if not decision.allowed or self.audit_allows:
            self.audit.record("policy.decision", _fields(request, decision), now)
        if not decision.allowed:
            raise PolicyDenied(decision.reason)
        return decision


# --- composition ------------------------------------------------------------------------------
class AllOf:
    """Allows only if every member allows; the first denial wins. Empty: denies."""

    def __init__(self, *members: Policy) -> None:
        self.members = members

    def authorize(self, request: AccessRequest, now: float) -> Decision:
        if not self.members:
            raise PolicyDenied("AllOf() with no policies denies")
        ids: list[str] = []
        for m in self.members:
            ids.extend(m.authorize(request, now).policy_ids)
        return Decision(True, "all policies allow", tuple(ids))


class AnyOf:
    """Allows if some member allows. Empty, or all denying: denies."""

    def __init__(self, *members: Policy) -> None:
        self.members = members

    def authorize(self, request: AccessRequest, now: float) -> Decision:
        reasons: list[str] = []
        for m in self.members:
            try:
                return m.authorize(request, now)
            except PolicyDenied as exc:
                reasons.append(str(exc))
        raise PolicyDenied(
            "no policy allows: " + "; ".join(reasons)
            if reasons
            else "AnyOf() with no policies denies"
        )


class FailClosed:
    """Turns any non-``PolicyDenied`` exception from the wrapped policy into a denial."""

    def __init__(self, inner: Policy, audit: AuditSink | None = None) -> None:
        self.inner = inner
        self.audit = audit

    def authorize(self, request: AccessRequest, now: float) -> Decision:
        try:
            return self.inner.authorize(request, now)
        except PolicyDenied:
            raise
        except Exception as exc:
            if self.audit is not None:
                self.audit.record(
                    "policy.error",
                    {
                        "principal": request.principal.uri,
                        "action": request.action,
                        "error": repr(exc)[:500],
                    },
                    now,
                )
            raise PolicyDenied("policy error (fail closed)") from exc


class DenyAll:
    """Denies everything (maintenance mode, or a placeholder that is safe by construction)."""

    def authorize(self, request: AccessRequest, now: float) -> Decision:
        raise PolicyDenied("deny-all policy")


class UnsafeAllowAll:
    """Allows everything. Insecure: for isolated unit tests only; warns on every use."""

    def authorize(self, request: AccessRequest, now: float) -> Decision:
        log.warning(
            "UnsafeAllowAll: allowing %s %s without policy", request.principal.uri, request.action
        )
        return Decision(True, "UnsafeAllowAll", ())
