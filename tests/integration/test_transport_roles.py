"""A real coordinator (ztfm.coordinator) runs a federated round over mTLS gRPC: devices pull
their tasks and push their updates; a device cannot submit for another or twice."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.fl import codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.fl.strategy import FedAvg
from ztfm.policy import TrustContext
from ztfm.transport.gate import StaticTrustSource
from ztfm.transport.grpc_client import RpcFailed
from ztfm.transport.grpc_fleet import LocalFleet
from ztfm.transport.grpc_roles import CoordinatorService, DeviceLoop

PARAMS = [np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]


class StepDevice:
    """Endpoint that 'trains' by adding a fixed step to every parameter."""

    def __init__(self, device_id: str, step: float) -> None:
        self.device_id = device_id
        self.step = step

    def handle(self, data: bytes) -> bytes:
        task = codec.decode(data)
        assert isinstance(task, RoundTask)
        delta = [np.full_like(p, self.step) for p in task.params]
        return codec.encode(
            UpdateReply(
                task.round_id, self.device_id, task.model_version, delta, 10, 0.5, task.nonce
            )
        )


def test_round_over_grpc() -> None:
    now = time.time()
    fleet = LocalFleet.create("acme.example", now)
    coord = Coordinator(
        [p.copy() for p in PARAMS],
        FedAvg(),
        RoundSettings(deadline_s=60),
        rng=np.random.default_rng(0),
    )
    devices = {f"cam-{i}": fleet.enroll("cams", f"cam-{i}", now) for i in range(3)}
    for dev in devices:
        coord.register(dev, "cams")
    service = CoordinatorService(coord)
    gate = fleet.gate(MemoryAuditSink(), StaticTrustSource(TrustContext(0.9, True, 10, False)))
    srv = fleet.serve(service, gate, max_workers=4)
    try:
        clients = {
            d: c.client(srv.target, fleet.ca.cert, np.random.default_rng(i))
            for i, (d, c) in enumerate(devices.items())
        }
        loops = [DeviceLoop(clients[d], StepDevice(d, 1.0)) for d in devices]
        assert not loops[0].poll_once()  # no round open yet
        assert service.open_round() == sorted(devices)
        assert all(loop.poll_once() for loop in loops)
        assert not loops[0].poll_once()  # already replied this round
        assert service.pending() == []
        # a device re-sending its reply is refused and does not count twice
        task_raw = codec.encode(
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
            clients["cam-0"].call("SubmitUpdate", task_raw, round_id=1)
        assert ei.value.status == grpc.StatusCode.FAILED_PRECONDITION
        summary = service.close_round()
        assert sorted(summary.accepted) == sorted(devices)  # type: ignore[attr-defined]
        assert np.allclose(coord.params[0], 1.0)
        for c in clients.values():
            c.close()
    finally:
        srv.stop(0)
