"""
Frame faults: what netd does wrong with the frames it sends, knowing where each
one starts and ends, which no byte-level proxy can do.  The faults that apply
to a frame act in their L{FrameFault.order}; once a connection has used a
L{FrameFaultWriter} its later frames all go through it, so frames keep their
order (docs/faults.md, "Design notes").  A writer writes to a L{FrameOutlet}:
the client's connection (C{to_client}), or, for a plugin that relays the
client's frames onward (the proxy), its connection to the upstream
(C{from_client}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime

from netd.config.options import atLeast, between, option
from netd.faults.base import ActiveFault, Direction, Fault, FaultSet, Report, ServiceShape, milliseconds
from netd.interfaces import FrameOutlet
from netd.stream.framing import FramedProtocol
from netd.stream.proxyheader import describePeer

HELD_LIMIT = 64 * 1024
"""
Bytes a connection's frame faults may hold back before reading from the peer pauses.
"""

LARGEST_OVERSIZE = 64 * 2**20
"""
The largest frame C{oversize_frame} builds: netd's own C{max_frame} limit.
"""

PREFIXED_FRAMINGS = ("netstring", "u16", "u32")
"""
The framings whose frames start with their length.
"""
PREFIX_LARGEST = {"u16": 2**16 - 1, "u32": 2**32 - 1}
"""
The largest length the binary prefixes can state (a netstring's has no bound).
"""

FRAME_DIRECTIONS = ("to_client", "from_client")
"""
The directions of frame faults: the frames netd sends the client, and those
of the client's that a relaying plugin sends on.
"""


def splitEvenly(data: bytes, pieces: int) -> list[bytes]:
    """
    C{data} cut into C{pieces} parts whose sizes differ by one byte at most
    (fewer parts when there are fewer bytes).
    """
    pieces = max(1, min(pieces, len(data)))
    size, extra = divmod(len(data), pieces)
    parts = []
    start = 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(data[start:end])
        start = end
    return parts


class FrameInFlight:
    """
    One frame on its way through the faults that apply to it.

    @ivar payload: the frame's content (until it is encoded).
    @ivar claimed: the length its prefix states instead of the real one, if a fault says so.
    @ivar data: the encoded frame, once encoded.
    @ivar close: close the connection once it is written.
    @ivar written: a fault has written it (or queued it), so no other does.
    """

    def __init__(self, writer: FrameFaultWriter, payload: bytes) -> None:
        self.writer = writer
        self.payload = payload
        self.claimed: int | None = None
        self.data = b""
        self.close = False
        self.written = False


@attrs.frozen
class FrameFault(Fault):
    """
    A fault on the frames netd sends, chosen per frame.

    @cvar order: when it acts among those applying to one frame (lowest first).
    @cvar onWire: whether it acts on the encoded frame (else on its payload,
        before it is encoded).
    """

    directions = FRAME_DIRECTIONS
    order: ClassVar[int]
    onWire: ClassVar[bool] = True

    direction: Direction = option(
        "to_client",
        help="Which frames it acts on: to_client (the frames netd sends the client), or from_client (the "
        "client's frames as a plugin that relays them, the proxy, sends them on to its upstream).",
    )

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        It needs stream connections whose framing has frames.
        """
        if not shape.streams:
            return f"{self.typeName} acts on stream connections, and this service listens only on udp: addresses"
        if shape.framing in (None, "raw"):
            return f"{self.typeName} acts on frames, and this service uses raw framing, which has none"
        return None

    def misfits(self, shape: ServiceShape) -> list[tuple[str, str]]:
        """
        And C{from_client} needs a plugin that sends the client's frames on
        (the proxy): another plugin's frames from the client end with it.
        """
        problems = super().misfits(shape)
        if not problems and self.direction == "from_client" and not shape.relays:
            problems.append(
                (
                    "direction",
                    f"{self.typeName} from_client acts on the client's frames as a plugin that relays them (proxy) "
                    "sends them on, and this service's plugin relays none; its frame faults act to_client only",
                )
            )
        return problems

    def act(self, frame: FrameInFlight, fault: ActiveFault) -> None:
        """
        Act on one frame (C{fault} is this fault in force, to report it with).
        """
        raise NotImplementedError()


@attrs.frozen
class SplitFrame(FrameFault):
    typeName = "split_frame"
    order = 40
    summary = "Write one frame in several pieces (its length prefix included), with delay milliseconds between them."
    pieces: int = option(2, help="Writes the encoded frame is cut into.", checks=(between(2, 65536),))
    delay: float = milliseconds("Milliseconds between two pieces.")

    def act(self, frame: FrameInFlight, fault: ActiveFault) -> None:
        if frame.written:
            return
        frame.written = True
        writer = frame.writer
        writer.flushMerge()
        parts = splitEvenly(frame.data, self.pieces)
        writer.report(fault, pieces=len(parts), bytes=len(frame.data))
        writer.enqueue(parts[0], None)
        for part in parts[1:]:
            writer.enqueue(part, self.delay / 1000)


@attrs.frozen
class MergeFrames(FrameFault):
    typeName = "merge_frames"
    order = 50
    summary = "Hold frames until count of them can go out in one write (or wait milliseconds have passed)."
    count: int = option(2, help="Frames per write.", checks=(between(2, 65536),))
    wait: float = milliseconds("Longest hold, in milliseconds, before fewer frames go out together.", default=50.0)

    def act(self, frame: FrameInFlight, fault: ActiveFault) -> None:
        if frame.written:
            return
        frame.written = True
        frame.writer.report(fault, count=self.count)
        frame.writer.mergeWithNext(frame.data, self.count, self.wait / 1000)


@attrs.frozen
class OversizeFrame(FrameFault):
    typeName = "oversize_frame"
    order = 10
    onWire = False
    summary = "Pad the frame with zero bytes to size bytes, to go over the client's limit."
    size: int = option(
        help="The frame's size on the wire, payload only (at most 64 MiB: each such frame is built in memory).",
        checks=(between(1, LARGEST_OVERSIZE),),
    )

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        A u16 prefix cannot state more than 65535 bytes.
        """
        problem = super().misfit(shape)
        if problem is None and shape.framing == "u16" and self.size > PREFIX_LARGEST["u16"]:
            return f"oversize_frame size {self.size} does not fit u16 framing, whose frames are 65535 bytes at most"
        return problem

    def act(self, frame: FrameInFlight, fault: ActiveFault) -> None:
        if len(frame.payload) < self.size:
            frame.writer.encode(frame.payload)  # a frame the framing refuses is refused before padding could hide why
            frame.writer.report(fault, size=self.size, was=len(frame.payload))
            frame.payload += bytes(self.size - len(frame.payload))


@attrs.frozen
class TruncateFrame(FrameFault):
    typeName = "truncate_frame"
    order = 30
    summary = "Write only the start of the encoded frame, then close the connection (or go on, with close = false)."
    bytes: int | None = option(
        None, help="Bytes of the encoded frame written; half of it when unset.", checks=(atLeast(0),)
    )
    close: bool = option(True, help="Close the connection after the cut frame.")

    def act(self, frame: FrameInFlight, fault: ActiveFault) -> None:
        data = frame.data
        cut = self.bytes if self.bytes is not None else len(data) // 2
        frame.writer.report(fault, bytes=min(cut, len(data)), of=len(data), close=self.close)
        frame.data = data[:cut]
        frame.close = self.close


@attrs.frozen
class CorruptLength(FrameFault):
    typeName = "corrupt_length"
    order = 20
    onWire = False
    summary = "Send the frame behind a length prefix that claims length bytes (netstring, u16 and u32 framings)."
    length: int | None = option(
        None, help="The length claimed; the real length plus one when unset.", checks=(atLeast(0),)
    )

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        Only framings with a length prefix have one to corrupt, and the
        length claimed must fit in it.
        """
        problem = super().misfit(shape)
        if problem is None and shape.framing not in PREFIXED_FRAMINGS:
            return f"corrupt_length needs a framing with a length prefix ({', '.join(PREFIXED_FRAMINGS)}), not {shape.framing}"
        largest = PREFIX_LARGEST.get(shape.framing or "")
        if problem is None and largest is not None and self.length is not None and self.length > largest:
            return f"corrupt_length length {self.length} does not fit a {shape.framing} prefix, which states {largest} at most"
        return problem

    def act(self, frame: FrameInFlight, fault: ActiveFault) -> None:
        size = len(frame.payload)
        claimed = self.length
        if claimed is None:
            largest = frame.writer.outlet.largestClaim
            claimed = size + 1 if largest is None or size < largest else size - 1
        frame.writer.report(fault, length=size, claimed=claimed)
        frame.claimed = claimed


class ConnectionOutlet:
    """
    A framed connection's own frames, to its peer (C{to_client}).
    """

    def __init__(self, protocol: FramedProtocol) -> None:
        self.protocol = protocol
        self.framingName = protocol.framingName
        self.largestClaim = protocol.largestClaim

    def encodeFrame(self, frame: bytes, claimed: int | None = None) -> bytes:
        """
        The connection's framing encodes.
        """
        return self.protocol.encodeFrame(frame, claimed)

    def write(self, data: bytes) -> None:
        """
        To the connection's transport.
        """
        transport: Any = self.protocol.transport
        transport.write(data)

    def loseConnection(self) -> None:
        """
        Close the connection's transport (not the protocol's
        C{loseConnection}, which would wait for this writer).
        """
        transport: Any = self.protocol.transport
        transport.loseConnection()

    def holdBack(self, holding: bool) -> None:
        """
        Pause reading from the peer (L{FramedProtocol.holdBack}).
        """
        self.protocol.holdBack(holding)

    def getPeer(self) -> IAddress:
        """
        The connection's peer.
        """
        return self.protocol.getPeer()


class FrameFaultWriter:
    """
    The writer of one connection's frames once frame faults have touched it
    (what L{netd.stream.framing.FrameWriter} asks for), to its L{FrameOutlet}.

    @ivar held: bytes held back now (queued behind a delay, or waiting to merge).
    """

    def __init__(self, outlet: FrameOutlet, faults: FrameFaultSet, clock: IReactorTime) -> None:
        self.outlet = outlet
        self.faults = faults
        self.clock = clock
        self.held = 0
        self._queue: deque[tuple[bytes | Callable[[], None], float | None]] = deque()
        self._timer: IDelayedCall | None = None
        self._merging: list[bytes] = []
        self._mergeCount = 0
        self._mergeTimer: IDelayedCall | None = None
        self._paused = False
        self._closing = False

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame through the faults that apply to it (of several of one
        type, the last in the list acts).

        @raise netd.stream.framing.FramingError: if the framing cannot carry it (before any fault acts).
        """
        if self._closing:
            return
        applying = {type(fault.spec): fault for fault in self.faults.faults if fault.next()}
        if not applying and not self._queue and not self._merging:
            self.outlet.write(self.outlet.encodeFrame(frame))
            return
        flight = FrameInFlight(self, frame)
        encoded = False
        for fault in sorted(applying.values(), key=_order):
            spec = fault.spec
            assert isinstance(spec, FrameFault)
            if spec.onWire and not encoded:
                flight.data, encoded = self.encode(flight.payload, flight.claimed), True
            spec.act(flight, fault)
        if not encoded:
            flight.data = self.encode(flight.payload, flight.claimed)
        if not flight.written:
            self.flushMerge()
            self.enqueue(flight.data, None)
        if flight.close:
            self.loseConnection()
        else:
            self._pump()

    def encode(self, payload: bytes, claimed: int | None = None) -> bytes:
        """
        A frame's bytes on the wire (behind a prefix that states C{claimed}, when given).
        """
        return self.outlet.encodeFrame(payload, claimed)

    def loseConnection(self) -> None:
        """
        Close the connection once every frame held back has been written.
        """
        if self._closing:
            return
        self._closing = True
        self.afterHeld(self.outlet.loseConnection)

    def afterHeld(self, action: Callable[[], None]) -> None:
        """
        Call C{action} once every frame held back has been written (at once
        when none is): what ends the connection, or a relay's half-close.
        """
        self.flushMerge()
        self._queue.append((action, None))
        self._pump()

    def stop(self) -> None:
        """
        The connection is lost: drop what is held, cancel the timers.
        """
        self._closing = True
        self._queue.clear()
        self._merging.clear()
        self.held = 0
        for timer in (self._timer, self._mergeTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._mergeTimer = None

    def mergeWithNext(self, data: bytes, count: int, wait: float) -> None:
        """
        Hold a frame to go out with the next ones: in one write once C{count}
        are held, or when C{wait} seconds have passed since the first.
        """
        if not self._merging:
            self._mergeCount = count
            self._mergeTimer = self.clock.callLater(wait, self._mergeTimedOut)
        self._merging.append(data)
        self._hold(len(data))
        if len(self._merging) >= self._mergeCount:
            self.flushMerge()

    def _mergeTimedOut(self) -> None:
        """
        The merge waited long enough: what is held goes out together now.
        """
        self._mergeTimer = None
        self.flushMerge()
        self._pump()

    def flushMerge(self) -> None:
        """
        Queue the frames waiting to merge, as one write.
        """
        if not self._merging:
            return
        if self._mergeTimer is not None and self._mergeTimer.active():
            self._mergeTimer.cancel()
        self._mergeTimer = None
        data = b"".join(self._merging)
        self._merging.clear()
        self._queue.append((data, None))

    def enqueue(self, data: bytes, wait: float | None) -> None:
        """
        Queue one write, C{wait} seconds after the one before it (L{None}: at
        once; 0: in a later turn of the reactor, so that it leaves in a send of
        its own).
        """
        self._hold(len(data))
        self._queue.append((data, wait))

    def _pump(self, waited: bool = False) -> None:
        """
        Write what is queued, in order, up to the next entry that must wait
        (C{waited}: the timer of the first entry has fired), and call the
        actions queued behind what was written.
        """
        if waited:
            self._timer = None
        elif self._timer is not None:
            return
        outlet = self.outlet
        queue = self._queue
        while queue:
            data, wait = queue[0]
            if wait is not None and not waited:
                self._timer = self.clock.callLater(wait, self._pump, True)
                return
            waited = False
            queue.popleft()
            if callable(data):
                data()
                continue
            self.held -= len(data)
            outlet.write(data)
        if self._paused and self.held <= HELD_LIMIT:
            self._paused = False
            outlet.holdBack(False)

    def _hold(self, size: int) -> None:
        """
        Count bytes held back; past L{HELD_LIMIT}, pause what feeds the
        writer (L{FrameOutlet.holdBack}).
        """
        self.held += size
        if not self._paused and self.held > HELD_LIMIT:
            self._paused = True
            self.outlet.holdBack(True)

    def report(self, fault: ActiveFault, **details: Any) -> None:
        """
        Report a fault applied to a frame of this connection.
        """
        outlet = self.outlet
        self.faults.report(
            fault,
            peer=describePeer(outlet.getPeer()),
            direction=self.faults.direction,
            framing=outlet.framingName,
            **details,
        )


def _order(fault: ActiveFault) -> int:
    """
    When a frame fault acts among those applying to one frame.
    """
    spec = fault.spec
    assert isinstance(spec, FrameFault)
    return spec.order


class FrameFaultSet(FaultSet):
    """
    A service's frame faults of one direction: C{to_client}, as its framing
    sees them (L{netd.stream.framing.FrameFaults}), or C{from_client}, as a
    plugin that relays the client's frames onward sees them.
    """

    kind = FrameFault

    def __init__(self, report: Report, direction: str = "to_client") -> None:
        super().__init__(report)
        self.direction = direction

    def install(self, active: tuple[ActiveFault, ...]) -> None:
        """
        Take this direction's frame faults among C{active}.
        """
        super().install(tuple(a for a in active if a.spec.direction == self.direction))

    def writerFor(self, protocol: FramedProtocol, clock: IReactorTime) -> FrameFaultWriter:
        """
        The writer of C{protocol}'s frames from now on.
        """
        return self.writerTo(ConnectionOutlet(protocol), clock)

    def writerTo(self, outlet: FrameOutlet, clock: IReactorTime) -> FrameFaultWriter:
        """
        A writer of frames to C{outlet} (a relay's upstream) from now on.
        """
        return FrameFaultWriter(outlet, self, clock)
