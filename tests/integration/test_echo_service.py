"""
The echo service end to end: netd runs as a subprocess on ports it picks, and
real clients (Python sockets, socat) talk to it over TCP, UDP, unix sockets and
IPv6 loopback, in every framing, and against the core's limits.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, recvUntilClosed, socat, waitForClose, waitForLog

pytestmark = pytest.mark.integration


def echoes(address: tuple[str, int], payload: bytes = b"ping\n") -> bytes:
    """
    What a fresh raw-framed connection gets back for C{payload} before netd closes it.
    """
    with connect(address) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        return recvUntilClosed(client)


def ipv6Loopback() -> bool:
    """
    Whether this machine can listen on ::1.
    """
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# Golden wire bytes per framing: what the client sends, and what echo must send
# back (each frame re-encoded by the framing).
GOLDEN = {
    "raw": (b"hello\x00\xff world\r\n", b"hello\x00\xff world\r\n"),
    "line": (b"a\r\nb\n\nline three\n", b"a\nb\n\nline three\n"),
    "netstring": (b"5:hello,0:,3:\x00\n\xff,", b"5:hello,0:,3:\x00\n\xff,"),
    "u16": (b"\x00\x05hello\x00\x00\x00\x03\x00\n\xff", b"\x00\x05hello\x00\x00\x00\x03\x00\n\xff"),
    "u32": (b"\x00\x00\x00\x05hello\x00\x00\x00\x00", b"\x00\x00\x00\x05hello\x00\x00\x00\x00"),
}


@pytest.fixture
def framedEchoes(startNetd: Any) -> Any:
    """
    One netd with an echo service per framing, each named after its framing.
    """
    config = "".join(echoService(name, ["tcp:0:interface=127.0.0.1"], framing=name) for name in GOLDEN)
    return startNetd(config)


@pytest.mark.parametrize("framing", sorted(GOLDEN))
def test_framingGoldenBytes(framedEchoes: Any, framing: str) -> None:
    """
    Over TCP, each framing's golden bytes come back as the golden echo bytes, re-encoded frame by frame.
    """
    sent, expected = GOLDEN[framing]
    with connect(framedEchoes.address(framing, "tcp")) as client:
        client.sendall(sent)
        assert recvExactly(client, len(expected)) == expected
        client.shutdown(socket.SHUT_WR)
        assert recvUntilClosed(client) == b""


@pytest.mark.parametrize("framing", sorted(GOLDEN))
def test_framingByteAtATime(framedEchoes: Any, framing: str) -> None:
    """
    Golden bytes sent one byte per TCP segment are reassembled into the same echoed bytes.
    """
    sent, expected = GOLDEN[framing]
    with connect(framedEchoes.address(framing, "tcp")) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(sent)):
            client.sendall(sent[i : i + 1])
        assert recvExactly(client, len(expected)) == expected


@pytest.mark.parametrize(
    ("framing", "sent", "expected"),
    [("raw", b"raw bytes\x00\xff\n" * 1000, b"raw bytes\x00\xff\n" * 1000), ("line", b"a\r\nb\n", b"a\nb\n")],
)
def test_socatTCP(startNetd: Any, framing: str, sent: bytes, expected: bytes) -> None:
    """
    socat over TCP gets back every byte it sent (re-encoded lines with line framing) after it shuts its write side.
    """
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"], framing=framing))
    host, port = netd.address("echo", "tcp")
    assert socat(["-", f"TCP:{host}:{port}"], sent) == expected


def test_socatUDP(startNetd: Any) -> None:
    """
    A datagram sent by socat over UDP comes back unchanged.
    """
    netd = startNetd(echoService("echo", ["udp:0:interface=127.0.0.1"]))
    host, port = netd.address("echo", "udp")
    assert socat(["-", f"UDP:{host}:{port}"], b"one datagram\x00\xff", timeout=1.0) == b"one datagram\x00\xff"


def test_pythonUDPDatagrams(startNetd: Any) -> None:
    """
    Each UDP datagram comes back as one datagram with the same bytes, boundaries kept.
    """
    netd = startNetd(echoService("echo", ["udp:0:interface=127.0.0.1"]))
    address = netd.address("echo", "udp")
    datagrams = [b"first", b"", b"\x00" * 1200, bytes(range(256))]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.connect(address)
        for datagram in datagrams:
            client.send(datagram)
            assert client.recv(65536) == datagram


def test_socatUnixSocket(startNetd: Any, tmp_path: Path) -> None:
    """
    socat over a unix socket listened on by netd gets back every byte it sent.
    """
    path = tmp_path / "echo.sock"
    netd = startNetd(echoService("echo", [f"unix:{path}"], framing="line"))
    assert netd.unixPath("echo") == str(path)
    assert socat(["-", f"UNIX-CONNECT:{path}"], b"over unix\r\nsecond\n") == b"over unix\nsecond\n"


@pytest.mark.skipif(not ipv6Loopback(), reason="::1 is not available on this machine")
def test_ipv6Loopback(startNetd: Any) -> None:
    """
    A tcp6 listen string with an escaped IPv6 interface serves echo on ::1.
    """
    netd = startNetd(echoService("echo6", ["tcp6:0:interface=\\:\\:1"]))
    host, port = netd.address("echo6", "tcp")
    assert host == "::1"
    assert echoes((host, port), b"over IPv6") == b"over IPv6"
    assert socat(["-", f"TCP6:[::1]:{port}"], b"socat over IPv6") == b"socat over IPv6"


def test_severalServices(startNetd: Any, tmp_path: Path) -> None:
    """
    Every service of a config is reported in the ports file with each of its listen strings, and each one serves.
    """
    path = tmp_path / "several.sock"
    config = (
        echoService("raw", ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"])
        + echoService("lines", ["tcp:0:interface=127.0.0.1", f"unix:{path}"], framing="line")
        + echoService("sized", ["tcp:0:interface=127.0.0.1"], framing="u32")
    )
    netd = startNetd(config)
    assert {name: [bound["listen"] for bound in addresses] for name, addresses in netd.services.items()} == {
        "raw": ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"],
        "lines": ["tcp:0:interface=127.0.0.1", f"unix:{path}"],
        "sized": ["tcp:0:interface=127.0.0.1"],
    }
    tcpPorts = {netd.address(name, "tcp")[1] for name in ("raw", "lines", "sized")}
    assert len(tcpPorts) == 3 and 0 not in tcpPorts
    assert echoes(netd.address("raw", "tcp"), b"raw") == b"raw"
    assert echoes(netd.address("lines", "tcp"), b"x\r\n") == b"x\n"
    assert echoes(netd.address("sized", "tcp"), b"\x00\x00\x00\x01z") == b"\x00\x00\x00\x01z"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(IO_TIMEOUT)
        udp.sendto(b"dgram", netd.address("raw", "udp"))
        assert udp.recv(100) == b"dgram"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.settimeout(IO_TIMEOUT)
        unix.connect(netd.unixPath("lines"))
        unix.sendall(b"unix\n")
        assert recvExactly(unix, 5) == b"unix\n"


@pytest.mark.parametrize("framing", ["raw", "line"])
def test_halfClose(startNetd: Any, framing: str) -> None:
    """
    A client that shuts down its write side still receives the echo of everything it sent, then EOF.
    """
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"], framing=framing))
    payload = b"".join(b"%07d half-closed\n" % i for i in range(64 * 1024))  # 1.5 MiB
    with connect(netd.address("echo", "tcp")) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recvUntilClosed(client, timeout=30) == payload


def test_overLimitFrame(startNetd: Any) -> None:
    """
    A u16 frame longer than max_frame closes that connection with a logged reason while other connections keep echoing.
    """
    netd = startNetd(echoService("sized", ["tcp:0:interface=127.0.0.1"], framing="u16", max_frame=16))
    address = netd.address("sized", "tcp")
    with connect(address) as good, connect(address) as bad:
        good.sendall(b"\x00\x02ok")
        assert recvExactly(good, 4) == b"\x00\x02ok"
        bad.sendall(b"\x00\x64" + b"x" * 100)
        waitForClose(bad, timeout=5)
        log = waitForLog(netd, "exceeds max_frame")
        assert "u16 frame of 100 bytes exceeds max_frame (16)" in log
        good.sendall(b"\x00\x10" + b"y" * 16)
        assert recvExactly(good, 18) == b"\x00\x10" + b"y" * 16
    assert echoes(address, b"\x00\x01!") == b"\x00\x01!"


def test_maxConnections(startNetd: Any) -> None:
    """
    With max_connections = 2 and evict_idle = false a third concurrent connection is closed at once, and a new one is served after one closes.
    """
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"], max_connections=2, evict_idle=False))
    address = netd.address("echo", "tcp")
    first = connect(address)
    try:
        with connect(address) as second:
            for client in (first, second):
                client.sendall(b"held")
                assert recvExactly(client, 4) == b"held"
            with connect(address) as third:
                third.sendall(b"refused?")
                assert waitForClose(third, timeout=2) < 2
            first.close()
            deadline = time.monotonic() + IO_TIMEOUT
            for _attempt in range(100):
                with connect(address) as again:
                    again.sendall(b"again")
                    try:
                        if recvExactly(again, 5, timeout=2) == b"again":
                            break
                    except (AssertionError, ConnectionResetError):
                        pass  # netd had not seen the first close yet
                assert time.monotonic() < deadline, "no connection was served again after one closed"
                time.sleep(0.05)
            else:
                raise AssertionError("no connection was served again after one closed")
            second.sendall(b"still")
            assert recvExactly(second, 5) == b"still"
    finally:
        first.close()
    assert "max_connections (2) reached" in netd.log()


def test_idleTimeout(startNetd: Any) -> None:
    """
    With idle_timeout = 0.5 an idle connection is closed by netd within a bounded time while an active one stays open.
    """
    netd = startNetd(echoService("echo", ["tcp:0:interface=127.0.0.1"], idle_timeout=0.5))
    address = netd.address("echo", "tcp")
    with connect(address) as idle, connect(address) as active:
        opened = time.monotonic()
        active.settimeout(IO_TIMEOUT)
        idleClosed: float | None = None
        idle.setblocking(False)
        # Keep the active connection busy for 2 seconds (four idle timeouts),
        # checking on the idle one between messages.
        for i in range(40):
            if time.monotonic() - opened > 2.0:
                break
            message = b"tick %d " % i
            active.sendall(message)
            assert recvExactly(active, len(message)) == message
            if idleClosed is None:
                try:
                    if idle.recv(100) == b"":
                        idleClosed = time.monotonic() - opened
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    idleClosed = time.monotonic() - opened
            time.sleep(0.1)
        if idleClosed is None:
            idle.setblocking(True)
            waitForClose(idle, timeout=5)
            idleClosed = time.monotonic() - opened
        assert 0.3 < idleClosed < 5.5
        active.sendall(b"still open")
        assert recvExactly(active, 10) == b"still open"
    assert "idle for 0.5 seconds" in netd.log()


SILENCE = 0.5
"""
Seconds a UDP client waits to conclude that no (more) answer is coming.
"""

needsRoot = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true", reason="binding a port below 1024 or a raw socket needs root"
)


def received(sock: socket.socket, wait: float = SILENCE) -> list[bytes]:
    """
    Every datagram that arrives until none comes for C{wait} seconds.
    """
    got = []
    sock.settimeout(wait)
    while True:
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            return got


def serviceCounters(netd: Any, name: str) -> dict[str, int]:
    """
    The counters of service C{name}, from the control API.
    """
    status, report = netd.api("GET", f"/services/{name}")
    assert status == 200
    return report["counters"]  # type: ignore[no-any-return]


@needsRoot
def test_udpEchoIgnoresPrivilegedSourcePorts(startNetd: Any) -> None:
    """
    A datagram from a source port below 1024 (bound by a Python socket, and by socat) gets no echo and is counted; one from an ephemeral port does.
    """
    netd = startNetd(echoService("echo", ["udp:0:interface=127.0.0.1"]))
    address = netd.address("echo", "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as low:
        low.bind(("127.0.0.1", 0 if os.geteuid() else 999))
        low.sendto(b"from 999", address)
        assert received(low) == []
    assert socat(["-", f"UDP:{address[0]}:{address[1]},sourceport=998"], b"from 998", timeout=SILENCE) == b""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as high:
        high.bind(("127.0.0.1", 0))
        high.sendto(b"ephemeral", address)
        assert received(high) == [b"ephemeral"]
    counters = serviceCounters(netd, "echo")
    assert (counters["datagrams_received"], counters["datagrams_low_source_port"], counters["datagrams_sent"]) == (
        3,
        2,
        1,
    )
    assert "not echoing a datagram from 127.0.0.1:999" in waitForLog(netd, "not echoing a datagram", timeout=IO_TIMEOUT)


def udpPacket(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """
    A UDP header and payload from C{source} to C{destination} (checksum 0: none, allowed over IPv4).
    """
    return struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload


@needsRoot
def test_spoofedEchoToEchoLoopIsCut(startNetd: Any) -> None:
    """
    A datagram forged from one echo service's UDP port to another's (a raw socket) is dropped by the one it reaches, counted: no ping-pong between them.
    """
    netd = startNetd(echoService("a", ["udp:0:interface=127.0.0.1"]) + echoService("b", ["udp:0:interface=127.0.0.1"]))
    a, b = netd.address("a", "udp"), netd.address("b", "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.sendto(udpPacket(b, a, b"ping-pong"), (a[0], 0))
    time.sleep(SILENCE)
    countersA, countersB = serviceCounters(netd, "a"), serviceCounters(netd, "b")
    assert (countersA.get("datagrams_sent", 0), countersB.get("datagrams_received", 0)) == (0, 0)
    assert (countersA["datagrams_received"], countersA["datagrams_from_own_port"]) == (1, 1)


def test_udpFloodFromOneSourceIsRateLimited(startNetd: Any) -> None:
    """
    With rate = 100 and burst = 50, a flood of 2000 datagrams from one source gets about burst plus rate a second echoed, the rest counted; another source is still answered.
    """
    netd = startNetd(echoService("echo", ["udp:0:interface=127.0.0.1"], rate=100, burst=50))
    address = netd.address("echo", "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        flood.bind(("127.0.0.1", 0))
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        started = time.monotonic()
        for i in range(2000):
            flood.sendto(b"%d" % i, address)
        elapsed = time.monotonic() - started
        answers = received(flood)
    assert 50 <= len(answers) <= 50 + 100 * (elapsed + SILENCE) + 10, (len(answers), elapsed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.2", 0))
        other.sendto(b"other source", address)
        assert received(other) == [b"other source"]
    counters = serviceCounters(netd, "echo")
    assert counters["datagrams_rate_limited"] > 0
    assert counters["datagrams_rate_limited"] + counters["datagrams_sent"] == counters["datagrams_received"]
    assert counters["datagrams_sent"] == len(answers) + 1
