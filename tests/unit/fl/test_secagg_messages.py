"""The secure-round message kinds: SecAgg bytes travel as the binary part, and every malformed
variant is one ``UpdateRejected``."""

from __future__ import annotations

import struct

import pytest

from ztfm.errors import UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import SecAggReply, SecAggTask, SecureRoundConfig

CFG = SecureRoundConfig(
    4, b"s" * 16, ("a", "b", "c"), 100, b"k" * 32, 32, 2, 2, 2, {"b": b"1" * 32, "c": b"2" * 32}
)


def test_round_trips_keep_a_large_payload_out_of_the_header() -> None:
    payload = bytes(range(256)) * 400  # 100 KiB: more than the 64 KiB header limit
    for msg in (
        SecAggTask(3, "share", b"n" * 16, payload),
        SecAggReply(3, "dev-1", "mask", b"n" * 16, payload),
    ):
        data = codec.encode(msg)
        assert codec.decode(data) == msg and codec.kind_of(data) is type(msg)
        assert data.endswith(payload)
    assert codec.decode_secure_config(codec.encode_secure_config(CFG)) == CFG


def test_malformed_secure_messages_are_refused() -> None:
    good = codec.encode(SecAggReply(3, "dev-1", "mask", b"n" * 16, b"xyz"))
    with pytest.raises(UpdateRejected, match="payload length"):
        codec.decode(good + b"!")
    with pytest.raises(UpdateRejected, match="payload length"):
        codec.decode(good[:-1])
    with pytest.raises(UpdateRejected, match="phase"):
        codec.decode(codec.encode(SecAggTask(3, "steal", b"n", b"")))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\0", "trailing"),
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: d[:10], "truncated"),
    ],
)
def test_malformed_secure_configs_are_refused(mutate: object, match: str) -> None:
    data = codec.encode_secure_config(CFG)
    with pytest.raises(UpdateRejected, match=match):
        codec.decode_secure_config(mutate(data))  # type: ignore[operator]


def test_config_with_a_duplicate_or_surplus_identity_is_refused() -> None:
    data = codec.encode_secure_config(CFG)
    dup = codec.encode_secure_config(
        SecureRoundConfig(**{**_fields(CFG), "identities": {"b": b"1" * 32}})
    )
    # rewrite the one identity entry twice, count 2
    entry = struct.pack(">H", 1) + b"b" + b"1" * 32
    head = dup[: -len(entry) - 4]
    with pytest.raises(UpdateRejected, match="twice"):
        codec.decode_secure_config(head + struct.pack(">I", 2) + entry + entry)
    many = SecureRoundConfig(**{**_fields(CFG), "roster": ("a",)})
    with pytest.raises(UpdateRejected, match="more identities"):
        codec.decode_secure_config(codec.encode_secure_config(many))
    assert codec.decode_secure_config(data).identities == CFG.identities


def _fields(cfg: SecureRoundConfig) -> dict[str, object]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
