"""``ztfm detect evaluate`` on bundled real data, and its refusals."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ztfm.cli.detect import detect
from ztfm.data.bundled import bundled_path

KEYS = ("f1", "far", "mar", "precision", "recall", "roc_auc", "pr_auc", "per_type_recall")


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(detect, ["evaluate", *args])
    return res.exit_code, res.stdout, res.stderr


def test_skab_json_has_the_agreed_keys() -> None:
    code, out, _ = _run("--data", str(bundled_path("skab/valve1/0.csv.gz")), "--json")
    assert code == 0, out
    d = json.loads(out)
    for k in KEYS:
        assert k in d
    assert d["format"] == "skab" and d["detector"] == "pca"
    assert d["flag_everything"]["far"] == 1.0 and "rest" in d
    assert d["f1"] > d["flag_everything"]["f1"]


def test_skab_table_shows_far_mar_and_reference() -> None:
    code, out, _ = _run("--data", str(bundled_path("skab/valve1/0.csv.gz")), "--format", "skab")
    assert code == 0
    assert "FAR" in out and "MAR" in out and "flag everything" in out and "rest" in out


def test_train_elsewhere_on_anomaly_free() -> None:
    code, out, _ = _run(
        "--data",
        str(bundled_path("skab/other/3.csv.gz")),
        "--train",
        str(bundled_path("skab/anomaly-free")),
        "--json",
        "--target-far",
        "0.001",
    )
    assert code == 0, out
    d = json.loads(out)
    assert d["config"]["target_far"] == 0.001 and "rest" not in d


def test_ton_iot_warns(tmp_path: Path) -> None:
    code, out, err = _run(
        "--data", str(bundled_path("ton_iot/Train_Test_IoT_Fridge.csv.gz")), "--json"
    )
    assert code == 0, out
    assert "no attack signal" in err
    assert any("no attack signal" in w for w in json.loads(out)["warnings"])


def test_nbaiot_runs() -> None:
    code, out, _ = _run("--data", str(bundled_path("nbaiot")), "--json", "--detector", "pca")
    assert code == 0, out
    assert json.loads(out)["recall"] > 0.9


# --- refusals -------------------------------------------------------------------------------
def test_unknown_detector() -> None:
    code, out, err = _run("--data", str(bundled_path("skab/valve1/0.csv.gz")), "--detector", "x")
    assert code == 2 and "unknown detector" in (out + err)


@pytest.mark.parametrize("far", ["1.0", "-0.5"])
def test_bad_target_far(far: str) -> None:
    code, _, _ = _run("--data", str(bundled_path("skab/valve1/0.csv.gz")), "--target-far", far)
    assert code == 2


def test_unknown_format_choice() -> None:
    code, _, _ = _run("--data", ".", "--format", "csv")
    assert code == 2


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n", gzip.compress(b"datetime;Accelerometer1RMS\n")[:15]],
    ids=["empty", "unknown", "corrupt-gzip"],
)
def test_bad_files_are_data_errors(tmp_path: Path, content: bytes) -> None:
    from ztfm.errors import DataError

    p = tmp_path / "x.csv.gz"
    p.write_bytes(content)
    res = CliRunner().invoke(detect, ["evaluate", "--data", str(p), "--format", "skab"])
    assert isinstance(res.exception, DataError)
    assert "\n" not in str(res.exception)


def test_missing_path_is_a_data_error(tmp_path: Path) -> None:
    from ztfm.errors import DataError

    res = CliRunner().invoke(detect, ["evaluate", "--data", str(tmp_path / "nope")])
    assert isinstance(res.exception, DataError)


def test_train_with_other_columns_refused(tmp_path: Path) -> None:
    from ztfm.errors import DataError

    res = CliRunner().invoke(
        detect,
        [
            "evaluate",
            "--data",
            str(bundled_path("skab/valve1/0.csv.gz")),
            "--format",
            "skab",
            "--train",
            str(bundled_path("nbaiot")),
        ],
    )
    assert isinstance(res.exception, DataError)


def test_int8_autoencoder_and_refusal_for_pca() -> None:
    from ztfm.errors import DetectorError

    path = str(bundled_path("skab/valve1/2.csv.gz"))
    code, out, _ = _run("--data", path, "--detector", "ae", "--int8", "--json", "--smooth", "5")
    assert code == 0, out
    d = json.loads(out)
    assert d["config"]["int8"] is True and d["config"]["smooth"] == 5
    res = CliRunner().invoke(detect, ["evaluate", "--data", path, "--int8"])
    assert isinstance(res.exception, DetectorError)


@pytest.mark.parametrize(
    "args", [["--seed", "-1"], ["--smooth", "0"], ["--smooth", "x"], ["--target-far", "nan"]]
)
def test_bad_numbers_are_usage_errors(args: list[str]) -> None:
    code, _, _ = _run("--data", str(bundled_path("skab/valve1/0.csv.gz")), *args)
    assert code == 2
