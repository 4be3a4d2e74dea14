"""Per-device top-k uploads: error feedback loses nothing, the wire form round-trips, and every
malformed encoding is refused with a reason (never a wrong vector)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.errors import PrivacyError
from ztfm.privacy.sparse import (
    MAX_LENGTH,
    QuantizedSparse,
    TopKCompressor,
    decode_sparse,
)

_HEAD = struct.Struct(">4sBIIfI")


def _sample(length: int = 1000, ratio: float = 0.1, bits: int = 4, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return TopKCompressor(ratio, bits).compress(rng.normal(size=length), rng).encode()


def _with_head(data: bytes, **fields: Any) -> bytes:
    names = ("magic", "bits", "length", "k", "scale", "zlen")
    head = dict(zip(names, _HEAD.unpack_from(data), strict=True))
    head.update(fields)
    return _HEAD.pack(*(head[n] for n in names)) + data[_HEAD.size :]


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 3000),
    ratio=st.floats(0.001, 1.0),
    bits=st.integers(2, 16),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1.0, 1e6]),
)
def test_encoding_round_trips_exactly(
    length: int, ratio: float, bits: int, seed: int, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    sent = TopKCompressor(ratio, bits).compress(rng.normal(size=length) * scale, rng)
    got = decode_sparse(sent.encode(), length)
    assert np.array_equal(got.indices, sent.indices)
    assert np.array_equal(got.levels, sent.levels)
    assert (got.bits, got.scale, got.length) == (bits, sent.scale, length)
    assert np.array_equal(got.dense(), sent.dense())


@settings(max_examples=40, deadline=None)
@given(rounds=st.integers(1, 6), ratio=st.floats(0.01, 0.5), seed=st.integers(0, 2**32 - 1))
def test_error_feedback_delivers_everything_eventually(
    rounds: int, ratio: float, seed: int
) -> None:
    # after any number of rounds: what was sent + what is still held == what was produced
    rng = np.random.default_rng(seed)
    comp = TopKCompressor(ratio, 3)
    produced, sent = np.zeros(500), np.zeros(500)
    for _ in range(rounds):
        u = rng.normal(size=500)
        produced += u
        sent += comp.compress(u, rng).dense()
    assert comp.residual is not None
    np.testing.assert_allclose(sent + comp.residual, produced, atol=1e-9)


def test_top_k_picks_the_largest_and_quantisation_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    u = np.zeros(100)
    u[[3, 50, 97]] = [5.0, -2.0, 0.3]
    u[10] = 0.01
    sent = TopKCompressor(0.03, 4, error_feedback=False).compress(u, rng)
    assert sent.indices.tolist() == [3, 50, 97] and sent.k == 3
    # 0.3 of a scale of 5 with 7 levels is 0.42 of a level: rounded up 42 % of the time
    means = np.mean(
        [TopKCompressor(0.03, 4, False).compress(u, rng).dense()[97] for _ in range(4000)]
    )
    assert means == pytest.approx(0.3, abs=0.03)
    nearest = TopKCompressor(0.03, 4, False, "nearest").compress(u, rng)
    assert nearest.dense()[3] == pytest.approx(5.0, rel=1e-6)
    assert abs(nearest.dense()[50] - -2.0) <= 5.0 / 7 / 2 + 1e-9


def test_ten_percent_of_a_detector_update_is_over_twenty_times_smaller() -> None:
    rng = np.random.default_rng(2)
    data = TopKCompressor(0.1, 4).compress(rng.normal(size=8384), rng).encode()
    assert 4 * 8384 / len(data) > 20


def test_compressor_refuses_bad_updates_and_settings() -> None:
    rng = np.random.default_rng(0)
    comp = TopKCompressor(0.5, 4)
    with pytest.raises(PrivacyError, match="NaN"):
        comp.compress(np.array([1.0, np.nan]), rng)
    comp.compress(np.ones(10), rng)
    with pytest.raises(PrivacyError, match="length does not match"):
        comp.compress(np.ones(11), rng)
    with pytest.raises(PrivacyError, match="float32"):
        TopKCompressor(0.5, 4).compress(np.array([1e300, 1.0]), rng)
    for kwargs in ({"keep_ratio": 0.0}, {"keep_ratio": 1.5}, {"bits": 1}, {"bits": 17}):
        with pytest.raises(PrivacyError):
            TopKCompressor(**{"keep_ratio": 0.5, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="rounding"):
        TopKCompressor(0.5, 4, rounding="up")


def test_a_zero_update_sends_zero_levels() -> None:
    sent = TopKCompressor(0.5, 4).compress(np.zeros(8), np.random.default_rng(0))
    assert sent.scale == 0.0 and not np.any(sent.dense())
    assert not np.any(decode_sparse(sent.encode(), 8).dense())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"indices": np.array([3, 1])}, "strictly increasing"),
        ({"indices": np.array([1, 1])}, "strictly increasing"),
        ({"indices": np.array([1, 10])}, "in range"),
        ({"levels": np.array([8, 0])}, "levels must lie"),
        ({"levels": np.array([1.0, 0.0])}, "integers"),
        ({"scale": float("nan")}, "finite"),
        ({"scale": 1e39}, "finite"),
        ({"scale": -1.0}, ">= 0"),
        ({"bits": 1}, "bits"),
        ({"length": MAX_LENGTH + 1}, "length"),
    ],
)
def test_inconsistent_sparse_values_are_refused(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {
        "length": 10,
        "indices": np.array([1, 3]),
        "levels": np.array([7, -7]),
        "bits": 4,
        "scale": 1.0,
    }
    with pytest.raises(PrivacyError, match=match):
        QuantizedSparse(**{**base, **kwargs})


def _bitmap_payload(bitmap_bytes: bytes, length: int, k: int, level_bytes: bytes) -> bytes:
    z = zlib.compress(bitmap_bytes)
    return _HEAD.pack(b"ZSP1", 4, length, k, 1.0, len(z)) + z + level_bytes


def test_malformed_encodings_are_refused_with_a_reason() -> None:
    good = _sample()
    n, k = 1000, 100
    cases: list[tuple[bytes, int, str]] = [
        (good[:10], n, "too short"),
        (b"XXXX" + good[4:], n, "bad magic"),
        (good, n + 1, "expected 1001"),
        (_with_head(good, bits=1), n, "out of range"),
        (_with_head(good, bits=17), n, "out of range"),
        (_with_head(good, k=0), n, "out of range"),
        (_with_head(good, k=n + 1), n, "out of range"),
        (_with_head(good, scale=float("nan")), n, "not finite"),
        (_with_head(good, scale=float("inf")), n, "not finite"),
        (_with_head(good, scale=-1.0), n, "not finite"),
        (good + b"\x00", n, "does not match its header"),
        (good[:-1], n, "does not match its header"),
        (_with_head(good, zlen=_HEAD.unpack_from(good)[5] + 1), n, "does not match"),
        (_with_head(good, k=k - 2)[:-1], n, "index count does not match"),
    ]
    for data, length, match in cases:
        with pytest.raises(PrivacyError, match=match):
            decode_sparse(data, length)


def test_bitmap_and_level_tampering_is_refused() -> None:
    # 10 coordinates, 2 kept: bitmap 2 bytes (6 padding bits), levels 1 byte
    bitmap = np.zeros(16, dtype=np.uint8)
    bitmap[[1, 3]] = 1
    ok = _bitmap_payload(np.packbits(bitmap).tobytes(), 10, 2, bytes([0x7E]))
    assert decode_sparse(ok, 10).levels.tolist() == [0, 7]
    padded = bitmap.copy()
    padded[12] = 1
    with pytest.raises(PrivacyError, match="padding bits"):
        decode_sparse(_bitmap_payload(np.packbits(padded).tobytes(), 10, 3, b"\x77\x70"), 10)
    with pytest.raises(PrivacyError, match="level is out of range"):
        decode_sparse(_bitmap_payload(np.packbits(bitmap).tobytes(), 10, 2, bytes([0x7F])), 10)
    with pytest.raises(PrivacyError, match="wrong size"):  # bitmap one byte short
        decode_sparse(_bitmap_payload(b"\x50", 10, 2, bytes([0x77])), 10)
    with pytest.raises(PrivacyError, match="not valid deflate"):
        bad = _HEAD.pack(b"ZSP1", 4, 10, 2, 1.0, 4) + b"\xff\xff\xff\xff" + b"\x77"
        decode_sparse(bad, 10)
    three = np.zeros(8, dtype=np.uint8)
    three[[0, 1, 2]] = 1  # 8 coordinates, 3 set, 12 bits of levels: 4 padding bits
    levels_ok = _bitmap_payload(np.packbits(three).tobytes(), 8, 3, b"\x77\x70")
    assert decode_sparse(levels_ok, 8).k == 3
    with pytest.raises(PrivacyError, match="levels have padding bits"):
        decode_sparse(_bitmap_payload(np.packbits(three).tobytes(), 8, 3, b"\x77\x71"), 8)


def test_deflate_bomb_stops_at_the_bitmap_size() -> None:
    # a stream that would inflate to 64 MiB is cut at the bitmap's 125 bytes and refused
    bomb = zlib.compress(b"\x00" * (64 << 20), 9)
    data = _HEAD.pack(b"ZSP1", 4, 1000, 1, 1.0, len(bomb)) + bomb + b"\x00"
    with pytest.raises(PrivacyError, match="wrong size"):
        decode_sparse(data, 1000)


def test_trailing_data_after_the_deflate_stream_is_refused() -> None:
    bitmap = np.zeros(8, dtype=np.uint8)
    bitmap[0] = 1
    z = zlib.compress(np.packbits(bitmap).tobytes()) + b"junk"
    data = _HEAD.pack(b"ZSP1", 4, 8, 1, 1.0, len(z)) + z + b"\x70"
    with pytest.raises(PrivacyError, match="trailing data"):
        decode_sparse(data, 8)
