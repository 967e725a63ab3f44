"""
Frame faults (L{netd.faults.frames}) on every framing that has frames: the
golden wire bytes of split, merged, oversized, truncated and mislabelled
frames, their schedules, the order of frames, bounded holding, and timers
cancelled, through the real core stack on in-memory transports.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.config.options import ConfigError
from netd.faults.frames import HELD_LIMIT, splitEvenly
from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.stream.framing import FRAMINGS, FramingError
from netd.testing.memory import MemoryStreamConnection, connect, connectTLS, faultsFor, makeStreamStack
from netd.tls.client import clientCreator
from netd.tls.devcerts import ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd_plugins.echo import EchoHandler

FRAMED = [name for name, framing in FRAMINGS.items() if framing.largest is not None]
"""
The framings with frames of their own (all but C{raw}).
"""
PREFIXED = ["netstring", "u16", "u32"]


def encodeClaiming(framing: str, frame: bytes, length: int | None = None) -> bytes:
    """
    The test's own encoder, from the wire formats: C{frame} behind a prefix
    stating C{length} (its real length when L{None}).
    """
    claimed = len(frame) if length is None else length
    encoders: dict[str, Callable[[], bytes]] = {
        "line": lambda: frame + b"\n",
        "netstring": lambda: b"%d:%s," % (claimed, frame),
        "u16": lambda: struct.pack(">H", claimed) + frame,
        "u32": lambda: struct.pack(">I", claimed) + frame,
    }
    return encoders[framing]()


class Stack:
    """
    One in-memory connection to an echo service with frame faults, on a fake clock.
    """

    def __init__(self, framing: str, tables: list[dict[str, Any]], handler: Any = None) -> None:
        self.clock = Clock()
        self.counters = Counters()
        self.faults = faultsFor(tables, framing=framing, counters=self.counters)
        self.limiter = makeStreamStack(
            EchoHandler() if handler is None else handler,
            framing,
            clock=self.clock,
            counters=self.counters,
            faults=self.faults,
        )
        connection = connect(self.limiter)
        assert connection is not None
        self.connection: MemoryStreamConnection = connection
        self.framing = framing

    def send(self, *frames: bytes) -> None:
        """
        The client sends C{frames}; the echo sends each back.
        """
        self.connection.receive(b"".join(encodeClaiming(self.framing, frame) for frame in frames))

    def takeSent(self) -> bytes:
        """
        What netd wrote since the last call.
        """
        return self.connection.takeSent()

    def advance(self, ms: float) -> None:
        """
        Let C{ms} milliseconds pass at once: the timers due by then fire (not
        those they start).
        """
        self.clock.advance(ms / 1000)

    def run(self, ms: int) -> None:
        """
        Let C{ms} milliseconds pass, one at a time, so that timers started by
        timers fire too.
        """
        self.clock.pump([0.001] * ms)


@implementer(IFrameReceiver)
class SendThenClose:
    """
    A receiver that answers the first frame with C{answers}, then closes.
    """

    connection: IFrameConnection

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers

    def connectionMade(self, connection: IFrameConnection) -> None:
        self.connection = connection

    def frameReceived(self, frame: bytes) -> None:
        for answer in self.answers:
            self.connection.sendFrame(answer)
        self.connection.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        pass


@implementer(IStreamHandler)
class SendThenCloseHandler:
    """
    Handler of L{SendThenClose} receivers.
    """

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers

    def newConnection(self) -> SendThenClose:
        return SendThenClose(self.answers)


def test_splitEvenly() -> None:
    """
    Pieces differ by one byte at most, and there are never more pieces than bytes.
    """
    assert splitEvenly(b"abcdefg", 3) == [b"abc", b"de", b"fg"]
    assert splitEvenly(b"ab", 5) == [b"a", b"b"]
    assert splitEvenly(b"", 2) == [b""]


@pytest.mark.parametrize("framing", FRAMED)
def test_splitFrame(framing: str) -> None:
    """
    C{split_frame} writes the encoded frame, prefix included, in C{pieces} writes C{delay} milliseconds apart.
    """
    stack = Stack(framing, [{"type": "split_frame", "pieces": 3, "delay": 10}])
    stack.send(b"hello, world")
    golden = encodeClaiming(framing, b"hello, world")
    pieces = splitEvenly(golden, 3)
    assert stack.takeSent() == pieces[0]
    stack.advance(9.9)
    assert stack.takeSent() == b""
    stack.advance(0.1)
    assert stack.takeSent() == pieces[1]
    stack.advance(10)
    assert stack.takeSent() == pieces[2]
    assert stack.counters["faults_applied_split_frame"] == 1


def test_splitWithoutDelayWritesInLaterReactorTurns() -> None:
    """
    With no delay the pieces still go in separate turns of the reactor, so that each leaves in a send of its own.
    """
    stack = Stack("u16", [{"type": "split_frame", "pieces": 2}])
    stack.send(b"abcd")
    assert stack.takeSent() == b"\x00\x04a"
    stack.advance(0)
    assert stack.takeSent() == b"bcd"


def test_laterFramesQueueBehindASplitOne() -> None:
    """
    A frame sent while the pieces of an earlier one are pending goes out after them, whole.
    """
    stack = Stack("netstring", [{"type": "split_frame", "pieces": 2, "delay": 5, "first": 1}])
    stack.send(b"first", b"second")
    assert stack.takeSent() == b"5:fi"
    stack.advance(5)
    assert stack.takeSent() == b"rst,6:second,"


def test_orderIsKeptWhenTheFaultsAreRemoved() -> None:
    """
    Frames sent after the faults are deleted still wait behind the pieces held back.
    """
    stack = Stack("line", [{"type": "split_frame", "delay": 5}])
    stack.send(b"abcd")
    stack.faults.delete({})
    stack.send(b"next")
    assert stack.takeSent() == b"abc"
    stack.advance(5)
    assert stack.takeSent() == b"d\nnext\n"
    stack.send(b"free")
    assert stack.takeSent() == b"free\n"


@pytest.mark.parametrize("framing", FRAMED)
def test_mergeFrames(framing: str) -> None:
    """
    C{merge_frames} holds frames until C{count} of them can go in one write.
    """
    stack = Stack(framing, [{"type": "merge_frames", "count": 3}])
    stack.send(b"one")
    stack.send(b"two")
    assert stack.takeSent() == b""
    stack.send(b"three")
    assert stack.takeSent() == b"".join(encodeClaiming(framing, f) for f in (b"one", b"two", b"three"))
    assert stack.clock.getDelayedCalls() == []


def test_mergeWaitsAtMostWait() -> None:
    """
    Fewer than C{count} frames go out together once C{wait} milliseconds have passed since the first.
    """
    stack = Stack("u32", [{"type": "merge_frames", "count": 5, "wait": 20}])
    stack.send(b"a")
    stack.advance(10)
    stack.send(b"b")
    stack.advance(9.9)
    assert stack.takeSent() == b""
    stack.advance(0.1)
    assert stack.takeSent() == b"\x00\x00\x00\x01a\x00\x00\x00\x01b"


def test_unmergedFrameFlushesTheMergeFirst() -> None:
    """
    A frame the merge does not apply to pushes out the held ones before it, so order is kept.
    """
    stack = Stack("line", [{"type": "merge_frames", "count": 10, "first": 2}])
    stack.send(b"1", b"2", b"3")
    assert stack.takeSent() == b"1\n2\n3\n"
    assert stack.clock.getDelayedCalls() == []


@pytest.mark.parametrize("framing", FRAMED)
def test_oversizeFrame(framing: str) -> None:
    """
    C{oversize_frame} pads the payload with zero bytes to C{size}, and the prefix tells the padded length.
    """
    stack = Stack(framing, [{"type": "oversize_frame", "size": 300}])
    stack.send(b"small")
    assert stack.takeSent() == encodeClaiming(framing, b"small" + bytes(295))
    stack.send(b"x" * 400)
    assert stack.takeSent() == encodeClaiming(framing, b"x" * 400)


def test_oversizeStillRefusesWhatTheFramingRefuses() -> None:
    """
    A frame the framing cannot carry raises L{FramingError} to the plugin, faults or not.
    """
    stack = Stack("line", [{"type": "oversize_frame", "size": 100}])
    stack.send(b"ok")
    protocol = stack.connection.protocol.wrappedProtocol
    with pytest.raises(FramingError):
        protocol.sendFrame(b"ends in CR\r")
    with pytest.raises(FramingError):
        protocol.sendFrame(b"has\nLF")


@pytest.mark.parametrize("framing", FRAMED)
def test_truncateFrameHalfThenClose(framing: str) -> None:
    """
    C{truncate_frame} writes half of the encoded frame by default, then closes the connection.
    """
    stack = Stack(framing, [{"type": "truncate_frame"}])
    stack.send(b"0123456789")
    golden = encodeClaiming(framing, b"0123456789")
    assert stack.takeSent() == golden[: len(golden) // 2]
    assert stack.connection.transport.disconnecting
    stack.send(b"more")
    assert stack.takeSent() == b""


def test_truncateFrameBytesWithoutClose() -> None:
    """
    With C{bytes} and C{close = false} the cut frame is followed by the next ones, on the open connection.
    """
    stack = Stack("u16", [{"type": "truncate_frame", "bytes": 3, "close": False, "first": 1}])
    stack.send(b"hello", b"next")
    assert stack.takeSent() == b"\x00\x05h\x00\x04next"
    assert not stack.connection.transport.disconnecting


@pytest.mark.parametrize("framing", PREFIXED)
def test_corruptLengthClaimsOneMore(framing: str) -> None:
    """
    C{corrupt_length} without C{length} sends the frame behind a prefix one more than its length.
    """
    stack = Stack(framing, [{"type": "corrupt_length"}])
    stack.send(b"hello")
    assert stack.takeSent() == encodeClaiming(framing, b"hello", 6)


@pytest.mark.parametrize("framing", PREFIXED)
def test_corruptLengthClaimsLength(framing: str) -> None:
    """
    C{corrupt_length} with C{length} sends that length in the prefix.
    """
    stack = Stack(framing, [{"type": "corrupt_length", "length": 1000}])
    stack.send(b"hello")
    assert stack.takeSent() == encodeClaiming(framing, b"hello", 1000)


def test_corruptLengthOfTheLargestU16Frame() -> None:
    """
    A u16 frame of 65535 bytes cannot claim one more: its prefix claims one less.
    """
    stack = Stack("u16", [{"type": "corrupt_length"}])
    protocol = stack.connection.protocol.wrappedProtocol
    protocol.sendFrame(b"z" * 65535)
    assert stack.takeSent()[:2] == b"\xff\xfe"


def test_oversizeAndCorruptLengthCombine() -> None:
    """
    Faults that apply to one frame act together: padded, then behind a prefix that lies.
    """
    stack = Stack("netstring", [{"type": "corrupt_length", "length": 2}, {"type": "oversize_frame", "size": 8}])
    stack.send(b"abc")
    assert stack.takeSent() == b"2:abc\x00\x00\x00\x00\x00,"


def test_truncateThenSplit() -> None:
    """
    A truncated frame may also be split: the pieces of the cut bytes, then the close.
    """
    stack = Stack("u32", [{"type": "truncate_frame", "bytes": 6}, {"type": "split_frame", "pieces": 2, "delay": 1}])
    stack.send(b"abcdef")
    assert stack.takeSent() == b"\x00\x00\x00"
    assert not stack.connection.transport.disconnecting
    stack.advance(1)
    assert stack.takeSent() == b"\x06ab"
    assert stack.connection.transport.disconnecting


def test_everyCountsFrames() -> None:
    """
    C{every} counts the frames a connection sends: every second one is mislabelled.
    """
    stack = Stack("u16", [{"type": "corrupt_length", "every": 2, "length": 0}])
    stack.send(b"a", b"b", b"c", b"d")
    assert stack.takeSent() == b"\x00\x01a\x00\x00b\x00\x01c\x00\x00d"


def test_probabilityWithSeedRepeats() -> None:
    """
    C{probability} with a C{seed} picks the same frames from one run to the next.
    """

    def run() -> bytes:
        stack = Stack("netstring", [{"type": "corrupt_length", "probability": 0.5, "seed": 3}])
        stack.send(*[b"x"] * 30)
        return stack.takeSent()

    first = run()
    assert first.count(b"2:x,") not in (0, 30)
    assert run() == first


def test_heldBytesPauseReading() -> None:
    """
    While more than L{HELD_LIMIT} bytes are held back, reading from the client pauses; it resumes once they are written.
    """
    stack = Stack("u32", [{"type": "split_frame", "pieces": 2, "delay": 100}])
    transport = stack.connection.transport
    frame = b"x" * 1000
    for _ in range(HELD_LIMIT // 1000 + 2):
        stack.send(frame)
    assert transport.producerState == "paused"
    stack.run(100 * (HELD_LIMIT // 1000 + 3))
    assert transport.producerState == "producing"
    assert stack.takeSent() == encodeClaiming("u32", frame) * (HELD_LIMIT // 1000 + 2)


def test_connectionLostCancelsTimers() -> None:
    """
    When the connection is lost, the held frames are dropped and no fault timer is left.
    """
    stack = Stack("line", [{"type": "split_frame", "delay": 50, "first": 1}, {"type": "merge_frames", "wait": 50}])
    stack.send(b"abcd", b"merged")
    assert stack.clock.getDelayedCalls()
    stack.connection.peerClosed()
    assert stack.clock.getDelayedCalls() == []
    stack.takeSent()
    stack.advance(100)
    assert stack.takeSent() == b""


def test_pluginCloseWaitsForHeldFrames() -> None:
    """
    A plugin that closes the connection after its answers has them all written first.
    """
    stack = Stack("netstring", [{"type": "split_frame", "delay": 5}], handler=SendThenCloseHandler([b"abcd", b"ef"]))
    stack.send(b"go")
    assert not stack.connection.transport.disconnecting
    stack.run(10)
    assert stack.takeSent() == b"4:abcd,2:ef,"
    assert stack.connection.transport.disconnecting


def test_changesApplyToTheNextFrame() -> None:
    """
    Frame faults put through the control API act on the next frame of open connections.
    """
    stack = Stack("u16", [])
    stack.send(b"a")
    assert stack.takeSent() == b"\x00\x01a"
    stack.faults.put({"faults": [{"type": "corrupt_length", "length": 9}]})
    stack.send(b"b")
    assert stack.takeSent() == b"\x00\x09b"


def test_appliedFaultsAreLogged() -> None:
    """
    Each fault applied to a frame is an event naming the fault, the peer and the framing.
    """
    stack = Stack("u16", [{"type": "corrupt_length"}])
    stack.send(b"hi")
    [event] = stack.faults.events.events(kind="fault")
    assert (event["fault"], event["peer"], event["framing"], event["claimed"]) == (
        "corrupt_length",
        "127.0.0.1:40000",
        "u16",
        3,
    )


def test_noFaultsNoWriter() -> None:
    """
    Without frame faults a connection gets no fault writer: frames go straight out.
    """
    stack = Stack("line", [])
    stack.send(b"plain")
    assert stack.takeSent() == b"plain\n"
    assert stack.connection.protocol.wrappedProtocol.faultWriter is None


@pytest.mark.parametrize(
    "tables, framing, words",
    [
        ([{"type": "oversize_frame", "size": 70000}], "u16", "does not fit u16"),
        ([{"type": "corrupt_length", "length": 70000}], "u16", "does not fit a u16 prefix"),
        ([{"type": "corrupt_length"}], "line", "needs a framing with a length prefix"),
        ([{"type": "split_frame"}], "raw", "raw framing"),
    ],
)
def test_misfits(tables: list[dict[str, Any]], framing: str, words: str) -> None:
    """
    A frame fault the service's framing cannot carry is refused at its key path.
    """
    with pytest.raises(ConfigError) as raised:
        faultsFor(tables, framing=framing)
    assert "faults[0].type" in str(raised.value) and words in str(raised.value)


def test_fitsElsewhere() -> None:
    """
    The same sizes fit a u32 framing.
    """
    faultsFor([{"type": "oversize_frame", "size": 70000}, {"type": "corrupt_length", "length": 70000}], framing="u32")


@pytest.mark.usefixtures("tlsRecordPath")
def test_splitFrameInsideTLS(tmp_path: Path) -> None:
    """
    On a TLS service the pieces of a split frame are TLS records of their own, and the client reassembles the frame.
    """
    dev, _ = ensureDevelopmentSet(str(tmp_path))
    clock = MemoryReactorClock()
    faults = faultsFor([{"type": "split_frame", "pieces": 3, "delay": 10}], framing="u16", tls=True)
    tls = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    stack = makeStreamStack(EchoHandler(), "u16", clock=clock, tls=tls, faults=faults)
    client = connectTLS(stack, clientCreator("localhost", dev.ca), clock)
    assert client is not None and client.handshakeDone
    client.send(b"\x00\x06abcdef")
    assert client.takeReceived() == b"\x00\x06a"
    clock.advance(0.01)
    client.flush()
    assert client.takeReceived() == b"bcd"
    clock.advance(0.01)
    client.flush()
    assert client.takeReceived() == b"ef"
