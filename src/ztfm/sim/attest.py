"""Attestation in ``ztfm simulate``: every device gets a software TPM (``SoftTpm``, the same
evidence format and the same verifier as a real TPM or swtpm), is enrolled (EK certificate
chain, AK bound by make/activate credential), and must answer a fresh nonce with a valid quote
before every round. A device whose firmware measurement is not on the allow-list for its
device type is excluded with the verifier's reason, and its trust (when enabled) drops.

The model measurement is the digest of the detector's architecture and initial parameters (the
code the device loads); per-release model measurements come with signed bundles in ``ztfm up``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.trust import TrustManager
from ztfm.types import DeviceId

FIRMWARE_VERSION = "1.0.0"


def firmware_digest(segment: str, tampered: bool = False) -> bytes:
    """The (simulated) firmware image digest of a device type; a tampered image differs."""
    image = f"ztfm-device-firmware:{segment}:{FIRMWARE_VERSION}".encode()
    if tampered:
        image += b":implant"
    return hashlib.sha256(image).digest()


@dataclass(slots=True)
class SoftAttestation:
    """One verifier and one SoftTpm per device; ``gate`` is a coordinator eligibility gate."""

    verifier: AttestationVerifier
    devices: dict[str, AttestingDevice]
    trust: TrustManager | None = None
    verdicts: list[dict[str, object]] = field(default_factory=list)

    def gate(self, device_id: str, now: float) -> str | None:
        did = DeviceId(device_id)
        nonce = self.verifier.issue_nonce(did, now)
        evidence = self.devices[device_id].quote(nonce)
        verdict = self.verifier.assess_quote(did, evidence, now)
        self.verdicts.append(
            {"device": device_id, "ok": verdict.ok, "reason": verdict.reason, "at": now}
        )
        if self.trust is not None:
            self.trust.observe_attestation(did, verdict.ok, now, detail=verdict.reason)
        if verdict.ok:
            return None
        return f"attestation failed: {verdict.reason}"


def build_soft_attestation(
    devices: Sequence[tuple[str, str]],
    model_digest: bytes,
    tampered: set[str],
    seed: int,
    now: float,
    trust: TrustManager | None = None,
) -> SoftAttestation:
    """Enrol every (device id, segment) with its own SoftTpm; ``tampered`` ones boot altered
    firmware."""
    rng = np.random.default_rng([seed, 10])
    maker = SoftManufacturer(rng, now)
    ref = ReferenceValues()
    for seg in sorted({s for _, s in devices}):
        ref = ref.with_firmware(seg, FIRMWARE_VERSION, firmware_digest(seg))
    ref = ref.with_models([model_digest])
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=ref,
        nonces=UnsafeRngNonceSource(np.random.default_rng([seed, 11])),
    )
    out: dict[str, AttestingDevice] = {}
    for dev_id, seg in devices:
        dev = AttestingDevice(SoftTpm(maker, rng, now, dev_id))
        dev.measure_firmware(firmware_digest(seg, dev_id in tampered))
        dev.measure_model(model_digest)
        did = DeviceId(dev_id)
        challenge = verifier.begin_enrolment(did, seg, dev.enrolment_request(), now)
        verifier.finish_enrolment(did, dev.activate(challenge), now)
        out[dev_id] = dev
    return SoftAttestation(verifier, out, trust)


def model_digest_of(params: Sequence[np.ndarray], describe: Callable[[], str]) -> bytes:
    h = hashlib.sha256(describe().encode())
    for p in params:
        h.update(np.ascontiguousarray(p, dtype="<f4").tobytes())
    return h.digest()
