"""
The wrapper nearest the socket on every stream connection: connection limit,
idle timeout, flow control, byte counts, and the drain at shutdown.

One wrapper does all of this so that a connection pays for one extra layer, not
one per feature; TLS and framing sit inside it, so a stalled TLS handshake times
out like any idle connection and refused connections never reach the plugin.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IDelayedCall, IProtocolFactory, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from netd import logs
from netd.metrics import Counters
from netd.proxyheader import describePeer


@implementer(IHalfCloseableProtocol)
class GuardedConnection(ProtocolWrapper):
    """
    One stream connection, seen from the socket side.

    Flow control: the socket transport is registered as the producer of its own
    writes, so that once more than Twisted's send buffer (64 KiB) is waiting to
    be written, reading from the peer pauses until the buffer drains.  A client
    that sends without reading therefore costs a bounded amount of memory
    whatever the plugin does with what it reads.

    Half-close: a peer that shuts down its sending side (C{socat}, C{nc -N},
    C{shutdown(SHUT_WR)}) still gets every answer to what it sent; the
    connection closes once those are written.

    Logging: with the log level at debug, one line when the connection opens
    and one when it closes (peer, bytes each way, duration, how it ended);
    otherwise the only per-connection cost is two byte counts and a timestamp.
    """

    factory: ConnectionLimiter
    _selfPaced = False
    _idleCall: IDelayedCall | None = None
    _bytesIn = 0
    _bytesOut = 0
    _opened = 0.0
    _ended: str | None = None

    def connectionMade(self) -> None:
        """
        Start pacing and the idle timer, then let the inner protocol in.
        """
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        self._selfPaced = True
        self._opened = self.factory.clock.seconds()
        if logs.debugEnabled:
            self.factory.log.debug(
                "connection opened from {peer}", peer=describePeer(self.getPeer()), event="connection_opened"
            )
        timeout = self.factory.idleTimeout
        if timeout:
            self._idleCall = self.factory.clock.callLater(timeout, self._idleTimedOut)
        ProtocolWrapper.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        """
        Count, note the activity, pass the bytes in; once netd has decided to
        close the connection, what still arrives is dropped, as a socket
        transport would stop reading.
        """
        if self.disconnecting:
            return
        self.factory.counters["bytes_received"] += len(data)
        self._bytesIn += len(data)
        if self._idleCall is not None:
            self._idleCall.reset(self.factory.idleTimeout)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        """
        Count, note the activity, pass the bytes out.
        """
        self.factory.counters["bytes_sent"] += len(data)
        self._bytesOut += len(data)
        if self._idleCall is not None:
            self._idleCall.reset(self.factory.idleTimeout)
        self.transport.write(data)  # type: ignore[union-attr]

    def writeSequence(self, data: Any) -> None:
        """
        Count, note the activity, pass the bytes out.
        """
        data = list(data)
        size = sum(map(len, data))
        self.factory.counters["bytes_sent"] += size
        self._bytesOut += size
        if self._idleCall is not None:
            self._idleCall.reset(self.factory.idleTimeout)
        self.transport.writeSequence(data)  # type: ignore[union-attr]

    def _stopSelfPacing(self) -> None:
        """
        Unregister the transport as its own producer.

        Needed before closing: a transport with a paused producer resumes the
        producer instead of closing once its buffer drains, and would never close.
        """
        if self._selfPaced:
            self._selfPaced = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """
        An inner protocol (TLS, a streaming plugin) paces itself: it replaces the
        self-pacing.
        """
        self._stopSelfPacing()
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        """
        The inner producer is done: pace the connection by its buffer again.
        """
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        if self.wrappedProtocol is not None and not self.disconnecting:
            self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
            self._selfPaced = True

    def loseConnection(self) -> None:
        """
        Close once the buffer is written.
        """
        if self._ended is None:
            self._ended = "closed by netd"
        self._stopSelfPacing()
        ProtocolWrapper.loseConnection(self)

    def readConnectionLost(self) -> None:
        """
        The peer sent EOF: close after writing what is already queued.
        """
        if self._ended is None:
            self._ended = "closed by peer"
        self.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our sending side is shut; reading goes on until the peer closes.
        """

    def _idleTimedOut(self) -> None:
        """
        Nothing moved either way for C{idle_timeout} seconds: drop the connection
        without waiting for a peer that may not be reading.
        """
        self._idleCall = None
        self._ended = "idle timeout"
        self.factory.counters["idle_timeouts"] += 1
        self.factory.log.info(
            "closing connection from {peer}: idle for {timeout} seconds",
            peer=describePeer(self.getPeer()),
            timeout=self.factory.idleTimeout,
            event="idle_timeout",
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the idle timer and tell the inner protocol.
        """
        if self._idleCall is not None:
            self._idleCall.cancel()
            self._idleCall = None
        self._selfPaced = False
        if logs.debugEnabled:
            self._logClosed(reason)
        ProtocolWrapper.connectionLost(self, reason)

    def abortConnection(self) -> None:
        """
        Drop the connection now, without flushing.
        """
        if self._ended is None:
            self._ended = "aborted"
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _logClosed(self, reason: Failure) -> None:
        """
        The debug line of a closed connection.
        """
        ended = self._ended
        if ended is None:
            ended = "closed by peer" if reason.check(ConnectionDone) else "aborted"
        self.factory.log.debug(
            "connection from {peer} closed ({ended}) after {duration:.3f} seconds: "
            "{bytes_in} bytes in, {bytes_out} bytes out",
            peer=describePeer(self.getPeer()),
            ended=ended,
            duration=round(self.factory.clock.seconds() - self._opened, 6),
            bytes_in=self._bytesIn,
            bytes_out=self._bytesOut,
            event="connection_closed",
        )


class ConnectionLimiter(WrappingFactory):
    """
    Wraps a service's protocol factory with the shared per-connection limits.

    @ivar maxConnections: connections accepted at once; more are closed as soon
        as they are accepted and counted as C{connections_refused}.
    @ivar idleTimeout: seconds without traffic before a connection is dropped;
        0 never drops one.
    """

    noisy = False

    protocol = GuardedConnection

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        *,
        maxConnections: int,
        idleTimeout: float,
        clock: IReactorTime,
        counters: Counters,
        log: Logger,
    ) -> None:
        super().__init__(wrappedFactory)
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.counters = counters
        self.log = log
        self._refusing = False
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper | None:  # type: ignore[override]
        """
        Accept the connection if the service is below its limit.
        """
        if len(self.protocols) >= self.maxConnections:
            self.counters["connections_refused"] += 1
            if not self._refusing:
                self._refusing = True
                self.log.warn(
                    "refusing connections: max_connections ({limit}) reached", limit=self.maxConnections
                )
            return None
        self.counters["connections_accepted"] += 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, protocol: Any) -> None:
        """
        A connection closed: note that there is room again, fire drain waiters.
        """
        super().unregisterProtocol(protocol)
        if self._refusing:
            self._refusing = False
            self.log.info("accepting connections again")
        if not self.protocols:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def openConnections(self) -> int:
        """
        How many connections are open.
        """
        return len(self.protocols)

    def whenDrained(self) -> Deferred[None]:
        """
        A Deferred that fires once no connection is open.
        """
        d: Deferred[None] = Deferred()
        if self.protocols:
            self._drained.append(d)
        else:
            d.callback(None)
        return d

    def abortAll(self) -> None:
        """
        Drop every open connection now, without flushing.
        """
        for protocol in list(self.protocols):
            protocol.abortConnection()
