"""
The wrapper nearest the socket on every stream connection: connection limit,
idle timeout, flow control, byte counts, and the drain at shutdown.

One wrapper does all of this so that a connection pays for one extra layer, not
one per feature; TLS and framing sit inside it, so a stalled TLS handshake times
out like any idle connection and refused connections never reach the plugin.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy
from zope.interface.declarations import Provides

from netd import logs
from netd.events import EventLog
from netd.interfaces import IConnectionEventFields
from netd.metrics import Counters
from netd.reactors.rlimits import BoundedWarning, IOutOfDescriptors
from netd.reactors.shared import IMeteredTransport
from netd.stream.declared import provides
from netd.stream.proxyheader import describePeer
from netd.tls.protocol import TLSServerProtocol
from netd.words import counted


class ConnectionFaults(Protocol):
    """
    The faults acting on one connection's bytes, both ways (what a
    L{StreamFaults} gives a connection they apply to).
    """

    def start(self) -> None:
        """
        The connection is open, its inner protocol too: act on what starts with it.
        """

    def received(self, data: bytes) -> None:
        """
        Bytes from the client, for the inner protocol once the faults let them go.
        """

    def write(self, data: bytes) -> None:
        """
        Bytes the inner protocol writes, for L{GuardedConnection.transmit} once the faults let them go.
        """

    def holdsOutbound(self) -> bool:
        """
        Whether bytes to the client are still held.
        """

    def closeWhenDrained(self) -> None:
        """
        Close the connection once the bytes held for the client are written.
        """

    def holdsInbound(self) -> bool:
        """
        Whether bytes from the client are still held.
        """

    def eofWhenDrained(self) -> None:
        """
        Tell the connection of the client's EOF once the bytes held from it are passed on.
        """

    def stop(self) -> None:
        """
        The connection is ending or gone: drop what is held, cancel every timer.
        """


class StreamFaults(Protocol):
    """
    A service's stream faults, as its connections see them (the service's
    L{netd.faults.stream.StreamFaultSet}).

    @ivar inForce: whether there are any; when not, a new connection asks nothing more.
    """

    inForce: bool

    def forConnection(self, connection: GuardedConnection) -> ConnectionFaults | None:
        """
        The faults acting on a new connection; L{None} when none applies.
        """

    def changedFor(self, connection: GuardedConnection, current: ConnectionFaults | None) -> ConnectionFaults | None:
        """
        The faults changed: those acting on open C{connection} now, C{current}
        updated, or a new object (not started yet), or L{None}.
        """

    def onChange(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} after each change of the faults.
        """


class ReadsDirectly(Protocol):
    """
    An inner protocol whose reads a guard stepped aside may hand straight to
    where its C{dataReceived} would pass them, saving a call per read (raw
    framing: the receiver's C{frameReceived}).
    """

    def directReader(self) -> Callable[[bytes], None]:
        """
        What this protocol's C{dataReceived} hands each read to, as it came.
        """


def resetTransport(transport: Any) -> None:
    """
    End a connection with a TCP RST: what netd has written goes to the
    socket first (as much as the kernel takes), then the socket closes with
    C{SO_LINGER} C{{1, 0}}, so that the peer sees C{ECONNRESET}.
    """
    if getattr(transport, "connected", False):
        flush = getattr(transport, "doWrite", None)
        if flush is not None:
            flush()
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    # A socket.socket, or uvloop's stand-in for one (netd.reactors.uv).
    setsockopt = getattr(handle, "setsockopt", None)
    if setsockopt is not None:
        try:
            setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abortConnection()


@implementer(IHalfCloseableProtocol)
class GuardedConnection(TwistedProtocol):
    """
    One stream connection, seen from the socket side: paced by its own send
    buffer, half-closeable, counted, timed out when idle, and open to the
    service's stream faults.  On a metered transport with nothing to do per
    message it steps aside (L{_SteppedAside}, chosen in L{_reroute}); see
    "Design notes" in docs/listen.md.

    To the protocol it wraps it is the transport, and it provides what its
    transport provides (L{_declareTransport}), each method of those
    interfaces passed on by a method of its own.  Twisted's
    C{ProtocolWrapper} passes them on through C{__getattr__}, which makes
    every attribute of the wrapper slow to read, its own included (some 100
    reads a connection).
    """

    factory: ConnectionLimiter
    # Slots, each set in __init__: in the instance's dict, these keys would
    # make it large, about 0.7 KiB a connection.  The dict keeps the
    # interfaces declared.  _directRead and _directWrite are the routes that
    # L{_SteppedAside} exposes as dataReceived and write.
    __slots__ = (
        "factory",
        "wrappedProtocol",
        "transport",
        "connected",
        "disconnecting",
        "_selfPaced",
        "_watched",
        "_lastActivity",
        "_bytesIn",
        "_bytesOut",
        "_opened",
        "_ended",
        "_addresses",
        "_meter",
        "_streamFaults",
        "_directRead",
        "_directWrite",
        "_innerProducer",
    )
    _selfPaced: bool
    _watched: bool
    _lastActivity: float
    _bytesIn: int
    _bytesOut: int
    _opened: float
    _ended: str | None
    _addresses: tuple[IAddress, IAddress] | None
    _meter: Any
    _streamFaults: ConnectionFaults | None
    _directRead: Callable[[bytes], None] | None
    _directWrite: Callable[[bytes], None] | None
    _innerProducer: IPushProducer | None

    def __init__(self, factory: ConnectionLimiter, wrappedProtocol: Any) -> None:
        """
        Wrap C{wrappedProtocol}, with every slot set.
        """
        self.factory = factory
        self.wrappedProtocol = wrappedProtocol
        self.transport = None
        self.connected = self.disconnecting = 0
        self._selfPaced = False
        self._watched = False
        self._lastActivity = self._opened = 0.0
        self._bytesIn = self._bytesOut = 0
        self._ended = None
        self._addresses = None
        self._meter = None
        self._streamFaults = None
        self._directRead = self._directWrite = None
        self._innerProducer = None

    @property
    def producer(self) -> IPushProducer | None:
        """
        The producer an inner protocol registered (a proxy's upstream
        connection), paced by the send buffer in place of the connection's
        own reading; L{None} while the connection paces itself.
        """
        return self._innerProducer

    @property
    def streamFaults(self) -> ConnectionFaults | None:
        """
        The faults acting on the connection's bytes, or L{None}.
        """
        return self._streamFaults

    @streamFaults.setter
    def streamFaults(self, faults: ConnectionFaults | None) -> None:
        """
        Faults start or stop acting on the connection: its bytes take the path that says.
        """
        self._streamFaults = faults
        self._reroute()

    @property
    def bytesIn(self) -> int:
        """
        Bytes read from the peer so far.
        """
        meter = self._meter
        return self._bytesIn if meter is None else meter.bytesReceived

    @property
    def bytesOut(self) -> int:
        """
        Bytes written to the peer so far.
        """
        meter = self._meter
        return self._bytesOut if meter is None else meter.bytesSent

    @property
    def lastActivity(self) -> float:
        """
        When bytes last moved either way (or the connection opened).
        """
        meter = self._meter
        return self._lastActivity if meter is None else max(meter.lastActivity, self._opened)

    def _reroute(self) -> None:
        """
        The one place that decides whether the guard stands between the
        transport and the inner protocol (this class) or steps aside
        (L{_SteppedAside}): aside only on a metered transport, while it is
        connected, no fault acts on it and netd is not closing it.  Every
        change of one of those four calls this.  Reads then go to the inner
        protocol's C{dataReceived}, or its L{ReadsDirectly.directReader}.
        """
        if self._meter is not None and self._streamFaults is None and not self.disconnecting and self.connected:
            inner = self.wrappedProtocol
            reader = getattr(type(inner), "directReader", None)
            self._directRead = inner.dataReceived if reader is None else reader(inner)
            self._directWrite = self.transport.write  # type: ignore[union-attr]
            self.__class__ = _SteppedAside
        else:
            self.__class__ = GuardedConnection
            self._directRead = self._directWrite = None

    def connectionMade(self) -> None:
        """
        Start pacing and the idle timer, choose the faults that act on the
        connection and start them (a refusing fault acts); L{makeConnection}
        then lets the inner protocol in.
        """
        transport: Any = self.transport
        factory = self.factory
        transport.registerProducer(transport, True)
        self._selfPaced = True
        # Nagle's algorithm off on a TCP connection, so that each write goes
        # out when it is made: an answer is not held back waiting for the
        # ACK of the previous one, and the pieces of a slice or split_frame
        # fault reach the client as separate segments instead of merging in
        # the kernel.  Other stream sockets (unix:) have no such option;
        # netd's transports skip the system call when it is off already.
        setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            try:
                setTcpNoDelay(True)
            except OSError:
                pass
        self._opened = self._lastActivity = factory.clock.seconds()
        if logs.debugEnabled:
            factory.log.debug(
                "connection opened from {peer}", peer=describePeer(self.getPeer()), event="connection_opened"
            )
        idle = factory.idle
        if idle is not None:
            self._watched = True
            idle.watch(self, self._opened)
        faults = factory.faults
        if faults is not None and faults.inForce:
            self.streamFaults = faults.forConnection(self)
            if self._streamFaults is not None:
                self._streamFaults.start()

    def dataReceived(self, data: bytes) -> None:
        """
        Count, note the activity, pass the bytes in (through the
        connection's faults, if any); once netd has decided to close the
        connection, what still arrives is dropped, as a socket transport would
        stop reading.
        """
        if self.disconnecting:
            return
        if self._meter is None:
            self._bytesIn += len(data)
            if self._watched:
                self._lastActivity = self.factory.clock.seconds()
        if self._streamFaults is not None:
            self._streamFaults.received(data)
        else:
            self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        """
        Count, note the activity, pass the bytes out (to the connection's
        faults, if any, which L{transmit} what they let go).
        """
        if self._streamFaults is not None:
            self._streamFaults.write(data)
            return
        self.transmit(data)

    def writeSequence(self, data: Any) -> None:
        """
        Count, note the activity, pass the bytes out.
        """
        if self._streamFaults is not None:
            self._streamFaults.write(b"".join(data))
            return
        data = list(data)
        if self._meter is None:
            self._bytesOut += sum(map(len, data))
            if self._watched:
                self._lastActivity = self.factory.clock.seconds()
        self.transport.writeSequence(data)  # type: ignore[union-attr]

    def transmit(self, data: bytes) -> None:
        """
        Write bytes to the socket (those the connection's faults let go, when
        it has some), counted here unless the transport meters them.
        """
        if self._meter is None:
            self._bytesOut += len(data)
            if self._watched:
                self._lastActivity = self.factory.clock.seconds()
        self.transport.write(data)  # type: ignore[union-attr]

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
        self._innerProducer = producer
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        """
        The inner producer is done: pace the connection by its buffer again.
        """
        self._innerProducer = None
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        if self.wrappedProtocol is not None and not self.disconnecting:
            self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
            self._selfPaced = True

    def loseConnection(self) -> None:
        """
        Close once the buffer is written, and before that the bytes the
        connection's faults hold for the client.
        """
        if self._ended is None:
            self._ended = "closed by netd"
        faults = self._streamFaults
        self._closing()
        if faults is not None and faults.holdsOutbound():
            faults.closeWhenDrained()
            return
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _closing(self) -> None:
        """
        netd has decided to close the connection: stop pacing it by its
        buffer (see L{_stopSelfPacing}), and stand between the transport and
        the inner protocol again, to drop what still arrives.
        """
        self._stopSelfPacing()
        self.disconnecting = True
        self._reroute()

    def endByFault(self, ended: str, reset: bool = False) -> None:
        """
        A fault ends the connection: a clean close once what is written and
        held for the client is out, or a TCP reset.

        @param ended: how it ended, for the connection's event and debug line
            (C{"reset by fault reset_after"}).
        """
        self._ended = ended
        if not reset:
            self.loseConnection()
            return
        self._closing()
        resetTransport(self.transport)

    def faultsChanged(self) -> None:
        """
        The service's faults changed: take the new mid-stream ones, lose the old.
        """
        faults = self.factory.faults
        assert faults is not None
        if self.disconnecting:
            return
        current = self._streamFaults
        changed = faults.changedFor(self, current)
        if changed is not current:
            self.streamFaults = changed
            if current is None and changed is not None:
                changed.start()

    def readConnectionLost(self) -> None:
        """
        The peer sent EOF: close after writing what is already queued (once
        the bytes the connection's faults hold from the peer are passed on).
        """
        faults = self._streamFaults
        if faults is not None and faults.holdsInbound():
            faults.eofWhenDrained()
            return
        if self._ended is None:
            self._ended = "closed by peer"
        inner: Any = self.wrappedProtocol
        if provides(IHalfCloseableProtocol, inner):
            inner.readConnectionLost()
        else:
            self.loseConnection()

    def loseWriteConnection(self) -> None:
        """
        Send EOF once the buffer is written (see
        L{netd.interfaces.IPacedConnection.loseWriteConnection}); while the
        connection's faults hold bytes for the client, the connection
        closes entirely once they are written instead.
        """
        faults = self._streamFaults
        if faults is not None and faults.holdsOutbound():
            self.loseConnection()
            return
        transport: Any = self.transport
        transport.loseWriteConnection()

    def resetConnection(self) -> None:
        """
        End the connection with a TCP reset (see L{resetTransport}), the
        inner protocol asking (a proxy whose upstream was reset).
        """
        self.endByFault("reset by netd", reset=True)

    def writeConnectionLost(self) -> None:
        """
        Our sending side is shut; reading goes on until the peer closes.
        """

    def madeProgress(self) -> bool:
        """
        Whether the peer got past the start: sent a byte and, on a TLS
        service, finished its handshake.  Read only to rank connections for
        eviction (L{ConnectionLimiter}).
        """
        if self.bytesIn == 0:
            return False
        tls = _tlsLayer(self.wrappedProtocol)
        return tls is None or tls.tlsDetails is not None

    def evicted(self, why: str) -> None:
        """
        The service is at C{max_connections}, or out of descriptors, and this
        connection went longest without progress: drop it, for a new one to
        take its place.

        @param why: for the connection's event and debug line (C{"evicted at max_connections"}).
        """
        self._ended = why
        self._closing()
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _idledOut(self) -> None:
        """
        Nothing moved either way for C{idle_timeout} seconds (the
        L{IdleWatch} says): drop the connection without waiting for a peer
        that may not be reading.
        """
        idle = self.factory.idle
        assert idle is not None
        self._ended = "idle timeout"
        self.factory.counters["idle_timeouts"] += 1
        self.factory.log.info(
            "closing connection from {peer}: idle for {timeout} seconds",
            peer=describePeer(self.getPeer()),
            timeout=idle.timeout,
            event="idle_timeout",
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop watching for idleness, tell the inner protocol, and record the
        connection in the service's event log (after the inner protocol, so
        that the TLS handshake's outcome is settled).
        """
        factory = self.factory
        if self._watched:
            self._watched = False
            factory.idle.forget()  # type: ignore[union-attr]
        if self._streamFaults is not None:
            self._streamFaults.stop()
        self._selfPaced = False
        self.connected = 0
        if self._directRead is not None:
            self._reroute()
        meter = self._meter
        if meter is None:
            bytesIn, bytesOut = self._bytesIn, self._bytesOut
        else:
            bytesIn, bytesOut = meter.bytesReceived, meter.bytesSent
        counters = factory.counters
        counters["bytes_received"] += bytesIn
        counters["bytes_sent"] += bytesOut
        events = factory.events
        addresses = self._addresses if events.enabled else None
        if logs.debugEnabled:
            self._logClosed(_endingOf(self._ended, type(reason.value)), factory.clock.seconds(), bytesIn, bytesOut)
        if addresses is not None:
            tls, fields = _eventSources(self.wrappedProtocol)
        factory.unregisterProtocol(self)
        self.wrappedProtocol.connectionLost(reason)
        # The wrapped protocol points back at this one, its transport.
        self.wrappedProtocol = None
        if addresses is not None:
            # How it ended is put in words when the event is read (L{_endingOf}); the
            # event keeps the kind of reason only, not the Failure and its traceback.
            events.add(
                "connection",
                _connectionEvent,
                *addresses,
                self._opened,
                factory.clock.seconds() - self._opened,
                bytesIn,
                bytesOut,
                self._ended,
                type(reason.value),
                tls.tlsDetails if tls is not None else None,
                None if fields is None else dict(fields.eventFields()),
            )

    def makeConnection(self, transport: Any) -> None:
        """
        Note the connection's addresses for its event (a closed socket can no
        longer tell its own), then start it as Twisted's C{ProtocolWrapper}
        does, with the transport's interfaces declared from a cache
        (L{_declareTransport}).
        """
        factory = self.factory
        if factory.events.enabled:
            self._addresses = (transport.getPeer(), transport.getHost())
        known = _DECLARED.get(providedBy(transport))
        if known is None:
            known = _declareTransport(transport)
        self.__provides__ = known[0]
        if known[1]:
            self._meter = transport
        self.connected = 1
        self.transport = transport
        self.connectionMade()
        # WrappingFactory.registerProtocol's one line, without its call.
        factory.protocols[self] = 1
        self.wrappedProtocol.makeConnection(self)
        self._reroute()

    def abortConnection(self) -> None:
        """
        Drop the connection now, without flushing.
        """
        if self._ended is None:
            self._ended = "aborted"
        self.transport.abortConnection()  # type: ignore[union-attr]

    def getPeer(self) -> IAddress:
        """
        The peer's address.
        """
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        """
        The local address.
        """
        return self.transport.getHost()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        """
        Stop reading from the peer for now (the framing's
        L{netd.interfaces.IPacedConnection.pauseReading}).
        """
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the peer again.
        """
        transport: Any = self.transport
        transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        Stop reading for good: the transport closes.
        """
        transport: Any = self.transport
        transport.stopProducing()

    def getHandle(self) -> Any:
        """
        The transport's socket (L{ISystemHandle}).
        """
        transport: Any = self.transport
        return transport.getHandle()

    def getTcpNoDelay(self) -> bool:
        """
        Whether Nagle's algorithm is off (L{ITCPTransport}).
        """
        transport: Any = self.transport
        return bool(transport.getTcpNoDelay())

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Turn Nagle's algorithm off, or on again (L{ITCPTransport}).
        """
        transport: Any = self.transport
        transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self) -> bool:
        """
        Whether TCP keep-alive probes are on (L{ITCPTransport}).
        """
        transport: Any = self.transport
        return bool(transport.getTcpKeepAlive())

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Turn TCP keep-alive probes on or off (L{ITCPTransport}).
        """
        transport: Any = self.transport
        transport.setTcpKeepAlive(enabled)

    def logPrefix(self) -> str:
        """
        The wrapped protocol's label, and the guard's, as Twisted's
        C{ProtocolWrapper} gives them (C{EchoReceiver (GuardedConnection)}).
        """
        inner = self.wrappedProtocol
        label = inner.logPrefix() if ILoggingContext.providedBy(inner) else type(inner).__name__
        return f"{label} (GuardedConnection)"

    def _logClosed(self, ended: str, now: float, bytesIn: int, bytesOut: int) -> None:
        """
        The debug line of a closed connection.
        """
        self.factory.log.debug(
            "connection from {peer} closed ({ended}) after {duration:.3f} seconds: {received} in, {sent} out",
            peer=describePeer(self.getPeer()),
            ended=ended,
            duration=round(now - self._opened, 6),
            bytes_in=bytesIn,
            bytes_out=bytesOut,
            received=counted(bytesIn, "byte"),
            sent=counted(bytesOut, "byte"),
            event="connection_closed",
        )


class _SteppedAside(GuardedConnection):
    """
    A guard with nothing to do per message: the transport's reads go straight
    to the inner protocol, and its writes straight to the transport, through
    the routes L{GuardedConnection._reroute} put in the guard's slots, with no
    call of the guard's own.  Only L{GuardedConnection._reroute} makes one.
    """

    __slots__ = ()
    # The slots' descriptors, under the names the transport and the inner
    # protocol call: reading one is as quick as reading an instance's own
    # attribute, and the class still says what each name is.
    dataReceived: Any = vars(GuardedConnection)["_directRead"]
    write: Any = vars(GuardedConnection)["_directWrite"]


class IdleWatch:
    """
    The idle timeouts of one service's connections, as deadlines in a heap
    under one timer: traffic only notes its time, and a connection costs a
    tuple pushed when it opens rather than a L{DelayedCall} of its own.  When
    a deadline comes, a connection that moved since gets the rest of its
    time; one that did not idles out (L{GuardedConnection._idledOut}).

    @cvar forgottenAllowed: how many closed connections' entries may wait in
        the heap (while they are at most half of it) before it is rebuilt.
    """

    forgottenAllowed = 64

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        """
        @param timeout: seconds without traffic before a connection idles out.
        """
        self._clock = clock
        self._timeout = timeout
        self._heap: list[tuple[float, int, GuardedConnection]] = []
        self._order = count()
        self._forgotten = 0
        self._call: IDelayedCall | None = None

    @property
    def timeout(self) -> float:
        """
        Seconds without traffic before a connection idles out, now.
        """
        return self._timeout

    def setTimeout(self, timeout: float) -> None:
        """
        Time connections out after C{timeout} seconds from now on, the ones
        watched already included: a shorter timeout moves every deadline
        forward (one pass over the connections, reading each one's
        C{lastActivity}); a longer one applies as the deadlines come.
        """
        shorter = timeout < self._timeout
        self._timeout = timeout
        if not shorter or not self._heap:
            return
        heap = [
            (min(deadline, connection.lastActivity + timeout), order, connection)
            for deadline, order, connection in self._heap
            if connection._watched
        ]
        heapify(heap)
        self._heap[:] = heap
        self._forgotten = 0
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if heap:
            self._call = self._clock.callLater(max(0.0, heap[0][0] - self._clock.seconds()), self._expire)

    def watch(self, connection: GuardedConnection, now: float) -> None:
        """
        Watch a connection that opened at C{now}, until it idles out or
        L{forget} is called for it; its C{_watched} says which.
        """
        heappush(self._heap, (now + self._timeout, next(self._order), connection))
        if self._call is None:
            self._call = self._clock.callLater(self._timeout, self._expire)

    def forget(self) -> None:
        """
        A watched connection closed (and its C{_watched} is now false).
        """
        self._forgotten += 1
        forgotten, heap = self._forgotten, self._heap
        if forgotten == len(heap):
            heap.clear()
            self._forgotten = 0
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif forgotten > self.forgottenAllowed and 2 * forgotten > len(heap):
            heap[:] = [entry for entry in heap if entry[2]._watched]
            heapify(heap)
            self._forgotten = 0

    def _expire(self) -> None:
        """
        The earliest deadline came: settle every connection whose deadline
        has passed, then wait for the next one.
        """
        self._call = None
        clock = self._clock
        now = clock.seconds()
        heap = self._heap
        try:
            while heap and heap[0][0] <= now:
                connection = heappop(heap)[2]
                if not connection._watched:
                    self._forgotten -= 1
                    continue
                deadline = connection.lastActivity + self._timeout
                if deadline > now:
                    heappush(heap, (deadline, next(self._order), connection))
                else:
                    connection._watched = False
                    connection._idledOut()
        finally:
            if heap and self._call is None:
                self._call = clock.callLater(max(0.0, heap[0][0] - now), self._expire)


_DECLARED: dict[Any, tuple[Any, bool]] = {}
"""
What L{_declareTransport} declared for a wrapper, by the interfaces of its
transport: a declaration that zope.interface makes once and shares among the
wrappers that get it, and whether the transport is metered
(L{IMeteredTransport}).
"""


def _declareTransport(transport: Any) -> tuple[Any, bool]:
    """
    The declaration that a wrapper of C{transport} provides what
    C{transport} does, as Twisted's C{ProtocolWrapper.makeConnection} makes
    it (the TLS layer and the plugins see the wrapper as their transport, and
    ask it for C{ITCPTransport}, C{ISystemHandle} and such), made once per
    kind of transport and kept in L{_DECLARED} for
    L{GuardedConnection.makeConnection}.  The wrapper does not count
    traffic itself: L{IMeteredTransport} stays the transport's.

    @return: the declaration, and whether C{transport} is metered
        (L{IMeteredTransport}).
    """
    provided = providedBy(transport)
    declaration = Provides(GuardedConnection, provided - IMeteredTransport)
    known = _DECLARED[provided] = (declaration, provided.isOrExtends(IMeteredTransport))
    return known


def _tlsLayer(protocol: Any) -> TLSServerProtocol | None:
    """
    The TLS layer among the protocols a connection's bytes pass, if the
    service terminates TLS.
    """
    while protocol is not None:
        if isinstance(protocol, TLSServerProtocol):
            return protocol
        protocol = getattr(protocol, "wrappedProtocol", None)
    return None


def _eventSources(protocol: Any) -> tuple[TLSServerProtocol | None, Any]:
    """
    What a connection's event takes from the protocols its bytes pass, in
    one walk down them: the TLS layer, if the service terminates TLS, and
    the receiver that adds fields of its own to the event
    (L{IConnectionEventFields}), if any, found before the connection is
    lost, since the framing then lets its receiver go.
    """
    tls = None
    while protocol is not None:
        if isinstance(protocol, TLSServerProtocol):
            tls = protocol
        inner = getattr(protocol, "__dict__", {})
        receiver = inner.get("receiver")
        if provides(IConnectionEventFields, receiver):
            return tls, receiver
        protocol = inner.get("wrappedProtocol")
    return tls, None


def _endingOf(ended: str | None, cause: type[object]) -> str:
    """
    How a connection ended, in words: what netd did to it (C{ended}), else
    what the peer did (a clean close or a reset), as the kind of its
    C{connectionLost} reason (C{cause}) says.
    """
    if ended is not None:
        return ended
    if issubclass(cause, ConnectionDone):
        return "closed by peer"
    if issubclass(cause, ConnectionLost):
        return "reset by peer"
    return "aborted"


def _connectionEvent(
    peer: IAddress,
    host: IAddress,
    opened: float,
    duration: float,
    bytesIn: int,
    bytesOut: int,
    ended: str | None,
    cause: type[object],
    tls: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The fields of a C{"connection"} event (see L{GuardedConnection.connectionLost}),
    then those its receiver adds (C{extra}), which never replace the core's.
    """
    event = {
        "peer": describePeer(peer),
        "local": describePeer(host),
        "opened": opened,
        "duration": round(duration, 6),
        "bytes_in": bytesIn,
        "bytes_out": bytesOut,
        "ended": _endingOf(ended, cause),
        "tls": tls,
    }
    if extra:
        for key, value in extra.items():
            event.setdefault(key, value)
    return event


PRESSURE = 0.75
"""
The share of C{max_connections} open from which the idle timeout shrinks
(towards C{min_idle_timeout} at the limit), as Envoy's overload manager scales
its timeouts down between two thresholds of a resource.
"""

PRESSURE_STEPS = 8
"""
How many idle timeouts there are between C{PRESSURE} and the limit: the
timeout changes (and, shorter, moves the deadlines) only when the number of
open connections crosses one of these steps, not at every connection.
"""

EVICTION_RANKING_TTL = 1.0
"""
Seconds the ranking of connections for eviction is used before it is made
again: under a flood, one pass over the connections serves many evictions.
"""


MOVED = 0.05
"""
Seconds by which a connection's last traffic must be later than when it was
ranked for it to count as having moved since: the kernel's figures (uvloop's
transports read C{TCP_INFO}) are in milliseconds of a coarser clock.
"""


@implementer(IOutOfDescriptors)
class ConnectionLimiter(WrappingFactory):
    """
    Wraps a service's protocol factory with the shared per-connection limits:
    at C{max_connections}, a new connection evicts the one that has gone
    longest without progress (C{evict}) or is refused, and the idle timeout
    shrinks from L{PRESSURE} of the limit up ("Design notes" in docs/listen.md).

    @ivar maxConnections: connections accepted at once; past it, a new one
        evicts the stalest (C{evict}), or is closed as soon as it is accepted
        and counted as C{connections_refused}.
    @ivar idleTimeout: seconds without traffic before a connection is dropped,
        below L{PRESSURE}; 0 never drops one.
    @ivar minIdleTimeout: the idle timeout at the limit.
    @ivar idle: what times the connections out, when C{idleTimeout} is set.
    @ivar events: the service's event log.
    """

    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        *,
        maxConnections: int,
        idleTimeout: float,
        clock: IReactorTime,
        counters: Counters,
        log: Logger,
        events: EventLog | None = None,
        faults: StreamFaults | None = None,
        evict: bool = False,
        minIdleTimeout: float | None = None,
    ) -> None:
        """
        @param events: the service's event log, which gets one
            C{"connection"} event per connection closed; none kept when
            L{None}.
        @param faults: the service's stream faults, which act on the
            connections, open ones included when they change; none when
            L{None}.
        @param evict: whether a connection past the limit evicts the stalest
            open one (else it is refused).
        @param minIdleTimeout: the idle timeout at the limit; L{None} keeps
            C{idleTimeout} whatever the number of connections.
        """
        super().__init__(wrappedFactory)
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.evict = evict
        self.minIdleTimeout = idleTimeout if minIdleTimeout is None else min(minIdleTimeout, idleTimeout)
        self.idle = IdleWatch(clock, idleTimeout) if idleTimeout else None
        self._pressureFrom = max(1, int(maxConnections * PRESSURE))
        self._step = 0
        self._ranking: list[tuple[GuardedConnection, float]] = []
        self._rankedAt = float("-inf")
        self._evictedWarning = BoundedWarning(
            log,
            "max_connections ({limit}) reached: closed the connection from {peer}, without progress for "
            "{stalled:.1f} seconds, to admit a new one ({suppressed} more since the last such line)",
            clock,
        )
        self._descriptorsWarning = BoundedWarning(
            log,
            "out of file descriptors at accept ({error}): {action} ({suppressed} more since the last such line)",
            clock,
        )
        self.clock = clock
        self.counters = counters
        self.log = log
        self.events = events if events is not None else EventLog.disabled()
        self.faults = faults
        if faults is not None:
            faults.onChange(self._faultsChanged)
        counters.accrueFrom(self._openTraffic)
        self._refusing = False
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> GuardedConnection | None:  # type: ignore[override]
        """
        Accept the connection if the service is below its limit: a
        L{GuardedConnection} around the service's protocol.
        """
        opened = len(self.protocols)
        if opened >= self.maxConnections and not (self.evict and self._evictStalest()):
            self.counters["connections_refused"] += 1
            if not self._refusing:
                self._refusing = True
                self.log.warn("refusing connections: max_connections ({limit}) reached", limit=self.maxConnections)
            return None
        if opened >= self._pressureFrom and self.idle is not None:
            self._pressureChanged(opened + 1)
        self.counters["connections_accepted"] += 1
        return GuardedConnection(self, self.wrappedFactory.buildProtocol(addr))

    def _evictStalest(self, atLimit: bool = True) -> bool:
        """
        Close the open connection that has gone longest without progress
        (L{_rank}), to make room for a new one: its place counts as free at
        once.  A ranking serves for L{EVICTION_RANKING_TTL} seconds; a
        connection that closed or moved bytes since is skipped.

        @param atLimit: whether it is for a new connection at the limit
            (logged as such), else for a descriptor (logged by the caller).
        @return: whether one was evicted.
        """
        now = self.clock.seconds()
        ranking = self._ranking
        if not ranking or now - self._rankedAt > EVICTION_RANKING_TTL:
            ranking = self._rank()
        while ranking:
            connection, stamp = ranking.pop()
            if connection.disconnecting or not connection.connected or connection.lastActivity > stamp + MOVED:
                continue
            self.counters["connections_evicted"] += 1
            if atLimit:
                self._evictedWarning.emit(
                    limit=self.maxConnections, peer=describePeer(connection.getPeer()), stalled=max(0.0, now - stamp)
                )
            connection.evicted("evicted at max_connections" if atLimit else "evicted: out of file descriptors")
            return True
        return False

    def _rank(self) -> list[tuple[GuardedConnection, float]]:
        """
        The open connections, the first to evict last (so that L{list.pop}
        takes it): those still in their TLS handshake or that never sent a
        byte, then the others, each part from the least recent traffic.
        """
        ranked = []
        for connection in self.protocols:
            if connection.disconnecting or not connection.connected:
                continue
            stamp = connection.lastActivity
            ranked.append((connection.madeProgress(), stamp, connection))
        ranked.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        self._ranking = [(connection, stamp) for _, stamp, connection in ranked]
        self._rankedAt = self.clock.seconds()
        return self._ranking

    def _pressureChanged(self, opened: int) -> None:
        """
        With C{opened} connections open, set the idle timeout for the pressure step
        they are at: C{idleTimeout} below L{PRESSURE} of the limit, shrinking
        in L{PRESSURE_STEPS} steps to C{minIdleTimeout} at the limit; it
        grows back a step only once the count is two steps lower (and all the
        way once below L{PRESSURE}).
        """
        idle = self.idle
        assert idle is not None
        span = max(1, self.maxConnections - self._pressureFrom)
        step = min(PRESSURE_STEPS, max(0, (opened - self._pressureFrom) * PRESSURE_STEPS // span))
        if step == self._step or (step == self._step - 1 and step):
            # Down by one step waits for a second one: a count that goes to
            # and fro across a step's edge (a connection closes, another
            # opens) does not move every deadline each time it comes back.
            return
        shorter = step > self._step
        self._step = step
        timeout = self.idleTimeout - (self.idleTimeout - self.minIdleTimeout) * step / PRESSURE_STEPS
        if shorter:
            self.log.info(
                "{open} of max_connections ({limit}) open: idle timeout now {timeout:.1f} seconds",
                open=opened,
                limit=self.maxConnections,
                timeout=timeout,
                event="idle_timeout_scaled",
            )
        idle.setTimeout(timeout)

    def outOfDescriptors(self, error: OSError) -> None:
        """
        The service's port could not accept for want of descriptors: count
        it, log it (at a bounded rate), and, with C{evict} on, close the
        stalest connection so that the next accept has a descriptor.
        """
        self.counters["descriptors_exhausted"] += 1
        evicted = self.evict and bool(self.protocols) and self._evictStalest(atLimit=False)
        self._descriptorsWarning.emit(
            error=str(error), action="closed the stalest connection" if evicted else "no connection was closed"
        )

    def unregisterProtocol(self, protocol: Any) -> None:
        """
        A connection closed: note that there is room again, fire drain waiters.
        (L{WrappingFactory.unregisterProtocol}'s one line is done here.)
        """
        del self.protocols[protocol]
        if self._step and self.idle is not None:
            self._pressureChanged(len(self.protocols))
        if self._refusing:
            self._refusing = False
            self.log.info("accepting connections again")
        if not self.protocols:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def _openTraffic(self) -> dict[str, int]:
        """
        The bytes the open connections moved so far, which the service's
        counters get when they close.
        """
        received = sent = 0
        for protocol in self.protocols:
            received += protocol.bytesIn
            sent += protocol.bytesOut
        return {"bytes_received": received, "bytes_sent": sent}

    def _faultsChanged(self) -> None:
        """
        The service's faults changed: tell each open connection.
        """
        for protocol in list(self.protocols):
            protocol.faultsChanged()

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
