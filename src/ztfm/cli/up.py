"""``ztfm up``: a whole fleet as real processes on 127.0.0.1, federated over mutual TLS.

Creates a fleet CA, one enrolment token per device, then starts ``ztfm coordinator serve`` and
one ``ztfm device run --fleet-index K`` per device (each its own OS process, its own key and
certificate). Prints the same summary as ``ztfm simulate`` and writes OUT/metrics.json and
OUT/report.html. Every child is tracked by PID and terminated on exit, failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ztfm.errors import ConfigError, TransportError, ZtfmError
from ztfm.process import die_with_parent


def _private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create ``path`` 0700; an existing one is tightened only with ``tighten`` (ztfm's own
    folders inside the work dir), never a folder the user named: ``--work /tmp`` must not
    take /tmp's sticky, world-writable mode away. ``ConfigError`` if it cannot be made."""
    try:
        existed = path.is_dir()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if tighten or not existed:
            path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create a private folder {path}: {exc}") from exc
    return path


class Children:
    """Child processes by PID, each the leader of its own session and process group.

    ``terminate_all`` is SIGTERM to each child, a grace period, then SIGKILL to the child's
    whole process group (a device's swtpm goes with it)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ztfm.cli.main", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches ztfm up only
                preexec_fn=die_with_parent(),
            )
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate_all(self, grace_s: float = 5.0) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in alive:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # not reaped yet, so its group id cannot have been reused: kill the group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if proc.poll() is not None:
            raise TransportError(f"coordinator exited with code {proc.returncode} before listening")
        time.sleep(0.05)
    raise TransportError(f"coordinator did not listen within {timeout_s:.0f} s")


def _common(
    config_path: str | None, devices: int, rounds: int | None, seed: int | None
) -> list[str]:
    args = ["--devices", str(devices)]
    if config_path is not None:
        args += ["--config", str(Path(config_path).resolve())]
    if rounds is not None:
        args += ["--rounds", str(rounds)]
    if seed is not None:
        args += ["--seed", str(seed)]
    return args


class _Interrupted(Exception):
    pass


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--devices", type=click.IntRange(min=2), required=True, help="Fleet size N.")
@click.option("--rounds", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="runs/up")
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the CA, device state and logs (default: a temporary folder, removed).",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="Also compute local-only and centralised baselines in this process.",
)
@click.option(
    "--attestation",
    type=click.Choice(["swtpm", "none"]),
    default="swtpm",
    show_default=True,
    help="swtpm: every device process runs its own software TPM 2.0 (Debian swtpm, provisioned "
    "with an EK certificate from a local manufacturer CA), enrols it and attests before every "
    "round. none = UNSAFE: devices count as attested without evidence.",
)
@click.option("--timeout-s", type=click.FloatRange(min=1), default=1800.0, show_default=True)
def up(
    devices: int,
    rounds: int | None,
    seed: int | None,
    config_path: str | None,
    out: Path,
    work: Path | None,
    baselines: bool,
    attestation: str,
    timeout_s: float,
) -> None:
    """Run a fleet as real processes on 127.0.0.1: 1 coordinator + N devices over mTLS.

    Same seed and config => the same federated metrics as `ztfm simulate`.
    """
    from ztfm.cli.coordinator import network_config, write_atomic
    from ztfm.identity import Identity
    from ztfm.identity.store import CERT_FILE, ca_transaction, init_ca
    from ztfm.sim.fleet import build_fleet
    from ztfm.sim.network import check_network_scenario

    cfg = network_config(config_path, devices, rounds, seed)
    fleet = build_fleet(cfg.fleet, cfg.detector)
    if len(fleet.devices) < devices:
        raise ConfigError(f"the configured dataset has only {len(fleet.devices)} devices")
    check_network_scenario(cfg, fleet)  # a bad scenario fails here, before any process starts
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out}: {exc}") from exc
    keep_work = work is not None
    work_dir = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="ztfm-up-"))
    _private_dir(work_dir, tighten=False)  # the user's folder: created 0700, never chmodded
    if work_dir.stat().st_mode & 0o077:
        click.echo(
            f"up: --work {work_dir} is open to others; TPM states and keys go in 0700 subfolders",
            err=True,
        )
    _private_dir(work_dir / "logs")
    _private_dir(work_dir / "devices")
    ca_dir = work_dir / "ca"
    now = time.time()
    init_ca(ca_dir, "fleet.local", now)
    with ca_transaction(ca_dir) as ca:
        tokens = {
            d.device_id: ca.create_token(Identity(ca.fleet, d.segment, "device", d.device_id), now)
            for d in fleet.devices
        }
    coord_attest: list[str] = []
    swtpm_states: dict[str, Path] = {}
    if attestation == "swtpm":
        coord_attest, swtpm_states = _provision_tpms(work_dir, [d.device_id for d in fleet.devices])
    children = Children(work_dir / "logs")
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        interrupted.append(signum)
        raise _Interrupted

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    common = _common(config_path, devices, rounds, seed)
    try:
        ready = work_dir / "endpoints.json"
        coord = children.start(
            "coordinator",
            [
                "coordinator",
                "serve",
                "--ca",
                str(ca_dir),
                "--n-features",
                str(fleet.n_features),
                "--ready-file",
                str(ready),
                "--out",
                str(out.resolve()),
                *coord_attest,
                *common,
            ],
        )
        _write_pids(work_dir, children)
        ends = json.loads(_wait_file(ready, coord, 120.0))
        for k, d in enumerate(fleet.devices):
            state = _private_dir(work_dir / "devices" / d.device_id)
            token_file = state / "token"
            write_atomic(token_file, tokens[d.device_id])
            os.chmod(token_file, 0o600)
            children.start(
                d.device_id,
                [
                    "device",
                    "run",
                    "--coordinator",
                    ends["fleet"],
                    "--enroll",
                    ends["enroll"],
                    "--ca-cert",
                    str(ca_dir / CERT_FILE),
                    "--id",
                    d.device_id,
                    "--segment",
                    d.segment,
                    "--state-dir",
                    str(state),
                    "--token-file",
                    str(token_file),
                    "--fleet-index",
                    str(k),
                    "--release-key",
                    str(out.resolve() / "release.pub"),
                    "--log-key",
                    str(out.resolve() / "log.pub"),
                    *(
                        ["--swtpm-state", str(swtpm_states[d.device_id])]
                        if d.device_id in swtpm_states
                        else []
                    ),
                    *common,
                ],
            )
            _write_pids(work_dir, children)
        click.echo(
            f"up: coordinator on {ends['fleet']} (pid {coord.pid}), {devices} device processes",
            err=True,
        )
        deadline = time.monotonic() + timeout_s
        while coord.poll() is None:
            if time.monotonic() > deadline:
                raise TransportError(f"the run did not finish within {timeout_s:.0f} s")
            for name, p in children.procs.items():  # a crashed device would stall round 1
                if p.poll() not in (None, 0):
                    raise TransportError(
                        f"{name} exited with code {p.returncode}:\n"
                        + children.log_tail(name)
                        + _attestation_reason(out / "audit.log", name)
                    )
            time.sleep(0.1)
        if coord.returncode != 0:
            raise TransportError(
                f"coordinator exited with code {coord.returncode}:\n"
                + children.log_tail("coordinator")
            )
        for name, p in children.procs.items():  # told "done": they exit on their own
            try:
                code = p.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                click.echo(f"up: {name} did not exit after the last round; stopping it", err=True)
            else:
                if code != 0:  # the run's results stand; this device's own ending did not
                    last = children.log_tail(name, lines=1)
                    click.echo(
                        f"up: {name} exited with code {code} after the last round: {last}",
                        err=True,
                    )
    except _Interrupted:
        pass
    finally:
        for s_ in old:  # a second Ctrl-C must not skip the teardown
            signal.signal(s_, signal.SIG_IGN)
        children.terminate_all()
        for s, h in old.items():
            signal.signal(s, h)
    if interrupted:
        click.echo("up: interrupted; every process stopped", err=True)
        sys.exit(130)
    m: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    _complete(m, cfg, fleet, baselines, time.perf_counter() - t0)
    from ztfm.cli.simulate import _table
    from ztfm.report.html import render_report

    write_atomic(out / "metrics.json", json.dumps(m, indent=1, sort_keys=True))
    write_atomic(out / "report.html", render_report(m))
    click.echo(
        f"{m['dataset']}: {m['n_devices']} devices (processes, mTLS), {len(m['rounds'])} rounds, "
        f"{m['wall_s']['total']:.1f} s"
    )
    click.echo(_table(m))
    click.echo(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)


def _attestation_reason(audit_log: Path, device_id: str) -> str:
    """The coordinator's reason for refusing ``device_id``'s TPM, from its audit log ("" if
    none): the device itself is told only that it was refused."""
    try:
        lines = audit_log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        f = rec.get("fields", {})
        if rec.get("event") == "attest.verdict" and f.get("device_id") == device_id:
            if f.get("ok"):
                return ""
            hint = ""
            if f.get("reason") == "firmware":
                hint = " (the device measures the code of this ztfm install: was it changed "
                hint += "while the fleet started?)"
            return (
                f"\ncoordinator audit log: attestation failed: {f.get('reason')}: "
                f"{f.get('detail')}{hint}"
            )
        if rec.get("event") == "attest.refused" and f.get("device") == device_id:
            return f"\ncoordinator audit log: TPM enrolment refused: {f.get('reason')}"
    return ""


def _provision_tpms(work_dir: Path, device_ids: list[str]) -> tuple[list[str], dict[str, Path]]:
    """A local swtpm "manufacturer" CA and one provisioned TPM state (EK + EK certificate) per
    device; returns the coordinator's attestation options and each device's state folder."""
    from concurrent.futures import ThreadPoolExecutor

    from ztfm.attestation.swtpm import SwtpmCa, provision_swtpm

    for tool in ("swtpm", "swtpm_setup", "swtpm_localca"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"{tool} is not installed (Debian: apt-get install swtpm swtpm-tools); "
                "or run with --attestation none (UNSAFE: no attestation)"
            )
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "tpm2-pytss is not installed (pip install 'ztfm[tpm]'); "
            "or run with --attestation none (UNSAFE: no attestation)"
        ) from exc
    ca = SwtpmCa.create(work_dir / "tpm-ca")
    states = {d: _private_dir(work_dir / "devices" / d) / "tpm" for d in device_ids}
    t0 = time.perf_counter()
    provision_swtpm(states[device_ids[0]], ca)  # the first one creates the CA's root
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda d: provision_swtpm(states[d], ca), device_ids[1:]))
    click.echo(
        f"up: provisioned {len(states)} software TPMs in {time.perf_counter() - t0:.1f} s",
        err=True,
    )
    root, issuer = work_dir / "tpm-ca" / "root.pem", work_dir / "tpm-ca" / "issuer.pem"
    root.write_bytes(ca.root_cert_pem)
    issuer.write_bytes(ca.issuer_cert_pem)
    return ["--attestation", "tpm", "--tpm-ca", str(root), "--tpm-ca", str(issuer)], states


def _write_pids(work_dir: Path, children: Children) -> None:
    from ztfm.cli.coordinator import write_atomic

    write_atomic(work_dir / "pids.json", json.dumps(children.pids()))


def _complete(m: dict[str, Any], cfg: Any, fleet: Any, baselines: bool, wall_s: float) -> None:
    """Add what only the whole fleet knows: per-device data sizes and the baselines."""
    m["devices"] = [
        {
            "id": d.device_id,
            "segment": d.segment,
            "source": d.source,
            "train_rows": len(d.data.train),
            "test_rows": len(d.data.test_x),
            "test_attack_rows": int(d.data.test_y.sum()),
        }
        for d in fleet.devices
    ]
    m["has_signal"] = fleet.has_signal
    m["dataset"] = fleet.dataset
    if not m["rounds"]:
        raise ZtfmError("the coordinator completed no round")
    t0 = time.perf_counter()
    if baselines:
        from ztfm.sim.runner import Simulation

        sim = Simulation(cfg, fleet)
        if cfg.compare.local_only:
            lo = sim.local_only()
            m["comparison"]["local_only"] = lo["global"]
            m["comparison"]["local_only_per_segment"] = lo["per_segment"]
        if cfg.compare.centralised:
            ce = sim.centralised()
            m["comparison"]["centralised"] = ce["global"]
            m["comparison"]["centralised_per_segment"] = ce["per_segment"]
        m["comparison"]["flag_everything"] = sim.flag_everything()
    m["wall_s"] = {
        **m["wall_s"],
        "baselines": time.perf_counter() - t0,
        "total": wall_s + time.perf_counter() - t0,
    }
