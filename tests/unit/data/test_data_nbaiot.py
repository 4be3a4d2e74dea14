"""N-BaIoT loader: schema checks, both file layouts, Meidan split, one test per malformed input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from datahelp import corrupt_gzip, expect_error, gz, truncated_gzip, write

from ztfm.data.bundled import bundled_path
from ztfm.data.nbaiot import ALL_FEATURES, DROPPED, FEATURES, load_nbaiot, nbaiot_split

SAMPLE = bundled_path("nbaiot/Danmini_Doorbell.csv.gz")


@pytest.fixture(scope="module")
def sample_lines() -> list[str]:
    return gzip.decompress(SAMPLE.read_bytes()).decode().splitlines()


def _csv(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n"


def _small(sample_lines: list[str], n: int = 6) -> tuple[list[str], list[list[str]]]:
    header = sample_lines[0].split(",")
    rows = [ln.split(",") for ln in sample_lines[1 : n + 1]]
    return header, rows


# --- positive ------------------------------------------------------------------------------------
def test_bundled_sample_schema() -> None:
    (s,) = load_nbaiot(bundled_path("nbaiot"))
    assert s.x.shape == (3300, 105)
    assert s.columns == FEATURES
    assert not set(DROPPED) & set(s.columns)
    assert len(DROPPED) == 10 and len(ALL_FEATURES) == 115
    assert s.y is not None and int(s.y.sum()) == 250
    assert (s.y[:3050] == 0).all() and (s.y[3050:] == 1).all()
    assert s.segment == "Danmini_Doorbell"


def test_meidan_split_thirds() -> None:
    (unit,) = nbaiot_split(load_nbaiot(SAMPLE))
    assert unit.train.y is not None and unit.test.y is not None
    assert (unit.train.y == 0).all()
    assert len(unit.train) == 2 * (3050 // 3)
    assert unit.train.meta["threshold_start"] == str(3050 // 3)
    assert int(unit.test.y.sum()) == 250  # every attack row is in test
    assert len(unit.train) + len(unit.test) == 3300
    # time order: training rows come before test benign rows in the file
    np.testing.assert_array_equal(unit.test.x[0], load_nbaiot(SAMPLE)[0].x[len(unit.train)])


def test_full_uci_kaggle_layout(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    feat_header = header[:-1]
    write(tmp_path / "1.benign.csv", _csv(feat_header, [r[:-1] for r in rows[:4]]))
    write(
        tmp_path / "1.mirai.syn.csv.gz", gz(_csv(feat_header, [r[:-1] for r in rows[4:]]).encode())
    )
    write(tmp_path / "2.gafgyt.combo.csv", _csv(feat_header, [r[:-1] for r in rows[:3]]))
    series = {s.segment: s for s in load_nbaiot(tmp_path)}
    assert set(series) == {"Danmini_Doorbell", "Ecobee_Thermostat"}
    d = series["Danmini_Doorbell"]
    assert list(d.kinds) == ["benign"] * 4 + ["mirai.syn"] * 2  # type: ignore[arg-type]
    assert d.y is not None and list(d.y) == [0, 0, 0, 0, 1, 1]
    assert series["Ecobee_Thermostat"].y is not None
    assert (series["Ecobee_Thermostat"].y == 1).all()


def test_full_uci_archive_layout(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    feat_header = header[:-1]
    write(tmp_path / "Dev" / "gafgyt_attacks" / "combo.csv", _csv(feat_header, [rows[0][:-1]]))
    write(tmp_path / "Dev" / "benign_traffic.csv", _csv(feat_header, [r[:-1] for r in rows[1:3]]))
    (s,) = load_nbaiot(tmp_path)
    assert s.segment == "Dev"
    assert list(s.kinds) == ["benign", "benign", "gafgyt.combo"]  # type: ignore[arg-type]


# --- negative: one per malformed-input kind -------------------------------------------------------
def test_missing_column(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    p = write(tmp_path / "x.csv", _csv(header[1:], [r[1:] for r in rows]))
    expect_error(lambda: load_nbaiot(p), "missing column 'MI_dir_L5_weight'")


def test_non_numeric_value(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    rows[2][5] = "abc"
    p = write(tmp_path / "x.csv", _csv(header, rows))
    expect_error(lambda: load_nbaiot(p), f"line 4 column '{header[5]}'")


def test_empty_cell(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    rows[0][0] = ""
    p = write(tmp_path / "x.csv", _csv(header, rows))
    expect_error(lambda: load_nbaiot(p), "is not a number")


def test_empty_file(tmp_path: Path) -> None:
    p = write(tmp_path / "x.csv", b"")
    expect_error(lambda: load_nbaiot(p), "empty")


def test_empty_gzip(tmp_path: Path) -> None:
    p = write(tmp_path / "x.csv.gz", gz(b""))
    expect_error(lambda: load_nbaiot(p), "empty")


def test_header_only(tmp_path: Path, sample_lines: list[str]) -> None:
    p = write(tmp_path / "x.csv", sample_lines[0] + "\n")
    expect_error(lambda: load_nbaiot(p), "no data rows")


def test_corrupt_gzip(tmp_path: Path, sample_lines: list[str]) -> None:
    p = write(tmp_path / "x.csv.gz", corrupt_gzip("\n".join(sample_lines[:50]).encode()))
    expect_error(lambda: load_nbaiot(p), "gzip")


def test_truncated_gzip(tmp_path: Path, sample_lines: list[str]) -> None:
    p = write(tmp_path / "x.csv.gz", truncated_gzip("\n".join(sample_lines[:50]).encode()))
    expect_error(lambda: load_nbaiot(p), "gzip")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN", "1e400"])
def test_non_finite(tmp_path: Path, sample_lines: list[str], bad: str) -> None:
    header, rows = _small(sample_lines)
    rows[1][7] = bad
    p = write(tmp_path / "x.csv", _csv(header, rows))
    expect_error(lambda: load_nbaiot(p), "non-finite")


def test_short_row(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    rows[3] = rows[3][:-2]
    p = write(tmp_path / "x.csv", _csv(header, rows))
    expect_error(lambda: load_nbaiot(p), "wrong number of fields")


def test_label_not_binary(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    rows[0][-1] = "2"
    p = write(tmp_path / "x.csv", _csv(header, rows))
    expect_error(lambda: load_nbaiot(p), "'Normal' must be 0 or 1")


def test_unlabelled_file_with_unknown_name(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    p = write(tmp_path / "mystery.csv", _csv(header[:-1], [r[:-1] for r in rows]))
    expect_error(lambda: load_nbaiot(p), "does not say benign")


def test_duplicate_and_extra_columns(tmp_path: Path, sample_lines: list[str]) -> None:
    header, rows = _small(sample_lines)
    p = write(tmp_path / "dup.csv", _csv([*header, header[0]], [[*r, r[0]] for r in rows]))
    expect_error(lambda: load_nbaiot(p), "duplicate")
    p = write(tmp_path / "extra.csv", _csv([*header, "src_ip"], [[*r, "1"] for r in rows]))
    expect_error(lambda: load_nbaiot(p), "unexpected column 'src_ip'")


def test_missing_path(tmp_path: Path) -> None:
    expect_error(lambda: load_nbaiot(tmp_path / "nope.csv"), "no such")


def test_split_needs_benign(sample_lines: list[str]) -> None:
    (s,) = load_nbaiot(SAMPLE)
    attacks = s.rows(s.y == 1)  # type: ignore[operator]
    expect_error(lambda: nbaiot_split([attacks]), "at least 3 benign rows")
    expect_error(lambda: nbaiot_split([]), "no series")
