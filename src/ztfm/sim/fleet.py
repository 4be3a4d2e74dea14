"""Fleets drawn from real data: one simulated device per real device, file or slice.

* SKAB (real signal): one device per experiment file; the device trains on rows 0-399 (the
  anomaly-free start, as the SKAB protocol prescribes) and is scored on every row; the segment is
  the experiment group (valve1 / other).
* lab (real traffic from ``ztfm lab run``; the bundled set by default): one device per lab
  device, segment = device type (sensor, plug, camera, gateway); 1-second traffic windows; the
  device trains on the benign warm-up before the first attack and is scored on every later window.
* TON_IoT (plumbing only): ``virtual_per_type`` devices cut from each device type's series in time
  order; the segment is the device type. Its telemetry carries no attack signal once its leaks are
  removed (see the dataset README), so detection figures on it are not reported as meaningful.

Raw rows are turned into streaming window features on the device, in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.data.bundled import bundled_path
from ztfm.data.series import LabelledSeries
from ztfm.detect.base import BaseDetector, threshold_for_far
from ztfm.detect.evaluate import roc_auc
from ztfm.detect.features import FeatureSpec, WindowFeatures
from ztfm.device.agent import DeviceData
from ztfm.errors import ConfigError, DataError
from ztfm.sim.config import DetectorConfig, FleetConfig

SKAB_TRAIN_ROWS = 400


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    segment: str
    data: DeviceData
    source: str


@dataclass(frozen=True, slots=True)
class Fleet:
    dataset: str
    devices: tuple[DeviceSpec, ...]
    n_features: int
    has_signal: bool

    @property
    def segments(self) -> list[str]:
        return sorted({d.segment for d in self.devices})


def _features(series: LabelledSeries, det: DetectorConfig) -> np.ndarray:
    spec = FeatureSpec(windows=tuple(det.windows), ewma_alphas=tuple(det.ewma_alphas))
    return WindowFeatures(series.x.shape[1], spec).transform(series.x)


def skab_fleet(cfg: FleetConfig, det: DetectorConfig) -> Fleet:
    from ztfm.data.skab import load_skab

    root = Path(cfg.path) if cfg.path else bundled_path("skab")
    series: list[LabelledSeries] = []
    for group in ("valve1", "other"):
        folder = root / group
        if folder.is_dir():
            series += load_skab(folder)
    if not series:
        raise DataError(f"{root}: no SKAB valve1/ or other/ files found")
    series = [s for s in series if s.y is not None and len(s) > SKAB_TRAIN_ROWS]
    if cfg.devices:
        series = series[: cfg.devices]
    devices = []
    for s in series:
        feats = _features(s, det)
        train = feats[:SKAB_TRAIN_ROWS]
        assert s.y is not None
        group = Path(s.name).parent.name or s.segment
        dev_id = f"skab-{group}-{Path(s.name).name.split('.')[0]}"
        devices.append(
            DeviceSpec(dev_id, group, DeviceData(train, train, feats, s.y, s.kinds), s.name)
        )
    return Fleet("skab", tuple(devices), devices[0].data.train.shape[1], True)


def ton_iot_fleet(cfg: FleetConfig, det: DetectorConfig) -> Fleet:
    from ztfm.data.registry import load

    root = Path(cfg.path) if cfg.path else bundled_path("ton_iot")
    series = load(root, "ton_iot")
    devices = []
    for s in series:
        feats = _features(s, det)
        assert s.y is not None
        chunks = np.array_split(np.arange(len(s)), cfg.virtual_per_type)
        for j, idx in enumerate(chunks):
            cut = int(0.6 * len(idx))
            head, tail = idx[:cut], idx[cut:]
            benign = head[s.y[head] == 0]
            if len(benign) < 16 or len(tail) < 16:
                continue
            devices.append(
                DeviceSpec(
                    f"ton-{s.segment}-{j}",
                    s.segment,
                    DeviceData(
                        feats[benign],
                        feats[benign],
                        feats[tail],
                        s.y[tail],
                        None if s.kinds is None else s.kinds[tail],
                    ),
                    s.name,
                )
            )
    # device types have different columns: pad to a common width (zero columns carry nothing)
    widths = {d.data.train.shape[1] for d in devices}
    if len(widths) != 1:
        devices = _pad(devices, max(widths))
    if cfg.devices:
        devices = devices[: cfg.devices]
    if not devices:
        raise DataError(f"{root}: no TON_IoT devices with enough rows")
    return Fleet("ton_iot", tuple(devices), devices[0].data.train.shape[1], False)


def _pad(devices: Sequence[DeviceSpec], width: int) -> list[DeviceSpec]:
    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, width - x.shape[1])))

    out = []
    for d in devices:
        dd = d.data
        out.append(
            DeviceSpec(
                d.device_id,
                d.segment,
                DeviceData(pad(dd.train), pad(dd.calib), pad(dd.test_x), dd.test_y, dd.test_kinds),
                d.source,
            )
        )
    return out


def lab_fleet(cfg: FleetConfig, det: DetectorConfig) -> Fleet:
    """One device per traffic-lab device: its own 1-second traffic windows, segment = its type.
    It trains on the benign warm-up before the run's first attack and is scored on the rest."""
    from ztfm.detect.netwindows import lab_windows

    root = Path(cfg.path) if cfg.path else bundled_path("lab")
    sets, _labels = lab_windows(root)
    devices = []
    for s in sets:
        train = s.x[s.train].astype(np.float32)
        test = ~s.train
        if len(train) < 16 or not test.any():
            continue
        devices.append(
            DeviceSpec(
                f"lab-{s.device}",
                s.type,
                DeviceData(
                    train,
                    train,
                    s.x[test].astype(np.float32),
                    s.y[test].astype(np.int8),
                    np.asarray(s.kind[test], dtype=object),
                ),
                f"{root.name}/{s.device}",
            )
        )
    if cfg.devices:
        devices = devices[: cfg.devices]
    if not devices:
        raise DataError(f"{root}: no lab devices with a benign warm-up and later windows")
    return Fleet("lab", tuple(devices), devices[0].data.train.shape[1], True)


def build_fleet(cfg: FleetConfig, det: DetectorConfig) -> Fleet:
    if cfg.dataset == "skab":
        return skab_fleet(cfg, det)
    if cfg.dataset == "lab":
        return lab_fleet(cfg, det)
    if cfg.dataset == "ton_iot":
        return ton_iot_fleet(cfg, det)
    raise ConfigError(f"unknown fleet dataset {cfg.dataset!r}")


# --- canary split -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CanaryDevice:
    """One device the coordinator holds back from the federation: benign rows to fit its
    local scaler and calibrate on, and held-out labelled rows (benign + attack) never trained on
    by anyone."""

    device_id: str
    calib: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def split_canary(
    fleet: Fleet, n_canary: int, rng: np.random.Generator
) -> tuple[Fleet, tuple[CanaryDevice, ...]]:
    """Hold ``n_canary`` seeded-random devices with both benign and attack rows out of ``fleet``:
    the coordinator's canary set of real telemetry, on which the shared model itself is judged
    (one threshold for all, no per-device recalibration). Returns the smaller fleet and the
    canary devices. SKAB devices are scored on every row, including the rows they trained on:
    a canary device's held-out rows are those after its first ``SKAB_TRAIN_ROWS``."""
    if not isinstance(n_canary, int) or isinstance(n_canary, bool) or n_canary < 1:
        raise ConfigError(f"canary devices must be a positive int, got {n_canary!r}")
    usable = [
        i for i, d in enumerate(fleet.devices) if 0 < int(d.data.test_y.sum()) < len(d.data.test_y)
    ]
    if n_canary > len(usable) or len(fleet.devices) - n_canary < 2:
        raise ConfigError(
            f"cannot hold {n_canary} canary devices out of a fleet of {len(fleet.devices)} "
            f"({len(usable)} with benign and attack rows; 2 must stay in the federation)"
        )
    picked = {usable[int(i)] for i in rng.choice(len(usable), size=n_canary, replace=False)}
    canary = []
    for i in sorted(picked):
        d = fleet.devices[i].data
        start = SKAB_TRAIN_ROWS if fleet.dataset == "skab" else 0
        canary.append(
            CanaryDevice(fleet.devices[i].device_id, d.calib, d.test_x[start:], d.test_y[start:])
        )
    rest = tuple(d for i, d in enumerate(fleet.devices) if i not in picked)
    return Fleet(fleet.dataset, rest, fleet.n_features, fleet.has_signal), tuple(canary)


class CanaryEvaluator:
    """The coordinator's view of a shared model: the model scores every canary device's
    held-out rows (each device keeps its own fixed local scaler, fitted once on its benign rows)
    and ONE threshold decides for all of them. This is what a poisoned shared model damages:
    fleet devices recalibrate their own thresholds every round and hide much of the damage.

    ``threshold(params)`` calibrates that one threshold on the pooled benign calibration rows
    (``target_far`` x ``threshold_margin``, as devices do); ``evaluate(params, threshold)``
    scores the held-out rows with a given threshold (e.g. fixed from a clean model) or, with
    ``None``, with one calibrated for ``params``."""

    def __init__(
        self,
        devices: Sequence[CanaryDevice],
        make_model: Callable[[], BaseDetector],
        *,
        target_far: float,
        threshold_margin: float = 1.0,
        postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if not devices:
            raise ConfigError("a canary evaluator needs at least one canary device")
        self.target_far = float(target_far)
        self.threshold_margin = float(threshold_margin)
        self.postprocess = postprocess
        self._models: list[BaseDetector] = []
        self._calib: list[np.ndarray] = []
        self._test: list[np.ndarray] = []
        for d in devices:
            m = make_model()
            m.fit_scaler(d.calib)
            self._models.append(m)
            self._calib.append(m.scale(d.calib))
            self._test.append(m.scale(d.test_x))
        self.test_y = np.concatenate([np.asarray(d.test_y, np.int8) for d in devices])
        if self.test_y.all() or not self.test_y.any():
            raise DataError("canary held-out rows need both benign and attack rows")

    def _pooled(self, params: Sequence[np.ndarray], rows: list[np.ndarray]) -> np.ndarray:
        out = []
        for m, xs in zip(self._models, rows, strict=True):
            m.set_params(params)
            s = m.score_scaled(xs)
            out.append(s if self.postprocess is None else self.postprocess(s))
        return np.concatenate(out).astype(np.float64)

    def threshold(self, params: Sequence[np.ndarray]) -> float:
        benign = self._pooled(params, self._calib)
        return threshold_for_far(benign, self.target_far) * self.threshold_margin

    def evaluate(
        self, params: Sequence[np.ndarray], threshold: float | None = None
    ) -> dict[str, Any]:
        """ROC-AUC of the pooled held-out scores (threshold-free) and F1 / FAR / recall at one
        threshold for every canary device."""
        t = self.threshold(params) if threshold is None else float(threshold)
        if not np.isfinite(t):
            raise DataError(f"canary threshold must be finite, got {threshold!r}")
        s = self._pooled(params, self._test)
        if not np.isfinite(s).all():
            return {"roc_auc": 0.5, "f1": 0.0, "far": 1.0, "recall": 0.0, "threshold": t}
        pred = s > t
        y = self.test_y.astype(bool)
        tp = int((pred & y).sum())
        fp = int((pred & ~y).sum())
        fn = int((~pred & y).sum())
        tn = int((~pred & ~y).sum())
        auc = roc_auc(s, y)
        return {
            "roc_auc": float(auc) if auc is not None else 0.5,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "far": fp / (fp + tn) if fp + tn else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "threshold": t,
        }
