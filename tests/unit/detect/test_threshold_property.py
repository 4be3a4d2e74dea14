"""Invariants of threshold calibration and pooled confusion counts (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ztfm.detect.base import threshold_for_far
from ztfm.detect.evaluate import Confusion
from ztfm.errors import DetectorError

scores = arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e6, 1e6, width=32))


@settings(max_examples=80, deadline=None)
@given(s=scores, far=st.floats(0.0, 0.99))
def test_threshold_meets_far_and_is_tight(s: np.ndarray, far: float) -> None:
    t = threshold_for_far(s, far)
    assert (s > t).mean() <= far
    assert t in s  # the threshold is one of the calibration scores
    # tight: any lower calibration score would let more than the budget through (ties aside)
    lower = s[s < t]
    if lower.size:
        assert (s > lower.max()).sum() > int(np.floor(far * s.size))


@pytest.mark.parametrize("far", [-0.1, 1.0, 2.0, float("nan"), 1])
def test_threshold_rejects_bad_far(far: float) -> None:
    with pytest.raises(DetectorError):
        threshold_for_far(np.ones(3, np.float32), far)


def test_threshold_rejects_no_rows() -> None:
    with pytest.raises(DetectorError):
        threshold_for_far(np.zeros(0, np.float32), 0.1)


@settings(max_examples=60, deadline=None)
@given(
    y=arrays(np.int8, st.integers(0, 200), elements=st.integers(0, 1)),
    data=st.data(),
)
def test_confusion_pools_additively(y: np.ndarray, data: st.DataObject) -> None:
    p = data.draw(arrays(np.int8, y.shape, elements=st.integers(0, 1)))
    cut = data.draw(st.integers(0, y.size))
    whole = Confusion.of(y, p)
    assert whole == Confusion.of(y[:cut], p[:cut]) + Confusion.of(y[cut:], p[cut:])
    assert whole.tp + whole.fp + whole.fn + whole.tn == y.size
    pr, rc = whole.precision, whole.recall
    if whole.f1 is not None and pr is not None and rc is not None and pr + rc > 0:
        assert whole.f1 == pytest.approx(2 * pr * rc / (pr + rc))
