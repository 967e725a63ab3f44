"""
The PROXY protocol in front of the core's stream stack (L{netd.stream.proxyheader}),
its two header formats (L{netd.stream.proxyformat}, with golden well-formed and
malformed headers),
and the C{haproxy:} listen strings, in memory with a fake clock.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Literal

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.config.listen import ListenAddress
from netd.config.options import InvalidValue
from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.stream.guard import ConnectionLimiter
from netd.stream.proxyformat import HeaderReader, MalformedHeader, encodeProxyHeader
from netd.stream.proxyheader import (
    DEFAULT_TRUSTED,
    UNTRUSTED_LOG_INTERVAL,
    ProxyHeaderFactory,
    ProxyHeaderProtocol,
    TrustedSources,
    describePeer,
)
from netd.testing.memory import PEER, makeStreamStack, proxyHeaderV1, proxyHeaderV2


@implementer(IFrameReceiver)
class PeerRecorder:
    """
    A receiver that notes the peer it sees when the connection opens, and the frames.
    """

    peer: IAddress | None = None
    made = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def connectionMade(self, connection: IFrameConnection) -> None:
        self.made = True
        self.peer = connection.getPeer()

    def frameReceived(self, frame: bytes) -> None:
        self.frames.append(frame)

    def connectionLost(self, reason: Failure) -> None:
        pass


@implementer(IStreamHandler)
class Handler:
    """
    Hands out L{PeerRecorder}s.
    """

    def __init__(self) -> None:
        self.receivers: list[PeerRecorder] = []

    def newConnection(self) -> PeerRecorder:
        self.receivers.append(PeerRecorder())
        return self.receivers[-1]


def started(handler: Handler) -> list[PeerRecorder]:
    """
    The receivers whose connection has started (their connectionMade was called).
    """
    return [r for r in handler.receivers if r.made]


def accept(idleTimeout: float = 5) -> tuple[ProxyHeaderProtocol, StringTransport, Handler, Counters, Clock]:
    """
    One accepted connection on a PROXY-wrapped stack, no header read yet.
    """
    handler, counters, clock = Handler(), Counters(), Clock()
    limiter = makeStreamStack(handler, "raw", idleTimeout=idleTimeout, clock=clock, counters=counters)
    protocol = ProxyHeaderFactory(limiter).buildProtocol(PEER)
    assert isinstance(protocol, ProxyHeaderProtocol)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport, handler, counters, clock


@pytest.mark.parametrize("header", [proxyHeaderV1, proxyHeaderV2], ids=["v1", "v2"])
@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_innerStackStartsWithTheClientAddressFromTheHeader(header: object, chunk: int) -> None:
    """
    The plugin's receiver starts only once the header (v1 or v2, whole or in pieces) is read, and sees the client's address.
    """
    protocol, transport, handler, counters, _ = accept()
    data = header("10.1.2.3", 5555)  # type: ignore[operator]
    pieces = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces[:-1]:
        protocol.dataReceived(piece)
    assert started(handler) == []
    protocol.dataReceived(pieces[-1] + b"payload")
    [receiver] = started(handler)
    assert receiver.peer == IPv4Address("TCP", "10.1.2.3", 5555)
    assert b"".join(receiver.frames) == b"payload"
    assert not transport.disconnecting
    assert counters.snapshot()["bytes_received"] == len(b"payload")


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(versionCommand: int, familyTransport: int, body: bytes, length: int | None = None) -> bytes:
    """
    A PROXY v2 header of these bytes (its length field C{len(body)} unless given).
    """
    return (
        V2_SIGNATURE
        + bytes([versionCommand, familyTransport])
        + struct.pack("!H", len(body) if length is None else length)
        + body
    )


IPV4_BODY = bytes([10, 1, 2, 3, 127, 0, 0, 1]) + struct.pack("!HH", 5555, 7007)
IPV6_BODY = (
    ipaddress.IPv6Address("2001:db8::5").packed + ipaddress.IPv6Address("::1").packed + struct.pack("!HH", 5555, 7007)
)

MALFORMED_V1 = {
    "v1-lf-only": b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2\n",
    "v1-double-space": b"PROXY TCP4  10.1.2.3 127.0.0.1 1 2\r\n",
    "v1-trailing-space": b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2 \r\n",
    "v1-missing-port": b"PROXY TCP4 10.1.2.3 127.0.0.1 1\r\n",
    "v1-extra-field": b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2 3\r\n",
    "v1-port-above-65535": b"PROXY TCP4 10.1.2.3 127.0.0.1 65536 2\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 10.1.2.3 127.0.0.1 01 2\r\n",
    "v1-negative-port": b"PROXY TCP4 10.1.2.3 127.0.0.1 -1 2\r\n",
    "v1-ipv6-under-tcp4": b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
    "v1-ipv4-under-tcp6": b"PROXY TCP6 10.1.2.3 ::1 1 2\r\n",
    "v1-octet-leading-zero": b"PROXY TCP4 010.1.2.3 127.0.0.1 1 2\r\n",
    "v1-ipv6-scope": b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    "v1-lowercase-protocol": b"PROXY tcp4 10.1.2.3 127.0.0.1 1 2\r\n",
    "v1-unknown-then-nul": b"PROXY UNKNOWN\x00\r\n",
    "v1-crlf-past-107": b"PROXY UNKNOWN " + b"a" * 93 + b"\r\n",
    "v1-lowercase-signature": b"proxy TCP4 10.1.2.3 127.0.0.1 1 2\r\n",
}
"""
Golden malformed version 1 headers (HAProxy's proxy-protocol.txt, section 2.1):
each refused.
"""

MALFORMED_V2 = {
    "v2-version-1": v2(0x11, 0x11, IPV4_BODY),
    "v2-command-2": v2(0x22, 0x11, IPV4_BODY),
    "v2-family-4": v2(0x21, 0x41, IPV4_BODY),
    "v2-transport-3": v2(0x21, 0x13, IPV4_BODY),
    "v2-short-ipv4": v2(0x21, 0x11, IPV4_BODY[:8]),
    "v2-short-ipv6": v2(0x21, 0x21, IPV4_BODY),
}
"""
Golden malformed version 2 headers (section 2.2): each refused.
"""

V1_GOLDEN = [
    pytest.param(
        b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 7007\r\n",
        IPv4Address("TCP", "10.1.2.3", 5555),
        IPv4Address("TCP", "127.0.0.1", 7007),
        id="tcp4",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::5 ::1 0 65535\r\n",
        IPv6Address("TCP", "2001:db8::5", 0),
        IPv6Address("TCP", "::1", 65535),
        id="tcp6",
    ),
    pytest.param(
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:5 ::1 1 2\r\n",
        IPv6Address("TCP", "2001:db8::5", 1),
        IPv6Address("TCP", "::1", 2),
        id="tcp6-long-form",
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", None, None, id="unknown"),
    pytest.param(
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None, None, id="unknown-with-addresses"
    ),
    pytest.param(
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        IPv6Address("TCP", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        IPv6Address("TCP", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        id="longest",
    ),
]

V2_GOLDEN = [
    pytest.param(
        v2(0x21, 0x11, IPV4_BODY),
        IPv4Address("TCP", "10.1.2.3", 5555),
        IPv4Address("TCP", "127.0.0.1", 7007),
        id="tcp4",
    ),
    pytest.param(
        v2(0x21, 0x12, IPV4_BODY),
        IPv4Address("UDP", "10.1.2.3", 5555),
        IPv4Address("UDP", "127.0.0.1", 7007),
        id="udp4",
    ),
    pytest.param(
        v2(0x21, 0x21, IPV6_BODY), IPv6Address("TCP", "2001:db8::5", 5555), IPv6Address("TCP", "::1", 7007), id="tcp6"
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BODY + b"\x04\x00\x02ab"),
        IPv4Address("TCP", "10.1.2.3", 5555),
        IPv4Address("TCP", "127.0.0.1", 7007),
        id="tcp4-with-tlv",
    ),
    pytest.param(
        v2(0x21, 0x31, b"/run/a".ljust(108, b"\x00") + b"/run/b".ljust(108, b"\x00")),
        UNIXAddress(b"/run/a"),
        UNIXAddress(b"/run/b"),
        id="unix",
    ),
    pytest.param(v2(0x20, 0x00, b""), None, None, id="local"),
    pytest.param(v2(0x20, 0x11, IPV4_BODY), None, None, id="local-with-addresses"),
    pytest.param(v2(0x21, 0x00, b"\x00" * 4), None, None, id="unspec"),
]


@pytest.mark.parametrize(("header", "source", "destination"), V1_GOLDEN + V2_GOLDEN)
@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_headerReaderGolden(header: bytes, source: IAddress | None, destination: IAddress | None, chunk: int) -> None:
    """
    Well-formed v1 and v2 headers (whole or in pieces) give the addresses they name, or none, and the bytes that followed.
    """
    reader = HeaderReader()
    data = header + b"payload"
    pieces = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    result = None
    for piece in pieces:
        result = reader.feed(piece) if result is None else (result[0], result[1] + piece)
    assert result is not None
    info, rest = result
    assert (info.source, info.destination, rest) == (source, destination, b"payload")


ENCODED = [
    pytest.param(
        "v1",
        IPv4Address("TCP", "10.1.2.3", 5555),
        IPv4Address("TCP", "127.0.0.1", 7007),
        b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 7007\r\n",
        id="v1-tcp4",
    ),
    pytest.param(
        "v1",
        IPv6Address("TCP", "2001:db8::5", 0),
        IPv6Address("TCP", "::1", 65535),
        b"PROXY TCP6 2001:db8::5 ::1 0 65535\r\n",
        id="v1-tcp6",
    ),
    pytest.param("v1", UNIXAddress(b"/run/a"), UNIXAddress(b"/run/b"), b"PROXY UNKNOWN\r\n", id="v1-unix"),
    pytest.param(
        "v2",
        IPv4Address("TCP", "10.1.2.3", 5555),
        IPv4Address("TCP", "127.0.0.1", 7007),
        v2(0x21, 0x11, IPV4_BODY),
        id="v2-tcp4",
    ),
    pytest.param(
        "v2",
        IPv6Address("TCP", "2001:db8::5", 5555),
        IPv6Address("TCP", "::1", 7007),
        v2(0x21, 0x21, IPV6_BODY),
        id="v2-tcp6",
    ),
    pytest.param("v2", UNIXAddress(b"/run/a"), UNIXAddress(b"/run/b"), v2(0x20, 0x00, b""), id="v2-unix-local"),
    pytest.param(
        "v2",
        IPv4Address("TCP", "10.1.2.3", 5555),
        IPv6Address("TCP", "::1", 7007),
        v2(0x20, 0x00, b""),
        id="v2-mixed-families-local",
    ),
]


@pytest.mark.parametrize(("version", "source", "destination", "expected"), ENCODED)
def test_encodeProxyHeaderGoldenAndRoundTrip(
    version: Literal["v1", "v2"], source: IAddress, destination: IAddress, expected: bytes
) -> None:
    """
    The encoder writes the specification's bytes (the parser's golden
    headers), and the parser reads them back as the same addresses, or as
    none for UNKNOWN and LOCAL.
    """
    header = encodeProxyHeader(version, source, destination)
    assert header == expected
    result = HeaderReader().feed(header + b"payload")
    assert result is not None
    info, rest = result
    named = isinstance(source, IPv4Address | IPv6Address) and type(source) is type(destination)
    assert (info.source, info.destination, rest) == ((source, destination) if named else (None, None)) + (b"payload",)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_encodeProxyHeaderDropsTheIPv6Scope(version: Literal["v1", "v2"]) -> None:
    """
    A link-local client's scope (C{%eth0}) has no place in either header: the addresses go without it.
    """
    source, destination = IPv6Address("TCP", "fe80::5%eth0", 1), IPv6Address("TCP", "fe80::1%eth0", 2)
    result = HeaderReader().feed(encodeProxyHeader(version, source, destination))
    assert result is not None
    info, _ = result
    assert (info.source, info.destination) == (IPv6Address("TCP", "fe80::5", 1), IPv6Address("TCP", "fe80::1", 2))


@pytest.mark.parametrize("header", [*MALFORMED_V1.values(), *MALFORMED_V2.values()], ids=[*MALFORMED_V1, *MALFORMED_V2])
def test_headerReaderRefusesGoldenMalformed(header: bytes) -> None:
    """
    Each golden malformed header raises MalformedHeader, fed whole or byte by byte, at the latest when its last byte arrives.
    """
    with pytest.raises(MalformedHeader):
        HeaderReader().feed(header)
    reader = HeaderReader()
    with pytest.raises(MalformedHeader):
        for i in range(len(header)):
            reader.feed(header[i : i + 1])


def test_headerReaderBoundsWhatItHolds() -> None:
    """
    A v1 header without CRLF is refused once 107 bytes have come, without waiting for more.
    """
    reader = HeaderReader()
    assert reader.feed(b"PROXY UNKNOWN " + b"a" * 92) is None
    with pytest.raises(MalformedHeader):
        reader.feed(b"a")


def test_localHeaderKeepsTheSocketPeer() -> None:
    """
    A v2 LOCAL header (a load balancer's health check) starts the inner stack with the socket's own peer.
    """
    protocol, transport, handler, counters, _ = accept()
    protocol.dataReceived(v2(0x20, 0x00, b""))
    [receiver] = started(handler)
    assert receiver.peer == PEER
    assert counters["proxy_headers_rejected"] == 0


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 10.1.2.3 127.0.0.1 x 2\r\n",
        b"PROXY TCP4 client.example 127.0.0.1 1 2\r\n",
        b"PROXY TCP9 10.1.2.3 127.0.0.1 1 2\r\n",
        b"PROXY " + b"x" * 120,
        *MALFORMED_V1.values(),
        *MALFORMED_V2.values(),
    ],
    ids=["no-header", "bad-port", "not-an-address", "bad-protocol", "too-long", *MALFORMED_V1, *MALFORMED_V2],
)
def test_malformedHeaderClosesCountsAndLogs(data: bytes) -> None:
    """
    A missing or malformed PROXY header closes the connection before the plugin sees it, counted and logged as a warning.
    """
    protocol, transport, handler, counters, _ = accept()
    with capturedLogs() as events:
        protocol.dataReceived(data)
    assert transport.disconnecting
    assert started(handler) == []
    assert counters["proxy_headers_rejected"] == 1
    [event] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert event["peer"] == "127.0.0.1:40000"
    protocol.connectionLost(Failure(ConnectionDone()))


def test_noHeaderWithinIdleTimeoutCloses() -> None:
    """
    A connection that sends no header within idle_timeout seconds is closed and counted; none of it reaches the plugin.
    """
    protocol, transport, handler, counters, clock = accept(idleTimeout=5)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert counters["proxy_headers_rejected"] == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == [] and started(handler) == []


def test_headerCancelsItsTimer() -> None:
    """
    Once the header is read its timer is gone; only the connection's own idle timer is left.
    """
    protocol, _, _, _, clock = accept(idleTimeout=5)
    protocol.dataReceived(proxyHeaderV1("10.1.2.3", 5555))
    assert len(clock.getDelayedCalls()) == 1


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("haproxy:", "lacks an endpoint"),
        ("haproxy:tcp:99999", "out of range"),
        ("haproxy:tcp:0:interface=example.com", "not an IP address"),
        ("haproxy:udp:53", "needs a stream endpoint"),
    ],
)
def test_badProxiedListenStrings(text: str, error: str) -> None:
    """
    A haproxy: listen string checks the endpoint it wraps, with the same errors as without it.
    """
    with pytest.raises(InvalidValue, match=error):
        ListenAddress.fromConfig(text)


def test_proxiedListenStringAccepted() -> None:
    """
    haproxy: in front of a tcp endpoint is a valid stream listen string.
    """
    assert ListenAddress.fromConfig("haproxy:tcp:0:interface=127.0.0.1").transport == "stream"


def test_describePeer() -> None:
    """
    Peers are written host:port, IPv6 hosts in brackets.
    """
    assert describePeer(IPv4Address("TCP", "10.1.2.3", 5555)) == "10.1.2.3:5555"
    assert describePeer(IPv6Address("TCP", "::1", 53)) == "[::1]:53"
    assert describePeer(UNIXAddress(None)) == "unix"


def proxied(
    maxConnections: int = 1024, trusted: tuple[str, ...] = DEFAULT_TRUSTED
) -> tuple[ProxyHeaderFactory, ConnectionLimiter, Handler, Counters, Clock]:
    """
    A PROXY-wrapped stack trusting C{trusted}, on a fake clock.
    """
    handler, counters, clock = Handler(), Counters(), Clock()
    limiter = makeStreamStack(
        handler, "raw", maxConnections=maxConnections, idleTimeout=5, clock=clock, counters=counters
    )
    return ProxyHeaderFactory(limiter, TrustedSources.fromConfig(trusted)), limiter, handler, counters, clock


def open_(factory: ProxyHeaderFactory, peer: IAddress = PEER) -> tuple[ProxyHeaderProtocol, StringTransport] | None:
    """
    Accept a connection from C{peer}, as a listening port does; L{None} when refused.
    """
    protocol = factory.buildProtocol(peer)
    if protocol is None:
        return None
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.mark.parametrize(
    ("trusted", "peer", "expected"),
    [
        (DEFAULT_TRUSTED, IPv4Address("TCP", "127.0.0.1", 1), True),
        (DEFAULT_TRUSTED, IPv4Address("TCP", "127.9.9.9", 1), True),
        (DEFAULT_TRUSTED, IPv6Address("TCP", "::1", 1), True),
        (DEFAULT_TRUSTED, IPv6Address("TCP", "::ffff:127.0.0.1", 1), True),
        (DEFAULT_TRUSTED, UNIXAddress(None), True),
        (DEFAULT_TRUSTED, IPv4Address("TCP", "192.0.2.1", 1), False),
        (DEFAULT_TRUSTED, IPv6Address("TCP", "2001:db8::1", 1), False),
        (("10.0.0.0/8",), IPv4Address("TCP", "10.1.2.3", 1), True),
        (("10.0.0.0/8",), IPv4Address("TCP", "127.0.0.1", 1), False),
        (("10.0.0.0/8",), UNIXAddress(None), False),
        (("192.0.2.7",), IPv6Address("TCP", "::ffff:192.0.2.7", 1), True),
        ((), IPv4Address("TCP", "127.0.0.1", 1), False),
    ],
)
def test_trustedSources(trusted: tuple[str, ...], peer: IAddress, expected: bool) -> None:
    """
    A peer is trusted when its address (IPv4-mapped taken as IPv4) is in a listed network, or it is a unix socket peer and unix: is listed.
    """
    assert TrustedSources.fromConfig(trusted).trusts(peer) is expected


def test_untrustedPeerClosedOnAcceptCountedAndLogged() -> None:
    """
    A connection from a peer not in proxy_trusted is refused before a byte is read: no protocol, counted, logged, no place taken.
    """
    factory, limiter, handler, counters, _ = proxied(trusted=("127.0.0.2/32",))
    with capturedLogs() as events:
        assert open_(factory, IPv4Address("TCP", "127.0.0.1", 4444)) is None
    assert counters["proxy_headers_untrusted"] == 1
    assert counters["connections_accepted"] == 0 and limiter.openConnections() == 0 and handler.receivers == []
    [event] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert (event["peer"], event["count"]) == ("127.0.0.1:4444", 1)
    assert open_(factory, IPv4Address("TCP", "127.0.0.2", 4444)) is not None


def test_untrustedPeersLoggedAtABoundedRate() -> None:
    """
    A flood of untrusted peers logs one line per interval, each with the count since the previous line; every one is counted.
    """
    factory, _, _, counters, clock = proxied(trusted=("10.0.0.0/8",))
    with capturedLogs() as events:
        for _ in range(100):
            assert open_(factory) is None
        clock.advance(UNTRUSTED_LOG_INTERVAL - 0.1)
        assert open_(factory) is None
        clock.advance(0.1)
        assert open_(factory) is None
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [e["count"] for e in warnings] == [1, 101]
    assert counters["proxy_headers_untrusted"] == 102


def test_waitingForTheHeaderCountsTowardsMaxConnections() -> None:
    """
    A connection still waiting for its header holds a place under max_connections: one more is refused, and the place frees when it closes.
    """
    factory, limiter, _, counters, _ = proxied(maxConnections=1)
    first = open_(factory)
    assert first is not None
    assert limiter.openConnections() == 1
    assert open_(factory) is None
    assert counters["connections_refused"] == 1
    first[0].dataReceived(proxyHeaderV1("10.1.2.3", 5555))
    assert limiter.openConnections() == 1
    assert open_(factory) is None
    first[0].connectionLost(Failure(ConnectionDone()))
    assert limiter.openConnections() == 0
    assert open_(factory) is not None


def test_headerHandsThePlaceToTheGuardQuietly() -> None:
    """
    When the header arrives the connection's guard takes its place without a drain firing or an "accepting again" line.
    """
    factory, limiter, _, _, _ = proxied(maxConnections=1)
    opened = open_(factory)
    assert opened is not None
    assert open_(factory) is None
    drained = limiter.whenDrained()
    with capturedLogs() as events:
        opened[0].dataReceived(proxyHeaderV1("10.1.2.3", 5555))
    assert not drained.called
    assert [e for e in events if "accepting connections again" in str(e.get("log_format"))] == []


def test_drainWaitsForAndAbortsConnectionsWithoutHeader() -> None:
    """
    The drain at shutdown waits for a connection still waiting for its header, and aborting all closes it.
    """
    factory, limiter, handler, _, _ = proxied()
    opened = open_(factory)
    assert opened is not None
    protocol, transport = opened
    drained = limiter.whenDrained()
    assert not drained.called
    limiter.abortAll()
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert drained.called and started(handler) == []


def test_faultsChangedWhileWaitingForTheHeader() -> None:
    """
    Traffic sums and a change of faults reach a connection waiting for its header without error.
    """
    factory, limiter, _, counters, _ = proxied()
    assert open_(factory) is not None
    assert counters.snapshot()["bytes_received"] == 0
    limiter._faultsChanged()


def test_connectionWaitingForItsHeaderIsEvictedFirst() -> None:
    """
    At max_connections with eviction on, a connection still waiting for its header is the stalest: it is closed and counted to admit a new one.
    """
    factory, limiter, _, counters, clock = proxied(maxConnections=2)
    limiter.evict = True
    talking = open_(factory)
    assert talking is not None
    talking[0].dataReceived(proxyHeaderV1("10.1.2.3", 5555) + b"hello")
    clock.advance(1)
    waiting = open_(factory)
    assert waiting is not None
    clock.advance(1)
    assert open_(factory) is not None
    assert counters["connections_evicted"] == 1
    assert waiting[1].disconnecting
    assert not talking[1].disconnecting
