"""Model parameters as lists of float32 arrays, and the spec every update is checked against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ztfm.errors import UpdateRejected

Params = list[np.ndarray]


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """The shapes of a model's parameter arrays (all float32)."""

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: Sequence[np.ndarray]) -> ParamSpec:
        return cls(tuple(tuple(int(s) for s in p.shape) for p in params))

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def check(self, params: Sequence[np.ndarray], *, what: str = "update") -> None:
        """Return None if ``params`` match this spec and are finite; raise ``UpdateRejected``."""
        if len(params) != len(self.shapes):
            raise UpdateRejected(f"{what} has {len(params)} arrays, expected {len(self.shapes)}")
        for i, (p, shape) in enumerate(zip(params, self.shapes, strict=True)):
            if not isinstance(p, np.ndarray) or p.dtype != np.float32:
                raise UpdateRejected(f"{what} array {i} is not float32")
            if tuple(p.shape) != shape:
                raise UpdateRejected(
                    f"{what} array {i} has shape {tuple(p.shape)}, expected {shape}"
                )
            # a float64 sum of float32 values is non-finite iff some value is NaN or Inf
            # (it cannot overflow), and costs one pass instead of two
            if not np.isfinite(p.sum(dtype=np.float64)):
                raise UpdateRejected(f"{what} array {i} contains NaN or Inf")

    def flatten(self, params: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 vector holding every parameter, in order."""
        if not params:
            return np.zeros(0, np.float32)
        return np.concatenate([np.asarray(p, np.float32).ravel() for p in params])

    def unflatten(self, vec: np.ndarray) -> Params:
        if vec.shape != (self.size,):
            raise UpdateRejected(f"flat vector has shape {vec.shape}, expected ({self.size},)")
        out: Params = []
        offset = 0
        for shape in self.shapes:
            n = int(np.prod(shape))
            out.append(np.asarray(vec[offset : offset + n], np.float32).reshape(shape).copy())
            offset += n
        return out


def add(a: Sequence[np.ndarray], b: Sequence[np.ndarray], scale: float = 1.0) -> Params:
    """a + scale * b, elementwise over parameter lists (float32)."""
    return [(x + np.float32(scale) * y).astype(np.float32) for x, y in zip(a, b, strict=True)]


def sub(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Params:
    return [(x - y).astype(np.float32) for x, y in zip(a, b, strict=True)]
