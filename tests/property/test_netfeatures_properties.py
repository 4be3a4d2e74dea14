"""Invariants of the packet features and loader round trips, over generated inputs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.data.pcap import Link, Packet
from ztfm.data.ton_iot import load_ton_iot
from ztfm.detect.netfeatures import FEATURE_NAMES, NetFeatureConfig, PacketFeatures

HOSTS = [f"10.0.0.{i}" for i in range(1, 7)]

packet_st = st.builds(
    lambda dt, s, d, length, sp, dp, proto: (dt, s, d, length, sp, dp, proto),
    st.floats(0.0, 5.0),
    st.sampled_from(HOSTS),
    st.sampled_from(HOSTS),
    st.integers(42, 1514),
    st.sampled_from([80, 443, 1883, 50000]),
    st.sampled_from([80, 443, 1883, 50000]),
    st.sampled_from([6, 17, 1]),
)


def to_packets(specs: list[tuple[float, str, str, int, int, int, int]]) -> list[Packet]:
    t, out = 1_000.0, []
    for dt, s, d, length, sp, dp, proto in specs:
        t += dt
        out.append(Packet(ts=t, link=Link.ETHERNET, length=length, src_ip=s, dst_ip=d,
                          proto=proto, sport=sp, dport=dp, ip_version=4))  # fmt: skip
    return out


WEIGHTS = [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_weight")]
SPREAD = [i for i, n in enumerate(FEATURE_NAMES) if n.endswith(("_variance", "_std", "_radius"))]


@settings(max_examples=60, deadline=None)
@given(st.lists(packet_st, min_size=1, max_size=60), st.integers(1, 8))
def test_outputs_finite_nonnegative_and_bounded(specs: list, cap: int) -> None:  # type: ignore[type-arg]
    fx = PacketFeatures(NetFeatureConfig(max_streams=cap))
    for p in to_packets(specs):
        v = fx.update(p)
        assert np.isfinite(v).all()
        assert (v[WEIGHTS] >= 0).all() and (v[SPREAD] >= 0).all()
        assert max(fx.stream_counts().values()) <= cap


@settings(max_examples=40, deadline=None)
@given(st.lists(packet_st, min_size=1, max_size=40))
def test_unrelated_hosts_do_not_change_a_hosts_features(specs: list) -> None:  # type: ignore[type-arg]
    """Interleaving another host's traffic (no shared endpoints) leaves the first host's
    H, MI_dir, HH and HpHp statistics unchanged (tables far from full)."""
    mine = to_packets([(dt, "10.0.0.1", "10.0.0.2", ln, sp, dp, pr)
                       for dt, _, _, ln, sp, dp, pr in specs])  # fmt: skip
    other = [Packet(ts=p.ts + 1e-4, link=Link.ETHERNET, length=99, src_ip="172.16.0.1",
                    dst_ip="172.16.0.2", proto=17, sport=1, dport=2, ip_version=4)
             for p in mine]  # fmt: skip
    a = PacketFeatures()
    alone = [a.update(p) for p in mine]
    b = PacketFeatures()
    mixed = []
    for p, q in zip(mine, other, strict=True):
        mixed.append(b.update(p))
        b.update(q)
    np.testing.assert_allclose(np.stack(alone), np.stack(mixed), rtol=1e-6, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1_500_000_000, 1_600_000_000),
            st.floats(-1e6, 1e6, allow_nan=False, width=32),
            st.sampled_from(["on", " off", "ON  ", "true", "0", "1"]),
            st.sampled_from([("0", "normal"), ("1", "ddos"), ("1", "xss")]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_ton_iot_round_trip(rows: list) -> None:  # type: ignore[type-arg]
    lines = ["ts,date,time,value,state,label,type"]
    for ts, val, state, (label, kind) in rows:
        lines.append(f"{ts},d, 1:00:00 ,{val!r},{state},{label},{kind}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "IoT_Thing.csv"
        path.write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
        (s,) = load_ton_iot(path)
    order = np.argsort([r[0] for r in rows], kind="stable")
    expected_val = np.array([rows[i][1] for i in order], dtype=np.float32)
    np.testing.assert_array_equal(s.x[:, 0], expected_val)
    expected_state = [rows[i][2].strip().lower() in ("on", "true", "1") for i in order]
    np.testing.assert_array_equal(s.x[:, 1], np.array(expected_state, dtype=np.float32))
    assert s.y is not None and list(s.y) == [int(rows[i][3][0]) for i in order]
    assert s.segment == "thing"
