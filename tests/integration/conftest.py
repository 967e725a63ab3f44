"""
The integration harness: netd runs as a real subprocess on ports it picks itself
(port 0), reports them through --ports-file, and the tests talk to it with real
clients.  No fixed ports; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 20.0


def requireTool(name: str) -> str:
    """
    The path of a command-line tool the test drives; a missing tool skips the
    test on a laptop but fails it under CI, where ./test.sh installs it.
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; ./test.sh installs it")
        pytest.skip(f"{name} is not installed (./test.sh installs it)")
    return path


class NetdProcess:
    """
    One running netd, with where each of its services listens.
    """

    def __init__(self, process: subprocess.Popen[bytes], portsFile: Path, logFile: Path) -> None:
        self.process = process
        self.portsFile = portsFile
        self.logFile = logFile
        self.services: dict[str, list[dict[str, object]]] = {}

    @property
    def pid(self) -> int:
        """
        The daemon's process ID.
        """
        return self.process.pid

    def waitUntilReady(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """
        Wait for the ports file, which netd writes once every service listens.
        """
        deadline = time.monotonic() + timeout
        while not self.portsFile.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"netd exited with {self.process.returncode} before it was ready:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"netd was not ready after {timeout} seconds:\n{self.log()}")
            time.sleep(0.02)
        self.services = json.loads(self.portsFile.read_text())["services"]

    def address(self, service: str, transport: str = "tcp") -> tuple[str, int]:
        """
        The (host, port) of the first C{transport} address of C{service}.
        """
        for bound in self.services[service]:
            if bound["transport"] == transport:
                return str(bound["host"]), int(bound["port"])  # type: ignore[call-overload]
        raise KeyError(f"service {service!r} has no {transport} address: {self.services[service]}")

    def unixPath(self, service: str) -> str:
        """
        The socket path of the first unix address of C{service}.
        """
        for bound in self.services[service]:
            if bound["transport"] == "unix":
                return str(bound["path"])
        raise KeyError(f"service {service!r} has no unix address")

    def log(self) -> str:
        """
        What netd has logged so far.
        """
        return self.logFile.read_text(errors="replace")

    def rssBytes(self) -> int:
        """
        The daemon's resident memory, from /proc.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Signal netd and wait for it to exit; return its exit code.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """
        Make sure the process is gone (teardown); only this PID is touched.
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def netdCommand(*args: str) -> list[str]:
    """
    The command line of netd, run with this interpreter.
    """
    return [sys.executable, "-m", "netd", *args]


@pytest.fixture
def startNetd(tmp_path: Path) -> Iterator[object]:
    """
    A function that starts netd on a config text (L{None}: the embedded default
    config, no C{-c}) and returns a L{NetdProcess}, ready unless C{wait=False};
    every process started is stopped at teardown.
    """
    started: list[NetdProcess] = []

    def start(config: str | None, *, wait: bool = True) -> NetdProcess:
        index = len(started)
        configArgs: list[str] = []
        if config is not None:
            configFile = tmp_path / f"netd-{index}.toml"
            configFile.write_text(config)
            configArgs = ["-c", str(configFile)]
        portsFile = tmp_path / f"ports-{index}.json"
        logFile = tmp_path / f"netd-{index}.log"
        with logFile.open("wb") as log:
            process = subprocess.Popen(
                netdCommand("run", *configArgs, "--ports-file", str(portsFile)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        netd = NetdProcess(process, portsFile, logFile)
        started.append(netd)
        if wait:
            netd.waitUntilReady()
        return netd

    yield start
    for netd in started:
        netd.kill()
