"""Minimal MQTT 3.1.1 packet encoding for the lab's sensors and MQTT attacks (pure, no I/O).

Only what the lab sends: CONNECT, PUBLISH (QoS 0), PINGREQ, DISCONNECT, and deliberately
malformed packets. The broker on the other side is the real Debian mosquitto.
"""

from __future__ import annotations

import struct

from ztfm.errors import ConfigError

MAX_REMAINING = 268_435_455  # largest MQTT remaining length


def encode_remaining_length(n: int) -> bytes:
    """MQTT variable-length integer (1-4 bytes)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ConfigError(f"MQTT remaining length out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ConfigError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(b)) + b


def connect(
    client_id: str,
    *,
    keepalive_s: int = 30,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    var = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s)
    body = var + payload
    return b"\x10" + encode_remaining_length(len(body)) + body


def publish(topic: str, payload: bytes) -> bytes:
    body = _str(topic) + payload
    return b"\x30" + encode_remaining_length(len(body)) + body


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect() -> bytes:
    return b"\xe0\x00"


def malformed(variant: int) -> bytes:
    """One of several protocol violations a fuzzing bot would send (index taken modulo 6)."""
    v = variant % 6
    if v == 0:  # reserved packet type 0
        return b"\x00\x02\x00\x00"
    if v == 1:  # remaining length with 5 continuation bytes (illegal)
        return b"\x30\xff\xff\xff\xff\x7f"
    if v == 2:  # CONNECT with wrong protocol name
        body = _str("MQXX") + bytes([4, 2]) + b"\x00\x1e" + _str("x")
        return b"\x10" + encode_remaining_length(len(body)) + body
    if v == 3:  # PUBLISH whose topic length exceeds the packet
        return b"\x30\x04\xff\xff\x41\x41"
    if v == 4:  # CONNECT with reserved flag bit set
        body = _str("MQTT") + bytes([4, 0x03]) + b"\x00\x1e" + _str("y")
        return b"\x10" + encode_remaining_length(len(body)) + body
    return b"\xf0\x00"  # reserved packet type 15
