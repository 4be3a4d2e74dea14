"""Loader for a traffic-lab output folder (``ztfm lab run``) and the bundled lab set.

Layout (written by ``ztfm.lab.runner``)::

    manifest.json   seed, tool versions, run times and the SHA-256 of every other file
    devices.csv     device,type,ip,netns,seed
    labels.csv      device,type,start,end,attack,source,target,source_ip,target_ip
    pcaps/<device>.pcap[.gz]

Every file listed in the manifest is hashed and compared before anything is parsed; an extra
capture, a missing file or a changed byte is refused (the manifest is not signed: this catches
corruption and careless edits, not a forger who rewrites the manifest too).

One series per device, one row per packet (features from the injected ``featurize``, e.g.
``ztfm.detect.netfeatures.packet_featurizer()``). A packet is labelled as an attack when it falls
inside one of that device's attack intervals (``LABEL_SLACK_S`` either side) *and* its other end
is the attack's peer address, so benign traffic that happens during an attack stays benign;
``kinds`` names the attack. Packets with the attack's peer up to ``LABEL_TAIL_S`` after the end
(TCP teardown, server time-outs, retransmissions of connections the attack opened) are labelled
1 with kind ``"aftermath"``: attack-caused, but not part of any attack's detection rate.
``segment`` is the device type.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.data._io import read_text
from ztfm.data.pcap import Featurizer, OnTruncated, Packet, iter_packets
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

LABELS_HEADER = (
    "device",
    "type",
    "start",
    "end",
    "attack",
    "source",
    "target",
    "source_ip",
    "target_ip",
)
DEVICES_HEADER = ("device", "type", "ip", "netns", "seed")
FORMAT = "ztfm-lab/1"
LABEL_SLACK_S = 1.0
LABEL_TAIL_S = 10.0
AFTERMATH = "aftermath"  # kind of attack-peer packets in the tail after an attack
ANY_PEER = "0.0.0.0"
MAX_MANIFEST_BYTES = 1 << 20
MAX_ROWS = 100_000
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_IPV4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


@dataclass(frozen=True, slots=True)
class LabDevice:
    name: str
    type: str
    ip: str


@dataclass(frozen=True, slots=True)
class LabLabel:
    """One attack interval as seen by one device's capture."""

    device: str
    type: str
    start: float
    end: float
    attack: str
    source: str
    target: str
    source_ip: str
    target_ip: str

    @property
    def peer_ip(self) -> str:
        """The address at the other end from the labelled device."""
        return self.target_ip if self.device == self.source else self.source_ip


def _ip(value: str, where: str) -> str:
    m = _IPV4.match(value)
    if m is None or any(int(g) > 255 for g in m.groups()):
        raise DataError(f"{where}: not an IPv4 address: {value[:40]!r}")
    return value


def _name(value: str, where: str, what: str) -> str:
    if not _NAME.match(value):
        raise DataError(f"{where}: bad {what} {value[:40]!r}")
    return value


def _rows(path: Path, header: tuple[str, ...]) -> list[dict[str, str]]:
    text = read_text(path, max_bytes=16 * 1024 * 1024)
    reader = csv.reader(io.StringIO(text))
    try:
        head = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file") from None
    if tuple(c.strip() for c in head) != header:
        raise DataError(f"{path}: header must be {','.join(header)}")
    out: list[dict[str, str]] = []
    for i, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{i}: {len(row)} fields, expected {len(header)}")
        if len(out) >= MAX_ROWS:
            raise DataError(f"{path}: more than {MAX_ROWS} rows")
        out.append(dict(zip(header, (c.strip() for c in row), strict=True)))
    return out


def read_devices(root: Path) -> dict[str, LabDevice]:
    devices: dict[str, LabDevice] = {}
    path = root / "devices.csv"
    for i, r in enumerate(_rows(path, DEVICES_HEADER), start=2):
        where = f"{path}:{i}"
        d = LabDevice(
            _name(r["device"], where, "device"),
            _name(r["type"], where, "type"),
            _ip(r["ip"], where),
        )
        if d.name in devices:
            raise DataError(f"{where}: device {d.name} listed twice")
        devices[d.name] = d
    if not devices:
        raise DataError(f"{path}: no devices")
    return devices


def _time(value: str, where: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise DataError(f"{where}: not a number: {value[:40]!r}") from None
    if not math.isfinite(t) or t < 0:
        raise DataError(f"{where}: time must be finite and >= 0, got {value[:40]!r}")
    return t


def read_labels(root: Path, devices: dict[str, LabDevice]) -> list[LabLabel]:
    path = root / "labels.csv"
    out = []
    for i, r in enumerate(_rows(path, LABELS_HEADER), start=2):
        where = f"{path}:{i}"
        lab = LabLabel(
            device=_name(r["device"], where, "device"),
            type=_name(r["type"], where, "type"),
            start=_time(r["start"], where),
            end=_time(r["end"], where),
            attack=_name(r["attack"], where, "attack"),
            source=_name(r["source"], where, "source"),
            target=_name(r["target"], where, "target"),
            source_ip=_ip(r["source_ip"], where),
            target_ip=_ip(r["target_ip"], where),
        )
        if lab.attack == "benign":
            raise DataError(f"{where}: 'benign' is not an attack name")
        if lab.device not in devices:
            raise DataError(f"{where}: unknown device {lab.device!r}")
        if devices[lab.device].type != lab.type:
            raise DataError(
                f"{where}: device {lab.device} is a {devices[lab.device].type}, not a {lab.type}"
            )
        if lab.device not in (lab.source, lab.target):
            raise DataError(f"{where}: device {lab.device} is neither source nor target")
        if not lab.end > lab.start:
            raise DataError(f"{where}: end must be after start")
        out.append(lab)
    return out


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's SHA-256 and that no capture is unlisted."""
    path = root / "manifest.json"
    text = read_text(path, max_bytes=MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise DataError(f"{path}: no file list")
    base = root.resolve()
    for rel, digest in files.items():
        if not isinstance(rel, str) or not isinstance(digest, str):
            raise DataError(f"{path}: bad file entry")
        f = (root / rel).resolve()
        if base not in f.parents:
            raise DataError(f"{path}: file {rel!r} is outside the lab folder")
        if not f.is_file():
            raise DataError(f"{root}: {rel} is listed in the manifest but missing")
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise DataError(f"{root}: {rel} does not match its SHA-256 in the manifest")
    pcaps = root / "pcaps"
    if pcaps.is_dir():
        for f in sorted(pcaps.iterdir()):
            if str(f.relative_to(root)) not in files:
                raise DataError(f"{root}: {f.relative_to(root)} is not listed in the manifest")
    for needed in ("labels.csv", "devices.csv"):
        if needed not in files:
            raise DataError(f"{path}: {needed} is not listed")
    return manifest


def _capture(root: Path, device: str) -> Path:
    for name in (f"{device}.pcap", f"{device}.pcap.gz"):
        p = root / "pcaps" / name
        if p.is_file():
            return p
    raise DataError(f"{root}: no capture for device {device} (pcaps/{device}.pcap[.gz])")


def label_packets(
    packets: Sequence[Packet],
    device: LabDevice,
    labels: Sequence[LabLabel],
    *,
    services_ip: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(y int8, kinds object) per packet of ``device`` from its attack intervals and peers.

    A peer of ``0.0.0.0`` (an attack on the whole subnet, e.g. a worm's telnet scan) matches
    every peer except ``services_ip``, the fleet's own services host."""
    n = len(packets)
    y = np.zeros(n, dtype=np.int8)
    kinds = np.full(n, "benign", dtype=object)
    if n == 0:
        return y, kinds
    ts = np.array([p.ts for p in packets], dtype=np.float64)
    src = np.array([p.src_ip for p in packets], dtype=object)
    dst = np.array([p.dst_ip for p in packets], dtype=object)
    for lab in labels:
        if lab.device != device.name:
            continue
        peer = lab.peer_ip
        if peer == ANY_PEER:
            other = np.where(src == device.ip, dst, src)
            involved = ((src == device.ip) | (dst == device.ip)) & (other != services_ip)
        else:
            involved = ((src == peer) & (dst == device.ip)) | ((src == device.ip) & (dst == peer))
        during = (ts >= lab.start - LABEL_SLACK_S) & (ts <= lab.end + LABEL_SLACK_S) & involved
        after = (ts > lab.end + LABEL_SLACK_S) & (ts <= lab.end + LABEL_TAIL_S) & involved
        after &= kinds == "benign"
        y[during | after] = 1
        kinds[after] = AFTERMATH
        kinds[during] = lab.attack
    return y, kinds


def load_lab(
    path: str | Path, *, featurize: Featurizer, on_truncated: OnTruncated = "raise"
) -> list[LabelledSeries]:
    """One per-packet series per device of a lab folder (see the module docstring)."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise DataError(f"{root}: no such lab folder")
    manifest = read_manifest(root)
    devices = read_devices(root)
    labels = read_labels(root, devices)
    services_ip = manifest.get("services_ip", "")
    if not isinstance(services_ip, str):
        raise DataError(f"{root}: bad services_ip in the manifest")
    first_attack = min((lab.start for lab in labels), default=math.inf)
    out: list[LabelledSeries] = []
    for dev in devices.values():
        cap = _capture(root, dev.name)
        packets = list(iter_packets(cap, on_truncated=on_truncated))
        if not packets:
            raise DataError(f"{cap}: capture holds no packets")
        x, columns = featurize(packets)
        if x.shape != (len(packets), len(columns)):
            raise DataError(
                f"{cap}: featurizer returned shape {x.shape} for {len(packets)} packets"
            )
        y, kinds = label_packets(packets, dev, labels, services_ip=services_ip)
        t = np.array([p.ts for p in packets], dtype=np.float64)
        out.append(
            LabelledSeries(
                name=f"lab/{dev.name}",
                x=np.asarray(x, dtype=np.float32),
                columns=tuple(columns),
                y=y,
                kinds=kinds,
                t=t,
                segment=dev.type,
                meta={
                    "format": "lab",
                    "device": dev.name,
                    "type": dev.type,
                    "ip": dev.ip,
                    "file": cap.name,
                    "seed": str(manifest.get("seed", "")),
                    "train_until": repr(first_attack),
                },
            )
        )
    return out


def lab_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """One unit per device: ``train`` = its packets before the run's first attack (the benign
    warm-up, no attack label allowed there), ``test`` = every later packet."""
    units = []
    for s in series:
        if s.t is None or s.y is None:
            raise DataError(f"{s.name}: lab series needs times and labels")
        try:
            until = float(s.meta.get("train_until", "inf"))
        except ValueError:
            raise DataError(f"{s.name}: bad train_until in meta") from None
        cut = int(np.searchsorted(s.t, until, side="left")) if math.isfinite(until) else len(s) // 2
        if cut < 2 or cut >= len(s):
            raise DataError(
                f"{s.name}: too few packets before the first attack to train on ({cut} of {len(s)})"
            )
        if s.y[:cut].any():
            raise DataError(f"{s.name}: attack packets inside the benign warm-up")
        test = s.rows(slice(cut, None))
        units.append(EvalUnit(name=s.name, train=s.rows(slice(0, cut)), test=test))
    if not units:
        raise DataError("lab split: no devices")
    return units
