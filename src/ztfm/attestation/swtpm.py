"""Provision and run swtpm (a software TPM 2.0 emulator) on 127.0.0.1, for tests and labs.

* ``SwtpmCa``: a private swtpm-localca "manufacturer" CA in a directory of your choice (its own
  config files; the system ``/etc/swtpm-localca.conf`` is never used). Its root certificate is
  what a verifier trusts as the manufacturer root.
* ``provision_swtpm``: ``swtpm_setup --tpm2 --create-ek-cert --create-platform-cert`` into a
  state directory, with EK certificates issued by that CA.
* ``SwtpmProcess``: runs ``swtpm socket`` bound to 127.0.0.1 on two free consecutive ports
  (server, control = server + 1, as the tpm2-tss swtpm TCTI expects) and stops it by PID; it
  gets SIGTERM if the process that started it dies (``PR_SET_PDEATHSIG``), so a killed device
  leaves no swtpm holding the state folder's lock.

State folders and the CA folder are created 0700 and everything in them is written 0600: they
hold the TPM's secrets (EK seed) and the CA's private keys.

This is an I/O adapter (processes, files); the verifier never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ztfm.errors import ConfigError, TpmError
from ztfm.process import die_with_parent

log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
# TPM2_Shutdown(TPM_SU_CLEAR): tag NO_SESSIONS, size 12, TPM_CC_Shutdown 0x145, TPM_SU_CLEAR
_TPM2_SHUTDOWN_CLEAR = bytes.fromhex("80010000000c000001450000")
# TPM2_DictionaryAttackLockReset(TPM_RH_LOCKOUT) with an empty password session: tag SESSIONS,
# size 27, TPM_CC 0x139, handle 0x4000000A, authSize 9, TPM_RS_PW, empty nonce, attrs 0, empty hmac
_TPM2_DA_LOCK_RESET = bytes.fromhex("80020000001b000001394000000a00000009400000090000000000")
_PRIVATE_UMASK = 0o077  # swtpm_setup / swtpm_localca would write state and keys 0640


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700 (missing parents with the default mode), tighten it if it existed."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _restrict_files(directory: Path) -> None:
    """Drop group/other permissions from everything directly in ``directory``."""
    for f in directory.iterdir():
        try:  # a parallel swtpm_localca may be replacing a file right now
            if f.is_symlink():
                continue
            mode = f.stat().st_mode & 0o777
            if mode & 0o077:
                f.chmod(mode & 0o700)
        except FileNotFoundError:
            continue


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise TpmError(f"{name} not found: install the Debian packages swtpm and swtpm-tools")
    return path


@dataclass(frozen=True, slots=True)
class SwtpmCa:
    """A swtpm-localca CA directory with its own configuration files."""

    directory: Path

    @classmethod
    def create(cls, directory: Path, manufacturer: str = "ztfm-test") -> SwtpmCa:
        """Write private swtpm_setup / swtpm-localca configs into ``directory``."""
        directory = Path(directory).resolve()
        if any(c in str(directory) for c in "\n\r= "):
            raise ConfigError("swtpm CA directory path must not contain spaces, '=' or newlines")
        if not manufacturer.replace("-", "").isalnum():
            raise ConfigError("manufacturer must be alphanumeric (dashes allowed)")
        _private_dir(directory)
        ca = cls(directory)
        ca.localca_conf.write_text(
            f"statedir = {directory}\n"
            f"signingkey = {directory / 'signkey.pem'}\n"
            f"issuercert = {directory / 'issuercert.pem'}\n"
            f"certserial = {directory / 'certserial'}\n"
        )
        ca.localca_options.write_text(
            f"--platform-manufacturer {manufacturer}\n--platform-version 2.1\n"
            "--platform-model ztfm-sim\n"
        )
        ca.setup_conf.write_text(
            f"create_certs_tool = {_tool('swtpm_localca')}\n"
            f"create_certs_tool_config = {ca.localca_conf}\n"
            f"create_certs_tool_options = {ca.localca_options}\n"
            "active_pcr_banks = sha256\n"
        )
        return ca

    @property
    def localca_conf(self) -> Path:
        return self.directory / "swtpm-localca.conf"

    @property
    def localca_options(self) -> Path:
        return self.directory / "swtpm-localca.options"

    @property
    def setup_conf(self) -> Path:
        return self.directory / "swtpm_setup.conf"

    @property
    def root_cert_pem(self) -> bytes:
        """The CA root (created by swtpm_localca on first use): the manufacturer root."""
        return self._read("swtpm-localca-rootca-cert.pem")

    @property
    def issuer_cert_pem(self) -> bytes:
        """The intermediate that signs EK certificates."""
        return self._read("issuercert.pem")

    def _read(self, name: str) -> bytes:
        path = self.directory / name
        if not path.exists():
            raise TpmError(f"{path} does not exist yet: provision a swtpm with this CA first")
        return path.read_bytes()


def provision_swtpm(state_dir: Path, ca: SwtpmCa, timeout_s: float = 60.0) -> None:
    """Manufacture a TPM 2.0 state in ``state_dir``: EKs, EK and platform certificates."""
    state_dir = Path(state_dir)
    _private_dir(state_dir)
    cmd = [
        _tool("swtpm_setup"),  # finds swtpm on PATH
        "--tpm2",
        "--tpm-state",
        str(state_dir),
        "--create-ek-cert",
        "--create-platform-cert",
        "--config",
        str(ca.setup_conf),
        "--overwrite",
    ]
    try:
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            umask=_PRIVATE_UMASK,
        )
    except subprocess.TimeoutExpired as exc:
        raise TpmError(f"swtpm_setup timed out after {timeout_s:g} s") from exc
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TpmError(f"swtpm_setup failed ({res.returncode}): {last[0]}")
    _restrict_files(state_dir)
    _restrict_files(ca.directory)  # swtpm_localca creates the CA keys on first use


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((_LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port < 65535 and _port_free(port + 1):
            return port
    raise TpmError("no two consecutive free TCP ports on 127.0.0.1")


class SwtpmProcess:
    """A running ``swtpm socket`` on 127.0.0.1; a context manager that stops it by PID."""

    def __init__(self, state_dir: Path, *, start_timeout_s: float = 10.0) -> None:
        self.state_dir = Path(state_dir)
        if not (self.state_dir / "tpm2-00.permall").exists():
            raise TpmError(f"{self.state_dir} holds no TPM 2.0 state: provision it first")
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise TpmError("swtpm is not running")
        return self._proc.pid

    @property
    def tcti(self) -> str:
        """The TCTI string for ``Tpm``: ``swtpm:host=127.0.0.1,port=N``."""
        if self._proc is None:
            raise TpmError("swtpm is not running")
        return f"swtpm:host={_LOOPBACK},port={self.port}"

    def start(self) -> SwtpmProcess:
        if self._proc is not None:
            raise TpmError("swtpm is already running")
        last_err = ""
        for _ in range(5):
            port = _free_port_pair()
            cmd = [
                _tool("swtpm"),
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir},mode=0600",
                "--server",
                f"type=tcp,port={port},bindaddr={_LOOPBACK}",
                "--ctrl",
                f"type=tcp,port={port + 1},bindaddr={_LOOPBACK}",
                "--flags",
                "not-need-init,startup-clear",
            ]
            # stderr goes to a file: a pipe nobody reads could fill up and block swtpm
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(log_fd, "ab") as log_file:
                proc = subprocess.Popen(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    env=dict(os.environ),
                    # no orphan holding the state's lock; the signal follows the *thread* that
                    # started swtpm, so start it from a thread that lives as long as the TPM
                    # is used (every caller here uses the main thread)
                    preexec_fn=die_with_parent(),
                )
            if self._wait_ready(proc, port):
                self._proc, self.port = proc, port
                self._reset_dictionary_attack_lockout()
                return self
            self._reap(proc)
            last_err = self._last_log_line()
        raise TpmError(f"swtpm did not start: {last_err or 'timeout'}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection((_LOOPBACK, port + 1), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    @property
    def log_path(self) -> Path:
        """swtpm's stderr, appended across starts (beside the state)."""
        return self.state_dir / "swtpm.log"

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop this swtpm (TPM2_Shutdown, then SIGTERM, then SIGKILL) by its PID; idempotent.

        The TPM2_Shutdown makes the next start an orderly one: after a non-orderly stop the TPM
        counts a dictionary-attack failure at startup, and three of them lock the EK out
        (ActivateCredential fails "DA lockout mode") so the device could not enrol again."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                self._orderly_shutdown()
            self._reap(proc)

    def _reset_dictionary_attack_lockout(self) -> None:
        """Clear the dictionary-attack counter (lockout auth is empty on a software TPM): a
        device killed without TPM2_Shutdown (SIGKILL, a stop timeout) counts one failure at the
        next start, and three would lock its EK out for good. Best effort; a hardware TPM is
        never touched (its lockout auth belongs to the owner)."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection((_LOOPBACK, self.port), timeout=2.0) as s,
        ):
            s.sendall(_TPM2_DA_LOCK_RESET)
            reply = s.recv(64)
            if reply[6:10] != b"\x00\x00\x00\x00":
                log.warning("swtpm: dictionary-attack lock reset failed: %s", reply.hex())

    def _orderly_shutdown(self) -> None:
        """Send TPM2_Shutdown(TPM_SU_CLEAR) on the command port; best effort (every TPM client
        must have disconnected: swtpm serves one connection at a time)."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection((_LOOPBACK, self.port), timeout=2.0) as s,
        ):
            s.sendall(_TPM2_SHUTDOWN_CLEAR)
            s.recv(64)  # the 10-byte response; its code does not matter here

    def __enter__(self) -> SwtpmProcess:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.stop()
