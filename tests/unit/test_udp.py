"""
Tests for L{netd.reactors.udp}: the UDP port that reads with C{recvmmsg} and sends a
read's answers with C{sendmmsg}, on real loopback sockets (IPv4 and IPv6)
served by a private reactor turned one iteration at a time (every wait
bounded).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import udp as twistedUDP
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import DatagramProtocol
from twisted.python import log
from zope.interface import implementer

from netd.config.listen import ListenAddress
from netd.datagram.listener import DatagramListener
from netd.metrics import Counters
from netd.reactors import udp
from netd.reactors.epoll import NetdReactor
from netd.reactors.udp import BATCH, BatchingPort, IBatchingDatagramProtocol, listenBatchingUDP
from netd.testing.harness import unavailable
from netd.testing.memory import UDPMemoryReactorClock

from .privatereactor import WAIT, privateReactor, spin


@pytest.fixture(autouse=True)
def _batchingAvailable() -> None:
    """
    Every test here needs C{recvmmsg} and C{sendmmsg} (skipped without them, failed under CI).
    """
    if not udp.AVAILABLE:
        unavailable("this system has no recvmmsg/sendmmsg")


@pytest.fixture
def reactor() -> Iterator[NetdReactor]:
    """
    A private netd reactor, not the session's, torn down with everything on it.
    """
    yield from privateReactor()


@implementer(IBatchingDatagramProtocol)
class Answering(DatagramProtocol):
    """
    Keeps every datagram received, with its address, and answers each with
    C{answers(datagram)} through the port's C{send}.
    """

    def __init__(self, answers: Callable[[bytes], list[bytes]] = lambda datagram: [datagram]) -> None:
        self.answers = answers
        self.received: list[tuple[bytes, Any]] = []
        self.notSent: list[OSError] = []
        self.refused = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))
        for answer in self.answers(datagram):
            self.transport.send(answer, addr)  # type: ignore[union-attr]

    def datagramNotSent(self, error: OSError) -> None:
        self.notSent.append(error)

    def connectionRefused(self) -> None:
        self.refused += 1


def ipv6() -> bool:
    """
    Whether this machine has IPv6 on loopback; CI's has, so there a missing one fails.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        if os.environ.get("CI") == "true":
            raise
        return False
    return True


@pytest.fixture
def client() -> Iterator[Callable[[socket.AddressFamily, str], socket.socket]]:
    """
    Makes plain non-blocking UDP sockets on loopback with a big receive
    buffer, closed after the test.
    """
    made: list[socket.socket] = []

    def make(family: socket.AddressFamily, host: str) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        made.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    yield make
    for sock in made:
        sock.close()


Client = Callable[[socket.AddressFamily, str], socket.socket]


def collect(reactor: NetdReactor, sock: socket.socket, count: int) -> list[bytes]:
    """
    Turn the reactor until C{sock} has received C{count} datagrams; return them.
    """
    got: list[bytes] = []

    def done() -> bool:
        while True:
            try:
                got.append(sock.recv(70000))
            except BlockingIOError:
                return len(got) >= count

    spin(reactor, done)
    return got


FAMILIES = [
    pytest.param(socket.AF_INET, "127.0.0.1", id="IPv4"),
    pytest.param(socket.AF_INET6, "::1", id="IPv6"),
]


@pytest.mark.parametrize(("family", "host"), FAMILIES)
def test_everyDatagramDeliveredAndAnsweredInOrder(
    reactor: NetdReactor, client: Client, family: socket.AddressFamily, host: str
) -> None:
    """
    Many more datagrams than a batch, from two clients, reach the protocol in the order sent with each sender's address as recvfrom gives it, and every answer reaches its client in order.
    """
    if family == socket.AF_INET6 and not ipv6():
        unavailable("no IPv6 on loopback")
    protocol = Answering()
    port = listenBatchingUDP(reactor, 0, protocol, interface=host, maxPacketSize=65535)
    server = port.getHandle().getsockname()[:2]
    one, two = client(family, host), client(family, host)
    sent: list[tuple[bytes, Any]] = []
    for index in range(BATCH * 3 + 5):
        sender = one if index % 3 else two
        datagram = b"%d" % index * (1 + index % 7)
        sender.sendto(datagram, server)
        sent.append((datagram, sender.getsockname()[:2]))
    spin(reactor, lambda: len(protocol.received) == len(sent))
    assert protocol.received == sent
    for sender in (one, two):
        expected = [datagram for datagram, address in sent if address == sender.getsockname()[:2]]
        assert collect(reactor, sender, len(expected)) == expected
    assert protocol.notSent == []


def test_moreAnswersThanABatch(reactor: NetdReactor, client: Client) -> None:
    """
    A read whose answers fill more than one batch to send (three answers per datagram) sends them all, in order.
    """
    protocol = Answering(lambda datagram: [datagram + b"-a", datagram + b"-b", datagram + b"-c"])
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    sock = client(socket.AF_INET, "127.0.0.1")
    for index in range(BATCH):
        sock.sendto(b"%d" % index, port.getHandle().getsockname())
    expected = [b"%d-%s" % (index, suffix) for index in range(BATCH) for suffix in (b"a", b"b", b"c")]
    assert collect(reactor, sock, len(expected)) == expected


def test_oneAnswerAndNone(reactor: NetdReactor, client: Client) -> None:
    """
    A read answered with one datagram sends it, one answered with none sends nothing, and the next read is answered as usual.
    """
    protocol = Answering(lambda datagram: [] if datagram == b"quiet" else [datagram.upper()])
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    sock = client(socket.AF_INET, "127.0.0.1")
    address = port.getHandle().getsockname()
    sock.sendto(b"one", address)
    assert collect(reactor, sock, 1) == [b"ONE"]
    sock.sendto(b"quiet", address)
    spin(reactor, lambda: len(protocol.received) == 2)
    sock.sendto(b"two", address)
    assert collect(reactor, sock, 1) == [b"TWO"]


def test_answerToAnotherPeerKeepsTheOrder(reactor: NetdReactor, client: Client) -> None:
    """
    During a read, an answer to an address never seen (sent at once) goes out after the answers queued before it and before those after it.
    """
    watcher = client(socket.AF_INET, "127.0.0.1")
    elsewhere = watcher.getsockname()

    protocol = Answering()
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    original = protocol.datagramReceived

    def received(datagram: bytes, addr: Any) -> None:
        original(datagram, addr)
        port.send(b"copy " + datagram, elsewhere)

    protocol.datagramReceived = received  # type: ignore[method-assign]
    sock = client(socket.AF_INET, "127.0.0.1")
    for index in range(5):
        sock.sendto(b"%d" % index, port.getHandle().getsockname())
    assert collect(reactor, sock, 5) == [b"%d" % index for index in range(5)]
    assert collect(reactor, watcher, 5) == [b"copy %d" % index for index in range(5)]


def test_sendOutsideAReadGoesAtOnce(reactor: NetdReactor, client: Client) -> None:
    """
    C{send} outside a read sends the datagram before it returns.
    """
    protocol = Answering()
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    sock = client(socket.AF_INET, "127.0.0.1")
    port.send(b"unasked", sock.getsockname())
    sock.settimeout(WAIT)
    assert sock.recv(100) == b"unasked"


def test_refusedDatagramsCountedNotRaised(reactor: NetdReactor, client: Client) -> None:
    """
    Datagrams the system refuses, queued in a batch (over UDP's size limit) or sent at once (bigger than a slot), are each reported to the protocol and the others still go out.
    """
    tooBigForUDP = b"x" * 65520
    tooBigForASlot = b"y" * 70000
    protocol = Answering(lambda datagram: [datagram, tooBigForUDP, datagram + b"!", tooBigForASlot, datagram + b"?"])
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    sock = client(socket.AF_INET, "127.0.0.1")
    sock.sendto(b"q", port.getHandle().getsockname())
    assert collect(reactor, sock, 3) == [b"q", b"q!", b"q?"]
    assert [error.errno for error in protocol.notSent] == [errno.EMSGSIZE, errno.EMSGSIZE]


def test_protocolErrorLoggedAndReadGoesOn(reactor: NetdReactor, client: Client) -> None:
    """
    An exception raised by the protocol for one datagram is logged (as Twisted's port logs it), and the other datagrams of the read are delivered and answered.
    """
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("isError") and event.get("failure") is not None:
            failures.append(event["failure"])

    def answers(datagram: bytes) -> list[bytes]:
        if datagram == b"boom":
            raise ZeroDivisionError()
        return [datagram]

    protocol = Answering(answers)
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    sock = client(socket.AF_INET, "127.0.0.1")
    for datagram in (b"a", b"boom", b"b"):
        sock.sendto(datagram, port.getHandle().getsockname())
    log.addObserver(observe)
    try:
        assert collect(reactor, sock, 2) == [b"a", b"b"]
    finally:
        log.removeObserver(observe)
    assert [failure.type for failure in failures] == [ZeroDivisionError]


@pytest.mark.parametrize("portType", [BatchingPort, twistedUDP.Port], ids=["batching", "twisted"])
def test_connectedPortHearsOfRefusal(reactor: NetdReactor, client: Client, portType: type[twistedUDP.Port]) -> None:
    """
    A connected port whose peer has no socket tells its protocol, when it next reads, that the connection was refused, as Twisted's port does, and the next read finds nothing.
    """
    protocol = Answering()
    port = portType(0, protocol, "127.0.0.1", 65535, reactor)
    port.startListening()
    gone = client(socket.AF_INET, "127.0.0.1")
    address = gone.getsockname()
    gone.close()
    port.connect(*address)
    port.write(b"anyone?")
    port.doRead()
    assert protocol.refused == 1
    port.doRead()
    assert protocol.refused == 1
    assert protocol.received == []


def test_closedPortReportsSends(reactor: NetdReactor) -> None:
    """
    Once the port has stopped listening its memory is released, and a late C{send} is reported as not sent rather than raised.
    """
    protocol = Answering()
    port = listenBatchingUDP(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=65535)
    stopped = port.stopListening()
    done: list[object] = []
    assert stopped is not None
    stopped.addCallback(done.append)
    spin(reactor, lambda: done)
    assert port._received.data.closed and port._sending is None, "no send batch was needed, none was mapped"
    port.send(b"late", ("127.0.0.1", 9))
    assert [error.errno for error in protocol.notSent] == [errno.EBADF]


def test_sendsOnAnotherPortWaitForTheRead(
    reactor: NetdReactor, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    What another batching port is given to send while one port's read is handled is held until that read ends, then goes out in order, several in one C{sendmmsg}; outside a read it goes at once again.
    """
    outbound = listenBatchingUDP(reactor, 0, Answering(), interface="127.0.0.1", maxPacketSize=65535)
    peer = client(socket.AF_INET, "127.0.0.1")
    peer.sendto(b"hello", outbound.getHandle().getsockname())
    assert collect(reactor, peer, 1) == [b"hello"], "the outbound port knows the peer"
    held: list[bool] = []

    def relay(datagram: bytes) -> list[bytes]:
        outbound.send(b"relayed " + datagram, peer.getsockname())
        held.append(outbound._batching)
        return []

    inbound = listenBatchingUDP(reactor, 0, Answering(relay), interface="127.0.0.1", maxPacketSize=65535)
    flushed: list[int] = []
    realFlush = outbound._flush

    def countingFlush() -> None:
        flushed.append(outbound._queued)
        realFlush()

    monkeypatch.setattr(outbound, "_flush", countingFlush)
    sock = client(socket.AF_INET, "127.0.0.1")
    for index in range(5):
        sock.sendto(b"%d" % index, inbound.getHandle().getsockname())
    assert collect(reactor, peer, 5) == [b"relayed %d" % index for index in range(5)]
    assert all(held) and max(flushed) > 1
    assert not outbound._batching and udp._READS.joined is None
    outbound.send(b"now", peer.getsockname())
    peer.settimeout(WAIT)
    assert peer.recv(100) == b"now"


def test_joinedPortRaisingLeavesTheOthersToSend(reactor: NetdReactor, client: Client) -> None:
    """
    A port that joined another's read and whose protocol raises as its send is refused is logged; the other ports that joined still send, and the next send outside a read goes at once.
    """
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("isError") and event.get("failure") is not None:
            failures.append(event["failure"])

    class Raising(Answering):
        def datagramNotSent(self, error: OSError) -> None:
            raise ZeroDivisionError()

    peer = client(socket.AF_INET, "127.0.0.1")
    refusing = listenBatchingUDP(reactor, 0, Raising(), interface="127.0.0.1", maxPacketSize=65535)
    sending = listenBatchingUDP(reactor, 0, Answering(), interface="127.0.0.1", maxPacketSize=65535)

    def relay(datagram: bytes) -> list[bytes]:
        refusing.send(b"x" * 65520, peer.getsockname())
        sending.send(b"relayed " + datagram, peer.getsockname())
        return []

    inbound = listenBatchingUDP(reactor, 0, Answering(relay), interface="127.0.0.1", maxPacketSize=65535)
    sock = client(socket.AF_INET, "127.0.0.1")
    sock.sendto(b"one", inbound.getHandle().getsockname())
    log.addObserver(observe)
    try:
        assert collect(reactor, peer, 1) == [b"relayed one"]
    finally:
        log.removeObserver(observe)
    assert [failure.type for failure in failures] == [ZeroDivisionError]
    assert udp._READS.joined is None and not refusing._batching
    sending.send(b"now", peer.getsockname())
    peer.settimeout(WAIT)
    assert peer.recv(100) == b"now"


def test_sharedReceiveBatch(reactor: NetdReactor, client: Client) -> None:
    """
    Ports made with shared buffers read into one receive batch, which closing one of them leaves to the others.
    """
    one = listenBatchingUDP(reactor, 0, Answering(), interface="127.0.0.1", maxPacketSize=65535, sharedBuffers=True)
    two = listenBatchingUDP(reactor, 0, Answering(), interface="127.0.0.1", maxPacketSize=65535, sharedBuffers=True)
    assert one._received is two._received
    stopped = one.stopListening()
    done: list[object] = []
    assert stopped is not None
    stopped.addCallback(done.append)
    spin(reactor, lambda: done)
    assert not two._received.data.closed
    sock = client(socket.AF_INET, "127.0.0.1")
    sock.sendto(b"still", two.getHandle().getsockname())
    assert collect(reactor, sock, 1) == [b"still"]


def test_listenerCountsBatchedFailures(reactor: NetdReactor, client: Client) -> None:
    """
    The core's datagram listener on a batching port sends through the batches and counts the datagrams the system refused.
    """

    class Handler:
        def datagramReceived(self, datagram: bytes, peer: tuple[str, int], sender: Any) -> None:
            sender.sendDatagram(b"x" * 65520, peer)
            sender.sendDatagram(datagram, peer)

    counters = Counters()
    listener = DatagramListener(Handler(), counters)
    port = listenBatchingUDP(reactor, 0, listener, interface="127.0.0.1", maxPacketSize=65535)
    assert listener._send == port.send
    sock = client(socket.AF_INET, "127.0.0.1")
    sock.sendto(b"hello", port.getHandle().getsockname())
    assert collect(reactor, sock, 1) == [b"hello"]
    assert counters["datagrams_received"] == 1
    assert counters["datagrams_sent"] == 2
    assert counters["datagrams_send_failed"] == 1


def test_udpListenersBatchOnNetdsReactor(reactor: NetdReactor) -> None:
    """
    A C{udp:} listen address binds a batching port on netd's reactor, and the reactor's own port on Twisted's (C{NETD_REACTOR=twisted}) or a fake one.
    """
    address = ListenAddress.fromConfig("udp:0:interface=127.0.0.1")
    assert isinstance(address.listenDatagram(reactor, Answering()), BatchingPort)
    twisted = EPollReactor()
    try:
        port = address.listenDatagram(twisted, Answering())
        assert type(port) is twistedUDP.Port
        port.stopListening()
        twisted.iterate(0)
    finally:
        twisted._poller.close()
    fake = UDPMemoryReactorClock()
    assert not isinstance(address.listenDatagram(fake, Answering()), BatchingPort)
