"""
The timeouts of the resolver's attempts, in one heap behind one delayed call
(L{Deadlines}): a delayed call per attempt cost each query forwarded about
fifteen Python calls (scheduling it in the reactor's own heap, then
cancelling it there), a heap entry costs one push and one store.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count
from typing import Any

from twisted.internet.interfaces import IDelayedCall

Deadline = list[Any]
"""
One timeout in the heap: C{[when, sequence, call]}; C{call} is L{None} once
it is cancelled or fired.  Lists compare by C{when}, then by the sequence
number (unique), so never by the callable.
"""

_COMPACT_SLACK = 64
"""
Cancelled entries the heap keeps beyond as many as it has live ones before
it drops them all (see L{Deadlines.cancel}).
"""


class Deadlines:
    """
    Calls due at given times, kept in one heap and run by one delayed call
    set for the earliest.  A cancelled entry stays in the heap until its time
    (cancelling costs a store, not a search), but never more of them than
    live ones plus L{_COMPACT_SLACK}: past that the heap is rebuilt without
    them; and with no live entry left, the heap is emptied and the delayed
    call cancelled, so that an idle resolver has nothing scheduled.

    @ivar live: entries neither cancelled nor fired.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an L{IReactorTime}.
        """
        self.clock = clock
        self.heap: list[Deadline] = []
        self.live = 0
        self._call: IDelayedCall | None = None
        self._at = 0.0
        self._sequence = count()

    def add(self, when: float, call: Callable[[], object]) -> Deadline:
        """
        Run C{call} at C{when} (the clock's time), unless L{cancel}led first.
        """
        entry = [when, next(self._sequence), call]
        heapq.heappush(self.heap, entry)
        self.live += 1
        if self._call is None or when < self._at:
            self._schedule(when)
        return entry

    def cancel(self, entry: Deadline) -> None:
        """
        Do not run the entry's call (nothing happens if it ran or was cancelled).
        """
        if entry[2] is None:
            return
        entry[2] = None
        self.live -= 1
        if not self.live:
            self.heap.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif len(self.heap) > 2 * self.live + _COMPACT_SLACK:
            heap = self.heap
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)

    def _schedule(self, when: float) -> None:
        """
        Have the delayed call fire at C{when}.
        """
        if self._call is not None:
            self._call.cancel()
        self._at = when
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        """
        Run every call that is due, then wait for the next.
        """
        self._call = None
        heap = self.heap
        now = self.clock.seconds()
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            call = entry[2]
            if call is not None:
                entry[2] = None
                self.live -= 1
                call()
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        if heap and self._call is None:
            self._schedule(heap[0][0])
