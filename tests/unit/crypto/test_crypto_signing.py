"""Ed25519 signatures: sign with ``cryptography``, verify with libsodium (PyNaCl); every
altered signature, message or key is refused, and so are keys of small order, which a lax
verifier accepts for crafted signatures."""

from __future__ import annotations

import pytest

from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.errors import CryptoError


def test_a_signature_verifies_and_any_change_is_refused() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    msg = b"round 7 advert"
    sig = key.sign(msg)
    vk = key.verify_key
    assert vk.verify(sig, msg) is None
    for i in (0, 31, 32, 63):  # R and S halves
        bad = bytearray(sig)
        bad[i] ^= 1
        with pytest.raises(CryptoError, match="does not verify"):
            vk.verify(bytes(bad), msg)
    with pytest.raises(CryptoError, match="does not verify"):
        vk.verify(sig, msg + b"!")
    with pytest.raises(CryptoError, match="does not verify"):
        SigningKey.generate().verify_key.verify(sig, msg)
    with pytest.raises(CryptoError, match="wrong length"):
        vk.verify(sig[:-1], msg)


def test_rfc8032_vector_verifies() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message)
    pk = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert VerifyKey(pk).verify(sig, b"") is None


def test_small_order_keys_and_non_canonical_s_are_refused() -> None:
    # the identity point as a public key with R = identity, S = 0 "verifies" any message
    # under a lax check ([S]B = R + [h]A holds trivially); libsodium refuses it
    identity = bytes([1]) + bytes(31)
    with pytest.raises(CryptoError):
        VerifyKey(identity).verify(identity + bytes(32), b"anything")
    key = SigningKey.from_seed(bytes(32))
    sig = key.sign(b"m")
    # S + L (the group order) is the same scalar, but not its canonical encoding
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(sig[32:], "little") + order
    with pytest.raises(CryptoError):
        key.verify_key.verify(sig[:32] + s.to_bytes(32, "little"), b"m")
