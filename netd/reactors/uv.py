"""
netd's reactor on uvloop: Twisted's asyncio reactor running on a uvloop
event loop, with TCP connections, accepted and made, served by uvloop's
transports.

On netd's epoll reactor (L{netd.reactors.epoll}) every message still costs a trip
through Python's event loop: the poll, the selectable's C{doRead}, the
socket's C{recv} and C{send}, each of these releasing and retaking the GIL.
uvloop does that part in C (libuv) and calls the protocol's
C{data_received} with the bytes read; its C{write} sends at once when
nothing is queued.  Here that C path carries netd's own Twisted protocols:
L{TCPPort} hands its listening socket to C{loop.create_server}, and every
connection accepted gets a L{StreamConnection}, the asyncio protocol that is
the Twisted transport (L{ITCPTransport}) of the protocol the factory builds;
C{connectTCP} (the proxy's upstreams, say) makes its connections the same
way (L{netd.reactors.uvclient}).

Everything else is Twisted's asyncio reactor: timed calls, UDP ports (netd's
batching one, L{netd.reactors.udp}, reads through C{add_reader} here as well),
unix sockets and signals.

L{CANARY} checks at start-up what this takes from uvloop and from Twisted's
C{tcp.Port} beyond their public API; L{install} installs netd's epoll
reactor instead when it fails.  Outgoing connections have a canary of their
own (L{uvclient.CANARY}): when it fails, C{connectTCP} is Twisted's.  The
reactor keeps the loop it runs on (L{UvloopReactor.asyncioLoop}) rather
than read Twisted's private attribute.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import socket
import sys
from errno import EMFILE, ENFILE
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.logger import Logger
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.canary import Canary, require, requireNames
from netd.reactors import tcpinfo, uvclient
from netd.reactors.rlimits import openFileLimit, reportOutOfDescriptors, systemBacklog
from netd.reactors.shared import TCP_PORT_PRIVATES, INetdReactor, ServesTCPPorts
from netd.reactors.uvstream import ClockedStreamConnection, StreamConnection


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

    def probeDescriptors(self) -> None:
        """
        uvloop accepted a connection (not yet among the reactor's
        C{streams}), the L{probeFrom}th or a later one open: see whether it
        took the last descriptor the limit allows.
        """
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
        self._serve = loop.create_server(connection.acceptedBy(self), sock=self.socket, backlog=self._backlog())
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
    the C{systemd:} one) have uvloop serve their connections, and whose
    outgoing TCP connections (C{connectTCP}) uvloop serves too.

    @ivar asyncioLoop: the asyncio loop the reactor runs on.
    @ivar streamPorts: those listeners, until they stop.
    @ivar streams: the connections uvloop serves, accepted or made (these
        from their attempt on), until they are lost.  None is registered
        with the reactor as a reader, so the reactor keeps them here to
        close them at shutdown (L{disconnectAll}).
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

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30.0, bindAddress: Any = None) -> Any:
        """
        Connect over TCP on uvloop's transports (L{netd.reactors.uvclient}),
        or as Twisted's asyncio reactor does where those cannot
        (L{uvclient.connectable}).
        """
        if not uvclient.connectable(bindAddress):
            return super().connectTCP(host, port, factory, timeout, bindAddress)
        connector = uvclient.Connector(host, port, factory, timeout, bindAddress, self)
        connector.connect()
        return connector

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
