"""``ztfm up``: 1 coordinator + 5 devices as real OS processes on 127.0.0.1 over mutual TLS.

One run serves several checks: it completes 3 rounds with every device, equals the in-process
simulation for the same seed and config (per-round global metrics and bytes, exactly), refuses a
device whose certificate comes from another CA (same fleet name) and a forged enrolment token
while the run goes on, leaves a verifiable audit log, and leaves no process behind. A second run
is interrupted with SIGINT and must tear everything down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from ztfm.crypto.pki import Certificate
from ztfm.identity import Identity, MemoryKeyStore
from ztfm.transport.grpc_client import RetryPolicy, RpcFailed, enroll
from ztfm.transport.grpc_fleet import LocalFleet

N_DEVICES, N_ROUNDS, SEED = 5, 3, 1
CONFIG = "[rounds]\nlocal_epochs = 1\n"


def _ztfm(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ztfm.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # still there: a zombie is gone for our purpose only if nobody will reap it (not ours)
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" in status.read_text()


def _swtpms_under(work: Path) -> list[int]:
    """Live swtpm processes whose state folder is under ``work`` (by command line, not name)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            d.name.isdigit()
            and any(f"dir={work}/".encode() in a for a in cmd)
            and not _gone(int(d.name))
        ):
            found.append(int(d.name))
    return found


@pytest.fixture(scope="module")
def up_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("up")
    cfg_file = tmp / "small.toml"
    cfg_file.write_text(CONFIG)
    work, out = tmp / "work", tmp / "out"
    proc = _ztfm(
        "up",
        "--devices",
        str(N_DEVICES),
        "--rounds",
        str(N_ROUNDS),
        "--seed",
        str(SEED),
        "--config",
        str(cfg_file),
        "--out",
        str(out),
        "--work",
        str(work),
        "--no-baselines",
    )
    rogue: dict[str, Any] = {}
    try:
        _wait_for(work / "endpoints.json", proc)
        ends = json.loads((work / "endpoints.json").read_text())
        ca_cert = Certificate.from_pem((work / "ca" / "ca.crt").read_bytes())
        # an attacker with its own CA for the same fleet name, posing as a real fleet member
        other = LocalFleet.create("fleet.local", time.time())
        creds = other.enroll("valve1", "skab-valve1-0", time.time())
        client = creds.client(
            ends["fleet"],
            ca_cert,
            np.random.default_rng(0),
            retry=RetryPolicy(max_attempts=1),
            timeout_s=5.0,
        )
        with pytest.raises(RpcFailed) as ei:
            client.call("GetRound", b"")
        client.close()
        rogue["foreign_ca"] = ei.value.status
        # a forged enrolment token gets no certificate
        keys = MemoryKeyStore()
        csr = keys.make_csr(Identity("fleet.local", "valve1", "device", "rogue-1"), "forged")
        with pytest.raises(RpcFailed) as ei2:
            enroll(ends["enroll"], ca_cert, csr, timeout_s=5.0)
        rogue["forged_token"] = ei2.value.status
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "rc": proc.returncode,
        "output": output.decode(),
        "work": work,
        "out": out,
        "config": cfg_file,
        "rogue": rogue,
    }


def test_up_completes_rounds_over_mtls(up_run: dict[str, Any]) -> None:
    assert up_run["rc"] == 0, up_run["output"]
    m = json.loads((up_run["out"] / "metrics.json").read_text())
    assert m["transport"] == "grpc-mtls"
    assert len(m["rounds"]) == N_ROUNDS and not m["failures"]
    ids = [d["id"] for d in m["devices"]]
    assert len(ids) == N_DEVICES
    for r in m["rounds"]:
        assert sorted(r["accepted"]) == sorted(ids) and r["rejected"] == {}
    assert "federated" in up_run["output"]  # the summary table
    assert "exited with code" not in up_run["output"]  # every device ended cleanly
    assert (up_run["out"] / "report.html").stat().st_size > 1000
    # every device enrolled with its own key and got its own certificate
    for dev in ids:
        state = up_run["work"] / "devices" / dev
        assert (state / "key.pem").stat().st_mode & 0o077 == 0
        cert = Certificate.from_pem((state / "cert.pem").read_bytes())
        assert cert.uris == (f"spiffe://fleet.local/segment/valve1/role/device/id/{dev}",)
    # ... and installed the final model only after verifying it (signature, ledger, version)
    from ztfm.bundle import InstalledModel
    from ztfm.crypto.signing import VerifyKey

    release = VerifyKey(bytes.fromhex((up_run["out"] / "release.pub").read_text()))
    final = m["rounds"][-1]["model_version"] + 1  # bundle versions: model v0 is bundle 1
    for dev in ids:
        model = InstalledModel(
            up_run["work"] / "devices" / dev / "model", model_id="ztfm-fleet", release_key=release
        )
        assert model.installed_version == final
    assert (
        f"verified model v{final} installed"
        in (up_run["work"] / "logs" / f"{ids[0]}.log").read_text()
    )


def test_up_equals_in_process_simulation(up_run: dict[str, Any]) -> None:
    import torch

    from ztfm.sim.config import load_config
    from ztfm.sim.runner import Simulation

    assert up_run["rc"] == 0, up_run["output"]
    torch.set_num_threads(1)  # as in the device processes
    cfg = load_config(up_run["config"])
    cfg = replace(
        cfg,
        seed=SEED,
        fleet=replace(cfg.fleet, devices=N_DEVICES),
        rounds=replace(cfg.rounds, rounds=N_ROUNDS),
    )
    sim = Simulation(cfg)
    expected = [sim.run_round(r) for r in range(N_ROUNDS)]
    got = json.loads((up_run["out"] / "metrics.json").read_text())["rounds"]
    for e, g in zip(expected, got, strict=True):
        assert g["global"] == pytest.approx(e["global"], rel=1e-12, abs=1e-12)
        assert sorted(g["per_device"]) == sorted(e["per_device"])
        for dev, rates in e["per_device"].items():
            assert g["per_device"][dev] == pytest.approx(rates, rel=1e-12, abs=1e-12)
        assert g["bytes_up"] == e["bytes_up"]
        assert g["model_version"] == e["model_version"]


def test_foreign_ca_and_forged_token_are_refused_and_rounds_complete(
    up_run: dict[str, Any],
) -> None:
    # the TLS handshake fails (the client cert does not chain to the fleet CA)
    assert up_run["rogue"]["foreign_ca"] in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert up_run["rogue"]["forged_token"] == grpc.StatusCode.PERMISSION_DENIED
    assert up_run["rc"] == 0
    m = json.loads((up_run["out"] / "metrics.json").read_text())
    assert "rogue-1" not in {d["id"] for d in m["devices"]}
    records = [json.loads(line) for line in (up_run["out"] / "audit.log").read_text().splitlines()]
    assert any(r["event"] == "enroll.rejected" for r in records)
    # the impostor never got through: no admitted request from a certificate it holds
    issued = [r for r in records if r["event"] == "enroll.issued"]
    assert len(issued) == N_DEVICES


def test_audit_log_verifies_after_the_run(up_run: dict[str, Any]) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ztfm.cli.main",
            "audit",
            "verify",
            str(up_run["out"] / "audit.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("ok:")
    last = json.loads((up_run["out"] / "audit.log").read_text().splitlines()[-1])
    assert last["event"] == "coordinator.stopped" and last["fields"]["rounds_done"] == N_ROUNDS


def test_no_process_left_after_the_run(up_run: dict[str, Any]) -> None:
    pids = json.loads((up_run["work"] / "pids.json").read_text())
    assert len(pids) == N_DEVICES + 1
    assert all(_gone(pid) for pid in pids.values()), pids


def test_sigint_tears_everything_down(tmp_path: Path) -> None:
    cfg_file = tmp_path / "small.toml"
    cfg_file.write_text(CONFIG)
    work = tmp_path / "work"
    (work / "devices").mkdir(parents=True, mode=0o755)  # a reused --work DIR: tightened
    for d in (work, work / "devices"):
        d.chmod(0o755)
    proc = _ztfm(
        "up",
        "--devices",
        str(N_DEVICES),
        "--rounds",
        "50",
        "--config",
        str(cfg_file),
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(work),
        "--no-baselines",
    )
    try:
        deadline = time.monotonic() + 120
        pids: dict[str, int] = {}
        while len(pids) < N_DEVICES + 1:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
            if (work / "pids.json").exists():
                pids = json.loads((work / "pids.json").read_text())
        # let the fleet get going (first round opened), then Ctrl-C
        audit = tmp_path / "out" / "audit.log"
        while not audit.exists() or b"round.closed" not in audit.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert all(_gone(pid) for pid in pids.values()), pids
    assert not _swtpms_under(work)  # every device's swtpm stopped with it
    # TPM states, device keys and CA keys: no group or other access; the --work folder the
    # user named keeps its own mode (--work /tmp must not lose its sticky bit)
    assert work.stat().st_mode & 0o777 == 0o755
    for d in (work / "devices", *(work / "devices").iterdir(), work / "tpm-ca", work / "ca"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    for f in (*(work / "devices").glob("*/tpm/*"), *(work / "tpm-ca").glob("*key*.pem")):
        assert f.stat().st_mode & 0o077 == 0, f
    res = subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", "audit", "verify", str(tmp_path / "out/audit.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    last = json.loads((tmp_path / "out" / "audit.log").read_text().splitlines()[-1])
    assert last["event"] == "coordinator.stopped" and last["fields"]["reason"].startswith("signal")
