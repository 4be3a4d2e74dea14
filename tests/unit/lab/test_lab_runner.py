"""Preflight refuses before touching anything; attack commands carry explicit bounds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ztfm.errors import ConfigError, LabError
from ztfm.lab import netns
from ztfm.lab.runner import attack_argv, preflight, run_lab
from ztfm.lab.spec import ATTACKS, FLOOD_RATE_PPS, LabConfig, plan_lab


def cfg(**kw: object) -> LabConfig:
    base: dict[str, object] = {
        "devices": 4,
        "duration_s": 60.0,
        "seed": 3,
        "run_id": "unit1",
        "attacks": ("portscan", "syn_flood", "bruteforce"),
    }
    base.update(kw)
    return LabConfig(**base)  # type: ignore[arg-type]


def _no_residue(out: Path, state: Path, run_id: str = "unit1") -> None:
    assert not out.exists()
    assert not state.exists() or not list(state.glob("*.json"))
    assert not netns.list_namespaces(f"ztfm-{run_id}-")


def test_not_root_is_refused_without_residue(tmp_path: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    with pytest.raises(LabError) as exc:
        run_lab(cfg(), out, euid=lambda: 1000, state_dir=state)
    assert "needs root" in str(exc.value) and "\n" not in str(exc.value)
    _no_residue(out, state)


@pytest.mark.parametrize("tool", ["hping3", "nmap", "hydra", "tcpdump", "mosquitto", "ip"])
def test_missing_tool_is_named(tmp_path: Path, tool: str) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    with pytest.raises(LabError) as exc:
        run_lab(
            cfg(),
            out,
            euid=lambda: 0,
            which=lambda t: None if t == tool else f"/bin/{t}",
            state_dir=state,
        )
    assert f"missing tool {tool!r}" in str(exc.value)
    _no_residue(out, state)


def test_tool_not_needed_is_not_required() -> None:
    preflight(
        cfg(attacks=("cnc_beacon",)),
        euid=lambda: 0,
        which=lambda t: None if t in ("hping3", "nmap", "hydra") else "/x",
    )


def test_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the output check comes after the root check")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LabError, match="not empty"):
        run_lab(cfg(), out, which=lambda t: "/x", state_dir=tmp_path / "state")
    assert (out / "keep.txt").read_text() == "mine"


def test_zero_duration_fails_before_anything() -> None:
    with pytest.raises(ConfigError, match="duration"):
        cfg(duration_s=0)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_attack_command_is_bounded(attack: str, tmp_path: Path) -> None:
    c = cfg(devices=8, attacks=(attack,), duration_s=100)
    plan = plan_lab(c)
    (ev,) = plan.schedule
    argv = attack_argv(ev, plan, workdir=tmp_path, until=123.0)
    tool = ATTACKS[attack].tool
    if tool == "hping3":
        assert "-i" in argv and "-c" in argv
        count = int(argv[argv.index("-c") + 1])
        assert count <= FLOOD_RATE_PPS * (ev.end_s - ev.start_s) + 1
        assert argv[argv.index("-i") + 1] == f"u{1_000_000 // FLOOD_RATE_PPS}"
    elif tool == "nmap":
        assert "--max-rate" in argv and "-Pn" in argv and "-n" in argv
    elif tool == "hydra":
        assert "-t" in argv and str(tmp_path / "wordlist.txt") in argv
    else:
        assert argv[1:4] == ["-m", "ztfm.lab.agents", attack]
        payload = json.loads(argv[4])
        assert payload["until"] == 123.0
        assert payload["name"] == ev.source
    target_ip = plan.host(ev.target).ip
    if ATTACKS[attack].direction == "in":
        assert target_ip in argv


def test_clean_removes_state_of_dead_runs_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead = netns.RunState("zzdead1", 2**22 + 12345, ("ztfm-zzdead1-br",), str(tmp_path / "w"))
    alive = netns.RunState("zzlive1", 1, ("ztfm-zzlive1-br",), "")
    dead.write(state)
    alive.write(state)
    (state / "junk.json").write_text("{not json")
    assert netns.clean("zzdead1", state_dir=state) == []
    assert not (state / "zzdead1.json").exists()
    assert (state / "zzlive1.json").exists()
    assert not (state / "junk.json").exists()
    netns.clean("zzlive1", state_dir=state)
    assert (state / "zzlive1.json").exists()  # pid 1 is alive: left alone without include_active
