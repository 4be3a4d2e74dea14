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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ztfm.data.bundled import bundled_path
from ztfm.data.series import LabelledSeries
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
