"""
File descriptors: the open-file limit netd runs with, what a service's
C{max_connections} defaults to under it, and what a listening port does when
the process runs out of descriptors.

netd raises its soft C{RLIMIT_NOFILE} to the hard limit when it starts, as
nginx (C{worker_rlimit_nofile}) and systemd services (C{LimitNOFILE=}) do: the
soft limit is often 1,024 while the hard one is far higher, and every stream
connection costs a descriptor.  A service's C{max_connections} defaults to a
share of that limit (L{defaultMaxConnections}), so that a connection flood meets
the service's limit, where the oldest idle connection makes room
(L{netd.stream.guard.ConnectionLimiter}), before the process runs out of descriptors.

When it runs out all the same (other services, upstream sockets, a limit
lowered from outside), C{accept} fails with C{EMFILE} or C{ENFILE} while the
connection waits in the listen queue, and the socket stays readable: a loop that
only retries spins.  netd's ports stop accepting for a moment instead, as nginx
does, count and log it (at a bounded rate) on the service, and ask it to close
its stalest connection (L{IOutOfDescriptors}); the waiting clients stay queued
in the backlog and are accepted once descriptors are free.
"""

from __future__ import annotations

import resource
import socket
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

MAX_CONNECTIONS_CAP = 16384
"""
The largest default C{max_connections}, however high the open-file limit: past
this, memory rather than descriptors is what a connection flood exhausts.
"""

UNLIMITED_FILES = 1 << 20
"""
The soft limit asked for when the hard limit is unlimited (Linux's default
C{fs.nr_open}).
"""

ACCEPT_PAUSE_FIRST = 0.01
"""
Seconds a port stops accepting the first time it runs out of descriptors; each
further time in a row doubles it, up to L{ACCEPT_PAUSE_LONGEST}.
"""

ACCEPT_PAUSE_LONGEST = 1.0
"""
The longest pause of a port that keeps running out of descriptors (nginx waits
half a second, Go's HTTP server one at most).
"""

log = Logger(namespace="netd.reactors.rlimits")


def raiseOpenFileLimit() -> tuple[int, int]:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard one (to L{UNLIMITED_FILES}
    when that is unlimited), and log the figure.

    @return: the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as e:
            log.warn(
                "open-file limit stays {soft} (raising it to {hard} failed: {error})",
                soft=soft,
                hard=wanted,
                error=str(e),
                event="open_file_limit",
            )
            return soft, soft
    now = openFileLimit()
    log.info(
        "open-file limit: {limit} descriptors (soft limit was {before}, hard limit {hard})",
        limit=now,
        before=soft,
        hard="unlimited" if hard == resource.RLIM_INFINITY else hard,
        event="open_file_limit",
    )
    return soft, now


def openFileLimit() -> int:
    """
    The soft C{RLIMIT_NOFILE} now (L{UNLIMITED_FILES} when unlimited).
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def defaultMaxConnections(limit: int | None = None) -> int:
    """
    What C{max_connections} is when the config leaves it out: half the
    open-file limit (the other half for the other services, upstream
    connections, files and the control API, as HAProxy halves it for its two
    sides), at most L{MAX_CONNECTIONS_CAP}, at least 1.

    @param limit: the open-file limit; the process's own (L{openFileLimit})
        when L{None}.
    """
    if limit is None:
        limit = openFileLimit()
    return max(1, min(limit // 2, MAX_CONNECTIONS_CAP))


class IOutOfDescriptors(Interface):
    """
    A factory that wants to know when its port could not accept for want of
    descriptors (L{netd.stream.guard.ConnectionLimiter}).
    """

    def outOfDescriptors(error: OSError) -> None:
        """
        Accepting failed with C{error} (C{EMFILE} or C{ENFILE}): count it,
        log it and make room if it can.
        """

    counters = Attribute("The service's counters.")


def reportOutOfDescriptors(factory: Any, error: OSError) -> None:
    """
    Tell the first factory in C{factory}'s chain of C{wrappedFactory} that
    provides L{IOutOfDescriptors} (the service's limiter behind a PROXY
    header's wrapper, say), or log it for netd as a whole when none does (the
    control API's port).
    """
    target = factory
    while target is not None:
        if IOutOfDescriptors.providedBy(target):
            target.outOfDescriptors(error)
            return
        target = getattr(target, "wrappedFactory", None)
    _processWarning.emit(error=str(error))


class BoundedWarning:
    """
    A warning logged at most once per C{interval} seconds: the first time at
    once, then the first time after each interval, saying how many more
    happened since the last line.  A flood of one kind of event costs a
    line per interval, not one per event.
    """

    def __init__(self, log: Logger, format: str, clock: IReactorTime | None = None, interval: float = 10.0) -> None:
        """
        @param format: the line's PEP 3101 format; it gets the fields given to
            L{emit} and C{suppressed}, the number not logged since the last line.
        @param clock: what tells the time; the global reactor when L{None}.
        """
        self._log = log
        self._format = format
        self._clock = clock
        self._interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def emit(self, **fields: Any) -> None:
        """
        Log the warning with C{fields}, unless one was logged less than the interval ago.
        """
        clock: Any = self._clock
        if clock is None:
            from twisted.internet import reactor as clock
        now = clock.seconds()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        self._log.warn(self._format, suppressed=suppressed, **fields)


_processWarning = BoundedWarning(
    log,
    "out of file descriptors at accept ({error}) ({suppressed} more since the last such line)",
)


def nextPause(previous: float) -> float:
    """
    How long a port stops accepting after running out of descriptors, given
    its previous pause (0 when the previous accept succeeded).
    """
    return ACCEPT_PAUSE_FIRST if previous <= 0 else min(previous * 2, ACCEPT_PAUSE_LONGEST)


SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def systemBacklog(path: str = SOMAXCONN_PATH) -> int:
    """
    The listen backlog netd asks for when a listen string sets none: the
    system's largest, C{net.core.somaxconn}, as Go's C{net} package reads it
    (Twisted's default is 50); the C library's C{SOMAXCONN} where it cannot be
    read.  The kernel caps any backlog at this figure anyway.
    """
    try:
        with open(path, "rb") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return socket.SOMAXCONN
    return max(1, min(value, 65535))
