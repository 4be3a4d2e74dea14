"""Build small synthetic lab folders (for loader logic tests; the real lab has its own tests)."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import dpkt

from ztfm.lab.runner import DEVICES_HEADER, LABELS_HEADER, write_manifest

DEV_IP = "10.213.0.10"
SRV_IP = "10.213.0.2"
ATK_IP = "10.213.0.3"


def frame(src: str, dst: str, sport: int, dport: int, flags: int = dpkt.tcp.TH_ACK) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=b"x" * 10)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
    ip.len = len(bytes(ip))
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=1)
        for ts, buf in packets:
            w.writepkt(buf, ts=ts)


def make_lab(root: Path, *, t0: float = 1000.0) -> Path:
    """One sensor: benign MQTT for 40 s, a SYN flood from the attacker at t0+30..t0+35, and one
    benign packet to the broker in the middle of the flood."""
    (root / "pcaps").mkdir(parents=True)
    pkts: list[tuple[float, bytes]] = []
    for i in range(40):
        pkts.append((t0 + i, frame(DEV_IP, SRV_IP, 40000, 1883)))
        pkts.append((t0 + i + 0.01, frame(SRV_IP, DEV_IP, 1883, 40000)))
    for k in range(50):
        pkts.append((t0 + 30 + k * 0.1, frame(ATK_IP, DEV_IP, 2000 + k, 80, dpkt.tcp.TH_SYN)))
    pkts.sort(key=lambda p: p[0])
    write_pcap(root / "pcaps" / "dev00.pcap", pkts)
    with (root / "devices.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(DEVICES_HEADER)
        w.writerow(["dev00", "sensor", DEV_IP, "ztfm-x-dev00", "1"])
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LABELS_HEADER)
        w.writerow(
            ["dev00", "sensor", t0 + 30, t0 + 35, "syn_flood", "atk", "dev00", ATK_IP, DEV_IP]
        )
    write_manifest(root, {"format": "ztfm-lab/1", "seed": 1})
    return root


def rewrite_manifest(root: Path) -> None:
    write_manifest(root, {"format": "ztfm-lab/1", "seed": 1})
