"""
Datagram faults on a UDP listener: C{drop}, C{duplicate}, C{delay},
C{truncate} and C{reorder}, a chain in the order of the service's C{faults}
list, each fault passing on what it makes of the datagrams the one before
passed on.  What they hold is bounded per listener by L{HELD_LIMIT}.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from netd.config.options import between, option
from netd.faults.base import ActiveFault, Fault, FaultSet, ServiceShape, milliseconds
from netd.metrics import Counters

HELD_LIMIT = 1024
"""
The most datagrams one listener's faults hold back at once.
"""

MAX_COPIES = 64
"""
The most datagrams the C{duplicate} faults of a list may make of one: the
product of C{copies + 1} over them, each counted once per direction it acts on
(a datagram and the answer to it both go through a C{both} one).  Each copy
goes on through the faults after the one that made it, so copies multiply:
five faults of C{copies = 100} would turn one datagram into ten billion.
"""

Peer = Any
"""
A datagram's peer, as the socket gives it: C{(host, port)} for IP.
"""
Chain = tuple[ActiveFault, ...]


def describeDatagramPeer(peer: Peer) -> str:
    """
    A datagram peer in words for the event log: C{10.1.2.3:5353}, C{[::1]:5353}.
    """
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class DatagramStep:
    """
    One datagram at one fault of the chain: what the fault can do with it.

    @ivar fault: the fault, in force.
    @ivar direction: C{from_client} or C{to_client}.
    """

    def __init__(self, runner: DatagramChain, chain: Chain, index: int, direction: str, peer: Peer) -> None:
        self.runner = runner
        self.chain = chain
        self.index = index
        self.fault = chain[index - 1]
        self.direction = direction
        self.peer = peer

    def passOn(self, datagram: bytes) -> None:
        """
        Pass C{datagram} (this one, changed, or a copy) on to the next fault.
        """
        self.runner.run(self.chain, self.index, self.direction, datagram, self.peer)

    def hold(self, ms: float, datagram: bytes, overtakable: bool = False) -> bool:
        """
        Pass C{datagram} on in C{ms} milliseconds (or once the next datagram
        through this fault, this way, has overtaken it); whether it is held
        (not when L{HELD_LIMIT} are held already: it is dropped, counted).
        """
        waitsAt = (self.fault, self.direction) if overtakable else None
        return self.runner.hold(ms, lambda: self.passOn(datagram), waitsAt)

    def overtake(self, datagram: bytes) -> bool:
        """
        If datagrams wait at this fault to be overtaken, this one passes on
        first, and they follow it; whether any waited.
        """
        waiting = self.runner.waiting(self.fault, self.direction)
        if not waiting:
            return False
        self.passOn(datagram)
        for entry in list(waiting):
            self.runner.release(entry)
        return True

    def applied(self, **details: Any) -> None:
        """
        Report the fault applied to this datagram.
        """
        self.runner.faults.report(self.fault, peer=describeDatagramPeer(self.peer), direction=self.direction, **details)


@attrs.frozen
class DatagramFault(Fault):
    """
    A fault on the datagrams of a UDP listener, chosen per datagram.
    """

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        It needs a udp: listener.
        """
        if not shape.datagrams:
            return f"{self.typeName} acts on datagrams, and this service has no udp: listener"
        return None

    def onDatagram(self, step: DatagramStep, datagram: bytes, hit: bool) -> None:
        """
        A datagram reaches the fault (C{hit}: its schedule applies to it):
        L{apply} it, or pass it on.
        """
        if hit:
            self.apply(step, datagram)
        else:
            step.passOn(datagram)

    def apply(self, step: DatagramStep, datagram: bytes) -> None:
        """
        Act on one datagram: pass on what it makes of it through C{step}, or nothing.
        """
        raise NotImplementedError()


@attrs.frozen
class Drop(DatagramFault):
    typeName = "drop"
    summary = "Drop the datagram (use probability, first or every to choose which)."

    def apply(self, step: DatagramStep, datagram: bytes) -> None:
        step.applied(size=len(datagram))


@attrs.frozen
class Duplicate(DatagramFault):
    typeName = "duplicate"
    summary = "Send (or deliver) the datagram, then copies more of it."
    copies: int = option(
        1,
        help=f"Extra copies; with those of the other duplicate faults, at most {MAX_COPIES} datagrams in all.",
        checks=(between(1, MAX_COPIES - 1),),
    )

    def multiplier(self) -> int:
        """
        How many datagrams this fault can make of one, over a datagram and its
        answer: C{copies + 1}, squared when it acts both ways.
        """
        return (self.copies + 1) ** (2 if self.direction == "both" else 1)

    def apply(self, step: DatagramStep, datagram: bytes) -> None:
        step.applied(copies=self.copies)
        for _ in range(self.copies + 1):
            step.passOn(datagram)


@attrs.frozen
class Delay(DatagramFault):
    typeName = "delay"
    summary = "Hold the datagram for ms (plus or minus up to jitter) milliseconds; datagrams may overtake each other."
    ms: float = milliseconds("Milliseconds added.", default=attrs.NOTHING)
    jitter: float = milliseconds("Up to this many milliseconds more or less, chosen per datagram.")

    def apply(self, step: DatagramStep, datagram: bytes) -> None:
        ms = self.ms
        if self.jitter:
            ms = max(0.0, ms + step.fault.schedule.random.uniform(-self.jitter, self.jitter))
        if step.hold(ms, datagram):
            step.applied(ms=round(ms, 3))


@attrs.frozen
class Truncate(DatagramFault):
    typeName = "truncate"
    summary = "Cut the datagram to its first bytes bytes."
    bytes: int = option(help="Bytes kept.", checks=(between(0, 65535),))

    def apply(self, step: DatagramStep, datagram: builtins.bytes) -> None:
        step.applied(size=len(datagram), kept=min(self.bytes, len(datagram)))
        step.passOn(datagram[: self.bytes])


@attrs.frozen
class Reorder(DatagramFault):
    typeName = "reorder"
    summary = "Hold the datagram until the next one in its direction has gone, or for wait milliseconds at most."
    wait: float = milliseconds("Longest hold, in milliseconds, when no other datagram follows.", default=100.0)

    def onDatagram(self, step: DatagramStep, datagram: bytes, hit: bool) -> None:
        """
        A datagram overtakes those held here, whatever its schedule says; else
        it is held when the schedule applies.
        """
        if not step.overtake(datagram):
            super().onDatagram(step, datagram, hit)

    def apply(self, step: DatagramStep, datagram: bytes) -> None:
        if step.hold(self.wait, datagram, overtakable=True):
            step.applied(wait=self.wait)


@attrs.define(eq=False)
class _Held:
    """
    One datagram held back, and the timer that lets it go.

    @ivar resume: passes it on down the chain.
    @ivar waitsAt: the fault and direction where it waits to be overtaken,
        or L{None} when it only waits for its time.
    """

    resume: Callable[[], None]
    waitsAt: tuple[ActiveFault, str] | None
    call: IDelayedCall | None = None


class DatagramChain:
    """
    The datagram faults of one UDP listener, in both directions (what
    L{netd.datagram.listener.DatagramFaultChain} asks for).

    @ivar held: the datagrams held back now.
    """

    def __init__(
        self,
        faults: DatagramFaultSet,
        clock: IReactorTime,
        counters: Counters,
        deliver: Callable[[bytes, Peer], None],
        transmit: Callable[[bytes, Peer], None],
    ) -> None:
        """
        @param faults: the service's datagram faults, read per datagram.
        @param deliver: hands a received datagram to the plugin.
        @param transmit: sends a datagram from the socket.
        """
        self.faults = faults
        self.clock = clock
        self.counters = counters
        self._ends = {"from_client": deliver, "to_client": transmit}
        self.held: set[_Held] = set()
        self._overtaking: dict[tuple[ActiveFault, str], list[_Held]] = {}

    def received(self, datagram: bytes, peer: Peer) -> None:
        """
        A datagram arrived: run it through the C{from_client} faults.
        """
        self.run(self.faults.faults, 0, "from_client", datagram, peer)

    def sending(self, datagram: bytes, peer: Peer) -> None:
        """
        The plugin sends a datagram: run it through the C{to_client} faults.
        """
        self.run(self.faults.faults, 0, "to_client", datagram, peer)

    def stop(self) -> None:
        """
        The listener stopped: forget what is held, and cancel every timer.
        """
        held, self.held = self.held, set()
        self._overtaking.clear()
        for entry in held:
            if entry.call is not None and entry.call.active():
                entry.call.cancel()

    def run(self, chain: Chain, index: int, direction: str, datagram: bytes, peer: Peer) -> None:
        """
        Pass a datagram through C{chain} from its C{index}th fault on (the
        first that acts on its direction takes it), then to the end of its
        direction.
        """
        while index < len(chain):
            fault = chain[index]
            index += 1
            spec = fault.spec
            if spec.direction != "both" and spec.direction != direction:
                continue
            assert isinstance(spec, DatagramFault)
            spec.onDatagram(DatagramStep(self, chain, index, direction, peer), datagram, fault.next())
            return
        self._ends[direction](datagram, peer)

    def waiting(self, fault: ActiveFault, direction: str) -> list[_Held]:
        """
        The datagrams waiting at C{fault}, going C{direction}, to be overtaken.
        """
        return self._overtaking.get((fault, direction), [])

    def hold(self, ms: float, resume: Callable[[], None], waitsAt: tuple[ActiveFault, str] | None) -> bool:
        """
        Hold a datagram for C{ms} milliseconds at most (less when it waits to
        be overtaken and another one does), or drop it, counted, when
        L{HELD_LIMIT} are held already; whether it is held.
        """
        if len(self.held) >= HELD_LIMIT:
            self.counters["datagrams_held_dropped"] += 1
            return False
        entry = _Held(resume, waitsAt)
        entry.call = self.clock.callLater(ms / 1000, self.release, entry)
        self.held.add(entry)
        if waitsAt is not None:
            self._overtaking.setdefault(waitsAt, []).append(entry)
        return True

    def release(self, entry: _Held) -> None:
        """
        Let a held datagram go on, at its time or once it is overtaken.
        """
        self.held.discard(entry)
        if entry.call is not None and entry.call.active():
            entry.call.cancel()
        if entry.waitsAt is not None:
            waiting = self._overtaking[entry.waitsAt]
            waiting.remove(entry)
            if not waiting:
                del self._overtaking[entry.waitsAt]
        entry.resume()


class DatagramFaultSet(FaultSet):
    """
    A service's datagram faults, as its UDP listeners see them
    (L{netd.datagram.listener.DatagramFaults}).
    """

    kind = DatagramFault

    def chainFor(
        self,
        clock: IReactorTime,
        counters: Counters,
        deliver: Callable[[bytes, Peer], None],
        transmit: Callable[[bytes, Peer], None],
    ) -> DatagramChain:
        """
        The faults of one listener, which hands what comes out of them to
        C{deliver} (received) and C{transmit} (sent).
        """
        return DatagramChain(self, clock, counters, deliver, transmit)
