"""``TrustManager``: turns evidence into trust changes, weights, gates, quarantine and rate limits.

Every method that changes trust returns the ``TrustChange`` records it wrote; the caller appends
them to the audit log. Methods take ``now`` (and ``round_id`` where a round is involved).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from ztfm.errors import TrustError, ZtfmError
from ztfm.trust.behaviour import UpdateObservation, update_evidence
from ztfm.trust.model import (
    TrustChange,
    TrustConfig,
    TrustRecord,
    TrustState,
    apply_evidence,
    next_state,
)
from ztfm.trust.ratelimit import TokenBucket
from ztfm.trust.store import TrustStore
from ztfm.types import DeviceId

log = logging.getLogger(__name__)

#: Negative evidence per rejection reason (default ``DEFAULT_REJECTION``). Forgery and replay
#: are deliberate; lateness can be a flaky link.
REJECTION_SEVERITY: Mapping[str, float] = {
    "bad_signature": 5.0,
    "replay": 5.0,
    "unknown_key": 5.0,
    "stale": 1.0,
    "non_finite": 2.5,
    "wrong_shape": 2.5,
    "oversize": 2.5,
    "clip_bound": 2.5,
    "policy_denied": 1.0,
    "late": 0.5,
}
DEFAULT_REJECTION = 1.5


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """The coordinator's verdict of a sandboxed replay: the canary metric (higher is better,
    e.g. F1 on canary telemetry) with the update applied, and the same metric without it."""

    metric: float
    baseline: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.metric) and math.isfinite(self.baseline)):
            raise TrustError("canary metric and baseline must be finite")


class CanaryEvaluator(Protocol):
    """Provided by the coordinator: evaluate one update on the canary set, in a sandbox (a copy
    of the model; nothing is released)."""

    def __call__(self, update: np.ndarray) -> CanaryResult: ...


class TrustManager:
    """Per-device trust over a ``TrustStore``."""

    def __init__(self, store: TrustStore, config: TrustConfig | None = None) -> None:
        self.store = store
        self.config = config or TrustConfig()

    # --- reading -----------------------------------------------------------------------------
    def record(self, device: DeviceId, now: float) -> TrustRecord:
        """The stored record, or a fresh one (not yet saved) for an unseen device."""
        _check_device(device)
        return self.store.load(device) or TrustRecord.new(device, self.config, now)

    def score(self, device: DeviceId, now: float) -> float:
        return self.record(device, now).score

    def weight(self, device: DeviceId, now: float) -> float:
        """Aggregation weight: the score; halved (configurable) when suspicious; 0 in quarantine."""
        r = self.record(device, now)
        if r.state is TrustState.QUARANTINED:
            return 0.0
        if r.state is TrustState.SUSPICIOUS:
            return r.score * self.config.suspicious_weight_factor
        return r.score

    def weights(self, devices: Sequence[DeviceId], now: float) -> np.ndarray:
        return np.array([self.weight(d, now) for d in devices], dtype=np.float64)

    def policy_input(self, device: DeviceId, now: float) -> dict[str, float | str | bool]:
        """The trust attributes the policy engine decides on."""
        r = self.record(device, now)
        return {
            "trust_score": r.score,
            "trust_state": r.state.value,
            "quarantined": r.state is TrustState.QUARANTINED,
            "attested_ok": r.attested_ok,
        }

    def check_participation(self, device: DeviceId, now: float) -> None:
        """Raise ``TrustError`` unless the device may send an update to be aggregated this round."""
        r = self.record(device, now)
        if r.state is TrustState.QUARANTINED:
            raise TrustError(f"{device} is quarantined")
        if not r.attested_ok:
            raise TrustError(f"{device} has no passing attestation")
        if r.score < self.config.gate:
            raise TrustError(f"{device} trust {r.score:.3f} is below the gate {self.config.gate}")

    def admit_request(self, device: DeviceId, now: float, cost: float = 1.0) -> None:
        """Rate-limit suspicious and quarantined devices (token bucket on ``now``); raises
        ``TrustError`` when the bucket is empty. Active devices pass untouched."""
        r = self.record(device, now)
        if r.state is TrustState.ACTIVE:
            return
        bucket = TokenBucket(
            self.config.bucket_capacity,
            self.config.bucket_refill_per_s,
            min(r.bucket_tokens, self.config.bucket_capacity),
            r.bucket_at,
        )
        taken = bucket.take(now, cost)  # raises when empty; nothing is saved then
        self.store.save([replace(r, bucket_tokens=taken.tokens, bucket_at=taken.at)], [])

    # --- evidence ----------------------------------------------------------------------------
    def observe_attestation(
        self,
        device: DeviceId,
        ok: bool,
        now: float,
        round_id: int | None = None,
        detail: str = "",
    ) -> TrustChange:
        """A passing quote is small positive evidence; a failing one quarantines at once."""
        r = self.record(device, now)
        cfg = self.config
        if ok:
            new = replace(apply_evidence(r, cfg, cfg.attestation_ok, 0.0), attested_ok=True)
            return self._commit(r, new, "attestation_ok", now, round_id, {"detail": detail})
        new = replace(apply_evidence(r, cfg, 0.0, cfg.attestation_failed), attested_ok=False)
        new = self._quarantine(new, round_id)
        return self._commit(
            r, new, "attestation_failed", now, round_id, {"detail": detail}, state_decided=True
        )

    def observe_rejection(
        self, device: DeviceId, reason: str, now: float, round_id: int | None = None
    ) -> TrustChange:
        """An update or request of this device was rejected at the boundary for ``reason``."""
        r = self.record(device, now)
        severity = REJECTION_SEVERITY.get(reason, DEFAULT_REJECTION)
        new = apply_evidence(r, self.config, 0.0, severity)
        return self._commit(r, new, f"rejected:{reason}", now, round_id, {"severity": severity})

    def observe_alerts(
        self,
        device: DeviceId,
        confirmed: int,
        false_alarms: int,
        now: float,
        round_id: int | None = None,
    ) -> TrustChange:
        """Alert behaviour as judged by the adjudicator: alerts corroborated fleet-wide count for
        the device, false alarms (alert floods) against it; both capped per call."""
        if confirmed < 0 or false_alarms < 0:
            raise TrustError("alert counts must be >= 0")
        cfg = self.config
        pos = min(cfg.max_alert_evidence, confirmed * cfg.confirmed_alert)
        neg = min(cfg.max_alert_evidence, false_alarms * cfg.false_alarm)
        r = self.record(device, now)
        new = apply_evidence(r, cfg, pos, neg)
        inputs = {"confirmed": confirmed, "false_alarms": false_alarms}
        return self._commit(r, new, "alert_behaviour", now, round_id, inputs)

    def observe_round(
        self, round_id: int, observations: Sequence[UpdateObservation], now: float
    ) -> list[TrustChange]:
        """Update behaviour of every device aggregated in ``round_id`` (one atomic save)."""
        records: list[TrustRecord] = []
        changes: list[TrustChange] = []
        seen: set[str] = set()
        for obs in observations:
            if obs.device in seen:
                raise TrustError(f"device {obs.device} observed twice in round {round_id}")
            seen.add(obs.device)
            r = self.record(obs.device, now)
            if r.state is TrustState.QUARANTINED:
                raise TrustError(f"{obs.device} is quarantined; its update must not be aggregated")
            pos, neg, flags = update_evidence(obs, self.config)
            new = apply_evidence(r, self.config, pos, neg)
            inputs: dict[str, float | int | str | bool] = {
                "distance": obs.distance,
                "distance_z": round(obs.distance_z, 4),
                "cosine": round(obs.cosine, 4),
                "nn_ratio": round(obs.nn_ratio, 4),
                "norm_ratio": round(obs.norm_ratio, 4),
                "excluded": obs.excluded,
                "flags": ",".join(flags),
            }
            if obs.evidence_scale != 1.0:
                inputs["evidence_scale"] = round(obs.evidence_scale, 4)
            reason = "update_flagged" if flags else "update_ok"
            rec, change = self._change(r, new, reason, now, round_id, inputs)
            records.append(rec)
            changes.append(change)
        self.store.save(records, changes)
        return changes

    def replay_quarantined(
        self,
        device: DeviceId,
        update: np.ndarray,
        evaluator: CanaryEvaluator,
        now: float,
        round_id: int | None = None,
    ) -> TrustChange:
        """Replay a quarantined device's update against the canary set in the sandbox. After
        ``readmit_after`` consecutive passes (and a passing attestation) the device is re-admitted
        on probation (SUSPICIOUS, score ``readmit_score``); a failure resets the streak."""
        r = self.record(device, now)
        if r.state is not TrustState.QUARANTINED:
            raise TrustError(f"{device} is not quarantined")
        cfg = self.config
        sandboxed = np.array(update, dtype=np.float64, copy=True)
        sandboxed.setflags(write=False)
        inputs: dict[str, float | int | str | bool] = {}
        try:
            if not np.isfinite(sandboxed).all():
                raise TrustError("update has NaN/Inf")
            result = evaluator(sandboxed)
            if not isinstance(result, CanaryResult):
                raise TrustError("canary evaluator returned no CanaryResult")
            passed = result.metric >= result.baseline - cfg.canary_tolerance
            inputs = {
                "metric": result.metric,
                "baseline": result.baseline,
                "tolerance": cfg.canary_tolerance,
            }
        except ZtfmError as exc:  # fail closed: an update that breaks the sandbox fails
            passed, inputs = False, {"error": str(exc)}
        except Exception as exc:
            log.warning("canary evaluator crashed on %s: %s", device, exc)
            passed, inputs = False, {"error": f"{type(exc).__name__}: {exc}"}
        if passed:
            new = replace(
                apply_evidence(r, cfg, cfg.canary_pass, 0.0), good_replays=r.good_replays + 1
            )
            if new.good_replays >= cfg.readmit_after and new.attested_ok:
                new = replace(
                    self._probation(new), bucket_tokens=cfg.bucket_capacity, bucket_at=now
                )
                reason = "readmitted"
            else:
                reason = "canary_pass"
        else:
            new = replace(apply_evidence(r, cfg, 0.0, cfg.canary_fail), good_replays=0)
            reason = "canary_fail"
        inputs["good_replays"] = new.good_replays
        return self._commit(r, new, reason, now, round_id, inputs, state_decided=True)

    def release(self, device: DeviceId, now: float, operator: str, reason: str) -> TrustChange:
        """Manual re-admission by an operator (audited); goes to probation, not full trust."""
        if not operator or not reason:
            raise TrustError("a manual release needs an operator and a reason")
        r = self.record(device, now)
        if r.state is not TrustState.QUARANTINED:
            raise TrustError(f"{device} is not quarantined")
        return self._commit(
            r,
            self._probation(r),
            "manual_release",
            now,
            None,
            {"operator": operator, "why": reason},
            state_decided=True,
        )

    # --- internals ---------------------------------------------------------------------------
    def _probation(self, r: TrustRecord) -> TrustRecord:
        """Re-admitted on probation: SUSPICIOUS with score ``readmit_score`` (prior-sized alpha)."""
        cfg = self.config
        a = cfg.prior_alpha
        return replace(
            r,
            alpha=a,
            beta=a * (1.0 - cfg.readmit_score) / cfg.readmit_score,
            state=TrustState.SUSPICIOUS,
            good_replays=0,
            quarantined_round=None,
        )

    def _quarantine(self, r: TrustRecord, round_id: int | None) -> TrustRecord:
        if r.state is TrustState.QUARANTINED:
            return r
        return replace(
            r,
            state=TrustState.QUARANTINED,
            quarantined_round=round_id,
            quarantine_count=r.quarantine_count + 1,
            good_replays=0,
        )

    def _change(
        self,
        old: TrustRecord,
        new: TrustRecord,
        reason: str,
        now: float,
        round_id: int | None,
        inputs: Mapping[str, float | int | str | bool],
        state_decided: bool = False,
    ) -> tuple[TrustRecord, TrustChange]:
        if not state_decided:
            state = next_state(new, self.config)
            if state is TrustState.QUARANTINED and new.state is not TrustState.QUARANTINED:
                new = self._quarantine(new, round_id)
            elif state is not new.state:
                new = replace(new, state=state)
        if new.state is not TrustState.ACTIVE and old.state is TrustState.ACTIVE:
            new = replace(new, bucket_tokens=self.config.bucket_capacity, bucket_at=now)
        new = replace(
            new, updated_at=now, last_round=round_id if round_id is not None else new.last_round
        )
        change = TrustChange(
            device=new.device,
            reason=reason,
            at=now,
            round_id=round_id,
            old_score=old.score,
            new_score=new.score,
            old_state=old.state,
            new_state=new.state,
            inputs=dict(inputs),
        )
        return new, change

    def _commit(
        self,
        old: TrustRecord,
        new: TrustRecord,
        reason: str,
        now: float,
        round_id: int | None,
        inputs: Mapping[str, float | int | str | bool],
        state_decided: bool = False,
    ) -> TrustChange:
        rec, change = self._change(old, new, reason, now, round_id, inputs, state_decided)
        self.store.save([rec], [change])
        return change


def _check_device(device: object) -> None:
    if not isinstance(device, str) or not device or len(device) > 256:
        raise TrustError("device id must be a non-empty string of at most 256 characters")
