"""Regression guards for the SKAB figures in docs/detect.md (valve1 + other, 30 files, "all")."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.data.bundled import bundled_path
from ztfm.data.registry import load, standard_split
from ztfm.data.series import EvalUnit
from ztfm.detect.evaluate import evaluate_units
from ztfm.detect.presets import preset


@pytest.fixture(scope="module")
def units() -> list[EvalUnit]:
    series = load(bundled_path("skab/valve1"), "skab") + load(bundled_path("skab/other"), "skab")
    out = standard_split("skab", series)
    assert len(out) == 30 and sum(len(u.test) for u in out) == 33_089
    return out


def test_pca_preset_beats_conv_ae_on_f1_and_far(units: list[EvalUnit]) -> None:
    res = evaluate_units(units, preset("skab", "pca"), rng=np.random.default_rng(0))
    c = res.confusion
    assert c.f1 is not None and c.far is not None
    assert c.f1 >= 0.80 and c.far <= 0.136  # Conv-AE: F1 0.78 at FAR 13.6%
    assert c.f1 > c.flag_everything().f1  # type: ignore[operator]


@pytest.mark.slow
def test_ae_preset_near_target(units: list[EvalUnit]) -> None:
    res = evaluate_units(units, preset("skab", "ae"), rng=np.random.default_rng(1))
    c = res.confusion
    assert c.f1 is not None and c.far is not None
    assert c.f1 >= 0.79 and c.far <= 0.136
