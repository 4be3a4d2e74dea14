"""In-process transport: a whole fleet in one Python process, with simulated network timing.

Every message is encoded to bytes and decoded on the other side, exactly as on the network, so
byte counts are real and every parsing check runs. Latency, stragglers and failures are drawn
from a seeded ``LatencyModel``; a reply whose simulated arrival is after the round deadline is
submitted late and rejected by the coordinator, so timeouts follow the same code path as in a
real deployment. Runs are reproducible for a given seed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ztfm.errors import UpdateRejected, ZtfmError
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """A device as the transport sees it: bytes in, bytes out."""

    def handle(self, data: bytes) -> bytes: ...


class CoordinatorPort(Protocol):
    """The coordinator as the transport sees it (``ztfm.coordinator.core.Coordinator``)."""

    def open_round(self, now: float) -> dict[str, RoundTask]: ...
    def submit_bytes(self, sender: str, data: bytes, now: float) -> None: ...
    def close_round(self, now: float) -> object: ...
    def eval_tasks(self, devices: list[str] | None = None) -> dict[str, EvalTask]: ...
    def submit_eval(self, sender: str, reply: EvalReply) -> None: ...


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Simulated time for one device to receive a task, train and reply.

    base_s: compute time of a normal device; straggler_prob / straggler_factor: chance and
    slow-down of a straggler; failure_prob: chance that the device never replies (crash, lost
    link); uplink_bps / downlink_bps: link speeds for the message bytes.
    """

    base_s: float = 1.0
    jitter: float = 0.2
    straggler_prob: float = 0.0
    straggler_factor: float = 10.0
    failure_prob: float = 0.0
    uplink_bps: float = 1e6
    downlink_bps: float = 4e6

    def draw(self, rng: np.random.Generator, bytes_down: int, bytes_up: int) -> float | None:
        """Seconds until the reply arrives, or None if the device fails this round."""
        u = rng.random(3)
        if u[0] < self.failure_prob:
            return None
        compute = self.base_s * (1.0 + self.jitter * (2 * u[1] - 1))
        if u[2] < self.straggler_prob:
            compute *= self.straggler_factor
        return float(compute + 8 * bytes_down / self.downlink_bps + 8 * bytes_up / self.uplink_bps)


@dataclass(slots=True)
class RoundTraffic:
    """What one round cost on the (simulated) network and the clock."""

    round_id: int
    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    summary: object = None


class InProcessTransport:
    """Drives rounds between one coordinator and many in-process devices."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        *,
        rng: np.random.Generator,
        latency: LatencyModel | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.rng = rng
        self.latency = latency or LatencyModel()
        self._clock = clock

    def run_round(self, coord: CoordinatorPort, now: float) -> RoundTraffic:
        """One federated round: tasks out, local training, replies in, aggregation."""
        t0 = self._clock()
        tasks = coord.open_round(now)
        t1 = self._clock()
        round_id = next(iter(tasks.values())).round_id if tasks else -1
        traffic = RoundTraffic(round_id)
        deadline = max((t.deadline_s for t in tasks.values()), default=0.0)
        train_s = 0.0
        submit_s = 0.0
        a = self._clock()
        encoded = codec.encode_many(tasks)
        encode_s = self._clock() - a
        for dev in sorted(tasks):
            b = self._clock()
            down = encoded[dev]
            traffic.bytes_down[dev] = len(down)
            try:
                up = self.endpoints[dev].handle(down)
            except ZtfmError as exc:
                log.warning("device %s failed round %s: %s", dev, round_id, exc)
                traffic.failed.append(dev)
                train_s += self._clock() - b
                continue
            c = self._clock()
            train_s += c - b
            traffic.bytes_up[dev] = len(up)
            delay = self.latency.draw(self.rng, len(down), len(up))
            if delay is None:
                traffic.failed.append(dev)
                continue
            traffic.latency_s[dev] = delay
            with contextlib.suppress(UpdateRejected):  # the coordinator recorded the reason
                coord.submit_bytes(dev, up, now + delay)
            submit_s += self._clock() - c
        t2 = self._clock()
        traffic.summary = coord.close_round(now + deadline)
        t3 = self._clock()
        traffic.wall_s = {
            "select": t1 - t0,
            "encode": encode_s,
            "local_training": train_s,
            "verify": submit_s,
            "aggregate": t3 - t2,
            "round": t3 - t0,
        }
        return traffic

    def run_eval(self, coord: CoordinatorPort) -> dict[str, EvalReply]:
        """Every device evaluates the current global model on its own held-out data."""
        out: dict[str, EvalReply] = {}
        encoded = codec.encode_many(coord.eval_tasks(sorted(self.endpoints)))
        for dev, down in sorted(encoded.items()):
            reply = codec.decode(self.endpoints[dev].handle(down))
            if not isinstance(reply, EvalReply):
                raise UpdateRejected(f"{dev} answered an evaluation with {type(reply).__name__}")
            coord.submit_eval(dev, reply)
            out[dev] = reply
        return out
