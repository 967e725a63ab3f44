"""
Outgoing TCP connections on uvloop's transports: the uvloop reactor's
C{connectTCP}.

Twisted's C{tcp.Client} would be driven through the asyncio reactor's
selector bridge, a Python callback wrapped in Twisted's logging context for
every read, and an C{addWriter} and a C{removeWriter} around every write
not sent at once: most of a proxied round trip's cost.  Here the socket is
made and bound as Twisted's C{tcp.Client} makes it, with the same errors
(L{ConnectBindError}; a host name through the reactor's resolver), uvloop
connects it (C{sock_connect}: L{ConnectionRefusedError} and the other
L{getConnectError} errors) and serves it (C{create_connection(sock=...)}),
and the connection is a L{ClientConnection}, the same transport as the
connections the reactor's ports accept.

The connector is Twisted's own C{tcp.Connector} (the factory's C{doStart},
C{startedConnecting}, C{clientConnectionFailed}, C{clientConnectionLost},
C{doStop}; the timeout, C{stopConnecting}, connecting again), with the
transport it makes (its private C{_makeTransport}) replaced.  L{CANARY}
checks that this is still how it makes one; where it fails, and for a
bind address given as a Twisted C{Binding} rather than a C{(host, port)}
tuple, the reactor connects as Twisted's asyncio reactor does.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from twisted.internet import base, tcp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import ConnectBindError, ConnectError, UserError, getConnectError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from netd.canary import Canary, require
from netd.reactors import tcpinfo
from netd.reactors.uvstream import ClockedStreamConnection, StreamConnection


class ClientConnection(StreamConnection):
    """
    One outgoing TCP connection, from its attempt on: until it connects, the
    connector's transport in the making, as Twisted's C{tcp.Client} is
    (L{failIfNotConnected} ends the attempt and tells the connector); then a
    L{StreamConnection} whose protocol the connector builds, and whose loss
    the connector is told after the protocol.

    @ivar connector: the L{Connector} that makes the attempt.
    """

    _socket: socket.socket | None
    """
    The socket while it is the attempt's own to close: until uvloop is given it.
    """
    _attempt: asyncio.Future[Any] | None = None
    _over = False
    """
    Whether the attempt failed or was stopped.
    """

    def __init__(self, connector: Connector) -> None:
        """
        An attempt for C{connector}, started on the loop's next turn: the
        connector learns of an error no sooner, as from Twisted's C{tcp.Client}.
        """
        self.connector = connector
        self._socket = None
        self._prepare(connector.reactor)
        self.reactor.streams.add(self)
        self.reactor.asyncioLoop.call_soon(self._start)

    def _start(self) -> None:
        """
        Make the socket and bind it, then connect, once the host name is
        resolved; unless the attempt is over already.
        """
        if self._over:
            return
        host = self.connector.host
        try:
            self._socket = _bound(
                socket.AF_INET6 if isIPv6Address(host) else socket.AF_INET, self.connector.bindAddress
            )
        except OSError as e:
            self.failIfNotConnected(ConnectBindError(*e.args))
            return
        if isIPAddress(host) or isIPv6Address(host):
            self._connectTo(host)
        else:
            self.reactor.resolve(host).addCallbacks(self._connectTo, self._unresolved)

    def _unresolved(self, failure: Failure) -> None:
        """
        The host name was not resolved: the attempt fails with the resolver's error.
        """
        self.failIfNotConnected(failure)

    def _connectTo(self, host: str) -> None:
        """
        Have uvloop connect to C{host} (an address), unless the attempt is over.
        """
        if self._over:
            return
        loop = self.reactor.asyncioLoop
        attempt = self._attempt = asyncio.ensure_future(self._connect(loop, host), loop=loop)
        attempt.add_done_callback(self._attempted)

    async def _connect(self, loop: asyncio.AbstractEventLoop, host: str) -> None:
        """
        Connect the socket, then have uvloop serve it with this connection as its protocol.
        """
        sock: Any = self._socket
        await loop.sock_connect(sock, (host, self.connector.port))
        self._socket = None  # uvloop's from here: it closes it if what follows fails
        await loop.create_connection(lambda: self, sock=sock)

    def _attempted(self, attempt: asyncio.Future[Any]) -> None:
        """
        The attempt is over: if it failed, tell the connector why, as Twisted's errors tell it.
        """
        if attempt.cancelled():
            return
        error = attempt.exception()
        if error is not None:
            self.failIfNotConnected(error if isinstance(error, ConnectError) else _connectError(error))

    def failIfNotConnected(self, err: BaseException | Failure) -> None:
        """
        Unless connected already (or the attempt is over), end the attempt
        and close its socket, and tell the connector it failed with C{err}
        (an exception, or the failure of the host name's resolution):
        what the connector's timeout and C{stopConnecting} call, as on
        Twisted's C{tcp.Client}.
        """
        if self.connected or self.disconnected or self._over:
            return
        self._over = True
        self.reactor.streams.discard(self)
        if self._attempt is not None:
            # Cancelled at once, so that uvloop stops watching the socket before it is closed.
            self._attempt.cancel()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.connector.connectionFailed(err if isinstance(err, Failure) else Failure(err))

    def stopConnecting(self) -> None:
        """
        End the attempt, if it is still one, with L{UserError}, as Twisted's C{tcp.Client} does.
        """
        self.failIfNotConnected(UserError())

    # asyncio's side

    def connection_made(self, transport: Any) -> None:
        """
        Connected: build the protocol through the connector (which stops
        its timeout) and make its connection; a factory that builds none
        has the connection closed, as Twisted's does.  An attempt stopped
        meanwhile drops the connection.
        """
        if self._over:
            transport.abort()
            return
        self._opened(transport)
        protocol = self.connector.buildProtocol(self._peer)
        if protocol is None:
            self._begin(Protocol())
            self.loseConnection()
            return
        self._begin(protocol)

    def _lost(self, reason: Failure) -> None:
        """
        Tell the protocol, then the connector, that the connection is lost.
        """
        super()._lost(reason)
        self.connector.connectionLost(reason)

    def lostAtShutdown(self, reason: Failure) -> None:
        """
        The reactor is shutting down: drop the connection, or fail the
        attempt, as Twisted's reactor fails its own.
        """
        super().lostAtShutdown(reason)
        self.failIfNotConnected(ConnectError(string=str(reason.value)))

    def logPrefix(self) -> str:
        """
        The label of this connection's log lines, as Twisted's: the protocol's, then C{client}.
        """
        return f"{self._protocolPrefix()},client"

    def __repr__(self) -> str:
        """
        As Twisted's: C{<ClientConnection to (host, port) at 0x...>}.
        """
        destination = (self.connector.host, self.connector.port)
        return f"<{type(self).__name__} to {destination} at {id(self):#x}>"


class ClockedClientConnection(ClockedStreamConnection, ClientConnection):
    """
    A L{ClientConnection} that notes the time of its own traffic, where
    C{TCP_INFO} cannot be read (as L{ClockedStreamConnection}).
    """


class Connector(tcp.Connector):
    """
    Twisted's connector, whose transport is a L{ClientConnection}.
    """

    def _makeTransport(self) -> Any:
        """
        Start an attempt: a connection of the kind the reactor's ports accept.
        """
        if tcpinfo.CANARY.alive():
            return ClientConnection(self)
        return ClockedClientConnection(self)


def _bound(family: int, bindAddress: Any) -> socket.socket:
    """
    A non-blocking TCP socket of C{family}, with C{TCP_NODELAY} on (as
    Twisted's C{tcp.Client} has it, and uvloop's accepted connections),
    bound to C{bindAddress} if one is given.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bindAddress is not None:
            host, port = bindAddress
            if isIPv6Address(host):
                sock.bind(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4])
            else:
                sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _connectError(error: BaseException) -> ConnectError:
    """
    The L{ConnectError} that Twisted gives for C{error}, an exception of
    C{sock_connect} or C{create_connection}.
    """
    if isinstance(error, OSError):
        converted: ConnectError = getConnectError(error)
        return converted
    return ConnectError(string=str(error))


def connectable(bindAddress: object) -> bool:
    """
    Whether an outgoing connection with C{bindAddress} is made here (the
    fast path is alive, and the bind address, if any, is a C{(host, port)}
    tuple), rather than as Twisted's asyncio reactor makes it.
    """
    return (bindAddress is None or isinstance(bindAddress, tuple)) and CANARY.alive()


def _check() -> None:
    """
    Twisted's connector still makes its transport with C{_makeTransport} alone.
    """
    require("_makeTransport" in vars(tcp.Connector), "tcp.Connector to make its transport with _makeTransport")
    require(
        "_makeTransport" in base.BaseConnector.connect.__code__.co_names,
        "BaseConnector.connect to make its transport with _makeTransport",
    )


CANARY = Canary(
    "uvloop reactor's outgoing connections", _check, "connectTCP connects as Twisted's asyncio reactor does"
)
