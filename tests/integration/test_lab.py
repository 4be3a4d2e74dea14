"""The real lab: namespaces, mosquitto, nmap/hping3, tcpdump; labels checked against the traffic.

Needs root and the Debian packages iproute2, tcpdump, mosquitto, nmap, hping3, hydra, openssl.
The small lab (4 devices, 60 s, 3 attacks) runs once per module, in a thread, while the live
scorer listens inside one device's namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ztfm.data.lab import load_lab, read_devices, read_labels, read_manifest
from ztfm.data.pcap import iter_packets
from ztfm.detect.netfeatures import packet_featurizer
from ztfm.errors import LabError
from ztfm.lab import netns
from ztfm.lab.runner import LabResult, new_run_id, run_lab
from ztfm.lab.spec import ATTACKER_IP, SUBNET, LabConfig

pytestmark = pytest.mark.root

TOOLS = ("ip", "tcpdump", "mosquitto", "nmap", "hping3", "hydra", "openssl")
ATTACKS = ("portscan", "syn_flood", "cnc_beacon")


def _require_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for t in TOOLS:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed")


def _cli(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "ztfm.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabResult, dict]]:
    _require_root_and_tools()
    out = tmp_path_factory.mktemp("lab") / "run"
    cfg = LabConfig(devices=4, duration_s=60.0, attacks=ATTACKS, seed=5, run_id=new_run_id())
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = run_lab(cfg, out)
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target)
    th.start()
    # live scoring inside the gateway's namespace while the lab runs (same code path as files)
    dev_ns = f"{cfg.prefix}dev03"
    for _ in range(200):
        if dev_ns in netns.list_namespaces(cfg.prefix) and "result" not in box:
            break
        time.sleep(0.1)
    time.sleep(4.0)
    live = _cli(
        "lab",
        "live",
        "--netns",
        dev_ns,
        "--warmup",
        "12",
        "--seconds",
        "8",
        "--json",
        timeout=180,
    )
    th.join(timeout=300)
    assert not th.is_alive(), "lab run did not finish"
    if "error" in box:
        raise AssertionError(f"lab run failed: {box['error']}")
    res = box["result"]
    assert isinstance(res, LabResult)
    yield res, {"live": live, "prefix": cfg.prefix}


def test_captures_exist_and_parse(small_lab: tuple[LabResult, dict]) -> None:
    res, _ = small_lab
    for dev in res.plan.devices:
        pkts = list(iter_packets(res.out / "pcaps" / f"{dev.name}.pcap"))
        assert len(pkts) > 10, dev.name
        own = [p for p in pkts if dev.ip in (p.src_ip, p.dst_ip)]
        assert len(own) > 0.9 * len(pkts)


def test_traffic_stays_on_the_private_lab_subnet(small_lab: tuple[LabResult, dict]) -> None:
    res, _ = small_lab
    for dev in res.plan.devices:
        for p in iter_packets(res.out / "pcaps" / f"{dev.name}.pcap"):
            assert p.ip_version in (0, 4), f"{dev.name}: IPv6 packet"
            for ip in (p.src_ip, p.dst_ip):
                assert not ip or ip.startswith(f"{SUBNET}."), f"{dev.name}: {ip}"


def test_labels_line_up_with_attack_traffic(small_lab: tuple[LabResult, dict]) -> None:
    res, _ = small_lab
    devices = read_devices(res.out)
    labels = read_labels(res.out, devices)
    assert sorted(lab.attack for lab in labels) == sorted(ATTACKS)
    for lab in labels:
        dev = devices[lab.device]
        pkts = list(iter_packets(res.out / "pcaps" / f"{lab.device}.pcap"))
        others = [o for o in labels if o.device == lab.device and o is not lab]

        def in_other(ts: float, others: list = others) -> bool:  # type: ignore[type-arg]
            return any(o.start - 1.0 <= ts <= o.end + 1.0 for o in others)

        with_peer = [
            p
            for p in pkts
            if p.ethertype == 0x0800  # IP only: ARP refreshes trail a conversation by seconds
            and lab.peer_ip in (p.src_ip, p.dst_ip)
            and not in_other(p.ts)
        ]
        inside = [p for p in with_peer if lab.start - 1.0 <= p.ts <= lab.end + 1.0]
        assert len(inside) >= 0.95 * len(with_peer), lab.attack
        need = {"portscan": 200, "syn_flood": 300, "cnc_beacon": 5}[lab.attack]
        assert len(inside) >= need, f"{lab.attack}: only {len(inside)} packets"
        if lab.attack == "syn_flood":
            syns = [p for p in inside if p.src_ip == ATTACKER_IP and p.tcp_flags & 0x12 == 0x02]
            assert len(syns) >= 300
        if lab.attack == "cnc_beacon":
            assert any(p.src_ip == dev.ip and p.dport == 6667 for p in inside)
    # the attacker host talks to nobody outside the labelled intervals
    attacked = {lab.device for lab in labels}
    for dev in res.plan.devices:
        if dev.name in attacked:
            continue
        pkts = iter_packets(res.out / "pcaps" / f"{dev.name}.pcap")
        ip_pkts = (p for p in pkts if p.ethertype == 0x0800)  # ARP requests are broadcast
        assert not any(ATTACKER_IP in (p.src_ip, p.dst_ip) for p in ip_pkts), dev.name


def test_manifest_and_loader(small_lab: tuple[LabResult, dict]) -> None:
    res, _ = small_lab
    m = read_manifest(res.out)
    assert m["seed"] == 5 and m["attacks"] == list(ATTACKS)
    assert {"nmap", "hping3", "mosquitto", "tcpdump"} <= set(m["tool_versions"])
    assert len(m["files"]) == 4 + 2
    series = load_lab(res.out, featurize=packet_featurizer())
    assert {s.segment for s in series} == {"sensor", "plug", "camera", "gateway"}
    kinds = set(np.concatenate([s.kinds for s in series if s.kinds is not None]))
    assert kinds == {"benign", *ATTACKS}


def test_everything_is_torn_down(small_lab: tuple[LabResult, dict]) -> None:
    _, info = small_lab
    assert netns.list_namespaces(info["prefix"]) == []
    assert not (netns.STATE_DIR / f"{info['prefix'][5:-1]}.json").exists()


def test_live_scoring_inside_a_device_namespace(small_lab: tuple[LabResult, dict]) -> None:
    _, info = small_lab
    live = info["live"]
    assert live.returncode == 0, live.stderr
    import json

    summary = json.loads(live.stdout.strip().splitlines()[-1])
    assert summary["ip"] == f"{SUBNET}.13", summary
    assert 10 <= summary["warmup_windows"] <= 14, summary
    assert 5 <= summary["windows"] <= 9, summary
    assert summary["threshold"] > 0, summary


# --- negative paths: each with a clear message and no residue -----------------------------------
def test_namespace_name_already_taken(tmp_path: Path) -> None:
    _require_root_and_tools()
    rid = new_run_id()
    taken = f"ztfm-{rid}-br"
    subprocess.run(["ip", "netns", "add", taken], check=True)
    try:
        cfg = LabConfig(devices=2, duration_s=30, attacks=(), seed=1, run_id=rid)
        with pytest.raises(LabError, match=f"namespace {taken} already exists"):
            run_lab(cfg, tmp_path / "out", state_dir=tmp_path / "state")
        assert netns.list_namespaces(f"ztfm-{rid}-") == [taken]  # ours untouched, none added
        assert not (tmp_path / "out").exists()
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=False)


def test_not_root_subprocess(tmp_path: Path) -> None:
    _require_root_and_tools()
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    out = tmp_path / "out"
    res = _cli(
        "lab",
        "run",
        "--devices",
        "2",
        "--duration",
        "30",
        "--out",
        str(out),
        prefix=("unshare", "--user"),
    )  # a user namespace: euid 65534, no capabilities
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("error: the lab needs root")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_tool_subprocess(tmp_path: Path) -> None:
    _require_root_and_tools()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for t in ("ip", "tcpdump", "mosquitto", "nmap", "hydra", "openssl"):
        (bin_dir / t).symlink_to(shutil.which(t) or t)
    env = {**os.environ, "PATH": str(bin_dir)}
    out = tmp_path / "out"
    res = _cli("lab", "run", "--attacks", "syn_flood", "--out", str(out), env=env)
    assert res.returncode == 1
    assert "missing tool 'hping3'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--duration", "0"), "duration must be in"),
        (("--attacks", "portscan,teleport"), "unknown attack 'teleport'"),
        (("--devices", "0"), "devices must be"),
        (("--run-id", "BAD!"), "run id"),
    ],
)
def test_bad_options_subprocess(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    out = tmp_path / "out"
    before = set(netns.list_namespaces())
    res = _cli("lab", "run", "--out", str(out), *args)
    assert res.returncode == 1
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert set(netns.list_namespaces()) <= before


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_tears_everything_down(tmp_path: Path, sig: signal.Signals) -> None:
    _require_root_and_tools()
    rid = new_run_id()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ztfm.cli.main",
            "lab",
            "run",
            "--devices",
            "2",
            "--duration",
            "60",
            "--attacks",
            "none",
            "--run-id",
            rid,
            "--out",
            str(tmp_path / "out"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # a test run started in the background (`pytest &`) ignores SIGINT, and the child
        # would inherit that: give it the default disposition a terminal's Ctrl-C meets
        preexec_fn=_default_sigint,
    )
    assert proc.stderr is not None
    try:
        for _ in range(100):
            line = proc.stderr.readline()
            if "running" in line or not line:
                break
        assert netns.list_namespaces(f"ztfm-{rid}-"), "lab did not start"
        # while it runs: one connected /24 route, no default route, no IPv6 address
        for ns in (f"ztfm-{rid}-dev00", f"ztfm-{rid}-srv", f"ztfm-{rid}-atk"):
            routes = (
                subprocess.run(
                    ["ip", "-n", ns, "-4", "route"], capture_output=True, text=True, check=True
                )
                .stdout.strip()
                .splitlines()
            )
            assert len(routes) == 1 and routes[0].startswith(f"{SUBNET}.0/24"), routes
            v6 = subprocess.run(
                ["ip", "-n", ns, "-6", "addr"], capture_output=True, text=True, check=True
            ).stdout.strip()
            assert v6 == "", v6
        time.sleep(1.0)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc in (1, 130)
    assert netns.list_namespaces(f"ztfm-{rid}-") == []
    assert not (netns.STATE_DIR / f"{rid}.json").exists()


def test_clean_removes_leftovers_of_a_killed_run(tmp_path: Path) -> None:
    _require_root_and_tools()
    rid = new_run_id()
    ns = f"ztfm-{rid}-dev00"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"])
    state = tmp_path / "state"
    try:
        netns.RunState(rid, 2**22 + 4242, (ns,), str(tmp_path / "w")).write(state)
        removed = netns.clean(rid, state_dir=state)
        assert removed == [ns]
        assert sleeper.wait(timeout=10) != 0
        assert netns.list_namespaces(f"ztfm-{rid}-") == []
        assert not list(state.glob("*.json"))
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
