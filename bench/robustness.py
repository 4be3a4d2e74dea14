"""bench/robustness.py: poisoning attacks x defences x attacker fraction, on a real fleet.

Two parts, both printed as tables and written to bench/results/robustness.json:

* ``fleet``: the bundled SKAB fleet (one device per real experiment file, the ``ztfm simulate``
  default), the real on-device autoencoder and real local training (``DeviceAgent.train``) with
  the coordinator's round loop replaced by this harness so that attacks and defences can be
  swapped in: attackers are a seeded random subset of devices; model-poisoning attackers see the
  honest updates of the round (omniscient, the strongest case); data-poisoning attackers train on
  their own attack rows as if benign. After the last round every HONEST device evaluates the
  global model on its own held-out rows (its own threshold at the configured false-alarm rate);
  pooled F1 and attack-row recall are reported. The trust manager watches every run (update
  behaviour against the robust aggregate) and reports how many attackers it quarantined within
  5 rounds and how many honest devices it quarantined; the ``+trust`` defences also act on it
  (trust weights; quarantined devices excluded).
* ``groups``: synthetic updates, SecAgg groups of size k, robust rule over group means: error
  vs the benign mean as k grows, with the expected and worst-case number of spoiled groups.

Usage: python bench/robustness.py [--quick] [--rounds 5] [--epochs 1] [--jobs 1] [--dataset skab]
       [--canary 4] [--attacks a,b] [--defences d,e] [--fractions 0.1,0.2,0.3] [--skip-synthetic]
An attack is a name of ``ATTACKS`` or ``name:key=value[:key=value]`` (``alie:z=1.5``): see
``attack_spec``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from ztfm.device.agent import DeviceAgent, DeviceData
from ztfm.errors import AggregationError
from ztfm.fl.messages import EvalTask, RoundTask
from ztfm.fl.params import ParamSpec
from ztfm.robust import Aggregator, make_aggregator
from ztfm.robust.groups import assign_groups, expected_spoiled_groups, robust_over_groups
from ztfm.sim.attacks import DataAttack, UpdateAttack, make_attack
from ztfm.sim.config import FleetConfig, SimConfig
from ztfm.sim.fleet import CanaryDevice, CanaryEvaluator, Fleet, build_fleet, split_canary
from ztfm.sim.runner import Simulation, causal_smoother, make_local_model
from ztfm.trust import MemoryTrustStore, TrustManager, TrustState, observe_updates
from ztfm.types import DeviceId

torch.set_num_threads(1)
OUT = Path(__file__).resolve().parent / "results" / "robustness.json"
NONCE = b"\x00" * 16

# attack name -> (data attack or None, update attack or None)
ATTACKS: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]] = {
    "none": (None, None),
    "alie": (None, {"name": "alie"}),
    "ipm": (None, {"name": "ipm", "epsilon": 5.0}),
    "scaling": ({"name": "label_flip", "fraction": 0.5}, {"name": "scaling", "factor": 10.0}),
    "label_flip": ({"name": "label_flip", "fraction": 0.5}, None),
    # both halves in one library attack: label flip 50% on its rows, update boosted n / k
    "model_replacement": (None, {"name": "model_replacement"}),
    # control for it: the library's pure boost of honest updates, x5.2 = n / k at 20% (26, 5)
    "boost": (None, {"name": "scaling", "factor": 5.2}),
    "sign_flip": (None, {"name": "sign_flip", "scale": 4.0}),
    "min_max": (None, {"name": "min_max"}),
    "sybil_noise": (None, {"name": "sybil", "inner": "gaussian", "inner_params": {"sigma": 0.05}}),
    "free_rider": (None, {"name": "free_rider"}),
}
DEFENCES = [
    "mean",
    "median",
    "trimmed_mean",
    "multi_krum",
    "geometric_median",
    "centered_clipping",
    "fltrust",
    "geometric_median+trust",
    "trimmed_mean+trust",
    "median@k3",
]


def attack_spec(
    attack: str,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``name`` from ``ATTACKS``, or ``name:key=value[:key=value...]`` to override parameters of
    its update part (its data part if it has none), e.g. ``alie:z=1.5``. Values are numbers, or
    ``none`` for None."""
    base, *pairs = attack.split(":")
    if base not in ATTACKS:
        raise SystemExit(f"unknown attack {base!r}; choose from {sorted(ATTACKS)}")
    data_spec, update_spec = ATTACKS[base]
    if not pairs:
        return data_spec, update_spec
    over: dict[str, Any] = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"bad attack parameter {pair!r} in {attack!r} (want key=value)")
        over[key] = None if val.lower() == "none" else float(val)
    if update_spec is not None:
        return data_spec, {**update_spec, **over}
    if data_spec is None:
        raise SystemExit(f"attack {base!r} takes no parameters")
    return {**data_spec, **over}, None


def _aggregator(defence: str, n: int, f: int, server_update: np.ndarray | None) -> Aggregator:
    base = defence.removesuffix("+trust")
    if base == "mean":
        return make_aggregator("mean")
    if base == "fltrust":
        assert server_update is not None
        return make_aggregator("fltrust", server_update=server_update)
    if base == "multi_krum":
        return make_aggregator("multi_krum", f=f, m=max(1, n - f))
    return make_aggregator(base, f=f)


def _rel_error(v: np.ndarray, honest_mean: np.ndarray) -> float:
    """How far the applied aggregate is from the mean of this round's honest updates, relative
    to that mean's norm (0 = exactly what honest FedAvg would have applied)."""
    return float(np.linalg.norm(v - honest_mean) / max(float(np.linalg.norm(honest_mean)), 1e-12))


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return f1, prec, rec


_FLEETS: dict[tuple[str, int, int], tuple[Fleet, tuple[CanaryDevice, ...]]] = {}


def fleet_and_canary(
    dataset: str, n_canary: int, seed: int
) -> tuple[Fleet, tuple[CanaryDevice, ...]]:
    """The federation and the coordinator's canary devices held out of it (cached per process:
    building the SKAB features takes seconds). ``n_canary`` = 0: the whole fleet, no canary."""
    key = (dataset, n_canary, seed)
    if key not in _FLEETS:
        cfg = _config(dataset, seed)
        full = build_fleet(cfg.fleet, cfg.detector)
        _FLEETS[key] = (
            split_canary(full, n_canary, np.random.default_rng([seed, 13]))
            if n_canary
            else (full, ())
        )
    return _FLEETS[key]


def _config(dataset: str, seed: int) -> SimConfig:
    return SimConfig(seed=seed, fleet=FleetConfig(dataset=dataset))


def canary_evaluator(dataset: str, n_canary: int, seed: int) -> CanaryEvaluator:
    cfg = _config(dataset, seed)
    fleet, canary = fleet_and_canary(dataset, n_canary, seed)
    return CanaryEvaluator(
        canary,
        lambda: make_local_model(cfg, fleet.n_features),
        target_far=cfg.detector.target_far,
        threshold_margin=cfg.detector.threshold_margin,
        postprocess=causal_smoother(cfg.detector.smoothing),
    )


def run_fleet(
    attack: str,
    defence: str,
    fraction: float,
    rounds: int,
    epochs: int,
    seed: int,
    dataset: str = "skab",
    n_canary: int = 0,
) -> dict[str, Any]:
    """One federated run; returns F1/recall on honest devices, quarantine statistics and the
    final global model (flat float32, key ``_params``) for the canary evaluation.
    ``n_canary`` > 0 holds that many devices out of the federation as the coordinator's canary
    set; 0 keeps the whole fleet and uses rows of 3 honest devices as before."""
    t0 = time.perf_counter()
    cfg = _config(dataset, seed)
    fleet, canary_devs = fleet_and_canary(dataset, n_canary, seed)
    sim = Simulation(cfg, fleet=fleet)
    agents: dict[str, DeviceAgent] = dict(sim.agents)
    devices = sorted(agents)
    n = len(devices)
    rng = np.random.default_rng([seed, 77])
    # The same seeded subset is drawn with or without an attack, so "none" is evaluated on the
    # very devices that are honest under attack (a like-for-like baseline per fraction).
    k = round(fraction * n)
    chosen = sorted(rng.choice(devices, size=k, replace=False).tolist()) if k else []
    honest = [d for d in devices if d not in chosen]
    attackers = chosen if attack != "none" else []
    data_spec, update_spec = attack_spec(attack)
    upd_atk: UpdateAttack | None = None
    data_atk: DataAttack | None = None
    if update_spec is not None:
        params = dict(update_spec)
        built = make_attack(params.pop("name"), **params)
        assert isinstance(built, UpdateAttack)
        upd_atk = built
        if isinstance(built, DataAttack):  # model replacement: poisoned rows, boosted update
            data_atk = built
    if data_spec is not None:
        params = dict(data_spec)
        built_data = make_attack(params.pop("name"), **params)
        assert isinstance(built_data, DataAttack)
        data_atk = built_data
    if data_atk is not None:
        for i, d in enumerate(attackers):
            a = agents[d]
            own_attacks = a.data.test_x[a.data.test_y == 1]
            if len(own_attacks) == 0:
                continue
            poisoned = data_atk.poison(
                a.data.train, own_attacks, np.random.default_rng([seed, 8, i])
            )
            agents[d] = DeviceAgent(
                d,
                a.segment,
                make_local_model(cfg, sim.fleet.n_features),
                replace(a.data, train=poisoned, calib=a.data.calib),
                rng=a.rng,
                target_far=a.target_far,
                postprocess=a.postprocess,
            )

    # The coordinator's own clean root set (FLTrust's server update is trained on it): the
    # benign rows of its canary devices, which are not fleet members (one agent per canary
    # device, each in its own local feature space; updates averaged). Without canary devices:
    # 100 benign training rows of 3 honest devices (rows 100-199 are the held-out benign rows).
    if canary_devs:
        root_rows = [c.calib for c in canary_devs]
        holdout = [c.test_x[c.test_y == 0] for c in canary_devs]
    else:
        root_rows = [np.concatenate([agents[d].data.train[:100] for d in honest[:3]])]
        holdout = [np.concatenate([agents[d].data.train[100:200] for d in honest[:3]])]
    root = [
        DeviceAgent(
            f"coordinator-canary-{i}",
            "canary",
            make_local_model(cfg, sim.fleet.n_features),
            DeviceData(rows, rows, rows[:10], np.zeros(10, np.int8)),
            rng=np.random.default_rng([seed, 9, i]),
        )
        for i, rows in enumerate(root_rows)
    ]
    trust = TrustManager(MemoryTrustStore())
    use_trust = defence.endswith("+trust")
    params_now = sim.initial_params
    spec = ParamSpec.of(params_now)
    quarantined_at: dict[str, int] = {}
    failed_rounds = 0
    errors: list[float] = []
    for r in range(rounds):
        now = float(r * 3600)
        task = RoundTask(r, r, params_now, epochs, 0.0, 30.0, NONCE)
        part = [
            d
            for d in devices
            if not (use_trust and trust.record(DeviceId(d), now).state is TrustState.QUARANTINED)
        ]
        deltas = {d: spec.flatten(agents[d].train(task).delta).astype(np.float64) for d in part}
        bad = [d for d in part if d in attackers]
        honest_mean = np.mean([deltas[d] for d in part if d not in attackers], axis=0)
        if upd_atk is not None and bad:
            good = np.stack([deltas[d] for d in part if d not in attackers])
            crafted = upd_atk.craft(
                np.stack([deltas[d] for d in bad]), good, np.random.default_rng([seed, 10, r])
            )
            for d, v in zip(bad, crafted, strict=True):
                deltas[d] = v
        x = np.stack([deltas[d] for d in part])
        server = (
            np.mean([spec.flatten(c.train(task).delta) for c in root], axis=0).astype(np.float64)
            if defence.startswith("fltrust")
            else None
        )
        weights = trust.weights([DeviceId(d) for d in part], now) if use_trust else None
        f = min(len(bad), (len(part) - 1) // 2) if defence != "mean" else 0
        if "@k" in defence:
            # SecAgg groups of k (the coordinator sees group sums only), rule over group means;
            # no per-device observation is possible, so trust does not watch these runs.
            rule, k_txt = defence.split("@k")
            plan = assign_groups(len(part), int(k_txt), np.random.default_rng([seed, 11, r]))
            fg = min(len(bad), (len(plan.groups) - 1) // 2)
            grp = make_aggregator("mean") if rule == "mean" else make_aggregator(rule, f=fg)
            try:
                res = robust_over_groups(x, plan, grp)
            except AggregationError:
                failed_rounds += 1
                continue
            errors.append(_rel_error(res.vector, honest_mean))
            params_now = spec.unflatten((spec.flatten(params_now) + res.vector).astype(np.float32))
            continue
        try:
            agg = _aggregator(defence, len(part), f, server).aggregate(x, weights)
        except AggregationError:
            failed_rounds += 1  # fail closed: keep the model
            continue
        errors.append(_rel_error(agg.vector, honest_mean))
        params_now = spec.unflatten((spec.flatten(params_now) + agg.vector).astype(np.float32))
        # Trust judges behaviour against one fixed reference, the unweighted geometric median
        # of the round (not the defence's own, possibly trust-weighted, result).
        ref = make_aggregator("geometric_median", f=f).aggregate(x)
        obs = observe_updates([DeviceId(d) for d in part], x, ref.vector, rule_weights=agg.weights)
        # Without "+trust" the manager only watches: already quarantined devices still take part
        # but are no longer observed.
        obs = [o for o in obs if o.device not in quarantined_at]
        trust.observe_round(r, obs, now)
        for d in part:
            if (
                d not in quarantined_at
                and trust.record(DeviceId(d), now).state is TrustState.QUARANTINED
            ):
                quarantined_at[d] = r + 1
    # Model quality in the detector's own terms: mean anomaly score of held-out benign canary
    # rows under the final global model (lower = benign telemetry reconstructed better).
    scores = []
    for agent, rows in zip(root, holdout, strict=True):
        agent.model.set_params(params_now)
        scores.append(agent.model.score(rows))
    canary_score = float(np.mean(np.concatenate(scores)))
    tp = fp = fn = tn = 0
    for d in honest:
        ev = agents[d].evaluate(EvalTask(rounds, rounds, params_now, NONCE))
        tp, fp, fn, tn = tp + ev.tp, fp + ev.fp, fn + ev.fn, tn + ev.tn
    f1, prec, rec = _f1(tp, fp, fn)
    caught = sum(1 for d in attackers if quarantined_at.get(d, 99) <= 5)
    false_q = sum(1 for d in honest if d in quarantined_at)
    return {
        "dataset": dataset,
        "attack": attack,
        "defence": defence,
        "fraction": fraction,
        "seed": seed,
        "n": n,
        "attackers": len(attackers),
        "f1": f1,
        "precision": prec,
        "attack_recall": rec,
        "attackers_quarantined_by_r5": caught,
        "honest_quarantined": false_q,
        "honest": len(honest),
        "failed_rounds": failed_rounds,
        "canary_benign_score": canary_score,
        "agg_error_mean": float(np.mean(errors)) if errors else None,
        "agg_error_max": float(np.max(errors)) if errors else None,
        "wall_s": time.perf_counter() - t0,
        "_params": spec.flatten(params_now).astype(np.float32),
    }


Job = tuple[str, str, float, int, int, int, str, int]


def _job(args: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_fleet(*args)


def fleet_grid(
    attacks: list[str],
    defences: list[str],
    fractions: list[float],
    rounds: int,
    epochs: int,
    seed: int,
    jobs: int,
    dataset: str = "skab",
    n_canary: int = 0,
) -> list[dict[str, Any]]:
    """Every attack x defence x fraction; with canary devices, each run's final model is also
    judged on the canary set (``add_canary_metrics``)."""
    names = ["none", *[a for a in attacks if a != "none"]]
    grid: list[Job] = [
        (a, d, fr, rounds, epochs, seed, dataset, n_canary)
        for fr in fractions
        for a in names
        for d in defences
    ]
    out: list[dict[str, Any]] = []
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for res in pool.map(_job, grid):
                out.append(res)
                _progress(res)
    else:
        for g in grid:
            res = _job(g)
            out.append(res)
            _progress(res)
    if n_canary:
        add_canary_metrics(out, dataset, n_canary, seed)
    for r in out:
        r.pop("_params", None)
    return out


def add_canary_metrics(runs: list[dict[str, Any]], dataset: str, n_canary: int, seed: int) -> None:
    """The shared model on the coordinator's canary set, with ONE threshold for all canary
    devices: ``canary_auc`` (threshold-free), ``canary_f1_fixed`` at the threshold calibrated on
    the canary benign rows under the same defence's no-attack model (what an operator fixes once
    and keeps), and ``canary_f1_recal`` at a threshold the coordinator recalibrates for each
    model (still one for all devices)."""
    ev = canary_evaluator(dataset, n_canary, seed)
    cfg = _config(dataset, seed)
    fleet, _ = fleet_and_canary(dataset, n_canary, seed)
    spec = ParamSpec.of(make_local_model(cfg, fleet.n_features).get_params())
    fixed: dict[tuple[str, float], float] = {}
    for r in runs:
        if r["attack"] == "none":
            fixed[(r["defence"], r["fraction"])] = ev.threshold(spec.unflatten(r["_params"]))
    for r in runs:
        params = spec.unflatten(r["_params"])
        t = fixed.get((r["defence"], r["fraction"]))
        at_fixed = ev.evaluate(params, t)
        recal = ev.evaluate(params)
        r.update(
            {
                "canary_auc": at_fixed["roc_auc"],
                "canary_f1_fixed": at_fixed["f1"],
                "canary_far_fixed": at_fixed["far"],
                "canary_recall_fixed": at_fixed["recall"],
                "canary_threshold_fixed": at_fixed["threshold"],
                "canary_f1_recal": recal["f1"],
                "canary_rows": len(ev.test_y),
                "canary_attack_rows": int(ev.test_y.sum()),
            }
        )


def targets(fleet: list[dict[str, Any]], best: str = "geometric_median+trust") -> dict[str, Any]:
    """Issue 8's targets from the grid: at 20% attackers, the F1 drop (points) against no attack
    for FedAvg and for ``best`` on the honest devices (fleet F1) and on the canary set (fixed
    threshold), and quarantine by round 5 over every run in which trust watched."""

    def cell(a: str, d: str, fr: float) -> dict[str, Any] | None:
        return next(
            (x for x in fleet if x["attack"] == a and x["defence"] == d and x["fraction"] == fr),
            None,
        )

    rows = []
    attacks = [a for a in dict.fromkeys(x["attack"] for x in fleet) if a != "none"]
    for fr in sorted({x["fraction"] for x in fleet}):
        for a in attacks:
            for d in ("mean", best):
                r, base = cell(a, d, fr), cell("none", d, fr)
                if r is None or base is None:
                    continue
                row = {
                    "fraction": fr,
                    "attack": a,
                    "defence": d,
                    "fleet_f1_drop_pts": 100 * (base["f1"] - r["f1"]),
                }
                if "canary_f1_fixed" in r:
                    row["canary_f1_fixed_drop_pts"] = 100 * (
                        base["canary_f1_fixed"] - r["canary_f1_fixed"]
                    )
                    row["canary_auc_drop_pts"] = 100 * (base["canary_auc"] - r["canary_auc"])
                rows.append(row)
    watched = [x for x in fleet if "@k" not in x["defence"] and x["attack"] != "none"]
    return {
        "best": best,
        "f1_drops": rows,
        "quarantine": {
            "runs": len(watched),
            "attackers": sum(x["attackers"] for x in watched),
            "caught_by_r5": sum(x["attackers_quarantined_by_r5"] for x in watched),
            "honest_device_runs": sum(x["honest"] for x in fleet if "@k" not in x["defence"]),
            "honest_quarantined": sum(
                x["honest_quarantined"] for x in fleet if "@k" not in x["defence"]
            ),
        },
    }


def _progress(r: dict[str, Any]) -> None:
    print(
        f"  {r['attack']:<17} {r['defence']:<24} {r['fraction']:.1f}  F1 {r['f1']:.3f}  "
        f"recall {r['attack_recall']:.3f}  q {r['attackers_quarantined_by_r5']}/"
        f"{r['attackers']}  fq {r['honest_quarantined']}  err {r['agg_error_mean'] or -1:.3f}  "
        f"({r['wall_s']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def groups_tradeoff(seed: int) -> list[dict[str, Any]]:
    """Synthetic: n=60 updates of d=200, f attackers (ALIE or x100 scaling), SecAgg groups of
    size k, median / geometric median over group means. Error is ||result - benign mean|| in
    units of the benign per-update spread."""
    rows = []
    n, d = 60, 200
    for f in (6, 12):
        for attack in ("alie", "scaling"):
            for k in (1, 2, 3, 4, 5, 6, 10):
                g = n // k
                for rule in ("median", "geometric_median", "mean"):
                    errs = []
                    for rep in range(10):
                        rng = np.random.default_rng([seed, f, k, rep])
                        mu = rng.normal(size=d)
                        x = mu + rng.normal(size=(n, d))
                        benign_mean = x[f:].mean(axis=0)
                        if attack == "alie":
                            x[:f] = make_attack("alie").craft(x[:f], x[f:], rng)  # type: ignore[union-attr]
                        else:
                            x[:f] *= 100.0
                        plan = assign_groups(n, k, rng)
                        f_groups = min(f, g)
                        fg = min(f_groups, (g - 1) // 2) if rule != "mean" else 0
                        try:
                            agg = (
                                make_aggregator(rule)
                                if rule == "mean"
                                else make_aggregator(rule, f=fg)
                            )
                            res = robust_over_groups(x, plan, agg)
                            errs.append(
                                float(np.linalg.norm(res.vector - benign_mean) / np.sqrt(d))
                            )
                        except AggregationError:
                            errs.append(float("nan"))
                    rows.append(
                        {
                            "f": f,
                            "attack": attack,
                            "group_size": k,
                            "groups": g,
                            "rule": rule,
                            "error": float(np.nanmean(errs)) if not np.isnan(errs).all() else None,
                            "expected_spoiled": expected_spoiled_groups(n, k, f),
                            "worst_spoiled": min(f, g),
                            "median_tolerates": (g - 1) // 2,
                        }
                    )
    return rows


def speed(seed: int) -> list[dict[str, Any]]:
    """Wall time of each rule on random stacks the size of the SKAB autoencoder update
    (d = 8,384) for n = 30, 100 and 300 devices, f = 10% of n (median of 3 runs)."""
    rows = []
    rng = np.random.default_rng(seed)
    for n in (30, 100, 300):
        x = rng.normal(size=(n, 8384)).astype(np.float32)
        f = n // 10
        g0 = rng.normal(size=8384)
        rules: dict[str, Aggregator] = {
            "mean": make_aggregator("mean"),
            "median": make_aggregator("median", f=f),
            "trimmed_mean": make_aggregator("trimmed_mean", f=f),
            "krum": make_aggregator("krum", f=f),
            "multi_krum": make_aggregator("multi_krum", f=f, m=n - f),
            "bulyan": make_aggregator("bulyan", f=f),
            "geometric_median": make_aggregator("geometric_median", f=f),
            "norm_bounding": make_aggregator("norm_bounding", f=f),
            "centered_clipping": make_aggregator("centered_clipping", f=f),
            "fltrust": make_aggregator("fltrust", server_update=g0),
        }
        for name, agg in rules.items():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                agg.aggregate(x)
                times.append(time.perf_counter() - t0)
            rows.append({"rule": name, "n": n, "d": 8384, "seconds": sorted(times)[1]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Small grid (20%% attackers only).")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--attacks", default="")
    ap.add_argument("--defences", default="")
    ap.add_argument("--fractions", default="0.1,0.2,0.3")
    ap.add_argument("--skip-fleet", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true", help="No group/speed tables.")
    ap.add_argument("--dataset", default="skab", help="skab | lab")
    ap.add_argument(
        "--canary",
        type=int,
        default=4,
        help="Devices held out of the federation as the coordinator's canary set (0 = none).",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    attacks = args.attacks.split(",") if args.attacks else list(ATTACKS)
    defences = args.defences.split(",") if args.defences else list(DEFENCES)
    fractions = [float(v) for v in args.fractions.split(",")]
    if args.quick:
        attacks = ["alie", "ipm", "scaling", "label_flip"]
        defences = ["mean", "trimmed_mean", "geometric_median", "geometric_median+trust"]
        fractions = [0.2]

    t0 = time.perf_counter()
    groups: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    if not args.skip_synthetic:
        groups, timing = synthetic_tables(args.seed)
    fleet: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    if not args.skip_fleet:
        fleet = fleet_grid(
            attacks,
            defences,
            fractions,
            args.rounds,
            args.epochs,
            args.seed,
            args.jobs,
            args.dataset,
            args.canary,
        )
        print_fleet(fleet, attacks, defences, fractions, args)
        summary = targets(fleet)
        print_targets(summary)
    doc = {
        "bench": "robustness",
        "config": {
            "dataset": args.dataset,
            "canary_devices": args.canary,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "seed": args.seed,
            "fractions": fractions,
            "attacks": attacks,
            "defences": defences,
            "attack_params": {a: attack_spec(a) for a in attacks},
        },
        "groups": groups,
        "speed": timing,
        "fleet": fleet,
        "targets": summary,
        "wall_s": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {args.out}")


def synthetic_tables(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    groups = groups_tradeoff(seed)
    print("\nSecAgg groups x robust rule (synthetic, n=60, d=200; error in benign std units)")
    print(
        f"{'f':>3} {'attack':<8} {'k':>3} {'groups':>6} {'E[spoiled]':>10} {'worst':>5} "
        f"{'median':>8} {'gm':>8} {'mean':>8}"
    )
    for f in (6, 12):
        for attack in ("alie", "scaling"):
            for k in (1, 2, 3, 4, 5, 6, 10):
                sel = {
                    r["rule"]: r
                    for r in groups
                    if r["f"] == f and r["attack"] == attack and r["group_size"] == k
                }
                m = sel["median"]

                def fmt(v: float | None) -> str:
                    return "fail" if v is None else f"{v:8.3f}"

                print(
                    f"{f:>3} {attack:<8} {k:>3} {m['groups']:>6} {m['expected_spoiled']:>10.2f} "
                    f"{m['worst_spoiled']:>5} {fmt(m['error']):>8} "
                    f"{fmt(sel['geometric_median']['error']):>8} {fmt(sel['mean']['error']):>8}"
                )

    timing = speed(seed)
    print("\nrule wall time (s), d = 8,384 (SKAB autoencoder), f = n/10, median of 3")
    print(f"{'rule':<18}" + "".join(f"{'n=' + str(n):>10}" for n in (30, 100, 300)))
    for rule in dict.fromkeys(r["rule"] for r in timing):
        cells = [
            next(r["seconds"] for r in timing if r["rule"] == rule and r["n"] == n)
            for n in (30, 100, 300)
        ]
        print(f"{rule:<18}" + "".join(f"{c:>10.4f}" for c in cells))

    return groups, timing


def print_fleet(
    fleet: list[dict[str, Any]],
    attacks: list[str],
    defences: list[str],
    fractions: list[float],
    args: argparse.Namespace,
) -> None:
    canary = any("canary_auc" in x for x in fleet)
    print(
        f"\n{args.dataset} fleet ({fleet[0]['n']} devices"
        f"{f', {args.canary} canary devices held out' if args.canary else ''}), "
        f"{args.rounds} rounds x {args.epochs} local epoch(s). Cell: fleet F1 on honest devices "
        "(own thresholds)"
        + (" / canary ROC-AUC / canary F1 at one fixed threshold" if canary else "")
        + "; q = attackers quarantined by round 5"
    )
    for fr in fractions:
        print(f"\nattackers {fr:.0%}")
        width = 26 if canary else 18
        print(f"{'attack':<18}" + "".join(f"{d[: width - 2]:>{width}}" for d in defences))
        for a in ["none", *[x for x in attacks if x != "none"]]:
            cells = []
            for d in defences:
                r = next(
                    (
                        x
                        for x in fleet
                        if x["attack"] == a and x["defence"] == d and x["fraction"] == fr
                    ),
                    None,
                )
                if r is None:
                    cells.append("-")
                    continue
                c = f"{r['f1']:.3f}"
                if canary:
                    c += f"/{r['canary_auc']:.3f}/{r['canary_f1_fixed']:.3f}"
                else:
                    c += f"/{r['attack_recall']:.2f}"
                if a != "none" and "@k" not in d:
                    c += f" q{r['attackers_quarantined_by_r5']}"
                cells.append(c)
            print(f"{a:<18}" + "".join(f"{c:>{width}}" for c in cells))


def print_targets(summary: dict[str, Any]) -> None:
    print(
        f"\nF1 drop vs no attack, points (FedAvg vs {summary['best']}); target at 20%: best "
        "<= 2, FedAvg visibly worse"
    )
    print(
        f"{'frac':>5} {'attack':<17} {'defence':<24} {'fleet F1':>9} {'canary F1':>10} {'AUC':>6}"
    )
    for r in summary["f1_drops"]:
        print(
            f"{r['fraction']:>5.0%} {r['attack']:<17} {r['defence']:<24} "
            f"{r['fleet_f1_drop_pts']:>9.1f} "
            f"{r.get('canary_f1_fixed_drop_pts', float('nan')):>10.1f} "
            f"{r.get('canary_auc_drop_pts', float('nan')):>6.1f}"
        )
    q = summary["quarantine"]
    print(
        f"quarantine by round 5: {q['caught_by_r5']}/{q['attackers']} attackers "
        f"({q['runs']} attacked runs with trust watching); honest quarantined "
        f"{q['honest_quarantined']}/{q['honest_device_runs']} device-runs"
    )


if __name__ == "__main__":
    main()
