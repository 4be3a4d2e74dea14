"""Tuned pipeline settings per kind of data (see docs/detect.md for how each was chosen).

Sensor telemetry (SKAB, TON_IoT) gets causal window features and score smoothing; network
formats (N-BaIoT, IoT-23, MQTTset, pcap) already arrive as window statistics (or packet features
with their own damped windows), so they are used as they are.
"""

from __future__ import annotations

from ztfm.detect.features import FeatureSpec
from ztfm.detect.stream import PipelineConfig
from ztfm.errors import DetectorError

SENSOR_FORMATS = frozenset({"skab", "ton_iot"})
NETWORK_FORMATS = frozenset({"nbaiot", "iot23", "mqttset", "pcap", "lab"})

SENSOR_FEATURES = FeatureSpec(windows=(10,), ewma_alphas=(), raw=True, delta=True)
NETWORK_FEATURES = FeatureSpec(windows=(), ewma_alphas=(), raw=True, delta=False)

# (smooth, threshold_margin, hparams) per detector for sensor telemetry. Chosen on SKAB
# valve1 + other (see docs/detect.md: cross-part check and the figures it gives).
_SENSOR: dict[str, tuple[int, float, tuple[tuple[str, object], ...]]] = {
    "pca": (10, 4.0, (("var_frac", 0.999),)),
    "ae": (10, 7.0, (("hidden", (32, 16)),)),
    "iforest": (10, 1.0, ()),
}


def preset(fmt: str, detector: str) -> PipelineConfig:
    """The pipeline settings for ``detector`` on data of format ``fmt``."""
    if fmt in SENSOR_FORMATS:
        if detector not in _SENSOR:
            raise DetectorError(f"no sensor preset for detector {detector!r}")
        smooth, margin, hp = _SENSOR[detector]
        return PipelineConfig(
            detector=detector,
            features=SENSOR_FEATURES,
            smooth=smooth,
            target_far=0.01,
            threshold_margin=margin,
            hparams=hp,
        )
    if fmt in NETWORK_FORMATS:
        net_hp: tuple[tuple[str, object], ...] = (("var_frac", 0.99),) if detector == "pca" else ()
        return PipelineConfig(
            detector=detector, features=NETWORK_FEATURES, smooth=1, target_far=0.01, hparams=net_hp
        )
    raise DetectorError(f"no preset for data format {fmt!r}")
