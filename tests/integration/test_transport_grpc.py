"""Real gRPC servers and clients over mTLS on 127.0.0.1: every attack is refused, logged, and
has no effect on the handler's state."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ztfm.audit import AuditLog, MemoryAuditSink, SnapshotStore, verify_log
from ztfm.errors import IdentityError, ZtfmError
from ztfm.identity import FleetCA, Identity, KeyStore, MemoryKeyStore, sign_request
from ztfm.policy import TrustContext
from ztfm.transport.gate import StaticTrustSource
from ztfm.transport.grpc_client import RetryPolicy, RpcFailed, enroll
from ztfm.transport.grpc_fleet import Credentials, LocalFleet
from ztfm.types import FixedClock
from ztfm.wire.codec import encode_signed_request

FLEET = "acme.example"
GOOD = TrustContext(0.9, True, 10, False)
MAX_PAYLOAD = 64 * 1024


class Recorder:
    """The plug-in handler: records what reached the application."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, identity: Identity, method: str, payload: bytes) -> bytes:
        if payload == b"refuse":
            raise ZtfmError("handler refuses")
        if payload == b"slow":
            time.sleep(1.5)
        with self.lock:
            self.calls.append((identity.device_id, method, payload))
        return b"ack:" + payload[:16]


@dataclasses.dataclass
class Env:
    fleet: LocalFleet
    audit: MemoryAuditSink
    handler: Recorder
    target: str
    cam1: Credentials
    cam2: Credentials
    plc1: Credentials

    def client(self, creds: Credentials, **kw: object) -> object:
        return creds.client(
            self.target,
            self.fleet.ca.cert,
            np.random.default_rng(1),
            max_payload_bytes=MAX_PAYLOAD,
            **kw,
        )

    def raw_stub(self, creds: Credentials, method: str) -> grpc.UnaryUnaryMultiCallable:
        ch = grpc.secure_channel(
            self.target,
            grpc.ssl_channel_credentials(
                self.fleet.ca.cert.to_pem(),
                creds.keystore.tls_private_key_pem(),
                creds.cert.to_pem(),
            ),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        return ch.unary_unary(f"/ztfm.v1.Fleet/{method}")

    def rejected_since(self, mark: int) -> list[dict[str, object]]:
        return [f for e, f, _ in self.audit.events[mark:] if e == "rpc.rejected"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    now = time.time()
    fleet = LocalFleet.create(FLEET, now)
    audit = MemoryAuditSink()
    snaps = SnapshotStore(tmp_path_factory.mktemp("snaps"), max_total_bytes=1 << 20)
    gate = fleet.gate(
        audit, StaticTrustSource(GOOD), snapshots=snaps, max_payload_bytes=MAX_PAYLOAD
    )
    handler = Recorder()
    server = fleet.serve(handler, gate, max_workers=8)
    e = Env(
        fleet,
        audit,
        handler,
        server.target,
        fleet.enroll("cams", "cam-1", now),
        fleet.enroll("cams", "cam-2", now),
        fleet.enroll("plcs", "plc-1", now),
    )
    yield e
    server.stop(0)


def _unchanged(env: Env, before: int) -> None:
    assert len(env.handler.calls) == before, "a rejected request reached the handler"


def _refused_signed(
    env: Env,
    keystore: KeyStore,
    *,
    round_id: int = 2,
    device_id: str = "cam-1",
    method: str = "SubmitUpdate",
    signed: bytes = b"x",
    sent: bytes | None = None,
    age_s: float = 0.0,
    code: grpc.StatusCode | None = grpc.StatusCode.PERMISSION_DENIED,
) -> dict[str, object]:
    """Send a signed envelope raw on cam-1's SubmitUpdate; it must be refused before the handler.

    Returns the one ``rpc.rejected`` audit record it produced.
    """
    before, mark = len(env.handler.calls), len(env.audit.events)
    e = sign_request(keystore, method, round_id, device_id, signed, time.time() - age_s)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as ei:
        env.raw_stub(env.cam1, "SubmitUpdate")(
            encode_signed_request(e, signed if sent is None else sent), timeout=5
        )
    if code is not None:
        assert ei.value.code() == code
    (rej,) = env.rejected_since(mark)
    _unchanged(env, before)
    return rej


# --- positive paths -----------------------------------------------------------------------------
def test_valid_call_reaches_handler_with_cert_identity(env: Env) -> None:
    with env.client(env.cam1) as c:  # type: ignore[attr-defined]
        assert c.call("SubmitUpdate", b"update-1", round_id=4) == b"ack:update-1"
        assert c.call("GetModel", b"", resource="model:cams") == b"ack:"
    assert ("cam-1", "SubmitUpdate", b"update-1") in env.handler.calls


def test_revocations_and_renewal(env: Env) -> None:
    with env.client(env.cam2) as c:  # type: ignore[attr-defined]
        lst = c.get_revocations()
        lst.verify(env.fleet.ca.cert.public_key)
        old = c.cert
        assert c.maybe_renew(env.fleet.validator()) is old  # not due yet
        new = c.renew(env.fleet.validator())
        assert new.serial != old.serial and new.public_key == old.public_key
        assert c.call("GetRound", b"after-renewal") == b"ack:after-renewal"


# --- TLS-level refusals (the handshake fails; nothing reaches ztfm code) ------------------------
def test_no_client_cert(env: Env) -> None:
    before = len(env.handler.calls)
    ch = grpc.secure_channel(
        env.target,
        grpc.ssl_channel_credentials(env.fleet.ca.cert.to_pem()),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    with pytest.raises(grpc.RpcError) as ei:
        ch.unary_unary("/ztfm.v1.Fleet/GetRound")(b"", timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    ch.close()
    _unchanged(env, before)


def test_cert_from_another_ca(env: Env) -> None:
    before = len(env.handler.calls)
    other = LocalFleet.create(FLEET, time.time())
    rogue = other.enroll("cams", "cam-1", time.time())
    c = rogue.client(
        env.target, env.fleet.ca.cert, np.random.default_rng(0), retry=RetryPolicy(max_attempts=1)
    )
    with pytest.raises(RpcFailed) as ei:
        c.call("GetRound", b"x")
    assert ei.value.status == grpc.StatusCode.UNAVAILABLE
    c.close()
    _unchanged(env, before)


def test_expired_cert_refused_by_tls(env: Env) -> None:
    before = len(env.handler.calls)
    old = env.fleet.enroll("cams", "cam-old", time.time() - 7200, ttl_s=600)
    c = env.client(old, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(RpcFailed):
        c.call("GetRound", b"x")  # type: ignore[attr-defined]
    _unchanged(env, before)


def test_client_refuses_server_from_another_ca(env: Env) -> None:
    other = FleetCA.create(FLEET, time.time() - 10)
    c = env.cam1.client(
        env.target, other.cert, np.random.default_rng(0), retry=RetryPolicy(max_attempts=1)
    )
    with pytest.raises(RpcFailed):
        c.call("GetRound", b"x")
    c.close()


# --- refusals by the zero-trust gate (audited with a reason) ------------------------------------
def test_revoked_cert(env: Env) -> None:
    now = time.time()
    victim = env.fleet.enroll("cams", "cam-revoked", now)
    c = env.client(victim)
    assert c.call("GetRound", b"before") == b"ack:before"  # type: ignore[attr-defined]
    env.fleet.revoke(victim, now)
    before, mark = len(env.handler.calls), len(env.audit.events)
    with pytest.raises(RpcFailed) as ei:
        c.call("GetRound", b"after")  # type: ignore[attr-defined]
    assert ei.value.status == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" not in ei.value.details  # opaque to the peer
    (rej,) = env.rejected_since(mark)
    assert rej["stage"] == "identity" and "revoked" in str(rej["detail"])
    assert str(rej["ref"]) in ei.value.details
    _unchanged(env, before)


def test_expired_cert_refused_by_gate_clock(env: Env) -> None:
    """TLS accepts (real clock), but the gate's own clock says the cert expired: refused."""
    now = time.time()
    fleet, audit = env.fleet, MemoryAuditSink()
    gate = fleet.gate(audit, StaticTrustSource(GOOD))
    clock = FixedClock(now + 4 * 3600)
    handler = Recorder()
    srv = fleet.serve(handler, gate, clock=clock, max_workers=2, rotate_tls=False)
    try:
        c = env.cam1.client(srv.target, fleet.ca.cert, np.random.default_rng(0), clock=clock)
        with pytest.raises(RpcFailed) as ei:
            c.call("GetRound", b"x")
        assert ei.value.status == grpc.StatusCode.UNAUTHENTICATED
        assert any(
            e == "rpc.rejected" and "expired" in str(f["detail"]) for e, f, _ in audit.events
        )
        assert handler.calls == []
        c.close()
    finally:
        srv.stop(0)


def test_other_segment_forbidden_rpc(env: Env) -> None:
    before, mark = len(env.handler.calls), len(env.audit.events)
    c = env.client(env.plc1)
    with pytest.raises(RpcFailed) as ei:
        c.call("SubmitUpdate", b"poison", resource="update:cams")  # type: ignore[attr-defined]
    assert ei.value.status == grpc.StatusCode.PERMISSION_DENIED
    (rej,) = env.rejected_since(mark)
    assert rej["stage"] == "policy" and "deny by default" in str(rej["detail"])
    assert "snapshot" in rej  # the rejected update was kept for forensics
    _unchanged(env, before)


def test_signed_by_another_key(env: Env) -> None:
    rej = _refused_signed(env, MemoryKeyStore(), round_id=1)
    assert rej["code"] == "unknown_key"


def test_signed_by_another_enrolled_device(env: Env) -> None:
    # cam2's signature on cam1's TLS session
    rej = _refused_signed(env, env.cam2.keystore, round_id=1, device_id="cam-2")
    assert "signer" in str(rej["detail"])


def test_replayed_message(env: Env) -> None:
    e = sign_request(env.cam1.keystore, "SubmitUpdate", 2, "cam-1", b"once", time.time())
    raw = encode_signed_request(e, b"once")
    stub = env.raw_stub(env.cam1, "SubmitUpdate")
    stub(raw, timeout=5)
    before, mark = len(env.handler.calls), len(env.audit.events)
    with pytest.raises(grpc.RpcError) as ei:
        stub(raw, timeout=5)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (rej,) = env.rejected_since(mark)
    assert rej["code"] == "replay"
    _unchanged(env, before)


def test_tampered_payload(env: Env) -> None:
    rej = _refused_signed(env, env.cam1.keystore, signed=b"honest", sent=b"evil!!")
    assert "payload" in str(rej["detail"])


def test_oversized_payload(env: Env) -> None:
    before, mark = len(env.handler.calls), len(env.audit.events)
    big = b"\x00" * (MAX_PAYLOAD + 10)
    e = sign_request(env.cam1.keystore, "SubmitUpdate", 2, "cam-1", big, time.time())
    with pytest.raises(grpc.RpcError) as ei:  # over our limit, under gRPC's frame limit
        env.raw_stub(env.cam1, "SubmitUpdate")(encode_signed_request(e, big), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (rej,) = env.rejected_since(mark)
    assert rej["stage"] == "parse" and "larger" in str(rej["detail"])
    huge = b"\x00" * (MAX_PAYLOAD * 4)
    with pytest.raises(grpc.RpcError) as ei:  # over gRPC's own limit: refused before parsing
        env.raw_stub(env.cam1, "SubmitUpdate")(huge, timeout=5)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with env.client(env.cam1) as c, pytest.raises(ZtfmError):  # type: ignore[attr-defined]
        c.call("SubmitUpdate", big)  # and the client refuses to send it at all
    _unchanged(env, before)


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x05abc", b"", b"\x18\x01"])
def test_malformed_protobuf(env: Env, raw: bytes) -> None:
    before, mark = len(env.handler.calls), len(env.audit.events)
    with pytest.raises(grpc.RpcError) as ei:
        env.raw_stub(env.cam1, "SubmitUpdate")(raw, timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (rej,) = env.rejected_since(mark)
    assert rej["stage"] == "parse"
    _unchanged(env, before)


def test_device_claims_another_device_id(env: Env) -> None:
    rej = _refused_signed(env, env.cam1.keystore, device_id="cam-2")
    assert "claimed device id" in str(rej["detail"])


def test_signature_for_another_method(env: Env) -> None:
    rej = _refused_signed(env, env.cam1.keystore, method="GetModel", code=None)
    assert "signed for" in str(rej["detail"])


def test_stale_message(env: Env) -> None:
    rej = _refused_signed(env, env.cam1.keystore, age_s=600, code=None)
    assert rej["code"] == "stale"


def test_unknown_method(env: Env) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        env.raw_stub(env.cam1, "DropTables")(b"", timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_handler_error_is_a_value(env: Env) -> None:
    with env.client(env.cam1) as c, pytest.raises(RpcFailed) as ei:  # type: ignore[attr-defined]
        c.call("GetRound", b"refuse")
    assert ei.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert "handler refuses" not in ei.value.details and "error (ref" in ei.value.details


def test_deadline_and_retry_with_backoff(env: Env) -> None:
    sleeps: list[float] = []
    c = env.cam1.client(
        env.target,
        env.fleet.ca.cert,
        np.random.default_rng(7),
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05),
    )
    c.sleep = sleeps.append
    with pytest.raises(RpcFailed) as ei:
        c.call("GetRound", b"slow", timeout_s=0.3)
    assert ei.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert c.attempts == 3 and len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)
    c.close()


def test_unreachable_server_retries_then_fails() -> None:
    fleet = LocalFleet.create(FLEET, time.time())
    dev = fleet.enroll("cams", "cam-1", time.time())
    sleeps: list[float] = []
    c = dev.client(
        "127.0.0.1:9",
        fleet.ca.cert,
        np.random.default_rng(3),
        retry=RetryPolicy(max_attempts=4, base_delay_s=0.001),
    )
    c.sleep = sleeps.append
    with pytest.raises(RpcFailed) as ei:
        c.call("GetRound", b"", timeout_s=2)
    assert ei.value.status == grpc.StatusCode.UNAVAILABLE and len(sleeps) == 3
    again = RetryPolicy(max_attempts=4, base_delay_s=0.001)
    rng = np.random.default_rng(3)
    assert [again.delay_s(i, rng) for i in range(3)] == sleeps  # same seed -> same jitter
    c.close()


# --- enrolment over the network ------------------------------------------------------------------
def test_enrollment_server(tmp_path: Path) -> None:
    now = time.time()
    fleet = LocalFleet.create(FLEET, now)
    log = AuditLog(tmp_path / "audit.jsonl")
    srv = fleet.serve_enrollment(log)
    try:
        ident = Identity(FLEET, "cams", "device", "cam-new")
        token = fleet.ca.create_token(ident, now)
        keys = MemoryKeyStore()
        cert = enroll(srv.target, fleet.ca.cert, keys.make_csr(ident, token))
        assert cert.uris == (ident.uri,) and cert.public_key == keys.public_key
        assert fleet.registry.lookup(keys.public_key.fingerprint()) is not None
        for csr in (
            keys.make_csr(ident, token),  # token reuse
            MemoryKeyStore().make_csr(ident, "guessed"),  # wrong token
            MemoryKeyStore().make_csr(Identity(FLEET, "cams", "gateway", "x")),
        ):
            with pytest.raises(RpcFailed) as ei:
                enroll(srv.target, fleet.ca.cert, csr)
            assert ei.value.status == grpc.StatusCode.PERMISSION_DENIED
    finally:
        srv.stop(0)
        log.close()
    res = verify_log(tmp_path / "audit.jsonl")
    assert res.records == 4


def test_server_certificate_rotates_without_restart() -> None:
    now = time.time()
    fleet = LocalFleet.create(FLEET, now, cert_ttl_s=30)  # due for renewal after ~10 s
    clock = FixedClock(now)
    gate = fleet.gate(MemoryAuditSink(), StaticTrustSource(GOOD))
    handler = Recorder()
    srv = fleet.serve(handler, gate, clock=clock, max_workers=2)
    try:
        dev = fleet.enroll("cams", "cam-1", now, ttl_s=3600)
        c1 = dev.client(srv.target, fleet.ca.cert, np.random.default_rng(0), clock=clock)
        assert c1.call("GetRound", b"a") == b"ack:a"
        first = fleet.coordinator.cert.serial
        clock.advance(15)
        c2 = dev.client(srv.target, fleet.ca.cert, np.random.default_rng(1), clock=clock)
        assert c2.call("GetRound", b"b") == b"ack:b"  # new handshake with the renewed cert
        assert fleet.coordinator.cert.serial != first
        c1.close()
        c2.close()
    finally:
        srv.stop(0)


def test_client_validates_server_identity_and_revocation() -> None:
    from ztfm.transport.grpc_server import FleetServer, TlsFiles

    now = time.time()
    fleet = LocalFleet.create(FLEET, now)
    gate = fleet.gate(MemoryAuditSink(), StaticTrustSource(GOOD))
    srv = fleet.serve(Recorder(), gate, max_workers=2)
    dev = fleet.enroll("cams", "cam-1", now)
    try:
        c = dev.client(
            srv.target, fleet.ca.cert, np.random.default_rng(0), server_validator=fleet.validator()
        )
        assert c.server_identity is not None and c.server_identity.role == "coordinator"
        assert c.call("GetRound", b"a") == b"ack:a"
        c.close()
        fleet.revoke(fleet.coordinator, now)  # the coordinator's cert is revoked
        with pytest.raises(IdentityError, match="revoked"):
            dev.client(
                srv.target,
                fleet.ca.cert,
                np.random.default_rng(0),
                server_validator=fleet.validator(),
            )
    finally:
        srv.stop(0)
    # a *device* certificate (even with the right DNS name) must not serve as the coordinator
    impostor_id = Identity(FLEET, "cams", "device", "cam-evil")
    keys = MemoryKeyStore()
    with fleet.ca_lock:
        cert = fleet.ca.issue(
            keys.make_csr(impostor_id), impostor_id, now, 3600, ("localhost",), ("127.0.0.1",)
        )
    tls = TlsFiles(cert.to_pem(), keys.tls_private_key_pem(), fleet.ca.cert.to_pem())
    fake = FleetServer(
        fleet.gate(MemoryAuditSink(), StaticTrustSource(GOOD)), Recorder(), tls
    ).start()
    try:
        dev2 = fleet.enroll("cams", "cam-2", now)
        with pytest.raises(IdentityError, match="not a coordinator"):
            dev2.client(
                fake.target,
                fleet.ca.cert,
                np.random.default_rng(0),
                server_validator=fleet.validator(),
            )
    finally:
        fake.stop(0)


def test_enrollment_guessing_is_throttled(tmp_path: Path) -> None:
    now = time.time()
    fleet = LocalFleet.create(FLEET, now)
    audit = MemoryAuditSink()
    srv = fleet.serve_enrollment(audit, clock=FixedClock(now))  # frozen: no refill mid-test
    try:
        ident = Identity(FLEET, "cams", "device", "cam-x")
        codes = []
        for i in range(14):
            with pytest.raises(RpcFailed) as ei:
                enroll(srv.target, fleet.ca.cert, MemoryKeyStore().make_csr(ident, f"guess{i}"))
            codes.append(ei.value.status)
        assert codes[:10] == [grpc.StatusCode.PERMISSION_DENIED] * 10
        assert codes[10:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
        assert len(audit.of("enroll.rejected")) == 10 and len(audit.of("enroll.throttled")) == 1
        # a valid token is refused too while this source is throttled (no oracle for guesses)
        token = fleet.ca.create_token(ident, now)
        with pytest.raises(RpcFailed):
            enroll(srv.target, fleet.ca.cert, MemoryKeyStore().make_csr(ident, token))
    finally:
        srv.stop(0)


def test_device_builds_its_own_validator_from_the_signed_list(env: Env) -> None:
    with env.client(env.cam2) as c:  # type: ignore[attr-defined]
        validator = c.fetch_validator()
    assert validator.validate(env.fleet.coordinator.cert, time.time()).role == "coordinator"
    strict = env.cam2.client(
        env.target, env.fleet.ca.cert, np.random.default_rng(5), server_validator=validator
    )
    assert strict.server_identity is not None and strict.call("GetRound", b"v") == b"ack:v"
    strict.close()
