"""
Tests for outgoing TCP connections (C{connectTCP}) on real loopback sockets,
driven by private reactors turned one iteration at a time (every wait
bounded): what Twisted's connector and client transport promise (the
factory's calls and their order, the errors, the timeout, C{stopConnecting},
connecting again, bind addresses, host names, half-close, reset, flow
control), on the uvloop reactor's fast path (L{netd.reactors.uvclient}),
with its connections' idle time read from C{TCP_INFO} or from their own
clock, on its fallback (Twisted's connector, where L{uvclient.CANARY}
fails), and on netd's epoll reactor; then what only the fast path does.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer, interfaces, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
    UserError,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.reactors import tcpinfo, uvclient
from netd.reactors.shared import IMeteredTransport
from netd.reactors.uv import UvloopReactor
from netd.reactors.uvclient import ClientConnection, ClockedClientConnection
from netd.testing.harness import unavailable

from .privatereactor import privateClockedUvloopReactor, privateReactor, privateUvloopReactor, spin, turn
from .test_reactor import HalfCloseRecorder, PushProducer, Recorder, drain, readable, untilEOF


@pytest.fixture(params=["uvloop", "uvloop-clocked", "uvloop-twisted", "netd"])
def reactor(request: pytest.FixtureRequest) -> Iterator[Any]:
    """
    A private reactor of each way netd connects: the uvloop reactor's fast
    path (its connections' idle time from C{TCP_INFO}, then from their own
    clock), the uvloop reactor with L{uvclient.CANARY} failed (Twisted's
    connector), and netd's epoll reactor.
    """
    if request.param == "uvloop-twisted":
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(uvclient.CANARY, "_alive", False)
            yield from privateUvloopReactor()
    elif request.param == "netd":
        yield from privateReactor()
    else:
        yield from (privateUvloopReactor if request.param == "uvloop" else privateClockedUvloopReactor)()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """
    A listening loopback socket, accepted from by hand.
    """
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield listening


class Recording(ClientFactory):
    """
    A client factory that notes every call Twisted makes of it, in order,
    and builds protocols of one type.
    """

    def __init__(self, protocolType: type[Recorder] = Recorder) -> None:
        self.protocolType = protocolType
        self.calls: list[Any] = []
        self.made: list[Any] = []

    def doStart(self) -> None:
        self.calls.append("doStart")

    def doStop(self) -> None:
        self.calls.append("doStop")

    def startedConnecting(self, connector: Any) -> None:
        self.calls.append("startedConnecting")

    def buildProtocol(self, addr: Any) -> Protocol:
        self.calls.append("buildProtocol")
        self.made.append(self.protocolType())
        return self.made[-1]

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.calls.append(("clientConnectionFailed", reason.type))

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.calls.append(("clientConnectionLost", reason.type))


def connected(reactor: Any, listener: socket.socket, factory: Recording | None = None) -> tuple[Any, socket.socket]:
    """
    Connect C{reactor} to C{listener}; return the protocol built, once it
    has its connection, and the peer's socket.
    """
    factory = factory or Recording()
    reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory)
    spin(reactor, lambda: factory.made and factory.made[-1].transport is not None)
    peer, _ = listener.accept()
    peer.setblocking(False)
    return factory.made[-1], peer


def ended(factory: Recording) -> bool:
    """
    Whether the factory was stopped: the connector's last word.
    """
    return "doStop" in factory.calls


def test_roundTripAndTheFactorysCalls(reactor: Any, listener: socket.socket) -> None:
    """
    A connection made sends what is written and hands on what is read, and the factory is called as Twisted's connector calls it: started, started connecting, a protocol built, then the loss (ConnectionDone when the peer closes), then stopped.
    """
    factory = Recording()
    protocol, peer = connected(reactor, listener, factory)
    protocol.transport.write(b"ping")
    assert drain(reactor, peer, 4) == b"ping"
    peer.sendall(b"pong")
    spin(reactor, lambda: protocol.received == b"pong")
    peer.close()
    spin(reactor, lambda: ended(factory))
    assert protocol.lost[0].check(ConnectionDone)
    assert factory.calls == [
        "doStart",
        "startedConnecting",
        "buildProtocol",
        ("clientConnectionLost", ConnectionDone),
        "doStop",
    ]


def test_refusedFailsWithConnectionRefusedError(reactor: Any) -> None:
    """
    A connection refused fails the attempt with Twisted's ConnectionRefusedError, and stops the factory.
    """
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    factory = Recording()
    reactor.connectTCP("127.0.0.1", port, factory)
    spin(reactor, lambda: ended(factory))
    assert factory.calls == [
        "doStart",
        "startedConnecting",
        ("clientConnectionFailed", ConnectionRefusedError),
        "doStop",
    ]


def test_timeoutFailsWithTimeoutError(reactor: Any) -> None:
    """
    An attempt not answered within the timeout fails with Twisted's TimeoutError: a listener whose accept queue is full drops the SYN.
    """
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        factory = Recording()
        reactor.connectTCP("127.0.0.1", full.getsockname()[1], factory, timeout=0.2)
        spin(reactor, lambda: ended(factory))
        for filler in fillers:
            filler.close()
    assert factory.calls[2:] == [("clientConnectionFailed", TimeoutError), "doStop"]


def test_stopConnectingBeforeConnected(reactor: Any, listener: socket.socket) -> None:
    """
    stopConnecting before the connection is made fails the attempt with UserError, and no protocol is ever built.
    """
    factory = Recording()
    connector = reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory)
    connector.stopConnecting()
    assert factory.calls == ["doStart", "startedConnecting", ("clientConnectionFailed", UserError), "doStop"]
    for _ in range(5):
        turn(reactor)
    assert factory.made == []


def test_connectAgainAfterLoss(reactor: Any, listener: socket.socket) -> None:
    """
    A connector connects again once its connection is lost (as ReconnectingClientFactory has it), building a new protocol, without stopping the factory in between.
    """

    class Reconnecting(Recording):
        def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
            super().clientConnectionLost(connector, reason)
            if len(self.made) == 1:
                connector.connect()

    factory = Reconnecting()
    first, peer = connected(reactor, listener, factory)
    first.transport.loseConnection()
    spin(reactor, lambda: len(factory.made) == 2 and factory.made[1].transport is not None)
    again, _ = listener.accept()
    again.sendall(b"second")
    spin(reactor, lambda: factory.made[1].received == b"second")
    assert factory.calls[:6] == [
        "doStart",
        "startedConnecting",
        "buildProtocol",
        ("clientConnectionLost", ConnectionDone),
        "startedConnecting",
        "buildProtocol",
    ]
    peer.close()
    again.close()


def test_addresses(reactor: Any, listener: socket.socket) -> None:
    """
    getHost and getPeer are IPv4Address('TCP', ...) of each end.
    """
    protocol, peer = connected(reactor, listener)
    transport = protocol.transport
    assert transport.getPeer() == IPv4Address("TCP", "127.0.0.1", listener.getsockname()[1])
    assert transport.getHost() == IPv4Address("TCP", "127.0.0.1", peer.getpeername()[1])
    peer.close()


def test_ipv6Literal(reactor: Any) -> None:
    """
    An IPv6 literal connects, with IPv6Address('TCP', ...) for both ends.
    """
    try:
        listening = socket.socket(socket.AF_INET6)
        listening.bind(("::1", 0))
    except OSError:
        unavailable("no IPv6 loopback")
    with listening:
        listening.listen(1)
        factory = Recording()
        port = listening.getsockname()[1]
        connector = reactor.connectTCP("::1", port, factory)
        assert connector.getDestination() == IPv6Address("TCP", "::1", port)
        spin(reactor, lambda: factory.made and factory.made[0].transport is not None)
        transport = factory.made[0].transport
        assert transport.getPeer() == IPv6Address("TCP", "::1", port)
        assert isinstance(transport.getHost(), IPv6Address)
        peer, _ = listening.accept()
        peer.close()


def test_bindAddress(reactor: Any, listener: socket.socket) -> None:
    """
    The connection is made from the bind address given (a (host, port) tuple).
    """
    listener.close()
    with socket.socket() as wildcard:
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen(1)
        factory = Recording()
        reactor.connectTCP("127.0.0.1", wildcard.getsockname()[1], factory, bindAddress=("127.0.0.2", 0))
        spin(reactor, lambda: factory.made and factory.made[0].transport is not None)
        peer, (peerHost, _) = wildcard.accept()
        assert peerHost == "127.0.0.2"
        assert factory.made[0].transport.getHost().host == "127.0.0.2"
        peer.close()


def test_bindAddressInUseFailsWithConnectBindError(reactor: Any, listener: socket.socket) -> None:
    """
    A bind address that cannot be bound fails the attempt with ConnectBindError, after startedConnecting.
    """
    factory = Recording()
    reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory, bindAddress=listener.getsockname())
    spin(reactor, lambda: ended(factory))
    assert factory.calls == ["doStart", "startedConnecting", ("clientConnectionFailed", ConnectBindError), "doStop"]


@implementer(interfaces.IResolverSimple)
class Names:
    """
    A resolver that knows one name.
    """

    def getHostByName(self, name: str, timeout: Any = None) -> defer.Deferred[str]:
        if name == "upstream.test":
            return defer.succeed("127.0.0.1")
        return defer.fail(DNSLookupError(name))


def test_hostNamesResolvedByTheReactorsResolver(reactor: Any, listener: socket.socket) -> None:
    """
    A host name is resolved by the reactor's resolver, as Twisted's connectTCP resolves it, and connects to the address found.
    """
    reactor.installResolver(Names())
    factory = Recording()
    connector = reactor.connectTCP("upstream.test", listener.getsockname()[1], factory)
    assert connector.getDestination() == IPv4Address("TCP", "upstream.test", listener.getsockname()[1])
    spin(reactor, lambda: factory.made and factory.made[0].transport is not None)
    peer, _ = listener.accept()
    peer.close()


def test_unknownHostFailsWithDNSLookupError(reactor: Any) -> None:
    """
    A host name the resolver does not know fails the attempt with its DNSLookupError.
    """
    reactor.installResolver(Names())
    factory = Recording()
    reactor.connectTCP("nowhere.test", 80, factory)
    spin(reactor, lambda: ended(factory))
    assert factory.calls[2:] == [("clientConnectionFailed", DNSLookupError), "doStop"]


def test_halfCloseBothWays(reactor: Any, listener: socket.socket) -> None:
    """
    A peer's half-close reaches a half-closeable protocol as readConnectionLost, its answer still goes out, and loseWriteConnection shuts the write side (the peer reads EOF) and tells it writeConnectionLost.
    """
    protocol, peer = connected(reactor, listener, Recording(HalfCloseRecorder))
    peer.sendall(b"question")
    peer.shutdown(socket.SHUT_WR)
    spin(reactor, lambda: protocol.readLost)
    assert protocol.received == b"question" and protocol.lost == []
    protocol.transport.write(b"answer")
    protocol.transport.loseWriteConnection()
    assert untilEOF(reactor, peer) == b"answer"
    spin(reactor, lambda: protocol.writeLost)
    peer.close()


def test_abortConnectionResetsThePeer(reactor: Any, listener: socket.socket) -> None:
    """
    abortConnection resets the connection (the peer reads ECONNRESET) and the protocol is told ConnectionAborted.
    """
    factory = Recording()
    protocol, peer = connected(reactor, listener, factory)
    protocol.transport.abortConnection()
    spin(reactor, lambda: ended(factory))
    assert protocol.lost[0].check(ConnectionAborted)
    assert readable(peer)
    with pytest.raises(ConnectionResetError):
        peer.recv(10)
    peer.close()


def test_pauseProducingStopsReading(reactor: Any, listener: socket.socket) -> None:
    """
    While the transport is paused (pauseProducing), what the peer sends is not read; once resumed, it is.
    """
    protocol, peer = connected(reactor, listener)
    protocol.transport.pauseProducing()
    peer.sendall(b"held")
    for _ in range(5):
        turn(reactor)
    assert protocol.received == b""
    protocol.transport.resumeProducing()
    spin(reactor, lambda: protocol.received == b"held")
    peer.close()


def test_producerPausedWhilePeerDoesNotRead(reactor: Any, listener: socket.socket) -> None:
    """
    A push producer is paused while what is written outruns the peer, and resumed once the peer has read it.
    """
    protocol, peer = connected(reactor, listener)
    producer = PushProducer()
    protocol.transport.registerProducer(producer, True)
    chunk = b"x" * (1 << 20)
    written = 0
    while producer.events != ["pause"]:
        assert written < 256 << 20, "never paused"
        protocol.transport.write(chunk)
        written += len(chunk)
    received = 0
    while received < written:
        try:
            received += len(peer.recv(1 << 22))
        except BlockingIOError:
            turn(reactor)
    spin(reactor, lambda: producer.events == ["pause", "resume"])
    peer.close()


def test_shutdownLosesConnections(reactor: Any, listener: socket.socket) -> None:
    """
    At shutdown (disconnectAll) a connection made is lost, and its factory told.
    """
    factory = Recording()
    protocol, peer = connected(reactor, listener, factory)
    reactor.disconnectAll()
    spin(reactor, lambda: ended(factory))
    assert factory.calls[3][0] == "clientConnectionLost"
    peer.close()


# The fast path's own.


@pytest.fixture(params=["tcp-info", "clock"])
def uvloopReactor(request: pytest.FixtureRequest) -> Iterator[UvloopReactor]:
    """
    A private uvloop reactor, its connections' idle time from C{TCP_INFO}, then from their own clock.
    """
    yield from (privateUvloopReactor if request.param == "tcp-info" else privateClockedUvloopReactor)()


def test_fastPathServesOnUvloopsTransport(uvloopReactor: UvloopReactor, listener: socket.socket) -> None:
    """
    On the fast path the connector is netd's and the transport a ClientConnection on uvloop's transport (clocked where TCP_INFO cannot be read), metered, labelled as Twisted's client is, and among the reactor's streams until lost.
    """
    factory = Recording()
    protocol, peer = connected(uvloopReactor, listener, factory)
    transport = protocol.transport
    assert isinstance(transport, ClientConnection)
    assert isinstance(transport, ClockedClientConnection) == (not tcpinfo.CANARY.alive())
    assert IMeteredTransport.providedBy(transport) and interfaces.ITCPTransport.providedBy(transport)
    assert transport in uvloopReactor.streams
    transport.write(b"12345")
    peer.sendall(b"abc")
    spin(uvloopReactor, lambda: protocol.received == b"abc")
    assert (transport.bytesSent, transport.bytesReceived) == (5, 3)
    assert transport.logPrefix() == "Recorder,client"
    peer.close()
    spin(uvloopReactor, lambda: ended(factory))
    assert transport not in uvloopReactor.streams


def test_noDelay(uvloopReactor: UvloopReactor, listener: socket.socket) -> None:
    """
    Nagle's algorithm is off (TCP_NODELAY) on the fast path's connections, as on the ones the reactor accepts.
    """
    protocol, peer = connected(uvloopReactor, listener)
    assert protocol.transport.getTcpNoDelay()
    assert protocol.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    peer.close()


def test_shutdownFailsPendingAttempts(uvloopReactor: UvloopReactor, listener: socket.socket) -> None:
    """
    At shutdown (disconnectAll) an attempt still pending fails with ConnectError, as Twisted's fail when they are the reactor's selectables, and the reactor keeps no stream.
    """
    factory = Recording()
    uvloopReactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory)
    uvloopReactor.disconnectAll()
    assert factory.calls == ["doStart", "startedConnecting", ("clientConnectionFailed", ConnectError), "doStop"]
    assert not uvloopReactor.streams


def test_pauseProducingReachesUvloop(uvloopReactor: UvloopReactor, listener: socket.socket) -> None:
    """
    pauseProducing pauses uvloop's own transport's reading, resumeProducing resumes it.
    """
    protocol, peer = connected(uvloopReactor, listener)
    uvTransport = protocol.transport._transport
    protocol.transport.pauseProducing()
    assert not uvTransport.is_reading()
    protocol.transport.resumeProducing()
    assert uvTransport.is_reading()
    peer.close()


def test_failedCanaryConnectsAsTwisted(uvloopReactor: UvloopReactor, listener: socket.socket) -> None:
    """
    With the outgoing connections' canary failed, or a bind address given as a Twisted Binding, connectTCP is Twisted's (its connector and tcp.Client).
    """
    binding = tcp.makeBinding("127.0.0.1", 0)
    viaBinding = uvloopReactor.connectTCP("127.0.0.1", listener.getsockname()[1], Recording(), bindAddress=binding)
    assert type(viaBinding) is tcp.Connector
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(uvclient.CANARY, "_alive", False)
        connector = uvloopReactor.connectTCP("127.0.0.1", listener.getsockname()[1], Recording())
    assert type(connector) is tcp.Connector
    for attempt in (viaBinding, connector):
        spin(uvloopReactor, lambda: attempt.state == "connected")  # noqa: B023
        assert isinstance(attempt.transport, tcp.Client)
        attempt.disconnect()
