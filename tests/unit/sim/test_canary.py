"""The coordinator's canary set: devices held out of the federation (split_canary) on which the
shared model is judged with ONE threshold for all of them (CanaryEvaluator)."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.detect import make_detector
from ztfm.detect.base import BaseDetector, threshold_for_far
from ztfm.detect.evaluate import roc_auc
from ztfm.device.agent import DeviceData
from ztfm.errors import ConfigError, DataError
from ztfm.sim.fleet import (
    SKAB_TRAIN_ROWS,
    CanaryDevice,
    CanaryEvaluator,
    DeviceSpec,
    Fleet,
    split_canary,
)

NF = 6


def _device(i: int, rng: np.random.Generator, attacks: int = 40) -> DeviceSpec:
    train = rng.normal(size=(200, NF)).astype(np.float32)
    benign = rng.normal(size=(160, NF))
    bad = rng.normal(size=(attacks, NF)) + 4.0
    x = np.concatenate([benign, bad]).astype(np.float32)
    y = np.r_[np.zeros(160), np.ones(attacks)].astype(np.int8)
    return DeviceSpec(f"d{i}", "s", DeviceData(train, train, x, y), f"src{i}")


def _fleet(n: int = 8, dataset: str = "lab") -> Fleet:
    rng = np.random.default_rng(0)
    return Fleet(dataset, tuple(_device(i, rng) for i in range(n)), NF, True)


def _model() -> BaseDetector:
    return make_detector("ae", NF, hidden=(4, 2), lr=0.01, batch_size=32)


def _trained(canary: tuple[CanaryDevice, ...]) -> list[np.ndarray]:
    m = _model()
    m.fit_scaler(canary[0].calib)
    m.train_epochs(canary[0].calib, epochs=10, rng=np.random.default_rng(1))
    return m.get_params()


def test_split_holds_devices_out_deterministically() -> None:
    fleet = _fleet()
    rest, canary = split_canary(fleet, 3, np.random.default_rng(5))
    rest2, canary2 = split_canary(fleet, 3, np.random.default_rng(5))
    assert [c.device_id for c in canary] == [c.device_id for c in canary2]
    assert len(rest.devices) == 5 and len(canary) == 3
    held = {c.device_id for c in canary}
    assert held.isdisjoint(d.device_id for d in rest.devices)
    assert held | {d.device_id for d in rest.devices} == {d.device_id for d in fleet.devices}
    assert rest.n_features == NF and rest.dataset == "lab" and rest2 == rest


def test_split_skab_drops_the_rows_the_device_would_train_on() -> None:
    rng = np.random.default_rng(0)
    devs = []
    for i in range(4):
        feats = rng.normal(size=(SKAB_TRAIN_ROWS + 50, NF)).astype(np.float32)
        y = np.r_[np.zeros(SKAB_TRAIN_ROWS + 20), np.ones(30)].astype(np.int8)
        train = feats[:SKAB_TRAIN_ROWS]
        devs.append(DeviceSpec(f"s{i}", "v", DeviceData(train, train, feats, y), "f"))
    _, canary = split_canary(Fleet("skab", tuple(devs), NF, True), 1, rng)
    assert len(canary[0].test_x) == 50 and int(canary[0].test_y.sum()) == 30


def test_split_skips_devices_without_both_classes() -> None:
    rng = np.random.default_rng(0)
    devs = [_device(i, rng, attacks=0) for i in range(5)] + [_device(9, rng)]
    fleet = Fleet("lab", tuple(devs), NF, True)
    _, canary = split_canary(fleet, 1, np.random.default_rng(3))
    assert canary[0].device_id == "d9"
    with pytest.raises(ConfigError, match="1 with benign and attack rows"):
        split_canary(fleet, 2, np.random.default_rng(3))


@pytest.mark.parametrize("n", [0, -1, True, 2.0, 7, 8])
def test_split_refuses_bad_counts(n: object) -> None:
    with pytest.raises(ConfigError):
        split_canary(_fleet(8), n, np.random.default_rng(0))  # type: ignore[arg-type]


def test_evaluator_matches_a_manual_computation() -> None:
    _, canary = split_canary(_fleet(), 2, np.random.default_rng(0))
    params = _trained(canary)
    ev = CanaryEvaluator(canary, _model, target_far=0.05, threshold_margin=1.0)
    calib, test = [], []
    for c in canary:
        m = _model()
        m.fit_scaler(c.calib)
        m.set_params(params)
        calib.append(m.score(c.calib))
        test.append(m.score(c.test_x))
    t = threshold_for_far(np.concatenate(calib), 0.05)
    s = np.concatenate(test)
    y = np.concatenate([c.test_y for c in canary]).astype(bool)
    assert ev.threshold(params) == pytest.approx(t)
    out = ev.evaluate(params)
    tp, fp = int((s > t)[y].sum()), int((s > t)[~y].sum())
    fn = int(y.sum()) - tp
    assert out["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["far"] == pytest.approx(fp / int((~y).sum()))
    assert out["roc_auc"] == pytest.approx(roc_auc(s, y))
    assert out["roc_auc"] > 0.95 and out["recall"] > 0.9


def test_fixed_threshold_sees_a_damaged_model() -> None:
    _, canary = split_canary(_fleet(), 2, np.random.default_rng(0))
    clean = _trained(canary)
    ev = CanaryEvaluator(canary, _model, target_far=0.02)
    t = ev.threshold(clean)
    damaged = [p * 3.0 for p in clean]
    before, after = ev.evaluate(clean, t), ev.evaluate(damaged, t)
    assert before["far"] <= 0.1
    assert after["far"] > 0.5  # benign telemetry now alarms at the operator's threshold
    assert after["f1"] < before["f1"] - 0.2


def test_evaluator_refuses_bad_input() -> None:
    _, canary = split_canary(_fleet(), 2, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        CanaryEvaluator((), _model, target_far=0.01)
    benign_only = tuple(
        CanaryDevice(c.device_id, c.calib, c.test_x[c.test_y == 0], c.test_y[c.test_y == 0])
        for c in canary
    )
    with pytest.raises(DataError, match="both benign and attack"):
        CanaryEvaluator(benign_only, _model, target_far=0.01)
    ev = CanaryEvaluator(canary, _model, target_far=0.01)
    with pytest.raises(DataError, match="finite"):
        ev.evaluate(_trained(canary), float("nan"))
