"""TON_IoT telemetry loader (Alsaedi et al. 2020): one CSV per IoT device, one series per file.

Each file has ``ts``, ``date``, ``time``, ``label`` (0/1), ``type`` (normal or the attack) and a
few device columns. Time columns are never features. Device columns are numbers, or on/off words
that are stripped and lower-cased BEFORE encoding (the raw files mark normal rows with trailing
spaces, e.g. ``'high '`` vs ``'high'``, which would otherwise leak the label): ``true/on/open/
high/yes/1`` -> 1, ``false/off/closed/low/no/0`` -> 0. Rows are sorted by ``ts`` (stable).

These files carry no attack signal once the leaks are removed (see ``_bundled/ATTRIBUTION.md``):
every series is marked ``meta["signal"] = "none"``; use them for federated plumbing only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ztfm.data._csv import header_cells, split_lines
from ztfm.data._io import iter_files, read_text
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

REQUIRED = ("ts", "label", "type")
NOT_FEATURES = frozenset({"ts", "date", "time", "label", "type"})
KINDS = frozenset(
    {"normal", "backdoor", "ddos", "dos", "injection", "password", "ransomware", "scanning", "xss",
     "mitm"}
)  # fmt: skip
TRUE_WORDS = frozenset({"true", "on", "open", "high", "yes", "1"})
FALSE_WORDS = frozenset({"false", "off", "closed", "low", "no", "0"})
_DEVICE = re.compile(r"^(?:Train_Test_)?IoT_(\w+)$", re.IGNORECASE)
_F32_MAX = float(np.finfo(np.float32).max)


def _device(path: Path) -> str:
    stem = path.name.removesuffix(".gz").removesuffix(".csv")
    m = _DEVICE.match(stem)
    return (m.group(1) if m else stem).lower()


def _cell_value(cell: str, where: str) -> float:
    word = cell.strip().strip('"').strip().lower()
    if not word:
        raise DataError(f"{where}: empty value")
    if word in TRUE_WORDS:
        return 1.0
    if word in FALSE_WORDS:
        return 0.0
    try:
        v = float(word)
    except ValueError:
        raise DataError(f"{where}: {cell.strip()[:40]!r} is neither a number nor on/off") from None
    if not math.isfinite(v) or abs(v) > _F32_MAX:
        raise DataError(f"{where}: non-finite or out-of-range value {cell.strip()[:40]!r}")
    return v


def parse_ton_iot_text(text: str, *, name: str, device: str) -> LabelledSeries:
    """Parse one TON_IoT telemetry CSV's text; ``DataError`` on any defect."""
    head, body = split_lines(text, name)
    header = header_cells(head)
    if len(set(header)) != len(header):
        raise DataError(f"{name}: duplicate column names in header")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DataError(f"{name}: missing column {missing[0]!r} (not a TON_IoT telemetry file)")
    feats = tuple(c for c in header if c not in NOT_FEATURES)
    if not feats:
        raise DataError(f"{name}: no device columns besides ts/date/time/label/type")
    if not body:
        raise DataError(f"{name}: no data rows")
    i_ts, i_label, i_type = (header.index(c) for c in REQUIRED)
    i_feats = [header.index(c) for c in feats]
    n, width = len(body), len(header)
    x = np.empty((n, len(feats)), dtype=np.float64)
    t = np.empty(n, dtype=np.float64)
    y = np.empty(n, dtype=np.int8)
    kinds = np.empty(n, dtype=object)
    for r, line in enumerate(body):
        where = f"{name}: line {r + 2}"
        cells = line.split(",")
        if len(cells) != width:
            raise DataError(f"{where}: {len(cells)} fields, expected {width}")
        try:
            t[r] = float(cells[i_ts])
        except ValueError:
            raise DataError(f"{where}: ts {cells[i_ts].strip()[:40]!r} is not a number") from None
        if not math.isfinite(t[r]):
            raise DataError(f"{where}: ts is not finite")
        label = cells[i_label].strip()
        if label not in ("0", "1"):
            raise DataError(f"{where}: label must be 0 or 1, got {label[:20]!r}")
        kind = cells[i_type].strip().lower()
        if kind not in KINDS:
            raise DataError(f"{where}: unknown type {kind[:40]!r}")
        if (kind == "normal") != (label == "0"):
            raise DataError(f"{where}: label {label} contradicts type {kind!r}")
        y[r] = int(label)
        kinds[r] = "benign" if kind == "normal" else kind
        for j, c in enumerate(i_feats):
            x[r, j] = _cell_value(cells[c], f"{where} column {feats[j]!r}")
    order = np.argsort(t, kind="stable")
    return LabelledSeries(
        name=name,
        x=x[order].astype(np.float32),
        columns=feats,
        y=y[order],
        kinds=kinds[order],
        t=t[order],
        segment=device,
        meta={"format": "ton_iot", "device": device, "signal": "none"},
    )


def load_ton_iot(path: str | Path) -> list[LabelledSeries]:
    """Load a TON_IoT telemetry CSV or every ``*.csv(.gz)`` under a folder (segment = device)."""
    out = []
    for f in iter_files(path, ("*.csv", "*.csv.gz")):
        device = _device(f)
        out.append(parse_ton_iot_text(read_text(f), name=f"ton_iot/{device}", device=device))
    return out


TRAIN_FRACTION = 0.5


def ton_iot_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """Time-ordered benign split, one unit per device: ``train`` = the earliest half of the benign
    rows, ``test`` = every other row (later benign plus all attacks), in time order.

    PLUMBING ONLY: both halves carry ``meta["signal"] = "none"``; a detection score above chance
    on these files points to a leak, not to a working detector.
    """
    units: list[EvalUnit] = []
    for s in series:
        if s.y is None:
            raise DataError(f"{s.name}: TON_IoT split needs labels")
        benign = np.flatnonzero(s.y == 0)
        if benign.size < 2:
            raise DataError(f"{s.name}: needs at least 2 benign rows, has {benign.size}")
        k = max(1, int(benign.size * TRAIN_FRACTION))
        test_mask = np.ones(len(s), dtype=bool)
        test_mask[benign[:k]] = False
        units.append(EvalUnit(name=s.name, train=s.rows(benign[:k]), test=s.rows(test_mask)))
    if not units:
        raise DataError("TON_IoT split: no series given")
    return units
