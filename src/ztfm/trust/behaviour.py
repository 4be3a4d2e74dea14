"""Update behaviour as trust evidence: how each device's update sits against the round.

Pure numpy over what the coordinator can see: clear updates (no SecAgg), or per-group values when
updates are masked (then every member of a group shares its group's observation). No import of
``robust`` (same layer): pass the aggregate vector and, if you have them, the rule's per-row
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ztfm.errors import TrustError
from ztfm.trust.model import TrustConfig
from ztfm.types import DeviceId

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class UpdateObservation:
    """What one device's update looked like this round.

    ``distance_z``: robust z-score (median/MAD over the round) of the distance to the aggregate.
    ``cosine``: cosine between the update and the aggregate (0 when either is ~zero).
    ``nn_ratio``: distance to the nearest other update over the round's median distance to the
    aggregate (near 0: a clone of another device's update: Sybils, ALIE, min-max).
    ``norm_ratio``: norm over the round's median norm (near 0: a free rider).
    ``excluded``: the robust rule gave this row no weight.
    """

    device: DeviceId
    distance: float
    distance_z: float
    cosine: float
    nn_ratio: float
    norm_ratio: float
    excluded: bool = False
    evidence_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.evidence_scale <= 1.0:
            raise TrustError(f"evidence_scale must be in (0, 1], got {self.evidence_scale}")


def observe_groups(
    groups: Sequence[Sequence[DeviceId]],
    group_means: np.ndarray,
    reference: np.ndarray,
) -> list[UpdateObservation]:
    """Observations when updates are masked (SecAgg): only group means are visible. Each group
    mean is observed like an update against ``reference`` and every member inherits its group's
    observation with ``evidence_scale = 1 / group size`` (one bad member spoils the group, so
    each member carries a share of the blame). With groups re-drawn every round this is group
    testing: an attacker is in a flagged group every round, an honest device only when it shares
    a group with one, so trust separates them over rounds without seeing any single update."""
    if not isinstance(group_means, np.ndarray) or group_means.ndim != 2:
        raise TrustError("group_means must be a (groups, d) array")
    if len(groups) != group_means.shape[0]:
        raise TrustError(f"{len(groups)} groups but {group_means.shape[0]} group means")
    members = [d for g in groups for d in g]
    if any(len(g) == 0 for g in groups) or len(set(members)) != len(members):
        raise TrustError("groups must be non-empty and disjoint")
    labels = [DeviceId(f"group:{i}") for i in range(len(groups))]
    per_group = observe_updates(labels, group_means, reference)
    return [
        replace(obs, device=device, evidence_scale=1.0 / len(g))
        for g, obs in zip(groups, per_group, strict=True)
        for device in g
    ]


def observe_updates(
    devices: Sequence[DeviceId],
    updates: np.ndarray,
    aggregate: np.ndarray,
    *,
    rule_weights: np.ndarray | None = None,
) -> list[UpdateObservation]:
    """Observations for every row of ``updates`` (shape (n, d), finite) against ``aggregate``."""
    if not isinstance(updates, np.ndarray) or updates.ndim != 2 or updates.dtype.kind != "f":
        raise TrustError("updates must be a float (n, d) array")
    n, d = updates.shape
    if len(devices) != n or len(set(devices)) != n:
        raise TrustError(f"need {n} distinct device ids, got {len(devices)}")
    if n < 2:
        raise TrustError("need at least 2 updates to judge behaviour against the round")
    if not isinstance(aggregate, np.ndarray) or aggregate.shape != (d,):
        raise TrustError(f"aggregate must have shape ({d},)")
    x = updates.astype(np.float64)
    a = aggregate.astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(a).all()):
        raise TrustError("updates and aggregate must be finite")
    if rule_weights is not None and (
        not isinstance(rule_weights, np.ndarray) or rule_weights.shape != (n,)
    ):
        raise TrustError(f"rule_weights must have shape ({n},)")

    dist = np.linalg.norm(x - a[None, :], axis=1)
    med = float(np.median(dist))
    mad = float(np.median(np.abs(dist - med))) * _MAD_TO_SIGMA
    scale = max(mad, 1e-12 + 1e-6 * med)
    z = (dist - med) / scale

    norms = np.linalg.norm(x, axis=1)
    a_norm = float(np.linalg.norm(a))
    denom = norms * a_norm
    cos = np.where(denom > 1e-12, (x @ a) / np.maximum(denom, 1e-300), 0.0)

    sq = np.einsum("ij,ij->i", x, x)
    pd = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(pd, np.inf)
    nn = np.sqrt(pd.min(axis=1))
    nn_ratio = nn / max(med, 1e-12)
    norm_ratio = norms / max(float(np.median(norms)), 1e-12)
    excluded = np.zeros(n, bool) if rule_weights is None else rule_weights <= 0
    return [
        UpdateObservation(
            device=devices[i],
            distance=float(dist[i]),
            distance_z=float(z[i]),
            cosine=float(cos[i]),
            nn_ratio=float(nn_ratio[i]),
            norm_ratio=float(norm_ratio[i]),
            excluded=bool(excluded[i]),
        )
        for i in range(n)
    ]


def update_evidence(obs: UpdateObservation, config: TrustConfig) -> tuple[float, float, list[str]]:
    """(positive, negative, flags) for one observation. Each strong flag is one unit of
    ``strong_flag`` evidence (distance graded, see below); a round without negative evidence is
    ``good_round`` positive evidence, a round with less than one strong flag's worth is partly
    good."""
    flags: list[str] = []
    negative = 0.0
    if obs.distance_z > config.distance_z:
        # Graded: full weight from twice the threshold. Honest devices with unusual (non-IID)
        # data sit just past the threshold round after round; poisoned updates sit far beyond.
        flags.append("far_from_aggregate")
        ramp = (obs.distance_z - config.distance_z) / config.distance_z
        negative += config.strong_flag * min(1.0, ramp)
    if obs.distance_z < -config.central_z:
        # Much closer to the aggregate than the round's typical update: in high dimension honest
        # updates concentrate at a similar distance, while ALIE-style updates (mean - z * std,
        # with or without noise added to dodge the clone check) sit near the centre.
        flags.append("too_central")
        negative += config.strong_flag
    if obs.cosine < config.opposes_cosine:
        flags.append("opposes_aggregate")
        negative += config.strong_flag
    if obs.nn_ratio < config.duplicate_ratio:
        flags.append("duplicate_of_peer")
        negative += config.strong_flag
    if obs.norm_ratio < config.negligible_ratio:
        flags.append("negligible_update")
        negative += config.strong_flag
    if obs.excluded:
        flags.append("excluded_by_rule")
        negative += config.weak_flag
    positive = config.good_round * max(0.0, 1.0 - negative / config.strong_flag)
    return positive * obs.evidence_scale, negative * obs.evidence_scale, flags
