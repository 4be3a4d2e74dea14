"""Known-answer and edge-case tests for each robust rule."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import AggregationError, ConfigError
from ztfm.robust import (
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    Mean,
    NormBounding,
    TrimmedMean,
    make_aggregator,
    weighted_coordinate_median,
)


def test_median_known_values() -> None:
    x = np.array([[1.0, 10.0], [2.0, 20.0], [100.0, -5.0]])
    assert CoordinateMedian(f=1).aggregate(x).vector.tolist() == [2.0, 10.0]


def test_weighted_median_follows_weight() -> None:
    x = np.array([[0.0], [1.0], [2.0]])
    w = np.array([0.1, 0.1, 0.8])
    assert weighted_coordinate_median(x, w).tolist() == [2.0]
    assert CoordinateMedian().aggregate(x, w).vector.tolist() == [2.0]


def test_weighted_median_even_split_averages() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    w = np.array([0.25, 0.25, 0.25, 0.25]) + np.array([0, 0, 0, 1e-20])
    assert weighted_coordinate_median(x, w / w.sum()).tolist() == [1.5]


def test_trimmed_mean_drops_extremes() -> None:
    x = np.array([[-1000.0], [1.0], [2.0], [3.0], [1000.0]])
    out = TrimmedMean(f=1).aggregate(x)
    assert out.vector.tolist() == [2.0]
    assert out.weights[0] == 0.0 and out.weights[4] == 0.0


def test_krum_picks_the_central_update() -> None:
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.05, 0.05], [9.0, 9.0]])
    out = Krum(f=1).aggregate(x)
    assert out.selected == (3,)
    assert out.vector.tolist() == [0.05, 0.05]
    assert int(np.argmax(out.scores)) == 4


def test_multi_krum_excludes_outliers() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(8, 3)) * 0.1, np.full((2, 3), 50.0)])
    out = Krum(f=2, m=6).aggregate(x)
    assert 8 not in out.selected and 9 not in out.selected and len(out.selected) == 6


def test_krum_rejects_bad_m() -> None:
    with pytest.raises(AggregationError):
        Krum(f=1, m=0)
    with pytest.raises(AggregationError, match="exceeds"):
        Krum(f=1, m=5).aggregate(np.zeros((5, 2)))


def test_bulyan_excludes_attackers() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([np.full((2, 4), 1e3), rng.normal(size=(9, 4)) * 0.1])
    out = Bulyan(f=2).aggregate(x)
    # Identical attackers may survive the Krum stage once few rows remain (k = 1 neighbour);
    # the coordinate-wise stage must then give them no weight.
    assert out.weights[0] == 0.0 and out.weights[1] == 0.0
    assert np.abs(out.vector).max() < 0.3


def test_geometric_median_collinear_is_middle_point() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.0], [100.0, 0.0]])
    out = GeometricMedian(f=1, nu=1e-9).aggregate(x)
    np.testing.assert_allclose(out.vector, [1.0, 0.0], atol=1e-4)


def test_geometric_median_bad_params() -> None:
    for kwargs in ({"nu": 0.0}, {"nu": float("nan")}, {"max_iter": 0}, {"tol": -1.0}):
        with pytest.raises(AggregationError):
            GeometricMedian(**kwargs)  # type: ignore[arg-type]


def test_norm_bounding_clips_to_bound() -> None:
    x = np.array([[3.0, 4.0], [0.0, 1.0]])
    out = NormBounding(clip_norm=1.0).aggregate(x)
    np.testing.assert_allclose(out.vector, [0.3, 0.9])
    assert out.scores.tolist() == [5.0, 1.0]
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(AggregationError):
            NormBounding(clip_norm=bad)


def test_centered_clipping_influence_bounded_by_tau() -> None:
    x = np.vstack([np.zeros((4, 2)), [[1e9, 0.0]]])
    out = CenteredClipping(f=1, tau=1.0, iters=3, center=np.zeros(2)).aggregate(x)
    assert np.linalg.norm(out.vector) <= 3 * 1.0 / 5 + 1e-12


def test_centered_clipping_rejects_bad_center_and_params() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(AggregationError):
        CenteredClipping(center=np.zeros(3)).aggregate(x)
    with pytest.raises(AggregationError):
        CenteredClipping(center=np.array([np.nan, 0.0])).aggregate(x)
    with pytest.raises(AggregationError):
        CenteredClipping(tau=-1.0)
    with pytest.raises(AggregationError):
        CenteredClipping(iters=0)


def test_fltrust_ignores_opposite_updates_and_rescales() -> None:
    g0 = np.array([1.0, 0.0])
    x = np.array([[10.0, 0.0], [-100.0, 0.0], [0.0, 5.0]])
    out = FLTrust(server_update=g0).aggregate(x)
    np.testing.assert_allclose(out.vector, [1.0, 0.0])
    assert out.selected == (0,)
    assert out.scores[1] == pytest.approx(2.0)


def test_fltrust_fails_closed_when_nobody_agrees() -> None:
    with pytest.raises(AggregationError, match="direction"):
        FLTrust(server_update=np.array([1.0, 0.0])).aggregate(np.array([[-1.0, 0.0]] * 3))


def test_fltrust_rejects_bad_server_update() -> None:
    for g0 in (np.zeros(2), np.array([np.nan, 1.0]), np.ones((2, 2)), np.array([1, 2])):
        with pytest.raises(AggregationError):
            FLTrust(server_update=g0)
    with pytest.raises(AggregationError, match="shape"):
        FLTrust(server_update=np.ones(3)).aggregate(np.ones((4, 2)))


def test_zero_weight_rows_have_no_say_in_the_mean() -> None:
    x = np.array([[0.0], [1e6]])
    assert Mean().aggregate(x, np.array([1.0, 0.0])).vector.tolist() == [0.0]


def test_registry_builds_and_rejects() -> None:
    assert make_aggregator("bulyan", f=1).name == "bulyan"
    assert make_aggregator("multi_krum", f=1).name == "multi_krum"
    assert make_aggregator("fedavg").name == "mean"
    with pytest.raises(ConfigError, match="unknown aggregator"):
        make_aggregator("average_of_everything")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_aggregator("median", beta=0.1)
    with pytest.raises(ConfigError):
        make_aggregator("fltrust")


def test_large_common_offset_does_not_break_krum() -> None:
    rng = np.random.default_rng(2)
    x = 1e8 + rng.normal(size=(7, 5)) * 1e-3
    x[0] += 1.0
    out = Krum(f=1).aggregate(x)
    assert 0 not in out.selected
    assert int(np.argmax(out.scores)) == 0


def test_robust_combine_adapter_keeps_diagnostics() -> None:
    from ztfm.robust import RobustCombine

    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.05, 0.05], [9.0, 9.0]])
    comb = RobustCombine(Krum(f=1))
    out = comb(x, np.full(5, 0.2))
    assert out.tolist() == [0.05, 0.05] and comb.last is not None and comb.last.selected == (3,)
    mean = RobustCombine(Mean(), use_weights=False)
    assert mean(np.array([[0.0], [2.0]]), np.array([1.0, 0.0])).tolist() == [1.0]
