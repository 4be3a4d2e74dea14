"""The JSON trust store writes through ``identity._fs.atomic_write``: file and directory fsync'd,
and a generation number is never reused, even when only the directory fsync failed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ztfm.errors import TrustError
from ztfm.trust import JsonFileTrustStore, TrustManager
from ztfm.types import DeviceId

D = DeviceId("dev-1")
KEY = b"k" * 32


def test_save_fsyncs_the_file_then_its_directory(tmp_path: Path, fsync_paths: list[str]) -> None:
    path = tmp_path / "s" / "t.json"
    TrustManager(JsonFileTrustStore(path)).observe_rejection(D, "replay", 1.0)
    files = [p for p in fsync_paths if Path(p).parent == path.parent and "t.json" in p]
    assert files and str(path.parent) in fsync_paths[fsync_paths.index(files[-1]) :]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]


def test_directory_fsync_failure_does_not_reuse_the_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.json"
    store = JsonFileTrustStore(path, mac_key=KEY)
    m = TrustManager(store)
    m.observe_rejection(D, "replay", 1.0)
    assert store.generation == 1
    real = os.fsync

    def dir_fsync_fails(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", dir_fsync_fails)
    with pytest.raises(TrustError, match="Input/output error"):
        m.observe_rejection(D, "late", 2.0)
    monkeypatch.undo()
    on_disk = json.loads(path.read_bytes())["generation"]
    assert on_disk == 2 and store.generation == 2 and store.head_mac is not None
    m.observe_rejection(D, "late", 3.0)
    assert JsonFileTrustStore(path, mac_key=KEY).generation == 3
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
