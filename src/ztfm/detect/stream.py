"""The on-device streaming pipeline: raw telemetry row -> window features -> detector score ->
causal score smoothing -> alarm.

``StreamingDetector`` is what a device runs on a live stream (``update(row)``) and what the
evaluator runs on a replayed file (``score_stream(matrix)``); both give the same scores. The
smoother averages the detector score over the last ``smooth`` rows (only past rows): attacks and
faults are collective events lasting many seconds, while a lone noisy row should not alarm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ztfm.detect.base import DEFAULT_TARGET_FAR, BaseDetector, check_rng, threshold_for_far
from ztfm.detect.features import FeatureSpec, WindowFeatures
from ztfm.errors import DetectorError

if TYPE_CHECKING:
    from ztfm.detect.quant import QuantizedAutoencoder

MAX_SMOOTH = 10_000


class ScoreSmoother:
    """Causal moving average of the last ``window`` scores (fewer at the start of the stream)."""

    def __init__(self, window: int) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= MAX_SMOOTH:
            raise DetectorError(f"smoothing window must be an int in [1, {MAX_SMOOTH}]")
        self.window = window
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(self.window, dtype=np.float64)
        self._seen = 0

    def update(self, score: float) -> float:
        self._buf[self._seen % self.window] = score
        self._seen += 1
        n = min(self._seen, self.window)
        return float(np.float32(self._buf[:n].sum() / n))

    def transform(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1:
            raise DetectorError("scores must be a 1-d array")
        if self.window == 1:
            return s.astype(np.float32)
        c = np.concatenate([[0.0], np.cumsum(s)])
        idx = np.arange(1, s.size + 1)
        lo = np.maximum(idx - self.window, 0)
        out: np.ndarray = ((c[idx] - c[lo]) / (idx - lo)).astype(np.float32)
        return out


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """How a device turns raw telemetry into alarms. Validated on construction."""

    detector: str = "ae"
    features: FeatureSpec = field(default_factory=FeatureSpec)
    smooth: int = 1
    target_far: float = DEFAULT_TARGET_FAR
    threshold_margin: float = 1.0  # threshold = margin * calibrated quantile
    int8: bool = False  # score with the int8 autoencoder (calibrated on the training rows)
    hparams: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.smooth, int) or not 1 <= self.smooth <= MAX_SMOOTH:
            raise DetectorError(f"smooth must be an int in [1, {MAX_SMOOTH}]")
        if not isinstance(self.target_far, float) or not 0.0 <= self.target_far < 1.0:
            raise DetectorError("target_far must be a float in [0, 1)")
        if self.int8 and self.detector != "ae":
            raise DetectorError("int8 inference exists for the autoencoder only")
        if not np.isfinite(self.threshold_margin) or self.threshold_margin <= 0:
            raise DetectorError("threshold_margin must be a positive finite number")

    def with_(self, **changes: Any) -> PipelineConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


class StreamingDetector:
    """Window features + a detector + score smoothing + threshold, over raw telemetry rows."""

    def __init__(self, n_inputs: int, config: PipelineConfig | None = None) -> None:
        from ztfm.detect import make_detector

        self.config = config if config is not None else PipelineConfig()
        self.features = WindowFeatures(n_inputs, self.config.features)
        self.detector: BaseDetector = make_detector(
            self.config.detector, self.features.n_outputs, **dict(self.config.hparams)
        )
        self.smoother = ScoreSmoother(self.config.smooth)
        self.quantized: QuantizedAutoencoder | None = None
        self.threshold: float | None = None
        self.n_inputs = n_inputs

    def fit(self, x_benign: np.ndarray, *, rng: np.random.Generator) -> float:
        """Fit on a benign stream (in arrival order) and calibrate the smoothed threshold."""
        check_rng(rng)
        f = self.features.transform(x_benign)
        self.fit_features(f, rng=rng)
        return self.calibrate(x_benign)

    def fit_features(self, feats: np.ndarray, *, rng: np.random.Generator) -> None:
        """Fit the detector on benign feature rows (and quantise it when configured)."""
        self.detector.fit(feats, rng=rng)
        self.quantized = None
        if self.config.int8:
            from ztfm.detect.autoencoder import Autoencoder
            from ztfm.detect.quant import QuantizedAutoencoder

            assert isinstance(self.detector, Autoencoder)
            self.quantized = QuantizedAutoencoder.from_float(self.detector, feats)

    def score_features(self, feats: np.ndarray) -> np.ndarray:
        """Unsmoothed detector scores of feature rows (int8 path when configured)."""
        if self.quantized is not None:
            return self.quantized.score(feats)
        return self.detector.score(feats)

    def calibrate(self, x_benign: np.ndarray, target_far: float | None = None) -> float:
        far = self.config.target_far if target_far is None else float(target_far)
        s = self.score_stream(x_benign)
        self.threshold = threshold_for_far(s, far) * self.config.threshold_margin
        return self.threshold

    def score_stream(self, x: np.ndarray) -> np.ndarray:
        """Smoothed scores of a whole stream replayed from its start (float32)."""
        f = self.features.transform(x)
        return self.smoother.transform(self.score_features(f))

    def predict_stream(self, x: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise DetectorError("pipeline has no threshold (call fit or calibrate)")
        return (self.score_stream(x) > self.threshold).astype(np.int8)

    def reset(self) -> None:
        """Start a new live stream."""
        self.features.reset()
        self.smoother.reset()

    def update(self, row: np.ndarray) -> tuple[float, bool]:
        """One live row -> (smoothed score, alarm)."""
        if self.threshold is None:
            raise DetectorError("pipeline has no threshold (call fit or calibrate)")
        f = self.features.update(row)
        s = self.smoother.update(float(self.score_features(f[None, :])[0]))
        return s, s > self.threshold


def default_config(detector: str, *, smooth: int | None = None) -> PipelineConfig:
    """The tuned defaults for a detector family (see docs/detect.md for how they were chosen)."""
    return PipelineConfig(detector=detector, smooth=1 if smooth is None else smooth)


__all__: Sequence[str] = [
    "PipelineConfig",
    "ScoreSmoother",
    "StreamingDetector",
    "default_config",
]
