"""``ztfm up`` with ``[secagg]``: 1 coordinator + 4 devices as OS processes over mTLS run real
SecAgg+ rounds (distributed noise, stochastic rounding, top-k compression) and reach
``ztfm simulate``'s model and metrics for the same seed, round by round; the coordinator's
round log shows only SecAgg traffic (no plaintext update is ever submitted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
from small_fleet import SMALL_FLEET_TOML

N_DEVICES, N_ROUNDS, SEED = 4, 2, 5
CONFIG = (
    SMALL_FLEET_TOML
    + """
[privacy]
clip_norm = 0.5
noise_multiplier = 0.8
epsilon_budget = 100.0
[secagg]
enabled = true
[compression]
keep_ratio = 0.5
"""
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from ztfm.sim.config import load_config
    from ztfm.sim.runner import Simulation

    tmp = tmp_path_factory.mktemp("up-secagg")
    cfg_file = tmp / "secagg.toml"
    cfg_file.write_text(CONFIG)
    out = tmp / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "ztfm.cli.main", "up",
            "--devices", str(N_DEVICES), "--rounds", str(N_ROUNDS), "--seed", str(SEED),
            "--config", str(cfg_file), "--out", str(out), "--work", str(tmp / "work"),
            "--no-baselines", "--attestation", "none",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    torch.set_num_threads(1)  # as in the device processes
    cfg = load_config(cfg_file)
    cfg = replace(
        cfg,
        seed=SEED,
        fleet=replace(cfg.fleet, devices=N_DEVICES),
        rounds=replace(cfg.rounds, rounds=N_ROUNDS),
    )
    sim = Simulation(cfg)
    return {
        "expected": [sim.run_round(r) for r in range(N_ROUNDS)],
        "metrics": json.loads((out / "metrics.json").read_text()),
        "audit": out / "audit.log",
    }


def test_up_with_secagg_equals_simulate(runs: dict[str, Any]) -> None:
    m = runs["metrics"]
    assert not m["failures"] and len(m["rounds"]) == N_ROUNDS
    for e, g in zip(runs["expected"], m["rounds"], strict=True):
        assert g["model_version"] == e["model_version"]
        assert g["global"] == pytest.approx(e["global"], rel=1e-12, abs=1e-12)
        for dev, rates in e["per_device"].items():
            assert g["per_device"][dev] == pytest.approx(rates, rel=1e-12, abs=1e-12)
        assert sorted(g["accepted"]) == sorted(e["accepted"]) and len(e["accepted"]) == N_DEVICES
        assert g["epsilon"] == e["epsilon"] and min(e["epsilon"].values()) > 0
        for dev, up in e["bytes_up"].items():  # simulate's SecAgg bytes plus the round framing
            assert up < g["bytes_up"][dev] < up + 2000


def test_no_plaintext_update_reached_the_coordinator(runs: dict[str, Any]) -> None:
    records = [json.loads(line) for line in runs["audit"].read_text().splitlines()]
    closed = [r["fields"] for r in records if r["event"] == "round.closed"]
    assert [c["round"] for c in closed] == list(range(1, N_ROUNDS + 1))
    # every round's upload per device is about half the dense float32 vector (keep_ratio 0.5,
    # 32-bit field), not a full update
    n_params = runs["metrics"]["n_params"]
    for r in runs["metrics"]["rounds"]:
        assert all(2 * n_params < b < 2 * n_params + 3000 for b in r["bytes_up"].values())
