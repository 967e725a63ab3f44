"""
toxiproxy's proxies as netd runtime services: each enabled proxy is a service
of the C{proxy} plugin created through the daemon's runtime changes (as
C{POST /services} creates one), its toxics that service's fault list; a
disabled proxy has no service, and disabling one closes its listener and cuts
its connections, as toxiproxy does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from netd.config.options import ConfigError, renderPath
from netd.daemon.runtime import NoSuchService, ServiceExists
from netd.daemon.service import NetService, ReloadInProgress, ServiceStartError
from netd.daemon.toxiproxy.toxics import Toxic, ToxicError, faultList

log = Logger(namespace="netd.daemon.toxiproxy.proxies")

T = TypeVar("T")


class ProxyDaemon(Protocol):
    """
    What the toxiproxy API needs of the daemon: its services and its runtime
    changes of one service (L{netd.daemon.daemon.Daemon} has them).
    """

    def netServices(self) -> Sequence[NetService]:
        """
        The services, in config order.
        """

    def createService(self, table: object) -> Awaitable[Mapping[str, Sequence[Mapping[str, object]]]]:
        """
        Create and start one service from a C{[[services]]} table.
        """

    def deleteService(self, name: str) -> Awaitable[Mapping[str, Sequence[Mapping[str, object]]]]:
        """
        Stop one service; its listeners are closed when this returns.
        """


class ProxyError(Exception):
    """
    A request toxiproxy would refuse, with its status (400, 404, 409, 500).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def listenEndpoint(listen: str) -> str:
    """
    netd's listen string for toxiproxy's C{listen} (C{HOST:PORT}):
    C{127.0.0.1:26379} is C{tcp:26379:interface=127.0.0.1}, C{[::1]:0} is
    C{tcp6:0:interface=\\:\\:1}, C{:8080} (every interface) is C{tcp:8080};
    C{localhost} is 127.0.0.1.  An empty listen is C{127.0.0.1:0}.

    @raise ProxyError: (400) not an address netd can listen on.
    """
    host, port = _hostAndPort(listen or "127.0.0.1:0", "listen")
    if host == "":
        return f"tcp:{port}"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyError(
            f"listen {listen!r}: netd listens on an IP address or localhost, not the name {host!r}", 400
        ) from None
    if address.version == 6:
        return f"tcp6:{port}:interface={_escape(str(address))}"
    return f"tcp:{port}:interface={address}"


def upstreamEndpoint(upstream: str) -> str:
    """
    The proxy plugin's C{upstream} for toxiproxy's (C{HOST:PORT}, a name or
    an address, C{[v6]:PORT}).

    @raise ProxyError: (400) not C{HOST:PORT}.
    """
    host, port = _hostAndPort(upstream, "upstream")
    if not host:
        raise ProxyError(f"upstream {upstream!r}: expected HOST:PORT", 400)
    return f"tcp:host={_escape(host)}:port={port}"


def _hostAndPort(text: str, key: str) -> tuple[str, int]:
    """
    The host (brackets of an IPv6 address taken off) and port of C{HOST:PORT}.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ProxyError(f"{key} {text!r}: expected HOST:PORT", 400)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host and not _isIPv6(host):
        raise ProxyError(f"{key} {text!r}: expected HOST:PORT", 400)
    return host, int(port)


def _isIPv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _escape(text: str) -> str:
    """
    A value inside a Twisted endpoint string: its colons and backslashes escaped.
    """
    return text.replace("\\", "\\\\").replace(":", "\\:")


def boundListen(bound: Mapping[str, object]) -> str | None:
    """
    toxiproxy's C{listen} of a bound address (C{127.0.0.1:34567},
    C{[::1]:34567}), as toxiproxy reports its listener's.
    """
    host, port = bound.get("host"), bound.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.define
class ToxiProxy:
    """
    One proxy as toxiproxy's API shows it.

    @ivar listen: as given, then as bound once it listens (port 0 becomes the
        port picked, which a proxy enabled again listens on, as toxiproxy's does).
    @ivar toxics: by name, in the order they were added.
    """

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: dict[str, Toxic] = attrs.field(factory=dict)

    def toJSON(self) -> dict[str, Any]:
        """
        The proxy as toxiproxy answers it, its toxics included.
        """
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.toJSON() for t in self.toxics.values()],
        }

    def serviceTable(self) -> dict[str, Any]:
        """
        The runtime service that serves this proxy: a C{proxy} service with
        its toxics as faults.
        """
        return {
            "name": self.name,
            "plugin": "proxy",
            "listen": [listenEndpoint(self.listen)],
            "upstream": upstreamEndpoint(self.upstream),
            "faults": faultList(self.toxics.values()).toConfig(),
        }


class ProxyCollection:
    """
    The proxies of the toxiproxy API, each change made one at a time (the
    daemon takes one runtime change at a time, and a toxiproxy client may
    send several requests at once).
    """

    def __init__(self, daemon: ProxyDaemon) -> None:
        self.daemon = daemon
        self.proxies: dict[str, ToxiProxy] = {}
        self.lock = DeferredLock()

    async def serially(self, change: Callable[[], Awaitable[T]]) -> T:
        """
        Run C{change} once no other change of the proxies runs.
        """
        await self.lock.acquire()
        try:
            return await change()
        finally:
            self.lock.release()

    def get(self, name: str) -> ToxiProxy:
        """
        The proxy of that name.

        @raise ProxyError: (404) there is none.
        """
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ProxyError("proxy not found", 404)
        return proxy

    async def create(self, name: str, listen: str, upstream: str, enabled: bool) -> ToxiProxy:
        """
        A new proxy, listening at once if enabled.

        @raise ProxyError: (409) one of that name exists; (400) a bad address.
        """
        if name in self.proxies:
            raise ProxyError("proxy already exists", 409)
        proxy = ToxiProxy(name, listen, upstream, enabled)
        proxy.serviceTable()  # A bad address or toxic is refused before anything changes.
        if enabled:
            await self._start(proxy)
        self.proxies[name] = proxy
        log.info(
            "toxiproxy API: proxy {proxy} created, {listen} to {upstream}{state}",
            proxy=name,
            listen=proxy.listen,
            upstream=upstream,
            state="" if enabled else " (disabled)",
        )
        return proxy

    async def update(self, proxy: ToxiProxy, listen: str, upstream: str, enabled: bool) -> None:
        """
        Change a proxy's addresses (it listens again, its connections cut)
        and whether it is enabled, as toxiproxy's C{Proxy.Update} does.
        """
        ToxiProxy(proxy.name, listen, upstream, enabled).serviceTable()  # Refused before anything changes.
        moved = (listen, upstream) != (proxy.listen, proxy.upstream)
        if moved and proxy.enabled:
            await self._stop(proxy)
            proxy.enabled = False
        proxy.listen, proxy.upstream = listen, upstream
        if enabled and not proxy.enabled:
            await self._start(proxy)
        elif not enabled and proxy.enabled:
            await self._stop(proxy)
        proxy.enabled = enabled

    async def delete(self, name: str) -> None:
        """
        Remove a proxy: its listener closes and its connections are cut.
        """
        proxy = self.get(name)
        if proxy.enabled:
            await self._stop(proxy)
        del self.proxies[name]
        log.info("toxiproxy API: proxy {proxy} deleted", proxy=name)

    async def setToxics(self, proxy: ToxiProxy, toxics: dict[str, Toxic]) -> None:
        """
        Put a proxy's new toxics in force: checked as a fault list first (a
        toxic netd cannot apply changes nothing), then its service's faults
        replaced, as C{PUT /services/NAME/faults} replaces them.

        @raise ToxicError: (400) naming the toxic netd cannot apply.
        """
        faults = faultList(toxics.values())
        service = self._service(proxy.name) if proxy.enabled else None
        if service is not None:
            try:
                service.runtimeTables()["faults"].put({"faults": faults.toConfig()})
            except ConfigError as e:
                raise ToxicError("; ".join(f"{renderPath(p.path)}: {p.message}" for p in e.problems)) from e
        proxy.toxics = toxics

    async def reset(self) -> None:
        """
        toxiproxy's C{POST /reset}: every proxy enabled, every toxic removed.
        """
        for proxy in list(self.proxies.values()):
            await self.setToxics(proxy, {})
            if not proxy.enabled:
                await self._start(proxy)
                proxy.enabled = True

    def _service(self, name: str) -> NetService | None:
        """
        The running service of a proxy.
        """
        return next((s for s in self.daemon.netServices() if s.spec.name == name), None)

    async def _start(self, proxy: ToxiProxy) -> None:
        """
        Create the proxy's service; its C{listen} becomes the address bound.
        """
        try:
            result = await self.daemon.createService(proxy.serviceTable())
        except ServiceExists:
            raise ProxyError(f"a netd service named {proxy.name!r} runs already", 409) from None
        except ServiceStartError as e:
            raise ProxyError(f"cannot listen on {proxy.listen!r}: {e.reason}", 500) from e
        except ReloadInProgress as e:
            raise ProxyError(str(e), 503) from e
        except ConfigError as e:
            problems = "; ".join(f"{renderPath(p.path)}: {p.message}" if p.path else p.message for p in e.problems)
            raise ProxyError(f"netd refused the proxy's service: {problems}", 400) from e
        bound = next(iter(result.get(proxy.name, [])), None)
        listen = boundListen(bound) if bound is not None else None
        if listen is not None:
            proxy.listen = listen

    async def _stop(self, proxy: ToxiProxy) -> None:
        """
        Delete the proxy's service, and cut the connections it had open.
        """
        service = self._service(proxy.name)
        try:
            await self.daemon.deleteService(proxy.name)
        except NoSuchService:
            return
        except ReloadInProgress as e:
            raise ProxyError(str(e), 503) from e
        if service is not None and service.connections is not None:
            service.connections.abortAll()
