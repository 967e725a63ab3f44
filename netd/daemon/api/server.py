"""
The control API as a service beside the daemon's: it reads (or makes) its
token, listens on C{[daemon] admin} before the services and closes after
they have drained (so that C{/ready} says 503 and C{/metrics} answers
throughout a stop), and takes part in a reload (C{admin_hosts}, the token
file read again).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from netd.config.listen import ListenAddress, describeBound, listensOnUnixSocket, splitDescription, whyListenFailed
from netd.config.options import ConfigError, Problem
from netd.config.spec import DaemonSpec
from netd.daemon.api.guard import Access, RequestGuard
from netd.daemon.api.http import IDLE_TIMEOUT, AdminSite
from netd.daemon.api.resources import AdminResource
from netd.daemon.api.served import ServedDaemon
from netd.daemon.api.tokens import TokenFileError, describeAccess, hostNames, loadAccess, readToken
from netd.daemon.service import ServiceStartError

log = Logger(namespace="netd.daemon.api.server")


class ControlAPI(Service):
    """
    The control API's listener, a sibling of the daemon's services under the
    application (L{netd.daemon.application.NetdApplication}), which listens
    with it first and closes it last.
    """

    name = "control-api"

    def __init__(self, daemon: ServedDaemon, spec: DaemonSpec, reactor: Any) -> None:
        assert spec.admin.address is not None
        self.daemon = daemon
        self.spec = spec
        self.address: ListenAddress = spec.admin.address
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.guard = RequestGuard()
        self.resource: AdminResource | None = None
        self.site: AdminSite | None = None
        self.boundHost: str | None = None
        """
        The address listened on, once it is (a C{Host} the API answers to).
        """
        self.otherSites: list[AdminSite] = []
        """
        netd's other HTTP APIs, whose refusals C{/metrics} reports too (the toxiproxy API's).
        """

    @property
    def unix(self) -> bool:
        """
        Whether the API listens on a unix socket (whose file mode guards it,
        so that it needs no token of netd's making): C{unix:}, or a
        C{systemd:} socket of C{domain=UNIX}.
        """
        return listensOnUnixSocket(self.address.text)

    async def listen(self) -> IListeningPort:
        """
        Read (or make) the token, then listen.

        @raise ServiceStartError: naming the token file or the address.
        """
        self.guard = RequestGuard(self._access(self.spec))
        self.resource = AdminResource(self.daemon, self.guard, self.otherSites)
        site = AdminSite(
            self.resource, self.guard, self.spec.admin_max_connections, timeout=IDLE_TIMEOUT, reactor=self.reactor
        )
        self.site = self.resource.site = site
        try:
            self.port = await self._listen(site)
        except Exception as e:
            why = whyListenFailed(
                "[daemon] admin",
                self.address,
                e,
                otherWays=", or leave admin out (or set it to false) to run without the control API",
            )
            raise ServiceStartError(
                f"control API: cannot listen on {self.address.text!r} ([daemon] admin): {why}",
                key=("daemon", "admin"),
                reason=f"control API: cannot listen on {self.address.text!r}: {why}",
            ) from e
        bound = describeBound(self.port)
        host = bound.get("host")
        if isinstance(host, str):
            self.boundHost = host
            self.guard.access = attrs.evolve(self.guard.access, hosts=hostNames(self.spec, host))
        where = (
            f"http://{bound['host']}:{bound['port']}/"
            if "port" in bound
            else f"{bound['transport']} {bound.get('path')}"
        )
        access = self.guard.access
        log.info(
            "control API on {where} ({listen}), {auth}",
            where=where,
            listen=self.address.text,
            auth=describeAccess(access),
            token_file=access.tokenFile,
        )
        return self.port

    def _access(self, spec: DaemonSpec) -> Access:
        """
        The L{Access} of C{spec}, with the address listened on among its hosts.

        @raise ServiceStartError: the token file cannot be used.
        """
        try:
            return loadAccess(spec, tcp=not self.unix, boundHost=self.boundHost)
        except TokenFileError as e:
            raise ServiceStartError(
                f"control API: [daemon] admin_token_file: {e}", key=("daemon", "admin_token_file"), reason=str(e)
            ) from e

    async def _listen(self, site: AdminSite) -> IListeningPort:
        """
        Listen; a unix socket is made mode 0600 (0660 with C{admin_group},
        given that group) from the start: the umask covers the moment
        between the bind and Twisted's chmod.
        """
        if splitDescription(self.address.text)[0] != "unix":
            return await self.address.listenStream(self.reactor, site)
        group = self.spec.admin_group
        address = attrs.evolve(self.address, text=self.address.text + ":mode=600")
        previous = os.umask(0o177)
        try:
            port = await address.listenStream(self.reactor, site)
        finally:
            os.umask(previous)
        if group is not None:
            path = str(describeBound(port)["path"])
            try:
                os.chown(path, -1, group.gid, follow_symlinks=False)
                os.chmod(path, 0o660, follow_symlinks=False)
            except OSError:
                await maybeDeferred(port.stopListening)
                raise
        return port

    def prepareReload(self, spec: DaemonSpec, source: str) -> Callable[[], None]:
        """
        The access a reload brings, touching nothing that runs: the new
        C{admin_hosts}, and the token of C{admin_token_file} read again (a
        token netd made stays as it is).  A file this user may not read
        (root's, after the privilege drop) keeps the token read at start.

        @param source: the config file, for the error.
        @return: what adopts that access, once the reload is committed.
        @raise ConfigError: the token file cannot be used; the old token stays.
        """
        access = self._reloadedAccess(spec, source)
        return lambda: self.adopt(access)

    def _reloadedAccess(self, spec: DaemonSpec, source: str) -> Access:
        """
        The access of L{prepareReload}.
        """
        current = attrs.evolve(self.guard.access, hosts=hostNames(spec, self.boundHost))
        if current.scope != "all" or current.tokenFile is None:
            return current
        try:
            return attrs.evolve(current, token=readToken(current.tokenFile))
        except TokenFileError as e:
            if isinstance(e.__cause__, PermissionError) and os.geteuid() != 0:
                log.warn(
                    "reload: {why} as this user; the token read at start (before privileges were dropped) stays",
                    why=str(e),
                )
                return current
            error = ConfigError(source, [Problem(("daemon", "admin_token_file"), f"{e}; nothing was changed")])
            log.error("reload: {problems}", problems=str(error))
            raise error from e

    def adopt(self, access: Access) -> None:
        """
        Answer with C{access} from now on (the reload is committed).
        """
        if access.token != self.guard.access.token:
            log.info("reload: the control API's token is now the one in {path}", path=access.tokenFile)
        self.guard.access = access

    async def stopListening(self) -> None:
        """
        Stop accepting API connections.
        """
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)

    def describe(self) -> dict[str, object] | None:
        """
        The ports-file entry: C{{"listen", "transport", "host", "port",
        "token_file"}} (or C{"path"} for a unix socket); L{None} when not
        listening.  C{token_file} is where the bearer token is (L{None}
        when the API needs none).
        """
        if self.port is None:
            return None
        access = self.guard.access
        return {"listen": self.address.text, **describeBound(self.port), "token_file": access.tokenFile}
