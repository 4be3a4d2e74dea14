"""Benchmark: capture parsing, packet features and loaders on the bundled real data.

Prints a table and writes bench/results/netfeatures.json. Run: ``python bench/netfeatures.py``.
Figures are wall-clock on whatever machine runs it (best of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.data.bundled import bundled_path
from ztfm.data.pcap import iter_packets
from ztfm.data.registry import load
from ztfm.detect.netfeatures import NetFeatureConfig, PacketFeatures, packet_featurizer

OUT = Path(__file__).resolve().parent / "results" / "netfeatures.json"

CAPTURES = {
    "pcap, Ethernet (IoT-23 42-1 head)": "pcap/iot23-42-1-head.pcap.gz",
    "pcapng, SLL (MQTTset benign-train)": "mqttset/benign/benign-train.pcap.gz",
    "pcapng, Ethernet (MQTTset bruteforce-train)": "mqttset/bruteforce/bruteforce-train.pcapng.gz",
}
LOADERS = {
    "nbaiot": "nbaiot",
    "ton_iot": "ton_iot",
    "iot23": "iot23",
    "skab (valve1+other+free)": "skab",
}


CPU: dict[str, float] = {}


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    """Best wall-clock time; the matching best CPU time of this process goes to ``CPU["last"]``
    (less sensitive to other jobs on a shared machine)."""
    times, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    CPU["last"] = min(cpus)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--spray", type=int, default=200_000, help="packets in the spraying test")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []

    for label, rel in CAPTURES.items():
        path = bundled_path(rel)
        packets = list(iter_packets(path))
        n = len(packets)
        t_parse = best_of(args.repeat, lambda p=path: list(iter_packets(p)))  # type: ignore[misc]
        c_parse = CPU["last"]

        def feats(pk: list[Any] = packets) -> None:
            fx = PacketFeatures()
            for p in pk:
                fx.update(p)

        t_feat = best_of(args.repeat, feats)
        c_feat = CPU["last"]
        rows.append({"what": f"parse {label}", "items": n, "seconds": t_parse,
                     "per_s": n / t_parse, "per_cpu_s": n / c_parse})  # fmt: skip
        rows.append({"what": f"features {label}", "items": n, "seconds": t_feat,
                     "per_s": n / t_feat, "per_cpu_s": n / c_feat})  # fmt: skip

    # memory bound under address spraying: every packet from a new random source and port
    cfg = NetFeatureConfig(max_streams=20_000)
    fx = PacketFeatures(cfg)
    rng = np.random.default_rng(0)
    base = next(iter(iter_packets(bundled_path("pcap/iot23-42-1-head.pcap.gz"))))
    ips = rng.integers(0, 2**32, size=args.spray, dtype=np.uint64)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, a in enumerate(ips):
        ip = ".".join(str((int(a) >> s) & 255) for s in (24, 16, 8, 0))
        sport = int(a) & 0xFFFF
        fx.update(replace(base, ts=i * 1e-4, length=60, src_ip=ip, dst_ip="10.0.0.1", proto=6,
                          sport=sport, dport=23))  # fmt: skip
    t_spray = time.perf_counter() - t0
    c_spray = time.process_time() - c0
    state_bytes = fx.state_bytes()
    rows.append({"what": f"features, {args.spray} spoofed sources", "items": args.spray,
                 "seconds": t_spray, "per_s": args.spray / t_spray,
                 "per_cpu_s": args.spray / c_spray,
                 "max_streams_held": max(fx.stream_counts().values()),
                 "state_arrays_bytes": state_bytes})  # fmt: skip

    featurize = packet_featurizer()
    for label, rel in LOADERS.items():
        path = bundled_path(rel)
        series = load(path, featurize=featurize)
        n = sum(len(s) for s in series)
        t = best_of(args.repeat, lambda p=path: load(p, featurize=featurize))  # type: ignore[misc]
        rows.append({"what": f"load {label}", "items": n, "seconds": t, "per_s": n / t,
                     "per_cpu_s": n / CPU["last"]})  # fmt: skip

    print(f"| {'what':<55} | {'items':>8} | {'wall s':>8} | {'items/s':>9} | {'items/cpu-s':>11} |")
    print(f"|{'-' * 57}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 13}|")
    for r in rows:
        print(f"| {r['what']:<55} | {r['items']:>8} | {r['seconds']:>8.3f} | {r['per_s']:>9.0f} "
              f"| {r['per_cpu_s']:>11.0f} |")  # fmt: skip
    extra = rows[len(CAPTURES) * 2]
    print(f"spraying: at most {extra['max_streams_held']} streams held per table; state arrays "
          f"{extra['state_arrays_bytes'] / 1e6:.1f} MB (fixed at construction)")  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "repeat": args.repeat, "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
