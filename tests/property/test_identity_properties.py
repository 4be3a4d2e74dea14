"""Hypothesis: request-binding encoding is injective, signatures bind every byte, values round
trip."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.errors import RequestRejected
from ztfm.identity import (
    Envelope,
    Identity,
    InMemoryKeyRegistry,
    MemoryKeyStore,
    RequestVerifier,
    RevocationList,
    SignedRevocationList,
    sign_request,
)

T0 = 1_800_000_000.0
KEYS = MemoryKeyStore()
IDENT = Identity("acme.example", "cams", "device", "cam-1")

text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
names = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda s: ".." not in s
)
envelopes = st.builds(
    Envelope,
    purpose=text,
    method=text,
    round_id=st.integers(0, 2**63 - 1),
    device_id=text,
    nonce=st.binary(min_size=16, max_size=24),
    timestamp_ms=st.integers(0, 2**63 - 1),
    payload_sha256=st.binary(min_size=32, max_size=32),
    key_id=st.just("a" * 64),
    signature=st.just(b""),
    resource=st.one_of(st.just(""), text),
)


@settings(max_examples=300, deadline=None)
@given(envelopes, envelopes)
def test_signed_bytes_are_injective(a: Envelope, b: Envelope) -> None:
    if a != b:
        assert a.signed_bytes() != b.signed_bytes()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000), st.data())
def test_any_payload_bit_flip_is_rejected(payload: bytes, data: st.DataObject) -> None:
    reg = InMemoryKeyRegistry()
    reg.register(KEYS.public_key, IDENT)
    v = RequestVerifier(reg)
    env = sign_request(KEYS, "SubmitUpdate", 1, "cam-1", payload, T0)
    if payload:
        i = data.draw(st.integers(0, len(payload) - 1))
        bad = bytearray(payload)
        bad[i] ^= 1 << data.draw(st.integers(0, 7))
        try:
            v.verify(env, bytes(bad), IDENT, T0)
            raise AssertionError("flipped payload accepted")
        except RequestRejected:
            pass
    assert v.verify(env, payload, IDENT, T0) is None


@settings(max_examples=100, deadline=None)
@given(names, names, st.sampled_from(["device", "gateway", "coordinator"]))
def test_identity_uri_round_trip(segment: str, device: str, role: str) -> None:
    ident = Identity("acme.example", segment, role, device)
    assert Identity.from_uri(ident.uri) == ident


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 10**6),
    st.frozensets(st.integers(1, 2**159), max_size=20),
    st.frozensets(names.map(lambda n: IDENT.uri.replace("cam-1", n)), max_size=5),
)
def test_revocation_list_round_trip(
    version: int, serials: frozenset[int], uris: frozenset[str]
) -> None:
    body = RevocationList("acme.example", version, T0, T0 + 60, serials, uris)
    signed = SignedRevocationList(body, b"\x01" * 64)
    again = SignedRevocationList.from_bytes(signed.to_bytes())
    assert again == signed
    assert dataclasses.replace(again.body) == body
