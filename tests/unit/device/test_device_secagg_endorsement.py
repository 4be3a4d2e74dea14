"""A malicious coordinator cannot substitute a neighbour's SecAgg identity key.

The coordinator relays every neighbour's SecAgg key in the ``advertise`` task, so it could swap
one for a key it holds and sit in the middle of the key agreement. Each key now comes with the
neighbour's device certificate and that certificate key's endorsement (fleet, device id, round,
key), and the device checks it against the fleet CA it trusts before using the key. Every
substitution below is caught by the device: it aborts its part in the round with a one-line
reason, drops its update, and no masked input can follow.

Driven in process: the real ``CoordinatorService`` (with ``SecureAggregator``) and the real
device ``SecureEndpoint``s, without gRPC (tests/integration/test_secagg_network.py runs the
same over mTLS).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from small_fleet import SMALL_FLEET_TOML

from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.signing import SigningKey
from ztfm.device.secure import CertCredentials, SecureEndpoint
from ztfm.errors import SecAggError, UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import EndorsedKey, SecAggReply, SecAggTask
from ztfm.identity import CertValidator, RevocationChecker, endorse_secagg_key
from ztfm.sim.config import SimConfig, load_config
from ztfm.sim.fleet import build_fleet
from ztfm.sim.network import coordinator_scenario, secure_aggregator, secure_endpoint
from ztfm.transport.grpc_fleet import Credentials, LocalFleet
from ztfm.transport.grpc_roles import DeviceLoop, PollResult
from ztfm.types import FixedClock

N_DEVICES = 4
FLEET = "fleet.local"
CONFIG = (
    SMALL_FLEET_TOML
    + """
[privacy]
clip_norm = 0.5
[secagg]
enabled = true
"""
)


def _config(tmp: Path) -> SimConfig:
    path = tmp / "cfg.toml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    return replace(
        cfg,
        seed=3,
        fleet=replace(cfg.fleet, devices=N_DEVICES),
        rounds=replace(cfg.rounds, rounds=1),
    )


def _device_validator(ca: LocalFleet, now: float) -> CertValidator:
    """What a device holds: the fleet CA (its --ca-cert) and the CA-signed revocation list."""
    checker = RevocationChecker(ca.ca.cert.public_key, FLEET)
    checker.update(ca.revocations.current(now), now)
    return CertValidator(ca.ca.cert, FLEET, checker)


@dataclass
class _Rig:
    """A coordinator service and its devices (each with a certificate from the fleet CA)."""

    now: float
    ca: LocalFleet
    service: CoordinatorService
    endpoints: dict[str, SecureEndpoint]
    creds: dict[str, Credentials]
    segments: dict[str, str]
    validator: CertValidator
    train_tasks: dict[str, bytes]
    endorsed: dict[str, EndorsedKey]  # each device's genuine train-reply key

    @classmethod
    def build(cls, tmp: Path) -> _Rig:
        import torch

        torch.set_num_threads(1)
        cfg = _config(tmp)
        fleet = build_fleet(cfg.fleet, cfg.detector)
        now = time.time()
        ca = LocalFleet.create(FLEET, now)
        sc = coordinator_scenario(cfg, fleet)
        coord = sc.coordinator(cfg, fleet.n_features)
        service = CoordinatorService(
            coord,
            rounds=1,
            expected_devices=N_DEVICES,
            secure=secure_aggregator(cfg, coord.spec.size),
            endorsements=ca.validator(),
        )
        rig = cls(now, ca, service, {}, {}, {}, _device_validator(ca, now), {}, {})
        clock = FixedClock(now)
        for k, d in enumerate(fleet.devices):
            creds = ca.enroll(d.segment, d.device_id, now)
            ep = secure_endpoint(cfg, fleet, k)
            ep.credentials = CertCredentials(
                creds.identity,
                creds.keystore,
                lambda c=creds: c.cert,  # type: ignore[misc]
                lambda: rig.validator,
                clock,
            )
            rig.endpoints[d.device_id] = ep
            rig.creds[d.device_id] = creds
            rig.segments[d.device_id] = d.segment
        return rig

    def train(self) -> dict[str, bytes]:
        """Run the train phase; return each device's (honest) advertise task."""
        for dev in sorted(self.endpoints):
            self.service.register(dev, self.segments[dev])
        self.service.step(self.now)
        assert self.service.phase == "train"
        for dev, ep in sorted(self.endpoints.items()):
            self.train_tasks[dev] = self.service.next_task(dev)
            reply = ep.handle(self.train_tasks[dev])
            msg = codec.decode(reply)
            assert isinstance(msg, SecAggReply)
            self.endorsed[dev] = codec.decode_endorsed_key(msg.payload)
            self.service.submit(dev, reply, self.now)
        self.service.step(self.now)
        assert self.service.phase == "secure"
        return {dev: self.service.next_task(dev) for dev in sorted(self.endpoints)}

    def run_to_eval(self, first: dict[str, bytes]) -> None:
        """Deliver every task until the round is closed; aborting devices send nothing."""
        tasks, t = first, self.now
        for _ in range(12):
            for dev, task in sorted(tasks.items()):
                if not task or codec.kind_of(task) is not SecAggTask:
                    continue
                with contextlib.suppress(SecAggError):  # an aborting device sends nothing
                    self.service.submit(dev, self.endpoints[dev].handle(task), self.now)
            t += 100.0  # past every phase deadline: whoever has not replied has dropped
            self.service.step(t)
            if self.service.phase != "secure":
                return
            tasks = {dev: self.service.next_task(dev) for dev in self.endpoints}
        raise AssertionError("secure round did not end")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Any:
    r = _Rig.build(tmp_path_factory.mktemp("endorse"))
    return r, r.train()


def test_honest_round_with_endorsed_keys_completes(tmp_path: Path) -> None:
    r = _Rig.build(tmp_path)
    advertise = r.train()
    for dev, ek in r.endorsed.items():
        assert ek.cert == r.creds[dev].cert.der  # the device's own, current certificate
    r.run_to_eval(advertise)
    assert r.service.phase == "eval" and not r.service.log.failures
    assert r.service.coordinator.model_version == 1
    assert all(ep.rounds_masked == 1 and not ep.aborts for ep in r.endpoints.values())


def test_coordinator_refuses_a_train_reply_whose_key_is_not_endorsed(tmp_path: Path) -> None:
    # the early check: security does not depend on it, but a bad key is refused (and, over
    # the network, audited as rpc.handler_error) before any neighbour sees it
    r = _Rig.build(tmp_path)
    for dev in sorted(r.endpoints):
        r.service.register(dev, r.segments[dev])
    r.service.step(r.now)
    dev, other = sorted(r.endpoints)[:2]
    reply = codec.decode(r.endpoints[dev].handle(r.service.next_task(dev)))
    assert isinstance(reply, SecAggReply)
    ek = codec.decode_endorsed_key(reply.payload)
    other_ek = r.endpoints[other].credentials.endorse(1, bytes(32))  # type: ignore[union-attr]
    forged = [
        replace(ek, key=SigningKey.generate().verify_key.raw),  # key swapped
        replace(ek, cert=other_ek.cert, signature=other_ek.signature),  # another device's cert
        r.endpoints[dev].credentials.endorse(0, ek.key),  # type: ignore[union-attr]
    ]
    for bad, match in zip(
        forged, ["does not verify", "names device", "does not verify"], strict=True
    ):
        data = codec.encode(replace(reply, payload=codec.encode_endorsed_key(bad)))
        with pytest.raises(
            UpdateRejected, match=f"not endorsed by its device certificate.*{match}"
        ):
            r.service.submit(dev, data, r.now)
    with pytest.raises(UpdateRejected, match="magic"):
        r.service.submit(dev, codec.encode(replace(reply, payload=ek.key)), r.now)
    # the task stayed open: the genuine reply is taken
    r.service.submit(dev, codec.encode(reply), r.now)


# --- what a malicious coordinator puts in place of neighbour ``nb``'s endorsed key -------------
def _own_key() -> bytes:
    return SigningKey.generate().verify_key.raw


def _key_with_neighbours_cert(r: _Rig, nb: str) -> EndorsedKey:
    return replace(r.endorsed[nb], key=_own_key())


def _key_without_a_cert(r: _Rig, nb: str) -> EndorsedKey:
    return EndorsedKey(_own_key(), b"\x00", b"\x00")


def _key_with_self_made_cert(r: _Rig, nb: str) -> EndorsedKey:
    # a CA of its own for the same fleet name, issuing "nb" a cert for a key it holds
    rogue = LocalFleet.create(FLEET, r.now).enroll(r.segments[nb], nb, r.now)
    key = _own_key()
    return EndorsedKey(
        key, rogue.cert.der, endorse_secagg_key(rogue.keystore, rogue.identity, 1, key)
    )


def _another_devices_genuine_cert(r: _Rig, nb: str) -> EndorsedKey:
    other = next(d for d in sorted(r.endorsed) if d not in (nb, _victim(r)))
    return r.endorsed[other]  # a genuine key, cert and endorsement, but of another device


def _endorsement_replayed_from_an_earlier_round(r: _Rig, nb: str) -> EndorsedKey:
    # nb's genuine endorsement of a key from round 0 (say one that has leaked since)
    c = r.creds[nb]
    old = _own_key()
    return EndorsedKey(old, c.cert.der, endorse_secagg_key(c.keystore, c.identity, 0, old))


def _expired_cert(r: _Rig, nb: str) -> EndorsedKey:
    # issued by the fleet CA for nb, but two hours ago for one hour (key held by the attacker)
    old = r.ca.enroll(r.segments[nb], nb, r.now - 7200, ttl_s=3600)
    key = _own_key()
    return EndorsedKey(key, old.cert.der, endorse_secagg_key(old.keystore, old.identity, 1, key))


def _coordinators_own_cert(r: _Rig, nb: str) -> EndorsedKey:
    c = r.ca.coordinator  # genuine, from the fleet CA, but not a device
    key = _own_key()
    return EndorsedKey(key, c.cert.der, endorse_secagg_key(c.keystore, c.identity, 1, key))


ATTACKS = [
    (_key_with_neighbours_cert, "does not verify for this round and SecAgg key"),
    (_key_without_a_cert, "malformed certificate"),
    (_key_with_self_made_cert, "not issued by the fleet CA"),
    (_another_devices_genuine_cert, "certificate names device"),
    (_endorsement_replayed_from_an_earlier_round, "does not verify for this round"),
    (_expired_cert, "certificate has expired"),
    (_coordinators_own_cert, "certificate is for a coordinator, not a device"),
]


def _victim(r: _Rig) -> str:
    return sorted(r.endpoints)[0]


def _tamper(task: bytes, change: Any) -> bytes:
    msg = codec.decode(task)
    assert isinstance(msg, SecAggTask) and msg.phase == "advertise"
    cfg = codec.decode_secure_config(msg.payload)
    ids = dict(cfg.identities)
    change(ids)
    return codec.encode(
        replace(msg, payload=codec.encode_secure_config(replace(cfg, identities=ids)))
    )


def _assert_aborted_without_masking(r: _Rig, victim: str, task: bytes, match: str) -> None:
    ep = r.endpoints[victim]
    ep.handle(r.train_tasks[victim])  # (re)train: the victim holds an update for round 1
    before = len(ep.aborts)
    with pytest.raises(SecAggError, match=match) as info:
        ep.handle(task)
    assert "\n" not in str(info.value)
    assert len(ep.aborts) == before + 1 and ep.aborts[-1][0] == 1
    # nothing of this round can follow: no masked input is ever produced
    mask = codec.encode(SecAggTask(1, "mask", b"n" * 16, b""))
    with pytest.raises(SecAggError, match="no update held"):
        ep.handle(mask)
    assert ep.rounds_masked == 0 and ep.device.field_vector is None


@pytest.mark.parametrize(("forge", "match"), ATTACKS, ids=[a[0].__name__[1:] for a in ATTACKS])
def test_substituted_neighbour_key_is_refused_by_the_device(
    rig: Any, forge: Any, match: str
) -> None:
    r, advertise = rig
    victim = _victim(r)
    cfg = codec.decode_secure_config(codec.decode(advertise[victim]).payload)  # type: ignore[union-attr]
    nb = sorted(cfg.identities)[0]
    forged = forge(r, nb)

    def swap(ids: dict[str, EndorsedKey]) -> None:
        ids[nb] = forged

    _assert_aborted_without_masking(r, victim, _tamper(advertise[victim], swap), match)


def test_revoked_neighbour_certificate_is_refused(rig: Any) -> None:
    r, advertise = rig
    victim = _victim(r)
    cfg = codec.decode_secure_config(codec.decode(advertise[victim]).payload)  # type: ignore[union-attr]
    nb = sorted(cfg.identities)[-1]
    r.ca.revoke(r.creds[nb], r.now)
    held = r.validator
    r.validator = _device_validator(r.ca, r.now)  # the device fetched the newer list
    try:
        # the honest config itself: nb's genuine, but now revoked, certificate
        _assert_aborted_without_masking(r, victim, advertise[victim], "is revoked")
    finally:
        r.validator = held


def test_missing_or_surplus_neighbour_key_is_refused(rig: Any) -> None:
    r, advertise = rig
    victim = _victim(r)
    cfg = codec.decode_secure_config(codec.decode(advertise[victim]).payload)  # type: ignore[union-attr]
    nb = sorted(cfg.identities)[0]

    def drop(ids: dict[str, EndorsedKey]) -> None:
        del ids[nb]

    def add_self(ids: dict[str, EndorsedKey]) -> None:
        ids[victim] = r.endorsed[victim]  # not a neighbour of itself

    task = _tamper(advertise[victim], drop)
    _assert_aborted_without_masking(r, victim, task, f"no key for neighbour '{nb}'")
    task = _tamper(advertise[victim], add_self)
    _assert_aborted_without_masking(r, victim, task, "non-neighbour")


def test_honest_config_is_accepted_by_the_same_device(rig: Any) -> None:
    # the control for the tests above: the untouched task is answered with a key advertisement
    r, advertise = rig
    victim = _victim(r)
    ep = r.endpoints[victim]
    ep.handle(r.train_tasks[victim])
    reply = codec.decode(ep.handle(advertise[victim]))
    assert isinstance(reply, SecAggReply) and reply.phase == "advertise"


def test_device_without_credentials_refuses_secure_rounds(rig: Any) -> None:
    r, _ = rig
    victim = _victim(r)
    ep = r.endpoints[victim]
    held, ep.credentials = ep.credentials, None
    try:
        with pytest.raises(SecAggError, match="no device certificate"):
            ep.handle(r.train_tasks[victim])
    finally:
        ep.credentials = held


class _Client:
    def __init__(self, task: bytes) -> None:
        self.task, self.sent = task, 0

    def call(self, method: str, payload: bytes, **_kw: Any) -> bytes:
        if method == "GetRound":
            return self.task
        self.sent += 1
        return b""


class _Aborting:
    def handle(self, data: bytes) -> bytes:
        raise SecAggError("neighbour 'x': SecAgg key not endorsed by its device certificate")


def test_device_loop_sends_nothing_for_an_aborted_round_and_goes_on() -> None:
    client = _Client(codec.encode(SecAggTask(1, "advertise", b"n" * 16, b"cfg")))
    loop = DeviceLoop(client, _Aborting())  # type: ignore[arg-type]
    assert loop.poll() is PollResult.REFUSED
    assert loop.aborted == 1 and client.sent == 0
    assert loop.poll() is PollResult.WAIT  # the same task is not run again


@pytest.mark.parametrize("payload", [b"ZSC1", b"ZSC2\x00", b""])
def test_a_malformed_secure_task_aborts_the_round_not_the_device(
    tmp_path: Path, payload: bytes
) -> None:
    """A coordinator's malformed (or downgraded) advertise task: the device leaves that round
    (update dropped, no reply) and keeps polling, instead of ending its process."""
    rig = _Rig.build(tmp_path)
    first = rig.train()
    victim = _victim(rig)
    msg = codec.decode(first[victim])
    assert isinstance(msg, SecAggTask)
    bad = payload + msg.payload[4:] if payload == b"ZSC1" else payload
    ep = rig.endpoints[victim]
    client = _Client(codec.encode(replace(msg, payload=bad)))
    loop = DeviceLoop(client, ep)
    assert loop.poll() is PollResult.REFUSED
    assert loop.aborted == 1 and client.sent == 0
    assert ep.aborts and ep.aborts[-1][1].startswith("malformed secure task")
    assert ep.device.field_vector is None and ep.rounds_masked == 0


def test_a_roster_too_large_for_a_device_is_refused_before_any_graph_work(tmp_path: Path) -> None:
    rig = _Rig.build(tmp_path)
    first = rig.train()
    victim = _victim(rig)
    msg = codec.decode(first[victim])
    assert isinstance(msg, SecAggTask)
    cfg = codec.decode_secure_config(msg.payload)
    padded = replace(
        cfg, roster=tuple(sorted((*cfg.roster, *(f"pad-{i:04d}" for i in range(600))))), degree=600
    )
    task = codec.encode(replace(msg, payload=codec.encode_secure_config(padded)))
    with pytest.raises(SecAggError, match="at most 10000 devices and degree 512"):
        rig.endpoints[victim].handle(task)
    assert rig.endpoints[victim].device.field_vector is None


class _RevocationClient:
    def __init__(self, ca: LocalFleet, clock: FixedClock) -> None:
        self.ca, self.clock, self.fetched = ca, clock, 0

    def get_revocations(self) -> Any:
        self.fetched += 1
        return self.ca.revocations.current(self.clock.now())


def test_runner_refreshes_its_revocation_list_before_it_goes_stale() -> None:
    # the neighbours' certificates are checked against the list the runner holds; a stale list
    # fails every check closed, so the runner fetches a newer one in time (and not every poll)
    from ztfm.device.runner import REVOCATION_RETRY_S, DeviceRunner

    t0 = time.time()
    clock = FixedClock(t0)
    ca = LocalFleet.create(FLEET, t0)
    creds = ca.enroll("valve1", "dev-1", t0)
    runner = DeviceRunner(
        creds.identity, creds.keystore, ca.ca.cert, _Aborting(), "unused:1", None, cert=creds.cert,
        clock=clock,
    )  # type: ignore[arg-type]  # fmt: skip
    client = _RevocationClient(ca, clock)
    runner.client = client  # type: ignore[assignment]
    runner.validator = _device_validator(ca, t0)
    checker = runner.validator.revocations
    assert isinstance(checker, RevocationChecker) and checker.current is not None
    early = ca.revocations.current(t0)
    life = checker.current.next_update - checker.current.issued_at
    clock.t = t0 + 0.5 * life
    runner.maybe_refresh_revocations()
    assert client.fetched == 0  # still fresh
    clock.t = t0 + 0.8 * life  # the coordinator has republished (at half the lifetime)
    runner.maybe_refresh_revocations()
    runner.maybe_refresh_revocations()  # at most one fetch per REVOCATION_RETRY_S
    assert client.fetched == 1 and checker.current.issued_at > t0
    # a later revocation reaches the device's checks with the next fetch
    other = ca.enroll("valve1", "dev-2", t0)
    ca.revoke(other, clock.t)
    clock.t += REVOCATION_RETRY_S + 0.8 * life
    runner.maybe_refresh_revocations()
    assert client.fetched == 2
    sig = endorse_secagg_key(other.keystore, other.identity, 1, bytes(32))
    ek = EndorsedKey(bytes(32), other.cert.der, sig)
    with pytest.raises(SecAggError, match="revoked"):
        CertCredentials(
            creds.identity, creds.keystore, lambda: creds.cert, lambda: runner.validator, clock
        ).check("dev-2", ek, 1)
    # a rolled-back list (an older version, from before dev-2's revocation) is refused and
    # logged; the held list stays and the device does not stop
    held = checker.current
    calls: list[int] = []
    client.get_revocations = lambda: calls.append(1) or early  # type: ignore[method-assign]
    clock.t = held.issued_at + 0.8 * life
    runner.maybe_refresh_revocations()
    assert calls == [1] and checker.current == held
