"""Where the bundled real datasets live (shipped as package data in ``ztfm/_bundled``).

``bundled_path("skab")`` is the SKAB folder (``valve1/``, ``other/``, ``anomaly-free/``);
``bundled_path("nbaiot")``, ``"ton_iot"``, ``"iot23"``, ``"mqttset"``, ``"pcap"`` and ``"lab"`` the
others; a relative sub-path such as ``"skab/valve1/0.csv.gz"`` names one file. Provenance and
licenses are in ``_bundled/ATTRIBUTION.md``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ztfm.errors import DataError

BUNDLE_ROOT = Path(__file__).resolve().parent.parent / "_bundled"

#: Top-level bundled datasets and what they hold.
BUNDLED: dict[str, str] = {
    "skab": "SKAB sensor telemetry: valve1/, other/, anomaly-free/ (GPL-3.0)",
    "nbaiot": "N-BaIoT Danmini Doorbell sample, 115 features (CC BY 4.0)",
    "ton_iot": "TON_IoT telemetry slices of 5 devices (academic use; plumbing only)",
    "iot23": "IoT-23 labelled Zeek conn logs of 2 captures (license unverified)",
    "pcap": "IoT-23 42-1 capture, first 3,000 packets (license unverified)",
    "mqttset": "MQTTset reduced pcaps, label = folder (CC BY-NC-SA 4.0)",
    "lab": "traffic lab captures",
}


def bundled_path(name: str) -> Path:
    """Path of a bundled dataset folder or file; ``DataError`` if unknown or absent.

    ``name`` is a top-level name from ``BUNDLED`` optionally followed by a relative sub-path
    (``/``-separated); absolute paths and ``..`` are refused.
    """
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise DataError(f"bad bundled data name {name!r}")
    if rel.parts[0] not in BUNDLED:
        raise DataError(
            f"unknown bundled dataset {rel.parts[0]!r}; known: {', '.join(sorted(BUNDLED))}"
        )
    path = BUNDLE_ROOT.joinpath(*rel.parts)
    if not path.exists():
        raise DataError(f"bundled data {name!r} is not installed ({path})")
    return path


def available() -> list[str]:
    """Names of the top-level bundled datasets present in this installation."""
    return sorted(n for n in BUNDLED if (BUNDLE_ROOT / n).exists())
