"""`ztfm simulate` with [compression] and no [secagg]: each device uploads its own top-k.

The coordinator is handed exactly the dense expansion of what each device sent (the codec
rebuilds it from the compact bytes), uploads are many times smaller than the dense model, the
residual carries the rest to the next round, and a malformed or mismatched sparse upload is
refused at the codec with a reason.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from sim_overlay import overlay, overlay_fleet

from ztfm.errors import UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.privacy.sparse import TopKCompressor
from ztfm.sim.config import SimConfig
from ztfm.sim.fleet import Fleet
from ztfm.sim.runner import Simulation, run_simulation, update_compressor

BASE: dict[str, Any] = {
    "fleet": {"devices": 6},
    "rounds": {"rounds": 2, "local_epochs": 1},
    "compare": {"local_only": False, "centralised": False},
}


def _cfg(**sections: dict[str, Any]) -> SimConfig:
    return overlay(BASE, **sections)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return overlay_fleet(BASE)


def _reply(n: int = 50, seed: int = 0) -> UpdateReply:
    rng = np.random.default_rng(seed)
    sent = TopKCompressor(0.2, 4).compress(rng.normal(size=n), rng)
    flat = sent.dense().astype(np.float32)
    delta = [flat[:30].reshape(5, 6), flat[30:]]
    return UpdateReply(1, "dev-a", 1, delta, 10, 0.5, b"\x01" * 16, sent)


def _rehead(data: bytes, extra: dict[str, Any]) -> bytes:
    """The message with keys added to its JSON header (the length prefix fixed up)."""
    head = struct.Struct(">4sBBI")
    magic, version, kind, hlen = head.unpack_from(data)
    header = {**json.loads(data[head.size : head.size + hlen]), **extra}
    raw = json.dumps(header, separators=(",", ":")).encode()
    return head.pack(magic, version, kind, len(raw)) + raw + data[head.size + hlen :]


def test_sparse_reply_round_trips_through_the_codec() -> None:
    reply = _reply()
    data = codec.encode(reply)
    dense = codec.encode(UpdateReply(1, "dev-a", 1, reply.delta, 10, 0.5, b"\x01" * 16))
    assert len(data) < len(dense)
    got = codec.decode(data)
    assert isinstance(got, UpdateReply) and got.sparse is not None
    assert [a.shape for a in got.delta] == [(5, 6), (20,)]
    assert all(np.array_equal(a, b) for a, b in zip(got.delta, reply.delta, strict=True))
    assert np.array_equal(got.sparse.indices, reply.sparse.indices)  # type: ignore[union-attr]


def test_mismatched_or_misplaced_sparse_uploads_are_refused() -> None:
    reply = _reply()
    short = UpdateReply(1, "dev-a", 1, reply.delta[:1], 10, 0.5, b"\x01" * 16, reply.sparse)
    with pytest.raises(UpdateRejected, match="does not match the update's size"):
        codec.encode(short)
    data = codec.encode(reply)
    # the header's shapes say 50 coordinates; the same upload claimed for 51 is refused
    forged = data.replace(b'"a":[[5,6],[20]]', b'"a":[[5,6],[21]]')
    assert forged != data
    with pytest.raises(UpdateRejected, match="expected 51"):
        codec.decode(forged)
    with pytest.raises(UpdateRejected, match="sparse update length"):
        codec.decode(data + b"\x00")
    task = codec.encode(RoundTask(1, 1, [np.zeros(3, np.float32)], 1, 0.0, 30.0, b"\x02" * 16))
    tampered = _rehead(task, {"s": 4})
    with pytest.raises(UpdateRejected, match="sparse update it should not"):
        codec.decode(tampered)


def test_simulate_uploads_are_small_and_the_coordinator_gets_the_sent_deltas(
    fleet: Fleet,
) -> None:
    cfg = _cfg(compression={"keep_ratio": 0.1, "value_bits": 4})
    sim = Simulation(cfg, fleet)
    agent = next(iter(sim.agents.values()))
    assert isinstance(agent.compressor, TopKCompressor)
    seen: list[UpdateReply] = []
    sim.coordinator._reply_hooks.append(lambda rid, replies: seen.extend(replies) or replies)
    rec = sim.run_round(0)
    assert rec.get("failed") is None and len(seen) == len(fleet.devices)
    for r in seen:
        assert r.sparse is not None and r.sparse.k == int(np.ceil(0.1 * r.sparse.length))
        flat = np.concatenate([np.ravel(a) for a in r.delta])
        assert np.count_nonzero(flat) <= r.sparse.k
        assert np.array_equal(flat, r.sparse.dense().astype(np.float32))
    for dev, up in rec["bytes_up"].items():
        assert 20 * up < rec["bytes_down"][dev]
    assert agent.compressor.residual is not None and np.any(agent.compressor.residual)


def test_compression_off_and_inside_secagg_use_no_per_device_top_k() -> None:
    assert update_compressor(_cfg()) is None
    secure = _cfg(
        compression={"keep_ratio": 0.1},
        secagg={"enabled": True},
        privacy={"clip_norm": 0.5},
    )
    assert update_compressor(secure) is None
    plain = update_compressor(_cfg(compression={"keep_ratio": 0.1, "value_bits": 6}))
    assert plain is not None and (plain.keep_ratio, plain.bits) == (0.1, 6)


def test_report_says_how_uploads_were_compressed(fleet: Fleet) -> None:
    from ztfm.report.html import render_report

    m = run_simulation(_cfg(compression={"keep_ratio": 0.1}), fleet=fleet).metrics
    page = render_report(m)
    assert "own top 0.1 of the coordinates, values in 4 bits" in page
    assert (
        m["bandwidth"]["mean_bytes_up_per_device_per_round"] * 20
        < (m["bandwidth"]["mean_bytes_down_per_device_per_round"])
    )
