"""
The stream path's per-message shortcuts keep the behaviour of the long way:
the idle timer that traffic does not move, the length-prefixed framings'
one-frame reads and their frame encoding.
"""

from __future__ import annotations

import struct

import pytest

from netd.framing import FramingError
from netd.metrics import Counters
from netd.testing import makeStreamStack
from plugins.echo import EchoHandler

from .test_limits import accept, makeStack


def test_trafficDoesNotMoveTheIdleTimer() -> None:
    """
    Traffic only notes its time: the idle timer keeps its deadline, and when it fires early it waits again for exactly the rest of the timeout.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    [timer] = clock.getDelayedCalls()
    clock.advance(3)
    connection.receive(b"traffic")
    assert clock.getDelayedCalls() == [timer] and timer.getTime() == 10
    clock.advance(7)
    [again] = clock.getDelayedCalls()
    assert again.getTime() == 13
    clock.advance(2.9)
    assert not connection.transport.disconnecting
    assert counters["idle_timeouts"] == 0
    clock.advance(0.1)
    assert connection.transport.disconnected
    assert counters["idle_timeouts"] == 1


def test_idleTimerWaitsAgainAfterEachActivity() -> None:
    """
    Traffic again and again keeps a connection open for as long as it goes on, and it closes idle_timeout seconds after the last.
    """
    limiter, handler, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    for _ in range(10):
        clock.advance(6)
        connection.receive(b"x")
    assert not connection.transport.disconnecting
    clock.advance(9.5)
    assert not connection.transport.disconnecting
    clock.advance(0.5)
    assert connection.transport.disconnected
    assert counters["idle_timeouts"] == 1


@pytest.mark.parametrize(("framing", "prefix"), [("u16", ">H"), ("u32", ">I")])
def test_wholeFrameReadsEchoedAsFrames(framing: str, prefix: str) -> None:
    """
    Reads that are each one whole frame, empty or not, are echoed frame for frame, and so are frames that follow a partial read.
    """
    limiter = makeStreamStack(EchoHandler(), framing, maxFrame=100)
    connection = accept(limiter)
    frames = [b"one", b"", b"x" * 100]
    for frame in frames:
        connection.receive(struct.pack(prefix, len(frame)) + frame)
    wire = b"".join(struct.pack(prefix, len(frame)) + frame for frame in frames)
    assert connection.takeSent() == wire
    connection.receive(wire[:5])
    connection.receive(wire[5:])
    assert connection.takeSent() == wire


@pytest.mark.parametrize(("framing", "prefix"), [("u16", ">H"), ("u32", ">I")])
def test_wholeFrameOverLimitRefused(framing: str, prefix: str) -> None:
    """
    A read that is one whole frame over max_frame is refused and closes the connection, as the buffered path does, and nothing is echoed.
    """
    counters = Counters()
    limiter = makeStreamStack(EchoHandler(), framing, maxFrame=10, counters=counters)
    connection = accept(limiter)
    connection.receive(struct.pack(prefix, 11) + b"y" * 11)
    assert connection.takeSent() == b""
    assert connection.transport.disconnecting
    assert counters["frames_rejected"] == 1


def test_u16FrameTooLargeToSend() -> None:
    """
    A frame larger than a u16 prefix can state is refused by sendFrame with the framing and the sizes.
    """
    limiter = makeStreamStack(EchoHandler(), "u16")
    connection = accept(limiter)
    framed = connection.protocol.wrappedProtocol
    with pytest.raises(FramingError, match="u16 framing cannot send a frame of 65536 bytes; the largest is 65535"):
        framed.sendFrame(b"z" * 65536)
