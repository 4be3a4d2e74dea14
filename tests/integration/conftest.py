"""Integration fixtures. Reusable by anyone who needs a real TPM 2.0: see docs/attestation.md.

* ``swtpm_ca``: a session-wide swtpm-localca "manufacturer" CA in a temp dir (own config files).
* ``swtpm_factory``: call it to get a freshly provisioned, running swtpm (``SwtpmProcess``) on
  127.0.0.1; every swtpm it started is stopped by PID at teardown.
* ``swtpm_module_factory``: the same, shared by all tests of a module (cheaper: ~0.7 s each).
* ``swtpm``: one running swtpm.  Open it with ``Tpm(swtpm.tcti)``.

Tests using them should be marked ``@pytest.mark.tpm``; they skip when swtpm or tpm2-pytss is
missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess, provision_swtpm


def _require_swtpm() -> None:
    for tool in ("swtpm", "swtpm_setup", "swtpm_localca"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: swtpm swtpm-tools)")
    pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is not installed")


@pytest.fixture(scope="session")
def swtpm_ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    _require_swtpm()
    return SwtpmCa.create(tmp_path_factory.mktemp("swtpm-ca"))


def _factory(ca: SwtpmCa, root: Path) -> Iterator[Callable[[], SwtpmProcess]]:
    started: list[SwtpmProcess] = []

    def _make() -> SwtpmProcess:
        state = root / f"tpm{len(started)}"
        provision_swtpm(state, ca)
        proc = SwtpmProcess(state).start()
        started.append(proc)
        return proc

    try:
        yield _make
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def swtpm_factory(swtpm_ca: SwtpmCa, tmp_path: Path) -> Iterator[Callable[[], SwtpmProcess]]:
    yield from _factory(swtpm_ca, tmp_path)


@pytest.fixture(scope="module")
def swtpm_module_factory(
    swtpm_ca: SwtpmCa, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], SwtpmProcess]]:
    yield from _factory(swtpm_ca, tmp_path_factory.mktemp("swtpm-module"))


@pytest.fixture
def swtpm(swtpm_factory: Callable[[], SwtpmProcess]) -> SwtpmProcess:
    return swtpm_factory()
