"""Model weights as bytes in the safetensors layout, parsed strictly (no pickle, ever).

Layout (https://huggingface.co/docs/safetensors): 8-byte little-endian header length ``N``, ``N``
bytes of UTF-8 JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` padded with spaces, then the raw little-endian tensor data. We write and read the
format ourselves (about a hundred lines) so that every rule is ours to check: known dtypes only,
sane shapes, offsets that tile the buffer exactly (no gaps, overlaps or trailing bytes), unique
names from a small alphabet, finite floats, and size limits before anything is allocated.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ztfm.errors import BundleError

_DTYPES: dict[str, np.dtype[Any]] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
_BY_KIND = {
    ("f", 2): "F16",
    ("f", 4): "F32",
    ("f", 8): "F64",
    ("i", 1): "I8",
    ("u", 1): "U8",
    ("i", 2): "I16",
    ("i", 4): "I32",
    ("i", 8): "I64",
}
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """Upper bounds enforced while parsing (before any allocation)."""

    max_header_bytes: int = 1 << 20
    max_tensors: int = 4096
    max_ndim: int = 8
    max_elements: int = 64 << 20  # over all tensors
    max_bytes: int = 256 << 20


DEFAULT_LIMITS = TensorLimits()


def _dtype_code(arr: np.ndarray[Any, Any]) -> str:
    code = _BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise BundleError(f"unsupported weight dtype {arr.dtype}")
    return code


def encode_tensors(
    tensors: Mapping[str, np.ndarray[Any, Any]],
    *,
    metadata: Mapping[str, str] | None = None,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> bytes:
    """Serialise named arrays deterministically (names sorted, data contiguous, header padded)."""
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise BundleError("tensor metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if arr.dtype == object:
            raise BundleError(f"tensor {name!r} has dtype object")
        code = _dtype_code(arr)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    out_header = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    out_header += b" " * (-len(out_header) % 8)
    blob = struct.pack("<Q", len(out_header)) + out_header + b"".join(chunks)
    decode_tensors(blob, limits=limits)  # refuse to write what we would refuse to read
    return blob


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BundleError(f"duplicate key {k!r} in tensor header")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise BundleError(f"{name} is not allowed in a tensor header")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def decode_tensors(
    blob: bytes, *, limits: TensorLimits = DEFAULT_LIMITS
) -> dict[str, np.ndarray[Any, Any]]:
    """Parse weights; every array returned is read-only, finite, of a known dtype and shape."""
    if len(blob) > limits.max_bytes + limits.max_header_bytes + 8:
        raise BundleError("weights are larger than the size limit")
    if len(blob) < 8:
        raise BundleError("weights are truncated (no header length)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > limits.max_header_bytes:
        raise BundleError(f"tensor header of {n} bytes exceeds the limit")
    if 8 + n > len(blob):
        raise BundleError("weights are truncated (header runs past the end)")
    try:
        header = json.loads(
            blob[8 : 8 + n].decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError, JSONDecodeError
        raise BundleError("tensor header is not valid UTF-8 JSON") from exc
    if not isinstance(header, dict):
        raise BundleError("tensor header must be a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise BundleError("tensor metadata must map strings to strings")
    if len(header) > limits.max_tensors:
        raise BundleError(f"more than {limits.max_tensors} tensors")
    data = memoryview(blob)[8 + n :]
    if len(data) > limits.max_bytes:
        raise BundleError("tensor data exceeds the size limit")
    specs: list[tuple[int, int, str, np.dtype[Any], tuple[int, ...]]] = []
    total_elements = 0
    for name, spec in header.items():
        if _NAME.fullmatch(name) is None:
            raise BundleError(f"tensor name {name[:40]!r} is not allowed")
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise BundleError(f"tensor {name!r} needs exactly dtype, shape and data_offsets")
        dtype = _DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        if dtype is None:
            raise BundleError(f"tensor {name!r} has an unsupported dtype")
        shape = spec["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) > limits.max_ndim
            or not all(_is_int(d) and 0 <= d <= limits.max_elements for d in shape)
        ):
            raise BundleError(f"tensor {name!r} has an invalid shape")
        count = math.prod(shape)
        total_elements += count
        if total_elements > limits.max_elements:
            raise BundleError("weights have more elements than the limit")
        offs = spec["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise BundleError(f"tensor {name!r} has invalid data offsets")
        begin, end = offs
        if not 0 <= begin <= end <= len(data):
            raise BundleError(f"tensor {name!r} points outside the data")
        if end - begin != count * dtype.itemsize:
            raise BundleError(f"tensor {name!r} size does not match its shape and dtype")
        specs.append((begin, end, name, dtype, tuple(shape)))
    specs.sort()
    pos = 0
    for begin, end, name, _dt, _shape in specs:
        if begin != pos:
            raise BundleError(f"tensor {name!r} overlaps another or leaves a gap")
        pos = end
    if pos != len(data):
        raise BundleError("tensor data has trailing bytes")
    out: dict[str, np.ndarray[Any, Any]] = {}
    for begin, end, name, dtype, shape in specs:
        arr = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BundleError(f"tensor {name!r} holds NaN or infinite values")
        out[name] = arr
    return out
