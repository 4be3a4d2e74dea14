"""``ztfm trust show`` / ``ztfm trust list`` explain scores; bad input gives one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ztfm.cli.main import main
from ztfm.trust import JsonFileTrustStore, SqliteTrustStore, TrustManager, UpdateObservation
from ztfm.types import DeviceId


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(params=["trust.json", "trust.sqlite"])
def store_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / request.param
    store = JsonFileTrustStore(path) if path.suffix == ".json" else SqliteTrustStore(path)
    m = TrustManager(store)
    bad = DeviceId("cam-7")
    for r in range(2):  # two strong flags per round: quarantined in round 1
        obs = UpdateObservation(bad, 9.0, 12.0, -0.9, 1.0, 4.0)
        good = UpdateObservation(DeviceId("thermo-1"), 1.0, 0.1, 0.9, 1.0, 1.0)
        m.observe_round(r, [obs, good], float(r))
    return path


def test_show_explains_quarantine(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, out, err = _run(capsys, "trust", "show", "cam-7", "--store", str(store_path))
    assert code == 0, err
    assert "quarantined" in out and "update_flagged" in out
    assert "far_from_aggregate" in out and "opposes_aggregate" in out
    assert "0.750 ->" in out


def test_show_json(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, out, _ = _run(capsys, "trust", "show", "thermo-1", "--store", str(store_path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["record"]["state"] == "active" and len(doc["history"]) == 2
    assert doc["record"]["score"] > 0.75


def test_list_lowest_first(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, out, _ = _run(capsys, "trust", "list", "--store", str(store_path))
    assert code == 0 and out.splitlines()[0].endswith("cam-7")
    code, out, _ = _run(
        capsys, "trust", "list", "--store", str(store_path), "--state", "quarantined", "--json"
    )
    assert [r["device"] for r in json.loads(out)] == ["cam-7"]


def test_env_var_fallback(
    capsys: pytest.CaptureFixture[str], store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTFM_TRUST_STORE", str(store_path))
    code, out, _ = _run(capsys, "trust", "show", "cam-7")
    assert code == 0 and "cam-7" in out


def test_unknown_device_is_one_line_error(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    code, _, err = _run(capsys, "trust", "show", "nobody", "--store", str(store_path))
    assert (
        code == 1
        and err.strip().startswith("error: no trust record")
        and len(err.strip().splitlines()) == 1
    )


def test_missing_and_corrupt_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "trust", "show", "x", "--store", str(tmp_path / "none.json"))
    assert code == 1 and "no trust store" in err
    assert not (tmp_path / "none.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = _run(capsys, "trust", "show", "x", "--store", str(bad))
    assert code == 1 and err.startswith("error: cannot read trust store")


def test_store_is_required(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZTFM_TRUST_STORE", raising=False)
    code, _, err = _run(capsys, "trust", "show", "x")
    assert code == 2 and "--store" in err


def test_mac_key_file_verifies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    path = tmp_path / "t.json"
    TrustManager(JsonFileTrustStore(path, mac_key=b"k" * 32)).observe_alerts(
        DeviceId("cam-1"), 1, 0, 0.0
    )
    code, out, _ = _run(
        capsys, "trust", "show", "cam-1", "--store", str(path), "--mac-key-file", str(key)
    )
    assert code == 0 and "cam-1" in out
    doc = json.loads(path.read_text())
    doc["records"]["cam-1"]["beta"] = 0.01
    path.write_text(json.dumps(doc))
    code, _, err = _run(capsys, "trust", "list", "--store", str(path), "--mac-key-file", str(key))
    assert code == 1 and "MAC mismatch" in err
    code, _, err = _run(
        capsys, "trust", "list", "--store", str(path), "--mac-key-file", str(tmp_path / "nokey")
    )
    assert code == 1 and "cannot read MAC key file" in err
