"""
The Twisted transport of a TCP connection that uvloop serves: an asyncio
protocol to uvloop, an L{ITCPTransport} to the Twisted protocol it carries.
The connections the uvloop reactor's ports accept (L{StreamConnection}) and
those its C{connectTCP} makes (L{netd.reactors.uvclient.ClientConnection})
are both of this class.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import address, main
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ILoggingContext,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.reactors import tcpinfo
from netd.reactors.shared import IMeteredTransport

_RESET = struct.pack("ii", 1, 0)
"""
C{SO_LINGER} on, with no time to linger: a close resets the connection.
"""

_DONE = Failure(main.CONNECTION_DONE)
"""
The reason given to connections closed cleanly, shared as Twisted's reactors share theirs.
"""


@implementer(ITCPTransport, ISystemHandle, IPushProducer, IMeteredTransport)
class StreamConnection(asyncio.Protocol):
    """
    One accepted TCP connection: to uvloop, the asyncio protocol it calls;
    to the Twisted protocol the port's factory builds, its transport.

    What a Twisted transport promises is kept: writes are sent in order and
    at once when nothing is queued (uvloop's C{write}); C{loseConnection}
    stops reading at once and closes once what is queued is written, and
    C{loseWriteConnection} shuts the write side likewise, both once the
    events at hand are handled, so that what is written meanwhile is sent
    first, as Twisted sends it; C{abortConnection} resets the connection
    (C{SO_LINGER} 0) and drops what is queued; a peer's half-close reaches
    a protocol that provides L{IHalfCloseableProtocol} as
    C{readConnectionLost}, and loses the connection otherwise; an exception
    from the protocol is logged, labelled with the connection, and loses
    that connection with it; a registered push producer is paused and
    resumed as uvloop's write buffer crosses its limits, a pull producer is
    asked for more each time what it wrote is sent, and either is stopped
    when the connection is lost; the transport itself is a push producer of
    what it reads (C{pause_reading}).  Traffic is metered
    (L{IMeteredTransport}) where it is read and written.

    @ivar protocol: the Twisted protocol, once the connection is made.
    """

    port: Any
    reactor: Any
    _seconds: Callable[[], float]
    connected: int
    disconnecting: int
    disconnected = 0
    bytesReceived: int
    bytesSent: int
    producer: Any = None
    streamingProducer = False
    _noDelay = True
    """
    uvloop turns Nagle's algorithm off on every connection it accepts.
    """
    _host: Any = None
    _writeClosing = False
    _atEOF = False
    """
    Whether the peer's EOF is being handled (L{eof_received}).
    """
    _shut: bool
    """
    Whether uvloop takes no more writes: the write side is shut, or the connection closed.
    """
    _reason: Failure | None = None
    """
    Why the connection is lost, when it is not uvloop's to tell: aborted, or the protocol failed.
    """

    @classmethod
    def acceptedBy(cls, port: Any) -> type[StreamConnection]:
        """
        The class of the connections C{port} (a L{netd.reactors.uv.TCPPort})
        accepts, which uvloop makes without arguments: a subclass made once
        for the port, holding what all its connections share (the port, its
        reactor and clock), so that a new connection runs no C{__init__}.
        """
        reactor = port.reactor
        shared = {
            "__module__": cls.__module__,
            "port": port,
            "reactor": reactor,
            "_seconds": staticmethod(reactor.seconds),
        }
        return type(cls.__name__, (cls,), shared)

    def _prepare(self, reactor: Any) -> None:
        """
        Set up what every connection starts with, on C{reactor} (what the
        class of an accepted one holds already: L{acceptedBy}).
        """
        self.reactor = reactor
        self._seconds = reactor.seconds
        self._fresh()

    def _fresh(self) -> None:
        """
        Start the state every read and write looks at, on the instance:
        Python 3.11 looks an instance's own attributes up faster than its
        class's.
        """
        self.connected = self.disconnecting = 0
        self.bytesReceived = self.bytesSent = 0
        self._shut = False

    # asyncio's side

    def connection_made(self, transport: Any) -> None:
        """
        Build the Twisted protocol for the peer (or close at once if the
        factory builds none) and make its connection.
        """
        self._fresh()
        self._opened(transport)
        port = self.port
        self._host = port.connectionHost
        if len(self.reactor.streams) + 1 >= port.probeFrom:
            port.probeDescriptors()
        protocol = port.factory.buildProtocol(self._peer)
        if protocol is None:
            transport.abort()
            return
        self.sessionno = port.sessionno
        port.sessionno += 1
        self._begin(protocol)

    def _opened(self, transport: Any) -> None:
        """
        Keep uvloop's C{transport} of the connection just opened, and the peer's address.
        """
        self._transport = transport
        self._send = transport.write
        peer = transport.get_extra_info("peername")
        self._addressType = address.IPv6Address if len(peer) == 4 else address.IPv4Address
        self._peer = self._addressType("TCP", peer[0], peer[1])
        self._lastActivity = self._seconds()

    def _begin(self, protocol: Any) -> None:
        """
        The connection is C{protocol}'s: make its connection (see L{connection_made}).
        """
        self.connected = 1
        self.protocol = protocol
        self.reactor.streams.add(self)
        protocol.makeConnection(self)

    def data_received(self, data: bytes) -> None:
        """
        Count what was read and hand it to the protocol, unless it has lost
        the connection already: a Twisted transport stops reading at
        C{loseConnection}, where uvloop starts reading once C{connection_made}
        returns, whatever the protocol asked of it there.
        """
        if self.disconnecting:
            return
        self.bytesReceived += len(data)
        try:
            self.protocol.dataReceived(data)
        except BaseException:
            self._failed()

    def eof_received(self) -> bool:
        """
        The peer shut its side: tell a protocol that can go on half-closed,
        or have the connection closed (C{connectionLost} with
        L{ConnectionDone}), as Twisted's transports do.  A protocol that
        loses the connection as it is told has uvloop close it as this
        returns (see L{loseConnection}).
        """
        protocol = self.protocol
        if not IHalfCloseableProtocol.providedBy(protocol):
            return False
        closing = self.disconnecting
        self._atEOF = True
        try:
            protocol.readConnectionLost()
        except BaseException:
            self._failed()
        self._atEOF = False
        if self.disconnecting and not closing:
            self._shut = True
            return False
        return True

    def pause_writing(self) -> None:
        """
        uvloop's write buffer is over its high mark: pause a push producer
        (a pull one is not asked for more until the buffer is empty).
        """
        if self.producer is not None and self.streamingProducer:
            self.producer.pauseProducing()

    def resume_writing(self) -> None:
        """
        uvloop's write buffer is under its low mark again: resume a push
        producer, or ask a pull one for more.
        """
        if self.producer is None:
            return
        if self.streamingProducer:
            self.producer.resumeProducing()
        else:
            self._pull()

    def connection_lost(self, exc: Exception | None) -> None:
        """
        The connection is closed: stop the producer, and tell the protocol why.
        """
        if not self.connected:
            return
        self.connected = 0
        self.disconnected = 1
        self.reactor.streams.discard(self)
        if self._reason is not None:
            reason = self._reason
        elif exc is None:
            reason = _DONE
        else:
            reason = Failure(ConnectionLost(str(exc)))
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except BaseException:
                log.err(None, "stopping a producer", system=self.logPrefix())
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        """
        Tell the protocol the connection is lost, and why.
        """
        protocol = self.protocol
        del self.protocol
        protocol.connectionLost(reason)

    def lostAtShutdown(self, reason: Failure) -> None:
        """
        The reactor is shutting down: drop the connection at once and tell
        the protocol now, as Twisted's reactors tell theirs.
        """
        if self.connected:
            self._drop(reason)
            self.connection_lost(None)

    def _drop(self, reason: Failure) -> None:
        """
        Have uvloop close the connection at once, dropping what is queued;
        the protocol is to be told C{reason}.
        """
        self._reason = reason
        self._shut = True
        self._transport.abort()

    def _failed(self) -> None:
        """
        The protocol raised: log it, labelled with the connection, and lose
        the connection with that failure (what is queued is dropped), as
        Twisted's reactors do.
        """
        failure = Failure()
        log.err(failure, system=self.logPrefix())
        if self.connected and self._reason is None:
            self._drop(failure)

    # Twisted's side

    @property
    def lastActivity(self) -> float:
        """
        When data last moved either way on the wire (or the connection
        opened), as the kernel tells (C{TCP_INFO}: milliseconds since data
        was last received, and sent): asked only when the idle timeout needs
        it, where stamping every read and write would cost a clock call each.
        Once the connection is lost, the last time known (from the last time
        asked, or the opening): nothing asks a closed connection, so its
        close does not ask the kernel.
        """
        if not self.connected:
            return self._lastActivity
        try:
            since = tcpinfo.millisecondsSinceData(self.getHandle())
        except OSError:
            return self._lastActivity
        self._lastActivity = max(self._lastActivity, self._seconds() - since / 1000)
        return self._lastActivity

    def write(self, data: bytes) -> None:
        """
        Send C{data} (uvloop queues what the kernel does not take now) and
        count it.  Once the write side is shut, or the connection lost,
        writes are dropped, as Twisted's transports drop them.
        """
        if self._shut or not self.connected:
            return
        self._send(data)
        self.bytesSent += len(data)

    def writeSequence(self, iovec: Any) -> None:
        """
        Send the pieces as one write (counted as one).
        """
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """
        Stop reading now; close once the events at hand are handled and
        what is queued then is written.  Asked as the peer's EOF is handled
        (L{eof_received}), that is uvloop's own close once the handling
        returns: no more is read after an EOF, and what is written meanwhile
        is queued before the close.
        """
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = 1
        if self._atEOF:
            return
        self._transport.pause_reading()
        self.reactor.asyncioLoop.call_soon(self._close)

    def _close(self) -> None:
        """
        Have uvloop close the connection once what is queued is written, unless it is closed already.
        """
        if self.connected and not self._transport.is_closing():
            self._shut = True
            self._transport.close()

    def abortConnection(self) -> None:
        """
        Reset the connection at once, dropping what is queued.
        """
        if not self.connected or self._reason is not None:
            return
        self.disconnecting = 1
        try:
            self.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass
        self._drop(Failure(ConnectionAborted()))

    def loseWriteConnection(self) -> None:
        """
        Shut the write side once the events at hand are handled and what is
        queued then is written; then tell a half-closeable protocol its
        writes are over.
        """
        if self._writeClosing or not self.connected:
            return
        self._writeClosing = True
        self.reactor.asyncioLoop.call_soon(self._shutWrite)

    def _shutWrite(self) -> None:
        """
        Have uvloop shut the write side once what is queued is written, unless the connection is closed already.
        """
        if self._shut or not self.connected:
            return
        self._shut = True
        self._transport.write_eof()
        protocol = self.protocol
        if IHalfCloseableProtocol.providedBy(protocol):
            try:
                protocol.writeConnectionLost()
            except BaseException:
                self._failed()

    def getPeer(self) -> Any:
        """
        The peer's address.
        """
        return self._peer

    def getHost(self) -> Any:
        """
        The local address: the port's own when it is bound to one address
        (L{netd.reactors.uv.TCPPort.connectionHost}), else asked of uvloop once.
        """
        if self._host is None:
            host = self._transport.get_extra_info("sockname")
            self._host = self._addressType("TCP", host[0], host[1])
        return self._host

    def getHandle(self) -> Any:
        """
        The socket (uvloop's stand-in for it: options can be set, it cannot be read from).
        """
        return self._transport.get_extra_info("socket")

    def getTcpNoDelay(self) -> bool:
        """
        Whether Nagle's algorithm is off.
        """
        return self._noDelay

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Turn Nagle's algorithm off (or on again); a system call only if that changes it.
        """
        if bool(enabled) != self._noDelay:
            self.getHandle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(bool(enabled)))
            self._noDelay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        """
        Whether TCP keep-alive probes are on.
        """
        return bool(self.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Turn TCP keep-alive probes on or off.
        """
        self.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(bool(enabled)))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Pace C{producer} by the write buffer: a push producer is paused and
        resumed as the buffer crosses its limits; a pull producer is asked
        for more now, and again each time what it wrote is all sent (the
        buffer's limits are 0 meanwhile, so that uvloop says when), as
        Twisted's transports ask it.  On a lost connection, the producer is
        stopped at once.

        @raise RuntimeError: when a producer is registered already.
        """
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer {self.producer!r} was never unregistered."
            )
        if not self.connected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        if not streaming:
            self._limits = self._transport.get_write_buffer_limits()
            self._transport.set_write_buffer_limits(high=0)
            self._pull()

    def _pull(self) -> None:
        """
        Ask the pull producer for more; if what it wrote was all sent at
        once, ask again on the next turn (else uvloop's C{resume_writing}
        asks once it is).  A producer that writes nothing is not asked again,
        as on Twisted's transports.
        """
        producer = self.producer
        sent = self.bytesSent
        producer.resumeProducing()
        if self.producer is producer and self.bytesSent != sent and not self._transport.get_write_buffer_size():
            self.reactor.asyncioLoop.call_soon(self._pullAgain, producer)

    def _pullAgain(self, producer: Any) -> None:
        """
        Ask C{producer} for more, if it is still the one registered and the connection still open.
        """
        if self.producer is producer and self.connected:
            self._pull()

    def unregisterProducer(self) -> None:
        """
        Stop pacing the producer (a pull producer's write buffer gets its limits back).
        """
        if self.producer is not None and not self.streamingProducer and self.connected:
            low, high = self._limits
            self._transport.set_write_buffer_limits(high=high, low=low)
        self.producer = None

    def pauseProducing(self) -> None:
        """
        Stop reading for now.
        """
        if self.connected:
            self._transport.pause_reading()

    def resumeProducing(self) -> None:
        """
        Read again.
        """
        if self.connected and not self.disconnecting:
            self._transport.resume_reading()

    def stopProducing(self) -> None:
        """
        Stop for good: lose the connection.
        """
        self.loseConnection()

    def logPrefix(self) -> str:
        """
        The label of this connection's log lines, as Twisted's: protocol, session number, peer.
        """
        return f"{self._protocolPrefix()},{getattr(self, 'sessionno', '-')},{self._peer.host}"

    def _protocolPrefix(self) -> str:
        """
        The protocol's label (its C{logPrefix}, or its class's name), or C{-} when there is none.
        """
        protocol = getattr(self, "protocol", None)
        if protocol is None:
            return "-"
        if ILoggingContext.providedBy(protocol):
            prefix: str = protocol.logPrefix()
            return prefix
        name: str = protocol.__class__.__name__
        return name

    def __repr__(self) -> str:
        """
        As Twisted's: C{<Protocol #session on port>}.
        """
        protocol = getattr(self, "protocol", None)
        return f"<{protocol.__class__.__name__} #{getattr(self, 'sessionno', '-')} on {self.port.getHost().port}>"


class ClockedStreamConnection(StreamConnection):
    """
    A L{StreamConnection} that notes the time of its own traffic, for where
    C{TCP_INFO} cannot be read as L{netd.reactors.tcpinfo} expects (its
    canary failed): a clock call per read and per write.
    """

    def data_received(self, data: bytes) -> None:
        """
        Note the time, then count and hand on what was read.
        """
        if not self.disconnecting:
            self._lastActivity = self._seconds()
        super().data_received(data)

    @property
    def lastActivity(self) -> float:
        """
        When data last moved either way (or the connection opened), as noted.
        """
        return self._lastActivity

    def write(self, data: bytes) -> None:
        """
        Note the time, then send and count C{data}.
        """
        if not self._shut and self.connected:
            self._lastActivity = self._seconds()
        super().write(data)
