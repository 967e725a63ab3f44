"""
A real netd whose start fails: what it logs on its way out.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import pytest

from .conftest import echoService

pytestmark = pytest.mark.integration

EXIT_TIMEOUT = 15.0
LAMEDUCK = 60
"""
The lameduck wait of the config, four times the exit timeout: a netd that
waited it would not exit in time, however slow a loaded machine starts it.
"""


def test_failedStartLogsNoServiceStopped(startNetd: Any) -> None:
    """
    When the second service's port is taken, netd exits 1 at once, having logged that the first listened, and logs no "stopped" for a service that never started, and no lameduck wait.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        takenPort = taken.getsockname()[1]
        config = f"[daemon]\nlameduck = {LAMEDUCK}\n" + echoService("first", ["tcp:0:interface=127.0.0.1"])
        config += echoService("echo", [f"tcp:{takenPort}:interface=127.0.0.1"])
        began = time.monotonic()
        netd = startNetd(config, wait=False)
        try:
            code = netd.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"netd did not exit within {EXIT_TIMEOUT} seconds:\n{netd.log()}") from None
    elapsed = time.monotonic() - began
    log = netd.log()
    assert code == 1, log
    assert "listening on tcp 127.0.0.1:" in log, log
    assert "netd cannot start" in log, log
    assert "stopped" not in log, log
    assert "more seconds" not in log, log
    assert elapsed < EXIT_TIMEOUT < LAMEDUCK, f"netd took {elapsed:.1f} seconds to exit after a failed start:\n{log}"
