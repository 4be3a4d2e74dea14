"""The coordinator's round state machine (``coordinator.service``) runs federated rounds over
mTLS gRPC through the thin ``RoundRpcHandler``: devices pull their tasks and push their replies;
a device cannot submit for another, twice, or without a task; other roles cannot take part."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.coordinator.service import CoordinatorService
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask, UpdateReply
from ztfm.fl.strategy import FedAvg
from ztfm.identity import Identity
from ztfm.policy import TrustContext
from ztfm.transport.gate import StaticTrustSource
from ztfm.transport.grpc_client import RpcFailed
from ztfm.transport.grpc_fleet import LocalFleet
from ztfm.transport.grpc_roles import DONE, WAIT, DeviceLoop, PollResult, RoundRpcHandler

PARAMS = [np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]


class StepDevice:
    """Endpoint that 'trains' by adding a fixed step to every parameter and evaluates trivially."""

    def __init__(self, device_id: str, step: float) -> None:
        self.device_id = device_id
        self.step = step

    def handle(self, data: bytes) -> bytes:
        task = codec.decode(data)
        if isinstance(task, EvalTask):
            return codec.encode(
                EvalReply(
                    task.round_id, self.device_id, task.model_version, 1, 0, 0, 1, 1.0, task.nonce
                )
            )
        assert isinstance(task, RoundTask)
        delta = [np.full_like(p, self.step) for p in task.params]
        return codec.encode(
            UpdateReply(
                task.round_id, self.device_id, task.model_version, delta, 10, 0.5, task.nonce
            )
        )


def _service(rounds: int = 1, devices: int = 3) -> CoordinatorService:
    coord = Coordinator(
        [p.copy() for p in PARAMS],
        FedAvg(),
        RoundSettings(deadline_s=60),
        rng=np.random.default_rng(0),
    )
    return CoordinatorService(coord, rounds=rounds, expected_devices=devices)


def _trust() -> StaticTrustSource:
    return StaticTrustSource(TrustContext(0.9, True, 10, False))


def test_round_over_grpc() -> None:
    now = time.time()
    fleet = LocalFleet.create("acme.example", now)
    devices = {f"cam-{i}": fleet.enroll("cams", f"cam-{i}", now) for i in range(3)}
    service = _service(rounds=1)
    gate = fleet.gate(MemoryAuditSink(), _trust())
    srv = fleet.serve(RoundRpcHandler(service), gate, max_workers=4)
    try:
        clients = {
            d: c.client(srv.target, fleet.ca.cert, np.random.default_rng(i))
            for i, (d, c) in enumerate(devices.items())
        }
        loops = [DeviceLoop(clients[d], StepDevice(d, 1.0)) for d in devices]
        # polling registers each device (identity from its certificate); no round yet
        assert [loop.poll() for loop in loops] == [PollResult.WAIT] * 3
        assert sorted(service.coordinator.devices) == sorted(devices)
        assert service.coordinator.devices["cam-0"] == "cams"
        service.step(time.time())
        assert service.phase == "train"
        assert all(loop.poll() is PollResult.HANDLED for loop in loops)
        assert loops[0].poll() is PollResult.WAIT  # already replied this round
        # a device re-sending its reply is refused and does not count twice
        dup = codec.encode(
            UpdateReply(
                1,
                "cam-0",
                0,
                [np.ones((3, 2), np.float32), np.ones(2, np.float32)],
                10,
                0.5,
                b"\x00" * 16,
            )
        )
        with pytest.raises(RpcFailed) as ei:
            clients["cam-0"].call("SubmitUpdate", dup, round_id=1)
        assert ei.value.status == grpc.StatusCode.FAILED_PRECONDITION
        service.step(time.time())  # every selected device replied: aggregate, then evaluation
        assert service.phase == "eval"
        summary = service.log.summaries[0]
        assert sorted(summary.accepted) == sorted(devices)
        assert np.allclose(service.coordinator.params[0], 1.0)
        assert all(loop.poll() is PollResult.HANDLED for loop in loops)  # evaluation tasks
        service.step(time.time())
        assert service.finished.is_set() and sorted(service.log.evals[0]) == sorted(devices)
        assert all(loop.poll() is PollResult.DONE for loop in loops)
        assert all(loop.done for loop in loops)
        for c in clients.values():
            c.close()
    finally:
        srv.stop(0)


class _Tasks:
    """A recording ``RoundTasks`` for the adapter's own checks."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []
        self.submitted: list[tuple[str, bytes]] = []

    def register(self, device_id: str, segment: str) -> None:
        self.registered.append((device_id, segment))

    def next_task(self, device_id: str) -> bytes:
        return WAIT

    def submit(self, device_id: str, data: bytes, now: float) -> None:
        self.submitted.append((device_id, data))


CAM = Identity("acme.example", "cams", "device", "cam-1")


def test_adapter_refuses_other_roles_and_methods() -> None:
    from ztfm.errors import RoundError

    tasks = _Tasks()
    handler = RoundRpcHandler(tasks)
    for role in ("gateway", "coordinator"):
        who = Identity("acme.example", "cams", role, "x-1")
        with pytest.raises(RoundError, match="does not take part"):
            handler(who, "GetRound", b"")
        with pytest.raises(RoundError, match="does not take part"):
            handler(who, "SubmitUpdate", b"x")
    with pytest.raises(RoundError, match="not served"):
        handler(CAM, "GetModel", b"")
    with pytest.raises(RoundError, match="not served"):
        handler(CAM, "Enroll", b"")
    with pytest.raises(RoundError, match="empty payload"):
        handler(CAM, "GetRound", b"junk")
    assert tasks.registered == [] and tasks.submitted == []


def test_adapter_attributes_to_certificate_identity() -> None:
    tasks = _Tasks()
    handler = RoundRpcHandler(tasks, model=lambda ident, payload: ident.segment.encode() + payload)
    assert handler(CAM, "GetRound", b"") == WAIT
    assert handler(CAM, "SubmitUpdate", b"reply") == b""
    assert handler(CAM, "GetModel", b"!") == b"cams!"
    assert tasks.registered == [("cam-1", "cams")]
    assert tasks.submitted == [("cam-1", b"reply")]
    assert DONE == b"done"


def test_model_update_framing_rejects_malformed() -> None:
    from ztfm.errors import RoundError
    from ztfm.transport.grpc_roles import decode_model_update, encode_model_update

    good = encode_model_update(b"bundle", b"head", b"")
    assert decode_model_update(good) == (b"bundle", b"head", b"")
    for bad in (b"", b"ZTFMMU0" + good[7:], good[:-1], good + b"x", good[:9], b"ZTFMMU1"):
        with pytest.raises(RoundError):
            decode_model_update(bad)
    huge = b"ZTFMMU1" + (2**32 - 1).to_bytes(4, "big") + b"x"
    with pytest.raises(RoundError, match="truncated"):
        decode_model_update(huge)
