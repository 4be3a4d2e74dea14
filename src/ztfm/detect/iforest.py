"""IsolationForest (scikit-learn) as a baseline detector.

It has no aggregatable parameters (``get_params`` returns an empty list): trees cannot be
averaged, so it never joins federated rounds; ``train_epochs`` refits from scratch. It is not
exportable either (scikit-learn models only serialise through pickle, which ztfm refuses).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ztfm.detect.base import BaseDetector
from ztfm.errors import DetectorError


class IForest(BaseDetector):
    name: ClassVar[str] = "iforest"
    min_train_rows: ClassVar[int] = 2

    def __init__(self, n_features: int, *, n_estimators: int = 100, max_samples: int = 256) -> None:
        super().__init__(n_features)
        for label, val in (("n_estimators", n_estimators), ("max_samples", max_samples)):
            if not isinstance(val, int) or isinstance(val, bool) or not 1 <= val <= 100_000:
                raise DetectorError(f"{label} must be an int in [1, 100000], got {val!r}")
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self._model: Any = None

    def hparams(self) -> dict[str, Any]:
        return {"n_estimators": self.n_estimators, "max_samples": self.max_samples}

    def param_shapes(self) -> list[tuple[int, ...]]:
        return []

    def get_params(self) -> list[np.ndarray]:
        return []

    def _set_params_checked(self, params: list[np.ndarray]) -> None:
        if self._model is None:
            raise DetectorError("iforest has no aggregatable parameters; train it locally")

    def _train(
        self,
        xs: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float,
        anchor: list[np.ndarray] | None,
    ) -> float:
        from sklearn.ensemble import IsolationForest

        model = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, xs.shape[0]),
            random_state=int(rng.integers(0, 2**31 - 1)),
        )
        model.fit(xs)
        self._model = model
        return float(self._score_scaled(xs).mean())

    def _score_scaled(self, xs: np.ndarray) -> np.ndarray:
        return np.asarray(-self._model.score_samples(xs), dtype=np.float32)

    def size_bytes(self) -> int:
        if self._model is None:
            return 0
        nodes = sum(int(t.tree_.node_count) for t in self._model.estimators_)
        return nodes * (4 + 4 + 4 + 4 + 4)  # feature, threshold, left, right, path length

    def to_bytes(self) -> bytes:
        raise DetectorError("iforest is a local baseline and cannot be exported (no pickle)")
