"""IoT-23 captures with per-packet labels joined from the scenario's labelled Zeek conn log.

A scenario folder holds one capture (pcap/pcapng, optionally gzipped) and its
``conn.log.labeled(.gz)``. A packet takes the label of the connection it belongs to: same protocol
and endpoints (either direction; ICMP by addresses only) and a timestamp inside the connection's
``[ts, ts + duration]`` (plus ``SLACK_S``). Packets of no labelled connection (ARP, non-IP, or
outside every interval) are benign. ``kinds`` is the connection's detailed label.

A capture that does not belong to its log is refused: fewer than ``MIN_MATCH`` of its TCP/UDP/ICMP
packets share endpoints with any logged connection (the bundled Hue honeypot pcap is such a case:
its hosts and date differ from its conn log). The public 42-1 capture is truncated in its last
record, so ``on_truncated`` defaults to ``"stop"`` here (one warning, the whole packets are kept).

Format name ``iot23_packets``; ``iot23_packets_split`` is the ``iot23`` protocol on packets:
fit on the benign packets of the first third (time), score the rest.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ztfm.data._io import read_text
from ztfm.data.iot23 import read_zeek_rows, row_label
from ztfm.data.pcap import Featurizer, OnTruncated, Packet, capture_files, iter_packets
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

SLACK_S = 0.01
MIN_MATCH = 0.5
TRAIN_FRACTION = 1.0 / 3.0
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
_CONN_REQUIRED = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
                  "duration", "label")  # fmt: skip

Endpoint = tuple[str, int]
FlowKey = tuple[int, Endpoint, Endpoint]


@dataclass(frozen=True, slots=True)
class ConnLabel:
    """One labelled connection of a Zeek conn log."""

    start: float
    end: float
    key: FlowKey
    y: int
    kind: str


def _flow_key(proto: int, a: Endpoint, b: Endpoint) -> FlowKey:
    if proto == 1:  # ICMP: Zeek stores type/code as ports; packets carry none
        a, b = (a[0], 0), (b[0], 0)
    return (proto, a, b) if a <= b else (proto, b, a)


def read_conn_labels(path: str | Path) -> list[ConnLabel]:
    """The labelled connections (TCP/UDP/ICMP) of a conn log, sorted by start time."""
    name = str(path)
    idx, rows = read_zeek_rows(read_text(path), name=name, required=_CONN_REQUIRED)
    out: list[ConnLabel] = []
    for lineno, cells in rows:
        where = f"{name}: line {lineno}"
        proto = _PROTO.get(cells[idx["proto"]].lower())
        if proto is None:
            continue
        try:
            start = float(cells[idx["ts"]])
            dur_cell = cells[idx["duration"]]
            duration = 0.0 if dur_cell == "-" else float(dur_cell)
            a = (cells[idx["id.orig_h"]], int(cells[idx["id.orig_p"]]))
            b = (cells[idx["id.resp_h"]], int(cells[idx["id.resp_p"]]))
        except ValueError:
            raise DataError(f"{where}: bad ts, duration, address or port") from None
        if not (math.isfinite(start) and math.isfinite(duration) and duration >= 0):
            raise DataError(f"{where}: non-finite or negative ts/duration")
        y, kind = row_label(cells, idx, where)
        out.append(ConnLabel(start, start + duration, _flow_key(proto, a, b), y, kind))
    out.sort(key=lambda c: c.start)
    return out


class PacketLabeller:
    """Looks up the labelled connection of a packet (O(log n) per packet)."""

    def __init__(self, conns: Sequence[ConnLabel], slack_s: float = SLACK_S) -> None:
        self.slack_s = slack_s
        self._by_key: dict[FlowKey, tuple[list[float], list[ConnLabel]]] = {}
        for c in conns:
            starts, items = self._by_key.setdefault(c.key, ([], []))
            starts.append(c.start)
            items.append(c)

    def known(self, p: Packet) -> bool:
        """Whether the packet's endpoints appear in the log at all (any time)."""
        key = self._key(p)
        return key is not None and key in self._by_key

    @staticmethod
    def _key(p: Packet) -> FlowKey | None:
        if p.proto not in (1, 6, 17) or not p.src_ip:
            return None
        return _flow_key(p.proto, (p.src_ip, p.sport), (p.dst_ip, p.dport))

    def label(self, p: Packet) -> tuple[int, str]:
        key = self._key(p)
        entry = self._by_key.get(key) if key is not None else None
        if entry is None:
            return 0, "benign"
        starts, items = entry
        hit: ConnLabel | None = None
        i = bisect.bisect_right(starts, p.ts + self.slack_s)
        for c in reversed(items[max(0, i - 64) : i]):  # connections that started before p
            if c.end + self.slack_s >= p.ts:
                if c.y == 1:
                    return 1, c.kind
                hit = c
        return (0, "benign") if hit is None else (hit.y, hit.kind)


def _scenario_parts(folder: Path) -> tuple[Path, Path]:
    logs = sorted(
        f for f in folder.iterdir() if f.is_file() and f.name.startswith("conn.log")
    ) if folder.is_dir() else []  # fmt: skip
    if len(logs) != 1:
        raise DataError(f"{folder}: expected one conn.log.labeled(.gz), found {len(logs)}")
    caps = [f for f in capture_files(folder) if f.parent == folder]
    if len(caps) != 1:
        raise DataError(f"{folder}: expected one capture beside the conn log, found {len(caps)}")
    return caps[0], logs[0]


def load_iot23_packets(
    path: str | Path, *, featurize: Featurizer, on_truncated: OnTruncated = "stop"
) -> list[LabelledSeries]:
    """Per-packet feature series with conn-log labels: ``path`` is one scenario folder (capture +
    conn log), or a folder of scenario folders."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    has_log = any(f.name.startswith("conn.log") for f in root.iterdir() if f.is_file())
    folders = [root] if has_log else sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise DataError(f"{root}: no IoT-23 scenario folders (capture + conn.log.labeled)")
    out: list[LabelledSeries] = []
    for folder in folders:
        cap, log = _scenario_parts(folder)
        labeller = PacketLabeller(read_conn_labels(log))
        packets = list(iter_packets(cap, on_truncated=on_truncated))
        if not packets:
            raise DataError(f"{cap}: capture holds no packets")
        flows = [p for p in packets if p.proto in (1, 6, 17) and p.src_ip]
        matched = sum(labeller.known(p) for p in flows)
        if not flows or matched < MIN_MATCH * len(flows):
            raise DataError(
                f"{cap}: only {matched} of {len(flows)} IP packets belong to connections of "
                f"{log.name}; the capture does not match its conn log"
            )
        labels = [labeller.label(p) for p in packets]
        x, columns = featurize(packets)
        if x.shape != (len(packets), len(columns)):
            raise DataError(f"{cap}: featurizer returned shape {x.shape}")
        out.append(
            LabelledSeries(
                name=f"iot23_packets/{folder.name}",
                x=np.asarray(x, dtype=np.float32),
                columns=tuple(columns),
                y=np.array([lab[0] for lab in labels], dtype=np.int8),
                kinds=np.array([lab[1] for lab in labels], dtype=object),
                t=np.array([p.ts for p in packets], dtype=np.float64),
                segment=folder.name,
                meta={
                    "format": "iot23_packets",
                    "capture": folder.name,
                    "file": cap.name,
                    "matched": f"{matched}/{len(flows)}",
                },
            )
        )
    return out


def iot23_packets_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """Per capture: ``train`` = benign packets of the first third (time order), ``test`` = the
    rest (malicious packets of the first third included)."""
    units: list[EvalUnit] = []
    for s in series:
        if s.y is None:
            raise DataError(f"{s.name}: split needs labels")
        cut = max(1, int(len(s) * TRAIN_FRACTION))
        train_mask = np.zeros(len(s), dtype=bool)
        train_mask[:cut] = s.y[:cut] == 0
        if not train_mask.any() or train_mask.all():
            raise DataError(f"{s.name}: cannot split ({int(train_mask.sum())} training packets)")
        units.append(EvalUnit(name=s.name, train=s.rows(train_mask), test=s.rows(~train_mask)))
    if not units:
        raise DataError("iot23_packets split: no series given")
    return units
