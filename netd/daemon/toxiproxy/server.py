"""
The toxiproxy-compatible API as a service beside the daemon's, on
C{[daemon] toxiproxy}: listening with the control API before the services,
closed after they have drained, over the control API's HTTP channel and
request guard (header checks, body cap, connection cap), with no token, as
toxiproxy has none.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from netd.config.listen import ListenAddress, describeBound, whyListenFailed
from netd.config.spec import DaemonSpec
from netd.daemon.api.guard import Access, RequestGuard
from netd.daemon.api.http import IDLE_TIMEOUT, AdminSite
from netd.daemon.service import ServiceStartError
from netd.daemon.toxiproxy.proxies import ProxyCollection, ProxyDaemon
from netd.daemon.toxiproxy.resource import ToxiproxyResource

log = Logger(namespace="netd.daemon.toxiproxy.server")


class ToxiproxyAPI(Service):
    """
    The toxiproxy API's listener, a sibling of the daemon's services under
    the application (L{netd.daemon.application.NetdApplication}).
    """

    name = "toxiproxy-api"

    def __init__(self, daemon: ProxyDaemon, spec: DaemonSpec, reactor: Any) -> None:
        assert spec.toxiproxy.address is not None
        self.address: ListenAddress = spec.toxiproxy.address
        self.spec = spec
        self.reactor = reactor
        self.proxies = ProxyCollection(daemon)
        self.guard = RequestGuard(
            Access(token=None), api="toxiproxy API", otherHosts="the address it listens on", metric="toxiproxy"
        )
        self.site = AdminSite(
            ToxiproxyResource(self.proxies, self.guard),
            self.guard,
            spec.admin_max_connections,
            timeout=IDLE_TIMEOUT,
            reactor=reactor,
        )
        self.port: IListeningPort | None = None

    async def listen(self) -> IListeningPort:
        """
        Listen, and say where; a warning when other hosts can reach it.

        @raise ServiceStartError: naming the address.
        """
        try:
            self.port = await self.address.listenStream(self.reactor, self.site)
        except Exception as e:
            why = whyListenFailed("[daemon] toxiproxy", self.address, e, otherWays=", or leave toxiproxy out")
            raise ServiceStartError(
                f"toxiproxy API: cannot listen on {self.address.text!r} ([daemon] toxiproxy): {why}",
                key=("daemon", "toxiproxy"),
                reason=f"toxiproxy API: cannot listen on {self.address.text!r}: {why}",
            ) from e
        bound = describeBound(self.port)
        host = bound.get("host")
        if isinstance(host, str):
            self.guard.access = Access(token=None, hosts=frozenset({host.lower()}))
        where = f"http://{host}:{bound['port']}/" if "port" in bound else f"{bound['transport']} {bound.get('path')}"
        log.info("toxiproxy API on {where} ({listen})", where=where, listen=self.address.text)
        if not self.spec.toxiproxy.localOnly:
            log.warn(
                "toxiproxy API: {listen} can be reached from other hosts, and the toxiproxy API has no "
                "authentication (as toxiproxy has none): whoever reaches it can open proxies from this host",
                listen=self.address.text,
            )
        return self.port

    async def stopListening(self) -> None:
        """
        Stop accepting API connections.
        """
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)

    def describe(self) -> dict[str, object] | None:
        """
        The ports-file entry: C{{"listen", "transport", "host", "port"}} (or
        C{"path"}); L{None} when not listening.
        """
        if self.port is None:
            return None
        return {"listen": self.address.text, **describeBound(self.port)}
