"""Hypothesis invariants of trust: any evidence sequence keeps the score in (0, 1), never leaves
quarantine except through re-admission, and every change explains old -> new exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.trust import (
    CanaryResult,
    MemoryTrustStore,
    TrustManager,
    TrustState,
    UpdateObservation,
)
from ztfm.types import DeviceId

D = DeviceId("dev")

EVENT = st.one_of(
    st.tuples(
        st.just("round"),
        st.floats(-20, 1e6),
        st.floats(-1, 1),
        st.floats(0, 10),
        st.floats(0, 10),
        st.booleans(),
    ),
    st.tuples(st.just("attest"), st.booleans()),
    st.tuples(st.just("reject"), st.sampled_from(["bad_signature", "late", "x"])),
    st.tuples(st.just("alerts"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("replay"), st.floats(0, 1), st.floats(0, 1)),
)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(EVENT, max_size=40))
def test_trust_invariants(events: list[tuple[object, ...]]) -> None:
    m = TrustManager(MemoryTrustStore())
    for t, ev in enumerate(events):
        now = float(t)
        before = m.record(D, now)
        kind = ev[0]
        if kind == "round":
            if before.state is TrustState.QUARANTINED:
                continue
            _, z, cos, nn, norm, excl = ev
            obs = UpdateObservation(
                D, 1.0, float(z), float(cos), float(nn), float(norm), bool(excl)
            )
            (c,) = m.observe_round(t, [obs], now)
        elif kind == "attest":
            c = m.observe_attestation(D, bool(ev[1]), now, t)
        elif kind == "reject":
            c = m.observe_rejection(D, str(ev[1]), now, t)
        elif kind == "alerts":
            c = m.observe_alerts(D, int(ev[1]), int(ev[2]), now, t)  # type: ignore[call-overload]
        else:
            if before.state is not TrustState.QUARANTINED:
                continue
            res = CanaryResult(float(ev[1]), float(ev[2]))  # type: ignore[arg-type]
            c = m.replay_quarantined(D, np.ones(2), lambda u, r=res: r, now, t)
        after = m.record(D, now)
        assert 0.0 < after.score < 1.0
        assert c.old_score == before.score and c.new_score == after.score
        assert c.old_state is before.state and c.new_state is after.state
        if before.state is TrustState.QUARANTINED and after.state is not TrustState.QUARANTINED:
            assert c.reason == "readmitted" and after.state is TrustState.SUSPICIOUS
        if kind == "attest" and not ev[1]:
            assert after.state is TrustState.QUARANTINED
