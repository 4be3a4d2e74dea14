"""Golden values: which firmware and model measurements the verifier accepts.

An allow-list per device type and firmware version (the SHA-256 of each known-good firmware
image) plus the set of model bundle digests currently allowed. The golden PCR values are what a
TPM holds after replaying those extends from a fresh boot: PCR 8 = SHA-256(0^32 || fw) and
PCR 9 = replay of the model bundles loaded since boot (see ``golden_pcrs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ztfm.attestation.evidence import PCR_FIRMWARE, PCR_MODEL
from ztfm.attestation.structures import composite_digest, replay
from ztfm.errors import AttestationError, ConfigError


def _digest(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ConfigError(f"{what} must be a 32-byte SHA-256 digest")
    return value


@dataclass(frozen=True, slots=True)
class ReferenceValues:
    """Allow-list of firmware (per device type and version) and model bundle digests.

    ``models`` are the bundles a device may be running now; ``retired_models`` may still appear
    earlier in the log (a device that loaded an older bundle since boot), but not as the latest.
    Immutable: use the ``with_*`` methods to derive a new allow-list.
    """

    firmware: Mapping[str, Mapping[str, bytes]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    models: frozenset[bytes] = frozenset()
    retired_models: frozenset[bytes] = frozenset()

    def with_firmware(self, device_type: str, version: str, image_digest: bytes) -> ReferenceValues:
        if not device_type or not version:
            raise ConfigError("device type and firmware version must be non-empty")
        _digest(image_digest, "firmware digest")
        per_type = dict(self.firmware.get(device_type, {}))
        per_type[version] = image_digest
        fw = {k: MappingProxyType(dict(v)) for k, v in self.firmware.items()}
        fw[device_type] = MappingProxyType(per_type)
        return ReferenceValues(MappingProxyType(fw), self.models, self.retired_models)

    def with_models(
        self, digests: Iterable[bytes], *, retire_others: bool = True
    ) -> ReferenceValues:
        """Allow ``digests`` as current models; previous ones move to ``retired_models``."""
        new = frozenset(_digest(d, "model digest") for d in digests)
        retired = self.retired_models | (self.models - new if retire_others else frozenset())
        current = new if retire_others else self.models | new
        return ReferenceValues(self.firmware, current, retired - current)

    def firmware_version_of(self, device_type: str, image_digest: bytes) -> str:
        """Return the version whose image has ``image_digest``; raise if not allowed."""
        per_type = self.firmware.get(device_type)
        if not per_type:
            raise AttestationError(f"no firmware allow-list for device type {device_type!r}")
        for version, digest in per_type.items():
            if digest == image_digest:
                return version
        raise AttestationError(
            f"firmware measurement is not in the allow-list for device type {device_type!r}"
        )

    def golden_pcrs(
        self, device_type: str, version: str, models_loaded: Iterable[bytes]
    ) -> dict[int, bytes]:
        """Expected PCR values after booting ``version`` and loading ``models_loaded``."""
        per_type = self.firmware.get(device_type, {})
        if version not in per_type:
            raise ConfigError(f"unknown firmware {device_type!r} {version!r}")
        return {
            PCR_FIRMWARE: replay([per_type[version]]),
            PCR_MODEL: replay(list(models_loaded)),
        }

    def golden_digest(
        self, device_type: str, version: str, models_loaded: Iterable[bytes]
    ) -> bytes:
        """The quote pcrDigest expected for that state (PCR 8 and 9, SHA-256 bank)."""
        pcrs = self.golden_pcrs(device_type, version, models_loaded)
        return composite_digest([pcrs[PCR_FIRMWARE], pcrs[PCR_MODEL]])
