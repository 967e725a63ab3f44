"""
systemd integration, written against its documented protocols (no
libsystemd): notification (C{sd_notify(3)}, a no-op without
C{$NOTIFY_SOCKET}, so netd behaves the same outside systemd), the watchdog
(pinged at half C{$WATCHDOG_USEC}), and the one gap netd fills in Twisted's
socket activation (L{completeListenNames}).  docs/service.md, "Design notes".
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    # Imported where used: the entry points import this module first thing, and
    # the pytest plugin (netd.testing.harness) should not pay for twisted.internet.
    from twisted.internet.task import LoopingCall

log = Logger(namespace="netd.daemon.systemd")


def _monotonicMicroseconds() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, the clock of C{MONOTONIC_USEC}.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notifyAddress(value: str | None) -> str | None:
    """
    The socket address of a C{$NOTIFY_SOCKET} value: a path as is, C{@name}
    as C{\\0name} (the abstract namespace); L{None} for an unset or empty value
    or one in a form netd does not speak (such as C{vsock:}).
    """
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        return "\0" + value[1:]
    return None


def formatMessage(fields: list[tuple[str, str]]) -> bytes:
    """
    One notification datagram: C{VAR=VALUE} lines joined by newlines.  A
    newline inside a value would start a bogus assignment, so it becomes a space.
    """
    return "\n".join(f"{name}={value.replace(chr(10), ' ')}" for name, value in fields).encode("utf-8")


class Notifier:
    """
    Sends C{sd_notify} messages to the service manager, or nothing when there
    is none (no C{$NOTIFY_SOCKET}).

    A message that cannot be sent is logged (once per distinct error) and
    otherwise ignored: the service manager being away must never stop netd.

    The daemon calls L{ready} once every service listens and L{stopping} when it
    stops; a reload is wrapped in L{reloading} and L{ready}.
    """

    def __init__(
        self,
        address: str | None,
        *,
        monotonic: Callable[[], int] = _monotonicMicroseconds,
        makeSocket: Callable[[], socket.socket] | None = None,
    ) -> None:
        """
        @param address: the notification socket's address (see
            L{notifyAddress}); L{None} makes every method a no-op.
        @param monotonic: C{CLOCK_MONOTONIC} in microseconds, for C{MONOTONIC_USEC}.
        @param makeSocket: makes the datagram socket a message is sent with.
        """
        self.address = address
        self._monotonic = monotonic
        self._makeSocket = makeSocket or (
            lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        )
        self._reported: set[str] = set()

    @classmethod
    def fromEnvironment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """
        A notifier for C{$NOTIFY_SOCKET} of C{environ} (the process's
        environment by default); a disabled one when it is unset.
        """
        environ = os.environ if environ is None else environ
        value = environ.get("NOTIFY_SOCKET")
        address = notifyAddress(value)
        if value and address is None:
            log.warn(
                "NOTIFY_SOCKET={value!r} is neither a path nor an @abstract name; not notifying systemd", value=value
            )
        return cls(address)

    @classmethod
    def disabled(cls) -> Notifier:
        """
        A notifier that sends nothing.
        """
        return cls(None)

    @property
    def enabled(self) -> bool:
        """
        Whether messages go anywhere.
        """
        return self.address is not None

    def send(self, *fields: tuple[str, str]) -> bool:
        """
        Send one datagram of C{VAR=VALUE} lines.

        @return: whether it was sent.
        """
        if self.address is None:
            return False
        try:
            with self._makeSocket() as sock:
                sock.sendto(formatMessage(list(fields)), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self.address)
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
            if error not in self._reported:
                self._reported.add(error)
                log.warn(
                    "cannot notify systemd at {address}: {error}",
                    address=self.address.replace("\0", "@"),
                    error=error,
                )
            return False
        return True

    def _withStatus(self, fields: list[tuple[str, str]], status: str | None) -> bool:
        if status is not None:
            fields.append(("STATUS", status))
        return self.send(*fields)

    def ready(self, status: str | None = None) -> bool:
        """
        C{READY=1}: every service listens (after start, or after a reload).
        """
        return self._withStatus([("READY", "1")], status)

    def reloading(self, status: str | None = "reloading the config") -> bool:
        """
        C{RELOADING=1} with C{MONOTONIC_USEC}: a reload has begun; send
        L{ready} when it is over, whether it worked or not.
        """
        return self._withStatus([("RELOADING", "1"), ("MONOTONIC_USEC", str(self._monotonic()))], status)

    def stopping(self, status: str | None = "stopping: closing listeners, draining connections") -> bool:
        """
        C{STOPPING=1}: netd has begun to shut down.
        """
        return self._withStatus([("STOPPING", "1")], status)

    def status(self, text: str) -> bool:
        """
        C{STATUS=}: one line shown by C{systemctl status}.
        """
        return self.send(("STATUS", text))

    def watchdog(self) -> bool:
        """
        C{WATCHDOG=1}: netd is alive.
        """
        return self.send(("WATCHDOG", "1"))


def watchdogInterval(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """
    Seconds between watchdog pings: half of C{$WATCHDOG_USEC}, as
    C{sd_watchdog_enabled(3)} advises; L{None} when no watchdog is asked for,
    the value is not a positive number, or C{$WATCHDOG_PID} names another process.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    value = environ.get("WATCHDOG_USEC", "")
    try:
        microseconds = int(value)
    except ValueError:
        return None
    if microseconds <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return microseconds / 2_000_000


def startWatchdog(
    notifier: Notifier, clock: Any, environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> LoopingCall | None:
    """
    Ping the watchdog now and every L{watchdogInterval} seconds on C{clock} (the
    reactor), when systemd asks for it and there is a socket to ping.

    @return: the running loop (C{.stop()} it to stop pinging), or L{None}.
    """
    interval = watchdogInterval(environ, pid)
    if interval is None or not notifier.enabled:
        return None
    from twisted.internet.task import LoopingCall

    loop = LoopingCall(notifier.watchdog)
    loop.clock = clock
    loop.start(interval, now=True)
    log.info("pinging the systemd watchdog every {interval} seconds", interval=interval)
    return loop


def completeListenNames(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> None:
    """
    Set C{$LISTEN_FDNAMES} to C{unknown} for each passed socket when sockets were
    passed to this process without names: Twisted's C{systemd:} endpoint ignores
    every passed socket unless there are as many names as sockets.  The entry
    points call this before they import C{twisted.internet.endpoints}, which reads
    the environment as it is imported.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    if environ.get("LISTEN_PID") != str(pid) or "LISTEN_FDNAMES" in environ:
        return
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return
    if count > 0:
        environ["LISTEN_FDNAMES"] = ":".join(["unknown"] * count)
