"""
Tests for netd's TCP transports, driven on real loopback sockets by private
reactors turned one iteration at a time (every wait bounded): what every one
of them promises, on each of netd's reactors (the C{reactor} fixture: the
epoll one, L{netd.reactors.epoll}, and the uvloop one, L{netd.reactors.uv},
with its connections' idle time read from C{TCP_INFO} or from their own
clock), and what every transport promises (C{onEveryPath}) on Twisted's
reactor too, the public path netd falls back to; then the workings of the
epoll reactor's own (the C{netdReactor} fixture).  The uvloop reactor's own
are tested in C{test_uvreactor}, the fallbacks' choice in
C{test_reactor_canaries}.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import interfaces
from twisted.internet.error import CannotListenError, ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.reactors.choice import installReactor
from netd.reactors.epoll import NetdReactor
from netd.reactors.rlimits import IOutOfDescriptors
from netd.reactors.shared import IMeteredTransport
from netd.reactors.uv import StreamConnection
from netd.testing.harness import unavailable
from netd.testing.memory import makeStreamStack
from netd.tls.devcerts import ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd_plugins.echo import EchoHandler

from .privatereactor import WAIT, Reactor, netdReactor, onEveryPath, reactor, spin, turn  # noqa: F401

CONNECTION_DONE = Failure(ConnectionDone())
"""
The reason a test protocol's connectionLost defaults to, as Twisted's own protocols do.
"""


class Recorder(Protocol):
    """
    A server protocol that keeps what it is told.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: list[Failure] = []
        self.writeLost = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self.lost.append(reason)


@implementer(interfaces.IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    """
    A recorder told when either side of the connection is shut.
    """

    readLost = 0

    def readConnectionLost(self) -> None:
        self.readLost += 1

    def writeConnectionLost(self) -> None:
        self.writeLost += 1


class Accepted:
    """
    One accepted connection: the server's protocol and transport, and the client's socket.
    """

    def __init__(self, protocol: Recorder, client: socket.socket) -> None:
        self.protocol = protocol
        self.transport: Any = protocol.transport
        self.client = client


class Recording(Factory):
    """
    A factory that builds protocols of one type and keeps every one it builds.
    """

    def __init__(self, protocolType: type[Protocol] = Recorder) -> None:
        self.protocolType = protocolType
        self.made: list[Any] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        self.made.append(self.protocolType())
        return self.made[-1]


def accept(reactor: Reactor, protocolType: type[Recorder] = Recorder, receiveBuffer: int | None = None) -> Accepted:
    """
    Listen on a loopback port of C{reactor}, connect a plain socket to it and
    return both ends once the server has the connection.
    """
    factory = Recording(protocolType)
    made = factory.made
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.socket()
    if receiveBuffer is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
    client.connect(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    spin(reactor, lambda: made)
    port.stopListening()
    return Accepted(made[0], client)


def readable(client: socket.socket, timeout: float = WAIT) -> bool:
    """
    Whether the socket has something to read (or EOF) within C{timeout}, without turning any reactor.
    """
    return bool(select.select([client], [], [], timeout)[0])


def drain(reactor: Reactor, client: socket.socket, count: int) -> bytes:
    """
    Read C{count} bytes from C{client} while turning the reactor.
    """
    received = bytearray()

    def more() -> bool:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            return False
        assert chunk, f"EOF after {len(received)} of {count} bytes"
        received.extend(chunk)
        return len(received) >= count

    spin(reactor, more)
    return bytes(received)


def untilEOF(reactor: Reactor, client: socket.socket) -> bytes:
    """
    Read from C{client} while turning the reactor until the server closes.
    """
    received = bytearray()
    closed = []

    def more() -> bool:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            return False
        if not chunk:
            closed.append(True)
        received.extend(chunk)
        return bool(closed)

    spin(reactor, more)
    return bytes(received)


def queued(transport: Any) -> int:
    """
    How many bytes written to C{transport} wait for the kernel to take them.
    """
    if isinstance(transport, StreamConnection):
        return int(transport._transport.get_write_buffer_size())
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[no-any-return]


def fillKernelBuffers(accepted: Accepted) -> bytes:
    """
    Shrink the server's send buffer and write more than the kernel takes, so that the rest is queued.
    """
    accepted.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = os.urandom(2 * 2**20)
    accepted.transport.write(big)
    assert queued(accepted.transport) > 0, "the kernel took it all; nothing was queued"
    return big


def test_writeSendsAtOnce(reactor: Reactor) -> None:
    """
    A write made while nothing is queued is on the socket when write returns: no reactor turn, no writability registration.
    """
    accepted = accept(reactor)
    accepted.transport.write(b"sent now")
    assert accepted.transport not in reactor.getWriters()
    assert readable(accepted.client)
    assert accepted.client.recv(100) == b"sent now"


def test_writeSequenceSendsAtOnce(reactor: Reactor) -> None:
    """
    writeSequence sends its pieces at once, in order, as one write.
    """
    accepted = accept(reactor)
    accepted.transport.writeSequence([b"one ", b"two ", b"three"])
    assert readable(accepted.client)
    assert accepted.client.recv(100) == b"one two three"


def test_trafficMeteredBothWays(reactor: Reactor) -> None:
    """
    An accepted connection counts the bytes it reads and writes (queued ones too, and writeSequence's) and notes when they last moved.
    """
    accepted = accept(reactor)
    transport = accepted.transport
    assert IMeteredTransport.providedBy(transport)
    opened = transport.lastActivity
    accepted.client.sendall(b"12345")
    spin(reactor, lambda: accepted.protocol.received == b"12345")
    assert transport.bytesReceived == 5
    assert transport.lastActivity >= opened
    transport.writeSequence([b"ab", b"c"])
    big = fillKernelBuffers(accepted)
    assert transport.bytesSent == 3 + len(big)
    assert len(drain(reactor, accepted.client, 3 + len(big))) == 3 + len(big)
    assert transport.bytesSent == 3 + len(big)


def test_writeRefusesText(reactor: Reactor) -> None:
    """
    Writing a str raises TypeError, as Twisted's transports do, and sends nothing; the connection goes on.
    """
    accepted = accept(reactor)
    with pytest.raises(TypeError):
        accepted.transport.write("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        accepted.transport.writeSequence(["text"])
    accepted.transport.write(b"bytes")
    assert readable(accepted.client)
    assert accepted.client.recv(100) == b"bytes"


@onEveryPath
def test_partialSendQueuesTheRestInOrder(reactor: Reactor) -> None:
    """
    What the kernel does not take is queued, a later write queues behind it, and the peer gets all of it in order.
    """
    accepted = accept(reactor, receiveBuffer=4096)
    big = fillKernelBuffers(accepted)
    before = queued(accepted.transport)
    accepted.transport.write(b"tail")
    assert queued(accepted.transport) == before + 4
    assert drain(reactor, accepted.client, len(big) + 4) == big + b"tail"
    spin(reactor, lambda: queued(accepted.transport) == 0)


class PushProducer:
    """
    A streaming producer that records being paused and resumed.
    """

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@onEveryPath
def test_producerPausedOverBufferSizeAndResumed(reactor: Reactor) -> None:
    """
    A streaming producer is paused once more than bufferSize is queued, and resumed once the queue drains.
    """
    accepted = accept(reactor, receiveBuffer=4096)
    producer = PushProducer()
    accepted.transport.registerProducer(producer, True)
    big = fillKernelBuffers(accepted)
    assert producer.events == ["pause"]
    drain(reactor, accepted.client, len(big))
    spin(reactor, lambda: producer.events == ["pause", "resume"])


@onEveryPath
def test_pullProducerAskedAgain(reactor: Reactor) -> None:
    """
    A pull producer's writes go through the queue, so that it is asked for more each time the queue drains.
    """
    accepted = accept(reactor)
    chunks = [b"first ", b"second ", b"third"]

    class Pull:
        def resumeProducing(self) -> None:
            if chunks:
                accepted.transport.write(chunks.pop(0))

        def stopProducing(self) -> None:
            pass

    accepted.transport.registerProducer(Pull(), False)
    assert drain(reactor, accepted.client, 18) == b"first second third"


@onEveryPath
def test_loseConnectionFlushesThenCloses(reactor: Reactor) -> None:
    """
    loseConnection closes only once what is queued is written; the protocol then loses the connection cleanly, once.
    """
    accepted = accept(reactor, receiveBuffer=4096)
    big = fillKernelBuffers(accepted)
    accepted.transport.loseConnection()
    assert accepted.protocol.lost == []
    assert untilEOF(reactor, accepted.client) == big
    spin(reactor, lambda: accepted.protocol.lost)
    assert len(accepted.protocol.lost) == 1
    assert accepted.protocol.lost[0].check(ConnectionDone)


@onEveryPath
def test_writeWhileClosingIsQueuedBehind(reactor: Reactor) -> None:
    """
    A write made after loseConnection, before the close, is not sent ahead of what is queued but after it, as Twisted does.
    """
    accepted = accept(reactor)
    accepted.transport.write(b"first")
    accepted.transport.loseConnection()
    accepted.transport.write(b" last")
    assert untilEOF(reactor, accepted.client) == b"first last"


@onEveryPath
def test_writesAfterCloseIgnored(reactor: Reactor) -> None:
    """
    Once the connection is lost, writes are dropped without an error.
    """
    accepted = accept(reactor)
    accepted.transport.loseConnection()
    spin(reactor, lambda: accepted.protocol.lost)
    accepted.transport.write(b"too late")
    accepted.transport.writeSequence([b"too", b"late"])
    assert untilEOF(reactor, accepted.client) == b""


@onEveryPath
def test_abortConnectionDropsQueue(reactor: Reactor) -> None:
    """
    abortConnection drops what is queued, resets the connection and loses it with ConnectionAborted; later writes send nothing.
    """
    accepted = accept(reactor, receiveBuffer=4096)
    big = fillKernelBuffers(accepted)
    accepted.transport.abortConnection()
    accepted.transport.write(b"after abort")
    spin(reactor, lambda: accepted.protocol.lost)
    assert accepted.protocol.lost[0].check(ConnectionAborted)
    received = bytearray()
    with pytest.raises(ConnectionResetError):
        while True:
            assert readable(accepted.client)
            chunk = accepted.client.recv(1 << 20)
            assert chunk, "closed cleanly instead of reset"
            received.extend(chunk)
    assert len(received) < len(big)
    assert b"after abort" not in received


@onEveryPath
def test_writeAfterAbortSendsNothing(reactor: Reactor) -> None:
    """
    A write made between abortConnection and the loss of the connection is not sent, even with nothing queued.
    """
    accepted = accept(reactor)
    accepted.transport.abortConnection()
    accepted.transport.write(b"after abort")
    spin(reactor, lambda: accepted.protocol.lost)
    assert readable(accepted.client)
    with pytest.raises(ConnectionResetError):
        accepted.client.recv(100)


@onEveryPath
def test_peerResetDuringWrite(reactor: Reactor) -> None:
    """
    A write to a peer that reset the connection raises nothing; the protocol loses the connection with ConnectionLost, once.
    """
    accepted = accept(reactor)
    accepted.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    accepted.client.close()
    accepted.transport.write(b"into a reset connection")
    accepted.transport.write(b"and again")
    spin(reactor, lambda: accepted.protocol.lost)
    for _ in range(5):
        reactor.iterate(0.01)
    assert len(accepted.protocol.lost) == 1
    assert accepted.protocol.lost[0].check(ConnectionLost)


@onEveryPath
def test_peerResetWhileIdle(reactor: Reactor) -> None:
    """
    A peer that resets an idle connection has it lost with ConnectionLost, once.
    """
    accepted = accept(reactor)
    accepted.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    accepted.client.close()
    spin(reactor, lambda: accepted.protocol.lost)
    for _ in range(5):
        turn(reactor)
    assert len(accepted.protocol.lost) == 1 and accepted.protocol.lost[0].check(ConnectionLost)


@onEveryPath
def test_loseWriteConnectionHalfCloses(reactor: Reactor) -> None:
    """
    loseWriteConnection sends what is written then EOF, tells the protocol its writing side is shut, and keeps reading.
    """
    accepted = accept(reactor, HalfCloseRecorder)
    accepted.transport.write(b"last words")
    accepted.transport.loseWriteConnection()
    accepted.transport.write(b" queued before the shutdown")
    assert untilEOF(reactor, accepted.client) == b"last words queued before the shutdown"
    assert accepted.protocol.writeLost == 1
    accepted.transport.write(b"after the shutdown")
    accepted.client.sendall(b"still heard")
    spin(reactor, lambda: accepted.protocol.received == b"still heard")
    assert accepted.protocol.lost == []


@onEveryPath
def test_peerHalfCloseReadsThenAnswers(reactor: Reactor) -> None:
    """
    A peer that shuts its sending side is reported as readConnectionLost, and what the protocol writes then still reaches it.
    """
    accepted = accept(reactor, HalfCloseRecorder)
    accepted.client.sendall(b"question")
    accepted.client.shutdown(socket.SHUT_WR)
    spin(reactor, lambda: accepted.protocol.readLost)
    assert accepted.protocol.received == b"question"
    accepted.transport.write(b"answer")
    accepted.transport.loseConnection()
    assert untilEOF(reactor, accepted.client) == b"answer"


class ClosingOnEOF(HalfCloseRecorder):
    """
    A half-closeable protocol that answers the peer's EOF and loses the connection as it is told of it.
    """

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.transport.write(b"bye")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


@onEveryPath
def test_loseConnectionAtPeerEOFCloses(reactor: Reactor) -> None:
    """
    A protocol that loses the connection as the peer's EOF is handled gets what it wrote then sent, and the connection closes.
    """
    accepted = accept(reactor, ClosingOnEOF)
    accepted.client.shutdown(socket.SHUT_WR)
    assert untilEOF(reactor, accepted.client) == b"bye"
    spin(reactor, lambda: accepted.protocol.lost)
    assert accepted.protocol.lost[0].check(ConnectionDone)


@onEveryPath
def test_loseConnectionAtPeerEOFAfterHalfCloseCloses(reactor: Reactor) -> None:
    """
    With its own sending side shut already, a protocol that loses the connection as the peer's EOF is handled has it closed.
    """
    accepted = accept(reactor, ClosingOnEOF)
    accepted.transport.loseWriteConnection()
    assert untilEOF(reactor, accepted.client) == b""
    accepted.client.shutdown(socket.SHUT_WR)
    spin(reactor, lambda: accepted.protocol.lost)
    assert accepted.protocol.readLost == 1


class Exploding(Recorder):
    """
    A protocol with a bug: it raises on C{b"boom"}, and echoes anything else.
    """

    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise ZeroDivisionError("the protocol's bug")
        self.transport.write(data)  # type: ignore[union-attr]


@onEveryPath
def test_exceptionInDataReceivedClosesThatConnectionOnly(reactor: Reactor) -> None:
    """
    An exception raised by a protocol's dataReceived is logged, labelled with the connection, and loses that connection; other connections go on.
    """
    failures: list[tuple[Failure, str]] = []

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure", event.get("failure"))
        if failure is not None:
            failures.append((failure, event.get("log_system", "")))

    globalLogPublisher.addObserver(observe)
    try:
        buggy = accept(reactor, Exploding)
        fine = accept(reactor, Exploding)
        buggy.client.sendall(b"boom")
        spin(reactor, lambda: buggy.protocol.lost)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [(f.type, system.split(",")[0]) for f, system in failures] == [(ZeroDivisionError, "Exploding")]
    assert buggy.protocol.lost[0].check(ZeroDivisionError)
    assert untilEOF(reactor, buggy.client) == b""
    fine.client.sendall(b"still served")
    assert drain(reactor, fine.client, 12) == b"still served"


@onEveryPath
def test_tlsEchoThroughTheTransport(reactor: Reactor, tmp_path: Path) -> None:
    """
    netd's TLS echo stack (limits, TLS, framing, echo) serves a real TLS client through the transport, a MiB each way.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path))
    stack = makeStreamStack(
        EchoHandler(), "raw", clock=reactor, tls=TLSOptions(certificate=files.server, private_key=files.serverKey)
    )
    port = reactor.listenTCP(0, stack, interface="127.0.0.1")
    context = ssl.create_default_context(cafile=files.ca)
    raw = socket.create_connection(("127.0.0.1", port.getHost().port))
    raw.setblocking(False)
    client = context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)

    def handshaken() -> bool:
        try:
            client.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        return True

    spin(reactor, handshaken)
    payload = os.urandom(2**20)
    sent = 0
    received = bytearray()

    def echoed() -> bool:
        nonlocal sent
        if sent < len(payload):
            try:
                sent += client.send(payload[sent : sent + 65536])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        try:
            received.extend(client.recv(1 << 20))
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        return len(received) >= len(payload)

    spin(reactor, echoed, timeout=30)
    assert bytes(received) == payload
    client.close()


@onEveryPath
def test_writeAfterQuietLoseConnectionIsSentThenCloses(reactor: Reactor) -> None:
    """
    A write made after a loseConnection that had nothing to flush is still sent, then the connection closes, as on Twisted's transports.
    """
    accepted = accept(reactor)
    accepted.transport.loseConnection()
    accepted.transport.write(b"last words")
    assert untilEOF(reactor, accepted.client) == b"last words"
    spin(reactor, lambda: accepted.protocol.lost)
    assert len(accepted.protocol.lost) == 1 and accepted.protocol.lost[0].check(ConnectionDone)


@onEveryPath
def test_abortAfterQuietLoseConnection(reactor: Reactor) -> None:
    """
    abortConnection after a loseConnection that was left to the reactor loses the connection once, aborted.
    """
    accepted = accept(reactor)
    accepted.transport.loseConnection()
    accepted.transport.abortConnection()
    spin(reactor, lambda: accepted.protocol.lost)
    reactor.iterate(0)
    assert len(accepted.protocol.lost) == 1 and accepted.protocol.lost[0].check(ConnectionAborted)


@onEveryPath
def test_shutdownLosesConnectionsAndPorts(reactor: Reactor) -> None:
    """
    At shutdown (disconnectAll), every open connection's protocol is told ConnectionLost at once, its client sees the connection end, and a port still listening stops and refuses new connections.
    """
    first = accept(reactor)
    second = accept(reactor)
    listening = reactor.listenTCP(0, Factory.forProtocol(Recorder), interface="127.0.0.1")
    address = ("127.0.0.1", listening.getHost().port)
    reactor.disconnectAll()
    for accepted in (first, second):
        assert len(accepted.protocol.lost) == 1 and accepted.protocol.lost[0].check(ConnectionLost)
        # uvloop closes the socket on its loop's next turn.
        spin(reactor, lambda accepted=accepted: readable(accepted.client, 0))
        try:
            assert accepted.client.recv(10) == b""
        except ConnectionResetError:
            pass
    assert not listening.connected
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT)


@onEveryPath
def test_peerEOFWithoutHalfCloseLosesConnection(reactor: Reactor) -> None:
    """
    A protocol that does not take half-closes loses the connection, cleanly, when the peer shuts its side.
    """
    accepted = accept(reactor)
    accepted.client.shutdown(socket.SHUT_WR)
    spin(reactor, lambda: accepted.protocol.lost)
    assert accepted.protocol.lost[0].check(ConnectionDone)
    assert untilEOF(reactor, accepted.client) == b""


@onEveryPath
def test_readConnectionLostErrorLosesConnection(reactor: Reactor) -> None:
    """
    An exception from a half-closeable protocol's readConnectionLost is logged and loses the connection.
    """
    failures: list[Failure] = []

    class Raising(HalfCloseRecorder):
        def readConnectionLost(self) -> None:
            raise ZeroDivisionError("the protocol's bug")

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure", event.get("failure"))
        if failure is not None:
            failures.append(failure)

    accepted = accept(reactor, Raising)
    globalLogPublisher.addObserver(observe)
    try:
        accepted.client.shutdown(socket.SHUT_WR)
        spin(reactor, lambda: accepted.protocol.lost)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [f.type for f in failures] == [ZeroDivisionError]
    assert accepted.protocol.lost[0].check(ZeroDivisionError)


def test_acceptedConnectionsHaveNoDelay(reactor: Reactor) -> None:
    """
    Accepted connections have TCP_NODELAY on from their port, without a call per connection; turning it off and on again reaches the socket.
    """
    accepted = accept(reactor)
    sock = accepted.transport.getHandle()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    accepted.transport.setTcpNoDelay(False)
    assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    accepted.transport.setTcpNoDelay(True)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_addressesOfAcceptedConnection(reactor: Reactor) -> None:
    """
    getPeer and getHost give the socket's addresses, each the same object every time, and getHost still answers once the connection is closed.
    """
    accepted = accept(reactor)
    peer, host = accepted.transport.getPeer(), accepted.transport.getHost()
    assert (peer.type, peer.host, peer.port) == ("TCP", "127.0.0.1", accepted.client.getsockname()[1])
    assert (host.type, host.host, host.port) == ("TCP", "127.0.0.1", accepted.client.getpeername()[1])
    assert accepted.transport.getPeer() is peer and accepted.transport.getHost() is host
    accepted.transport.loseConnection()
    spin(reactor, lambda: accepted.protocol.lost)
    assert accepted.transport.getHost() is host


@onEveryPath
@pytest.mark.parametrize(
    ("interface", "connectTo"), [("", "127.0.0.1"), ("0.0.0.0", "127.0.0.2"), ("::", "::1"), ("::1", "::1")]
)
def test_localAddressOfEachConnection(reactor: Reactor, interface: str, connectTo: str) -> None:
    """
    The local address of a connection is the one the client connected to, on a wildcard port as on one bound to an address, IPv4 and IPv6.
    """
    made: list[Protocol] = []

    class Recording(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            made.append(Protocol())
            return made[-1]

    try:
        port = reactor.listenTCP(0, Recording(), interface=interface)
    except CannotListenError as e:
        unavailable(f"cannot listen on {interface!r}: {e}")
    client = socket.create_connection((connectTo, port.getHost().port))
    spin(reactor, lambda: made)
    transport: Any = made[0].transport
    host, peer = transport.getHost(), transport.getPeer()
    assert (host.host, host.port) == client.getpeername()[:2]
    assert (peer.host, peer.port) == client.getsockname()[:2]
    assert type(peer) is type(host) is type(port.getHost())
    client.close()
    port.stopListening()


@onEveryPath
def test_logPrefixAndDescription(reactor: Reactor) -> None:
    """
    A connection's log prefix and description read as Twisted's (protocol, session number, peer; protocol, session, port), made when asked for.
    """
    accepted = accept(reactor)
    transport = accepted.transport
    assert transport.logPrefix() == f"Recorder,{transport.sessionno},127.0.0.1"
    assert repr(transport) == f"<Recorder #{transport.sessionno} on {transport.getHost().port}>"


@onEveryPath
def test_burstOfConnectionsAllAccepted(reactor: Reactor) -> None:
    """
    Connections that arrive together are all accepted, in as few turns as there are bursts, each with its own session number.
    """
    made: list[Protocol] = []

    class Recording(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            made.append(Protocol())
            return made[-1]

    port = reactor.listenTCP(0, Recording(), interface="127.0.0.1", backlog=256)
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(150)]
    spin(reactor, lambda: len(made) == 150)
    assert sorted(p.transport.sessionno for p in made) == list(range(150))  # type: ignore[union-attr]
    for client in clients:
        client.close()
    port.stopListening()


@onEveryPath
def test_refusedConnectionIsClosed(reactor: Reactor) -> None:
    """
    A connection the factory refuses (buildProtocol returns None) is closed, and the next one is still accepted.
    """
    answers: list[Protocol | None] = [None, Protocol()]

    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> Protocol | None:
            return answers.pop(0)

    port = reactor.listenTCP(0, Refusing(), interface="127.0.0.1")
    refused = socket.create_connection(("127.0.0.1", port.getHost().port))
    refused.setblocking(False)
    assert untilEOF(reactor, refused) == b""
    accepted = socket.create_connection(("127.0.0.1", port.getHost().port))
    spin(reactor, lambda: not answers)
    accepted.close()
    port.stopListening()


@onEveryPath
def test_closedFromConnectionMade(reactor: Reactor) -> None:
    """
    A protocol that writes and loses the connection as soon as it is made (as a refusal does) is sent what it wrote, never reads, and loses the connection cleanly.
    """

    class Refusing(Recorder):
        def connectionMade(self) -> None:
            self.transport.write(b"go away")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    factory = Recording(Refusing)
    made = factory.made
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.sendall(b"hello?")
    client.setblocking(False)
    assert untilEOF(reactor, client) == b"go away"
    spin(reactor, lambda: made and made[0].lost)
    assert made[0].received == b""
    assert len(made[0].lost) == 1 and made[0].lost[0].check(ConnectionDone)
    client.close()
    port.stopListening()


# The epoll reactor's own workings.


def test_connectTCPSendsAtOnce(netdReactor: NetdReactor) -> None:
    """
    Outgoing connections (connectTCP) send as written too.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    made: list[Protocol] = []

    class Connecting(ClientFactory):
        def buildProtocol(self, addr: Any) -> Protocol:
            made.append(Protocol())
            return made[0]

    netdReactor.connectTCP("127.0.0.1", listener.getsockname()[1], Connecting())
    spin(netdReactor, lambda: made and made[0].transport is not None and made[0].transport.connected)  # type: ignore[attr-defined]
    peer, _ = listener.accept()
    listener.close()
    made[0].transport.write(b"from the client")  # type: ignore[union-attr]
    assert readable(peer)
    assert peer.recv(100) == b"from the client"
    peer.close()


def test_watchesWritabilityOnlyWhileQueued(netdReactor: NetdReactor) -> None:
    """
    A connection is watched for writability while bytes are queued, and no longer once they are all sent.
    """
    accepted = accept(netdReactor, receiveBuffer=4096)
    assert accepted.transport not in netdReactor.getWriters()
    big = fillKernelBuffers(accepted)
    assert accepted.transport in netdReactor.getWriters()
    drain(netdReactor, accepted.client, len(big))
    spin(netdReactor, lambda: accepted.transport not in netdReactor.getWriters())


def test_quietLoseConnectionClosesWithoutWritability(netdReactor: NetdReactor) -> None:
    """
    loseConnection with nothing queued never waits for writability: the connection is lost cleanly, once, after loseConnection returns and within the reactor's next turn, and the client sees EOF.
    """
    accepted = accept(netdReactor)
    accepted.transport.write(b"bye")
    accepted.transport.loseConnection()
    assert accepted.protocol.lost == []
    assert accepted.transport not in netdReactor.getWriters()
    assert accepted.transport not in netdReactor.getReaders()
    netdReactor.iterate(0)
    assert len(accepted.protocol.lost) == 1 and accepted.protocol.lost[0].check(ConnectionDone)
    assert untilEOF(netdReactor, accepted.client) == b"bye"


def test_quietCloseAskedByTimedCallDoesNotWait(netdReactor: NetdReactor) -> None:
    """
    A connection closed by a timed call is closed on the reactor's next turn even though no event comes, and what its connectionLost schedules runs on the turn after.
    """
    after: list[bool] = []

    class Scheduling(Recorder):
        def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
            Recorder.connectionLost(self, reason)
            netdReactor.callLater(0, after.append, True)

    accepted = accept(netdReactor, Scheduling)
    protocol = accepted.protocol
    netdReactor.callLater(0, accepted.transport.loseConnection)
    started = time.monotonic()
    netdReactor.runUntilCurrent()
    netdReactor.doIteration(WAIT)
    assert protocol.lost and not after
    netdReactor.runUntilCurrent()
    assert after == [True]
    assert time.monotonic() - started < WAIT / 2


def test_shutdownClosesConnectionsWaitingToClose(netdReactor: NetdReactor) -> None:
    """
    At shutdown (disconnectAll), a connection whose close was left to the reactor is closed cleanly along with the others.
    """
    closing = accept(netdReactor)
    open_ = accept(netdReactor)
    closing.transport.loseConnection()
    netdReactor.disconnectAll()
    assert closing.protocol.lost[0].check(ConnectionDone)
    assert open_.protocol.lost[0].check(ConnectionLost)


def test_closeIsLoggedAndOthersClosed(netdReactor: NetdReactor) -> None:
    """
    An exception from one connection's connectionLost, when the reactor closes it, is logged and the other connections waiting to close are closed.
    """
    failures: list[Failure] = []

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure", event.get("failure"))
        if failure is not None:
            failures.append(failure)

    class Raising(Recorder):
        def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
            Recorder.connectionLost(self, reason)
            raise ZeroDivisionError("the protocol's bug")

    buggy = accept(netdReactor, Raising)
    fine = accept(netdReactor)
    buggy.transport.loseConnection()
    fine.transport.loseConnection()
    globalLogPublisher.addObserver(observe)
    try:
        netdReactor.iterate(0)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [f.type for f in failures] == [ZeroDivisionError]
    assert buggy.protocol.lost and fine.protocol.lost


def test_acceptErrorLeftToTwistedsLoop(netdReactor: NetdReactor) -> None:
    """
    An accept that fails with an error other than "nothing waiting" is handled by Twisted's accepting loop, which goes on to accept the connection waiting.
    """
    factory = Recording(Protocol)
    made = factory.made
    port = netdReactor.listenTCP(0, factory, interface="127.0.0.1")
    acceptOne, *rest = port._acceptFrom
    failed: list[bool] = []

    def failing() -> Any:
        if not failed:
            failed.append(True)
            raise ConnectionAbortedError(errno.ECONNABORTED, "aborted before accept")
        return acceptOne()

    port._acceptFrom = (failing, *rest)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    spin(netdReactor, lambda: made)
    assert failed and made[0].transport is not None
    client.close()
    port.stopListening()


def test_installReactorRefusesUnknownName() -> None:
    """
    A NETD_REACTOR that names no reactor is refused with the names that are allowed.
    """
    with pytest.raises(ValueError, match="NETD_REACTOR='libuv' names no reactor; use one of: uvloop, netd, twisted"):
        installReactor({"NETD_REACTOR": "libuv"})


def test_installReactorKeepsOneInstalled() -> None:
    """
    With a reactor already installed (here, the test session's), nothing is replaced.
    """
    assert installReactor({"NETD_REACTOR": "twisted"}) == "preinstalled"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "UvloopReactor"),
        ({"NETD_REACTOR": "uvloop"}, "UvloopReactor"),
        ({"NETD_REACTOR": "netd"}, "NetdReactor"),
        ({"NETD_REACTOR": "twisted"}, "EPollReactor"),
    ],
)
def test_installReactorInstalls(environment: dict[str, str], expected: str) -> None:
    """
    In a fresh process, importing netd.daemon.cli installs no reactor, and installReactor installs netd's uvloop one, its epoll one with NETD_REACTOR=netd, or Twisted's with NETD_REACTOR=twisted.
    """
    script = (
        "import sys, netd.daemon.cli\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'importing netd.daemon.cli installed a reactor'\n"
        "from netd.reactors.choice import installReactor\n"
        "installReactor()\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NETD_REACTOR"} | environment
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


@pytest.mark.skipif(sys.platform != "linux", reason="netd's reactor and the malloc settings are Linux's")
@pytest.mark.parametrize("installed", [False, True], ids=["stock", "netd-reactor"])
def test_readBuffersStayOffMmap(installed: bool) -> None:
    """
    Once netd's reactor is installed, a read's 256 KiB buffer comes from the heap, not from a new memory mapping as in a stock process.
    """
    script = (
        "import sys\n"
        "from netd.reactors.epoll import READ_SIZE, install\n"
        + ("install()\n" if installed else "")
        + "def mappings():\n"
        "    found = set()\n"
        "    for line in open('/proc/self/maps'):\n"
        "        fields = line.split()\n"
        "        start, end = (int(x, 16) for x in fields[0].split('-'))\n"
        "        if len(fields) == 5 and end - start >= READ_SIZE:\n"
        "            found.add(fields[0])\n"
        "    return found\n"
        "before = mappings()\n"
        "buffer = bytes(READ_SIZE)\n"
        "print(len(mappings() - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == (0 if installed else 1)


def test_sessionRunsOnNetdReactor() -> None:
    """
    The test session's reactor is netd's, so the whole suite exercises it.
    """
    from twisted.internet import reactor

    assert isinstance(reactor, NetdReactor)


@implementer(IOutOfDescriptors)
class DescriptorRecorder(Factory):
    """
    A factory of L{Recorder}s that keeps what its port said of running out of descriptors.
    """

    protocol = Recorder
    counters: Any = None

    def __init__(self) -> None:
        self.errors: list[OSError] = []

    def outOfDescriptors(self, error: OSError) -> None:
        self.errors.append(error)


def test_outOfDescriptorsPausesAcceptingWithoutSpinning(netdReactor: NetdReactor) -> None:
    """
    An accept that fails with EMFILE tells the service and stops accepting for 10 ms, then 20 ms if it fails again; the client that waited meanwhile is accepted once descriptors are free.
    """
    factory = DescriptorRecorder()
    port = netdReactor.listenTCP(0, factory, interface="127.0.0.1")
    accept, *rest = port._acceptFrom

    def exhausted() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    port._acceptFrom = (exhausted, *rest)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        spin(netdReactor, lambda: factory.errors)
        assert port not in netdReactor.getReaders()
        assert port._acceptPause is not None and port._pauseLength == 0.01
        spin(netdReactor, lambda: len(factory.errors) == 2)
        assert port._pauseLength == 0.02
        port._acceptFrom = (accept, *rest)
        spin(netdReactor, lambda: port.sessionno == 1)
        assert port in netdReactor.getReaders() and len(factory.errors) == 2
        assert port._pauseLength == 0
    finally:
        client.close()
        port.stopListening()
        spin(netdReactor, lambda: not port.connected)
    assert port._acceptPause is None


def test_twistedsReactorListensWithAcceptingPorts() -> None:
    """
    Listen strings on Twisted's own reactor get a port that pauses when out of descriptors (with Twisted's connections); netd's reactors and fake ones are used as they are.
    """
    from twisted.internet import tcp
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.testing import MemoryReactor

    from netd.reactors.accepting import AcceptingPort, acceptGuarded

    twisted = EPollReactor()
    try:
        guarded = acceptGuarded(twisted)
        port = guarded.listenTCP(0, Factory.forProtocol(Recorder), backlog=77, interface="127.0.0.1")
        try:
            assert type(port) is AcceptingPort and port.transport is tcp.Server and port.backlog == 77
            assert guarded.seconds is not None and port.reactor is twisted
        finally:
            port.connectionLost(Failure(ConnectionDone()))
    finally:
        twisted._poller.close()
    memory = MemoryReactor()
    assert acceptGuarded(memory) is memory
    made = NetdReactor()
    try:
        assert acceptGuarded(made) is made
    finally:
        made._poller.close()
