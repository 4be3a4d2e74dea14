from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ztfm.crypto.pki import Certificate


def _ztfm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_ca_enrolment_flow(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    assert _ztfm("ca", "init", "--dir", ca, "--fleet", "acme.example").returncode == 0
    tok = _ztfm("ca", "token", "--dir", ca, "--segment", "cams", "--id", "cam-1").stdout.strip()
    csr = str(tmp_path / "csr.pem")
    r = _ztfm(
        "ca",
        "csr",
        "--key",
        str(tmp_path / "k.pem"),
        "--fleet",
        "acme.example",
        "--segment",
        "cams",
        "--id",
        "cam-1",
        "--token",
        tok,
        "--out",
        csr,
    )
    assert r.returncode == 0, r.stderr
    cert = tmp_path / "c.pem"
    assert _ztfm("ca", "issue", "--dir", ca, "--csr", csr, "--out", str(cert)).returncode == 0
    assert Certificate.from_pem(cert.read_bytes()).uris == (
        "spiffe://acme.example/segment/cams/role/device/id/cam-1",
    )
    again = _ztfm("ca", "issue", "--dir", ca, "--csr", csr, "--out", str(tmp_path / "d.pem"))
    assert again.returncode == 1 and "already used" in again.stderr
    garbage = tmp_path / "g.pem"
    garbage.write_bytes(b"not a csr")
    bad = _ztfm("ca", "issue", "--dir", ca, "--csr", str(garbage), "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and "CSR" in bad.stderr
    assert _ztfm("ca", "revoke", "--dir", ca).returncode == 2
