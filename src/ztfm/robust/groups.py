"""Robust and secure together: secure aggregation inside groups, robust aggregation across them.

A SecAgg group of ``k`` devices reveals only the sum of its members' (masked) updates. The
coordinator divides by ``k`` and runs a robust rule over the ``g`` group means. Trade-off:

* privacy: the larger ``k``, the less one revealed sum says about one device;
* robustness: ``f`` attackers can spoil at most ``min(f, g)`` groups, and the robust rule over
  ``g`` groups needs e.g. ``g >= 2f' + 1`` (median) or ``g >= 4f' + 3`` (Bulyan) for ``f'``
  spoiled groups. So ``k <= n / (2f + 1)`` for the median in the worst case.

Group assignment comes from a seeded ``rng`` the coordinator commits to before updates arrive, so
attackers cannot choose to share a group. Everything is pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ztfm.errors import AggregationError
from ztfm.robust.base import Aggregate, Aggregator, Matrix, Vector, check_updates


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A partition of device rows ``0..n-1`` into SecAgg groups, each of size >= ``min_size``."""

    n: int
    min_size: int
    groups: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        seen = sorted(i for g in self.groups for i in g)
        if seen != list(range(self.n)):
            raise AggregationError("group plan must partition rows 0..n-1 exactly once")
        if any(len(g) < self.min_size for g in self.groups):
            raise AggregationError(f"every group must have >= {self.min_size} members")

    @property
    def sizes(self) -> Vector:
        return np.array([len(g) for g in self.groups], dtype=np.float64)

    def group_of(self) -> np.ndarray:
        """Row -> group index."""
        out = np.empty(self.n, dtype=np.int64)
        for gi, g in enumerate(self.groups):
            out[list(g)] = gi
        return out


def assign_groups(n: int, group_size: int, rng: np.random.Generator) -> GroupPlan:
    """Shuffle ``n`` rows with ``rng`` into ``n // group_size`` groups; the remainder is spread
    over the groups, so every group has at least ``group_size`` members."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise AggregationError(f"group_size must be an integer >= 1, got {group_size!r}")
    if n < group_size:
        raise AggregationError(f"cannot form a group of {group_size} from {n} devices")
    g = n // group_size
    perm = rng.permutation(n)
    groups = tuple(tuple(sorted(int(i) for i in perm[j::g])) for j in range(g))
    return GroupPlan(n=n, min_size=group_size, groups=groups)


def group_sums(updates: Matrix, plan: GroupPlan) -> Matrix:
    """The sum of each group's updates: exactly what a SecAgg group reveals (simulation only;
    in deployment this comes from ``secagg``)."""
    x, _ = check_updates(updates)
    if x.shape[0] != plan.n:
        raise AggregationError(f"plan is for {plan.n} rows, got {x.shape[0]}")
    return np.stack([x[list(g)].sum(axis=0) for g in plan.groups])


def _check_bound(what: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise AggregationError(f"{what} must be > 0, got {value}")


def clip_to_norm(update: Vector, clip_norm: float) -> Vector:
    """What an honest device does before masking: scale its update to L2 norm <= ``clip_norm``."""
    _check_bound("clip_norm", clip_norm)
    v = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return v if norm <= clip_norm else v * (clip_norm / norm)


def check_group_sum_bound(group_sum: Vector, size: int, clip_norm: float) -> None:
    """A group whose members all clipped to ``clip_norm`` before masking has a sum of norm <=
    ``size * clip_norm`` (triangle inequality). A larger sum proves a member broke the declared
    bound; raise. (A member that stays under the bound but points the wrong way is not caught
    here: that is the robust rule's job.)"""
    _check_bound("clip_norm", clip_norm)
    norm = float(np.linalg.norm(group_sum))
    limit = size * clip_norm * (1.0 + 1e-9)
    if not math.isfinite(norm) or norm > limit:
        raise AggregationError(
            f"group sum norm {norm:.4g} exceeds {size} x clip_norm {clip_norm:.4g}: a member did "
            "not clip before masking"
        )


def check_group_sum_range(group_sum: Vector, size: int, clip_value: float) -> None:
    """The per-coordinate (L-infinity) version, matching ``ztfm.secagg``'s fixed-point clip:
    members clip each coordinate to [-clip_value, clip_value] before masking, so every
    coordinate of an honest group's sum lies within ``size * clip_value``; raise otherwise."""
    _check_bound("clip_value", clip_value)
    top = float(np.max(np.abs(group_sum))) if group_sum.size else 0.0
    if not math.isfinite(top) or top > size * clip_value * (1.0 + 1e-9):
        raise AggregationError(
            f"group sum coordinate {top:.4g} exceeds {size} x clip_value {clip_value:.4g}: a "
            "member did not clip before masking"
        )


@dataclass(frozen=True, slots=True)
class GroupedAggregate:
    """The robust result over group means, the per-group diagnostics, and which groups were
    dropped for breaking the declared clipping bound."""

    result: Aggregate
    kept_groups: tuple[int, ...]
    rejected_groups: tuple[int, ...]

    @property
    def vector(self) -> Vector:
        return self.result.vector


def aggregate_group_sums(
    sums: Matrix,
    sizes: Vector,
    aggregator: Aggregator,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> GroupedAggregate:
    """Robust aggregation over SecAgg group sums. ``sizes`` are the member counts. When the round
    declared ``clip_norm`` before masking, groups whose sum breaks ``size * clip_norm`` are
    dropped (and reported) before the robust rule runs; ``clip_value`` does the same for a
    per-coordinate clip (what ``ztfm.secagg``'s fixed-point codec enforces on honest devices).
    The rule is weighted by group size."""
    s, _ = check_updates(sums)
    if not isinstance(sizes, np.ndarray) or sizes.shape != (s.shape[0],):
        raise AggregationError(f"sizes must be an array of shape ({s.shape[0]},)")
    if not np.isfinite(sizes).all() or (sizes < 1).any() or (sizes != np.round(sizes)).any():
        raise AggregationError("group sizes must be integers >= 1")
    kept = list(range(s.shape[0]))
    rejected: list[int] = []
    if clip_norm is not None or clip_value is not None:
        kept = []
        for gi in range(s.shape[0]):
            try:
                if clip_norm is not None:
                    check_group_sum_bound(s[gi], int(sizes[gi]), clip_norm)
                if clip_value is not None:
                    check_group_sum_range(s[gi], int(sizes[gi]), clip_value)
                kept.append(gi)
            except AggregationError:
                rejected.append(gi)
        if not kept:
            raise AggregationError("every group broke the declared clipping bound")
    means = s[kept] / sizes[kept, None]
    result = aggregator.aggregate(means, sizes[kept].astype(np.float64))
    return GroupedAggregate(result=result, kept_groups=tuple(kept), rejected_groups=tuple(rejected))


def robust_over_groups(
    updates: Matrix,
    plan: GroupPlan,
    aggregator: Aggregator,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> GroupedAggregate:
    """Simulate SecAgg-in-groups + robust-across-groups on clear updates (for benchmarks and
    tests): sum each group as SecAgg would, then ``aggregate_group_sums``."""
    return aggregate_group_sums(
        group_sums(updates, plan),
        plan.sizes,
        aggregator,
        clip_norm=clip_norm,
        clip_value=clip_value,
    )


def expected_spoiled_groups(n: int, group_size: int, f: int) -> float:
    """Expected number of groups holding at least one of ``f`` attackers when ``n`` devices are
    split uniformly at random into ``n // group_size`` groups of ``group_size`` (remainder
    ignored). The worst case (attackers choose their groups) is ``min(f, n // group_size)``."""
    if group_size < 1 or n < group_size or f < 0 or f > n:
        raise AggregationError("need 1 <= group_size <= n and 0 <= f <= n")
    g = n // group_size
    clean = math.comb(n - f, group_size) / math.comb(n, group_size)
    return g * (1.0 - clean)


def max_group_size(n: int, f: int, min_groups_for_f: int) -> int:
    """Largest group size that still leaves ``min_groups_for_f`` groups (e.g. ``2f + 1`` for the
    median, ``4f + 3`` for Bulyan) in the worst case where each attacker spoils its own group."""
    if min_groups_for_f < 1 or n < 1:
        raise AggregationError("need n >= 1 and min_groups_for_f >= 1")
    k = n // min_groups_for_f
    if k < 1:
        raise AggregationError(f"{n} devices cannot form {min_groups_for_f} groups")
    return k
