"""
A private netd reactor for unit tests on real loopback sockets: turned one
iteration at a time (every wait bounded), and torn down with everything on
it, so that the session's own reactor never sees these sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from twisted.internet import udp

from netd.reactor import NetdReactor

WAIT = 5.0
"""
Seconds a test waits at most for something to happen.
"""


def privateReactor() -> Iterator[NetdReactor]:
    """
    A netd reactor for one test (a fixture's body): afterwards its UDP ports
    stop listening (and what that schedules runs), its connections are
    dropped, its timed calls cancelled and its poller closed.
    """
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


def spin(reactor: NetdReactor, done: Callable[[], object], timeout: float = WAIT) -> None:
    """
    Turn the reactor until C{done()} is true, failing after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done within {timeout} seconds"
        reactor.iterate(0.01)
