"""Linux network namespaces for the lab: build the bridge and veth links, list, tear down.

Everything goes through ``ip`` (iproute2). Each run's namespaces share the prefix
``ztfm-<run id>-`` so parallel runs and leftovers are identifiable. The lab subnet is connected
only to the bridge namespace: no namespace gets a default route, none is linked to the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ztfm.errors import LabError
from ztfm.lab.spec import PREFIX_LEN, LabPlan

log = logging.getLogger(__name__)

LAB_PREFIX = "ztfm-"
STATE_DIR = Path(os.environ.get("ZTFM_LAB_STATE", "/run/ztfm-lab"))
NETNS_DIR = Path("/run/netns")


class CommandRunner(Protocol):
    """Runs one command; raises ``LabError`` with the command's stderr on failure."""

    def __call__(self, argv: list[str], *, timeout_s: float = 30.0) -> str: ...


def run_cmd(argv: list[str], *, timeout_s: float = 30.0) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv[:4])}...: timed out after {timeout_s:.0f} s") from exc
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv)}: {msg[-1] if msg else f'exit {res.returncode}'}")
    return res.stdout


def list_namespaces(prefix: str = LAB_PREFIX) -> list[str]:
    """Names of existing namespaces starting with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def _no_ipv6(netns: str, run: CommandRunner) -> None:
    """IPv4 on the private lab subnet only: no link-local IPv6 chatter, no SLAAC."""
    run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]
    )


def build_network(plan: LabPlan, run: CommandRunner = run_cmd) -> None:
    """Create the bridge namespace and one namespace per host, linked by veth pairs.

    Fails without touching anything if any namespace name of the plan is already taken.
    """
    taken = [ns for ns in plan.namespaces if (NETNS_DIR / ns).exists()]
    if taken:
        raise LabError(
            f"namespace {taken[0]} already exists (another run with id "
            f"{plan.config.run_id!r} or a leftover: `ztfm lab clean`)"
        )
    br = plan.bridge_ns
    run(["ip", "netns", "add", br])
    _no_ipv6(br, run)
    run(["ip", "-n", br, "link", "set", "lo", "up"])
    run(["ip", "-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
    run(["ip", "-n", br, "link", "set", "br0", "multicast", "off"])
    run(["ip", "-n", br, "link", "set", "br0", "up"])
    for h in plan.hosts:
        run(["ip", "netns", "add", h.netns])
        _no_ipv6(h.netns, run)
        run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
        run(
            [
                "ip",
                "link",
                "add",
                h.veth,
                "netns",
                br,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                h.netns,
            ]
        )
        run(["ip", "-n", br, "link", "set", h.veth, "multicast", "off"])
        run(["ip", "-n", br, "link", "set", h.veth, "master", "br0"])
        run(["ip", "-n", br, "link", "set", h.veth, "up"])
        # unicast and ARP only: no IGMP membership reports from 0.0.0.0
        run(["ip", "-n", h.netns, "link", "set", "eth0", "multicast", "off"])
        run(["ip", "-n", h.netns, "addr", "add", f"{h.ip}/{PREFIX_LEN}", "dev", "eth0"])
        run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])


def netns_pids(netns: str) -> list[int]:
    try:
        out = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in out.split() if x.isdigit()]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_netns_processes(netns: str, *, grace_s: float = 3.0) -> None:
    """SIGTERM every process inside ``netns``, then SIGKILL what is left after ``grace_s``."""
    pids = netns_pids(netns)
    if not pids:
        return
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and netns_pids(netns):
        time.sleep(0.1)
    _signal_all(netns_pids(netns), signal.SIGKILL)
    for _ in range(50):
        if not netns_pids(netns):
            break
        time.sleep(0.1)


def delete_namespaces(names: list[str] | tuple[str, ...], *, grace_s: float = 3.0) -> list[str]:
    """Kill the processes in each namespace and delete it; returns names that could not go."""
    failed = []
    for ns in names:
        if not (NETNS_DIR / ns).exists():
            continue
        kill_netns_processes(ns, grace_s=grace_s)
        try:
            run_cmd(["ip", "netns", "del", ns])
        except LabError as exc:
            log.warning("could not delete namespace %s: %s", ns, exc)
            failed.append(ns)
    return failed


@dataclass(frozen=True, slots=True)
class RunState:
    """What ``ztfm lab clean`` needs to find a run's leftovers: written before anything exists."""

    run_id: str
    owner_pid: int
    namespaces: tuple[str, ...]
    workdir: str

    def write(self, state_dir: Path = STATE_DIR) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / f"{self.run_id}.json"
        path.write_text(
            json.dumps(
                {
                    "run_id": self.run_id,
                    "owner_pid": self.owner_pid,
                    "namespaces": list(self.namespaces),
                    "workdir": self.workdir,
                }
            )
        )
        return path

    @staticmethod
    def read(path: Path) -> RunState | None:
        try:
            d = json.loads(path.read_text())
            return RunState(
                str(d["run_id"]),
                int(d["owner_pid"]),
                tuple(str(n) for n in d["namespaces"]),
                str(d["workdir"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean(
    run_id: str | None = None, *, include_active: bool = False, state_dir: Path = STATE_DIR
) -> list[str]:
    """Remove leftovers of dead runs (or of ``run_id``); returns the namespaces removed.

    A run whose owner process is still alive is left alone unless ``include_active``.
    Namespaces with the ``ztfm-`` prefix that no live run claims are removed too.
    """
    import shutil

    removed: list[str] = []
    live_claims: set[str] = set()
    states = sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []
    for path in states:
        st = RunState.read(path)
        if st is None:
            path.unlink(missing_ok=True)
            continue
        if run_id is not None and st.run_id != run_id:
            if _alive(st.owner_pid):
                live_claims.update(st.namespaces)
            continue
        if _alive(st.owner_pid) and not include_active and st.owner_pid != os.getpid():
            live_claims.update(st.namespaces)
            continue
        gone = [ns for ns in st.namespaces if (NETNS_DIR / ns).exists()]
        delete_namespaces(gone)
        removed.extend(gone)
        if st.workdir and Path(st.workdir).name.startswith("ztfm-lab-"):
            shutil.rmtree(st.workdir, ignore_errors=True)
        path.unlink(missing_ok=True)
    prefix = LAB_PREFIX if run_id is None else f"{LAB_PREFIX}{run_id}-"
    orphans = [ns for ns in list_namespaces(prefix) if ns not in live_claims]
    delete_namespaces(orphans)
    removed.extend(orphans)
    return sorted(set(removed))
