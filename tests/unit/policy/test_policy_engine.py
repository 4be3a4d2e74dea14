"""Policy: cross-segment denial, continuous-verification gates, empty policy, reload, audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.errors import ConfigError, PolicyDenied
from ztfm.identity import Identity
from ztfm.policy import (
    AccessRequest,
    AllOf,
    AnyOf,
    Decision,
    DenyAll,
    FailClosed,
    PolicyEngine,
    Resource,
    TrustContext,
    UnsafeAllowAll,
    default_policy_text,
)

T0 = 1_800_000_000.0
FLEET = "acme.example"
CAM = Identity(FLEET, "cams", "device", "cam-1")
PLC = Identity(FLEET, "plcs", "device", "plc-1")
GW_CAMS = Identity(FLEET, "cams", "gateway", "gw-1")
COORD = Identity(FLEET, "core", "coordinator", "coord")
OTHER_FLEET = Identity("evil.example", "cams", "device", "cam-1")
GOOD = TrustContext(trust_score=0.9, attestation_ok=True, attestation_age_s=60, revoked=False)


def req(
    who: Identity,
    action: str,
    kind: str = "round",
    segment: str = "cams",
    ctx: TrustContext = GOOD,
    fleet: str = FLEET,
) -> AccessRequest:
    return AccessRequest(who, action, Resource(kind, fleet, segment), ctx)


@pytest.fixture
def audit() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def engine(audit: MemoryAuditSink) -> PolicyEngine:
    return PolicyEngine(audit)


def test_device_may_act_in_own_segment(engine: PolicyEngine, audit: MemoryAuditSink) -> None:
    for action, kind in (("GetRound", "round"), ("SubmitUpdate", "update"), ("GetModel", "model")):
        d = engine.authorize(req(CAM, action, kind), T0)
        assert d.allowed and "device-own-segment" in d.policy_ids
    assert len(audit.of("policy.decision")) == 3


@pytest.mark.parametrize(
    "action,kind",
    [
        ("GetRound", "round"),
        ("SubmitUpdate", "update"),
        ("GetModel", "model"),
        ("RenewCert", "cert"),
    ],
)
def test_cross_segment_denied(
    engine: PolicyEngine, audit: MemoryAuditSink, action: str, kind: str
) -> None:
    with pytest.raises(PolicyDenied, match="deny by default"):
        engine.authorize(req(PLC, action, kind, segment="cams"), T0)
    (rec,) = audit.of("policy.decision")
    assert rec["allowed"] is False and rec["principal"] == PLC.uri


def test_other_fleet_denied(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyDenied):
        engine.authorize(req(OTHER_FLEET, "GetModel", "model"), T0)


def test_device_cannot_enroll_others_or_use_coordinator_powers(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyDenied):
        engine.authorize(req(CAM, "Enroll", "enrollment"), T0)


def test_revoked_is_forbidden_even_for_coordinator(engine: PolicyEngine) -> None:
    ctx = TrustContext(1.0, True, 1, revoked=True)
    with pytest.raises(PolicyDenied, match="revoked"):
        engine.authorize(req(COORD, "GetModel", "model", ctx=ctx), T0)


@pytest.mark.parametrize(
    "ctx",
    [
        TrustContext(0.9, attestation_ok=False, attestation_age_s=10, revoked=False),
        TrustContext(0.9, attestation_ok=True, attestation_age_s=7200, revoked=False),
        TrustContext(0.9, attestation_ok=True, attestation_age_s=None, revoked=False),
    ],
)
def test_attestation_gate(engine: PolicyEngine, ctx: TrustContext) -> None:
    with pytest.raises(PolicyDenied, match="attestation-required"):
        engine.authorize(req(CAM, "SubmitUpdate", "update", ctx=ctx), T0)


def test_trust_gate(engine: PolicyEngine) -> None:
    low = TrustContext(0.29, True, 10, False)
    with pytest.raises(PolicyDenied, match="trust-gate"):
        engine.authorize(req(CAM, "SubmitUpdate", "update", ctx=low), T0)
    # low trust may still fetch its model (to get patched)
    assert engine.authorize(req(CAM, "GetModel", "model", ctx=low), T0).allowed


def test_gateway_segment(engine: PolicyEngine) -> None:
    assert engine.authorize(req(GW_CAMS, "SubmitUpdate", "update"), T0).allowed
    with pytest.raises(PolicyDenied):
        engine.authorize(req(GW_CAMS, "SubmitUpdate", "update", segment="plcs"), T0)


def test_revocations_readable_by_fleet(engine: PolicyEngine) -> None:
    assert engine.authorize(req(PLC, "GetRevocations", "revocations", segment="core"), T0)
    with pytest.raises(PolicyDenied):
        engine.authorize(req(OTHER_FLEET, "GetRevocations", "revocations", segment="core"), T0)


def test_empty_policy_denies(audit: MemoryAuditSink) -> None:
    eng = PolicyEngine.from_text(audit, "")
    with pytest.raises(PolicyDenied, match="deny by default"):
        eng.authorize(req(COORD, "GetModel", "model"), T0)


def test_erroring_forbid_fails_closed(audit: MemoryAuditSink) -> None:
    """Cedar skips a forbid that errors; the engine must turn that into a deny."""
    text = (
        '@id("all") permit(principal, action, resource);\n'
        '@id("overflow") forbid(principal, action, resource) when '
        "{ context.trust_milli * 4611686018427387904 > 0 };\n"
    )
    eng = PolicyEngine.from_text(audit, text)  # validates: the error only shows at run time
    with pytest.raises(PolicyDenied, match="evaluation error"):
        eng.authorize(req(CAM, "GetModel", "model"), T0)
    (rec,) = audit.of("policy.decision")
    assert rec["allowed"] is False


@pytest.mark.parametrize(
    "text",
    [
        "permit(principal, action, resource) when { context.nosuch };",  # not in schema
        '@id("x") permit(principal, action, resource) when { context.nosuch };',
        '@id("x") permit(principal, action, resource',  # syntax error
        "permit(principal, action, resource);",  # no @id
        '@id("x") permit(principal, action == Ztfm::Action::"Nope", resource);',
    ],
)
def test_bad_policy_text_refused(audit: MemoryAuditSink, text: str) -> None:
    with pytest.raises(ConfigError):
        PolicyEngine.from_text(audit, text)


def test_reload(tmp_path: Path, audit: MemoryAuditSink) -> None:
    f = tmp_path / "p.cedar"
    f.write_text(default_policy_text())
    eng = PolicyEngine(audit, f)
    assert eng.authorize(req(CAM, "GetModel", "model"), T0).allowed
    f.write_text("")  # operator empties the policy: everything is denied after reload
    eng.reload(T0)
    with pytest.raises(PolicyDenied):
        eng.authorize(req(CAM, "GetModel", "model"), T0)
    f.write_text("garbage(")
    with pytest.raises(ConfigError):
        eng.reload(T0)
    assert audit.of("policy.reload_failed")
    with pytest.raises(PolicyDenied):  # the previous (empty) policy is still in force
        eng.authorize(req(CAM, "GetModel", "model"), T0)
    assert eng.generation == 2


def test_missing_policy_file(tmp_path: Path, audit: MemoryAuditSink) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PolicyEngine(audit, tmp_path / "nope.cedar")


@pytest.mark.parametrize(
    "build",
    [
        lambda: AccessRequest(CAM, "DropTables", Resource("round", FLEET, "cams"), GOOD),
        lambda: Resource("secrets", FLEET, "cams"),
        lambda: Resource("round", FLEET, 'cams" || true'),
        lambda: TrustContext(float("nan"), True, 1, False),
        lambda: TrustContext(1.5, True, 1, False),
        lambda: TrustContext(0.5, True, -1, False),
    ],
)
def test_malformed_requests_denied(build: object) -> None:
    with pytest.raises(PolicyDenied):
        build()  # type: ignore[operator]


class _Boom:
    def authorize(self, request: AccessRequest, now: float) -> Decision:
        raise RuntimeError("bug")


def test_composition(engine: PolicyEngine) -> None:
    r = req(CAM, "GetModel", "model")
    assert AllOf(engine, UnsafeAllowAll()).authorize(r, T0).allowed
    with pytest.raises(PolicyDenied):
        AllOf(engine, DenyAll()).authorize(r, T0)
    with pytest.raises(PolicyDenied):
        AllOf().authorize(r, T0)
    assert AnyOf(DenyAll(), engine).authorize(r, T0).allowed
    with pytest.raises(PolicyDenied):
        AnyOf().authorize(r, T0)
    with pytest.raises(PolicyDenied):
        AnyOf(DenyAll(), DenyAll()).authorize(r, T0)
    with pytest.raises(PolicyDenied, match="fail closed"):
        FailClosed(_Boom()).authorize(r, T0)
    with pytest.raises(RuntimeError):
        AnyOf(_Boom()).authorize(r, T0)  # only FailClosed swallows bugs; wrap it
    with pytest.raises(PolicyDenied):
        FailClosed(AnyOf(_Boom(), DenyAll())).authorize(r, T0)


def test_quarantine_gate(engine: PolicyEngine) -> None:
    q = TrustContext(0.9, True, 10, False, quarantined=True)
    for action, kind in (("GetRound", "round"), ("SubmitUpdate", "update"), ("RenewCert", "cert")):
        with pytest.raises(PolicyDenied, match="quarantine"):
            engine.authorize(req(CAM, action, kind, ctx=q), T0)
    assert engine.authorize(req(CAM, "GetModel", "model", ctx=q), T0).allowed


def test_audit_allows_off_still_records_denials(audit: MemoryAuditSink) -> None:
    eng = PolicyEngine(audit, audit_allows=False)
    assert eng.authorize(req(CAM, "GetModel", "model"), T0).allowed
    assert audit.of("policy.decision") == []
    with pytest.raises(PolicyDenied):
        eng.authorize(req(PLC, "GetModel", "model"), T0)
    (rec,) = audit.of("policy.decision")
    assert rec["allowed"] is False
