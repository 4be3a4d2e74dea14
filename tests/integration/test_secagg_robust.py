"""Real secure aggregation inside groups (``ztfm.secagg.run_secagg``: X25519, Shamir, AES masks)
and a robust rule across the group sums: the coordinator only ever sees group sums."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import AggregationError
from ztfm.robust import CoordinateMedian, Mean
from ztfm.robust.groups import aggregate_group_sums, assign_groups, robust_over_groups

secagg = pytest.importorskip("ztfm.secagg")

N, D, CLIP = 12, 16, 1.0


def _updates(rng: np.random.Generator) -> np.ndarray:
    return np.clip(0.3 + 0.1 * rng.normal(size=(N, D)), -CLIP, CLIP)


def _secure_sums(x: np.ndarray, groups: tuple[tuple[int, ...], ...], seed: int) -> np.ndarray:
    return np.stack(
        [
            np.asarray(
                secagg.run_secagg(
                    [x[i] for i in g], clip=CLIP, rng=np.random.default_rng([seed, gi])
                ),
                dtype=np.float64,
            )
            for gi, g in enumerate(groups)
        ]
    )


def test_secure_group_sums_match_clear_and_robust_rule_holds() -> None:
    rng = np.random.default_rng(0)
    x = _updates(rng)
    x[:2] = -CLIP  # two attackers push every coordinate to the clip limit
    plan = assign_groups(N, 2, rng)  # 6 groups: the median over them tolerates 2 spoiled
    sums = _secure_sums(x, plan.groups, 1)
    clear = np.stack([x[list(g)].sum(axis=0) for g in plan.groups])
    np.testing.assert_allclose(sums, clear, atol=1e-4)  # fixed-point error only
    robust = aggregate_group_sums(sums, plan.sizes, CoordinateMedian(f=2), clip_value=CLIP)
    same = robust_over_groups(x, plan, CoordinateMedian(f=2))
    np.testing.assert_allclose(robust.vector, same.vector, atol=1e-4)
    honest = x[2:].mean(axis=0)
    plain = aggregate_group_sums(sums, plan.sizes, Mean())
    assert np.abs(robust.vector - honest).max() < np.abs(plain.vector - honest).max()


def test_out_of_range_group_sum_is_dropped() -> None:
    rng = np.random.default_rng(1)
    x = _updates(rng)
    plan = assign_groups(N, 3, rng)
    sums = _secure_sums(x, plan.groups, 2)
    sums[1, 3] = 3 * CLIP + 0.5  # what a member that skipped the clip would produce
    out = aggregate_group_sums(sums, plan.sizes, CoordinateMedian(f=1), clip_value=CLIP)
    assert out.rejected_groups == (1,) and 1 not in out.kept_groups
    with pytest.raises(AggregationError):
        aggregate_group_sums(sums * 10, plan.sizes, Mean(), clip_value=CLIP)
    with pytest.raises(AggregationError):
        aggregate_group_sums(sums, plan.sizes, Mean(), clip_value=0.0)
