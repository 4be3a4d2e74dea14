"""The parts by hand, as an operator would run them: ``ztfm ca init`` / ``ztfm ca token``,
``ztfm coordinator serve`` and two ``ztfm device run`` processes, one on its fleet member and
one on its own SKAB CSV file (another segment)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ztfm.data.bundled import bundled_path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ztfm.cli.main", *args]


def test_serve_and_two_devices_by_hand(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[rounds]\nlocal_epochs = 1\n")
    ca = tmp_path / "ca"
    subprocess.run(_cli("ca", "init", "--dir", str(ca), "--fleet", "fleet.local"), check=True)
    ready, out = tmp_path / "ends.json", tmp_path / "out"
    coord = subprocess.Popen(
        [
            *_cli("coordinator", "serve", "--ca", str(ca), "--config", str(cfg)),
            *("--devices", "2", "--rounds", "2", "--n-features", "120"),
            *("--ready-file", str(ready), "--out", str(out)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    devices: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert coord.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        ends = json.loads(ready.read_text())
        csv = sorted((bundled_path("skab") / "other").iterdir())[0]
        for dev, seg, data in (
            ("skab-valve1-0", "valve1", ["--fleet-index", "0", "--devices", "2"]),
            ("pump-7", "other", ["--telemetry", str(csv)]),
        ):
            tok = subprocess.run(
                _cli("ca", "token", "--dir", str(ca), "--segment", seg, "--id", dev),
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            (tmp_path / f"{dev}.tok").write_text(tok)
            devices.append(
                subprocess.Popen(
                    [
                        *_cli("device", "run", "--coordinator", ends["fleet"]),
                        *("--enroll", ends["enroll"], "--ca-cert", str(ca / "ca.crt")),
                        *("--id", dev, "--segment", seg, "--state-dir", str(tmp_path / dev)),
                        *("--token-file", str(tmp_path / f"{dev}.tok"), "--config", str(cfg)),
                        *data,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        outs = [p.communicate(timeout=120)[0].decode() for p in devices]
        coord_out = coord.communicate(timeout=60)[0].decode()
    finally:
        for p in [coord, *devices]:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert coord.returncode == 0, coord_out
    assert all(p.returncode == 0 for p in devices), outs
    assert all("done" in o for o in outs), outs
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["rounds"]) == 2 and not m["interrupted"]
    assert sorted(m["rounds"][-1]["per_segment"]) == ["other", "valve1"]
    assert all(sorted(r["accepted"]) == ["pump-7", "skab-valve1-0"] for r in m["rounds"])
    # each device kept its key private and its certificate names it
    for dev in ("skab-valve1-0", "pump-7"):
        assert (tmp_path / dev / "key.pem").stat().st_mode & 0o077 == 0
        assert (tmp_path / dev / "cert.pem").exists()
