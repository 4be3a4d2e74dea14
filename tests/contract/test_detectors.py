"""Every detector x every contract check (same seed, input untouched, export/import, params)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ztfm.data.bundled import bundled_path
from ztfm.data.skab import load_skab_file
from ztfm.detect import (
    FEDERATED,
    Detector,
    available_detectors,
    detector_from_bytes,
    make_detector,
)
from ztfm.detect.base import BaseDetector
from ztfm.detect.features import FeatureSpec, WindowFeatures
from ztfm.errors import DetectorError

FAST: dict[str, dict[str, Any]] = {"ae": {"epochs": 15}, "iforest": {"n_estimators": 30}}
ALL = available_detectors()
FED = sorted(FEDERATED)


@pytest.fixture(scope="module")
def skab() -> tuple[np.ndarray, np.ndarray]:
    s = load_skab_file(bundled_path("skab/valve1/1.csv.gz"))
    f = WindowFeatures(8, FeatureSpec(windows=(10,), ewma_alphas=())).transform(s.x)
    assert s.y is not None
    return f, s.y


def _fitted(name: str, x: np.ndarray, seed: int = 0) -> BaseDetector:
    d = make_detector(name, x.shape[1], **FAST.get(name, {}))
    d.fit(x, rng=np.random.default_rng(seed))
    return d


def test_registry_lists_families() -> None:
    assert {"ae", "pca", "iforest"} <= set(ALL)
    assert set(ALL) >= FEDERATED


@pytest.mark.parametrize("name", ALL)
def test_satisfies_protocol(name: str) -> None:
    assert isinstance(make_detector(name, 4), Detector)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_scores(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = skab
    a = _fitted(name, x[:400]).score(x)
    b = _fitted(name, x[:400]).score(x)
    assert a.dtype == np.float32 and a.shape == (x.shape[0],)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["ae", "iforest"])
def test_different_seed_changes_scores(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = skab
    assert not np.array_equal(
        _fitted(name, x[:400], 0).score(x), _fitted(name, x[:400], 1).score(x)
    )


@pytest.mark.parametrize("name", ALL)
def test_fit_leaves_input_unchanged(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x = skab[0][:400].copy()
    before = x.copy()
    d = _fitted(name, x)
    d.score(x)
    d.calibrate(x, 0.05)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("name", ALL)
def test_roc_auc_above_chance_on_real_skab(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = skab
    assert roc_auc_score(y, _fitted(name, x[:400]).score(x)) > 0.7


@pytest.mark.parametrize("name", ALL)
def test_calibrate_meets_far_on_its_rows(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x = skab[0][:400]
    d = _fitted(name, x)
    for far in (0.0, 0.01, 0.1):
        d.calibrate(x, far)
        assert d.predict(x).mean() <= far
        assert d.predict(x).dtype == np.int8


@pytest.mark.parametrize("name", FED)
def test_export_import_round_trip(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = skab
    d = _fitted(name, x[:400])
    e = detector_from_bytes(d.to_bytes())
    np.testing.assert_array_equal(d.score(x), e.score(x))
    assert e.threshold == d.threshold
    np.testing.assert_array_equal(d.predict(x), e.predict(x))


def test_iforest_is_not_exportable(skab: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(DetectorError, match="cannot be exported"):
        _fitted("iforest", skab[0][:400]).to_bytes()


@pytest.mark.parametrize("name", FED)
def test_params_round_trip_between_devices(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = skab
    a = _fitted(name, x[:400])
    b = make_detector(name, x.shape[1], **FAST.get(name, {}))
    b.fit_scaler(x[:400])
    b.set_params(a.get_params())
    np.testing.assert_array_equal(a.score(x), b.score(x))
    for p, s in zip(a.get_params(), a.param_shapes(), strict=True):
        assert p.dtype == np.float32 and p.shape == s


@pytest.mark.parametrize("name", FED)
def test_get_params_is_a_copy(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    d = _fitted(name, skab[0][:400])
    before = d.score(skab[0])
    for p in d.get_params():
        p += 1.0
    np.testing.assert_array_equal(before, d.score(skab[0]))


# --- set_params negatives -------------------------------------------------------------------
def _bad_params(good: list[np.ndarray]) -> list[tuple[str, Any]]:
    nan = [p.copy() for p in good]
    nan[0].flat[0] = np.nan
    inf = [p.copy() for p in good]
    inf[-1].flat[-1] = np.inf
    return [
        ("missing", good[:-1]),
        ("extra", [*good, good[0]]),
        ("float64", [p.astype(np.float64) for p in good]),
        ("int8", [p.astype(np.int8) for p in good]),
        ("transposed", [good[0].T.copy() if good[0].ndim == 2 else good[0], *good[1:]]),
        ("flattened", [good[0].ravel(), *good[1:]]),
        ("nan", nan),
        ("inf", inf),
        ("not a list", good[0]),
        ("list of lists", [p.tolist() for p in good]),
        ("none", None),
    ]


@pytest.mark.parametrize("name", FED)
@pytest.mark.parametrize("case", range(11))
def test_set_params_rejects(name: str, case: int) -> None:
    d = make_detector(name, 5, **FAST.get(name, {}))
    good = d.get_params()
    label, bad = _bad_params(good)[case]
    if label == "transposed" and good[0].shape == good[0].T.shape:
        bad = [good[0][:, :-1].copy(), *good[1:]]
    before = d.get_params()
    with pytest.raises(DetectorError):
        d.set_params(bad)
    for p, q in zip(before, d.get_params(), strict=True):  # unchanged after a rejection
        np.testing.assert_array_equal(p, q)


def test_pca_rejects_asymmetric_or_indefinite() -> None:
    d = make_detector("pca", 3)
    with pytest.raises(DetectorError, match="symmetric"):
        d.set_params([np.triu(np.ones((3, 3), np.float32))])
    with pytest.raises(DetectorError, match="semi-definite"):
        d.set_params([-np.eye(3, dtype=np.float32)])


def test_pca_projects_a_slightly_noisy_or_indefinite_federated_covariance() -> None:
    """DP noise (asymmetric) and coordinate-wise medians (slightly indefinite) still give a
    usable model: the nearest symmetric PSD matrix, kept for the next round."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    cov = (a @ a.T / 4).astype(np.float32)
    d = make_detector("pca", 4)
    noisy = cov + rng.normal(scale=0.03, size=(4, 4)).astype(np.float32)
    noisy[3, 3] -= 2.5 * float(np.linalg.eigvalsh(cov)[0] + 0.05)  # a small negative eigenvalue
    d.set_params([noisy])
    (kept,) = d.get_params()
    np.testing.assert_allclose(kept, kept.T, atol=1e-6)
    assert np.linalg.eigvalsh(kept.astype(np.float64))[0] >= -1e-5
    assert np.linalg.norm(kept - cov) < np.linalg.norm(noisy - cov) + 1e-6  # projection helps
    d.set_params([cov])  # an exact covariance is kept bit for bit
    np.testing.assert_array_equal(d.get_params()[0], cov)


# --- usage negatives ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_score_before_training_rejected(name: str) -> None:
    with pytest.raises(DetectorError):
        make_detector(name, 3).score(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("name", ALL)
def test_predict_without_threshold_rejected(name: str, rng: np.random.Generator) -> None:
    d = make_detector(name, 3, **FAST.get(name, {}))
    x = rng.normal(size=(64, 3)).astype(np.float32)
    d.fit_scaler(x)
    d.train_epochs(x, epochs=1, rng=rng)
    with pytest.raises(DetectorError, match="threshold"):
        d.predict(x)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 4), np.float32),
        np.zeros(3, np.float32),
        np.full((10, 3), np.nan, np.float32),
        np.array([["a", "b", "c"]]),
        [[0.0, 1.0, 2.0]],
    ],
    ids=["width", "1d", "nan", "strings", "list"],
)
def test_bad_input_rejected(name: str, bad: Any, rng: np.random.Generator) -> None:
    d = make_detector(name, 3, **FAST.get(name, {}))
    with pytest.raises(DetectorError):
        d.fit(bad, rng=rng)
    d.fit(rng.normal(size=(64, 3)).astype(np.float32), rng=rng)
    with pytest.raises(DetectorError):
        d.score(bad)


@pytest.mark.parametrize("name", ALL)
def test_bad_training_arguments_rejected(name: str, rng: np.random.Generator) -> None:
    d = make_detector(name, 3, **FAST.get(name, {}))
    x = rng.normal(size=(64, 3)).astype(np.float32)
    d.fit_scaler(x)
    for kwargs in (
        {"epochs": 0},
        {"epochs": 1.5},
        {"epochs": 1, "prox_mu": -1.0},
        {"epochs": 1, "prox_mu": float("nan")},
    ):
        with pytest.raises(DetectorError):
            d.train_epochs(x, rng=rng, **kwargs)
    with pytest.raises(DetectorError, match="Generator"):
        d.train_epochs(x, epochs=1, rng=42)  # type: ignore[arg-type]
    with pytest.raises(DetectorError):
        d.calibrate(x, 1.5)


@pytest.mark.parametrize("name", ALL)
def test_too_few_rows_rejected(name: str, rng: np.random.Generator) -> None:
    with pytest.raises(DetectorError, match="at least"):
        make_detector(name, 3).fit(np.zeros((1, 3), np.float32), rng=rng)


def test_unknown_detector_and_bad_hparams() -> None:
    with pytest.raises(DetectorError, match="unknown detector"):
        make_detector("lstm", 3)
    with pytest.raises(DetectorError, match="hyper-parameters"):
        make_detector("ae", 3, depth=7)
    for kwargs in ({"hidden": ()}, {"hidden": (0,)}, {"lr": -1.0}, {"epochs": 0}):
        with pytest.raises(DetectorError):
            make_detector("ae", 3, **kwargs)
    with pytest.raises(DetectorError):
        make_detector("pca", 3, var_frac=1.5)
    with pytest.raises(DetectorError):
        make_detector("pca", 0)


# --- corrupt exports ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blob(skab: tuple[np.ndarray, np.ndarray]) -> bytes:
    return _fitted("pca", skab[0][:400]).to_bytes()


def test_truncated_export_rejected(blob: bytes) -> None:
    for cut in (0, 10, len(blob) // 2, len(blob) - 1):
        with pytest.raises(DetectorError):
            detector_from_bytes(blob[:cut])


def test_pickled_array_in_export_rejected(blob: bytes) -> None:
    import io
    import zipfile

    # a pickled object array smuggled into the export is refused
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(buf, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            if n == "param_0.npy":
                out = io.BytesIO()
                np.save(out, np.array([object()], dtype=object), allow_pickle=True)
                data = out.getvalue()
            dst.writestr(n, data)
    with pytest.raises(DetectorError):
        detector_from_bytes(buf.getvalue())


def test_export_with_wrong_header_rejected(blob: bytes) -> None:
    import io
    import json
    import zipfile

    for change in (
        {"version": 99},
        {"name": "nope"},
        {"n_params": 3},
        {"threshold": "x"},
        {"n_features": "many"},
    ):
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(buf, "w") as dst:
            for n in src.namelist():
                data = src.read(n)
                if n == "header.json":
                    data = json.dumps({**json.loads(data), **change}).encode()
                dst.writestr(n, data)
        with pytest.raises(DetectorError):
            detector_from_bytes(buf.getvalue())


def test_export_before_training_rejected() -> None:
    with pytest.raises(DetectorError, match="before training"):
        make_detector("pca", 3).to_bytes()


# --- federated hooks ------------------------------------------------------------------------
@pytest.mark.parametrize("name", FED)
def test_prox_term_pulls_towards_anchor(name: str, skab: tuple[np.ndarray, np.ndarray]) -> None:
    x = skab[0][:400]
    anchor = [np.zeros_like(p) for p in make_detector(name, x.shape[1]).get_params()]

    def dist(mu: float) -> float:
        d = make_detector(name, x.shape[1], **FAST.get(name, {}))
        d.fit_scaler(x)
        d.train_epochs(x, epochs=5, rng=np.random.default_rng(3), prox_mu=mu, anchor=anchor)
        return float(sum(np.sum(p**2) for p in d.get_params()))

    assert dist(10.0) < dist(0.0)


def test_train_epochs_continues_and_lowers_loss(skab: tuple[np.ndarray, np.ndarray]) -> None:
    x = skab[0][:400]
    d = make_detector("ae", x.shape[1])
    d.fit_scaler(x)
    rng = np.random.default_rng(0)
    first = d.train_epochs(x, epochs=2, rng=rng)
    later = d.train_epochs(x, epochs=10, rng=rng)
    assert later < first


def test_anchor_with_wrong_shape_rejected(skab: tuple[np.ndarray, np.ndarray]) -> None:
    x = skab[0][:100]
    d = make_detector("ae", x.shape[1])
    d.fit_scaler(x)
    with pytest.raises(DetectorError):
        d.train_epochs(
            x, epochs=1, rng=np.random.default_rng(0), prox_mu=1.0, anchor=[np.zeros(3, np.float32)]
        )


# --- local scaler and whitening -------------------------------------------------------------
def test_whitening_is_local_and_exported(skab: tuple[np.ndarray, np.ndarray]) -> None:
    x = skab[0]
    d = _fitted("ae", x[:400])
    assert d.whiten and d.hparams()["whiten"] is True
    plain = make_detector("ae", x.shape[1], whiten=False, **FAST["ae"])
    plain.fit(x[:400], rng=np.random.default_rng(0))
    assert not np.array_equal(d.score(x), plain.score(x))
    # params are the same shapes whether or not the device whitens: they stay aggregatable
    assert d.param_shapes() == plain.param_shapes()
    np.testing.assert_array_equal(detector_from_bytes(d.to_bytes()).score(x), d.score(x))


def test_set_scaler_rejects_mismatched_whitening(skab: tuple[np.ndarray, np.ndarray]) -> None:
    n = skab[0].shape[1]
    mu, sd = np.zeros(n, np.float32), np.ones(n, np.float32)
    with pytest.raises(DetectorError, match="whitening"):
        make_detector("ae", n).set_scaler(mu, sd)  # whitening detector without a matrix
    with pytest.raises(DetectorError, match="whitening"):
        make_detector("ae", n, whiten=False).set_scaler(mu, sd, np.eye(n, dtype=np.float32))
    with pytest.raises(DetectorError):
        make_detector("ae", n).set_scaler(mu, sd, np.eye(n + 1, dtype=np.float32))
    with pytest.raises(DetectorError, match="positive"):
        make_detector("pca", n).set_scaler(mu, np.zeros(n, np.float32))
    with pytest.raises(DetectorError):
        make_detector("ae", 3, whiten="yes")


def test_export_missing_whitening_rejected(skab: tuple[np.ndarray, np.ndarray]) -> None:
    import io
    import zipfile

    blob = _fitted("ae", skab[0][:400]).to_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(buf, "w") as dst:
        for n in src.namelist():
            if n != "scaler_white.npy":
                dst.writestr(n, src.read(n))
    with pytest.raises(DetectorError, match="does not match"):
        detector_from_bytes(buf.getvalue())


@pytest.mark.parametrize(
    ("name", "n", "kwargs"),
    [
        ("ae", 10**6, {}),
        ("ae", 8, {"hidden": (8,) * 20}),
        ("ae", 4000, {"hidden": (4000, 4000)}),
        ("pca", 5000, {}),
        ("iforest", 10**7, {}),
    ],
)
def test_oversized_models_refused(name: str, n: int, kwargs: dict[str, Any]) -> None:
    # a crafted export header must not make a device allocate gigabytes
    with pytest.raises(DetectorError):
        make_detector(name, n, **kwargs)


def test_whitening_falls_back_to_identity_on_few_rows(rng: np.random.Generator) -> None:
    x = rng.normal(size=(30, 20)).astype(np.float32)  # fewer than 2 rows per feature
    d = make_detector("ae", 20)
    d.fit_scaler(x)
    np.testing.assert_array_equal(d._white, np.eye(20, dtype=np.float32))
    d.fit_scaler(np.concatenate([x, x + 0.1, x - 0.1]))  # 90 rows: enough, whitens
    assert d._white is not None and not np.array_equal(d._white, np.eye(20, dtype=np.float32))
