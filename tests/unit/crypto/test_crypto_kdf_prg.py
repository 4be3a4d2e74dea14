"""HKDF (RFC 5869 vectors) and the AES-CTR mask expander (the public API keystream, NIST CTR)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ztfm.crypto.kex import derive_key
from ztfm.crypto.prg import MaskExpander

# RFC 5869, appendix A: test cases 1, 2 and 3 (HKDF-SHA256)
RFC5869 = [
    (
        bytes([0x0B]) * 22,
        bytes(range(0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        bytes([0x0B]) * 22,
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_derive_key_rfc5869_vectors(
    ikm: bytes, salt: bytes, info: bytes, length: int, okm: str
) -> None:
    assert derive_key(ikm, salt=salt, info=info, length=length).hex() == okm


# NIST SP 800-38A, F.5.1 (CTR-AES128.Encrypt), first two blocks
_KAT_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
_KAT_CTR = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
_KAT_PT = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
_KAT_CT = bytes.fromhex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")


# ---- the mask expander -------------------------------------------------------------------------
def _keystream(seed: bytes, nbytes: int) -> bytes:
    enc = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()
    return enc.update(bytes(nbytes))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("length", [1, 7, 8, 1000, 10_001])
def test_masks_are_the_public_api_keystream(dtype: Any, length: int) -> None:
    rng = np.random.default_rng(length)
    exp = MaskExpander(length, dtype)
    for _ in range(3):
        seed = rng.bytes(32)
        want = np.frombuffer(_keystream(seed, length * np.dtype(dtype).itemsize), dtype=dtype)
        assert np.array_equal(exp.expand(seed), want)
        acc = np.zeros(length, dtype)
        exp.add_mask(acc, seed)
        assert np.array_equal(acc, want)
        exp.sub_mask(acc, seed)
        assert not acc.any()


def test_mask_is_the_nist_ctr_keystream() -> None:
    # SP 800-38A F.5.1: keystream = plaintext XOR ciphertext; seed = key || initial counter
    seed = _KAT_KEY + _KAT_CTR
    ks = bytes(p ^ c for p, c in zip(_KAT_PT, _KAT_CT, strict=True))
    assert MaskExpander(8, np.uint32).expand(seed).tobytes() == ks
