"""
SIGHUP as a reload of the config, for both runners of netd's application.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from netd.config.options import ConfigError
from netd.daemon.daemon import Daemon
from netd.daemon.service import ReloadInProgress, ServiceStartError

log = Logger(namespace="netd.daemon.hangup")


class ReloadSignal:
    """
    SIGHUP reloads the config (L{Daemon.reload}, which tells systemd
    C{RELOADING=1} then C{READY=1}).

    The handler is installed before the reactor runs, because SIGHUP's default
    action ends the process: a reload asked for while netd is still starting
    (a deploy script that writes the file and signals at once) is remembered
    and done once every service listens.  The handler only hands the work to
    the reactor, and a failed reload is logged, never fatal.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.daemon: Daemon | None = None
        self.pending = False

    def install(self) -> None:
        """
        Catch SIGHUP from now on.
        """
        signal.signal(signal.SIGHUP, self._onSignal)

    def _onSignal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._requested)

    def _requested(self) -> None:
        """
        A SIGHUP arrived: reload now, or once the daemon has started.
        """
        if self.daemon is None:
            if not self.pending:
                log.info("SIGHUP while starting: the config is reloaded once every service listens")
            self.pending = True
            return
        self._reload(self.daemon)

    def attach(self, daemon: Daemon) -> None:
        """
        The daemon has started: do a reload that was asked for meanwhile.
        """
        self.daemon = daemon
        if self.pending:
            self.pending = False
            self._reload(daemon)

    def _reload(self, daemon: Daemon) -> None:
        log.info("SIGHUP: reloading the config")
        Deferred.fromCoroutine(daemon.reload()).addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        error = failure.value
        if isinstance(error, ReloadInProgress):
            log.warn("SIGHUP: {error}; this one is ignored", error=str(error))
        elif isinstance(error, (ConfigError, ServiceStartError)):
            log.error("SIGHUP: the reload failed; the previous config goes on serving")
        else:
            log.failure("SIGHUP: the reload failed; the previous config goes on serving", failure)
