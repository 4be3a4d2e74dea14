"""SecAgg+ over real gRPC + mTLS, in one process (server and device runners in threads).

``[secagg] enabled`` over the network runs the protocol's phases (advertise, share, mask,
confirm, unmask) as tasks and replies on GetRound / SubmitUpdate. For the same seed the
unmasked sums, hence the model and every metric, equal ``ztfm simulate``'s:

* 5 devices, 2 rounds, distributed noise + stochastic rounding (one group), and groups of 2 +
  median + top-k compression in a 16-bit field;
* a device that crashes after sending its masked input is unmasked from its neighbours' shares:
  the model equals simulate's with that device dropping before the unmask phase;
* a device cannot reply in another device's name, nor replay an earlier phase's reply, nor slip
  another device's protocol message into its own reply: each is refused and the round goes on;
* too few survivors: the round fails with a one-line reason in the round log;
* a malicious coordinator that substitutes a neighbour's SecAgg identity key is caught by the
  device (the key is not endorsed by the neighbour's certificate): it sits the round out and
  goes on; a train reply whose key its own certificate does not endorse is refused and audited.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest
from small_fleet import SMALL_FLEET_TOML

from ztfm.audit import MemoryAuditSink
from ztfm.cli.coordinator import network_metrics
from ztfm.coordinator.server import CoordinatorServer, UnsafeAssumeAttested
from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.signing import SigningKey
from ztfm.device.runner import DeviceRunner, PollBackoff
from ztfm.device.secure import SecureEndpoint
from ztfm.fl import codec
from ztfm.fl.messages import SecAggReply, SecAggTask
from ztfm.secagg.codec import decode_message, encode_message
from ztfm.sim.config import SimConfig, load_config
from ztfm.sim.fleet import build_fleet
from ztfm.sim.network import coordinator_scenario, secure_aggregator, secure_endpoint
from ztfm.sim.runner import Simulation
from ztfm.transport.grpc_client import RpcFailed
from ztfm.transport.grpc_fleet import LocalFleet

N_ROUNDS, SEED, N_DEVICES = 2, 3, 5
BASE = SMALL_FLEET_TOML


class _Crash(Exception):
    """A device process dies mid-protocol."""


def _config(tmp: Any, privacy: str = "", secagg: str = "", tail: str = "") -> SimConfig:
    path = tmp / "cfg.toml"
    path.write_text(
        BASE + f"[privacy]\nclip_norm = 0.5\n{privacy}[secagg]\nenabled = true\n{secagg}{tail}"
    )
    cfg = load_config(path)
    return replace(
        cfg,
        seed=SEED,
        fleet=replace(cfg.fleet, devices=N_DEVICES),
        rounds=replace(cfg.rounds, rounds=N_ROUNDS),
    )


class _Rig:
    """What ``ztfm coordinator serve`` + ``ztfm device run --fleet-index K`` do, in threads."""

    def __init__(
        self,
        cfg: SimConfig,
        *,
        phase_deadline_s: float = 20.0,
        linger_s: float = 5.0,
        service_cls: type[CoordinatorService] = CoordinatorService,
    ) -> None:
        self.cfg = cfg
        self.linger_s = linger_s
        self.fleet = build_fleet(cfg.fleet, cfg.detector)
        now = time.time()
        self.ca = LocalFleet.create("fleet.local", now)
        self.audit = MemoryAuditSink()
        sc = coordinator_scenario(cfg, self.fleet, self.audit, time.time)
        self.coord = sc.coordinator(cfg, self.fleet.n_features)
        self.sc = sc
        self.service = service_cls(
            self.coord,
            rounds=cfg.rounds.rounds,
            expected_devices=len(self.fleet.devices),
            on_round=sc.on_round,
            eval_deadline_s=phase_deadline_s,
            secure=secure_aggregator(cfg, self.coord.spec.size, sc.scenario),
            secure_deadline_s=phase_deadline_s,
        )
        self.server = CoordinatorServer(
            self.ca, self.service, self.audit, UnsafeAssumeAttested(), tick_s=0.01
        )
        self.endpoints = [secure_endpoint(cfg, self.fleet, k) for k in range(N_DEVICES)]
        self.runners: list[DeviceRunner] = []
        self.crashed: list[str] = []

    def run(self, wrap: dict[int, Any] | None = None) -> dict[str, Any]:
        ends = self.server.start()
        now = time.time()
        try:
            for k, d in enumerate(self.fleet.devices):
                creds = self.ca.enroll(d.segment, d.device_id, now)
                endpoint: Any = self.endpoints[k]
                runner = DeviceRunner(
                    creds.identity,
                    creds.keystore,
                    self.ca.ca.cert,
                    endpoint,
                    ends.fleet,
                    np.random.default_rng(k),
                    cert=creds.cert,
                    backoff=PollBackoff(0.005, 2.0, 0.03),
                )
                if wrap and k in wrap:
                    runner.endpoint = wrap[k](endpoint, runner)
                self.runners.append(runner)
            threads = [threading.Thread(target=self._run_one, args=(r,)) for r in self.runners]
            for t in threads:
                t.start()
            assert self.server.wait(120), self.service.log.failures
            self.server.linger(self.linger_s)
            for t in threads:
                t.join(30)
        finally:
            self.server.stop()
        return network_metrics(self.cfg, self.service, self.fleet.n_features, 0.0, self.sc.rounds)

    def _run_one(self, runner: DeviceRunner) -> None:
        try:
            runner.run()
        except _Crash:
            self.crashed.append(runner.identity.device_id)


NOISE = "noise_multiplier = 0.8\n"  # distributed noise, stochastic rounding: the device rng


def _simulate(cfg: SimConfig) -> tuple[list[dict[str, Any]], list[list[np.ndarray]]]:
    """Simulate's round records and its model after each round."""
    sim = Simulation(cfg)
    records, models = [], []
    for r in range(cfg.rounds.rounds):
        records.append(sim.run_round(r))
        models.append([p.copy() for p in sim.coordinator.params])
    return records, models


def _assert_same_model(rig: _Rig, want: list[np.ndarray], version: int) -> None:
    assert rig.coord.model_version == version
    assert all(np.array_equal(g, w) for g, w in zip(rig.coord.params, want, strict=True))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    torch.set_num_threads(1)
    return _simulate(_config(tmp_path_factory.mktemp("sim"), NOISE))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as in the device processes


def _assert_equal_to_simulate(
    rig: _Rig, got: dict[str, Any], expected: list[dict[str, Any]], models: Any
) -> None:
    assert not got["failures"] and len(got["rounds"]) == N_ROUNDS
    _assert_same_model(rig, models[-1], N_ROUNDS)
    for e, g in zip(expected, got["rounds"], strict=True):
        assert g["global"] == pytest.approx(e["global"], rel=1e-12, abs=1e-12)
        for dev, rates in e["per_device"].items():
            assert g["per_device"][dev] == pytest.approx(rates, rel=1e-12, abs=1e-12)
        assert sorted(g["accepted"]) == sorted(e["accepted"]) and len(g["accepted"]) == N_DEVICES
        # the wire carries the same SecAgg messages as simulate plus the round framing
        for dev in e["bytes_up"]:
            assert e["bytes_up"][dev] < g["bytes_up"][dev] < e["bytes_up"][dev] + 2000
            assert e["bytes_down"][dev] < g["bytes_down"][dev] < e["bytes_down"][dev] + 4000
    assert all(ep.rounds_masked == N_ROUNDS for ep in rig.endpoints)
    # the coordinator never held a device's update: no UpdateReply was ever accepted
    assert not [e for e in rig.sc.events if e.get("event") == "update_accepted"]


def test_secure_rounds_with_distributed_noise_equal_simulate(tmp_path: Any, simulated: Any) -> None:
    rig = _Rig(_config(tmp_path, NOISE))
    _assert_equal_to_simulate(rig, rig.run(), *simulated)


def test_groups_median_topk_16_bit_and_group_trust_equal_simulate(tmp_path: Any) -> None:
    cfg = _config(
        tmp_path,
        secagg="group_size = 2\nbits = 16\n",
        tail='[robust]\naggregator = "median"\n[compression]\nkeep_ratio = 0.25\n'
        "[trust]\nenabled = true\n",
    )
    rig = _Rig(cfg)
    got = rig.run()
    expected, models = _simulate(cfg)
    _assert_equal_to_simulate(rig, got, expected, models)
    # group-level trust: the same scores as simulate, moved by group means only
    for e, g in zip(expected, got["rounds"], strict=True):
        assert g["trust"] == pytest.approx(e["trust"], rel=1e-12)
    assert len(set(expected[-1]["trust"].values())) > 1  # the group observations moved them
    assert all(r["bytes_up"] for r in got["rounds"])


class _CrashAt:
    """Crashes the device when it is handed ``phase`` of round ``round_id``."""

    def __init__(self, inner: SecureEndpoint, phase: str, round_id: int) -> None:
        self.inner, self.phase, self.round_id = inner, phase, round_id

    def handle(self, data: bytes) -> bytes:
        if codec.kind_of(data) is SecAggTask:
            task = codec.decode(data)
            assert isinstance(task, SecAggTask)
            if (task.phase, task.round_id) == (self.phase, self.round_id):
                raise _Crash
        return self.inner.handle(data)


def test_device_dropping_after_its_masked_input_is_recovered(tmp_path: Any, simulated: Any) -> None:
    cfg = _config(tmp_path, NOISE)
    cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=1))
    rig = _Rig(cfg, phase_deadline_s=2.0, linger_s=0.5)
    ids = sorted(d.device_id for d in rig.fleet.devices)
    victim = 1  # fleet index of the device that dies after its masked input
    name = rig.fleet.devices[victim].device_id
    got = rig.run({victim: lambda ep, _r: _CrashAt(ep, "confirm", 1)})
    assert rig.crashed == [name]
    assert not got["failures"] and len(got["rounds"]) == 1
    # its masked input counts: its self mask is rebuilt from its neighbours' shares, so the
    # sum and the model are simulate's (where a drop before unmask is recovered the same way:
    # tests/unit/sim/test_secure.py), bit for bit
    assert sorted(got["rounds"][0]["accepted"]) == ids and name not in got["rounds"][0]["rejected"]
    assert name not in got["rounds"][0]["per_device"]  # it did not live to evaluate
    _assert_same_model(rig, simulated[1][0], 1)


class _Forger:
    """A device that, when handed its ``mask`` task of round 1, first tries to (a) reply in a
    neighbour's name, (b) replay its own reply of the ``share`` phase, (c) wrap a protocol
    message naming another device in its own reply; then answers honestly."""

    def __init__(self, inner: SecureEndpoint, runner: DeviceRunner, other: str) -> None:
        self.inner, self.runner, self.other = inner, runner, other
        self.last_reply = b""
        self.refusals: list[str] = []

    def handle(self, data: bytes) -> bytes:
        task = codec.decode(data) if codec.kind_of(data) is SecAggTask else None
        reply = self.inner.handle(data)
        if isinstance(task, SecAggTask) and (task.phase, task.round_id) == ("mask", 1):
            mine = codec.decode(reply)
            assert isinstance(mine, SecAggReply)
            masked = decode_message(mine.payload)
            as_other = replace(masked, device=self.other)  # type: ignore[type-var]
            attempts = [
                codec.encode(replace(mine, device_id=self.other)),
                self.last_reply,
                codec.encode(replace(mine, payload=encode_message(as_other))),
            ]
            client = self.runner.client
            assert client is not None
            for bad in attempts:
                try:
                    client.call("SubmitUpdate", bad, round_id=1)
                except RpcFailed as exc:
                    assert exc.status == grpc.StatusCode.FAILED_PRECONDITION
                    self.refusals.append(exc.details)
        self.last_reply = reply
        return reply


def test_forged_and_replayed_phase_messages_are_refused(tmp_path: Any, simulated: Any) -> None:
    cfg = _config(tmp_path, NOISE)
    cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=1))
    rig = _Rig(cfg)
    other = rig.fleet.devices[1].device_id
    forgers: list[_Forger] = []

    def wrap(ep: SecureEndpoint, runner: DeviceRunner) -> _Forger:
        forgers.append(_Forger(ep, runner, other))
        return forgers[-1]

    got = rig.run({0: wrap})
    assert len(forgers[0].refusals) == 3
    reasons = " | ".join(str(r["detail"]) for r in rig.audit.of("rpc.handler_error"))
    assert "in the name of" in reasons and "stale or replayed" in reasons
    # the refused messages changed nothing: the honest replies went through, model as simulate
    assert not got["failures"]
    _assert_same_model(rig, simulated[1][0], 1)


def test_too_few_survivors_fail_the_round_in_one_line(tmp_path: Any) -> None:
    cfg = _config(tmp_path)
    cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=1))
    rig = _Rig(cfg, phase_deadline_s=2.0, linger_s=0.5)
    # three of five devices die before sending their masked input: t = 3 of k = 4 cannot hold
    got = rig.run({k: (lambda ep, _r: _CrashAt(ep, "mask", 1)) for k in (0, 1, 2)})
    assert len(rig.crashed) == 3
    (reason,) = got["failures"]
    assert "\n" not in reason and reason.startswith("round 1: SecAgg group of 5 aborted")
    assert rig.coord.model_version == 0 and rig.coord.round is None
    # the failed round is in the audit log with its reason
    (failed,) = rig.audit.of("round.failed")
    assert failed["round"] == 1 and "SecAgg group of 5 aborted" in failed["reason"]


class _SwappingCoordinator(CoordinatorService):
    """A malicious coordinator: in the ``advertise`` task of ``victim`` it replaces the first
    neighbour's SecAgg identity key with a key of its own (keeping that neighbour's genuine
    certificate and endorsement), to sit in the middle of their key agreement."""

    victim = ""
    own_key = SigningKey.generate().verify_key.raw

    def next_task(self, device_id: str) -> bytes:
        data = super().next_task(device_id)
        if device_id != self.victim or codec.kind_of(data) is not SecAggTask:
            return data
        task = codec.decode(data)
        assert isinstance(task, SecAggTask)
        if task.phase != "advertise":
            return data
        cfg = codec.decode_secure_config(task.payload)
        nb = sorted(cfg.identities)[0]
        ids = {**cfg.identities, nb: replace(cfg.identities[nb], key=self.own_key)}
        payload = codec.encode_secure_config(replace(cfg, identities=ids))
        return codec.encode(replace(task, payload=payload))


def test_substituted_neighbour_key_is_caught_and_the_device_sits_the_round_out(
    tmp_path: Any,
) -> None:
    cfg = _config(tmp_path, NOISE)
    cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=1))
    rig = _Rig(cfg, phase_deadline_s=2.0, linger_s=0.5, service_cls=_SwappingCoordinator)
    victim = sorted(d.device_id for d in rig.fleet.devices)[0]
    assert isinstance(rig.service, _SwappingCoordinator)
    rig.service.victim = victim
    got = rig.run()
    k = [d.device_id for d in rig.fleet.devices].index(victim)
    ep, runner = rig.endpoints[k], rig.runners[k]
    # the device refused the substituted key before using it, and produced no masked input
    ((round_id, reason),) = ep.aborts
    assert round_id == 1 and "not endorsed by its device certificate" in reason
    assert "does not verify" in reason and ep.rounds_masked == 0
    # it sent nothing for that phase (a dropout for the coordinator) and went on to the end
    assert runner.stats.aborted == 1 and runner.stats.finished and not rig.crashed
    (rec,) = got["rounds"]
    assert victim not in rec["accepted"] and len(rec["accepted"]) == N_DEVICES - 1
    assert "advertise" in rec["rejected"][victim]
    assert all(e.rounds_masked == 1 for i, e in enumerate(rig.endpoints) if i != k)


class _UnendorsedFirst:
    """A device whose first train reply carries a SecAgg key its certificate did not endorse
    (then it answers honestly)."""

    def __init__(self, inner: SecureEndpoint, runner: DeviceRunner) -> None:
        self.inner, self.runner = inner, runner
        self.refusals: list[str] = []

    def handle(self, data: bytes) -> bytes:
        reply = self.inner.handle(data)
        msg = codec.decode(reply)
        if isinstance(msg, SecAggReply) and msg.phase == "train" and not self.refusals:
            ek = codec.decode_endorsed_key(msg.payload)
            bad = replace(ek, key=SigningKey.generate().verify_key.raw)
            forged = codec.encode(replace(msg, payload=codec.encode_endorsed_key(bad)))
            client = self.runner.client
            assert client is not None
            try:
                client.call("SubmitUpdate", forged, round_id=msg.round_id)
            except RpcFailed as exc:
                assert exc.status == grpc.StatusCode.FAILED_PRECONDITION
                self.refusals.append(exc.details)
        return reply


def test_train_reply_with_an_unendorsed_key_is_refused_and_audited(
    tmp_path: Any, simulated: Any
) -> None:
    cfg = _config(tmp_path, NOISE)
    cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=1))
    rig = _Rig(cfg)
    wrappers: list[_UnendorsedFirst] = []

    def wrap(ep: SecureEndpoint, runner: DeviceRunner) -> _UnendorsedFirst:
        wrappers.append(_UnendorsedFirst(ep, runner))
        return wrappers[-1]

    got = rig.run({2: wrap})
    assert len(wrappers[0].refusals) == 1
    reasons = " | ".join(str(r["detail"]) for r in rig.audit.of("rpc.handler_error"))
    assert "not endorsed by its device certificate" in reasons
    # the refusal changed nothing: the genuine reply went through, model as simulate
    assert not got["failures"]
    _assert_same_model(rig, simulated[1][0], 1)
