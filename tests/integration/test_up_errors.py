"""Bad input to ``ztfm coordinator serve`` / ``ztfm device run`` / ``ztfm up`` gets one clear line,
and the in-process server + device runners (no subprocesses) enrol, renew, train and stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.bundle import BundleRejected
from ztfm.cli.main import main
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.coordinator.server import (
    CoordinatorServer,
    Endpoints,
    ModelReleaser,
    UnsafeAssumeAttested,
)
from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.signing import SigningKey
from ztfm.device.runner import DeviceRunner, ModelInstaller, PollBackoff
from ztfm.errors import LedgerError, RoundError, TransportError, ZtfmError
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask, UpdateReply
from ztfm.fl.strategy import FedAvg
from ztfm.identity import Identity, MemoryKeyStore
from ztfm.identity.store import init_ca
from ztfm.ledger import Ledger, MemoryLedgerStore
from ztfm.transport.grpc_client import RetryPolicy, RpcFailed
from ztfm.transport.grpc_fleet import LocalFleet


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    with pytest.raises(SystemExit) as ei:
        main(args)
    assert ei.value.code not in (0, None)
    err = capsys.readouterr().err
    assert match in err, err


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    init_ca(d, "fleet.local", time.time())
    return d


def _device(ca_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "device",
        "run",
        "--coordinator",
        "127.0.0.1:1",
        "--ca-cert",
        str(ca_dir / "ca.crt"),
        "--segment",
        "valve1",
        "--state-dir",
        str(tmp_path / "state"),
        *extra,
    ]


def test_device_needs_exactly_one_data_source(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(_device(ca_dir, tmp_path, "--id", "d-1"), capsys, "exactly one")
    _fails(
        _device(ca_dir, tmp_path, "--id", "d-1", "--telemetry", "x.csv", "--fleet-index", "0"),
        capsys,
        "exactly one",
    )


def test_device_live_interface_is_a_clear_not_yet(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(_device(ca_dir, tmp_path, "--id", "d-1", "--telemetry", "eth0"), capsys, "not yet")


def test_device_refuses_a_garbage_ca_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    args = ["device", "run", "--coordinator", "127.0.0.1:1", "--ca-cert", str(bad)]
    args += ["--segment", "valve1", "--state-dir", str(tmp_path / "s"), "--id", "d-1"]
    _fails([*args, "--fleet-index", "0"], capsys, "not a CA certificate")


def test_device_refuses_a_bad_identity_name(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(_device(ca_dir, tmp_path, "--id", "../etc", "--fleet-index", "0"), capsys, "invalid")


def test_device_fleet_index_must_match_identity_and_fleet(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(
        _device(ca_dir, tmp_path, "--id", "impostor", "--fleet-index", "0", "--devices", "2"),
        capsys,
        "not impostor",
    )
    _fails(
        _device(ca_dir, tmp_path, "--id", "d-1", "--fleet-index", "7", "--devices", "2"),
        capsys,
        "outside the fleet",
    )


def test_device_without_cert_or_token_cannot_start(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _device(ca_dir, tmp_path, "--id", "skab-valve1-0", "--fleet-index", "0")
    _fails([*args, "--devices", "2"], capsys, "enrolment endpoint and token")


def test_device_refuses_a_certificate_for_another_key(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = LocalFleet.create("fleet.local", time.time())
    other = fleet.enroll("valve1", "skab-valve1-0", time.time())
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "cert.pem").write_bytes(other.cert.to_pem())
    args = _device(ca_dir, tmp_path, "--id", "skab-valve1-0", "--fleet-index", "0")
    _fails([*args, "--devices", "2"], capsys, "not for this device's key")


def test_serve_refuses_simulation_only_settings(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "atk.toml"
    cfg.write_text('[attestation]\nbackend = "soft"\n')  # attacks etc. run networked now
    args = ["coordinator", "serve", "--ca", str(ca_dir), "--config", str(cfg)]
    _fails([*args, "--n-features", "4", "--devices", "2"], capsys, "simulation-only")


def test_up_needs_two_devices(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["up", "--devices", "1"], capsys, "--devices")


def test_endpoints_file_must_be_well_formed() -> None:
    assert Endpoints.from_json(Endpoints("a:1", "b:2").to_json()) == Endpoints("a:1", "b:2")
    for junk in ("", "{}", "[1]", '{"fleet": "a:1"}', "\x00"):
        with pytest.raises(ZtfmError, match="endpoints file"):
            Endpoints.from_json(junk)


def test_poll_backoff_bounds() -> None:
    for bad in ((0.0, 2.0, 1.0), (0.1, 0.5, 1.0), (0.5, 2.0, 0.1)):
        with pytest.raises(ZtfmError):
            PollBackoff(*bad)
    b, rng = PollBackoff(0.05, 2.0, 1.0), np.random.default_rng(0)
    delays = [b.delay_s(k, rng) for k in range(200)]
    assert all(0.025 <= d <= 1.0 for d in delays)
    assert max(delays[:1]) <= 0.05 and min(delays[10:]) >= 0.5


def test_unreachable_coordinator_gives_up_with_a_clear_error() -> None:
    now = time.time()
    fleet = LocalFleet.create("fleet.local", now)
    creds = fleet.enroll("valve1", "d-1", now)
    runner = DeviceRunner(
        creds.identity,
        creds.keystore,
        fleet.ca.cert,
        _Echo("d-1"),
        "127.0.0.1:1",
        np.random.default_rng(0),
        cert=creds.cert,
        sleep=lambda _s: None,
        retry=RetryPolicy(max_attempts=1),
        give_up_s=0.3,
        timeout_s=1.0,
    )
    with pytest.raises(TransportError):
        runner.run()


def test_runner_without_cert_needs_token() -> None:
    ident = Identity("fleet.local", "valve1", "device", "d-1")
    fleet = LocalFleet.create("fleet.local", time.time())
    with pytest.raises(ZtfmError, match="enrolment endpoint and token"):
        DeviceRunner(
            ident, MemoryKeyStore(), fleet.ca.cert, _Echo("d-1"), "x:1", np.random.default_rng(0)
        )


class _Echo:
    """A device endpoint: adds 1 to each parameter; evaluates with fixed counts."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id

    def handle(self, data: bytes) -> bytes:
        task = codec.decode(data)
        if isinstance(task, EvalTask):
            v, n = task.model_version, task.nonce
            return codec.encode(EvalReply(task.round_id, self.device_id, v, 1, 0, 0, 1, 1.0, n))
        assert isinstance(task, RoundTask)
        delta = [np.ones_like(p) for p in task.params]
        return codec.encode(
            UpdateReply(
                task.round_id, self.device_id, task.model_version, delta, 5, 0.1, task.nonce
            )
        )


def _coordinator(size: int, strategy: FedAvg) -> Coordinator:
    return Coordinator(
        [np.zeros(size, np.float32)],
        strategy,
        RoundSettings(deadline_s=60),
        rng=np.random.default_rng(0),
    )


def _enrolled_cam0(fleet: LocalFleet, target: str, now: float, **kw: Any) -> DeviceRunner:
    """A runner for cam-0, enrolled directly with the fleet CA, polling ``target`` quickly."""
    creds = fleet.enroll("cams", "cam-0", now)
    return DeviceRunner(
        creds.identity,
        creds.keystore,
        fleet.ca.cert,
        _Echo("cam-0"),
        target,
        np.random.default_rng(0),
        cert=creds.cert,
        backoff=PollBackoff(0.01, 2.0, 0.05),
        **kw,
    )


def test_server_and_runners_in_process_enrol_renew_train_and_stop(tmp_path: Path) -> None:
    now = time.time()
    fleet = LocalFleet.create("fleet.local", now, cert_ttl_s=3600)
    coord = _coordinator(3, FedAvg())
    service = CoordinatorService(coord, rounds=2, expected_devices=3)
    audit = MemoryAuditSink()
    log_key, release_key = SigningKey.generate(), SigningKey.generate()
    releaser = ModelReleaser(
        Ledger(MemoryLedgerStore(), log_key), release_key, model_id="m", architecture="step"
    )
    server = CoordinatorServer(
        fleet, service, audit, UnsafeAssumeAttested(), tick_s=0.02, releaser=releaser
    )
    ends = server.start()

    def installer(name: str, release: SigningKey = release_key, log: SigningKey = log_key) -> Any:
        return ModelInstaller(
            tmp_path / name,
            model_id="m",
            release_key=release.verify_key,
            log_key=log.verify_key,
        )

    try:
        runners = []
        for i in range(3):
            ident = Identity("fleet.local", "cams", "device", f"cam-{i}")
            with fleet.ca_lock:
                token = fleet.ca.create_token(ident, now, 600)
            runners.append(
                DeviceRunner(
                    ident,
                    MemoryKeyStore(),
                    fleet.ca.cert,
                    _Echo(ident.device_id),
                    ends.fleet,
                    np.random.default_rng(i),
                    enroll_target=ends.enroll,
                    token=token,
                    backoff=PollBackoff(0.01, 2.0, 0.05),
                    renew_margin_s=3600 - 0.2 if i == 0 else None,  # cam-0 renews often
                    installer=installer(f"model-{i}"),
                )
            )
        threads = [threading.Thread(target=r.run) for r in runners]
        for t in threads:
            t.start()
        assert server.wait(60)
        assert server.linger(10)
        for t in threads:
            t.join(30)
        # a used token cannot enrol a second device
        with pytest.raises(RpcFailed) as ei:
            DeviceRunner(
                Identity("fleet.local", "cams", "device", "cam-0"),
                MemoryKeyStore(),
                fleet.ca.cert,
                _Echo("cam-0"),
                ends.fleet,
                np.random.default_rng(9),
                enroll_target=ends.enroll,
                token=runners[0].token,
            ).enrol()
        assert ei.value.status.name == "PERMISSION_DENIED"
        # the final model is refused under a release key or a log the device does not trust
        client = runners[2]._client(None)
        with pytest.raises(BundleRejected) as be:
            installer("wrong-release", release=SigningKey.generate()).fetch(client)
        assert be.value.reason == "unknown_signer"
        with pytest.raises(LedgerError):
            installer("wrong-log", log=SigningKey.generate()).fetch(client)
        assert installer("model-2").fetch(client) is None  # already installed, nothing to do
        # a revoked device is refused at once (the server republishes its revocation list)
        fleet.revoke_identity(runners[1].identity, time.time())
        assert runners[1].cert is not None
        with pytest.raises(RpcFailed) as ei:
            runners[1]._client(None).call("GetRound", b"")
        assert ei.value.status.name == "UNAUTHENTICATED"
    finally:
        server.stop()
    assert [r.stats.finished for r in runners] == [True] * 3
    assert all(r.stats.enrolled and r.stats.tasks == 4 for r in runners)
    assert runners[0].stats.renewals >= 1
    assert [r.stats.model_version for r in runners] == [3, 3, 3]  # v0 released too
    installed = installer("model-0").model.current
    assert installed is not None
    np.testing.assert_array_equal(installed.weights["param.0"], coord.params[0])
    assert np.allclose(coord.params[0], 2.0)
    events = [e for e, _f, _t in audit.events]
    assert events.count("enroll.issued") == 3 and events.count("round.closed") == 2
    assert events[0] == "coordinator.started" and events[-1] == "coordinator.stopped"


def test_enrol_timeout_starts_with_the_devices_that_came() -> None:
    now = time.time()
    fleet = LocalFleet.create("fleet.local", now)
    coord = _coordinator(2, FedAvg(min_devices=1))
    service = CoordinatorService(coord, rounds=1, expected_devices=3)
    audit = MemoryAuditSink()
    with pytest.raises(ZtfmError):
        CoordinatorServer(fleet, service, audit, UnsafeAssumeAttested(), enrol_timeout_s=0)
    server = CoordinatorServer(
        fleet, service, audit, UnsafeAssumeAttested(), tick_s=0.02, enrol_timeout_s=0.3
    )
    ends = server.start()
    try:
        runner = _enrolled_cam0(fleet, ends.fleet, now)
        stats = runner.run()
    finally:
        server.stop()
    assert stats.finished and stats.tasks == 2
    assert service.expected_devices == 1
    assert any(e == "enrol.timeout" for e, _f, _t in audit.events)


def test_releaser_continues_versions_after_a_restart() -> None:
    log_key, release_key = SigningKey.generate(), SigningKey.generate()
    ledger = Ledger(MemoryLedgerStore(), log_key)
    first = ModelReleaser(ledger, release_key, model_id="m", architecture="a")
    with pytest.raises(RoundError, match="no model"):
        first(Identity("fleet.local", "cams", "device", "cam-0"), bytes(8))
    for v in (0, 1):
        first.release([np.zeros(2, np.float32)], v, v, time.time())
    again = ModelReleaser(ledger, release_key, model_id="m", architecture="a")
    assert again.release([np.ones(2, np.float32)], 0, 1, time.time()).version == 3
    cam = Identity("fleet.local", "cams", "device", "cam-0")
    for bad in (b"", b"\x00" * 7, b"\x00" * 9, (10**6).to_bytes(8, "big")):
        with pytest.raises(RoundError):
            again(cam, bad)


class _LyingReleaser(ModelReleaser):
    """Releases (validly signed) weights that differ from what the tasks carry."""

    def release(self, params: Any, version: int, round_id: int, now: float) -> Any:
        return super().release([p + 1 for p in params], version, round_id, now)


def test_device_refuses_task_parameters_that_match_no_verified_bundle(tmp_path: Path) -> None:
    now = time.time()
    fleet = LocalFleet.create("fleet.local", now)
    coord = _coordinator(2, FedAvg(min_devices=1))
    service = CoordinatorService(coord, rounds=1, expected_devices=1)
    log_key, release_key = SigningKey.generate(), SigningKey.generate()
    releaser = _LyingReleaser(
        Ledger(MemoryLedgerStore(), log_key), release_key, model_id="m", architecture="a"
    )
    server = CoordinatorServer(
        fleet, service, MemoryAuditSink(), UnsafeAssumeAttested(), tick_s=0.02, releaser=releaser
    )
    ends = server.start()
    try:
        runner = _enrolled_cam0(
            fleet,
            ends.fleet,
            now,
            installer=ModelInstaller(
                tmp_path / "m",
                model_id="m",
                release_key=release_key.verify_key,
                log_key=log_key.verify_key,
            ),
            verify_timeout_s=0.3,
        )
        with pytest.raises(BundleRejected, match="match no verified model"):
            runner.run()
    finally:
        server.stop()
    assert runner.stats.tasks == 0 and service.phase == "train"  # nothing was trained or sent


def test_up_explains_a_refused_tpm_from_the_coordinators_audit_log(tmp_path: Path) -> None:
    from ztfm.audit import AuditLog
    from ztfm.cli.up import _attestation_reason

    path = tmp_path / "audit.log"
    assert _attestation_reason(path, "d-1") == ""  # no log yet
    log = AuditLog(path)
    log.record("attest.verdict", {"device_id": "d-1", "ok": True}, 1.0)
    detail = "firmware measurement is not in the allow-list for device type 'valve1'"
    log.record(
        "attest.verdict",
        {"device_id": "d-2", "ok": False, "reason": "firmware", "detail": detail},
        2.0,
    )
    log.record("attest.refused", {"device": "d-3", "step": "enrol", "reason": "EK revoked"}, 3.0)
    log.close()
    assert _attestation_reason(path, "d-1") == ""
    assert f"attestation failed: firmware: {detail} (the device measures" in _attestation_reason(
        path, "d-2"
    )
    assert _attestation_reason(path, "d-3").endswith("TPM enrolment refused: EK revoked")
