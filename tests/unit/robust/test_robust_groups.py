"""SecAgg groups + robust aggregation over group sums."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import AggregationError
from ztfm.robust import CoordinateMedian, Mean
from ztfm.robust.groups import (
    GroupPlan,
    aggregate_group_sums,
    assign_groups,
    check_group_sum_bound,
    clip_to_norm,
    expected_spoiled_groups,
    group_sums,
    max_group_size,
    robust_over_groups,
)


def test_assign_groups_partitions_and_is_seeded() -> None:
    a = assign_groups(23, 5, np.random.default_rng(1))
    b = assign_groups(23, 5, np.random.default_rng(1))
    c = assign_groups(23, 5, np.random.default_rng(2))
    assert a == b and a != c
    assert len(a.groups) == 4 and min(len(g) for g in a.groups) >= 5
    assert sorted(i for g in a.groups for i in g) == list(range(23))
    assert a.group_of()[a.groups[2][0]] == 2


@pytest.mark.parametrize(("n", "k"), [(3, 4), (5, 0), (5, -1)])
def test_assign_groups_rejects(n: int, k: int) -> None:
    with pytest.raises(AggregationError):
        assign_groups(n, k, np.random.default_rng(0))


@pytest.mark.parametrize(
    "groups", [((0, 1), (1, 2)), ((0, 1),), ((0, 1), (2, 3), (4,)), ((0, 1, 2, 5), (3, 4))]
)
def test_group_plan_rejects_bad_partitions(groups: tuple[tuple[int, ...], ...]) -> None:
    with pytest.raises(AggregationError):
        GroupPlan(n=5, min_size=2, groups=groups)


def test_group_sums_and_identity() -> None:
    x = np.tile(np.arange(4.0), (12, 1))
    plan = assign_groups(12, 3, np.random.default_rng(0))
    np.testing.assert_allclose(group_sums(x, plan), np.tile(3 * np.arange(4.0), (4, 1)))
    out = robust_over_groups(x, plan, CoordinateMedian(f=1))
    np.testing.assert_allclose(out.vector, np.arange(4.0))
    with pytest.raises(AggregationError):
        group_sums(x[:11], plan)


def test_robust_over_groups_bounds_attackers_where_mean_fails() -> None:
    rng = np.random.default_rng(3)
    n, d, f = 30, 10, 3
    x = 0.1 * rng.normal(size=(n, d)) + 1.0
    x[:f] = 1e5
    plan = assign_groups(n, 3, rng)
    robust = robust_over_groups(x, plan, CoordinateMedian(f=f))
    plain = robust_over_groups(x, plan, Mean())
    assert np.abs(robust.vector - 1.0).max() < 0.5
    assert np.abs(plain.vector - 1.0).max() > 1e3


def test_clipping_bound_catches_unclipped_member() -> None:
    rng = np.random.default_rng(4)
    n, d, c = 12, 6, 1.0
    x = np.stack([clip_to_norm(rng.normal(size=d), c) for _ in range(n)])
    x[5] = 100.0  # a member that did not clip before masking
    plan = assign_groups(n, 3, rng)
    out = robust_over_groups(x, plan, CoordinateMedian(f=1), clip_norm=c)
    bad_group = int(plan.group_of()[5])
    assert out.rejected_groups == (bad_group,)
    assert bad_group not in out.kept_groups


def test_check_group_sum_bound() -> None:
    check_group_sum_bound(np.array([3.0, 4.0]), 5, 1.0)
    for s in (np.array([3.0, 4.1]), np.array([np.nan, 0.0]), np.array([np.inf, 0.0])):
        with pytest.raises(AggregationError, match="clip"):
            check_group_sum_bound(s, 5, 1.0)
    for c in (float("nan"), 0.0, -1.0):  # a NaN bound must not accept every sum
        with pytest.raises(AggregationError, match="clip_norm"):
            check_group_sum_bound(np.array([1e9, 1e9]), 5, c)


def test_clip_to_norm() -> None:
    np.testing.assert_allclose(clip_to_norm(np.array([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_allclose(clip_to_norm(np.array([0.3, 0.4]), 1.0), [0.3, 0.4])
    for c in (0.0, -1.0, float("nan")):
        with pytest.raises(AggregationError):
            clip_to_norm(np.ones(2), c)


def test_aggregate_group_sums_rejects_bad_sizes_and_all_bad_groups() -> None:
    sums = np.ones((3, 2))
    for sizes in (np.ones(2), np.array([1.0, 0.0, 1.0]), np.array([1.5, 1.0, 1.0]), [1, 1, 1]):
        with pytest.raises(AggregationError):
            aggregate_group_sums(sums, sizes, Mean())  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="every group"):
        aggregate_group_sums(sums * 10, np.ones(3), Mean(), clip_norm=1.0)
    with pytest.raises(AggregationError):
        aggregate_group_sums(sums * 1e9, np.ones(3), Mean(), clip_norm=float("nan"))


def test_expected_spoiled_groups() -> None:
    assert expected_spoiled_groups(10, 1, 3) == pytest.approx(3.0)
    assert expected_spoiled_groups(10, 10, 1) == pytest.approx(1.0)
    assert 2.0 < expected_spoiled_groups(100, 5, 10) < 10.0
    with pytest.raises(AggregationError):
        expected_spoiled_groups(10, 11, 1)
    assert max_group_size(100, 10, 21) == 4
    with pytest.raises(AggregationError):
        max_group_size(5, 3, 7)


@pytest.mark.parametrize(("group_size", "holds"), [(1, True), (2, True), (3, True), (10, False)])
def test_group_size_tradeoff(group_size: int, holds: bool) -> None:
    """Reduced bench/robustness.py groups table: 6 of 60 updates scaled x100. The median over
    group means holds while spoiled groups stay a minority and breaks when every group can be
    spoiled (k=10: 6 groups, 6 attackers)."""
    errors = []
    for rep in range(5):
        rng = np.random.default_rng([group_size, rep])
        x = rng.normal(size=(60, 50))
        benign_mean = x[6:].mean(axis=0)
        x[:6] *= 100.0
        plan = assign_groups(60, group_size, rng)
        f = min(6, (len(plan.groups) - 1) // 2)
        out = robust_over_groups(x, plan, CoordinateMedian(f=f))
        errors.append(np.linalg.norm(out.vector - benign_mean) / np.sqrt(x.shape[1]))
    assert (float(np.mean(errors)) < 0.5) is holds


def test_check_group_sum_range() -> None:
    from ztfm.robust.groups import check_group_sum_range

    check_group_sum_range(np.array([3.0, -3.0]), 3, 1.0)
    for s in (np.array([3.1, 0.0]), np.array([0.0, -3.1]), np.array([np.nan, 0.0])):
        with pytest.raises(AggregationError, match="clip"):
            check_group_sum_range(s, 3, 1.0)
    with pytest.raises(AggregationError):
        check_group_sum_range(np.zeros(2), 3, float("inf"))
