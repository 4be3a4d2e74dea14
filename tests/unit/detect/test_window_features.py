"""Window features: the vectorised replay equals row-by-row updates, and both are causal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ztfm.data.bundled import bundled_path
from ztfm.data.skab import load_skab_file
from ztfm.detect.features import FeatureSpec, WindowFeatures
from ztfm.errors import DetectorError

SPECS = [
    FeatureSpec(),
    FeatureSpec(windows=(10,), ewma_alphas=()),
    FeatureSpec(windows=(2, 7), ewma_alphas=(0.5, 0.05), raw=False, delta=False),
]


def _rowwise(f: WindowFeatures, x: np.ndarray) -> np.ndarray:
    f.reset()
    return np.stack([f.update(r) for r in x])


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_transform_equals_updates_on_real_skab(spec: FeatureSpec) -> None:
    x = load_skab_file(bundled_path("skab/other/3.csv.gz")).x[:300]
    f = WindowFeatures(8, spec)
    np.testing.assert_allclose(f.transform(x), _rowwise(f, x), rtol=2e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 4)),
        elements=st.floats(-1e4, 1e4, allow_nan=False),
    ),
    w=st.integers(2, 12),
)
def test_transform_equals_updates_property(x: np.ndarray, w: int) -> None:
    f = WindowFeatures(x.shape[1], FeatureSpec(windows=(w,), ewma_alphas=(0.3,)))
    np.testing.assert_allclose(f.transform(x), _rowwise(f, x), rtol=1e-5, atol=1e-3)


def test_causal_future_rows_do_not_change_the_past(rng: np.random.Generator) -> None:
    x = rng.normal(size=(200, 3))
    y = x.copy()
    y[120:] += 100.0  # change only the future
    f = WindowFeatures(3)
    np.testing.assert_array_equal(f.transform(x)[:120], f.transform(y)[:120])
    assert not np.array_equal(f.transform(x)[120:], f.transform(y)[120:])


def test_known_values() -> None:
    f = WindowFeatures(1, FeatureSpec(windows=(2,), ewma_alphas=(0.5,)))
    out = f.transform(np.array([[1.0], [3.0], [7.0]]))
    # raw, delta, mean2, std2, min2, max2, x - ewma
    np.testing.assert_allclose(out[1], [3, 2, 2, 1, 1, 3, 1.0])
    np.testing.assert_allclose(out[2], [7, 4, 5, 2, 3, 7, 7 - 4.5])
    assert f.spec.names(["a"])[2] == "a.mean2"


def test_names_match_width() -> None:
    f = WindowFeatures(8)
    assert len(f.spec.names([f"c{i}" for i in range(8)])) == f.n_outputs


def test_reset_restarts_the_stream(rng: np.random.Generator) -> None:
    x = rng.normal(size=(30, 2))
    f = WindowFeatures(2)
    first = _rowwise(f, x)
    assert np.array_equal(first, _rowwise(f, x))


def test_empty_matrix() -> None:
    assert WindowFeatures(2).transform(np.zeros((0, 2))).shape == (0, WindowFeatures(2).n_outputs)


# --- negative -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.zeros((4, 3)), np.zeros(2), np.zeros((2, 2, 2))])
def test_wrong_shape_rejected(bad: np.ndarray) -> None:
    with pytest.raises(DetectorError, match="expected"):
        WindowFeatures(2).transform(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(value: float) -> None:
    f = WindowFeatures(2)
    with pytest.raises(DetectorError, match="NaN or infinite"):
        f.update(np.array([1.0, value]))
    with pytest.raises(DetectorError, match="NaN or infinite"):
        f.transform(np.array([[1.0, value]]))


def test_non_numeric_rejected() -> None:
    with pytest.raises(DetectorError, match="real numbers"):
        WindowFeatures(2).update(np.array(["a", "b"]))
    with pytest.raises(DetectorError, match="real numbers"):
        WindowFeatures(1).update(np.array([1 + 2j]))


def test_update_wrong_width_rejected() -> None:
    with pytest.raises(DetectorError):
        WindowFeatures(3).update(np.zeros(4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"windows": (1,)},
        {"windows": (5, 5)},
        {"windows": (10**6,)},
        {"ewma_alphas": (1.0,)},
        {"ewma_alphas": (0.0,)},
        {"windows": (), "ewma_alphas": (), "raw": False, "delta": False},
    ],
)
def test_bad_spec_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(DetectorError):
        FeatureSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, -1, 2.5, "3"])
def test_bad_width_rejected(n: object) -> None:
    with pytest.raises(DetectorError):
        WindowFeatures(n)  # type: ignore[arg-type]
