"""Labels, transcripts and key derivations shared by client and server (one place, so the two
sides cannot drift apart). Every derivation binds the round digest and the parties' ids."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from ztfm.crypto.kex import derive_key
from ztfm.secagg.params import SecAggParams, lp
from ztfm.types import DeviceId


def seed_commitment(p: SecAggParams, device: DeviceId, seed: bytes) -> bytes:
    return hashlib.sha256(b"ztfm/secagg/seed-commit/v1" + p.digest + lp(device) + seed).digest()


def advert_payload(
    p: SecAggParams, device: DeviceId, channel: bytes, mask: bytes, commit: bytes
) -> bytes:
    return b"ztfm/secagg/advertise/v1" + p.digest + lp(device) + channel + mask + commit


def survivors_payload(p: SecAggParams, survivors: tuple[DeviceId, ...]) -> bytes:
    return b"ztfm/secagg/survivors/v1" + p.digest + b"".join(lp(d) for d in survivors)


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """The single-use keys of one pair's channel, from one HKDF call over the X25519 secret of
    the two channel keys: an AES-GCM key for the share message in each direction and a MAC key
    for the survivor-list confirmation in each direction (64 bytes of output, four 16-byte
    keys, each bound by its position to a purpose and a direction)."""

    low: DeviceId
    high: DeviceId
    okm: bytes

    def _at(self, sender: DeviceId, to: DeviceId, slot: int) -> bytes:
        if (sender, to) == (self.low, self.high):
            i = slot
        elif (sender, to) == (self.high, self.low):
            i = slot + 1
        else:
            raise ValueError(f"{sender!r} -> {to!r} is not this channel")
        return self.okm[16 * i : 16 * (i + 1)]

    def share(self, sender: DeviceId, to: DeviceId) -> bytes:
        """AES-GCM key for the share message ``sender -> to``."""
        return self._at(sender, to, 0)

    def confirm(self, sender: DeviceId, to: DeviceId) -> bytes:
        """MAC key for ``sender``'s confirmation of the survivor list to ``to``."""
        return self._at(sender, to, 2)


def channel_keys(p: SecAggParams, shared: bytes, a: DeviceId, b: DeviceId) -> ChannelKeys:
    """Every key of the ``a``-``b`` channel; ``shared`` is the X25519 secret of the two channel
    keys (symmetric: both ends derive the same four keys)."""
    if a == b:
        raise ValueError("a channel needs two devices")
    lo, hi = (a, b) if a < b else (b, a)
    info = b"ztfm/secagg/channel/v2" + lp(lo) + lp(hi)
    return ChannelKeys(lo, hi, derive_key(shared, salt=p.digest, info=info, length=64))


def share_aad(p: SecAggParams, sender: DeviceId, to: DeviceId) -> bytes:
    return b"ztfm/secagg/share-aad/v1" + p.digest + lp(sender) + lp(to)


def pair_seed(p: SecAggParams, shared: bytes, a: DeviceId, b: DeviceId) -> bytes:
    """The 32-byte PRG seed of the pairwise mask between ``a`` and ``b`` (symmetric)."""
    lo, hi = (a, b) if a < b else (b, a)
    return derive_key(shared, salt=p.digest, info=b"ztfm/secagg/mask/v1" + lp(lo) + lp(hi))


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The single-use MAC keys between one device and the server (one HKDF call)."""

    input: bytes  # the masked input
    unmask: bytes  # the unmask response


def server_keys(p: SecAggParams, shared: bytes, device: DeviceId) -> ServerKeys:
    """MAC keys between ``device`` and the server; ``shared`` is X25519(server, channel key)."""
    okm = derive_key(shared, salt=p.digest, info=b"ztfm/secagg/to-server/v2" + lp(device))
    return ServerKeys(okm[:16], okm[16:])


def unmask_transcript(
    p: SecAggParams,
    device: DeviceId,
    seeds: Mapping[DeviceId, bytes],
    keys: Mapping[DeviceId, bytes],
) -> bytes:
    parts = [b"ztfm/secagg/unmask/v1", p.digest, lp(device)]
    add = parts.append
    for d in sorted(seeds):
        add(_seed_label(d))  # b"S" + lp(d)
        add(seeds[d])
    for d in sorted(keys):
        add(_key_label(d))  # b"K" + lp(d)
        add(keys[d])
    return b"".join(parts)


@lru_cache(maxsize=1 << 16)
def _seed_label(d: DeviceId) -> bytes:
    return b"S" + lp(d)


@lru_cache(maxsize=1 << 16)
def _key_label(d: DeviceId) -> bytes:
    return b"K" + lp(d)
