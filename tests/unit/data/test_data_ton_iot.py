"""TON_IoT telemetry loader: cleaning before encoding, no time features, malformed inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datahelp import corrupt_gzip, expect_error, gz, truncated_gzip, write

from ztfm.data.bundled import bundled_path
from ztfm.data.ton_iot import load_ton_iot, ton_iot_split

BOM = "\ufeff"
FRIDGE_HEAD = "ts,date,time,fridge_temperature,temp_condition,label,type"


def _fridge(rows: list[str]) -> str:
    return BOM + "\r\n".join([FRIDGE_HEAD, *rows]) + "\r\n"


GOOD_ROWS = [
    "1554000000,31-Mar-19, 10:00:00 ,5.5,high  ,0,normal",
    "1554000001,31-Mar-19, 10:00:01 ,6,low  ,0,normal",
    "1556000000,23-Apr-19, 12:00:00 ,7.25,high,1,ddos",
    "1556000005,23-Apr-19, 12:00:05 ,3,low,1,password",
]


def test_bundled_devices() -> None:
    series = {s.segment: s for s in load_ton_iot(bundled_path("ton_iot"))}
    assert set(series) == {"fridge", "thermostat", "garage_door", "motion_light", "gps_tracker"}
    for s in series.values():
        assert s.meta["signal"] == "none"
        assert not {"ts", "date", "time", "label", "type"} & set(s.columns)
        assert s.t is not None and (np.diff(s.t) >= 0).all()
        assert s.y is not None and s.kinds is not None
        assert set(s.kinds[s.y == 0]) == {"benign"}
    assert set(series["garage_door"].kinds) == {  # type: ignore[arg-type]
        "benign",
        "backdoor",
        "ddos",
        "injection",
        "password",
        "ransomware",
        "scanning",
        "xss",
    }


def test_formatting_leak_is_normalised(tmp_path: Path) -> None:
    (s,) = load_ton_iot(write(tmp_path / "Train_Test_IoT_Fridge.csv", _fridge(GOOD_ROWS)))
    assert s.columns == ("fridge_temperature", "temp_condition")
    # 'high  ' (normal) and 'high' (attack) must encode to the same value
    np.testing.assert_array_equal(s.x[:, 1], [1, 0, 1, 0])
    assert s.segment == "fridge"
    assert list(s.y) == [0, 0, 1, 1]  # type: ignore[arg-type]


def test_garage_true_false_and_digits_agree(tmp_path: Path) -> None:
    head = "ts,date,time,door_state,sphone_signal,label,type"
    rows = ["1,d,t,closed,false  ,0,normal", "2,d,t,open,true  ,0,normal",
            "3,d,t, closed ,0,1,xss", "4,d,t,open,1,1,xss"]  # fmt: skip
    (s,) = load_ton_iot(write(tmp_path / "IoT_Garage_Door.csv", "\n".join([head, *rows])))
    np.testing.assert_array_equal(s.x, [[0, 0], [1, 1], [0, 0], [1, 1]])


def test_rows_sorted_by_ts(tmp_path: Path) -> None:
    rows = [GOOD_ROWS[2], GOOD_ROWS[0], GOOD_ROWS[1]]
    (s,) = load_ton_iot(write(tmp_path / "f.csv", _fridge(rows)))
    assert list(s.t) == sorted(s.t)  # type: ignore[arg-type]


def test_split_time_ordered_benign() -> None:
    series = load_ton_iot(bundled_path("ton_iot/Train_Test_IoT_Fridge.csv.gz"))
    (u,) = ton_iot_split(series)
    assert u.train.y is not None and (u.train.y == 0).all()
    assert u.train.t is not None and u.test.t is not None
    assert u.test.y is not None and int(u.test.y.sum()) == int(series[0].y.sum())  # type: ignore[union-attr]
    later_benign = u.test.t[u.test.y == 0]
    assert u.train.t.max() <= later_benign.min()
    assert u.train.meta["signal"] == "none" and u.test.meta["signal"] == "none"


# --- negative ----------------------------------------------------------------------------------
def test_missing_column(tmp_path: Path) -> None:
    text = "ts,date,time,fridge_temperature,temp_condition,type\n1,d,t,5,high,normal\n"
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", text)), "missing column 'label'")


def test_non_numeric(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1556000009,d,t,warm,high,1,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))),
                 "column 'fridge_temperature': 'warm' is neither")  # fmt: skip


def test_bad_ts(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "yesterday,d,t,5,high,1,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "ts 'yesterday'")


def test_empty_file(tmp_path: Path) -> None:
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", "")), "empty")


def test_bom_only(tmp_path: Path) -> None:
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", BOM + "\r\n")), "empty")


def test_header_only(tmp_path: Path) -> None:
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge([]))), "no data rows")


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = write(tmp_path / "f.csv.gz", corrupt_gzip(_fridge(GOOD_ROWS * 20).encode()))
    expect_error(lambda: load_ton_iot(p), "gzip")


def test_truncated_gzip(tmp_path: Path) -> None:
    p = write(tmp_path / "f.csv.gz", truncated_gzip(_fridge(GOOD_ROWS * 20).encode()))
    expect_error(lambda: load_ton_iot(p), "gzip")


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "1e999"])
def test_non_finite(tmp_path: Path, bad: str) -> None:
    rows = [*GOOD_ROWS, f"1556000009,d,t,{bad},high,1,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "non-finite")


def test_label_not_binary(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1556000009,d,t,5,high,yes,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "label must be")


def test_unknown_type(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1556000009,d,t,5,high,1,alien"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "unknown type")


def test_label_contradicts_type(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1556000009,d,t,5,high,0,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "contradicts")


def test_wrong_field_count(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1556000009,d,t,5,1,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "6 fields")


def test_empty_value(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1556000009,d,t,  ,high,1,ddos"]
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", _fridge(rows))), "empty value")


def test_no_device_columns(tmp_path: Path) -> None:
    text = "ts,date,time,label,type\n1,d,t,0,normal\n"
    expect_error(lambda: load_ton_iot(write(tmp_path / "f.csv", text)), "no device columns")


def test_not_utf8(tmp_path: Path) -> None:
    p = write(tmp_path / "f.csv", FRIDGE_HEAD.encode() + b"\n1,d,t,\xff\xfe,high,0,normal\n")
    expect_error(lambda: load_ton_iot(p), "utf-8")


def test_split_needs_benign(tmp_path: Path) -> None:
    (s,) = load_ton_iot(write(tmp_path / "f.csv", _fridge(GOOD_ROWS[2:])))
    expect_error(lambda: ton_iot_split([s]), "at least 2 benign")


def test_gz_roundtrip_equals_plain(tmp_path: Path) -> None:
    a = load_ton_iot(write(tmp_path / "a" / "f.csv", _fridge(GOOD_ROWS)))[0]
    b = load_ton_iot(write(tmp_path / "b" / "f.csv.gz", gz(_fridge(GOOD_ROWS).encode())))[0]
    np.testing.assert_array_equal(a.x, b.x)
