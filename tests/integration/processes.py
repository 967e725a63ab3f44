"""
Stopping the processes an integration test starts (servers, clients), by
their PIDs, in one way.
"""

from __future__ import annotations

import subprocess
from typing import Any

STOP_TIMEOUT = 10.0
"""
Seconds a process has to exit after SIGTERM, and then after SIGKILL.
"""


def stopProcess(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """
    Stop a process the test started, by its PID: SIGTERM, then SIGKILL if it
    has not exited within C{timeout} seconds; wait for it either way.
    """
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
