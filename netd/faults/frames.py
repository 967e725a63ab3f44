"""
Frame faults: what netd does wrong with the frames it sends, knowing where each
one starts and ends, which no byte-level proxy can do.

Each fault of the service's C{frame} list is asked about each frame a
connection sends; those that apply act in this order, whatever their order in
the list: C{oversize_frame} pads the payload, C{corrupt_length} encodes it
behind a prefix that lies, C{truncate_frame} cuts the encoded frame (and
closes the connection after it), then C{split_frame} writes it in pieces or
C{merge_frames} holds it to go out with the next ones (C{split_frame} wins for
a frame both apply to).

Frames keep their order: once a connection has sent a frame through its
faults, all its later frames go through the same writer, so that a frame sent
while an earlier one is still held (in pieces, or waiting to merge) goes out
after it, even once the faults are removed.  Bytes held back are bounded by
pausing the reading from the peer while more than L{HELD_LIMIT} are held; every
timer is cancelled when the connection is lost.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from netd.faults.active import ActiveFault, ServiceFaults
from netd.faults.spec import CorruptLength, MergeFrames, OversizeFrame, SplitFrame, TruncateFrame
from netd.stream.proxyheader import describePeer

if TYPE_CHECKING:
    from netd.stream.framing import FramedProtocol

HELD_LIMIT = 64 * 1024
"""
Bytes a connection's frame faults may hold back before reading from the peer pauses.
"""

_CLOSE = None
"""
The entry of the write queue that closes the connection.
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


class FrameFaults:
    """
    The writer of one connection's frames once frame faults have touched it.

    @ivar held: bytes held back now (queued behind a delay, or waiting to merge).
    """

    def __init__(self, protocol: FramedProtocol, faults: ServiceFaults, clock: IReactorTime) -> None:
        self.protocol = protocol
        self.faults = faults
        self.clock = clock
        self.held = 0
        self._queue: deque[tuple[bytes | None, float | None]] = deque()
        self._timer: IDelayedCall | None = None
        self._merging: list[bytes] = []
        self._mergeCount = 0
        self._mergeTimer: IDelayedCall | None = None
        self._paused = False
        self._closing = False

    def sendFrame(self, frame: bytes) -> None:
        """
        Send one frame through the faults that apply to it.

        @raise netd.stream.framing.FramingError: if the framing cannot carry it (before any fault acts).
        """
        if self._closing:
            return
        applying = {type(fault.spec): fault for fault in self.faults.frame if fault.next()}
        if not applying and not self._queue and not self._merging:
            self.protocol.transport.write(self.protocol.encodeFrame(frame))  # type: ignore[union-attr]
            return
        data = self._encode(frame, applying)
        close = False
        truncate = applying.get(TruncateFrame)
        if truncate is not None:
            cutting = cast(TruncateFrame, truncate.spec)
            cut = cutting.bytes if cutting.bytes is not None else len(data) // 2
            self._applied(truncate, bytes=min(cut, len(data)), of=len(data), close=cutting.close)
            data = data[:cut]
            close = cutting.close
        split = applying.get(SplitFrame)
        merge = applying.get(MergeFrames)
        if split is not None:
            splitting = cast(SplitFrame, split.spec)
            self._flushMerge()
            parts = splitEvenly(data, splitting.pieces)
            self._applied(split, pieces=len(parts), bytes=len(data))
            self._enqueue(parts[0], None)
            for part in parts[1:]:
                self._enqueue(part, splitting.delay / 1000)
        elif merge is not None:
            self._merge(merge, data)
        else:
            self._flushMerge()
            self._enqueue(data, None)
        if close:
            self.loseConnection()
        else:
            self._pump()

    def loseConnection(self) -> None:
        """
        Close the connection once every frame held back has been written.
        """
        if self._closing:
            return
        self._closing = True
        self._flushMerge()
        self._queue.append((_CLOSE, None))
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

    def _encode(self, frame: bytes, applying: dict[type, ActiveFault]) -> bytes:
        """
        The frame's bytes on the wire, padded by C{oversize_frame}, behind the
        prefix C{corrupt_length} makes up.
        """
        encode = self.protocol.encodeFrame
        oversize = applying.get(OversizeFrame)
        if oversize is not None:
            size = cast(OversizeFrame, oversize.spec).size
            if len(frame) < size:
                encode(frame)  # a frame the framing refuses is refused before padding could hide why
                self._applied(oversize, size=size, was=len(frame))
                frame += bytes(size - len(frame))
        corrupt = applying.get(CorruptLength)
        if corrupt is None:
            return encode(frame)
        claimed = cast(CorruptLength, corrupt.spec).length
        if claimed is None:
            largest = self.protocol.largestClaim
            claimed = len(frame) + 1 if largest is None or len(frame) < largest else len(frame) - 1
        self._applied(corrupt, length=len(frame), claimed=claimed)
        return encode(frame, claimed)

    def _merge(self, fault: ActiveFault, data: bytes) -> None:
        """
        Hold a frame to go out with the next ones: in one write once C{count}
        are held, or when C{wait} milliseconds have passed since the first.
        """
        spec = cast(MergeFrames, fault.spec)
        self._applied(fault, count=spec.count)
        if not self._merging:
            self._mergeCount = spec.count
            self._mergeTimer = self.clock.callLater(spec.wait / 1000, self._mergeTimedOut)
        self._merging.append(data)
        self._hold(len(data))
        if len(self._merging) >= self._mergeCount:
            self._flushMerge()

    def _mergeTimedOut(self) -> None:
        """
        The merge waited long enough: what is held goes out together now.
        """
        self._mergeTimer = None
        self._flushMerge()
        self._pump()

    def _flushMerge(self) -> None:
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

    def _enqueue(self, data: bytes, wait: float | None) -> None:
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
        (C{waited}: the timer of the first entry has fired).
        """
        if waited:
            self._timer = None
        elif self._timer is not None:
            return
        queue = self._queue
        while queue:
            data, wait = queue[0]
            if wait is not None and not waited:
                self._timer = self.clock.callLater(wait, self._pump, True)
                return
            waited = False
            queue.popleft()
            if data is _CLOSE:
                self.protocol.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.held -= len(data)
            self.protocol.transport.write(data)  # type: ignore[union-attr]
        if self._paused and self.held <= HELD_LIMIT:
            self._paused = False
            self.protocol.transport.resumeProducing()  # type: ignore[union-attr]

    def _hold(self, size: int) -> None:
        """
        Count bytes held back; past L{HELD_LIMIT}, pause reading from the peer.
        """
        self.held += size
        if not self._paused and self.held > HELD_LIMIT:
            self._paused = True
            self.protocol.transport.pauseProducing()  # type: ignore[union-attr]

    def _applied(self, fault: ActiveFault, **details: Any) -> None:
        """
        Report a fault applied to a frame of this connection.
        """
        self.faults.applied(fault, peer=describePeer(self.protocol.getPeer()), framing=self.protocol.framingName, **details)
