"""Attestation in ``ztfm simulate``: every device gets a software TPM (``SoftTpm``, the same
evidence format and the same verifier as a real TPM or swtpm), is enrolled (EK certificate
chain, AK bound by make/activate credential), and must answer a fresh nonce with a valid quote
before every round. A device whose firmware measurement is not on the allow-list for its
device type is excluded with the verifier's reason, and its trust (when enabled) drops.

The model measurement is the signed bundle each device verified and loaded (``sim/release.py``:
the initial model and every round's model are released on the ledger); the golden values follow
the releases (the newest two are allowed). Enrolments and every verdict are ledger entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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
from ztfm.bundle import Bundle
from ztfm.ledger import EntryKind
from ztfm.sim.release import FleetReleases
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
    ledger: FleetReleases | None = None
    models: list[bytes] = field(default_factory=list)

    def install(self, device_id: str, bundle: Bundle) -> None:
        """``device_id`` verified and loaded ``bundle``: measure it into its model PCR."""
        self.devices[device_id].measure_model(bundle.measurement(), f"model:v{bundle.version}")

    def allow_model(self, measurement: bytes) -> None:
        self.models = [*self.models, measurement][-2:]
        self.verifier.reference = self.verifier.reference.with_models(self.models)

    def gate(self, device_id: str, now: float) -> str | None:
        did = DeviceId(device_id)
        nonce = self.verifier.issue_nonce(did, now)
        evidence = self.devices[device_id].quote(nonce)
        verdict = self.verifier.assess_quote(did, evidence, now)
        self.verdicts.append(
            {"device": device_id, "ok": verdict.ok, "reason": verdict.reason, "at": now}
        )
        if self.ledger is not None:
            self.ledger.record(EntryKind.ATTESTATION_VERDICT, verdict.ledger_body(), now)
        if self.trust is not None:
            self.trust.observe_attestation(did, verdict.ok, now, detail=verdict.reason)
        if verdict.ok:
            return None
        return f"attestation failed: {verdict.reason}"


def build_soft_attestation(
    devices: Sequence[tuple[str, str]],
    model_digest: bytes | None,
    tampered: set[str],
    seed: int,
    now: float,
    trust: TrustManager | None = None,
    ledger: FleetReleases | None = None,
) -> SoftAttestation:
    """Enrol every (device id, segment) with its own SoftTpm; ``tampered`` ones boot altered
    firmware. ``model_digest`` None: models are measured as bundles are installed
    (``SoftAttestation.install``); ``ledger`` records enrolments and verdicts."""
    rng = np.random.default_rng([seed, 10])
    maker = SoftManufacturer(rng, now)
    ref = ReferenceValues()
    for seg in sorted({s for _, s in devices}):
        ref = ref.with_firmware(seg, FIRMWARE_VERSION, firmware_digest(seg))
    if model_digest is not None:
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
        if model_digest is not None:
            dev.measure_model(model_digest)
        did = DeviceId(dev_id)
        challenge = verifier.begin_enrolment(did, seg, dev.enrolment_request(), now)
        enrolled = verifier.finish_enrolment(did, dev.activate(challenge), now)
        if ledger is not None:
            ledger.record(EntryKind.ENROLMENT, enrolled.ledger_body(), now)
        out[dev_id] = dev
    return SoftAttestation(verifier, out, trust, ledger=ledger)
