"""Attestation feeds zero-trust policy: no fresh passing quote, no participation.

SoftTpm devices attest; ``verifier.status`` becomes policy's ``TrustContext``; the default Cedar
policy then allows or denies ``SubmitUpdate`` / ``GetRound``. Tampered or stale devices are
denied, and an honest device is denied again once its verdict is older than the policy allows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.audit import MemoryAuditSink
from ztfm.errors import PolicyDenied
from ztfm.identity import Identity
from ztfm.policy.engine import (
    AccessRequest,
    PolicyEngine,
    Resource,
    TrustContext,
    default_policy_text,
)
from ztfm.types import DeviceId

T0 = 1_800_000_000.0
FW = hashlib.sha256(b"fw").digest()
MODEL = hashlib.sha256(b"model").digest()


class AttestationTrust:
    """A ``TrustSource`` whose attestation inputs come from the verifier."""

    def __init__(self, verifier: AttestationVerifier) -> None:
        self.verifier = verifier

    def context_for(self, identity: Identity, now: float) -> TrustContext:
        ok, age = self.verifier.status(DeviceId(identity.device_id), now)
        return TrustContext(trust_score=0.9, attestation_ok=ok, attestation_age_s=age,
                            revoked=False)  # fmt: skip


@pytest.fixture
def world() -> tuple[AttestationVerifier, PolicyEngine, dict[str, AttestingDevice]]:
    rng = np.random.default_rng(3)
    maker = SoftManufacturer(rng, T0)
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=ReferenceValues().with_firmware("sensor", "1", FW).with_models([MODEL]),
        nonces=UnsafeRngNonceSource(np.random.default_rng(4)),
    )
    devices: dict[str, AttestingDevice] = {}
    for name, fw in (("honest", FW), ("implanted", hashlib.sha256(b"implant").digest())):
        dev = AttestingDevice(SoftTpm(maker, rng, T0, name))
        dev.measure_firmware(fw)
        dev.measure_model(MODEL)
        ch = verifier.begin_enrolment(DeviceId(name), "sensor", dev.enrolment_request(), T0)
        verifier.finish_enrolment(DeviceId(name), dev.activate(ch), T0)
        verifier.assess_quote(
            DeviceId(name), dev.quote(verifier.issue_nonce(DeviceId(name), T0)), T0
        )
        devices[name] = dev
    engine = PolicyEngine.from_text(MemoryAuditSink(), default_policy_text())
    return verifier, engine, devices


def _request(verifier: AttestationVerifier, name: str, action: str, now: float) -> AccessRequest:
    who = Identity(fleet="acme", segment="floor1", role="device", device_id=name)
    return AccessRequest(who, action, Resource("round", "acme", "floor1"),
                         AttestationTrust(verifier).context_for(who, now))  # fmt: skip


def test_honest_device_may_submit(world) -> None:  # type: ignore[no-untyped-def]
    verifier, engine, _ = world
    assert engine.authorize(_request(verifier, "honest", "SubmitUpdate", T0 + 60), T0 + 60).allowed


def test_implanted_device_is_denied(world) -> None:  # type: ignore[no-untyped-def]
    verifier, engine, _ = world
    assert verifier.latest_verdict(DeviceId("implanted")).reason == "firmware"  # type: ignore[union-attr]
    with pytest.raises(PolicyDenied):
        engine.authorize(_request(verifier, "implanted", "SubmitUpdate", T0 + 60), T0 + 60)


def test_unknown_device_is_denied(world) -> None:  # type: ignore[no-untyped-def]
    verifier, engine, _ = world
    with pytest.raises(PolicyDenied):
        engine.authorize(_request(verifier, "stranger", "GetRound", T0 + 60), T0 + 60)


def test_old_verdict_is_denied_until_reattested(world) -> None:  # type: ignore[no-untyped-def]
    verifier, engine, devices = world
    later = T0 + 3601 + 60
    with pytest.raises(PolicyDenied):
        engine.authorize(_request(verifier, "honest", "GetRound", later), later)
    nonce = verifier.issue_nonce(DeviceId("honest"), later)
    verifier.assess_quote(DeviceId("honest"), devices["honest"].quote(nonce), later)
    assert engine.authorize(_request(verifier, "honest", "GetRound", later + 1), later + 1).allowed
