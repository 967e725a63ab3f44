"""
The one start sequence of netd, shared by C{netd run} (L{netd.daemon.cli}) and
C{twistd netd} (L{netd.daemon.tap}): an application service whose children are
the daemon's services (L{Daemon}) and, beside them, the control API.

The entry points only parse their options, build a L{NetdApplication} and hand
it to their runner, which calls L{NetdApplication.privilegedStartService} (bind
everything, all or nothing, with the rights netd was started with, then drop
them), L{NetdApplication.startService} (serve once the reactor runs) and
L{NetdApplication.stopService} (drain, then close the control API).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from netd.config.options import Problem, renderPath
from netd.config.spec import DaemonSpec, NetdConfig
from netd.daemon.daemon import Daemon
from netd.daemon.hangup import ReloadSignal
from netd.daemon.privileges import PrivilegeDrop, PrivilegeError
from netd.daemon.service import ServiceStartError
from netd.daemon.systemd import Notifier, startWatchdog
from netd.daemon.watch import ConfigWatch
from netd.registry import PluginRegistry
from netd.words import counted

if TYPE_CHECKING:
    from netd.daemon.api.server import ControlAPI
    from netd.daemon.toxiproxy.server import ToxiproxyAPI

log = Logger(namespace="netd.daemon.application")


class NetdApplication(MultiService):
    """
    The services of one config and their control API, started all or
    nothing, served once the reactor runs, reloaded on SIGHUP (once
    L{catchReloadSignal} is called) and when the file changes (with
    C{[daemon] watch_config}), and stopped with a drain.

    @ivar daemon: the daemon's services, once L{build} has made them.
    @ivar api: the control API, a sibling of L{daemon}; L{None} when
        C{[daemon] admin = false}.
    @ivar toxiproxy: the toxiproxy-compatible API, another sibling; L{None}
        unless C{[daemon] toxiproxy} is set.
    """

    name = "netd"
    daemon: Daemon
    api: ControlAPI | None
    toxiproxy: ToxiproxyAPI | None

    def __init__(
        self,
        config: NetdConfig,
        reactor: Any,
        notifier: Notifier | None = None,
        *,
        portsFile: str | None = None,
        registry: PluginRegistry | None = None,
        reloadOnHangup: bool = False,
        daemonOverrides: Mapping[str, Any] | None = None,
    ) -> None:
        """
        @param portsFile: where to write the bound addresses as JSON once every
            service listens, and again after each reload (written whole, by
            rename, so a reader never sees half).
        @param registry: the plugins a reload decodes the file with.
        @param reloadOnHangup: whether SIGHUP reloads the config (the handler
            is installed by L{privilegedStartService} at the latest).
        @param daemonOverrides: C{[daemon]} keys given on the command line,
            which C{config} has already and every reload keeps
            (L{netd.daemon.daemon.withDaemonOverrides}).
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier.disabled()
        self.portsFile = portsFile
        self.registry = registry
        self.daemonOverrides = daemonOverrides
        self._built = False
        self.watchdog: LoopingCall | None = None
        self.logObserver: ILogObserver | None = None
        """
        netd's log observer, offered to the twistd application this joins
        (L{setServiceParent}); L{None} to keep the runner's logging.
        """
        self.reloadOnHangup = reloadOnHangup
        self.reloadSignal: ReloadSignal | None = None
        self.configWatch: ConfigWatch | None = None
        """
        Reloads the config file when it changes (C{[daemon] watch_config}),
        from the moment netd serves.
        """
        self._binding: Deferred[None] | None = None
        self._serving: list[Deferred[None]] = []
        self._outcome: Failure | None = None
        self._served = False

    # The start, in the order a runner calls it.

    def setServiceParent(self, parent: Any) -> None:
        """
        Join C{parent}; when it is twistd's application (a L{Componentized})
        that has no log observer of its own, give it L{logObserver}, which
        twistd then logs to (its documented way for an application to choose
        its logging, as a C{.tac} file would).
        """
        if (
            self.logObserver is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver, None) is None
        ):
            parent.setComponent(ILogObserver, self.logObserver)
        super().setServiceParent(parent)

    def catchReloadSignal(self) -> None:
        """
        Reload the config on SIGHUP from now on (before the reactor runs:
        SIGHUP's default action ends the process); a runner that starts
        the application only once the reactor runs calls this first.
        """
        self.reloadSignal = ReloadSignal(self.reactor)
        self.reloadSignal.install()

    def privilegedStartService(self) -> None:
        """
        Listen on every address, with the rights netd was started with, then
        drop to C{[daemon] user} if the config has one; a failure is logged
        and exits with status 1, leaving nothing listening.
        """
        Service.privilegedStartService(self)
        if self.reloadOnHangup and self.reloadSignal is None:
            self.catchReloadSignal()
        self.notifier.status(f"starting {counted(len(self.config.services), 'service')} from {self.config.source}")
        try:
            dropPrivileges = PrivilegeDrop.prepare(
                self.config.daemon.user, self.config.daemon.group, self.config.daemon.state_dir
            )
        except PrivilegeError as e:
            self.refuse(e)
        try:
            self.build()
        except ServiceStartError as e:
            self.refuse(e)
        binding = Deferred.fromCoroutine(self.bind(dropPrivileges))
        if binding.called:
            failed: list[Failure] = []
            binding.addErrback(failed.append)
            if failed:
                error = failed[0].value
                if isinstance(error, (ServiceStartError, PrivilegeError)):
                    self.refuse(error)
                failed[0].raiseException()
        self._binding = binding

    def startService(self) -> None:
        """
        Ping systemd's watchdog, and serve once the reactor runs (its signal
        handlers are installed then, so that a stop asked for at once drains).
        """
        Service.startService(self)
        self.watchdog = startWatchdog(self.notifier, self.reactor)
        self.reactor.callWhenRunning(self._serveWhenBound)

    def _serveWhenBound(self) -> None:
        Deferred.fromCoroutine(self._serve()).addErrback(self._startFailed)

    async def _serve(self) -> None:
        """
        Once every address is bound (at once, nearly always): mark the
        services running, write the ports file and tell systemd.
        """
        if self._binding is None or not self.running:
            return
        await self._binding
        if not self.running:
            return
        self.serve()
        self._served = True
        self._settle(None)
        if self.reloadSignal is not None:
            self.reloadSignal.attach(self.daemon)

    def _startFailed(self, failure: Failure) -> None:
        """
        The start failed after the reactor began to run: say why and stop it.
        """
        if isinstance(failure.value, (ServiceStartError, PrivilegeError)):
            try:
                self.refuse(failure.value)
            except SystemExit:
                pass
        else:
            log.failure("netd cannot start", failure)
        self._settle(Failure(SystemExit(1)))
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def whenServing(self) -> Deferred[None]:
        """
        Fires once netd serves; fails with L{SystemExit} if it cannot start.
        """
        waiter: Deferred[None] = Deferred()
        if self._served:
            waiter.callback(None)
        elif self._outcome is not None:
            waiter.errback(self._outcome)
        else:
            self._serving.append(waiter)
        return waiter

    def _settle(self, outcome: Failure | None) -> None:
        self._outcome = outcome
        waiters, self._serving = self._serving, []
        for waiter in waiters:
            if outcome is None:
                waiter.callback(None)
            else:
                waiter.errback(outcome)

    def refuse(self, error: ServiceStartError | PrivilegeError) -> NoReturn:
        """
        Say why netd cannot start (log and systemd status), and exit with status 1.

        @raise SystemExit: always.
        """
        problem = startErrorProblem(self.config, error)
        self.notifier.status(f"cannot start: {problem.render(self.config.source)}")
        log.critical(
            "netd cannot start: {error}",
            error=problem.render(self.config.source),
            config_file=self.config.source,
            key=renderPath(problem.path),
        )
        raise SystemExit(1) from None

    # The steps, also called on their own by tests.

    def build(self) -> None:
        """
        Make the daemon's services and the control API beside them, once:
        after the privilege drop is prepared, since building a service may
        write to the state directory (the C{certificate = "auto"} set).

        @raise ServiceStartError: a service's plugin or TLS files failed.
        """
        if self._built:
            return
        self.daemon = Daemon(
            self.config, self.reactor, self.notifier, registry=self.registry, daemonOverrides=self.daemonOverrides
        )
        self._built = True
        self.daemon.setName("services")
        self.daemon.setServiceParent(self)
        self.daemon.addressObservers.append(self.writePortsFile)
        self.api = _controlAPI(self.daemon, self.config.daemon, self.reactor)
        if self.api is not None:
            self.api.setServiceParent(self)
            self.daemon.reloadParticipants.append(self.api)
        self.toxiproxy = _toxiproxyAPI(self.daemon, self.config.daemon, self.reactor)
        if self.toxiproxy is not None:
            self.toxiproxy.setServiceParent(self)
            if self.api is not None:
                self.api.otherSites.append(self.toxiproxy.site)

    async def bind(self, beforeServing: Callable[[], object] | None = None) -> None:
        """
        Listen on everything (the control API first), then call
        C{beforeServing} (the privilege drop); if either fails, every listener
        is closed and the exception propagates.

        @raise ServiceStartError: an address cannot be listened on.
        """
        try:
            if self.api is not None:
                await self.api.listen()
            if self.toxiproxy is not None:
                await self.toxiproxy.listen()
            await self.daemon.listen()
            if beforeServing is not None:
                beforeServing()
        except BaseException:
            await self.releaseListeners()
            raise

    async def start(self, beforeServing: Callable[[], object] | None = None) -> dict[str, list[dict[str, object]]]:
        """
        L{build}, L{bind}, then L{serve}: the whole start without a runner.
        """
        self.build()
        await self.bind(beforeServing)
        return self.serve()

    def serve(self) -> dict[str, list[dict[str, object]]]:
        """
        Mark the services running, write the ports file, tell systemd, and
        watch the config file if C{[daemon] watch_config} says so.
        """
        report = self.daemon.serve()
        if self.config.daemon.watch_config:
            if self.daemon.configPath is None:
                log.warn("watch_config: the embedded default config has no file to watch")
            else:
                self.configWatch = ConfigWatch(self.daemon, self.daemon.configPath, self.reactor)
                self.configWatch.start()
        return report

    async def releaseListeners(self) -> None:
        """
        Close every listener, the control API's last.
        """
        await self.daemon.releaseListeners()
        if self.toxiproxy is not None:
            await self.toxiproxy.stopListening()
        if self.api is not None:
            await self.api.stopListening()

    def writePortsFile(self) -> None:
        """
        Write the bound addresses to the ports file, if there is one: the
        services under C{"services"}, the control API's address under
        C{"admin"} beside it (so that no service name can clash with it).
        """
        if self.portsFile is None:
            return
        document: dict[str, object] = {"pid": os.getpid(), "services": self.daemon.boundAddresses()}
        if self.api is not None:
            document["admin"] = self.api.describe()
        if self.toxiproxy is not None:
            document["toxiproxy"] = self.toxiproxy.describe()
        writeAtomically(self.portsFile, json.dumps(document, indent=2) + "\n")

    def stopService(self) -> Deferred[None]:
        """
        Stop pinging the watchdog, drain the services (L{Daemon.stopService}),
        then close the control API, which answers (C{/ready}: 503) until then.
        """
        Service.stopService(self)
        if self.watchdog is not None and self.watchdog.running:
            self.watchdog.stop()
        if self.configWatch is not None:
            self.configWatch.stop()
        if not self._built:
            return Deferred.fromCoroutine(_nothing())
        stopped = self.daemon.stopService()
        for sibling in (self.toxiproxy, self.api):
            if sibling is not None:
                stopped.addBoth(_after(sibling.stopListening))
        return stopped


async def _nothing() -> None:
    return None


def _controlAPI(daemon: Daemon, spec: DaemonSpec, reactor: Any) -> ControlAPI | None:
    """
    The control API of C{spec}, or L{None} when C{admin = false}.

    L{netd.daemon.api} is imported here rather than with this module: with
    twisted.web it is a tenth of start-up's CPU, which a daemon without the
    control API does not pay.
    """
    if spec.admin.address is None:
        return None
    from netd.daemon.api.server import ControlAPI

    return ControlAPI(daemon, spec, reactor)


def _toxiproxyAPI(daemon: Daemon, spec: DaemonSpec, reactor: Any) -> ToxiproxyAPI | None:
    """
    The toxiproxy-compatible API of C{spec}, or L{None} when C{toxiproxy} is
    unset (imported here for the reason L{_controlAPI} gives).
    """
    if spec.toxiproxy.address is None:
        return None
    from netd.daemon.toxiproxy.server import ToxiproxyAPI

    return ToxiproxyAPI(daemon, spec, reactor)


def _after(stop: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[object], Deferred[object]]:
    """
    A callback that runs C{stop} and then passes on the result it was given.
    """

    def then(result: object) -> Deferred[object]:
        return Deferred.fromCoroutine(stop()).addCallback(lambda _: result)

    return then


def startErrorProblem(config: NetdConfig, error: ServiceStartError | PrivilegeError) -> Problem:
    """
    A start error as the config problem it is: at its key path
    (C{services[1].tls.certificate}, C{daemon.admin_token_file}), as
    C{netd check} reports it.
    """
    if isinstance(error, PrivilegeError):
        return Problem(error.key, str(error))
    if error.service is None:
        return Problem(error.key, error.reason)
    index = next((i for i, spec in enumerate(config.services) if spec.name == error.service), None)
    if index is None:
        return Problem(error.key, str(error))
    return Problem(("services", index) + error.key, error.reason)


def writeAtomically(path: str, text: str) -> None:
    """
    Replace C{path} with C{text} in one step (a temporary file in the same
    directory, renamed over it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".netd-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
