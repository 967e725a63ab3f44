"""
netd under twistd: C{twistd -n netd -c FILE}.

The drop-in C{twisted/plugins/netd_plugin.py} names this module as the
C{netd} L{IServiceMaker}, so twistd's own options apply around the same
services as C{netd run}: C{--pidfile}, C{--logfile}, C{--uid}/C{--gid},
C{--reactor}, daemonizing without C{-n}.

twistd calls L{NetdApplication.privilegedStartService} with its own rights
(root, typically) and then switches to C{--uid}/C{--gid}: netd listens there,
so ports below 1024 work with C{--uid}.  The rest (marking the services
running, the ports file, C{READY=1}) waits until the reactor runs, as under
C{netd run}.  Logging is twistd's (C{--logfile}, C{--logger}); the config's
C{log_format} and C{log_level} are not applied.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from netd import __version__
from netd.daemon.cli import startErrorProblem
from netd.config.spec import NetdConfig, loadConfig
from netd.daemon.daemon import Daemon
from netd.config.options import ConfigError, renderPath
from netd.registry import discoverPlugins
from netd.daemon.privileges import PrivilegeDrop, PrivilegeError
from netd.daemon.service import ServiceStartError
from netd.daemon.systemd import Notifier, startWatchdog
from netd.words import counted

log = Logger(namespace="netd.daemon.tap")


class Options(usage.Options):
    """
    The options of C{twistd netd}: those of C{netd run}.
    """

    synopsis = "[-c FILE] [--ports-file FILE]"
    longdesc = (
        "Run the services of a netd config (the embedded default without -c) under twistd. "
        "SIGTERM and SIGINT stop accepting and drain open connections for up to [daemon] shutdown_timeout seconds."
    )
    optParameters = [
        ["config", "c", None, "the TOML config file (default: the embedded default config)"],
        [
            "ports-file",
            None,
            None,
            "once every service listens, write the bound addresses to FILE as JSON (as netd run --ports-file)",
        ],
    ]

    def postOptions(self) -> None:
        """
        Load and validate the config now, so that a bad one is refused as a
        usage error, with every problem, before twistd starts anything.
        """
        try:
            self["netdConfig"] = loadConfig(self["config"], discoverPlugins())
        except ConfigError as e:
            raise usage.UsageError(f"{e}\n{counted(len(e.problems), 'problem')} found; nothing was started.") from None


class NetdApplication(Service):
    """
    The services of one config, started the twistd way: bound in
    L{privilegedStartService}, served once the reactor runs.
    """

    name = "netd"

    def __init__(self, config: NetdConfig, portsFile: str | None, reactor: Any, notifier: Notifier) -> None:
        self.config = config
        self.portsFile = portsFile
        self.reactor = reactor
        self.notifier = notifier
        self.daemon: Daemon | None = None
        self.watchdog: LoopingCall | None = None

    def privilegedStartService(self) -> None:
        """
        Listen on every address, then drop to C{[daemon] user} if the config
        has one; a failure is logged and exits with status 1.
        """
        Service.privilegedStartService(self)
        log.info("netd {version} starting with {source}", version=__version__, source=self.config.source)
        self.notifier.status(f"starting {counted(len(self.config.services), 'service')} from {self.config.source}")
        try:
            dropPrivileges = PrivilegeDrop.prepare(
                self.config.daemon.user, self.config.daemon.group, self.config.daemon.state_dir
            )
            self.daemon = Daemon(self.config, self.reactor, self.notifier)
            listening = Deferred.fromCoroutine(self.daemon.listen())
            outcome: list[object] = []
            listening.addBoth(outcome.append)
            if not outcome:
                raise ServiceStartError("a listener did not bind at once; netd cannot start under twistd with it")
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
            try:
                dropPrivileges()
            except PrivilegeError:
                Deferred.fromCoroutine(self.daemon.releaseListeners())
                raise
        except (ServiceStartError, PrivilegeError) as e:
            problem = startErrorProblem(self.config, e)
            self.notifier.status(f"cannot start: {problem.render(self.config.source)}")
            log.critical(
                "netd cannot start: {error}",
                error=problem.render(self.config.source),
                config_file=self.config.source,
                key=renderPath(problem.path),
            )
            raise SystemExit(1) from None

    def startService(self) -> None:
        """
        Serve once the reactor runs (its signal handlers are installed then).
        """
        Service.startService(self)
        self.watchdog = startWatchdog(self.notifier, self.reactor)
        self.reactor.callWhenRunning(self._serve)

    def _serve(self) -> None:
        if self.daemon is None or not self.running:
            return
        try:
            self.daemon.serve(self.portsFile)
        except Exception:
            log.failure("netd cannot start")
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting and drain (the daemon tells systemd it is stopping).
        """
        Service.stopService(self)
        if self.watchdog is not None and self.watchdog.running:
            self.watchdog.stop()
        if self.daemon is None:
            return Deferred.fromCoroutine(_nothing())
        return self.daemon.stopService()


async def _nothing() -> None:
    return None


def makeService(options: Options) -> IService:
    """
    The twistd service of C{twistd netd}.
    """
    from twisted.internet import reactor

    return NetdApplication(options["netdConfig"], options["ports-file"], reactor, Notifier.fromEnvironment())
