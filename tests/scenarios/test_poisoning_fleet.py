"""Poisoning end to end on the real SKAB fleet (reduced bench/robustness.py).

``test_model_replacement_degrades_fedavg_but_not_the_best_defence``: issue 8's F1 target for the
``model_replacement`` attack (label-flipped training, update boosted n / k), on the canary setup of
bench/results/robustness_canary2.json (26 federated devices, 5 of them attackers).

``test_model_replacement_20_percent`` (slow): 20% attackers doing label-flipped training with the
update boosted x10 (the bench's ``scaling`` row). Plain FedAvg applies an
update far from the honest mean; the geometric median with trust in the loop stays close to it,
keeps F1 within 2 points of no attack, quarantines >= 90% of attackers within 5 rounds and <= 2%
of honest devices. (On SKAB the detection F1 barely depends on the shared model, so FedAvg's
damage shows in model space, not in F1: see docs/robustness.md.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import robustness
    finally:
        sys.path.remove(str(BENCH))
    return robustness


@pytest.mark.slow
def test_model_replacement_20_percent() -> None:
    rb = _bench()
    clean = rb.run_fleet("none", "geometric_median+trust", 0.2, 5, 1, 0)
    fedavg = rb.run_fleet("scaling", "mean", 0.2, 5, 1, 0)
    robust = rb.run_fleet("scaling", "geometric_median+trust", 0.2, 5, 1, 0)
    assert robust["attackers"] == 6 and robust["honest"] == 24
    assert abs(robust["f1"] - clean["f1"]) <= 0.02
    assert robust["attackers_quarantined_by_r5"] >= 0.9 * robust["attackers"]
    assert robust["honest_quarantined"] <= 0.02 * robust["honest"]
    assert clean["honest_quarantined"] == 0
    assert fedavg["agg_error_mean"] > 1.0
    # in the detector's own terms: benign canary telemetry is reconstructed worse under FedAvg
    assert fedavg["canary_benign_score"] > 1.05 * clean["canary_benign_score"]
    assert abs(robust["canary_benign_score"] - clean["canary_benign_score"]) <= (
        0.02 * clean["canary_benign_score"]
    )
    assert robust["agg_error_mean"] < fedavg["agg_error_mean"] / 3


def test_model_replacement_degrades_fedavg_but_not_the_best_defence() -> None:
    """Seed 0 as in bench/results/robustness_canary2.json: FedAvg loses 5.6 F1 points (recall
    0.748 -> 0.644), the geometric median with trust 0.1 and quarantines all 5 attackers. Bounds
    with margin: FedAvg loses >= 3 points, the best defence stays within 2."""
    rb = _bench()
    args = (0.2, 5, 1, 0, "skab", 4)
    runs = {
        (a, d): rb.run_fleet(a, d, *args)
        for a in ("none", "model_replacement")
        for d in ("mean", "geometric_median+trust")
    }
    attacked = runs[("model_replacement", "geometric_median+trust")]
    assert attacked["attackers"] == 5 and attacked["honest"] == 21
    fedavg_drop = runs[("none", "mean")]["f1"] - runs[("model_replacement", "mean")]["f1"]
    best_drop = runs[("none", "geometric_median+trust")]["f1"] - attacked["f1"]
    assert fedavg_drop >= 0.03
    assert runs[("model_replacement", "mean")]["attack_recall"] < (
        runs[("none", "mean")]["attack_recall"] - 0.05
    )
    assert abs(best_drop) <= 0.02
    assert attacked["attackers_quarantined_by_r5"] == attacked["attackers"]
    assert attacked["honest_quarantined"] == 0
