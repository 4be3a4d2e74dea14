"""``ztfm attest demo`` end to end with real swtpm processes."""

from __future__ import annotations

import json
import shutil

import pytest

from ztfm.cli.main import main

pytestmark = pytest.mark.tpm


@pytest.fixture(autouse=True)
def _need_swtpm() -> None:
    if shutil.which("swtpm_setup") is None:
        pytest.skip("swtpm is not installed")
    pytest.importorskip("tpm2_pytss")


def test_demo_flags_the_tampered_device(capsys: pytest.CaptureFixture[str]) -> None:
    main(["attest", "demo", "--devices", "2", "--rounds", "1", "--tamper", "firmware", "--json"])
    rows = json.loads(capsys.readouterr().out)
    by_device = {r["device"]: r for r in rows}
    assert by_device["dev-0"]["ok"] is True
    assert by_device["dev-1"]["ok"] is False and by_device["dev-1"]["reason"] == "firmware"
