"""Streaming pipeline, int8 inference and the protocol evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.data.bundled import bundled_path
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.data.skab import load_skab_file, skab_split
from ztfm.detect import make_detector
from ztfm.detect.autoencoder import Autoencoder
from ztfm.detect.evaluate import Confusion, evaluate_units, fit_pipeline
from ztfm.detect.features import FeatureSpec, WindowFeatures
from ztfm.detect.presets import preset
from ztfm.detect.quant import QuantizedAutoencoder
from ztfm.detect.stream import PipelineConfig, ScoreSmoother, StreamingDetector
from ztfm.errors import DataError, DetectorError


def _label_mask(s: LabelledSeries, value: int) -> np.ndarray:
    assert s.y is not None
    return np.asarray(s.y == value)


@pytest.fixture(scope="module")
def skab_file() -> LabelledSeries:
    return load_skab_file(bundled_path("skab/valve1/3.csv.gz"))


# --- smoother and pipeline --------------------------------------------------------------------
def test_smoother_update_equals_transform(rng: np.random.Generator) -> None:
    s = rng.exponential(size=100).astype(np.float32)
    sm = ScoreSmoother(7)
    live = np.array([sm.update(float(v)) for v in s], dtype=np.float32)
    np.testing.assert_allclose(live, sm.transform(s), rtol=1e-6)
    assert live[0] == s[0]
    assert live[10] == pytest.approx(s[4:11].mean(), rel=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 1.5, 10**7, True])
def test_smoother_rejects_bad_window(bad: object) -> None:
    with pytest.raises(DetectorError):
        ScoreSmoother(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"smooth": 0},
        {"target_far": 1.0},
        {"target_far": -0.1},
        {"threshold_margin": 0.0},
        {"threshold_margin": float("inf")},
    ],
)
def test_pipeline_config_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(DetectorError):
        PipelineConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("det", ["pca", "ae"])
def test_live_stream_equals_replay(det: str, skab_file: LabelledSeries) -> None:
    cfg = preset("skab", det).with_(
        hparams=(("epochs", 10),) if det == "ae" else (("var_frac", 0.999),)
    )
    pipe = StreamingDetector(8, cfg)
    pipe.fit(skab_file.x[:400], rng=np.random.default_rng(0))
    replay = pipe.score_stream(skab_file.x[:600])
    pipe.reset()
    live = [pipe.update(r) for r in skab_file.x[:600]]
    np.testing.assert_allclose([s for s, _ in live], replay, rtol=1e-5, atol=1e-6)
    assert pipe.threshold is not None
    assert [a for _, a in live] == list(replay > pipe.threshold)


def test_pipeline_needs_threshold(skab_file: LabelledSeries) -> None:
    pipe = StreamingDetector(8, PipelineConfig(detector="pca"))
    with pytest.raises(DetectorError, match="threshold"):
        pipe.update(skab_file.x[0])
    with pytest.raises(DetectorError, match="threshold"):
        pipe.predict_stream(skab_file.x)


# --- int8 ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ae_and_feats(skab_file: LabelledSeries) -> tuple[Autoencoder, np.ndarray]:
    f = WindowFeatures(8, FeatureSpec(windows=(10,), ewma_alphas=())).transform(skab_file.x)
    ae = make_detector("ae", f.shape[1], epochs=30)
    assert isinstance(ae, Autoencoder)
    ae.fit(f[:400], rng=np.random.default_rng(0))
    return ae, f


def test_int8_scores_close_and_decisions_agree(
    ae_and_feats: tuple[Autoencoder, np.ndarray],
) -> None:
    ae, f = ae_and_feats
    q = QuantizedAutoencoder.from_float(ae, f[:400])
    s_f, s_q = ae.score(f), q.score(f)
    assert np.corrcoef(s_f, s_q)[0, 1] > 0.99
    assert np.median(np.abs(s_q - s_f) / s_f) < 0.1
    q.set_threshold(ae.threshold or 0.0)
    assert (q.predict(f) == ae.predict(f)).mean() >= 0.99
    assert q.size_bytes() < ae.size_bytes()
    for lay in q.layers:
        assert lay.w_q.dtype == np.int8 and np.abs(lay.w_q.astype(int)).max() <= 127


def test_int8_accumulation_is_exact(
    ae_and_feats: tuple[Autoencoder, np.ndarray], rng: np.random.Generator
) -> None:
    ae, f = ae_and_feats
    q = QuantizedAutoencoder.from_float(ae, f[:400])
    lay = q.layers[0]
    a = rng.integers(-127, 128, size=(50, lay.w_q.shape[0]))
    exact = a.astype(np.int64) @ lay.w_q.astype(np.int64)
    via_float = a.astype(np.float32) @ lay.w_q.astype(np.float32)
    np.testing.assert_array_equal(exact, via_float.astype(np.int64))


def test_int8_rejects(ae_and_feats: tuple[Autoencoder, np.ndarray]) -> None:
    ae, f = ae_and_feats
    with pytest.raises(DetectorError):
        QuantizedAutoencoder.from_float(make_detector("pca", 3), f)  # type: ignore[arg-type]
    with pytest.raises(DetectorError):
        QuantizedAutoencoder.from_float(ae, f[:, :3])
    with pytest.raises(DetectorError):
        QuantizedAutoencoder.from_float(ae, f, percentile=10.0)
    q = QuantizedAutoencoder.from_float(ae, f[:400])
    with pytest.raises(DetectorError):
        q.score(np.full((2, f.shape[1]), np.nan, np.float32))
    with pytest.raises(DetectorError):
        q.set_threshold(float("nan"))


# --- confusion and evaluator ------------------------------------------------------------------
def test_confusion_metrics() -> None:
    c = Confusion.of(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 2)
    assert c.f1 == pytest.approx(0.5) and c.far == pytest.approx(1 / 3) and c.mar == 0.5
    flag = c.flag_everything()
    assert flag.far == 1.0 and flag.mar == 0.0 and flag.f1 == pytest.approx(4 / 7)
    empty = Confusion()
    assert empty.f1 is None and empty.far is None and empty.precision is None


def test_evaluate_skab_file_beats_flag_everything(skab_file: LabelledSeries) -> None:
    res = evaluate_units(
        skab_split([skab_file]), preset("skab", "pca"), rng=np.random.default_rng(0)
    )
    d = res.to_dict()
    for key in ("f1", "far", "mar", "precision", "recall", "roc_auc", "pr_auc", "per_type_recall"):
        assert key in d
    assert d["f1"] > d["flag_everything"]["f1"]
    assert d["far"] < 0.2 and d["roc_auc"] > 0.8
    assert d["rest"]["tp"] + d["rest"]["fn"] == d["tp"] + d["fn"]  # anomalies all after row 400


def test_evaluate_all_attack_data_reports_detection_rate(skab_file: LabelledSeries) -> None:
    attack = skab_file.rows(_label_mask(skab_file, 1))
    unit = EvalUnit(name="attacks", train=attack.rows(slice(0, 0)), test=attack)
    with pytest.raises(DataError, match="no benign training rows"):
        evaluate_units([unit], preset("skab", "pca"), rng=np.random.default_rng(0))
    res = evaluate_units(
        [unit],
        preset("skab", "pca"),
        rng=np.random.default_rng(0),
        train=[skab_file.rows(slice(0, 400))],
    )
    d = res.to_dict()
    assert d["far"] is None and d["detection_rate"] == d["recall"]
    assert res.warnings


def test_evaluate_rejects_bad_units(skab_file: LabelledSeries) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="no units"):
        evaluate_units([], preset("skab", "pca"), rng=rng)
    unlabelled = LabelledSeries(name="u", x=skab_file.x, columns=skab_file.columns)
    with pytest.raises(DataError, match="no labels"):
        evaluate_units(
            [EvalUnit("u", unlabelled.rows(slice(0, 400)), unlabelled)],
            preset("skab", "pca"),
            rng=rng,
        )
    narrow = LabelledSeries(
        name="n", x=skab_file.x[:, :3], columns=skab_file.columns[:3], y=skab_file.y
    )
    units = [*skab_split([skab_file]), EvalUnit("n", narrow.rows(slice(0, 400)), narrow)]
    with pytest.raises(DataError, match="columns"):
        evaluate_units(units, preset("skab", "pca"), rng=rng)
    with pytest.raises(DataError, match="columns"):
        fit_pipeline([narrow], 8, preset("skab", "pca"), rng=rng)
    with pytest.raises(DetectorError):
        evaluate_units(skab_split([skab_file]), preset("skab", "pca"), rng=0)  # type: ignore[arg-type]


def test_external_training_drops_labelled_attacks(skab_file: LabelledSeries) -> None:
    # fitting on a whole labelled file with benign_only keeps only its benign rows
    pipe = fit_pipeline([skab_file], 8, preset("skab", "pca"), rng=np.random.default_rng(0))
    only = fit_pipeline(
        [skab_file.rows(_label_mask(skab_file, 0))],
        8,
        preset("skab", "pca"),
        rng=np.random.default_rng(0),
    )
    assert pipe.threshold is not None and only.threshold is not None
    assert pipe.threshold != only.threshold  # features stream over the full file vs the subset


def test_presets() -> None:
    assert preset("skab", "pca").features.windows == (10,)
    assert preset("nbaiot", "ae").features.windows == ()
    with pytest.raises(DetectorError):
        preset("csv", "pca")
    with pytest.raises(DetectorError):
        preset("skab", "lstm")
