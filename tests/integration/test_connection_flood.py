"""
Connection floods against a real netd: thousands of idle connections and
tricklers do not lock new clients out, listeners queue a burst with the
system's backlog, and running out of file descriptors at accept is counted,
logged and survived without spinning, on each of netd's reactors and
Twisted's.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netd.testing.harness import NetdServer, unavailable

from .conftest import IO_TIMEOUT, echoService, recvExactly, requireTool

pytestmark = pytest.mark.integration

REACTORS = ["uvloop", "netd", "twisted"]
"""
The values of C{NETD_REACTOR} each test runs under.
"""

FLOOD_BUDGET = 60.0
"""
Seconds the whole flood test may take, connections opened and closed included.
"""


def metric(netd: NetdServer, name: str, service: str) -> float:
    """
    The value of the sample C{name} of C{service} in netd's /metrics (0 when absent).
    """
    with urllib.request.urlopen(netd.adminURL("/metrics"), timeout=IO_TIMEOUT) as response:
        text = response.read().decode()
    match = re.search(rf'^{name}\{{[^}}]*service="{service}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def descriptorsRaised(wanted: int) -> Iterator[None]:
    """
    Raise this test process's soft open-file limit to its hard one for the
    block (the clients of a flood need thousands), or skip when the hard limit
    is below C{wanted}; the soft limit is put back afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        unavailable(f"the hard open-file limit ({hard}) is below the {wanted} descriptors the flood needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def echoOnce(address: tuple[str, int], payload: bytes, timeout: float) -> float:
    """
    Connect, send C{payload}, read its echo; return how long it took (raises if it did not come within C{timeout}).
    """
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as client:
        client.sendall(payload)
        assert recvExactly(client, len(payload), timeout=timeout) == payload
    return time.monotonic() - started


def openMany(address: tuple[str, int], count: int, deadline: float) -> list[socket.socket]:
    """
    Open C{count} connections that send nothing (fewer if the deadline comes first).
    """
    opened = []
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(5)
        try:
            client.connect(address)
        except OSError:
            client.close()
            continue
        client.setblocking(False)
        opened.append(client)
    return opened


def trickle(clients: list[socket.socket]) -> None:
    """
    Send one byte on each connection, and read (and drop) what came back, without blocking.
    """
    for client in clients:
        with contextlib.suppress(OSError):
            client.send(b"x")
        with contextlib.suppress(OSError):
            client.recv(4096)


def stillOpen(client: socket.socket) -> bool:
    """
    Whether netd has not closed (or reset) a non-blocking connection.
    """
    try:
        return client.recv(4096, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("reactor", REACTORS)
def test_idleFloodDoesNotLockClientsOut(startNetd: Any, monkeypatch: pytest.MonkeyPatch, reactor: str) -> None:
    """
    With 2,000 idle connections and 300 that trickle a byte now and then against an echo service of max_connections 1024, every new client still gets its echo within 2 seconds, the idle connections make room while the tricklers keep theirs, and /metrics counts the evictions.
    """
    monkeypatch.setenv("NETD_REACTOR", reactor)
    started = time.monotonic()
    deadline = started + FLOOD_BUDGET
    with descriptorsRaised(2600):
        netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"], max_connections=1024))
        address = netd.address("echo")
        idle = openMany(address, 2000, deadline - 40)
        tricklers = openMany(address, 300, deadline - 35)
        try:
            assert len(idle) == 2000 and len(tricklers) == 300, (len(idle), len(tricklers))
            slowest = 0.0
            for round in range(10):
                trickle(tricklers)
                slowest = max(slowest, echoOnce(address, b"legitimate %d\n" % round, timeout=2.0))
                time.sleep(0.2)
            assert slowest < 2.0
            assert metric(netd, "netd_connections_evicted_total", "echo") >= 2300 - 1024
            assert metric(netd, "netd_connections_refused_total", "echo") == 0
            assert metric(netd, "netd_connections_open", "echo") <= 1024
            assert "max_connections (1024) reached: closed the connection from" in netd.log()
            assert sum(map(stillOpen, tricklers)) >= 290, (
                "the tricklers, which move, were evicted before idle connections"
            )
        finally:
            for client in idle + tricklers:
                client.close()
    assert time.monotonic() - started < FLOOD_BUDGET + 10


def listenQueue(port: int) -> int:
    """
    The listen queue (backlog) of the socket listening on C{port} on 127.0.0.1, as C{ss -lnt} shows it (Send-Q).
    """
    ss = requireTool("ss")
    output = subprocess.run(
        [ss, "-lntH", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    lines = [line.split() for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return int(lines[0][2])


def somaxconn() -> int:
    """
    The system's largest listen backlog.
    """
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.parametrize("reactor", REACTORS)
def test_listenersQueueTheSystemsBacklog(startNetd: Any, monkeypatch: pytest.MonkeyPatch, reactor: str) -> None:
    """
    A stream listener's queue is net.core.somaxconn unless its listen string sets backlog=N (also inside haproxy:), where Twisted and uvloop would take 50 and 100.
    """
    monkeypatch.setenv("NETD_REACTOR", reactor)
    config = (
        echoService("default", ["tcp:0:interface=127.0.0.1"])
        + echoService("set", ["tcp:0:interface=127.0.0.1:backlog=200"])
        + echoService("proxied", ["haproxy:tcp:0:interface=127.0.0.1:backlog=300"])
    )
    netd = startNetd(config)
    assert listenQueue(netd.address("default")[1]) == min(somaxconn(), 65535)
    assert listenQueue(netd.address("set")[1]) == min(200, somaxconn())
    assert listenQueue(netd.address("proxied")[1]) == min(300, somaxconn())


@pytest.mark.parametrize("reactor", REACTORS)
def test_aBurstOfConnectsIsQueuedNotReset(startNetd: Any, monkeypatch: pytest.MonkeyPatch, reactor: str) -> None:
    """
    160 connects at once, while netd is stopped (SIGSTOP) and accepts nothing, are all queued and all echoed once it runs again: none is reset.
    """
    monkeypatch.setenv("NETD_REACTOR", reactor)
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"]))
    address = netd.address("echo")
    clients: list[socket.socket] = []
    os.kill(netd.pid, 19)  # SIGSTOP: nothing is accepted meanwhile
    try:
        for _ in range(160):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.settimeout(5)
            client.connect(address)
            clients.append(client)
        for index, client in enumerate(clients):
            client.sendall(b"%d\n" % index)
    finally:
        os.kill(netd.pid, 18)  # SIGCONT
    try:
        for index, client in enumerate(clients):
            expected = b"%d\n" % index
            assert recvExactly(client, len(expected), timeout=10) == expected
    finally:
        for client in clients:
            client.close()


def startWithDescriptors(directory: Path, config: str, limit: tuple[int, int], reactor: str) -> NetdServer:
    """
    Start netd with its open-file limit at C{limit} (soft, hard), set in the child before it runs.
    """

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)

    return NetdServer(
        config, directory, environment={"NETD_REACTOR": reactor}, preexec=limited, shutdownTimeout=None
    ).start()


def cpuSeconds(pid: int) -> float:
    """
    The CPU time (user and system) a process has used.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("reactor", REACTORS)
def test_outOfDescriptorsIsCountedWithoutSpinning(tmp_path: Path, reactor: str) -> None:
    """
    A netd limited to 64 descriptors, flooded with 150 idle connections, counts descriptors_exhausted, logs it a bounded number of times, uses little CPU meanwhile (no spin), and still echoes for a new client.
    """
    netd = startWithDescriptors(
        tmp_path, echoService("echo", ["tcp:0:interface=127.0.0.1"], max_connections=10000), (64, 64), reactor
    )
    clients: list[socket.socket] = []
    try:
        assert "open-file limit: 64 descriptors" in netd.log()
        address = netd.address("echo")
        clients = openMany(address, 150, time.monotonic() + 20)
        time.sleep(0.5)
        before = cpuSeconds(netd.pid)
        time.sleep(2)
        spent = cpuSeconds(netd.pid) - before
        assert spent < 0.5, f"netd used {spent:.2f} s of CPU in 2 s while out of descriptors"
        echoOnce(address, b"still served\n", timeout=5.0)
        assert metric(netd, "netd_descriptors_exhausted_total", "echo") >= 1
        log = netd.log()
        assert 1 <= log.count("out of file descriptors") <= 3, log
    finally:
        for client in clients:
            client.close()
        netd.kill()
    assert netd.process.poll() is not None


def test_openFileLimitIsRaisedAndSizesMaxConnections(tmp_path: Path) -> None:
    """
    netd raises its soft open-file limit to the hard one at start and logs both, and an unset max_connections is half of it.
    """
    requireTool("prlimit")
    netd = startWithDescriptors(tmp_path, echoService("echo", ["tcp:0:interface=127.0.0.1"]), (64, 256), "uvloop")
    try:
        assert "open-file limit: 256 descriptors (soft limit was 64, hard limit 256)" in netd.log()
        soft = int(
            subprocess.run(
                ["prlimit", "--pid", str(netd.pid), "--nofile", "--noheadings", "--output=SOFT"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert soft == 256
        address = netd.address("echo")
        clients = openMany(address, 129, time.monotonic() + 10)
        try:
            time.sleep(0.3)
            assert metric(netd, "netd_connections_evicted_total", "echo") == 1
        finally:
            for client in clients:
                client.close()
    finally:
        netd.kill()
