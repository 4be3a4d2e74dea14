"""Adapter from an ``Aggregator`` to the ``combine(deltas, weights) -> delta`` hook of
``ztfm.fl.strategy.FedAvg`` (kept here so ``fl`` need not know the robust rules)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ztfm.robust.base import Aggregate, Aggregator


@dataclass(slots=True)
class RobustCombine:
    """Callable ``(deltas (n, d), weights (n,)) -> (d,)`` that runs ``aggregator`` and keeps the
    last ``Aggregate`` (selected rows, scores, distances) in ``last`` for the trust manager.
    ``use_weights=False`` ignores the caller's weights (sample counts a device can lie about)."""

    aggregator: Aggregator
    use_weights: bool = True
    last: Aggregate | None = field(default=None, init=False)

    def __call__(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        result = self.aggregator.aggregate(deltas, weights if self.use_weights else None)
        self.last = result
        return np.asarray(result.vector, dtype=np.float64)
