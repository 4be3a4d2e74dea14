"""SKAB loader: every kind of malformed input is refused with one clear DataError line."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ztfm.data.bundled import bundled_path
from ztfm.data.skab import (
    SENSORS,
    TRAIN_ROWS,
    load_skab,
    load_skab_file,
    parse_skab_text,
    skab_split,
)
from ztfm.errors import DataError

HEADER = "datetime;" + ";".join(SENSORS) + ";anomaly;changepoint"


def _row(i: int, anomaly: int = 0, value: str = "1.5") -> str:
    vals = ";".join([value] * len(SENSORS))
    return f"2020-03-09 10:{i // 60:02d}:{i % 60:02d};{vals};{anomaly};0"


def _text(n: int = 5, header: str = HEADER) -> str:
    return "\n".join([header, *(_row(i) for i in range(n))]) + "\n"


def _one_line_error(text: str) -> str:
    with pytest.raises(DataError) as exc:
        parse_skab_text(text, name="t")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("t")
    return msg


# --- negative: schema and values ------------------------------------------------------------
def test_empty_text() -> None:
    assert "empty" in _one_line_error("")


def test_header_only() -> None:
    assert "no data rows" in _one_line_error(HEADER + "\n")


def test_comma_separated_is_not_skab() -> None:
    assert "separator" in _one_line_error(HEADER.replace(";", ",") + "\n")


@pytest.mark.parametrize("column", ["datetime", *SENSORS])
def test_missing_column(column: str) -> None:
    header = ";".join(c for c in HEADER.split(";") if c != column)
    text = "\n".join([header, "x"])
    assert repr(column) in _one_line_error(text)


def test_anomaly_without_changepoint() -> None:
    header = HEADER.removesuffix(";changepoint")
    assert "changepoint" in _one_line_error(header + "\n" + _row(0).rsplit(";", 1)[0])


def test_changepoint_without_anomaly() -> None:
    header = HEADER.replace(";anomaly", "")
    assert "'anomaly'" in _one_line_error(header + "\n" + _row(0).replace(";0;0", ";0"))


def test_duplicate_column() -> None:
    assert "duplicate" in _one_line_error(HEADER + ";Current\n" + _row(0) + ";1")


def test_wrong_type_in_sensor() -> None:
    text = _text().replace(_row(2), _row(2, value="abc"))
    msg = _one_line_error(text)
    assert "line 4" in msg and "not a number" in msg


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_sensor(bad: str) -> None:
    msg = _one_line_error(_text().replace(_row(1), _row(1, value=bad)))
    assert "non-finite" in msg


def test_empty_cell() -> None:
    assert "empty value" in _one_line_error(_text().replace(_row(1), _row(1, value="")))


def test_too_few_fields() -> None:
    text = _text().replace(_row(3), _row(3).rsplit(";", 1)[0])
    assert "fields" in _one_line_error(text)


def test_label_not_binary() -> None:
    assert "0 or 1" in _one_line_error(_text().replace(_row(1), _row(1, anomaly=2)))


def test_bad_datetime() -> None:
    text = _text().replace("2020-03-09 10:00:01", "yesterday")
    assert "datetime" in _one_line_error(text)


def test_time_going_backwards() -> None:
    rows = [_row(3), _row(1)]
    assert "backwards" in _one_line_error("\n".join([HEADER, *rows]))


def test_value_beyond_float32() -> None:
    assert "float32" in _one_line_error(_text().replace(_row(1), _row(1, value="1e300")))


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv.gz"
    p.write_bytes(gzip.compress(_text().encode())[:30])
    with pytest.raises(DataError, match="gzip"):
        load_skab_file(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_skab_file(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such"):
        load_skab_file(tmp_path / "nope.csv")


def test_folder_without_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no files"):
        load_skab(tmp_path)


def test_split_refuses_short_file() -> None:
    s = parse_skab_text(_text(TRAIN_ROWS), name="short")
    with pytest.raises(DataError, match="needs more than"):
        skab_split([s])


def test_split_refuses_unlabelled() -> None:
    s = parse_skab_text(
        _text(TRAIN_ROWS + 5, header=HEADER.removesuffix(";anomaly;changepoint")).replace(
            ";0;0\n", "\n"
        ),
        name="free",
    )
    with pytest.raises(DataError, match="no anomaly labels"):
        skab_split([s])


def test_split_refuses_nothing() -> None:
    with pytest.raises(DataError, match="no SKAB files"):
        skab_split([])


# --- positive -------------------------------------------------------------------------------
def test_parse_small_text() -> None:
    s = parse_skab_text(_text(4), name="t")
    assert s.x.shape == (4, 8) and s.x.dtype == np.float32
    assert s.y is not None and s.y.dtype == np.int8 and not s.y.any()
    assert s.t is not None and np.all(np.diff(s.t) == 1.0)


def test_real_file_and_split() -> None:
    s = load_skab_file(bundled_path("skab/valve1/0.csv.gz"))
    assert s.name == "valve1/0" and len(s) == 1147 and s.columns == SENSORS
    assert s.y is not None and int(s.y.sum()) == 401
    assert s.meta["changepoints"] == "573,630,917,974"
    (unit,) = skab_split([s])
    assert len(unit.train) == TRAIN_ROWS and len(unit.test) == len(s)
    assert np.array_equal(unit.train.x, s.x[:TRAIN_ROWS])
    assert unit.test.meta["train_rows"] == str(TRAIN_ROWS)


def test_anomaly_free_file_has_no_labels() -> None:
    (s,) = load_skab(bundled_path("skab/anomaly-free"))
    assert s.meta["labelled"] == "no" and len(s) == 9405


def test_split_skips_unlabelled_beside_labelled() -> None:
    (free,) = load_skab(bundled_path("skab/anomaly-free"))
    s = load_skab_file(bundled_path("skab/valve1/0.csv.gz"))
    units = skab_split([free, s])
    assert [u.name for u in units] == ["valve1/0"]
