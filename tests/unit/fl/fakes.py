"""A tiny numpy model implementing the device's LocalModel protocol, for unit tests of FL logic.

Params are [centre (d,), log_scale (1,)]; training moves the centre towards the data mean by
gradient steps; the score is the distance to the centre. The integration tests use the real
detectors from ztfm.detect.
"""

from __future__ import annotations

import numpy as np


class MeanModel:
    def __init__(self, d: int, lr: float = 0.5) -> None:
        self.params = [np.zeros(d, np.float32), np.zeros(1, np.float32)]
        self.lr = lr
        self.threshold = 0.0

    def fit_scaler(self, x_benign: np.ndarray) -> None:
        pass

    def train_epochs(
        self,
        x: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float = 0.0,
        anchor: list[np.ndarray] | None = None,
    ) -> float:
        c = self.params[0].astype(np.float64)
        for _ in range(epochs):
            batch = x[rng.permutation(len(x))[: max(1, len(x) // 2)]]
            grad = c - batch.mean(axis=0)
            if anchor is not None and prox_mu > 0:
                grad += prox_mu * (c - anchor[0])
            c -= self.lr * grad
        self.params = [c.astype(np.float32), self.params[1]]
        return float(((x - c) ** 2).sum(axis=1).mean())

    def get_params(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params]

    def set_params(self, params: list[np.ndarray]) -> None:
        self.params = [p.copy() for p in params]

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.linalg.norm(x - self.params[0], axis=1).astype(np.float32)

    def calibrate(self, x_benign: np.ndarray, target_far: float) -> float:
        self.threshold = float(np.quantile(self.score(x_benign), 1 - target_far))
        return self.threshold
