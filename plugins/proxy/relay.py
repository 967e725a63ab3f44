"""
One proxied connection: the client's side (a frame receiver of the core's
framing) and the upstream's (a Twisted protocol on a connection of its own,
with raw framing; with another framing, the same framing's protocol, and the
client's frames sent to it through the service's C{from_client} frame
faults), each pacing the other and passing on its EOF and its reset.  The
proxy's README tells the story ("Design notes").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocolFactory,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.interfaces import (
    IConnectionEventFields,
    IExactFrames,
    IFrameConnection,
    IFrameReceiver,
    IFramingViolationReceiver,
    IHalfCloseableReceiver,
    IPacedConnection,
    IStreamHandler,
    PluginContext,
    RelayedFrameFaults,
    RelayedFrameWriter,
)
from netd.metrics import Histogram
from netd.stream.framing import FRAMINGS, FramedFactory, FramedProtocol
from netd.stream.guard import resetTransport
from netd.stream.proxyheader import describePeer

from .headerfirst import HeaderFirstEndpoint, proxyHeader

CLOSE_LINGER = 2.0
"""
Seconds a client whose upstream could not be reached is still read (and what
it sends dropped) after its EOF, when C{on_upstream_failure} is C{"close"}: a
socket closed with unread bytes makes the kernel send a reset, not the EOF
the option asks for.
"""


@attrs.define
class Upstream:
    """
    Where one service's connections go, and what it counts of them.

    @ivar endpoint: the upstream's client endpoint, which writes the PROXY
        header first (plain or under TLS).
    @ivar address: the endpoint string, as the config gives it (for logs).
    @ivar connectTimeout: seconds a connection attempt may take.
    @ivar resetOnFailure: whether a client whose upstream cannot be reached
        gets a reset (else a clean close).
    @ivar proxyProtocol: the PROXY protocol version whose header opens each
        upstream connection, or L{None} for none.
    @ivar framing: the service's framing, which cuts the upstream's bytes
        into frames too (L{FramedClientSide}) unless it is C{raw}.
    @ivar maxFrame: the service's C{max_frame}, for the upstream's frames too.
    @ivar frameFaults: the service's C{from_client} frame faults, which act
        on the client's frames on their way to the upstream (L{None}: none).
    """

    endpoint: HeaderFirstEndpoint
    address: str
    connectTimeout: float
    resetOnFailure: bool
    context: PluginContext
    proxyProtocol: Literal["v1", "v2"] | None = None
    framing: str | None = "raw"
    maxFrame: int | None = None
    frameFaults: RelayedFrameFaults | None = None
    latency: Histogram = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.latency = self.context.counters.histogram(
            "upstream_connect_seconds", help="Seconds from accepting a client to its upstream connection being open."
        )


def _wasReset(reason: Failure) -> bool:
    """
    Whether a connection ended by a reset or an abort, rather than a clean close.
    """
    return isinstance(reason.value, ConnectionLost) and not isinstance(reason.value, ConnectionDone)


@implementer(IPushProducer)
@attrs.define
class ClientReading:
    """
    The client's reading as a producer that the upstream's send buffer
    pauses while it is full.
    """

    connection: Any

    def pauseProducing(self) -> None:
        """
        The upstream's send buffer is full: stop reading the client.
        """
        self.connection.pauseReading()

    def resumeProducing(self) -> None:
        """
        The upstream's send buffer has drained: read the client again.
        """
        self.connection.resumeReading()

    def stopProducing(self) -> None:
        """
        The upstream connection is gone; the client side learns it from L{UpstreamSide}.
        """


@implementer(IHalfCloseableProtocol)
class UpstreamSide(Protocol):
    """
    The connection to the upstream: what it sends goes to the client, its
    EOF becomes the client's, its reset a reset of the client.
    """

    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the upstream, for the client.
        """
        self.client.fromUpstream(data)

    def readConnectionLost(self) -> None:
        """
        The upstream sent EOF.
        """
        self.client.upstreamEOF()

    def writeConnectionLost(self) -> None:
        """
        Our EOF went out; the upstream may go on sending.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The upstream connection is gone.
        """
        self.client.upstreamLost(reason)


@implementer(IFrameReceiver, IHalfCloseableReceiver, IConnectionEventFields)
class ClientSide:
    """
    One client connection and the upstream connection made for it.  Until
    the upstream is open, reading from the client is paused and what was
    read already is held; then each side's bytes go to the other, each
    side's send buffer pacing the other's reading.  With raw framing each
    read goes on as it came; L{FramedClientSide} relays frames.
    """

    connection: Any
    peer: Any = None
    upstreamTransport: Any = None
    upstreamPeer: IAddress | None = None
    _attempt: Deferred[Any] | None = None
    _timer: Any = None
    _timedOut = False
    _failed = False
    _lingering: Any = None
    _clientGone = False
    _clientEOF = False
    _upstreamEOF = False
    _upstreamGone = False
    _upstreamEnded: str | None = None

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.held: list[bytes] = []
        self.bytesUp = self.bytesDown = 0
        self.opened = 0.0

    def connectionMade(self, connection: Any) -> None:
        """
        Pause the client and connect to the upstream, within
        C{connect_timeout}; the endpoint opens the connection with the PROXY
        header, if the service sends one.
        """
        self.connection = connection
        self.peer = connection.getPeer()
        if not IPacedConnection.providedBy(connection):
            raise TypeError("the proxy needs a connection that provides IPacedConnection")
        connection.pauseReading()
        upstream = self.upstream
        reactor = upstream.context.reactor
        self.opened = reactor.seconds()
        header = proxyHeader(upstream.proxyProtocol, self.peer, self.connection.getHost())
        attempt = self._attempt = upstream.endpoint.connect(self.upstreamFactory(), header)
        self._timer = reactor.callLater(upstream.connectTimeout, self._connectTimedOut)
        attempt.addCallbacks(self._connected, self._connectFailed)

    def upstreamFactory(self) -> IProtocolFactory:
        """
        The factory of the upstream connection's protocol: bytes as they come.
        """
        return Factory.forProtocol(lambda: UpstreamSide(self))

    def _connectTimedOut(self) -> None:
        """
        C{connect_timeout} has passed: give the attempt up.
        """
        self._timer = None
        self._timedOut = True
        assert self._attempt is not None
        self._attempt.cancel()

    def _stopTimer(self) -> None:
        """
        The attempt is settled: its timeout is no longer needed.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _connected(self, protocol: Any) -> None:
        """
        The upstream is open: pace each side by the other, pass on what was
        held (and the client's EOF, if it came), read the client again.
        """
        self._attempt = None
        self._stopTimer()
        upstream = self.upstream
        upstream.context.counters["upstream_connects"] += 1
        upstream.latency.observe(upstream.context.reactor.seconds() - self.opened)
        transport: Any = protocol.transport
        self.upstreamTransport = transport
        self.upstreamPeer = transport.getPeer()
        if self._clientGone:
            self._upstreamEnded = "closed by netd: the client had gone"
            transport.loseConnection()
            return
        self.connection.registerProducer(transport, True)
        transport.registerProducer(ClientReading(self.connection), True)
        held, self.held = self.held, []
        for frame in held:
            self.frameReceived(frame)
        if self._clientEOF:
            self.endUpstreamWrites()
        else:
            self.connection.resumeReading()

    def _connectFailed(self, reason: Failure) -> None:
        """
        The upstream could not be reached (or the client left first): count
        and log it, and give the client what C{on_upstream_failure} says.
        """
        self._attempt = None
        self._stopTimer()
        if self._clientGone:
            return
        upstream = self.upstream
        context = upstream.context
        context.counters["upstream_connect_failures"] += 1
        if self._timedOut and reason.check(CancelledError, ConnectingCancelledError):
            context.counters["upstream_connect_timeouts"] += 1
            why = f"no connection within connect_timeout ({upstream.connectTimeout} seconds)"
        else:
            why = reason.getErrorMessage()
        action = "resetting" if upstream.resetOnFailure else "closing"
        peer = self.peer
        context.log.warn(
            "cannot reach upstream {upstream} for the client {peer}: {why}; {action} the client connection",
            upstream=upstream.address,
            peer=describePeer(peer),
            why=why,
            action=action,
            event="upstream_connect_failed",
        )
        self._upstreamEnded = f"upstream unreachable: {why}"
        self.held = []
        self._failed = True
        if upstream.resetOnFailure:
            self.connection.resetConnection()
            return
        if self._clientEOF:
            self.connection.loseConnection()
            return
        self.connection.loseWriteConnection()
        self.connection.resumeReading()
        self._lingering = context.reactor.callLater(CLOSE_LINGER, self._endLinger)

    def _endLinger(self) -> None:
        """
        The client whose upstream failed has had L{CLOSE_LINGER} seconds to close after its EOF: close it.
        """
        self._lingering = None
        self.connection.loseConnection()

    def frameReceived(self, frame: bytes) -> None:
        """
        Bytes from the client: to the upstream, or held until it is open.
        """
        if self._failed:
            return
        transport = self.upstreamTransport
        if transport is None:
            self.held.append(frame)
        else:
            self.bytesUp += len(frame)
            transport.write(frame)

    def fromUpstream(self, data: bytes) -> None:
        """
        Bytes from the upstream, to the client.
        """
        self.bytesDown += len(data)
        self.connection.sendFrame(data)

    def readConnectionLost(self) -> None:
        """
        The client sent EOF: the upstream gets it, once it is open.
        """
        self._clientEOF = True
        if self._failed:
            self.connection.loseConnection()
            return
        if self.upstreamTransport is not None and not self._upstreamGone:
            self.endUpstreamWrites()
        self._closeWhenBothDone()

    def endUpstreamWrites(self) -> None:
        """
        The client's EOF, to the upstream.
        """
        self.upstreamTransport.loseWriteConnection()

    def closeUpstream(self) -> None:
        """
        Close the upstream connection, after what was sent to it.
        """
        self.upstreamTransport.loseConnection()

    def upstreamEOF(self) -> None:
        """
        The upstream sent EOF: the client gets it.
        """
        self._upstreamEOF = True
        if not self._clientGone:
            # The upstream reads no more; a TLS client's close would wait for it to unregister.
            self.connection.unregisterProducer()
            self.connection.loseWriteConnection()
        self._closeWhenBothDone()

    def _closeWhenBothDone(self) -> None:
        """
        Once both sides have sent EOF, close both connections.
        """
        if self._clientEOF and self._upstreamEOF:
            if self._upstreamEnded is None:
                self._upstreamEnded = "closed: EOF both ways"
            if not self._clientGone:
                self.connection.loseConnection()
            if self.upstreamTransport is not None and not self._upstreamGone:
                self.closeUpstream()

    def upstreamLost(self, reason: Failure) -> None:
        """
        The upstream connection is gone: a reset becomes a reset of the
        client, a close a close (after what was sent to it is written).
        """
        self._upstreamGone = True
        self.dropHeldFrames()
        reset = _wasReset(reason)
        decided = self._upstreamEnded is not None
        if not decided:
            self._upstreamEnded = "reset by upstream" if reset else "closed by upstream"
        if self._clientGone:
            return
        self.connection.unregisterProducer()
        if reset and not decided:
            self.connection.resetConnection()
        else:
            self.connection.loseConnection()

    def dropHeldFrames(self) -> None:
        """
        The upstream connection is lost or being reset: nothing more is written to it.
        """

    def connectionLost(self, reason: Failure) -> None:
        """
        The client connection is gone: give up the attempt, or end the
        upstream connection the same way (a reset as a reset).
        """
        self._clientGone = True
        self.held = []
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._attempt is not None:
            self._upstreamEnded = "not connected: the client left first"
            self._attempt.cancel()
            return
        transport = self.upstreamTransport
        if transport is None or self._upstreamGone:
            return
        transport.unregisterProducer()
        if _wasReset(reason):
            self._upstreamEnded = "reset by netd: the client reset"
            self.dropHeldFrames()
            resetTransport(transport)
        else:
            if self._upstreamEnded is None:
                self._upstreamEnded = "closed by netd: the client closed"
            self.closeUpstream()

    def eventFields(self) -> Mapping[str, Any]:
        """
        The upstream's side, for the client connection's C{"connection"}
        event: its address (as the config names it while it was never
        open), the bytes relayed each way, and how it ended.
        """
        address = self.upstreamPeer
        return {
            "upstream": describePeer(address) if address is not None else self.upstream.address,
            "bytes_to_upstream": self.bytesUp,
            "bytes_from_upstream": self.bytesDown,
            "upstream_ended": self._upstreamEnded or "open",
        }


@implementer(IExactFrames)
class FramedClientSide(ClientSide):
    """
    A client connection of a service whose framing has frames: each frame
    from the client goes to the upstream encoded again, exactly as it came
    (L{IExactFrames}), through the service's C{from_client} frame faults
    once one has been in force (L{UpstreamOutlet}); the upstream's bytes are
    cut into frames by the same framing (L{UpstreamFrames}), and each is
    sent to the client as a frame, so that the service's C{to_client} frame
    faults act on it.

    @ivar faultWriter: the writer of the client's frames to the upstream
        once a C{from_client} frame fault was in force for one of them; from
        then on it sends them all, so that they keep their order.
    """

    upstreamFraming: FramedProtocol | None = None
    faultWriter: RelayedFrameWriter | None = None

    def upstreamFactory(self) -> IProtocolFactory:
        """
        The factory of the upstream connection's protocol: the service's framing, fed to L{UpstreamFrames}.
        """
        upstream = self.upstream
        context = upstream.context
        assert upstream.framing is not None and upstream.maxFrame is not None  # checked by the handler
        return FramedFactory(
            FRAMINGS[upstream.framing], upstream.maxFrame, UpstreamFrames(self), context.counters, context.log
        )

    def upstreamOpened(self, framing: FramedProtocol) -> None:
        """
        The upstream connection's framing protocol, before the connection is handed over.
        """
        self.upstreamFraming = framing

    def frameReceived(self, frame: bytes) -> None:
        """
        A frame from the client: to the upstream as it came (through the
        C{from_client} frame faults while there are any), or held until it
        is open.
        """
        if self._failed:
            return
        transport = self.upstreamTransport
        if transport is None:
            self.held.append(frame)
            return
        framing = self.upstreamFraming
        assert framing is not None
        writer = self.faultWriter
        if writer is None:
            faults = self.upstream.frameFaults
            if faults is None or not faults.inForce:
                data = framing.encodeFrame(frame)
                self.bytesUp += len(data)
                transport.write(data)
                return
            writer = self.faultWriter = faults.writerTo(UpstreamOutlet(self, framing), self.upstream.context.reactor)
        self.bytesUp += framing.wireSize(frame)
        writer.sendFrame(frame)

    def endUpstreamWrites(self) -> None:
        """
        The client's EOF, to the upstream after the frames the faults hold.
        """
        writer = self.faultWriter
        if writer is None:
            super().endUpstreamWrites()
        else:
            writer.afterHeld(super().endUpstreamWrites)

    def closeUpstream(self) -> None:
        """
        Close the upstream connection after the frames the faults hold.
        """
        writer = self.faultWriter
        if writer is None:
            super().closeUpstream()
        else:
            writer.loseConnection()

    def writerClosesUpstream(self) -> None:
        """
        The fault writer closes the upstream connection, after the frames it
        held: netd closes it, or a C{from_client} C{truncate_frame} does (the
        client's connection is then closed once it is gone, as when the
        upstream closes).
        """
        if self._upstreamEnded is None:
            self._upstreamEnded = "closed by netd: a from_client frame fault"
        if not self._upstreamGone:
            self.upstreamTransport.loseConnection()

    def dropHeldFrames(self) -> None:
        """
        Drop the frames the faults hold, and their timers.
        """
        if self.faultWriter is not None:
            self.faultWriter.stop()

    def frameFromUpstream(self, frame: bytes) -> None:
        """
        A frame from the upstream, to the client through the service's frame faults.
        """
        framing = self.upstreamFraming
        assert framing is not None
        self.bytesDown += framing.wireSize(frame)
        self.connection.sendFrame(frame)

    def upstreamViolated(self, reason: str) -> None:
        """
        The upstream broke the framing (a frame over C{max_frame}, a
        malformed prefix): what it sent of the frame cannot be relayed, so
        both connections are reset, the client's stream cut where the
        upstream's broke.
        """
        self.upstream.context.counters["upstream_frames_rejected"] += 1
        self._upstreamEnded = f"reset by netd: the upstream broke the framing ({reason})"
        if self.upstreamTransport is not None:
            resetTransport(self.upstreamTransport)
        if not self._clientGone:
            self.connection.resetConnection()


class UpstreamOutlet:
    """
    Where the service's C{from_client} frame faults write a client's frames
    (a L{netd.interfaces.FrameOutlet}): the upstream connection, encoded
    by its framing.  Their events name the client, whose reading pauses
    while they hold too much.
    """

    def __init__(self, client: FramedClientSide, framing: FramedProtocol) -> None:
        self.client = client
        self.framing = framing
        self.framingName = framing.framingName
        self.largestClaim = framing.largestClaim

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The upstream connection's framing encodes (exactly, L{IExactFrames}).
        """
        return self.framing.encodeFrame(frame, claimed)

    def write(self, data: bytes) -> None:
        """
        To the upstream.
        """
        self.client.upstreamTransport.write(data)

    def loseConnection(self) -> None:
        """
        Close the upstream connection (L{FramedClientSide.writerClosesUpstream}).
        """
        self.client.writerClosesUpstream()

    def holdBack(self, holding: bool) -> None:
        """
        Pause (or resume) reading the client, whose frames these are.
        """
        client = self.client
        if client._clientGone:
            return
        if holding:
            client.connection.pauseReading()
        else:
            client.connection.resumeReading()

    def getPeer(self) -> IAddress:
        """
        The client's address.
        """
        address: IAddress = self.client.peer
        return address


@implementer(IFrameReceiver, IHalfCloseableReceiver, IFramingViolationReceiver, IExactFrames, IStreamHandler)
class UpstreamFrames:
    """
    The receiver of the upstream connection's frames, for a
    L{FramedClientSide}, and the handler that gives it to the upstream's
    L{FramedFactory} (one connection each).
    """

    def __init__(self, client: FramedClientSide) -> None:
        self.client = client

    def newConnection(self) -> UpstreamFrames:
        """
        This receiver, for the one upstream connection.
        """
        return self

    def connectionMade(self, connection: IFrameConnection) -> None:
        """
        The upstream is open; the client side hears of it from the endpoint.
        """
        assert isinstance(connection, FramedProtocol)
        self.client.upstreamOpened(connection)

    def frameReceived(self, frame: bytes) -> None:
        """
        A frame from the upstream, for the client.
        """
        self.client.frameFromUpstream(frame)

    def readConnectionLost(self) -> None:
        """
        The upstream sent EOF (a partial frame before it is dropped).
        """
        self.client.upstreamEOF()

    def framingViolated(self, reason: str) -> None:
        """
        The upstream broke the framing.
        """
        self.client.upstreamViolated(reason)

    def connectionLost(self, reason: Failure) -> None:
        """
        The upstream connection is gone.
        """
        self.client.upstreamLost(reason)
