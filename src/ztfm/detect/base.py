"""The ``Detector`` plug point and the machinery every detector shares.

A detector maps feature rows to anomaly scores (float32, higher = more anomalous) and to 0/1
decisions (int8) against a threshold. Its state has two parts:

* aggregatable parameters (``get_params`` / ``set_params``): a list of float32 arrays with fixed
  shapes, the only part that is ever shared and averaged across devices;
* local state that never leaves the device: the feature scaler (fitted on the device's own benign
  rows by ``fit_scaler``) and the decision threshold (``calibrate``).

Federated learning drives a detector with ``fit_scaler`` once, then ``set_params`` (global model)
and ``train_epochs`` (local training from the current parameters, optionally with a FedProx term)
each round. ``fit`` is the stand-alone shortcut: scaler + training + threshold.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ztfm.errors import DetectorError

DEFAULT_TARGET_FAR = 0.01
WHITEN_FLOOR = 1e-3  # eigenvalue floor of the whitening (z-scored features, so relative)
WHITEN_MIN_ROWS_PER_FEATURE = 2  # below this the whitening falls back to the identity
SCALE_CLIP = 50.0  # scaled features are clipped to +-50 std: bounded influence of wild inputs
MAX_STATE_BYTES = 64 * 1024 * 1024
MAX_FEATURES = 65_536  # a crafted export must not make us allocate without bound
_STATE_VERSION = 1


@runtime_checkable
class Detector(Protocol):
    """What every on-device anomaly detector offers (see the module docstring)."""

    name: str
    n_features: int

    @property
    def threshold(self) -> float | None: ...

    def fit_scaler(self, x_benign: np.ndarray) -> None: ...

    def train_epochs(
        self,
        x: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float = 0.0,
        anchor: Sequence[np.ndarray] | None = None,
    ) -> float: ...

    def fit(self, x_benign: np.ndarray, *, rng: np.random.Generator) -> None: ...

    def score(self, x: np.ndarray) -> np.ndarray: ...

    def calibrate(self, x_benign: np.ndarray, target_far: float = DEFAULT_TARGET_FAR) -> float: ...

    def set_threshold(self, threshold: float) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def get_params(self) -> list[np.ndarray]: ...

    def set_params(self, params: Sequence[np.ndarray]) -> None: ...

    def param_shapes(self) -> list[tuple[int, ...]]: ...

    def to_bytes(self) -> bytes: ...


def check_matrix(
    x: object, n_features: int, *, what: str = "features", min_rows: int = 0
) -> np.ndarray:
    """A finite real (n, n_features) matrix as float32, or ``DetectorError``."""
    if not isinstance(x, np.ndarray):
        raise DetectorError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != n_features:
        raise DetectorError(f"{what} must have shape (n, {n_features}), got {x.shape}")
    if x.dtype.kind not in "fiu":
        raise DetectorError(f"{what} must be real numbers, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise DetectorError(f"{what}: need at least {min_rows} rows, got {x.shape[0]}")
    out = np.asarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DetectorError(f"{what} contain NaN or infinite values")
    return out


def check_params(params: object, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Validate an aggregatable parameter list: count, float32, exact shapes, finite."""
    if not isinstance(params, (list, tuple)):
        raise DetectorError(f"params must be a list of arrays, got {type(params).__name__}")
    if len(params) != len(shapes):
        raise DetectorError(f"expected {len(shapes)} parameter arrays, got {len(params)}")
    out: list[np.ndarray] = []
    for i, (p, shape) in enumerate(zip(params, shapes, strict=True)):
        if not isinstance(p, np.ndarray):
            raise DetectorError(f"param {i} is {type(p).__name__}, not a numpy array")
        if p.dtype != np.float32:
            raise DetectorError(f"param {i} has dtype {p.dtype}, expected float32")
        if p.shape != tuple(shape):
            raise DetectorError(f"param {i} has shape {p.shape}, expected {tuple(shape)}")
        if not np.isfinite(p).all():
            raise DetectorError(f"param {i} contains NaN or infinite values")
        out.append(np.array(p, dtype=np.float32, copy=True))
    return out


def check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise DetectorError("rng must be a numpy.random.Generator")
    return rng


def threshold_for_far(scores: np.ndarray, target_far: float) -> float:
    """The smallest threshold t with (scores > t).mean() <= target_far (on benign scores)."""
    if not isinstance(target_far, float) or not 0.0 <= target_far < 1.0:
        raise DetectorError(f"target_far must be a float in [0, 1), got {target_far!r}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise DetectorError("cannot calibrate on zero rows")
    k = int(np.floor(target_far * s.size))  # allowed false alarms
    t = float(s[s.size - 1 - k])
    return float(np.float32(t))


class BaseDetector:
    """Scaler, threshold, checks and serialisation shared by the concrete detectors.

    Subclasses set ``name``, implement ``_train``, ``_score_scaled``, ``param_shapes``,
    ``get_params``, ``_set_params_checked`` and ``hparams``.
    """

    name: ClassVar[str] = "base"
    min_train_rows: ClassVar[int] = 2

    def __init__(self, n_features: int) -> None:
        if (
            not isinstance(n_features, int)
            or isinstance(n_features, bool)
            or not 1 <= n_features <= MAX_FEATURES
        ):
            raise DetectorError(
                f"n_features must be an int in [1, {MAX_FEATURES}], got {n_features!r}"
            )
        self.n_features = n_features
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None
        self._white: np.ndarray | None = None  # optional whitening matrix (local, never shared)
        self.whiten = False  # subclasses switch it on through a hyper-parameter
        self._threshold: float | None = None
        self._trained = False

    # --- local, non-shared state ------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def scaler(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._mu is None or self._sd is None:
            return None
        return self._mu.copy(), self._sd.copy()

    def fit_scaler(self, x_benign: np.ndarray) -> None:
        """Fit the per-feature standardiser on the device's own benign rows (never shared)."""
        x = check_matrix(x_benign, self.n_features, what="benign rows", min_rows=2)
        x64 = x.astype(np.float64)
        mu = x64.mean(axis=0)
        sd = x64.std(axis=0)
        # a constant feature keeps scale 1 relative to its magnitude: changes still show
        floor = np.maximum(1e-3 * np.abs(mu), 1e-6)
        self._mu = mu.astype(np.float32)
        self._sd = np.maximum(sd, floor).astype(np.float32)
        self._white = None
        if self.whiten and x64.shape[0] < WHITEN_MIN_ROWS_PER_FEATURE * self.n_features:
            # too few rows to estimate a covariance: whitening would amplify noise directions
            self._white = np.eye(self.n_features, dtype=np.float32)
        elif self.whiten:
            z = (x64 - mu) / self._sd.astype(np.float64)
            cov = z.T @ z / z.shape[0]
            vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
            vals = np.maximum(vals, WHITEN_FLOOR)  # directions without variance: not amplified
            self._white = ((vecs / np.sqrt(vals)) @ vecs.T).astype(np.float32)  # ZCA

    def set_scaler(
        self, mean: np.ndarray, std: np.ndarray, white: np.ndarray | None = None
    ) -> None:
        """Load a local scaler (from this device's own export); validated like params."""
        mu = check_params([mean], [(self.n_features,)])[0]
        sd = check_params([std], [(self.n_features,)])[0]
        if (sd <= 0).any():
            raise DetectorError("scaler std must be positive")
        if self.whiten != (white is not None):
            raise DetectorError("whitening matrix present/absent does not match the detector")
        w = None if white is None else check_params([white], [(self.n_features,) * 2])[0]
        self._mu, self._sd, self._white = mu, sd, w

    def scale(self, x: np.ndarray) -> np.ndarray:
        """Rows in this device's local feature space (scaled, whitened, clipped); stays local."""
        return self._scale(check_matrix(x, self.n_features))

    def set_identity_scaler(self) -> None:
        """No local scaling: for a model trained on rows that are already in a device's local
        feature space (the centralised baseline of ``ztfm simulate``)."""
        n = self.n_features
        self._mu = np.zeros(n, np.float32)
        self._sd = np.ones(n, np.float32)
        self._white = np.eye(n, dtype=np.float32) if self.whiten else None

    def _scale(self, x: np.ndarray) -> np.ndarray:
        if self._mu is None or self._sd is None:
            raise DetectorError(f"{self.name}: scaler not fitted (call fit_scaler or fit)")
        z = (x - self._mu) / self._sd
        if self._white is not None:
            z = z @ self._white
        np.clip(z, -SCALE_CLIP, SCALE_CLIP, out=z)
        out: np.ndarray = z.astype(np.float32, copy=False)
        return out

    def set_threshold(self, threshold: float) -> None:
        t = float(threshold)
        if not np.isfinite(t):
            raise DetectorError("threshold must be finite")
        self._threshold = t

    # --- the public API ------------------------------------------------------------------------
    def train_epochs(
        self,
        x: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float = 0.0,
        anchor: Sequence[np.ndarray] | None = None,
    ) -> float:
        """Continue training from the current parameters on benign rows; returns the mean loss
        of the last epoch. With ``anchor`` and ``prox_mu`` > 0 adds mu/2 * ||w - anchor||^2."""
        xs = self._scale(
            check_matrix(x, self.n_features, what="training rows", min_rows=self.min_train_rows)
        )
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise DetectorError(f"epochs must be a positive int, got {epochs!r}")
        mu = float(prox_mu)
        if not np.isfinite(mu) or mu < 0:
            raise DetectorError(f"prox_mu must be a finite number >= 0, got {prox_mu!r}")
        anc = None if anchor is None else check_params(list(anchor), self.param_shapes())
        loss = self._train(xs, epochs=epochs, rng=check_rng(rng), prox_mu=mu, anchor=anc)
        self._trained = True
        return loss

    def fit(self, x_benign: np.ndarray, *, rng: np.random.Generator) -> None:
        """Stand-alone: fit the scaler, train from scratch, calibrate at the default FAR."""
        x = check_matrix(
            x_benign, self.n_features, what="benign rows", min_rows=self.min_train_rows
        )
        self.fit_scaler(x)
        self._reset_params(check_rng(rng))
        self.train_epochs(x, epochs=self.default_epochs(), rng=rng)
        self.calibrate(x, DEFAULT_TARGET_FAR)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score per row, float32, higher = more anomalous."""
        if not self._trained:
            raise DetectorError(f"{self.name}: not trained (call fit or train_epochs)")
        xs = self._scale(check_matrix(x, self.n_features))
        return np.asarray(self._score_scaled(xs), dtype=np.float32)

    def score_scaled(self, xs: np.ndarray) -> np.ndarray:
        """Scores of rows already in the local feature space (from ``scale``): a device that
        scores the same rows under many models scales them once."""
        if not self._trained:
            raise DetectorError(f"{self.name}: not trained (call fit or train_epochs)")
        return np.asarray(self._score_scaled(check_matrix(xs, self.n_features)), np.float32)

    def calibrate(self, x_benign: np.ndarray, target_far: float = DEFAULT_TARGET_FAR) -> float:
        """Set the threshold so that at most ``target_far`` of these benign rows alarm."""
        s = self.score(check_matrix(x_benign, self.n_features, what="benign rows", min_rows=1))
        self._threshold = threshold_for_far(s, float(target_far))
        return self._threshold

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._threshold is None:
            raise DetectorError(f"{self.name}: no threshold (call calibrate or fit)")
        return (self.score(x) > self._threshold).astype(np.int8)

    def set_params(self, params: Sequence[np.ndarray]) -> None:
        """Load aggregatable parameters (for example a global model); validated strictly."""
        self._set_params_checked(check_params(params, self.param_shapes()))
        self._trained = True

    def n_params(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.param_shapes()))

    def size_bytes(self) -> int:
        """Bytes of the float32 model (aggregatable params + scaler + threshold)."""
        white = 0 if self._white is None else self._white.size
        return 4 * (self.n_params() + 2 * self.n_features + white + 1)

    # --- serialisation (no pickle) -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A self-describing, pickle-free export: JSON header + float32 arrays in a zip."""
        if not self._trained or self._mu is None or self._sd is None:
            raise DetectorError(f"{self.name}: nothing to export before training")
        header = {
            "version": _STATE_VERSION,
            "name": self.name,
            "n_features": self.n_features,
            "hparams": self.hparams(),
            "threshold": self._threshold,
            "n_params": len(self.param_shapes()),
        }
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("header.json", json.dumps(header, sort_keys=True))
            arrays = {"scaler_mean": self._mu, "scaler_std": self._sd}
            if self._white is not None:
                arrays["scaler_white"] = self._white
            arrays.update({f"param_{i}": p for i, p in enumerate(self.get_params())})
            for key, arr in arrays.items():
                out = io.BytesIO()
                np.save(out, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
                zf.writestr(f"{key}.npy", out.getvalue())
        return buf.getvalue()

    # --- for subclasses ------------------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        return {}

    def default_epochs(self) -> int:
        return 1

    def param_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def get_params(self) -> list[np.ndarray]:
        raise NotImplementedError

    def _set_params_checked(self, params: list[np.ndarray]) -> None:
        raise NotImplementedError

    def _reset_params(self, rng: np.random.Generator) -> None:
        """Re-initialise the aggregatable parameters (start of a stand-alone fit)."""

    def _train(
        self,
        xs: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float,
        anchor: list[np.ndarray] | None,
    ) -> float:
        raise NotImplementedError

    def _score_scaled(self, xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def read_state(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse ``to_bytes`` output without pickle; ``DetectorError`` on anything malformed."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_STATE_BYTES:
        raise DetectorError("detector state must be bytes under the size limit")
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            names = zf.namelist()
            if "header.json" not in names or len(names) > 256:
                raise DetectorError("detector state has no header or too many entries")
            if sum(i.file_size for i in zf.infolist()) > MAX_STATE_BYTES:
                raise DetectorError("detector state expands beyond the size limit")
            header = json.loads(zf.read("header.json"))
            arrays: dict[str, np.ndarray] = {}
            for n in names:
                if n == "header.json":
                    continue
                if not n.endswith(".npy"):
                    raise DetectorError(f"unexpected entry {n[:40]!r} in detector state")
                arr = np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                arrays[n.removesuffix(".npy")] = arr
    except DetectorError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as exc:
        raise DetectorError(f"detector state is corrupt ({exc})") from exc
    if not isinstance(header, dict) or header.get("version") != _STATE_VERSION:
        raise DetectorError("detector state has an unknown version")
    return header, arrays
