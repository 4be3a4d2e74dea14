"""The coordinator behind a network: devices pull their next task and push their replies.

A networked transport (gRPC over mTLS) authenticates the caller and then calls ``next_task`` /
``submit`` with the caller's device id, taken from its certificate. A driver thread calls
``step`` with the current time to move the fleet through its phases:

    attest (round r)      -> with ``attestation``: every enrolled device quotes a fresh nonce
    train (round r open)  -> all selected replied or deadline -> aggregate
    secure (with ``secure``) -> SecAgg+ phases advertise, share, mask, confirm, unmask: each a
                             task per live device and a reply, closed when all replied or at
                             ``secure_deadline_s``; the coordinator gets only the aggregate step
    eval  (model v)       -> every registered device evaluated or deadline -> next round
    done                  -> after the last round

A round that cannot open (fewer eligible devices than the strategy needs) or whose aggregation
fails is recorded as failed (``RoundLog.failed``) and still evaluated, and the run goes on to
the next round, as ``ztfm simulate`` does; the model is kept.

The same ``Coordinator`` object is used as in simulation, so a fleet reaches the same model for
the same seed over the network as in process.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ztfm.coordinator.core import Coordinator, RoundSummary
from ztfm.coordinator.secure import SecureAggregator, SecurePhases
from ztfm.crypto.signing import VerifyKey
from ztfm.errors import CryptoError, IdentityError, RoundError, UpdateRejected, ZtfmError
from ztfm.fl import codec
from ztfm.fl.messages import EndorsedKey, EvalReply, SecAggReply, SecAggTask
from ztfm.identity import CertValidator, verify_secagg_endorsement

log = logging.getLogger(__name__)

WAIT = b""  # "nothing for you yet": poll again later


@dataclass(slots=True)
class RoundLog:
    """What happened in each round, for metrics and the final report.

    Rounds are numbered 1, 2, ... in the order the service runs them (simulate's ``round``);
    a failed round keeps its number, so ``closed`` and ``failed`` are keyed by it. ``evals``,
    ``bytes_up`` and ``bytes_down`` hold one entry per round run (index = round - 1);
    ``summaries`` only the rounds that produced a model, in order; ``failures`` every failure
    reason, a driver crash included."""

    evals: list[dict[str, EvalReply]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    bytes_up: list[dict[str, int]] = field(default_factory=list)
    bytes_down: list[dict[str, int]] = field(default_factory=list)
    closed: dict[int, RoundSummary] = field(default_factory=dict)  # round -> its summary
    failed: dict[int, str] = field(default_factory=dict)  # round -> why it failed

    @property
    def summaries(self) -> list[RoundSummary]:
        return [self.closed[r] for r in sorted(self.closed)]

    def record_closed(self, round_no: int, summary: RoundSummary) -> None:
        self.closed[round_no] = summary

    def record_failed(self, round_no: int, reason: str) -> None:
        self.failures.append(reason)
        self.failed[round_no] = reason


class RoundAttestation(Protocol):
    """A per-round attestation challenge (``coordinator.attest.FleetAttestation``)."""

    def round_tasks(
        self, devices: Iterable[str], round_id: int, now: float
    ) -> dict[str, bytes]: ...
    def submit(self, device_id: str, data: bytes, now: float) -> None: ...


class CoordinatorService:
    """Thread-safe pull/push façade over a ``Coordinator`` for networked devices."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        rounds: int,
        expected_devices: int,
        eval_deadline_s: float = 60.0,
        on_round: Callable[[int, dict[str, Any]], None] | None = None,
        attestation: RoundAttestation | None = None,
        attest_deadline_s: float = 30.0,
        secure: SecureAggregator | None = None,
        secure_deadline_s: float = 30.0,
        endorsements: CertValidator | None = None,
    ) -> None:
        """With ``attestation``, each round starts with an ``attest`` phase (at most
        ``attest_deadline_s``): its gate then admits only devices that passed. With ``secure``,
        rounds run SecAgg+ (each protocol phase at most ``secure_deadline_s``): devices keep
        their updates and the coordinator is handed only the aggregate. ``endorsements`` (the
        fleet CA validator; ``CoordinatorServer`` sets it) refuses a train reply whose SecAgg
        key is not endorsed by the sender's certificate: an early, audited refusal only, since
        every device checks its neighbours' endorsements itself."""
        self.secure = secure
        self.secure_deadline_s = secure_deadline_s
        self.endorsements = endorsements
        self._phases: SecurePhases | None = None
        self._expect: dict[str, tuple[int, str, bytes]] = {}  # device -> (round, phase, nonce)
        self._keys: dict[str, EndorsedKey] = {}  # this round's endorsed SecAgg identity keys
        self.coordinator = coordinator
        self.attestation = attestation
        self.attest_deadline_s = attest_deadline_s
        self.rounds = rounds
        self.expected_devices = expected_devices
        self.eval_deadline_s = eval_deadline_s
        self.phase = "enrol"
        self.log = RoundLog()
        self._lock = threading.Lock()
        self._tasks: dict[str, bytes] = {}
        self._done_round = 0
        self._phase_started = 0.0
        self._up: dict[str, int] = {}
        self._down: dict[str, int] = {}
        self._on_round = on_round
        self.finished = threading.Event()

    # --- called by the transport, on behalf of an authenticated device ----------------------
    def register(self, device_id: str, segment: str) -> None:
        with self._lock:
            if device_id not in self.coordinator.devices:
                self.coordinator.register(device_id, segment)

    def next_task(self, device_id: str) -> bytes:
        """The device's pending task (encoded), ``WAIT`` if none, ``b"done"`` at the end."""
        with self._lock:
            if self.phase == "done":
                return b"done"
            data = self._tasks.get(device_id, WAIT)
            if data:
                self._down[device_id] = self._down.get(device_id, 0) + len(data)
            return data

    def submit(self, device_id: str, data: bytes, now: float) -> None:
        """A reply from ``device_id``; raises ``UpdateRejected`` with the reason if refused."""
        with self._lock:
            if self.secure is not None and self.phase in ("train", "secure"):
                self._secure_submit(device_id, data, now)
                return
            if self._tasks.pop(device_id, None) is None:
                raise UpdateRejected(f"{device_id} has no open task")
            self._up[device_id] = self._up.get(device_id, 0) + len(data)
            if self.phase == "train":
                self.coordinator.submit_bytes(device_id, data, now)
            elif self.phase == "attest":
                assert self.attestation is not None
                self.attestation.submit(device_id, data, now)
            elif self.phase == "eval":
                msg = codec.decode(data)
                if not isinstance(msg, EvalReply):
                    raise UpdateRejected("expected an evaluation reply")
                self.coordinator.submit_eval(device_id, msg)
            else:
                raise UpdateRejected(f"no replies are taken in phase {self.phase}")

    # --- called by the driver thread ---------------------------------------------------------
    def step(self, now: float) -> None:
        """Advance the phase if its work is complete or its deadline has passed."""
        with self._lock:
            if self.phase == "enrol":
                if len(self.coordinator.devices) >= self.expected_devices:
                    self._open_round(now)
            elif self.phase == "attest":
                if not self._tasks or now - self._phase_started > self.attest_deadline_s:
                    self._open_train(now)
            elif self.phase == "train":
                deadline = self.coordinator.settings.deadline_s
                if not self._tasks or now - self._phase_started > deadline:
                    if self.secure is not None:
                        self._open_secure(now)
                    else:
                        self._close_train(now)
            elif self.phase == "secure":
                if not self._tasks or now - self._phase_started > self.secure_deadline_s:
                    self._advance_secure(now)
            elif self.phase == "eval" and (
                not self._tasks or now - self._phase_started > self.eval_deadline_s
            ):
                self._close_eval(now)

    def _open_round(self, now: float) -> None:
        if self.attestation is None:
            self._open_train(now)
            return
        self._tasks = self.attestation.round_tasks(
            sorted(self.coordinator.devices), self.coordinator.next_round_id, now
        )
        self.phase, self._phase_started = "attest", now

    def _open_train(self, now: float) -> None:
        self._up, self._down = {}, {}
        try:
            tasks = self.coordinator.open_round(now)
        except RoundError as exc:
            # nobody to train (e.g. every device gated by trust or out of privacy budget): as
            # in simulate, the round is failed, the kept model is still evaluated, and the run
            # goes on
            self.log.record_failed(self._round_no, str(exc))
            self._after_train(now)
            return
        self._tasks = codec.encode_many(tasks)
        if self.secure is not None:
            rid = self.coordinator.next_round_id
            self._expect = {d: (rid, "train", t.nonce) for d, t in tasks.items()}
            self._keys = {}
        self.phase, self._phase_started = "train", now

    # --- secure rounds -------------------------------------------------------------------------
    def _secure_submit(self, device_id: str, data: bytes, now: float) -> None:
        """A reply of a secure round: it must be a ``SecAggReply`` from the authenticated
        device, for the task it holds (round, phase and that task's fresh nonce); only then is
        the task used up. Anything else is refused and the task stays open."""
        expected = self._expect.get(device_id)
        if expected is None or device_id not in self._tasks:
            raise UpdateRejected(f"{device_id} has no open task")
        msg = codec.decode(data)
        if not isinstance(msg, SecAggReply):
            raise UpdateRejected(f"expected a secure-aggregation reply, got {type(msg).__name__}")
        if msg.device_id != device_id:
            raise UpdateRejected(f"{device_id} sent a reply in the name of {msg.device_id!r}")
        if (msg.round_id, msg.phase, msg.nonce) != expected:
            raise UpdateRejected(
                f"reply of {device_id} is not for its open task (round {expected[0]}, "
                f"phase {expected[1]}): stale or replayed"
            )
        if msg.phase == "train":
            self._keys[device_id] = self._endorsed_key(device_id, msg.round_id, msg.payload, now)
        else:
            assert self._phases is not None
            self._phases.receive(device_id, msg.payload)
        del self._tasks[device_id]
        del self._expect[device_id]
        self._up[device_id] = self._up.get(device_id, 0) + len(data)

    def _endorsed_key(
        self, device_id: str, round_id: int, payload: bytes, now: float
    ) -> EndorsedKey:
        """The train reply's endorsed SecAgg key; with ``endorsements``, refused unless the
        sender's certificate endorses it for this round."""
        ek = codec.decode_endorsed_key(payload)
        try:
            VerifyKey(ek.key)
        except CryptoError as exc:
            raise UpdateRejected("train reply must carry a valid 32-byte identity key") from exc
        if self.endorsements is not None:
            try:
                verify_secagg_endorsement(
                    self.endorsements,
                    ek.cert,
                    ek.signature,
                    device_id=device_id,
                    round_id=round_id,
                    secagg_key=ek.key,
                    now=now,
                )
            except IdentityError as exc:
                raise UpdateRejected(
                    f"SecAgg key of {device_id} is not endorsed by its device certificate: {exc}"
                ) from exc
        return ek

    def _secure_tasks(self, round_id: int) -> None:
        assert self._phases is not None
        phase = self._phases.phase
        self._tasks, self._expect = {}, {}
        for dev, payload in sorted(self._phases.tasks().items()):
            nonce = secrets.token_bytes(16)  # not the coordinator's rng: results stay seeded
            self._tasks[dev] = codec.encode(SecAggTask(round_id, phase, nonce, payload))
            self._expect[dev] = (round_id, phase, nonce)

    def _open_secure(self, now: float) -> None:
        assert self.secure is not None
        state = self.coordinator.round
        assert state is not None
        self._tasks, self._expect = {}, {}
        try:
            self._phases = SecurePhases(self.secure, state.round_id, state.selected, self._keys)
        except ZtfmError as exc:
            self._secure_failed(str(exc), now)
            return
        self._secure_tasks(state.round_id)
        self.phase, self._phase_started = "secure", now

    def _advance_secure(self, now: float) -> None:
        phases = self._phases
        assert phases is not None and self.secure is not None
        if phases.advance():
            self._secure_tasks(phases.round_id)
            self._phase_started = now
            return
        self._tasks, self._expect = {}, {}
        try:
            step, included = self.secure.finish(phases.round_id, phases.outcomes, now=now)
        except RoundError as exc:
            self._secure_failed(str(exc), now)
            return
        summary = self.coordinator.close_secure_round(
            step,
            included,
            phases.rejected(),
            now,
            server_lr=self.secure.settings.server_lr,
        )
        self.log.record_closed(self._round_no, summary)
        self._after_train(now)

    def _secure_failed(self, reason: str, now: float) -> None:
        self.coordinator.abort_round(reason, now)
        self.log.record_failed(self._round_no, reason)
        self._after_train(now)

    @property
    def _round_no(self) -> int:
        """The number of the round in progress (1, 2, ...; a failed round counts)."""
        return self._done_round + 1

    def _after_train(self, now: float) -> None:
        self._phases = None
        self.log.bytes_up.append(dict(self._up))
        self.log.bytes_down.append(dict(self._down))
        self._tasks = codec.encode_many(self.coordinator.eval_tasks())
        self._expect = {}
        self.phase, self._phase_started = "eval", now

    def _close_train(self, now: float) -> None:
        self._tasks = {}
        try:
            self.log.record_closed(self._round_no, self.coordinator.close_round(now))
        except RoundError as exc:
            self.log.record_failed(self._round_no, str(exc))
        self._after_train(now)

    def _close_eval(self, now: float) -> None:
        self._tasks = {}
        evals = self.coordinator.eval_results()
        self.log.evals.append(evals)
        self._done_round += 1
        if self._on_round is not None:
            self._on_round(self._done_round, {"evals": evals})
        if self._done_round >= self.rounds:
            self._finish()
        else:
            self._open_round(now)

    def _finish(self) -> None:
        self.phase = "done"
        self._tasks = {}
        self.finished.set()
