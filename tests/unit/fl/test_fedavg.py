"""FedAvg, round state and the in-process transport, on a fake model (logic only)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.fl.fakes import MeanModel
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.device.agent import DeviceAgent, DeviceData, roc_auc
from ztfm.errors import RoundError, UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.fl.params import ParamSpec
from ztfm.fl.strategy import FedAvg
from ztfm.transport.inproc import InProcessTransport, LatencyModel

D = 3


def _reply(dev: str, delta: float, n: int, task: RoundTask) -> UpdateReply:
    return UpdateReply(
        task.round_id,
        dev,
        task.model_version,
        [np.full(D, delta, np.float32), np.zeros(1, np.float32)],
        n,
        0.0,
        task.nonce,
    )


def _coord(events: list[dict[str, object]] | None = None, **kw: object) -> Coordinator:
    params = [np.zeros(D, np.float32), np.zeros(1, np.float32)]
    sink = events.append if events is not None else None
    c = Coordinator(
        params,
        FedAvg(**kw),
        RoundSettings(deadline_s=10.0),  # type: ignore[arg-type]
        rng=np.random.default_rng(0),
        events=sink,
    )
    for d in ("a", "b", "c"):
        c.register(d, "seg")
    return c


def test_fedavg_weights_by_sample_count() -> None:
    c = _coord()
    tasks = c.open_round(0.0)
    c.submit("a", _reply("a", 1.0, 100, tasks["a"]), 1.0)
    c.submit("b", _reply("b", 4.0, 300, tasks["b"]), 1.0)
    c.submit("c", _reply("c", 0.0, 600, tasks["c"]), 1.0)
    c.close_round(11.0)
    # (1*100 + 4*300 + 0*600) / 1000 = 1.3
    np.testing.assert_allclose(c.params[0], np.full(D, 1.3, np.float32), rtol=1e-6)
    assert c.model_version == 1


def test_equal_weights_when_counts_are_untrusted() -> None:
    c = _coord(weight_by_samples=False)
    tasks = c.open_round(0.0)
    for dev, v, n in (("a", 1.0, 1), ("b", 4.0, 10**6), ("c", 1.0, 5)):
        c.submit(dev, _reply(dev, v, n, tasks[dev]), 1.0)
    c.close_round(11.0)
    np.testing.assert_allclose(c.params[0], np.full(D, 2.0, np.float32), rtol=1e-6)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (lambda t: _reply("a", np.nan, 10, t), "NaN"),
        (lambda t: _reply("a", np.inf, 10, t), "NaN or Inf"),
        (
            lambda t: UpdateReply(
                t.round_id,
                "a",
                t.model_version,
                [np.zeros(D + 1, np.float32), np.zeros(1, np.float32)],
                10,
                0.0,
                t.nonce,
            ),
            "shape",
        ),
        (
            lambda t: UpdateReply(
                t.round_id, "a", t.model_version, [np.zeros(D, np.float32)], 10, 0.0, t.nonce
            ),
            "arrays",
        ),
        (lambda t: _reply("b", 1.0, 10, t), "claiming device id"),
        (
            lambda t: UpdateReply(
                t.round_id + 1, "a", t.model_version, _reply("a", 1, 1, t).delta, 10, 0.0, t.nonce
            ),
            "round",
        ),
        (
            lambda t: UpdateReply(
                t.round_id, "a", t.model_version, _reply("a", 1, 1, t).delta, 10, 0.0, b"x" * 16
            ),
            "nonce",
        ),
        (lambda t: _reply("a", 1.0, 0, t), "sample count"),
    ],
)
def test_bad_reply_is_excluded_with_reason_and_round_completes(bad, reason) -> None:  # type: ignore[no-untyped-def]
    events: list[dict[str, object]] = []
    c = _coord(events)
    tasks = c.open_round(0.0)
    with pytest.raises(UpdateRejected, match=reason):
        c.submit("a", bad(tasks["a"]), 1.0)
    c.submit("b", _reply("b", 2.0, 10, tasks["b"]), 1.0)
    summary = c.close_round(11.0)
    assert "a" in summary.rejected and reason.split()[0] in summary.rejected["a"]
    assert summary.accepted == ("b",)
    assert any(e["event"] == "update_rejected" and e["device"] == "a" for e in events)
    np.testing.assert_allclose(c.params[0], np.full(D, 2.0, np.float32))


def test_late_reply_and_silent_device_are_timed_out() -> None:
    c = _coord()
    tasks = c.open_round(0.0)
    with pytest.raises(UpdateRejected, match="deadline"):
        c.submit("a", _reply("a", 1.0, 10, tasks["a"]), 10.5)
    c.submit("b", _reply("b", 1.0, 10, tasks["b"]), 2.0)
    summary = c.close_round(11.0)
    assert "deadline" in summary.rejected["a"]
    assert summary.rejected["c"] == "no reply before the deadline"
    assert summary.timed_out == ("c",)


def test_duplicate_reply_rejected() -> None:
    c = _coord()
    tasks = c.open_round(0.0)
    c.submit("a", _reply("a", 1.0, 10, tasks["a"]), 1.0)
    with pytest.raises(UpdateRejected, match="already"):
        c.submit("a", _reply("a", 5.0, 10, tasks["a"]), 1.0)


def test_malformed_bytes_rejected() -> None:
    c = _coord()
    c.open_round(0.0)
    for junk in (b"", b"ZTFM\x01\x02\xff\xff\xff\xff", b"\x00" * 100):
        with pytest.raises(UpdateRejected):
            c.submit_bytes("a", junk, 1.0)


def test_too_few_replies_fails_round() -> None:
    c = _coord(min_devices=2)
    tasks = c.open_round(0.0)
    c.submit("a", _reply("a", 1.0, 10, tasks["a"]), 1.0)
    with pytest.raises(RoundError):
        c.close_round(11.0)
    assert c.model_version == 0 and c.round is None


def _fleet(
    seed: int, n: int = 6, latency: LatencyModel | None = None
) -> tuple[Coordinator, InProcessTransport, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    agents = {}
    raw = {}
    for i in range(n):
        centre = rng.normal(size=D)
        train = (centre + rng.normal(size=(50, D))).astype(np.float32)
        test_x = np.concatenate(
            [centre + rng.normal(size=(20, D)), centre + 6 + rng.normal(size=(20, D))]
        ).astype(np.float32)
        test_y = np.r_[np.zeros(20), np.ones(20)].astype(np.int8)
        dev = f"dev{i}"
        raw[dev] = np.concatenate([train, test_x])
        agents[dev] = DeviceAgent(
            dev,
            "seg",
            MeanModel(D),
            DeviceData(train, train, test_x, test_y),
            rng=np.random.default_rng([seed, i]),
            target_far=0.05,
        )
    coord = Coordinator(
        MeanModel(D).get_params(),
        FedAvg(fraction=0.5, min_devices=1),
        RoundSettings(local_epochs=2, deadline_s=5.0),
        rng=np.random.default_rng(seed),
    )
    for dev in agents:
        coord.register(dev, "seg")
    return (
        coord,
        InProcessTransport(agents, rng=np.random.default_rng(seed + 1), latency=latency),
        raw,
    )


def _run(seed: int) -> tuple[list[float], dict[str, tuple[int, int, int, int, float]]]:
    coord, tr, _ = _fleet(seed, latency=LatencyModel(straggler_prob=0.3, failure_prob=0.1))
    losses = []
    for r in range(4):
        tr.run_round(coord, now=100.0 * r)
        losses.append(float(coord.params[0].sum()))
    evals = {d: (e.tp, e.fp, e.fn, e.tn, e.roc_auc) for d, e in tr.run_eval(coord).items()}
    return losses, evals


def test_same_seed_same_metrics_and_different_seed_differs() -> None:
    assert _run(3) == _run(3)
    assert _run(3) != _run(4)


def test_stragglers_are_excluded_and_rounds_complete() -> None:
    coord, tr, _ = _fleet(
        5, latency=LatencyModel(base_s=1.0, straggler_prob=0.5, straggler_factor=20.0)
    )
    late = 0
    for r in range(5):
        traffic = tr.run_round(coord, now=100.0 * r)
        summary = traffic.summary
        late += sum("deadline" in v for v in summary.rejected.values())  # type: ignore[attr-defined]
    assert late > 0
    assert coord.model_version == 5


def test_devices_never_send_telemetry() -> None:
    """Inspect every message a device sends: only a delta of the model's shape and scalars."""
    coord, tr, raw = _fleet(7)
    sent: list[bytes] = []
    for ep in tr.endpoints.values():
        orig = ep.handle

        def spy(data: bytes, _orig=orig) -> bytes:  # type: ignore[no-untyped-def]
            out = _orig(data)
            sent.append(out)
            return out

        ep.handle = spy  # type: ignore[method-assign]
    tr.run_round(coord, now=0.0)
    tr.run_eval(coord)
    spec = ParamSpec.of(coord.params)
    assert sent
    for data in sent:
        msg = codec.decode(data)
        if isinstance(msg, UpdateReply):
            assert sum(a.size for a in msg.delta) == spec.size
            # fixed header + exactly the parameter bytes: no room for a telemetry row
            assert len(data) < 4 * spec.size + 400
        else:
            assert len(data) < 400
        for rows in raw.values():
            for row in rows[:: max(1, len(rows) // 10)]:
                assert row.astype("<f4").tobytes() not in data


def test_eval_roc_auc_on_separable_data() -> None:
    coord, tr, _ = _fleet(9)
    for r in range(3):
        tr.run_round(coord, now=100.0 * r)
    evals = tr.run_eval(coord)
    assert all(e.roc_auc > 0.9 for e in evals.values())


def test_roc_auc_reference() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), y) == 0.75
    assert roc_auc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) == -1.0
    # a broken model (NaN scores) still reports its counts, with the AUC undefined
    assert roc_auc(np.array([0.1, np.nan, 0.3, 0.8]), y) == -1.0


def test_codec_round_trip_and_rejections() -> None:
    task = RoundTask(
        3,
        2,
        [np.arange(6, dtype=np.float32).reshape(2, 3)],
        1,
        0.1,
        5.0,
        b"\x01" * 16,
        {"clip": 1.0},
    )
    out = codec.decode(codec.encode(task))
    assert isinstance(out, RoundTask) and out.settings == {"clip": 1.0}
    np.testing.assert_array_equal(out.params[0], task.params[0])
    data = codec.encode(task)
    with pytest.raises(UpdateRejected, match="truncated"):
        codec.decode(data[:-1])
    with pytest.raises(UpdateRejected, match="trailing"):
        codec.decode(data + b"\x00")
    with pytest.raises(UpdateRejected, match="limit"):
        codec.decode(data, max_bytes=10)


def test_evaluation_replies_are_checked_like_updates() -> None:
    from ztfm.fl.messages import EvalReply

    c = _coord()
    with pytest.raises(RoundError, match="no evaluation is open"):
        c.submit_eval("a", EvalReply(0, "a", 0, 1, 1, 1, 1, 0.5, b"x" * 16))
    tasks = c.eval_tasks(["a", "b"])

    def reply(dev: str, **kw: object) -> EvalReply:
        t = tasks.get(dev, tasks["a"])
        base = {
            "round_id": t.round_id,
            "device_id": dev,
            "model_version": t.model_version,
            "tp": 1,
            "fp": 2,
            "fn": 3,
            "tn": 4,
            "roc_auc": 0.7,
            "nonce": t.nonce,
        }
        base.update(kw)
        return EvalReply(**base)  # type: ignore[arg-type]

    for sender, bad, match in [
        ("c", reply("c"), "not selected"),  # not asked to evaluate
        ("a", reply("b"), "claiming"),  # speaks for another device
        ("a", reply("a", tp=-1), "out of range"),  # negative counts
        ("a", reply("a", roc_auc=1.5), "ROC-AUC"),
        ("a", reply("a", nonce=b"y" * 16), "nonce"),  # replayed from another task
    ]:
        with pytest.raises(UpdateRejected, match=match):
            c.submit_eval(sender, bad)
    c.submit_eval("a", reply("a"))
    with pytest.raises(UpdateRejected, match="already"):
        c.submit_eval("a", reply("a"))
    assert set(c.eval_results()) == {"a"}
