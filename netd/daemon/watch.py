"""
C{[daemon] watch_config}: reload the config file when its content changes,
as SIGHUP does.

The file is read through its path on every check, its symlinks followed
afresh, and the SHA-256 of its bytes compared with the running config's
(L{NetdConfig.digest}), as CoreDNS's reload plugin compares a checksum: the
update of a Kubernetes ConfigMap volume, which writes a new timestamped
folder and renames a C{..data} symlink over the old one rather than writing
the file, is seen like any edit, with nothing that depends on how inotify
reports a symlink swap.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from netd.config.options import ConfigError
from netd.daemon.daemon import Daemon
from netd.daemon.service import ReloadInProgress, ServiceStartError

log = Logger(namespace="netd.daemon.watch")

JITTER = (0.5, 1.5)
"""
Each wait between two checks is C{[daemon] watch_interval} times a number
drawn from this range (CoreDNS's reload plugin waits its interval plus or
minus a jitter of half of it by default), so that netds started together
from one ConfigMap do not all reload at the same moment.
"""


class ConfigWatch:
    """
    Reads the config file every C{watch_interval} (jittered) and reloads it
    through L{Daemon.reload}, the reload SIGHUP and C{POST /reload} run, when
    its bytes differ from those of the running config.

    Content whose reload failed is remembered and not tried again until the
    file changes once more; a file that cannot be read (deleted, or caught
    between two steps of a swap) is logged once and the running config kept.
    A reload by SIGHUP or the control API changes the running config's
    digest, so the watch does not reload the same content a second time.
    """

    def __init__(
        self,
        daemon: Daemon,
        path: str,
        clock: IReactorTime,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        """
        @param path: the config file, as given to netd (read through any symlinks).
        @param uniform: draws the jitter factor from L{JITTER}.
        """
        self.daemon = daemon
        self.path = path
        self.clock = clock
        self.uniform = uniform
        self.refused: str | None = None
        """
        The digest of the content whose reload by this watch failed last.
        """
        self.unreadable = False
        self.watching = False
        self._next: IDelayedCall | None = None

    def start(self) -> None:
        """
        Check from now on, the first time one (jittered) interval from now.
        """
        self.watching = True
        log.info(
            "watching {path} for changes every {interval} seconds",
            path=self.path,
            interval=self.daemon.config.daemon.watch_interval,
        )
        self._schedule()

    def stop(self) -> None:
        """
        Check no more (a reload already started still finishes).
        """
        self.watching = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _schedule(self) -> None:
        if self.watching:
            delay = self.daemon.config.daemon.watch_interval * self.uniform(*JITTER)
            self._next = self.clock.callLater(delay, self.check)

    def check(self) -> Deferred[None]:
        """
        Read the file once and reload it if its content is new; the next
        check is scheduled once this one (and its reload) is over.

        @return: fires when the check is over; never fails.
        """
        self._next = None
        digest = self._read()
        if digest is None or digest in (self.daemon.config.digest, self.refused):
            self._schedule()
            return succeed(None)
        log.info(
            "watch_config: {path} changed (sha256 {digest}): reloading the config",
            path=self.path,
            digest=digest[:12],
        )
        reloading = Deferred.fromCoroutine(self.daemon.reload())
        reloading.addCallbacks(self._reloaded, self._failed, errbackArgs=(digest,))
        return reloading.addBoth(lambda _: self._schedule())

    def _read(self) -> str | None:
        """
        The SHA-256 of the file's bytes, or L{None} if it cannot be read now
        (logged once, until it can be read again).
        """
        try:
            with open(self.path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            if not self.unreadable:
                log.warn(
                    "watch_config: cannot read {path} ({error}); the running config stays, and netd checks again "
                    "every {interval} seconds",
                    path=self.path,
                    error=e.strerror or str(e),
                    interval=self.daemon.config.daemon.watch_interval,
                )
            self.unreadable = True
            return None
        if self.unreadable:
            log.info("watch_config: {path} can be read again", path=self.path)
            self.unreadable = False
        return digest

    def _reloaded(self, summary: object) -> None:
        self.refused = None

    def _failed(self, failure: Failure, digest: str) -> None:
        """
        Log a failed reload and, unless it only met another reload, remember
        the content so that it is not tried again on every check.
        """
        error = failure.value
        if isinstance(error, ReloadInProgress):
            log.info("watch_config: {error}; the file is checked again at the next interval", error=str(error))
            return
        self.refused = digest
        message = (
            "watch_config: the reload of {path} failed; the previous config goes on serving, and the file is "
            "reloaded once its content changes again (or on SIGHUP)"
        )
        if isinstance(error, (ConfigError, ServiceStartError)):
            log.error(message, path=self.path, digest=digest[:12])
        else:
            log.failure(message, failure, path=self.path, digest=digest[:12])
