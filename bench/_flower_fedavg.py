"""Flower's simulation of the same FedAvg workload, for bench/fl.py (runs in the bench venv).

Not part of ztfm: Flower is the peer to beat, not a dependency. Usage:
  python _flower_fedavg.py N_CLIENTS ROUNDS N_PARAMS TRAIN_ROWS TRAIN(0|1)
Prints one JSON line: per-round wall times measured from configure_fit to aggregate_fit.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import flwr as fl  # noqa: E402
from flwr.common import ndarrays_to_parameters  # noqa: E402

N, ROUNDS, N_PARAMS, ROWS, TRAIN = (int(a) for a in sys.argv[1:6])
D_IN = 120
H = max(1, (N_PARAMS - D_IN) // (2 * D_IN + 1))


def init() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.normal(0, 0.1, (D_IN, H)).astype(np.float32),
        np.zeros(H, np.float32),
        rng.normal(0, 0.1, (H, D_IN)).astype(np.float32),
        np.zeros(D_IN, np.float32),
    ]


class Client(fl.client.NumPyClient):
    def __init__(self, cid: int) -> None:
        self.x = np.random.default_rng(cid).normal(size=(ROWS, D_IN)).astype(np.float32)

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        params = [p.copy() for p in parameters]
        if TRAIN:  # one epoch of plain SGD on a one-hidden-layer autoencoder, in numpy
            w1, b1, w2, b2 = params
            for s in range(0, ROWS, 64):
                xb = self.x[s : s + 64]
                h = np.maximum(xb @ w1 + b1, 0)
                err = (h @ w2 + b2 - xb) / len(xb)
                gw2, gb2 = h.T @ err, err.sum(0)
                dh = (err @ w2.T) * (h > 0)
                gw1, gb1 = xb.T @ dh, dh.sum(0)
                w1 -= 0.01 * gw1
                b1 -= 0.01 * gb1
                w2 -= 0.01 * gw2
                b2 -= 0.01 * gb2
            params = [w1, b1, w2, b2]
        return params, ROWS, {}


times: dict[int, list[float]] = {}


class TimedFedAvg(fl.server.strategy.FedAvg):
    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
        times[server_round] = [time.perf_counter()]
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        out = super().aggregate_fit(server_round, results, failures)
        times[server_round].append(time.perf_counter())
        return out


def client_fn(context):  # type: ignore[no-untyped-def]
    cid = (
        int(context.node_config.get("partition-id", 0))
        if hasattr(context, "node_config")
        else int(context)
    )
    return Client(cid).to_client()


strategy = TimedFedAvg(
    fraction_fit=1.0,
    fraction_evaluate=0.0,
    min_fit_clients=N,
    min_available_clients=N,
    initial_parameters=ndarrays_to_parameters(init()),
)
t0 = time.perf_counter()
fl.simulation.start_simulation(
    client_fn=client_fn,
    num_clients=N,
    config=fl.server.ServerConfig(num_rounds=ROUNDS),
    strategy=strategy,
    client_resources={"num_cpus": 1},
    ray_init_args={"include_dashboard": False, "num_cpus": 2, "log_to_driver": False},
)
total = time.perf_counter() - t0
per_round = [v[1] - v[0] for _, v in sorted(times.items()) if len(v) == 2]
print(
    json.dumps(
        {
            "n": N,
            "rounds": ROUNDS,
            "n_params": sum(p.size for p in init()),
            "train": bool(TRAIN),
            "per_round_s": per_round,
            "total_s": total,
            "flwr": fl.__version__,
        }
    )
)
