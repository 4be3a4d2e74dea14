"""Wire codec and gate without sockets: strict protobuf parsing and the gate's order of checks."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.audit import MemoryAuditSink
from ztfm.errors import RequestRejected
from ztfm.identity import MemoryKeyStore, sign_request
from ztfm.policy import TrustContext
from ztfm.transport.gate import Rejected, StaticTrustSource
from ztfm.transport.grpc_fleet import LocalFleet
from ztfm.wire._gen import fleet_pb2
from ztfm.wire.codec import decode_reply, decode_signed_request, encode_signed_request

T = time.time()


def test_round_trip() -> None:
    ks = MemoryKeyStore()
    env = sign_request(ks, "GetModel", 3, "cam-1", b"p", T, resource="model:cams")
    got, payload = decode_signed_request(encode_signed_request(env, b"p"))
    assert got == env and payload == b"p"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        fleet_pb2.SignedRequest(payload=b"x").SerializeToString(),  # no envelope
        b"\x98\x06\x01" + fleet_pb2.SignedRequest(payload=b"x").SerializeToString(),  # unknown
        fleet_pb2.SignedRequest(envelope=fleet_pb2.Envelope(method="x")).SerializeToString(),
        fleet_pb2.SignedRequest(
            envelope=fleet_pb2.Envelope(round_id=2**64 - 1)
        ).SerializeToString(),
    ],
)
def test_malformed_rejected(raw: bytes) -> None:
    with pytest.raises(RequestRejected):
        decode_signed_request(raw)


def test_size_limits() -> None:
    with pytest.raises(RequestRejected, match="larger"):
        decode_signed_request(b"\x00" * 10_000, max_payload_bytes=1000)
    with pytest.raises(RequestRejected):
        decode_reply(b"\x00" * 10_000, max_payload_bytes=1000)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(RequestRejected):
        decode_signed_request(raw)


def test_gate_rejects_in_order_and_audits() -> None:
    fleet = LocalFleet.create("acme.example", T)
    audit = MemoryAuditSink()
    gate = fleet.gate(audit, StaticTrustSource(TrustContext(0.9, True, 10, False)))
    dev = fleet.enroll("cams", "cam-1", T)
    env = sign_request(dev.keystore, "GetRound", 1, "cam-1", b"x", T)
    raw = encode_signed_request(env, b"x")
    adm = gate.admit(dev.cert.to_pem(), "GetRound", raw, T)
    assert adm.identity == dev.identity and adm.resource.segment == "cams"
    cases = [
        (None, "GetRound", raw, "identity"),  # no cert at all: before anything else
        (dev.cert.der, "Nope", raw, "method"),
        (b"garbage", "GetRound", raw, "identity"),
        (dev.cert.der, "GetRound", b"\xff", "parse"),
        (dev.cert.der, "GetRound", raw, "binding"),  # replay
    ]
    for cert, method, r, stage in cases:
        with pytest.raises(Rejected) as ei:
            gate.admit(cert, method, r, T)
        assert ei.value.stage == stage
        assert ei.value.ref in ei.value.public_message and stage not in ei.value.public_message
    assert len(audit.of("rpc.rejected")) == len(cases)


def test_gate_fails_closed_when_trust_source_breaks() -> None:
    class Broken:
        def context_for(self, identity: object, now: float) -> TrustContext:
            raise RuntimeError("trust db down")

    fleet = LocalFleet.create("acme.example", T)
    gate = fleet.gate(MemoryAuditSink(), Broken())
    dev = fleet.enroll("cams", "cam-1", T)
    raw = encode_signed_request(sign_request(dev.keystore, "GetRound", 1, "cam-1", b"", T), b"")
    with pytest.raises(Rejected) as ei:
        gate.admit(dev.cert.der, "GetRound", raw, T)
    assert ei.value.stage == "policy"


def test_resource_must_fit_method() -> None:
    fleet = LocalFleet.create("acme.example", T)
    gate = fleet.gate(MemoryAuditSink(), StaticTrustSource(TrustContext(0.9, True, 10, False)))
    dev = fleet.enroll("cams", "cam-1", T)
    for res in ("model:cams", "round", "round:cams:x:y", "round:CAMS"):
        e = sign_request(dev.keystore, "GetRound", 1, "cam-1", b"", T, resource=res)
        with pytest.raises(Rejected):
            gate.admit(dev.cert.der, "GetRound", encode_signed_request(e, b""), T)


def test_trust_manager_drives_policy_and_learns_from_rejections() -> None:
    from ztfm.transport.gate import TrustManagerSource
    from ztfm.trust.manager import TrustManager
    from ztfm.trust.store import MemoryTrustStore
    from ztfm.types import DeviceId

    fleet = LocalFleet.create("acme.example", T)
    mgr = TrustManager(MemoryTrustStore())
    src = TrustManagerSource(mgr, lambda ident, now: 5.0)
    audit = MemoryAuditSink()
    gate = fleet.gate(audit, src, on_reject=src.observe_rejection)
    dev = fleet.enroll("cams", "cam-1", T)
    raw = encode_signed_request(sign_request(dev.keystore, "GetRound", 1, "cam-1", b"", T), b"")
    with pytest.raises(Rejected) as first:  # no passing quote yet: attestation is required
        gate.admit(dev.cert.der, "GetRound", raw, T)
    assert first.value.stage == "policy"
    mgr.observe_attestation(DeviceId("cam-1"), True, T)
    raw = encode_signed_request(sign_request(dev.keystore, "GetRound", 1, "cam-1", b"", T), b"")
    assert gate.admit(dev.cert.der, "GetRound", raw, T).identity == dev.identity
    before = mgr.score(DeviceId("cam-1"), T)
    with pytest.raises(Rejected):  # replay: rejected, and it counts against trust
        gate.admit(dev.cert.der, "GetRound", raw, T)
    assert mgr.score(DeviceId("cam-1"), T) < before
    mgr.observe_attestation(DeviceId("cam-1"), False, T)  # failing quote -> quarantine
    raw2 = encode_signed_request(sign_request(dev.keystore, "GetRound", 1, "cam-1", b"", T), b"")
    with pytest.raises(Rejected) as ei:
        gate.admit(dev.cert.der, "GetRound", raw2, T)
    assert ei.value.stage == "policy"


def test_peer_with_many_rejections_is_throttled_with_bounded_audit() -> None:
    from ztfm.transport.gate import RejectionBudget, RequestGate

    fleet = LocalFleet.create("acme.example", T)
    audit = MemoryAuditSink()
    base = fleet.gate(audit, StaticTrustSource(TrustContext(0.9, True, 10, False)))
    gate = RequestGate(
        base.validator,
        base.verifier,
        base.registry,
        base.policy,
        base.trust,
        audit,
        budget=RejectionBudget(capacity=3, refill_per_s=0.1, log_interval_s=60),
    )
    bad, good = fleet.enroll("cams", "cam-bad", T), fleet.enroll("cams", "cam-ok", T)
    for _ in range(3):
        with pytest.raises(Rejected) as ei:
            gate.admit(bad.cert.der, "GetRound", b"\xff", T)
        assert ei.value.stage == "parse"
    stages = []
    for _ in range(50):
        with pytest.raises(Rejected) as ei:
            gate.admit(bad.cert.der, "GetRound", b"\xff", T + 1)
        stages.append(ei.value.stage)
    assert set(stages) == {"throttled"}
    assert len(audit.of("rpc.rejected")) == 3 and len(audit.of("rpc.throttled")) == 1
    # even a well-formed request of the throttled peer is refused until its budget refills
    raw = encode_signed_request(sign_request(bad.keystore, "GetRound", 1, "cam-bad", b"", T), b"")
    with pytest.raises(Rejected):
        gate.admit(bad.cert.der, "GetRound", raw, T + 2)
    later = T + 15
    raw = encode_signed_request(
        sign_request(bad.keystore, "GetRound", 1, "cam-bad", b"", later), b""
    )
    assert gate.admit(bad.cert.der, "GetRound", raw, later).identity == bad.identity
    # other peers are unaffected
    raw2 = encode_signed_request(
        sign_request(good.keystore, "GetRound", 1, "cam-ok", b"", T + 1), b""
    )
    assert gate.admit(good.cert.der, "GetRound", raw2, T + 1).identity == good.identity


def test_gate_fuzz_only_ever_admits_or_rejects() -> None:
    """Random mutations of a valid request: the gate never crashes, never admits a changed one."""
    from hypothesis import HealthCheck

    from ztfm.transport.gate import RejectionBudget, RequestGate

    fleet = LocalFleet.create("acme.example", T)
    audit = MemoryAuditSink()
    base = fleet.gate(audit, StaticTrustSource(TrustContext(0.9, True, 10, False)))
    gate = RequestGate(
        base.validator,
        base.verifier,
        base.registry,
        base.policy,
        base.trust,
        audit,
        budget=RejectionBudget(capacity=1e9),
    )
    dev = fleet.enroll("cams", "cam-1", T)

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.binary(min_size=1, max_size=8), st.integers(0, 10_000), st.booleans())
    def run(junk: bytes, pos: int, replace_byte: bool) -> None:
        env = sign_request(dev.keystore, "SubmitUpdate", 3, "cam-1", b"payload", T)
        raw = bytearray(encode_signed_request(env, b"payload"))
        i = pos % len(raw)
        if replace_byte:
            raw[i : i + len(junk)] = junk
        else:
            raw[i:i] = junk
        mutated = bytes(raw)
        try:
            adm = gate.admit(dev.cert.der, "SubmitUpdate", mutated, T)
        except Rejected:
            return
        # admitted: it must be semantically identical to what was signed
        assert adm.payload == b"payload" and adm.envelope.signature == env.signature
        assert adm.envelope.signed_bytes() == env.signed_bytes()

    run()
