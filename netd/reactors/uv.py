"""
netd's reactor on uvloop: Twisted's asyncio reactor running on a uvloop
event loop, with accepted TCP connections served by uvloop's transports.

On netd's epoll reactor (L{netd.reactors.epoll}) every message still costs a trip
through Python's event loop: the poll, the selectable's C{doRead}, the
socket's C{recv} and C{send}, each of these releasing and retaking the GIL.
uvloop does that part in C (libuv) and calls the protocol's
C{data_received} with the bytes read; its C{write} sends at once when
nothing is queued.  Here that C path carries netd's own Twisted protocols:
L{TCPPort} hands its listening socket to C{loop.create_server}, and every
connection accepted gets a L{StreamConnection}, the asyncio protocol that is
the Twisted transport (L{ITCPTransport}) of the protocol the factory builds.

Everything else is Twisted's asyncio reactor: timed calls, UDP ports (netd's
batching one, L{netd.reactors.udp}, reads through C{add_reader} here as well),
outgoing TCP connections, unix sockets and signals.

L{CANARY} checks at start-up what this takes from uvloop and from Twisted's
C{tcp.Port} beyond their public API; L{install} installs netd's epoll
reactor instead when it fails.  The reactor keeps the loop it runs on
(L{UvloopReactor.asyncioLoop}) rather than read Twisted's private attribute.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import socket
import struct
import sys
from collections.abc import Callable
from errno import EMFILE, ENFILE
from functools import partial
from typing import Any

from twisted.internet import address, main, tcp
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ILoggingContext,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.canary import Canary, require, requireNames
from netd.reactors import tcpinfo
from netd.reactors.rlimits import openFileLimit, reportOutOfDescriptors, systemBacklog
from netd.reactors.shared import TCP_PORT_PRIVATES, IMeteredTransport, INetdReactor, ServesTCPPorts

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
    _shut: bool
    """
    Whether uvloop takes no more writes: the write side is shut, or the connection closed.
    """
    _reason: Failure | None = None
    """
    Why the connection is lost, when it is not uvloop's to tell: aborted, or the protocol failed.
    """

    def __init__(self, port: TCPPort) -> None:
        """
        A connection that C{port} accepted; made by uvloop before the connection is.
        """
        self.port = port
        reactor: Any = port.reactor
        self.reactor = reactor
        self._seconds: Callable[[], float] = reactor.seconds
        # What every read and write looks at, on the instance: Python 3.11
        # looks an instance's own attributes up faster than its class's.
        self.connected = self.disconnecting = 0
        self.bytesReceived = self.bytesSent = 0
        self._shut = False

    # asyncio's side

    def connection_made(self, transport: Any) -> None:
        """
        Build the Twisted protocol for the peer (or close at once if the
        factory builds none) and make its connection.
        """
        self._transport = transport
        self._send = transport.write
        peer = transport.get_extra_info("peername")
        self._addressType = address.IPv6Address if len(peer) == 4 else address.IPv4Address
        self._peer = self._addressType("TCP", peer[0], peer[1])
        self._lastActivity = self._seconds()
        port = self.port
        self._host = port.connectionHost
        port.accepted()
        factory: Any = port.factory
        protocol = factory.buildProtocol(self._peer)
        if protocol is None:
            transport.abort()
            return
        self.sessionno = port.sessionno
        port.sessionno += 1
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
        L{ConnectionDone}), as Twisted's transports do.
        """
        protocol = self.protocol
        if not IHalfCloseableProtocol.providedBy(protocol):
            return False
        try:
            protocol.readConnectionLost()
        except BaseException:
            self._failed()
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
        what is queued then is written.
        """
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = 1
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
        (L{TCPPort.connectionHost}), else asked of uvloop once.
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
        protocol = getattr(self, "protocol", None)
        if protocol is None:
            name = "-"
        elif ILoggingContext.providedBy(protocol):
            name = protocol.logPrefix()
        else:
            name = protocol.__class__.__name__
        return f"{name},{getattr(self, 'sessionno', '-')},{self._peer.host}"

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


class TCPPort(tcp.Port):
    """
    A TCP port bound and listened on as Twisted's (addresses, errors, the
    factory's start and stop, C{getHost}, adopted sockets), whose connections
    uvloop accepts and serves (L{StreamConnection}), with the port's backlog
    (uvloop's own default is 100).

    Out of descriptors: libuv accepts in C, and on C{EMFILE} closes what
    waits in the listen queue (with a descriptor it keeps in reserve for
    this), unseen, and does not spin.  So once the open connections are half
    the open-file limit (below that, netd's other descriptors could not fill
    the table), each connection accepted is followed by a probe (a C{dup} of
    the listening socket, closed at once): when it fails, the table is full,
    and the port tells the service (L{reportOutOfDescriptors}), which counts
    it, logs it and closes its stalest connection, so that the next client
    finds a descriptor.  (Pausing uvloop's accepting, as netd's epoll
    reactor's port does, would take a descriptor to resume it: the one that
    eviction freed.)

    @ivar probeFrom: the number of open connections (of the reactor's) from
        which accepts are followed by the probe: half the open-file limit,
        read when the port starts listening.
    @ivar connectionHost: the local address of every connection accepted,
        when the port is bound to one address (L{None} on a wildcard one,
        whose connections ask theirs of the socket when it is asked for).
    """

    _server: Any = None
    _starting: asyncio.Future[Any] | None = None
    _accepting = False
    probeFrom = 0
    connectionHost: Any = None

    def startListening(self) -> None:
        """
        Listen as Twisted's port does; the reactor keeps the port until it stops.
        """
        self.probeFrom = openFileLimit() // 2
        super().startListening()
        self._listeningHost = super().getHost()
        if self._listeningHost.host not in ("0.0.0.0", "::"):
            self.connectionHost = self._listeningHost
        self.reactor.streamPorts.add(self)  # type: ignore[attr-defined]

    def getHost(self) -> Any:
        """
        The address listened on, as it was when listening began (uvloop owns the socket since).
        """
        return self._listeningHost

    def connectionLost(self, reason: Failure) -> None:
        """
        Close as Twisted's port does; the reactor forgets the port.
        """
        self.reactor.streamPorts.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)

    def accepted(self) -> None:
        """
        uvloop accepted a connection (not yet among the reactor's
        C{streams}): from L{probeFrom} open connections with it, see whether
        it took the last descriptor the limit allows.
        """
        if len(self.reactor.streams) + 1 < self.probeFrom:  # type: ignore[attr-defined]
            return
        try:
            probe = os.dup(self.fileno())
        except OSError as e:
            if e.errno not in (EMFILE, ENFILE):
                raise
            reportOutOfDescriptors(self.factory, e)
        else:
            os.close(probe)

    def _backlog(self) -> int:
        """
        The backlog uvloop listens with (it always listens again): the
        port's, or for a socket systemd passed, the system's largest, which
        is also systemd's default C{Backlog=}.
        """
        return self.backlog if self.backlog is not None else systemBacklog()

    def startReading(self) -> None:
        """
        Have uvloop accept on the socket (from the loop's next turn).
        """
        if self._accepting:
            return
        self._accepting = True
        loop = self.reactor.asyncioLoop  # type: ignore[attr-defined]
        connection = StreamConnection if tcpinfo.CANARY.alive() else ClockedStreamConnection
        self._serve = loop.create_server(partial(connection, self), sock=self.socket, backlog=self._backlog())
        starting = asyncio.ensure_future(self._serve, loop=loop)
        starting.add_done_callback(self._serving)
        self._starting = starting

    def _serving(self, starting: asyncio.Future[Any]) -> None:
        """
        uvloop accepts now; if the port was stopped meanwhile, stop it.
        """
        self._starting = None
        if starting.cancelled():
            return
        error = starting.exception()
        if not self._accepting:  # stopped meanwhile: whatever came of it is over
            if error is None:
                starting.result().close()
            return
        if error is not None:
            log.err(Failure(error), f"serving {self.getHost()}")
            return
        self._server = starting.result()

    def stopReading(self) -> None:
        """
        Stop accepting: uvloop closes the listening socket (connections
        already accepted go on); if uvloop has not started serving it yet,
        it never does, so that it never takes a socket the port is closing.
        """
        self._accepting = False
        if self._starting is not None:
            self._starting.cancel()
            # Closed now, not left for the cancelled task to close on a turn
            # of the loop that may never come (at shutdown).
            self._serve.close()
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def stopWriting(self) -> None:
        """
        A listening port never writes.
        """


@implementer(INetdReactor)
class UvloopReactor(ServesTCPPorts, AsyncioSelectorReactor):
    """
    Twisted's asyncio reactor on a uvloop loop, whose TCP listeners
    (C{listenTCP}: the C{tcp:} and C{tcp6:} endpoints; C{adoptStreamPort}:
    the C{systemd:} one) have uvloop serve their connections.

    @ivar asyncioLoop: the asyncio loop the reactor runs on.
    @ivar streamPorts: those listeners, until they stop.
    @ivar streams: the connections uvloop serves for them, until they are
        lost.  Neither is registered with the reactor as a reader, so the
        reactor keeps them here to close them at shutdown (L{disconnectAll}).
    """

    tcpPort = TCPPort

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """
        Run on C{loop}, or on a new uvloop loop made the current one.
        """
        if loop is None:
            import uvloop

            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
        self.asyncioLoop = loop
        self.streamPorts: set[TCPPort] = set()
        self.streams: set[StreamConnection] = set()
        loop.set_exception_handler(_logAsyncioError)
        super().__init__(loop)

    def disconnectAll(self) -> None:
        """
        At shutdown, lose every selectable as Twisted does, then the
        listeners and connections uvloop serves, each told
        L{ConnectionLost}, as Twisted tells its own.
        """
        super().disconnectAll()
        lost = Failure(main.CONNECTION_LOST)
        for port in list(self.streamPorts):
            if not port.disconnecting:  # else stopping already, as Twisted's own ports do
                port.stopReading()
                port.connectionLost(lost)
        for connection in list(self.streams):
            try:
                connection.lostAtShutdown(lost)
            except BaseException:
                log.err(None, "losing a connection at shutdown", system=connection.logPrefix())


_asyncioLog = Logger(namespace="netd.reactors.uv")


def _logAsyncioError(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """
    Log what asyncio or uvloop reports (an error of the accepting socket,
    such as running out of file descriptors, say) in netd's log, with its
    exception's traceback if it has one, rather than on standard error
    through Python's C{logging}, outside netd's log format.
    """
    message = context.get("message") or "asyncio reported an error"
    details = ", ".join(f"{key}={value!r}" for key, value in context.items() if key not in ("message", "exception"))
    error = context.get("exception")
    if isinstance(error, BaseException):
        _asyncioLog.failure(
            "{message} ({details})", Failure(error, type(error), error.__traceback__), message=message, details=details
        )
    else:
        _asyncioLog.error("{message} ({details})", message=message, details=details)


class _Accepted(asyncio.Protocol):
    """
    The canary's server side: keeps the transport of the connection accepted.
    """

    def __init__(self, accepted: list[Any]) -> None:
        self._accepted = accepted

    def connection_made(self, transport: Any) -> None:
        self._accepted.append(transport)


def _sendsAtOnce(loop: asyncio.AbstractEventLoop) -> None:
    """
    On C{loop}, a server made from a listening socket (as L{TCPPort} makes
    one) accepts a loopback connection, whose transport's C{write} has sent
    the bytes when it returns, and whose C{get_extra_info("socket")} can be
    asked for socket options.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted: list[Any] = []
    server = loop.run_until_complete(loop.create_server(lambda: _Accepted(accepted), sock=listener, backlog=1))
    try:
        with socket.create_connection(listener.getsockname(), timeout=1) as client:
            for _ in range(100):
                if accepted:
                    break
                loop.run_until_complete(asyncio.sleep(0.01))
            require(accepted, "uvloop to accept a loopback connection")
            transport = accepted[0]
            transport.write(b"!")
            require(select.select([client], [], [], 0)[0], "uvloop's write to send at once")
            handle = transport.get_extra_info("socket")
            require(
                handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "uvloop's connections to have TCP_NODELAY"
            )
            transport.abort()
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())


def _check() -> None:
    """
    What this reactor takes from uvloop and Twisted beyond their public API
    is there, and uvloop's transports behave as L{StreamConnection} expects.
    """
    import uvloop

    requireNames(uvloop, "new_event_loop", "uvloop")
    requireNames(
        tcp.Port, f"{TCP_PORT_PRIVATES} startListening startReading stopReading connectionLost", "twisted's tcp.Port"
    )
    require("startReading" in tcp.Port.startListening.__code__.co_names, "tcp.Port.startListening to start reading")
    require(
        "eventloop" in inspect.signature(AsyncioSelectorReactor.__init__).parameters,
        "AsyncioSelectorReactor(eventloop)",
    )
    loop = uvloop.new_event_loop()
    try:
        _sendsAtOnce(loop)
    finally:
        loop.close()


CANARY = Canary("uvloop reactor", _check, "netd runs on its epoll reactor instead")


def install() -> str:
    """
    Install netd's uvloop reactor as Twisted's global one: what C{netd run}
    does by default, and C{twistd --reactor=netd-uvloop}.  Where it cannot
    serve (not Linux, or L{CANARY} failed), netd's epoll reactor's
    L{install <netd.reactors.epoll.install>} decides.

    @return: the C{NETD_REACTOR} name of the reactor installed.
    """
    if sys.platform != "linux" or not CANARY.alive():
        from netd.reactors import epoll

        return epoll.install()
    from twisted.internet.main import installReactor as installGlobal

    installGlobal(UvloopReactor())
    return "uvloop"
