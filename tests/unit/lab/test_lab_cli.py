"""``ztfm lab`` commands that need no root, and the refusals of those that do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ztfm.data.bundled import bundled_path


def _run(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "ztfm.cli.main", "lab", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_bundled_prints_the_path() -> None:
    res = _run("bundled")
    assert res.returncode == 0
    assert Path(res.stdout.strip()) == bundled_path("lab")


def test_evaluate_bundled_json() -> None:
    res = _run("evaluate", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["devices"]) == 12
    assert {a["attack"] for a in out["attacks"]} >= {"portscan", "syn_flood", "exfil"}
    assert all(d["far"] <= 0.01 for d in out["devices"])  # see docs/lab.md


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("evaluate", "--detector", "nope"), 2, "unknown detector"),
        (("evaluate", "--data", "/"), 1, "manifest.json: no such file"),
        (("evaluate", "--window", "0"), 1, "window width"),
        (("run", "--out", "x", "--duration", "0"), 1, "duration must be in"),
        (("run", "--out", "x", "--attacks", "nmap"), 1, "unknown attack 'nmap'"),
        (("live", "--netns", "../etc"), 1, "namespace"),
        (("live", "--netns", "ztfm-nonexistent-dev00"), 1, "namespace"),
    ],
)
def test_bad_usage_is_one_clear_line(args: tuple[str, ...], code: int, needle: str) -> None:
    res = _run(*args)
    assert res.returncode == code, res.stderr
    assert needle in res.stderr
    if code == 1:
        assert len(res.stderr.strip().splitlines()) == 1


def test_root_only_commands_refuse_unprivileged_users(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        prefix: tuple[str, ...] = ()
    else:  # a user namespace: euid 65534 and no capabilities, like an ordinary user
        prefix = ("unshare", "--user")
        if subprocess.run(["unshare", "--user", "true"], check=False).returncode != 0:
            pytest.skip("cannot create a user namespace here")
    out = tmp_path / "out"
    res = _run("run", "--out", str(out), prefix=prefix)
    assert res.returncode == 1 and "needs root" in res.stderr
    assert not out.exists()
    res = _run("clean", prefix=prefix)
    assert res.returncode == 1 and "needs root" in res.stderr
