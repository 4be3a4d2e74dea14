"""InstalledModel: verified installs only, atomic swap, old model kept on any failure or crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bundle_fix import ATTACKER_KEY, MODEL, RELEASE_KEY, world

from ztfm.bundle import BundleRejected, InstalledModel, Reason
from ztfm.bundle.installed import CURRENT
from ztfm.errors import BundleError

HERE = Path(__file__).resolve().parent


def device(tmp_path: Path) -> InstalledModel:
    return InstalledModel(tmp_path / "model", model_id=MODEL, release_key=RELEASE_KEY.verify_key)


def test_install_upgrade_and_reopen(tmp_path: Path) -> None:
    w = world()
    b1 = w.publish(1)
    w.sync()
    dev = device(tmp_path)
    assert dev.current is None and dev.installed_version is None
    dev.install(b1.to_bytes(), ledger=w.client)
    b2 = w.publish(2)
    w.sync()
    dev.install(b2.to_bytes(), ledger=w.client)
    again = device(tmp_path)
    assert again.installed_version == 2
    assert again.current is not None and again.current.manifest == b2.manifest


def test_refused_bundles_keep_the_installed_one(tmp_path: Path) -> None:
    w = world()
    b1, b2 = w.publish(1), w.publish(2)
    w.sync()
    dev = device(tmp_path)
    dev.install(b2.to_bytes(), ledger=w.client)
    before = dev.path.read_bytes()
    cases: list[tuple[bytes, Reason]] = [
        (b1.to_bytes(), Reason.ROLLBACK),
        (b2.to_bytes(), Reason.ROLLBACK),
        (b2.to_bytes()[:-5], Reason.MALFORMED),
        (w.publish(3, key=ATTACKER_KEY).to_bytes(), Reason.UNKNOWN_SIGNER),
        (w.publish(4, model_id="other").to_bytes(), Reason.WRONG_MODEL),
        (w.publish(5).with_receipt(None).to_bytes(), Reason.NOT_IN_LEDGER),
    ]
    for data, why in cases:
        with pytest.raises(BundleRejected) as info:
            dev.install(data, ledger=w.client)
        assert info.value.reason is why
        assert dev.path.read_bytes() == before and dev.installed_version == 2
    assert device(tmp_path).installed_version == 2


def test_failed_write_keeps_old_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world()
    dev = device(tmp_path)
    b1 = w.publish(1)
    w.sync()
    dev.install(b1.to_bytes(), ledger=w.client)
    before = dev.path.read_bytes()
    b2 = w.publish(2)
    w.sync()

    def crash(*_: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(BundleError, match="disk on fire"):
        dev.install(b2.to_bytes(), ledger=w.client)
    monkeypatch.undo()
    assert dev.path.read_bytes() == before and dev.installed_version == 1
    assert sorted(p.name for p in dev.path.parent.iterdir()) == [CURRENT]


def test_stray_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / ".ztfm.tmp-current.ztb-123").write_bytes(b"half a bundle")
    dev = device(tmp_path)
    assert dev.current is None
    assert list(d.iterdir()) == []


def test_tampered_installed_file_is_detected(tmp_path: Path) -> None:
    w = world()
    b = w.publish(1)
    w.sync()
    dev = device(tmp_path)
    dev.install(b.to_bytes(), ledger=w.client)
    data = bytearray(dev.path.read_bytes())
    data[40] ^= 1
    dev.path.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        device(tmp_path)
    # a validly signed bundle of another model or signer planted on disk is refused too
    dev.path.write_bytes(w.publish(2, key=ATTACKER_KEY).to_bytes())
    with pytest.raises(BundleRejected) as info:
        device(tmp_path)
    assert info.value.reason is Reason.UNKNOWN_SIGNER
    other = InstalledModel(tmp_path / "o", model_id="other", release_key=RELEASE_KEY.verify_key)
    other.path.write_bytes(b.to_bytes())
    with pytest.raises(BundleRejected) as info:
        InstalledModel(tmp_path / "o", model_id="other", release_key=RELEASE_KEY.verify_key)
    assert info.value.reason is Reason.WRONG_MODEL


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    from bundle_fix import MODEL, RELEASE_KEY, world
    from ztfm.bundle import InstalledModel
    w = world()
    dev = InstalledModel({dir!r}, model_id=MODEL, release_key=RELEASE_KEY.verify_key)
    print("ready", flush=True)
    v = 1
    while True:  # publish and install forever, until killed
        data = w.publish(v).to_bytes()
        w.sync()
        dev.install(data, ledger=w.client)
        v += 1
    """
)


@pytest.mark.parametrize("spin", [0, 20_000, 200_000])
def test_sigkill_during_installs_leaves_a_valid_bundle(tmp_path: Path, spin: int) -> None:
    """A real process installing in a loop is SIGKILLed; the survivor is a complete bundle."""
    d = tmp_path / "model"
    code = _CHILD.format(here=str(HERE), dir=str(d))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    # let it get some installs in (each install fsyncs), then kill it mid-flight
    while not (d / CURRENT).exists() and proc.poll() is None:
        pass
    for _ in range(spin):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-way, not finished
    dev = device(tmp_path)
    assert dev.installed_version is not None and dev.installed_version >= 1
    assert sorted(p.name for p in d.iterdir()) == [CURRENT]
