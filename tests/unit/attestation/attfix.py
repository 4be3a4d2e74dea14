"""Helpers for attestation tests: digests, golden values and a small SoftTpm fleet."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
)
from ztfm.types import DeviceId

T0 = 1_800_000_000.0
FW_GOOD = hashlib.sha256(b"camera firmware 1.0.0").digest()
FW_GOOD_2 = hashlib.sha256(b"camera firmware 1.1.0").digest()
FW_EVIL = hashlib.sha256(b"camera firmware 1.0.0 + implant").digest()
MODEL_V1 = hashlib.sha256(b"model bundle v1").digest()
MODEL_V2 = hashlib.sha256(b"model bundle v2").digest()
MODEL_EVIL = hashlib.sha256(b"model bundle v1 backdoored").digest()


def reference() -> ReferenceValues:
    return (
        ReferenceValues()
        .with_firmware("camera", "1.0.0", FW_GOOD)
        .with_firmware("camera", "1.1.0", FW_GOOD_2)
        .with_models([MODEL_V1])
    )


@dataclass
class SoftFleet:
    rng: np.random.Generator
    maker: SoftManufacturer
    verifier: AttestationVerifier
    devices: dict[str, AttestingDevice] = field(default_factory=dict)

    def device(
        self, name: str, fw: bytes = FW_GOOD, models: tuple[bytes, ...] = (MODEL_V1,)
    ) -> AttestingDevice:
        dev = AttestingDevice(SoftTpm(self.maker, self.rng, T0, name))
        dev.measure_firmware(fw)
        for m in models:
            dev.measure_model(m)
        self.devices[name] = dev
        return dev

    def enrol(self, name: str, now: float = T0, device_type: str = "camera") -> AttestingDevice:
        dev = self.devices.get(name) or self.device(name)
        did = DeviceId(name)
        challenge = self.verifier.begin_enrolment(did, device_type, dev.enrolment_request(), now)
        self.verifier.finish_enrolment(did, dev.activate(challenge), now + 1)
        return dev
