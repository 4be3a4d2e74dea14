"""Live scoring inside the lab: the path a device agent uses on its own interface.

Packets come from ``ztfm.data.live.LiveCapture`` (AF_PACKET, same ``decode_frame`` as capture
files), go through the same ``PacketFeatures`` extractor the file loaders use, and are scored by
a ``StreamingDetector`` fitted on benign lab traffic of the same device type. ``score_packets``
is the shared core: fed from a file it reproduces what live mode would have said.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ztfm.data.lab import lab_split
from ztfm.data.pcap import Packet
from ztfm.data.series import LabelledSeries
from ztfm.detect.features import FeatureSpec
from ztfm.detect.netfeatures import PacketFeatures
from ztfm.detect.stream import PipelineConfig, StreamingDetector
from ztfm.errors import DataError, LabError

NETWORK_FEATURES = FeatureSpec(windows=(), ewma_alphas=(), raw=True, delta=False)
DEFAULT_DETECTOR = "pca"
IDLE_S = 0.5


@dataclass(frozen=True, slots=True)
class LiveScore:
    ts: float
    score: float
    alarm: bool
    src_ip: str
    dst_ip: str


def lab_pipeline_config(
    detector: str = DEFAULT_DETECTOR, *, target_far: float = 0.01
) -> PipelineConfig:
    """Per-packet Kitsune features used as they are (they carry their own damped windows)."""
    hp: tuple[tuple[str, object], ...] = (("var_frac", 0.99),) if detector == "pca" else ()
    return PipelineConfig(
        detector=detector, features=NETWORK_FEATURES, smooth=1, target_far=target_far, hparams=hp
    )


def fit_for_type(
    series: Sequence[LabelledSeries],
    device_type: str,
    *,
    rng: np.random.Generator,
    detector: str = DEFAULT_DETECTOR,
    target_far: float = 0.01,
) -> StreamingDetector:
    """Fit one pipeline on the benign warm-up of every device of ``device_type``."""
    units = [u for u in lab_split(series) if u.train.segment == device_type]
    if not units:
        raise LabError(f"no device of type {device_type!r} in the training lab data")
    x = np.concatenate([u.train.x for u in units])
    pipe = StreamingDetector(x.shape[1], lab_pipeline_config(detector, target_far=target_far))
    try:
        pipe.fit(x, rng=rng)
    except DataError as exc:
        raise LabError(f"cannot fit on {device_type} warm-up traffic: {exc}") from exc
    return pipe


def score_packets(
    packets: Iterable[Packet], pipe: StreamingDetector, *, max_packets: int = 10_000_000
) -> Iterator[LiveScore]:
    """Score packets one by one as they arrive (fresh feature state), at most ``max_packets``."""
    fx = PacketFeatures()
    pipe.reset()
    for i, p in enumerate(packets):
        if i >= max_packets:
            return
        score, alarm = pipe.update(fx.update(p))
        yield LiveScore(
            p.ts,
            float(score) if math.isfinite(score) else math.inf,
            bool(alarm),
            p.src_ip,
            p.dst_ip,
        )


def score_interface(
    interface: str, pipe: StreamingDetector, *, seconds: float, max_packets: int = 1_000_000
) -> Iterator[LiveScore]:
    """Score live traffic on ``interface`` for ``seconds`` (run inside the device's namespace)."""
    import time

    from ztfm.data.live import LiveCapture

    if not 0 < seconds <= 86_400:
        raise LabError(f"seconds must be in (0, 86400], got {seconds}")
    deadline = time.monotonic() + seconds

    def bounded(cap: LiveCapture) -> Iterator[Packet]:
        n = 0
        for _ in range(int(seconds / IDLE_S) + 2):  # each idle round lasts IDLE_S
            for p in cap.packets(max_packets=max_packets - n, idle_timeout_s=IDLE_S):
                n += 1
                yield p
                if time.monotonic() >= deadline or n >= max_packets:
                    return
            if time.monotonic() >= deadline:
                return

    with LiveCapture(interface) as cap:
        yield from score_packets(bounded(cap), pipe, max_packets=max_packets)
