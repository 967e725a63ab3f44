"""
The proxy plugin in front of a real server: netd runs as a subprocess, a
real redis-server (Debian's) listens on a loopback port the test picks, and
real clients (redis-cli, and a Python socket speaking RESP) talk to it
through netd, plainly and with the service's stream faults.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address

from netd.stream.proxyformat import HeaderReader
from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, recvExactly, recvUntilClosed, requireTool

pytestmark = pytest.mark.integration

LATENCY_MS = 150
REDIS_START_TIMEOUT = 10.0


def freePort() -> int:
    """
    A loopback TCP port nothing listens on now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping(address: tuple[str, int]) -> bool:
    """
    Whether a Redis server answers PING at C{address}.
    """
    try:
        with socket.create_connection(address, timeout=1.0) as client:
            client.sendall(b"PING\r\n")
            return client.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """
    A redis-server of the test's own on a free loopback port, without persistence; stopped (by its PID) after the module.
    """
    server = requireTool("redis-server")
    folder: Path = tmp_path_factory.mktemp("redis")
    address = ("127.0.0.1", freePort())
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(address[1]), "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while not ping(address):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer on {address} within {REDIS_START_TIMEOUT} seconds")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=IO_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=IO_TIMEOUT)


def proxy(name: str, upstream: str, faults: str = "[]", extra: str = "") -> str:
    """
    One proxy service to C{upstream} with these faults, as TOML.
    """
    return (
        f'[[services]]\nname = "{name}"\nplugin = "proxy"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        f'upstream = "{upstream}"\nfaults = {faults}\n{extra}\n'
    )


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any, redis: tuple[str, int]) -> NetdServer:
    """
    One netd for the module: proxies to the test's redis-server, plain and with faults, and to a port where nothing listens.
    """
    upstream = f"tcp:127.0.0.1:{redis[1]}"
    down = f"tcp:127.0.0.1:{freePort()}"
    started: NetdServer = startModuleNetd(
        proxy("plain", upstream)
        + proxy("latency", upstream, f'[{{ type = "latency", ms = {LATENCY_MS}, direction = "to_client" }}]')
        + proxy("reset", upstream, '[{ type = "reset_after", bytes = 5, direction = "to_client" }]')
        + proxy("down-close", down)
        + proxy("down-reset", down, extra='on_upstream_failure = "reset"')
    )
    return started


def roundTrip(client: socket.socket, command: bytes, answer: bytes) -> float:
    """
    Send one RESP command and read its answer; return the seconds it took.
    """
    started = time.monotonic()
    client.sendall(command)
    assert recvExactly(client, len(answer)) == answer
    return time.monotonic() - started


def test_redisCliThroughTheProxy(netd: NetdServer) -> None:
    """
    redis-cli, pointed at the proxy, sets and reads a key of the real redis-server, and netd counts one upstream connection each time.
    """
    cli = requireTool("redis-cli")
    host, port = netd.address("plain")
    base = [cli, "-h", host, "-p", str(port)]
    assert (
        subprocess.run(
            [*base, "SET", "netd:key", "proxied"], capture_output=True, text=True, timeout=IO_TIMEOUT
        ).stdout.strip()
        == "OK"
    )
    got = subprocess.run([*base, "GET", "netd:key"], capture_output=True, text=True, timeout=IO_TIMEOUT)
    assert got.stdout.strip() == "proxied"
    assert netd.counter("upstream_connects", "plain") >= 2


def test_bulkBothWays(netd: NetdServer) -> None:
    """
    A 1 MiB value goes through the proxy to redis and comes back intact.
    """
    value = bytes(range(256)) * 4096
    with connect(netd.address("plain")) as client:
        command = b"*3\r\n$3\r\nSET\r\n$9\r\nnetd:bulk\r\n$%d\r\n%s\r\n" % (len(value), value)
        roundTrip(client, command, b"+OK\r\n")
        reply = b"$%d\r\n%s\r\n" % (len(value), value)
        roundTrip(client, b"GET netd:bulk\r\n", reply)


def test_latencyFaultSlowsTheAnswers(netd: NetdServer) -> None:
    """
    With a latency fault towards the client, each answer of the real server arrives at least its milliseconds later, while the plain proxy answers sooner.
    """
    with connect(netd.address("plain")) as client:
        roundTrip(client, b"PING\r\n", b"+PONG\r\n")
        plain = min(roundTrip(client, b"PING\r\n", b"+PONG\r\n") for _ in range(3))
    with connect(netd.address("latency")) as client:
        slowed = [roundTrip(client, b"PING\r\n", b"+PONG\r\n") for _ in range(3)]
    assert min(slowed) >= LATENCY_MS / 1000
    assert plain < LATENCY_MS / 1000


def test_resetAfterResetsTheClient(netd: NetdServer) -> None:
    """
    With reset_after 5 bytes towards the client, the client gets the first 5 bytes of redis's answer, then a reset.
    """
    with connect(netd.address("reset")) as client:
        client.sendall(b"PING\r\n")
        received = bytearray()
        with pytest.raises(ConnectionResetError):
            deadline = time.monotonic() + IO_TIMEOUT
            while time.monotonic() < deadline:
                chunk = client.recv(100)
                if not chunk:
                    break
                received += chunk
    assert bytes(received) == b"+PONG\r\n"[:5]


@pytest.mark.parametrize("service, reset", [("down-close", False), ("down-reset", True)])
def test_upstreamDown(netd: NetdServer, service: str, reset: bool) -> None:
    """
    When nothing listens at the upstream, the client gets EOF (even after sending bytes netd did not read), or a reset with on_upstream_failure = "reset"; the failure is counted.
    """
    before = netd.counter("upstream_connect_failures", service)
    if reset:
        # The reset may come before connect() has read the socket's error
        # (Python's connect with a timeout is a poll, then SO_ERROR).
        with pytest.raises(ConnectionResetError), connect(netd.address(service)) as client:
            client.sendall(b"PING\r\n")
            client.recv(100)
    else:
        with connect(netd.address(service)) as client:
            client.sendall(b"PING\r\n")
            assert client.recv(100) == b""
    assert netd.counter("upstream_connect_failures", service) == before + 1


def test_halfCloseBothWays(startNetd: Any) -> None:
    """
    Through the proxy, a client's EOF reaches a real upstream, which still answers after it (and its answer reaches the client), and the upstream's EOF then reaches the client.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(IO_TIMEOUT)
        netd = startNetd(proxy("half", f"tcp:127.0.0.1:{listener.getsockname()[1]}"))
        with connect(netd.address("half")) as client:
            client.sendall(b"question")
            client.shutdown(socket.SHUT_WR)
            upstream, _ = listener.accept()
            with upstream:
                upstream.settimeout(IO_TIMEOUT)
                assert recvUntilClosed(upstream) == b"question"
                upstream.sendall(b"answer after EOF")
                upstream.shutdown(socket.SHUT_WR)
                assert recvUntilClosed(client) == b"answer after EOF"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_upstreamProxyProtocolNamesTheRealClient(startNetd: Any, version: str) -> None:
    """
    With upstream_proxy_protocol, a real upstream reads (with netd's own
    parser) a PROXY header naming the client's address and port and the
    proxy's listening address, then the client's bytes; its answer reaches the client.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(IO_TIMEOUT)
        upstreamAddress = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
        netd = startNetd(proxy("pp", upstreamAddress, extra=f'upstream_proxy_protocol = "{version}"'))
        with connect(netd.address("pp")) as client:
            client.sendall(b"hello")
            upstream, _ = listener.accept()
            with upstream:
                upstream.settimeout(IO_TIMEOUT)
                reader = HeaderReader()
                result = None
                while result is None:
                    chunk = upstream.recv(4096)
                    assert chunk, "the upstream connection closed before a whole PROXY header"
                    result = reader.feed(chunk)
                info, rest = result
                rest += recvExactly(upstream, len(b"hello") - len(rest))
                assert rest == b"hello"
                assert info.source == IPv4Address("TCP", *client.getsockname())
                assert info.destination == IPv4Address("TCP", *netd.address("pp"))
                upstream.sendall(b"seen")
                assert recvExactly(client, 4) == b"seen"
