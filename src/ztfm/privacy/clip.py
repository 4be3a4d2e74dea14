"""Per-update L2 clipping: the sensitivity bound every DP guarantee in ztfm rests on."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ztfm.errors import PrivacyError

FloatArray = npt.NDArray[np.floating[Any]]


def l2_norm(update: npt.ArrayLike) -> float:
    arr = np.asarray(update, dtype=np.float64)
    return float(np.sqrt(np.dot(arr.ravel(), arr.ravel())))


def clip_update(update: npt.ArrayLike, clip_norm: float) -> FloatArray:
    """``update`` scaled down so its L2 norm is at most ``clip_norm`` (unchanged if already
    within). Rejects non-finite values and a non-positive or non-finite ``clip_norm``."""
    if not (isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError("clip_norm must be a positive finite number")
    arr = np.asarray(update, dtype=np.float64)
    if arr.size == 0:
        raise PrivacyError("cannot clip an empty update")
    if not np.all(np.isfinite(arr)):
        raise PrivacyError("update has NaN or infinite values")
    norm = l2_norm(arr)
    if norm <= clip_norm:
        return arr.copy()
    out: FloatArray = arr * (clip_norm / norm)
    return out
