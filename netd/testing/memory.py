"""
Test helpers for netd and for plugin authors: a plugin behind the real core
layers on in-memory transports, with a fake clock, no sockets and no sleeps,
and in-memory TLS clients (L{connectTLS}, L{TestClientTLS}).  netd's own tests
use these, which keeps them honest (docs/testing.md, "Design notes").
"""

from __future__ import annotations

from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IOpenSSLClientConnectionCreator, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from netd.config.options import ConfigError, Problem, convert
from netd.events import EventLog
from netd.faults.active import ServiceFaults
from netd.faults.base import ServiceShape
from netd.faults.spec import FaultList
from netd.interfaces import IDatagramSender, IStreamHandler
from netd.metrics import Counters
from netd.reactors.shared import IMeteredTransport
from netd.stream.framing import FRAMINGS, FramedFactory
from netd.stream.guard import ConnectionLimiter, GuardedConnection
from netd.tls.contexts import ServerTLS
from netd.tls.options import TLSOptions, TLSVersion
from netd.tls.protocol import TLSServerFactory

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


@implementer(IListeningPort)
@attrs.define(slots=False)
class FakeTCPPort:
    """
    What L{UDPMemoryReactorClock.listenTCP} returns: a port that reports the
    address it bound (port 0 gets a number of its own) and whether it stopped.
    """

    address: IPv4Address
    factory: Any
    listening: bool = True

    def getHost(self) -> IPv4Address:
        """
        The bound address.
        """
        return self.address

    def startListening(self) -> None:
        """
        Already listening.
        """

    def stopListening(self) -> None:
        """
        Stop.
        """
        self.listening = False


class UDPMemoryReactorClock(MemoryReactorClock):
    """
    Twisted's L{MemoryReactorClock} with the C{listenUDP} it lacks, and TCP
    ports that say where they listen.

    (Twisted's own C{listenTCP} records the call in C{tcpServers} but returns a
    port reporting 0.0.0.0:0 whose C{stopListening} does nothing.)

    @ivar udpPorts: the bound fake UDP ports, by port number.
    @ivar tcpPorts: the bound fake TCP ports, in order (port 0 becomes 30000,
        30001, ...).
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: dict[int, FakeUDPPort] = {}
        self.tcpPorts: list[FakeTCPPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakeTCPPort:
        """
        Record the call as Twisted does, and return a port that reports its address.
        """
        super().listenTCP(port, factory, backlog, interface)
        bound = FakeTCPPort(IPv4Address("TCP", interface or "0.0.0.0", port or 30000 + len(self.tcpPorts)), factory)
        self.tcpPorts.append(bound)
        return bound

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


@implementer(IMeteredTransport)
class MeteredStringTransport(StringTransport):
    """
    A L{StringTransport} that meters its traffic as netd's TCP transports do
    (L{IMeteredTransport}), timed by C{clock}: the connection's guard then
    steps aside as it does on a real socket.  What the peer sends is counted
    by L{MemoryStreamConnection.receive}, as a transport's read would.
    """

    def __init__(self, clock: Any, peerAddress: IPv4Address) -> None:
        super().__init__(peerAddress=peerAddress)
        self.clock = clock
        self.bytesReceived = self.bytesSent = 0
        self.lastActivity: float = clock.seconds()

    def received(self, data: bytes) -> None:
        """
        Count bytes read from the peer.
        """
        self.bytesReceived += len(data)
        self.lastActivity = self.clock.seconds()

    def write(self, data: bytes) -> None:
        """
        Count the bytes and record them.
        """
        self.bytesSent += len(data)
        self.lastActivity = self.clock.seconds()
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        """
        Count and record the pieces as one write.
        """
        self.write(b"".join(data))


@attrs.define
class MemoryStreamConnection:
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
        if isinstance(self.transport, MeteredStringTransport):
            self.transport.received(data)
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
        value: bytes = self.transport.value()
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
    tls: TLSOptions | None = None,
    stateDir: str | None = None,
    log: Logger | None = None,
    faults: ServiceFaults | None = None,
    events: EventLog | None = None,
) -> ConnectionLimiter:
    """
    The factory stack a service builds for streams (limits, then TLS if
    C{tls} is given, then framing, then the plugin), for in-memory tests.

    @param tls: the service's C{tls} table, as L{TLSOptions}; its files are
        loaded and checked as a service's are (L{netd.tls.contexts.ServerTLS}).
    @param stateDir: where C{certificate = "auto"} keeps its files; give a
        temporary folder.
    @param log: where the core's events go (C{netd.testing.memory} when unset).
    @param faults: the service's faults (see L{faultsFor}), which act on the
        stack's connections as on a service's.
    @param events: the service's event log, which gets each connection's
        C{"connection"} event; none kept when unset.
    """
    counters = Counters() if counters is None else counters
    log = Logger(namespace="netd.testing.memory") if log is None else log
    clock = clock if clock is not None else MemoryReactorClock()
    inner: IProtocolFactory = FramedFactory(
        FRAMINGS[framing],
        maxFrame,
        handler,
        counters,
        log,
        faults=None if faults is None else faults.frames,
        clock=clock,
    )
    if tls is not None:
        serverTLS = ServerTLS(tls, serviceName="test", log=log, stateDir=stateDir)
        inner = TLSServerFactory(serverTLS, inner, clock=clock, counters=counters, log=log)
    return ConnectionLimiter(
        inner,
        maxConnections=maxConnections,
        idleTimeout=idleTimeout,
        clock=clock,
        counters=counters,
        log=log,
        events=events,
        faults=None if faults is None else faults.streams,
    )


def faultsFor(
    tables: list[dict[str, Any]],
    *,
    framing: str | None = "raw",
    streams: bool = True,
    datagrams: bool = True,
    tls: bool = False,
    relays: bool = False,
    counters: Counters | None = None,
    events: EventLog | None = None,
) -> ServiceFaults:
    """
    A service's faults from fault tables as a config file gives them, checked
    as a service's are against the shape described by the other arguments
    (C{relays}: of a plugin that declares C{relaysFrames}).

    @raise ConfigError: naming every problem of the tables.
    """
    shape = ServiceShape(streams, datagrams, tls, framing, relays)
    problems: list[Problem] = []
    faults = convert(tables, FaultList, ("faults",), problems)
    if not problems:
        problems.extend(faults.misfits(shape, ("faults",)))
    if problems:
        raise ConfigError("test faults", problems)
    return ServiceFaults(
        faults,
        shape,
        Counters() if counters is None else counters,
        EventLog(100, MemoryReactorClock()) if events is None else events,
    )


def connect(
    limiter: ConnectionLimiter, peer: IPv4Address = PEER, *, metered: bool = False
) -> MemoryStreamConnection | None:
    """
    Open an in-memory connection to a stack from L{makeStreamStack}; L{None} if
    the stack refused it (its connection limit).

    @param metered: on a transport that meters its own traffic
        (L{MeteredStringTransport}), as netd's TCP connections do.
    """
    protocol = limiter.buildProtocol(peer)
    if protocol is None:
        return None
    transport = MeteredStringTransport(limiter.clock, peer) if metered else StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return MemoryStreamConnection(transport, protocol, limiter)


@implementer(IOpenSSLClientConnectionCreator)
@attrs.define
class TestClientTLS:
    """
    A TLS client for tests, with the knobs a verifying client
    (L{netd.tls.client.clientCreator}) lacks: no name check, chain errors recorded
    in L{TLSTestConnection.verifyErrors}, and one shared context so that a later
    connection can resume the L{session} of an earlier one.

    @ivar serverName: sent as SNI (L{None}: no SNI).
    @ivar caFile: the CAs the server's chain is checked against; L{None}: not checked.
    @ivar certificate: a client certificate file, with C{privateKey} its key.
    @ivar minVersion: the oldest version offered (C{"1.0"} ... C{"1.3"}).
    @ivar maxVersion: the newest version offered.
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2 and older.
    @ivar alpn: ALPN protocols offered.
    @ivar tickets: whether to accept session tickets (without them a TLS 1.2
        session is resumed by its session ID).
    @ivar session: the session the next connection offers to resume.
    """

    __test__ = False  # not a pytest test class

    serverName: str | None = "localhost"
    caFile: str | None = None
    certificate: str | None = None
    privateKey: str | None = None
    minVersion: str | None = None
    maxVersion: str | None = None
    ciphers: str | None = None
    alpn: tuple[str, ...] = ()
    tickets: bool = True
    session: SSL.Session | None = None
    _context: SSL.Context | None = attrs.field(default=None, init=False, repr=False)

    def _makeContext(self) -> SSL.Context:
        """
        The client context of these settings.
        """
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if not self.tickets:
            context.set_options(SSL.OP_NO_TICKET)
        if self.minVersion is not None:
            context.set_min_proto_version(TLSVersion.fromConfig(self.minVersion).openssl)
        if self.maxVersion is not None:
            context.set_max_proto_version(TLSVersion.fromConfig(self.maxVersion).openssl)
        ciphers = self.ciphers or "DEFAULT"
        if self.maxVersion in ("1.0", "1.1") and "@SECLEVEL" not in ciphers:
            ciphers += ":@SECLEVEL=0"
        context.set_cipher_list(ciphers.encode("ascii"))
        if self.certificate is not None:
            context.use_certificate_chain_file(self.certificate)
            context.use_privatekey_file(self.privateKey or self.certificate)
        if self.alpn:
            context.set_alpn_protos([p.encode("ascii") for p in self.alpn])
        if self.caFile is not None:
            context.load_verify_locations(self.caFile)
            context.set_verify(SSL.VERIFY_PEER, _recordVerifyErrors)
        return context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A client connection with these settings.
        """
        if self._context is None:
            self._context = self._makeContext()
        connection = SSL.Connection(self._context, None)
        if self.serverName is not None:
            connection.set_tlsext_host_name(self.serverName.encode("idna"))
        if self.session is not None:
            connection.set_session(self.session)
        tlsProtocol.verifyErrors = []
        return connection


def _recordVerifyErrors(connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    """
    The verify callback of a L{TestClientTLS} with C{caFile}: note each error
    on the connection's protocol.
    """
    if not ok:
        connection.get_app_data().verifyErrors.append(str(errno))
    return bool(ok)


class _RecordingProtocol(Protocol):
    """
    The application side of a test TLS client: keeps what it receives.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.lostReason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lostReason = reason


@attrs.define
class TLSTestConnection:
    """
    An in-memory TLS client connected to a stream stack; L{flush} moves the
    bytes both ways until nothing moves (running the clock's due calls).

    @ivar pump: the L{iosim.IOPump} between the two sides.
    @ivar client: the client's TLS protocol.
    @ivar server: the socket-side protocol of the stack.
    """

    pump: iosim.IOPump
    client: TLSMemoryBIOProtocol
    server: GuardedConnection
    app: _RecordingProtocol

    def flush(self) -> None:
        """
        Move bytes both ways until nothing moves.
        """
        self.pump.flush()

    def send(self, data: bytes) -> None:
        """
        Send application data through TLS, and flush.
        """
        self.client.write(data)
        self.flush()

    def sendRaw(self, data: bytes) -> None:
        """
        Send bytes to the server as they are, outside TLS (garbage, plain text), and flush.
        """
        self.pump.clientIO.write(data)
        self.flush()

    def takeReceived(self) -> bytes:
        """
        The application data received since the last call.
        """
        data = bytes(self.app.received)
        self.app.received.clear()
        return data

    def close(self) -> None:
        """
        Close the client's side (a TLS close_notify, then the connection), and flush.
        """
        self.client.loseConnection()
        self.flush()

    @property
    def handshakeDone(self) -> bool:
        """
        Whether the client finished its handshake (and the connection is not lost).
        """
        handle = self.client.getHandle()
        return handle is not None and handle.get_peer_finished() is not None and self.app.lostReason is None

    @property
    def lost(self) -> Failure | None:
        """
        Why the connection was lost, if it was.
        """
        return self.app.lostReason

    @property
    def serverCertificate(self) -> x509.Certificate | None:
        """
        The certificate the server sent.
        """
        handle = self.client.getHandle()
        return None if handle is None else handle.get_peer_certificate(as_cryptography=True)

    @property
    def negotiatedProtocol(self) -> str | None:
        """
        The ALPN protocol agreed on, if any.
        """
        protocol = self.client.negotiatedProtocol
        return protocol.decode("ascii") if protocol else None

    @property
    def version(self) -> str | None:
        """
        The TLS version agreed on (C{TLSv1.3}, ...).
        """
        handle = self.client.getHandle()
        return None if handle is None else handle.get_protocol_version_name()

    @property
    def session(self) -> SSL.Session | None:
        """
        The client's session, to resume in a later connection (L{TestClientTLS.session}).
        """
        handle = self.client.getHandle()
        return None if handle is None else handle.get_session()

    @property
    def verifyErrors(self) -> list[str]:
        """
        The OpenSSL verify error codes a L{TestClientTLS} with C{caFile} met.
        """
        return list(getattr(self.client, "verifyErrors", []))


def connectTLS(
    limiter: ConnectionLimiter,
    creator: IOpenSSLClientConnectionCreator,
    clock: Any,
    *,
    peer: IPv4Address = PEER,
) -> TLSTestConnection | None:
    """
    Connect an in-memory TLS client to a stack from L{makeStreamStack} (with
    C{tls}) and run the handshake; L{None} if the stack refused the connection.

    @param creator: the client's TLS settings: L{netd.tls.client.clientCreator} for
        a client that verifies the server, or a L{TestClientTLS}.
    @param clock: the stack's clock (TLS schedules its writes on it; the pump
        runs its due calls).
    """
    server = limiter.buildProtocol(peer)
    if server is None:
        return None
    app = _RecordingProtocol()
    clientFactory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: app), clock=clock)
    client = clientFactory.buildProtocol(peer)
    assert client is not None
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True, peerAddress=peer),
        client,
        iosim.makeFakeClient(client),
        greet=False,
        clock=clock,
    )
    connection = TLSTestConnection(pump, client, server, app)
    connection.flush()
    return connection


def proxyHeaderV1(source: str, sourcePort: int, destination: str = "127.0.0.1", destinationPort: int = 7007) -> bytes:
    """
    A PROXY protocol v1 (text) header for a TCP over IPv4 client, as HAProxy sends it.
    """
    return f"PROXY TCP4 {source} {destination} {sourcePort} {destinationPort}\r\n".encode()


def proxyHeaderV2(source: str, sourcePort: int, destination: str = "127.0.0.1", destinationPort: int = 7007) -> bytes:
    """
    A PROXY protocol v2 (binary) header for a TCP over IPv4 client: the
    signature, version 2 with the PROXY command, AF_INET + STREAM, then the
    addresses and ports.
    """
    import ipaddress
    import struct

    addresses = (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + struct.pack("!HH", sourcePort, destinationPort)
    )
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def resultOf(d: Deferred[Any]) -> Any:
    """
    The result a Deferred already has (with a memory reactor most have one at
    once); fail the test if it has none yet or failed.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has no result yet"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failureOf(d: Deferred[Any]) -> Failure:
    """
    The failure a Deferred already has; fail the test if it has none yet or succeeded.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has no result yet"
    assert isinstance(results[0], Failure), f"the Deferred succeeded with {results[0]!r}"
    return results[0]
