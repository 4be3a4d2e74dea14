"""DeviceWindows rows, the allow-list, streaming == batch, and window-level evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.data.lab import LabDevice, LabLabel, label_packets
from ztfm.data.pcap import TCP_ACK, TCP_SYN, Link, Packet
from ztfm.detect.netwindows import COLUMNS, DeviceWindows, rows_of
from ztfm.errors import DataError, LabError
from ztfm.lab.evaluate import DeviceWindowSet, evaluate_lab
from ztfm.lab.live import fit_windows, score_windows
from ztfm.lab.runner import _labels
from ztfm.lab.spec import LabConfig, plan_lab

ME, SRV, ATK = "10.213.0.10", "10.213.0.2", "10.213.0.3"
COL = {c: i for i, c in enumerate(COLUMNS)}


def pkt(ts: float, src: str, dst: str, sport: int = 40000, dport: int = 1883, *,
        proto: int = 6, flags: int = TCP_ACK, length: int = 60) -> Packet:  # fmt: skip
    return Packet(ts=ts, link=Link.ETHERNET, length=length, ip_version=4, src_ip=src, dst_ip=dst,
                  proto=proto, sport=sport, dport=dport, tcp_flags=flags)  # fmt: skip


def benign(n: int, t0: float = 0.0) -> list[Packet]:
    out = []
    for i in range(n):
        out.append(pkt(t0 + i + 0.1, ME, SRV))
        out.append(pkt(t0 + i + 0.2, SRV, ME, 1883, 40000))
    return out


def count(row: np.ndarray, col: str) -> float:
    return float(np.expm1(row[COL[col]]))


def test_rows_count_directions_syns_and_new_services() -> None:
    fx = DeviceWindows(ME)
    fx.learn(benign(5))
    pk = [
        *benign(2),
        pkt(2.5, ATK, ME, 5555, 80, flags=TCP_SYN),
        pkt(2.6, ATK, ME, 5556, 81, flags=TCP_SYN),
    ]
    t, x = rows_of(fx, pk)
    assert t.tolist() == [0.1, 1.1, 2.1]
    assert count(x[0], "pkts_out") == pytest.approx(1) and count(x[0], "pkts_in") == pytest.approx(
        1
    )
    assert count(x[0], "new_service_pkts") == pytest.approx(0)
    assert count(x[2], "syn_in") == pytest.approx(2)
    assert count(x[2], "local_ports_in") == pytest.approx(2)
    assert count(x[2], "new_services") == pytest.approx(2)
    assert count(x[2], "peers") == pytest.approx(1)


def test_silence_is_a_row_of_zeros_and_foreign_frames_are_ignored() -> None:
    fx = DeviceWindows(ME)
    t, x = rows_of(fx, [pkt(0.0, ME, SRV), pkt(3.5, "10.213.0.50", "10.213.0.51"),
                        pkt(4.0, ME, SRV)])  # fmt: skip
    assert len(t) == 5
    assert not x[1].any() and not x[2].any() and not x[3].any()


def test_out_of_order_packet_joins_the_open_window() -> None:
    fx = DeviceWindows(ME)
    t, x = rows_of(fx, [pkt(0.0, ME, SRV), pkt(2.0, ME, SRV), pkt(1.5, ME, SRV)])
    assert len(t) == 3 and count(x[2], "pkts_out") == pytest.approx(2)


def test_clock_jump_and_bad_width_are_refused() -> None:
    fx = DeviceWindows(ME)
    fx.push(pkt(0.0, ME, SRV))
    with pytest.raises(DataError, match="clock jump"):
        fx.push(pkt(1e9, ME, SRV))
    for w in (0.0, -1.0, float("nan"), 1e9):
        with pytest.raises(DataError, match="window width"):
            DeviceWindows(ME, w)


def test_live_core_equals_batch_scoring(rng: np.random.Generator) -> None:
    warm = benign(40)
    fx = DeviceWindows(ME)
    fx.learn(warm)
    _, rows = rows_of(fx, warm)
    pipe = fit_windows(rows, rng=rng)
    attack = [*benign(10, 40.0), *[pkt(45 + k * 0.01, ATK, ME, 6000 + k, 80, flags=TCP_SYN)
                                  for k in range(50)]]  # fmt: skip
    attack.sort(key=lambda p: p.ts)
    streamed = list(score_windows(attack, fx, pipe))
    _, batch_rows = rows_of(fx, attack)
    batch = pipe.score_stream(batch_rows)
    assert np.allclose([w.score for w in streamed], batch, rtol=1e-5)
    alarms = [w.start for w in streamed if w.alarm]
    assert alarms and all(44.0 <= a < 46.0 for a in alarms)


def test_fit_needs_enough_windows(rng: np.random.Generator) -> None:
    with pytest.raises(LabError, match="at least"):
        fit_windows(np.zeros((3, len(COLUMNS)), np.float32), rng=rng)


def test_subnet_wide_label_matches_every_peer_but_services() -> None:
    dev = LabDevice("dev05", "plug", ME)
    lab = LabLabel("dev05", "plug", 10.0, 20.0, "telnet_propagation", "dev05", "lan", ME,
                   "0.0.0.0")  # fmt: skip
    pk = [
        pkt(12, ME, "10.213.0.11", 5000, 23),
        pkt(13, ME, SRV),
        pkt(14, "10.213.0.99", ME, 23, 5001),
        pkt(25, ME, "10.213.0.11", 5000, 23),  # teardown after the end: aftermath
        pkt(31, ME, "10.213.0.11", 5000, 23),  # past the tail: benign
    ]
    y, kinds = label_packets(pk, dev, [lab], services_ip=SRV)
    assert y.tolist() == [1, 0, 1, 1, 0]
    assert kinds.tolist() == ["telnet_propagation", "benign", "telnet_propagation", "aftermath",
                              "benign"]  # fmt: skip


def test_worm_scan_labels_every_victim_too() -> None:
    plan = plan_lab(LabConfig(devices=4, duration_s=60, attacks=("telnet_propagation",), seed=1,
                              run_id="abc"))  # fmt: skip
    (ev,) = plan.schedule
    rows = _labels(plan, ev, 100.0, 110.0)
    assert len(rows) == 4
    assert rows[0]["device"] == ev.source and rows[0]["target_ip"] == "0.0.0.0"
    victims = {r["device"] for r in rows[1:]}
    assert ev.source not in victims and len(victims) == 3
    assert all(r["source"] == ev.source and r["target"] == r["device"] for r in rows[1:])


def _set(n: int, attack_at: tuple[int, int]) -> DeviceWindowSet:
    t = np.arange(n, dtype=np.float64)
    x = np.zeros((n, len(COLUMNS)), np.float32)
    y = np.zeros(n, np.int8)
    y[attack_at[0] : attack_at[1]] = 1
    kind = np.where(y == 1, "syn_flood", "benign").astype(object)
    x[:, 0] = np.arange(n) % 3  # benign pattern
    x[y == 1, 0] = 50.0
    x[n - 1, 0] = 7.0  # one odd benign window after the warm-up
    return DeviceWindowSet("dev00", "sensor", t, x, y, kind, t < 30, 1.0)


def test_evaluate_counts_dr_far_and_ttd() -> None:
    s = _set(60, (40, 45))
    lab = LabLabel("dev00", "sensor", 39.5, 45.0, "syn_flood", "atk", "dev00", ATK, ME)

    def scorer(tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tr[:, 0].astype(np.float64), te[:, 0].astype(np.float64)

    (d,), (a,) = evaluate_lab([s], [lab], scorer)
    assert a.windows == 5 and a.detected == 5 and a.dr == 1.0
    assert a.ttd_s == pytest.approx(1.5)
    assert d.benign_windows == 25 and d.false_alarms == 1 and d.far == pytest.approx(1 / 25)


@pytest.mark.parametrize(("q", "m"), [(0.2, 1.0), (1.1, 1.0), (1.0, 0.0), (1.0, -1.0)])
def test_evaluate_rejects_bad_calibration(q: float, m: float) -> None:
    with pytest.raises(LabError):
        evaluate_lab([_set(60, (40, 45))], [], lambda a, b: (a[:, 0], b[:, 0]), quantile=q,
                     margin=m)  # fmt: skip


def test_evaluate_needs_warmup() -> None:
    s = _set(60, (40, 45))
    short = DeviceWindowSet(s.device, s.type, s.t, s.x, s.y, s.kind, s.t < 5, 1.0)
    with pytest.raises(LabError, match="warm-up windows"):
        evaluate_lab([short], [], lambda a, b: (a[:, 0], b[:, 0]))


def test_quiet_end_of_a_warmup_still_gives_windows() -> None:
    fx = DeviceWindows(ME)
    t, x = rows_of(fx, [pkt(100.2, ME, SRV), pkt(101.5, ME, SRV)], origin=100.0, until=112.0)
    assert len(t) == 12 and t[0] == 100.0
    assert count(x[0], "pkts_out") == pytest.approx(1) and not x[5:].any()
    assert rows_of(fx, [], origin=None, until=5.0)[1].shape == (0, len(COLUMNS))
