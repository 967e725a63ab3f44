"""
The optional extras a relaying plugin uses of a stream connection
(L{netd.interfaces.IPacedConnection}, L{netd.interfaces.IHalfCloseableReceiver}),
through the core's stack on in-memory transports.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyClass

from netd.bases import FrameReceiver
from netd.events import EventLog
from netd.interfaces import IFrameConnection, IHalfCloseableReceiver, IPacedConnection
from netd.stream.framing import FRAMINGS
from netd.stream.guard import GuardedConnection, _endingOf
from netd.testing.memory import faultsFor, makeStreamStack


class HalfClosingTransport(StringTransport):
    """
    A L{StringTransport} that records a half-close.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


@implementer(IHalfCloseableReceiver)
class Relaying(FrameReceiver):
    """
    A receiver that keeps its connection open after the peer's EOF, and notes the EOF.
    """

    eof = False

    def frameReceived(self, frame: bytes) -> None:
        """
        Frames are not looked at.
        """

    def readConnectionLost(self) -> None:
        self.eof = True


@implementer(IPushProducer)
class Producer:
    """
    A producer that records its state.
    """

    state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class OneReceiver:
    """
    A stream handler whose every connection gets C{receiver}.
    """

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver

    def newConnection(self) -> Any:
        return self.receiver


def openRelay(faults: list[dict[str, Any]] | None = None) -> tuple[Relaying, GuardedConnection, HalfClosingTransport]:
    """
    One connection to a L{Relaying} receiver behind the core's raw stack.
    """
    receiver = Relaying()
    clock = MemoryReactorClock()
    limiter = makeStreamStack(
        OneReceiver(receiver),  # type: ignore[arg-type]
        "raw",
        clock=clock,
        faults=None if faults is None else faultsFor(faults, events=EventLog(10, clock)),
    )
    guard = limiter.buildProtocol(None)
    assert isinstance(guard, GuardedConnection)
    transport = HalfClosingTransport()
    guard.makeConnection(transport)
    return receiver, guard, transport


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_everyFramingProvidesTheExtras(framing: str) -> None:
    """
    Every framing's connection provides IPacedConnection beside IFrameConnection, and takes a peer's EOF (IHalfCloseableProtocol).
    """
    protocol = FRAMINGS[framing].protocol
    assert verifyClass(IFrameConnection, protocol)
    assert verifyClass(IPacedConnection, protocol)
    assert verifyClass(IHalfCloseableProtocol, protocol)


def test_halfCloseableReceiverKeepsTheConnectionOpen() -> None:
    """
    A peer's EOF reaches a receiver that provides IHalfCloseableReceiver, and the connection stays open for what it sends.
    """
    receiver, guard, transport = openRelay()
    guard.readConnectionLost()
    assert receiver.eof
    assert not transport.disconnecting
    receiver.connection.sendFrame(b"after EOF")
    assert transport.value() == b"after EOF"


def test_pauseAndResumeReading() -> None:
    """
    pauseReading and resumeReading pause and resume the transport's reading.
    """
    receiver, _, transport = openRelay()
    connection: Any = receiver.connection
    connection.pauseReading()
    assert transport.producerState == "paused"
    connection.resumeReading()
    assert transport.producerState == "producing"


def test_registeredProducerReplacesSelfPacing() -> None:
    """
    A registered producer is paced by the transport's send buffer in place of the connection's own reading (and the guard names it, for the stream faults to pace it too); unregistered, the connection paces itself again.
    """
    receiver, guard, transport = openRelay()
    connection: Any = receiver.connection
    assert transport.producer is transport
    assert guard.producer is None
    producer = Producer()
    connection.registerProducer(producer, True)
    assert transport.producer is producer
    assert guard.producer is producer
    connection.unregisterProducer()
    assert transport.producer is transport
    assert guard.producer is None


def test_loseWriteConnection() -> None:
    """
    loseWriteConnection half-closes the transport and leaves it open.
    """
    receiver, _, transport = openRelay()
    connection: Any = receiver.connection
    connection.loseWriteConnection()
    assert transport.writeClosed
    assert not transport.disconnecting


def test_loseWriteConnectionBehindHeldBytesCloses() -> None:
    """
    While stream faults hold bytes for the peer, loseWriteConnection closes the connection once they are written rather than cut them off.
    """
    receiver, guard, transport = openRelay([{"type": "latency", "ms": 100, "direction": "to_client"}])
    connection: Any = receiver.connection
    connection.sendFrame(b"held")
    connection.loseWriteConnection()
    assert not transport.writeClosed
    assert not transport.disconnecting
    guard.factory.clock.advance(0.1)  # type: ignore[attr-defined]
    assert transport.value() == b"held"
    assert transport.disconnecting


def test_resetConnection() -> None:
    """
    resetConnection aborts the transport, and the connection's end says netd reset it.
    """
    receiver, guard, transport = openRelay()
    connection: Any = receiver.connection
    connection.resetConnection()
    assert transport.disconnected
    assert _endingOf(guard._ended, Exception) == "reset by netd"


def test_loseWriteConnectionWithoutHalfCloseBelowCloses() -> None:
    """
    Below a layer without a half-close of its own (the TLS layer), loseWriteConnection closes the connection rather than shut the socket under that layer.
    """
    protocol = FRAMINGS["raw"].protocol()
    protocol.receiver = Relaying()
    transport = StringTransport()
    assert not hasattr(type(transport), "loseWriteConnection")
    protocol.makeConnection(transport)
    protocol.loseWriteConnection()
    assert transport.disconnecting
