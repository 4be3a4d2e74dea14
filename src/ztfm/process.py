"""Process hygiene for the children ztfm starts (layer 0: imports nothing from ztfm).

``die_with_parent()`` returns a ``preexec_fn`` for ``subprocess.Popen``: on Linux the child gets
a signal (SIGTERM by default) when its parent dies, even by SIGKILL, so no orphan keeps running
(an orphaned swtpm keeps the lock on its state folder). The signal is tied to the *thread* that
started the child: start long-lived children from a thread that lives as long as they should.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6", use_errno=True)
    return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that asks the kernel to send ``sig`` to the child when the caller dies.

    libc is loaded here, in the parent: between fork and exec the child only calls prctl. If
    the parent died before prctl took effect, the child signals itself at once."""
    parent = os.getpid()
    libc = _libc()

    def _preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
        if libc is None:
            return
        with contextlib.suppress(Exception):
            libc.prctl(_PR_SET_PDEATHSIG, int(sig))
            if os.getppid() != parent:
                os.kill(os.getpid(), sig)

    return _preexec
