"""TPM-resident request-signing key: certified by the AK over a fresh nonce, then used to sign."""

from __future__ import annotations

import dataclasses

import pytest
from attfix import T0, SoftFleet

from ztfm.attestation import KeyCertification
from ztfm.attestation.structures import CertifyInfo, TpmSignature
from ztfm.crypto.tpm import EccP256Key
from ztfm.errors import AttestationError, CryptoError
from ztfm.types import DeviceId

CAM = DeviceId("cam-1")


def _certify(fleet: SoftFleet, name: str = "cam-1", at: float = T0 + 5) -> KeyCertification:
    nonce = fleet.verifier.issue_nonce(DeviceId(name), at)
    return fleet.devices[name].certify_request_key(nonce)


def test_certified_key_verifies_device_signatures(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    key = fleet.verifier.certify_request_key(CAM, _certify(fleet), T0 + 6)
    assert fleet.verifier.request_key(CAM) == key
    key.verify(dev.sign_request(b"round 7 update digest"), b"round 7 update digest")
    with pytest.raises(CryptoError):
        key.verify(dev.sign_request(b"round 7 update digest"), b"round 8 update digest")


def test_signature_by_another_devices_key_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    other = fleet.enrol("cam-2")
    key = fleet.verifier.certify_request_key(CAM, _certify(fleet), T0 + 6)
    with pytest.raises(CryptoError):
        key.verify(other.sign_request(b"m"), b"m")


@pytest.mark.parametrize("sig", [b"", b"\x00" * 10, TpmSignature.build_ecdsa(1, 1)[:-1]])
def test_malformed_request_signature_is_rejected(fleet: SoftFleet, sig: bytes) -> None:
    fleet.enrol("cam-1")
    key = fleet.verifier.certify_request_key(CAM, _certify(fleet), T0 + 6)
    with pytest.raises(CryptoError):
        key.verify(sig, b"m")


def test_certification_with_wrong_nonce_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    fleet.verifier.issue_nonce(CAM, T0 + 5)
    with pytest.raises(AttestationError, match="not issued"):
        fleet.verifier.certify_request_key(CAM, dev.certify_request_key(b"\x09" * 32), T0 + 6)


def test_stale_certification_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    with pytest.raises(AttestationError, match="stale"):
        fleet.verifier.certify_request_key(CAM, _certify(fleet, at=T0 + 5), T0 + 100)


def test_certification_by_another_devices_ak_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    other = fleet.enrol("cam-2")
    nonce = fleet.verifier.issue_nonce(CAM, T0 + 5)
    with pytest.raises(AttestationError, match="enrolled AK"):
        fleet.verifier.certify_request_key(CAM, other.certify_request_key(nonce), T0 + 6)


def test_swapped_key_public_is_rejected(fleet: SoftFleet) -> None:
    """The AK certified one key; the device presents another (e.g. a software key)."""
    fleet.enrol("cam-1")
    other = fleet.device("cam-2")
    cert = dataclasses.replace(_certify(fleet), key_public=other.tpm.signing_key_public())
    with pytest.raises(AttestationError, match="not the presented request key"):
        fleet.verifier.certify_request_key(CAM, cert, T0 + 6)


def test_restricted_key_is_not_a_request_key(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    cert = dataclasses.replace(_certify(fleet), key_public=dev.tpm.ak_public())
    with pytest.raises(AttestationError, match="unrestricted"):
        fleet.verifier.certify_request_key(CAM, cert, T0 + 6)


def test_forged_certification_signature_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    cert = _certify(fleet)
    r, s = EccP256Key.from_entropy(b"\x05" * 48).sign_sha256(cert.attest)
    forged = dataclasses.replace(cert, signature=TpmSignature.build_ecdsa(r, s))
    with pytest.raises(AttestationError, match="does not verify"):
        fleet.verifier.certify_request_key(CAM, forged, T0 + 6)


def test_quote_is_not_a_certification(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    nonce = fleet.verifier.issue_nonce(CAM, T0 + 5)
    quote = dev.quote(nonce)
    cert = KeyCertification(dev.tpm.signing_key_public(), quote.attest, quote.signature)
    with pytest.raises(AttestationError, match="not a certification"):
        fleet.verifier.certify_request_key(CAM, cert, T0 + 6)


def test_unenrolled_or_revoked_device_has_no_request_key(fleet: SoftFleet) -> None:
    with pytest.raises(AttestationError, match="not enrolled"):
        fleet.verifier.certify_request_key(CAM, KeyCertification(b"k", b"a", b"s"), T0)
    fleet.enrol("cam-1")
    fleet.verifier.certify_request_key(CAM, _certify(fleet), T0 + 6)
    fleet.verifier.revoke(CAM)
    with pytest.raises(AttestationError, match="no certified"):
        fleet.verifier.request_key(CAM)


def test_certification_record_round_trips(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    cert = _certify(fleet)
    assert KeyCertification.from_dict(cert.to_dict()) == cert
    info = CertifyInfo.from_bytes(cert.attest)
    assert len(info.name) == 34
    with pytest.raises(AttestationError):
        CertifyInfo.from_bytes(cert.attest + b"\x00")
    with pytest.raises(AttestationError):
        KeyCertification.from_dict({"key_public": "zz", "attest": "00", "signature": "00"})
