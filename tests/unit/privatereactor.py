"""
Private netd reactors for unit tests on real loopback sockets: turned one
iteration at a time (every wait bounded), and torn down with everything on
them, so that the session's own reactor never sees these sockets.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from twisted.internet import udp
from twisted.internet.epollreactor import EPollReactor

from netd.reactors import tcpinfo
from netd.reactors.accepting import acceptGuarded
from netd.reactors.epoll import NetdReactor
from netd.reactors.uv import UvloopReactor

Reactor = NetdReactor | UvloopReactor
"""
A reactor of the tests of what every netd transport promises.
"""

WAIT = 5.0
"""
Seconds a test waits at most for something to happen.
"""


def privateReactor(made: EPollReactor | None = None) -> Iterator[Any]:
    """
    A netd reactor (or C{made}, an epoll reactor of Twisted's) for one test
    (a fixture's body): afterwards its UDP ports stop listening (and what
    that schedules runs), its connections are dropped, its timed calls
    cancelled and its poller closed.
    """
    if made is None:
        made = NetdReactor()
    yield made
    made._uninstallHandler()
    for reader in made.getReaders():
        if isinstance(reader, udp.Port):
            reader.stopListening()
    made.runUntilCurrent()
    for reader in made._internalReaders:
        made.removeReader(reader)
        reader.connectionLost(None)
    made.disconnectAll()
    for call in made.getDelayedCalls():
        call.cancel()
    made._poller.close()


def privateUvloopReactor() -> Iterator[UvloopReactor]:
    """
    A uvloop reactor on a loop of its own (never the current one) for one
    test (a fixture's body): afterwards its ports stop listening and its
    connections are dropped (L{UvloopReactor.disconnectAll}: their protocols
    are told), its timed calls cancelled, its waker closed and its loop
    closed, once it has run what closing them scheduled: uvloop closes a
    transport it was given a socket for (outgoing connections) on its next
    turn, and gives the socket's descriptor up only then; a loop closed
    before would leave the socket object to close that descriptor again,
    whoever has it by then.
    """
    made = UvloopReactor(uvloop.new_event_loop())
    yield made
    made._uninstallHandler()
    made.disconnectAll()
    spin(made, lambda: not made.streams)
    for reader in made._internalReaders:
        made.removeReader(reader)
        reader.connectionLost(None)
    for call in made.getDelayedCalls():
        call.cancel()
    loop = made.asyncioLoop
    for _ in range(2):
        loop.call_soon(loop.stop)
        loop.run_forever()
    loop.close()


def privateClockedUvloopReactor() -> Iterator[UvloopReactor]:
    """
    A private uvloop reactor whose connections time their own activity: what
    it serves where C{TCP_INFO}'s canary fails (L{tcpinfo.CANARY}).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tcpinfo.CANARY, "_alive", False)
        yield from privateUvloopReactor()


def privateTwistedReactor() -> Iterator[Any]:
    """
    Twisted's own epoll reactor as netd listens on it (L{acceptGuarded}):
    what serves where netd's epoll reactor's canary fails.
    """
    for made in privateReactor(EPollReactor()):
        yield acceptGuarded(made)


REACTORS = {"netd": privateReactor, "uvloop": privateUvloopReactor, "uvloop-clocked": privateClockedUvloopReactor}
"""
netd's reactors that serve TCP connections with their own transports, by
the C{NETD_REACTOR} name that chooses each (C{uvloop-clocked}: the uvloop
one on its fallback path for idle times).
"""

FALLBACKS = REACTORS | {"twisted": privateTwistedReactor}
"""
The same, and Twisted's reactor that netd falls back to: what serves netd's
TCP connections on every path.
"""


@pytest.fixture(params=sorted(REACTORS))
def reactor(request: pytest.FixtureRequest) -> Iterator[Any]:
    """
    Each of netd's reactors in turn, a private one, not the session's, torn
    down with everything on it: for the tests of what every netd transport
    promises beyond Twisted's (sending at once, metering); with
    L{onEveryPath}, every reactor of L{FALLBACKS}.
    """
    yield from FALLBACKS[request.param]()


onEveryPath = pytest.mark.parametrize("reactor", sorted(FALLBACKS), indirect=True)
"""
Marks a test of what every transport promises, to run on every reactor netd
may serve TCP on: its private fast paths and their public fallbacks.
"""


@pytest.fixture
def netdReactor() -> Iterator[NetdReactor]:
    """
    A private epoll reactor (L{NetdReactor}), for the tests of its own workings.
    """
    yield from privateReactor()


@pytest.fixture
def uvloopReactor() -> Iterator[UvloopReactor]:
    """
    A private uvloop reactor (L{UvloopReactor}), for the tests of its own workings.
    """
    yield from privateUvloopReactor()


def turn(reactor: Any) -> None:
    """
    Turn the reactor once, waiting at most 10 ms for something to happen.

    Twisted's asyncio reactor turns for as long as it is told, events or
    not: a uvloop one instead waits until libuv's poller has an event (or
    10 ms pass), then runs one iteration of its loop.
    """
    if not isinstance(reactor, UvloopReactor):
        reactor.iterate(0.01)
        return
    loop = reactor.asyncioLoop
    select.select([loop._get_backend_id()], [], [], 0.01)  # type: ignore[attr-defined]
    loop.call_soon(loop.stop)
    loop.run_forever()


def spin(reactor: Any, done: Callable[[], object], timeout: float = WAIT) -> None:
    """
    Turn the reactor until C{done()} is true, failing after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done within {timeout} seconds"
        turn(reactor)
