"""Run one lab: preflight, build namespaces, start the fleet, launch attacks, capture, tear down.

``run_lab(config, out)`` is the one entry point (``ztfm lab run`` calls it). Teardown runs in a
``finally`` block that SIGTERM, SIGINT and errors all reach, and every namespace and process is
also recorded in a state file first so ``ztfm lab clean`` can remove leftovers of a killed run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import ztfm
from ztfm.errors import ConfigError, LabError
from ztfm.lab import agents
from ztfm.lab.netns import (
    STATE_DIR,
    CommandRunner,
    RunState,
    build_network,
    delete_namespaces,
    list_namespaces,
    run_cmd,
)
from ztfm.lab.spec import (
    ATTACKS,
    FLOOD_RATE_PPS,
    LAN,
    SCAN_MAX_RATE_PPS,
    SUBNET,
    AttackEvent,
    Host,
    LabConfig,
    LabPlan,
    plan_lab,
    tools_needed,
)

log = logging.getLogger(__name__)

LABELS_HEADER = (
    "device",
    "type",
    "start",
    "end",
    "attack",
    "source",
    "target",
    "source_ip",
    "target_ip",
)
DEVICES_HEADER = ("device", "type", "ip", "netns", "seed")
MANIFEST_NAME = "manifest.json"
WORDLIST_SIZE = 5000
MAX_REPEATS = 50
REPEATABLE = frozenset({"portscan", "servicescan", "bruteforce"})
TOOL_VERSION_CMDS: dict[str, list[str]] = {
    "ip": ["ip", "-V"],
    "tcpdump": ["tcpdump", "--version"],
    "mosquitto": ["mosquitto", "-h"],
    "openssl": ["openssl", "version"],
    "nmap": ["nmap", "--version"],
    "hping3": ["hping3", "--version"],
    "hydra": ["hydra", "-h"],
}


def new_run_id() -> str:
    return secrets.token_hex(3)


@dataclass(frozen=True, slots=True)
class LabResult:
    out: Path
    plan: LabPlan
    started_at: float
    ended_at: float
    labels: tuple[dict[str, str], ...]


class _Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception so ``finally`` blocks run."""


def preflight(
    cfg: LabConfig,
    *,
    euid: Callable[[], int] = os.geteuid,
    which: Callable[[str], str | None] = shutil.which,
) -> None:
    """Check root and tools before touching anything; raise ``LabError`` with the fix."""
    if euid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, raw sockets): run it with sudo "
            "or use the bundled lab set (`ztfm lab bundled`)"
        )
    missing = [t for t in tools_needed(cfg) if which(t) is None]
    if missing:
        raise LabError(
            f"missing tool {missing[0]!r} on PATH (Debian: apt-get install "
            f"{'iproute2' if missing[0] == 'ip' else missing[0]})"
        )


def _tool_versions(which: Callable[[str], str | None] = shutil.which) -> dict[str, str]:
    out: dict[str, str] = {}
    for tool, cmd in TOOL_VERSION_CMDS.items():
        if which(tool) is None:
            continue
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (res.stdout + res.stderr).strip().splitlines()
        line = next((ln for ln in text if any(c.isdigit() for c in ln)), "")
        out[tool] = line.strip()[:120]
    out["python"] = platform.python_version()
    out["kernel"] = platform.release()
    out["ztfm"] = getattr(ztfm, "__version__", "0")
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _make_pki(workdir: Path, run: CommandRunner) -> dict[str, str]:
    """A throw-away lab CA and a server cert for ``fw.lab`` (openssl CLI, P-256, 1 day)."""
    ca_key, ca_pem = workdir / "ca.key", workdir / "ca.pem"
    key, csr, pem = workdir / "fw.key", workdir / "fw.csr", workdir / "fw.pem"
    ext = workdir / "fw.ext"
    ext.write_text(
        "subjectAltName=DNS:fw.lab\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_pem),
            "-days",
            "1",
            "-subj",
            "/CN=ztfm lab CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )
    run(
        [
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            "/CN=fw.lab",
        ]
    )
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_pem),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(pem),
            "-days",
            "1",
            "-extfile",
            str(ext),
        ]
    )
    return {"ca": str(ca_pem), "cert": str(pem), "key": str(key)}


def attack_argv(ev: AttackEvent, plan: LabPlan, *, workdir: Path, until: float) -> list[str]:
    """The command (run inside the source's namespace) that performs ``ev``; rates explicit."""
    src, tgt = plan.host(ev.source), plan.host(ev.target)
    length = ev.end_s - ev.start_s
    count = str(max(1, int(FLOOD_RATE_PPS * length)))
    interval = f"u{1_000_000 // FLOOD_RATE_PPS}"
    rate = str(SCAN_MAX_RATE_PPS)
    name = ev.attack
    if name == "portscan":
        return [
            "nmap",
            "-sS",
            "-Pn",
            "-n",
            "-T4",
            "--max-rate",
            rate,
            "--max-retries",
            "1",
            "-e",
            "eth0",
            "-p",
            "1-3000",
            tgt.ip,
        ]
    if name == "servicescan":
        return [
            "nmap",
            "-sV",
            "--version-light",
            "-Pn",
            "-n",
            "--max-rate",
            rate,
            "-e",
            "eth0",
            "-p",
            "21-23,53,80,123,443,554,1883,2323,5004,8080,8443",
            tgt.ip,
        ]
    if name == "syn_flood":
        return ["hping3", "-q", "-S", "-p", "80", "-i", interval, "-c", count, tgt.ip]
    if name == "udp_flood":
        return [
            "hping3",
            "-q",
            "--udp",
            "-p",
            "5683",
            "-d",
            "64",
            "-i",
            interval,
            "-c",
            count,
            tgt.ip,
        ]
    if name == "icmp_flood":
        return ["hping3", "-q", "--icmp", "-d", "56", "-i", interval, "-c", count, tgt.ip]
    if name == "bruteforce":
        return [
            "hydra",
            "-I",
            "-l",
            agents.PLUG_USER,
            "-P",
            str(workdir / "wordlist.txt"),
            "-t",
            "4",
            "-s",
            "80",
            tgt.ip,
            "http-get",
            "/status",
        ]
    if ATTACKS[name].tool == "python":
        cfg = _agent_cfg(plan, src, until=until, seed=ev.seed)
        cfg["rate_pps"] = FLOOD_RATE_PPS
        cfg["scan_ips"] = [h.ip for h in plan.devices] + [f"{SUBNET}.{k}" for k in range(200, 216)]
        return [sys.executable, "-m", "ztfm.lab.agents", name, json.dumps(cfg)]
    raise ConfigError(f"unknown attack {name!r}")


def _agent_cfg(
    plan: LabPlan, h: Host, *, until: float, seed: int | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": h.name,
        "ip": h.ip,
        "seed": h.seed if seed is None else seed,
        "until": until,
        "services_ip": plan.services.ip,
        "attacker_ip": plan.attacker.ip,
        **extra,
    }


class _Procs:
    """Processes started inside namespaces; all stopped by ``stop_all``."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        src = str(Path(ztfm.__file__).resolve().parents[1])
        self.env = {
            **os.environ,
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def start(
        self, tag: str, netns: str, argv: list[str], *, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        logf = (self.logdir / f"{tag}.log").open("ab")
        try:
            p = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
                cwd=cwd,
            )
        except OSError as exc:
            logf.close()
            raise LabError(f"could not start {argv[0]} in {netns}: {exc}") from exc
        self.items.append((tag, p, logf))
        return p

    @staticmethod
    def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 3.0) -> None:
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=grace_s)

    def stop_all(self, *, last: str = "cap-") -> None:
        """Stop generators first, captures (tags starting with ``last``) after, so they flush."""
        for phase in (False, True):
            for tag, p, _ in self.items:
                if tag.startswith(last) == phase:
                    self.stop(p, signal.SIGINT if phase else signal.SIGTERM)
        for _, _, f in self.items:
            f.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: the caller handles signals
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_manifest(out: Path, meta: dict[str, Any]) -> Path:
    """``manifest.json``: run metadata plus the SHA-256 of every other file under ``out``."""
    files = {
        str(p.relative_to(out)): sha256_file(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    path = out / MANIFEST_NAME
    path.write_text(json.dumps({**meta, "files": files}, indent=2, sort_keys=True) + "\n")
    return path


def run_lab(
    cfg: LabConfig,
    out: str | Path,
    *,
    euid: Callable[[], int] = os.geteuid,
    which: Callable[[str], str | None] = shutil.which,
    state_dir: Path = STATE_DIR,
    run: CommandRunner = run_cmd,
    progress: Callable[[str], None] | None = None,
) -> LabResult:
    """Build the lab, run it for ``cfg.duration_s``, capture, tear down; return the labels."""
    say = progress or (lambda msg: log.info("%s", msg))
    preflight(cfg, euid=euid, which=which)
    plan = plan_lab(cfg)
    taken = [ns for ns in plan.namespaces if ns in set(list_namespaces(cfg.prefix))]
    if taken:
        raise LabError(
            f"namespace {taken[0]} already exists (another run with id "
            f"{cfg.run_id!r} or a leftover: `ztfm lab clean`)"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LabError(f"{out}: output folder exists and is not empty")
    versions = _tool_versions(which)
    workdir = Path(tempfile.mkdtemp(prefix="ztfm-lab-"))
    state = RunState(cfg.run_id, os.getpid(), plan.namespaces, str(workdir))
    state_path = state.write(state_dir)
    procs: _Procs | None = None
    labels: list[dict[str, str]] = []
    t0 = t_end = 0.0
    built = False
    try:
        with _sigterm_as_interrupt():
            (out / "pcaps").mkdir(parents=True, exist_ok=True)
            logdir = workdir / "logs"
            logdir.mkdir()
            say(f"building {len(plan.namespaces)} namespaces ({cfg.prefix}*)")
            built = True
            build_network(plan, run)
            pki = _make_pki(workdir, run)
            rng_pw = secrets.token_hex(8)
            (workdir / "wordlist.txt").write_text(
                "\n".join(f"pw{i:05d}" for i in range(WORDLIST_SIZE)) + "\n"
            )
            procs = _Procs(logdir)
            for h in plan.devices:
                procs.start(
                    f"cap-{h.name}",
                    h.netns,
                    [
                        "tcpdump",
                        "-i",
                        "eth0",
                        "-n",
                        "-U",
                        "-s",
                        str(cfg.snaplen),
                        "-Z",
                        "root",
                        "-w",
                        str((out / "pcaps" / f"{h.name}.pcap").resolve()),
                    ],
                )
            mconf = workdir / "mosquitto.conf"
            mconf.write_text(
                f"listener 1883 {plan.services.ip}\nallow_anonymous true\n"
                "persistence false\nuser root\nlog_dest stdout\n"
                "max_connections 2000\n"
            )
            procs.start("mosquitto", plan.services.netns, ["mosquitto", "-c", str(mconf)])
            horizon = time.time() + float(cfg.duration_s) + 60.0
            plugs = [h.ip for h in plan.devices if h.kind == "plug"]
            py = [sys.executable, "-m", "ztfm.lab.agents"]
            procs.start(
                "services",
                plan.services.netns,
                [
                    *py,
                    "services",
                    json.dumps(
                        _agent_cfg(
                            plan,
                            plan.services,
                            until=horizon,
                            plugs=plugs,
                            plug_password=rng_pw,
                        )
                        | pki
                    ),
                ],
            )
            procs.start(
                "attacker",
                plan.attacker.netns,
                [
                    *py,
                    "attacker_server",
                    json.dumps(_agent_cfg(plan, plan.attacker, until=horizon)),
                ],
            )
            time.sleep(1.0)  # let tcpdump and the servers bind before traffic starts
            t0 = time.time()
            for h in plan.devices:
                procs.start(
                    f"dev-{h.name}",
                    h.netns,
                    [
                        *py,
                        h.kind,
                        json.dumps(
                            _agent_cfg(
                                plan,
                                h,
                                until=t0 + float(cfg.duration_s),
                                plug_password=rng_pw,
                            )
                            | pki
                        ),
                    ],
                )
            say(f"fleet of {len(plan.devices)} devices running for {cfg.duration_s:g} s")
            labels = _run_schedule(plan, procs, t0, workdir, say)
            t_end = time.time()
            say("stopping fleet and captures")
    finally:
        if procs is not None:
            procs.stop_all()
        left = delete_namespaces(plan.namespaces) if built else []
        if not left:
            state_path.unlink(missing_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)
    if left:
        raise LabError(f"could not delete namespaces {', '.join(left)}; run `ztfm lab clean`")
    _write_csv(out / "labels.csv", LABELS_HEADER, labels)
    _write_csv(
        out / "devices.csv",
        DEVICES_HEADER,
        [
            {"device": h.name, "type": h.kind, "ip": h.ip, "netns": h.netns, "seed": str(h.seed)}
            for h in plan.devices
        ],
    )
    write_manifest(
        out,
        {
            "format": "ztfm-lab/1",
            "seed": cfg.seed,
            "run_id": cfg.run_id,
            "devices": cfg.devices,
            "duration_s": float(cfg.duration_s),
            "attacks": list(cfg.attacks),
            "snaplen": cfg.snaplen,
            "warmup_s": min((e.start_s for e in plan.schedule), default=None),
            "started_at": t0,
            "ended_at": t_end,
            "services_ip": plan.services.ip,
            "attacker_ip": plan.attacker.ip,
            "tool_versions": versions,
        },
    )
    return LabResult(out, plan, t0, t_end, tuple(labels))


def _run_schedule(
    plan: LabPlan, procs: _Procs, t0: float, workdir: Path, say: Callable[[str], None]
) -> list[dict[str, str]]:
    """Start and stop each attack on time; the labels record when each actually ran.

    A scan or brute force that finishes before its slot ends is started again (at most
    ``MAX_REPEATS`` times), as a bot would; floods carry their own packet count.
    """
    pending = sorted(plan.schedule, key=lambda e: e.start_s)
    running: list[list[Any]] = []  # [event, process, started, repeats]
    labels: list[dict[str, str]] = []
    end = t0 + float(plan.config.duration_s)
    max_steps = int(float(plan.config.duration_s) * 20) + 100
    for _ in range(max_steps):
        now = time.time()
        while pending and t0 + pending[0].start_s <= now:
            ev = pending.pop(0)
            say(f"attack {ev.attack}: {ev.source} -> {ev.target}")
            running.append([ev, _launch(plan, procs, ev, t0, workdir), time.time(), 0])
        for item in list(running):
            ev, p, started, repeats = item
            over = time.time() >= t0 + ev.end_s - 0.5
            exited = p.poll() is not None
            if exited and not over and ev.attack in REPEATABLE and repeats < MAX_REPEATS:
                item[1], item[3] = _launch(plan, procs, ev, t0, workdir), repeats + 1
                continue
            if over or p.poll() is not None:
                procs.stop(p, grace_s=2.0)
                running.remove(item)
                labels.extend(_labels(plan, ev, started, time.time()))
        if now >= end and not running and not pending:
            break
        time.sleep(min(0.05, max(0.0, end - time.time())) or 0.01)
    for ev, p, started, _ in running:  # step cap reached: stop what is left
        procs.stop(p, grace_s=2.0)
        labels.extend(_labels(plan, ev, started, time.time()))
    return labels


def _launch(
    plan: LabPlan, procs: _Procs, ev: AttackEvent, t0: float, workdir: Path
) -> subprocess.Popen[bytes]:
    argv = attack_argv(ev, plan, workdir=workdir, until=t0 + ev.end_s)
    return procs.start(f"atk-{ev.attack}", plan.host(ev.source).netns, argv, cwd=workdir)


def _labels(plan: LabPlan, ev: AttackEvent, start: float, end: float) -> list[dict[str, str]]:
    """Label rows of one attack: the device whose capture shows it, and for an attack on the
    whole subnet (a worm's telnet scan) also every other device, as a victim of the source."""
    src, tgt = plan.host(ev.source), plan.host(ev.target)
    rows = [_row(plan.host(ev.device), ev.attack, start, end, src, tgt)]
    if tgt.name == LAN.name:
        rows += [_row(d, ev.attack, start, end, src, d) for d in plan.devices if d != src]
    return rows


def _row(dev: Host, attack: str, start: float, end: float, src: Host, tgt: Host
         ) -> dict[str, str]:  # fmt: skip
    return {
        "device": dev.name,
        "type": dev.kind,
        "start": f"{start:.6f}",
        "end": f"{end:.6f}",
        "attack": attack,
        "source": src.name,
        "target": tgt.name,
        "source_ip": src.ip,
        "target_ip": tgt.ip,
    }
