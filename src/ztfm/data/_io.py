"""Shared file-reading helpers for the loaders: gzip detection, clear errors, size limits."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

from ztfm.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_BYTES = 4 * 1024**3  # refuse absurd inputs rather than exhaust memory


def read_bytes(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a file, transparently gunzipping it (detected by magic bytes, not extension).

    Raises ``DataError`` on a missing or empty file, a corrupt or truncated gzip stream, or a
    decompressed size above ``max_bytes``.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a file")
    raw = p.read_bytes()
    if not raw:
        raise DataError(f"{p}: file is empty")
    if raw[:2] == GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                data = gz.read(max_bytes + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{p}: corrupt or truncated gzip ({exc})") from exc
        if not data:
            raise DataError(f"{p}: file is empty after decompression")
        raw = data
    if len(raw) > max_bytes:
        raise DataError(f"{p}: larger than the {max_bytes}-byte limit")
    return raw


def read_text(
    path: str | Path, *, encoding: str = "utf-8-sig", max_bytes: int = DEFAULT_MAX_BYTES
) -> str:
    """Read a (possibly gzipped) text file; BOM stripped; ``DataError`` on undecodable bytes."""
    raw = read_bytes(path, max_bytes=max_bytes)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text at byte {exc.start}") from exc


def iter_files(path: str | Path, patterns: tuple[str, ...]) -> Iterator[Path]:
    """A file itself, or every file under a folder matching one of ``patterns``, sorted."""
    p = Path(path)
    if p.is_file():
        yield p
        return
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    found = sorted({f for pat in patterns for f in p.rglob(pat) if f.is_file()})
    if not found:
        raise DataError(f"{p}: no files matching {', '.join(patterns)}")
    yield from found
