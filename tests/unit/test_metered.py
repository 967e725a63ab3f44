"""
The connection guard on a transport that meters its own traffic, as netd's
TCP connections do: it steps aside while it has nothing to do per message,
and stands between the socket and the service again when it has.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock

from netd.events import EventLog
from netd.metrics import Counters
from netd.testing.memory import MemoryStreamConnection, connect, faultsFor, makeStreamStack
from netd_plugins.echo import EchoHandler


def echoStack(framing: str = "raw", idleTimeout: float = 0) -> tuple[Any, Counters, MemoryReactorClock]:
    """
    An echo service's stream stack, with its counters and clock.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    events = EventLog(100, clock)
    faults = faultsFor([], framing=framing, counters=counters, events=events)
    limiter = makeStreamStack(EchoHandler(), framing, clock=clock, counters=counters, idleTimeout=idleTimeout, faults=faults)
    limiter.events = events
    return limiter, counters, clock


def meteredConnection(limiter: Any) -> MemoryStreamConnection:
    """
    A connection on a metered in-memory transport.
    """
    connection = connect(limiter, metered=True)
    assert connection is not None
    return connection


def isAside(connection: MemoryStreamConnection) -> bool:
    """
    Whether the guard is out of the per-message path: reads go straight to the inner protocol, writes straight to the transport.
    """
    guard = connection.protocol
    return guard.dataReceived == guard.wrappedProtocol.dataReceived and guard.write == connection.transport.write


def test_guardStepsAsideOnAMeteredTransport() -> None:
    """
    With no fault on it, a metered connection's reads reach the echo without the guard, and the echo's writes reach the transport without it.
    """
    limiter, _, _ = echoStack()
    connection = meteredConnection(limiter)
    assert isAside(connection)
    connection.receive(b"hello")
    assert connection.takeSent() == b"hello"


def test_guardStaysOnTransportsThatDoNotMeter() -> None:
    """
    On a transport that does not meter (Twisted's own, unix sockets, a PROXY header's wrapper), the guard stays in the path and counts.
    """
    limiter, counters, _ = echoStack()
    connection = connect(limiter)
    assert connection is not None
    assert not isAside(connection)
    connection.receive(b"abc")
    assert connection.protocol.bytesIn == connection.protocol.bytesOut == 3


def test_meteredBytesReachTheCountersOnce() -> None:
    """
    An open metered connection's bytes show in the service's counters when read, and are added to them once when it closes, as its event says.
    """
    limiter, counters, _ = echoStack()
    connection = meteredConnection(limiter)
    connection.receive(b"12345")
    connection.receive(b"678")
    assert counters["bytes_received"] == 0
    assert counters.snapshot()["bytes_received"] == counters.snapshot()["bytes_sent"] == 8
    connection.peerClosed()
    assert counters["bytes_received"] == counters["bytes_sent"] == 8
    assert counters.snapshot()["bytes_received"] == counters.snapshot()["bytes_sent"] == 8
    [event] = limiter.events.events(kind="connection")
    assert (event["bytes_in"], event["bytes_out"]) == (8, 8)


def test_faultsPutOnAnOpenConnectionTakeItsBytes() -> None:
    """
    Faults put through the API on an open connection bring the guard back between socket and service, and their DELETE sends it aside again.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    faults = faultsFor([], counters=counters, events=EventLog(100, clock))
    limiter = makeStreamStack(EchoHandler(), "raw", clock=clock, counters=counters, faults=faults)
    connection = meteredConnection(limiter)
    faults.put({"faults": [{"type": "latency", "ms": 100}]})
    assert not isAside(connection)
    connection.receive(b"slow")
    assert connection.takeSent() == b""
    clock.advance(0.1)
    clock.advance(0.1)
    assert connection.takeSent() == b"slow"
    faults.delete({})
    assert isAside(connection)
    connection.receive(b"fast")
    assert connection.takeSent() == b"fast"
    assert counters.snapshot()["bytes_received"] == 8


def test_closingBringsTheGuardBack() -> None:
    """
    Once netd closes a metered connection, the guard is back in the path and drops what the peer still sends.
    """
    limiter, _, _ = echoStack()
    connection = meteredConnection(limiter)
    connection.protocol.loseConnection()
    assert not isAside(connection)
    connection.receive(b"late")
    assert connection.takeSent() == b""


def test_idleTimeoutTimedByTheMeter() -> None:
    """
    On a metered connection the idle timeout counts from the transport's last traffic: traffic at 6 s keeps a 10 s timeout's connection open until 16 s.
    """
    limiter, counters, clock = echoStack(idleTimeout=10)
    connection = meteredConnection(limiter)
    clock.advance(6)
    connection.receive(b"x")
    clock.advance(6)
    clock.advance(3.9)
    assert not connection.transport.disconnecting
    clock.advance(0.2)
    assert connection.transport.disconnecting
    assert counters["idle_timeouts"] == 1


def test_lengthPrefixedEchoAside() -> None:
    """
    A u32 echo on a metered connection answers whole frames, and frames split over reads, with the guard aside.
    """
    limiter, _, _ = echoStack("u32")
    connection = meteredConnection(limiter)
    assert isAside(connection)
    connection.receive(b"\x00\x00\x00\x02hi")
    assert connection.takeSent() == b"\x00\x00\x00\x02hi"
    connection.receive(b"\x00\x00")
    connection.receive(b"\x00\x03abc")
    assert connection.takeSent() == b"\x00\x00\x00\x03abc"
