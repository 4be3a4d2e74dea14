"""Network features from packets: damped incremental statistics in the style of Kitsune/AfterImage.

For every packet, five kinds of stream are updated and read out at five decay factors
(lambda in 5, 3, 1, 0.1, 0.01 per second; a sample of age ``dt`` weighs ``2 ** (-lambda * dt)``):

========  ===========================================  ======================================
prefix    stream key                                    statistics per lambda
========  ===========================================  ======================================
MI_dir    source MAC + source IP                        weight, mean, variance of frame length
H         source IP                                     weight, mean, variance of frame length
HH        channel source IP -> destination IP           weight, mean, std, magnitude, radius,
                                                        covariance, pcc (2-D with the reverse)
HH_jit    channel source IP -> destination IP           weight, mean, variance of inter-arrival
HpHp      socket (src IP, proto, sport, dst IP, dport)  as HH, with the reverse socket
========  ===========================================  ======================================

That is N-BaIoT's 115 features, in N-BaIoT's column order and names (``FEATURE_NAMES``). The 2-D
statistics follow the definitions in Mirsky et al., "Kitsune", NDSS 2018 (Table I): magnitude
``sqrt(mu_a^2 + mu_b^2)``, radius ``sqrt(var_a^2 + var_b^2)``, approximate covariance
``SR / (w_a + w_b)`` where ``SR`` is the damped sum of products of residuals of the two directions,
and pcc ``cov / (std_a * std_b)``. One deliberate difference from the published N-BaIoT files: the
jitter of a channel's first packet is not recorded (there is no previous packet), so ``HH_jit``
holds inter-arrival times, never raw timestamps.

Cost is O(1) per packet. Memory is fixed at construction: each stream table has ``max_streams``
preallocated slots; a new stream takes a free slot, else the least recently updated stream's
slot, and streams idle for more than ``idle_ttl_s`` are dropped as packets arrive. An attacker
spraying random addresses therefore only churns the tables; it cannot grow them. Packets whose
timestamp goes backwards are treated as simultaneous with the last one (no negative decay).
Non-IP frames (ARP keeps its protocol addresses) are keyed by MAC address.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from ztfm.data.pcap import Featurizer, Packet
from ztfm.errors import DetectorError

DEFAULT_LAMBDAS: tuple[float, ...] = (5.0, 3.0, 1.0, 0.1, 0.01)

_1D_STATS = ("weight", "mean", "variance")
_2D_STATS = ("weight", "mean", "std", "magnitude", "radius", "covariance", "pcc")
_BLOCKS = (("MI_dir", _1D_STATS), ("H", _1D_STATS), ("HH", _2D_STATS), ("HH_jit", _1D_STATS),
           ("HpHp", _2D_STATS))  # fmt: skip


def _lambda_label(lam: float) -> str:
    return f"L{lam:g}"


def feature_names(lambdas: tuple[float, ...] = DEFAULT_LAMBDAS) -> tuple[str, ...]:
    """Column names of the feature vector, e.g. ``MI_dir_L5_weight`` ... ``HpHp_L0.01_pcc``."""
    return tuple(
        f"{prefix}_{_lambda_label(lam)}_{stat}"
        for prefix, stats in _BLOCKS
        for lam in lambdas
        for stat in stats
    )


FEATURE_NAMES: tuple[str, ...] = feature_names()


@dataclass(frozen=True, slots=True)
class NetFeatureConfig:
    """Decay factors (per second), slots per stream table, and idle time before eviction.

    ``idle_ttl_s=None`` means ``10 / min(lambdas)`` seconds, after which even the slowest window
    has decayed a stream's weight to 2**-10 of its value.
    """

    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    max_streams: int = 20_000
    idle_ttl_s: float | None = None

    def __post_init__(self) -> None:
        if not self.lambdas or any(not (math.isfinite(x) and x > 0) for x in self.lambdas):
            raise DetectorError("lambdas must be a non-empty tuple of positive finite numbers")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise DetectorError("lambdas must be distinct")
        if not isinstance(self.max_streams, int) or not 1 <= self.max_streams <= 10_000_000:
            raise DetectorError(f"max_streams must be an int in [1, 10^7], got {self.max_streams}")
        if self.idle_ttl_s is not None and not (
            math.isfinite(self.idle_ttl_s) and self.idle_ttl_s > 0
        ):
            raise DetectorError(f"idle_ttl_s must be positive, got {self.idle_ttl_s}")

    @property
    def ttl_s(self) -> float:
        return self.idle_ttl_s if self.idle_ttl_s is not None else 10.0 / min(self.lambdas)

    @property
    def n_features(self) -> int:
        return len(self.lambdas) * (3 + 3 + 7 + 3 + 7)


class _Slots:
    """Key -> slot index with LRU order, fixed capacity and idle eviction (all O(1) amortised)."""

    def __init__(self, capacity: int, ttl_s: float) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.index: OrderedDict[Hashable, int] = OrderedDict()
        self.last_t = np.zeros(capacity)
        self._free = list(range(capacity - 1, -1, -1))

    def get(self, key: Hashable) -> int | None:
        return self.index.get(key)

    def acquire(self, key: Hashable, t: float) -> tuple[int, bool]:
        """(slot, is_new). Touches the key (most recently used); evicts as needed."""
        while self.index:  # drop streams idle for longer than the ttl
            old_key, old_slot = next(iter(self.index.items()))
            if t - self.last_t[old_slot] <= self.ttl_s:
                break
            del self.index[old_key]
            self._free.append(old_slot)
        slot = self.index.get(key)
        if slot is not None:
            self.index.move_to_end(key)
            return slot, False
        if self._free:
            slot = self._free.pop()
        else:
            _, slot = self.index.popitem(last=False)
        self.index[key] = slot
        return slot, True


class _Table1D:
    """Damped weight, linear sum and squared sum per stream and lambda; last residual too."""

    def __init__(self, lambdas: np.ndarray, capacity: int, ttl_s: float) -> None:
        n = len(lambdas)
        self.lambdas = lambdas
        self.slots = _Slots(capacity, ttl_s)
        self.w = np.zeros((capacity, n))
        self.ls = np.zeros((capacity, n))
        self.ss = np.zeros((capacity, n))
        self.res = np.zeros((capacity, n))

    def update(self, key: Hashable, x: float, t: float) -> int:
        slot, new = self.slots.acquire(key, t)
        if new:
            self.w[slot] = 1.0
            self.ls[slot] = x
            self.ss[slot] = x * x
            self.res[slot] = 0.0
        else:
            dt = t - self.slots.last_t[slot]
            if dt > 0:
                f = np.exp2(-self.lambdas * dt)
                self.w[slot] *= f
                self.ls[slot] *= f
                self.ss[slot] *= f
            self.w[slot] += 1.0
            self.ls[slot] += x
            self.ss[slot] += x * x
            self.res[slot] = x - self.ls[slot] / self.w[slot]
        self.slots.last_t[slot] = t
        return slot

    def stats(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight, mean, variance) per lambda."""
        w = self.w[slot]
        mean = self.ls[slot] / w
        var = np.maximum(self.ss[slot] / w - mean * mean, 0.0)
        return w, mean, var


class _TableCov:
    """Damped sum of residual products for a pair of opposite streams (one slot per pair)."""

    def __init__(self, lambdas: np.ndarray, capacity: int, ttl_s: float) -> None:
        self.lambdas = lambdas
        self.slots = _Slots(capacity, ttl_s)
        self.sr = np.zeros((capacity, len(lambdas)))

    def update(self, key: Hashable, prod: np.ndarray | None, t: float) -> np.ndarray:
        slot, new = self.slots.acquire(key, t)
        if new:
            self.sr[slot] = 0.0
        else:
            dt = t - self.slots.last_t[slot]
            if dt > 0:
                self.sr[slot] *= np.exp2(-self.lambdas * dt)
        if prod is not None:
            self.sr[slot] += prod
        self.slots.last_t[slot] = t
        row: np.ndarray = self.sr[slot]
        return row


class PacketFeatures:
    """Incremental extractor: ``update(packet)`` returns that packet's feature vector (float32).

    Deterministic: the same packets in the same order give the same vectors. Not thread-safe;
    use one instance per packet stream.
    """

    def __init__(self, config: NetFeatureConfig | None = None) -> None:
        self.config = config or NetFeatureConfig()
        lam = np.asarray(self.config.lambdas, dtype=np.float64)
        cap, ttl = self.config.max_streams, self.config.ttl_s
        self._n = len(lam)
        self._mi = _Table1D(lam, cap, ttl)
        self._h = _Table1D(lam, cap, ttl)
        self._hh = _Table1D(lam, cap, ttl)
        self._hh_cov = _TableCov(lam, cap, ttl)
        self._jit = _Table1D(lam, cap, ttl)
        self._hp = _Table1D(lam, cap, ttl)
        self._hp_cov = _TableCov(lam, cap, ttl)
        self.names = feature_names(self.config.lambdas)
        self._last_t = -math.inf

    @property
    def n_features(self) -> int:
        return len(self.names)

    def stream_counts(self) -> dict[str, int]:
        """How many streams each table holds now (bounded by ``max_streams``)."""
        return {
            "MI_dir": len(self._mi.slots.index),
            "H": len(self._h.slots.index),
            "HH": len(self._hh.slots.index),
            "HH_cov": len(self._hh_cov.slots.index),
            "HH_jit": len(self._jit.slots.index),
            "HpHp": len(self._hp.slots.index),
            "HpHp_cov": len(self._hp_cov.slots.index),
        }

    def _two_d(
        self,
        table: _Table1D,
        cov_table: _TableCov,
        key: Hashable,
        rkey: Hashable,
        x: float,
        t: float,
        out: np.ndarray,
        base: int,
    ) -> None:
        n = self._n
        slot = table.update(key, x, t)
        w, mean, var = table.stats(slot)
        rslot = table.slots.get(rkey)
        pair = (key, rkey) if repr(key) <= repr(rkey) else (rkey, key)
        if rslot is None:
            sr = cov_table.update(pair, None, t)
            w_b = np.zeros(n)
            mean_b = np.zeros(n)
            var_b = np.zeros(n)
        else:
            sr = cov_table.update(pair, table.res[slot] * table.res[rslot], t)
            w_b, mean_b, var_b = table.stats(rslot)
            dt_b = t - table.slots.last_t[rslot]
            if dt_b > 0:  # the reverse direction's weight as of now (its mean/var do not decay)
                w_b = w_b * np.exp2(-table.lambdas * dt_b)
        std = np.sqrt(var)
        cov = sr / (w + w_b)
        denom = std * np.sqrt(var_b)
        pcc = np.divide(cov, denom, out=np.zeros(n), where=denom > 0)
        s = 7 * n
        out[base : base + s : 7] = w
        out[base + 1 : base + s : 7] = mean
        out[base + 2 : base + s : 7] = std
        out[base + 3 : base + s : 7] = np.sqrt(mean * mean + mean_b * mean_b)
        out[base + 4 : base + s : 7] = np.sqrt(var * var + var_b * var_b)
        out[base + 5 : base + s : 7] = cov
        out[base + 6 : base + s : 7] = pcc

    @staticmethod
    def _one_d(
        stats: tuple[np.ndarray, np.ndarray, np.ndarray], out: np.ndarray, base: int
    ) -> None:
        w, mean, var = stats
        s = 3 * len(w)
        out[base : base + s : 3] = w
        out[base + 1 : base + s : 3] = mean
        out[base + 2 : base + s : 3] = var

    def update(self, packet: Packet) -> np.ndarray:
        """Fold one packet into the statistics and return its feature vector (float32)."""
        t = float(packet.ts)
        if not math.isfinite(t):
            raise DetectorError(f"packet timestamp is not finite: {packet.ts!r}")
        t = max(t, self._last_t)  # out-of-order packets count as simultaneous
        self._last_t = t
        n = self._n
        x = float(packet.length)
        src = packet.src_ip or packet.src_mac
        dst = packet.dst_ip or packet.dst_mac
        out = np.empty(23 * n, dtype=np.float64)

        self._one_d(self._mi.stats(self._mi.update((packet.src_mac, src), x, t)), out, 0)
        self._one_d(self._h.stats(self._h.update(src, x, t)), out, 3 * n)

        chan, rchan = (src, dst), (dst, src)
        prev = self._hh.slots.get(chan)
        prev_t = None if prev is None else float(self._hh.slots.last_t[prev])
        self._two_d(self._hh, self._hh_cov, chan, rchan, x, t, out, 6 * n)

        if prev_t is None:
            jslot = self._jit.slots.get(chan)
            if jslot is None:
                out[13 * n : 16 * n] = 0.0
            else:  # a jitter stream outlived its channel entry: report it unchanged
                self._one_d(self._jit.stats(jslot), out, 13 * n)
        else:
            self._one_d(self._jit.stats(self._jit.update(chan, t - prev_t, t)), out, 13 * n)

        sock = (src, packet.proto, packet.sport, dst, packet.dport)
        rsock = (dst, packet.proto, packet.dport, src, packet.sport)
        self._two_d(self._hp, self._hp_cov, sock, rsock, x, t, out, 16 * n)
        return out.astype(np.float32)


def extract_features(
    packets: Iterable[Packet], config: NetFeatureConfig | None = None
) -> np.ndarray:
    """Feature matrix (n, n_features) float32 of a packet sequence, from a fresh extractor.

    Identical, row for row, to calling ``PacketFeatures(config).update`` on each packet.
    """
    fx = PacketFeatures(config)
    rows = [fx.update(p) for p in packets]
    if not rows:
        return np.zeros((0, fx.n_features), dtype=np.float32)
    return np.stack(rows)


def packet_featurizer(config: NetFeatureConfig | None = None) -> Featurizer:
    """A ``Featurizer`` for the data loaders (``load_pcap``, ``load_mqttset``, the registry):
    a fresh extractor per capture, so captures never share statistics."""
    cfg = config or NetFeatureConfig()
    names = feature_names(cfg.lambdas)

    def featurize(packets: Iterable[Packet]) -> tuple[np.ndarray, tuple[str, ...]]:
        return extract_features(packets, cfg), names

    return featurize
