"""
One behaviour suite for every framing in L{netd.stream.framing.FRAMINGS}: decoding at
any split, golden wire bytes, round trips, the frame limit, and what
C{sendFrame} refuses.  Everything runs through the real core stack
(L{netd.testing.memory.makeStreamStack}) on in-memory transports.
"""

from __future__ import annotations

import gc
import itertools
import struct
import weakref
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, Logger, LogLevel, capturedLogs
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.stream import framing as framingModule
from netd.stream.framing import FRAMINGS, PARTIAL_FRAME_BUFFER, FramedFactory, FramingError, _checkPartialFrameBuffer
from netd.testing.memory import MemoryStreamConnection, connect, makeStreamStack

FRAMED = [name for name, framing in FRAMINGS.items() if framing.largest is not None]
"""
The framings that cut the stream into frames of their own (all but C{raw}).
"""


@implementer(IFrameReceiver)
class Recorder:
    """
    A receiver that keeps every frame, and closes the connection on C{closeOn}.
    """

    connection: IFrameConnection

    def __init__(self, closeOn: bytes | None = None) -> None:
        self.frames: list[bytes] = []
        self.lost: list[Failure] = []
        self.closeOn = closeOn

    def connectionMade(self, connection: IFrameConnection) -> None:
        self.connection = connection

    def frameReceived(self, frame: bytes) -> None:
        self.frames.append(frame)
        if frame == self.closeOn:
            self.connection.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@implementer(IStreamHandler)
class RecordingHandler:
    """
    A handler whose receivers are L{Recorder}s, kept in order of connection.
    """

    def __init__(self, closeOn: bytes | None = None) -> None:
        self.closeOn = closeOn
        self.receivers: list[Recorder] = []

    def newConnection(self) -> Recorder:
        receiver = Recorder(self.closeOn)
        self.receivers.append(receiver)
        return receiver


def openConnection(
    framing: str, *, maxFrame: int = 65536, closeOn: bytes | None = None
) -> tuple[MemoryStreamConnection, Recorder, Counters]:
    """
    One in-memory connection through the core stack with C{framing}, its
    receiver and the service's counters.
    """
    handler = RecordingHandler(closeOn)
    counters = Counters()
    connection = connect(makeStreamStack(handler, framing, maxFrame=maxFrame, counters=counters))
    assert connection is not None
    [receiver] = handler.receivers
    return connection, receiver, counters


def _prefixed(fmt: str) -> Callable[[bytes], bytes]:
    return lambda frame: struct.pack(fmt, len(frame)) + frame


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda frame: frame,
    "line": lambda frame: frame + b"\n",
    "netstring": lambda frame: b"%d:%s," % (len(frame), frame),
    "u16": _prefixed(">H"),
    "u32": _prefixed(">I"),
}
"""
The test's own encoder of each framing, written from the wire formats, not from netd.
"""

FRAMES = [b"hello", b"", b"x" * 300, b"with:colon,comma\r in the middle", b"\x00\x01\xff"]
"""
Frames every framing can carry (no LF, no trailing CR), empty and multi-digit lengths included.
"""


def framesFor(framing: str) -> list[bytes]:
    """
    L{FRAMES}, less the empty frame for C{raw}, where an empty read cannot happen.
    """
    return [frame for frame in FRAMES if frame or framing != "raw"]


def warnings(events: Sequence[LogEvent]) -> list[LogEvent]:
    """
    The warn-level events among C{events}.
    """
    return [event for event in events if event["log_level"] == LogLevel.warn]


def test_suiteCoversEveryFraming() -> None:
    """
    Every framing in the FRAMINGS table has an encoder here, so a new framing cannot skip this suite.
    """
    assert set(ENCODERS) == set(FRAMINGS)


@pytest.mark.parametrize("chunkSize", [*range(1, 10), None])
@pytest.mark.parametrize("framing", FRAMINGS)
def test_chunkedStreamGivesTheSameFrames(framing: str, chunkSize: int | None) -> None:
    """
    A multi-frame stream read byte at a time, in chunks of 1 to 9 bytes or whole gives the same frames (raw: the reads).
    """
    frames = framesFor(framing)
    stream = b"".join(ENCODERS[framing](frame) for frame in frames)
    size = chunkSize or len(stream)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    connection, receiver, counters = openConnection(framing)
    for chunk in chunks:
        connection.receive(chunk)
    assert receiver.frames == (chunks if framing == "raw" else frames)
    assert not connection.transport.disconnecting
    assert counters["frames_rejected"] == 0


@pytest.mark.parametrize("framing", FRAMED)
def test_partialFrameDeliversNothing(framing: str) -> None:
    """
    Every proper prefix of an encoded frame delivers nothing; the last byte delivers the frame.
    """
    wire = ENCODERS[framing](b"hello")
    connection, receiver, _ = openConnection(framing)
    for byte in wire[:-1]:
        connection.receive(bytes([byte]))
        assert receiver.frames == []
    connection.receive(wire[-1:])
    assert receiver.frames == [b"hello"]


@pytest.mark.parametrize(
    "framing, wire, frames",
    [
        ("raw", b"hello", [b"hello"]),
        ("line", b"hello\n", [b"hello"]),
        ("line", b"hello\r\n", [b"hello"]),
        ("line", b"\r\n\n", [b"", b""]),
        ("line", b"a\r\r\n", [b"a\r"]),
        ("netstring", b"5:hello,", [b"hello"]),
        ("netstring", b"0:,", [b""]),
        ("u16", b"\x00\x05hello", [b"hello"]),
        ("u16", b"\x00\x00", [b""]),
        ("u32", b"\x00\x00\x00\x05hello", [b"hello"]),
        ("u32", b"\x00\x00\x00\x00", [b""]),
    ],
)
def test_goldenWireDecodes(framing: str, wire: bytes, frames: list[bytes]) -> None:
    """
    Known wire bytes decode to known frames (one CR before the LF is not part of a line).
    """
    connection, receiver, _ = openConnection(framing)
    connection.receive(wire)
    assert receiver.frames == frames


GOLDEN_ENCODINGS = [
    ("raw", b"hello", b"hello"),
    ("line", b"hello", b"hello\n"),
    ("line", b"", b"\n"),
    ("netstring", b"hello", b"5:hello,"),
    ("netstring", b"", b"0:,"),
    ("u16", b"hello", b"\x00\x05hello"),
    ("u16", b"", b"\x00\x00"),
    ("u32", b"hello", b"\x00\x00\x00\x05hello"),
    ("u32", b"", b"\x00\x00\x00\x00"),
]


def test_goldenEncodingsCoverEveryFraming() -> None:
    """
    The golden encoding table has an entry for every framing.
    """
    assert {framing for framing, _, _ in GOLDEN_ENCODINGS} == set(FRAMINGS)


@pytest.mark.parametrize("framing, frame, wire", GOLDEN_ENCODINGS)
def test_sendFrameWritesGoldenBytes(framing: str, frame: bytes, wire: bytes) -> None:
    """
    sendFrame writes exactly the known wire bytes of a frame (line framing ends with a bare LF).
    """
    connection, receiver, _ = openConnection(framing)
    receiver.connection.sendFrame(frame)
    assert connection.transport.value() == wire


def test_rawPassesReadsThroughAsTheyCome() -> None:
    """
    Raw framing delivers each read as one frame, unmerged and unsplit, whatever bytes it holds.
    """
    reads = [b"he", b"llo\n", b"\x00\x00\x00\x05", b"5:a,"]
    connection, receiver, _ = openConnection("raw")
    for read in reads:
        connection.receive(read)
    assert receiver.frames == reads


@pytest.mark.parametrize("framing", FRAMINGS)
def test_roundTrip(framing: str) -> None:
    """
    Bytes one connection writes for each frame, fed into a fresh connection, give back those frames.
    """
    frames = framesFor(framing)
    sending, sender, _ = openConnection(framing)
    receiving, receiver, _ = openConnection(framing)
    for frame in frames:
        sender.connection.sendFrame(frame)
        receiving.receive(sending.takeSent())
    assert receiver.frames == frames


OVER_LIMIT = [
    ("line", b"abcdef\n"),
    ("line", b"abcdefg"),
    ("netstring", b"6:abcdef,"),
    ("u16", b"\x00\x06abcdef"),
    ("u32", b"\x00\x00\x00\x06abcdef"),
]
"""
With max_frame 5: a frame of 6 bytes in each framing (and an unterminated 7-byte line:
6 unterminated bytes may still be 5 and a CR).
"""


def test_overLimitCoversEveryFramedFraming() -> None:
    """
    The over-limit table has an entry for every framing that has frames.
    """
    assert {framing for framing, _ in OVER_LIMIT} == set(FRAMED)


@pytest.mark.parametrize("framing, wire", OVER_LIMIT)
def test_overLimitFrameClosesConnection(framing: str, wire: bytes) -> None:
    """
    A frame over max_frame closes the connection undelivered, counts frames_rejected and logs one warning with a reason.
    """
    connection, receiver, counters = openConnection(framing, maxFrame=5)
    with capturedLogs() as events:
        connection.receive(wire)
    assert connection.transport.disconnecting
    assert not connection.transport.disconnected
    assert receiver.frames == []
    assert counters["frames_rejected"] == 1
    [warning] = warnings(events)
    assert warning["framing"] == framing
    assert "max_frame (5)" in str(warning["reason"])
    assert connection.finishClose()
    assert len(receiver.lost) == 1


@pytest.mark.parametrize("framing, wire", OVER_LIMIT)
def test_overLimitAfterGoodFrame(framing: str, wire: bytes) -> None:
    """
    A good frame before an over-limit one in the same read is delivered; the bad one then closes the connection.
    """
    connection, receiver, counters = openConnection(framing, maxFrame=5)
    connection.receive(ENCODERS[framing](b"ok") + wire)
    assert receiver.frames == [b"ok"]
    assert connection.transport.disconnecting
    assert counters["frames_rejected"] == 1


@pytest.mark.parametrize("framing", FRAMED)
def test_frameAtLimitAccepted(framing: str) -> None:
    """
    A frame of exactly max_frame bytes is delivered, not rejected.
    """
    connection, receiver, counters = openConnection(framing, maxFrame=5)
    connection.receive(ENCODERS[framing](b"hello"))
    assert receiver.frames == [b"hello"]
    assert not connection.transport.disconnecting
    assert counters["frames_rejected"] == 0


def test_crlfLineAtLimitAccepted() -> None:
    """
    A CRLF-terminated line whose frame is exactly max_frame bytes is delivered, since the CR is not part of the frame.
    """
    connection, receiver, counters = openConnection("line", maxFrame=5)
    connection.receive(b"hello\r\n")
    assert receiver.frames == [b"hello"]
    assert not connection.transport.disconnecting
    assert counters["frames_rejected"] == 0


@pytest.mark.parametrize(
    "framing, prefix",
    [
        ("netstring", b"6:"),
        ("netstring", b"99999999999999999999:"),
        ("u16", b"\xff\xff"),
        ("u32", b"\x00\x00\x00\x06"),
        ("u32", b"\xff\xff\xff\xff"),
    ],
)
def test_announcedLengthRejectedBeforePayload(framing: str, prefix: bytes) -> None:
    """
    A length announcing more than max_frame closes the connection once the announcement is read, before any payload.
    """
    connection, receiver, counters = openConnection(framing, maxFrame=5)
    for byte in prefix:
        if connection.transport.disconnecting:
            break  # a real transport stops reading once it is closing
        connection.receive(bytes([byte]))
    assert connection.transport.disconnecting
    assert counters["frames_rejected"] == 1
    assert receiver.frames == []


@pytest.mark.parametrize("framing, wire", OVER_LIMIT)
def test_readsAfterViolationIgnored(framing: str, wire: bytes) -> None:
    """
    Bytes still arriving after a framing violation closed the connection are ignored: the violation is counted and logged once.
    """
    connection, receiver, counters = openConnection(framing, maxFrame=5)
    with capturedLogs() as events:
        connection.receive(wire)
        connection.receive(ENCODERS[framing](b"more"))
        connection.receive(b"x")
    assert receiver.frames == []
    assert counters["frames_rejected"] == 1
    assert len(warnings(events)) == 1


def test_u32HugePrefixDecidedOnFourthByte() -> None:
    """
    A u32 prefix announcing 2**31 bytes is rejected on its fourth byte, with nothing of the payload sent or buffered for.
    """
    connection, receiver, counters = openConnection("u32")
    prefix = struct.pack(">I", 2**31)
    with capturedLogs() as events:
        for byte in prefix[:3]:
            connection.receive(bytes([byte]))
        assert not connection.transport.disconnecting
        assert counters["frames_rejected"] == 0
        connection.receive(prefix[3:])
    assert connection.transport.disconnecting
    assert counters["frames_rejected"] == 1
    assert receiver.frames == []
    [warning] = warnings(events)
    assert str(2**31) in str(warning["reason"])


def test_unterminatedLineRejectedOnceOverLimit() -> None:
    """
    A line without LF is rejected as soon as more than max_frame bytes of it, plus one for a CR, are buffered, not when it ends.
    """
    connection, receiver, counters = openConnection("line", maxFrame=5)
    for byte in b"abcdef":
        connection.receive(bytes([byte]))
    assert not connection.transport.disconnecting
    connection.receive(b"g")
    assert connection.transport.disconnecting
    assert counters["frames_rejected"] == 1
    assert receiver.frames == []


@pytest.mark.parametrize("framing", FRAMED)
def test_closingReceiverStopsTheRestOfTheRead(framing: str) -> None:
    """
    Once the receiver closes the connection on a frame, the later frames of the same read are not delivered.
    """
    connection, receiver, _ = openConnection(framing, closeOn=b"close")
    connection.receive(b"".join(ENCODERS[framing](frame) for frame in [b"a", b"close", b"b", b"c"]))
    assert receiver.frames == [b"a", b"close"]
    assert connection.transport.disconnecting


@pytest.mark.parametrize(
    "framing, frame",
    [
        ("u16", b"x" * 65536),
        ("line", b"a\nb"),
        ("line", b"\n"),
    ],
)
def test_sendFrameRefusesWhatTheFramingCannotCarry(framing: str, frame: bytes) -> None:
    """
    sendFrame raises FramingError, a ValueError, for a frame the framing cannot carry, and writes nothing.
    """
    connection, receiver, _ = openConnection(framing)
    with pytest.raises(FramingError) as caught:
        receiver.connection.sendFrame(frame)
    assert isinstance(caught.value, ValueError)
    assert connection.transport.value() == b""
    assert not connection.transport.disconnecting


def test_u16SendsItsLargestFrame() -> None:
    """
    A u16 frame of 65535 bytes, the largest the prefix can announce, is sent behind the prefix b"\\xff\\xff".
    """
    connection, receiver, _ = openConnection("u16")
    frame = b"y" * FRAMINGS["u16"].largest  # type: ignore[operator]
    receiver.connection.sendFrame(frame)
    assert connection.transport.value() == b"\xff\xff" + frame


def frameStrategy(framing: str) -> st.SearchStrategy[bytes]:
    """
    Frames the framing can carry: no LF and no trailing CR in a line.
    """
    frames = st.binary(max_size=200)
    if framing == "line":
        return frames.map(lambda frame: frame.replace(b"\n", b"").rstrip(b"\r"))
    return frames


@settings(max_examples=500, deadline=None)
@given(framing=st.sampled_from(list(FRAMINGS)), data=st.data())
def test_randomSplitsDecodeToTheFrames(framing: str, data: st.DataObject) -> None:
    """
    Any list of frames, encoded and split at any points, decodes to exactly those frames (raw: to the pieces).
    """
    # The framing is drawn rather than parametrised: pytest-twisted 1.14 wraps a
    # hypothesis test's inner_test in place, so parametrised items nest the
    # wrappers and fail with "blockon cannot be called from the twisted greenlet".
    frames = data.draw(st.lists(frameStrategy(framing), max_size=8), label="frames")
    stream = b"".join(ENCODERS[framing](frame) for frame in frames)
    cuts: list[int] = []
    if len(stream) > 1:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1)), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    connection, receiver, counters = openConnection(framing)
    for piece in pieces:
        connection.receive(piece)
    assert receiver.frames == (pieces if framing == "raw" else frames)
    assert not connection.transport.disconnecting
    assert counters["frames_rejected"] == 0


@implementer(IStreamHandler)
class ForgetfulHandler:
    """
    A handler that keeps only weak references to the receivers it made.
    """

    def __init__(self) -> None:
        self.receivers: list[weakref.ref[Recorder]] = []

    def newConnection(self) -> Recorder:
        receiver = Recorder()
        self.receivers.append(weakref.ref(receiver))
        return receiver


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_closedConnectionFreedWithoutCollector(framing: str) -> None:
    """
    A closed connection's guard, framing and receiver are freed by reference counting alone, not left for the cycle collector.
    """
    handler = ForgetfulHandler()
    limiter = makeStreamStack(handler, framing)
    gc.collect()
    gc.disable()
    try:
        connection = connect(limiter)
        assert connection is not None
        guard = weakref.ref(connection.protocol)
        connection.receive(b"hello\n" if framing == "line" else b"hello")
        connection.peerClosed()
        del connection
        [receiver] = handler.receivers
        assert receiver() is None
        assert guard() is None
    finally:
        gc.enable()


def shadowedMethods(instance: object) -> list[str]:
    """
    The names in C{instance}'s own attributes that hide a method of its class
    (zope.interface's C{__provides__} aside, which declares what it provides).
    """
    return [name for name in vars(instance) if name != "__provides__" and callable(getattr(type(instance), name, None))]


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_connectedFramingProvidesItsInterfaces(framing: str) -> None:
    """
    A connected framing protocol provides IProtocol and IFrameConnection by inspection, its class does too, and no attribute of its own hides a method of its class.
    """
    connection, receiver, _ = openConnection(framing)
    framed = connection.protocol.wrappedProtocol
    connection.receive(ENCODERS[framing](b"frame"))
    assert receiver.frames == [b"frame"]
    for interface in (IProtocol, IFrameConnection):
        assert verifyObject(interface, framed)
        assert verifyClass(interface, type(framed))
    assert shadowedMethods(framed) == []


def test_partialFrameBufferCheckPassesOnThisTwisted() -> None:
    """
    The start-up check of the length-prefixed framings' one private name passes on the installed Twisted.
    """
    _checkPartialFrameBuffer()


def test_partialFrameBufferCheckFailsOnARenamedBuffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A Twisted whose receivers buffer a partial frame under another name fails the check, with one warning, and turns the whole-frame path off.
    """

    class Renamed(Int16StringReceiver):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            self.__dict__["_pending"] = self.__dict__.pop("_unprocessed", b"")

    monkeypatch.setattr(framingModule, "Int16StringReceiver", Renamed)
    monkeypatch.setattr(PARTIAL_FRAME_BUFFER, "_alive", None)
    with capturedLogs() as events:
        assert not PARTIAL_FRAME_BUFFER.alive()
        assert not PARTIAL_FRAME_BUFFER.alive()
    assert [event.get("event") for event in events] == ["private_api_fallback"]


@pytest.mark.parametrize("chunkSize", [1, 3, None])
@pytest.mark.parametrize("framing", ["u16", "u32"])
def test_withoutTheWholeFramePathFramesAreTheSame(
    monkeypatch: pytest.MonkeyPatch, framing: str, chunkSize: int | None
) -> None:
    """
    With the check failed, every read goes through Twisted's receiver, and a stream gives the same frames in any chunks.
    """
    monkeypatch.setattr(PARTIAL_FRAME_BUFFER, "_alive", False)
    frames = framesFor(framing)
    stream = b"".join(ENCODERS[framing](frame) for frame in frames)
    size = chunkSize or len(stream)
    connection, receiver, _ = openConnection(framing)
    for start in range(0, len(stream), size):
        connection.receive(stream[start : start + size])
    assert receiver.frames == frames


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_halfCloseSurvivesAClientEndpoint(framing: str) -> None:
    """
    A framed connection opened through a Twisted client endpoint (the
    proxy's upstream) still hears the peer's EOF as a half-close: Twisted's
    endpoint wrapper re-declares the interfaces it proxies one
    C{directlyProvides} at a time, each replacing the last, so the framing
    must provide no other of them (C{IHandshakeListener}) beside
    C{IHalfCloseableProtocol}.
    """
    reactor = MemoryReactorClock()
    factory = FramedFactory(FRAMINGS[framing], 1024, RecordingHandler(), Counters(), Logger())
    TCP4ClientEndpoint(reactor, "127.0.0.1", 6379).connect(factory)
    [(_host, _port, wrapping, _timeout, _bind)] = reactor.tcpClients
    wrapper = wrapping.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
    assert IHalfCloseableProtocol.providedBy(wrapper)


@pytest.mark.parametrize("framing", ["u16", "u32"])
def test_readOfManyFramesAndAPartialOneMatchesTheSlowPath(monkeypatch: pytest.MonkeyPatch, framing: str) -> None:
    """
    A read holding several whole frames and the start of another gives the same frames, in order, with and without the whole-frame path, and the next read completes the partial frame.
    """
    frames = [b"one", b"", b"x" * 300, b"last"]
    stream = b"".join(ENCODERS[framing](frame) for frame in [*frames, b"partial"])
    received: dict[bool, list[bytes]] = {}
    for wholeFrames in (True, False):
        monkeypatch.setattr(PARTIAL_FRAME_BUFFER, "_alive", wholeFrames)
        connection, receiver, counters = openConnection(framing)
        connection.receive(stream[:-3])
        assert receiver.frames == frames
        connection.receive(stream[-3:])
        received[wholeFrames] = receiver.frames
        assert counters["frames_rejected"] == 0
    assert received[True] == received[False] == [*frames, b"partial"]
