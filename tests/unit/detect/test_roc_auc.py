"""``detect.evaluate.roc_auc``: the one rank ROC-AUC (the privacy attacks use it too)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ztfm.detect.evaluate import roc_auc
from ztfm.errors import DataError
from ztfm.sim import privacy_attacks


def test_reference_values_and_ties() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), y) == 0.75
    assert roc_auc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5  # ties count one half
    assert roc_auc(np.array([0.0, 0.1, 0.2, 0.3]), y) == 1.0
    assert roc_auc(np.array([0.3, 0.2, 0.1, 0.0]), y) == 0.0


def test_matches_sklearn_with_many_ties(rng: np.random.Generator) -> None:
    for _ in range(20):
        y = rng.integers(0, 2, size=200)
        scores = rng.integers(0, 7, size=200).astype(np.float64)  # heavy ties
        assert roc_auc(scores, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_one_class_is_undefined_and_bad_scores_refused() -> None:
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None
    for scores, labels in (
        (np.zeros(3), np.array([1, 0])),
        (np.array([0.0, np.inf]), np.array([1, 0])),
        (np.zeros((2, 2)), np.zeros((2, 2))),
    ):
        with pytest.raises(DataError, match="finite 1-D"):
            roc_auc(scores, labels)


def test_privacy_attacks_use_this_one() -> None:
    assert privacy_attacks.roc_auc is roc_auc
