"""The state of one open round: which devices were asked, and what each answered.

``accept`` checks a reply against the round before it can count: sender identity (from the
transport's authenticated peer, never from the message), round id, model version, nonce,
deadline, duplicates, sample count, shape and finiteness. Every rejection is a reason string the
coordinator writes to its event log; the round goes on without that device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ztfm.errors import UpdateRejected
from ztfm.fl.messages import EvalReply, UpdateReply
from ztfm.fl.params import ParamSpec

MAX_SAMPLES_PER_REPLY = 10_000_000
UNDEFINED_AUC = -1.0  # a device whose held-out data has one class only


@dataclass(slots=True)
class RoundState:
    round_id: int
    model_version: int
    spec: ParamSpec
    nonces: dict[str, bytes]
    opened_at: float
    deadline_s: float
    accepted: dict[str, UpdateReply] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    evals: dict[str, EvalReply] = field(default_factory=dict)

    @property
    def selected(self) -> list[str]:
        return sorted(self.nonces)

    def _check_common(
        self, sender: str, device_id: str, round_id: int, model_version: int, nonce: bytes
    ) -> None:
        if sender not in self.nonces:
            raise UpdateRejected(f"{sender} was not selected for round {self.round_id}")
        if device_id != sender:
            raise UpdateRejected(f"{sender} sent a message claiming device id {device_id!r}")
        if round_id != self.round_id:
            raise UpdateRejected(f"reply for round {round_id}, current round is {self.round_id}")
        if model_version != self.model_version:
            raise UpdateRejected(
                f"reply for model version {model_version}, expected {self.model_version}"
            )
        if nonce != self.nonces[sender]:
            raise UpdateRejected("reply nonce does not match the nonce issued for this round")

    def accept(self, sender: str, reply: UpdateReply, now: float) -> None:
        """Record ``reply`` from authenticated ``sender``; ``UpdateRejected`` if it can't count."""
        self._check_common(
            sender, reply.device_id, reply.round_id, reply.model_version, reply.nonce
        )
        if sender in self.accepted:
            raise UpdateRejected(f"{sender} already replied in round {self.round_id}")
        if now > self.opened_at + self.deadline_s:
            raise UpdateRejected(f"{sender} replied after the {self.deadline_s:g} s deadline")
        if not 0 < reply.n_samples <= MAX_SAMPLES_PER_REPLY:
            raise UpdateRejected(f"sample count {reply.n_samples} is out of range")
        self.spec.check(reply.delta, what="update")
        self.accepted[sender] = reply

    def reject(self, sender: str, reason: str) -> None:
        self.rejected.setdefault(sender, reason)

    def accept_eval(self, sender: str, reply: EvalReply) -> None:
        self._check_common(
            sender, reply.device_id, reply.round_id, reply.model_version, reply.nonce
        )
        if sender in self.evals:
            raise UpdateRejected(f"{sender} already sent an evaluation in round {self.round_id}")
        counts = (reply.tp, reply.fp, reply.fn, reply.tn)
        if min(counts) < 0 or sum(counts) > MAX_SAMPLES_PER_REPLY:
            raise UpdateRejected("evaluation counts are out of range")
        if not (0.0 <= reply.roc_auc <= 1.0 or reply.roc_auc == UNDEFINED_AUC):
            raise UpdateRejected("ROC-AUC is out of range")
        self.evals[sender] = reply

    def timed_out(self) -> list[str]:
        """Selected devices that neither replied nor were rejected."""
        return sorted(set(self.nonces) - set(self.accepted) - set(self.rejected))
