"""
Behind a load balancer, end to end: real PROXY protocol headers (v1 text, v2
binary) sent over real sockets to netd's haproxy: listeners, and the lameduck
period after SIGTERM while /ready already answers 503.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from netd.testing.harness import NetdServer
from netd.testing.memory import proxyHeaderV1, proxyHeaderV2

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, recvUntilClosed, waitForLog
from .dns_upstream import answerRcode, buildQuery

pytestmark = pytest.mark.integration

PROXIED = "haproxy:tcp:0:interface=127.0.0.1"
HEADERS: list[Callable[..., bytes]] = [proxyHeaderV1, proxyHeaderV2]


def readyStatus(netd: NetdServer) -> int:
    """
    The status /ready answers with.
    """
    try:
        with urllib.request.urlopen(netd.adminURL("/ready"), timeout=IO_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code)


@pytest.mark.parametrize("header", HEADERS, ids=["v1", "v2"])
def test_echoBehindProxySeesTheClientAddress(startNetd: Any, header: Callable[..., bytes]) -> None:
    """
    Through a haproxy: listener an echo client's bytes after the header are echoed, and the debug connection lines name the client from the header.
    """
    netd: NetdServer = startNetd('[daemon]\nlog_level = "debug"\n\n' + echoService("echo", [PROXIED]))
    with connect(netd.address("echo")) as client:
        client.sendall(header("10.1.2.3", 5555) + b"hello")
        assert recvExactly(client, 5) == b"hello"
    line = waitForLog(netd, "connection from 10.1.2.3:5555 closed", timeout=IO_TIMEOUT)
    assert "connection opened from 10.1.2.3:5555" in netd.log()
    assert "5 bytes in, 5 bytes out" in line


def test_malformedHeaderClosesTheConnection(startNetd: Any) -> None:
    """
    A connection whose PROXY header is malformed is closed without an echo and logged as a warning naming the real peer.
    """
    netd: NetdServer = startNetd(echoService("echo", [PROXIED]))
    with connect(netd.address("echo")) as client:
        client.sendall(b"PROXY TCP4 10.1.2.3 127.0.0.1 nope 7007\r\nhello")
        assert recvUntilClosed(client) == b""
    waitForLog(netd, "malformed PROXY header", timeout=IO_TIMEOUT)
    assert "closing connection from 127.0.0.1:" in netd.log()


def dnsProxied(startNetd: Any) -> NetdServer:
    """
    A dns-proxy on a haproxy: TCP listener allowing only 10.0.0.0/8, answering netd.test itself, logging queries.
    """
    config = f"""\
[[services]]
name = "dns"
plugin = "dns-proxy"
listen = {json.dumps([PROXIED])}
upstreams = ["udp:127.0.0.1:9"]
allow = ["10.0.0.0/8"]
log_queries = true
timeout = 0.5
deadline = 1.0

[services.records]
"netd.test" = {{ A = ["127.0.0.1"] }}
"""
    netd: NetdServer = startNetd(config)
    return netd


def askTCP(netd: NetdServer, header: bytes) -> int | None:
    """
    One query over TCP after a PROXY header; the answer's RCODE.
    """
    query = buildQuery("netd.test")
    with connect(netd.address("dns")) as client:
        client.sendall(header + struct.pack("!H", len(query)) + query)
        (size,) = struct.unpack("!H", recvExactly(client, 2))
        return answerRcode(query, recvExactly(client, size))


@pytest.mark.parametrize("header", HEADERS, ids=["v1", "v2"])
def test_dnsAllowChecksTheProxiedClient(startNetd: Any, header: Callable[..., bytes]) -> None:
    """
    The DNS proxy's allow list checks the client named by the PROXY header: 10.1.2.3 is answered, 192.0.2.9 is REFUSED, and log_queries names them.
    """
    netd = dnsProxied(startNetd)
    assert askTCP(netd, header("10.1.2.3", 5555)) == 0
    assert askTCP(netd, header("192.0.2.9", 5555)) == 5
    waitForLog(netd, "192.0.2.9", timeout=IO_TIMEOUT)
    assert "10.1.2.3" in netd.log()


def test_tlsBehindProxy(startNetd: Any) -> None:
    """
    On a TLS service the PROXY header comes before the ClientHello; the handshake and echo then work as without it.
    """
    netd: NetdServer = startNetd(
        '[daemon]\nlog_level = "debug"\n\n[[services]]\nname = "tls"\nplugin = "tls-echo"\n'
        f"listen = {json.dumps([PROXIED])}\n"
        'tls = { certificate = "auto" }\n'
    )
    assert netd.stateDir is not None
    context = ssl.create_default_context(cafile=str(netd.stateDir / "tls" / "ca.pem"))
    raw = socket.create_connection(netd.address("tls"), timeout=IO_TIMEOUT)
    raw.sendall(proxyHeaderV2("10.9.8.7", 4444))
    with context.wrap_socket(raw, server_hostname="localhost") as client:
        client.sendall(b"ping\n")
        assert recvExactly(client, 5) == b"ping\n"
    waitForLog(netd, "connection from 10.9.8.7:4444 closed", timeout=IO_TIMEOUT)


def test_lameduckKeepsServingAfterSigterm(startNetd: Any) -> None:
    """
    With lameduck = 1, after SIGTERM /ready answers 503 while the echo port still accepts and serves new connections; then it closes and netd exits 0.
    """
    netd: NetdServer = startNetd(
        '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\nlameduck = 1\n\n'
        + echoService("echo", ["tcp:0:interface=127.0.0.1"])
    )
    address = netd.address("echo")
    signalled = time.monotonic()
    netd.process.send_signal(signal.SIGTERM)
    deadline = signalled + IO_TIMEOUT
    while readyStatus(netd) != 503:
        assert time.monotonic() < deadline, "/ready did not turn 503 after SIGTERM"
        time.sleep(0.02)
    assert time.monotonic() - signalled < 0.8, "/ready took too long to turn 503 for this test to check lameduck"
    with connect(address) as client:
        client.sendall(b"still here")
        assert recvExactly(client, 10) == b"still here"
    assert netd.process.wait(timeout=30) == 0
    assert time.monotonic() - signalled >= 1.0
    with pytest.raises(ConnectionRefusedError):
        connect(address).close()
    assert "serving for 1.0 more seconds" in netd.log()


def connectFrom(source: str, address: tuple[str, int]) -> socket.socket:
    """
    A TCP connection to C{address} from the loopback address C{source}.
    """
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(IO_TIMEOUT)
    client.bind((source, 0))
    client.connect(address)
    return client


def answerOrClose(client: socket.socket, data: bytes) -> bytes:
    """
    Send C{data}, then everything read until the peer closes (a reset, as
    from a socket closed with unread bytes, counting as a close).
    """
    try:
        client.sendall(data)
        return recvUntilClosed(client)
    except ConnectionResetError:
        return b""


UNTRUSTING_DNS = """\
[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["haproxy:tcp:0:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:9"]
allow = ["192.0.2.0/24"]
proxy_trusted = ["127.0.0.2/32"]


[services.records]
"netd.test" = { A = ["127.0.0.1"] }
"""


@pytest.mark.parametrize("header", HEADERS, ids=["v1", "v2"])
def test_forgedHeaderFromAnUntrustedSourceIsClosed(startNetd: Any, header: Callable[..., bytes]) -> None:
    """
    With allow = 192.0.2.0/24 and proxy_trusted = 127.0.0.2 only, a header claiming 192.0.2.1 from 127.0.0.1 gets its connection closed without an answer, counted; the same header from 127.0.0.2 is believed and answered.
    """
    netd: NetdServer = startNetd(UNTRUSTING_DNS)
    query = buildQuery("netd.test")
    forged = header("192.0.2.1", 5555) + struct.pack("!H", len(query)) + query
    with connectFrom("127.0.0.1", netd.address("dns")) as client:
        assert answerOrClose(client, forged) == b""
    with connectFrom("127.0.0.2", netd.address("dns")) as client:
        client.sendall(forged)
        (size,) = struct.unpack("!H", recvExactly(client, 2))
        assert answerRcode(query, recvExactly(client, size)) == 0
    status, report = netd.api("GET", "/services/dns")
    assert status == 200
    assert report["counters"]["proxy_headers_untrusted"] == 1
    assert report["counters"]["connections_accepted"] == 1
    line = waitForLog(netd, "not a trusted source of PROXY headers", timeout=IO_TIMEOUT)
    assert "127.0.0.1:" in line


def test_connectionsWaitingForTheirHeaderCountAndAreDrained(startNetd: Any) -> None:
    """
    A connection still waiting for its PROXY header holds the only place of max_connections = 1 (with eviction off, the next is refused), and SIGTERM's drain waits shutdown_timeout for it, then closes it.
    """
    netd: NetdServer = startNetd(
        "[daemon]\nshutdown_timeout = 1\n\n" + echoService("echo", [PROXIED], max_connections=1, evict_idle=False)
    )
    address = netd.address("echo")
    with connect(address) as waiting:
        openDeadline = time.monotonic() + IO_TIMEOUT
        while netd.api("GET", "/services/echo")[1]["connections_open"] != 1:
            assert time.monotonic() < openDeadline, "the waiting connection was never counted as open"
            time.sleep(0.02)
        with connect(address) as refused:
            assert answerOrClose(refused, proxyHeaderV1("10.1.2.3", 5555) + b"hello") == b""
        assert netd.api("GET", "/services/echo")[1]["counters"]["connections_refused"] == 1
        signalled = time.monotonic()
        netd.process.send_signal(signal.SIGTERM)
        assert recvUntilClosed(waiting) == b""
        closedAfter = time.monotonic() - signalled
    assert netd.process.wait(timeout=30) == 0
    assert 0.8 <= closedAfter < 5, closedAfter
    assert "waiting up to 1.0 seconds for 1 open connection" in netd.log()
    assert "closing 1 connection still open after 1.0 seconds" in netd.log()
