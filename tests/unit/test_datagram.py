"""
The core's UDP side: answers go out through the socket directly, a failed send
is counted, not raised, datagrams from netd's own ports are dropped, and the
per-source rate limit plugins use.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.task import Clock
from zope.interface import implementer

from netd.datagram.listener import DatagramListener, OwnPorts, SourceRateLimit
from netd.metrics import Counters
from netd.testing.memory import UDPMemoryReactorClock
from netd_plugins.echo import EchoHandler


@attrs.define
class FakeSocket:
    """
    A socket whose sendto records datagrams, or fails with C{error}.
    """

    sent: list[tuple[bytes, Any]] = attrs.Factory(list)
    error: int | None = None

    def sendto(self, datagram: bytes, address: Any) -> int:
        if self.error is not None:
            raise OSError(self.error, "failed")
        self.sent.append((datagram, address))
        return len(datagram)


@implementer(ISystemHandle)
@attrs.define
class SocketTransport:
    """
    A UDP transport that exposes its socket, as Twisted's udp.Port does; its write must not be used.
    """

    socket: FakeSocket

    def getHandle(self) -> FakeSocket:
        return self.socket

    def write(self, datagram: bytes, address: Any) -> None:
        raise AssertionError("write used instead of the socket's sendto")


def listening(socket: FakeSocket) -> tuple[DatagramListener, Counters]:
    """
    An echo datagram listener started on a transport around C{socket}.
    """
    counters = Counters()
    listener = DatagramListener(EchoHandler(), counters)
    listener.makeConnection(SocketTransport(socket))  # type: ignore[arg-type]
    return listener, counters


def test_answersGoStraightThroughTheSocket() -> None:
    """
    When the transport exposes its socket, answers are sent with the socket's sendto, to the address they came from.
    """
    socket = FakeSocket()
    listener, counters = listening(socket)
    listener.datagramReceived(b"ping", ("127.0.0.1", 5000))
    assert socket.sent == [(b"ping", ("127.0.0.1", 5000))]
    assert (counters["datagrams_received"], counters["datagrams_sent"]) == (1, 1)


def test_failedSendIsCountedNotRaised() -> None:
    """
    A send the kernel refuses (a full buffer here) is dropped and counted, and the listener goes on.
    """
    socket = FakeSocket(error=errno.EAGAIN)
    listener, counters = listening(socket)
    listener.datagramReceived(b"ping", ("127.0.0.1", 5000))
    socket.error = None
    listener.datagramReceived(b"again", ("127.0.0.1", 5000))
    assert counters["datagrams_send_failed"] == 1
    assert socket.sent == [(b"again", ("127.0.0.1", 5000))]


def test_datagramsFromNetdsOwnPortsAreDropped() -> None:
    """
    A datagram whose source port is one netd listens on (its own included) is dropped before the plugin and counted; the port leaves the set when the listener stops.
    """
    reactor = UDPMemoryReactorClock()
    ports = OwnPorts()
    counters = Counters()
    other = reactor.listenUDP(7007, DatagramListener(EchoHandler(), Counters(), ownPorts=ports))
    port = reactor.listenUDP(7008, DatagramListener(EchoHandler(), counters, ownPorts=ports))
    assert 7007 in ports and 7008 in ports
    for source in (7007, 7008, 7009):
        port.protocol.datagramReceived(b"ping", ("127.0.0.1", source))
    assert port.protocol.transport.written == [(b"ping", ("127.0.0.1", 7009))]  # type: ignore[union-attr]
    assert (counters["datagrams_received"], counters["datagrams_from_own_port"]) == (3, 2)
    other.stopListening()
    assert 7007 not in ports
    port.protocol.datagramReceived(b"ping", ("127.0.0.1", 7007))
    assert counters["datagrams_from_own_port"] == 2


def test_sharedPortNumberStaysOwnedUntilBothStop() -> None:
    """
    Two listeners on one port number (two interfaces) keep it in the set until both stop.
    """
    ports = OwnPorts()
    ports.add(53)
    ports.add(53)
    ports.remove(53)
    assert 53 in ports
    ports.remove(53)
    assert 53 not in ports


def test_sourceRateLimitBucket() -> None:
    """
    A source gets burst datagrams at once, then rate a second, never more than burst saved up.
    """
    clock = Clock()
    limit = SourceRateLimit(10.0, 5, clock)
    assert [limit.allows("a") for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.1)
    assert [limit.allows("a") for _ in range(2)] == [True, False]
    clock.advance(100)
    assert sum(limit.allows("a") for _ in range(10)) == 5


def test_sourceRateLimitTableBounded() -> None:
    """
    The table keeps at most maxSources addresses, forgetting the one seen longest ago.
    """
    clock = Clock()
    limit = SourceRateLimit(1.0, 1, clock, maxSources=3)
    for host in ("a", "b", "c"):
        assert limit.allows(host)
    assert not limit.allows("a")
    assert limit.allows("d")
    assert len(limit) == 3
    assert limit.allows("b"), "b, seen longest ago, was forgotten and starts with a full bucket"
    assert not limit.allows("a"), "a, seen recently, is still remembered"
