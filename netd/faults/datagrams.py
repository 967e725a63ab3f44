"""
Datagram faults on a UDP listener: C{drop}, C{duplicate}, C{delay},
C{truncate} and C{reorder}.

A service's datagram faults form a chain, in the order of its C{faults} list:
each fault sees the datagrams the one before it passes on (copies included,
delayed ones when their delay is over), asks its schedule about each one, and
passes on what it makes of it.  What comes out of the chain is handed to the
plugin (C{from_client}) or sent from the socket (C{to_client}).  A datagram
already in the chain when the faults change goes on through the chain it
entered.

What the faults hold back (delayed datagrams, and those waiting to be
overtaken) is bounded per listener by L{HELD_LIMIT}: beyond it a datagram that
would be held is dropped and counted as C{datagrams_held_dropped}.  Every
timer belongs to the listener and is cancelled when it stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from netd.faults.active import ActiveFault, ServiceFaults
from netd.faults.spec import Delay, Drop, Duplicate, Reorder, Truncate
from netd.metrics import Counters

HELD_LIMIT = 1024
"""
The most datagrams one listener's faults hold back at once.
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


@attrs.define(eq=False)
class _Held:
    """
    One datagram held back, and the timer that lets it go.

    @ivar resume: passes it on down the chain.
    @ivar waitsAt: the C{reorder} fault and direction where it waits to be
        overtaken, or L{None} for a C{delay}.
    """

    resume: Callable[[], None]
    waitsAt: tuple[ActiveFault, str] | None
    call: IDelayedCall | None = None


class DatagramFaults:
    """
    The datagram faults of one UDP listener, in both directions.

    @ivar held: the datagrams held back now.
    """

    def __init__(
        self,
        faults: ServiceFaults,
        clock: IReactorTime,
        counters: Counters,
        deliver: Callable[[bytes, Peer], None],
        transmit: Callable[[bytes, Peer], None],
    ) -> None:
        """
        @param faults: the service's faults; their C{datagram} chain is read per datagram.
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
        self._run(self.faults.datagram, 0, "from_client", datagram, peer)

    def sending(self, datagram: bytes, peer: Peer) -> None:
        """
        The plugin sends a datagram: run it through the C{to_client} faults.
        """
        self._run(self.faults.datagram, 0, "to_client", datagram, peer)

    def stop(self) -> None:
        """
        The listener stopped: forget what is held, and cancel every timer.
        """
        held, self.held = self.held, set()
        self._overtaking.clear()
        for entry in held:
            if entry.call is not None and entry.call.active():
                entry.call.cancel()

    def _run(self, chain: Chain, index: int, direction: str, datagram: bytes, peer: Peer) -> None:
        """
        Pass a datagram through C{chain} from its C{index}th fault on, then to
        the end of its direction.
        """
        while index < len(chain):
            fault = chain[index]
            index += 1
            spec = fault.spec
            if spec.direction != "both" and spec.direction != direction:
                continue
            hit = fault.next()
            if isinstance(spec, Reorder):
                waiting = self._overtaking.get((fault, direction))
                if waiting:
                    # This datagram overtakes the ones held here: it goes on
                    # first, they follow it.
                    self._run(chain, index, direction, datagram, peer)
                    for entry in list(waiting):
                        self._release(entry)
                    return
                if hit:
                    resume = self._resumer(chain, index, direction, datagram, peer)
                    if self._hold(spec.wait, resume, waitsAt=(fault, direction)):
                        self.faults.applied(fault, peer=describeDatagramPeer(peer), direction=direction, wait=spec.wait)
                    return
                continue
            if not hit:
                continue
            if isinstance(spec, Drop):
                self.faults.applied(fault, peer=describeDatagramPeer(peer), direction=direction, size=len(datagram))
                return
            if isinstance(spec, Truncate):
                kept = min(spec.bytes, len(datagram))
                self.faults.applied(fault, peer=describeDatagramPeer(peer), direction=direction, size=len(datagram), kept=kept)
                datagram = datagram[: spec.bytes]
            elif isinstance(spec, Duplicate):
                self.faults.applied(fault, peer=describeDatagramPeer(peer), direction=direction, copies=spec.copies)
                for _ in range(spec.copies + 1):
                    self._run(chain, index, direction, datagram, peer)
                return
            elif isinstance(spec, Delay):
                ms = spec.ms
                if spec.jitter:
                    ms = max(0.0, ms + fault.schedule.random.uniform(-spec.jitter, spec.jitter))
                resume = self._resumer(chain, index, direction, datagram, peer)
                if self._hold(ms, resume, waitsAt=None):
                    self.faults.applied(fault, peer=describeDatagramPeer(peer), direction=direction, ms=round(ms, 3))
                return
        self._ends[direction](datagram, peer)

    def _resumer(self, chain: Chain, index: int, direction: str, datagram: bytes, peer: Peer) -> Callable[[], None]:
        """
        What passes a held datagram on down the chain, from the fault after the one that held it.
        """
        return lambda: self._run(chain, index, direction, datagram, peer)

    def _hold(self, ms: float, resume: Callable[[], None], waitsAt: tuple[ActiveFault, str] | None) -> bool:
        """
        Hold a datagram for C{ms} milliseconds at most (less when it waits at a
        C{reorder} fault and another one overtakes it), or drop it, counted,
        when L{HELD_LIMIT} are held already; whether it is held.
        """
        if len(self.held) >= HELD_LIMIT:
            self.counters["datagrams_held_dropped"] += 1
            return False
        entry = _Held(resume, waitsAt)
        entry.call = self.clock.callLater(ms / 1000, self._release, entry)
        self.held.add(entry)
        if waitsAt is not None:
            self._overtaking.setdefault(waitsAt, []).append(entry)
        return True

    def _release(self, entry: _Held) -> None:
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
