"""Privacy attack bench: membership inference and gradient inversion against ztfm's defences.

Fleet: the 30 bundled SKAB devices. Each device's candidate rows are its benign windows (every
4th, scaled with its own scaler); a random half are its training rows (members), the rest are
non-members of the same device and period. The global model starts warm (pre-trained on the
public anomaly-free file), as in round r > 1 of a run.

Attacks x defences:
* MI on one update (the curious aggregator): loss drop, LiRA with shadow devices.
* MI on the released global model after R FedAvg rounds: loss and loss drop.
* Gradient inversion of one device's round: "fedsgd" (one SGD step, lr 0.1: the textbook worst
  case) and "ztfm" (the detector's real recipe: Adam, 3 local epochs, lr 3e-3), on a round of
  8 rows (one full batch: the attacker's unrolled simulation is exact).

DP defaults: clip_norm C = 0.5 (about the median update norm here), noise_multiplier z from
``noise_multiplier_for(8, 1e-5, rounds=10, q=1)`` (epsilon <= 8 at delta 1e-5 over 10 rounds);
distributed noise with SecAgg groups of 10 (each device adds z*C/sqrt(10)).

Usage: python bench/privacy.py [--quick] [--seed N]
Prints a table; writes bench/results/privacy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.privacy.accounting import epsilon_for, noise_multiplier_for
from ztfm.sim import privacy_attacks as pa

RESULTS = Path(__file__).resolve().parent / "results" / "privacy.json"
CLIP = 0.5
TARGET_EPS, DELTA, ROUNDS = 8.0, 1e-5, 10
GROUP = 10


def defences(z: float, n_devices: int) -> dict[str, pa.Defence]:
    share = z * CLIP / math.sqrt(GROUP)
    return {
        "none": pa.Defence("none"),
        "clip": pa.Defence("clip", clip_norm=CLIP),
        "dp (share, no secagg)": pa.Defence("dp-share", clip_norm=CLIP, noise_std=share),
        # what `ztfm simulate` does today: each of the round's n devices adds z*C/sqrt(n)
        f"dp (share /sqrt({n_devices}))": pa.Defence(
            "dp-sim-share", clip_norm=CLIP, noise_std=z * CLIP / math.sqrt(n_devices)
        ),
        "dp (local, z*C)": pa.Defence("dp-local", clip_norm=CLIP, noise_std=z * CLIP),
        "topk 10%": pa.Defence("topk", sparsify="topk", keep=0.1),
        "shared 10%": pa.Defence("shared", sparsify="shared", keep=0.1),
        f"secagg {GROUP}": pa.Defence("secagg", secagg_group=GROUP),
        f"secagg {GROUP} + dp": pa.Defence(
            "secagg+dp", clip_norm=CLIP, noise_std=share, secagg_group=GROUP
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shadows, rounds and iterations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t_all = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    shadows = 4 if args.quick else 8
    rounds = 3 if args.quick else ROUNDS
    iters = 100 if args.quick else 250
    targets = 1 if args.quick else 3
    z = noise_multiplier_for(TARGET_EPS, DELTA, ROUNDS, 1.0)
    eps = epsilon_for(z, ROUNDS, 1.0, DELTA)
    pools, public = pa.skab_pools(rng, stride=4)
    start = pa.pretrain(public, (32, 8), 20, rng)
    recipe = pa.LocalRecipe()
    norms = [
        float(
            np.linalg.norm(
                pa.flatten(pa.local_train(start, p.rows[p.member], recipe, rng)) - pa.flatten(start)
            )
        )
        for p in pools
    ]
    defs = defences(z, len(pools))
    rows: list[dict[str, Any]] = []

    def add(attack: str, defence: str, **vals: Any) -> None:
        rows.append({"attack": attack, "defence": defence, **vals})
        shown = "  ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in vals.items()
        )
        print(f"{attack:<22} {defence:<22} {shown}", flush=True)

    print(f"z = {z:.3f} (epsilon {eps:.2f} at delta {DELTA} over {ROUNDS} rounds), C = {CLIP}")
    print(f"update norms: median {np.median(norms):.3f}, max {max(norms):.3f}")
    # 1. membership inference on one update
    for name, d in defs.items():
        t0 = time.perf_counter()
        res = pa.mi_update_experiment(pools, start, recipe, d, rng, shadows=shadows)
        for attack, m in res.items():
            add(
                f"mi-update/{attack}",
                name,
                auc=m.auc,
                tpr_at_0_1pct=m.tpr[0.001],
                tpr_at_1pct=m.tpr[0.01],
                n_neg=m.n_neg,
                fp_allowed_0_1pct=m.false_positives_allowed[0.001],
                seconds=time.perf_counter() - t0,
            )
    # 1b. the same against a device that overfits (30 local epochs instead of 3): the attack's
    # strength when a round memorises more, and what DP does to it
    overfit = pa.LocalRecipe(epochs=30)
    for name in (
        "none",
        "dp (share, no secagg)",
        f"dp (share /sqrt({len(pools)}))",
        f"secagg {GROUP} + dp",
    ):
        t0 = time.perf_counter()
        res = pa.mi_update_experiment(pools, start, overfit, defs[name], rng, shadows=shadows)
        for attack, m in res.items():
            add(
                f"mi-update-30ep/{attack}",
                name,
                auc=m.auc,
                tpr_at_0_1pct=m.tpr[0.001],
                tpr_at_1pct=m.tpr[0.01],
                n_neg=m.n_neg,
                fp_allowed_0_1pct=m.false_positives_allowed[0.001],
                seconds=time.perf_counter() - t0,
            )
    # 2. membership inference on the released global model (the sum carries z*C of noise)
    global_defs = {
        "none": pa.Defence("none"),
        "dp (central z*C on the sum)": pa.Defence(
            "dp", clip_norm=CLIP, noise_std=z * CLIP / math.sqrt(len(pools))
        ),
    }
    for name, d in global_defs.items():
        t0 = time.perf_counter()
        res = pa.mi_global_experiment(pools, start, recipe, d, rounds, rng)
        for attack, m in res.items():
            add(
                f"mi-global/{attack}",
                name,
                auc=m.auc,
                tpr_at_0_1pct=m.tpr[0.001],
                tpr_at_1pct=m.tpr[0.01],
                n_neg=m.n_neg,
                fp_allowed_0_1pct=m.false_positives_allowed[0.001],
                seconds=time.perf_counter() - t0,
            )
    # 3. gradient inversion of one round of 8 rows
    recipes = {
        "fedsgd": pa.LocalRecipe(epochs=1, lr=0.1, optimizer="sgd"),
        "ztfm-adam": recipe,
    }
    cfg = pa.InversionConfig(iters=iters)
    inv_defs = [
        "none",
        "dp (share, no secagg)",
        f"dp (share /sqrt({len(pools)}))",
        "topk 10%",
        "shared 10%",
        f"secagg {GROUP}",
        f"secagg {GROUP} + dp",
    ]
    for rname, rec in recipes.items():
        for name in inv_defs:
            t0 = time.perf_counter()
            q = pa.inversion_experiment(
                pools, start, rec, defs[name], 8, rng, targets=targets, config=cfg
            )
            add(
                f"inversion/{rname}",
                name,
                recon_mse=q.error,
                baseline_mse=q.baseline,
                ratio=q.ratio,
                corr=q.correlation,
                worst_target_ratio=min(q.per_target),
                seconds=time.perf_counter() - t0,
            )
    # 3b. FedSGD inversion against SecAgg groups of several sizes and round sizes
    for group in (2, 5, GROUP):
        for n_rows in (2, 8):
            t0 = time.perf_counter()
            q = pa.inversion_experiment(
                pools,
                start,
                recipes["fedsgd"],
                pa.Defence("secagg", secagg_group=group),
                n_rows,
                rng,
                targets=targets,
                config=cfg,
            )
            add(
                f"inversion/fedsgd/{n_rows} rows",
                f"secagg {group}",
                recon_mse=q.error,
                baseline_mse=q.baseline,
                ratio=q.ratio,
                corr=q.correlation,
                worst_target_ratio=min(q.per_target),
                seconds=time.perf_counter() - t0,
            )
    report = {
        "quick": args.quick,
        "seed": args.seed,
        "clip_norm": CLIP,
        "noise_multiplier": z,
        "epsilon": eps,
        "delta": DELTA,
        "rounds_accounted": ROUNDS,
        "secagg_group": GROUP,
        "devices": len(pools),
        "candidates_per_device": [len(p.rows) for p in pools],
        "shadows": shadows,
        "global_rounds": rounds,
        "inversion_iters": iters,
        "inversion_targets": targets,
        "update_norm_median": float(np.median(norms)),
        "rows": rows,
        "total_seconds": time.perf_counter() - t_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"total {report['total_seconds']:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
