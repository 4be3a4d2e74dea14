"""Live AF_PACKET source: the same records as a replayed capture of the same frames (root)."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import dpkt
import pytest
from datahelp import expect_error, write

from ztfm.data.live import LiveCapture, interface_link, iter_live
from ztfm.data.pcap import Link, decode_frame, iter_packets
from ztfm.types import FixedClock

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")


@pytest.mark.root
@needs_root
def test_live_loopback_matches_replayed_file(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        frames: list[tuple[float, bytes]] = []
        with LiveCapture("lo") as cap:
            assert cap.link is Link.ETHERNET
            for i in range(5):
                sender.sendto(b"z" * (10 + i), ("127.0.0.1", port))
            for ts, frame in cap.frames(max_packets=5000, idle_timeout_s=0.5):
                p = decode_frame(ts, cap.link, frame)
                if p.dport == port and p.proto == 17:  # other loopback traffic is ignored
                    frames.append((ts, frame))
                if len(frames) == 5:
                    break
    finally:
        receiver.close()
        sender.close()
    assert len(frames) == 5  # each datagram once (loopback's outgoing copy dropped)
    live = [decode_frame(ts, Link.ETHERNET, f) for ts, f in frames]
    assert [p.payload_len for p in live] == [10, 11, 12, 13, 14]
    assert all(p.src_ip == "127.0.0.1" and p.dst_ip == "127.0.0.1" for p in live)
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, linktype=1, nano=True)
    for ts, f in frames:
        w.writepkt(f, ts=ts)
    replayed = list(iter_packets(write(tmp_path / "live.pcap", buf.getvalue())))
    assert [(p.src_ip, p.dport, p.length, p.payload_len) for p in replayed] == [
        (p.src_ip, p.dport, p.length, p.payload_len) for p in live
    ]
    assert [p.ts for p in replayed] == pytest.approx([p.ts for p in live], abs=1e-6)


@pytest.mark.root
@needs_root
def test_iter_live_stops_when_idle() -> None:
    got = list(iter_live("lo", max_packets=3, idle_timeout_s=0.2, clock=FixedClock(5.0)))
    assert len(got) <= 3


# --- negative ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "../etc", "a" * 16, "eth0;rm", "."])
def test_bad_interface_names(name: str) -> None:
    expect_error(lambda: interface_link(name), "bad interface name")


def test_unknown_interface() -> None:
    expect_error(lambda: interface_link("ztfmnosuch0"), "no such network interface")


@pytest.mark.parametrize("snaplen", [0, 10, 10**7])
def test_bad_snaplen(snaplen: int) -> None:
    expect_error(lambda: LiveCapture("lo", snaplen=snaplen), "snaplen")


@pytest.mark.root
@needs_root
def test_bad_idle_timeout() -> None:
    with LiveCapture("lo") as cap:
        expect_error(lambda: cap.frames(idle_timeout_s=0), "idle_timeout_s")
    expect_error(lambda: cap.frames(), "closed")
