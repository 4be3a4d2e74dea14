"""Real swtpm evidence (recorded by record_swtpm_vectors.py) through the verifier, offline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ztfm.attestation import (
    AttestationVerifier,
    EnrolledDevice,
    EnrolmentRequest,
    QuoteEvidence,
    QuoteRejected,
    ReferenceValues,
    SoftManufacturer,
)
from ztfm.attestation.structures import TpmPublic
from ztfm.errors import AttestationError
from ztfm.types import DeviceId

VEC: dict[str, Any] = json.loads(
    (Path(__file__).with_name("vectors") / "swtpm_quote.json").read_text()
)
NOW = float(VEC["recorded_at"])
DEV = DeviceId("swtpm-recorded")
FW = bytes.fromhex(VEC["firmware_digest"])
MODEL = bytes.fromhex(VEC["model_digest"])


class _Fixed:
    """Nonce source that hands out the recorded nonce (and fixed secrets)."""

    def token(self, n: int) -> bytes:
        return bytes.fromhex(VEC["nonce"])[:n].ljust(n, b"\x00")


def _verifier(ref: ReferenceValues | None = None) -> AttestationVerifier:
    ref = ref or ReferenceValues().with_firmware("gw", "1.0.0", FW).with_models([MODEL])
    return AttestationVerifier(
        manufacturer_roots=[VEC["root_pem"].encode()],
        intermediates=[VEC["issuer_pem"].encode()],
        reference=ref,
        nonces=_Fixed(),
    )


def _enrolled(v: AttestationVerifier) -> None:
    req = EnrolmentRequest.from_dict(VEC["enrolment"])
    v.begin_enrolment(DEV, "gw", req, NOW)  # real EK cert chain check
    v.restore_enrolment(
        EnrolledDevice(DEV, "gw", TpmPublic.from_bytes(req.ak_public), "fp", "root", True, NOW)
    )


def test_recorded_swtpm_quote_verifies() -> None:
    v = _verifier()
    _enrolled(v)
    v.issue_nonce(DEV, NOW)
    verdict = v.check_quote(DEV, QuoteEvidence.from_dict(VEC["quote"]), NOW + 1)
    assert verdict.ok and verdict.firmware_version == "1.0.0"


def test_recorded_quote_against_tighter_allow_list_fails() -> None:
    ref = ReferenceValues().with_firmware("gw", "2.0.0", b"\x01" * 32).with_models([MODEL])
    v = _verifier(ref)
    _enrolled(v)
    v.issue_nonce(DEV, NOW)
    with pytest.raises(QuoteRejected) as info:
        v.check_quote(DEV, QuoteEvidence.from_dict(VEC["quote"]), NOW + 1)
    assert info.value.reason == "firmware"


def test_recorded_quote_with_tampered_model_log_fails() -> None:
    v = _verifier()
    _enrolled(v)
    v.issue_nonce(DEV, NOW)
    ev = QuoteEvidence.from_dict(VEC["quote"])
    ev = dataclasses.replace(ev, log=ev.log[:1])
    with pytest.raises(QuoteRejected) as info:
        v.check_quote(DEV, ev, NOW + 1)
    assert info.value.reason == "pcr_log"


def test_swtpm_ek_cert_rejected_without_its_ca() -> None:
    maker = SoftManufacturer(np.random.default_rng(0), NOW)
    v = AttestationVerifier(
        manufacturer_roots=[maker.root_certificate],
        reference=ReferenceValues(),
        nonces=_Fixed(),
    )
    with pytest.raises(AttestationError, match="does not chain"):
        v.begin_enrolment(DEV, "gw", EnrolmentRequest.from_dict(VEC["enrolment"]), NOW)


def test_swtpm_ek_cert_rejected_without_intermediate() -> None:
    v = AttestationVerifier(
        manufacturer_roots=[VEC["root_pem"].encode()],
        reference=ReferenceValues(),
        nonces=_Fixed(),
    )
    with pytest.raises(AttestationError, match="does not chain"):
        v.begin_enrolment(DEV, "gw", EnrolmentRequest.from_dict(VEC["enrolment"]), NOW)


def test_pem_bundle_of_root_and_intermediate_is_accepted() -> None:
    bundle = (VEC["root_pem"] + VEC["issuer_pem"]).encode()
    v = AttestationVerifier(
        manufacturer_roots=[bundle], reference=ReferenceValues(), nonces=_Fixed()
    )
    v.begin_enrolment(DEV, "gw", EnrolmentRequest.from_dict(VEC["enrolment"]), NOW)
