"""Trust under SecAgg: only group means are visible; groups are re-drawn every round, so trust
built from group observations (each member carries 1/k of its group's evidence) separates
attackers from honest devices over rounds (group testing)."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import TrustError
from ztfm.robust import GeometricMedian, assign_groups
from ztfm.trust import MemoryTrustStore, TrustManager, TrustState, observe_groups
from ztfm.types import DeviceId

N, D, K = 60, 32, 3


def _run(seed: int, rounds: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(seed)
    ids = [DeviceId(f"d{i:02d}") for i in range(N)]
    attackers = set(rng.choice(N, size=N // 10, replace=False).tolist())
    direction = rng.normal(size=D)
    bias = 0.3 * rng.normal(size=(N, D))
    trust = TrustManager(MemoryTrustStore())
    first_quarantine: dict[int, int] = {}
    for r in range(rounds):
        live = [i for i in range(N) if trust.record(ids[i], r).state is not TrustState.QUARANTINED]
        x = np.stack([direction + bias[i] + 0.3 * rng.normal(size=D) for i in live])
        for j, i in enumerate(live):
            if i in attackers:
                x[j] *= -10.0  # boosted sign flip
        plan = assign_groups(len(live), K, rng)
        means = np.stack([x[list(g)].mean(axis=0) for g in plan.groups])
        groups = [[ids[live[j]] for j in g] for g in plan.groups]
        ref = GeometricMedian(f=min(len(attackers), (len(groups) - 1) // 2)).aggregate(means)
        trust.observe_round(r, observe_groups(groups, means, ref.vector), float(r))
        for i in live:
            if trust.record(ids[i], r).state is TrustState.QUARANTINED:
                first_quarantine.setdefault(i, r + 1)
    caught = sum(1 for i in attackers if i in first_quarantine)
    false_q = sum(1 for i in first_quarantine if i not in attackers)
    last = max((first_quarantine[i] for i in attackers if i in first_quarantine), default=0)
    return caught, false_q, last


def test_group_testing_quarantines_attackers_without_seeing_updates() -> None:
    caught = false_q = 0
    latest = 0
    for seed in range(3):
        c, fq, last = _run(seed, rounds=15)
        caught, false_q, latest = caught + c, false_q + fq, max(latest, last)
    assert caught >= 0.9 * 3 * (N // 10), caught
    assert false_q <= 0.02 * 3 * (N - N // 10), false_q
    assert latest <= 8  # measured: 5


def test_group_observation_shares_blame() -> None:
    groups = [[DeviceId("a"), DeviceId("b")], [DeviceId("c"), DeviceId("d")], [DeviceId("e")]]
    means = np.array([[1.0, 1.0], [1.1, 0.9], [-50.0, -50.0]])
    obs = observe_groups(groups, means, np.array([1.0, 1.0]))
    assert [o.device for o in obs] == ["a", "b", "c", "d", "e"]
    assert obs[0].evidence_scale == 0.5 and obs[4].evidence_scale == 1.0
    assert obs[4].cosine < 0 and obs[0].cosine > 0.9


@pytest.mark.parametrize(
    ("groups", "means"),
    [
        ([["a"], ["b"]], np.ones((3, 2))),
        ([["a"], []], np.ones((2, 2))),
        ([["a", "b"], ["b"]], np.ones((2, 2))),
        ([["a"], ["b"]], np.ones(2)),
    ],
)
def test_observe_groups_rejects(groups: list[list[str]], means: np.ndarray) -> None:
    with pytest.raises(TrustError):
        observe_groups(groups, means, np.ones(2))  # type: ignore[arg-type]


def test_evidence_scale_validated() -> None:
    from ztfm.trust import UpdateObservation

    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(TrustError):
            UpdateObservation(DeviceId("a"), 1.0, 0.0, 1.0, 1.0, 1.0, evidence_scale=bad)
