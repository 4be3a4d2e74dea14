"""Every command group answers --help with an explanation, and errors exit cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ztfm.cli.main import COMMANDS


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_top_level_help_lists_every_group() -> None:
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    for name in COMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_group_help(name: str) -> None:
    res = _run(name, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout
    assert len(res.stdout.splitlines()) > 3


def test_unknown_command_is_usage_error() -> None:
    res = _run("no-such-command")
    assert res.returncode == 2
