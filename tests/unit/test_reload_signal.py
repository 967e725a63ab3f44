"""
SIGHUP reloads the config, also when it arrives while netd is still starting.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from netd.daemon.hangup import ReloadSignal


class FakeDaemon:
    """
    A daemon that counts its reloads.
    """

    def __init__(self) -> None:
        self.reloads = 0

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return await succeed({})


class ImmediateReactor(Clock):
    """
    A clock whose callFromThread runs the call at once.
    """

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_sighupWhileStartingReloadsOnceStarted() -> None:
    """
    SIGHUPs before the daemon has started are remembered as one reload, done when it attaches.
    """
    reloadSignal = ReloadSignal(ImmediateReactor())
    reloadSignal._onSignal(signal.SIGHUP, None)
    reloadSignal._onSignal(signal.SIGHUP, None)
    daemon = FakeDaemon()
    reloadSignal.attach(daemon)  # type: ignore[arg-type]
    assert daemon.reloads == 1
    assert not reloadSignal.pending


def test_sighupAfterStartReloadsAtOnce() -> None:
    """
    Once the daemon has started, each SIGHUP reloads it, and none is left pending.
    """
    reloadSignal = ReloadSignal(ImmediateReactor())
    daemon = FakeDaemon()
    reloadSignal.attach(daemon)  # type: ignore[arg-type]
    assert daemon.reloads == 0
    reloadSignal._onSignal(signal.SIGHUP, None)
    assert daemon.reloads == 1


def test_installCatchesSighup() -> None:
    """
    After install, SIGHUP's disposition is netd's handler rather than the default that ends the process.
    """
    previous = signal.getsignal(signal.SIGHUP)
    try:
        reloadSignal = ReloadSignal(ImmediateReactor())
        reloadSignal.install()
        assert signal.getsignal(signal.SIGHUP) == reloadSignal._onSignal
    finally:
        signal.signal(signal.SIGHUP, previous)
