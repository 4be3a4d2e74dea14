"""TPM structures: real swtpm output parses; every malformed variant is rejected."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztfm.attestation.structures import (
    ALG_ECDSA,
    ALG_SHA256,
    PcrSelection,
    QuoteInfo,
    TpmPublic,
    TpmSignature,
    composite_digest,
    extend,
    qualified_name_in_endorsement,
    replay,
)
from ztfm.errors import AttestationError

VEC: dict[str, Any] = json.loads(
    (Path(__file__).with_name("vectors") / "swtpm_quote.json").read_text()
)
AK = bytes.fromhex(VEC["enrolment"]["ak_public"])
EK = bytes.fromhex(VEC["enrolment"]["ek_public"])
ATTEST = bytes.fromhex(VEC["quote"]["attest"])
SIG = bytes.fromhex(VEC["quote"]["signature"])


def test_swtpm_ak_parses_as_attestation_key() -> None:
    ak = TpmPublic.from_bytes(AK)
    ak.check_attestation_key()
    assert ak.scheme == (ALG_ECDSA, ALG_SHA256)
    assert len(ak.name) == 34


def test_swtpm_ek_parses_as_endorsement_key() -> None:
    ek = TpmPublic.from_bytes(EK)
    ek.check_endorsement_key()
    with pytest.raises(AttestationError):
        ek.check_attestation_key()
    with pytest.raises(AttestationError):
        TpmPublic.from_bytes(AK).check_endorsement_key()


def test_swtpm_quote_parses() -> None:
    q = QuoteInfo.from_bytes(ATTEST)
    assert q.extra_data == bytes.fromhex(VEC["nonce"])
    assert q.selection == PcrSelection((8, 9))
    assert q.qualified_signer == qualified_name_in_endorsement(TpmPublic.from_bytes(AK).name)
    fw, model = bytes.fromhex(VEC["firmware_digest"]), bytes.fromhex(VEC["model_digest"])
    assert q.pcr_digest == composite_digest([replay([fw]), replay([model])])


def test_swtpm_signature_parses() -> None:
    sig = TpmSignature.from_bytes(SIG)
    assert sig.alg == ALG_ECDSA and sig.r > 0 and sig.s > 0


@pytest.mark.parametrize("blob", [AK, EK, ATTEST, SIG])
@pytest.mark.parametrize("mutation", ["truncate", "trail", "empty"])
def test_malformed_structures_rejected(blob: bytes, mutation: str) -> None:
    data = {"truncate": blob[:-1], "trail": blob + b"\x00", "empty": b""}[mutation]
    parser = {AK: TpmPublic, EK: TpmPublic, ATTEST: QuoteInfo, SIG: TpmSignature}[blob]
    with pytest.raises(AttestationError):
        parser.from_bytes(data)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0, b"\x00\x00\x00\x00", "magic"),
        (4, b"\x80\x17", "not a quote"),
    ],
)
def test_quote_header_fields_checked(offset: int, value: bytes, match: str) -> None:
    raw = ATTEST[:offset] + value + ATTEST[offset + len(value) :]
    with pytest.raises(AttestationError, match=match):
        QuoteInfo.from_bytes(raw)


def test_quote_with_sha1_bank_rejected() -> None:
    good = QuoteInfo.from_bytes(ATTEST)
    sel = good.selection.to_bytes()
    bad_sel = sel[:4] + b"\x00\x04" + sel[6:]
    with pytest.raises(AttestationError, match="SHA-256 PCR bank"):
        QuoteInfo.from_bytes(ATTEST.replace(sel, bad_sel))


def test_public_with_sha1_name_rejected() -> None:
    with pytest.raises(AttestationError, match="SHA-256"):
        TpmPublic.from_bytes(AK[:2] + b"\x00\x04" + AK[4:])


def test_public_with_unknown_type_rejected() -> None:
    with pytest.raises(AttestationError, match="RSA or ECC"):
        TpmPublic.from_bytes(b"\x00\x08" + AK[2:])


def test_signature_with_unknown_alg_or_hash_rejected() -> None:
    with pytest.raises(AttestationError, match="ECDSA or RSASSA"):
        TpmSignature.from_bytes(b"\x00\x16" + SIG[2:])
    with pytest.raises(AttestationError, match="SHA-256"):
        TpmSignature.from_bytes(SIG[:2] + b"\x00\x04" + SIG[4:])


def test_oversized_input_rejected() -> None:
    with pytest.raises(AttestationError, match="too large"):
        QuoteInfo.from_bytes(b"\x00" * 5000)


@pytest.mark.parametrize("pcrs", [(), (9, 8), (8, 8), (24,), (-1,)])
def test_bad_pcr_selection(pcrs: tuple[int, ...]) -> None:
    with pytest.raises(AttestationError):
        PcrSelection(pcrs)


def test_extend_needs_sha256_sizes() -> None:
    with pytest.raises(AttestationError):
        extend(b"\x00" * 20, b"\x00" * 32)


@given(
    pcrs=st.sets(st.integers(0, 23), min_size=1),
    nonce=st.binary(max_size=64),
    clock=st.integers(0, 2**64 - 1),
    reset=st.integers(0, 2**32 - 1),
    digest=st.binary(min_size=32, max_size=32),
)
def test_quote_build_parse_round_trip(
    pcrs: set[int], nonce: bytes, clock: int, reset: int, digest: bytes
) -> None:
    sel = PcrSelection(tuple(sorted(pcrs)))
    raw = QuoteInfo.build(
        qualified_signer=b"\x00\x0b" + b"\x01" * 32,
        extra_data=nonce,
        clock=clock,
        reset_count=reset,
        restart_count=0,
        firmware_version=7,
        selection=sel,
        pcr_digest=digest,
    )
    q = QuoteInfo.from_bytes(raw)
    assert (q.selection, q.extra_data, q.clock, q.reset_count, q.pcr_digest) == (
        sel,
        nonce,
        clock,
        reset,
        digest,
    )
    assert struct.unpack(">I", raw[:4])[0] == 0xFF544347
