"""A device in the fleet: trains the shared detector on its own benign telemetry.

The agent answers round messages only; its telemetry never leaves it. ``handle`` is the single
entry point a transport calls with the bytes of a task and gets the bytes of the reply, so the
same agent runs in process and behind gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ztfm.detect.base import threshold_for_far
from ztfm.detect.evaluate import roc_auc as rank_auc
from ztfm.errors import UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask, UpdateReply
from ztfm.fl.params import Params, ParamSpec, sub
from ztfm.fl.rounds import UNDEFINED_AUC
from ztfm.privacy.sparse import TopKCompressor

log = logging.getLogger(__name__)


class LocalModel(Protocol):
    """What the agent needs of a detector (``ztfm.detect`` detectors provide it)."""

    def fit_scaler(self, x_benign: np.ndarray) -> None: ...
    def train_epochs(
        self,
        x: np.ndarray,
        *,
        epochs: int,
        rng: np.random.Generator,
        prox_mu: float = 0.0,
        anchor: list[np.ndarray] | None = None,
    ) -> float: ...
    def get_params(self) -> list[np.ndarray]: ...
    def set_params(self, params: list[np.ndarray]) -> None: ...
    def calibrate(self, x_benign: np.ndarray, target_far: float) -> float: ...
    def score(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class DeviceData:
    """A device's own data, already turned into feature rows in arrival order.

    train: benign rows the device trains on; calib: benign rows it sets its threshold on (may be
    the train rows); test_x/test_y/test_kinds: its held-out rows and labels (1 = attack).
    """

    train: np.ndarray
    calib: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_kinds: np.ndarray | None = None


# (scores in arrival order) -> smoothed scores; e.g. a causal moving average
PostProcess = Callable[[np.ndarray], np.ndarray]
# (update delta, round task, rng) -> delta to send; clipping, DP noise, compression, attacks
UpdateTransform = Callable[[Params, RoundTask, np.random.Generator], Params]


def confusion(pred: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) with 1 = attack."""
    p = pred.astype(bool)
    t = y.astype(bool)
    return (int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum()))


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC for an evaluation reply (``detect.evaluate.roc_auc``): ``UNDEFINED_AUC`` if one
    class is missing or a score is not finite (a broken model must still report its counts)."""
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        return UNDEFINED_AUC
    auc = rank_auc(s, y)
    return UNDEFINED_AUC if auc is None else auc


class DeviceAgent:
    """One device: its id, segment, local model and private data."""

    def __init__(
        self,
        device_id: str,
        segment: str,
        model: LocalModel,
        data: DeviceData,
        *,
        rng: np.random.Generator,
        target_far: float = 0.01,
        threshold_margin: float = 1.0,
        postprocess: PostProcess | None = None,
        transforms: list[UpdateTransform] | None = None,
        compressor: TopKCompressor | None = None,
    ) -> None:
        """``compressor``: upload a per-device top-k (after the transforms) instead of the
        dense update; it keeps the device's error-feedback residual across rounds."""
        self.device_id = device_id
        self.segment = segment
        self.model = model
        self.data = data
        self.rng = rng
        self.target_far = target_far
        self.threshold_margin = threshold_margin
        self.postprocess = postprocess
        self.transforms = list(transforms or [])
        self.compressor = compressor
        self.model.fit_scaler(data.train)
        self._scaled: dict[str, np.ndarray] = {}

    # --- transport entry point -------------------------------------------------------------
    def handle(self, data: bytes) -> bytes:
        """Decode a task, act on it, encode the reply."""
        msg = codec.decode(data)
        if isinstance(msg, RoundTask):
            return codec.encode(self.train(msg))
        if isinstance(msg, EvalTask):
            return codec.encode(self.evaluate(msg))
        raise UpdateRejected(f"a device does not accept {type(msg).__name__}")

    # --- learning ----------------------------------------------------------------------------
    def train(self, task: RoundTask) -> UpdateReply:
        ParamSpec.of(self.model.get_params()).check(task.params, what="global model")
        self.model.set_params(task.params)
        loss = self.model.train_epochs(
            self.data.train,
            epochs=task.local_epochs,
            rng=self.rng,
            prox_mu=task.prox_mu,
            anchor=task.params if task.prox_mu > 0 else None,
        )
        delta = sub(self.model.get_params(), task.params)
        for transform in self.transforms:
            delta = transform(delta, task, self.rng)
        sparse = None
        if self.compressor is not None:
            spec = ParamSpec.of(delta)
            sparse = self.compressor.compress(spec.flatten(delta), self.rng)
            delta = spec.unflatten(sparse.dense().astype(np.float32))
        return UpdateReply(
            task.round_id,
            self.device_id,
            task.model_version,
            delta,
            len(self.data.train),
            float(loss),
            task.nonce,
            sparse,
        )

    # --- evaluation ----------------------------------------------------------------------------
    def _score(self, which: str) -> np.ndarray:
        """Scores of the calibration or held-out rows under the current parameters. The local
        scaler never changes after enrolment, so scaled rows are computed once and kept."""
        rows = self.data.calib if which == "calib" else self.data.test_x
        scale = getattr(self.model, "scale", None)
        score_scaled = getattr(self.model, "score_scaled", None)
        if scale is None or score_scaled is None:
            return self.model.score(rows)
        if which not in self._scaled:
            self._scaled[which] = scale(rows)
        out: np.ndarray = score_scaled(self._scaled[which])
        return out

    def scores(self, params: Params) -> tuple[np.ndarray, float]:
        """Scores of the held-out rows and the locally calibrated threshold for ``params``."""
        self.model.set_params(params)
        calib = self._score("calib")
        if self.postprocess is not None:
            calib = self.postprocess(calib)
        threshold = threshold_for_far(calib, self.target_far) * self.threshold_margin
        s = self._score("test")
        if self.postprocess is not None:
            s = self.postprocess(s)
        return s, threshold

    def evaluate(self, task: EvalTask) -> EvalReply:
        s, threshold = self.scores(task.params)
        pred = s > threshold
        tp, fp, fn, tn = confusion(pred, self.data.test_y)
        return EvalReply(
            task.round_id,
            self.device_id,
            task.model_version,
            tp,
            fp,
            fn,
            tn,
            roc_auc(s, self.data.test_y),
            task.nonce,
        )
