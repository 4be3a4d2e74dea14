"""Fuzz the attestation boundary: attacker bytes end in AttestationError, never a crash.

Also: flipping any single byte of a valid quote makes the verifier reject it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    EnrolmentRequest,
    QuoteEvidence,
    QuoteRejected,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.attestation.structures import QuoteInfo, TpmPublic, TpmSignature
from ztfm.errors import AttestationError
from ztfm.types import DeviceId

VEC: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "unit/attestation/vectors/swtpm_quote.json").read_text()
)
T0 = 1_800_000_000.0
FW = hashlib.sha256(b"fw").digest()
MODEL = hashlib.sha256(b"model").digest()


@given(st.binary(max_size=600))
def test_random_bytes_never_crash_parsers(data: bytes) -> None:
    for parser in (QuoteInfo.from_bytes, TpmPublic.from_bytes, TpmSignature.from_bytes):
        with contextlib.suppress(AttestationError):
            parser(data)


@given(st.data())
def test_mutated_real_structures_never_crash(data: st.DataObject) -> None:
    for key, parser in (
        (VEC["quote"]["attest"], QuoteInfo.from_bytes),
        (VEC["quote"]["signature"], TpmSignature.from_bytes),
        (VEC["enrolment"]["ak_public"], TpmPublic.from_bytes),
        (VEC["enrolment"]["ek_public"], TpmPublic.from_bytes),
    ):
        raw = bytearray(bytes.fromhex(key))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        with contextlib.suppress(AttestationError):
            parser(bytes(raw[:cut]))


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                         max_size=4),
                    max_leaves=10))  # fmt: skip
def test_random_json_never_crashes_from_dict(obj: Any) -> None:
    for cls in (QuoteEvidence, EnrolmentRequest):
        with contextlib.suppress(AttestationError):
            cls.from_dict(obj)


def _world() -> tuple[AttestationVerifier, AttestingDevice]:
    rng = np.random.default_rng(5)
    maker = SoftManufacturer(rng, T0)
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=ReferenceValues().with_firmware("t", "1", FW).with_models([MODEL]),
        nonces=UnsafeRngNonceSource(np.random.default_rng(6)),
    )
    dev = AttestingDevice(SoftTpm(maker, rng, T0))
    dev.measure_firmware(FW)
    dev.measure_model(MODEL)
    ch = verifier.begin_enrolment(DeviceId("d"), "t", dev.enrolment_request(), T0)
    verifier.finish_enrolment(DeviceId("d"), dev.activate(ch), T0)
    return verifier, dev


WORLD = _world()


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(field=st.sampled_from(["attest", "signature"]), pos=st.integers(0, 10_000),
       bit=st.integers(0, 7))  # fmt: skip
def test_any_single_bit_flip_is_rejected(field: str, pos: int, bit: int) -> None:
    verifier, dev = WORLD
    nonce = verifier.issue_nonce(DeviceId("d"), T0 + 1)
    ev = dev.quote(nonce)
    raw = bytearray(getattr(ev, field))
    raw[pos % len(raw)] ^= 1 << bit
    bad = QuoteEvidence(**{**{"attest": ev.attest, "signature": ev.signature, "log": ev.log},
                           field: bytes(raw)})  # fmt: skip
    try:
        verifier.check_quote(DeviceId("d"), bad, T0 + 2)
    except QuoteRejected:
        return
    raise AssertionError("a tampered quote was accepted")
