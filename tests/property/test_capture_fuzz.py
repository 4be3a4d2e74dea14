"""Fuzz the capture reader: any byte flip or cut of a real capture gives packets or one
DataError, never another exception, hang or huge allocation."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.data.bundled import bundled_path
from ztfm.data.pcap import iter_packets
from ztfm.errors import DataError

# a classic pcap (SLL) and a pcapng (Ethernet) from the bundle, cut to a few packets
CLASSIC = gzip.decompress(bundled_path("mqttset/flood/flood-test.pcap.gz").read_bytes())[:6000]
PCAPNG = gzip.decompress(bundled_path("mqttset/malariados/malariados-test.pcap.gz").read_bytes())[
    :3000
]


def _read(data: bytes) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.cap"
        path.write_bytes(data)
        try:
            return sum(1 for _ in iter_packets(path, on_truncated="stop"))
        except DataError as exc:
            assert "\n" not in str(exc)
            return -1


@pytest.mark.parametrize("base", [CLASSIC, PCAPNG], ids=["pcap", "pcapng"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_captures_fail_cleanly(base: bytes, data: st.DataObject) -> None:
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    _read(bytes(blob[:cut]))


@pytest.mark.parametrize("base", [CLASSIC, PCAPNG], ids=["pcap", "pcapng"])
def test_every_cut_point_of_the_header_region(base: bytes) -> None:
    for cut in range(0, 200):
        _read(base[:cut])
