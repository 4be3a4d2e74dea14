"""``ztfm attest inspect``: prints a recorded quote; bad files give one line and exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfm.cli.main import main

VECTOR = Path(__file__).with_name("vectors") / "swtpm_quote.json"


def test_inspect_recorded_quote(capsys: pytest.CaptureFixture[str]) -> None:
    main(["attest", "inspect", str(VECTOR)])
    out = capsys.readouterr().out
    assert "sha256:8,9" in out
    assert "firmware:1.0.0" in out


@pytest.mark.parametrize("content", ["not json", '{"attest": "zz"}', '{"quote": {"attest": "00"}}'])
def test_inspect_bad_file(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["attest", "inspect", str(bad)])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
