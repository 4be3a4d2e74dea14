"""A round that fails over the network is recorded and the run goes on, as in simulate.

``CoordinatorService`` is driven in process (no sockets): devices poll ``next_task`` and answer
with ``submit``, exactly what the gRPC role adapter does for them. ``network_metrics`` then
writes the round records that ``ztfm coordinator serve`` puts in ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from small_fleet import SMALL_FLEET_TOML

from ztfm.cli.coordinator import network_metrics
from ztfm.coordinator.service import CoordinatorService
from ztfm.device.agent import DeviceAgent
from ztfm.sim import runner
from ztfm.sim.config import SimConfig, load_config
from ztfm.sim.fleet import build_fleet
from ztfm.sim.network import coordinator_scenario, device_agent
from ztfm.sim.runner import Simulation, build_agent, build_coordinator

ROUNDS = 3
BASE = SMALL_FLEET_TOML


def _cfg(tmp: Path, text: str = "") -> SimConfig:
    path = tmp / "cfg.toml"
    path.write_text(BASE + text)
    cfg = load_config(path)
    return replace(
        cfg,
        seed=5,
        fleet=replace(cfg.fleet, devices=4),
        rounds=replace(cfg.rounds, rounds=ROUNDS),
    )


def _drive(svc: CoordinatorService, agents: Mapping[str, DeviceAgent]) -> None:
    """Devices enrol, then poll and answer until the service is done."""
    for dev, agent in agents.items():
        svc.register(dev, agent.segment)
    now = 0.0
    for _ in range(200):
        svc.step(now)
        if svc.finished.is_set():
            return
        for dev, agent in agents.items():
            task = svc.next_task(dev)
            if task and task != b"done":
                svc.submit(dev, agent.handle(task), now)
        now += 1.0
    raise AssertionError(f"service stuck in phase {svc.phase}")


def _assert_rounds_equal(
    got: Sequence[dict[str, Any]],
    expected: Sequence[dict[str, Any]],
    keys: Sequence[str] = ("excluded", "epsilon", "trust", "quarantined"),
) -> None:
    assert len(got) == len(expected) == ROUNDS
    for g, e in zip(got, expected, strict=True):
        assert g["round"] == e["round"]
        assert g["model_version"] == e["model_version"], e["round"]
        assert g.get("failed") == e.get("failed"), e["round"]
        assert sorted(g["accepted"]) == sorted(e["accepted"]), e["round"]
        assert g["rejected"] == e["rejected"], e["round"]
        assert g["global"] == pytest.approx(e["global"], rel=1e-12, abs=1e-12), e["round"]
        for key in keys:
            assert g.get(key) == e.get(key), (e["round"], key)


def test_round_with_every_device_out_of_budget_is_failed_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    # budget 5: round 1 spends epsilon 4.75 per device; a second round would spend 7.09, so
    # rounds 2 and 3 have no eligible device
    cfg = _cfg(
        tmp_path, "[privacy]\nclip_norm = 0.5\nnoise_multiplier = 1.0\nepsilon_budget = 5.0\n"
    )
    sim = Simulation(cfg)
    expected = [sim.run_round(r) for r in range(ROUNDS)]
    assert [e.get("failed") is not None for e in expected] == [False, True, True]

    fleet = build_fleet(cfg.fleet, cfg.detector)
    sc = coordinator_scenario(cfg, fleet)
    coord = sc.coordinator(cfg, fleet.n_features)
    svc = CoordinatorService(
        coord, rounds=ROUNDS, expected_devices=len(fleet.devices), on_round=sc.on_round
    )
    agents = {d.device_id: device_agent(cfg, fleet, k) for k, d in enumerate(fleet.devices)}
    _drive(svc, agents)

    assert len(svc.log.evals) == ROUNDS  # every round evaluated, none dropped
    assert svc.log.failures == [e["failed"] for e in expected if e.get("failed")]
    got = network_metrics(cfg, svc, fleet.n_features, 0.0, sc.rounds)
    _assert_rounds_equal(got["rounds"], expected)
    np.testing.assert_array_equal(coord.params[0], sim.coordinator.params[0])


def test_failed_round_in_the_middle_keeps_its_number_in_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 2 has no eligible device; round 3 trains again. Round 3's summary (its accepted
    devices, model version 2) must not be attributed to round 2."""
    cfg = _cfg(tmp_path)

    def blocking_round_2(is_round_2: Callable[[], bool]) -> Callable[[str, float], str | None]:
        return lambda dev, now: "maintenance window" if is_round_2() else None

    # simulate, with the same gate added to its coordinator (round r starts at r * 3600 s)
    original = runner.build_coordinator
    sim_gate = blocking_round_2(lambda: sim.now == runner.ROUND_PERIOD_S)

    def with_gate(*args: Any, eligibility: Sequence[Any] = (), **kwargs: Any) -> Any:
        return original(*args, eligibility=[*eligibility, sim_gate], **kwargs)

    monkeypatch.setattr(runner, "build_coordinator", with_gate)
    sim = Simulation(cfg)
    monkeypatch.undo()
    expected = [sim.run_round(r) for r in range(ROUNDS)]
    assert [bool(e.get("failed")) for e in expected] == [False, True, False]

    svc: CoordinatorService
    net_gate = blocking_round_2(lambda: len(svc.log.evals) == 1)
    svc = CoordinatorService(
        build_coordinator(cfg, sim.fleet.n_features, eligibility=[net_gate]),
        rounds=ROUNDS,
        expected_devices=len(sim.fleet.devices),
    )
    agents = {
        d.device_id: build_agent(cfg, d, i, sim.fleet.n_features)
        for i, d in enumerate(sim.fleet.devices)
    }
    _drive(svc, agents)

    assert svc.log.failed == {2: "round 2: 0 eligible devices, need at least 2"}
    assert sorted(svc.log.closed) == [1, 3]
    got = network_metrics(cfg, svc, sim.fleet.n_features, 0.0)["rounds"]
    assert [r["model_version"] for r in got] == [1, 1, 2]
    assert got[1]["accepted"] == [] and got[1]["failed"].startswith("round 2:")
    assert sorted(got[2]["accepted"]) == sorted(agents)
    assert got[1]["bytes_up"] == {} and set(got[2]["bytes_up"]) == set(agents)
    # without a scenario nobody books exclusions into the networked records (simulate does)
    _assert_rounds_equal(got, expected, keys=())
