"""The federated roles on the networked transport: a thin adapter, no round state of its own.

The round state machine (enrol -> train -> eval -> done, deadlines, round log) lives in
``ztfm.coordinator.service.CoordinatorService``; this module only needs its ``RoundTasks`` shape
(``register`` / ``next_task`` / ``submit``), so the transport (layer 5) never imports the
coordinator (layer 6).

``RoundRpcHandler`` is the ``RpcHandler`` plugged into a ``FleetServer``:

* ``GetRound`` registers the caller (device id and segment from its *certificate*) and returns
  its pending task: ``WAIT`` (``b""``) if none yet, ``DONE`` (``b"done"``) once training is over.
* ``SubmitUpdate`` hands the reply to ``RoundTasks.submit`` under the certificate identity; the
  device id inside the message must match it (checked by the coordinator), so a device can
  neither submit for another nor twice.
* ``Attest`` (TPM enrolment) is served by an optional ``AttestProvider``
  (``coordinator.attest.FleetAttestation``); per-round quotes travel as round tasks.
* ``GetModel`` is served by an optional ``ModelProvider`` (the coordinator's signed model
  bundles: ``encode_model_update`` / ``decode_model_update``).

``DeviceLoop`` is the device side: it polls ``GetRound`` with a ``FleetClient``, runs the task
through an ``Endpoint`` (``bytes -> bytes``, e.g. the device agent) and submits the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import Final, Protocol

import grpc

from ztfm.errors import RoundError, SecAggError
from ztfm.fl import codec
from ztfm.identity import Identity
from ztfm.transport.grpc_client import FleetClient, RpcFailed
from ztfm.transport.inproc import Endpoint
from ztfm.types import Clock, SystemClock

log = logging.getLogger(__name__)

WAIT: Final = b""  # nothing for you yet: poll again later
DONE: Final = b"done"  # training is over: stop polling

ModelProvider = Callable[[Identity, bytes], bytes]  # (caller, request payload) -> reply
AttestProvider = Callable[[Identity, bytes, float], bytes]  # (caller, payload, now) -> reply

_MAX_MODEL_MEMBERS: Final = 3


def encode_model_update(bundle: bytes, head: bytes, proof: bytes) -> bytes:
    """``GetModel`` reply: a signed bundle (with its ledger receipt), the signed tree head the
    receipt is for, and a consistency proof from the caller's trusted head (may be empty)."""
    out = bytearray(b"ZTFMMU1")
    for part in (bundle, head, proof):
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def decode_model_update(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Parse ``encode_model_update``; anything else raises ``RoundError``."""
    if not data.startswith(b"ZTFMMU1"):
        raise RoundError("model update has a wrong header")
    pos, parts = 7, []
    for _ in range(_MAX_MODEL_MEMBERS):
        if pos + 4 > len(data):
            raise RoundError("model update is truncated")
        n = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if pos + n > len(data):
            raise RoundError("model update is truncated")
        parts.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise RoundError("model update has trailing bytes")
    return parts[0], parts[1], parts[2]


class RoundTasks(Protocol):
    """The pull/push round state as the transport sees it (``coordinator.service``).

    ``next_task`` returns the caller's encoded task, ``WAIT`` or ``DONE``; ``submit`` raises a
    ``ZtfmError`` (e.g. ``UpdateRejected``) to refuse a reply.
    """

    def register(self, device_id: str, segment: str) -> None: ...
    def next_task(self, device_id: str) -> bytes: ...
    def submit(self, device_id: str, data: bytes, now: float) -> None: ...


class RoundRpcHandler:
    """``RpcHandler`` serving round tasks to authenticated devices; stateless itself."""

    def __init__(
        self,
        tasks: RoundTasks,
        *,
        clock: Clock | None = None,
        model: ModelProvider | None = None,
        attest: AttestProvider | None = None,
        roles: frozenset[str] = frozenset({"device"}),
    ) -> None:
        self.tasks = tasks
        self.clock: Clock = clock or SystemClock()
        self.model = model
        self.attest = attest
        self.roles = roles
        self.told_done: set[str] = set()  # devices that have been told training is over

    def __call__(self, identity: Identity, method: str, payload: bytes) -> bytes:
        if method == "GetModel" and self.model is not None:
            return self.model(identity, payload)
        if method == "Attest" and self.attest is not None:
            return self.attest(identity, payload, self.clock.now())
        if method not in ("GetRound", "SubmitUpdate"):
            raise RoundError(f"{method} is not served by this coordinator")
        if identity.role not in self.roles:
            raise RoundError(f"role {identity.role} does not take part in rounds")
        if method == "GetRound":
            if payload:
                raise RoundError("GetRound takes an empty payload")
            self.tasks.register(identity.device_id, identity.segment)
            task = self.tasks.next_task(identity.device_id)
            if task == DONE:
                self.told_done.add(identity.device_id)
            return task
        self.tasks.submit(identity.device_id, payload, self.clock.now())
        return b""


class PollResult(Enum):
    HANDLED = "handled"  # a task was run and its reply accepted
    WAIT = "wait"  # nothing to do yet
    REFUSED = "refused"  # the coordinator refused the reply (e.g. too late), or the device aborted
    DONE = "done"  # training is over


class DeviceLoop:
    """A device's side of pull-based rounds: fetch task, run the endpoint, send the reply."""

    def __init__(
        self,
        client: FleetClient,
        endpoint: Endpoint,
        accept: Callable[[object], bool] | None = None,
    ) -> None:
        """``accept(task)`` runs before a task is handled; False = not now (treated as WAIT)."""
        self.client = client
        self.endpoint = endpoint
        self.accept = accept
        self.tasks_done = 0
        self.refused = 0
        self.aborted = 0  # secure rounds this device aborted (``SecAggError`` from the endpoint)
        self.done = False
        self._last_task: bytes | None = None

    @property
    def rounds_done(self) -> int:  # kept for callers of the first version
        return self.tasks_done

    def poll(self) -> PollResult:
        """One poll. Raises ``RpcFailed`` if ``GetRound`` itself is refused (identity, policy)."""
        if self.done:
            return PollResult.DONE
        task = self.client.call("GetRound", b"")
        if task == DONE:
            self.done = True
            return PollResult.DONE
        if task == WAIT or task == self._last_task:
            return PollResult.WAIT  # the second case: our reply is still on its way
        msg = codec.decode(task)
        if self.accept is not None and not self.accept(msg):
            return PollResult.WAIT
        try:
            reply = self.endpoint.handle(task)
        except SecAggError as exc:
            # the endpoint aborted its part in a secure round (e.g. a neighbour's key is not
            # endorsed by its certificate): no reply, so the coordinator counts it as a
            # dropout of that phase; the device goes on with the next task
            self._last_task = task
            self.aborted += 1
            log.warning("secure round %s: this device aborts: %s", msg.round_id, exc)
            return PollResult.REFUSED
        self._last_task = task
        try:
            self.client.call("SubmitUpdate", reply, round_id=int(msg.round_id))
        except RpcFailed as exc:
            if exc.status != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # refused by the round logic (deadline passed, round closed, retry of a delivered
            # reply): the device keeps going with the next task
            log.warning("reply to round %s refused: %s", msg.round_id, exc.details)
            self.refused += 1
            return PollResult.REFUSED
        self.tasks_done += 1
        return PollResult.HANDLED

    def poll_once(self) -> bool:
        """True if a task was handled; False otherwise."""
        return self.poll() is PollResult.HANDLED
