"""MQTT encoding used by the lab's sensors and attacks: exact bytes, limits, malformed variants."""

from __future__ import annotations

import pytest

from ztfm.errors import ConfigError
from ztfm.lab import mqtt


@pytest.mark.parametrize(
    ("n", "raw"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_vectors(n: int, raw: bytes) -> None:
    assert mqtt.encode_remaining_length(n) == raw


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_remaining_length_out_of_range(n: int) -> None:
    with pytest.raises(ConfigError):
        mqtt.encode_remaining_length(n)


def test_connect_and_publish_layout() -> None:
    c = mqtt.connect("dev00", keepalive_s=30)
    assert c[0] == 0x10 and c[1] == len(c) - 2
    assert c[2:8] == b"\x00\x04MQTT" and c[8] == 4 and c[9] == 0x02
    p = mqtt.publish("a/b", b"xy")
    assert p == b"\x30\x07\x00\x03a/bxy"
    cu = mqtt.connect("d", username="u", password="p")
    assert cu[9] == 0xC2 and cu.endswith(b"\x00\x01u\x00\x01p")


def test_string_too_long_is_refused() -> None:
    with pytest.raises(ConfigError):
        mqtt.publish("t" * 70_000, b"")


def test_malformed_variants_are_distinct_and_invalid() -> None:
    variants = [mqtt.malformed(i) for i in range(6)]
    assert len(set(variants)) == 6
    assert mqtt.malformed(6) == variants[0]
    types = {v[0] >> 4 for v in variants}
    assert 0 in types and 15 in types  # reserved packet types
    assert b"MQXX" in variants[2]
