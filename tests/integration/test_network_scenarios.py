"""Security scenarios over real gRPC + mTLS, in one process (server and device runners in threads,
no subprocesses, so several scenarios fit in a minute), each equal to the in-process simulation:

* central DP noise (coordinator side) with its accountant: same metrics and epsilon;
* an omniscient model attack (ALIE, played by the coordinator-side Adversary hook) against a
  trimmed mean with trust;
* a data attack (label flip: the attacker's own process trains on poisoned rows) against the
  geometric median with equal weights;
* sign flipping against Multi-Krum with trust.

``tests/integration/test_up_scenarios.py`` runs the same glue through ``ztfm up`` (processes).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from small_fleet import SMALL_FLEET_TOML

from ztfm.audit import MemoryAuditSink
from ztfm.cli.coordinator import network_metrics
from ztfm.coordinator.server import CoordinatorServer, UnsafeAssumeAttested
from ztfm.coordinator.service import CoordinatorService
from ztfm.device.runner import DeviceRunner, PollBackoff
from ztfm.sim.config import SimConfig, load_config
from ztfm.sim.fleet import build_fleet
from ztfm.sim.network import coordinator_scenario, device_agent
from ztfm.sim.runner import Simulation
from ztfm.transport.grpc_fleet import LocalFleet

N_ROUNDS, SEED = 3, 2
BASE = SMALL_FLEET_TOML


def _config(tmp: Any, text: str, devices: int) -> SimConfig:
    path = tmp / "cfg.toml"
    path.write_text(BASE + text)
    cfg = load_config(path)
    return replace(
        cfg,
        seed=SEED,
        fleet=replace(cfg.fleet, devices=devices),
        rounds=replace(cfg.rounds, rounds=N_ROUNDS),
    )


def _networked(cfg: SimConfig) -> tuple[dict[str, Any], MemoryAuditSink]:
    """What ``ztfm coordinator serve`` + ``ztfm device run --fleet-index K`` do, in threads."""
    fleet = build_fleet(cfg.fleet, cfg.detector)
    now = time.time()
    ca = LocalFleet.create("fleet.local", now)
    audit = MemoryAuditSink()
    sc = coordinator_scenario(cfg, fleet, audit, time.time)
    coord = sc.coordinator(cfg, fleet.n_features)
    service = CoordinatorService(
        coord, rounds=N_ROUNDS, expected_devices=len(fleet.devices), on_round=sc.on_round
    )
    server = CoordinatorServer(ca, service, audit, UnsafeAssumeAttested(), tick_s=0.02)
    ends = server.start()
    try:
        runners = []
        for k, d in enumerate(fleet.devices):
            creds = ca.enroll(d.segment, d.device_id, now)
            runners.append(
                DeviceRunner(
                    creds.identity,
                    creds.keystore,
                    ca.ca.cert,
                    device_agent(cfg, fleet, k),
                    ends.fleet,
                    np.random.default_rng(k),
                    cert=creds.cert,
                    backoff=PollBackoff(0.01, 2.0, 0.05),
                )
            )
        threads = [threading.Thread(target=r.run) for r in runners]
        for t in threads:
            t.start()
        assert server.wait(120), service.log.failures
        server.linger(10)
        for t in threads:
            t.join(30)
    finally:
        server.stop()
    return network_metrics(cfg, service, fleet.n_features, 0.0, sc.rounds), audit


def _assert_equal_to_simulate(cfg: SimConfig, got: dict[str, Any]) -> list[dict[str, Any]]:
    sim = Simulation(cfg)
    expected = [sim.run_round(r) for r in range(N_ROUNDS)]
    assert len(got["rounds"]) == N_ROUNDS
    # a round the aggregator refuses fails the same way in both (the model is kept)
    assert got["failures"] == [e["failed"] for e in expected if e.get("failed")]
    for e, g in zip(expected, got["rounds"], strict=True):
        assert g["global"] == pytest.approx(e["global"], rel=1e-12, abs=1e-12)
        for dev, rates in e["per_device"].items():
            assert g["per_device"][dev] == pytest.approx(rates, rel=1e-12, abs=1e-12)
        assert sorted(g["accepted"]) == sorted(e["accepted"])
        for key in ("excluded", "trust", "quarantined", "epsilon", "attackers"):
            assert g.get(key) == e.get(key), key
        if "global_honest" in e:
            assert g["global_honest"] == pytest.approx(e["global_honest"], rel=1e-12, abs=1e-12)
    return expected


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as in the device processes


def test_central_noise_equals_simulate_with_epsilon(tmp_path: Any) -> None:
    cfg = _config(
        tmp_path,
        '[privacy]\nclip_norm = 0.5\nnoise_multiplier = 0.8\nnoise = "central"\n'
        "epsilon_budget = 100.0\n",
        devices=4,
    )
    got, audit = _networked(cfg)
    _assert_equal_to_simulate(cfg, got)
    eps = [r["epsilon"] for r in got["rounds"]]
    assert len(eps[-1]) == 4 and all(e > eps[0][d] > 0 for d, e in eps[-1].items())
    spent = audit.of("privacy.spent")
    assert [s["epsilon"] for s in spent] == eps


@pytest.mark.parametrize(
    "scenario",
    [
        '[attacks]\nname = "alie"\nfraction = 0.2\n[robust]\naggregator = "trimmed_mean"\nf = 1\n'
        "[trust]\nenabled = true\n",
        '[attacks]\nname = "label_flip"\nfraction = 0.2\n'
        '[robust]\naggregator = "geometric_median"\nequal_weights = true\n',
        '[attacks]\nname = "sign_flip"\nfraction = 0.2\n[robust]\naggregator = "multi_krum"\n'
        "f = 1\n[trust]\nenabled = true\n",
    ],
    ids=["alie-trimmed_mean-trust", "label_flip-geometric_median", "sign_flip-multi_krum-trust"],
)
def test_attack_and_defence_equal_simulate(tmp_path: Any, scenario: str) -> None:
    cfg = _config(tmp_path, scenario, devices=5)
    got, audit = _networked(cfg)
    expected = _assert_equal_to_simulate(cfg, got)
    assert len(got["rounds"][-1]["attackers"]) == 1
    if "multi_krum" in scenario:  # the flipper sits out round 3 (trust gate); 4 < 2f + 3 = 5
        assert got["failures"] == [
            "robust aggregation refused the round: multi_krum: needs n >= 2f+3 = 5 updates "
            "for f=1, got 4"
        ]
        assert list(got["rounds"][-1]["excluded"]) == got["rounds"][-1]["attackers"]
    if cfg.trust.enabled:
        changes = audit.of("trust.changed") + audit.of("trust.quarantined")
        assert len(changes) == sum(len(r["accepted"]) for r in expected)


@pytest.mark.parametrize("aggregator", ["krum", "bulyan", "norm_bounding", "centered_clipping"])
def test_other_robust_rules_equal_simulate(tmp_path: Any, aggregator: str) -> None:
    cfg = _config(tmp_path, f'[robust]\naggregator = "{aggregator}"\n', devices=4)
    got, _ = _networked(cfg)
    _assert_equal_to_simulate(cfg, got)
    assert got["rounds"][-1]["model_version"] == N_ROUNDS


def test_per_device_topk_uploads_equal_simulate_and_are_small(tmp_path: Any) -> None:
    # [compression] without [secagg]: each device sends its own top 10 % (4-bit levels, a
    # deflated index bitmap) over gRPC; the coordinator rebuilds the same dense deltas
    cfg = _config(tmp_path, "[compression]\nkeep_ratio = 0.1\nvalue_bits = 4\n", devices=4)
    got, audit = _networked(cfg)
    expected = _assert_equal_to_simulate(cfg, got)
    for e, g in zip(expected, got["rounds"], strict=True):
        for dev in e["bytes_up"]:
            # both count the round message's bytes: down the dense model, up the compact upload
            assert g["bytes_up"][dev] == e["bytes_up"][dev]
            assert 10 * e["bytes_up"][dev] < e["bytes_down"][dev]
    assert len(audit.of("rpc.handler_error")) == 0
