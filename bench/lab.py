"""Lab benchmark: ztfm's detector beside IsolationForest, per device type and attack.

    python bench/lab.py [LAB_DIR] [--detector pca] [--window 1.0] [--seed 0]

Default data: the bundled lab set (real traffic from ``ztfm lab run``, see docs/lab.md). For
every device: per-packet Kitsune features (``packet_featurizer``), a pipeline fitted on the
device's benign warm-up (the ``lab`` split), packet scores grouped into ``--window``-second windows
(window score = highest packet score). A window is an attack window when it holds a packet
labelled as attack traffic (see ``ztfm.data.lab``); windows without packets are not scored.

The window threshold is the highest window score seen during the benign warm-up (times 1.0), so
the training FAR is 0 by construction and the test FAR is what the table shows. Detection rate
(DR) = alarmed attack windows / attack windows; FAR = alarmed benign test windows / benign test
windows, per device; time-to-detect (TTD) = first alarm at or after the attack's labelled start
minus that start. Prints a table and writes bench/results/lab.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest

from ztfm.data.bundled import bundled_path
from ztfm.data.lab import lab_split, load_lab, read_devices, read_labels
from ztfm.data.series import EvalUnit
from ztfm.detect.netfeatures import packet_featurizer
from ztfm.detect.stream import StreamingDetector
from ztfm.lab.live import lab_pipeline_config

RESULTS = Path(__file__).resolve().parent / "results" / "lab.json"
TARGET_DR = 0.95
TARGET_FAR = 0.01
HEADLINE = {"portscan", "servicescan", "syn_flood", "udp_flood", "icmp_flood", "bruteforce",
            "cnc_beacon"}  # fmt: skip


@dataclass
class Scored:
    device: str
    type: str
    t: np.ndarray  # window start times of test windows
    y: np.ndarray  # 1 = attack window
    kind: np.ndarray  # attack name per window ("benign")
    alarm: dict[str, np.ndarray]  # detector -> alarm per window
    first_alarm: dict[str, np.ndarray]  # detector -> packet times of alarms


def _windows(t: np.ndarray, scores: np.ndarray, t0: float, width: float) -> dict[int, float]:
    idx = np.floor((t - t0) / width).astype(np.int64)
    out: dict[int, float] = {}
    for i, s in zip(idx.tolist(), scores.tolist(), strict=True):
        out[i] = max(out.get(i, -math.inf), s)
    return out


def _score_ztfm(u: EvalUnit, detector: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    pipe = StreamingDetector(u.train.x.shape[1], lab_pipeline_config(detector))
    pipe.fit(u.train.x, rng=rng)
    return pipe.score_stream(u.train.x), pipe.score_stream(u.test.x)


def _score_iforest(u: EvalUnit, seed: int) -> tuple[np.ndarray, ...]:
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(u.train.x)
    return -forest.score_samples(u.train.x), -forest.score_samples(u.test.x)


def score_unit(u: EvalUnit, detector: str, seed: int, width: float) -> Scored:
    assert u.train.t is not None and u.test.t is not None and u.test.kinds is not None
    t0 = float(u.train.t[0])
    scorers = {
        "ztfm": lambda: _score_ztfm(u, detector, np.random.default_rng(seed)),
        "iforest": lambda: _score_iforest(u, seed),
    }
    alarm: dict[str, np.ndarray] = {}
    first: dict[str, np.ndarray] = {}
    test_kind: dict[int, str] = {}
    idx = np.floor((u.test.t - t0) / width).astype(np.int64)
    for i, k in zip(idx.tolist(), u.test.kinds.tolist(), strict=True):
        if k != "benign" or i not in test_kind:
            test_kind[i] = k if k != "benign" else test_kind.get(i, "benign")
    keys = sorted(test_kind)
    for name, fn in scorers.items():
        train_s, test_s = fn()
        thr = max(_windows(u.train.t, train_s, t0, width).values())
        win = _windows(u.test.t, test_s, t0, width)
        alarm[name] = np.array([win[k] > thr for k in keys])
        first[name] = u.test.t[test_s > thr]
    return Scored(
        device=u.test.meta["device"], type=u.test.segment,
        t=t0 + width * np.array(keys, dtype=np.float64),
        y=np.array([test_kind[k] != "benign" for k in keys]),
        kind=np.array([test_kind[k] for k in keys], dtype=object),
        alarm=alarm, first_alarm=first)  # fmt: skip


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lab", nargs="?", default=None, help="lab folder (default: bundled set)")
    ap.add_argument("--detector", default="pca")
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = Path(args.lab) if args.lab else bundled_path("lab")
    t_load = time.perf_counter()
    series = load_lab(root, featurize=packet_featurizer())
    n_packets = sum(len(s) for s in series)
    load_s = time.perf_counter() - t_load
    units = lab_split(series)
    labels = read_labels(root, read_devices(root))
    t_score = time.perf_counter()
    scored = [score_unit(u, args.detector, args.seed, args.window) for u in units]
    score_s = time.perf_counter() - t_score

    attacks: list[dict[str, object]] = []
    for lab in labels:
        sc = next(s for s in scored if s.device == lab.device)
        m = sc.kind == lab.attack
        row: dict[str, object] = {
            "attack": lab.attack,
            "device": lab.device,
            "type": lab.type,
            "windows": int(m.sum()),
        }
        for det in ("ztfm", "iforest"):
            hits = sc.alarm[det][m]
            row[f"dr_{det}"] = float(hits.mean()) if hits.size else None
            after = sc.first_alarm[det]
            after = after[(after >= lab.start - 1.0) & (after <= lab.end + 1.0)]
            row[f"ttd_{det}_s"] = float(max(0.0, after.min() - lab.start)) if after.size else None
        attacks.append(row)
    devices: list[dict[str, object]] = []
    for sc in scored:
        benign = ~sc.y
        row = {"device": sc.device, "type": sc.type, "benign_windows": int(benign.sum())}
        for det in ("ztfm", "iforest"):
            row[f"far_{det}"] = float(sc.alarm[det][benign].mean()) if benign.any() else None
        devices.append(row)

    def f(v: object, pct: bool = True) -> str:
        if v is None:
            return "-"
        assert isinstance(v, float)
        return f"{100 * v:5.1f}%" if pct else f"{v:5.1f}s"

    print(
        f"lab set: {root} ({len(series)} devices, {n_packets} packets; features "
        f"{load_s:.1f} s, scoring {score_s:.1f} s), detector {args.detector}, window "
        f"{args.window:g} s"
    )
    print(
        f"{'attack':<20}{'device':<8}{'type':<9}{'win':>5}{'DR ztfm':>9}{'DR IF':>9}"
        f"{'TTD ztfm':>10}{'TTD IF':>9}"
    )
    for r in attacks:
        print(
            f"{r['attack']!s:<20}{r['device']!s:<8}{r['type']!s:<9}{r['windows']!s:>5}"
            f"{f(r['dr_ztfm']):>9}{f(r['dr_iforest']):>9}{f(r['ttd_ztfm_s'], False):>10}"
            f"{f(r['ttd_iforest_s'], False):>9}"
        )
    print(f"\n{'device':<8}{'type':<9}{'benign win':>11}{'FAR ztfm':>10}{'FAR IF':>9}")
    for r in devices:
        print(
            f"{r['device']!s:<8}{r['type']!s:<9}{r['benign_windows']!s:>11}"
            f"{f(r['far_ztfm']):>10}{f(r['far_iforest']):>9}"
        )
    head = [r for r in attacks if r["attack"] in HEADLINE]
    met_dr = all(isinstance(r["dr_ztfm"], float) and r["dr_ztfm"] >= TARGET_DR for r in head)
    met_far = all(isinstance(r["far_ztfm"], float) and r["far_ztfm"] <= TARGET_FAR for r in devices)
    print(
        f"\ntarget (scans, floods, brute force, C&C >= {TARGET_DR:.0%} DR; FAR <= "
        f"{TARGET_FAR:.0%} per device): DR {'met' if met_dr else 'NOT met'}, FAR "
        f"{'met' if met_far else 'NOT met'}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "lab": str(root), "detector": args.detector, "window_s": args.window, "seed": args.seed,
        "devices": len(series), "packets": n_packets, "feature_s": load_s, "score_s": score_s,
        "attacks": attacks, "far": devices, "target_dr_met": met_dr, "target_far_met": met_far,
        "python": platform.python_version(),
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
