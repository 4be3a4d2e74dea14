"""The secure-round message kinds: SecAgg bytes travel as the binary part, and every malformed
variant is one ``UpdateRejected``."""

from __future__ import annotations

import struct

import pytest

from ztfm.errors import UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import EndorsedKey, SecAggReply, SecAggTask, SecureRoundConfig

EK_B = EndorsedKey(b"1" * 32, b"C" * 600, b"S" * 71)
EK_C = EndorsedKey(b"2" * 32, b"D" * 601, b"T" * 64)
CFG = SecureRoundConfig(
    4, b"s" * 16, ("a", "b", "c"), 100, b"k" * 32, 32, 2, 2, 2, {"b": EK_B, "c": EK_C}
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
        SecureRoundConfig(**{**_fields(CFG), "identities": {"b": EK_B}})
    )
    # rewrite the one identity entry twice, count 2
    entry = struct.pack(">H", 1) + b"b" + codec.encode_endorsed_key(EK_B)[4:]
    head = dup[: -len(entry) - 4]
    with pytest.raises(UpdateRejected, match="twice"):
        codec.decode_secure_config(head + struct.pack(">I", 2) + entry + entry)
    many = SecureRoundConfig(**{**_fields(CFG), "roster": ("a",)})
    with pytest.raises(UpdateRejected, match="more identities"):
        codec.decode_secure_config(codec.encode_secure_config(many))
    assert codec.decode_secure_config(data).identities == CFG.identities


def _fields(cfg: SecureRoundConfig) -> dict[str, object]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def test_endorsed_key_round_trips_and_every_malformed_variant_is_refused() -> None:
    data = codec.encode_endorsed_key(EK_B)
    assert codec.decode_endorsed_key(data) == EK_B
    assert len(data) == 4 + 32 + 2 + 600 + 1 + 71
    for bad, match in [
        (data[:-1], "truncated"),
        (data + b"\0", "trailing"),
        (b"ZEK9" + data[4:], "magic"),
        (data[:36] + struct.pack(">H", 0) + data[38:], "certificate of 0 bytes"),
        (data[:36] + struct.pack(">H", 9000) + data[38:], "certificate of 9000 bytes"),
        (data[: 38 + 600] + b"\0" + data[39 + 600 :], "signature of 0 bytes"),
        (data[: 38 + 600] + b"\xa1" + data[39 + 600 :], "signature of 161 bytes"),
        (data[:20], "truncated"),
    ]:
        with pytest.raises(UpdateRejected, match=match):
            codec.decode_endorsed_key(bad)
    for ek, match in [
        (EndorsedKey(b"1" * 31, b"C", b"S"), "32 bytes"),
        (EndorsedKey(b"1" * 32, b"", b"S"), "certificate"),
        (EndorsedKey(b"1" * 32, b"C" * 8193, b"S"), "certificate"),
        (EndorsedKey(b"1" * 32, b"C", b""), "signature"),
        (EndorsedKey(b"1" * 32, b"C", b"S" * 161), "signature"),
    ]:
        with pytest.raises(UpdateRejected, match=match):
            codec.encode_endorsed_key(ek)
        with pytest.raises(UpdateRejected, match=match):
            codec.encode_secure_config(
                SecureRoundConfig(**{**_fields(CFG), "identities": {"b": ek}})
            )


def test_config_of_the_previous_version_is_refused() -> None:
    # version 1 carried bare keys the coordinator vouched for: a device must not accept it
    data = codec.encode_secure_config(CFG)
    with pytest.raises(UpdateRejected, match="magic or version"):
        codec.decode_secure_config(b"ZSC1" + data[4:])
