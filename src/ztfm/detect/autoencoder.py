"""A small dense autoencoder that trains on the device (torch) and scores in plain numpy.

Shape: n -> h_1 -> ... -> h_k -> ... -> h_1 -> n, ReLU after every layer but the last. The
score of a row is its mean squared reconstruction error in the scaled feature space. By default
the local scaler whitens (ZCA on the device's own benign rows, never shared): every device then
feeds the shared model inputs that look like N(0, I) on benign data, and the error becomes a
Mahalanobis-like distance (SKAB: F1 0.78 -> 0.81 at lower FAR, docs/detect.md). Parameters
live as numpy float32 arrays ``[W_1, b_1, W_2, b_2, ...]`` with ``W`` of shape (in, out); torch
is used only inside ``train_epochs`` (no torch randomness: initialisation and shuffling come from
the caller's ``np.random.Generator``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np

from ztfm.detect.base import BaseDetector
from ztfm.errors import DetectorError

MAX_WIDTH = 4096
MAX_DEPTH = 8
MAX_PARAMS = 4_000_000


class Autoencoder(BaseDetector):
    name: ClassVar[str] = "ae"
    min_train_rows: ClassVar[int] = 8

    def __init__(
        self,
        n_features: int,
        *,
        hidden: Sequence[int] = (32, 8),
        lr: float = 3e-3,
        batch_size: int = 64,
        epochs: int = 60,
        weight_decay: float = 1e-5,
        whiten: bool = True,
    ) -> None:
        super().__init__(n_features)
        if not isinstance(whiten, bool):
            raise DetectorError(f"whiten must be a bool, got {whiten!r}")
        self.whiten = whiten
        hid = tuple(hidden)
        if not hid or not all(
            isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_WIDTH for h in hid
        ):
            raise DetectorError(f"hidden must be positive ints <= {MAX_WIDTH}, got {hidden!r}")
        for label, val in (("lr", lr), ("weight_decay", weight_decay)):
            if not isinstance(val, (int, float)) or not np.isfinite(val) or val < 0:
                raise DetectorError(f"{label} must be a finite number >= 0, got {val!r}")
        if lr <= 0:
            raise DetectorError("lr must be > 0")
        for label, ival in (("batch_size", batch_size), ("epochs", epochs)):
            if not isinstance(ival, int) or isinstance(ival, bool) or ival < 1:
                raise DetectorError(f"{label} must be a positive int, got {ival!r}")
        if len(hid) > MAX_DEPTH:
            raise DetectorError(f"at most {MAX_DEPTH} hidden layers, got {len(hid)}")
        widths_ = [n_features, *hid, *reversed(hid[:-1]), n_features]
        n_weights = sum(a * b for a, b in pairwise(widths_))
        if n_weights > MAX_PARAMS:
            raise DetectorError(f"autoencoder too large ({n_weights} weights > {MAX_PARAMS})")
        self.hidden = hid
        self.lr = float(lr)
        self.batch_size = batch_size
        self.epochs = epochs
        self.weight_decay = float(weight_decay)
        widths = [n_features, *hid, *reversed(hid[:-1]), n_features]
        self.widths = tuple(widths)
        # a fixed start so that shapes and set_params work before any training
        self._params = self._init_params(np.random.default_rng(0))

    # --- parameters ---------------------------------------------------------------------------
    def _init_params(self, rng: np.random.Generator) -> list[np.ndarray]:
        params: list[np.ndarray] = []
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            bound = np.sqrt(6.0 / (a + b))  # Glorot uniform
            params.append(rng.uniform(-bound, bound, size=(a, b)).astype(np.float32))
            params.append(np.zeros(b, dtype=np.float32))
        return params

    def _reset_params(self, rng: np.random.Generator) -> None:
        self._params = self._init_params(rng)

    def param_shapes(self) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            shapes += [(a, b), (b,)]
        return shapes

    def get_params(self) -> list[np.ndarray]:
        return [p.copy() for p in self._params]

    def _set_params_checked(self, params: list[np.ndarray]) -> None:
        self._params = params

    def hparams(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "lr": self.lr,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "weight_decay": self.weight_decay,
            "whiten": self.whiten,
        }

    def default_epochs(self) -> int:
        return self.epochs

    # --- training (torch) ---------------------------------------------------------------------
    def _train(
        self,
        xs: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float,
        anchor: list[np.ndarray] | None,
    ) -> float:
        import torch

        # tiny model: one thread is much faster than several fighting over a busy CPU
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._train_torch(xs, epochs=epochs, rng=rng, prox_mu=prox_mu, anchor=anchor)
        finally:
            torch.set_num_threads(threads)

    def _train_torch(
        self,
        xs: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float,
        anchor: list[np.ndarray] | None,
    ) -> float:
        import torch

        ts = [torch.tensor(p, requires_grad=True) for p in self._params]
        anc = [torch.tensor(a) for a in anchor] if anchor is not None and prox_mu > 0 else None
        opt = torch.optim.Adam(ts, lr=self.lr, weight_decay=self.weight_decay)
        data = torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32))
        n = data.shape[0]
        last = 0.0
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(n))
            total = 0.0
            for start in range(0, n, self.batch_size):
                batch = data[order[start : start + self.batch_size]]
                out = batch
                for i in range(0, len(ts), 2):
                    out = out @ ts[i] + ts[i + 1]
                    if i < len(ts) - 2:
                        out = torch.relu(out)
                loss = ((out - batch) ** 2).mean()
                total += float(loss.detach()) * batch.shape[0]
                if anc is not None:
                    loss = loss + 0.5 * prox_mu * sum(
                        ((w - a) ** 2).sum() for w, a in zip(ts, anc, strict=True)
                    )
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            last = total / n
        self._params = [t.detach().numpy().astype(np.float32).copy() for t in ts]
        if not all(np.isfinite(p).all() for p in self._params):
            raise DetectorError("autoencoder training diverged (non-finite weights)")
        return last

    # --- inference (numpy) --------------------------------------------------------------------
    def reconstruct_scaled(self, xs: np.ndarray) -> np.ndarray:
        out = xs
        p = self._params
        last = len(p) - 2
        for i in range(0, len(p), 2):
            out = out @ p[i]
            out += p[i + 1]
            if i < last:
                np.maximum(out, 0.0, out=out)
        return out

    def _score_scaled(self, xs: np.ndarray) -> np.ndarray:
        err = self.reconstruct_scaled(xs) - xs
        out: np.ndarray = np.einsum("ij,ij->i", err, err) / np.float32(self.n_features)
        return out
