"""
netd's epoll reactor: Twisted's epoll reactor with a cheaper event loop and
TCP connections that send as soon as they are written to.

C{netd run} runs by default on netd's uvloop reactor (L{netd.reactors.uv}),
where uvloop's C transports carry netd's protocols; this one is the choice
where uvloop is not wanted (C{NETD_REACTOR=netd}), and C{twistd
--reactor=netd}'s.

Twisted's stock transports never send from C{write}: every write is queued,
the socket is registered for writability (an C{epoll_ctl} call), the reactor
turns, sends, and unregisters it (another one); and the epoll reactor runs
every event inside a logging context (L{twisted.python.log.callWithLogger}).
On a request/response load these costs are most of what a Twisted server
spends per message.  Here:

  - L{NetdReactor.doPoll} dispatches events without the logging context.  What
    that context did beyond labelling legacy log lines stays: an exception
    that escapes the handling of one event is logged and the loop goes on.
  - TCP connections made by C{listenTCP} (the C{tcp:} and C{tcp6:} endpoints),
    C{connectTCP} and C{adoptStreamPort} (the C{systemd:} endpoint) write with
    L{SendAtOnce}: a write made while nothing is queued goes to
    C{socket.send} at once, and only what the kernel did not take is queued,
    for Twisted's usual path (writability, producer pausing over
    C{bufferSize}, closing once flushed).
  - They meter their own traffic (L{IMeteredTransport}): bytes each way and
    the time of the last, counted where the bytes are read and written, so
    that the connection's guard (L{netd.stream.guard.GuardedConnection}) need not
    sit between the socket and the protocol to count them.
  - Accepted connections cost less to open and to close (L{Port},
    L{Server}): what Twisted builds for each one up front only in case it is
    logged (log prefixes, descriptions) is built when asked for, and a
    connection closed with nothing left to write is closed once the current
    events are handled, without waiting for writability (two C{epoll_ctl}
    calls, one wake-up and an empty C{send} less).

All of this rests on the internals of Twisted's epoll reactor and TCP
transports; L{CANARY} checks at start-up that they are as expected, and
L{install} installs Twisted's default reactor instead when they are not.
"""

from __future__ import annotations

import ctypes
import socket
import sys
from collections import deque
from errno import EAGAIN, ENOBUFS
from typing import Any

from twisted.internet import address, main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionAborted, ConnectionFdescWentAway
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.canary import Canary, require, requireNames
from netd.reactors.accepting import AcceptingPort
from netd.reactors.shared import TCP_PORT_PRIVATES, IMeteredTransport, INetdReactor, ServesTCPPorts, UnwatchedReactor

if sys.platform == "linux":
    from twisted.internet.epollreactor import EPollReactor as _PollingReactor
else:  # netd's reactor is epoll's; elsewhere install() installs Twisted's default
    from twisted.internet.selectreactor import SelectReactor as _PollingReactor

READ_SIZE = 2**18
"""
Bytes asked of the kernel per read: 256 KiB, as asyncio does.  Twisted asks
for C{bufferSize} (64 KiB), which stays the threshold of producer pausing;
reading four times as much per call took bulk echo from 0.74 to 0.89 of
uvloop's rate here, with request/response unchanged.
"""


@implementer(IMeteredTransport)
class SendAtOnce:
    """
    The read and write paths of netd's TCP transports (mixed into
    L{tcp.Server} and L{tcp.Client}): a write made while nothing is queued is
    sent at once, and the traffic both ways is metered (L{IMeteredTransport}).

    Twisted's path is taken whenever it decides what happens, so that
    everything but the moment of sending stays as Twisted does it: while
    bytes are queued (they keep their order), once the connection is closing,
    half-closed or aborted, while a pull producer is registered (it is asked
    for more only when the queue drains), under C{startTLS}, and for data
    that is not C{bytes}.

    A send that fails (the peer reset the connection) is not raised to the
    writer: the connection is lost through the reactor on its next turn, with
    L{ConnectionLost}, as when Twisted's own C{doWrite} fails.
    """

    # The attributes of the tcp.Connection this is mixed into.
    socket: socket.socket
    connected: int
    disconnecting: int
    dataBuffer: bytes
    _tempDataLen: int
    _writeDisconnecting: bool
    _aborting: bool
    TLS: bool
    producer: Any
    streamingProducer: bool
    protocol: Any
    doWrite: Any
    reactor: Any

    bytesReceived = 0
    bytesSent = 0
    lastActivity = 0.0

    def write(self, data: bytes) -> None:
        """
        Count C{data} and send it, queueing what the kernel does not take now.
        """
        self.bytesSent += len(data)
        self.lastActivity = self.reactor.turnTime
        if (
            self._tempDataLen
            or self.dataBuffer
            or self.disconnecting
            or self._writeDisconnecting
            or self._aborting
            or not self.connected
            or self.TLS
            or type(data) is not bytes
            or (self.producer is not None and not self.streamingProducer)
        ):
            super().write(data)  # type: ignore[misc]
            return
        try:
            sent = self.socket.send(data)
        except OSError as e:
            if e.errno == EAGAIN or e.errno == ENOBUFS:
                sent = 0
            else:
                self._sendFailed()
                return
        if sent != len(data):
            FileDescriptor.write(self, data[sent:])  # type: ignore[arg-type]

    def writeSequence(self, iovec: Any) -> None:
        """
        Send the pieces as one write (counted as one).
        """
        pieces = list(iovec)
        if pieces and all(type(piece) is bytes for piece in pieces):
            self.write(b"".join(pieces))
        else:
            self.bytesSent += sum(map(len, pieces))
            self.lastActivity = self.reactor.turnTime
            super().writeSequence(pieces)  # type: ignore[misc]

    def doRead(self) -> Any:
        """
        Read what is there, up to L{READ_SIZE}, count it and hand it to the
        protocol (L{tcp.Connection.doRead} with one call less).
        """
        try:
            data = self.socket.recv(READ_SIZE)
        except OSError as e:
            if e.errno == EAGAIN:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.bytesReceived += len(data)
        self.lastActivity = self.reactor.turnTime
        self.protocol.dataReceived(data)
        return None

    def _sendFailed(self) -> None:
        """
        The socket refused a send for good: let the reactor lose the
        connection, as it does when C{doWrite} fails, rather than tear it
        down under the writer's feet.
        """
        self.doRead = self.doWrite = _connectionLost  # type: ignore[method-assign]
        self.stopReading()  # type: ignore[attr-defined]
        self.startWriting()  # type: ignore[attr-defined]


_FDESC_WENT_AWAY = ConnectionFdescWentAway("File descriptor lost")
"""
Why a selectable whose descriptor is gone (C{fileno()} is -1) is disconnected,
as Twisted's epoll reactor says it.
"""

_CLOSED = Failure(main.CONNECTION_DONE)
"""
The reason given to the connections that L{Server.loseConnection} closes,
shared as the reactor shares its own.
"""


def _connectionLost() -> Exception:
    """
    What C{doRead} and C{doWrite} report once a send has failed.
    """
    return main.CONNECTION_LOST


class Server(SendAtOnce, tcp.Server):
    """
    An accepted TCP connection that sends as written, and that is cheaper
    than Twisted's to open and to close.

    Twisted formats a log prefix and a description for every connection it
    accepts, and builds a new address object each time one is asked for; here
    the prefix and the description are made when they are read, and the two
    addresses once each (the peer's is the one the factory was given; the
    local one, on a port bound to one address, is the port's).

    A L{loseConnection} with nothing queued, no producer and no half-close
    under way closes the connection once the reactor has handled the events
    at hand (L{NetdReactor._closeSoon}), instead of Twisted's wait for
    writability that sends nothing; C{connectionLost} still comes later than
    C{loseConnection}, never from within it.
    """

    _peer: Any = None
    _host: Any = None
    _noDelay = False

    def __init__(
        self, sock: socket.socket, protocol: Any, client: tuple[Any, ...], server: Any, sessionno: int, reactor: Any
    ) -> None:
        """
        What L{tcp.Server.__init__} does, less the strings made for logging;
        and the state that every write and read looks at set on the
        instance, with the values its classes give it: Python 3.11 looks an
        instance's own attributes up much faster than its class's (about a
        sixth of an echo's Python instructions went to these lookups).
        """
        tcp.Connection.__init__(self, sock, protocol, reactor)
        self.dataBuffer = b""
        self.disconnecting = 0
        self._writeDisconnecting = False
        self._aborting = False
        self.TLS = False
        self.producer = None
        self.streamingProducer = False
        self.bytesReceived = self.bytesSent = 0
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        if server is not None:
            self._noDelay = server.noDelay
        self.lastActivity = reactor.turnTime
        self.startReading()
        self.connected = 1

    @property
    def logstr(self) -> str:  # type: ignore[override]
        """
        The prefix of this connection's log lines, as Twisted's (protocol,
        session number, peer).
        """
        protocol = getattr(self, "protocol", None)
        prefix = self._getLogPrefix(protocol) if protocol is not None else "-"
        return f"{prefix},{self.sessionno},{self.hostname}"

    def __repr__(self) -> str:
        """
        As Twisted's: C{<Protocol #session on port>}.
        """
        protocol = getattr(self, "protocol", None)
        server: Any = self.server
        port = server.listeningHost.port if server is not None else self.client[1]
        return f"<{protocol.__class__.__name__} #{self.sessionno} on {port}>"

    def getPeer(self) -> Any:
        """
        The peer's address, made once.
        """
        if self._peer is None:
            self._peer = self._addressType("TCP", *self.client)  # type: ignore[arg-type]
        return self._peer

    def getHost(self) -> Any:
        """
        The local address, made once: the port's own when it is bound to one
        address, else asked of the socket.
        """
        if self._host is None:
            host = self.server.connectionHost if self.server is not None else None  # type: ignore[attr-defined]
            self._host = host if host is not None else tcp.Server.getHost(self)
        return self._host

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Set C{TCP_NODELAY}, unless it is set so already: a connection
        accepted on Linux has it on from its port's socket (L{Port}).
        """
        if bool(enabled) != self._noDelay:
            tcp.Server.setTcpNoDelay(self, enabled)
            self._noDelay = bool(enabled)

    def loseConnection(self) -> None:
        """
        Close after what is queued is written; with nothing queued (and
        nothing else that Twisted's path decides on), close once the events
        at hand are handled.
        """
        if (
            self._tempDataLen
            or self.dataBuffer
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._writeDisconnected
            or self.producer is not None
            or self.TLS
        ):
            super().loseConnection()
            return
        self.stopReading()
        self.disconnecting = 1
        self.reactor._closeSoon(self)

    def _closeIfQuiet(self) -> None:
        """
        Close a connection that L{loseConnection} left to the reactor, unless
        it is gone already or has since been given bytes to write (then it
        closes once they are written, as Twisted's does).  The reactor no
        longer watches it: nothing to unregister.
        """
        if self.connected and not self._tempDataLen and not self.dataBuffer:
            self.connectionLost(_CLOSED)

    def readConnectionLost(self, reason: Failure) -> None:
        """
        The peer shut its side: tell a protocol that provides
        L{IHalfCloseableProtocol} (without the adaptation Twisted asks for,
        which goes through a wrapping protocol's C{__getattr__}), or lose the
        connection, as L{tcp.Connection.readConnectionLost}.
        """
        protocol = self.protocol
        if not IHalfCloseableProtocol.providedBy(protocol):
            tcp.Server.readConnectionLost(self, reason)
            return
        try:
            protocol.readConnectionLost()
        except BaseException:
            log.err()
            self.connectionLost(Failure())

    def connectionLost(self, reason: Failure) -> None:
        """
        L{tcp.Connection.connectionLost}, with the reason's type tested
        directly (C{Failure.check} costs a tenth of a close).
        """
        if "socket" not in self.__dict__:
            return
        FileDescriptor.connectionLost(self, reason)
        self._closeSocket(not isinstance(reason.value, ConnectionAborted))
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(reason)


class Client(SendAtOnce, tcp.Client):
    """
    An outgoing TCP connection that sends as written.
    """


class Port(AcceptingPort):
    """
    A listening TCP port whose connections send as written, with
    C{TCP_NODELAY} on: Nagle's algorithm would only hold back what they
    send.  On Linux the option is set once, on the listening socket, which
    every connection it accepts inherits.

    @ivar listeningHost: the address listened on (its port what the kernel
        chose for port 0), which names the port in its connections'
        descriptions, even once it has stopped.
    @ivar connectionHost: the local address of every connection accepted,
        when the port is bound to one address (L{None} on a wildcard one).
    @ivar noDelay: whether the connections accepted have C{TCP_NODELAY} on
        from the start.
    """

    transport = Server
    listeningHost: Any = None
    connectionHost: Any = None
    noDelay = False

    def startListening(self) -> None:
        """
        Listen, and note what the connections accepted share.
        """
        super().startListening()
        if sys.platform == "linux":
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.noDelay = True
        host = self.listeningHost = self.getHost()
        if host.host not in ("0.0.0.0", "::"):
            self.connectionHost = host


class Connector(tcp.Connector):
    """
    Makes outgoing TCP connections that send as written.
    """

    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


@implementer(INetdReactor)
class NetdReactor(ServesTCPPorts, _PollingReactor):
    """
    The epoll reactor with netd's event dispatch and TCP transports.

    @ivar turnTime: the reactor's C{seconds()} when the current turn began
        its work: when it began to run the timed calls due, and again when
        the poll returned with events.  What happens in a turn happened at
        most that turn's work later; the transports note the time of their
        traffic from it (L{IMeteredTransport.lastActivity}), sparing a clock
        call per read and per write.
    """

    tcpPort = Port

    def __init__(self) -> None:
        self._closing: deque[Server] = deque()
        super().__init__()
        self.turnTime = self.seconds()

    def runUntilCurrent(self) -> None:
        """
        Note the turn's time, then run the timed calls due.
        """
        self.turnTime = self.seconds()
        super().runUntilCurrent()

    def _closeSoon(self, connection: Server) -> None:
        """
        Close C{connection} (L{Server._closeIfQuiet}) once the events at
        hand are handled, or, when it is not an event's handling that asks,
        on the reactor's next turn.
        """
        self._closing.append(connection)

    def _closePending(self) -> None:
        """
        Close the connections L{_closeSoon} was given, each on its own: an
        exception from one's C{connectionLost} is logged and the others are
        closed.
        """
        closing = self._closing
        while closing:
            connection = closing.popleft()
            try:
                connection._closeIfQuiet()
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=_logPrefix(connection))

    def disconnectAll(self) -> None:
        """
        At shutdown, close the connections waiting to be closed, then every
        other one.
        """
        self._closePending()
        super().disconnectAll()

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait for events and handle each, without the logging context that
        Twisted's loop opens around every event.

        An event that is only "readable", nearly every one, is handled here
        as L{_doReadOrWrite} handles it, one call less: an exception from
        C{doRead} is logged and loses that connection.  Other events go to
        L{_doReadOrWrite}.  An exception that escapes the handling of an
        event (from a protocol's C{connectionLost}, say) is logged, and the
        other events are handled.

        Connections closed while the events are handled (L{_closeSoon}) are
        closed after them; any closed meanwhile (by a timed call) are closed
        first, and the poll then does not wait, so that what their closing
        schedules is timed from the next turn.
        """
        if self._closing:
            self._closePending()
            timeout = 0
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except InterruptedError:
            return
        self.turnTime = self.seconds()
        selectables = self._selectables
        doReadOrWrite = self._doReadOrWrite
        readable = self._POLL_IN
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                if event == readable:
                    why: BaseException | None = None
                    try:
                        if selectable.fileno() == -1:
                            why = _FDESC_WENT_AWAY
                        else:
                            why = selectable.doRead()
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err(system=_logPrefix(selectable))
                    if why:
                        self._disconnectSelectable(selectable, why, True)
                else:
                    doReadOrWrite(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=_logPrefix(selectable))
        if self._closing:
            self._closePending()

    doIteration = doPoll

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30.0, bindAddress: Any = None
    ) -> Connector:
        """
        Connect over TCP with a connection that sends as written.
        """
        connector = Connector(host, port, factory, timeout, bindAddress, self)
        connector.connect()
        return connector


def _logPrefix(selectable: Any) -> str:
    """
    The label of an error's log line: the selectable's log prefix, as
    Twisted's own loop gives it.
    """
    try:
        prefix: str = selectable.logPrefix()
    except BaseException:
        return "(buggy logPrefix method)"
    return prefix


def _connectionPrivates() -> None:
    """
    The state a fresh C{tcp.Connection} has that L{SendAtOnce} and L{Server} read and write.
    """
    made = tcp.Connection(socket.socket(), Protocol(), UnwatchedReactor())
    try:
        for name, value in (
            ("_tempDataLen", 0),
            ("dataBuffer", b""),
            ("_writeDisconnecting", False),
            ("_writeDisconnected", False),
            ("_aborting", False),
            ("TLS", False),
            ("producer", None),
            ("streamingProducer", False),
        ):
            require(getattr(made, name, Ellipsis) == value, f"tcp.Connection().{name} == {value!r}")
        requireNames(made, "_closeSocket _getLogPrefix fileno socket", "twisted's tcp.Connection")
    finally:
        made.socket.close()


def _check() -> None:
    """
    What this reactor and its transports take from Twisted beyond its
    public API is there: the epoll reactor's poller, its table of
    selectables and its event handling, the state of C{tcp.Connection}, and
    the hooks of C{tcp.Server}, C{tcp.Port} and C{tcp.Connector}.
    """
    requireNames(
        _PollingReactor,
        "_doReadOrWrite _disconnectSelectable _POLL_IN doPoll runUntilCurrent disconnectAll",
        "twisted's epoll reactor",
    )
    import select

    require(getattr(_PollingReactor, "_POLL_IN", None) == select.EPOLLIN, "EPollReactor._POLL_IN == EPOLLIN")
    initNames = _PollingReactor.__init__.__code__.co_names
    require("_poller" in initNames and "_selectables" in initNames, "EPollReactor() to set _poller and _selectables")
    _connectionPrivates()
    requireNames(tcp.Server, "_addressType readConnectionLost getHost setTcpNoDelay", "twisted's tcp.Server")
    requireNames(tcp.Port, TCP_PORT_PRIVATES, "twisted's tcp.Port")
    require("_makeTransport" in vars(tcp.Connector), "tcp.Connector to make its transport with _makeTransport")


CANARY = Canary("epoll reactor", _check, "netd runs on Twisted's default reactor instead")


def install() -> str:
    """
    Install netd's reactor (Twisted's default one where there is no epoll,
    or where L{CANARY} failed): what C{twistd --reactor=netd} calls.

    @return: C{"netd"}, or C{"twisted"} for Twisted's default reactor.
    """
    from twisted.internet.main import installReactor as installGlobal

    if sys.platform == "linux" and CANARY.alive():
        keepReadsOnTheHeap()
        installGlobal(NetdReactor())
        return "netd"
    from twisted.internet import default

    default.install()
    return "twisted"


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keepReadsOnTheHeap() -> None:
    """
    Have glibc's malloc serve blocks up to 4 reads' size (L{READ_SIZE}) from
    the heap, and keep up to twice that free at its top, for good.

    Each read allocates L{READ_SIZE} bytes (C{socket.recv} sizes its buffer
    before it knows what comes) and shrinks them to what came.  Over glibc's
    first threshold (128 KiB) that is an C{mmap}, an C{mremap} and an
    C{munmap} a read, which cut a request/response echo to a quarter of its
    speed.  glibc raises the threshold by itself once the process frees a
    larger mapped block, as netd's start-up happens to do; setting it here
    does not leave that to chance.  Elsewhere than glibc, nothing is done.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 4 * READ_SIZE)
    mallopt(_M_TRIM_THRESHOLD, 8 * READ_SIZE)
