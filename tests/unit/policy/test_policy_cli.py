from __future__ import annotations

import subprocess
import sys
from pathlib import Path

URI = "spiffe://acme.example/segment/cams/role/device/id/cam-1"


def _ztfm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_eval_allow_and_denials(tmp_path: Path) -> None:
    base = ["policy", "eval", "--principal", URI, "--action", "GetRound", "--kind", "round"]
    ok = _ztfm(*base, "--segment", "cams", "--json")
    assert ok.returncode == 0 and '"allowed": true' in ok.stdout
    cross = _ztfm(*base, "--segment", "plcs")
    assert cross.returncode == 1 and "deny by default" in cross.stderr
    quarantined = _ztfm(*base, "--segment", "cams", "--quarantined")
    assert quarantined.returncode == 1 and "quarantine" in quarantined.stderr
    bad_uri = _ztfm(
        "policy",
        "eval",
        "--principal",
        "http://x",
        "--action",
        "GetRound",
        "--kind",
        "round",
        "--segment",
        "cams",
    )
    assert bad_uri.returncode == 1 and "spiffe" in bad_uri.stderr
    f = tmp_path / "p.cedar"
    f.write_text('@id("x") permit(principal, action, resource) when { context.nope };')
    bad = _ztfm("policy", "check", str(f))
    assert bad.returncode == 1 and "schema" in bad.stderr
