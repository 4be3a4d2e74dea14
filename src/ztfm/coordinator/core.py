"""The coordinator as a passive state machine driven by a transport.

A transport calls ``open_round`` to get one task per selected device, hands each device its task,
passes every reply to ``submit`` with the sender's authenticated id, and calls ``close_round``
when all replies are in or the deadline has passed. The in-process transport (simulation) and the
gRPC transport drive the same object, so a fleet behaves the same in both.

Gates (attestation, trust, policy, privacy budget) plug in as ``eligibility`` callables that
return None to admit a device or a reason to leave it out; every decision is an event for the
audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ztfm.errors import RoundError, UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask, UpdateReply
from ztfm.fl.params import Params, ParamSpec
from ztfm.fl.rounds import RoundState
from ztfm.fl.strategy import Strategy, apply_update

log = logging.getLogger(__name__)

# (device_id, now) -> None to admit, or a reason to exclude this round
Eligibility = Callable[[str, float], str | None]
# (event dict) -> None; the coordinator's event sink (audit log, metrics)
EventSink = Callable[[dict[str, Any]], None]
# (round_id, accepted replies, rejected reasons) -> None; called before aggregation
ReplyHook = Callable[[int, Sequence[UpdateReply]], Sequence[UpdateReply]]


@dataclass(frozen=True, slots=True)
class RoundSettings:
    local_epochs: int = 1
    prox_mu: float = 0.0
    deadline_s: float = 60.0
    extra: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoundSummary:
    round_id: int
    model_version: int
    selected: tuple[str, ...]
    accepted: tuple[str, ...]
    rejected: dict[str, str]
    timed_out: tuple[str, ...]


class Coordinator:
    """Holds the global model and runs rounds with a ``Strategy``."""

    def __init__(
        self,
        params: Params,
        strategy: Strategy,
        settings: RoundSettings,
        *,
        rng: np.random.Generator,
        events: EventSink | None = None,
        eligibility: Sequence[Eligibility] = (),
        reply_hooks: Sequence[ReplyHook] = (),
    ) -> None:
        self.spec = ParamSpec.of(params)
        self.spec.check(params, what="initial model")
        self.params: Params = [p.copy() for p in params]
        self.model_version = 0
        self.strategy = strategy
        self.settings = settings
        self.rng = rng
        self._events = events
        self._eligibility = list(eligibility)
        self._reply_hooks = list(reply_hooks)
        self.devices: dict[str, str] = {}  # device id -> segment
        self.round: RoundState | None = None
        self._eval_state: RoundState | None = None
        self.next_round_id = 1

    # --- membership -------------------------------------------------------------------------
    def register(self, device_id: str, segment: str) -> None:
        self.devices[device_id] = segment
        self._emit("device_registered", device=device_id, segment=segment)

    def eligible(self, now: float) -> list[str]:
        out = []
        for dev in sorted(self.devices):
            reason = next((r for gate in self._eligibility if (r := gate(dev, now))), None)
            if reason is None:
                out.append(dev)
            else:
                self._emit("device_excluded", device=dev, reason=reason)
        return out

    # --- rounds ------------------------------------------------------------------------------
    def open_round(self, now: float) -> dict[str, RoundTask]:
        """Select devices and return one task per selected device (each with its own nonce)."""
        if self.round is not None:
            raise RoundError(f"round {self.round.round_id} is still open")
        round_id = self.next_round_id
        selected = self.strategy.select(round_id, self.eligible(now), self.rng)
        nonces = {d: self.rng.bytes(16) for d in selected}
        self.round = RoundState(
            round_id, self.model_version, self.spec, nonces, now, self.settings.deadline_s
        )
        self._emit("round_opened", round=round_id, version=self.model_version, selected=selected)
        s = self.settings
        return {
            d: RoundTask(
                round_id,
                self.model_version,
                self.params,
                s.local_epochs,
                s.prox_mu,
                s.deadline_s,
                nonces[d],
                dict(s.extra),
            )
            for d in selected
        }

    def submit(self, sender: str, reply: UpdateReply, now: float) -> None:
        """Take one reply from the authenticated ``sender``; raises ``UpdateRejected``."""
        state = self._require_round()
        try:
            state.accept(sender, reply, now)
        except UpdateRejected as exc:
            state.reject(sender, str(exc))
            self._emit("update_rejected", round=state.round_id, device=sender, reason=str(exc))
            raise
        self._emit("update_accepted", round=state.round_id, device=sender, samples=reply.n_samples)

    def submit_bytes(self, sender: str, data: bytes, now: float) -> None:
        """Decode and submit; malformed bytes are rejected with a reason like any bad reply."""
        state = self._require_round()
        try:
            msg = codec.decode(data)
            if not isinstance(msg, UpdateReply):
                raise UpdateRejected(f"expected an update, got {type(msg).__name__}")
        except UpdateRejected as exc:
            state.reject(sender, str(exc))
            self._emit("update_rejected", round=state.round_id, device=sender, reason=str(exc))
            raise
        self.submit(sender, msg, now)

    def close_round(self, now: float) -> RoundSummary:
        """Aggregate the accepted replies into a new model version."""
        state = self._require_round()
        timed_out = tuple(state.timed_out())
        for dev in timed_out:
            state.reject(dev, "no reply before the deadline")
            self._emit(
                "update_rejected",
                round=state.round_id,
                device=dev,
                reason="no reply before the deadline",
            )
        replies: Sequence[UpdateReply] = [state.accepted[d] for d in sorted(state.accepted)]
        for hook in self._reply_hooks:
            replies = hook(state.round_id, replies)
        try:
            new_params = self.strategy.aggregate(self.params, self.spec, replies, self.rng)
            self.spec.check(new_params, what="aggregate")
        except Exception:
            self.round = None
            self.next_round_id += 1
            self._emit("round_failed", round=state.round_id, accepted=len(replies))
            raise
        self.params = new_params
        self.model_version += 1
        summary = RoundSummary(
            state.round_id,
            self.model_version,
            tuple(state.selected),
            tuple(r.device_id for r in replies),
            dict(state.rejected),
            timed_out,
        )
        self._emit(
            "round_closed",
            round=state.round_id,
            version=self.model_version,
            accepted=list(summary.accepted),
            rejected=summary.rejected,
        )
        self.round = None
        self.next_round_id += 1
        return summary

    # --- secure rounds: the coordinator is handed the aggregate step only ---------------------
    def close_secure_round(
        self,
        step: np.ndarray,
        accepted: Sequence[str],
        rejected: Mapping[str, str],
        now: float,
        *,
        server_lr: float = 1.0,
    ) -> RoundSummary:
        """Close the open round with the securely aggregated ``step`` (the unmasked mean, or the
        robust rule over group means): ``global + server_lr * step`` is the next version.
        ``accepted`` are the devices the step covers, ``rejected`` why the others are not in it.
        No single update reaches this object; raises ``RoundError`` (and closes the round) if
        ``step`` is malformed or names devices the round did not select."""
        state = self._require_round()
        selected = set(state.selected)
        try:
            stray = sorted(set(accepted) - selected)
            if stray:
                raise RoundError(f"secure aggregate covers unselected device {stray[0]!r}")
            new_params = apply_update(self.params, self.spec, step, server_lr)
        except RoundError as exc:
            self.abort_round(str(exc), now)
            raise
        self.params = new_params
        self.model_version += 1
        summary = RoundSummary(
            state.round_id,
            self.model_version,
            tuple(state.selected),
            tuple(accepted),
            {d: r for d, r in sorted(rejected.items()) if d not in set(accepted)},
            tuple(sorted(d for d, r in rejected.items() if "deadline" in r)),
        )
        self.round = None
        self.next_round_id += 1
        self._emit(
            "round_closed",
            round=state.round_id,
            version=self.model_version,
            accepted=list(summary.accepted),
            rejected=summary.rejected,
            secure=True,
        )
        return summary

    def abort_round(self, reason: str, now: float) -> None:
        """Close the open secure round without a new model (``reason`` goes to the events)."""
        state = self._require_round()
        self.round = None
        self.next_round_id += 1
        self._emit("round_failed", round=state.round_id, accepted=0, reason=reason, secure=True)

    # --- evaluation of the released model ------------------------------------------------------
    def eval_tasks(self, devices: Sequence[str] | None = None) -> dict[str, EvalTask]:
        """After a round: ask devices to evaluate the current global model on their own data."""
        targets = sorted(devices if devices is not None else self.devices)
        nonces = {d: self.rng.bytes(16) for d in targets}
        self._eval_state = RoundState(
            self.next_round_id - 1, self.model_version, self.spec, nonces, 0.0, float("inf")
        )
        return {
            d: EvalTask(self.next_round_id - 1, self.model_version, self.params, nonces[d])
            for d in targets
        }

    def submit_eval(self, sender: str, reply: EvalReply) -> None:
        try:
            self._require_eval().accept_eval(sender, reply)
        except UpdateRejected as exc:
            self._emit("eval_rejected", device=sender, reason=str(exc))
            raise

    def eval_results(self) -> dict[str, EvalReply]:
        return dict(self._require_eval().evals)

    def _require_eval(self) -> RoundState:
        if self._eval_state is None:
            raise RoundError("no evaluation is open")
        return self._eval_state

    # --- helpers ---------------------------------------------------------------------------------
    def _require_round(self) -> RoundState:
        if self.round is None:
            raise RoundError("no round is open")
        return self.round

    def _emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, **fields}
        log.debug("%s", record)
        if self._events is not None:
            self._events(record)
