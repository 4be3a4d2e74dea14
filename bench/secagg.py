"""SecAgg+ benchmark: client and server compute per round against the primitive lower bound and
against Flower's SecAgg+ (SecAggPlusWorkflow + secaggplus_mod in Flower's simulation runtime).

Grid: n in {10, 50, 100, 200}, d in {10k, 100k}, dropouts in {0, 10%, 30%}, each run three
times: with the server's own end-to-end checks as configured by default (MACs on every masked
input and unmask response; advert signatures checked lazily, only around devices that went
quiet), end to end with advert_checks="eager" (every advert signature checked before the key
directories go out), and with trust_transport=True (the server leaves device authentication to
the transport: mTLS plus ztfm's signed requests). The dropped
devices vanish after sharing keys and before sending their masked input: the costly case for the
server, which must rebuild their mask keys and regenerate their pairwise masks. The graph degree
k is ``degree_for_dropout(n, rate)`` (t = k//2 + 1 must survive in every neighbourhood).

Lower bound, measured in the same run: per round the server must at least sum n_in inputs and
expand n_in self masks, plus one X25519 and one mask expansion per (dropped, surviving
neighbour) pair; a client must expand k+1 masks and run 2k X25519 agreements.
The default (MAC) mode also agrees one key per device with the server, for the MACs on its
masked input and unmask response: column "x MAC kex" (JSON server_over_lb_with_mac_kex) adds
those n_in X25519 to the server's bound; the trust-transport mode skips them.

Flower runs in a separate venv (not a ztfm dependency):
  python3 -m venv /work/benchenv && /work/benchenv/bin/pip install 'flwr[simulation]>=1.41' numpy
and is skipped with a message when absent (--flower-python or ZTFM_FLOWER_PYTHON to change).

Usage: python bench/secagg.py [--quick] [--no-flower] [--repeats N]
Prints a table; writes bench/results/secagg.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.crypto.kex import KexPrivateKey
from ztfm.crypto.prg import MaskExpander
from ztfm.secagg import Dropouts, SecAggRun, degree_for_dropout, simulate_round

RESULTS = Path(__file__).resolve().parent / "results" / "secagg.json"

FLOWER_SCRIPT = r"""
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
import numpy as np
import flwr as fl
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

N, D, ROUNDS, SHARES, THRESH = (int(a) for a in sys.argv[1:6])
times = []


class Client(NumPyClient):
    def __init__(self, cid):
        self.cid = cid

    def fit(self, parameters, config):
        rng = np.random.default_rng(self.cid)
        return [rng.uniform(-1, 1, D).astype(np.float32)], 1, {}


def client_fn(context: Context):
    return Client(int(context.node_config.get("partition-id", 0))).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


class TimedSecAggPlus(SecAggPlusWorkflow):
    def __call__(self, grid, context):
        t0 = time.perf_counter()
        out = super().__call__(grid, context)
        times.append(time.perf_counter() - t0)
        return out


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=N,
                      min_available_clients=N,
                      initial_parameters=ndarrays_to_parameters([np.zeros(D, np.float32)]))
    ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=ROUNDS),
                        strategy=strategy)
    wf = TimedSecAggPlus(num_shares=SHARES, reconstruction_threshold=THRESH)
    DefaultWorkflow(fit_workflow=wf)(grid, ctx)


t0 = time.perf_counter()
run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
               backend_config={"client_resources": {"num_cpus": 1},
                               "init_args": {"num_cpus": 2, "include_dashboard": False,
                                             "log_to_driver": False}})
print(json.dumps({"n": N, "d": D, "per_round_s": times, "total_s": time.perf_counter() - t0,
                  "num_shares": SHARES, "threshold": THRESH, "flwr": fl.__version__}))
"""


def _best(fn: Any, reps: int) -> float:
    """Fastest of ``reps`` calls in seconds (after one warm-up)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def primitives(d: int, reps: int = 100) -> dict[str, float]:
    """Unit costs in seconds (for the record): mask expansion fused with the add, plain add,
    one X25519 agreement."""
    exp = MaskExpander(d, np.uint32)
    acc = np.zeros(d, np.uint32)
    other = np.ones(d, np.uint32)
    seed = bytes(range(32))
    rng = np.random.default_rng(0)
    a, b = KexPrivateKey.generate(rng), KexPrivateKey.generate(rng)
    return {
        "mask_expand_add_s": _best(lambda: exp.add_mask(acc, seed), reps),
        "add_s": _best(lambda: np.add(acc, other, out=acc), reps),
        "x25519_s": _best(lambda: a.exchange(b.public), 3 * reps),
    }


def lower_bounds(run: SecAggRun) -> tuple[float, float]:
    """(server, one client) lower bound in seconds, by *executing* only the primitive work the
    round needs, back to back, right after the round (same machine load): the server sums the
    n_in masked vectors and removes n_in self masks, plus one X25519 and one mask per (dropped
    device, surviving neighbour) pair; a client expands k+1 masks and runs 2k agreements."""
    d = run.params.length
    inc = set(run.result.included)
    pairs = sum(1 for j in run.result.dropped for i in run.params.neighbours[j] if i in inc)
    rng = np.random.default_rng(0)
    exp = MaskExpander(d, np.uint32)
    inputs = [rng.integers(0, 2**32, d, dtype=np.uint32) for _ in range(min(len(inc), 8))]
    seeds = [rng.bytes(32) for _ in range(64)]
    a, b = KexPrivateKey.generate(rng), KexPrivateKey.generate(rng)

    def server() -> None:
        acc = np.zeros(d, np.uint32)
        for i in range(len(inc)):
            np.add(acc, inputs[i % len(inputs)], out=acc)
            exp.sub_mask(acc, seeds[i % 64])
        for p in range(pairs):
            a.exchange(b.public)
            exp.add_mask(acc, seeds[p % 64])

    k = run.params.degree

    def client() -> None:
        acc = np.zeros(d, np.uint32)
        for i in range(k + 1):
            exp.add_mask(acc, seeds[i % 64])
        for _ in range(2 * k):
            a.exchange(b.public)

    return _best(server, 2), _best(client, 3)


def ztfm_round(
    n: int,
    d: int,
    drop: float,
    seed: int,
    degree: int = 0,
    threshold: int = 0,
    trust_transport: bool = False,
    advert_checks: str = "lazy",
) -> tuple[SecAggRun, float]:
    """One simulated round and its wall time (inputs are generated outside the timing)."""
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-1, 1, d) for _ in range(n)]
    gone = rng.choice(n, size=round(drop * n), replace=False).tolist()
    k = degree or degree_for_dropout(n, drop)
    t0 = time.perf_counter()
    run = simulate_round(
        xs,
        clip=1.0,
        rng=rng,
        dropouts=Dropouts.of(before_input=gone),
        degree=k,
        threshold=threshold,
        timer=time.perf_counter,
        trust_transport=trust_transport,
        advert_checks=advert_checks,  # type: ignore[arg-type]
    )
    return run, time.perf_counter() - t0


def measure(n: int, d: int, drop: float, repeats: int, **kw: Any) -> dict[str, Any]:
    """Run ``repeats`` rounds, each followed by its executed lower bound (so both see about the
    same machine load); report the fastest of each."""
    rows = []
    prims = []
    for r in range(repeats):
        prims.append(primitives(d, reps=20))
        run, wall = ztfm_round(n, d, drop, seed=1000 * n + r, **kw)
        active = [s for s in run.client_seconds.values() if s > 0]
        lb_server, lb_client = lower_bounds(run)
        rows.append(
            {
                # protocol compute of the whole round: every client in turn, then the server
                "round_s": sum(run.client_seconds.values()) + run.server_seconds,
                # the whole simulate_round call (adds key set-up and message plumbing)
                "wall_s": wall,
                "server_s": run.server_seconds,
                "client_mean_s": statistics.mean(active),
                "client_max_s": max(active),
                "client_total_s": sum(active),
                "lb_server_s": lb_server,
                "lb_client_s": lb_client,
                "degree": run.params.degree,
                "threshold": run.params.threshold,
                "included": len(run.result.included),
                "dropped": len(run.result.dropped),
                "bytes_up": max(run.bytes_up.values()),
            }
        )
    out: dict[str, Any] = {key: min(r[key] for r in rows) for key in rows[0]}
    out.update({"n": n, "d": d, "dropout": drop, "repeats": repeats})
    out["primitives"] = {k: min(p[k] for p in prims) for k in prims[0]}
    out["server_over_lb"] = out["server_s"] / out["lb_server_s"]
    # the default (MAC) mode also runs one X25519 per device with the server, for the MAC keys
    # of its masked input and unmask response: the lower bound of that mode adds them
    out["lb_server_with_mac_kex_s"] = (
        out["lb_server_s"] + out["included"] * out["primitives"]["x25519_s"]
    )
    out["server_over_lb_with_mac_kex"] = out["server_s"] / out["lb_server_with_mac_kex_s"]
    out["client_over_lb"] = out["client_mean_s"] / out["lb_client_s"]
    return out


def flower(python: str, n: int, d: int, rounds: int, shares: int, thresh: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "flower_secaggplus.py"
        script.write_text(FLOWER_SCRIPT)
        try:
            res = subprocess.run(
                [python, str(script), str(n), str(d), str(rounds), str(shares), str(thresh)],
                capture_output=True,
                text=True,
                timeout=900,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            return {"error": "timeout"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    out: dict[str, Any] = json.loads(lines[-1])
    pr = out.get("per_round_s") or []
    # the first round includes Ray start-up and actor creation: leave it out when we can
    steady = pr[1:] if len(pr) > 1 else pr
    out["round_s"] = statistics.median(steady) if steady else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, one Flower run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument(
        "--flower-python",
        default=os.environ.get("ZTFM_FLOWER_PYTHON", "/work/benchenv/bin/python"),
    )
    ap.add_argument("--flower-rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    # trust_transport rounds log a warning each (by design); keep the table readable
    logging.getLogger("ztfm.secagg.server").setLevel(logging.ERROR)

    ns, ds, drops = [10, 50, 100, 200], [10_000, 100_000], [0.0, 0.1, 0.3]
    if args.quick:
        ns, ds, drops, args.repeats, args.flower_rounds = [10, 50], [10_000], [0.0, 0.3], 1, 2

    grid = []
    print(
        f"{'n':>4} {'d':>7} {'drop':>5} {'k':>4} {'t':>3} {'client ms':>10} {'LB ms':>7} "
        f"{'x':>5} {'server ms':>10} {'LB ms':>8} {'x':>5} {'round s':>8} {'up KiB':>8} "
        f"{'srv ms eager':>12} {'x':>5} {'srv ms mTLS':>11} {'x':>5} {'x MAC kex':>9}"
    )
    for d in ds:
        for n in ns:
            for drop in drops:
                row = measure(n, d, drop, args.repeats)
                # same round with trust_transport=True (the server leaves device
                # authentication to mTLS): only the server's own checks change
                tt = measure(n, d, drop, args.repeats, trust_transport=True)
                # and end to end with eager advert checks (every signature before the
                # key directories go out)
                eg = measure(n, d, drop, args.repeats, advert_checks="eager")
                row["eager_server_s"] = eg["server_s"]
                row["eager_lb_server_s"] = eg["lb_server_s"]
                row["eager_server_over_lb"] = eg["server_over_lb"]
                row["trust_transport_server_s"] = tt["server_s"]
                row["trust_transport_lb_server_s"] = tt["lb_server_s"]
                row["trust_transport_server_over_lb"] = tt["server_over_lb"]
                grid.append(row)
                print(
                    f"{n:>4} {d:>7} {drop:>5.0%} {row['degree']:>4.0f} {row['threshold']:>3.0f} "
                    f"{1e3 * row['client_mean_s']:>10.2f} {1e3 * row['lb_client_s']:>7.2f} "
                    f"{row['client_over_lb']:>5.2f} {1e3 * row['server_s']:>10.2f} "
                    f"{1e3 * row['lb_server_s']:>8.2f} {row['server_over_lb']:>5.2f} "
                    f"{row['round_s']:>8.3f} {row['bytes_up'] / 1024:>8.1f} "
                    f"{1e3 * eg['server_s']:>12.2f} {eg['server_over_lb']:>5.2f} "
                    f"{1e3 * tt['server_s']:>11.2f} {tt['server_over_lb']:>5.2f} "
                    f"{row['server_over_lb_with_mac_kex']:>9.2f}",
                    flush=True,
                )

    # Flower at n=50, d=105k; ztfm with the same neighbourhood size and threshold.
    n_f, d_f = 50, 105_000
    configs = [(12, 7)] if args.quick else [(12, 7), (2, 2)]  # (k, t); Flower shares = k + 1
    have_flower = Path(args.flower_python).exists() and not args.no_flower
    if args.no_flower:
        print("Flower skipped (--no-flower)", file=sys.stderr)
    elif not have_flower:
        print(
            f"Flower skipped: {args.flower_python} not found (create the venv described in "
            "this script's docstring, or pass --flower-python)",
            file=sys.stderr,
        )
    comparison = []
    # every ztfm measurement first: a Flower run leaves Ray processes winding down for a while,
    # which would slow whatever is measured right after it
    for k, t in configs:
        z = measure(n_f, d_f, 0.0, max(args.repeats, 7), degree=k, threshold=t)
        comparison.append(
            {
                "n": n_f,
                "d": d_f,
                "degree": k,
                "threshold": t,
                "flower_num_shares": k + 1,
                "flower_threshold": t,
                "ztfm_round_s": z["round_s"],
                "ztfm_simulate_wall_s": z["wall_s"],
                "ztfm_server_s": z["server_s"],
                "ztfm_client_mean_s": z["client_mean_s"],
                "ztfm_critical_path_s": z["client_max_s"] + z["server_s"],
            }
        )
    for entry in comparison if have_flower else []:
        k, t = entry["degree"], entry["threshold"]
        f = flower(args.flower_python, n_f, d_f, args.flower_rounds, k + 1, t)
        entry["flower"] = f
        if f.get("round_s"):
            entry["flower_round_s"] = f["round_s"]
            entry["speedup_round"] = f["round_s"] / entry["ztfm_round_s"]
            entry["speedup_critical_path"] = f["round_s"] / entry["ztfm_critical_path_s"]

    print()
    print(
        f"{'vs Flower n=50 d=105k':<24} {'k':>3} {'t':>3} {'ztfm round s':>13} "
        f"{'flwr round s':>13} {'speedup':>8} {'crit-path x':>12}"
    )
    for e in comparison:
        fr = e.get("flower_round_s")
        sp = f"{e['speedup_round']:.1f}x" if fr else "-"
        sc = f"{e['speedup_critical_path']:.1f}x" if fr else "-"
        print(
            f"{'':<24} {e['degree']:>3} {e['threshold']:>3} {e['ztfm_round_s']:>13.3f} "
            f"{(f'{fr:.3f}' if fr else '-'):>13} "
            f"{sp:>8} {sc:>12}"
        )
        if "flower" in e and "error" in e["flower"]:
            print(f"  Flower failed: {e['flower']['error']}", file=sys.stderr)

    last = grid[-1]
    units = ", ".join(f"{k}={1e6 * v:.1f}us" for k, v in last["primitives"].items())
    print(f"\nprimitives (d={last['d']}): {units}")
    report = {
        "grid": grid,
        "flower_comparison": comparison,
        "have_flower": have_flower,
        "flower_python": args.flower_python,
        "quick": args.quick,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "notes": (
            "round_s = protocol compute of a whole round in one process (every client in turn +"
            " server); wall_s = the whole simulate_round call incl. key set-up and plumbing;"
            " critical path = slowest client + server, as with devices running in parallel."
            " Flower round_s = wall time of SecAggPlusWorkflow per round in Flower's simulation"
            " (Ray, 2 CPUs), first round (start-up) excluded."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
