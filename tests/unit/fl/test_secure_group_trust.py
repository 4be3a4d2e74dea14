"""Group-level trust in SecureAggregator.finish: a quarantined member does not end the round."""

from __future__ import annotations

import numpy as np

from ztfm.coordinator.secure import GroupOutcome, SecureAggregator, SecureSettings
from ztfm.trust import MemoryTrustStore, TrustManager, TrustState
from ztfm.types import DeviceId


def test_a_member_quarantined_mid_round_is_left_out_of_the_group_observations() -> None:
    d, now = 8, 100.0
    agg = SecureAggregator(
        SecureSettings(clip_norm=1.0, group_size=2, aggregator="median"),
        d,
        np.random.default_rng(0),
    )
    trust = TrustManager(MemoryTrustStore())
    agg.trust = trust
    for _ in range(40):  # dev-c pushes itself into quarantine during the round
        trust.observe_rejection(DeviceId("dev-c"), "bad_signature", now)
    assert trust.record(DeviceId("dev-c"), now).state is TrustState.QUARANTINED
    rng = np.random.default_rng(1)
    groups = [("dev-a", "dev-b"), ("dev-c", "dev-d"), ("dev-e", "dev-f")]
    outcomes = [
        GroupOutcome(g, 1, 1, 1, included=g, total=rng.normal(0, 0.1, d) * 2) for g in groups
    ]
    step, included = agg.finish(1, outcomes, now=now)
    assert step.shape == (d,) and len(included) == 6
    # the other groups were observed; dev-c's group was not (dev-d shares no blame or credit)
    assert trust.store.load(DeviceId("dev-a")) is not None
    assert trust.store.load(DeviceId("dev-d")) is None
