"""Security sections of ``ztfm simulate``: attackers, robust aggregation, trust and DP budgets,
end to end on the real SKAB fleet (small: a few devices and rounds)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from ztfm.errors import ConfigError
from ztfm.sim.config import from_mapping, load_config
from ztfm.sim.runner import Simulation, run_simulation


def _cfg(**sections: dict[str, Any]):  # type: ignore[no-untyped-def]
    base = {
        "seed": 3,
        "fleet": {"devices": 10},
        "rounds": {"rounds": 3, "local_epochs": 1},
        "compare": {"local_only": False, "centralised": False},
    }
    base.update(sections)
    return from_mapping(base, load_config())


def test_model_poisoning_attackers_are_caught_by_trust() -> None:
    cfg = _cfg(
        attacks={"name": "scaling", "fraction": 0.2, "params": {"factor": 50.0}},
        robust={"aggregator": "median"},
        trust={"enabled": True},
    )
    m = run_simulation(cfg).metrics
    attackers = set(m["rounds"][0]["attackers"])
    assert len(attackers) == 2
    last = m["rounds"][-1]
    # every attacker sits later rounds out (trust below the gate), no honest device does
    assert attackers <= set(last["excluded"])
    assert not (set(last["excluded"]) - attackers)
    assert all(last["trust"][d] < cfg.trust.gate for d in attackers)


def test_group_level_trust_under_secagg_separates_attackers_without_seeing_an_update() -> None:
    """[trust] with SecAgg groups: only group means are visible; groups are re-drawn every
    round, so attackers are flagged every round and honest devices only when they share a group
    with one (measured over seeds 0-4 in docs/robustness.md)."""
    cfg = _cfg(
        fleet={"devices": 30},
        rounds={"rounds": 6, "local_epochs": 1},
        attacks={"name": "sign_flip", "fraction": 0.2, "params": {"scale": 5.0}},
        robust={"aggregator": "median"},
        trust={"enabled": True},
        privacy={"clip_norm": 0.5},
        secagg={"enabled": True, "group_size": 3},
    )
    m = run_simulation(cfg).metrics
    last = m["rounds"][-1]
    attackers = set(last["attackers"])
    assert len(attackers) == 6
    trust = last["trust"]
    honest = sorted(t for d, t in trust.items() if d not in attackers)
    # every attacker is below the participation gate after 6 rounds; few honest devices are
    assert all(trust[d] < cfg.trust.gate for d in attackers)
    assert sum(t < cfg.trust.gate for t in honest) <= 2
    assert np.mean([trust[d] for d in attackers]) < np.median(honest) - 0.1


def test_trust_with_one_secagg_group_is_refused() -> None:
    with pytest.raises(ConfigError, match="group_size > 0"):
        _cfg(trust={"enabled": True}, privacy={"clip_norm": 0.5}, secagg={"enabled": True})


def _final_model(cfg) -> np.ndarray:  # type: ignore[no-untyped-def]
    sim = Simulation(cfg)
    for r in range(cfg.rounds.rounds):
        sim.run_round(r)
    return np.concatenate([p.ravel() for p in sim.coordinator.params]).astype(np.float64)


def test_scaling_attack_moves_fedavg_and_median_resists() -> None:
    """The attack is real (it drags the FedAvg model far from the clean one) and the robust
    rule contains it. (On SKAB the detection figures hardly move even then, because every
    device keeps its own scaler and threshold: see docs/robustness.md.)"""
    attack = {"name": "scaling", "fraction": 0.2, "params": {"factor": 50.0}}
    clean = _final_model(_cfg())
    plain = _final_model(_cfg(attacks=attack))
    defended = _final_model(_cfg(attacks=attack, robust={"aggregator": "median"}))
    drift_plain = np.linalg.norm(plain - clean)
    drift_defended = np.linalg.norm(defended - clean)
    assert drift_plain > 10 * drift_defended


def test_data_poisoning_poisons_only_attackers() -> None:
    cfg = _cfg(attacks={"name": "label_flip", "fraction": 0.2})
    sim = Simulation(cfg)
    clean = Simulation(_cfg())
    for dev, agent in sim.agents.items():
        before = clean.agents[dev].data.train
        if dev in sim.attackers:
            assert agent.data.train.shape[0] > before.shape[0]
        else:
            np.testing.assert_array_equal(agent.data.train, before)


def test_privacy_budget_makes_devices_sit_out_and_epsilon_is_reported() -> None:
    # z = 2, every device every round: epsilon 2.17 after one round, 3.19 after two, 4.01
    # after three (RDP, delta 1e-5); a budget of 3.5 allows exactly two rounds
    cfg = _cfg(
        privacy={"clip_norm": 1.0, "noise_multiplier": 2.0, "epsilon_budget": 3.5},
        rounds={"rounds": 3, "local_epochs": 1},
    )
    m = run_simulation(cfg).metrics
    r1, r2, r3 = m["rounds"]
    assert not r1["excluded"] and not r2["excluded"]
    assert set(r3["excluded"]) == {d["id"] for d in m["devices"]}
    assert all("epsilon" in reason for reason in r3["excluded"].values())
    assert r3.get("failed")  # nobody may take part: the round fails, the model is kept
    eps = r3["epsilon"]
    assert all(3.0 < e <= 3.5 for e in eps.values())


def test_clipping_bounds_every_update() -> None:
    cfg = _cfg(privacy={"clip_norm": 0.05})
    sim = Simulation(cfg)
    sent = []
    for agent in sim.agents.values():
        orig = agent.train

        def spy(task, _orig=orig):  # type: ignore[no-untyped-def]
            reply = _orig(task)
            sent.append(
                float(np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in reply.delta)))
            )
            return reply

        agent.train = spy  # type: ignore[method-assign]
    sim.run_round(0)
    assert sent and max(sent) <= 0.05 * (1 + 1e-5)


@pytest.mark.parametrize(
    "sections, match",
    [
        ({"attacks": {"name": "nope", "fraction": 0.1}}, "unknown attack"),
        ({"attacks": {"name": "alie", "fraction": 0.0}}, "fraction > 0"),
        ({"robust": {"aggregator": "nope"}}, "unknown aggregator"),
        ({"privacy": {"noise_multiplier": 1.0}}, "clip_norm > 0"),
        ({"privacy": {"noise": "loud"}}, "distributed or central"),
        ({"attacks": {"name": "alie", "fraction": 0.1, "params": {"z": True}}}, "table of numbers"),
    ],
)
def test_bad_security_config(sections: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Simulation(replace(_cfg(**sections)))


def test_soft_attestation_excludes_tampered_firmware_every_round() -> None:
    cfg = _cfg(
        attestation={"backend": "soft", "tampered": 2},
        trust={"enabled": True},
        fleet={"devices": 8},
        rounds={"rounds": 2, "local_epochs": 1},
    )
    sim = Simulation(cfg)
    recs = [sim.run_round(r) for r in range(2)]
    assert sim.attestation is not None
    bad = {v["device"] for v in sim.attestation.verdicts if not v["ok"]}
    assert len(bad) == 2
    for rec in recs:
        assert set(rec["excluded"]) == bad
        assert all(reason == "attestation failed: firmware" for reason in rec["excluded"].values())
        assert not bad & set(rec["accepted"])
        assert len(rec["accepted"]) == 6
    # a failing quote quarantines at once
    assert set(recs[-1]["quarantined"]) == bad
    # every device answered a fresh nonce each round
    assert len(sim.attestation.verdicts) == 8 * 2


def test_tampered_devices_need_an_attestation_backend() -> None:
    with pytest.raises(ConfigError, match="attestation backend"):
        _cfg(attestation={"tampered": 1})


def test_central_noise_is_scaled_to_the_replies_actually_aggregated() -> None:
    """Regression: the noise on the mean must be sigma / m for the m replies aggregated, not
    sigma / (planned participants): a round with dropouts must not get less noise on its sum."""
    from ztfm.sim.scenario import central_noise

    d = 20_000
    for m in (2, 10):
        combine = central_noise(3.0, seed=1)
        out = combine(np.zeros((m, d)), np.full(m, 1 / m))
        noise_on_sum = out * m
        assert abs(noise_on_sum.std() - 3.0) < 0.1


def test_central_noise_with_a_robust_rule_is_refused() -> None:
    with pytest.raises(ConfigError, match="central noise"):
        Simulation(
            _cfg(
                privacy={"clip_norm": 1.0, "noise_multiplier": 1.0, "noise": "central"},
                robust={"aggregator": "median"},
            )
        )
