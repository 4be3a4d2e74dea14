"""Golden values: replayed PCRs match a TPM, allow-lists are immutable and validated."""

from __future__ import annotations

import numpy as np
import pytest
from attfix import FW_GOOD, MODEL_V1, MODEL_V2, T0, reference

from ztfm.attestation import QUOTE_PCRS, AttestingDevice, ReferenceValues, SoftManufacturer, SoftTpm
from ztfm.attestation.structures import composite_digest
from ztfm.errors import AttestationError, ConfigError


def test_golden_pcrs_equal_what_the_tpm_holds() -> None:
    rng = np.random.default_rng(0)
    dev = AttestingDevice(SoftTpm(SoftManufacturer(rng, T0), rng, T0))
    dev.measure_firmware(FW_GOOD)
    dev.measure_model(MODEL_V1)
    dev.measure_model(MODEL_V2)
    ref = reference()
    assert dev.tpm.read_pcrs(QUOTE_PCRS) == ref.golden_pcrs("camera", "1.0.0", [MODEL_V1, MODEL_V2])
    pcrs = dev.tpm.read_pcrs(QUOTE_PCRS)
    assert composite_digest([pcrs[8], pcrs[9]]) == ref.golden_digest(
        "camera", "1.0.0", [MODEL_V1, MODEL_V2]
    )


def test_with_models_retires_previous() -> None:
    ref = reference().with_models([MODEL_V2])
    assert ref.models == {MODEL_V2}
    assert ref.retired_models == {MODEL_V1}
    both = ref.with_models([MODEL_V1], retire_others=False)
    assert both.models == {MODEL_V1, MODEL_V2} and not both.retired_models


def test_reference_is_immutable() -> None:
    ref = reference()
    ref.with_firmware("camera", "2.0", b"\x01" * 32)
    assert "2.0" not in ref.firmware["camera"]
    with pytest.raises(TypeError):
        ref.firmware["camera"]["9"] = b"\x00" * 32  # type: ignore[index]


@pytest.mark.parametrize(
    ("dtype", "ver", "digest"),
    [("", "1", b"\x00" * 32), ("cam", "", b"\x00" * 32), ("cam", "1", b"\x00" * 20)],
)
def test_bad_firmware_entries(dtype: str, ver: str, digest: bytes) -> None:
    with pytest.raises(ConfigError):
        ReferenceValues().with_firmware(dtype, ver, digest)


def test_bad_model_digest() -> None:
    with pytest.raises(ConfigError):
        ReferenceValues().with_models([b"short"])


def test_unknown_type_and_version() -> None:
    with pytest.raises(AttestationError, match="no firmware allow-list"):
        reference().firmware_version_of("fridge", FW_GOOD)
    with pytest.raises(ConfigError):
        reference().golden_pcrs("camera", "9.9", [])
