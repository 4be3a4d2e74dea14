"""Packet captures: classic pcap and pcapng, decoded with dpkt into small ``Packet`` records.

The container is told by its magic bytes, never by the file extension; a gzipped capture is
unpacked on the fly. Link types: Ethernet (1, with 802.1Q tags), Linux cooked SLL (113) and SLL2
(276), raw IP (101, 12, 14, 228, 229). The same ``decode_frame`` serves files here and the live
AF_PACKET source in ``ztfm.data.live``, so a replayed capture and a live stream give the same
records.

A capture whose last record is cut short raises ``DataError`` by default; with
``on_truncated="stop"`` the reader stops at the last whole packet and logs one warning instead.
A malformed packet *inside* a well-formed capture is not an error (attackers send those): it
becomes a record with the fields that could be decoded and ``malformed=True``.
"""

from __future__ import annotations

import enum
import gzip
import logging
import socket
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import dpkt
import numpy as np

from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

log = logging.getLogger(__name__)

#: Largest single read (record or block) accepted from a capture; a corrupt length field above
#: this is refused instead of allocating gigabytes.
MAX_RECORD_BYTES = 4 * 1024 * 1024

PCAP_MAGICS = (
    b"\xd4\xc3\xb2\xa1",  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4",  # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1",  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d",  # big-endian, nanoseconds
)
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

OnTruncated = Literal["raise", "stop"]


class Link(enum.Enum):
    """Link-layer framing of a capture or interface."""

    ETHERNET = "ethernet"
    SLL = "sll"
    SLL2 = "sll2"
    RAW = "raw"


_DLT_TO_LINK: dict[int, Link] = {
    1: Link.ETHERNET,
    113: Link.SLL,
    276: Link.SLL2,
    101: Link.RAW,
    12: Link.RAW,
    14: Link.RAW,
    228: Link.RAW,
    229: Link.RAW,
}

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded frame. Empty strings / zeros mark fields the frame does not have.

    ``length`` is the captured frame length in bytes (link header included); ``payload_len`` is
    the transport payload (TCP/UDP data, else the IP payload). ``src_mac`` is the sender's
    hardware address where the link carries one (Ethernet, SLL, SLL2); ``dst_mac`` only exists on
    Ethernet. For ARP, ``src_ip``/``dst_ip`` are the sender/target protocol addresses.
    """

    ts: float
    link: Link
    length: int
    src_mac: str = ""
    dst_mac: str = ""
    ethertype: int = 0
    ip_version: int = 0
    src_ip: str = ""
    dst_ip: str = ""
    proto: int = 0
    ttl: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    payload_len: int = 0
    malformed: bool = False


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip_fields(ip: Any) -> dict[str, Any]:
    """Fields of a dpkt IP / IP6 / ARP object (never raises on odd contents)."""
    out: dict[str, Any] = {}
    if isinstance(ip, dpkt.ip.IP):
        out.update(
            ip_version=4,
            src_ip=socket.inet_ntop(socket.AF_INET, ip.src),
            dst_ip=socket.inet_ntop(socket.AF_INET, ip.dst),
            proto=int(ip.p),
            ttl=int(ip.ttl),
        )
    elif isinstance(ip, dpkt.ip6.IP6):
        out.update(
            ip_version=6,
            src_ip=socket.inet_ntop(socket.AF_INET6, ip.src),
            dst_ip=socket.inet_ntop(socket.AF_INET6, ip.dst),
            proto=int(getattr(ip, "p", ip.nxt)),
            ttl=int(ip.hlim),
        )
    elif isinstance(ip, dpkt.arp.ARP):
        if len(ip.spa) == 4 and len(ip.tpa) == 4:
            out.update(
                src_ip=socket.inet_ntop(socket.AF_INET, ip.spa),
                dst_ip=socket.inet_ntop(socket.AF_INET, ip.tpa),
            )
        return out
    else:
        return out
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        out.update(
            sport=int(l4.sport),
            dport=int(l4.dport),
            tcp_flags=int(l4.flags),
            payload_len=len(l4.data),
        )
    elif isinstance(l4, dpkt.udp.UDP):
        out.update(sport=int(l4.sport), dport=int(l4.dport), payload_len=len(l4.data))
    else:
        out["payload_len"] = len(l4) if isinstance(l4, bytes | bytearray) else len(bytes(l4))
        if out["proto"] in (6, 17):  # a TCP/UDP header dpkt could not parse
            out["malformed"] = True
    return out


_DECODE_ERRORS = (dpkt.UnpackError, struct.error, ValueError, IndexError, TypeError)


def decode_frame(ts: float, link: Link, buf: bytes) -> Packet:
    """Decode one frame of the given link type into a ``Packet``; never raises on bad bytes."""
    fields: dict[str, Any] = {}
    try:
        if link is Link.ETHERNET:
            eth = dpkt.ethernet.Ethernet(buf)
            fields.update(src_mac=_mac(eth.src), dst_mac=_mac(eth.dst), ethertype=int(eth.type))
            net: Any = eth.data
        elif link is Link.SLL:
            sll = dpkt.sll.SLL(buf)
            fields.update(
                src_mac=_mac(sll.hdr[: min(int(sll.hlen), 8)]), ethertype=int(sll.ethtype)
            )
            net = sll.data
        elif link is Link.SLL2:
            sll2 = dpkt.sll2.SLL2(buf)
            fields.update(
                src_mac=_mac(sll2.hdr[: min(int(sll2.hlen), 8)]), ethertype=int(sll2.ethtype)
            )
            net = sll2.data
        else:
            version = buf[0] >> 4 if buf else 0
            if version == 4:
                net = dpkt.ip.IP(buf)
                fields["ethertype"] = 0x0800
            elif version == 6:
                net = dpkt.ip6.IP6(buf)
                fields["ethertype"] = 0x86DD
            else:
                return Packet(ts=ts, link=link, length=len(buf), malformed=True)
        fields.update(_ip_fields(net))
        etype = fields.get("ethertype")
        if (etype in (0x0800, 0x86DD) and "ip_version" not in fields) or (
            etype == 0x0806 and "src_ip" not in fields
        ):
            fields["malformed"] = True
    except _DECODE_ERRORS:
        fields["malformed"] = True
    return Packet(ts=ts, link=link, length=len(buf), **fields)


class _Guarded:
    """File wrapper that notices short reads (truncation) and refuses absurd read sizes."""

    def __init__(self, raw: IO[bytes], name: str) -> None:
        self._raw = raw
        self._name = name
        self.short = False  # some read returned fewer bytes than asked (0 included)
        self.partial = False  # some read returned more than 0 but fewer bytes than asked

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise DataError(f"{self._name}: corrupt capture (negative block length)")
        if n > MAX_RECORD_BYTES:
            raise DataError(
                f"{self._name}: corrupt capture (record of {n} bytes exceeds the "
                f"{MAX_RECORD_BYTES}-byte limit)"
            )
        try:
            data = self._raw.read(n)
        except EOFError:  # gzip stream cut short
            self.short = self.partial = True
            return b""
        except (OSError, zlib.error) as exc:
            raise DataError(f"{self._name}: corrupt gzip ({exc})") from exc
        if len(data) < n:
            self.short = True
            self.partial = self.partial or len(data) > 0
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._raw.seek(pos, whence)

    def tell(self) -> int:
        return self._raw.tell()


def sniff_format(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None from the first bytes of an (uncompressed) file."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        return "pcapng"
    return None


def read_head(path: str | Path, n: int = 4096) -> bytes:
    """The first ``n`` bytes of a file, gunzipped if it is gzip; ``DataError`` if unreadable."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(max(n, 2))
            if head[:2] == GZIP_MAGIC:
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read(n)
            return head[:n]
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected a file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{p}: unreadable or corrupt gzip ({exc})") from exc


class _Capture:
    """An open capture: the dpkt reader over a guarded (gunzipped) stream, and its link type."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a capture file")
        self.name = str(path)
        self._fh: IO[bytes] = path.open("rb")
        self._stream: IO[bytes] = self._fh
        try:
            if self._fh.read(2) == GZIP_MAGIC:
                self._stream = gzip.GzipFile(fileobj=self._fh)  # type: ignore[assignment]
            self._fh.seek(0)
            self.guarded = _Guarded(self._stream, self.name)
            self.kind, self.reader, self.link = self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> tuple[str, Any, Link]:
        name, guarded = self.name, self.guarded
        head = guarded.read(4)
        if not head:
            raise DataError(f"{name}: file is empty")
        kind = sniff_format(head)
        if kind is None:
            raise DataError(f"{name}: not a pcap or pcapng capture (magic {head.hex()})")
        guarded.seek(0)
        try:
            reader: Any = (
                dpkt.pcap.Reader(guarded) if kind == "pcap" else dpkt.pcapng.Reader(guarded)
            )
        except DataError:
            raise
        except (ValueError, dpkt.UnpackError, struct.error) as exc:
            raise DataError(f"{name}: corrupt {kind} header ({exc})") from exc
        if guarded.short:
            raise DataError(f"{name}: truncated {kind} header")
        dlt = int(reader.datalink())
        link = _DLT_TO_LINK.get(dlt)
        if link is None:
            raise DataError(f"{name}: unsupported link type {dlt}")
        return kind, reader, link

    def close(self) -> None:
        if self._stream is not self._fh:
            self._stream.close()
        self._fh.close()

    def packets(self, on_truncated: OnTruncated) -> Iterator[Packet]:
        name, guarded, kind, link = self.name, self.guarded, self.kind, self.link
        it = iter(self.reader)
        count = 0
        truncated = False
        while True:
            try:
                ts, buf = next(it)
            except StopIteration:
                truncated = guarded.partial
                break
            except DataError:
                raise
            except (ValueError, dpkt.UnpackError, struct.error) as exc:
                if guarded.short:
                    truncated = True
                    break
                raise DataError(
                    f"{name}: corrupt {kind} record after packet {count} ({exc})"
                ) from exc
            if guarded.short:
                truncated = True
                break
            count += 1
            yield decode_frame(float(ts), link, bytes(buf))
        if truncated:
            msg = f"{name}: truncated capture after packet {count}"
            if on_truncated == "raise":
                raise DataError(msg)
            log.warning("%s; stopping at the last whole packet", msg)


def capture_link(path: str | Path) -> Link:
    """The link type of a capture file (``DataError`` if it is not a capture or unsupported)."""
    cap = _Capture(Path(path))
    cap.close()
    return cap.link


def _iter(path: Path, on_truncated: OnTruncated) -> Iterator[Packet]:
    cap = _Capture(path)
    try:
        yield from cap.packets(on_truncated)
    finally:
        cap.close()


def iter_packets(path: str | Path, *, on_truncated: OnTruncated = "raise") -> Iterator[Packet]:
    """Yield every packet of a pcap / pcapng capture (optionally gzipped) in file order.

    Raises ``DataError`` on a missing, empty or non-capture file, an unsupported link type, a
    corrupt header or record, or (``on_truncated="raise"``, the default) a cut-short last record.
    With ``on_truncated="stop"`` a truncated capture ends at the last whole packet with a warning.
    Header errors are raised at the first ``next()``.
    """
    if on_truncated not in ("raise", "stop"):
        raise DataError(f"on_truncated must be 'raise' or 'stop', got {on_truncated!r}")
    return _iter(Path(path), on_truncated)


# --- captures as labelled feature series -------------------------------------------------------

#: Turns a packet sequence into (features (n, d) float32, column names). The data layer does not
#: compute features itself; ``ztfm.detect.netfeatures.packet_featurizer()`` is the standard one.
Featurizer = Callable[[Iterable[Packet]], tuple[np.ndarray, tuple[str, ...]]]

BENIGN_FOLDERS = frozenset({"benign", "normal", "benign-5mb"})
ATTACK_FOLDERS = frozenset(
    {"attack", "malicious", "bruteforce", "flood", "malariados", "malformed", "dos", "ddos",
     "scan", "scanning", "mirai", "gafgyt", "slowite"}
)  # fmt: skip
TRAIN_FRACTION = 0.5


def is_capture(path: str | Path) -> bool:
    """True if the file starts with pcap / pcapng magic (after gunzip); False otherwise."""
    try:
        return sniff_format(read_head(path, 4)) is not None
    except DataError:
        return False


def capture_files(path: str | Path) -> list[Path]:
    """The capture itself, or every capture file (by magic bytes) under a folder, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    found = sorted(f for f in p.rglob("*") if f.is_file() and is_capture(f))
    if not found:
        raise DataError(f"{p}: no pcap or pcapng captures found")
    return found


def folder_label(path: Path) -> str | None:
    """The label its folder name gives a capture ("benign", an attack name) or None."""
    name = path.parent.name.lower()
    if name in BENIGN_FOLDERS:
        return "benign"
    if name in ATTACK_FOLDERS:
        return name
    return None


def capture_series(
    path: Path,
    featurize: Featurizer,
    *,
    label: str | None,
    on_truncated: OnTruncated = "raise",
    name: str | None = None,
    segment: str = "pcap",
    fmt: str = "pcap",
    max_packets: int | None = None,
) -> LabelledSeries:
    """One capture as a series of per-packet features; ``label`` None means unlabelled.

    Packets are streamed into ``featurize`` (only their timestamps are kept), so memory grows
    with the feature matrix, not with the decoded packets. ``max_packets`` stops after that many
    packets (``meta["cut"]`` then says so).
    """
    if max_packets is not None and max_packets < 1:
        raise DataError(f"max_packets must be at least 1, got {max_packets}")
    times: list[float] = []
    links: set[str] = set()

    def stream() -> Iterator[Packet]:
        for p in iter_packets(path, on_truncated=on_truncated):
            if max_packets is not None and len(times) >= max_packets:
                return
            times.append(p.ts)
            links.add(p.link.value)
            yield p

    x, columns = featurize(stream())
    n = len(times)
    if not n:
        raise DataError(f"{path}: capture holds no packets")
    if x.shape != (n, len(columns)):
        raise DataError(f"{path}: featurizer returned shape {x.shape} for {n} packets")
    y: np.ndarray | None = None
    kinds: np.ndarray | None = None
    if label is not None:
        benign = label.lower() in BENIGN_FOLDERS
        y = np.full(n, 0 if benign else 1, dtype=np.int8)
        kinds = np.full(n, "benign" if benign else label, dtype=object)
    stem = path.name.removesuffix(".gz")
    return LabelledSeries(
        name=name or f"{fmt}/{stem}",
        x=np.asarray(x, dtype=np.float32),
        columns=tuple(columns),
        y=y,
        kinds=kinds,
        t=np.array(times, dtype=np.float64),
        segment=segment,
        meta={"format": fmt, "link": ",".join(sorted(links)), "file": path.name,
              "labelled": "no" if label is None else "yes",
              "cut": "no" if max_packets is None or n < max_packets else f"{max_packets} packets"},
    )  # fmt: skip


def load_pcap(
    path: str | Path,
    *,
    featurize: Featurizer,
    label: str | None = None,
    on_truncated: OnTruncated = "raise",
    max_packets: int | None = None,
) -> list[LabelledSeries]:
    """Per-packet feature series, one per capture (a file, or every capture under a folder).

    ``label`` labels every capture ("benign" -> 0, anything else -> 1 with that kind); when None,
    a capture is labelled from its folder name where known (``benign/``, ``normal/``, ``flood/``,
    ``bruteforce/``...) and left unlabelled otherwise.
    """
    out = []
    for f in capture_files(path):
        lab = label if label is not None else folder_label(f)
        out.append(
            capture_series(
                f, featurize, label=lab, on_truncated=on_truncated, max_packets=max_packets
            )
        )
    return out


def concat_series(name: str, parts: Sequence[LabelledSeries]) -> LabelledSeries:
    """Rows of several labelled series with the same columns, one after the other."""
    if not parts:
        raise DataError(f"{name}: nothing to concatenate")
    cols = parts[0].columns
    for p in parts:
        if p.columns != cols:
            raise DataError(f"{name}: {p.name} has different columns")
        if p.y is None:
            raise DataError(f"{name}: {p.name} has no labels")
    return LabelledSeries(
        name=name,
        x=np.concatenate([p.x for p in parts]),
        columns=cols,
        y=np.concatenate([p.y for p in parts if p.y is not None]),
        kinds=np.concatenate(
            [p.kinds if p.kinds is not None else np.full(len(p), "", dtype=object) for p in parts]
        ),
        t=np.concatenate([p.t if p.t is not None else np.full(len(p), np.nan) for p in parts]),
        segment=parts[0].segment,
        meta={"format": parts[0].meta.get("format", ""), "parts": ",".join(p.name for p in parts)},
    )


def pcap_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """One unit over all captures: ``train`` = the first half (in time) of every benign capture,
    ``test`` = the second halves plus every attack capture. Unlabelled captures are refused."""
    train: list[LabelledSeries] = []
    test: list[LabelledSeries] = []
    for s in series:
        if s.y is None:
            raise DataError(
                f"{s.name}: capture has no labels (pass label=, or put it under benign/ or an "
                f"attack-named folder)"
            )
        if (s.y == 0).all():
            k = max(1, int(len(s) * TRAIN_FRACTION))
            if k >= len(s):
                raise DataError(f"{s.name}: too few packets to split ({len(s)})")
            train.append(s.rows(slice(0, k)))
            test.append(s.rows(slice(k, None)))
        else:
            test.append(s)
    if not train:
        raise DataError("pcap split: no benign capture to train on")
    return [EvalUnit(name="pcap", train=concat_series("pcap/train", train),
                     test=concat_series("pcap/test", test))]  # fmt: skip
