"""
The daemon: every enabled service of a config under one MultiService, started
all-or-nothing, reloaded as a difference by service name (L{Daemon.reload}),
changed one service at a time at runtime (L{Daemon.createService},
L{Daemon.deleteService}), and stopped with a drain.  What serves beside it (the control API) takes part in a
reload as a L{ReloadParticipant}, without this module knowing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from netd.config.options import ConfigError, InvalidValue, Problem
from netd.config.spec import DEFAULT_CONFIG_NAME, AdminAddress, DaemonSpec, NetdConfig, ServiceSpec, loadConfig
from netd.daemon.runtime import RUNTIME_SOURCE, NoSuchService, ServiceExists, decodeServiceTable
from netd.daemon.service import NetService, ReloadInProgress, ServiceStartError
from netd.daemon.systemd import Notifier
from netd.logs import NamedLogger, setLogLevel
from netd.reactors.rlimits import raiseOpenFileLimit
from netd.registry import PluginRegistry, discoverPlugins
from netd.tls.contexts import ServerTLS
from netd.tls.keys import TLSSetupError
from netd.words import counted

LISTEN_RETRY_DELAY = 0.25
"""
Seconds a reload waits before its one retry of a listen that failed, when it
has just closed the old listener on the same address (the port may be
momentarily busy).
"""

RESTART_KEYS = (
    "log_format",
    "state_dir",
    "admin",
    "admin_token_file",
    "admin_max_connections",
    "admin_group",
    "toxiproxy",
    "user",
    "group",
    "watch_config",
)
"""
The C{[daemon]} keys a reload cannot apply: a change to one is logged as
needing a restart, and the running value stays.
"""


def withDaemonOverrides(config: NetdConfig, overrides: Mapping[str, Any]) -> NetdConfig:
    """
    C{config} with C{[daemon]} keys given on the command line (C{netd run
    --admin}) in place of the file's: applied at the start and again to
    every reload's config, so that a reload neither undoes them nor reports
    them as changes.
    """
    return attrs.evolve(config, daemon=attrs.evolve(config.daemon, **overrides)) if overrides else config


def adminOverride(config: NetdConfig, text: str) -> dict[str, Any]:
    """
    The C{[daemon]} override of C{--admin} (C{netd run}, C{twistd netd}):
    the address checked as C{[daemon] admin} is, with the rest of the
    config's C{[daemon]} table (a TCP address other hosts reach needs
    C{admin_token_file}).

    @raise InvalidValue: it is refused; one line per problem.
    """
    overrides: dict[str, Any] = {"admin": AdminAddress.fromConfig(text)}
    daemon = withDaemonOverrides(config, overrides).daemon
    problems = [problem for key, problem in daemon.crossCheck() if key == "admin"]
    if problems:
        raise InvalidValue("\n".join(problems))
    return overrides


class ReloadParticipant(Protocol):
    """
    Something that serves beside the daemon and reloads with it.
    """

    def prepareReload(self, spec: DaemonSpec, source: str) -> Callable[[], None]:
        """
        Get ready for the C{[daemon]} table a reload brings, touching nothing
        that runs.

        @return: what applies it, called once the reload is committed.
        @raise ConfigError: it cannot be applied; the reload changes nothing.
        """


class Daemon(MultiService):
    """
    All services of one config.

    L{start} listens on every address of every service; if any bind fails, the
    ones already bound are released, so that a bad start leaves nothing behind.
    """

    log = NamedLogger(namespace="netd.daemon.daemon")

    def __init__(
        self,
        config: NetdConfig,
        reactor: Any,
        notifier: Notifier | None = None,
        *,
        registry: PluginRegistry | None = None,
        daemonOverrides: Mapping[str, Any] | None = None,
    ) -> None:
        """
        @param registry: the plugins a reload decodes the file with;
            L{discoverPlugins} when L{None}.
        @param daemonOverrides: C{[daemon]} keys that every reload's config
            gets in place of the file's (L{withDaemonOverrides}); C{config}
            has them already.
        """
        super().__init__()
        self.config = config
        self.configPath = None if config.source == DEFAULT_CONFIG_NAME else config.source
        """
        The file L{reload} reads again (the config's source); L{None} for the
        embedded default config.
        """
        self.registry = registry
        self.daemonOverrides = dict(daemonOverrides or {})
        self.reloadParticipants: list[ReloadParticipant] = []
        """
        What reloads with the services (the control API), prepared before
        they change and applied once the reload is committed.
        """
        self.addressObservers: list[Callable[[], object]] = []
        """
        Called once the services listen and after each reload (the ports
        file is written there), before systemd hears C{READY=1}.
        """
        self.runtimeServices: list[str] = []
        """
        The names of the services created through the control API, oldest
        first: a reload keeps them after the file's services, unless the file
        defines the same name (docs/control-api.md, "Services at runtime").
        """
        self._reloading = False
        self._reloadWaiters: list[Deferred[None]] = []
        """
        Stops waiting for the reload in progress to finish or be undone.
        """
        self._draining: set[Deferred[None]] = set()
        self.reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier.disabled()
        """
        Tells systemd how netd is doing: L{serve} sends C{READY=1},
        L{stopService} C{STOPPING=1}; a reload wraps itself in
        C{notifier.reloading()} and C{notifier.ready()}.
        """
        self.openFiles = raiseOpenFileLimit()[1]
        """
        The open-file limit netd runs with, raised to the hard limit before
        the services (whose C{max_connections} defaults to half of it) are built.
        """
        for index, spec in enumerate(config.services):
            if spec.enabled:
                NetService(
                    spec, reactor, config.daemon.shutdown_timeout, config.daemon.state_dir, configIndex=index
                ).setServiceParent(self)
        self.stopping = False
        """
        Whether a stop has begun (the control API's C{/ready} then says 503).
        """

    def netServices(self) -> list[NetService]:
        """
        The services, in config order.
        """
        return list(self)

    async def start(self, beforeServing: Callable[[], object] | None = None) -> dict[str, list[dict[str, object]]]:
        """
        Listen on everything, then mark the services running and report where.

        @param beforeServing: called once everything listens and before any
            client is served (the privilege drop); if it raises, every
            listener is closed and the exception propagates.
        @raise ServiceStartError: when an address cannot be listened on; nothing
            is left listening then.
        """
        await self.listen()
        if beforeServing is not None:
            try:
                beforeServing()
            except BaseException:
                await self.releaseListeners()
                raise
        return self.serve()

    async def listen(self) -> None:
        """
        Listen on every address of every service, all or nothing.

        @raise ServiceStartError: when an address cannot be listened on; nothing
            is left listening then.
        """
        try:
            for service in self.netServices():
                await service.listen()
        except ServiceStartError:
            await self.releaseListeners()
            raise

    async def releaseListeners(self) -> None:
        """
        Close every listener of every service (a start that failed part way).
        """
        await DeferredList([Deferred.fromCoroutine(s.stopListening()) for s in self.netServices()])

    def serve(self) -> dict[str, list[dict[str, object]]]:
        """
        Once L{listen} has bound everything: mark the services running, tell
        the L{addressObservers} (the ports file), and tell systemd that netd
        is ready.
        """
        self.startService()
        report = self.addressesChanged()
        for service in self.netServices():
            bound = report.get(service.spec.name, [])
            self.log.info(
                "service {service} ({plugin}) on {where}",
                service=service.spec.name,
                plugin=service.spec.plugin.name,
                where=", ".join(_describe(b) for b in bound),
                addresses=[_describe(b) for b in bound],
                event="service_started",
            )
        self.log.info(
            "netd is ready: {services} from {source}",
            count=len(report),
            services=counted(len(report), "service"),
            source=self.config.source,
        )
        addresses = sum(len(bound) for bound in report.values())
        self.notifier.ready(
            f"serving {counted(len(report), 'service')} on {counted(addresses, 'address', 'addresses')}"
        )
        return report

    def addressesChanged(self) -> dict[str, list[dict[str, object]]]:
        """
        Tell the L{addressObservers} that the bound addresses are new; return them.
        """
        for observer in self.addressObservers:
            observer()
        return self.boundAddresses()

    async def reload(self) -> dict[str, list[str]]:
        """
        Read the config file again and apply it as a difference, by service name
        (docs/service.md, "Signals", tells what happens to each kind of service);
        systemd hears C{RELOADING=1} then C{READY=1}.

        @return: the service names, by what happened to them.
        @raise ConfigError: the file is invalid, or a plugin or TLS file of a
            service cannot be loaded; nothing was changed.
        @raise ServiceStartError: a new listener could not open; what the
            reload had started is closed, the old listeners reopened.
        @raise ReloadInProgress: another reload runs, or netd is not serving.
        """
        self._beginChange("a reload")
        self.notifier.reloading()
        status = "reload failed; serving the previous config"
        try:
            summary = await self._reload()
            status = "reloaded: " + ", ".join(f"{len(names)} {what}" for what, names in summary.items())
            return summary
        finally:
            if not self.stopping:
                addresses = sum(len(s.ports) for s in self.netServices())
                services = counted(len(self.netServices()), "service")
                self.notifier.ready(f"{status}; serving {services} on {counted(addresses, 'address', 'addresses')}")
            self._endChange()

    def _beginChange(self, what: str) -> None:
        """
        Mark a change of the services (a reload, a runtime addition or
        removal) as running: one at a time, and only while netd serves.

        @raise ReloadInProgress: another change runs, or netd is not serving.
        """
        if self._reloading:
            raise ReloadInProgress(
                f"a reload or a runtime change of the services is in progress; {what} cannot run now"
            )
        if self.stopping or not self.running:
            raise ReloadInProgress(f"netd is not serving (starting or stopping); {what} cannot run now")
        self._reloading = True

    def _endChange(self) -> None:
        """
        The change of the services is over: let a stop that waited for it go on.
        """
        self._reloading = False
        waiters, self._reloadWaiters = self._reloadWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def createService(self, table: object) -> dict[str, list[dict[str, object]]]:
        """
        Create and start one service from a C{[[services]]} table (the
        control API's C{POST /services}), all or nothing, as a reload adds one.

        @return: the service's name to the addresses it listens on.
        @raise ConfigError: the table is invalid, or its plugin or TLS files
            cannot be loaded; each problem's key path is within the table.
        @raise ServiceExists: a service of that name runs.
        @raise ServiceStartError: an address cannot be listened on; nothing listens.
        @raise ReloadInProgress: another change runs, or netd is not serving.
        """
        spec = decodeServiceTable(table, self.registry or discoverPlugins(), self.configPath)
        self._beginChange(f"adding service {spec.name!r}")
        try:
            if spec.name in self.namedServices:
                raise ServiceExists(f"a service named {spec.name!r} runs; delete it first or choose another name")
            daemonSpec = self.config.daemon
            try:
                service = NetService(spec, self.reactor, daemonSpec.shutdown_timeout, daemonSpec.state_dir)
            except ServiceStartError as e:
                raise ConfigError(RUNTIME_SOURCE, [Problem(e.key, e.reason)]) from e
            try:
                await service.listen()
            except ServiceStartError as e:
                await service.stopListening()
                self.log.error("runtime: cannot add service {service}: {error}", service=spec.name, error=str(e))
                raise
            service.setServiceParent(self)
            self.runtimeServices.append(spec.name)
            self.config = attrs.evolve(self.config, services=(*self.config.services, spec))
            bound = self.addressesChanged().get(spec.name, [])
            self._logChange(spec.name, spec.plugin.name, "added", bound)
            return {spec.name: bound}
        finally:
            self._endChange()

    async def deleteService(self, name: str) -> dict[str, list[dict[str, object]]]:
        """
        Stop one service (the control API's C{DELETE /services/NAME}): its
        listeners are closed when this returns, and its connections drain in
        the background, as those of a service a reload removes.

        @return: the service's name to the addresses it listened on.
        @raise NoSuchService: no service has that name.
        @raise ReloadInProgress: another change runs, or netd is not serving.
        """
        self._beginChange(f"removing service {name!r}")
        try:
            service = self.namedServices.get(name)
            if not isinstance(service, NetService):
                known = ", ".join(map(repr, self.namedServices)) or "none"
                raise NoSuchService(f"no service {name!r}; the services are {known}")
            bound = [p.describe() for p in service.ports]
            await service.stopListening()
            self._drain(name, service)
            if name in self.runtimeServices:
                self.runtimeServices.remove(name)
            self.config = attrs.evolve(self.config, services=tuple(s for s in self.config.services if s.name != name))
            self.addressesChanged()
            self._logChange(name, service.spec.plugin.name, "removed", [])
            return {name: bound}
        finally:
            self._endChange()

    def _logChange(self, name: str, plugin: str, what: str, bound: list[dict[str, object]]) -> None:
        """
        Log one service added or removed at runtime, as a reload logs its changes.
        """
        where = ", ".join(_describe(b) for b in bound)
        self.log.info(
            "runtime: service {service} ({plugin}) {what}{where}",
            service=name,
            plugin=plugin,
            what=what,
            where=f" on {where}" if where else "",
            addresses=[_describe(b) for b in bound],
            event=f"service_{what}",
        )

    async def _reload(self) -> dict[str, list[str]]:
        """
        The work of L{reload}: load, prepare, listen (all or nothing), commit.
        """
        source = self.configPath or DEFAULT_CONFIG_NAME
        self.log.info("reloading the config from {source}", source=source)
        try:
            new = withDaemonOverrides(
                loadConfig(self.configPath, self.registry or discoverPlugins()), self.daemonOverrides
            )
        except ConfigError as e:
            self.log.error(
                "reload: {source} has {found}; nothing was changed:\n{problems}",
                source=e.source,
                count=len(e.problems),
                found=counted(len(e.problems), "problem"),
                problems=str(e),
            )
            raise
        defined = {spec.name for spec in new.services}
        new = self._withRuntimeServices(new)
        daemonSpec = self._daemonChanges(new.daemon)
        old = {s.spec.name: s for s in self.netServices()}
        wanted = {spec.name: spec for spec in new.services if spec.enabled}
        summary: dict[str, list[str]] = {
            "unchanged": [n for n in wanted if n in old and old[n].spec == wanted[n]],
            "changed": [n for n in wanted if n in old and old[n].spec != wanted[n]],
            "added": [n for n in wanted if n not in old],
            "removed": [n for n in old if n not in wanted],
        }
        adopt = [participant.prepareReload(daemonSpec, new.source) for participant in self.reloadParticipants]
        replacements, freshTLS = self._prepare(new, wanted, summary, old, daemonSpec)
        await self._listenAll(replacements, old)
        self._commit(new, daemonSpec, replacements, freshTLS, summary, old)
        self.runtimeServices = [name for name in self.runtimeServices if name not in defined]
        for apply in adopt:
            apply()
        return summary

    def _withRuntimeServices(self, new: NetdConfig) -> NetdConfig:
        """
        The file's config with the services created at runtime after its own,
        except those whose name the file defines: the file's wins.
        """
        defined = {spec.name for spec in new.services}
        kept = [self.namedServices[name] for name in self.runtimeServices if name not in defined]
        return attrs.evolve(new, services=(*new.services, *(s.spec for s in kept if isinstance(s, NetService))))

    def _daemonChanges(self, new: DaemonSpec) -> DaemonSpec:
        """
        The C{[daemon]} table to run with: the new live keys (log level,
        shutdown timeout, lameduck, admin hosts, watch interval), the running value of every other key, each change
        of which is logged as needing a restart.
        """
        running = self.config.daemon
        for key in RESTART_KEYS:
            if getattr(new, key) != getattr(running, key):
                self.log.warn(
                    "reload: [daemon] {key} changed; it takes effect only when netd restarts",
                    key=key,
                )
        return attrs.evolve(
            running,
            log_level=new.log_level,
            shutdown_timeout=new.shutdown_timeout,
            lameduck=new.lameduck,
            admin_hosts=new.admin_hosts,
            watch_interval=new.watch_interval,
        )

    def _prepare(
        self,
        new: NetdConfig,
        wanted: dict[str, ServiceSpec],
        summary: dict[str, list[str]],
        old: dict[str, NetService],
        daemonSpec: DaemonSpec,
    ) -> tuple[dict[str, NetService], dict[str, ServerTLS]]:
        """
        Build the services to add or replace, and read the TLS files of the
        unchanged ones again, touching nothing that runs.

        @raise ConfigError: every service that cannot be built or whose TLS
            files cannot be loaded; nothing was changed.
        """
        problems: list[Problem] = []
        index = {spec.name: i for i, spec in enumerate(new.services)}
        replacements: dict[str, NetService] = {}
        for name in summary["changed"] + summary["added"]:
            try:
                replacements[name] = NetService(
                    wanted[name],
                    self.reactor,
                    daemonSpec.shutdown_timeout,
                    daemonSpec.state_dir,
                    configIndex=index[name],
                )
            except ServiceStartError as e:
                problems.append(Problem(("services", index[name]), str(e)))
        freshTLS: dict[str, ServerTLS] = {}
        for name in summary["unchanged"]:
            tls = old[name].tls
            if tls is None:
                continue
            try:
                freshTLS[name] = tls.reloadFiles(daemonSpec.state_dir)
            except TLSSetupError as e:
                problems.append(
                    Problem(("services", index[name], "tls"), f"cannot reload the TLS files, keeping the old ones: {e}")
                )
        if problems:
            error = ConfigError(new.source, problems)
            self.log.error(
                "reload: {services} of {source} cannot be loaded; nothing was changed:\n{problems}",
                source=new.source,
                count=len(problems),
                services=counted(len(problems), "service"),
                problems=str(error),
            )
            raise error
        return replacements, freshTLS

    async def _listenAll(self, replacements: dict[str, NetService], old: dict[str, NetService]) -> None:
        """
        Listen with every new and changed service, all or nothing: a changed
        service sharing an address with its old one closes the old listener
        first.  On a failure, close what was opened and reopen what was closed.

        @raise ServiceStartError: naming the service and address that failed.
        """
        closedOld: list[NetService] = []
        opened: list[NetService] = []
        try:
            for name, service in replacements.items():
                previous = old.get(name)
                shared = previous is not None and bool(
                    {a.text for a in previous.spec.listen} & {a.text for a in service.spec.listen}
                )
                if previous is not None and shared:
                    await previous.stopListening()
                    closedOld.append(previous)
                opened.append(service)
                try:
                    await service.listen()
                except ServiceStartError as e:
                    if not (shared and isinstance(e.__cause__, CannotListenError)):
                        raise
                    await service.stopListening()
                    self.log.info(
                        "reload: {error}; retrying in {delay} seconds", error=str(e), delay=LISTEN_RETRY_DELAY
                    )
                    await deferLater(self.reactor, LISTEN_RETRY_DELAY, lambda: None)
                    await service.listen()
        except ServiceStartError as e:
            self.log.error("reload: {error}; undoing the reload, nothing was changed", error=str(e))
            for service in opened:
                await service.stopListening()
            for previous in closedOld:
                try:
                    await previous.listen()
                except ServiceStartError as again:
                    self.log.critical(
                        "reload: cannot listen again with the previous service: {error}", error=str(again)
                    )
            raise

    def _commit(
        self,
        new: NetdConfig,
        daemonSpec: DaemonSpec,
        replacements: dict[str, NetService],
        freshTLS: dict[str, ServerTLS],
        summary: dict[str, list[str]],
        old: dict[str, NetService],
    ) -> None:
        """
        Everything new listens: swap the services, let the old and removed
        ones drain in the background, adopt the new TLS files and the live
        C{[daemon]} keys, tell the L{addressObservers}, and log one line per service.
        """
        for name in summary["changed"] + summary["removed"]:
            self._drain(name, old[name])
        for service in replacements.values():
            service.setServiceParent(self)
        order = [spec.name for spec in new.services]
        self.services.sort(key=lambda s: order.index(s.name))
        for name, fresh in freshTLS.items():
            tls = old[name].tls
            assert tls is not None
            tls.adopt(fresh)
        if daemonSpec.log_level != self.config.daemon.log_level:
            setLogLevel(daemonSpec.log_level)
            self.log.info("reload: log level is now {new_level}", new_level=daemonSpec.log_level)
        for service in self.netServices():
            service.shutdownTimeout = daemonSpec.shutdown_timeout
            service.configIndex = order.index(service.spec.name)
        self.config = NetdConfig(
            source=new.source,
            daemon=daemonSpec,
            services=tuple(s for s in new.services if s.name in self.namedServices),
            digest=new.digest,
        )
        report = self.addressesChanged()
        for what, names in summary.items():
            for name in names:
                where = ", ".join(_describe(bound) for bound in report.get(name, []))
                tlsNote = " (TLS files reloaded)" if name in freshTLS else ""
                described = self.namedServices.get(name, old.get(name))
                self.log.info(
                    "reload: service {service} ({plugin}) {what}{tls}{where}",
                    service=name,
                    plugin=described.spec.plugin.name if isinstance(described, NetService) else "",
                    what=what,
                    tls=tlsNote,
                    where=f" on {where}" if where else "",
                    addresses=[_describe(b) for b in report.get(name, [])],
                    event=f"service_{what}",
                )

    def _drain(self, name: str, previous: NetService) -> None:
        """
        Take a replaced or removed service out, and let it drain in the background.
        """
        stopped = previous.disownServiceParent()
        if isinstance(stopped, Deferred):
            self._draining.add(stopped)
            stopped.addErrback(self._drainFailed, name)
            stopped.addBoth(self._drained, stopped)

    def draining(self) -> int:
        """
        How many services replaced or removed by a reload are still draining.
        """
        return len(self._draining)

    def _drained(self, result: object, stopped: Deferred[None]) -> None:
        """
        A replaced or removed service has drained and stopped.
        """
        self._draining.discard(stopped)

    def _drainFailed(self, failure: Failure, name: str) -> None:
        """
        Log a replaced or removed service's stop that failed.
        """
        self.log.failure("stopping the previous service {service} failed", failure, service=name)

    def stopService(self) -> Deferred[None]:
        """
        Tell systemd that netd is stopping and turn C{/ready} to 503 at once;
        let a reload in progress finish or be undone (so that the drain
        stops the services that are really running, never half a reload);
        keep serving for C{[daemon] lameduck} seconds (load balancers stop
        sending first), then stop every service (each closes its listeners
        and drains its connections).  The control API, closed after this
        (by the application), answers (C{/ready}: 503) throughout.
        """
        self.notifier.stopping()
        self.stopping = True
        if not self._reloading:
            return self._afterReload()
        self.log.info("stopping: waiting for the reload in progress to finish or be undone")
        waiter: Deferred[None] = Deferred()
        self._reloadWaiters.append(waiter)
        return waiter.addCallback(lambda _: self._afterReload())

    def _afterReload(self) -> Deferred[None]:
        """
        The stop, once no reload runs: the lameduck wait, then L{_stopServices}.
        """
        lameduck = self.config.daemon.lameduck
        if not lameduck or not self.running:
            # Never served (a failed start): no client to warn, nothing to wait for.
            return self._stopServices()
        self.log.info(
            "stopping: /ready answers 503; serving for {lameduck} more seconds before closing the listeners",
            lameduck=lameduck,
        )
        waited: Deferred[None] = deferLater(self.reactor, lameduck, lambda: None)
        return waited.addCallback(lambda _: self._stopServices())

    def _stopServices(self) -> Deferred[None]:
        """
        Stop every service, wait for those draining since a reload, and log
        how long the drain took, unless netd never served (a failed start,
        whose error is its last line).
        """
        served = bool(self.running)
        began = self.reactor.seconds()
        connections = sum(s.connections.openConnections() for s in self.netServices() if s.connections is not None)
        stopped: Deferred[None] = super().stopService()
        draining = list(self._draining)
        if draining:
            stopped.addBoth(lambda result: DeferredList(draining).addCallback(lambda _: result))
        return stopped.addBoth(self._stopped, connections, began) if served else stopped

    def _stopped(self, result: object, connections: int, began: float) -> object:
        """
        Say that netd stopped, how many connections it drained and in how long.
        """
        if connections:
            message = "netd stopped: drained {drained} in {seconds} seconds"
        else:
            message = "netd stopped: no connections were open ({seconds} seconds)"
        self.log.info(
            message,
            connections=connections,
            drained=counted(connections, "connection"),
            seconds=round(self.reactor.seconds() - began, 3),
        )
        return result

    def ready(self) -> bool:
        """
        Whether netd serves: started, not stopping, and every service listening.
        """
        return bool(self.running) and not self.stopping and all(s.ports for s in self.netServices())

    def boundAddresses(self) -> dict[str, list[dict[str, object]]]:
        """
        Service name to the addresses it really listens on.
        """
        return {s.spec.name: [p.describe() for p in s.ports] for s in self.netServices()}


def _describe(bound: dict[str, object]) -> str:
    """
    One bound address of the ports file in words.
    """
    if "port" in bound:
        return f"{bound['transport']} {bound['host']}:{bound['port']}"
    return f"{bound['transport']} {bound.get('path', bound.get('address'))}"
