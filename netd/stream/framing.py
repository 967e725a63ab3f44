"""
The shared framing layer: bytes on a stream in, whole frames out, and back.

Every stream plugin sees one vocabulary whatever the framing: its
L{IFrameReceiver} gets C{frameReceived(frame)} and answers with
C{connection.sendFrame(frame)}.  The framings are thin adapters of Twisted's
receivers in L{twisted.protocols.basic}; L{FRAMINGS} is the one table the
config validator, the docs and the tests read ("Design notes" in docs/listen.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import (
    Int16StringReceiver,
    Int32StringReceiver,
    LineOnlyReceiver,
    NetstringReceiver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.canary import Canary, require
from netd.interfaces import (
    IAwaitsHandshake,
    IExactFrames,
    IFrameConnection,
    IFrameReceiver,
    IFramingViolationReceiver,
    IHalfCloseableReceiver,
    IPacedConnection,
    IServerTLSTransport,
    IStreamHandler,
)
from netd.metrics import Counters
from netd.stream.declared import provides


class FramingError(ValueError):
    """
    A frame that the connection's framing cannot carry was given to C{sendFrame}.
    """


class FrameWriter(TypingProtocol):
    """
    The writer of one connection's frames once frame faults have touched it.
    """

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame through the faults that apply to it, in order behind those held.
        """

    def loseConnection(self) -> None:
        """
        Close the connection once every frame held back has been written.
        """

    def stop(self) -> None:
        """
        The connection is lost: drop what is held, cancel the timers.
        """


class FrameFaults(TypingProtocol):
    """
    A service's frame faults, as its framing sees them (the service's
    L{netd.faults.frames.FrameFaultSet}).

    @ivar inForce: whether there are any.
    """

    inForce: bool

    def writerFor(self, protocol: FramedProtocol, clock: IReactorTime) -> FrameWriter:
        """
        The writer of C{protocol}'s frames from now on.
        """

    def onChange(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} after each change of the faults.
        """


@implementer(IFrameConnection, IPacedConnection, IHalfCloseableProtocol, IAwaitsHandshake)
class FramedProtocol(Protocol):
    """
    What every framing adapter shares: the receiver it feeds, and the one
    reaction to a framing violation.

    @ivar receiver: the plugin's side of this connection.
    @ivar maxFrame: the largest frame accepted from the peer, in bytes.
    @ivar MAX_LENGTH: the limit Twisted's receivers enforce while decoding:
        C{maxFrame} plus C{wireSlack}.
    @cvar wireSlack: bytes a frame may take on the wire beyond its content
        before the framing strips them (line framing's optional CR).
    @ivar largestClaim: the largest length the framing's prefix can state;
        L{None} where it has no prefix or no bound.
    @ivar faultWriter: the writer of this connection's frames once frame
        faults have seen one of them (see L{FrameFaults}).
    @ivar exactFrames: whether frames keep every byte of the wire but the
        framing's own (the receiver provides L{IExactFrames}).
    @ivar relayProducer: the producer the receiver registered (a proxy's
        upstream connection), paused too while frame faults hold too much.
    """

    framingName: ClassVar[str]
    receiver: IFrameReceiver
    factory: FramedFactory
    maxFrame: int
    MAX_LENGTH: int
    wireSlack: ClassVar[int] = 0
    largestClaim: int | None = None
    faultWriter: FrameWriter | None
    exactFrames = False
    relayProducer: IPushProducer | None = None
    awaitingHandshake = False

    def __init__(self) -> None:
        """
        No frame faults have touched the connection yet.  (On the instance,
        where every frame sent looks: Python 3.11 finds an instance's own
        attributes much faster than its class's.)
        """
        super().__init__()
        self.faultWriter = None

    def connectionMade(self) -> None:
        """
        Introduce the receiver to its connection, or, over TLS, once the
        handshake is done (L{handshakeCompleted}): a receiver that acts when
        its connection opens (the proxy dials its upstream) then does nothing
        for a client whose handshake fails, and meets a connection that can
        carry data.
        """
        transport: Any = self.transport
        # The server side of TLS (L{IServerTLSTransport}) whose handshake is not done.
        if IServerTLSTransport.providedBy(transport) and transport.handshakePending():
            self.awaitingHandshake = True
        else:
            self.receiver.connectionMade(self)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake under this connection is done (its
        L{IServerTLSTransport} says so before it delivers any data):
        introduce the receiver.
        """
        if self.awaitingHandshake:
            self.awaitingHandshake = False
            self.receiver.connectionMade(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Drop the frames the faults still hold, and tell the receiver its
        connection is gone.
        """
        if self.faultWriter is not None:
            self.faultWriter.stop()
        # The receiver points back at this protocol (its connection):
        # dropping it ends that cycle, so that a closed connection is freed at
        # once rather than at the next full collection (10,000 closed
        # connections: about 17 MiB).
        receiver = self.__dict__.pop("receiver", None)
        if receiver is not None and not self.awaitingHandshake:
            receiver.connectionLost(reason)

    def deliverFrame(self, frame: bytes) -> None:
        """
        Hand one decoded frame to the receiver, unless it has closed the
        connection already (the rest of that read is then dropped).
        """
        if not self.transport.disconnecting:  # type: ignore[union-attr]
            self.receiver.frameReceived(frame)

    def framingViolation(self, reason: str) -> None:
        """
        The peer broke the framing: log why, count it, close the connection
        (or let a receiver that provides L{IFramingViolationReceiver} end it).
        """
        self.factory.counters["frames_rejected"] += 1
        self.factory.log.warn(
            "closing connection from {peer}: {reason}",
            peer=self.transport.getPeer(),  # type: ignore[union-attr]
            reason=reason,
            framing=self.framingName,
        )
        receiver = self.__dict__.get("receiver")
        if IFramingViolationReceiver.providedBy(receiver):
            receiver.framingViolated(reason)
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def sendFrame(self, frame: bytes) -> None:
        """
        Encode and send one frame; see L{IFrameConnection.sendFrame}.
        """
        if self.factory.frameFaults or self.faultWriter is not None:
            self.sendFaultedFrame(frame)
            return
        self.transport.write(self.encodeFrame(frame))  # type: ignore[union-attr]

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The bytes of one frame on the wire, as C{sendFrame} writes them.

        @param claimed: the length the prefix states instead of the real one
            (framings with a length prefix only).
        @raise FramingError: if the framing cannot carry the frame, or has no
            prefix to state C{claimed}.
        """
        raise NotImplementedError()

    def wireSize(self, frame: bytes) -> int:
        """
        The bytes C{frame} takes on the wire, as L{encodeFrame} would make them.
        """
        return len(self.encodeFrame(frame))

    def sendFaultedFrame(self, frame: bytes) -> None:
        """
        Send a frame while the service has frame faults: through this
        connection's L{FrameWriter}, made for its first such frame, which
        from then on sends all its frames (even once the service has no
        frame faults left), so that they keep their order behind any it
        holds back.
        """
        writer = self.faultWriter
        if writer is None:
            factory = self.factory
            assert factory.faults is not None and factory.clock is not None
            writer = self.faultWriter = factory.faults.writerFor(self, factory.clock)
        writer.sendFrame(frame)

    def loseConnection(self) -> None:
        """
        Close the connection after what was sent (and what the frame faults
        hold back) is written.
        """
        if self.faultWriter is not None:
            self.faultWriter.loseConnection()
            return
        self.transport.loseConnection()  # type: ignore[union-attr]

    def getPeer(self) -> IAddress:
        """
        The remote address.
        """
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        """
        The local address.
        """
        return self.transport.getHost()  # type: ignore[union-attr]

    def pauseReading(self) -> None:
        """
        Stop reading from the peer; see L{IPacedConnection.pauseReading}.
        """
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeReading(self) -> None:
        """
        Read from the peer again; see L{IPacedConnection.resumeReading}.
        """
        transport: Any = self.transport
        transport.resumeProducing()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """
        Pace C{producer} by the send buffer; see L{IPacedConnection.registerProducer}.
        """
        self.relayProducer = producer
        transport: Any = self.transport
        transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        Stop pacing the producer; see L{IPacedConnection.unregisterProducer}.
        """
        self.relayProducer = None
        transport: Any = self.transport
        transport.unregisterProducer()

    def holdBack(self, holding: bool) -> None:
        """
        The frame faults hold more than they may (C{holding}), or again
        little enough: pause (or resume) reading from the peer, and the
        producer of what is sent, if the receiver registered one (a proxy's
        upstream), whose bytes would otherwise pile up behind the faults.
        """
        transport: Any = self.transport
        producer = self.relayProducer
        if holding:
            transport.pauseProducing()
            if producer is not None:
                producer.pauseProducing()
        else:
            transport.resumeProducing()
            if producer is not None:
                producer.resumeProducing()

    def loseWriteConnection(self) -> None:
        """
        Send EOF after what was sent; see L{IPacedConnection.loseWriteConnection}.
        A layer below without a half-close of its own (TLS, whose Twisted
        protocol would pass the call through to the socket, under its
        records) closes the connection instead, with its close_notify.
        """
        transport: Any = self.transport
        if getattr(type(transport), "loseWriteConnection", None) is None:
            transport.loseConnection()
        else:
            transport.loseWriteConnection()

    def resetConnection(self) -> None:
        """
        End with a TCP reset where the transport below can (the connection
        guard, L{netd.stream.guard.GuardedConnection.resetConnection}), else
        drop the connection without flushing.
        """
        transport: Any = self.transport
        reset = getattr(transport, "resetConnection", None)
        if reset is not None:
            reset()
        else:
            transport.abortConnection()

    def readConnectionLost(self) -> None:
        """
        The peer sent EOF: a receiver that takes half-closed connections
        (L{IHalfCloseableReceiver}) is told; for any other the connection
        closes once what was sent is written.
        """
        receiver = self.__dict__.get("receiver")
        if receiver is not None and provides(IHalfCloseableReceiver, receiver) and not self.awaitingHandshake:
            receiver.readConnectionLost()
        else:
            transport: Any = self.transport
            transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        The sending side is shut; reading goes on.
        """

    def _tooLong(self, size: int) -> str:
        """
        The reason given for an incoming frame over the limit.
        """
        return f"{self.framingName} frame of {size} bytes exceeds max_frame ({self.maxFrame})"


class RawFraming(FramedProtocol):
    """
    No framing: each read, as it came, is a frame; frames are written as they are.
    """

    framingName = "raw"

    def dataReceived(self, data: bytes) -> None:
        """
        Each read, as it came, is a frame.
        """
        self.receiver.frameReceived(data)

    def directReader(self) -> Callable[[bytes], None]:
        """
        Where L{dataReceived} hands each read: a connection guard stepped
        aside gives reads there itself (L{netd.stream.guard.ReadsDirectly}).
        """
        return self.receiver.frameReceived

    def sendFrame(self, frame: bytes) -> None:
        """
        Write the frame as it is (frame faults do not apply to raw framing,
        which has no frames).
        """
        self.transport.write(frame)  # type: ignore[union-attr]

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The bytes, as they are; raw framing has no prefix to state C{claimed}.
        """
        if claimed is not None:
            raise FramingError("raw framing has no length prefix")
        return frame

    def wireSize(self, frame: bytes) -> int:
        """
        The bytes, as they are.
        """
        return len(frame)


class LineFraming(FramedProtocol, LineOnlyReceiver):
    """
    Lines ended by LF; a CR before the LF is not part of the frame.  Frames are
    sent with a bare LF.
    """

    framingName = "line"
    delimiter = b"\n"
    wireSlack = 1

    def lineReceived(self, line: bytes) -> None:
        """
        Strip a trailing CR (unless frames are exact) and deliver the line,
        if it is within the limit (Twisted's check counted the CR).
        """
        if line[-1:] == b"\r":
            if not self.exactFrames:
                line = line[:-1]
        elif len(line) > self.maxFrame:
            self.lineLengthExceeded(line)
            return
        self.receiver.frameReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line (or the unterminated tail of the buffer) is over the limit.
        """
        self.framingViolation(f"line of {len(line)}+ bytes exceeds max_frame ({self.maxFrame})")

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The frame followed by LF; lines have no prefix to state C{claimed}.
        A frame ending in CR would lose it to the peer's line framing,
        unless frames are exact (the CR is then the line's own).
        """
        if claimed is not None:
            raise FramingError("line framing has no length prefix")
        if b"\n" in frame or (frame[-1:] == b"\r" and not self.exactFrames):
            raise FramingError(f"line framing cannot send a frame containing LF or ending in CR ({len(frame)} bytes)")
        return frame + b"\n"

    def wireSize(self, frame: bytes) -> int:
        """
        The frame and its LF.
        """
        return len(frame) + 1


class NetstringFraming(FramedProtocol, NetstringReceiver):
    """
    Netstrings (C{5:hello,}).
    """

    framingName = "netstring"

    def stringReceived(self, string: bytes) -> None:
        """
        Deliver the payload.
        """
        self.deliverFrame(string)

    def dataReceived(self, data: bytes) -> None:
        """
        Decode, and report the peer if Twisted's parser found it broken (a
        malformed netstring, or a length over the limit, which is checked
        before the payload is read).
        """
        NetstringReceiver.dataReceived(self, data)
        if self.brokenPeer == 1:
            self.brokenPeer = 2
            self.framingViolation(f"malformed netstring, or one longer than max_frame ({self.maxFrame})")

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The frame as a netstring, C{claimed} as its length when given.
        """
        return b"%d:%s," % (len(frame) if claimed is None else claimed, frame)


def _checkPartialFrameBuffer() -> None:
    """
    Twisted's length-prefixed receivers keep the part of a frame that has not
    all arrived in C{_unprocessed}, a private name the whole-frame path reads
    to know that nothing is buffered before a read.
    """
    receiver = Int16StringReceiver()
    partial = b"\x00\x05ab"
    receiver.dataReceived(partial)
    require(
        receiver.__dict__.get("_unprocessed") == partial, "Int16StringReceiver keeps a partial frame in _unprocessed"
    )


PARTIAL_FRAME_BUFFER = Canary(
    "length-prefixed framing",
    _checkPartialFrameBuffer,
    "every read goes through Twisted's receiver, without the whole-frame shortcut",
)
"""
The start-up check of the one private name the framings use.
"""


_UNPACK_PREFIX: dict[int, Callable[..., tuple[int]]] = {
    2: struct.Struct(">H").unpack_from,
    4: struct.Struct(">I").unpack_from,
}
"""
The big-endian length prefixes' readers, by the prefix's size.
"""


class _LengthPrefixed(FramedProtocol):
    """
    Shared by the big-endian length-prefixed framings.

    Most reads hold whole frames only (request/response traffic: exactly
    one): L{dataReceived} delivers those without Twisted's buffering, and
    L{sendFrame} encodes without the checks of a C{claimed} length.

    @ivar unpackPrefix: reads the length prefix at an offset of a read,
        without slicing it out (from L{_UNPACK_PREFIX}).
    """

    prefixLength: int
    largestClaim: int
    unpackPrefix: Callable[..., tuple[int]]
    wholeFrames: bool
    _unprocessed: bytes
    paused: bool

    def __init__(self) -> None:
        """
        Put what the whole-frame paths read on the instance, with the
        values its classes give (see L{FramedProtocol.__init__} on why).
        """
        super().__init__()
        self._unprocessed = b""
        self.wholeFrames = PARTIAL_FRAME_BUFFER.alive()
        self.paused = False
        self.prefixLength = self.prefixLength
        self.largestClaim = self.largestClaim
        self.unpackPrefix = _UNPACK_PREFIX[self.prefixLength]

    def dataReceived(self, data: bytes) -> None:
        """
        Deliver a read that is one whole frame within the limit (with
        nothing buffered before it) at once; any other read goes to
        L{_framesOf}.
        """
        if self._unprocessed or self.paused or not self.wholeFrames:
            super().dataReceived(data)
            return
        prefixLength = self.prefixLength
        size = len(data)
        if size >= prefixLength:
            (length,) = self.unpackPrefix(data)
            if length == size - prefixLength and length <= self.MAX_LENGTH:
                if not self.transport.disconnecting:  # type: ignore[union-attr]
                    self.receiver.frameReceived(data[prefixLength:])
                return
        self._framesOf(data)

    def _framesOf(self, data: bytes) -> None:
        """
        Deliver the whole frames within the limit at the start of a read,
        each a slice of it; give the rest, if any, to Twisted's receiver,
        which buffers a partial frame, checks the limit before the payload
        and drops what comes once the receiver has closed the connection.
        """
        prefixLength, unpack, limit = self.prefixLength, self.unpackPrefix, self.MAX_LENGTH
        transport: Any = self.transport
        size = len(data)
        offset = 0
        while offset + prefixLength <= size:
            start = offset + prefixLength
            (length,) = unpack(data, offset)
            end = start + length
            if end > size or length > limit or transport.disconnecting:
                break
            self.receiver.frameReceived(data[start:end])
            offset = end
        if offset < size:
            super().dataReceived(data[offset:] if offset else data)

    def stringReceived(self, string: bytes) -> None:
        """
        Deliver the payload.
        """
        self.deliverFrame(string)

    def sendFrame(self, frame: bytes) -> None:
        """
        Encode and send one frame; see L{IFrameConnection.sendFrame}.
        """
        if self.factory.frameFaults or self.faultWriter is not None:
            self.sendFaultedFrame(frame)
            return
        size = len(frame)
        if size > self.largestClaim:
            raise self._tooLargeToSend(size)
        self.transport.write(size.to_bytes(self.prefixLength, "big") + frame)  # type: ignore[union-attr]

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A prefix announced more than the limit; nothing of it was buffered.
        """
        self.framingViolation(self._tooLong(length))

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The frame behind its length prefix, which states C{claimed} when given.
        """
        largest = self.largestClaim
        if len(frame) > largest:
            raise self._tooLargeToSend(len(frame))
        if claimed is None:
            return struct.pack(self.structFormat, len(frame)) + frame  # type: ignore[attr-defined]
        if not 0 <= claimed <= largest:
            raise FramingError(f"a {self.framingName} prefix cannot state a length of {claimed}")
        return struct.pack(self.structFormat, claimed) + frame  # type: ignore[attr-defined]

    def wireSize(self, frame: bytes) -> int:
        """
        The frame behind its prefix.
        """
        return len(frame) + self.prefixLength

    def _tooLargeToSend(self, size: int) -> FramingError:
        """
        The error of a frame larger than the prefix can state.
        """
        return FramingError(
            f"{self.framingName} framing cannot send a frame of {size} bytes; the largest is {self.largestClaim}"
        )


class U16Framing(_LengthPrefixed, Int16StringReceiver):
    """
    A two-byte big-endian length, then the frame: DNS over TCP's framing.
    """

    framingName = "u16"
    largestClaim = 2**16 - 1


class U32Framing(_LengthPrefixed, Int32StringReceiver):
    """
    A four-byte big-endian length, then the frame.
    """

    framingName = "u32"
    largestClaim = 2**32 - 1


@attrs.frozen
class Framing:
    """
    One entry of L{FRAMINGS}.

    @ivar largest: the largest frame the wire format can carry, or L{None} where
        frames have no size of their own (C{raw}).
    """

    name: str
    protocol: type[FramedProtocol]
    largest: int | None
    description: str


FRAMINGS: dict[str, Framing] = {
    f.name: f
    for f in (
        Framing("raw", RawFraming, None, "bytes as they arrive, written back as they are"),
        Framing("line", LineFraming, 2**30, "LF-terminated lines; a CR before the LF is stripped"),
        Framing("netstring", NetstringFraming, 2**30, "netstrings: LENGTH:DATA,"),
        Framing("u16", U16Framing, 2**16 - 1, "2-byte big-endian length prefix (DNS over TCP)"),
        Framing("u32", U32Framing, 2**32 - 1, "4-byte big-endian length prefix"),
    )
}


class FramedFactory(Factory):
    """
    Builds the framed protocol of each connection and the plugin receiver behind it.

    @ivar counters: the service's counters (C{frames_rejected} is counted here).
    @ivar log: the service's logger, for framing violations.
    @ivar frameFaults: whether the service has frame faults in force (when
        not, C{sendFrame} pays one truth test).
    """

    noisy = False
    frameFaults = False

    def __init__(
        self,
        framing: Framing,
        maxFrame: int,
        handler: IStreamHandler,
        counters: Counters,
        log: Logger,
        faults: FrameFaults | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param faults: the service's frame faults, which act on the frames its connections send.
        @param clock: times the frame faults that hold frames back; needed with C{faults}.
        """
        self.framing = framing
        self.maxFrame = maxFrame
        self.handler = handler
        self.counters = counters
        self.log = log
        self.faults = faults
        self.clock = clock
        if faults is not None:
            if clock is None:
                raise TypeError("a FramedFactory with faults needs a clock")
            self.frameFaults = faults.inForce
            faults.onChange(self._faultsChanged)

    def _faultsChanged(self) -> None:
        """
        The control API changed the service's faults: new frames take the new frame faults.
        """
        assert self.faults is not None
        self.frameFaults = self.faults.inForce

    def buildProtocol(self, addr: IAddress | None) -> FramedProtocol:  # type: ignore[override]
        """
        A framed protocol with a new receiver from the plugin's handler.
        """
        protocol = self.framing.protocol()
        protocol.factory = self
        protocol.maxFrame = self.maxFrame
        protocol.MAX_LENGTH = self.maxFrame + protocol.wireSlack
        receiver = protocol.receiver = self.handler.newConnection()
        if provides(IExactFrames, receiver):
            protocol.exactFrames = True
        return protocol
