"""Hostile bytes into the bundle and tensor parsers: refused with BundleError, never a crash."""

from __future__ import annotations

import contextlib
import json
import struct

from bundle_fix import MODEL, RELEASE_KEY, world
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.bundle import Bundle, decode_tensors, verify_bundle
from ztfm.errors import BundleError

W = world()
GOOD = W.publish(1)
W.sync()
DATA = GOOD.to_bytes()


def _check(data: bytes) -> None:
    b = Bundle.from_bytes(data)
    verify_bundle(
        b, release_key=RELEASE_KEY.verify_key, ledger=W.client, installed_version=None,
        model_id=MODEL,
    )  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_splices_insertions_and_deletions_are_refused(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(DATA)))
    j = data.draw(st.integers(i, min(len(DATA), i + 64)))
    insert = data.draw(st.binary(max_size=16))
    mutated = DATA[:i] + insert + DATA[j:]
    if mutated == DATA:
        return
    try:
        _check(mutated)
    except BundleError:
        return
    raise AssertionError(f"accepted a mutated bundle (bytes {i}:{j} -> {insert!r})")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_are_refused(data: bytes) -> None:
    for blob in (data, b"ZTFMBND1" + data):
        with contextlib.suppress(BundleError):
            Bundle.from_bytes(blob)
            raise AssertionError("random bytes parsed as a bundle")
    with contextlib.suppress(BundleError):
        decode_tensors(data)


_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _VALUE, max_size=4), st.binary(max_size=64))
def test_arbitrary_tensor_headers_never_crash(header: dict[str, object], payload: bytes) -> None:
    h = json.dumps(header).encode()
    with contextlib.suppress(BundleError):
        out = decode_tensors(struct.pack("<Q", len(h)) + h + payload)
        assert sum(a.nbytes for a in out.values()) == len(payload)
