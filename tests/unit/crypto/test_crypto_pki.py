"""Key, CSR and certificate parsing: garbage in -> CryptoError, never a crash or a half value."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ztfm.crypto.pki import (
    Certificate,
    CertificateRequest,
    PrivateKey,
    PublicKey,
    build_csr,
    issue_certificate,
    self_signed_ca,
)
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.errors import CryptoError

T0 = 1_800_000_000.0
URI = "spiffe://acme.example/segment/cams/role/device/id/cam-1"


@pytest.mark.parametrize("algo", ["p256", "ed25519"])
def test_sign_verify_round_trip(algo: str) -> None:
    key = PrivateKey.generate(algo)
    sig = key.sign(b"msg")
    assert key.public_key.verify(sig, b"msg") is None
    assert PublicKey.from_pem(key.public_key.to_pem()) == key.public_key
    assert PrivateKey.from_pem(key.to_pem()).public_key == key.public_key
    with pytest.raises(CryptoError):
        key.public_key.verify(sig, b"msh")
    with pytest.raises(CryptoError):
        key.public_key.verify(b"", b"msg")
    with pytest.raises(CryptoError):
        PrivateKey.generate().public_key.verify(sig, b"msg")


def test_rejects_other_curves_and_rsa() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(CryptoError, match="P-256"):
        PublicKey(der)
    rsa_pub = (
        rsa.generate_private_key(65537, 1024)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(CryptoError, match="unsupported"):
        PublicKey(rsa_pub)
    with pytest.raises(CryptoError):
        PrivateKey.generate("rsa")


@pytest.mark.parametrize("blob", [b"", b"\x00", b"-----BEGIN PUBLIC KEY-----\n", b"x" * 20000])
def test_garbage_public_keys(blob: bytes) -> None:
    with pytest.raises(CryptoError):
        PublicKey(blob)
    with pytest.raises(CryptoError):
        PublicKey.from_pem(blob)


@pytest.mark.parametrize("blob", [b"", b"\x30\x00", b"garbage", b"\x30" * 17000])
def test_garbage_certs_and_csrs(blob: bytes) -> None:
    with pytest.raises(CryptoError):
        Certificate(blob)
    with pytest.raises(CryptoError):
        Certificate.from_pem(blob)
    with pytest.raises(CryptoError):
        CertificateRequest(blob)


def test_private_key_pem_garbage() -> None:
    with pytest.raises(CryptoError):
        PrivateKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_certificate_fields_and_chain() -> None:
    ca_key = PrivateKey.generate()
    ca = self_signed_ca(ca_key, "ca", "spiffe://acme.example", T0, T0 + 1000)
    key = PrivateKey.generate()
    cert = issue_certificate(
        key.public_key,
        "cam-1",
        URI,
        ca_key,
        ca,
        T0,
        T0 + 100,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    assert cert.uris == (URI,) and not cert.is_ca and ca.is_ca
    assert cert.not_after - cert.not_before == 100
    assert cert.public_key == key.public_key
    assert Certificate.from_pem(cert.to_pem()) == cert
    assert cert.verify_issued_by(ca) is None
    other_key = PrivateKey.generate()
    other = self_signed_ca(other_key, "ca", "spiffe://acme.example", T0, T0 + 1000)
    with pytest.raises(CryptoError, match="not issued"):
        cert.verify_issued_by(other)
    with pytest.raises(CryptoError, match="not a CA"):
        cert.verify_issued_by(cert)
    with pytest.raises(CryptoError):
        issue_certificate(key.public_key, "x", URI, ca_key, ca, T0, T0)
    with pytest.raises(CryptoError):
        issue_certificate(
            key.public_key, "x", URI, ca_key, ca, T0, T0 + 1, ip_addresses=("not-an-ip",)
        )


def test_csr_challenge_and_pop() -> None:
    key = PrivateKey.generate()
    csr = build_csr(key, "cam-1", URI, challenge="tok")
    assert csr.challenge == "tok" and csr.uris == (URI,) and csr.public_key == key.public_key
    assert CertificateRequest.from_pem(csr.to_pem()) == csr
    flipped = bytearray(csr.der)
    flipped[-5] ^= 0xFF  # inside the signature
    with pytest.raises(CryptoError):
        CertificateRequest(bytes(flipped))


def test_ed25519_signing_api_unchanged() -> None:
    sk = SigningKey.from_seed(b"\x01" * 32)
    vk = sk.verify_key
    assert vk.verify(sk.sign(b"m"), b"m") is None
    with pytest.raises(CryptoError):
        vk.verify(sk.sign(b"m"), b"n")
    with pytest.raises(CryptoError):
        VerifyKey(b"short")
    assert SigningKey.from_pem(sk.to_pem()).verify_key == vk
