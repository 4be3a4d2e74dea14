"""SKAB (Skoltech Anomaly Benchmark) loader and its standard evaluation protocol.

A SKAB file is a ``;``-separated CSV with a ``datetime`` column, 8 sensor columns and (except for
``anomaly-free.csv``) ``anomaly`` and ``changepoint`` 0/1 columns, one row per second.

The SKAB protocol (``skab_split``): per file, the scaler and the model are fitted on rows 0-399
(the anomaly-free start of each experiment) and every row of the file is scored ("all", as the
leaderboard does); "rest" scores rows 400 onward. Confusion counts are pooled over files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ztfm.data._io import iter_files, read_text
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

SENSORS: tuple[str, ...] = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
LABELS: tuple[str, ...] = ("anomaly", "changepoint")
log = logging.getLogger(__name__)

TRAIN_ROWS = 400  # the SKAB protocol fits on rows 0-399 of each file
MAX_ROWS = 5_000_000
_DT_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S")


def _parse_time(text: str, where: str) -> float:
    for fmt in _DT_FORMATS:
        try:
            dt = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return dt.replace(tzinfo=UTC).timestamp()
    raise DataError(f"{where}: datetime {text[:40]!r} is not 'YYYY-MM-DD HH:MM:SS'")


def _parse_float(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: non-finite value {text[:40]!r}")
    return value


def parse_skab_text(text: str, *, name: str = "skab", segment: str = "skab") -> LabelledSeries:
    """Parse the text of one SKAB CSV into a ``LabelledSeries``; ``DataError`` on any defect."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{name}: empty file")
    header = [h.strip() for h in lines[0].split(";")]
    if len(header) < 2:
        raise DataError(f"{name}: header has no ';' separators (not a SKAB CSV)")
    if len(set(header)) != len(header):
        raise DataError(f"{name}: duplicate column names in header")
    missing = [c for c in ("datetime", *SENSORS) if c not in header]
    if missing:
        raise DataError(f"{name}: missing column {missing[0]!r}")
    has_labels = "anomaly" in header
    if has_labels and "changepoint" not in header:
        raise DataError(f"{name}: missing column 'changepoint'")
    if not has_labels and "changepoint" in header:
        raise DataError(f"{name}: missing column 'anomaly'")
    body = lines[1:]
    if not body:
        raise DataError(f"{name}: no data rows")
    if len(body) > MAX_ROWS:
        raise DataError(f"{name}: more than {MAX_ROWS} rows")
    i_dt = header.index("datetime")
    i_x = [header.index(c) for c in SENSORS]
    i_y = [header.index(c) for c in LABELS] if has_labels else []
    n = len(body)
    x = np.empty((n, len(SENSORS)), dtype=np.float64)
    t = np.empty(n, dtype=np.float64)
    lab = np.zeros((n, 2), dtype=np.int8)
    width = len(header)
    for r, line in enumerate(body):
        where = f"{name}: line {r + 2}"
        cells = line.split(";")
        if len(cells) != width:
            raise DataError(f"{where}: {len(cells)} fields, expected {width}")
        t[r] = _parse_time(cells[i_dt].strip(), where)
        for j, c in enumerate(i_x):
            cell = cells[c].strip()
            if not cell:
                raise DataError(f"{where}: empty value in {SENSORS[j]!r}")
            x[r, j] = _parse_float(cell, f"{where} column {SENSORS[j]!r}")
        for j, c in enumerate(i_y):
            v = _parse_float(cells[c].strip(), f"{where} column {LABELS[j]!r}")
            if v not in (0.0, 1.0):
                raise DataError(f"{where}: {LABELS[j]!r} must be 0 or 1, got {cells[c]!r}")
            lab[r, j] = int(v)
    if np.abs(x).max() > np.finfo(np.float32).max:
        raise DataError(f"{name}: value out of float32 range")
    if n > 1 and np.any(np.diff(t) < 0):
        raise DataError(f"{name}: datetime goes backwards (rows must be in arrival order)")
    y = lab[:, 0].copy() if has_labels else np.zeros(n, dtype=np.int8)
    kinds = np.where(y == 1, "anomaly", "benign").astype(object)
    meta = {"format": "skab", "labelled": "yes" if has_labels else "no"}
    if has_labels:
        meta["changepoints"] = ",".join(str(i) for i in np.flatnonzero(lab[:, 1]))
    return LabelledSeries(
        name=name,
        x=x.astype(np.float32),
        columns=SENSORS,
        y=y,
        kinds=kinds,
        t=t,
        segment=segment,
        meta=meta,
    )


def load_skab_file(path: str | Path) -> LabelledSeries:
    """Load one SKAB CSV (plain or gzipped). The series is named ``<folder>/<file>``."""
    p = Path(path)
    stem = p.name.removesuffix(".gz").removesuffix(".csv")
    name = f"{p.parent.name}/{stem}" if p.parent.name else stem
    return parse_skab_text(read_text(p), name=name, segment="skab")


def load_skab(path: str | Path) -> list[LabelledSeries]:
    """Load a SKAB file or every ``*.csv`` / ``*.csv.gz`` under a folder (sorted)."""
    return [load_skab_file(f) for f in iter_files(path, ("*.csv", "*.csv.gz"))]


def skab_split(series: Sequence[LabelledSeries] | Iterable[LabelledSeries]) -> list[EvalUnit]:
    """The SKAB protocol: one unit per file; train on rows 0-399, test on every row.

    The test series holds the whole file (rows 0-399 included, as the leaderboard scores them);
    ``test.meta["train_rows"]`` says where "rest" starts. Files without labels (anomaly-free)
    are skipped beside labelled ones (refused when nothing else is left); files of
    ``TRAIN_ROWS`` rows or fewer are refused.
    """
    units: list[EvalUnit] = []
    all_series = list(series)
    labelled = [s for s in all_series if s.meta.get("labelled") != "no" and s.y is not None]
    if not labelled and all_series:
        raise DataError(f"{all_series[0].name}: has no anomaly labels; use it only as --train data")
    for s in all_series:
        if s not in labelled:
            log.warning("SKAB: skipping %s (no anomaly labels; usable as training data)", s.name)
    for s in labelled:
        if len(s) <= TRAIN_ROWS:
            raise DataError(
                f"{s.name}: {len(s)} rows, the SKAB protocol needs more than {TRAIN_ROWS}"
            )
        test = LabelledSeries(
            name=s.name,
            x=s.x,
            columns=s.columns,
            y=s.y,
            kinds=s.kinds,
            t=s.t,
            segment=s.segment,
            meta={**s.meta, "train_rows": str(TRAIN_ROWS)},
        )
        units.append(EvalUnit(name=s.name, train=s.rows(slice(0, TRAIN_ROWS)), test=test))
    if not units:
        raise DataError("no SKAB files to evaluate")
    return units
