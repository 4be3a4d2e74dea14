"""The common value every loader returns: one device's (or one file's) labelled series."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ztfm.errors import DataError


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """Rows of one device, file or capture, in arrival order.

    ``x`` is float32 (n, d) with finite values; ``y`` is int8 (n,) with 1 = attack/anomaly and 0 =
    benign, or None when the source has no labels; ``kinds`` names the attack type per row
    ("benign" for normal rows) where the source says; ``t`` is seconds (float64) per row where the
    source has a clock. ``segment`` is the device type (used as the federated segment).
    """

    name: str
    x: np.ndarray
    columns: tuple[str, ...]
    y: np.ndarray | None = None
    kinds: np.ndarray | None = None
    t: np.ndarray | None = None
    segment: str = "default"
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.dtype != np.float32:
            raise DataError(
                f"{self.name}: features must be a float32 matrix, got {self.x.dtype} {self.x.shape}"
            )
        n, d = self.x.shape
        if d != len(self.columns):
            raise DataError(f"{self.name}: {d} feature columns but {len(self.columns)} names")
        if n and not np.isfinite(self.x).all():
            raise DataError(f"{self.name}: non-finite feature values")
        for arr_name in ("y", "kinds", "t"):
            arr = getattr(self, arr_name)
            if arr is not None and arr.shape != (n,):
                raise DataError(f"{self.name}: {arr_name} has shape {arr.shape}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, sl: slice | np.ndarray) -> LabelledSeries:
        """A sub-series (same columns) selected by a slice or a boolean/index array."""
        return LabelledSeries(
            name=self.name,
            x=np.ascontiguousarray(self.x[sl]),
            columns=self.columns,
            y=None if self.y is None else self.y[sl],
            kinds=None if self.kinds is None else self.kinds[sl],
            t=None if self.t is None else self.t[sl],
            segment=self.segment,
            meta=dict(self.meta),
        )


@dataclass(frozen=True, slots=True)
class EvalUnit:
    """One unit of a dataset's standard evaluation protocol: fit on ``train`` (benign rows only),
    score ``test``. SKAB has one unit per file (fit on rows 0-399 of that file); other formats
    have one unit or one per device."""

    name: str
    train: LabelledSeries
    test: LabelledSeries
