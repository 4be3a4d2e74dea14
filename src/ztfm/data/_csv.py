"""Small CSV helpers shared by the loaders: header/body split and a checked numeric matrix."""

from __future__ import annotations

import io
import re

import numpy as np

from ztfm.errors import DataError

MAX_ROWS = 20_000_000
_F32_MAX = float(np.finfo(np.float32).max)
_ROW_COL = re.compile(r"at row (\d+), column (\d+)")
_ROW = re.compile(r"at row (\d+)")


def split_lines(text: str, name: str) -> tuple[str, list[str]]:
    """(header line, non-empty body lines) with CR stripped; ``DataError`` if empty."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise DataError(f"{name}: empty file")
    if len(lines) - 1 > MAX_ROWS:
        raise DataError(f"{name}: more than {MAX_ROWS} rows")
    return lines[0], lines[1:]


def header_cells(line: str, sep: str = ",") -> list[str]:
    return [c.strip().strip('"') for c in line.split(sep)]


def numeric_matrix(body: list[str], name: str, header: list[str], sep: str = ",") -> np.ndarray:
    """Parse body lines into a finite float64 matrix (rows, len(header)); ``DataError`` naming the
    file line and column on a wrong field count, a non-number or a NaN/Inf."""
    if not body:
        raise DataError(f"{name}: no data rows")
    width = len(header)
    try:
        x = np.loadtxt(io.StringIO("\n".join(body)), delimiter=sep, dtype=np.float64, ndmin=2,
                       comments=None)  # fmt: skip
    except ValueError as exc:
        msg = str(exc)
        m = _ROW_COL.search(msg)
        if m:
            row, col = int(m.group(1)), int(m.group(2))  # numpy: row 0-based, column 1-based
            line = row + 2
            fields = body[row].split(sep) if row < len(body) else []
            cell = fields[col - 1] if 0 < col <= len(fields) else "?"
            colname = header[col - 1] if 0 < col <= width else f"#{col}"
            raise DataError(
                f"{name}: line {line} column {colname!r}: {cell.strip()[:40]!r} is not a number"
            ) from None
        m = _ROW.search(msg)
        if m:  # numpy: "the number of columns changed ... at row N" (1-based)
            raise DataError(
                f"{name}: line {int(m.group(1)) + 1}: wrong number of fields (expected {width})"
            ) from None
        raise DataError(f"{name}: unreadable CSV ({msg.splitlines()[0][:80]})") from None
    if x.shape[1] != width:
        raise DataError(f"{name}: rows have {x.shape[1]} fields but the header has {width}")
    bad = ~np.isfinite(x) | (np.abs(x) > _F32_MAX)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{name}: line {r + 2} column {header[c]!r}: non-finite or out-of-range value {x[r, c]}"
        )
    return x
