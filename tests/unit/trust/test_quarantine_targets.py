"""Reduced version of the quarantine target on synthetic rounds: with 20% attackers, trust built
from update behaviour against the robust aggregate quarantines >= 90% of attackers within 5
rounds and <= 2% of honest devices. Honest devices are non-IID (a fixed per-device bias)."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.robust import GeometricMedian
from ztfm.sim.attacks import UpdateAttack, make_attack
from ztfm.trust import MemoryTrustStore, TrustManager, TrustState, observe_updates
from ztfm.types import DeviceId

N, D, ROUNDS = 50, 64, 5
ATTACKS = {
    "alie": {},
    "alie_noise": {"noise": 0.3},
    "ipm": {"epsilon": 0.5},
    "scaling": {"factor": 10.0},
    "sign_flip": {},
    "min_max": {},
    "min_sum": {},
    "free_rider": {},
    "gaussian": {"sigma": 1.0},
}


def _run(attack: str, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    ids = [DeviceId(f"d{i:02d}") for i in range(N)]
    attackers = set(rng.choice(N, size=N // 5, replace=False).tolist())
    bias = 0.3 * rng.normal(size=(N, D))  # each device's data differs a little (non-IID)
    atk = make_attack(attack.removesuffix("_noise"), **ATTACKS[attack])
    assert isinstance(atk, UpdateAttack)
    trust = TrustManager(MemoryTrustStore())
    direction = rng.normal(size=D)
    for r in range(ROUNDS):
        live = [i for i in range(N) if trust.record(ids[i], r).state is not TrustState.QUARANTINED]
        x = np.stack(
            [direction * (1.0 - 0.1 * r) + bias[i] + 0.3 * rng.normal(size=D) for i in live]
        )
        bad = [j for j, i in enumerate(live) if i in attackers]
        good = [j for j, i in enumerate(live) if i not in attackers]
        if bad:
            x[bad] = atk.craft(x[bad], x[good], rng)
        w = trust.weights([ids[i] for i in live], float(r))
        agg = GeometricMedian(f=len(bad)).aggregate(x, w)
        # Judge behaviour against the unweighted robust centre: the trust-weighted aggregate
        # moves away from flagged devices, which would make them look less central next round.
        ref = GeometricMedian(f=len(bad)).aggregate(x)
        obs = observe_updates([ids[i] for i in live], x, ref.vector, rule_weights=agg.weights)
        trust.observe_round(r, obs, float(r))
    q = {i for i in range(N) if trust.record(ids[i], 9.0).state is TrustState.QUARANTINED}
    return len(q & attackers), len(q - attackers)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_quarantine_catches_attackers_and_spares_honest(attack: str) -> None:
    caught = false_q = 0
    for seed in range(3):
        c, fq = _run(attack, seed)
        caught += c
        false_q += fq
    assert caught >= 0.9 * 3 * (N // 5), f"{attack}: caught {caught} of {3 * (N // 5)}"
    assert false_q <= 0.02 * 3 * (N - N // 5), f"{attack}: {false_q} honest quarantined"
