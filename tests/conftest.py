"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The shared datasets folder sits beside the checkout in development and CI; users don't have it.
SHARED = Path(os.environ.get("ZTFM_SHARED", REPO.parent / "shared"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def shared_datasets() -> Path:
    path = SHARED / "datasets"
    if not path.is_dir():
        pytest.skip("../shared/datasets is not beside this checkout")
    return path


@pytest.fixture
def fsync_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the path of every fd passed to ``os.fsync`` (the real fsync still runs)."""
    real, synced = os.fsync, []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced
