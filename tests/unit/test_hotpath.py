"""
The stream path's per-message and per-connection shortcuts keep the behaviour
of the long way: the idle timeouts that traffic does not move (one timer per
service), the length-prefixed framings' one-frame reads and their frame
encoding, and the connection wrapper's interfaces declared from a cache.
"""

from __future__ import annotations

import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, ISystemHandle, ITCPTransport, ITransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netd.metrics import Counters
from netd.stream.framing import FramingError
from netd.testing.memory import makeStreamStack
from netd_plugins.echo import EchoHandler

from .test_limits import accept, close, makeStack


def test_trafficDoesNotMoveTheIdleTimer() -> None:
    """
    Traffic only notes its time: the idle timer keeps its deadline, and when it fires early it waits again for exactly the rest of the timeout.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    [timer] = clock.getDelayedCalls()
    clock.advance(3)
    connection.receive(b"traffic")
    assert clock.getDelayedCalls() == [timer] and timer.getTime() == 10
    clock.advance(7)
    [again] = clock.getDelayedCalls()
    assert again.getTime() == 13
    clock.advance(2.9)
    assert not connection.transport.disconnecting
    assert counters["idle_timeouts"] == 0
    clock.advance(0.1)
    assert connection.transport.disconnected
    assert counters["idle_timeouts"] == 1


def test_idleTimerWaitsAgainAfterEachActivity() -> None:
    """
    Traffic again and again keeps a connection open for as long as it goes on, and it closes idle_timeout seconds after the last.
    """
    limiter, handler, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    for _ in range(10):
        clock.advance(6)
        connection.receive(b"x")
    assert not connection.transport.disconnecting
    clock.advance(9.5)
    assert not connection.transport.disconnecting
    clock.advance(0.5)
    assert connection.transport.disconnected
    assert counters["idle_timeouts"] == 1


@pytest.mark.parametrize(("framing", "prefix"), [("u16", ">H"), ("u32", ">I")])
def test_wholeFrameReadsEchoedAsFrames(framing: str, prefix: str) -> None:
    """
    Reads that are each one whole frame, empty or not, are echoed frame for frame, and so are frames that follow a partial read.
    """
    limiter = makeStreamStack(EchoHandler(), framing, maxFrame=100)
    connection = accept(limiter)
    frames = [b"one", b"", b"x" * 100]
    for frame in frames:
        connection.receive(struct.pack(prefix, len(frame)) + frame)
    wire = b"".join(struct.pack(prefix, len(frame)) + frame for frame in frames)
    assert connection.takeSent() == wire
    connection.receive(wire[:5])
    connection.receive(wire[5:])
    assert connection.takeSent() == wire


@pytest.mark.parametrize(("framing", "prefix"), [("u16", ">H"), ("u32", ">I")])
def test_wholeFrameOverLimitRefused(framing: str, prefix: str) -> None:
    """
    A read that is one whole frame over max_frame is refused and closes the connection, as the buffered path does, and nothing is echoed.
    """
    counters = Counters()
    limiter = makeStreamStack(EchoHandler(), framing, maxFrame=10, counters=counters)
    connection = accept(limiter)
    connection.receive(struct.pack(prefix, 11) + b"y" * 11)
    assert connection.takeSent() == b""
    assert connection.transport.disconnecting
    assert counters["frames_rejected"] == 1


def test_u16FrameTooLargeToSend() -> None:
    """
    A frame larger than a u16 prefix can state is refused by sendFrame with the framing and the sizes.
    """
    limiter = makeStreamStack(EchoHandler(), "u16")
    connection = accept(limiter)
    framed = connection.protocol.wrappedProtocol
    with pytest.raises(FramingError, match="u16 framing cannot send a frame of 65536 bytes; the largest is 65535"):
        framed.sendFrame(b"z" * 65536)


def test_idleDeadlinesOfStaggeredConnections() -> None:
    """
    Connections opened at different times, some with traffic, each idle out exactly idle_timeout seconds after their own last activity, on one timer.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=10)
    first = accept(limiter)
    clock.advance(4)
    second = accept(limiter)
    clock.advance(2)
    first.receive(b"x")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(7.9)
    assert not second.transport.disconnecting
    clock.advance(0.1)
    assert second.transport.disconnected and not first.transport.disconnecting
    clock.advance(1.9)
    assert not first.transport.disconnecting
    clock.advance(0.1)
    assert first.transport.disconnected
    assert counters["idle_timeouts"] == 2
    assert clock.getDelayedCalls() == []


def test_closedConnectionsLeaveNoTimer() -> None:
    """
    Once every watched connection has closed, no idle timer is left waiting.
    """
    limiter, _, _, clock = makeStack(idleTimeout=10)
    connections = [accept(limiter) for _ in range(3)]
    for connection in connections:
        close(connection)
    assert clock.getDelayedCalls() == []
    again = accept(limiter)
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == 10 and not again.transport.disconnecting


def test_closedConnectionsDroppedFromTheWatch() -> None:
    """
    Closed connections do not pile up in the idle watch while others stay open: once they outnumber the open ones, they are dropped, and the open ones still idle out on time.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=10)
    idle = limiter.idle
    assert idle is not None
    stay = accept(limiter)
    for _ in range(1000):
        close(accept(limiter))
    assert len(idle._heap) <= 2 * (idle.forgottenAllowed + 1)
    clock.advance(10)
    assert stay.transport.disconnected and counters["idle_timeouts"] == 1


def test_idleTimeoutZeroWatchesNothing() -> None:
    """
    With idle_timeout 0 no connection is ever timed out, and no timer is made.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=0)
    connection = accept(limiter)
    assert limiter.idle is None and clock.getDelayedCalls() == []
    clock.advance(10**6)
    assert not connection.transport.disconnecting and counters["idle_timeouts"] == 0


def test_wrapperProvidesWhatItsTransportProvides() -> None:
    """
    The connection wrapper provides the interfaces of the transport it wraps (as ProtocolWrapper does), its own (half-close), and no others, for each kind of transport.
    """
    limiter, _, _, _ = makeStack()

    @implementer(ISystemHandle)
    class HandleTransport(StringTransport):
        def getHandle(self) -> None:
            return None

    for transportType in (StringTransport, HandleTransport, StringTransport, HandleTransport):
        protocol = limiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        transport = transportType()
        protocol.makeConnection(transport)
        assert ITransport.providedBy(protocol) and IHalfCloseableProtocol.providedBy(protocol)
        assert ISystemHandle.providedBy(protocol) == (transportType is HandleTransport)
        assert not ITCPTransport.providedBy(protocol)


def test_wrapperPassesOnItsTransportsMethods() -> None:
    """
    The connection wrapper has no __getattr__ (which would slow every read of its attributes): each method of the interfaces it declares for its transport is its own and reaches the transport.
    """
    limiter, _, _, _ = makeStack()

    @implementer(ISystemHandle, ITCPTransport)
    class TCPTransport(StringTransport):
        handle = object()
        noDelay = keepAlive = False

        def getHandle(self) -> object:
            return self.handle

        def getTcpNoDelay(self) -> bool:
            return self.noDelay

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.noDelay = enabled

        def getTcpKeepAlive(self) -> bool:
            return self.keepAlive

        def setTcpKeepAlive(self, enabled: bool) -> None:
            self.keepAlive = enabled

    protocol = limiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert protocol is not None
    transport = TCPTransport()
    protocol.makeConnection(transport)
    assert not hasattr(type(protocol), "__getattr__")
    assert ITCPTransport.providedBy(protocol) and ISystemHandle.providedBy(protocol)
    assert protocol.getHandle() is transport.handle
    assert protocol.getTcpNoDelay() and transport.noDelay
    protocol.setTcpKeepAlive(True)
    assert protocol.getTcpKeepAlive() and transport.keepAlive
    protocol.pauseProducing()
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "producing"
    assert protocol.getPeer() == transport.getPeer() and protocol.getHost() == transport.getHost()
    assert protocol.logPrefix().endswith(" (GuardedConnection)")
