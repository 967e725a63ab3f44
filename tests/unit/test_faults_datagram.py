"""
Datagram faults on a UDP listener (L{netd.faults.datagrams}): drop, duplicate,
delay, truncate and reorder, in each direction, chained, on their schedules,
with what they hold bounded and their timers cancelled, all on a fake reactor.
"""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface import implementer

from netd.config.options import ConfigError
from netd.datagram.listener import DatagramListener
from netd.faults.datagrams import HELD_LIMIT, DatagramChain, describeDatagramPeer
from netd.faults.spec import FaultList
from netd.interfaces import IDatagramHandler, IDatagramSender
from netd.metrics import Counters
from netd.testing.memory import FakeUDPPort, UDPMemoryReactorClock, faultsFor
from netd_plugins.echo import EchoHandler

PEER = ("127.0.0.1", 5353)


@implementer(IDatagramHandler)
class Recorder:
    """
    A handler that keeps what it is handed and answers nothing.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, peer: tuple[str, int], sender: IDatagramSender) -> None:
        self.received.append(datagram)


class Listening:
    """
    A L{DatagramListener} with faults on a fake UDP port of a fake reactor.
    """

    def __init__(self, tables: list[dict[str, Any]], handler: Any = None) -> None:
        self.reactor = UDPMemoryReactorClock()
        self.counters = Counters()
        self.faults = faultsFor(tables, counters=self.counters)
        self.handler = EchoHandler() if handler is None else handler
        self.listener = DatagramListener(self.handler, self.counters, faults=self.faults.datagrams, clock=self.reactor)
        self.port: FakeUDPPort = self.reactor.listenUDP(0, self.listener)

    def receive(self, *datagrams: bytes, peer: tuple[str, int] = PEER) -> None:
        """
        Datagrams arrive from C{peer}, in order.
        """
        for datagram in datagrams:
            self.listener.datagramReceived(datagram, peer)

    def sent(self) -> list[bytes]:
        """
        What the listener has sent, in order; the record is emptied.
        """
        written = self.listener.transport.written  # type: ignore[union-attr]
        datagrams = [datagram for datagram, _ in written]
        written.clear()
        return datagrams

    def advance(self, ms: float) -> None:
        """
        Let C{ms} milliseconds pass.
        """
        self.reactor.advance(ms / 1000)


def test_dropFirst() -> None:
    """
    C{drop} with C{first = 1} swallows the first datagram and lets the next one through, counted.
    """
    udp = Listening([{"type": "drop", "first": 1}])
    udp.receive(b"one")
    assert udp.sent() == []
    udp.receive(b"two")
    assert udp.sent() == [b"two"]
    assert udp.counters["faults_applied_drop"] == 1
    assert udp.faults.get({})["applied"] == [1]


def test_dropFromClientHidesTheDatagramFromThePlugin() -> None:
    """
    A C{from_client} drop acts before the plugin: the handler never sees the datagram.
    """
    recorder = Recorder()
    udp = Listening([{"type": "drop", "direction": "from_client", "every": 2}], handler=recorder)
    udp.receive(b"1", b"2", b"3", b"4", b"5")
    assert recorder.received == [b"1", b"3", b"5"]


def test_dropToClientLetsThePluginSeeIt() -> None:
    """
    A C{to_client} drop acts on answers only: the handler sees every datagram, none is answered.
    """
    recorder = Recorder()
    udp = Listening([{"type": "drop", "direction": "to_client"}], handler=recorder)
    udp.receive(b"a", b"b")
    assert recorder.received == [b"a", b"b"]
    echo = Listening([{"type": "drop", "direction": "to_client"}])
    echo.receive(b"a")
    assert echo.sent() == []
    assert echo.counters["datagrams_sent"] == 0


def test_duplicate() -> None:
    """
    C{duplicate} sends the datagram and C{copies} more of it, each one counted as sent.
    """
    udp = Listening([{"type": "duplicate", "copies": 2, "direction": "to_client"}])
    udp.receive(b"ping")
    assert udp.sent() == [b"ping"] * 3
    assert udp.counters["datagrams_sent"] == 3


def test_delay() -> None:
    """
    C{delay} holds the datagram for C{ms} milliseconds: not a moment less.
    """
    udp = Listening([{"type": "delay", "ms": 200, "direction": "to_client"}])
    udp.receive(b"slow")
    udp.advance(199.9)
    assert udp.sent() == []
    udp.advance(0.2)
    assert udp.sent() == [b"slow"]
    assert udp.reactor.getDelayedCalls() == []


def test_delayJitterStaysInRangeAndRepeatsWithASeed() -> None:
    """
    With C{jitter}, each delay is within C{ms} plus or minus C{jitter}, and a C{seed} makes the delays repeat.
    """

    def delays() -> list[float]:
        udp = Listening([{"type": "delay", "ms": 100, "jitter": 50, "seed": 7, "direction": "to_client"}])
        udp.receive(*[b"%d" % i for i in range(20)])
        return sorted(call.getTime() for call in udp.reactor.getDelayedCalls())

    first = delays()
    assert all(0.05 <= t <= 0.15 for t in first)
    assert len(set(first)) > 1
    assert delays() == first


def test_delayedDatagramsMayOvertakeEachOther() -> None:
    """
    Jittered delays let a later datagram arrive first, as the summary says.
    """
    udp = Listening([{"type": "delay", "ms": 100, "jitter": 100, "seed": 1, "direction": "to_client"}])
    udp.receive(*[b"%d" % i for i in range(10)])
    udp.advance(300)
    out = udp.sent()
    assert sorted(out) == sorted(b"%d" % i for i in range(10))
    assert out != [b"%d" % i for i in range(10)]


def test_truncate() -> None:
    """
    C{truncate} cuts the datagram to its first C{bytes}; a shorter one goes through whole.
    """
    udp = Listening([{"type": "truncate", "bytes": 3}])
    udp.receive(b"abcdefgh", b"xy")
    assert udp.sent() == [b"abc", b"xy"]


def test_reorderFirstSwapsTwoDatagrams() -> None:
    """
    C{reorder} holds the datagram until the next one has gone: two datagrams come back swapped.
    """
    udp = Listening([{"type": "reorder", "first": 1, "direction": "from_client"}])
    udp.receive(b"A")
    assert udp.sent() == []
    udp.receive(b"B")
    assert udp.sent() == [b"B", b"A"]
    assert udp.reactor.getDelayedCalls() == []


def test_reorderEverySwapsPairs() -> None:
    """
    Applied to every datagram, C{reorder} swaps them pairwise: each held one is overtaken by the next.
    """
    udp = Listening([{"type": "reorder", "direction": "to_client"}])
    udp.receive(b"1", b"2", b"3", b"4", b"5")
    assert udp.sent() == [b"2", b"1", b"4", b"3"]
    udp.advance(100)
    assert udp.sent() == [b"5"]


def test_reorderWaitsAtMostWait() -> None:
    """
    A reordered datagram that nothing follows goes after C{wait} milliseconds.
    """
    udp = Listening([{"type": "reorder", "wait": 30, "direction": "from_client"}])
    udp.receive(b"alone")
    udp.advance(29)
    assert udp.sent() == []
    udp.advance(1)
    assert udp.sent() == [b"alone"]


def test_duplicateThenDelay() -> None:
    """
    Faults chain in list order: duplicated, then each copy delayed.
    """
    udp = Listening(
        [{"type": "duplicate", "direction": "to_client"}, {"type": "delay", "ms": 50, "direction": "to_client"}]
    )
    udp.receive(b"x")
    assert udp.sent() == []
    udp.advance(50)
    assert udp.sent() == [b"x", b"x"]
    assert udp.counters["faults_applied_delay"] == 2


def test_delayThenDuplicateCountsOneDelay() -> None:
    """
    In the other order the datagram is delayed once, then duplicated when its delay is over.
    """
    udp = Listening(
        [{"type": "delay", "ms": 50, "direction": "to_client"}, {"type": "duplicate", "direction": "to_client"}]
    )
    udp.receive(b"x")
    udp.advance(50)
    assert udp.sent() == [b"x", b"x"]
    assert udp.counters["faults_applied_delay"] == 1


def test_dropStopsTheChain() -> None:
    """
    A dropped datagram reaches no later fault: their schedules do not count it.
    """
    udp = Listening(
        [
            {"type": "drop", "every": 2, "direction": "to_client"},
            {"type": "truncate", "bytes": 1, "every": 2, "direction": "to_client"},
        ]
    )
    udp.receive(b"aa", b"bb", b"cc")
    assert udp.sent() == [b"aa", b"c"]


def test_truncateThenDuplicateInBothDirections() -> None:
    """
    A fault with direction C{both} acts on the datagram received and on the answer sent.
    """
    recorder = Recorder()
    udp = Listening([{"type": "truncate", "bytes": 2}], handler=recorder)
    udp.receive(b"hello")
    assert recorder.received == [b"he"]
    echo = Listening([{"type": "truncate", "bytes": 4}, {"type": "duplicate", "direction": "from_client"}])
    echo.receive(b"hello")
    assert echo.sent() == [b"hell", b"hell"]


def test_everyCountsDatagramsOfItsDirection() -> None:
    """
    C{every} counts the datagrams of the fault's direction only: every second answer is dropped.
    """
    udp = Listening([{"type": "drop", "every": 2, "direction": "to_client"}])
    udp.receive(b"1", b"2", b"3", b"4")
    assert udp.sent() == [b"1", b"3"]


def test_probabilityWithSeedRepeats() -> None:
    """
    C{probability} with a C{seed} drops the same datagrams from one run to the next.
    """

    def run() -> list[bytes]:
        udp = Listening([{"type": "drop", "probability": 0.5, "seed": 42, "direction": "to_client"}])
        udp.receive(*[b"%d" % i for i in range(40)])
        return udp.sent()

    first = run()
    assert 5 < len(first) < 35
    assert run() == first


def test_heldDatagramsAreBounded() -> None:
    """
    Beyond L{HELD_LIMIT} datagrams held at once, another one to be held is dropped and counted.
    """
    udp = Listening([{"type": "delay", "ms": 1000, "direction": "to_client"}])
    udp.receive(*[b"x"] * (HELD_LIMIT + 5))
    assert len(udp.reactor.getDelayedCalls()) == HELD_LIMIT
    assert udp.counters["datagrams_held_dropped"] == 5
    udp.advance(1000)
    assert len(udp.sent()) == HELD_LIMIT
    udp.receive(b"again")
    udp.advance(1000)
    assert udp.sent() == [b"again"]


def test_stopCancelsEveryTimer() -> None:
    """
    When the port stops, held datagrams are dropped and no timer is left to fire on a dead socket.
    """
    udp = Listening(
        [{"type": "delay", "ms": 100, "direction": "to_client"}, {"type": "reorder", "direction": "from_client"}]
    )
    udp.receive(b"a", b"b", b"c")
    assert udp.reactor.getDelayedCalls()
    udp.port.stopListening()
    assert udp.reactor.getDelayedCalls() == []
    chain = udp.listener._chain
    assert isinstance(chain, DatagramChain) and chain.held == set()


def test_changesApplyToTheNextDatagram() -> None:
    """
    Faults put through the control API's table act on the next datagram; deleting them lets held ones finish.
    """
    udp = Listening([])
    udp.receive(b"before")
    assert udp.sent() == [b"before"]
    udp.faults.put({"faults": [{"type": "delay", "ms": 10}]})
    udp.receive(b"held")
    udp.faults.delete({})
    udp.receive(b"after")
    assert udp.sent() == [b"after"]
    udp.advance(10)
    assert udp.sent() == [b"held"]


def test_appliedFaultsAreLoggedWithThePeer() -> None:
    """
    Each fault applied is an event in the service's log, naming the fault and the peer.
    """
    udp = Listening([{"type": "truncate", "bytes": 1, "direction": "to_client"}])
    udp.receive(b"abc", peer=("::1", 9))
    [event] = udp.faults.events.events(kind="fault")
    assert (event["fault"], event["peer"], event["kept"], event["direction"]) == ("truncate", "[::1]:9", 1, "to_client")


def test_withoutFaultsNothingChanges() -> None:
    """
    A listener built without faults, or whose service has none, passes datagrams straight through.
    """
    reactor = UDPMemoryReactorClock()
    plain = DatagramListener(EchoHandler(), Counters())
    reactor.listenUDP(0, plain)
    plain.datagramReceived(b"x", PEER)
    empty = Listening([])
    empty.receive(b"y")
    assert plain.transport.written == [(b"x", PEER)]  # type: ignore[union-attr]
    assert empty.sent() == [b"y"]
    assert reactor.getDelayedCalls() == empty.reactor.getDelayedCalls() == []


def test_faultsNeedAClock() -> None:
    """
    A listener given faults but no clock is refused when built, not when a datagram arrives.
    """
    with pytest.raises(TypeError):
        DatagramListener(EchoHandler(), Counters(), faults=faultsFor([]).datagrams)


def test_describeDatagramPeer() -> None:
    """
    Peers are written C{host:port}, IPv6 hosts in brackets.
    """
    assert describeDatagramPeer(("10.0.0.1", 53)) == "10.0.0.1:53"
    assert describeDatagramPeer(("::1", 53, 0, 0)) == "[::1]:53"


def test_datagramFaultsMisfitAServiceWithoutUDP() -> None:
    """
    A datagram fault on a service with no udp: listener is a config error at its key path.
    """
    with pytest.raises(ConfigError) as raised:
        faultsFor([{"type": "drop"}], datagrams=False)
    assert "faults[0].type" in str(raised.value)
    assert isinstance(faultsFor([{"type": "drop"}]).faults, FaultList)
