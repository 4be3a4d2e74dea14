"""Scenario: 300 SoftTpm devices over 4 rounds; a few are compromised in different ways.

Exactly the compromised devices fail, each with its own reason; the honest majority keeps
passing, and the coordinator's eligibility gate follows the verdicts.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    QuoteEvidence,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.types import DeviceId

T0 = 1_800_000_000.0
N = 300
FW = hashlib.sha256(b"fleet fw 2.0").digest()
MODELS = [hashlib.sha256(f"model r{r}".encode()).digest() for r in range(5)]


def test_fleet_rounds_with_compromised_devices() -> None:
    rng = np.random.default_rng(2024)
    maker = SoftManufacturer(rng, T0)
    ref = ReferenceValues().with_firmware("sensor", "2.0", FW).with_models([MODELS[0]])
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=ref,
        nonces=UnsafeRngNonceSource(np.random.default_rng(1)),
        max_quote_age_s=20,
    )
    gate = verifier.eligibility_gate(max_age_s=120)
    ids = [DeviceId(f"s{i:03d}") for i in range(N)]
    picks = rng.choice(N, size=12, replace=False)
    evil_fw = {ids[i] for i in picks[:3]}
    evil_model = {ids[i] for i in picks[3:6]}
    replayers = {ids[i] for i in picks[6:9]}
    laggards = {ids[i] for i in picks[9:12]}
    devices: dict[DeviceId, AttestingDevice] = {}
    for did in ids:
        dev = AttestingDevice(SoftTpm(maker, rng, T0, did))
        dev.measure_firmware(hashlib.sha256(b"implant").digest() if did in evil_fw else FW)
        devices[did] = dev
        ch = verifier.begin_enrolment(did, "sensor", dev.enrolment_request(), T0)
        verifier.finish_enrolment(did, dev.activate(ch), T0 + 1)

    last_quote: dict[DeviceId, QuoteEvidence] = {}
    for rnd in range(4):
        now = T0 + 100 * (rnd + 1)
        verifier.reference = verifier.reference.with_models([MODELS[rnd]])
        failures: dict[DeviceId, str] = {}
        for did, dev in devices.items():
            bundle = MODELS[rnd] if did not in evil_model else hashlib.sha256(b"evil").digest()
            dev.measure_model(bundle)
            nonce = verifier.issue_nonce(did, now)
            ev = dev.quote(nonce)
            if did in replayers and did in last_quote:
                ev = last_quote[did]
            last_quote[did] = ev
            at = now + (30 if did in laggards else 1)
            verdict = verifier.assess_quote(did, ev, at)
            if not verdict.ok:
                failures[did] = verdict.reason
        expected = {d: "firmware" for d in evil_fw} | {d: "model" for d in evil_model}
        expected |= {d: "stale" for d in laggards}
        if rnd > 0:
            expected |= {d: "nonce" for d in replayers}
        assert failures == expected, f"round {rnd}"
        eligible = {d for d in ids if gate(d, now + 40) is None}
        assert eligible == set(ids) - set(expected)
