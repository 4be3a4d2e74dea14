"""IoT-23 packets labelled from the conn log: real join on the bundled 42-1 head, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from datahelp import expect_error, write

from ztfm.data.bundled import bundled_path
from ztfm.data.iot23_packets import (
    ConnLabel,
    PacketLabeller,
    iot23_packets_split,
    load_iot23_packets,
    read_conn_labels,
)
from ztfm.data.pcap import Link, Packet
from ztfm.data.registry import formats, load, standard_split
from ztfm.data.series import LabelledSeries
from ztfm.detect.netfeatures import packet_featurizer

LOG = "iot23/CTU-IoT-Malware-Capture-42-1/conn.log.labeled.gz"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("iot23") / "CTU-IoT-Malware-Capture-42-1"
    folder.mkdir()
    shutil.copy(bundled_path(LOG), folder / "conn.log.labeled.gz")
    shutil.copy(bundled_path("pcap/iot23-42-1-head.pcap.gz"), folder / "head.pcap.gz")
    return folder


def pkt(ts: float, src: str, sport: int, dst: str, dport: int, proto: int = 6) -> Packet:
    return Packet(ts=ts, link=Link.ETHERNET, length=60, src_ip=src, dst_ip=dst, proto=proto,
                  sport=sport, dport=dport, ip_version=4)  # fmt: skip


def test_real_join_on_bundled_head(scenario: Path) -> None:
    (s,) = load_iot23_packets(scenario, featurize=packet_featurizer())
    assert len(s) == 3000 and s.x.shape == (3000, 115)
    assert s.y is not None and s.kinds is not None
    malicious = s.y == 1
    assert 100 < int(malicious.sum()) < 3000
    assert set(s.kinds[malicious]) <= {"FileDownload", "C&C-FileDownload"}
    matched, total = map(int, s.meta["matched"].split("/"))
    assert matched == total  # every IP packet of the head belongs to a logged connection


def test_registry_and_split(scenario: Path) -> None:
    assert "iot23_packets" in formats()
    series = load(scenario.parent, "iot23_packets", featurize=packet_featurizer())
    (unit,) = standard_split("iot23_packets", series)
    assert unit.train.y is not None and (unit.train.y == 0).all()
    assert unit.test.y is not None and int(unit.test.y.sum()) == int(series[0].y.sum())  # type: ignore[union-attr]


def test_labeller_direction_time_and_icmp() -> None:
    conns = [
        ConnLabel(10.0, 12.0, (6, ("1.1.1.1", 80), ("10.0.0.5", 4000)), 1, "C&C"),
        ConnLabel(50.0, 50.0, (1, ("10.0.0.5", 0), ("8.8.8.8", 0)), 0, "benign"),
    ]
    lab = PacketLabeller(conns)
    assert lab.label(pkt(11.0, "10.0.0.5", 4000, "1.1.1.1", 80)) == (1, "C&C")
    assert lab.label(pkt(11.0, "1.1.1.1", 80, "10.0.0.5", 4000)) == (1, "C&C")  # reverse
    assert lab.label(pkt(20.0, "10.0.0.5", 4000, "1.1.1.1", 80)) == (0, "benign")  # after it
    assert lab.label(pkt(9.0, "10.0.0.5", 4000, "1.1.1.1", 80)) == (0, "benign")  # before it
    assert lab.label(pkt(11.0, "10.0.0.5", 4001, "1.1.1.1", 80)) == (0, "benign")  # other port
    icmp = pkt(50.0, "8.8.8.8", 0, "10.0.0.5", 0, proto=1)
    assert lab.known(icmp) and lab.label(icmp) == (0, "benign")


# --- negative ----------------------------------------------------------------------------------
def test_capture_not_matching_its_log(tmp_path: Path) -> None:
    folder = tmp_path / "hp"
    folder.mkdir()
    shutil.copy(bundled_path("iot23/CTU-Honeypot-Capture-4-1/conn.log.labeled.gz"), folder)
    shutil.copy(bundled_path("pcap/iot23-42-1-head.pcap.gz"), folder)
    expect_error(lambda: load_iot23_packets(folder, featurize=packet_featurizer()),
                 "does not match its conn log")  # fmt: skip


def test_missing_log_or_capture(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(bundled_path("pcap/iot23-42-1-head.pcap.gz"), tmp_path / "a")
    expect_error(lambda: load_iot23_packets(tmp_path, featurize=packet_featurizer()),
                 "expected one conn.log")  # fmt: skip
    (tmp_path / "b").mkdir()
    shutil.copy(bundled_path(LOG), tmp_path / "b" / "conn.log.labeled.gz")
    expect_error(lambda: load_iot23_packets(tmp_path / "b", featurize=packet_featurizer()),
                 "no pcap or pcapng")  # fmt: skip
    expect_error(lambda: load_iot23_packets(tmp_path / "nope", featurize=packet_featurizer()),
                 "no such folder")  # fmt: skip


def test_bad_conn_rows(tmp_path: Path) -> None:
    head = "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tduration\tlabel\n"
    p = write(tmp_path / "conn.log", head + "1.0\tC\t1.1.1.1\tx\t2.2.2.2\t80\ttcp\t1\tBenign\n")
    expect_error(lambda: read_conn_labels(p), "bad ts, duration, address or port")
    p = write(tmp_path / "c2.log", head + "1.0\tC\t1.1.1.1\t1\t2.2.2.2\t80\ttcp\t-3\tBenign\n")
    expect_error(lambda: read_conn_labels(p), "negative")
    p = write(tmp_path / "c3.log", head + "1.0\tC\t1.1.1.1\t1\t2.2.2.2\t80\ttcp\t1\tMaybe\n")
    expect_error(lambda: read_conn_labels(p), "label must be")
    p = write(tmp_path / "c4.log", head.replace("\tduration", ""))
    expect_error(lambda: read_conn_labels(p), "missing column 'duration'")


def test_split_refuses_unsplittable() -> None:
    s = LabelledSeries("x", np.zeros((3, 1), np.float32), ("a",), y=np.ones(3, np.int8))
    expect_error(lambda: iot23_packets_split([s]), "cannot split")
    expect_error(lambda: iot23_packets_split([]), "no series")
