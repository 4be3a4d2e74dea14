"""Live scoring inside the lab: the path a device agent uses on its own interface.

Packets come from ``ztfm.data.live.LiveCapture`` (AF_PACKET, the same ``decode_frame`` as capture
files), go through the same streaming ``DeviceWindows`` featurizer the lab evaluation uses, and
are scored window by window by a ``StreamingDetector`` fitted on the device's own benign warm-up
(learn, then protect). ``score_windows`` is the shared core: fed from a capture file it gives
exactly what live mode would have said.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ztfm.data.live import LiveCapture
from ztfm.data.pcap import Packet
from ztfm.detect.netwindows import DeviceWindows, rows_of
from ztfm.detect.stream import PipelineConfig, StreamingDetector
from ztfm.errors import DataError, LabError
from ztfm.lab.evaluate import PCA_VAR_FRAC, RAW

DEFAULT_DETECTOR = "pca"
IDLE_S = 0.5
MIN_WARMUP_WINDOWS = 10
SIOCGIFADDR = 0x8915


@dataclass(frozen=True, slots=True)
class WindowScore:
    start: float
    score: float
    alarm: bool


def fit_windows(rows: np.ndarray, *, rng: np.random.Generator,
                detector: str = DEFAULT_DETECTOR) -> StreamingDetector:  # fmt: skip
    """Fit on benign warm-up windows; threshold = the highest warm-up score (no warm-up alarm)."""
    if rows.ndim != 2 or rows.shape[0] < MIN_WARMUP_WINDOWS:
        raise LabError(f"need at least {MIN_WARMUP_WINDOWS} warm-up windows, got {rows.shape[0]}")
    hp: tuple[tuple[str, object], ...] = (("var_frac", PCA_VAR_FRAC),) if detector == "pca" else ()
    pipe = StreamingDetector(rows.shape[1], PipelineConfig(detector=detector, features=RAW,
                                                           smooth=1, hparams=hp))  # fmt: skip
    try:
        pipe.fit(rows, rng=rng)
    except DataError as exc:
        raise LabError(f"cannot fit on the warm-up windows: {exc}") from exc
    top = float(np.max(pipe.score_stream(rows)))
    pipe.threshold = top if top > 0 else top + 1e-9
    return pipe


def score_windows(
    packets: Iterable[Packet],
    fx: DeviceWindows,
    pipe: StreamingDetector,
    *,
    flush: bool = True,
    origin: float | None = None,
) -> Iterator[WindowScore]:
    """Score each window as it closes (fresh stream position from ``origin`` or the first
    packet; the allow-list is kept)."""
    fx.reset(origin)
    pipe.reset()
    for p in packets:
        for start, row in fx.push(p):
            s, alarm = pipe.update(row)
            yield WindowScore(start, float(s), bool(alarm))
    if flush:
        for start, row in fx.flush():
            s, alarm = pipe.update(row)
            yield WindowScore(start, float(s), bool(alarm))


def interface_ipv4(interface: str) -> str:
    """The IPv4 address of ``interface`` (SIOCGIFADDR)."""
    if not 1 <= len(interface) <= 15 or "/" in interface:
        raise LabError(f"bad interface name {interface!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", interface.encode()))
        except OSError as exc:
            raise LabError(f"{interface}: no IPv4 address ({exc.strerror})") from exc
    return socket.inet_ntoa(res[20:24])


def _bounded(cap: LiveCapture, seconds: float, max_packets: int) -> Iterator[Packet]:
    """Packets for ``seconds`` (or ``max_packets``), whatever the traffic rate."""
    deadline = time.monotonic() + seconds
    n = 0
    for _ in range(int(seconds / IDLE_S) + 2):  # each idle round lasts IDLE_S
        for p in cap.packets(max_packets=max_packets - n, idle_timeout_s=IDLE_S):
            n += 1
            yield p
            if time.monotonic() >= deadline or n >= max_packets:
                return
        if time.monotonic() >= deadline:
            return


@dataclass(frozen=True, slots=True)
class LiveReport:
    ip: str
    warmup_windows: int
    threshold: float
    windows: tuple[WindowScore, ...]

    @property
    def alarms(self) -> int:
        return sum(w.alarm for w in self.windows)


def live_session(interface: str, *, warmup_s: float, seconds: float, width_s: float = 1.0,
                 detector: str = DEFAULT_DETECTOR, rng: np.random.Generator,
                 max_packets: int = 1_000_000) -> LiveReport:  # fmt: skip
    """Learn the device's traffic for ``warmup_s`` then score it for ``seconds``, live."""
    for name, v in (("warmup_s", warmup_s), ("seconds", seconds)):
        if not 0 < v <= 86_400:
            raise LabError(f"{name} must be in (0, 86400], got {v}")
    ip = interface_ipv4(interface)
    fx = DeviceWindows(ip, width_s)
    with LiveCapture(interface) as cap:
        began = time.time()  # kernel packet stamps are CLOCK_REALTIME too
        warm = list(_bounded(cap, warmup_s, max_packets))
        fx.learn(warm)
        _, rows = rows_of(fx, warm, origin=began, until=time.time())
        pipe = fit_windows(rows, rng=rng, detector=detector)
        live = _bounded(cap, seconds, max_packets)
        scored = tuple(score_windows(live, fx, pipe, flush=False, origin=time.time()))
    assert pipe.threshold is not None
    return LiveReport(ip, int(rows.shape[0]), float(pipe.threshold), scored)
