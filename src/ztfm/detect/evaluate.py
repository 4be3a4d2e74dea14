"""Evaluate a streaming detector by a dataset's standard protocol (pure: no file or network I/O).

Each ``EvalUnit`` is handled like one device: a fresh pipeline is fitted on the unit's benign
training rows (or, with external training data, one pipeline is fitted on that and shared), its
threshold is calibrated on the same benign rows, and every test row is scored in arrival order.
Confusion counts are pooled over units. F1 is always reported with FAR (false alarms / benign rows)
and MAR (missed alarms / attack rows) and with the "flag every row" reference, because on data
that is mostly attacks flagging everything already scores a high F1.

ROC-AUC and PR-AUC are computed on pooled scores made comparable across units by dividing each
unit's scores by its own threshold (each device alarms when this ratio exceeds 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.detect.base import check_rng
from ztfm.detect.stream import PipelineConfig, StreamingDetector
from ztfm.errors import DataError


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank ROC-AUC (ties count one half): P(score of a positive > score of a negative).

    ``None`` when ``labels`` hold one class only (the AUC is undefined); ``DataError`` unless
    ``scores`` is a finite 1-D array of the labels' length. Labels are read as booleans.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1 or not np.isfinite(s).all():
        raise DataError("scores and labels must be finite 1-D arrays of one length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks over ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True, slots=True)
class Confusion:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @staticmethod
    def of(y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
        t = np.asarray(y_true) == 1
        p = np.asarray(y_pred) == 1
        return Confusion(
            tp=int((t & p).sum()),
            fp=int((~t & p).sum()),
            fn=int((t & ~p).sum()),
            tn=int((~t & ~p).sum()),
        )

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn) if self.tp + self.fn else None

    @property
    def far(self) -> float | None:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float | None:
        return _ratio(self.fn, self.fn + self.tp)

    def flag_everything(self) -> Confusion:
        """The confusion of the trivial detector that alarms on every row."""
        pos, neg = self.tp + self.fn, self.fp + self.tn
        return Confusion(tp=pos, fp=neg, fn=0, tn=0)

    def summary(self) -> dict[str, Any]:
        return {
            "f1": self.f1,
            "far": self.far,
            "mar": self.mar,
            "precision": self.precision,
            "recall": self.recall,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


@dataclass(frozen=True, slots=True)
class UnitResult:
    name: str
    confusion: Confusion
    threshold: float


@dataclass(frozen=True, slots=True)
class EvalResult:
    detector: str
    config: PipelineConfig
    confusion: Confusion
    roc_auc: float | None
    pr_auc: float | None
    per_type_recall: dict[str, float]
    units: tuple[UnitResult, ...]
    rest: Confusion | None = None  # SKAB: rows after the training part only
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def all_attacks(self) -> bool:
        c = self.confusion
        return c.fp + c.tn == 0

    def to_dict(self) -> dict[str, Any]:
        c = self.confusion
        out: dict[str, Any] = {
            **c.summary(),
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
            "per_type_recall": dict(sorted(self.per_type_recall.items())),
            "detector": self.detector,
            "rows": c.tp + c.fp + c.fn + c.tn,
            "attack_rows": c.tp + c.fn,
            "units": len(self.units),
            "flag_everything": {
                k: v for k, v in c.flag_everything().summary().items() if k in ("f1", "far", "mar")
            },
            "config": {
                "features": {
                    "windows": list(self.config.features.windows),
                    "ewma_alphas": list(self.config.features.ewma_alphas),
                    "raw": self.config.features.raw,
                    "delta": self.config.features.delta,
                },
                "smooth": self.config.smooth,
                "target_far": self.config.target_far,
                "threshold_margin": self.config.threshold_margin,
                "int8": self.config.int8,
                "hparams": {
                    k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.hparams
                },
            },
            "warnings": list(self.warnings),
        }
        if self.all_attacks:
            out["detection_rate"] = c.recall
        if self.rest is not None:
            out["rest"] = {
                **self.rest.summary(),
                "flag_everything": {
                    k: v
                    for k, v in self.rest.flag_everything().summary().items()
                    if k in ("f1", "far", "mar")
                },
            }
        out["per_unit"] = [
            {"name": u.name, "f1": u.confusion.f1, "far": u.confusion.far, "mar": u.confusion.mar}
            for u in self.units
        ]
        return out


def _train_rows(
    series: Sequence[LabelledSeries], pipe: StreamingDetector, benign_only: bool
) -> np.ndarray:
    """Window features of each training series (streamed separately)."""
    parts = []
    for s in series:
        f = pipe.features.transform(s.x)
        if benign_only and s.y is not None:
            f = f[s.y == 0]
        parts.append(f)
    return np.concatenate(parts) if parts else np.zeros((0, pipe.features.n_outputs), np.float32)


def fit_pipeline(
    train: Sequence[LabelledSeries],
    n_inputs: int,
    config: PipelineConfig,
    *,
    rng: np.random.Generator,
    benign_only: bool = True,
) -> StreamingDetector:
    """Fit one pipeline on several series (each streamed from its start).

    With ``benign_only`` the rows labelled as attacks are left out (external training data).
    A protocol's own training part is used as it is (``benign_only=False``): SKAB fits on rows
    0-399 whatever their labels say, and reading the labels there would be peeking."""
    for s in train:
        if s.x.shape[1] != n_inputs:
            raise DataError(f"{s.name}: {s.x.shape[1]} columns, the test data has {n_inputs}")
    pipe = StreamingDetector(n_inputs, config)
    feats = _train_rows(train, pipe, benign_only)
    if feats.shape[0] < max(pipe.detector.min_train_rows, 2):
        raise DataError(f"only {feats.shape[0]} benign training rows; need more")
    pipe.fit_features(feats, rng=rng)
    # calibrate the smoothed score on each training stream, pooled
    scores = []
    for s in train:
        sc = pipe.score_stream(s.x)
        scores.append(sc if s.y is None or not benign_only else sc[s.y == 0])
    from ztfm.detect.base import threshold_for_far

    pipe.threshold = threshold_for_far(np.concatenate(scores), config.target_far) * (
        config.threshold_margin
    )
    return pipe


def evaluate_units(
    units: Sequence[EvalUnit],
    config: PipelineConfig,
    *,
    rng: np.random.Generator,
    train: Sequence[LabelledSeries] | None = None,
) -> EvalResult:
    """Run the protocol over ``units``; with ``train`` fit one pipeline on it for all units."""
    check_rng(rng)
    if not units:
        raise DataError("nothing to evaluate (no units)")
    warnings: list[str] = []
    n_inputs = units[0].test.x.shape[1]
    for u in units:
        if u.test.x.shape[1] != n_inputs:
            raise DataError(f"{u.name}: {u.test.x.shape[1]} columns, expected {n_inputs}")
        if u.test.y is None:
            raise DataError(f"{u.name}: test data has no labels, cannot evaluate")
    shared = None
    if train is not None:
        shared = fit_pipeline(train, n_inputs, config, rng=rng)
    total = Confusion()
    rest: Confusion | None = None
    per_unit: list[UnitResult] = []
    ratios: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    kind_hits: dict[str, list[int]] = {}
    for u in units:
        if shared is not None:
            pipe = shared
        else:
            if len(u.train) == 0:
                raise DataError(f"{u.name}: no benign training rows; pass training data")
            pipe = fit_pipeline([u.train], n_inputs, config, rng=rng, benign_only=False)
        assert pipe.threshold is not None
        scores = pipe.score_stream(u.test.x)
        pred = (scores > pipe.threshold).astype(np.int8)
        y = np.asarray(u.test.y, dtype=np.int8)
        conf = Confusion.of(y, pred)
        total = total + conf
        per_unit.append(UnitResult(u.name, conf, float(pipe.threshold)))
        thr = float(pipe.threshold)
        ratios.append(scores / thr if thr > 0 else scores - thr + 1.0)
        labels.append(y)
        start = u.test.meta.get("train_rows")
        if start is not None:
            k = int(start)
            rest = (rest or Confusion()) + Confusion.of(y[k:], pred[k:])
        if u.test.kinds is not None:
            for kind in np.unique(u.test.kinds[y == 1]):
                m = (u.test.kinds == kind) & (y == 1)
                hit = kind_hits.setdefault(str(kind), [0, 0])
                hit[0] += int(pred[m].sum())
                hit[1] += int(m.sum())
    r = np.concatenate(ratios).astype(np.float64)
    lab = np.concatenate(labels)
    roc = pr = None
    if 0 < lab.sum() < lab.size:
        from sklearn.metrics import average_precision_score, roc_auc_score

        roc = float(roc_auc_score(lab, r))
        pr = float(average_precision_score(lab, r))
    per_type = {k: v[0] / v[1] for k, v in kind_hits.items() if v[1]}
    if total.fp + total.tn == 0:
        warnings.append("the test data holds no benign rows: only the detection rate is meaningful")
    return EvalResult(
        detector=config.detector,
        config=config,
        confusion=total,
        roc_auc=roc,
        pr_auc=pr,
        per_type_recall=per_type,
        units=tuple(per_unit),
        rest=rest,
        warnings=tuple(warnings),
    )
