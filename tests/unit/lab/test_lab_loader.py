"""``ztfm.data.lab``: manifest hashes, schema checks, traffic-based labels, the split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ztfm.data.lab import lab_split, load_lab
from ztfm.data.registry import load, standard_split
from ztfm.detect.netfeatures import packet_featurizer
from ztfm.errors import DataError

from .labhelp import ATK_IP, make_lab, rewrite_manifest

FEAT = packet_featurizer()


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return make_lab(tmp_path / "lab")


def test_loads_one_series_per_device_with_traffic_labels(lab: Path) -> None:
    (s,) = load_lab(lab, featurize=FEAT)
    assert s.segment == "sensor" and s.meta["device"] == "dev00"
    assert s.x.shape == (130, 115) and s.x.dtype == np.float32
    assert s.y is not None and s.kinds is not None and s.t is not None
    assert int(s.y.sum()) == 50  # exactly the attacker's SYNs
    assert set(s.kinds[s.y == 1]) == {"syn_flood"}
    during = (s.t >= 1030) & (s.t <= 1035)
    assert (s.y[during] == 0).sum() > 0  # benign MQTT during the flood stays benign


def test_registry_and_split(lab: Path) -> None:
    series = load(lab, "lab", featurize=FEAT)
    (unit,) = standard_split("lab", series)
    assert unit.train.t is not None and unit.train.t.max() < 1030
    assert unit.train.y is not None and not unit.train.y.any()
    assert len(unit.train) + len(unit.test) == 130


def _expect(lab: Path, needle: str) -> None:
    with pytest.raises(DataError) as exc:
        load_lab(lab, featurize=FEAT)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_tampered_capture_is_refused(lab: Path) -> None:
    p = lab / "pcaps" / "dev00.pcap"
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF
    p.write_bytes(bytes(raw))
    _expect(lab, "SHA-256")


def test_tampered_labels_are_refused(lab: Path) -> None:
    p = lab / "labels.csv"
    p.write_text(p.read_text().replace("syn_flood", "udp_flood"))
    _expect(lab, "labels.csv does not match")


def test_missing_listed_file(lab: Path) -> None:
    (lab / "devices.csv").unlink()
    _expect(lab, "missing")


def test_unlisted_capture_is_refused(lab: Path) -> None:
    (lab / "pcaps" / "dev99.pcap").write_bytes((lab / "pcaps" / "dev00.pcap").read_bytes())
    _expect(lab, "not listed")


def test_manifest_path_traversal(lab: Path) -> None:
    m = json.loads((lab / "manifest.json").read_text())
    m["files"]["../../etc/passwd"] = "0" * 64
    (lab / "manifest.json").write_text(json.dumps(m))
    _expect(lab, "outside the lab folder")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not valid JSON"),
        ('{"format": "other/1", "files": {}}', "not a ztfm-lab/1 manifest"),
        ('{"format": "ztfm-lab/1", "files": {}}', "no file list"),
        ('{"format": "ztfm-lab/1", "files": {"labels.csv": 5}}', "bad file entry"),
        ("[]", "manifest"),
    ],
)
def test_bad_manifest(lab: Path, text: str, needle: str) -> None:
    (lab / "manifest.json").write_text(text)
    _expect(lab, needle)


def test_no_manifest(lab: Path) -> None:
    (lab / "manifest.json").unlink()
    _expect(lab, "no such file")


def _edit_labels(lab: Path, old: str, new: str) -> None:
    p = lab / "labels.csv"
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new))
    rewrite_manifest(lab)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("device,type", "dev,type", "header"),
        ("syn_flood", "SYN FLOOD", "bad attack"),
        ("syn_flood", "benign", "not an attack name"),
        (f"{ATK_IP},", "10.213.0.300,", "not an IPv4"),
        ("1030.0", "nan", "finite"),
        ("1030.0", "-4", "finite"),
        ("1030.0", "abc", "not a number"),
        ("1030.0", "1040.0", "end must be after start"),
        ("dev00,sensor", "dev07,sensor", "unknown device"),
        ("dev00,sensor", "dev00,camera", "is a sensor"),
        (",atk,dev00,", ",atk,srv,", "neither source nor target"),
        ("syn_flood,atk", "syn_flood,atk,extra", "fields"),
    ],
)
def test_bad_labels(lab: Path, old: str, new: str, needle: str) -> None:
    _edit_labels(lab, old, new)
    _expect(lab, needle)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("10.213.0.10,ztfm", "10.213.0,ztfm", "not an IPv4"),
        ("dev00,sensor,10", "Dev00,sensor,10", "bad device"),
    ],
)
def test_bad_devices(lab: Path, old: str, new: str, needle: str) -> None:
    p = lab / "devices.csv"
    p.write_text(p.read_text().replace(old, new))
    rewrite_manifest(lab)
    _expect(lab, needle)


def test_duplicate_device(lab: Path) -> None:
    p = lab / "devices.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([*lines, lines[1]]) + "\n")
    rewrite_manifest(lab)
    _expect(lab, "listed twice")


def test_capture_missing_for_device(lab: Path) -> None:
    p = lab / "devices.csv"
    p.write_text(p.read_text() + "dev01,camera,10.213.0.11,ztfm-x-dev01,2\n")
    rewrite_manifest(lab)
    _expect(lab, "no capture for device dev01")


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such lab folder"):
        load_lab(tmp_path / "nope", featurize=FEAT)


def test_split_refuses_attacks_in_warmup(lab: Path) -> None:
    (s,) = load_lab(lab, featurize=FEAT)
    s.meta["train_until"] = repr(1036.0)
    with pytest.raises(DataError, match="inside the benign warm-up"):
        lab_split([s])


def test_split_refuses_too_little_warmup(lab: Path) -> None:
    (s,) = load_lab(lab, featurize=FEAT)
    s.meta["train_until"] = repr(999.0)
    with pytest.raises(DataError, match="too few packets"):
        lab_split([s])
