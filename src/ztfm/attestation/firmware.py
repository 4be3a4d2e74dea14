"""The measured "firmware" of a ztfm device: a digest of the code it runs.

On a real device the boot loader measures the firmware image into PCR 8 and the vendor publishes
the golden digest per device type and version. A ztfm device process (``ztfm device run``) has no
boot loader, so it measures the code it actually runs: every ``.py``, ``.cedar``, ``.toml`` and
``.proto`` file of the installed ``ztfm`` package, in path order. Any change to that code changes
the digest, and the coordinator, which computes the golden value from its own reviewed install,
refuses the quote. The digest is computed by the process being measured, so an attacker who
patches this function too can report the golden value: only a boot chain that measures the agent
before it runs closes that (``--firmware FILE`` measures a given image instead: a real firmware
file, or a test's tampered one)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ztfm.errors import ConfigError

_CODE_SUFFIXES = (".py", ".cedar", ".toml", ".proto")


def package_image_digest(root: Path | None = None) -> bytes:
    """SHA-256 over (relative path, length, bytes) of the package's code files."""
    base = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    h = hashlib.sha256(b"ztfm-firmware-image:v1\0")
    files = sorted(
        p
        for p in base.rglob("*")
        if p.suffix in _CODE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )
    if not files:
        raise ConfigError(f"{base}: no code files to measure")
    for p in files:
        data = p.read_bytes()
        rel = p.relative_to(base).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def file_image_digest(path: Path) -> bytes:
    """SHA-256 of a firmware image file; a one-line ``ConfigError`` if unreadable."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError as exc:
        raise ConfigError(f"cannot read firmware image {path}: {exc.strerror}") from exc
