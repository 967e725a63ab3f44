"""
The PROXY protocol in front of the core's stream stack (L{netd.proxyheader}),
and the C{haproxy:} listen strings, in memory with a fake clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from zope.interface import implementer

from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.listen import ListenAddress
from netd.metrics import Counters
from netd.options import InvalidValue
from netd.proxyheader import ProxyHeaderFactory, ProxyHeaderProtocol, describePeer
from netd.testing import PEER, makeStreamStack, proxyHeaderV1, proxyHeaderV2


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


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 10.1.2.3 127.0.0.1 x 2\r\n",
        b"PROXY TCP4 client.example 127.0.0.1 1 2\r\n",
        b"PROXY TCP9 10.1.2.3 127.0.0.1 1 2\r\n",
        b"PROXY " + b"x" * 120,
    ],
    ids=["no-header", "bad-port", "not-an-address", "bad-protocol", "too-long"],
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
    from twisted.internet.address import IPv6Address, UNIXAddress

    assert describePeer(IPv6Address("TCP", "::1", 53)) == "[::1]:53"
    assert describePeer(UNIXAddress(None)) == "unix"
