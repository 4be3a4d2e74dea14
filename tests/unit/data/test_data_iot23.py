"""IoT-23 Zeek conn-log loader: the space-separated tail, '#' lines, '-', label case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datahelp import corrupt_gzip, expect_error, truncated_gzip, write

from ztfm.data.bundled import bundled_path
from ztfm.data.iot23 import COLUMNS, iot23_split, load_iot23

FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
    "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
]  # fmt: skip
HEAD = [
    "#separator \\x09",
    "#path\tconn",
    "#fields\t" + "\t".join(FIELDS) + "\ttunnel_parents   label   detailed-label",
    "#types\t" + "\t".join(["x"] * len(FIELDS)) + "\tset[string]   string   string",
]


def _row(ts: str = "1.5", duration: str = "0.25", orig_bytes: str = "10", state: str = "SF",
         tail: str = "-   Benign   -") -> str:  # fmt: skip
    cells = [ts, "Cabc", "10.0.0.1", "1234", "10.0.0.2", "80", "tcp", "-", duration, orig_bytes,
             "20", state, "-", "-", "0", "ShAD", "3", "130", "2", "100"]  # fmt: skip
    return "\t".join(cells) + "\t" + tail


def _log(rows: list[str], close: str = "#close\t2019-01-01   benign   -") -> str:
    return "\r\n".join([*HEAD, *rows, close]) + "\r\n"


def test_bundled_counts() -> None:
    series = {s.segment: s for s in load_iot23(bundled_path("iot23"))}
    hp = series["CTU-Honeypot-Capture-4-1"]
    mal = series["CTU-IoT-Malware-Capture-42-1"]
    assert len(hp) == 452 and hp.y is not None and int(hp.y.sum()) == 0
    assert len(mal) == 4426 and mal.y is not None and int(mal.y.sum()) == 6
    assert set(mal.kinds[mal.y == 1]) == {"FileDownload", "C&C-FileDownload"}  # type: ignore[index]
    assert hp.columns == COLUMNS and mal.t is not None and (np.diff(mal.t) >= 0).all()


def test_quirky_and_tab_separated_tails_agree(tmp_path: Path) -> None:
    a = load_iot23(write(tmp_path / "a" / "conn.log.labeled", _log([_row()])))[0]
    tab_head = [h.replace("   ", "\t") for h in HEAD]
    text = "\n".join([*tab_head, _row(tail="-\tbenign\t-")]) + "\n"
    b = load_iot23(write(tmp_path / "b" / "conn.log.labeled", text))[0]
    np.testing.assert_array_equal(a.x, b.x)
    assert a.y is not None and b.y is not None and list(a.y) == list(b.y) == [0]


def test_unset_and_one_hot(tmp_path: Path) -> None:
    (s,) = load_iot23(write(tmp_path / "c" / "conn.log.labeled", _log([_row(duration="-")])))
    row = dict(zip(s.columns, s.x[0], strict=True))
    assert row["duration"] == 0 and row["duration_unset"] == 1
    assert row["proto_tcp"] == 1 and row["state_SF"] == 1 and row["state_S0"] == 0
    assert row["orig_bytes"] == 10


def test_split_per_capture() -> None:
    units = {u.name: u for u in iot23_split(load_iot23(bundled_path("iot23")))}
    u = units["iot23/CTU-IoT-Malware-Capture-42-1"]
    assert u.train.y is not None and (u.train.y == 0).all()
    assert u.test.y is not None and int(u.test.y.sum()) == 6
    assert len(u.train) + len(u.test) == 4426


# --- negative ----------------------------------------------------------------------------------
def test_no_fields_header(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", "a\tb\tc\n")
    expect_error(lambda: load_iot23(p), "before the #fields header")


def test_only_comments(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", "#separator x\n#path conn\n")
    expect_error(lambda: load_iot23(p), "no #fields header")


def test_missing_label_column(tmp_path: Path) -> None:
    head = [h for h in HEAD if not h.startswith("#fields")] + ["#fields\t" + "\t".join(FIELDS)]
    p = write(tmp_path / "conn.log", "\n".join([*head, "\t".join(_row().split("\t")[:20])]))
    expect_error(lambda: load_iot23(p), "missing column 'label'")


def test_non_numeric(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", _log([_row(), _row(orig_bytes="lots")]))
    expect_error(lambda: load_iot23(p), "line 6 column 'orig_bytes': 'lots' is not a number")


@pytest.mark.parametrize("bad", ["nan", "inf", "-5"])
def test_non_finite_or_negative(tmp_path: Path, bad: str) -> None:
    p = write(tmp_path / "conn.log", _log([_row(duration=bad)]))
    expect_error(lambda: load_iot23(p), "negative, non-finite")


def test_unknown_label(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", _log([_row(tail="-   Suspicious   -")]))
    expect_error(lambda: load_iot23(p), "label must be Benign or Malicious")


def test_unknown_conn_state(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", _log([_row(state="XX")]))
    expect_error(lambda: load_iot23(p), "unknown conn_state")


def test_wrong_field_count(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", _log(["\t".join(_row().split("\t")[3:])]))
    expect_error(lambda: load_iot23(p), "fields, expected")


def test_bad_tail(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", _log([_row(tail="-   Benign")]))
    expect_error(lambda: load_iot23(p), "label tail")


def test_empty_and_header_only(tmp_path: Path) -> None:
    expect_error(lambda: load_iot23(write(tmp_path / "e" / "conn.log", "")), "empty")
    expect_error(lambda: load_iot23(write(tmp_path / "h" / "conn.log", _log([]))), "no data rows")


def test_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    data = _log([_row()] * 200).encode()
    p = write(tmp_path / "c" / "conn.log.labeled.gz", corrupt_gzip(data))
    expect_error(lambda: load_iot23(p), "gzip")
    p = write(tmp_path / "t" / "conn.log.labeled.gz", truncated_gzip(data))
    expect_error(lambda: load_iot23(p), "gzip")


def test_two_fields_headers(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", _log([HEAD[2], _row()]))
    expect_error(lambda: load_iot23(p), "second #fields")


def test_split_refuses_all_malicious_start(tmp_path: Path) -> None:
    rows = [_row(ts=str(i), tail="-   Malicious   Attack") for i in range(3)]
    (s,) = load_iot23(write(tmp_path / "m" / "conn.log", _log(rows)))
    expect_error(lambda: iot23_split([s]), "no benign rows in the first third")
