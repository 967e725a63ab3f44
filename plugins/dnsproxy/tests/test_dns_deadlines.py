"""
The resolver's timeouts in one heap behind one delayed call
(C{netd_plugins.dnsproxy.deadlines}), alone and under the resolver.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from netd_plugins.dnsproxy import deadlines as deadlinesModule
from netd_plugins.dnsproxy.deadlines import Deadlines

from .test_dns_upstream import CLIENT_ID, Harness, answerTo, messageID, reply


def test_callsRunOnceInTimeOrder() -> None:
    """
    Each call runs once, at its time, in the order of the times (then of adding), all from one delayed call.
    """
    clock = Clock()
    deadlines = Deadlines(clock)
    ran: list[str] = []
    deadlines.add(2.0, lambda: ran.append("b"))
    deadlines.add(1.0, lambda: ran.append("a"))
    deadlines.add(2.0, lambda: ran.append("c"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.999)
    assert ran == []
    clock.advance(0.001)
    assert ran == ["a"]
    clock.advance(5)
    assert ran == ["a", "b", "c"]
    assert clock.getDelayedCalls() == [] and deadlines.live == 0


def test_cancelledCallNeverRuns() -> None:
    """
    A cancelled call does not run, cancelling twice or after it ran changes nothing, and with nothing live the delayed call is cancelled.
    """
    clock = Clock()
    deadlines = Deadlines(clock)
    ran: list[str] = []
    first = deadlines.add(1.0, lambda: ran.append("first"))
    second = deadlines.add(2.0, lambda: ran.append("second"))
    deadlines.cancel(first)
    deadlines.cancel(first)
    assert deadlines.live == 1
    clock.advance(1.5)
    assert ran == []
    clock.advance(0.5)
    assert ran == ["second"]
    deadlines.cancel(second)
    assert deadlines.live == 0
    third = deadlines.add(3.0, lambda: ran.append("third"))
    deadlines.cancel(third)
    assert clock.getDelayedCalls() == [] and deadlines.heap == []


def test_callAddedEarlierReschedules() -> None:
    """
    A call due before the one the delayed call waits for runs at its own time.
    """
    clock = Clock()
    deadlines = Deadlines(clock)
    ran: list[float] = []
    deadlines.add(5.0, lambda: ran.append(clock.seconds()))
    deadlines.add(1.0, lambda: ran.append(clock.seconds()))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    assert ran == [1.0]
    clock.advance(4.0)
    assert ran == [1.0, 5.0]


def test_callMayAddCalls() -> None:
    """
    A call that adds another (a failover's next attempt) has it run at its own time.
    """
    clock = Clock()
    deadlines = Deadlines(clock)
    ran: list[str] = []
    deadlines.add(1.0, lambda: deadlines.add(3.0, lambda: ran.append("next")))
    clock.advance(1.0)
    assert ran == [] and deadlines.live == 1
    clock.advance(2.0)
    assert ran == ["next"]


def test_cancelledEntriesAreBounded() -> None:
    """
    Cancelled entries wait in the heap for their time, but never more of them than live ones plus a fixed slack.
    """
    clock = Clock()
    deadlines = Deadlines(clock)
    keep = deadlines.add(100.0, lambda: None)
    for index in range(10_000):
        deadlines.cancel(deadlines.add(10.0 + index, lambda: None))
        assert len(deadlines.heap) <= 2 * deadlines.live + deadlinesModule._COMPACT_SLACK + 1
    assert deadlines.live == 1
    deadlines.cancel(keep)
    assert deadlines.heap == []


def test_resolverTimesOutEachQueryOnceWithOneDelayedCall() -> None:
    """
    Many queries in flight share one delayed call; an answered one is never timed out, each unanswered one times out exactly once and fails over, and nothing is left scheduled at the end.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], timeout=2.0, deadline=5.0)
    boxes = [harness.resolve(f"n{index}.example.com")[1] for index in range(20)]
    sent = harness.takeUDP()
    assert len(sent) == 20
    assert len(harness.reactor.getDelayedCalls()) <= 2, "one for the timeouts (and the health prober's)"
    port, datagram, source = sent[0]
    reply(port, answerTo(datagram), source)
    assert sum(len(box) for box in boxes) == 1
    harness.reactor.advance(2.0)
    assert harness.counters["upstream_timeouts"] == 19
    second = harness.takeUDP()
    assert [addr[0] for _, _, addr in second] == ["192.0.2.2"] * 19
    for port, datagram, source in second:
        reply(port, answerTo(datagram), source)
    assert all(len(box) == 1 and messageID(box[0]) == CLIENT_ID for box in boxes)
    harness.reactor.advance(10.0)
    assert harness.counters["upstream_timeouts"] == 19
    assert harness.resolver.deadlines.live == 0 and harness.resolver.deadlines.heap == []
    assert not harness.resolver.resolving and not harness.resolver.outstanding.keys


def test_lateAnswerAfterTimeoutIsDropped() -> None:
    """
    An answer that comes after its attempt timed out answers nothing: it is dropped and counted, and the query's outcome comes from the next upstream.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], timeout=2.0)
    _, box = harness.resolve()
    firstPort, firstSent, first = harness.takeOneUDP()
    harness.reactor.advance(2.0)
    port, sent, second = harness.takeOneUDP()
    reply(firstPort, answerTo(firstSent), first)
    assert harness.counters["upstream_spoofed_dropped"] == 1 and box == []
    reply(port, answerTo(sent), second)
    assert messageID(box[0]) == CLIENT_ID and len(box) == 1
