from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ztfm.audit import AuditLog

T0 = 1_800_000_000.0


def _ztfm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_verify_ok_then_tampered(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        for i in range(3):
            log.append("e", {"i": i}, T0)
    ok = _ztfm("audit", "verify", str(p))
    assert ok.returncode == 0 and "3 records" in ok.stdout
    p.write_bytes(p.read_bytes().replace(b'"i":1', b'"i":7'))
    bad = _ztfm("audit", "verify", str(p))
    assert bad.returncode == 1
    assert "line 2" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    head = _ztfm("audit", "verify", str(p), "--head", "nope")
    assert head.returncode == 2


def test_snapshots_list_and_show(tmp_path: Path) -> None:
    from ztfm.audit import SnapshotStore

    store = SnapshotStore(tmp_path / "s")
    seq = store.save("rejected_update", b"\x01\x02", {"peer": "spiffe://x"}, T0)
    listed = _ztfm("audit", "snapshots", str(tmp_path / "s"))
    assert listed.returncode == 0 and "1 snapshots" in listed.stdout
    out = tmp_path / "p.bin"
    shown = _ztfm(
        "audit",
        "snapshots",
        str(tmp_path / "s"),
        "--show",
        str(seq),
        "--payload-out",
        str(out),
        "--json",
    )
    assert shown.returncode == 0 and '"payload_len": 2' in shown.stdout
    assert out.read_bytes() == b"\x01\x02"
    missing = _ztfm("audit", "snapshots", str(tmp_path / "s"), "--show", "99")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_show_prints_the_last_records(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        for i in range(4):
            log.append("a" if i % 2 else "b", {"i": i}, T0 + i)
    out = _ztfm("audit", "show", str(p), "-n", "2")
    assert out.returncode == 0
    assert [ln.split()[0] for ln in out.stdout.splitlines()] == ["3", "4"]
    only_a = _ztfm("audit", "show", str(p), "--event", "a")
    assert [ln.split()[2] for ln in only_a.stdout.splitlines()] == ["a", "a"]
    p.write_bytes(p.read_bytes().replace(b'"i":3', b'"i":8'))
    bad = _ztfm("audit", "show", str(p))
    assert bad.returncode == 1 and "line 4" in bad.stderr and bad.stdout == ""


def test_show_answers_from_one_read_of_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log rewritten right after its chain was verified must not be printed unverified."""
    import ztfm.audit
    import ztfm.audit.log
    from ztfm.cli.main import cli

    p = tmp_path / "a.jsonl"
    with AuditLog(p) as log:
        for i in range(3):
            log.append("e", {"i": i}, T0 + i)
    real_verify = ztfm.audit.log.verify_log

    def verify_then_forge(*args: Any, **kwargs: Any) -> Any:
        res = real_verify(*args, **kwargs)
        p.write_bytes(p.read_bytes().replace(b'"event":"e"', b'"event":"forged"'))
        return res

    monkeypatch.setattr(ztfm.audit, "verify_log", verify_then_forge)
    monkeypatch.setattr(ztfm.audit.log, "verify_log", verify_then_forge)
    result = CliRunner().invoke(cli, ["audit", "show", str(p)])
    assert result.exit_code == 0
    assert [ln.split()[2] for ln in result.output.splitlines()] == ["e", "e", "e"]
