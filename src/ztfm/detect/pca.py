"""PCA T2+Q detector (Hotelling's T-squared inside the principal subspace + Q, the squared
prediction error outside it), the classic multivariate statistical process control pair.

The aggregatable parameter is the second-moment matrix of the scaled benign features (d x d).
Averaging it across devices is exactly federated PCA (the pooled covariance of the devices'
data), so PCA joins the same FedAvg rounds as the autoencoder. The principal subspace is derived
from it locally: the smallest k components that explain ``var_frac`` of the variance.

Score = T2 / k + Q / E[Q]: each term has expectation about 1 on benign data, so neither
dominates; E[Q] is the sum of the residual eigenvalues.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ztfm.detect.base import BaseDetector
from ztfm.errors import DetectorError

EIG_FLOOR = 1e-6
MAX_PCA_FEATURES = 4096  # the parameter is d x d


class PcaT2Q(BaseDetector):
    name: ClassVar[str] = "pca"
    min_train_rows: ClassVar[int] = 2

    def __init__(
        self, n_features: int, *, var_frac: float = 0.95, max_components: int | None = None
    ) -> None:
        if isinstance(n_features, int) and n_features > MAX_PCA_FEATURES:
            raise DetectorError(f"pca supports at most {MAX_PCA_FEATURES} features")
        super().__init__(n_features)
        if not isinstance(var_frac, float) or not 0.0 < var_frac < 1.0:
            raise DetectorError(f"var_frac must be a float in (0, 1), got {var_frac!r}")
        if max_components is not None and (
            not isinstance(max_components, int) or not 1 <= max_components <= n_features
        ):
            raise DetectorError(f"max_components must be in [1, {n_features}]")
        self.var_frac = var_frac
        self.max_components = max_components
        self._set_params_checked([np.eye(n_features, dtype=np.float32)])

    def hparams(self) -> dict[str, Any]:
        return {"var_frac": self.var_frac, "max_components": self.max_components}

    def param_shapes(self) -> list[tuple[int, ...]]:
        return [(self.n_features, self.n_features)]

    def get_params(self) -> list[np.ndarray]:
        return [self._cov.copy()]

    def _set_params_checked(self, params: list[np.ndarray]) -> None:
        raw = params[0].astype(np.float64)
        cov = 0.5 * (raw + raw.T)
        # A federated covariance may be slightly off: DP noise breaks symmetry, a coordinate-wise
        # robust rule (median, trimmed mean) can leave small negative eigenvalues. Those are
        # projected to the nearest symmetric PSD matrix (post-processing: no privacy cost); a
        # matrix that is not close to a covariance at all is refused.
        if np.linalg.norm(raw - cov) > 0.5 * max(float(np.linalg.norm(cov)), EIG_FLOOR):
            raise DetectorError("PCA parameter must be a (nearly) symmetric matrix")
        vals, vecs = np.linalg.eigh(cov)
        neg, pos = float(-vals[vals < 0].sum()), float(vals[vals > 0].sum())
        if pos <= 0 or neg > 0.5 * pos:
            raise DetectorError("PCA parameter is not positive semi-definite")
        projected = neg > 0 or not np.array_equal(raw, raw.T)
        if projected:
            psd = (vecs * np.maximum(vals, 0.0)) @ vecs.T
            stored = (0.5 * (psd + psd.T)).astype(params[0].dtype)
        order = np.argsort(vals)[::-1]
        vals = np.maximum(vals[order], EIG_FLOOR)
        vecs = vecs[:, order]
        frac = np.cumsum(vals) / vals.sum()
        k = int(np.searchsorted(frac, self.var_frac) + 1)
        k = min(k, self.max_components or self.n_features, self.n_features)
        if k == self.n_features and self.n_features > 1:
            k -= 1  # keep a residual space, otherwise Q is always 0
        self._cov = stored if projected else params[0].copy()
        self.k = k
        self._proj = (vecs[:, :k] / np.sqrt(vals[:k])).astype(np.float32)  # whitened loadings
        self._basis = vecs[:, :k].astype(np.float32)
        resid = vals[k:].sum() if k < self.n_features else 1.0
        self._q_norm = np.float32(max(float(resid), EIG_FLOOR))

    def _train(
        self,
        xs: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float,
        anchor: list[np.ndarray] | None,
    ) -> float:
        x64 = xs.astype(np.float64)
        cov = x64.T @ x64 / x64.shape[0]
        if anchor is not None and prox_mu > 0:
            # the minimiser of ||C - C_local||^2 + mu/2 ||C - anchor||^2 (per entry)
            cov = (cov + 0.5 * prox_mu * anchor[0]) / (1.0 + 0.5 * prox_mu)
        self._set_params_checked([cov.astype(np.float32)])
        return float(self._score_scaled(xs).mean())

    def _score_scaled(self, xs: np.ndarray) -> np.ndarray:
        t = xs @ self._proj
        t2 = np.einsum("ij,ij->i", t, t)
        resid = xs - (xs @ self._basis) @ self._basis.T
        q = np.einsum("ij,ij->i", resid, resid)
        out: np.ndarray = t2 / np.float32(self.k) + q / self._q_norm
        return out
