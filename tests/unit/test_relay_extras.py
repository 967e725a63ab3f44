"""
The optional extras of a frame receiver that relays frames to a connection of
its own (the proxy): exact frames (L{netd.interfaces.IExactFrames}), fields of
its own in the connection event (L{netd.interfaces.IConnectionEventFields}),
its own end of a connection whose peer broke the framing
(L{netd.interfaces.IFramingViolationReceiver}), and frame faults pausing the
producer it registered; through the core's stack on in-memory transports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.bases import FrameReceiver
from netd.events import EventLog
from netd.faults.frames import HELD_LIMIT
from netd.interfaces import IConnectionEventFields, IExactFrames, IFramingViolationReceiver
from netd.metrics import Counters
from netd.stream.framing import FramedProtocol, FramingError
from netd.testing.memory import MemoryStreamConnection, connect, faultsFor, makeStreamStack


class Recording(FrameReceiver):
    """
    A receiver that keeps the frames it gets.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def frameReceived(self, frame: bytes) -> None:
        self.frames.append(frame)


@implementer(IExactFrames)
class Exact(Recording):
    """
    A receiver whose frames keep every byte of the wire but the framing's own.
    """


@implementer(IConnectionEventFields)
class WithFields(Recording):
    """
    A receiver that adds fields to its connection's event, one of them named like a core field.
    """

    lost = False

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        super().connectionLost(reason)

    def eventFields(self) -> Mapping[str, Any]:
        return {"upstream": "192.0.2.1:6379", "told_of_loss": self.lost, "peer": "not the core's"}


@implementer(IFramingViolationReceiver)
class EndsItsWay(Recording):
    """
    A receiver that notes the peer's framing violation instead of the core closing the connection.
    """

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def framingViolated(self, reason: str) -> None:
        self.violations.append(reason)


class Handler:
    """
    Hands out one receiver.
    """

    def __init__(self, receiver: FrameReceiver) -> None:
        self.receiver = receiver

    def newConnection(self) -> FrameReceiver:
        return self.receiver


def openStack(
    receiver: FrameReceiver, framing: str = "line", events: EventLog | None = None, **kwargs: Any
) -> MemoryStreamConnection:
    """
    One connection of a stack with C{framing} whose receiver is C{receiver}.
    """
    connection = connect(makeStreamStack(Handler(receiver), framing, events=events, maxFrame=16, **kwargs))
    assert connection is not None
    return connection


def test_exactLinesKeepTheirCR() -> None:
    """
    With line framing, a receiver of exact frames gets each line's CR, and a frame it sends may end in CR (sent as CR LF).
    """
    receiver = Exact()
    connection = openStack(receiver)
    connection.receive(b"PING\r\nbare\n\r\n")
    assert receiver.frames == [b"PING\r", b"bare", b"\r"]
    receiver.connection.sendFrame(b"+PONG\r")
    assert connection.takeSent() == b"+PONG\r\n"


def test_otherLinesLoseTheirCR() -> None:
    """
    Without the extra, line framing strips a line's CR and refuses to send a frame ending in CR, as before.
    """
    receiver = Recording()
    connection = openStack(receiver)
    connection.receive(b"PING\r\n")
    assert receiver.frames == [b"PING"]
    with pytest.raises(FramingError):
        receiver.connection.sendFrame(b"+PONG\r")


def test_exactLineLimitCountsTheCR() -> None:
    """
    An exact line may be max_frame bytes plus its CR, as a stripped one may; one byte more breaks the framing.
    """
    receiver = Exact()
    connection = openStack(receiver)
    connection.receive(b"x" * 16 + b"\r\n")
    assert receiver.frames == [b"x" * 16 + b"\r"]
    connection.receive(b"y" * 17 + b"\r\n")
    assert connection.transport.disconnecting


@pytest.mark.parametrize("framing, frame", [("line", b"ab\r"), ("netstring", b"ab"), ("u16", b"ab"), ("u32", b"ab")])
def test_wireSizeIsTheEncodedSize(framing: str, frame: bytes) -> None:
    """
    A framing's wireSize of a frame is the length of its encoding.
    """
    receiver = Exact()
    openStack(receiver, framing)
    protocol = receiver.connection
    assert isinstance(protocol, FramedProtocol)
    assert protocol.wireSize(frame) == len(protocol.encodeFrame(frame))


def test_receiverFieldsJoinTheConnectionEvent() -> None:
    """
    A receiver's event fields, read after it was told of the loss, are added to its connection's event, and never replace the core's.
    """
    events = EventLog(10, MemoryReactorClock())
    receiver = WithFields()
    connection = openStack(receiver, events=events)
    connection.receive(b"hi\n")
    connection.peerClosed()
    [event] = events.events(kind="connection")
    assert (event["upstream"], event["told_of_loss"]) == ("192.0.2.1:6379", True)
    assert event["peer"] != "not the core's"
    assert event["bytes_in"] == 3


def test_noReceiverFieldsWithoutTheExtra() -> None:
    """
    A receiver without the extra leaves the connection event as the core makes it.
    """
    events = EventLog(10, MemoryReactorClock())
    connection = openStack(Recording(), events=events)
    connection.peerClosed()
    [event] = events.events(kind="connection")
    assert set(event) == {
        "seq",
        "time",
        "kind",
        "peer",
        "local",
        "opened",
        "duration",
        "bytes_in",
        "bytes_out",
        "ended",
        "tls",
    }


def test_violationLeftToTheReceiver() -> None:
    """
    A peer that breaks the framing is counted and logged by the core; a receiver with the extra ends the connection its own way, the core does not close it.
    """
    counters = Counters()
    receiver = EndsItsWay()
    connection = openStack(receiver, "u16", counters=counters)
    connection.receive(b"\x00\x20")
    assert receiver.violations == ["u16 frame of 32 bytes exceeds max_frame (16)"]
    assert counters["frames_rejected"] == 1
    assert not connection.transport.disconnecting


def test_violationClosesWithoutTheExtra() -> None:
    """
    Without the extra, the core closes a connection whose peer broke the framing, as before.
    """
    connection = openStack(Recording(), "u16")
    connection.receive(b"\x00\x20")
    assert connection.transport.disconnecting


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


def test_frameFaultsHoldingTooMuchPauseTheRegisteredProducer() -> None:
    """
    While frame faults hold more than HELD_LIMIT bytes, the producer the receiver registered is paused with the reading, and resumed once they went out.
    """
    clock = MemoryReactorClock()
    faults = faultsFor([{"type": "split_frame", "pieces": 2, "delay": 100, "direction": "to_client"}], framing="u32")
    receiver = Recording()
    connection = openStack(receiver, "u32", clock=clock, faults=faults)
    producer = Producer()
    protocol = receiver.connection
    assert isinstance(protocol, FramedProtocol)
    protocol.registerProducer(producer, True)
    for _ in range(HELD_LIMIT // 1024 + 2):
        protocol.sendFrame(b"x" * 2048)
    assert producer.state == "paused"
    assert connection.transport.producerState == "paused"
    for _ in range(HELD_LIMIT // 1024 + 2):
        clock.advance(0.1)
    assert producer.state == "producing"
    protocol.unregisterProducer()
    assert protocol.relayProducer is None
