"""The pull/push coordinator service reaches the same model as the in-process simulation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ztfm.coordinator.service import WAIT, CoordinatorService
from ztfm.errors import UpdateRejected
from ztfm.sim.config import load_config
from ztfm.sim.runner import Simulation, build_agent, build_coordinator, summarise


def _cfg():  # type: ignore[no-untyped-def]
    cfg = load_config()
    return replace(
        cfg,
        seed=5,
        fleet=replace(cfg.fleet, devices=4),
        rounds=replace(cfg.rounds, rounds=2, local_epochs=1),
    )


def test_pull_push_matches_in_process_simulation() -> None:
    cfg = _cfg()
    sim = Simulation(cfg)
    in_process = [sim.run_round(r)["global"] for r in range(cfg.rounds.rounds)]

    fleet = sim.fleet
    agents = {
        d.device_id: build_agent(cfg, d, i, fleet.n_features) for i, d in enumerate(fleet.devices)
    }
    svc = CoordinatorService(
        build_coordinator(cfg, fleet.n_features),
        rounds=cfg.rounds.rounds,
        expected_devices=len(agents),
    )
    now = 0.0
    # devices enrol in reverse order: registration order must not matter
    for dev in reversed(list(agents)):
        svc.register(dev, agents[dev].segment)
    for _ in range(100):
        svc.step(now)
        if svc.finished.is_set():
            break
        for dev, agent in agents.items():
            task = svc.next_task(dev)
            if task and task != b"done":
                svc.submit(dev, agent.handle(task), now)
        now += 1.0
    assert svc.finished.is_set() and not svc.log.failures
    segments = {d.device_id: d.segment for d in fleet.devices}
    networked = [summarise(e, segments)["global"] for e in svc.log.evals]
    assert networked == in_process
    np.testing.assert_array_equal(svc.coordinator.params[0], sim.coordinator.params[0])


def test_unsolicited_and_duplicate_replies_are_refused() -> None:
    cfg = _cfg()
    sim = Simulation(cfg)
    svc = CoordinatorService(
        build_coordinator(cfg, sim.fleet.n_features), rounds=1, expected_devices=4
    )
    with pytest.raises(UpdateRejected, match="no open task"):
        svc.submit("nobody", b"junk", 0.0)
    for d in sim.fleet.devices:
        svc.register(d.device_id, d.segment)
    svc.step(0.0)
    dev = sim.fleet.devices[0].device_id
    task = svc.next_task(dev)
    assert task not in (WAIT, b"done")
    reply = sim.agents[dev].handle(task)
    svc.submit(dev, reply, 1.0)
    with pytest.raises(UpdateRejected, match="no open task"):
        svc.submit(dev, reply, 1.0)
    assert svc.next_task(dev) == WAIT


def test_deadline_closes_round_without_silent_devices() -> None:
    cfg = _cfg()
    sim = Simulation(cfg)
    svc = CoordinatorService(
        build_coordinator(cfg, sim.fleet.n_features),
        rounds=1,
        expected_devices=4,
        eval_deadline_s=5.0,
    )
    for d in sim.fleet.devices:
        svc.register(d.device_id, d.segment)
    svc.step(0.0)
    # only two devices answer; the others stay silent
    for d in sim.fleet.devices[:2]:
        svc.submit(d.device_id, sim.agents[d.device_id].handle(svc.next_task(d.device_id)), 1.0)
    svc.step(cfg.rounds.deadline_s + 1.0)
    assert svc.phase == "eval"
    summary = svc.log.summaries[0]
    assert len(summary.accepted) == 2 and len(summary.timed_out) == 2
    svc.step(cfg.rounds.deadline_s + 10.0)
    assert svc.finished.is_set()
