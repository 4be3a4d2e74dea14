"""IoT-23 loader: labelled Zeek ``conn.log.labeled`` files, one series per capture.

Zeek TSV with ``#`` header lines (``#fields`` names the columns; every ``#`` line is skipped, the
``#close`` line of some captures carries a stray label tail). IoT-23 quirk: the last three fields
(``tunnel_parents``, ``label``, ``detailed-label``) are separated by runs of spaces, not tabs;
properly tab-separated logs work too. ``-`` means unset (0 for counts, plus an ``*_unset`` flag for
``duration``). Labels are case-insensitive (``benign``/``Benign``, ``Malicious``); ``kinds`` is the
detailed label (e.g. ``C&C-FileDownload``) or ``benign``.

Features per connection (no addresses or ports, which leak the label in IoT-23): duration,
byte/packet counts, missed bytes, one-hot protocol and one-hot Zeek ``conn_state``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ztfm.data._io import iter_files, read_text
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

NUMERIC = (
    "duration",
    "orig_bytes",
    "resp_bytes",
    "missed_bytes",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
)
PROTOS = ("tcp", "udp", "icmp")
CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH",
               "SHR", "OTH")  # fmt: skip
REQUIRED = ("ts", "proto", "conn_state", *NUMERIC, "label")
COLUMNS: tuple[str, ...] = (
    *NUMERIC,
    "duration_unset",
    *(f"proto_{p}" for p in PROTOS),
    *(f"state_{s}" for s in CONN_STATES),
)
_F32_MAX = float(np.finfo(np.float32).max)


def _fields(line: str, where: str) -> list[str]:
    """``#fields`` names, handling the space-separated tail."""
    parts = line.rstrip("\r").split("\t")[1:]
    if not parts:
        raise DataError(f"{where}: empty #fields line")
    return [*parts[:-1], *parts[-1].split()]


def _num(cell: str, where: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise DataError(f"{where}: {cell[:40]!r} is not a number") from None
    if not math.isfinite(v) or abs(v) > _F32_MAX or v < 0:
        raise DataError(f"{where}: value {cell[:40]!r} is negative, non-finite or out of range")
    return v


def read_zeek_rows(
    text: str, *, name: str, required: tuple[str, ...] = REQUIRED
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """(column -> index, [(line number, cells)]) of a Zeek TSV log, IoT-23 tail quirk handled;
    ``DataError`` on any structural defect or a missing ``required`` column."""
    if not text.strip():
        raise DataError(f"{name}: empty file")
    fields: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("#fields"):
                if fields is not None:
                    raise DataError(f"{name}: line {lineno}: a second #fields line")
                fields = _fields(line, f"{name}: line {lineno}")
            continue
        if fields is None:
            raise DataError(f"{name}: line {lineno}: data before the #fields header (not Zeek)")
        cells = line.split("\t")
        if len(cells) == len(fields) - 2:  # IoT-23: last three fields joined by spaces
            tail = cells[-1].split()
            if len(tail) != 3:
                raise DataError(f"{name}: line {lineno}: cannot split the label tail {cells[-1]!r}")
            cells = [*cells[:-1], *tail]
        if len(cells) != len(fields):
            raise DataError(f"{name}: line {lineno}: {len(cells)} fields, expected {len(fields)}")
        rows.append((lineno, cells))
    if fields is None:
        raise DataError(f"{name}: no #fields header (not a Zeek log)")
    missing = [c for c in required if c not in fields]
    if missing:
        raise DataError(f"{name}: missing column {missing[0]!r}")
    if not rows:
        raise DataError(f"{name}: no data rows")
    return {c: i for i, c in enumerate(fields)}, rows


def row_label(cells: list[str], idx: dict[str, int], where: str) -> tuple[int, str]:
    """(y, kind) of one labelled row: Benign -> (0, "benign"), Malicious -> (1, detail)."""
    label = cells[idx["label"]].lower()
    if label == "benign":
        return 0, "benign"
    if label == "malicious":
        i_detail = idx.get("detailed-label")
        detail = cells[i_detail] if i_detail is not None else "-"
        return 1, (detail if detail != "-" else "malicious")
    raise DataError(f"{where}: label must be Benign or Malicious, got {label[:20]!r}")


def parse_conn_log(text: str, *, name: str, segment: str) -> LabelledSeries:
    """Parse one labelled Zeek conn log; ``DataError`` on any defect."""
    idx, rows = read_zeek_rows(text, name=name)
    n = len(rows)
    x = np.zeros((n, len(COLUMNS)), dtype=np.float64)
    t = np.empty(n, dtype=np.float64)
    y = np.empty(n, dtype=np.int8)
    kinds = np.empty(n, dtype=object)
    proto_col = {p: len(NUMERIC) + 1 + k for k, p in enumerate(PROTOS)}
    state_col = {s: len(NUMERIC) + 1 + len(PROTOS) + k for k, s in enumerate(CONN_STATES)}
    for r, (lineno, cells) in enumerate(rows):
        where = f"{name}: line {lineno}"
        t[r] = _num(cells[idx["ts"]], f"{where} column 'ts'")
        for j, c in enumerate(NUMERIC):
            cell = cells[idx[c]]
            if cell == "-":
                if c == "duration":
                    x[r, len(NUMERIC)] = 1.0
                continue
            x[r, j] = _num(cell, f"{where} column {c!r}")
        proto = cells[idx["proto"]].lower()
        if proto in proto_col:
            x[r, proto_col[proto]] = 1.0
        state = cells[idx["conn_state"]]
        if state not in state_col and state != "-":
            raise DataError(f"{where}: unknown conn_state {state[:20]!r}")
        if state in state_col:
            x[r, state_col[state]] = 1.0
        y[r], kinds[r] = row_label(cells, idx, where)
    order = np.argsort(t, kind="stable")
    return LabelledSeries(
        name=name,
        x=x[order].astype(np.float32),
        columns=COLUMNS,
        y=y[order],
        kinds=kinds[order],
        t=t[order],
        segment=segment,
        meta={"format": "iot23", "capture": segment},
    )


def load_iot23(path: str | Path) -> list[LabelledSeries]:
    """Load a labelled conn log or every ``*conn.log.labeled(.gz)`` under a folder.

    The series is named after the capture folder (e.g. ``CTU-IoT-Malware-Capture-42-1``), which is
    also its segment (one capture = one device).
    """
    out = []
    for f in iter_files(path, ("*.labeled", "*.labeled.gz", "*conn.log", "*conn.log.gz")):
        capture = (
            f.parent.name if f.parent.name not in ("", "bro", "zeek") else f.parent.parent.name
        )
        out.append(parse_conn_log(read_text(f), name=f"iot23/{capture}", segment=capture))
    return out


TRAIN_FRACTION = 1.0 / 3.0


def iot23_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """One unit per capture (device): ``train`` = the benign rows among the earliest third of its
    connections (by start time), ``test`` = every other row, in time order.

    Malicious rows inside the first third go to ``test`` (in capture 42-1 all 6 are in the first
    minute), so the detector is fitted on early benign traffic and scored on the rest. A capture
    without attacks (the Hue honeypot) gives a false-alarm-only unit.
    """
    units: list[EvalUnit] = []
    for s in series:
        if s.y is None:
            raise DataError(f"{s.name}: IoT-23 split needs labels")
        cut = max(1, int(len(s) * TRAIN_FRACTION))
        train_mask = np.zeros(len(s), dtype=bool)
        train_mask[:cut] = s.y[:cut] == 0
        if not train_mask.any():
            raise DataError(f"{s.name}: no benign rows in the first third to train on")
        if train_mask.all():
            raise DataError(f"{s.name}: nothing left to test")
        units.append(EvalUnit(name=s.name, train=s.rows(train_mask), test=s.rows(~train_mask)))
    if not units:
        raise DataError("IoT-23 split: no series given")
    return units
