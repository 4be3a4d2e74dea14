"""Per-device traffic windows (layer 2): counts over fixed windows plus a learned allow-list of
services, and the window rows of every device of a traffic-lab folder (`lab_windows`).

IoT devices talk to a handful of services in a regular rhythm (the idea behind MUD profiles,
RFC 8520). ``DeviceWindows`` learns, from a benign warm-up, which (peer, protocol, service port)
the device uses, then turns packets into one row per ``width_s`` window: packet and byte counts
in each direction, TCP SYN/RST, UDP, ICMP, malformed frames, distinct peers and ports, and
packets to services never seen in the warm-up. Empty windows are rows too (all zeros), so silence
is scored like anything else.

It is streaming: ``push(packet)`` returns the rows of the windows that packet closes, so a
capture file and a live interface go through the same code (``rows_of`` is the batch form).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ztfm.data.lab import (
    AFTERMATH,
    LabLabel,
    label_packets,
    read_devices,
    read_labels,
    read_manifest,
)
from ztfm.data.pcap import TCP_ACK, TCP_RST, TCP_SYN, Packet, iter_packets
from ztfm.errors import DataError, LabError

COLUMNS: tuple[str, ...] = (
    "pkts_in", "pkts_out", "bytes_in", "bytes_out", "syn_in", "syn_out", "rst_in", "rst_out",
    "udp", "icmp", "malformed", "peers", "local_ports_in", "remote_ports_out", "new_service_pkts",
    "new_services",
)  # fmt: skip
MAX_GAP_WINDOWS = 100_000  # a clock jump larger than this many windows is refused
EPHEMERAL_MIN = 32768


def _service(p: Packet, me: str) -> tuple[str, int, int]:
    """(peer, proto, service port): the service port is the lower port of the pair, which for
    client traffic is the server's port and for a server is its own listening port."""
    outbound = p.src_ip == me
    peer = p.dst_ip if outbound else p.src_ip
    if p.proto in (6, 17):
        port = min(p.sport, p.dport) if min(p.sport, p.dport) < EPHEMERAL_MIN else 0
    else:
        port = 0
    return peer, p.proto, port


@dataclass
class DeviceWindows:
    """Streaming window featurizer for the device with address ``ip``."""

    ip: str
    width_s: float = 1.0
    known: set[tuple[str, int, int]] = field(default_factory=set)
    _start: float | None = None
    _index: int = 0
    _acc: list[Packet] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.width_s) and 0.05 <= self.width_s <= 3600):
            raise DataError(f"window width must be in [0.05, 3600] s, got {self.width_s}")

    def learn(self, packets: Iterable[Packet]) -> None:
        """Add every service the device uses in ``packets`` (benign warm-up) to the allow-list."""
        for p in packets:
            if self.ip in (p.src_ip, p.dst_ip):
                self.known.add(_service(p, self.ip))

    def _row(self, pkts: list[Packet]) -> np.ndarray:
        me = self.ip
        v = np.zeros(len(COLUMNS), dtype=np.float64)
        peers: set[str] = set()
        lports: set[int] = set()
        rports: set[int] = set()
        new: set[tuple[str, int, int]] = set()
        for p in pkts:
            out = p.src_ip == me
            if not out and p.dst_ip != me:
                continue  # broadcast or someone else's frame
            v[1 if out else 0] += 1
            v[3 if out else 2] += p.length
            syn = p.proto == 6 and p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            v[5 if out else 4] += syn
            v[7 if out else 6] += p.proto == 6 and bool(p.tcp_flags & TCP_RST)
            v[8] += p.proto == 17
            v[9] += p.proto == 1
            v[10] += p.malformed
            peers.add(p.dst_ip if out else p.src_ip)
            if out and p.dport:
                rports.add(p.dport)
            if not out and p.dport:
                lports.add(p.dport)
            svc = _service(p, me)
            if svc not in self.known:
                v[14] += 1
                new.add(svc)
        v[11], v[12], v[13], v[15] = len(peers), len(lports), len(rports), len(new)
        return np.log1p(v).astype(np.float32)

    def push(self, p: Packet) -> list[tuple[float, np.ndarray]]:
        """Add one packet; return ``(window start, row)`` for every window it closes."""
        if self._start is None:
            self._start = p.ts
        k = math.floor((p.ts - self._start) / self.width_s)
        if k < self._index:  # out of order: count it in the current window
            k = self._index
        if k - self._index > MAX_GAP_WINDOWS:
            raise DataError(f"clock jump of {(k - self._index) * self.width_s:.0f} s in the stream")
        done: list[tuple[float, np.ndarray]] = []
        while self._index < k:
            done.append((self._start + self._index * self.width_s, self._row(self._acc)))
            self._acc = []
            self._index += 1
        self._acc.append(p)
        return done

    def close_until(self, ts: float) -> list[tuple[float, np.ndarray]]:
        """Close every window that ends at or before ``ts`` (silence gives rows of zeros)."""
        if self._start is None or not math.isfinite(ts):
            return []
        k = math.floor((ts - self._start) / self.width_s)
        if k - self._index > MAX_GAP_WINDOWS:
            raise DataError(f"clock jump of {(k - self._index) * self.width_s:.0f} s in the stream")
        done: list[tuple[float, np.ndarray]] = []
        while self._index < k:
            done.append((self._start + self._index * self.width_s, self._row(self._acc)))
            self._acc = []
            self._index += 1
        return done

    def flush(self) -> list[tuple[float, np.ndarray]]:
        """Rows of the window still open (call at the end of a capture)."""
        if self._start is None:
            return []
        row = (self._start + self._index * self.width_s, self._row(self._acc))
        self._acc = []
        self._index += 1
        return [row]

    def reset(self, origin: float | None = None) -> None:
        """Forget the stream position (not the allow-list); windows then start at ``origin``
        (e.g. when a live capture began) or, if None, at the next packet."""
        if origin is not None and not math.isfinite(origin):
            raise DataError("window origin must be finite")
        self._start, self._index, self._acc = origin, 0, []


def rows_of(
    fx: DeviceWindows,
    packets: Iterable[Packet],
    *,
    origin: float | None = None,
    until: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(window start times, rows (n, len(COLUMNS)) float32) of a packet sequence, from a fresh
    stream position at ``origin`` (or the first packet), up to ``until`` (or the last packet's
    window). The allow-list is kept."""
    fx.reset(origin)
    t: list[float] = []
    x: list[np.ndarray] = []
    for p in packets:
        for ts, row in fx.push(p):
            t.append(ts)
            x.append(row)
    # with ``until``: every whole window up to it (a quiet end is data); else the open window too
    for ts, row in fx.flush() if until is None else fx.close_until(until):
        t.append(ts)
        x.append(row)
    if not x:
        return np.zeros(0), np.zeros((0, len(COLUMNS)), dtype=np.float32)
    return np.array(t, dtype=np.float64), np.stack(x)


@dataclass(frozen=True, slots=True)
class DeviceWindowSet:
    device: str
    type: str
    t: np.ndarray  # window start (epoch s)
    x: np.ndarray  # (n, len(COLUMNS)) float32
    y: np.ndarray  # int8, 1 = window holds attack traffic of this device
    kind: np.ndarray  # object: attack name or "benign"
    train: np.ndarray  # bool: window lies wholly inside the benign warm-up
    width_s: float


def lab_windows(
    root: str | Path, *, width_s: float = 1.0
) -> tuple[list[DeviceWindowSet], list[LabLabel]]:
    """Window rows and labels of every device of a lab folder (manifest hashes checked)."""
    root = Path(root)
    manifest = read_manifest(root)
    devices = read_devices(root)
    labels = read_labels(root, devices)
    services_ip = str(manifest.get("services_ip", ""))
    cut = min((lab.start for lab in labels), default=math.inf)
    try:  # the fleet stops at started_at + duration_s; what follows is the lab shutting down
        run_end = float(manifest["started_at"]) + float(manifest["duration_s"])
    except (KeyError, TypeError, ValueError):
        run_end = math.inf
    out = []
    for dev in devices.values():
        cap = next((root / "pcaps" / n for n in (f"{dev.name}.pcap", f"{dev.name}.pcap.gz")
                    if (root / "pcaps" / n).is_file()), None)  # fmt: skip
        if cap is None:
            raise LabError(f"{root}: no capture for {dev.name}")
        packets = list(iter_packets(cap))
        if not math.isfinite(cut):
            cut = packets[0].ts + 0.5 * (packets[-1].ts - packets[0].ts)
        fx = DeviceWindows(dev.ip, width_s)
        fx.learn(p for p in packets if p.ts < cut)
        t, x = rows_of(fx, packets)
        py, pk = label_packets(packets, dev, labels, services_ip=services_ip)
        y = np.zeros(len(t), dtype=np.int8)
        kind = np.full(len(t), "benign", dtype=object)
        idx = np.floor((np.array([p.ts for p in packets]) - t[0]) / width_s).astype(np.int64)
        idx = np.clip(idx, 0, len(t) - 1)
        for i in np.flatnonzero(py):  # an attack's own packets win over aftermath
            y[idx[i]] = 1
            if kind[idx[i]] in ("benign", AFTERMATH):
                kind[idx[i]] = pk[i]
        keep = t + width_s <= run_end
        t, x, y, kind = t[keep], x[keep], y[keep], kind[keep]
        train = (t + width_s <= cut) & (y == 0)
        out.append(DeviceWindowSet(dev.name, dev.type, t, x, y, kind, train, width_s))
    return out, labels
