"""Scenario: a federated round over mTLS gRPC while insiders attack the transport.

Three honest cameras and two insiders with valid fleet certificates: a camera that replays a
captured update of another camera, claims another camera's id, and re-submits; and a PLC from
another segment that tries to join the cameras' round. The round aggregates exactly the honest
updates, and every attack is in the audit log with its reason.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.coordinator.service import CoordinatorService
from ztfm.fl import codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.fl.strategy import FedAvg
from ztfm.identity import sign_request
from ztfm.policy import TrustContext
from ztfm.transport.gate import StaticTrustSource
from ztfm.transport.grpc_client import RpcFailed
from ztfm.transport.grpc_fleet import LocalFleet
from ztfm.transport.grpc_roles import RoundRpcHandler
from ztfm.wire.codec import encode_signed_request

PARAMS = [np.zeros(4, dtype=np.float32)]


def _reply(task_bytes: bytes, device_id: str, step: float) -> bytes:
    task = codec.decode(task_bytes)
    assert isinstance(task, RoundTask)
    delta = [np.full_like(p, step) for p in task.params]
    return codec.encode(
        UpdateReply(task.round_id, device_id, task.model_version, delta, 10, 0.1, task.nonce)
    )


def test_insider_attacks_during_a_round() -> None:
    now = time.time()
    fleet = LocalFleet.create("acme.example", now)
    audit = MemoryAuditSink()
    coord = Coordinator(
        [p.copy() for p in PARAMS], FedAvg(), RoundSettings(), rng=np.random.default_rng(0)
    )
    honest = {f"cam-{i}": fleet.enroll("cams", f"cam-{i}", now) for i in range(3)}
    evil = fleet.enroll("cams", "cam-evil", now)
    plc = fleet.enroll("plcs", "plc-1", now)
    for d in [*honest, "cam-evil"]:
        coord.register(d, "cams")
    service = CoordinatorService(coord, rounds=1, expected_devices=4)
    srv = fleet.serve(
        RoundRpcHandler(service),
        fleet.gate(audit, StaticTrustSource(TrustContext(0.9, True, 5, False))),
    )
    try:
        service.step(time.time())
        assert service.phase == "train"
        clients = {
            d: c.client(srv.target, fleet.ca.cert, np.random.default_rng(i))
            for i, (d, c) in enumerate(honest.items())
        }
        ev = evil.client(srv.target, fleet.ca.cert, np.random.default_rng(9))
        pl = plc.client(srv.target, fleet.ca.cert, np.random.default_rng(10))

        # honest camera 0 submits; the insider captured its signed request on the wire
        task0 = clients["cam-0"].call("GetRound", b"")
        body = _reply(task0, "cam-0", 1.0)
        env = sign_request(honest["cam-0"].keystore, "SubmitUpdate", 1, "cam-0", body, time.time())
        captured = encode_signed_request(env, body)
        stub = grpc.secure_channel(
            srv.target,
            grpc.ssl_channel_credentials(
                fleet.ca.cert.to_pem(), evil.keystore.tls_private_key_pem(), evil.cert.to_pem()
            ),
            options=[("grpc.ssl_target_name_override", "localhost")],
        ).unary_unary("/ztfm.v1.Fleet/SubmitUpdate")
        with pytest.raises(grpc.RpcError):  # replay on the insider's own session
            stub(captured, timeout=5)
        clients["cam-0"].call("SubmitUpdate", body, round_id=1)

        # the insider claims to be cam-1 inside the message, then poisons under its own name
        task_e = ev.call("GetRound", b"")
        with pytest.raises(RpcFailed):
            ev.call("SubmitUpdate", _reply(task_e, "cam-1", 100.0), round_id=1)
        # the PLC tries to join the cameras' round
        with pytest.raises(RpcFailed) as ei:
            pl.call("GetRound", b"", resource="round:cams")
        assert ei.value.status == grpc.StatusCode.PERMISSION_DENIED

        for d in ("cam-1", "cam-2"):
            t = clients[d].call("GetRound", b"")
            clients[d].call("SubmitUpdate", _reply(t, d, 1.0), round_id=1)
        # the insider's task was spent on its refused reply: every task is answered, so the
        # phase driver closes the round at once
        service.step(time.time())
        assert service.phase == "eval"
        summary = service.log.summaries[0]
    finally:
        srv.stop(0)
    assert sorted(summary.accepted) == ["cam-0", "cam-1", "cam-2"]
    assert np.allclose(coord.params[0], 1.0)  # the poisoned 100.0 never counted
    rejected = [f for e, f, _ in audit.events if e == "rpc.rejected"]
    assert any("signer" in str(f["detail"]) for f in rejected)
    assert any(f["stage"] == "policy" and "plc-1" in str(f["peer"]) for f in rejected)
    assert any(
        e == "rpc.handler_error" and f["peer"].endswith("cam-evil")  # type: ignore[union-attr]
        for e, f, _ in audit.events
    )
