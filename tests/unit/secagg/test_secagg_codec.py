"""Binary message codec: a full round through bytes, and strict parsing of bad input."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.errors import SecAggError
from ztfm.secagg import SurvivorsRequest
from ztfm.secagg.codec import MAGIC, decode_message, encode_message

MakeRound = Callable[..., Any]


def _wire(msgs: Any) -> Any:
    if isinstance(msgs, dict):
        return {k: decode_message(encode_message(v)) for k, v in msgs.items()}
    if isinstance(msgs, list):
        return [decode_message(encode_message(m)) for m in msgs]
    return decode_message(encode_message(msgs))


def test_full_round_through_the_codec(make_round: MakeRound) -> None:
    h = make_round(n=9)
    phases = ["adverts", "dirs", "shares", "inbox", "masked", "survivors", "confirm", "unmask_req"]
    total = h.run(tamper={p: _wire for p in [*phases, "unmask"]})
    h.assert_exact(total)


def test_every_message_round_trips(make_round: MakeRound) -> None:
    h = make_round(n=6, bits=16)
    h.run(skip={"masked": {h.ids[0]}})
    for phase in ["adverts", "shares", "masked", "confirm", "unmask"]:
        for m in h.log[phase]:
            again = decode_message(encode_message(m))
            if phase == "masked":
                assert again.device == m.device and again.tag == m.tag
                assert again.masked.dtype == m.masked.dtype
                assert np.array_equal(again.masked, m.masked)
            else:
                assert again == m
    for phase in ["dirs", "inbox", "unmask_req"]:
        for m in h.log[phase].values():
            assert decode_message(encode_message(m)) == m
    req = h.log["survivors"]
    assert decode_message(encode_message(req)) == req


@pytest.fixture
def advert_bytes(make_round: MakeRound) -> bytes:
    h = make_round(n=4)
    return encode_message(h.clients[h.ids[0]].advertise())


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_any_truncation_rejected(data: st.DataObject) -> None:
    msg = encode_message(SurvivorsRequest(("a", "bb", "ccc")))  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(msg) - 1))
    with pytest.raises(SecAggError):
        decode_message(msg[:cut])


def test_truncated_advert_rejected_at_every_length(advert_bytes: bytes) -> None:
    for cut in range(len(advert_bytes)):
        with pytest.raises(SecAggError):
            decode_message(advert_bytes[:cut])


@pytest.mark.parametrize(
    ("mutate", "msg"),
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x63" + b[5:], "unknown"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b"", "truncated"),
    ],
)
def test_bad_envelope_rejected(
    advert_bytes: bytes, mutate: Callable[[bytes], bytes], msg: str
) -> None:
    with pytest.raises(SecAggError, match=msg):
        decode_message(mutate(advert_bytes))


def _survivors(*ids: bytes) -> bytes:
    out = MAGIC + b"\x06" + struct.pack("<I", len(ids))
    for i in ids:
        out += struct.pack("<H", len(i)) + i
    return out


def test_bad_ids_rejected() -> None:
    with pytest.raises(SecAggError, match="UTF-8"):
        decode_message(_survivors(b"\xff\xfe"))
    with pytest.raises(SecAggError, match="length"):
        decode_message(_survivors(b""))
    with pytest.raises(SecAggError, match="length"):
        decode_message(_survivors(b"x" * 300))
    assert decode_message(_survivors(b"a", b"b")) == SurvivorsRequest(("a", "b"))  # type: ignore[arg-type]


def test_huge_count_rejected_without_allocation() -> None:
    with pytest.raises(SecAggError, match="count"):
        decode_message(MAGIC + b"\x06" + struct.pack("<I", 2**31))


def test_duplicate_map_key_rejected() -> None:
    body = MAGIC + b"\x07" + struct.pack("<H", 1) + b"a" + struct.pack("<I", 2)
    for _ in range(2):
        body += struct.pack("<H", 1) + b"b" + bytes(16)
    with pytest.raises(SecAggError, match="duplicate"):
        decode_message(body)


def test_masked_input_word_size_and_length_checked() -> None:
    head = MAGIC + b"\x05" + struct.pack("<H", 1) + b"a"
    with pytest.raises(SecAggError, match="word size"):
        decode_message(head + b"\x08" + struct.pack("<I", 1) + b"\x00" + bytes(16))
    with pytest.raises(SecAggError, match="empty"):
        decode_message(head + b"\x20" + struct.pack("<I", 0) + bytes(16))
    with pytest.raises(SecAggError, match="truncated"):
        decode_message(head + b"\x20" + struct.pack("<I", 4) + bytes(8) + bytes(16))
    ok = decode_message(head + b"\x20" + struct.pack("<I", 2) + bytes(8) + bytes(16))
    assert ok.masked.dtype == np.uint32 and ok.masked.shape == (2,)  # type: ignore[union-attr]


def test_oversized_and_non_bytes_rejected(advert_bytes: bytes) -> None:
    with pytest.raises(SecAggError, match="larger"):
        decode_message(advert_bytes, max_bytes=10)
    with pytest.raises(SecAggError, match="bytes"):
        decode_message("text")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="not a secagg message"):
        encode_message(object())  # type: ignore[arg-type]


def test_wrong_fixed_field_sizes_rejected_by_message_checks() -> None:
    # a share inbox whose ciphertext is the wrong size cannot be expressed: the reader takes
    # exactly the sealed-share size, so a short one is truncation and a long one trailing bytes
    body = MAGIC + b"\x04" + struct.pack("<H", 1) + b"a" + struct.pack("<I", 1)
    body += struct.pack("<H", 1) + b"b" + bytes(10)
    with pytest.raises(SecAggError, match="truncated"):
        decode_message(body)
