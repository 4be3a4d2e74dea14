"""Streaming window features for sensor telemetry, computed strictly in arrival order.

One ``WindowFeatures`` object serves a live stream (``update(row)``, one row at a time) and a
replayed file (``transform(matrix)``, vectorised). Both give the same numbers (float64 inside,
float32 out; tests check agreement to float32 rounding): each output row depends only on the
current and earlier input rows, so a replayed file scores exactly as it would have live.

Per input column the features are, in this order:
  raw value, delta to the previous row (0 on the first row),
  for each window length w: rolling mean, std (population), min, max over the last w rows
  (fewer at the start of the stream),
  for each EWMA factor a: the value minus its exponentially weighted mean
  (``e_t = a*x_t + (1-a)*e_{t-1}``, ``e_0 = x_0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import lfilter

from ztfm.errors import DetectorError

MAX_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which window features to compute. Validated on construction."""

    windows: tuple[int, ...] = (5, 20, 60)
    ewma_alphas: tuple[float, ...] = (0.1,)
    raw: bool = True
    delta: bool = True

    def __post_init__(self) -> None:
        if len(set(self.windows)) != len(self.windows):
            raise DetectorError("feature windows must be distinct")
        for w in self.windows:
            if not isinstance(w, int) or not 2 <= w <= MAX_WINDOW:
                raise DetectorError(f"window length must be an int in [2, {MAX_WINDOW}], got {w!r}")
        for a in self.ewma_alphas:
            if not isinstance(a, float) or not 0.0 < a < 1.0:
                raise DetectorError(f"EWMA factor must be a float in (0, 1), got {a!r}")
        if not (self.raw or self.delta or self.windows or self.ewma_alphas):
            raise DetectorError("feature spec selects no features")

    @property
    def per_column(self) -> int:
        return int(self.raw) + int(self.delta) + 4 * len(self.windows) + len(self.ewma_alphas)

    def names(self, columns: Sequence[str]) -> list[str]:
        out: list[str] = []
        for c in columns:
            if self.raw:
                out.append(c)
            if self.delta:
                out.append(f"{c}.delta")
            for w in self.windows:
                out += [f"{c}.mean{w}", f"{c}.std{w}", f"{c}.min{w}", f"{c}.max{w}"]
            for a in self.ewma_alphas:
                out.append(f"{c}.ewmdev{a:g}")
        return out


class WindowFeatures:
    """Causal rolling features over ``n_inputs`` columns; keeps the stream state for ``update``."""

    def __init__(self, n_inputs: int, spec: FeatureSpec | None = None) -> None:
        if not isinstance(n_inputs, int) or n_inputs < 1:
            raise DetectorError(f"n_inputs must be a positive int, got {n_inputs!r}")
        self.n_inputs = n_inputs
        self.spec = spec if spec is not None else FeatureSpec()
        self.n_outputs = n_inputs * self.spec.per_column
        self._wmax = max(self.spec.windows, default=1)
        self.reset()

    def reset(self) -> None:
        """Forget the stream (start of a new file or a restart)."""
        self._buf = np.zeros((self._wmax, self.n_inputs), dtype=np.float64)
        self._seen = 0
        self._prev = np.zeros(self.n_inputs, dtype=np.float64)
        self._ewma = np.zeros((len(self.spec.ewma_alphas), self.n_inputs), dtype=np.float64)

    def _check(self, x: np.ndarray, ndim: int) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim != ndim or arr.shape[-1] != self.n_inputs:
            raise DetectorError(
                f"expected {'a row' if ndim == 1 else 'a matrix'} of "
                f"{self.n_inputs} values, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise DetectorError(f"telemetry must be real numbers, got dtype {arr.dtype}")
        out = arr.astype(np.float64)
        if not np.isfinite(out).all():
            raise DetectorError("telemetry contains NaN or infinite values")
        return out

    def update(self, row: np.ndarray) -> np.ndarray:
        """Consume one row (arrival order) and return its feature vector (float32)."""
        x = self._check(row, 1)
        buf = self._buf
        buf[:-1] = buf[1:]
        buf[-1] = x
        self._seen += 1
        first = self._seen == 1
        parts: list[np.ndarray] = []
        sp = self.spec
        if sp.raw:
            parts.append(x)
        if sp.delta:
            parts.append(np.zeros_like(x) if first else x - self._prev)
        for w in sp.windows:
            win = buf[-min(w, self._seen) :]
            m = win.mean(axis=0)
            var = np.maximum(((win - m) ** 2).mean(axis=0), 0.0)
            parts += [m, np.sqrt(var), win.min(axis=0), win.max(axis=0)]
        for i, a in enumerate(sp.ewma_alphas):
            self._ewma[i] = x if first else a * x + (1.0 - a) * self._ewma[i]
            parts.append(x - self._ewma[i])
        self._prev = x
        return _interleave(parts, self.n_inputs).astype(np.float32)

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """Features of a whole stream from its start (float32, one row per input row).

        Equal to ``reset()`` then ``update`` on each row (and leaves the object reset-free: it
        does not touch the live stream state).
        """
        x = self._check(matrix, 2)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.n_outputs), dtype=np.float32)
        parts: list[np.ndarray] = []
        sp = self.spec
        if sp.raw:
            parts.append(x)
        if sp.delta:
            d = np.zeros_like(x)
            d[1:] = x[1:] - x[:-1]
            parts.append(d)
        if sp.windows:
            xs = x - x[0]  # shift for a well-conditioned variance
            s1 = np.vstack([np.zeros((1, self.n_inputs)), np.cumsum(xs, axis=0)])
            s2 = np.vstack([np.zeros((1, self.n_inputs)), np.cumsum(xs * xs, axis=0)])
            idx = np.arange(1, n + 1)
            for w in sp.windows:
                lo = np.maximum(idx - w, 0)
                cnt = (idx - lo).astype(np.float64)[:, None]
                m = (s1[idx] - s1[lo]) / cnt
                var = np.maximum((s2[idx] - s2[lo]) / cnt - m * m, 0.0)
                origin = (w - 1) // 2
                mn = minimum_filter1d(x, size=w, axis=0, mode="nearest", origin=origin)
                mx = maximum_filter1d(x, size=w, axis=0, mode="nearest", origin=origin)
                parts += [m + x[0], np.sqrt(var), mn, mx]
        for a in sp.ewma_alphas:
            # e_t = a x_t + (1-a) e_{t-1} with e_0 = x_0, i.e. zero-state filter on x - x_0
            e = lfilter([a], [1.0, -(1.0 - a)], x - x[0], axis=0) + x[0]
            e[0] = x[0]
            parts.append(x - e)
        return _interleave(parts, self.n_inputs).astype(np.float32)


def _interleave(parts: list[np.ndarray], n_inputs: int) -> np.ndarray:
    """Stack per-kind blocks so that all features of one input column are adjacent."""
    stacked = np.stack(parts, axis=-1)  # (..., n_inputs, kinds)
    return stacked.reshape(*stacked.shape[:-2], n_inputs * len(parts))
