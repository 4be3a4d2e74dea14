"""Private fleet bench: `ztfm simulate` on the bundled SKAB fleet (defaults, 10 rounds), side by
side: non-private; DP at epsilon ~8 (delta 1e-5, z from the accountant); SecAgg+ (clip only);
SecAgg+ with DP; SecAgg+ with compression (shared random coordinates + error feedback, 16-bit
field, k = 2 neighbours), with and without DP.

Issue targets: DP F1 within 2 pts of non-private at epsilon <= 8; compression >= 20x fewer bytes
up at <= 1 pt F1 loss.

Usage: python bench/private_fleet.py [--rounds N] [--only NAME ...]
Prints a table; writes bench/results/private_fleet.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ztfm.privacy.accounting import epsilon_for, noise_multiplier_for
from ztfm.sim.config import from_mapping, load_config
from ztfm.sim.runner import run_simulation

RESULTS = Path(__file__).resolve().parent / "results" / "private_fleet.json"
CLIP = 0.5  # about the median update norm on SKAB (bench/privacy.py)
TARGET_EPS, DELTA = 8.0, 1e-5


def scenarios(z: float) -> dict[str, dict[str, Any]]:
    dp = {"clip_norm": CLIP, "noise_multiplier": z, "delta": DELTA}
    clip = {"clip_norm": CLIP}
    sec = {"enabled": True}
    comp_sec = {"enabled": True, "bits": 16, "neighbours": 2}
    comp = {"keep_ratio": 0.05}
    return {
        "non-private": {},
        "dp (no secagg)": {"privacy": dp},
        "secagg (clip only)": {"privacy": clip, "secagg": sec},
        "secagg+dp (m=t)": {"privacy": dp, "secagg": sec},
        "secagg+dp (m=0.9n)": {"privacy": dp, "secagg": {**sec, "min_survivors": 0.9}},
        "secagg+compress 5%/16b": {"privacy": clip, "secagg": comp_sec, "compression": comp},
        "secagg+compress+dp (m=0.9n)": {
            "privacy": dp,
            "secagg": {**comp_sec, "min_survivors": 0.9},
            "compression": comp,
        },
    }


def run_one(overlay: dict[str, Any], rounds: int) -> dict[str, Any]:
    base = {"rounds": {"rounds": rounds}, "compare": {"local_only": False, "centralised": False}}
    cfg = from_mapping({**base, **overlay}, load_config())
    t0 = time.perf_counter()
    m = run_simulation(cfg).metrics
    last = m["rounds"][-1]
    eps = last.get("epsilon") or {}
    fed = m["comparison"]["federated"]
    return {
        "f1": fed["f1"],
        "far": fed["far"],
        "epsilon_max": max(eps.values()) if eps else None,
        "bytes_up_per_device_round": m["bandwidth"]["mean_bytes_up_per_device_per_round"],
        "bytes_down_per_device_round": m["bandwidth"]["mean_bytes_down_per_device_per_round"],
        "failed_rounds": sum(1 for r in m["rounds"] if r.get("failed")),
        "wall_s": time.perf_counter() - t0,
        "config": overlay,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    z = noise_multiplier_for(TARGET_EPS, DELTA, args.rounds, 1.0)
    eps = epsilon_for(z, args.rounds, 1.0, DELTA)
    rows: dict[str, dict[str, Any]] = {}
    for name, overlay in scenarios(z).items():
        if args.only and name not in args.only and name != "non-private":
            continue
        rows[name] = run_one(overlay, args.rounds)
        print(f"done {name}: {rows[name]['wall_s']:.0f} s", flush=True)
    ref = rows["non-private"]
    print(f"\nSKAB, {args.rounds} rounds; DP: clip {CLIP}, z {z:.3f} (epsilon {eps:.2f}, q=1)")
    head = "| setting | F1 | FAR | dF1 pts | eps max | bytes up/dev/round | x fewer | failed |"
    print(head)
    print("|" + "---|" * 8)
    for name, r in rows.items():
        r["delta_f1_pts"] = 100 * (r["f1"] - ref["f1"])
        r["ratio_vs_dense"] = ref["bytes_up_per_device_round"] / r["bytes_up_per_device_round"]
        e = "-" if r["epsilon_max"] is None else f"{r['epsilon_max']:.2f}"
        print(
            f"| {name} | {r['f1']:.3f} | {r['far']:.3f} | {r['delta_f1_pts']:+.1f} | {e} | "
            f"{r['bytes_up_per_device_round']:.0f} | {r['ratio_vs_dense']:.1f} | "
            f"{r['failed_rounds']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"rounds": args.rounds, "clip_norm": CLIP, "noise_multiplier": z, "epsilon": eps}
    args.out.write_text(json.dumps({**out, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
