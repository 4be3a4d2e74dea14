"""Witness state and installed bundles reach the disk durably: file and directory fsync'd, a failed
write is one clear ``BundleError`` that keeps the old file and leaves no temporary file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bundle_fix import LOG_KEY, MODEL, RELEASE_KEY, World
from click.testing import CliRunner

from ztfm.bundle import InstalledModel
from ztfm.cli.main import cli
from ztfm.errors import BundleError
from ztfm.ledger import Ledger, LedgerClient, SqliteLedgerStore


def _published(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A SQLite ledger holding one release, the bundle file, and `bundle verify` key options."""
    db = tmp_path / "l.db"
    w = World(Ledger(SqliteLedgerStore(db, create=True), LOG_KEY), LedgerClient(LOG_KEY.verify_key))
    out = tmp_path / "m.ztb"
    out.write_bytes(w.publish(1).to_bytes())
    keys = ["--release-key", RELEASE_KEY.verify_key.raw.hex()]
    return db, out, [*keys, "--log-key", LOG_KEY.verify_key.raw.hex(), "--db", str(db)]


def test_verify_state_is_fsynced_with_its_directory(tmp_path: Path, fsync_paths: list[str]) -> None:
    _, out, opts = _published(tmp_path)
    state_dir = tmp_path / "dev"
    state_dir.mkdir()
    state = state_dir / "state.json"
    res = CliRunner().invoke(cli, ["bundle", "verify", str(out), *opts, "--state", str(state)])
    assert res.exit_code == 0, res.output
    files = [p for p in fsync_paths if Path(p).parent == state_dir and "state.json" in Path(p).name]
    assert files, fsync_paths  # the data was fsync'd before the rename...
    assert (
        str(state_dir) in fsync_paths[fsync_paths.index(files[-1]) :]
    )  # ...and the rename after it
    assert LedgerClient.from_state(LOG_KEY.verify_key, state.read_bytes()).head.tree_size == 1
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.json"]


def test_verify_state_write_failure_keeps_old_state_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, opts = _published(tmp_path)
    state_dir = tmp_path / "dev"
    state_dir.mkdir()
    state = state_dir / "state.json"
    args = ["bundle", "verify", str(out), *opts, "--state", str(state)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    old = state.read_bytes()
    assert old

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and isinstance(res.exception, BundleError)
    assert "No space left on device" in str(res.exception) and str(state) in str(res.exception)
    assert state.read_bytes() == old
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.json"]


def test_installed_model_fsyncs_bundle_witness_and_directory(
    tmp_path: Path, fsync_paths: list[str]
) -> None:
    db, _, _ = _published(tmp_path)
    w = World(Ledger(SqliteLedgerStore(db), LOG_KEY), LedgerClient(LOG_KEY.verify_key))
    b = w.publish(2)
    w.sync()
    dev = InstalledModel(tmp_path / "m", model_id=MODEL, release_key=RELEASE_KEY.verify_key)
    dev.install(b.to_bytes(), ledger=w.client)
    dev.save_witness(w.client)
    names = [Path(p).name for p in fsync_paths]
    assert any("current.ztb" in n for n in names) and any("ledger-head.json" in n for n in names)
    assert fsync_paths.count(str(tmp_path / "m")) == 2
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["current.ztb", "ledger-head.json"]


def test_stray_temp_files_of_both_namings_are_removed_on_open(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for name in (".current.ztb.tmp.4242", ".ledger-head.json.tmp.7", ".ztfm.tmp-current.ztb-1"):
        (d / name).write_bytes(b"half a file")
    (d / "keep.txt").write_bytes(b"not ours")
    InstalledModel(d, model_id=MODEL, release_key=RELEASE_KEY.verify_key)
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]


def test_an_unreadable_state_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, opts = _published(tmp_path)
    state = tmp_path / "state.json"
    state.write_bytes(b"{}")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == state:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    res = CliRunner().invoke(cli, ["bundle", "verify", str(out), *opts, "--state", str(state)])
    assert res.exit_code == 1
    assert f"cannot read witness state {state}: Permission denied" in str(res.exception)


def test_atomic_write_removes_its_temp_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ztfm.identity._fs import atomic_write

    target = tmp_path / "f"
    atomic_write(target, b"old")

    def broken_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
