"""bench/fl.py: protocol overhead per federated round, ztfm vs Flower, and fleet scale.

Prints a table and writes bench/results/fl.json. Measured side by side in one run:
  * ztfm per-round time for N in {50, 200, 1000} devices with local training EXCLUDED (devices
    answer with a ready delta: what remains is select, encode, decode, verify and aggregate) and
    INCLUDED (the real autoencoder trains one local epoch on each device's SKAB rows);
  * Flower's simulation (Ray backend) of the same FedAvg workload, same parameter count, if the
    bench venv with flwr exists (default /work/benchenv; --flower-python to change);
  * a full ``ztfm simulate`` of 1,000 devices x 20 rounds (training and evaluation included).
Medians over rounds, first round (warm-up) dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.fl import codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.fl.strategy import FedAvg
from ztfm.sim.config import load_config
from ztfm.sim.fleet import DeviceSpec, Fleet, build_fleet
from ztfm.sim.runner import Simulation, make_local_model, run_simulation
from ztfm.transport.inproc import InProcessTransport, LatencyModel

torch.set_num_threads(1)
OUT = Path(__file__).resolve().parent / "results" / "fl.json"


class ReadyDevice:
    """Answers a task with a precomputed delta: local training excluded, protocol included."""

    def __init__(self, device_id: str, delta: list[np.ndarray]) -> None:
        self.device_id = device_id
        self.delta = delta

    def handle(self, data: bytes) -> bytes:
        task = codec.decode(data)
        assert isinstance(task, RoundTask)
        return codec.encode(
            UpdateReply(
                task.round_id, self.device_id, task.model_version, self.delta, 400, 0.0, task.nonce
            )
        )


def scaled_fleet(base: Fleet, n: int) -> Fleet:
    """n devices cycling through the real SKAB devices (ids made unique)."""
    devs = tuple(
        DeviceSpec(f"{d.device_id}#{i}", d.segment, d.data, d.source)
        for i, d in ((i, base.devices[i % len(base.devices)]) for i in range(n))
    )
    return Fleet(base.dataset, devs, base.n_features, base.has_signal)


def ztfm_excluded(n: int, rounds: int, params: list[np.ndarray]) -> list[float]:
    rng = np.random.default_rng(0)
    eps = {
        f"d{i}": ReadyDevice(
            f"d{i}", [rng.normal(0, 1e-3, p.shape).astype(np.float32) for p in params]
        )
        for i in range(n)
    }
    coord = Coordinator(
        params, FedAvg(min_devices=1), RoundSettings(deadline_s=60.0), rng=np.random.default_rng(1)
    )
    for d in eps:
        coord.register(d, "s")
    tr = InProcessTransport(eps, rng=np.random.default_rng(2), latency=LatencyModel())
    return [tr.run_round(coord, now=3600.0 * r).wall_s["round"] for r in range(rounds)]


def ztfm_included(base: Fleet, n: int, rounds: int) -> tuple[list[float], list[float]]:
    cfg = load_config()
    cfg = replace(cfg, rounds=replace(cfg.rounds, local_epochs=1, rounds=rounds))
    sim = Simulation(cfg, scaled_fleet(base, n))
    totals, training = [], []
    for r in range(rounds):
        w = sim.transport.run_round(sim.coordinator, now=3600.0 * r).wall_s
        totals.append(w["round"])
        training.append(w["local_training"])
    return totals, training


def flower(python: str, n: int, rounds: int, n_params: int, train: bool) -> dict[str, object]:
    script = Path(__file__).resolve().parent / "_flower_fedavg.py"
    try:
        res = subprocess.run(
            [python, str(script), str(n), str(rounds), str(n_params), "400", str(int(train))],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    out: dict[str, object] = json.loads(lines[-1])
    return out


def _num(row: dict[str, object], key: str, width: int, digits: int) -> str:
    v = row.get(key)
    return f"{float(v):{width}.{digits}f}" if isinstance(v, (int, float)) else "-".rjust(width)


def _ms(row: dict[str, object], key: str) -> str:
    v = row.get(key)
    return f"{1000 * float(v):12.1f}" if isinstance(v, (int, float)) else "-".rjust(12)


def med(xs: list[float]) -> float:
    return statistics.median(xs[1:] if len(xs) > 2 else xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--flower-python", default="/work/benchenv/bin/python")
    ap.add_argument("--flower-sizes", default="50,200")
    ap.add_argument("--scale-devices", type=int, default=1000)
    ap.add_argument("--scale-rounds", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="small sizes, no 1,000-device run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    flower_sizes = [int(s) for s in args.flower_sizes.split(",")]
    if args.quick:
        sizes, flower_sizes, args.rounds, args.scale_devices = [50], [50], 4, 0
    cfg = load_config()
    base = build_fleet(cfg.fleet, cfg.detector)
    params = make_local_model(cfg, base.n_features).get_params()
    n_params = int(sum(p.size for p in params))
    rows = []
    have_flower = Path(args.flower_python).exists()
    for n in sizes:
        ex = ztfm_excluded(n, args.rounds, params)
        inc, train = ztfm_included(base, n, args.rounds)
        row: dict[str, object] = {
            "devices": n,
            "n_params": n_params,
            "ztfm_overhead_s": med(ex),
            "ztfm_round_with_training_s": med(inc),
            "ztfm_local_training_s": med(train),
            "ztfm_overhead_in_training_round_s": med(
                [a - b for a, b in zip(inc, train, strict=True)]
            ),
        }
        if have_flower and n in flower_sizes:
            fx = flower(args.flower_python, n, args.rounds, n_params, False)
            fi = flower(args.flower_python, n, args.rounds, n_params, True)
            for key, res in (("flower_overhead_s", fx), ("flower_round_with_training_s", fi)):
                pr = res.get("per_round_s") if isinstance(res, dict) else None
                row[key] = med(list(pr)) if isinstance(pr, list) and pr else None
                if isinstance(res, dict) and "error" in res:
                    row[key + "_error"] = res["error"]
            if row.get("flower_overhead_s"):
                row["overhead_ratio_flower_over_ztfm"] = float(row["flower_overhead_s"]) / float(
                    row["ztfm_overhead_s"]
                )  # type: ignore[arg-type]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    scale: dict[str, object] = {}
    if args.scale_devices:
        c = replace(
            cfg,
            rounds=replace(cfg.rounds, rounds=args.scale_rounds, local_epochs=1),
            compare=replace(cfg.compare, local_only=False, centralised=False),
        )
        t0 = time.perf_counter()
        res = run_simulation(c, fleet=scaled_fleet(base, args.scale_devices))
        scale = {
            "devices": args.scale_devices,
            "rounds": args.scale_rounds,
            "local_epochs": 1,
            "wall_s": time.perf_counter() - t0,
            "federated_wall_s": res.metrics["wall_s"]["federated"],
            "target_s": 300.0,
            "final_f1": res.metrics["comparison"]["federated"]["f1"],
        }
    report = {
        "rows": rows,
        "scale": scale,
        "flower_python": args.flower_python,
        "have_flower": have_flower,
        "cpu_count": os.cpu_count(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    hdr = (
        f"{'devices':>8} {'ztfm ovh ms':>12} {'flwr ovh ms':>12} {'ratio':>7} "
        f"{'ztfm+train s':>13} {'flwr+train s':>13} {'train s':>8}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['devices']:>8} {_ms(r, 'ztfm_overhead_s')} {_ms(r, 'flower_overhead_s')} "
            f"{_num(r, 'overhead_ratio_flower_over_ztfm', 7, 1)} "
            f"{_num(r, 'ztfm_round_with_training_s', 13, 3)} "
            f"{_num(r, 'flower_round_with_training_s', 13, 3)} "
            f"{_num(r, 'ztfm_local_training_s', 8, 3)}"
        )
    if scale:
        print(
            f"scale: {scale['devices']} devices x {scale['rounds']} rounds (1 local epoch, "
            f"evaluation every round) in {float(scale['wall_s']):.1f} s "  # type: ignore[arg-type]
            f"(target <= 300 s); final F1 {float(scale['final_f1']):.3f}"
        )  # type: ignore[arg-type]
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
