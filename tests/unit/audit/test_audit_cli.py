from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
