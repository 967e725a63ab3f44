"""
The daemon: every enabled service of a config under one MultiService, started
all-or-nothing and stopped with a drain.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from netd.config import NetdConfig
from netd.service import NetService, ServiceStartError


class Daemon(MultiService):
    """
    All services of one config.

    L{start} listens on every address of every service; if any bind fails, the
    ones already bound are released, so that a bad start leaves nothing behind.
    """

    log = Logger()

    def __init__(self, config: NetdConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        for spec in config.services:
            if spec.enabled:
                NetService(spec, reactor, config.daemon.shutdown_timeout, config.daemon.state_dir).setServiceParent(self)

    def netServices(self) -> list[NetService]:
        """
        The services, in config order.
        """
        return list(self)

    async def start(self, portsFile: str | None = None) -> dict[str, list[dict[str, object]]]:
        """
        Listen on everything, then mark the services running and report where.

        @param portsFile: where to write the bound addresses as JSON once every
            service listens (written whole, by rename, so a reader never sees half).
        @raise ServiceStartError: when an address cannot be listened on; nothing
            is left listening then.
        """
        try:
            for service in self.netServices():
                await service.listen()
        except ServiceStartError:
            await DeferredList([Deferred.fromCoroutine(s.stopListening()) for s in self.netServices()])
            raise
        self.startService()
        report = self.boundAddresses()
        if portsFile is not None:
            writeAtomically(portsFile, json.dumps({"services": report}, indent=2) + "\n")
        self.log.info("netd is ready: {count} services from {source}", count=len(report), source=self.config.source)
        return report

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
