"""Packet features: names, maths on hand-made streams, determinism, batch == streaming, bounded
memory under address spraying, idle eviction, bad input."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from ztfm.data.bundled import bundled_path
from ztfm.data.pcap import Link, Packet, iter_packets
from ztfm.detect.netfeatures import (
    FEATURE_NAMES,
    NetFeatureConfig,
    PacketFeatures,
    extract_features,
    feature_names,
    packet_featurizer,
)
from ztfm.errors import DetectorError

LAMS = (5.0, 3.0, 1.0, 0.1, 0.01)


def pkt(ts: float, src: str = "10.0.0.1", dst: str = "10.0.0.2", length: int = 100,
        sport: int = 1000, dport: int = 80, mac: str = "02:00:00:00:00:01") -> Packet:  # fmt: skip
    return Packet(ts=ts, link=Link.ETHERNET, length=length, src_mac=mac, src_ip=src, dst_ip=dst,
                  ip_version=4, proto=6, sport=sport, dport=dport)  # fmt: skip


def col(name: str) -> int:
    return FEATURE_NAMES.index(name)


@pytest.fixture(scope="module")
def real_packets() -> list[Packet]:
    return list(iter_packets(bundled_path("pcap/iot23-42-1-head.pcap.gz")))[:1500]


def test_names_match_nbaiot_columns() -> None:
    path = bundled_path("nbaiot/Danmini_Doorbell.csv.gz")
    header = gzip.decompress(path.read_bytes()).decode().split("\n", 1)[0].strip().split(",")
    assert tuple(header[:-1]) == FEATURE_NAMES
    assert len(FEATURE_NAMES) == 115 == NetFeatureConfig().n_features
    assert len(feature_names((1.0, 0.5))) == 46


def test_constant_stream_statistics() -> None:
    fx = PacketFeatures()
    dt = 0.5
    for i in range(400):
        v = fx.update(pkt(i * dt))
    for lam in LAMS:
        label = f"L{lam:g}"
        assert v[col(f"H_{label}_mean")] == pytest.approx(100.0)
        assert v[col(f"H_{label}_variance")] == pytest.approx(0.0, abs=1e-3)
        decay = 2.0 ** (-lam * dt)
        expected_w = (1 - decay**400) / (1 - decay)
        assert v[col(f"H_{label}_weight")] == pytest.approx(expected_w, rel=1e-4)
        assert v[col(f"HH_jit_{label}_mean")] == pytest.approx(dt, rel=1e-5)  # inter-arrival
        assert v[col(f"HH_jit_{label}_variance")] == pytest.approx(0.0, abs=1e-6)


def test_jitter_of_first_packet_is_empty_not_a_timestamp() -> None:
    fx = PacketFeatures()
    v0 = fx.update(pkt(1_500_000_000.0))
    v1 = fx.update(pkt(1_500_000_002.0))
    jit = [col(f"HH_jit_L{lam:g}_mean") for lam in LAMS]
    assert (v0[jit] == 0).all()
    assert v1[jit] == pytest.approx([2.0] * 5)


def test_two_direction_statistics() -> None:
    fx = PacketFeatures()
    fx.update(pkt(0.0, length=100))
    v = fx.update(pkt(0.1, src="10.0.0.2", dst="10.0.0.1", length=300, sport=80, dport=1000))
    for lam in LAMS:
        label = f"L{lam:g}"
        assert v[col(f"HH_{label}_mean")] == pytest.approx(300.0)
        assert v[col(f"HH_{label}_magnitude")] == pytest.approx(math.hypot(300.0, 100.0))
        assert v[col(f"HpHp_{label}_magnitude")] == pytest.approx(math.hypot(300.0, 100.0))
        assert v[col(f"HH_{label}_radius")] == pytest.approx(0.0, abs=1e-6)
    # an unrelated host's channel has no reverse direction: magnitude == its own mean
    v = fx.update(pkt(0.2, src="10.9.9.9", dst="10.0.0.1", length=50))
    assert v[col("HH_L5_magnitude")] == pytest.approx(50.0)
    assert v[col("HH_L5_pcc")] == 0.0


def test_covariance_sign_follows_correlated_directions() -> None:
    fx = PacketFeatures()
    rng = np.random.default_rng(7)
    v = np.zeros(115, dtype=np.float32)
    for i in range(300):
        size = float(rng.integers(60, 1500))
        fx.update(pkt(i * 0.2, length=int(size)))
        v = fx.update(pkt(i * 0.2 + 0.01, src="10.0.0.2", dst="10.0.0.1", length=int(size),
                          sport=80, dport=1000))  # fmt: skip
    assert v[col("HH_L0.1_covariance")] > 0
    assert 0 < v[col("HH_L0.1_pcc")] <= 1.5


def test_deterministic_and_batch_equals_streaming(real_packets: list[Packet]) -> None:
    fx = PacketFeatures()
    streamed = np.stack([fx.update(p) for p in real_packets])
    batch = extract_features(real_packets)
    again = extract_features(iter(real_packets))
    assert streamed.dtype == np.float32 and streamed.shape == (len(real_packets), 115)
    np.testing.assert_array_equal(streamed, batch)
    np.testing.assert_array_equal(batch, again)
    assert np.isfinite(batch).all()


def test_featurizer_returns_names(real_packets: list[Packet]) -> None:
    x, names = packet_featurizer()(real_packets[:10])
    assert names == FEATURE_NAMES and x.shape == (10, 115)
    assert extract_features([]).shape == (0, 115)


def test_memory_bounded_under_address_spraying() -> None:
    cfg = NetFeatureConfig(max_streams=256)
    fx = PacketFeatures(cfg)
    rng = np.random.default_rng(1)
    ips = rng.integers(0, 2**32, size=(20_000, 2), dtype=np.uint64)
    arrays_before = fx.state_bytes()  # preallocated, never grows
    for i, (a, b) in enumerate(ips):
        v = fx.update(pkt(i * 1e-3, src=str(int(a)), dst=str(int(b)), sport=int(a % 65536)))
        assert np.isfinite(v).all()
    counts = fx.stream_counts()
    assert max(counts.values()) <= 256
    assert counts["H"] == 256  # the tables are full, not larger
    assert fx.state_bytes() == arrays_before


def test_sprayed_streams_evict_lru_not_active() -> None:
    fx = PacketFeatures(NetFeatureConfig(max_streams=8))
    for i in range(100):
        fx.update(pkt(i * 0.01, src="10.0.0.1"))  # the active host
        fx.update(pkt(i * 0.01 + 0.001, src=f"172.16.0.{i}"))
    v = fx.update(pkt(1.5, src="10.0.0.1"))
    assert v[col("H_L0.01_weight")] > 50  # its history survived the spray


def test_idle_streams_are_dropped() -> None:
    fx = PacketFeatures(NetFeatureConfig(idle_ttl_s=10.0))
    fx.update(pkt(0.0, src="10.0.0.7"))
    assert fx.stream_counts()["H"] == 1
    fx.update(pkt(100.0, src="10.0.0.8"))
    assert fx.stream_counts()["H"] == 1  # 10.0.0.7 idled out
    v = fx.update(pkt(101.0, src="10.0.0.7"))
    assert v[col("H_L0.01_weight")] == pytest.approx(1.0)  # starts afresh


def test_out_of_order_timestamps_are_clamped() -> None:
    fx = PacketFeatures()
    fx.update(pkt(10.0))
    v = fx.update(pkt(5.0))
    assert np.isfinite(v).all()
    assert v[col("H_L5_weight")] == pytest.approx(2.0)  # treated as simultaneous


def test_non_ip_frames_keyed_by_mac() -> None:
    fx = PacketFeatures()
    p = Packet(ts=1.0, link=Link.ETHERNET, length=60, src_mac="02:00:00:00:00:09",
               dst_mac="ff:ff:ff:ff:ff:ff", ethertype=0x88CC)  # fmt: skip
    v = fx.update(p)
    assert np.isfinite(v).all() and v[col("MI_dir_L5_mean")] == 60


# --- negative ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamp(ts: float) -> None:
    with pytest.raises(DetectorError, match="not finite"):
        PacketFeatures().update(pkt(ts))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lambdas": ()},
        {"lambdas": (0.0,)},
        {"lambdas": (-1.0,)},
        {"lambdas": (math.nan,)},
        {"lambdas": (1.0, 1.0)},
        {"max_streams": 0},
        {"max_streams": 10**9},
        {"idle_ttl_s": 0.0},
        {"idle_ttl_s": math.inf},
    ],
)
def test_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(DetectorError):
        NetFeatureConfig(**kwargs)  # type: ignore[arg-type]


def test_wild_timestamp_does_not_freeze_other_streams() -> None:
    fx = PacketFeatures()
    fx.update(pkt(1.0, src="10.0.0.1"))
    fx.update(pkt(1e9, src="10.6.6.6", dst="10.0.0.9"))  # one packet from the far future
    v = fx.update(pkt(101.0, src="10.0.0.1"))
    # 10.0.0.1's own clock still advances: its L5 weight decayed over the 100 s gap
    assert v[col("H_L5_weight")] == pytest.approx(1.0, abs=1e-6)
