"""A FedAvg-style strategy whose combination step is a Byzantine-robust aggregator, weighted by
per-device trust, and which feeds each round's update behaviour back into the trust scores.

Selection is ``FedAvg``'s. Aggregation: the accepted deltas (sorted by device id, so the result
does not depend on arrival order) go to the robust ``Aggregator``; weights are the trust
manager's (quarantined devices weigh 0 and are never selected), or sample counts, or equal.
After aggregating, every participant's update is judged against the unweighted robust
aggregate (distance, direction, near-duplicates, negligible norm) and its trust changes
accordingly; each change is passed to ``on_trust_change`` for the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ztfm.errors import AggregationError, RoundError, TrustError
from ztfm.fl.messages import UpdateReply
from ztfm.fl.params import Params, ParamSpec
from ztfm.fl.strategy import FedAvg, apply_update, stack_replies
from ztfm.robust import Aggregator
from ztfm.trust import TrustChange, TrustManager, observe_updates
from ztfm.types import DeviceId


@dataclass(slots=True)
class RoundDiagnostics:
    """What the last aggregation saw, for metrics and the trust audit trail."""

    round_id: int
    devices: tuple[str, ...]
    selected: tuple[str, ...]
    rule_weights: dict[str, float]
    trust_changes: list[TrustChange] = field(default_factory=list)


@dataclass(slots=True)
class DefendedFedAvg:
    aggregator: Aggregator
    fraction: float = 1.0
    min_devices: int = 1
    server_lr: float = 1.0
    weight_by_samples: bool = True
    trust: TrustManager | None = None
    now: Callable[[], float] = lambda: 0.0
    on_trust_change: Callable[[TrustChange], None] | None = None
    last: RoundDiagnostics | None = None
    _select: FedAvg = field(init=False)

    def __post_init__(self) -> None:
        self._select = FedAvg(fraction=self.fraction, min_devices=self.min_devices)

    def select(self, round_id: int, eligible: Sequence[str], rng: np.random.Generator) -> list[str]:
        return self._select.select(round_id, eligible, rng)

    def trust_gate(self, device_id: str, now: float) -> str | None:
        """Eligibility gate: None to admit, or why the device sits this round out."""
        if self.trust is None:
            return None
        try:
            self.trust.check_participation(DeviceId(device_id), now)
        except TrustError as exc:
            return str(exc)
        return None

    def aggregate(
        self,
        global_params: Params,
        spec: ParamSpec,
        replies: Sequence[UpdateReply],
        rng: np.random.Generator,
    ) -> Params:
        ordered, x = stack_replies(replies, spec, self.min_devices)
        ids = [DeviceId(r.device_id) for r in ordered]
        now = self.now()
        if self.trust is not None:
            weights: np.ndarray | None = self.trust.weights(ids, now)
            if weights is not None and not weights.sum() > 0:
                raise RoundError("every participant has zero trust weight")
        elif self.weight_by_samples:
            weights = np.array([r.n_samples for r in ordered], dtype=np.float64)
        else:
            weights = None
        try:
            agg = self.aggregator.aggregate(x, weights)
        except AggregationError as exc:
            raise RoundError(f"robust aggregation refused the round: {exc}") from exc
        round_id = ordered[0].round_id
        diag = RoundDiagnostics(
            round_id,
            tuple(ids),
            tuple(ids[i] for i in agg.selected),
            {d: float(w) for d, w in zip(ids, agg.weights, strict=True)},
        )
        if self.trust is not None and len(ids) >= 2:
            # judge behaviour against the UNweighted robust aggregate: a trust-weighted one
            # drifts towards whoever is already trusted, so a flagged device that keeps
            # attacking would look normal next round (measured: adaptive ALIE caught 0/30
            # against the weighted reference, 30/30 against the unweighted one)
            ref = agg if weights is None else self.aggregator.aggregate(x, None)
            obs = observe_updates(ids, x, ref.vector, rule_weights=np.asarray(ref.weights))
            diag.trust_changes = self.trust.observe_round(round_id, obs, now)
            if self.on_trust_change is not None:
                for change in diag.trust_changes:
                    self.on_trust_change(change)
        self.last = diag
        return apply_update(global_params, spec, agg.vector, self.server_lr)
