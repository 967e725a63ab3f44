"""
The connection guard on a transport that meters its own traffic, as netd's
TCP connections do: it steps aside while it has nothing to do per message,
and stands between the socket and the service again when it has.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, ITransport
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from netd.events import EventLog
from netd.metrics import Counters
from netd.stream.framing import FRAMINGS, RawFraming
from netd.testing.memory import MemoryStreamConnection, connect, faultsFor, makeStreamStack
from netd_plugins.echo import EchoHandler

from .test_framing import ENCODERS, shadowedMethods


def echoStack(framing: str = "raw", idleTimeout: float = 0) -> tuple[Any, Counters, MemoryReactorClock]:
    """
    An echo service's stream stack, with its counters and clock.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    events = EventLog(100, clock)
    faults = faultsFor([], framing=framing, counters=counters, events=events)
    limiter = makeStreamStack(
        EchoHandler(), framing, clock=clock, counters=counters, idleTimeout=idleTimeout, faults=faults
    )
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
    inner = guard.wrappedProtocol
    direct = inner.directReader() if isinstance(inner, RawFraming) else inner.dataReceived
    return guard.dataReceived == direct and guard.write == connection.transport.write


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


def faultedStack(tables: list[dict[str, Any]], **options: Any) -> tuple[Any, Any, MemoryReactorClock]:
    """
    A raw echo's stream stack with the given faults in force, its faults, and its clock.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    faults = faultsFor(tables, counters=counters, events=EventLog(100, clock))
    limiter = makeStreamStack(EchoHandler(), "raw", clock=clock, counters=counters, faults=faults, **options)
    return limiter, faults, clock


def test_faultsInForceAtOpenTakeTheReads() -> None:
    """
    A metered connection opened while a fault delays what the client sends keeps the guard in between: its reads wait for the fault, not going around it.
    """
    limiter, _, clock = faultedStack([{"type": "latency", "ms": 100, "direction": "from_client"}])
    connection = meteredConnection(limiter)
    assert not isAside(connection)
    connection.receive(b"held")
    assert connection.takeSent() == b""
    clock.advance(0.1)
    assert connection.takeSent() == b"held"


def test_faultsPutOnAnOpenConnectionTakeItsWrites() -> None:
    """
    A fault on what goes to the client, put on an open metered connection, holds the service's writes: they do not go around it straight to the transport.
    """
    limiter, faults, clock = faultedStack([])
    connection = meteredConnection(limiter)
    faults.put({"faults": [{"type": "latency", "ms": 100, "direction": "to_client"}]})
    connection.receive(b"late")
    assert connection.takeSent() == b""
    clock.advance(0.1)
    assert connection.takeSent() == b"late"


def test_resetByFaultBringsTheGuardBack() -> None:
    """
    Once a fault resets a metered connection, what the peer still sends is dropped by the guard, not echoed.
    """
    limiter, faults, _ = faultedStack([])
    connection = meteredConnection(limiter)
    connection.protocol.endByFault("reset by fault reset_after", reset=True)
    assert connection.transport.disconnecting
    assert not isAside(connection)
    connection.receive(b"late")
    assert connection.takeSent() == b""


def test_closeByFaultBringsTheGuardBack() -> None:
    """
    Once a fault closes a metered connection cleanly, what the peer still sends is dropped by the guard, not echoed.
    """
    limiter, _, _ = faultedStack([])
    connection = meteredConnection(limiter)
    connection.protocol.endByFault("closed by fault close_after")
    assert connection.transport.disconnecting
    connection.receive(b"late")
    assert connection.takeSent() == b""


def test_evictionBringsTheGuardBack() -> None:
    """
    A metered connection evicted at max_connections drops what its peer still sends, and the new connection steps aside.
    """
    limiter, _, _ = faultedStack([], maxConnections=1)
    limiter.evict = True
    stale = meteredConnection(limiter)
    fresh = meteredConnection(limiter)
    assert stale.transport.disconnecting and not fresh.transport.disconnecting
    stale.receive(b"late")
    assert stale.takeSent() == b""
    assert isAside(fresh)


def test_peerHalfCloseBringsTheGuardBack() -> None:
    """
    A peer's EOF on a metered connection closes it through the guard, which then drops what still arrives.
    """
    limiter, _, _ = echoStack()
    connection = meteredConnection(limiter)
    connection.protocol.readConnectionLost()
    assert connection.transport.disconnecting
    connection.receive(b"late")
    assert connection.takeSent() == b""


def test_lostConnectionLetsGoOfItsRoutes() -> None:
    """
    A metered connection, once lost, holds no route to its inner protocol or its transport: guard, framing and receiver are freed by reference counting alone.
    """
    limiter, _, _ = echoStack()
    gc.collect()
    gc.disable()
    try:
        connection = meteredConnection(limiter)
        connection.receive(b"hello")
        assert isAside(connection)
        guard = weakref.ref(connection.protocol)
        inner = weakref.ref(connection.protocol.wrappedProtocol)
        connection.peerClosed()
        del connection
        assert guard() is None and inner() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_steppedAsideMatchesTheGuardInBetween(framing: str) -> None:
    """
    The same traffic through a guard stepped aside (metered) and one in between (not metered) gives the same bytes out, the same counters and the same connection event.
    """
    frames = [b"one", b"two", b"x" * 300]
    wire = b"".join(ENCODERS[framing](frame) for frame in frames)
    outcomes = []
    for metered in (True, False):
        limiter, counters, clock = echoStack(framing)
        connection = connect(limiter, metered=metered)
        assert connection is not None
        assert isAside(connection) is metered
        for start in range(0, len(wire), 7):
            connection.receive(wire[start : start + 7])
            clock.advance(1)
        sent = connection.takeSent()
        connection.protocol.loseConnection()
        connection.finishClose()
        [event] = limiter.events.events(kind="connection")
        outcomes.append(
            (
                sent,
                counters["bytes_received"],
                counters["bytes_sent"],
                event["bytes_in"],
                event["bytes_out"],
                event["ended"],
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == wire


@pytest.mark.parametrize("metered", [True, False])
def test_connectedGuardProvidesItsInterfaces(metered: bool) -> None:
    """
    A connected guard, stepped aside or in between, provides what it declares by inspection: a half-closeable protocol to its transport and a transport to its inner protocol.
    """
    limiter, _, _ = echoStack()
    connection = connect(limiter, metered=metered)
    assert connection is not None
    assert isAside(connection) is metered
    guard = connection.protocol
    for interface in (IProtocol, IHalfCloseableProtocol, ITransport):
        assert verifyObject(interface, guard)
    assert shadowedMethods(guard) == []
