"""
Test helpers for netd and for plugin authors: run a plugin behind the real core
layers on in-memory transports, with a fake clock, no sockets and no sleeps.

netd's own tests use these, which keeps them honest.
"""

from __future__ import annotations

from typing import Any, cast

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import implementer

from netd.framing import FRAMINGS, FramedFactory
from netd.interfaces import IDatagramSender, IStreamHandler
from netd.limits import ConnectionLimiter, GuardedConnection
from netd.metrics import Counters

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(IListeningPort)
@attrs.define
class FakeUDPPort:
    """
    What L{UDPMemoryReactorClock.listenUDP} returns.
    """

    port: int
    protocol: DatagramProtocol
    interface: str
    listening: bool = True

    def getHost(self) -> IPv4Address:
        """
        The bound address.
        """
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def startListening(self) -> None:
        """
        Already listening.
        """

    def stopListening(self) -> None:
        """
        Stop; the protocol is told, as a real port does.
        """
        self.listening = False
        self.protocol.doStop()


class UDPMemoryReactorClock(MemoryReactorClock):
    """
    Twisted's L{MemoryReactorClock} with the C{listenUDP} it lacks.

    @ivar udpPorts: the bound fake ports, by port number.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: dict[int, FakeUDPPort] = {}

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        """
        Record the port (port 0 gets the next free fake number) and start the protocol.
        """
        if port == 0:
            port = 20000 + len(self.udpPorts)
        fake = FakeUDPPort(port, protocol, interface)
        self.udpPorts[port] = fake
        protocol.makeConnection(_RecordingUDPTransport(fake))  # type: ignore[arg-type]
        return fake


@attrs.define
class _RecordingUDPTransport:
    """
    The transport a fake UDP port gives its protocol: it records what is written.
    """

    port: FakeUDPPort
    written: list[tuple[bytes, Any]] = attrs.Factory(list)

    def write(self, datagram: bytes, addr: Any) -> None:
        """
        Record one datagram sent.
        """
        self.written.append((datagram, addr))

    def getHost(self) -> IPv4Address:
        """
        The port's address.
        """
        return self.port.getHost()


@implementer(IDatagramSender)
@attrs.define
class RecordingDatagramSender:
    """
    An L{IDatagramSender} that keeps what a handler sends.
    """

    sent: list[tuple[bytes, tuple[str, int]]] = attrs.Factory(list)

    def sendDatagram(self, datagram: bytes, peer: tuple[str, int]) -> None:
        """
        Record the datagram.
        """
        self.sent.append((datagram, peer))


@attrs.define
class StreamConnection:
    """
    One in-memory connection through the core's stream stack.

    L{StringTransport} only records a close (C{transport.disconnecting}); as a
    reactor would, L{finishClose} then delivers the C{connectionLost}.

    @ivar transport: what netd wrote is in C{transport.value()}.
    @ivar protocol: the socket-side protocol; feed it with L{receive}.
    """

    transport: StringTransport
    protocol: GuardedConnection
    limiter: ConnectionLimiter
    closed: bool = False

    def receive(self, data: bytes) -> None:
        """
        Deliver bytes as if the peer had sent them.
        """
        self.protocol.dataReceived(data)

    def finishClose(self) -> bool:
        """
        If netd closed (or aborted) the connection, deliver the C{connectionLost}
        a reactor would deliver next; return whether it did.
        """
        if not self.transport.disconnecting or self.closed:
            return False
        self.closed = True
        self.protocol.connectionLost(Failure(ConnectionDone("closed by netd")))
        return True

    def peerClosed(self) -> None:
        """
        The peer closed the connection entirely.
        """
        self.closed = True
        self.protocol.connectionLost(Failure(ConnectionDone("closed by the peer")))

    def takeSent(self) -> bytes:
        """
        What netd has written since the last call.
        """
        value = self.transport.value()
        self.transport.clear()
        return value


def makeStreamStack(
    handler: IStreamHandler,
    framing: str,
    *,
    maxFrame: int = 65536,
    maxConnections: int = 1024,
    idleTimeout: float = 0,
    clock: Any = None,
    counters: Counters | None = None,
) -> ConnectionLimiter:
    """
    The factory stack a service builds for streams (limits, then framing, then
    the plugin), for in-memory tests.
    """
    counters = Counters() if counters is None else counters
    log = Logger(namespace="netd.testing")
    return ConnectionLimiter(
        FramedFactory(FRAMINGS[framing], maxFrame, handler, counters, log),
        maxConnections=maxConnections,
        idleTimeout=idleTimeout,
        clock=clock if clock is not None else MemoryReactorClock(),
        counters=counters,
        log=log,
    )


def connect(limiter: ConnectionLimiter, peer: IPv4Address = PEER) -> StreamConnection | None:
    """
    Open an in-memory connection to a stack from L{makeStreamStack}; L{None} if
    the stack refused it (its connection limit).
    """
    protocol = limiter.buildProtocol(peer)
    if protocol is None:
        return None
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return StreamConnection(transport, cast(GuardedConnection, protocol), limiter)
