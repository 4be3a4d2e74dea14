"""Certificate validation: one positive path, many ways to be rejected."""

from __future__ import annotations

import pytest
from idfix import FLEET, T0, Device, make_device

from ztfm.crypto.pki import Certificate, PrivateKey, build_csr, issue_certificate
from ztfm.errors import IdentityError
from ztfm.identity import (
    CertValidator,
    FleetCA,
    Identity,
    MemoryKeyStore,
    RevocationChecker,
    needs_renewal,
)


def test_valid_cert_yields_identity(validator: CertValidator, cam1: Device) -> None:
    assert validator.validate(cam1.cert, T0) == cam1.identity
    assert validator.validate(cam1.cert.to_pem(), T0) == cam1.identity
    assert validator.validate(cam1.cert.der, T0) == cam1.identity


def test_cert_from_another_ca(validator: CertValidator, other_ca: FleetCA) -> None:
    dev = make_device(other_ca, "cam-9")
    with pytest.raises(IdentityError, match="not issued by the fleet CA"):
        validator.validate(dev.cert, T0)


def test_expired(validator: CertValidator, cam1: Device) -> None:
    with pytest.raises(IdentityError, match="expired"):
        validator.validate(cam1.cert, cam1.cert.not_after + 61)


def test_expired_within_skew_is_accepted(
    ca: FleetCA, checker: RevocationChecker, validator: CertValidator, cam1: Device
) -> None:
    later = cam1.cert.not_after + 59
    checker.update(ca.publish_revocations(later), later)
    assert validator.validate(cam1.cert, later) == cam1.identity


def test_not_yet_valid_beyond_skew(validator: CertValidator, ca: FleetCA) -> None:
    dev = make_device(ca, "cam-future", now=T0 + 500)
    with pytest.raises(IdentityError, match="not yet valid"):
        validator.validate(dev.cert, T0)


def test_revoked_serial(ca: FleetCA, validator: CertValidator, checker: RevocationChecker) -> None:
    dev = make_device(ca, "cam-rev")
    ca.revoke_serial(dev.cert.serial)
    checker.update(ca.publish_revocations(T0 + 1), T0 + 1)
    with pytest.raises(IdentityError, match="revoked"):
        validator.validate(dev.cert, T0 + 1)


def test_revoked_identity_blocks_new_certs(
    ca: FleetCA, checker: RevocationChecker, validator: CertValidator
) -> None:
    dev = make_device(ca, "cam-bad")
    ca.revoke_identity(dev.identity)
    checker.update(ca.publish_revocations(T0 + 2), T0 + 2)
    with pytest.raises(IdentityError, match="revoked"):
        validator.validate(dev.cert, T0 + 2)
    with pytest.raises(IdentityError, match="revoked"):
        ca.issue(dev.keys.make_csr(dev.identity), dev.identity, T0 + 3)


def test_stale_revocation_list_fails_closed(validator: CertValidator, cam1: Device) -> None:
    # the fixture list is valid for 600 s from T0; far beyond that plus skew it is stale
    with pytest.raises(IdentityError, match="stale"):
        validator.validate(cam1.cert, T0 + 3000)


def test_no_revocation_list_fails_closed(ca: FleetCA, cam1: Device) -> None:
    v = CertValidator(ca.cert, FLEET, RevocationChecker(ca.cert.public_key, FLEET))
    with pytest.raises(IdentityError, match="no revocation list"):
        v.validate(cam1.cert, T0)


def test_wrong_uri_scheme(ca: FleetCA, validator: CertValidator) -> None:
    key = PrivateKey.generate()
    cert = issue_certificate(
        key.public_key, "x", "https://evil.example/x", ca.key, ca.cert, T0 - 10, T0 + 100
    )
    with pytest.raises(IdentityError, match="spiffe"):
        validator.validate(cert, T0)


def test_uri_for_another_fleet(ca: FleetCA, validator: CertValidator) -> None:
    key = PrivateKey.generate()
    uri = "spiffe://other.example/segment/cams/role/device/id/cam-1"
    cert = issue_certificate(key.public_key, "x", uri, ca.key, ca.cert, T0 - 10, T0 + 100)
    with pytest.raises(IdentityError, match="fleet"):
        validator.validate(cert, T0)


def test_ca_cert_is_not_an_identity(ca: FleetCA, validator: CertValidator) -> None:
    with pytest.raises(IdentityError, match="CA certificate"):
        validator.validate(ca.cert, T0)


def test_garbage_cert_bytes(validator: CertValidator) -> None:
    with pytest.raises(IdentityError, match="malformed"):
        validator.validate(b"\x30\x82garbage", T0)
    with pytest.raises(IdentityError, match="malformed"):
        validator.validate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", T0)


def test_self_signed_impostor_with_same_name(validator: CertValidator) -> None:
    impostor = FleetCA.create(FLEET, T0 - 10)
    dev = make_device(impostor, "cam-1")
    with pytest.raises(IdentityError):
        validator.validate(dev.cert, T0)


def test_needs_renewal() -> None:
    ca = FleetCA.create(FLEET, T0 - 10)
    dev = make_device(ca, "r1", ttl_s=3600)
    assert not needs_renewal(dev.cert, T0)
    assert not needs_renewal(dev.cert, T0 + 2000, margin_s=600)
    assert needs_renewal(dev.cert, T0 + 3100, margin_s=600)
    assert needs_renewal(dev.cert, T0 + 2500)  # default margin: last third of the lifetime
    with pytest.raises(IdentityError):
        needs_renewal(dev.cert, T0, margin_s=-1)


def test_csr_for_another_identity_is_refused(ca: FleetCA) -> None:
    ident = Identity(FLEET, "cams", "device", "cam-x")
    other = Identity(FLEET, "cams", "device", "cam-y")
    keys = MemoryKeyStore()
    with pytest.raises(IdentityError, match="CSR does not name"):
        ca.issue(keys.make_csr(other), ident, T0)


def test_csr_with_two_uris_is_refused(ca: FleetCA) -> None:
    from ztfm.crypto.pki import CertificateRequest

    ident = Identity(FLEET, "cams", "device", "cam-x")
    csr = build_csr(PrivateKey.generate(), "x", ident.uri)
    assert isinstance(csr, CertificateRequest)
    with pytest.raises(IdentityError):
        ca.issue(csr, Identity(FLEET, "cams", "gateway", "cam-x"), T0)


def test_issue_refuses_excessive_ttl(ca: FleetCA) -> None:
    ident = Identity(FLEET, "cams", "device", "cam-x")
    with pytest.raises(IdentityError, match="TTL"):
        ca.issue(MemoryKeyStore().make_csr(ident), ident, T0, ttl_s=365 * 86400)


def test_ca_rejects_mismatched_key() -> None:
    ca = FleetCA.create(FLEET, T0)
    with pytest.raises(IdentityError, match="does not match"):
        FleetCA(PrivateKey.generate(), ca.cert, FLEET)
    with pytest.raises(IdentityError, match="not for fleet"):
        FleetCA(ca.key, ca.cert, "other.example")


def test_validator_needs_a_ca_cert(cam1: Device, ca: FleetCA) -> None:
    chk = RevocationChecker(ca.cert.public_key, FLEET)
    with pytest.raises(IdentityError):
        CertValidator(cam1.cert, FLEET, chk)
    assert isinstance(cam1.cert, Certificate)
