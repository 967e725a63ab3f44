"""
netd's reactor: Twisted's epoll reactor with a cheaper event loop and TCP
connections that send as soon as they are written to.

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

C{NETD_REACTOR=twisted} makes C{netd run} use Twisted's default reactor
instead (L{installReactor}), to rule this module out when chasing a bug;
C{twistd --reactor=netd} runs twistd on it.
"""

from __future__ import annotations

import os
import socket
import sys
from errno import EAGAIN, ENOBUFS
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

if sys.platform == "linux":
    from twisted.internet.epollreactor import EPollReactor as _PollingReactor
else:  # netd's reactor is epoll's; elsewhere installReactor installs Twisted's default
    from twisted.internet.selectreactor import SelectReactor as _PollingReactor

REACTORS = ("netd", "twisted")
"""
The values of C{NETD_REACTOR}: netd's reactor (the default), or Twisted's
default reactor.
"""


class SendAtOnce:
    """
    The write path of netd's TCP transports (mixed into L{tcp.Server} and
    L{tcp.Client}): a write made while nothing is queued is sent at once.

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

    def write(self, data: bytes) -> None:
        """
        Send C{data}, queueing what the kernel does not take now.
        """
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
        Send the pieces as one write.
        """
        pieces = list(iovec)
        if pieces and all(type(piece) is bytes for piece in pieces):
            self.write(b"".join(pieces))
        else:
            super().writeSequence(pieces)  # type: ignore[misc]

    def doRead(self) -> Any:
        """
        Read what is there and hand it to the protocol (L{tcp.Connection.doRead}
        with one call less).
        """
        try:
            data = self.socket.recv(self.bufferSize)  # type: ignore[attr-defined]
        except OSError as e:
            if e.errno == EAGAIN:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
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


def _connectionLost() -> Exception:
    """
    What C{doRead} and C{doWrite} report once a send has failed.
    """
    return main.CONNECTION_LOST


class Server(SendAtOnce, tcp.Server):
    """
    An accepted TCP connection that sends as written.
    """


class Client(SendAtOnce, tcp.Client):
    """
    An outgoing TCP connection that sends as written.
    """


class Port(tcp.Port):
    """
    A listening TCP port whose connections send as written.
    """

    transport = Server


class Connector(tcp.Connector):
    """
    Makes outgoing TCP connections that send as written.
    """

    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


class NetdReactor(_PollingReactor):
    """
    The epoll reactor with netd's event dispatch and TCP transports.
    """

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
        """
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except InterruptedError:
            return
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
                            why = _NO_FILEDESC
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

    doIteration = doPoll

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Port:
        """
        Listen on a TCP port whose connections send as written.
        """
        listening = Port(port, factory, backlog, interface, self)
        listening.startListening()
        return listening

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30.0, bindAddress: Any = None
    ) -> Connector:
        """
        Connect over TCP with a connection that sends as written.
        """
        connector = Connector(host, port, factory, timeout, bindAddress, self)
        connector.connect()
        return connector

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        """
        Listen on an inherited socket (systemd socket activation); TCP ones
        get connections that send as written.
        """
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
        listening = Port._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening


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


def install() -> None:
    """
    Install netd's reactor (Twisted's default one where there is no epoll):
    what C{twistd --reactor=netd} calls.
    """
    from twisted.internet.main import installReactor as installGlobal

    if sys.platform == "linux":
        installGlobal(NetdReactor())
    else:
        from twisted.internet import default

        default.install()


def installReactor(environ: dict[str, str] | None = None) -> str:
    """
    Install the reactor that C{NETD_REACTOR} names, unless one is installed
    already (by twistd, or by a program that runs netd inside its own).

    @param environ: where to read C{NETD_REACTOR} (the process environment
        by default).
    @return: the name of the reactor installed, or C{"preinstalled"}.
    @raise ValueError: for a value that names no reactor, saying which do.
    """
    choice = (os.environ if environ is None else environ).get("NETD_REACTOR", "netd") or "netd"
    if choice not in REACTORS:
        raise ValueError(f"NETD_REACTOR={choice!r} names no reactor; use one of: {', '.join(REACTORS)}")
    if "twisted.internet.reactor" in sys.modules:
        return "preinstalled"
    if choice == "netd":
        install()
    else:
        from twisted.internet import default

        default.install()
    return choice
