"""N-BaIoT loader (Meidan et al. 2018): 115 Kitsune/AfterImage features per packet window.

Accepts the bundled sample (one CSV with a ``Normal`` column, 1 = benign) or a user's copy of the
full UCI set, where each file holds one device's traffic of one kind and has no label column:
``<n>.benign.csv`` / ``<n>.gafgyt.combo.csv`` / ``<n>.mirai.udp.csv`` (Kaggle naming, ``n`` =
device 1-9) or ``<Device>/benign_traffic.csv`` / ``<Device>/gafgyt_attacks/combo.csv`` (UCI
archive layout). One ``LabelledSeries`` per device: benign rows first (file order), then the
attack files in sorted order; ``kinds`` names the attack (``gafgyt.combo``, ``mirai.syn``...).

The 10 ``HH_jit_*_mean`` / ``HH_jit_*_variance`` columns are dropped (they hold raw capture
timestamps in the published files, so a detector would learn the capture time), leaving 105.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ztfm.data._csv import header_cells, numeric_matrix, split_lines
from ztfm.data._io import iter_files, read_text
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

LAMBDAS = ("L5", "L3", "L1", "L0.1", "L0.01")
_1D = ("weight", "mean", "variance")
_2D = ("weight", "mean", "std", "magnitude", "radius", "covariance", "pcc")
ALL_FEATURES: tuple[str, ...] = tuple(
    f"{prefix}_{lam}_{stat}"
    for prefix, stats in (("MI_dir", _1D), ("H", _1D), ("HH", _2D), ("HH_jit", _1D), ("HpHp", _2D))
    for lam in LAMBDAS
    for stat in stats
)
DROPPED: tuple[str, ...] = tuple(
    f"HH_jit_{lam}_{stat}" for lam in LAMBDAS for stat in ("mean", "variance")
)
FEATURES: tuple[str, ...] = tuple(c for c in ALL_FEATURES if c not in DROPPED)
LABEL = "Normal"

#: Device numbering of the Kaggle copy of N-BaIoT (file prefix ``<n>.``).
DEVICES: dict[str, str] = {
    "1": "Danmini_Doorbell",
    "2": "Ecobee_Thermostat",
    "3": "Ennio_Doorbell",
    "4": "Philips_B120N10_Baby_Monitor",
    "5": "Provision_PT_737E_Security_Camera",
    "6": "Provision_PT_838_Security_Camera",
    "7": "Samsung_SNH_1011_N_Webcam",
    "8": "SimpleHome_XCS7_1002_WHT_Security_Camera",
    "9": "SimpleHome_XCS7_1003_WHT_Security_Camera",
}
ATTACKS = {
    "gafgyt": ("combo", "junk", "scan", "tcp", "udp"),
    "mirai": ("ack", "scan", "syn", "udp", "udpplain"),
}
_KAGGLE = re.compile(r"^(\d)\.(benign|gafgyt\.\w+|mirai\.\w+)$")


def _file_identity(path: Path, has_label: bool) -> tuple[str, str | None]:
    """(device, kind) of one file; kind None means "labelled by the Normal column"."""
    stem = path.name.removesuffix(".gz").removesuffix(".csv")
    if has_label:
        return stem, None
    m = _KAGGLE.match(stem)
    if m:
        kind = m.group(2)
        return DEVICES.get(m.group(1), f"device{m.group(1)}"), kind
    if stem == "benign_traffic":
        return path.parent.name, "benign"
    family = path.parent.name.removesuffix("_attacks")
    if family in ATTACKS and stem in ATTACKS[family]:
        return path.parent.parent.name, f"{family}.{stem}"
    raise DataError(
        f"{path}: no {LABEL!r} column, and the file name does not say benign or which attack "
        f"(expected e.g. '1.benign.csv', '1.mirai.syn.csv' or '<device>/benign_traffic.csv')"
    )


def _parse(path: Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(device, x[105], y, kinds) of one file."""
    name = str(path)
    head, body = split_lines(read_text(path), name)
    header = header_cells(head)
    if len(set(header)) != len(header):
        raise DataError(f"{name}: duplicate column names in header")
    missing = [c for c in ALL_FEATURES if c not in header]
    if missing:
        raise DataError(f"{name}: missing column {missing[0]!r} (not an N-BaIoT feature file)")
    extra = [c for c in header if c not in ALL_FEATURES and c != LABEL]
    if extra:
        raise DataError(f"{name}: unexpected column {extra[0]!r}")
    has_label = LABEL in header
    device, kind = _file_identity(path, has_label)
    m = numeric_matrix(body, name, header)
    x = m[:, [header.index(c) for c in FEATURES]]
    n = len(x)
    if has_label:
        normal = m[:, header.index(LABEL)]
        bad = np.flatnonzero((normal != 0) & (normal != 1))
        if bad.size:
            raise DataError(f"{name}: line {bad[0] + 2}: {LABEL!r} must be 0 or 1")
        y = (normal == 0).astype(np.int8)
        kinds = np.where(y == 1, "attack", "benign").astype(object)
    else:
        assert kind is not None
        y = np.full(n, 0 if kind == "benign" else 1, dtype=np.int8)
        kinds = np.full(n, kind, dtype=object)
    return device, x, y, kinds


def load_nbaiot(path: str | Path) -> list[LabelledSeries]:
    """Load an N-BaIoT CSV or a folder of them: one series per device (segment = device)."""
    per_device: dict[str, list[tuple[int, str, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for f in iter_files(path, ("*.csv", "*.csv.gz")):
        device, x, y, kinds = _parse(f)
        order = 0 if (kinds.size and kinds[0] == "benign") else 1
        per_device.setdefault(device, []).append((order, str(f), x, y, kinds))
    out: list[LabelledSeries] = []
    for device, parts in sorted(per_device.items()):
        parts.sort(key=lambda p: (p[0], p[1]))
        out.append(
            LabelledSeries(
                name=f"nbaiot/{device}",
                x=np.concatenate([p[2] for p in parts]).astype(np.float32),
                columns=FEATURES,
                y=np.concatenate([p[3] for p in parts]),
                kinds=np.concatenate([p[4] for p in parts]),
                segment=device,
                meta={"format": "nbaiot", "files": str(len(parts)), "dropped": "HH_jit mean/var"},
            )
        )
    return out


def nbaiot_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """Meidan et al.'s protocol, one unit per device.

    The device's benign rows, in time (file) order, are cut into thirds: train, threshold, test.
    ``train`` holds the first two thirds; ``train.meta["threshold_start"]`` is the row where the
    threshold third begins (fit on rows before it, choose the threshold on rows from it on).
    ``test`` holds the last benign third plus every attack row, in file order.
    """
    units: list[EvalUnit] = []
    for s in series:
        if s.y is None:
            raise DataError(f"{s.name}: N-BaIoT split needs labels")
        benign = np.flatnonzero(s.y == 0)
        if benign.size < 3:
            raise DataError(f"{s.name}: needs at least 3 benign rows, has {benign.size}")
        third = benign.size // 3
        train_idx = benign[: 2 * third]
        test_mask = np.ones(len(s), dtype=bool)
        test_mask[train_idx] = False
        train = s.rows(train_idx)
        train.meta["threshold_start"] = str(third)
        units.append(EvalUnit(name=s.name, train=train, test=s.rows(test_mask)))
    if not units:
        raise DataError("N-BaIoT split: no series given")
    return units
