"""Trust values: the persisted per-device record, the explanation of every change, the config.

The score is a beta reputation (Josang & Ismail 2002) with forgetting: positive evidence ``alpha``
and negative evidence ``beta`` both decay toward a prior each time evidence arrives, and the score
is ``alpha / (alpha + beta)`` in (0, 1). It is easy to explain ("3.2 units of good behaviour
against 5.1 units of bad"), bounded, and recent behaviour dominates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from ztfm.errors import TrustError
from ztfm.types import DeviceId


class TrustState(StrEnum):
    """ACTIVE: full participation. SUSPICIOUS: reduced weight, rate-limited. QUARANTINED: its
    updates are never aggregated, only replayed against the canary set in a sandbox."""

    ACTIVE = "active"
    SUSPICIOUS = "suspicious"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Every knob of the trust model (all dimensionless unless the name has a unit)."""

    prior_alpha: float = 3.0
    prior_beta: float = 1.0
    forgetting: float = 0.9
    gate: float = 0.4
    suspicious_below: float = 0.5
    active_above: float = 0.6
    quarantine_below: float = 0.3
    readmit_after: int = 3
    readmit_score: float = 0.5
    suspicious_weight_factor: float = 0.5
    canary_tolerance: float = 0.02
    # update behaviour thresholds
    distance_z: float = 3.5
    central_z: float = 3.5
    opposes_cosine: float = -0.1
    duplicate_ratio: float = 0.1
    negligible_ratio: float = 0.05
    # evidence weights
    good_round: float = 0.5
    strong_flag: float = 2.5
    weak_flag: float = 0.25
    attestation_ok: float = 0.2
    attestation_failed: float = 5.0
    confirmed_alert: float = 0.1
    false_alarm: float = 0.5
    max_alert_evidence: float = 2.5
    canary_pass: float = 1.0
    canary_fail: float = 2.5
    # rate limits for SUSPICIOUS and QUARANTINED devices (ACTIVE devices are not limited here)
    bucket_capacity: float = 3.0
    bucket_refill_per_s: float = 1.0 / 60.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise TrustError(f"trust config {name} must be a finite number, got {value!r}")
        if self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise TrustError("trust config: priors must be > 0")
        if not 0.0 <= self.forgetting < 1.0:
            raise TrustError("trust config: forgetting must be in [0, 1)")
        if not (0 < self.quarantine_below < self.suspicious_below <= self.active_above < 1):
            raise TrustError(
                "trust config: need 0 < quarantine_below < suspicious_below <= active_above < 1"
            )
        if not 0 < self.readmit_score < 1 or self.readmit_after < 1:
            raise TrustError("trust config: readmit_score in (0, 1) and readmit_after >= 1")
        if self.bucket_capacity < 1 or self.bucket_refill_per_s <= 0:
            raise TrustError("trust config: bucket_capacity >= 1 and bucket_refill_per_s > 0")

    @property
    def initial_score(self) -> float:
        return self.prior_alpha / (self.prior_alpha + self.prior_beta)


@dataclass(frozen=True, slots=True)
class TrustRecord:
    """One device's persisted trust. Build with ``TrustRecord.new`` or ``from_dict`` (which checks
    every field, so a tampered or corrupt store is rejected, never half-loaded).
    ``attested_ok`` is False until the device's first passing quote (no implicit trust)."""

    device: DeviceId
    alpha: float
    beta: float
    state: TrustState = TrustState.ACTIVE
    attested_ok: bool = False
    good_replays: int = 0
    quarantine_count: int = 0
    quarantined_round: int | None = None
    last_round: int | None = None
    updated_at: float = 0.0
    bucket_tokens: float = 0.0
    bucket_at: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device or len(self.device) > 256:
            raise TrustError("trust record: device id must be a non-empty string <= 256 chars")
        for name in ("alpha", "beta", "updated_at", "bucket_tokens", "bucket_at"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise TrustError(f"trust record {self.device}: {name} must be finite")
        if self.alpha <= 0 or self.beta <= 0 or self.bucket_tokens < 0:
            raise TrustError(f"trust record {self.device}: alpha, beta > 0 and tokens >= 0")
        if not isinstance(self.state, TrustState):
            raise TrustError(f"trust record {self.device}: bad state {self.state!r}")
        for name in ("good_replays", "quarantine_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TrustError(f"trust record {self.device}: {name} must be an int >= 0")
        for name in ("quarantined_round", "last_round"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise TrustError(f"trust record {self.device}: {name} must be an int or null")

    @classmethod
    def new(cls, device: DeviceId, config: TrustConfig, now: float) -> TrustRecord:
        return cls(
            device=device,
            alpha=config.prior_alpha,
            beta=config.prior_beta,
            updated_at=now,
            bucket_tokens=config.bucket_capacity,
            bucket_at=now,
        )

    @property
    def score(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "alpha": self.alpha,
            "beta": self.beta,
            "state": self.state.value,
            "attested_ok": self.attested_ok,
            "good_replays": self.good_replays,
            "quarantine_count": self.quarantine_count,
            "quarantined_round": self.quarantined_round,
            "last_round": self.last_round,
            "updated_at": self.updated_at,
            "bucket_tokens": self.bucket_tokens,
            "bucket_at": self.bucket_at,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, raw: object) -> TrustRecord:
        if not isinstance(raw, dict):
            raise TrustError("trust record must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        extra = set(raw) - known - {"score"}
        if extra:
            raise TrustError(f"trust record has unknown fields {sorted(extra)}")
        try:
            state = TrustState(raw["state"])
            attested = raw.get("attested_ok", False)
            if not isinstance(attested, bool):
                raise TrustError("trust record: attested_ok must be a boolean")
            args = {k: raw[k] for k in known if k in raw}
            args["state"] = state
            return cls(**args)
        except (KeyError, ValueError, TypeError) as exc:
            raise TrustError(f"malformed trust record: {exc}") from exc


@dataclass(frozen=True, slots=True)
class TrustChange:
    """The explanation of one trust change, for the audit log: why, from what inputs, and the
    score and state before and after."""

    device: DeviceId
    reason: str
    at: float
    round_id: int | None
    old_score: float
    new_score: float
    old_state: TrustState
    new_state: TrustState
    inputs: Mapping[str, float | int | str | bool] = field(default_factory=dict)

    @property
    def message(self) -> str:
        arrow = f"{self.old_score:.3f} -> {self.new_score:.3f}"
        states = (
            f", {self.old_state.value} -> {self.new_state.value}"
            if self.old_state is not self.new_state
            else ""
        )
        return f"{self.device}: {self.reason} ({arrow}{states})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "reason": self.reason,
            "at": self.at,
            "round": self.round_id,
            "old_score": self.old_score,
            "new_score": self.new_score,
            "old_state": self.old_state.value,
            "new_state": self.new_state.value,
            "inputs": dict(self.inputs),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, raw: object) -> TrustChange:
        if not isinstance(raw, dict):
            raise TrustError("trust change must be a JSON object")
        try:
            inputs = raw.get("inputs", {})
            if not isinstance(inputs, dict):
                raise TrustError("trust change inputs must be an object")
            change = cls(
                device=DeviceId(str(raw["device"])),
                reason=str(raw["reason"]),
                at=float(raw["at"]),
                round_id=None if raw["round"] is None else int(raw["round"]),
                old_score=float(raw["old_score"]),
                new_score=float(raw["new_score"]),
                old_state=TrustState(raw["old_state"]),
                new_state=TrustState(raw["new_state"]),
                inputs=inputs,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise TrustError(f"malformed trust change: {exc}") from exc
        # NaN/Inf would load here but make every later JSON save fail (allow_nan=False).
        if not math.isfinite(change.at) or not all(
            0.0 <= s <= 1.0 for s in (change.old_score, change.new_score)
        ):
            raise TrustError("malformed trust change: time must be finite, scores in [0, 1]")
        return change


def apply_evidence(
    record: TrustRecord, config: TrustConfig, positive: float, negative: float
) -> TrustRecord:
    """Decay both counts toward the prior, then add the new evidence."""
    lam = config.forgetting
    alpha = config.prior_alpha + lam * (record.alpha - config.prior_alpha) + positive
    beta = config.prior_beta + lam * (record.beta - config.prior_beta) + negative
    return replace(record, alpha=max(alpha, 1e-6), beta=max(beta, 1e-6))


def next_state(record: TrustRecord, config: TrustConfig) -> TrustState:
    """State from score with hysteresis; QUARANTINED is only left through re-admission."""
    s = record.score
    if record.state is TrustState.QUARANTINED or s < config.quarantine_below:
        return TrustState.QUARANTINED
    if record.state is TrustState.SUSPICIOUS:
        return TrustState.ACTIVE if s >= config.active_above else TrustState.SUSPICIOUS
    return TrustState.SUSPICIOUS if s < config.suspicious_below else TrustState.ACTIVE


def quarantine_decisions(
    changes: Iterable[Mapping[str, Any]], round_id: int
) -> list[dict[str, Any]]:
    """The quarantine decisions among trust changes (``TrustChange.to_dict`` records), as ledger
    entry bodies: a device entering quarantine (``action="quarantine"``) or leaving it
    (``"release"``), with the change's reason and the round it is booked to."""
    out: list[dict[str, Any]] = []
    quarantined = TrustState.QUARANTINED.value
    for c in changes:
        entering = c["new_state"] == quarantined != c["old_state"]
        leaving = c["old_state"] == quarantined != c["new_state"]
        if entering or leaving:
            out.append(
                {
                    "device_id": c["device"],
                    "action": "quarantine" if entering else "release",
                    "reason": str(c["reason"]) or "trust",
                    "round": round_id,
                }
            )
    return out
