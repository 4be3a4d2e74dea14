"""Weights in the safetensors layout: round trips, and every way to smuggle something in."""

from __future__ import annotations

import io
import json
import pickle
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ztfm.bundle import TensorLimits, decode_tensors, encode_tensors
from ztfm.errors import BundleError


def raw(header: dict[str, Any], data: bytes, pad: bool = True) -> bytes:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def test_round_trip_all_dtypes() -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a.f32": rng.normal(size=(3, 4)).astype(np.float32),
        "b.f16": rng.normal(size=(5,)).astype(np.float16),
        "c.f64": rng.normal(size=(2, 2, 2)),
        "d.i8": rng.integers(-128, 127, size=7).astype(np.int8),
        "e.u8": rng.integers(0, 255, size=(1, 3)).astype(np.uint8),
        "f.i16": np.arange(4, dtype=np.int16),
        "g.i32": np.arange(4, dtype=np.int32),
        "h.i64": np.arange(4, dtype=np.int64),
        "scalar": np.float32(3.5),
        "empty": np.zeros((0, 4), np.float32),
    }
    blob = encode_tensors(tensors, metadata={"arch": "ae"})
    out = decode_tensors(blob)
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        assert out[k].dtype == np.asarray(v).dtype.newbyteorder("<")
        assert np.array_equal(out[k], v)
        assert not out[k].flags.writeable
    assert encode_tensors(tensors, metadata={"arch": "ae"}) == blob  # deterministic


def test_big_endian_input_is_stored_little_endian() -> None:
    a = np.arange(3, dtype=">f4")
    out = decode_tensors(encode_tensors({"a": a}))
    assert np.array_equal(out["a"], a)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(max_dims=3, max_side=5),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
def test_round_trip_property(arr: np.ndarray[Any, Any]) -> None:
    assert np.array_equal(decode_tensors(encode_tensors({"w": arr}))["w"], arr)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1.0, np.nan], np.float32),
        np.array([np.inf], np.float64),
        np.array([-np.inf], np.float16),
        np.array(["a"]),
        np.array([object()], dtype=object),
        np.array([1 + 2j]),
        np.array([True]),
        np.zeros(2, np.uint32),
    ],
)
def test_encode_refuses_bad_arrays(bad: np.ndarray[Any, Any]) -> None:
    with pytest.raises(BundleError):
        encode_tensors({"w": bad})


def test_encode_refuses_bad_names_and_metadata() -> None:
    for name in ("../etc/passwd", "a b", "", "x" * 200, "é"):
        with pytest.raises(BundleError):
            encode_tensors({name: np.zeros(1, np.float32)})
    with pytest.raises(BundleError):
        encode_tensors({"w": np.zeros(1, np.float32)}, metadata={"k": 1})  # type: ignore[dict-item]


def test_pickle_is_never_loaded() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    for payload in (pickle.dumps(Boom()), pickle.dumps(np.zeros(3))):
        with pytest.raises(BundleError):
            decode_tensors(payload)
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError):
        decode_tensors(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(3))
    with pytest.raises(BundleError):
        decode_tensors(buf.getvalue())


F4 = np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F4 + b"\x00"),  # trailing
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F4[:12]),  # short
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, F4),  # shape/size
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [4, 20]}}, F4 + F4[:4]),  # gap
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
            },
            F4,
        ),  # overlap (aliasing)
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, F4),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 3]}}, F4),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16]}}, F4),
        ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, F4),
        ({"w": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, F4),
        ({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, F4),
        ({"w": {"dtype": "F32", "shape": [1] * 9 + [4], "data_offsets": [0, 16]}}, F4),
        ({"w": {"dtype": "BOOL", "shape": [16], "data_offsets": [0, 16]}}, F4),
        ({"w": {"dtype": "O", "shape": [4], "data_offsets": [0, 16]}}, F4),
        ({"w": {"dtype": "F32", "shape": [4]}}, F4),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "x": 1}}, F4),
        ({"w": [1, 2]}, F4),
        ({"../w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F4),
        (
            {
                "__metadata__": {"k": 1},
                "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            },
            F4,
        ),
        (
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            np.array([np.nan] * 4, "<f4").tobytes(),
        ),
    ],
)
def test_decode_refuses_malformed_headers(header: dict[str, Any], data: bytes) -> None:
    with pytest.raises(BundleError):
        decode_tensors(raw(header, data))


def test_decode_good_raw_header_parses() -> None:
    out = decode_tensors(raw({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, F4))
    assert out["w"].shape == (2, 2)


def test_duplicate_tensor_names_are_refused() -> None:
    one = b'"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}'
    h = b"{" + one + b"," + one + b"}"
    with pytest.raises(BundleError, match="duplicate"):
        decode_tensors(struct.pack("<Q", len(h)) + h + F4)


def test_header_length_tricks() -> None:
    with pytest.raises(BundleError, match="truncated"):
        decode_tensors(b"\x01\x00")
    with pytest.raises(BundleError, match="limit"):
        decode_tensors(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(BundleError, match="truncated"):
        decode_tensors(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(BundleError):
        decode_tensors(struct.pack("<Q", 2) + b"\xff\xfe")
    with pytest.raises(BundleError):
        decode_tensors(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(BundleError):
        decode_tensors(struct.pack("<Q", 8) + b'{"a":NaN')


def test_limits_are_enforced_before_allocation() -> None:
    small = TensorLimits(max_elements=10, max_tensors=2, max_bytes=64, max_ndim=2)
    with pytest.raises(BundleError, match="elements"):
        decode_tensors(encode_tensors({"w": np.zeros((2, 6), np.int8)}), limits=small)
    with pytest.raises(BundleError, match="tensors"):
        decode_tensors(encode_tensors({k: np.zeros(1, np.int8) for k in "abc"}), limits=small)
    with pytest.raises(BundleError):
        decode_tensors(encode_tensors({"w": np.zeros((1, 1, 1), np.int8)}), limits=small)
    # a huge declared shape is refused from the header alone
    h = {"w": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}
    with pytest.raises(BundleError):
        decode_tensors(raw(h, b"\x00" * 8))
    with pytest.raises(BundleError):
        encode_tensors({"w": np.zeros(11, np.int8)}, limits=small)


def test_regression_huge_integer_in_header_raised_valueerror() -> None:
    h = b'{"w":{"dtype":"F32","shape":[1' + b"0" * 5000 + b'],"data_offsets":[0,16]}}'
    with pytest.raises(BundleError):
        decode_tensors(struct.pack("<Q", len(h)) + h + F4)


_DT = st.sampled_from(["<f2", "<f4", "<f8", "i1", "u1", "<i2", "<i4", "<i8"])


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
        _DT.flatmap(
            lambda dt: hnp.arrays(
                np.dtype(dt),
                hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
                elements=(
                    st.floats(-100, 100, width=8 * np.dtype(dt).itemsize)
                    if dt.endswith(("f2", "f4", "f8"))
                    else None
                ),
            )
        ),
        max_size=5,
    )
)
def test_any_valid_weights_round_trip_bit_exactly(tensors: dict[str, np.ndarray[Any, Any]]) -> None:
    out = decode_tensors(encode_tensors(tensors))
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        assert out[k].shape == v.shape and out[k].dtype == v.dtype
        assert out[k].tobytes() == v.tobytes()
