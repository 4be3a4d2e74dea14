"""``ztfm up`` with a security scenario: 1 coordinator + 4 devices as OS processes over mTLS.

One run carries a 25 % scaling attacker (the omniscient Adversary at the coordinator), the
coordinate median, per-device trust with quarantine, device-side clipping with distributed
Gaussian noise and a privacy accountant. It must equal ``ztfm simulate`` for the same seed round
by round: global and per-device metrics, trust scores, the quarantined set, exclusions, epsilon,
attackers and honest-only metrics. The attacker must really be quarantined (so the equality is
not between two empty sets), and every trust change must be in the audit log with its reason.
Configs a networked run cannot honour get one line before any process starts. The run uses
``--attestation none``: the config's ``[attestation] backend = "none"`` is what simulate runs.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from small_fleet import SMALL_FLEET_TOML

from ztfm.cli.main import main

N_DEVICES, N_ROUNDS, SEED = 4, 3, 1
CONFIG = (
    SMALL_FLEET_TOML
    + """
[attacks]
name = "scaling"
fraction = 0.25
[robust]
aggregator = "median"
[trust]
enabled = true
gate = 0.3
[privacy]
clip_norm = 1.0
noise_multiplier = 0.5
noise = "distributed"
epsilon_budget = 100.0
"""
)
SECURITY_KEYS = ("excluded", "trust", "quarantined", "epsilon", "attackers")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from ztfm.sim.config import load_config
    from ztfm.sim.runner import Simulation

    tmp = tmp_path_factory.mktemp("up-scenario")
    cfg_file = tmp / "scenario.toml"
    cfg_file.write_text(CONFIG)
    out = tmp / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ztfm.cli.main",
            "up",
            "--devices",
            str(N_DEVICES),
            "--rounds",
            str(N_ROUNDS),
            "--seed",
            str(SEED),
            "--config",
            str(cfg_file),
            "--out",
            str(out),
            "--work",
            str(tmp / "work"),
            "--no-baselines",
            # simulate's trust starts from one (unchecked) attestation per device and sees no
            # per-round quotes: compare like with like (swtpm attestation moves trust each round)
            "--attestation",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
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


def test_networked_scenario_equals_simulate(runs: dict[str, Any]) -> None:
    got = runs["metrics"]["rounds"]
    assert len(got) == N_ROUNDS and not runs["metrics"]["failures"]
    for e, g in zip(runs["expected"], got, strict=True):
        assert g["global"] == pytest.approx(e["global"], rel=1e-12, abs=1e-12)
        assert g["global_honest"] == pytest.approx(e["global_honest"], rel=1e-12, abs=1e-12)
        assert sorted(g["per_device"]) == sorted(e["per_device"])
        for dev, rates in e["per_device"].items():
            assert g["per_device"][dev] == pytest.approx(rates, rel=1e-12, abs=1e-12)
        for key in SECURITY_KEYS:
            assert g[key] == e[key], key
        assert sorted(g["accepted"]) == sorted(e["accepted"])
        assert g["model_version"] == e["model_version"]


def test_the_scenario_is_not_vacuous(runs: dict[str, Any]) -> None:
    rounds = runs["metrics"]["rounds"]
    attackers = rounds[-1]["attackers"]
    assert len(attackers) == 1
    # the attacker loses trust round by round and ends in quarantine; honest devices do not
    trust = [r["trust"][attackers[0]] for r in rounds]
    assert trust == sorted(trust, reverse=True) and trust[-1] < 0.3
    assert rounds[-1]["quarantined"] == attackers
    honest = [d for d in rounds[-1]["trust"] if d not in attackers]
    assert min(rounds[-1]["trust"][d] for d in honest) > 0.6
    # privacy is accounted for every device, and grows every round
    eps = [r["epsilon"] for r in rounds]
    assert sorted(eps[0]) == sorted(rounds[-1]["trust"])
    assert all(0 < a[d] < b[d] for a, b in itertools.pairwise(eps) for d in a)


def test_trust_changes_and_quarantine_are_audited(runs: dict[str, Any]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", "audit", "verify", str(runs["audit"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    records = [json.loads(line) for line in runs["audit"].read_text().splitlines()]
    changes = [r["fields"] for r in records if r["event"] in ("trust.changed", "trust.quarantined")]
    # every device's update was judged in every round it took part in
    rounds = runs["metrics"]["rounds"]
    assert len(changes) == sum(len(r["accepted"]) for r in rounds)
    assert all(c["reason"] in ("update_ok", "update_flagged") and c["message"] for c in changes)
    quarantined = [r["fields"] for r in records if r["event"] == "trust.quarantined"]
    attacker = rounds[-1]["attackers"][0]
    assert [(q["device"], q["reason"], q["new_state"]) for q in quarantined] == [
        (attacker, "update_flagged", "quarantined")
    ]
    assert "far_from_aggregate" in quarantined[0]["inputs"]["flags"]
    spent = [r["fields"] for r in records if r["event"] == "privacy.spent"]
    assert [s["epsilon"] for s in spent] == [r["epsilon"] for r in rounds]


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ('[attestation]\nbackend = "soft"\n', "simulation-only"),
        (
            '[robust]\naggregator = "median"\n[privacy]\nclip_norm = 1.0\n'
            'noise_multiplier = 1.0\nnoise = "central"\n',
            "central noise",
        ),
    ],
)
def test_refused_configs_are_one_line_before_any_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, match: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config)
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as ei:
        main(["up", "--devices", "2", "--config", str(cfg), "--work", str(work)])
    assert ei.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err, err
    assert not work.exists()  # refused before the CA, tokens or any process
