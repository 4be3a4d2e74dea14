"""TCTI strings and swtpm adapter inputs are validated before anything is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfm.errors import ConfigError, TpmError

tpm = pytest.importorskip("ztfm.attestation.tpm", exc_type=ImportError)


@pytest.mark.parametrize(
    ("tcti", "expected"),
    [
        ("device:/dev/tpmrm0", ("device", "/dev/tpmrm0")),
        ("swtpm:host=127.0.0.1,port=2321", ("swtpm", "host=127.0.0.1,port=2321")),
        ("mssim:", ("mssim", "")),
    ],
)
def test_parse_tcti(tcti: str, expected: tuple[str, str]) -> None:
    assert tpm.parse_tcti(tcti) == expected


@pytest.mark.parametrize(
    "tcti", ["", "device", "libtpms:x", "swtpm:host=1;rm -rf /", "device:/dev/tpm0 x", 42]
)
def test_bad_tcti_rejected(tcti: object) -> None:
    with pytest.raises(TpmError):
        tpm.parse_tcti(tcti)  # type: ignore[arg-type]


def test_unreachable_tpm_is_a_tpm_error() -> None:
    with pytest.raises(TpmError, match=r"cannot open|refused"):
        tpm.Tpm("swtpm:host=127.0.0.1,port=1")


def test_swtpm_state_must_exist(tmp_path: Path) -> None:
    from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess

    with pytest.raises(TpmError, match=r"no TPM 2\.0 state"):
        SwtpmProcess(tmp_path)
    with pytest.raises(ConfigError):
        SwtpmCa.create(tmp_path / "a b")
    with pytest.raises(TpmError, match="provision"):
        _ = SwtpmCa(tmp_path).root_cert_pem
