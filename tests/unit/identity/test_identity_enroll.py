"""Enrolment with one-time tokens, renewal, revocation-list handling, file-backed CA state."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from idfix import FLEET, T0

from ztfm.crypto.pki import CertificateRequest, PrivateKey, build_csr
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity import (
    CertValidator,
    FileKeyStore,
    FleetCA,
    Identity,
    MemoryKeyStore,
    Renewer,
    RevocationChecker,
    SignedRevocationList,
)
from ztfm.identity.revocation import RevocationList
from ztfm.identity.store import init_ca, load_ca, save_ca

IDENT = Identity(FLEET, "cams", "device", "cam-42")


@pytest.fixture
def fresh_ca() -> FleetCA:
    return FleetCA.create(FLEET, T0 - 100)


def test_enroll_with_token(fresh_ca: FleetCA) -> None:
    token = fresh_ca.create_token(IDENT, T0)
    keys = MemoryKeyStore()
    ident, cert = fresh_ca.enroll(keys.make_csr(IDENT, token), T0)
    assert ident == IDENT and cert.public_key == keys.public_key
    assert cert.not_after - T0 == pytest.approx(3600, abs=1)


def test_token_is_one_time(fresh_ca: FleetCA) -> None:
    token = fresh_ca.create_token(IDENT, T0)
    fresh_ca.enroll(MemoryKeyStore().make_csr(IDENT, token), T0)
    with pytest.raises(IdentityError, match="unknown or already used"):
        fresh_ca.enroll(MemoryKeyStore().make_csr(IDENT, token), T0)


def test_expired_token(fresh_ca: FleetCA) -> None:
    token = fresh_ca.create_token(IDENT, T0, ttl_s=10)
    with pytest.raises(IdentityError, match="expired"):
        fresh_ca.enroll(MemoryKeyStore().make_csr(IDENT, token), T0 + 11)


def test_token_for_another_identity(fresh_ca: FleetCA) -> None:
    token = fresh_ca.create_token(IDENT, T0)
    other = Identity(FLEET, "plc", "gateway", "cam-42")
    with pytest.raises(IdentityError, match="different identity"):
        fresh_ca.enroll(MemoryKeyStore().make_csr(other, token), T0)


def test_missing_or_wrong_token(fresh_ca: FleetCA) -> None:
    with pytest.raises(IdentityError, match="no enrolment token"):
        fresh_ca.enroll(MemoryKeyStore().make_csr(IDENT), T0)
    with pytest.raises(IdentityError, match="unknown"):
        fresh_ca.enroll(MemoryKeyStore().make_csr(IDENT, "guess"), T0)


def test_malformed_csr() -> None:
    with pytest.raises(CryptoError):
        CertificateRequest(b"\x30\x03\x02\x01\x00")
    with pytest.raises(CryptoError):
        CertificateRequest.from_pem(b"-----BEGIN CERTIFICATE REQUEST-----\nZZ\n-----END")
    with pytest.raises(CryptoError):
        CertificateRequest(b"")
    with pytest.raises(CryptoError):
        CertificateRequest(b"\x00" * 20000)


def test_csr_with_a_key_the_device_does_not_hold() -> None:
    """Splice someone else's public key into a CSR: the self-signature no longer verifies."""
    mine = build_csr(PrivateKey.generate(), "x", IDENT.uri)
    victim_spki = PrivateKey.generate().public_key.spki_der
    my_spki = mine.public_key.spki_der
    assert my_spki in mine.der
    forged = mine.der.replace(my_spki, victim_spki)
    with pytest.raises(CryptoError, match=r"proof of possession|signature"):
        CertificateRequest(forged)


def test_renewal(fresh_ca: FleetCA) -> None:
    keys = MemoryKeyStore()
    cert = fresh_ca.issue(keys.make_csr(IDENT), IDENT, T0)
    chk = RevocationChecker(fresh_ca.cert.public_key, FLEET)
    val = CertValidator(fresh_ca.cert, FLEET, chk)
    t = T0 + 3000
    chk.update(fresh_ca.publish_revocations(t), t)
    renewer = Renewer(keys, IDENT, val, lambda csr: fresh_ca.renew(csr, IDENT, t))
    assert renewer.maybe_renew(cert, T0 + 10) is cert
    new = renewer.maybe_renew(cert, t)
    assert new.not_after > cert.not_after and new.public_key == keys.public_key


def test_renewal_rejects_wrong_cert(fresh_ca: FleetCA) -> None:
    keys = MemoryKeyStore()
    cert = fresh_ca.issue(keys.make_csr(IDENT), IDENT, T0)
    chk = RevocationChecker(fresh_ca.cert.public_key, FLEET)
    val = CertValidator(fresh_ca.cert, FLEET, chk)
    t = T0 + 3000
    chk.update(fresh_ca.publish_revocations(t), t)
    other = MemoryKeyStore()

    def evil(csr: CertificateRequest) -> object:
        return fresh_ca.issue(other.make_csr(IDENT), IDENT, t)

    with pytest.raises(IdentityError, match="different key"):
        Renewer(keys, IDENT, val, evil).maybe_renew(cert, t)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="renewal CSR"):
        fresh_ca.renew(keys.make_csr(Identity(FLEET, "cams", "device", "cam-43")), IDENT, t)


# --- revocation lists ---------------------------------------------------------------------------
def test_revocation_list_round_trip_and_rollback(fresh_ca: FleetCA) -> None:
    chk = RevocationChecker(fresh_ca.cert.public_key, FLEET)
    l1 = fresh_ca.publish_revocations(T0)
    l2 = fresh_ca.publish_revocations(T0 + 1)
    chk.update(SignedRevocationList.from_bytes(l2.to_bytes()), T0 + 1)
    with pytest.raises(IdentityError, match="rollback"):
        chk.update(l1, T0 + 1)


def test_revocation_list_forged(fresh_ca: FleetCA) -> None:
    other = FleetCA.create(FLEET, T0 - 100)
    chk = RevocationChecker(fresh_ca.cert.public_key, FLEET)
    with pytest.raises(IdentityError, match="signature"):
        chk.update(other.publish_revocations(T0), T0)
    good = fresh_ca.publish_revocations(T0)
    tampered = SignedRevocationList(
        RevocationList(FLEET, good.body.version, T0, T0 + 1e6, frozenset(), frozenset()),
        good.signature,
    )
    with pytest.raises(IdentityError, match="signature"):
        chk.update(tampered, T0)


def test_revocation_list_stale_or_future(fresh_ca: FleetCA) -> None:
    chk = RevocationChecker(fresh_ca.cert.public_key, FLEET)
    with pytest.raises(IdentityError, match="stale"):
        chk.update(fresh_ca.publish_revocations(T0, ttl_s=100), T0 + 200)
    with pytest.raises(IdentityError, match="future"):
        chk.update(fresh_ca.publish_revocations(T0 + 500), T0)


def test_revocation_list_cannot_unrevoke(fresh_ca: FleetCA) -> None:
    keys = MemoryKeyStore()
    cert = fresh_ca.issue(keys.make_csr(IDENT), IDENT, T0)
    fresh_ca.revoke_serial(cert.serial)
    chk = RevocationChecker(fresh_ca.cert.public_key, FLEET)
    chk.update(fresh_ca.publish_revocations(T0), T0)
    fresh_ca.revoked_serials.clear()
    with pytest.raises(IdentityError, match="un-revoke"):
        chk.update(fresh_ca.publish_revocations(T0 + 1), T0 + 1)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not json",
        b"[]",
        b'{"list": {}, "signature": "00"}',
        b'{"list": 1}',
        b'{"list": {"fleet": "f", "version": -1, "issued_at": 0, "next_update": 1,'
        b' "serials": [], "identities": []}, "signature": "00"}',
        b'{"list": {"fleet": "f", "version": 1, "issued_at": 0, "next_update": 1,'
        b' "serials": [5], "identities": []}, "signature": "00"}',
        b'{"list": {"fleet": "f", "version": 1, "issued_at": 0, "next_update": 1,'
        b' "serials": [], "identities": ["http://x"]}, "signature": "00"}',
        b'{"list": {"fleet": "f", "version": 1, "issued_at": 0, "next_update": 1,'
        b' "serials": [], "identities": []}, "signature": "zz"}',
    ],
)
def test_malformed_revocation_lists(blob: bytes) -> None:
    with pytest.raises(IdentityError):
        SignedRevocationList.from_bytes(blob)


# --- on-disk state ------------------------------------------------------------------------------
def test_ca_directory_round_trip(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = init_ca(d, FLEET, T0)
    assert stat.S_IMODE(os.stat(d / "ca.key").st_mode) == 0o600
    token = ca.create_token(IDENT, T0)
    save_ca(d, ca)
    again = load_ca(d)
    assert again.cert == ca.cert
    _ident, cert = again.enroll(MemoryKeyStore().make_csr(IDENT, token), T0)
    again.revoke_serial(cert.serial)
    save_ca(d, again)
    third = load_ca(d)
    assert cert.serial in third.revoked_serials and not third.tokens


def test_ca_init_refuses_existing(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", FLEET, T0)
    with pytest.raises(IdentityError, match="not empty"):
        init_ca(tmp_path / "ca", FLEET, T0)


def test_ca_load_refuses_loose_key_and_corrupt_state(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    init_ca(d, FLEET, T0)
    os.chmod(d / "ca.key", 0o644)
    with pytest.raises(IdentityError, match="readable"):
        load_ca(d)
    os.chmod(d / "ca.key", 0o600)
    (d / "state.json").write_text("{torn")
    with pytest.raises(IdentityError, match="corrupt"):
        load_ca(d)
    (d / "state.json").unlink()
    with pytest.raises(IdentityError, match="missing"):
        load_ca(d)


def test_file_keystore(tmp_path: Path) -> None:
    ks = FileKeyStore(tmp_path / "dev" / "key.pem")
    assert stat.S_IMODE(os.stat(tmp_path / "dev" / "key.pem").st_mode) == 0o600
    again = FileKeyStore(tmp_path / "dev" / "key.pem")
    assert again.public_key == ks.public_key
    os.chmod(tmp_path / "dev" / "key.pem", 0o640)
    with pytest.raises(IdentityError, match="readable"):
        FileKeyStore(tmp_path / "dev" / "key.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"nope")
    os.chmod(bad, 0o600)
    with pytest.raises(IdentityError, match="not a valid key"):
        FileKeyStore(bad)


def test_ca_transaction_saves_only_on_success(tmp_path: Path) -> None:
    from ztfm.identity.store import ca_transaction

    d = tmp_path / "ca"
    init_ca(d, FLEET, T0)
    with ca_transaction(d) as ca:
        ca.create_token(IDENT, T0)
    assert len(load_ca(d).tokens) == 1
    with pytest.raises(RuntimeError), ca_transaction(d) as ca:
        ca.create_token(IDENT, T0)
        raise RuntimeError("operator aborted")
    assert len(load_ca(d).tokens) == 1
    with pytest.raises(IdentityError, match="missing"), ca_transaction(tmp_path / "nope"):
        pass


def test_directory_lock_does_not_lose_cli_changes(tmp_path: Path) -> None:
    from ztfm.identity.store import CaDirectoryLock, ca_transaction

    d = tmp_path / "ca"
    init_ca(d, FLEET, T0)
    held = load_ca(d)  # a long-running server holds this copy
    lock = CaDirectoryLock(held, d)
    with ca_transaction(d) as cli:  # meanwhile the operator revokes with the CLI
        cli.revoke_identity(IDENT)
    with lock as ca:  # the server's next change first reloads...
        assert IDENT.uri in ca.revoked_identities
        ca.publish_revocations(T0)
    again = load_ca(d)  # ...and then saves both changes
    assert IDENT.uri in again.revoked_identities and again.crl_version == 1
    # a directory that now holds a different CA is refused
    other = tmp_path / "other"
    init_ca(other, FLEET, T0)
    with pytest.raises(IdentityError, match="different CA"), CaDirectoryLock(held, other):
        pass


def test_a_device_id_is_unique_across_segments_even_after_revocation(fresh_ca: FleetCA) -> None:
    """Peers know a device by its id (SecAgg neighbours check endorsements by id): a second
    certificate for the same id in another segment would speak for the first device."""
    token = fresh_ca.create_token(IDENT, T0)
    fresh_ca.enroll(MemoryKeyStore().make_csr(IDENT, token), T0)
    twin = Identity(FLEET, "lab", "device", "cam-42")
    with pytest.raises(IdentityError, match="unique in a fleet"):
        fresh_ca.create_token(twin, T0)
    with pytest.raises(IdentityError, match="unique in a fleet"):
        fresh_ca.issue(MemoryKeyStore().make_csr(twin), twin, T0)
    fresh_ca.revoke_identity(IDENT)
    with pytest.raises(IdentityError, match="unique in a fleet"):
        fresh_ca.create_token(twin, T0)
    # the same device id under another role is another principal (a gateway named alike)
    fresh_ca.create_token(Identity(FLEET, "lab", "gateway", "cam-42"), T0)
