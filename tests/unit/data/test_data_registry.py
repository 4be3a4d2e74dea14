"""Format registry: content-based detection, lazy built-ins, plug-ins, standard splits; bundle."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from datahelp import expect_error, gz, write

from ztfm.data import registry
from ztfm.data.bundled import BUNDLE_ROOT, BUNDLED, available, bundled_path
from ztfm.data.pcap import load_pcap
from ztfm.data.registry import (
    detect_format,
    formats,
    get_format,
    load,
    register_format,
    standard_split,
)
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.detect.netfeatures import packet_featurizer


@pytest.fixture(autouse=True)
def _clean_registry() -> object:
    before = dict(registry._REGISTERED)
    yield
    registry._REGISTERED.clear()
    registry._REGISTERED.update(before)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("skab", "skab"),
        ("skab/valve1/3.csv.gz", "skab"),
        ("nbaiot", "nbaiot"),
        ("ton_iot", "ton_iot"),
        ("iot23", "iot23"),
        ("iot23/CTU-Honeypot-Capture-4-1/conn.log.labeled.gz", "iot23"),
        ("pcap", "pcap"),
        ("mqttset", "mqttset"),
        ("mqttset/flood/flood-test.pcap.gz", "pcap"),
    ],
)
def test_detect_bundled(name: str, fmt: str) -> None:
    assert detect_format(bundled_path(name)) == fmt


def test_detection_ignores_extensions(tmp_path: Path) -> None:
    pcap = bundled_path("mqttset/flood/flood-test.pcap.gz").read_bytes()
    assert detect_format(write(tmp_path / "looks.csv", pcap)) == "pcap"
    nb = bundled_path("nbaiot/Danmini_Doorbell.csv.gz").read_bytes()
    assert detect_format(write(tmp_path / "looks.pcap", nb)) == "nbaiot"


def test_iot23_scenario_folder_with_pcap_is_iot23(tmp_path: Path) -> None:
    shutil.copy(bundled_path("iot23/CTU-Honeypot-Capture-4-1/conn.log.labeled.gz"), tmp_path)
    shutil.copy(bundled_path("mqttset/flood/flood-test.pcap.gz"), tmp_path)
    write(tmp_path / "README.md", "# notes\n")
    assert detect_format(tmp_path) == "iot23"


def test_load_and_split_each_table_format() -> None:
    for name, fmt, n_units in (("skab/valve1", "skab", 16), ("nbaiot", "nbaiot", 1),
                               ("ton_iot", "ton_iot", 5), ("iot23", "iot23", 2)):  # fmt: skip
        series = load(bundled_path(name))
        units = standard_split(fmt, series)
        assert len(units) == n_units
        for u in units:
            assert isinstance(u, EvalUnit)
            assert u.train.y is None or (u.train.y == 0).all()
            assert u.train.columns == u.test.columns


def test_load_mqttset_with_featurizer(tmp_path: Path) -> None:
    for label in ("benign", "flood"):  # real flood captures stand in for benign ones here
        (tmp_path / label).mkdir()
        for part in ("train", "test"):
            src = bundled_path(f"mqttset/flood/flood-{part}.pcap.gz")
            shutil.copy(src, tmp_path / label / f"{label}-{part}.pcap.gz")
    series = load(tmp_path, featurize=packet_featurizer())
    assert {s.name for s in series} == {"mqttset/benign/train", "mqttset/benign/test",
                                        "mqttset/flood/train", "mqttset/flood/test"}  # fmt: skip
    (unit,) = standard_split("mqttset", series)
    assert unit.train.y is not None and (unit.train.y == 0).all() and len(unit.train) == 58
    assert unit.test.y is not None and int(unit.test.y.sum()) == 22 and len(unit.test) == 44


def test_benign_5mb_is_skipped_beside_benign(tmp_path: Path) -> None:
    src = bundled_path("mqttset/flood/flood-test.pcap.gz")
    for folder in ("benign", "benign-5mb"):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / f"{folder}-test.pcap.gz")
    series = load(tmp_path, "mqttset", featurize=packet_featurizer())
    assert [s.name for s in series] == ["mqttset/benign/test"]


def test_pcap_folder_labels_and_split(tmp_path: Path) -> None:
    (tmp_path / "benign").mkdir()
    (tmp_path / "weird").mkdir()
    shutil.copy(bundled_path("mqttset/flood/flood-train.pcap.gz"), tmp_path / "benign" / "a.gz")
    series = load(tmp_path / "benign", "pcap", featurize=packet_featurizer())
    (unit,) = standard_split("pcap", series)
    assert len(unit.train) == 29 and len(unit.test) == 29
    assert unit.train.t is not None and unit.test.t is not None
    assert unit.train.t.max() <= unit.test.t.min()
    shutil.copy(bundled_path("mqttset/flood/flood-test.pcap.gz"), tmp_path / "weird" / "b.gz")
    unlabelled = load(tmp_path / "weird", "pcap", featurize=packet_featurizer())
    assert unlabelled[0].y is None
    expect_error(lambda: standard_split("pcap", unlabelled), "has no labels")


def test_register_custom_format(tmp_path: Path) -> None:
    def loader(path: Path) -> list[LabelledSeries]:
        x = np.zeros((4, 1), dtype=np.float32)
        return [LabelledSeries("toy", x, ("a",), y=np.zeros(4, dtype=np.int8))]

    def splitter(series: object) -> list[EvalUnit]:
        (s,) = series  # type: ignore[misc]
        return [EvalUnit("toy", s.rows(slice(0, 2)), s.rows(slice(2, None)))]

    register_format("toy", loader, splitter, description="test")
    assert "toy" in formats()
    assert len(load(tmp_path, "toy")) == 1
    assert len(standard_split("toy", load(tmp_path, "toy"))[0].test) == 2
    expect_error(lambda: register_format("toy", loader, splitter), "already registered")
    register_format("toy", loader, splitter, replace=True)


# --- negative ----------------------------------------------------------------------------------
def test_known_formats() -> None:
    assert {"skab", "nbaiot", "ton_iot", "iot23", "pcap", "mqttset", "lab"} <= set(formats())


@pytest.mark.parametrize("name", ["", "Bad", "a/b", "x" * 40, "1abc", "a b"])
def test_bad_format_names(name: str) -> None:
    expect_error(lambda: register_format(name, lambda p: [], lambda s: []), "bad format name")


def test_not_callable() -> None:
    expect_error(lambda: register_format("nc", 3, lambda s: []), "callable")  # type: ignore[arg-type]


def test_unknown_format() -> None:
    expect_error(lambda: get_format("nosuch"), "unknown data format 'nosuch'")
    expect_error(lambda: standard_split("nosuch", [object()]), "unknown data format")  # type: ignore[list-item]


def test_missing_module_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._BUILTIN, "ghost", ("ztfm.data._no_such_mod", "a", "b", "", False))
    expect_error(lambda: get_format("ghost"), "not available")


def test_packet_format_needs_featurizer() -> None:
    expect_error(lambda: load(bundled_path("pcap")), "featurize=")


def test_undetectable_file(tmp_path: Path) -> None:
    expect_error(lambda: detect_format(write(tmp_path / "a.csv", "x,y\n1,2\n")), "cannot tell")
    expect_error(lambda: detect_format(write(tmp_path / "z.gz", gz(b"hello"))), "cannot tell")
    expect_error(lambda: detect_format(write(tmp_path / "e.csv", b"")), "cannot tell")


def test_unlabelled_zeek_log_not_iot23(tmp_path: Path) -> None:
    p = write(tmp_path / "conn.log", "#separator \\x09\n#fields\tts\tuid\n1\tC\n")
    expect_error(lambda: detect_format(p), "cannot tell")


def test_mixed_folder(tmp_path: Path) -> None:
    shutil.copy(bundled_path("nbaiot/Danmini_Doorbell.csv.gz"), tmp_path)
    shutil.copy(bundled_path("ton_iot/Train_Test_IoT_Fridge.csv.gz"), tmp_path)
    expect_error(lambda: detect_format(tmp_path), "mixed data formats")


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    write(tmp_path / "README.md", "nothing\n")
    expect_error(lambda: detect_format(tmp_path), "no file of a known format")
    expect_error(lambda: detect_format(tmp_path / "nope"), "no such file or folder")


def test_corrupt_gzip_file_detection(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.gz", b"\x1f\x8b" + b"\x00" * 20)
    expect_error(lambda: detect_format(p), "corrupt gzip")


def test_split_of_nothing() -> None:
    expect_error(lambda: standard_split("nbaiot", []), "no series")


def test_mqttset_split_needs_benign_train() -> None:
    series = load(bundled_path("mqttset/flood"), "mqttset", featurize=packet_featurizer())
    expect_error(lambda: standard_split("mqttset", series), "no benign *-train")


def test_empty_capture(tmp_path: Path) -> None:
    data = bundled_path("pcap/iot23-42-1-head.pcap.gz").read_bytes()
    header_only = gzip.decompress(data)[:24]
    p = write(tmp_path / "benign" / "e.pcap", header_only)
    expect_error(lambda: load(p, "pcap", featurize=packet_featurizer()), "holds no packets")


# --- bundle -----------------------------------------------------------------------------------
def test_bundle_contents_and_size() -> None:
    assert set(available()) >= {"skab", "nbaiot", "ton_iot", "iot23", "pcap", "mqttset"}
    skab = bundled_path("skab")
    assert len(list((skab / "valve1").glob("*.csv.gz"))) == 16
    assert len(list((skab / "other").glob("*.csv.gz"))) == 14
    assert (skab / "anomaly-free" / "anomaly-free.csv.gz").is_file()
    text = (BUNDLE_ROOT / "ATTRIBUTION.md").read_text()
    for word in ("GPL-3.0", "CC BY-NC-SA", "Meidan", "Alsaedi", "Garcia", "Vaccari", "Katser"):
        assert word in text
    total = sum(f.stat().st_size for n in BUNDLED if n != "lab" for f in
                (BUNDLE_ROOT / n).rglob("*") if f.is_file())  # fmt: skip
    assert total <= 5 * 1024 * 1024


@pytest.mark.parametrize("name", ["../errors.py", "/etc/passwd", "skab/../../errors.py", "",
                                  "nope", "skab\\..\\x", "skab/none.csv"])  # fmt: skip
def test_bundled_path_refuses(name: str) -> None:
    expect_error(lambda: bundled_path(name), "")


def test_max_packets_cuts_and_says_so() -> None:
    (s,) = load_pcap(bundled_path("pcap"), featurize=packet_featurizer(), max_packets=100)
    assert len(s) == 100 and s.meta["cut"] == "100 packets"
    (s,) = load_pcap(bundled_path("mqttset/flood/flood-test.pcap.gz"),
                     featurize=packet_featurizer(), max_packets=1000)  # fmt: skip
    assert len(s) == 22 and s.meta["cut"] == "no"
    expect_error(lambda: load_pcap(bundled_path("pcap"), featurize=packet_featurizer(),
                                   max_packets=0), "max_packets")  # fmt: skip


def test_describe_formats() -> None:
    desc = registry.describe_formats()
    assert set(desc) == set(formats()) and all(desc.values())
