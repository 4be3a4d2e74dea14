"""Labels, transcripts and key derivations shared by client and server (one place, so the two
sides cannot drift apart). Every derivation binds the round digest and the parties' ids."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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


def share_key(p: SecAggParams, shared: bytes, sender: DeviceId, to: DeviceId) -> bytes:
    """Single-use AES-GCM key for the share message ``sender -> to`` (direction-specific);
    ``shared`` is the X25519 secret of the two channel keys."""
    info = b"ztfm/secagg/share/v1" + lp(sender) + lp(to)
    return derive_key(shared, salt=p.digest, info=info, length=16)


def confirm_key(p: SecAggParams, shared: bytes, sender: DeviceId, to: DeviceId) -> bytes:
    """Single-use MAC key for ``sender``'s confirmation of the survivor list to ``to``."""
    info = b"ztfm/secagg/confirm/v1" + lp(sender) + lp(to)
    return derive_key(shared, salt=p.digest, info=info, length=16)


def share_aad(p: SecAggParams, sender: DeviceId, to: DeviceId) -> bytes:
    return b"ztfm/secagg/share-aad/v1" + p.digest + lp(sender) + lp(to)


def pair_seed(p: SecAggParams, shared: bytes, a: DeviceId, b: DeviceId) -> bytes:
    """The 32-byte PRG seed of the pairwise mask between ``a`` and ``b`` (symmetric)."""
    lo, hi = (a, b) if a < b else (b, a)
    return derive_key(shared, salt=p.digest, info=b"ztfm/secagg/mask/v1" + lp(lo) + lp(hi))


def server_key(p: SecAggParams, shared: bytes, device: DeviceId, purpose: bytes) -> bytes:
    """Single-use MAC key between ``device`` and the server for ``purpose``."""
    info = b"ztfm/secagg/to-server/v1" + lp(purpose) + lp(device)
    return derive_key(shared, salt=p.digest, info=info, length=16)


def unmask_transcript(
    p: SecAggParams,
    device: DeviceId,
    seeds: Mapping[DeviceId, bytes],
    keys: Mapping[DeviceId, bytes],
) -> bytes:
    parts = [b"ztfm/secagg/unmask/v1", p.digest, lp(device)]
    for d in sorted(seeds):
        parts += [b"S", lp(d), seeds[d]]
    for d in sorted(keys):
        parts += [b"K", lp(d), keys[d]]
    return b"".join(parts)
