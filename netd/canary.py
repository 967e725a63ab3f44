"""
Start-up checks of the private names netd's fast paths rest on.

netd's reactors, framings and TLS record pump are fast because they reach
into Twisted's, pyOpenSSL's, uvloop's and Linux's internals (see the "Private
internals" section of docs/performance.md).  A release of a dependency may
rename or change what they use; each module that holds such a use declares a
L{Canary} for it,
which the code choosing between the fast path and its public fallback asks
once (L{Canary.alive}).  A canary that fails logs one warning, naming what
failed and the fallback taken, and netd serves on the public path.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

_log = Logger(namespace="netd.canary")


class CanaryFailed(Exception):
    """
    A private name a fast path needs is missing or does not behave.
    """


def require(condition: object, what: str) -> None:
    """
    Raise L{CanaryFailed} saying C{what} was expected, unless C{condition} holds.
    """
    if not condition:
        raise CanaryFailed(what)


def requireNames(owner: object, names: str, label: str) -> None:
    """
    Raise L{CanaryFailed} unless C{owner} has every attribute of the
    space-separated C{names}; C{label} names C{owner} in the message.
    """
    missing = [name for name in names.split() if not hasattr(owner, name)]
    require(not missing, f"{label} has no {', '.join(missing)}")


class Canary:
    """
    One start-up check of one private use: run the first time L{alive} is
    asked, its answer kept for the life of the process.

    @ivar name: what is checked (for the warning): C{"uvloop reactor"}, say.
    @ivar fallback: what netd does instead when the check fails (for the warning).
    """

    def __init__(self, name: str, check: Callable[[], None], fallback: str) -> None:
        """
        @param check: raises (L{CanaryFailed}, or whatever the private use
            raises) when a private name is missing or misbehaves.
        """
        self.name = name
        self.fallback = fallback
        self._check = check
        self._alive: bool | None = None

    def alive(self) -> bool:
        """
        Whether the fast path may be taken: the check's answer, run once;
        a failure is logged as one warning.
        """
        if self._alive is None:
            try:
                self._check()
            except Exception as e:
                self._alive = False
                _log.warn(
                    "{name}: a private API netd relies on is missing or changed ({error}); {fallback}",
                    name=self.name,
                    error=f"{type(e).__name__}: {e}",
                    fallback=self.fallback,
                    event="private_api_fallback",
                )
            else:
                self._alive = True
        return self._alive
