"""Private fleet bench: `ztfm simulate` on the bundled SKAB fleet (30 devices), side by side:
non-private; DP at epsilon <= 8 (delta 1e-5, z from the accountant); SecAgg+ (clip only);
SecAgg+ with DP; SecAgg+ with compression (shared coordinates + error feedback, 16-bit field,
k = 2 neighbours), with and without DP; per-device top-k without SecAgg (own coordinates,
quantised levels, error feedback: `ztfm.privacy.sparse`).

Issue targets: DP F1 within 2 pts of non-private at epsilon <= 8; compression >= 20x fewer bytes
up at <= 1 pt F1 loss.

Held-out choice: the SKAB files are the devices. Sorted by id, the even positions are the TUNE
devices and the odd positions the HELD-OUT devices. `--tune` runs a grid with seeds 1 and 2 and
scores only the tune devices' test rows; the settings of the main table were chosen from
`bench/results/private_fleet_tune.json`. The main table reports seed 0 (default `--seeds 0 2`
gives the mean of both) on all 30 devices and on the held-out 15 separately. Every device
trains in every run.

Bench-local prototypes (call-site changes that belong to other owners' files):
* `--pld` rows: `FleetAccountant(..., method="pld")` in `sim.scenario.build_scenario`; the
  simulated accountant then certifies the PLD epsilon the noise was calibrated for.
* index rules `cyclic` / `public_topk`: `ProtoRounds` (a `SecureRounds` subclass) builds an
  `UpdateCodec` whose shared coordinates come from `privacy.compress.cyclic_indices` or
  `privacy.compress.public_topk_indices` (of the previous released global step) instead of
  `shared_indices` (random per round).

Usage: python bench/private_fleet.py [--seeds 0 1 2] [--only NAME ...]
                                     [--tune | --scaling | --extra | --rounds-study]
Prints a table; writes bench/results/private_fleet.json (or private_fleet_tune.json,
private_fleet_dp_scaling.json, private_fleet_extra.json, private_fleet_rounds.json).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import ztfm.sim.runner as sim_runner
import ztfm.sim.scenario as sim_scenario
from ztfm.privacy.accounting import FleetAccountant, epsilon_for, noise_multiplier_for
from ztfm.privacy.compress import IndexArray, cyclic_indices, public_topk_indices
from ztfm.secagg import UpdateCodec
from ztfm.sim.config import from_mapping, load_config
from ztfm.sim.runner import run_simulation
from ztfm.sim.secure import SecureRounds

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_EPS, DELTA = 8.0, 1e-5


# ---- prototypes -----------------------------------------------------------------------------
class IndexRule:
    """The round's shared coordinates from a public rule. The codec is built on both ends
    (device.secure and coordinator.secure), so the bench swaps ``UpdateCodec.indices`` while a
    run lasts; ``ProtoRounds`` tells it the round number and the last released global step."""

    def __init__(self, rule: str, explore: float) -> None:
        self.rule, self.explore = rule, explore
        self.round = 0
        self.prev_step: np.ndarray | None = None
        self._cache: dict[tuple[int, bytes, int], IndexArray] = {}

    def indices(self, codec: UpdateCodec, round_seed: bytes) -> IndexArray | None:
        if codec.sent == codec.length:
            return None
        key = (self.round, round_seed, codec.sent)
        if key not in self._cache:
            if self.rule == "cyclic":
                idx = cyclic_indices(codec.length, codec.sent, self.round, b"ztfm-bench/cyclic")
            elif self.prev_step is None or not np.any(self.prev_step):
                idx = cyclic_indices(codec.length, codec.sent, 0, round_seed)
            else:
                idx = public_topk_indices(self.prev_step, codec.sent, round_seed, self.explore)
            self._cache = {key: idx}
        return self._cache[key]


RULE: IndexRule | None = None


class ProtoRounds(SecureRounds):
    def run_round(self, now: float) -> Any:
        coord = self.coordinator
        before = coord.spec.flatten(coord.params).astype(np.float64)
        if RULE is not None:
            RULE.round = coord.next_round_id
        traffic = super().run_round(now)
        if RULE is not None:  # the released global step is public
            RULE.prev_step = coord.spec.flatten(coord.params).astype(np.float64) - before
        return traffic


@contextlib.contextmanager
def prototypes(pld: bool, rule: str, explore: float) -> Iterator[None]:
    global RULE
    acc, rounds, orig = sim_scenario.FleetAccountant, sim_runner.SecureRounds, UpdateCodec.indices
    try:
        if pld:
            sim_scenario.FleetAccountant = functools.partial(FleetAccountant, method="pld")  # type: ignore[misc]
        if rule != "rand":
            RULE = IndexRule(rule, explore)
            sim_runner.SecureRounds = ProtoRounds  # type: ignore[misc]
            UpdateCodec.indices = lambda self, seed: RULE.indices(self, seed)  # type: ignore[method-assign,union-attr]
        yield
    finally:
        RULE = None
        sim_scenario.FleetAccountant = acc  # type: ignore[misc]
        sim_runner.SecureRounds = rounds  # type: ignore[misc]
        UpdateCodec.indices = orig  # type: ignore[method-assign]


# ---- one run ----------------------------------------------------------------------------------
def pooled(per_device: dict[str, dict[str, Any]], devs: list[str]) -> dict[str, float]:
    tp, fp, fn, tn = (sum(per_device[d][k] for d in devs) for k in ("tp", "fp", "fn", "tn"))
    return {"f1": 2 * tp / max(1, 2 * tp + fp + fn), "far": fp / max(1, fp + tn)}


def run_one(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """spec: {"cfg": overlay, "pld": bool, "rule": str, "explore": float, "target_eps": float}"""
    overlay = json.loads(json.dumps(spec.get("cfg", {})))
    rounds = overlay.setdefault("rounds", {}).setdefault("rounds", 10)
    priv = overlay.get("privacy", {})
    z = None
    if priv.get("noise_multiplier") == "auto":
        method = "pld" if spec.get("pld") else "rdp"
        z = noise_multiplier_for(
            spec.get("target_eps", TARGET_EPS), DELTA, rounds, 1.0, method=method
        )
        priv["noise_multiplier"] = z
    base = {"seed": seed, "compare": {"local_only": False, "centralised": False}}
    cfg = from_mapping({**base, **overlay}, load_config())
    t0 = time.perf_counter()
    with prototypes(bool(spec.get("pld")), spec.get("rule", "rand"), spec.get("explore", 0.5)):
        m = run_simulation(cfg).metrics
    last = m["rounds"][-1]
    eps = last.get("epsilon") or {}
    devs = sorted(last["per_device"])
    out = {
        "all": pooled(last["per_device"], devs),
        "tune": pooled(last["per_device"], devs[0::2]),
        "held_out": pooled(last["per_device"], devs[1::2]),
        "noise_multiplier": z,
        "epsilon_max": max(eps.values()) if eps else None,
        "epsilon_rdp": epsilon_for(z, rounds, 1.0, DELTA) if z else None,
        "bytes_up": m["bandwidth"]["mean_bytes_up_per_device_per_round"],
        "bytes_down": m["bandwidth"]["mean_bytes_down_per_device_per_round"],
        "failed_rounds": sum(1 for r in m["rounds"] if r.get("failed")),
        "wall_s": time.perf_counter() - t0,
        # F1 after each round: an r-round run is the first r rounds of a longer one (no
        # schedule depends on the round count when there is no DP noise)
        "per_round": [
            {
                part: pooled(rec["per_device"], sel)["f1"]
                for part, sel in (("all", devs), ("tune", devs[0::2]), ("held_out", devs[1::2]))
            }
            for rec in m["rounds"]
        ],
    }
    return out


def run_spec(spec: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    runs = [run_one(spec, s) for s in seeds]
    mean = {
        part: {k: float(np.mean([r[part][k] for r in runs])) for k in ("f1", "far")}
        for part in ("all", "tune", "held_out")
    }
    keep = ("noise_multiplier", "epsilon_max", "epsilon_rdp", "bytes_up", "bytes_down")
    return {
        **mean,
        **{k: runs[0][k] for k in keep},
        "f1_per_seed": {s: r["all"]["f1"] for s, r in zip(seeds, runs, strict=True)},
        "f1_held_out_per_seed": {s: r["held_out"]["f1"] for s, r in zip(seeds, runs, strict=True)},
        "failed_rounds": sum(r["failed_rounds"] for r in runs),
        "wall_s": sum(r["wall_s"] for r in runs),
        "per_round": {s: r["per_round"] for s, r in zip(seeds, runs, strict=True)},
        "spec": spec,
    }


# ---- the table ---------------------------------------------------------------------------------
def dp(clip: float) -> dict[str, Any]:
    return {"clip_norm": clip, "noise_multiplier": "auto", "delta": DELTA}


def main_specs() -> dict[str, dict[str, Any]]:
    sec = {"enabled": True}
    comp_sec = {"enabled": True, "bits": 16, "neighbours": 2}
    comp = {"keep_ratio": 0.05}
    return {
        "non-private": {},
        "dp rdp (old: C 0.5, 10 r)": {"cfg": {"privacy": dp(0.5)}},
        "dp pld (C 0.5, 10 r)": {"cfg": {"privacy": dp(0.5)}, "pld": True},
        "secagg (clip only)": {"cfg": {"privacy": {"clip_norm": 0.5}, "secagg": sec}},
        "secagg (clip only), server_lr 3": {
            "cfg": {
                "privacy": {"clip_norm": 0.5},
                "secagg": sec,
                "rounds": {"server_lr": 3.0},
            }
        },
        "dp pld, server_lr 2": {
            "cfg": {"privacy": dp(0.5), "rounds": {"server_lr": 2.0}},
            "pld": True,
        },
        "secagg+dp rdp (m=0.9n)": {
            "cfg": {"privacy": dp(0.5), "secagg": {**sec, "min_survivors": 0.9}}
        },
        "secagg+dp pld (m=0.9n)": {
            "cfg": {"privacy": dp(0.5), "secagg": {**sec, "min_survivors": 0.9}},
            "pld": True,
        },
        "secagg+compress rand 5%/16b": {
            "cfg": {"privacy": {"clip_norm": 0.5}, "secagg": comp_sec, "compression": comp}
        },
        "secagg+compress rand 5%/16b, no error feedback": {
            "cfg": {
                "privacy": {"clip_norm": 0.5},
                "secagg": comp_sec,
                "compression": {**comp, "error_feedback": False},
            }
        },
        "secagg+compress cyclic 5%/16b": {
            "cfg": {"privacy": {"clip_norm": 0.5}, "secagg": comp_sec, "compression": comp},
            "rule": "cyclic",
        },
        "secagg+compress pubtopk 5%/16b": {
            "cfg": {"privacy": {"clip_norm": 0.5}, "secagg": comp_sec, "compression": comp},
            "rule": "public_topk",
        },
        # session 5: without SecAgg each device sends its own top-k (privacy.sparse)
        **{
            f"per-device top-k {int(100 * keep)}%/{bits}b{tag}": {
                "cfg": {
                    "compression": {"keep_ratio": keep, "value_bits": bits, "error_feedback": ef}
                }
            }
            for keep, bits, ef, tag in (
                (0.1, 4, True, ""),
                (0.1, 8, True, ""),
                (0.05, 4, True, ""),
                (0.1, 4, False, ", no error feedback"),
            )
        },
    }


def tune_specs() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r, e in ((10, 3), (5, 3), (3, 6)):
        rounds = {"rounds": r, "local_epochs": e}
        out[f"np R{r} E{e}"] = {"cfg": {"rounds": rounds}}
        for clip in (0.5, 1.0):
            out[f"dp pld R{r} E{e} C{clip}"] = {
                "cfg": {"rounds": rounds, "privacy": dp(clip)},
                "pld": True,
            }
    comp_sec = {"enabled": True, "bits": 16, "neighbours": 2}
    out["secagg dense C0.5"] = {"cfg": {"privacy": {"clip_norm": 0.5}, "secagg": {"enabled": True}}}
    for clip in (2.0, 5.0):
        out[f"compress rand 5% C{clip}"] = {
            "cfg": {
                "privacy": {"clip_norm": clip},
                "secagg": comp_sec,
                "compression": {"keep_ratio": 0.05},
            },
        }
    # session 4: a larger server step against clipping, DP noise and sparsity; a smaller model
    clip = {"clip_norm": 0.5}
    for lr in (2.0, 3.0, 5.0):
        out[f"dp rdp server_lr {lr:g}"] = {
            "cfg": {"privacy": {**dp(0.5)}, "rounds": {"server_lr": lr}}
        }
    out["secagg dense C0.5 server_lr 3"] = {
        "cfg": {"privacy": clip, "secagg": {"enabled": True}, "rounds": {"server_lr": 3.0}}
    }
    for hidden, lr in (((16, 4), 1.0), ((16, 4), 2.0), ((8, 4), 2.0)):
        out[f"dp rdp hidden {list(hidden)} server_lr {lr:g}"] = {
            "cfg": {
                "privacy": dp(0.5),
                "detector": {"hidden": list(hidden)},
                "rounds": {"server_lr": lr},
            }
        }
    for ef in (True, False):
        for lr in (1.0, 3.0):
            out[f"compress rand 5% ef={ef} server_lr {lr:g}"] = {
                "cfg": {
                    "privacy": clip,
                    "secagg": comp_sec,
                    "compression": {"keep_ratio": 0.05, "error_feedback": ef},
                    "rounds": {"server_lr": lr},
                }
            }
    for rule in ("rand", "cyclic", "public_topk"):
        out[f"compress {rule} 5%"] = {
            "cfg": {
                "privacy": {"clip_norm": 0.5},
                "secagg": comp_sec,
                "compression": {"keep_ratio": 0.05},
            },
            "rule": rule,
        }
    return out


def scaling_specs() -> dict[str, dict[str, Any]]:
    """What-if, not a result: DP at epsilon 8 on a fleet of N devices whose updates look like
    the 30 SKAB devices'. The noise on the mean of N clipped updates is z C / N; the 30 devices
    here get z' = z 30 / N, the noise the mean of a fleet of N would carry. The simulated
    accountant then books z' for these 30 devices, so its epsilon is not the fleet's: the
    fleet's epsilon is 8 (z calibrated with PLD for 10 rounds, q = 1)."""
    z = noise_multiplier_for(TARGET_EPS, DELTA, 10, 1.0, method="pld")
    out: dict[str, dict[str, Any]] = {"non-private": {}}
    for lr in (1.0, 3.0):
        tag = "" if lr == 1.0 else f", server_lr {lr:g}"
        for fleet in (30, 100, 300, 1000):
            out[f"dp pld eps 8, noise of a {fleet}-device fleet{tag}"] = {
                "cfg": {
                    "privacy": {"clip_norm": 0.5, "noise_multiplier": z * 30 / fleet},
                    "rounds": {"server_lr": lr},
                },
                "what_if_fleet": fleet,
            }
    return out


def extra_specs() -> dict[str, dict[str, Any]]:
    """Session 6: more levers against the DP and shared-sparsity losses (seed 0, all devices):
    local epochs, a smaller clip, FedProx, DP on the shared coordinates only (SecAgg), and
    shared coordinates over more rounds."""
    out: dict[str, dict[str, Any]] = {"non-private": {}}
    for e in (1, 10):
        out[f"np E{e}"] = {"cfg": {"rounds": {"local_epochs": e}}}
        out[f"dp pld E{e}"] = {
            "cfg": {"rounds": {"local_epochs": e}, "privacy": dp(0.5)},
            "pld": True,
        }
    out["dp pld C0.25"] = {"cfg": {"privacy": dp(0.25)}, "pld": True}
    out["dp pld prox_mu 0.1"] = {
        "cfg": {"rounds": {"prox_mu": 0.1}, "privacy": dp(0.5)},
        "pld": True,
    }
    for keep in (0.05, 0.1, 0.25):
        out[f"secagg+dp pld (m=0.9n), rand {int(100 * keep)}%, 32 bit"] = {
            "cfg": {
                "privacy": dp(0.5),
                "secagg": {"enabled": True, "min_survivors": 0.9},
                "compression": {"keep_ratio": keep},
            },
            "pld": True,
        }
    comp_sec = {"enabled": True, "bits": 16, "neighbours": 2}
    for r in (10, 20, 30):
        for lr in (1.0, 3.0):
            rounds = {"rounds": r, "server_lr": lr}
            clip = {"clip_norm": 0.5}
            out[f"R{r} server_lr {lr:g}: secagg dense"] = {
                "cfg": {"privacy": clip, "secagg": {"enabled": True}, "rounds": rounds}
            }
            out[f"R{r} server_lr {lr:g}: secagg 5% cyclic/16b"] = {
                "cfg": {
                    "privacy": clip,
                    "secagg": comp_sec,
                    "compression": {"keep_ratio": 0.05},
                    "rounds": rounds,
                },
                "rule": "cyclic",
            }
    return out


STUDY_ROUNDS = 90


def rounds_specs() -> dict[str, dict[str, Any]]:
    """Session 6: how many rounds each upload needs. One run of STUDY_ROUNDS rounds per setting
    and seed gives the F1 after every round; ``rounds_study`` picks each family's server_lr and
    round count on the TUNE devices with seed 1, then reports seeds 0 and 2 there."""
    rounds = {"rounds": STUDY_ROUNDS}
    clip = {"clip_norm": 0.5}
    comp_sec = {"enabled": True, "bits": 16, "neighbours": 2}
    out: dict[str, dict[str, Any]] = {"non-private": {"cfg": {"rounds": rounds}}}
    for lr in (1.0, 3.0):
        out[f"secagg dense (clip 0.5), server_lr {lr:g}"] = {
            "cfg": {
                "privacy": clip,
                "secagg": {"enabled": True},
                "rounds": {**rounds, "server_lr": lr},
            },
            "family": "secagg dense",
        }
    for lr in (2.0, 3.0):
        out[f"secagg 5% rand/16b k=2 (clip 0.5), server_lr {lr:g}"] = {
            "cfg": {
                "privacy": clip,
                "secagg": comp_sec,
                "compression": {"keep_ratio": 0.05},
                "rounds": {**rounds, "server_lr": lr},
            },
            "family": "secagg 5% rand/16b",
        }
    out["non-private"]["family"] = "non-private"
    return out


def rounds_study(rows: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per family: the (setting, round count) with the best seed-1 TUNE F1, and its F1 on the
    other seeds (all devices and the held-out half)."""
    pick_seed = 1 if 1 in seeds else seeds[0]
    report = [s for s in seeds if s != pick_seed] or [pick_seed]
    fams: dict[str, Any] = {}
    for name, r in rows.items():
        fam = r["spec"].get("family", name)
        curve = r["per_round"][pick_seed]
        best = max(range(len(curve)), key=lambda i: curve[i]["tune"])
        cand = {"setting": name, "rounds": best + 1, "tune_f1": curve[best]["tune"]}
        if fam not in fams or cand["tune_f1"] > fams[fam]["tune_f1"]:
            fams[fam] = cand
    for c in fams.values():
        r = rows[c["setting"]]
        at = c["rounds"] - 1
        for part in ("all", "held_out"):
            vals = [r["per_round"][s][at][part] for s in report]
            c[f"f1_{part}"] = float(np.mean(vals))
            c[f"f1_{part}_per_seed"] = dict(zip(report, vals, strict=True))
        c["bytes_up"] = r["bytes_up"]
        c["bytes_up_whole_run"] = r["bytes_up"] * c["rounds"]
    ref = fams.get("non-private")
    dense = fams.get("secagg dense")
    print(f"\nrounds study: picked on seed {pick_seed} tune devices, reported on seeds {report}")
    print(
        "| family | picked setting | rounds | F1 all | dF1 pts | F1 held-out | B up / round |"
        " x fewer / round | B up to get there | x fewer |"
    )
    print("|" + "---|" * 10)
    for fam, c in fams.items():
        d_pts = 100 * (c["f1_all"] - ref["f1_all"]) if ref else 0.0
        per = ref["bytes_up"] / c["bytes_up"] if ref else 1.0
        run = ref["bytes_up_whole_run"] / c["bytes_up_whole_run"] if ref else 1.0
        d_dense = 100 * (c["f1_all"] - dense["f1_all"]) if dense else 0.0
        c["delta_f1_pts"], c["delta_f1_vs_secagg_dense_pts"] = d_pts, d_dense
        c["ratio_per_round"], c["ratio_whole_run"] = per, run
        print(
            f"| {fam} | {c['setting']} | {c['rounds']} | {c['f1_all']:.3f} | {d_pts:+.1f} | "
            f"{d_dense:+.1f} | "
            f"{c['f1_held_out']:.3f} | {c['bytes_up']:.0f} | {per:.1f} | "
            f"{c['bytes_up_whole_run']:.0f} | {run:.1f} |"
        )
    return {"pick_seed": pick_seed, "report_seeds": report, "families": fams}


def print_table(rows: dict[str, dict[str, Any]], seeds: list[int], part: str) -> None:
    ref = rows.get("non-private") or next(iter(rows.values()))
    dense = ref["bytes_up"]
    print(f"\nSKAB, 30 devices, seeds {seeds}; F1 = mean over seeds, pooled counts")
    head = "| setting | F1 all | FAR | dF1 pts | F1 held-out | dF1 pts | z | eps | B up | x fewer |"
    if part == "tune":
        head = head.replace("held-out", "tune")
    print(head)
    print("|" + "---|" * 10)
    for name, r in rows.items():
        r["delta_f1_pts"] = 100 * (r["all"]["f1"] - ref["all"]["f1"])
        r["delta_f1_held_out_pts"] = 100 * (r["held_out"]["f1"] - ref["held_out"]["f1"])
        r["delta_f1_tune_pts"] = 100 * (r["tune"]["f1"] - ref["tune"]["f1"])
        r["ratio_vs_dense"] = dense / r["bytes_up"]
        e = "-" if r["epsilon_max"] is None else f"{r['epsilon_max']:.2f}"
        z = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3g}"
        half = "tune" if part == "tune" else "held_out"
        print(
            f"| {name} | {r['all']['f1']:.3f} | {r['all']['far']:.3f} | "
            f"{r['delta_f1_pts']:+.1f} | {r[half]['f1']:.3f} | "
            f"{r['delta_f1_' + half + '_pts']:+.1f} | {z} | {e} | {r['bytes_up']:.0f} | "
            f"{r['ratio_vs_dense']:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tune", action="store_true", help="the grid on the tune devices")
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="what-if: DP noise of larger fleets on the 30 devices (private_fleet_dp_scaling.json)",
    )
    ap.add_argument(
        "--extra",
        action="store_true",
        help="session 6 levers: epochs, clip, FedProx, sparse DP, more rounds "
        "(private_fleet_extra.json)",
    )
    ap.add_argument(
        "--rounds-study",
        action="store_true",
        help=f"F1 after each of {STUDY_ROUNDS} rounds; each family's rounds and server_lr "
        "picked on seed 1's tune devices (private_fleet_rounds.json)",
    )
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="join result files")
    args = ap.parse_args()
    if args.merge:
        merged: dict[str, dict[str, Any]] = {}
        seen: list[int] = []
        for f in args.merge:
            data = json.loads(f.read_text())
            merged.update(data["rows"])
            seen = data["seeds"]
        print_table(merged, seen, "tune" if args.tune else "all")
        out = args.out or RESULTS / "private_fleet.json"
        out.write_text(json.dumps({"seeds": seen, "rows": merged}, indent=2) + "\n")
        print(f"wrote {out}")
        return
    specs = (
        tune_specs()
        if args.tune
        else scaling_specs()
        if args.scaling
        else extra_specs()
        if args.extra
        else rounds_specs()
        if args.rounds_study
        else main_specs()
    )
    seeds = args.seeds or (
        [1] if args.tune else [0] if args.extra else [0, 1, 2] if args.rounds_study else [0, 2]
    )
    out_path = args.out or RESULTS / (
        "private_fleet_tune.json"
        if args.tune
        else "private_fleet_dp_scaling.json"
        if args.scaling
        else "private_fleet_extra.json"
        if args.extra
        else "private_fleet_rounds.json"
        if args.rounds_study
        else "private_fleet.json"
    )
    part = "tune" if args.tune else "all"
    rows: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        if args.only and not any(o in name for o in args.only):
            continue
        rows[name] = run_spec(spec, seeds)
        r = rows[name]
        print(
            f"done {name}: F1 {part} {r[part]['f1']:.3f} held-out {r['held_out']['f1']:.3f} "
            f"({r['wall_s']:.0f} s)",
            flush=True,
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=2) + "\n")
    print_table(rows, seeds, part)
    result: dict[str, Any] = {"seeds": seeds, "rows": rows}
    if args.rounds_study:
        result["study"] = rounds_study(rows, seeds)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
