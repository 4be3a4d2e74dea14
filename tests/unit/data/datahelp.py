"""Helpers for the data-loader tests: build malformed inputs in tmp_path (import as datahelp)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

from ztfm.errors import DataError


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def expect_error(fn: Callable[[], object], match: str) -> DataError:
    """Call ``fn``; it must raise DataError with a one-line message containing ``match``."""
    with pytest.raises(DataError) as info:
        result = fn()
        if hasattr(result, "__next__"):
            list(result)  # type: ignore[call-overload]
    msg = str(info.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    assert match.lower() in msg.lower(), f"{match!r} not in {msg!r}"
    return info.value


def corrupt_gzip(data: bytes) -> bytes:
    """A gzip stream with its deflate body damaged (CRC or inflate error)."""
    blob = bytearray(gz(data))
    for i in range(12, min(len(blob) - 8, 40)):
        blob[i] ^= 0xFF
    return bytes(blob)


def truncated_gzip(data: bytes) -> bytes:
    blob = gz(data)
    return blob[: len(blob) // 2]
