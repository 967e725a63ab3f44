"""
The daemon: every enabled service of a config under one MultiService, started
all-or-nothing and stopped with a drain.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from netd.admin import AdminServer
from netd.config import NetdConfig
from netd.service import NetService, ServiceStartError
from netd.systemd import Notifier


class Daemon(MultiService):
    """
    All services of one config.

    L{start} listens on every address of every service; if any bind fails, the
    ones already bound are released, so that a bad start leaves nothing behind.
    """

    log = Logger()

    def __init__(self, config: NetdConfig, reactor: Any, notifier: Notifier | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier.disabled()
        """
        Tells systemd how netd is doing: L{serve} sends C{READY=1},
        L{stopService} C{STOPPING=1}; a reload wraps itself in
        C{notifier.reloading()} and C{notifier.ready()}.
        """
        for spec in config.services:
            if spec.enabled:
                NetService(spec, reactor, config.daemon.shutdown_timeout, config.daemon.state_dir).setServiceParent(self)
        self.stopping = False
        """
        Whether a stop has begun (the control API's C{/ready} then says 503).
        """
        admin = config.daemon.admin.address
        self.admin = AdminServer(self, admin, config.daemon.admin_token_file, reactor) if admin is not None else None
        """
        The control API (L{netd.admin}), listened on before the services and
        closed after they have drained; L{None} when C{[daemon] admin = false}.
        """

    def netServices(self) -> list[NetService]:
        """
        The services, in config order.
        """
        return list(self)

    async def start(
        self, portsFile: str | None = None, beforeServing: Callable[[], object] | None = None
    ) -> dict[str, list[dict[str, object]]]:
        """
        Listen on everything, then mark the services running and report where.

        @param portsFile: where to write the bound addresses as JSON once every
            service listens (written whole, by rename, so a reader never sees half).
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
        return self.serve(portsFile)

    async def listen(self) -> None:
        """
        Listen on every address of every service, all or nothing.

        @raise ServiceStartError: when an address cannot be listened on; nothing
            is left listening then.
        """
        try:
            if self.admin is not None:
                await self.admin.listen()
            for service in self.netServices():
                await service.listen()
        except ServiceStartError:
            await self.releaseListeners()
            raise

    async def releaseListeners(self) -> None:
        """
        Close every listener of every service, and the control API's (a start
        that failed part way).
        """
        await DeferredList([Deferred.fromCoroutine(s.stopListening()) for s in self.netServices()])
        if self.admin is not None:
            await self.admin.stopListening()

    def serve(self, portsFile: str | None = None) -> dict[str, list[dict[str, object]]]:
        """
        Once L{listen} has bound everything: mark the services running, write
        the ports file (with the control API's address under the top-level
        C{"admin"} key, beside C{"services"}, so that no service name can
        clash with it), and tell systemd that netd is ready.
        """
        self.startService()
        report = self.boundAddresses()
        if portsFile is not None:
            document: dict[str, object] = {"services": report}
            if self.admin is not None:
                document["admin"] = self.admin.describe()
            writeAtomically(portsFile, json.dumps(document, indent=2) + "\n")
        self.log.info("netd is ready: {count} services from {source}", count=len(report), source=self.config.source)
        addresses = sum(len(bound) for bound in report.values())
        self.notifier.ready(f"serving {len(report)} services on {addresses} addresses")
        return report

    def stopService(self) -> Deferred[None]:
        """
        Tell systemd that netd is stopping, then stop every service (each
        drains its connections); the control API closes last, so that it
        answers (C{/ready}: 503) throughout the drain.
        """
        self.notifier.stopping()
        self.stopping = True
        stopped: Deferred[None] = super().stopService()
        if self.admin is not None:
            admin = self.admin
            stopped.addBoth(lambda result: Deferred.fromCoroutine(admin.stopListening()).addCallback(lambda _: result))
        return stopped

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
