"""Capture reader: real shared captures (Ethernet, SLL, pcapng), synthetic link types, and one
test per malformed-capture kind."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import dpkt
import pytest
from datahelp import corrupt_gzip, expect_error, gz, truncated_gzip, write
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.data.bundled import bundled_path
from ztfm.data.pcap import (
    TCP_ACK,
    TCP_SYN,
    Link,
    Packet,
    capture_link,
    decode_frame,
    iter_packets,
    sniff_format,
)

MQTT = "mqttset_reduced"


def _tcp_ip(src: str = "10.0.0.1", dst: str = "10.0.0.2", payload: bytes = b"hello") -> dpkt.ip.IP:
    tcp = dpkt.tcp.TCP(sport=1234, dport=1883, flags=TCP_SYN | TCP_ACK, data=payload)
    ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))),
                    p=6, ttl=42, data=tcp)  # fmt: skip
    ip.len = len(bytes(ip))
    return ip


def _eth(ip: dpkt.ip.IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def _pcap(frames: list[bytes], linktype: int = 1, nano: bool = False) -> bytes:
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, linktype=linktype, nano=nano)
    for i, f in enumerate(frames):
        w.writepkt(f, ts=1000.0 + i * 0.5)
    return buf.getvalue()


def _pcapng(frames: list[bytes], linktype: int = 1) -> bytes:
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf, linktype=linktype)
    for i, f in enumerate(frames):
        w.writepkt(f, ts=1000.0 + i * 0.5)
    return buf.getvalue()


# --- real captures -------------------------------------------------------------------------------
def test_bundled_ethernet_pcap_gz() -> None:
    pk = list(iter_packets(bundled_path("pcap/iot23-42-1-head.pcap.gz")))
    assert len(pk) == 3000
    assert all(p.link is Link.ETHERNET for p in pk)
    assert any(p.src_ip == "192.168.1.197" for p in pk)
    assert not any(p.malformed for p in pk)


@pytest.mark.parametrize(
    ("rel", "kind", "link", "count"),
    [
        ("iot23_sample/CTU-Honeypot-Capture-4-1/2018-09-14-13-40-25-Philips-Hue-Bridge.pcap",
         "pcap", Link.ETHERNET, 8573),
        (f"{MQTT}/flood/flood-test.pcap", "pcap", Link.SLL, 22),
        (f"{MQTT}/benign/benign-test.pcap", "pcapng", Link.SLL, 4521),
        (f"{MQTT}/malariados/malariados-test.pcap", "pcapng", Link.ETHERNET, 933),
    ],
)  # fmt: skip
def test_shared_captures(
    shared_datasets: Path, rel: str, kind: str, link: Link, count: int
) -> None:
    path = shared_datasets / rel
    assert sniff_format(path.read_bytes()[:4]) == kind  # .pcap files that are really pcapng
    assert capture_link(path) is link
    pk = list(iter_packets(path))
    assert len(pk) == count
    assert all(p.proto in (0, 1, 6, 17, 58) for p in pk)
    if MQTT in rel:
        assert all(1883 in (p.sport, p.dport) for p in pk)
        assert all(p.src_mac for p in pk)


def test_bundled_gzip_matches_shared(shared_datasets: Path) -> None:
    a = list(iter_packets(shared_datasets / MQTT / "flood" / "flood-train.pcap"))
    b = list(iter_packets(bundled_path("mqttset/flood/flood-train.pcap.gz")))
    assert a == b


def test_real_truncated_capture(shared_datasets: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shared 42-1 capture's last record is cut (45 of 91 bytes): a real truncated file."""
    path = shared_datasets / "iot23_sample/CTU-IoT-Malware-Capture-42-1"
    path = path / "2019-01-10-14-34-38-192.168.1.197.pcap"
    expect_error(lambda: iter_packets(path), "truncated capture after packet 24484")
    with caplog.at_level(logging.WARNING):
        pk = list(iter_packets(path, on_truncated="stop"))
    assert len(pk) == 24484
    assert "truncated" in caplog.text


# --- synthetic link types -----------------------------------------------------------------------
def _check_tcp(p: Packet) -> None:
    assert (p.src_ip, p.dst_ip, p.proto, p.sport, p.dport) == (
        "10.0.0.1",
        "10.0.0.2",
        6,
        1234,
        1883,
    )
    assert p.tcp_flags == TCP_SYN | TCP_ACK and p.payload_len == 5 and p.ttl == 42
    assert not p.malformed


def test_ethernet_fields(tmp_path: Path) -> None:
    (p,) = iter_packets(write(tmp_path / "a.cap", _pcap([_eth(_tcp_ip())])))
    _check_tcp(p)
    assert (p.src_mac, p.dst_mac, p.ethertype) == ("02:02:02:02:02:02", "04:04:04:04:04:04", 0x800)
    assert p.ts == pytest.approx(1000.0) and p.length == len(_eth(_tcp_ip()))


def test_vlan_tagged_ethernet(tmp_path: Path) -> None:
    frame = _eth(_tcp_ip())
    tagged = frame[:12] + b"\x81\x00\x00\x05" + frame[12:]
    (p,) = iter_packets(write(tmp_path / "v.pcap", _pcap([tagged])))
    _check_tcp(p)


def test_sll_and_sll2(tmp_path: Path) -> None:
    ip = bytes(_tcp_ip())
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", 0x0800) + ip
    sll2 = struct.pack(">HHiHBB8s", 0x0800, 0, 1, 1, 0, 6, b"\x02" * 6 + b"\0\0") + ip
    for linktype, frame, link in ((113, sll, Link.SLL), (276, sll2, Link.SLL2)):
        (p,) = iter_packets(write(tmp_path / f"{linktype}.bin", _pcapng([frame], linktype)))
        assert p.link is link and p.src_mac == "02:02:02:02:02:02" and p.dst_mac == ""
        _check_tcp(p)


def test_raw_ip_and_nanosecond_pcap(tmp_path: Path) -> None:
    (p,) = iter_packets(write(tmp_path / "raw", _pcap([bytes(_tcp_ip())], 101, nano=True)))
    assert p.link is Link.RAW and p.src_mac == ""
    _check_tcp(p)


def test_ipv6_udp(tmp_path: Path) -> None:
    udp = dpkt.udp.UDP(sport=5353, dport=5353, data=b"abc")
    udp.ulen = len(bytes(udp))
    src = b"\xfe\x80" + b"\0" * 13 + b"\x01"
    dst = b"\xff\x02" + b"\0" * 13 + b"\xfb"
    ip6 = dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=255, data=udp, plen=len(bytes(udp)))
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x33" * 6, type=0x86DD, data=ip6))
    (p,) = iter_packets(write(tmp_path / "v6.pcap", _pcap([frame])))
    assert (p.ip_version, p.src_ip, p.dst_ip, p.proto) == (6, "fe80::1", "ff02::fb", 17)
    assert (p.sport, p.dport, p.payload_len, p.ttl) == (5353, 5353, 3, 255)


def test_arp_keyed_by_protocol_addresses(tmp_path: Path) -> None:
    arp = dpkt.arp.ARP(sha=b"\x02" * 6, spa=b"\x0a\0\0\x01", tha=b"\0" * 6, tpa=b"\x0a\0\0\x02")
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\xff" * 6, type=0x0806, data=arp))
    (p,) = iter_packets(write(tmp_path / "arp.pcap", _pcap([frame])))
    assert (p.src_ip, p.dst_ip, p.proto, p.malformed) == ("10.0.0.1", "10.0.0.2", 0, False)


def test_malformed_packet_is_a_record_not_a_crash(tmp_path: Path) -> None:
    bad = b"\x04" * 6 + b"\x02" * 6 + b"\x08\x00" + b"\x45\x00\x00"  # IPv4 header cut short
    pk = list(iter_packets(write(tmp_path / "m.pcap", _pcap([bad, _eth(_tcp_ip())]))))
    assert len(pk) == 2 and pk[0].malformed and pk[0].src_ip == "" and not pk[1].malformed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(list(Link)))
def test_decode_frame_never_raises(buf: bytes, link: Link) -> None:
    p = decode_frame(1.0, link, buf)
    assert p.length == len(buf) and p.link is link


# --- negative: malformed captures ---------------------------------------------------------------
def test_missing_and_directory(tmp_path: Path) -> None:
    expect_error(lambda: iter_packets(tmp_path / "nope.pcap"), "no such file")
    expect_error(lambda: iter_packets(tmp_path), "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    expect_error(lambda: iter_packets(write(tmp_path / "e.pcap", b"")), "empty")


def test_not_a_capture(tmp_path: Path) -> None:
    expect_error(lambda: iter_packets(write(tmp_path / "x.pcap", "ts,a,b\n1,2,3\n")), "not a pcap")


def test_truncated_global_header(tmp_path: Path) -> None:
    p = write(tmp_path / "h.pcap", _pcap([_eth(_tcp_ip())])[:10])
    expect_error(lambda: iter_packets(p), "header")


@pytest.mark.parametrize("cut", [3, 20])  # inside the record header, inside the packet data
def test_truncated_record_raises_by_default(tmp_path: Path, cut: int) -> None:
    data = _pcap([_eth(_tcp_ip())] * 3)
    p = write(tmp_path / "t.pcap", data[: len(data) - len(_eth(_tcp_ip())) - 16 + cut])
    expect_error(lambda: iter_packets(p), "truncated capture after packet 2")


def test_truncated_record_stop_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _pcap([_eth(_tcp_ip())] * 3)
    p = write(tmp_path / "t.pcap", data[:-7])
    with caplog.at_level(logging.WARNING):
        pk = list(iter_packets(p, on_truncated="stop"))
    assert len(pk) == 2 and "truncated capture after packet 2" in caplog.text


def test_truncated_pcapng_block(tmp_path: Path) -> None:
    data = _pcapng([_eth(_tcp_ip())] * 3)
    expect_error(lambda: iter_packets(write(tmp_path / "t.pcapng", data[:-9])), "truncated")
    expect_error(lambda: iter_packets(write(tmp_path / "u.pcapng", data[:-70])), "truncated")


def test_absurd_record_length(tmp_path: Path) -> None:
    data = bytearray(_pcap([_eth(_tcp_ip())]))
    data[24 + 8 : 24 + 12] = struct.pack("<I", 0x7FFFFFFF)  # caplen of the first record
    expect_error(lambda: iter_packets(write(tmp_path / "big.pcap", bytes(data))), "exceeds")


def test_pcapng_block_length_too_small(tmp_path: Path) -> None:
    data = bytearray(_pcapng([_eth(_tcp_ip())] * 2))
    shb_len = struct.unpack("<I", data[4:8])[0]
    idb_len = struct.unpack("<I", data[shb_len + 4 : shb_len + 8])[0]
    off = shb_len + idb_len
    data[off + 4 : off + 8] = struct.pack("<I", 4)  # EPB block length below the 8-byte header
    expect_error(lambda: iter_packets(write(tmp_path / "neg.pcapng", bytes(data))), "corrupt")


def test_unsupported_link_type(tmp_path: Path) -> None:
    p = write(tmp_path / "wifi.pcap", _pcap([b"\0" * 30], linktype=105))
    expect_error(lambda: iter_packets(p), "unsupported link type 105")


def test_corrupt_gzip_capture(tmp_path: Path) -> None:
    p = write(tmp_path / "c.pcap.gz", corrupt_gzip(_pcap([_eth(_tcp_ip())] * 50)))
    expect_error(lambda: iter_packets(p), "gzip")


def test_truncated_gzip_capture(tmp_path: Path) -> None:
    p = write(tmp_path / "t.pcap.gz", truncated_gzip(_pcap([_eth(_tcp_ip())] * 50)))
    expect_error(lambda: iter_packets(p), "truncated")
    assert 0 < len(list(iter_packets(p, on_truncated="stop"))) < 50


def test_gzip_of_capture_is_transparent(tmp_path: Path) -> None:
    data = _pcap([_eth(_tcp_ip())] * 4)
    a = list(iter_packets(write(tmp_path / "a.bin", data)))
    b = list(iter_packets(write(tmp_path / "b.bin", gz(data))))
    assert a == b and len(a) == 4


def test_bad_policy(tmp_path: Path) -> None:
    p = write(tmp_path / "a.pcap", _pcap([_eth(_tcp_ip())]))
    expect_error(lambda: iter_packets(p, on_truncated="ignore"), "on_truncated")  # type: ignore[arg-type]
