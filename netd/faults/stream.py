"""
Stream faults: the bytes of a stream connection, between its guard
(L{netd.stream.guard.GuardedConnection}) and its socket, so that on a TLS
service they act on the records the client really receives.  Chosen once per
connection; a connection with none keeps the guard's plain path, at no cost
per byte.  docs/faults.md, "Design notes", tells how the pipes work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from random import Random
from typing import Any, ClassVar, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall

from netd.config.options import atLeast, between, option
from netd.faults.base import ActiveFault, Direction, Fault, FaultSet, ServiceShape, milliseconds
from netd.stream.guard import GuardedConnection
from netd.stream.proxyheader import describePeer

HELD_LIMIT = 64 * 1024
"""
Bytes a connection's faults may hold (both ways together) before the socket
stops being read.
"""

RESUME_BELOW = HELD_LIMIT // 2
"""
Held bytes below which a socket paused by L{HELD_LIMIT} is read again.
"""

BANDWIDTH_PIECES = 20
"""
Pieces per second a C{bandwidth} fault cuts the bytes into (each worth
1/20 s of its rate, at least one byte), so that its rate holds over short
spans too.
"""


@attrs.frozen
class StreamFault(Fault):
    """
    A fault on a stream connection, chosen per connection.
    """

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        It needs stream connections.
        """
        if not shape.streams:
            return f"{self.typeName} acts on stream connections, and this service listens only on udp: addresses"
        return None

    def join(self, connection: ConnectionPipes, effect: Effect) -> None:
        """
        Take part in a new connection's faults: by default, act on its bytes
        (L{shapePipe}, for each direction the fault acts on).
        """
        connection.effects.append(effect)

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        """
        Take a place in one direction's pipe (a type that acts on bytes says which).
        """


class Effect:
    """
    One fault acting on one connection: whether its use was reported yet.
    """

    def __init__(self, fault: ActiveFault) -> None:
        self.fault = fault
        self.reported = False

    @property
    def random(self) -> Random:
        """
        The generator of the fault's random choices.
        """
        return self.fault.schedule.random


@attrs.frozen
class Delaying(StreamFault):
    """
    A fault that holds each chunk of bytes for a while.
    """

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        pipe.delays.append((self, effect))

    def holdFor(self, random: Random) -> float:
        """
        Seconds the next chunk is held.
        """
        raise NotImplementedError()


@attrs.frozen
class Pacing(StreamFault):
    """
    A fault that cuts the bytes into pieces and spaces them; of several of
    one type on a direction, the one with the lowest L{strictness} acts.

    @cvar separateSends: each piece leaves in a send of its own, even without a gap.
    """

    separateSends: ClassVar[bool] = False

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        pipe.addPacer(self, effect)

    def strictness(self) -> float:
        """
        How hard it paces: the lower, the harder.
        """
        raise NotImplementedError()

    def pieceSize(self) -> int:
        """
        The largest piece, in bytes.
        """
        raise NotImplementedError()

    def nextPieceSize(self, random: Random) -> int:
        """
        The size of the next piece: L{pieceSize}, unless the type varies it.
        """
        return self.pieceSize()

    def gapAfter(self, size: int) -> float:
        """
        Seconds after a piece of C{size} bytes before the next one.
        """
        raise NotImplementedError()


@attrs.frozen
class ByteThreshold(StreamFault):
    """
    A fault that acts once its direction has passed C{bytes} bytes.
    """

    midStream = True
    bytes: int = option(help="Bytes passed before it acts.", checks=(atLeast(0),))

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        pipe.addThreshold(effect, self.bytes)

    def reached(self, connection: ConnectionPipes, pipe: Pipe, effect: Effect) -> None:
        """
        C{pipe} has passed the bytes: act.
        """
        raise NotImplementedError()


@attrs.frozen
class AtOpen(StreamFault):
    """
    A fault that acts once, as the connection opens (the first such one that applies).
    """

    def join(self, connection: ConnectionPipes, effect: Effect) -> None:
        if connection.atOpen is None:
            connection.atOpen = (self, effect)

    def opened(self, connection: ConnectionPipes, effect: Effect) -> None:
        """
        The connection is open (its inner protocol too): act.
        """
        raise NotImplementedError()


@attrs.frozen
class Latency(Delaying):
    typeName = "latency"
    midStream = True
    summary = "Hold each chunk of bytes for ms (plus or minus up to jitter) before passing it on, keeping their order."
    ms: float = milliseconds("Milliseconds added to each chunk of bytes.", default=attrs.NOTHING)
    jitter: float = milliseconds("Up to this many milliseconds more or less, chosen per chunk.")

    def holdFor(self, random: Random) -> float:
        jitter = random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, self.ms + jitter) / 1000


@attrs.frozen
class Bandwidth(Pacing):
    typeName = "bandwidth"
    midStream = True
    summary = "Pass bytes on at no more than rate bytes per second."
    rate: int = option(help="Bytes per second.", checks=(between(1, 2**40),))

    def strictness(self) -> float:
        return self.rate

    def pieceSize(self) -> int:
        return max(1, self.rate // BANDWIDTH_PIECES)

    def gapAfter(self, size: int) -> float:
        return size / self.rate


@attrs.frozen
class Slice(Pacing):
    typeName = "slice"
    midStream = True
    separateSends = True
    summary = (
        "Write at most size bytes at a time (plus or minus up to variation), with delay milliseconds between the "
        "pieces: catches clients that assume one recv is one message."
    )
    direction: Direction = option("to_client", help="Which bytes it acts on: to_client, from_client, or both.")
    size: int = option(help="Size of a piece, in bytes.", checks=(between(1, 2**31),))
    delay: float = milliseconds("Milliseconds between two pieces.")
    variation: int | None = option(
        None,
        help="Up to this many bytes more or less per piece, chosen per piece (at least 1 byte); unset: none.",
        checks=(between(0, 2**31),),
    )

    def strictness(self) -> float:
        return self.size

    def pieceSize(self) -> int:
        return self.size + (self.variation or 0)

    def nextPieceSize(self, random: Random) -> int:
        if not self.variation:
            return self.size
        return max(1, self.size + random.randint(-self.variation, self.variation))

    def gapAfter(self, size: int) -> float:
        return self.delay / 1000


@attrs.frozen
class CloseAfter(ByteThreshold):
    typeName = "close_after"
    summary = "Pass this many bytes, then close the connection cleanly (FIN)."
    bytes: int = option(help="Bytes passed before the close.", checks=(atLeast(0),))

    def reached(self, connection: ConnectionPipes, pipe: Pipe, effect: Effect) -> None:
        connection.end(effect, reset=False)


@attrs.frozen
class ResetAfter(ByteThreshold):
    typeName = "reset_after"
    summary = "Pass this many bytes, then reset the connection (TCP RST: the client sees ECONNRESET)."
    bytes: int = option(help="Bytes passed before the reset.", checks=(atLeast(0),))

    def reached(self, connection: ConnectionPipes, pipe: Pipe, effect: Effect) -> None:
        connection.end(effect, reset=True)


@attrs.frozen
class StallAfter(ByteThreshold):
    typeName = "stall_after"
    summary = "Pass this many bytes, then nothing more, with the connection left open."
    bytes: int = option(help="Bytes passed before the silence.", checks=(atLeast(0),))

    def reached(self, connection: ConnectionPipes, pipe: Pipe, effect: Effect) -> None:
        pipe.stall(effect)
        connection.pace()


@attrs.frozen
class Blackhole(StreamFault):
    typeName = "blackhole"
    midStream = True
    summary = (
        "Accept and read, never answer: bytes in the direction are swallowed; with close_after_ms, the connection "
        "closes once that long passes without any."
    )
    direction: Direction = option("to_client", help="Which bytes are swallowed: to_client, from_client, or both.")
    close_after_ms: float | None = milliseconds(
        "Close the connection once this many milliseconds pass without bytes to swallow, counted from when the "
        "fault begins to act and again from each chunk swallowed; unset or 0: never.",
        default=None,
    )

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        if pipe.swallower is None:
            pipe.swallower = effect


@attrs.frozen
class ResetOnData(StreamFault):
    typeName = "reset_on_data"
    midStream = True
    summary = (
        "When bytes first come in the direction, swallow them and all that follow, and reset the connection "
        "ms milliseconds later (TCP RST: the client sees ECONNRESET)."
    )
    ms: float = milliseconds("Milliseconds from the first bytes to the reset; 0: at once.")

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        if pipe.resetter is None:
            pipe.resetter = effect


@attrs.frozen
class SlowClose(StreamFault):
    typeName = "slow_close"
    midStream = True
    summary = (
        "Hold the end of the direction for ms milliseconds: to_client, the close by netd's side (the plugin, or "
        "the upstream behind a proxy) reaches the client late; from_client, the client's EOF reaches the plugin late."
    )
    ms: float = milliseconds(
        "Milliseconds the end waits; bytes held before it are passed on meanwhile, and it waits for them too.",
        default=attrs.NOTHING,
    )

    def shapePipe(self, pipe: Pipe, effect: Effect) -> None:
        if pipe.endDelay is None:
            pipe.endDelay = effect


@attrs.frozen
class Refuse(AtOpen):
    typeName = "refuse"
    directions = ("both",)
    summary = "Accept the connection, then close it at once (or reset it, with reset = true)."
    reset: bool = option(False, help="Reset (RST) instead of closing cleanly (FIN).")

    def opened(self, connection: ConnectionPipes, effect: Effect) -> None:
        connection.report(effect, reset=self.reset)
        connection.end(effect, reset=self.reset)


class HandshakeFilter(Protocol):
    """
    A TLS handshake fault on one connection (L{netd.faults.tls}): it sees the
    raw bytes both ways, nearest the TLS engine.
    """

    def inbound(self, data: bytes) -> bytes:
        """
        What of C{data}, from the client, goes on to the TLS engine.
        """

    def outbound(self, data: bytes) -> bytes:
        """
        What of C{data}, written by the TLS engine, goes on to the client.
        """


class _Threshold:
    """
    A L{ByteThreshold} on one direction: it acts when that direction's count
    of passed bytes reaches C{at}.
    """

    def __init__(self, spec: ByteThreshold, effect: Effect, at: int) -> None:
        self.spec = spec
        self.effect = effect
        self.at = at


class Pipe:
    """
    One direction of a connection's bytes through its stream faults.

    @ivar held: bytes queued, not yet passed on.
    @ivar passed: bytes passed on so far.
    @ivar stalledBy: the fault that silenced this direction, if one did.
    @ivar ended: the connection is ending: nothing passes any more.
    @ivar delays: the L{Delaying} faults, whose holds add up.
    @ivar pacers: the L{Pacing} fault that acts, per type.
    @ivar swallower: the fault that swallows this direction's bytes, if one does.
    @ivar resetter: the L{ResetOnData} fault that resets the connection on this direction's first bytes, if one does.
    @ivar endDelay: the L{SlowClose} fault that holds this direction's end, if one does.
    @ivar endHeld: the timer of an end being held, while it is.
    @ivar endReleased: the end was held and has been let go.
    @ivar thresholds: the L{ByteThreshold}s, each counting from when it joined.
    """

    def __init__(self, owner: ConnectionPipes, direction: str, deliver: Callable[[bytes], None]) -> None:
        self.owner = owner
        self.direction = direction
        self.deliver = deliver
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.passed = 0
        self.stalledBy: Effect | None = None
        self.ended = False
        self._nextAt = 0.0
        self._lastReady = 0.0
        self._timer: IDelayedCall | None = None
        self._pumping = False
        self.delays: list[tuple[Delaying, Effect]] = []
        self.pacers: dict[type[Pacing], tuple[Pacing, Effect]] = {}
        self.separateSends = False
        self.swallower: Effect | None = None
        self.resetter: Effect | None = None
        self.endDelay: Effect | None = None
        self.endHeld: IDelayedCall | None = None
        self.endReleased = False
        self.thresholds: list[_Threshold] = []
        self._kept: dict[int, _Threshold] = {}
        self._silence: tuple[Effect, IDelayedCall] | None = None
        self._reset: tuple[Effect, IDelayedCall] | None = None

    @property
    def acting(self) -> bool:
        """
        Whether any fault acts on this direction.
        """
        return bool(
            self.delays
            or self.pacers
            or self.swallower
            or self.resetter
            or self.endDelay
            or self.endHeld
            or self.thresholds
            or self.stalledBy
        )

    def configure(self, effects: Sequence[Effect]) -> None:
        """
        Take the faults of this direction among C{effects}, each where its
        type says (L{StreamFault.shapePipe}); a threshold kept from before
        keeps its count.
        """
        self._kept = {id(t.effect): t for t in self.thresholds}
        self.delays, self.pacers, self.swallower, self.thresholds = [], {}, None, []
        self.resetter = self.endDelay = None
        mine = [e for e in effects if e.fault.spec.direction in (self.direction, "both")]
        for effect in mine:
            spec = effect.fault.spec
            assert isinstance(spec, StreamFault)
            spec.shapePipe(self, effect)
        self._kept = {}
        if self._reset is not None and self._reset[0] is not self.resetter:
            self._reset[1].cancel()
            self._reset = None
        self._watchSilence()
        self.separateSends = any(pacer.separateSends for pacer, _ in self.pacers.values())
        if self.stalledBy is not None and all(e is not self.stalledBy for e in mine):
            self.stalledBy = None

    def addPacer(self, pacer: Pacing, effect: Effect) -> None:
        """
        A pacing fault joins: of several of one type, the strictest acts.
        """
        current = self.pacers.get(type(pacer))
        if current is None or pacer.strictness() < current[0].strictness():
            self.pacers[type(pacer)] = (pacer, effect)

    def addThreshold(self, effect: Effect, bytes: int) -> None:
        """
        A threshold joins, counting C{bytes} from now (or as it counted before).
        """
        spec = effect.fault.spec
        assert isinstance(spec, ByteThreshold)
        self.thresholds.append(self._kept.get(id(effect)) or _Threshold(spec, effect, self.passed + bytes))

    def push(self, data: bytes) -> None:
        """
        Take bytes going this way: swallow, drop or queue them, then pass on
        what may go now.
        """
        if self.ended or self.stalledBy is not None or not data:
            return
        if self.resetter is not None:
            self._resetSoon(self.resetter)
            return
        if self.swallower is not None:
            self.owner.report(self.swallower, direction=self.direction)
            if self._silence is not None:
                self._silence[1].cancel()
                self._silence = None
                self._watchSilence()
            return
        now = self.owner.clock.seconds()
        ready = now
        for delaying, effect in self.delays:
            ready += delaying.holdFor(effect.random)
            self.owner.report(effect, direction=self.direction)
        for _, effect in self.pacers.values():
            self.owner.report(effect, direction=self.direction)
        ready = self._lastReady = max(ready, self._lastReady)
        self.queue.append((ready, data))
        self.held += len(data)
        if self._timer is None and not self._pumping:
            self.pump()

    def pump(self) -> None:
        """
        Pass on every piece whose time has come, in order; then wait for the
        next one, or tell the connection this way is drained.
        """
        self._timer = None
        self._pumping = True
        try:
            self._pass()
        finally:
            self._pumping = False
        if not self.ended:
            self.owner.pace()
            if not self.queue:
                self.owner.drained(self)

    def _pass(self) -> None:
        """
        The loop of L{pump}.
        """
        clock = self.owner.clock
        if self._crossed():
            return
        while self.queue and not self.ended and self.stalledBy is None:
            now = clock.seconds()
            ready, data = self.queue[0]
            at = max(ready, self._nextAt)
            if at > now:
                self._timer = clock.callLater(at - now, self.pump)
                return
            size = len(data)
            for pacer, effect in self.pacers.values():
                size = min(size, pacer.nextPieceSize(effect.random))
            for threshold in self.thresholds:
                size = min(size, threshold.at - self.passed)
            if size < len(data):
                self.queue[0] = (ready, data[size:])
                data = data[:size]
            else:
                self.queue.popleft()
            self.held -= size
            self.passed += size
            self.deliver(data)
            if self._crossed():
                return
            gap = 0.0
            for pacer, _ in self.pacers.values():
                gap = max(gap, pacer.gapAfter(size))
            self._nextAt = now + gap
            if self.queue and self.separateSends:
                # Even without a delay, the next piece waits for the next
                # reactor turn, so that it leaves in a send of its own.
                self._timer = clock.callLater(gap, self.pump)
                return

    def _crossed(self) -> bool:
        """
        If a threshold is reached, act on it; whether this direction stops.
        """
        for threshold in self.thresholds:
            if self.passed >= threshold.at:
                self.owner.thresholdReached(self, threshold)
                return True
        return False

    def _watchSilence(self) -> None:
        """
        Keep the timer of a swallowing fault with C{close_after_ms} (a
        L{Blackhole}) in step with this direction's faults: started when it
        begins to act, dropped when it is gone.
        """
        effect = self.swallower
        if self._silence is not None:
            if self._silence[0] is effect:
                return
            self._silence[1].cancel()
            self._silence = None
        if effect is None or self.ended:
            return
        spec = effect.fault.spec
        assert isinstance(spec, Blackhole)
        if spec.close_after_ms:
            timer = self.owner.clock.callLater(spec.close_after_ms / 1000, self._silent, effect)
            self._silence = (effect, timer)

    def _silent(self, effect: Effect) -> None:
        """
        A swallowing fault's C{close_after_ms} passed without bytes: close the connection.
        """
        self._silence = None
        self.owner.report(effect, direction=self.direction)
        self.owner.end(effect, reset=False)

    def _resetSoon(self, effect: Effect) -> None:
        """
        The first bytes came while a L{ResetOnData} acts: they and all after
        are swallowed, and the connection is reset once its C{ms} have passed.
        """
        if self._reset is not None:
            return
        spec = effect.fault.spec
        assert isinstance(spec, ResetOnData)
        self.owner.report(effect, direction=self.direction, ms=spec.ms)
        if not spec.ms:
            self.owner.end(effect, reset=True)
            return
        self._reset = (effect, self.owner.clock.callLater(spec.ms / 1000, self._resetNow, effect))

    def _resetNow(self, effect: Effect) -> None:
        """
        A L{ResetOnData}'s C{ms} have passed: reset the connection.
        """
        self._reset = None
        self.owner.end(effect, reset=True)

    def holdsEnd(self) -> bool:
        """
        Whether this direction's end must wait: bytes are held, or a
        L{SlowClose} has yet to hold it.
        """
        return bool(self.queue) or (self.endDelay is not None and not self.endReleased)

    def holdEnd(self) -> None:
        """
        This direction ends once its bytes are passed on: a L{SlowClose}
        holds the end for its C{ms} first.
        """
        effect = self.endDelay
        if effect is None or self.endReleased or self.endHeld is not None:
            return
        spec = effect.fault.spec
        assert isinstance(spec, SlowClose)
        self.owner.report(effect, direction=self.direction, ms=spec.ms)
        self.endHeld = self.owner.clock.callLater(spec.ms / 1000, self._releaseEnd)

    def _releaseEnd(self) -> None:
        """
        The held end may go on, once the bytes before it are passed on.
        """
        self.endHeld = None
        self.endReleased = True
        if not self.queue and not self.ended:
            self.owner.drained(self)

    def stopTimers(self) -> None:
        """
        The connection is gone: no fault of this direction acts on it later.
        """
        for timer in (self._silence, self._reset):
            if timer is not None:
                timer[1].cancel()
        self._silence = self._reset = None
        if self.endHeld is not None:
            self.endHeld.cancel()
            self.endHeld = None

    def stall(self, effect: Effect) -> None:
        """
        Pass nothing more this way, and forget what is held.
        """
        self.stalledBy = effect
        self.cancel()

    def cancel(self) -> None:
        """
        Forget what is held and stop the timer.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.queue.clear()
        self.held = 0

    def requeue(self) -> None:
        """
        Pass what is held through the faults as they now are, from now.
        """
        held = [data for _, data in self.queue]
        self.cancel()
        self._nextAt = self._lastReady = 0.0
        for data in held:
            self.push(data)
        if not held and not self.ended:
            self.pump()


class ConnectionPipes:
    """
    The stream faults acting on one connection (see the module docstring);
    what L{netd.stream.guard.ConnectionFaults} asks for.

    @ivar inbound: the bytes from the client.
    @ivar outbound: the bytes to the client.
    @ivar effects: the faults that act on the bytes (the pipes').
    @ivar atOpen: the fault that acts as the connection opens, if one applies.
    @ivar tls: the TLS handshake fault, if one applies.
    """

    def __init__(self, connection: GuardedConnection, faults: StreamFaultSet, chosen: Sequence[ActiveFault]) -> None:
        self.connection = connection
        self.faults = faults
        self.clock = connection.factory.clock
        self.peer = describePeer(connection.getPeer())
        self.inbound = Pipe(self, "from_client", self._toInner)
        self.outbound = Pipe(self, "to_client", connection.transmit)
        self.effects: list[Effect] = []
        self.atOpen: tuple[AtOpen, Effect] | None = None
        self.tls: HandshakeFilter | None = None
        self._closing = False
        self._eofWaiting = False
        self._paused = False
        self._producerPaused = False
        self._ended = False
        for fault in chosen:
            assert isinstance(fault.spec, StreamFault)
            fault.spec.join(self, Effect(fault))
        self.inbound.configure(self.effects)
        self.outbound.configure(self.effects)

    def start(self) -> None:
        """
        The connection is open (its inner protocol too): let the fault that
        acts at the start act, or act on the thresholds already reached
        (C{bytes = 0}).
        """
        if self.atOpen is not None:
            fault, effect = self.atOpen
            fault.opened(self, effect)
            return
        for pipe in (self.outbound, self.inbound):
            if not self._ended:
                pipe.pump()

    # The connection's bytes.

    def received(self, data: bytes) -> None:
        """
        Bytes from the client.
        """
        self.inbound.push(data)
        self.pace(arrived=True)

    def write(self, data: bytes) -> None:
        """
        Bytes the inner protocol writes to the client.
        """
        if self.tls is not None:
            data = self.tls.outbound(data)
        self.outbound.push(data)
        self.pace()

    def _toInner(self, data: bytes) -> None:
        """
        Pass bytes from the client on to the inner protocol (through the TLS
        fault, if one applies), unless netd is closing the connection.
        """
        connection = self.connection
        if connection.disconnecting:
            return
        if self.tls is not None:
            data = self.tls.inbound(data)
            if not data:
                return
        connection.wrappedProtocol.dataReceived(data)

    def pace(self, arrived: bool = False) -> None:
        """
        Stop reading from the socket while the bytes held are over
        L{HELD_LIMIT} (or the client's direction is stalled), and read again
        once they are under L{RESUME_BELOW}.

        @param arrived: bytes just arrived, so something resumed reading (the
            transport's own pacing does when its send buffer drains): pause
            it again if need be.
        """
        transport: Any = self.connection.transport
        if self._ended or self.connection.disconnecting or transport.disconnecting:
            return
        held = self.inbound.held + self.outbound.held
        hold = self.inbound.stalledBy is not None or held > (RESUME_BELOW if self._paused else HELD_LIMIT)
        if hold and (arrived or not self._paused):
            self._paused = True
            transport.pauseProducing()
        elif not hold and self._paused:
            self._paused = False
            transport.resumeProducing()
        producer = self.connection.producer
        if producer is not None:
            self._paceProducer(producer)

    def _paceProducer(self, producer: Any) -> None:
        """
        The bytes for the client come from a producer the inner protocol
        registered (a proxy's upstream connection): pause it while the
        bytes held for the client are over L{HELD_LIMIT}, and resume it once
        they are under L{RESUME_BELOW}.  The send buffer paces the same
        producer and may resume it sooner; its next bytes then pause it again.
        """
        held = self.outbound.held
        hold = held > (RESUME_BELOW if self._producerPaused else HELD_LIMIT)
        if hold:
            self._producerPaused = True
            producer.pauseProducing()
        elif self._producerPaused:
            self._producerPaused = False
            producer.resumeProducing()

    # Ending.

    def holdsOutbound(self) -> bool:
        """
        Whether bytes to the client are still held (or a L{SlowClose} holds
        the close), so that a close must wait for them.
        """
        return self.outbound.holdsEnd()

    def holdsInbound(self) -> bool:
        """
        Whether bytes from the client are still held (or a L{SlowClose}
        holds its EOF), so that the client's EOF must wait for them.
        """
        return self.inbound.holdsEnd()

    def closeWhenDrained(self) -> None:
        """
        The inner protocol closed the connection: close it once the bytes
        held for the client are written (and a slow close has waited).
        """
        self._closing = True
        self._endWhenDrained(self.outbound)

    def eofWhenDrained(self) -> None:
        """
        The client sent EOF: tell the connection once the bytes held from the
        client are passed on (and a slow close has waited).
        """
        self._eofWaiting = True
        self._endWhenDrained(self.inbound)

    def _endWhenDrained(self, pipe: Pipe) -> None:
        """
        C{pipe}'s end waits: for a L{SlowClose}'s time if one acts, and for
        the bytes held; it goes on at once if neither holds it any more.
        """
        pipe.holdEnd()
        if not pipe.holdsEnd() and pipe.endHeld is None:
            self.drained(pipe)

    def drained(self, pipe: Pipe) -> None:
        """
        C{pipe} holds nothing more: a close or an EOF waiting for it goes on
        (once a slow close has waited).
        """
        if pipe.endHeld is not None:
            return
        if pipe is self.outbound and self._closing:
            self._closing = False
            self.connection.transport.loseConnection()  # type: ignore[union-attr]
        elif pipe is self.inbound and self._eofWaiting:
            self._eofWaiting = False
            self.connection.readConnectionLost()

    def thresholdReached(self, pipe: Pipe, threshold: _Threshold) -> None:
        """
        A direction has passed a threshold's bytes: report it, and let it act.
        """
        effect = threshold.effect
        self.report(effect, direction=pipe.direction, bytes=threshold.spec.bytes)
        threshold.spec.reached(self, pipe, effect)

    def answerHandshake(self, effect: Effect, answer: bytes, **details: Any) -> None:
        """
        A TLS fault answers the ClientHello with C{answer}, then closes once
        it is written.
        """
        self.report(effect, **details)
        self.outbound.push(answer)
        self.connection.endByFault(f"closed by fault {effect.fault.spec.typeName}")

    def end(self, effect: Effect, reset: bool) -> None:
        """
        A fault ends the connection now: bytes held are dropped.
        """
        how = "reset" if reset else "closed"
        self.stop()
        self.connection.endByFault(f"{how} by fault {effect.fault.spec.typeName}", reset=reset)

    def stop(self) -> None:
        """
        The connection is ending or gone: drop what is held, cancel every timer.
        """
        self._ended = True
        for pipe in (self.inbound, self.outbound):
            pipe.ended = True
            pipe.cancel()
            pipe.stopTimers()

    # Reporting and changes.

    def report(self, effect: Effect, **details: Any) -> None:
        """
        Count a fault's use on this connection, once.
        """
        if not effect.reported:
            effect.reported = True
            self.faults.report(effect.fault, peer=self.peer, **details)

    def update(self, chosen: Sequence[ActiveFault]) -> bool:
        """
        The service's faults changed: act by C{chosen} (the new list's
        mid-stream faults) from now on, keeping the state of faults that are
        still there, and let go of what the others hold.

        @return: whether any fault still acts on the connection (when none
            does, the connection can drop this object).
        """
        old: dict[Fault, list[Effect]] = {}
        for effect in self.effects:
            old.setdefault(effect.fault.spec, []).append(effect)
        self.effects = []
        for fault in chosen:
            reuse = old.get(fault.spec)
            self.effects.append(reuse.pop(0) if reuse else Effect(fault))
        for pipe in (self.inbound, self.outbound):
            pipe.configure(self.effects)
        for pipe in (self.outbound, self.inbound):
            if not self._ended:
                pipe.requeue()
        self.pace()
        return bool(
            self.inbound.acting or self.outbound.acting or self.tls is not None or self._paused or self._producerPaused
        )


class StreamFaultSet(FaultSet):
    """
    A service's stream faults, as its connection guard sees them
    (L{netd.stream.guard.StreamFaults}).
    """

    kind = StreamFault

    def forConnection(self, connection: GuardedConnection) -> ConnectionPipes | None:
        """
        The faults that act on a new connection: each one's schedule counts
        the connection once; L{None} when none applies.
        """
        chosen = [fault for fault in self.faults if fault.next()]
        return ConnectionPipes(connection, self, chosen) if chosen else None

    def changedFor(self, connection: GuardedConnection, current: Any) -> ConnectionPipes | None:
        """
        The faults changed while C{connection} is open: it takes the new
        list's mid-stream faults whose schedule is unconditional, and loses
        the others.

        @param current: the connection's L{ConnectionPipes}, if it has some.
        @return: those it has now (a new one is not started yet).
        """
        chosen = [fault for fault in self.faults if fault.spec.midStream and fault.spec.unconditional and fault.next()]
        if current is None:
            return ConnectionPipes(connection, self, chosen) if chosen else None
        assert isinstance(current, ConnectionPipes)
        return current if current.update(chosen) else None
