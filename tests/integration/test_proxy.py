"""
The proxy plugin in front of real servers: netd runs as a subprocess, a real
redis-server (Debian's) and a real HTTP server (Python's http.server) listen
on loopback ports the test picks, and real clients (redis-cli, curl, and a
Python socket speaking RESP) talk to them through netd, plainly, with the
service's stream faults, and, with line framing, with frame faults; what
netd saw is read back as connection events through the control API.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address

from netd.faults.stream import BANDWIDTH_PIECES
from netd.stream.proxyformat import HeaderReader
from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, recvExactly, recvUntilClosed, requireTool
from .processes import stopProcess

pytestmark = pytest.mark.integration

LATENCY_MS = 150
REDIS_START_TIMEOUT = 10.0
BIG_FILE = 256 * 1024
BANDWIDTH = 512 * 1024
SPLIT_DELAY_MS = 100


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
        stopProcess(process)


def proxy(name: str, upstream: str, faults: str = "[]", extra: str = "") -> str:
    """
    One proxy service to C{upstream} with these faults, as TOML.
    """
    return (
        f'[[services]]\nname = "{name}"\nplugin = "proxy"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        f'upstream = "{upstream}"\nfaults = {faults}\n{extra}\n'
    )


def httpAnswers(address: tuple[str, int]) -> bool:
    """
    Whether an HTTP server answers at C{address}.
    """
    try:
        with socket.create_connection(address, timeout=1.0) as client:
            client.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return client.recv(5) == b"HTTP/"
    except OSError:
        return False


@pytest.fixture(scope="module")
def httpServer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[tuple[str, int], Path]]:
    """
    Python's http.server on a free loopback port, serving a folder with a
    random file of BIG_FILE bytes (big.bin); stopped (by its PID) after the module.
    """
    folder: Path = tmp_path_factory.mktemp("http")
    (folder / "big.bin").write_bytes(hashlib.shake_256(b"netd").digest(BIG_FILE))
    address = ("127.0.0.1", freePort())
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", address[0], "--directory", str(folder), str(address[1])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while not httpAnswers(address):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"http.server did not answer on {address} within {REDIS_START_TIMEOUT} seconds")
            time.sleep(0.05)
        yield address, folder
    finally:
        stopProcess(process)


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any, redis: tuple[str, int], httpServer: tuple[tuple[str, int], Path]) -> NetdServer:
    """
    One netd for the module: proxies to the test's redis-server (raw, and
    line-framed), plain and with faults, to its HTTP server, and to a port
    where nothing listens.
    """
    upstream = f"tcp:127.0.0.1:{redis[1]}"
    web = f"tcp:127.0.0.1:{httpServer[0][1]}"
    down = f"tcp:127.0.0.1:{freePort()}"
    line = 'framing = "line"'
    started: NetdServer = startModuleNetd(
        proxy("plain", upstream)
        + proxy("latency", upstream, f'[{{ type = "latency", ms = {LATENCY_MS}, direction = "to_client" }}]')
        + proxy("reset", upstream, '[{ type = "reset_after", bytes = 5, direction = "to_client" }]')
        + proxy("down-close", down)
        + proxy("down-reset", down, extra='on_upstream_failure = "reset"')
        + proxy("lines", upstream, extra=line)
        + proxy(
            "lines-split",
            upstream,
            f'[{{ type = "split_frame", pieces = 2, delay = {SPLIT_DELAY_MS}, direction = "to_client" }}]',
            extra=line,
        )
        + proxy("lines-cut", upstream, '[{ type = "truncate_frame", bytes = 3, direction = "to_client" }]', extra=line)
        + proxy("web", web)
        + proxy("web-latency", web, f'[{{ type = "latency", ms = {LATENCY_MS}, direction = "to_client" }}]')
        + proxy("web-bandwidth", web, f'[{{ type = "bandwidth", rate = {BANDWIDTH}, direction = "to_client" }}]')
        + proxy("web-slice", web, '[{ type = "slice", size = 1000, direction = "to_client" }]')
        + proxy("web-reset", web, '[{ type = "reset_after", bytes = 4096, direction = "to_client" }]')
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


# An HTTP server behind the proxy, with curl.


def curl(netd: NetdServer, service: str, output: Path) -> tuple[int, float, str]:
    """
    curl fetches big.bin through C{service} into C{output}: its exit code,
    its time_total in seconds, and its stderr.
    """
    host, port = netd.address(service)
    done = subprocess.run(
        [
            requireTool("curl"),
            "--silent",
            "--show-error",
            "--max-time",
            str(IO_TIMEOUT),
            "--output",
            str(output),
            "--write-out",
            "%{time_total}",
            f"http://{host}:{port}/big.bin",
        ],
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT + 5,
    )
    return done.returncode, float(done.stdout or "0"), done.stderr


def assertSameFile(got: Path, httpServer: tuple[tuple[str, int], Path]) -> None:
    """
    curl's copy of big.bin is the served file, byte for byte.
    """
    assert got.read_bytes() == (httpServer[1] / "big.bin").read_bytes()


def test_curlThroughTheProxy(netd: NetdServer, httpServer: tuple[tuple[str, int], Path], tmp_path: Path) -> None:
    """
    curl, pointed at the proxy, downloads a 256 KiB file from the real HTTP server intact.
    """
    code, _, stderr = curl(netd, "web", tmp_path / "got")
    assert code == 0, stderr
    assertSameFile(tmp_path / "got", httpServer)


def test_curlWithLatency(netd: NetdServer, httpServer: tuple[tuple[str, int], Path], tmp_path: Path) -> None:
    """
    With a latency fault towards the client, curl's whole transfer takes at least the latency, and the file is intact.
    """
    code, total, stderr = curl(netd, "web-latency", tmp_path / "got")
    assert code == 0, stderr
    assert total >= LATENCY_MS / 1000
    assertSameFile(tmp_path / "got", httpServer)


def test_curlWithBandwidth(netd: NetdServer, httpServer: tuple[tuple[str, int], Path], tmp_path: Path) -> None:
    """
    With a bandwidth fault towards the client, the 256 KiB file takes at
    least its size over the rate (less the first piece, sent at once), and
    is intact.
    """
    code, total, stderr = curl(netd, "web-bandwidth", tmp_path / "got")
    assert code == 0, stderr
    assert total >= (BIG_FILE - BANDWIDTH // BANDWIDTH_PIECES) / BANDWIDTH
    assertSameFile(tmp_path / "got", httpServer)


def test_curlWithSlice(netd: NetdServer, httpServer: tuple[tuple[str, int], Path], tmp_path: Path) -> None:
    """
    With the answer sliced into 1000-byte sends, curl still gets the whole file intact.
    """
    code, _, stderr = curl(netd, "web-slice", tmp_path / "got")
    assert code == 0, stderr
    assertSameFile(tmp_path / "got", httpServer)


def test_curlWithResetAfter(netd: NetdServer, tmp_path: Path) -> None:
    """
    With reset_after 4096 bytes towards the client, curl fails with exit code 56 (recv failure: connection reset).
    """
    code, _, stderr = curl(netd, "web-reset", tmp_path / "got")
    assert code == 56, stderr
    assert "reset" in stderr.lower()


# Line framing in front of redis: frame faults on the server's answers.


def test_lineFramedProxyIsByteExact(netd: NetdServer) -> None:
    """
    A line-framed proxy relays redis's CR LF lines exactly both ways: redis-cli works through it, and so do inline commands and a multi-line bulk reply.
    """
    cli = requireTool("redis-cli")
    host, port = netd.address("lines")
    base = [cli, "-h", host, "-p", str(port)]
    done = subprocess.run([*base, "SET", "netd:line", "a b"], capture_output=True, text=True, timeout=IO_TIMEOUT)
    assert done.stdout.strip() == "OK"
    done = subprocess.run([*base, "GET", "netd:line"], capture_output=True, text=True, timeout=IO_TIMEOUT)
    assert done.stdout.strip() == "a b"
    with connect(netd.address("lines")) as client:
        roundTrip(client, b"PING\r\n", b"+PONG\r\n")
        roundTrip(client, b"GET netd:line\r\n", b"$3\r\na b\r\n")


def test_splitFrameReachesTheClientInPieces(netd: NetdServer) -> None:
    """
    With split_frame towards the client, redis's +PONG line reaches a raw socket in two sends, the second at least the delay later; redis-cli, which reassembles, still reads PONG.
    """
    with connect(netd.address("lines-split")) as client:
        client.sendall(b"PING\r\n")
        first = client.recv(100)
        arrived = time.monotonic()
        assert first == b"+PON"
        assert recvExactly(client, 3) == b"G\r\n"
        assert time.monotonic() - arrived >= SPLIT_DELAY_MS / 1000 * 0.9
    host, port = netd.address("lines-split")
    done = subprocess.run(
        [requireTool("redis-cli"), "-h", host, "-p", str(port), "PING"],
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT,
    )
    assert done.stdout.strip() == "PONG"


def test_truncateFrameCutsTheAnswer(netd: NetdServer) -> None:
    """
    With truncate_frame towards the client, a raw socket gets the first 3 bytes of redis's +PONG line, then EOF; redis-cli reports the lost connection.
    """
    with connect(netd.address("lines-cut")) as client:
        client.sendall(b"PING\r\n")
        assert recvUntilClosed(client) == b"+PO"
    host, port = netd.address("lines-cut")
    done = subprocess.run(
        [requireTool("redis-cli"), "-h", host, "-p", str(port), "PING"],
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT,
    )
    assert "PONG" not in done.stdout


# What netd saw, through the control API.


def connectionEvents(netd: NetdServer, service: str, count: int) -> list[dict[str, Any]]:
    """
    The service's connection events, once there are C{count} of them (a
    connection's is recorded when netd has seen it close).
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        events = netd.admin.events(service, kind="connection")
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


@pytest.mark.parametrize("service", ["plain", "lines"])
def test_connectionEventNamesTheUpstream(netd: NetdServer, redis: tuple[str, int], service: str) -> None:
    """
    A proxied connection's connection event, read through the control API,
    names the upstream's address and the bytes relayed each way (the
    client's bytes, exactly, raw or line-framed), how the client's side
    ended and how the upstream's did (the client's EOF passed on, redis
    closed in turn); there is no separate upstream event.
    """
    netd.admin.clearEvents(service)
    with connect(netd.address(service)) as client:
        roundTrip(client, b"PING\r\n", b"+PONG\r\n")
        roundTrip(client, b"ECHO netd\r\n", b"$4\r\nnetd\r\n")
    [event] = connectionEvents(netd, service, 1)
    assert event["upstream"] == f"127.0.0.1:{redis[1]}"
    assert event["bytes_to_upstream"] == event["bytes_in"] == len(b"PING\r\nECHO netd\r\n")
    assert event["bytes_from_upstream"] == event["bytes_out"] == len(b"+PONG\r\n$4\r\nnetd\r\n")
    assert event["ended"] == "closed by peer"
    assert event["upstream_ended"] == "closed: EOF both ways"
    assert netd.admin.events(service, kind="upstream") == []


def test_connectionEventOfAnUnreachableUpstream(netd: NetdServer) -> None:
    """
    When the upstream cannot be reached, the connection event names it as configured and says why.
    """
    netd.admin.clearEvents("down-close")
    with connect(netd.address("down-close")) as client:
        assert client.recv(100) == b""
    [event] = connectionEvents(netd, "down-close", 1)
    assert event["upstream"].startswith("tcp:127.0.0.1:")
    assert event["upstream_ended"].startswith("upstream unreachable")
    assert (event["bytes_to_upstream"], event["bytes_from_upstream"]) == (0, 0)
