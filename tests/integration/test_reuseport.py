"""
Several netds on one host: two real netd processes started from one config
file whose echo service listens on TCP and UDP with C{reuseport=yes}, each
with its own control API (C{netd run --admin}) and state directory, share the
port; the kernel spreads new connections and datagrams over them, a reload of
one and a restart of the other under a client's load fail nothing on the one
left alone; without C{reuseport=yes} the second netd refuses to start; and the
systemd template unit that runs such instances verifies.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.testing.harness import TEST_ADMIN, NetdServer

from .conftest import IO_TIMEOUT, STARTUP_TIMEOUT, canBind, connect, echoService, recvExactly, waitForLog
from .test_systemd import systemdAnalyze

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOAD = 400
"""
New TCP connections, and UDP datagrams (each from a port of its own), sent to the shared port.
"""


def freeSharedPort() -> int:
    """
    A port of 127.0.0.1 free for both TCP and UDP a moment ago.
    """
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if canBind(socket.SOCK_DGRAM, port):
            return port
    raise AssertionError("no port free for both TCP and UDP")


def writeConfig(path: Path, port: int, reuse: bool = True) -> Path:
    """
    One config for every instance: an echo service on TCP and UDP C{port}
    (shared when C{reuse}); its own control API address is the file's
    C{tcp:8053}, which each instance replaces with C{--admin}.
    """
    suffix = ":reuseport=yes" if reuse else ""
    listen = [f"tcp:{port}:interface=127.0.0.1{suffix}", f"udp:{port}:interface=127.0.0.1{suffix}"]
    path.write_text(
        '[daemon]\nadmin = "tcp:8053:interface=127.0.0.1"\nshutdown_timeout = 2\n\n' + echoService("echo", listen)
    )
    return path


class Instances:
    """
    netd instances of one config file, each in a folder of its own (its
    ports file, log and state directory) with its own control API; all
    killed at teardown.
    """

    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.started: list[NetdServer] = []

    def start(self, reactor: str = "uvloop", wait: bool = True) -> NetdServer:
        server = NetdServer(
            self.config,
            self.directory / f"netd-{len(self.started)}",
            arguments=["--admin", TEST_ADMIN],
            environment={"NETD_REACTOR": reactor},
            startTimeout=STARTUP_TIMEOUT,
        )
        self.started.append(server)
        return server.start(wait=wait)


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Instances]:
    """
    Starts netds on one shared-port config in C{tmp_path}.
    """
    made = Instances(tmp_path, writeConfig(tmp_path / "netd.toml", freeSharedPort()))
    yield made
    for server in made.started:
        server.kill()


def echoOverTCP(address: tuple[str, int]) -> None:
    """
    One new connection that gets its line echoed, then closes.
    """
    with connect(address) as client:
        client.sendall(b"ping\n")
        assert recvExactly(client, 5) == b"ping\n"


def echoOverUDP(address: tuple[str, int]) -> None:
    """
    One datagram from a new socket (a port of its own), echoed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(b"ping", address)
        assert client.recvfrom(64) == (b"ping", address)


@pytest.mark.parametrize("reactor", ["uvloop", "netd", "twisted"])
def test_instancesShareTheLoad(instances: Instances, reactor: str) -> None:
    """
    Two netds of one config, each with its own control API, both serve part of 400 connections and 400 datagrams, which their counters add up to.
    """
    first, second = instances.start(reactor), instances.start(reactor)
    assert first.address("echo") == second.address("echo")
    assert first.adminAddress != second.adminAddress
    for _ in range(LOAD):
        echoOverTCP(first.address("echo"))
        echoOverUDP(first.address("echo", "udp"))
    connections = [netd.counter("connections_accepted", "echo") for netd in (first, second)]
    datagrams = [netd.counter("datagrams_received", "echo") for netd in (first, second)]
    print(f"{reactor}: connections per instance {connections}, datagrams per instance {datagrams}")
    assert min(connections) > 0 and sum(connections) == LOAD, connections
    assert min(datagrams) > 0 and sum(datagrams) == LOAD, datagrams


class ClientLoop:
    """
    A client that opens connection after connection (each echoes a line)
    until stopped, noting when each one failed.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.succeeded = 0
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT * 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                echoOverTCP(self.address)
            except (OSError, AssertionError) as e:
                self.failures.append((time.monotonic(), repr(e)))
            else:
                self.succeeded += 1

    def waitFor(self, count: int) -> None:
        """
        Wait until C{count} more connections have succeeded.
        """
        target = self.succeeded + count
        deadline = time.monotonic() + IO_TIMEOUT
        while self.succeeded < target:
            assert time.monotonic() < deadline, f"the client loop is stuck at {self.succeeded} connections"
            time.sleep(0.01)


def test_reloadAndRestartUnderLoad(instances: Instances) -> None:
    """
    Under a client that keeps connecting, one netd reloads (SIGHUP) and the other restarts: no connection fails but while the restarted one closes its listener, and the other serves on throughout.
    """
    kept, restarted = instances.start(), instances.start()
    with ClientLoop(kept.address("echo")) as client:
        client.waitFor(100)
        os.kill(kept.pid, signal.SIGHUP)
        waitForLog(kept, "reload: service echo (echo) unchanged")
        client.waitFor(100)
        assert client.failures == [], client.failures
        keptBefore = kept.counter("connections_accepted", "echo")
        stopping = time.monotonic()
        assert restarted.stop() == 0
        stopped = time.monotonic()
        client.waitFor(100)
        keptAlone = kept.counter("connections_accepted", "echo") - keptBefore
        again = instances.start()
        client.waitFor(100)
        servedByNew = again.counter("connections_accepted", "echo")
    outside = [failure for failure in client.failures if not stopping <= failure[0] <= stopped]
    print(
        f"connections: {client.succeeded} succeeded, {len(client.failures)} failed "
        f"(while the restarted netd closed its listener: {len(client.failures) - len(outside)}); "
        f"the kept netd served {keptAlone:.0f} while the other was down; the new one served {servedByNew:.0f}"
    )
    assert outside == [], outside
    assert keptAlone >= 100 and servedByNew > 0
    assert kept.running


def test_secondInstanceWithoutReusePort(tmp_path: Path) -> None:
    """
    Without reuseport=yes, a second netd of the same config exits 1 naming the port in use and the option that would share it.
    """
    made = Instances(tmp_path, writeConfig(tmp_path / "netd.toml", freeSharedPort(), reuse=False))
    try:
        made.start()
        second = made.start(wait=False)
        assert second.process is not None and second.process.wait(timeout=STARTUP_TIMEOUT) == 1
        log = second.log()
        assert "cannot listen on 'tcp:" in log and "address already in use" in log, log
        assert "add reuseport=yes to this listen string" in log, log
    finally:
        for server in made.started:
            server.kill()


def test_templateUnitVerifies(tmp_path: Path) -> None:
    """
    systemd-analyze verify accepts an instance of config/netd@.service and config/netd.target (ExecStart pointed at this checkout's netd).
    """
    tool = systemdAnalyze()
    executable = Path(sys.executable).parent / "netd"
    if not executable.exists():
        pytest.skip(f"no netd console script next to {sys.executable} to stand in for /usr/local/bin/netd")
    template = (ROOT / "config" / "netd@.service").read_text()
    (tmp_path / "netd@.service").write_text(template.replace("/usr/local/bin/netd", str(executable)))
    shutil.copy(ROOT / "config" / "netd.target", tmp_path / "netd.target")
    result = subprocess.run(
        [tool, "verify", str(tmp_path / "netd@8061.service"), str(tmp_path / "netd.target")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
