"""A device told to stop (SIGTERM) while its coordinator is unreachable stops at once instead of
retrying until give_up_s (a service manager would kill it, and its TPM, uncleanly)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from ztfm.device.runner import DeviceRunner, PollBackoff
from ztfm.transport.grpc_fleet import LocalFleet


class _Idle:
    def handle(self, data: bytes) -> bytes:
        raise AssertionError("no task can arrive")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stop_while_the_coordinator_is_unreachable_returns_promptly() -> None:
    now = time.time()
    fleet = LocalFleet.create("fleet.local", now)
    creds = fleet.enroll("cams", "cam-0", now)
    stop = threading.Event()
    runner = DeviceRunner(
        creds.identity,
        creds.keystore,
        fleet.ca.cert,
        _Idle(),
        f"127.0.0.1:{_closed_port()}",
        np.random.default_rng(0),
        cert=creds.cert,
        backoff=PollBackoff(0.01, 2.0, 0.05),
        give_up_s=60.0,
        timeout_s=0.5,
        stop=stop,
    )
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    stats = runner.run()
    assert time.monotonic() - t0 < 10.0  # not the 60 s of give_up_s
    assert stats.polls == 0 and not stats.finished
