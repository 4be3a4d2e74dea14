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
spraying random addresses therefore only churns the tables; it cannot grow them. A packet older
than a stream's last packet counts as simultaneous with it (no negative decay); this is decided
per stream, so one packet with a wild timestamp cannot freeze the clock of unrelated streams.
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
    """Key -> slot index with LRU order, fixed capacity and idle eviction (all O(1) amortised).

    ``last_t`` is the per-slot time of the last update (a view into the owner's state array).
    """

    def __init__(self, capacity: int, ttl_s: float, last_t: np.ndarray) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.index: OrderedDict[Hashable, int] = OrderedDict()
        self.last_t = last_t
        self._free = list(range(capacity - 1, -1, -1))

    def get(self, key: Hashable) -> int | None:
        return self.index.get(key)

    def acquire(self, key: Hashable, t: float) -> tuple[int, bool]:
        """(slot, is_new). Touches the key (most recently used); evicts as needed."""
        index = self.index
        while index:  # drop streams idle for longer than the ttl
            old_key = next(iter(index))
            old_slot = index[old_key]
            if t - self.last_t[old_slot] <= self.ttl_s:
                break
            del index[old_key]
            self._free.append(old_slot)
        slot = index.get(key)
        if slot is not None:
            index.move_to_end(key)
            return slot, False
        slot = self._free.pop() if self._free else index.popitem(last=False)[1]
        index[key] = slot
        return slot, True


# Stream tables of the 1-D store, and of the covariance store.
_MI, _H, _HH, _JIT, _HP = range(5)
_HH_COV, _HP_COV = range(2)


class PacketFeatures:
    """Incremental extractor: ``update(packet)`` returns that packet's feature vector (float32).

    Deterministic: the same packets in the same order give the same vectors. Not thread-safe;
    use one instance per packet stream. All state lives in arrays allocated here (five 1-D
    stream tables and two covariance tables of ``max_streams`` rows each); each packet updates
    its rows with a handful of vectorised operations.
    """

    def __init__(self, config: NetFeatureConfig | None = None) -> None:
        self.config = config or NetFeatureConfig()
        self._lam = np.asarray(self.config.lambdas, dtype=np.float64)
        n = self._n = len(self._lam)
        cap, ttl = self.config.max_streams, self.config.ttl_s
        self._cap = cap
        # 1-D store: damped weight, linear sum, squared sum, last residual (row = table*cap + slot)
        self._s = np.zeros(
            (5 * cap, 4, n)
        )  # [:, 0] weight, 1 linear sum, 2 squared sum, 3 residual
        self._last = np.zeros(5 * cap)
        self._tables = [_Slots(cap, ttl, self._last[i * cap : (i + 1) * cap]) for i in range(5)]
        # covariance store: damped sum of residual products per pair of opposite streams
        self._sr = np.zeros((2 * cap, n))
        self._last_c = np.zeros(2 * cap)
        self._cov = [_Slots(cap, ttl, self._last_c[i * cap : (i + 1) * cap]) for i in range(2)]
        self.names = feature_names(self.config.lambdas)
        # scratch output: 1-D blocks (MI, H, JIT) x (3 stats, lambda), then 2-D blocks (HH, HP) x
        # (7 stats, lambda); ``_perm`` reorders it into N-BaIoT's column order
        self._buf = np.zeros(23 * n)
        self._o1 = self._buf[: 9 * n].reshape(3, 3, n)
        self._o2 = self._buf[9 * n :].reshape(2, 7, n)
        perm: list[int] = []
        for kind, blk in (("1", 0), ("1", 1), ("2", 0), ("1", 2), ("2", 1)):
            for li in range(n):
                if kind == "1":
                    perm.extend(blk * 3 * n + st * n + li for st in range(3))
                else:
                    perm.extend(9 * n + blk * 7 * n + st * n + li for st in range(7))
        self._perm = np.array(perm)

    @property
    def n_features(self) -> int:
        return len(self.names)

    def stream_counts(self) -> dict[str, int]:
        """How many streams each table holds now (bounded by ``max_streams``)."""
        t, c = self._tables, self._cov
        return {
            "MI_dir": len(t[_MI].index),
            "H": len(t[_H].index),
            "HH": len(t[_HH].index),
            "HH_cov": len(c[_HH_COV].index),
            "HH_jit": len(t[_JIT].index),
            "HpHp": len(t[_HP].index),
            "HpHp_cov": len(c[_HP_COV].index),
        }

    def state_bytes(self) -> int:
        """Bytes of the state arrays (fixed at construction; key indexes come on top)."""
        arrays = (self._s, self._last, self._sr, self._last_c)
        return sum(a.nbytes for a in arrays)

    def _row(self, table: int, key: Hashable, t: float) -> int:
        slot, new = self._tables[table].acquire(key, t)
        row = table * self._cap + slot
        if new:
            self._s[row] = 0.0
            self._last[row] = t
        return row

    def _cov_row(self, table: int, key: Hashable, t: float) -> int:
        slot, new = self._cov[table].acquire(key, t)
        row = table * self._cap + slot
        if new:
            self._sr[row] = 0.0
            self._last_c[row] = t
        return row

    def update(self, packet: Packet) -> np.ndarray:
        """Fold one packet into the statistics and return its feature vector (float32)."""
        t = float(packet.ts)
        if not math.isfinite(t):
            raise DetectorError(f"packet timestamp is not finite: {packet.ts!r}")
        cap, lam = self._cap, self._lam
        x = float(packet.length)
        src = packet.src_ip or packet.src_mac
        dst = packet.dst_ip or packet.dst_mac
        chan, rchan = (src, dst), (dst, src)
        sock = (src, packet.proto, packet.sport, dst, packet.dport)
        rsock = (dst, packet.proto, packet.dport, src, packet.sport)

        hh_tab, jit_tab = self._tables[_HH], self._tables[_JIT]
        prev = hh_tab.get(chan)
        prev_t = None if prev is None else float(hh_tab.last_t[prev])
        rows = [
            self._row(_MI, (packet.src_mac, src), t),
            self._row(_H, src, t),
            self._row(_HH, chan, t),
            self._row(_HP, sock, t),
        ]
        xs = [x, x, x, x]
        if prev_t is not None:
            rows.append(self._row(_JIT, chan, t))
            xs.append(max(t - prev_t, 0.0))
        crows = np.array(
            [
                self._cov_row(_HH_COV, frozenset((chan, rchan)), t),
                self._cov_row(_HP_COV, frozenset((sock, rsock)), t),
            ]
        )

        # damped 1-D update of every touched stream at once
        r = np.array(rows)
        xv = np.array(xs)[:, None]
        # per stream, a packet older than the stream's last one counts as simultaneous with it
        last = self._last[r]
        f = np.exp2(-np.outer(np.maximum(t - last, 0.0), lam))
        state = self._s[r]
        state *= f[:, None, :]
        w = state[:, 0]
        w += 1.0
        ls = state[:, 1]
        ls += xv
        ss = state[:, 2]
        ss += xv * xv
        mean = ls / w
        np.subtract(xv, mean, out=state[:, 3])
        self._s[r] = state
        self._last[r] = np.maximum(last, t)
        var = np.maximum(ss / w - mean * mean, 0.0)

        o1, o2 = self._o1, self._o2
        o1[0:2, 0] = w[0:2]
        o1[0:2, 1] = mean[0:2]
        o1[0:2, 2] = var[0:2]
        # jitter block: updated above, or reported unchanged, or empty (first packet)
        if prev_t is not None:
            o1[2, 0], o1[2, 1], o1[2, 2] = w[4], mean[4], var[4]
        else:
            jslot = jit_tab.get(chan)
            if jslot is None:
                o1[2] = 0.0
            else:
                jr = _JIT * cap + jslot
                jw = self._s[jr, 0]
                jm = self._s[jr, 1] / jw
                o1[2, 0], o1[2, 1] = jw, jm
                o1[2, 2] = np.maximum(self._s[jr, 2] / jw - jm * jm, 0.0)

        # 2-D statistics of the channel (row 2) and the socket (row 3) with their reverses
        rev = [self._tables[_HH].get(rchan), self._tables[_HP].get(rsock)]
        has = np.array([rev[0] is not None, rev[1] is not None])
        rr = np.array([_HH * cap + (rev[0] or 0), _HP * cap + (rev[1] or 0)])
        own = r[2:4]
        w_a, mean_a, var_a = w[2:4], mean[2:4], var[2:4]
        hm = has[:, None]
        sb = self._s[rr]
        last_c = self._last_c[crows]
        f2 = np.exp2(-np.outer(np.maximum(t - np.concatenate([self._last[rr], last_c]), 0.0), lam))
        w_b = np.where(hm, sb[:, 0] * f2[:2], 0.0)
        wb_safe = np.where(hm, sb[:, 0], 1.0)
        mean_b = np.where(hm, sb[:, 1] / wb_safe, 0.0)
        var_b = np.where(hm, np.maximum(sb[:, 2] / wb_safe - mean_b * mean_b, 0.0), 0.0)
        prod = np.where(hm, self._s[own, 3] * sb[:, 3], 0.0)
        sr = self._sr[crows] * f2[2:] + prod
        self._sr[crows] = sr
        self._last_c[crows] = np.maximum(last_c, t)
        o2[:, 0] = w_a
        o2[:, 1] = mean_a
        std = np.sqrt(var_a, out=o2[:, 2])
        np.sqrt(mean_a * mean_a + mean_b * mean_b, out=o2[:, 3])
        np.sqrt(var_a * var_a + var_b * var_b, out=o2[:, 4])
        cov = np.divide(sr, w_a + w_b, out=o2[:, 5])
        denom = std * np.sqrt(var_b)
        o2[:, 6] = 0.0
        np.divide(cov, denom, out=o2[:, 6], where=denom > 0)
        out: np.ndarray = self._buf[self._perm].astype(np.float32)
        return out


def extract_features(
    packets: Iterable[Packet], config: NetFeatureConfig | None = None
) -> np.ndarray:
    """Feature matrix (n, n_features) float32 of a packet sequence, from a fresh extractor.

    Identical, row for row, to calling ``PacketFeatures(config).update`` on each packet.
    """
    fx = PacketFeatures(config)
    out = np.empty((1024, fx.n_features), dtype=np.float32)
    n = 0
    for p in packets:  # consumed lazily; the matrix grows by doubling
        if n == len(out):
            out = np.concatenate([out, np.empty_like(out)])
        out[n] = fx.update(p)
        n += 1
    return out[:n].copy()


def packet_featurizer(config: NetFeatureConfig | None = None) -> Featurizer:
    """A ``Featurizer`` for the data loaders (``load_pcap``, ``load_mqttset``, the registry):
    a fresh extractor per capture, so captures never share statistics."""
    cfg = config or NetFeatureConfig()
    names = feature_names(cfg.lambdas)

    def featurize(packets: Iterable[Packet]) -> tuple[np.ndarray, tuple[str, ...]]:
        return extract_features(packets, cfg), names

    return featurize
