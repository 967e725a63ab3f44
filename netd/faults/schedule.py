"""
Which connections, datagrams, frames or queries a fault applies to.

Every fault (and every scripted DNS answer) carries the same four schedule keys,
declared once here in L{Scheduled}: all events by default, the C{first} N only
("fail twice, then succeed", the case that tests retry logic), C{every} Nth, or
each with a C{probability}; a C{seed} makes the random choices, jitter included,
repeat from one run to the next.
"""

from __future__ import annotations

import random

import attrs

from netd.config.options import between, option

SCHEDULE_KEYS = ("first", "every", "probability")


@attrs.frozen
class Scheduled:
    """
    The schedule keys of a fault or a scripted answer; subclasses add their own keys.
    """

    first: int | None = option(
        None,
        help="Apply to the first N events only (connections, datagrams, frames or queries), then never.",
        checks=(between(1, 2**31),),
    )
    every: int | None = option(
        None, help="Apply to every Nth event only (the Nth, the 2Nth, ...).", checks=(between(1, 2**31),)
    )
    probability: float | None = option(
        None, help="Apply to each event with this probability (0 to 1).", checks=(between(0, 1),)
    )
    seed: int | None = option(
        None, help="Seed of the random choices (probability, jitter), so that a run repeats; unseeded when unset."
    )

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        At most one of C{first}, C{every} and C{probability}.
        """
        given = [k for k in SCHEDULE_KEYS if getattr(self, k) is not None]
        if len(given) > 1:
            return [
                (given[1], f"a schedule takes one of first, every and probability; {' and '.join(given)} are both set")
            ]
        return []

    @property
    def unconditional(self) -> bool:
        """
        Whether the fault applies to every event (no schedule key set).
        """
        return self.first is None and self.every is None and self.probability is None

    def start(self) -> ScheduleState:
        """
        A fresh count of events for this schedule, with its own random generator.
        """
        return ScheduleState(self)


class ScheduleState:
    """
    The running count of one fault's schedule.

    @ivar seen: events counted so far.
    @ivar applied: events the fault applied to.
    @ivar random: the generator for this fault's random choices (seeded by C{seed}).
    """

    def __init__(self, schedule: Scheduled) -> None:
        self.schedule = schedule
        self.seen = 0
        self.applied = 0
        self.random = random.Random(schedule.seed)

    def next(self) -> bool:
        """
        Count one event; whether the fault applies to it.
        """
        self.seen += 1
        s = self.schedule
        if s.first is not None:
            hit = self.seen <= s.first
        elif s.every is not None:
            hit = self.seen % s.every == 0
        elif s.probability is not None:
            hit = self.random.random() < s.probability
        else:
            hit = True
        if hit:
            self.applied += 1
        return hit
