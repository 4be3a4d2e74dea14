"""ztfm.crypto.tpm: KDFs and MakeCredential cross-checked with tpm2-pytss; chains; signatures."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from attfix import T0
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ztfm.attestation import SoftManufacturer, SoftTpm
from ztfm.crypto import tpm as ct
from ztfm.errors import CryptoError

NAME = b"\x00\x0b" + hashlib.sha256(b"some AK").digest()


def test_kdfa_matches_tpm2_pytss() -> None:
    pytss = pytest.importorskip("tpm2_pytss.internal.crypto")
    from tpm2_pytss.constants import TPM2_ALG

    key, u, v = os.urandom(32), os.urandom(34), os.urandom(7)
    for bits in (128, 256, 520):
        ours = ct.kdfa(key, b"STORAGE", u, v, bits)
        assert ours == pytss._kdfa(TPM2_ALG.SHA256, key, b"STORAGE", u, v, bits)


def test_kdfe_matches_tpm2_pytss() -> None:
    pytss = pytest.importorskip("tpm2_pytss.internal.crypto")
    from tpm2_pytss.constants import TPM2_ALG

    z, u, v = os.urandom(32), os.urandom(32), os.urandom(32)
    assert ct.kdfe(z, b"IDENTITY", u, v, 256) == pytss.kdfe(
        TPM2_ALG.SHA256, z, b"IDENTITY\x00", u, v, 256
    )


@pytest.mark.parametrize("bits", [0, -8, 12])
def test_kdf_bad_sizes(bits: int) -> None:
    with pytest.raises(CryptoError):
        ct.kdfa(b"k", b"L", b"", b"", bits)
    with pytest.raises(CryptoError):
        ct.kdfe(b"z", b"L", b"", b"", bits)


def _ecc_ek() -> ct.EccP256Key:
    return ct.EccP256Key.from_entropy(bytes(range(48)))


def test_tpm2_pytss_make_credential_activates_on_soft_ek() -> None:
    """Interop: a blob made by tpm2-pytss for an ECC EK opens with our device half."""
    pytest.importorskip("tpm2_pytss")
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential

    ek = _ecc_ek()
    attrs = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
    pub = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs)
    pub.publicArea.unique.ecc.x = ek.public.x.to_bytes(32, "big")
    pub.publicArea.unique.ecc.y = ek.public.y.to_bytes(32, "big")
    blob, secret = make_credential(pub, b"interop secret", TPM2B_NAME(NAME))
    assert ek.activate_credential(NAME, bytes(blob), bytes(secret)) == b"interop secret"


def test_ecc_make_activate_round_trip() -> None:
    ek = _ecc_ek()
    w = ct.make_credential_ecc(ek.public, NAME, b"s" * 32, os.urandom(48))
    assert ek.activate_credential(NAME, w.credential_blob, w.encrypted_secret) == b"s" * 32


def test_ecc_activation_for_another_name_fails() -> None:
    ek = _ecc_ek()
    w = ct.make_credential_ecc(ek.public, NAME, b"s" * 32, os.urandom(48))
    other = b"\x00\x0b" + hashlib.sha256(b"other AK").digest()
    with pytest.raises(CryptoError, match="integrity"):
        ek.activate_credential(other, w.credential_blob, w.encrypted_secret)


def test_ecc_activation_with_another_ek_fails() -> None:
    w = ct.make_credential_ecc(_ecc_ek().public, NAME, b"s" * 32, os.urandom(48))
    other = ct.EccP256Key.from_entropy(os.urandom(48))
    with pytest.raises(CryptoError):
        other.activate_credential(NAME, w.credential_blob, w.encrypted_secret)


@pytest.mark.parametrize(
    "secret",
    [b"", b"\x00\x20" + b"\x01" * 32, b"\x00\x20" + b"\x01" * 32 + b"\x00\x20" + b"\x02" * 33],
)
def test_ecc_activation_rejects_malformed_secret(secret: bytes) -> None:
    w = ct.make_credential_ecc(_ecc_ek().public, NAME, b"s" * 32, os.urandom(48))
    with pytest.raises(CryptoError):
        _ecc_ek().activate_credential(NAME, w.credential_blob, secret)


def test_ecc_point_off_curve_rejected() -> None:
    with pytest.raises(CryptoError, match="curve"):
        ct.make_credential_ecc(ct.EccPublicPoint("P-256", 1, 2), NAME, b"s", os.urandom(48))


def test_rsa_make_credential_unwraps_with_private_key() -> None:
    key = rsa.generate_private_key(65537, 2048)
    nums = key.public_key().public_numbers()
    seed = os.urandom(32)
    w = ct.make_credential_rsa(ct.RsaPublicNumbers(nums.n, nums.e), NAME, b"cred", seed)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"IDENTITY\x00")
    assert key.decrypt(w.encrypted_secret, oaep) == seed
    assert ct._unwrap_credential(seed, NAME, w.credential_blob, 128) == b"cred"


@pytest.mark.parametrize(
    ("seed", "cred"), [(b"short", b"c"), (b"\x00" * 32, b""), (b"\x00" * 32, b"c" * 33)]
)
def test_rsa_make_credential_bad_inputs(seed: bytes, cred: bytes) -> None:
    with pytest.raises(CryptoError):
        ct.make_credential_rsa(ct.RsaPublicNumbers((1 << 2047) + 1, 65537), NAME, cred, seed)


def test_rsa_key_too_small_rejected() -> None:
    with pytest.raises(CryptoError, match="2048"):
        ct.make_credential_rsa(ct.RsaPublicNumbers((1 << 1023) + 1, 3), NAME, b"c", b"\x00" * 32)


def test_ecdsa_verify_rejects_zero_and_wrong() -> None:
    k = _ecc_ek()
    r, s = k.sign_sha256(b"msg")
    ct.verify_ecdsa_sha256(k.public, r, s, b"msg")
    with pytest.raises(CryptoError):
        ct.verify_ecdsa_sha256(k.public, r, s, b"msh")
    with pytest.raises(CryptoError):
        ct.verify_ecdsa_sha256(k.public, 0, s, b"msg")


def test_entropy_too_short_rejected() -> None:
    with pytest.raises(CryptoError, match="40 bytes"):
        ct.EccP256Key.from_entropy(b"\x01" * 32)


def test_certificate_load_rejects_garbage() -> None:
    for bad in (b"", b"\x30\x03abc", b"-----BEGIN CERTIFICATE-----\nnope\n", b"x" * 20000):
        with pytest.raises(CryptoError):
            ct.Certificate.load(bad)


def _maker(seed: int) -> SoftManufacturer:
    return SoftManufacturer(np.random.default_rng(seed), T0, name=f"maker {seed}")


def _leaf(maker: SoftManufacturer) -> ct.Certificate:
    return ct.Certificate.load(SoftTpm(maker, np.random.default_rng(1), T0).ek_certificate())


def test_chain_ok_and_returns_root() -> None:
    maker = _maker(1)
    root = ct.Certificate.load(maker.root_certificate)
    leaf = _leaf(maker)
    assert leaf.ek_usage and not leaf.is_ca and root.is_ca
    assert ct.verify_certificate_chain(leaf, [], [root], T0) == root


def test_chain_rejects_other_root_and_no_roots() -> None:
    leaf = _leaf(_maker(1))
    other = ct.Certificate.load(_maker(2).root_certificate)
    with pytest.raises(CryptoError, match="does not chain"):
        ct.verify_certificate_chain(leaf, [], [other], T0)
    with pytest.raises(CryptoError, match="no trusted roots"):
        ct.verify_certificate_chain(leaf, [], [], T0)


def test_chain_rejects_same_name_different_key() -> None:
    """A root with the right subject but another key must not verify the leaf."""
    leaf = _leaf(_maker(1))
    impostor = ct.Certificate.load(
        SoftManufacturer(np.random.default_rng(5), T0, name="maker 1").root_certificate
    )
    assert impostor.subject == ct.Certificate.load(_maker(1).root_certificate).subject
    with pytest.raises(CryptoError, match="does not chain"):
        ct.verify_certificate_chain(leaf, [], [impostor], T0)


def test_chain_rejects_before_validity() -> None:
    maker = _maker(1)
    with pytest.raises(CryptoError, match="not valid"):
        ct.verify_certificate_chain(
            _leaf(maker), [], [ct.Certificate.load(maker.root_certificate)], T0 - 3600
        )


def test_leaf_cannot_act_as_issuer() -> None:
    """A non-CA certificate in the intermediate pool must not issue anything."""
    maker = _maker(1)
    leaf = _leaf(maker)
    other_leaf = ct.Certificate.load(SoftTpm(maker, np.random.default_rng(2), T0).ek_certificate())
    with pytest.raises(CryptoError, match="does not chain"):
        ct.verify_certificate_chain(
            leaf, [other_leaf], [ct.Certificate.load(_maker(3).root_certificate)], T0
        )
