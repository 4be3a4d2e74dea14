"""Live packet source on a network interface (Linux AF_PACKET raw socket; needs root or
CAP_NET_RAW). It yields the same ``Packet`` records as ``iter_packets`` on a capture file, through
the same ``decode_frame``, so one code path serves a replayed capture and a live stream.

This is an edge adapter (it reads from the network), kept beside the file reader so both share
the decoder; the pure core never calls it. It only listens: it sends nothing.

Timestamps are the kernel's receive time (``SO_TIMESTAMPNS``); if the kernel gives none, the
injected ``Clock`` is read. On the loopback interface each packet is seen twice by AF_PACKET
(outgoing and incoming); the outgoing copy is dropped there, as libpcap does.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ztfm.data.pcap import Link, Packet, decode_frame
from ztfm.errors import DataError
from ztfm.types import Clock, SystemClock

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
_ARPHRD_LINK = {1: Link.ETHERNET, 772: Link.ETHERNET, 65534: Link.RAW}
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def interface_link(interface: str) -> Link:
    """The framing AF_PACKET delivers on ``interface`` (from ``/sys/class/net/<if>/type``)."""
    if not _IFNAME.match(interface) or interface in (".", ".."):
        raise DataError(f"bad interface name {interface!r}")
    type_file = Path("/sys/class/net") / interface / "type"
    try:
        arphrd = int(type_file.read_text().strip())
    except FileNotFoundError:
        raise DataError(f"no such network interface {interface!r}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the link type of {interface!r} ({exc})") from exc
    link = _ARPHRD_LINK.get(arphrd)
    if link is None:
        raise DataError(f"interface {interface!r} has unsupported link type {arphrd}")
    return link


class LiveCapture:
    """A raw-socket listener on one interface; use as a context manager.

    ``frames()`` yields ``(ts, frame bytes)``; ``packets()`` yields decoded ``Packet`` records.
    Both stop after ``max_packets`` frames or when nothing arrives for ``idle_timeout_s``
    (None = wait for ever).
    """

    def __init__(
        self,
        interface: str,
        *,
        snaplen: int = 65535,
        clock: Clock | None = None,
    ) -> None:
        if not 64 <= snaplen <= 262144:
            raise DataError(f"snaplen must be in [64, 262144], got {snaplen}")
        self.link = interface_link(interface)
        self.interface = interface
        self.snaplen = snaplen
        self._clock = clock or SystemClock()
        self._loopback = Path(f"/sys/class/net/{interface}/type").read_text().strip() == "772"
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as exc:
            raise DataError("live capture needs root or CAP_NET_RAW") from exc
        except OSError as exc:
            raise DataError(f"cannot open a raw socket ({exc})") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((interface, 0))
        except OSError as exc:
            sock.close()
            raise DataError(f"cannot listen on {interface!r} ({exc})") from exc
        self._sock: socket.socket | None = sock

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def frames(
        self, *, max_packets: int | None = None, idle_timeout_s: float | None = None
    ) -> Iterator[tuple[float, bytes]]:
        """Yield ``(timestamp, frame)`` as frames arrive."""
        sock = self._sock
        if sock is None:
            raise DataError("live capture is closed")
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise DataError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        sock.settimeout(idle_timeout_s)
        anc_size = socket.CMSG_SPACE(16)
        count = 0
        while max_packets is None or count < max_packets:
            try:
                data, anc, _flags, addr = sock.recvmsg(self.snaplen, anc_size)
            except TimeoutError:
                return
            except OSError as exc:
                raise DataError(f"live capture on {self.interface!r} failed ({exc})") from exc
            if self._loopback and len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            ts: float | None = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    ts = sec + nsec * 1e-9
            if ts is None:
                ts = self._clock.now()
            count += 1
            yield ts, data

    def packets(
        self, *, max_packets: int | None = None, idle_timeout_s: float | None = None
    ) -> Iterator[Packet]:
        """Yield decoded ``Packet`` records (same decoder as capture files)."""
        for ts, frame in self.frames(max_packets=max_packets, idle_timeout_s=idle_timeout_s):
            yield decode_frame(ts, self.link, frame)


def iter_live(
    interface: str,
    *,
    max_packets: int | None = None,
    idle_timeout_s: float | None = None,
    snaplen: int = 65535,
    clock: Clock | None = None,
) -> Iterator[Packet]:
    """Packets from a live interface until ``max_packets`` or ``idle_timeout_s`` of silence."""
    with LiveCapture(interface, snaplen=snaplen, clock=clock) as cap:
        yield from cap.packets(max_packets=max_packets, idle_timeout_s=idle_timeout_s)
