"""The federated roles on the networked transport: pull-based rounds over the fleet RPCs.

``CoordinatorService`` is an ``RpcHandler`` that puts a coordinator (anything with the
``CoordinatorPort`` shape of ``transport.inproc``) behind a ``FleetServer``: the operator opens a
round, each selected device pulls its own task with ``GetRound``, trains, and pushes its reply
with ``SubmitUpdate``; then the round is closed. ``DeviceLoop`` is the device side: it drives an
``Endpoint`` (``bytes -> bytes``, e.g. the device agent) with a ``FleetClient``.

The identity a reply is attributed to is always the authenticated caller's certificate
identity, never a field of the message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import grpc

from ztfm.errors import RoundError, UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask
from ztfm.identity import Identity
from ztfm.transport.grpc_client import FleetClient, RpcFailed
from ztfm.transport.inproc import CoordinatorPort, Endpoint
from ztfm.types import Clock, SystemClock

ModelProvider = Callable[[Identity], bytes]


class CoordinatorService:
    """Serves one coordinator to the fleet. Thread-safe (one lock around the coordinator)."""

    def __init__(
        self,
        coordinator: CoordinatorPort,
        *,
        clock: Clock | None = None,
        model: ModelProvider | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.clock: Clock = clock or SystemClock()
        self.model = model
        self._lock = threading.Lock()
        self._tasks: dict[str, bytes] = {}
        self._round_id: int | None = None
        self.submitted: set[str] = set()

    # --- operator side --------------------------------------------------------------------------
    def open_round(self) -> list[str]:
        """Open a round; return the devices that have a task waiting for them."""
        with self._lock:
            tasks: dict[str, RoundTask] = self.coordinator.open_round(self.clock.now())
            self._tasks = codec.encode_many(tasks)
            self._round_id = next(iter(tasks.values())).round_id if tasks else None
            self.submitted = set()
            return sorted(self._tasks)

    def open_eval(self, devices: Sequence[str] | None = None) -> list[str]:
        """After a round: offer evaluation tasks (``GetRound`` returns them)."""
        with self._lock:
            tasks: dict[str, EvalTask] = self.coordinator.eval_tasks(
                list(devices) if devices is not None else None
            )
            self._tasks = codec.encode_many(tasks)
            self.submitted = set()
            return sorted(self._tasks)

    def close_round(self) -> object:
        with self._lock:
            self._tasks = {}
            self._round_id = None
            return self.coordinator.close_round(self.clock.now())

    def pending(self) -> list[str]:
        """Devices with a task that have not replied yet."""
        with self._lock:
            return sorted(set(self._tasks) - self.submitted)

    # --- RpcHandler -----------------------------------------------------------------------------
    def __call__(self, identity: Identity, method: str, payload: bytes) -> bytes:
        device = identity.device_id
        if method == "GetRound":
            with self._lock:
                task = self._tasks.get(device)
                done = device in self.submitted
            if task is None or done:
                raise RoundError("no task for this device now")
            return task
        if method == "SubmitUpdate":
            msg = codec.decode(payload)
            with self._lock:
                if device not in self._tasks:
                    raise UpdateRejected("no open task for this device")
                if device in self.submitted:
                    raise UpdateRejected("this device already replied in this round")
                if isinstance(msg, EvalReply):
                    self.coordinator.submit_eval(device, msg)
                else:
                    self.coordinator.submit_bytes(device, payload, self.clock.now())
                self.submitted.add(device)
            return b""
        if method == "GetModel" and self.model is not None:
            return self.model(identity)
        raise RoundError(f"{method} is not served by this coordinator")


class DeviceLoop:
    """A device's side of pull-based rounds: fetch task, run the endpoint, send the reply."""

    def __init__(self, client: FleetClient, endpoint: Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint
        self.rounds_done = 0
        self._last_task: bytes | None = None

    def poll_once(self) -> bool:
        """One poll. True if a task was handled; False if the coordinator had none for us."""
        try:
            task = self.client.call("GetRound", b"")
        except RpcFailed as exc:
            if exc.status == grpc.StatusCode.FAILED_PRECONDITION:
                return False
            raise
        if task == self._last_task:
            return False  # already handled (our reply may still be in flight)
        msg = codec.decode(task)
        reply = self.endpoint.handle(task)
        self.client.call("SubmitUpdate", reply, round_id=int(msg.round_id))
        self._last_task = task
        self.rounds_done += 1
        return True
