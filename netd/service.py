"""
One configured service: its plugin's handler behind the core's layers, on every
address it listens on.

From the socket inward a stream connection passes the L{ConnectionLimiter}
(limits, idle timeout, flow control, byte counts), TLS when the service has a
C{tls} table (L{netd.tls.TLSServerFactory}), and the framing before the
plugin's receiver sees a frame; a datagram passes the L{DatagramListener}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IListeningPort

from netd.config import ServiceSpec
from netd.datagram import DatagramListener
from netd.framing import FRAMINGS, FramedFactory
from netd.interfaces import IDatagramHandler, IStreamHandler
from netd.limits import ConnectionLimiter
from netd.listen import ListenAddress, describeBound
from netd.logs import ServiceLogger
from netd.metrics import Counters
from netd.plugin import PluginContext
from netd.tls import ServerTLS, TLSServerFactory, TLSSetupError


class ServiceStartError(Exception):
    """
    A service could not start: a TLS file is unusable, its plugin failed to
    build, or an address could not be listened on.  The message names the
    service and the file or address.
    """


class ReloadInProgress(Exception):
    """
    A reload was asked for while another one runs (the control API answers 409).
    """


@attrs.frozen
class BoundPort:
    """
    One address a service listens on, as configured and as bound.
    """

    address: ListenAddress
    port: IListeningPort

    def describe(self) -> dict[str, object]:
        """
        The JSON-ready report of this port: the listen string and the real address.
        """
        return {"listen": self.address.text, **describeBound(self.port)}


class NetService(Service):
    """
    A running (or ready to run) service of the config.

    Building it builds the plugin's handler; L{listen} binds its addresses;
    L{stopService} stops accepting, lets open connections finish for up to
    C{shutdownTimeout} seconds, then drops the rest.
    """

    def __init__(self, spec: ServiceSpec, reactor: Any, shutdownTimeout: float, stateDir: str | None = None) -> None:
        """
        @param stateDir: netd's state directory (C{[daemon] state_dir}); the
            default one when L{None}.
        @raise ServiceStartError: naming the service and what failed.
        """
        self.spec = spec
        self.name = spec.name
        self.reactor = reactor
        self.shutdownTimeout = shutdownTimeout
        self.counters = Counters()
        self.log = ServiceLogger(f"netd.plugins.{spec.plugin.name}", spec.name)
        self.ports: list[BoundPort] = []
        self.tls: ServerTLS | None = None
        if spec.tls is not None:
            try:
                self.tls = ServerTLS(spec.tls, serviceName=spec.name, log=self.log, stateDir=stateDir)
            except TLSSetupError as e:
                raise ServiceStartError(f"service {spec.name!r}: {e}") from e
        context = PluginContext(reactor=reactor, log=self.log, serviceName=spec.name, counters=self.counters)
        try:
            self.handler = spec.plugin.build(spec.options, context)
        except Exception as e:
            raise ServiceStartError(
                f"service {spec.name!r}: plugin {spec.plugin.name!r} failed to build: {type(e).__name__}: {e}"
            ) from e
        self.connections: ConnectionLimiter | None = None
        if any(a.transport == "stream" for a in spec.listen):
            self._require(IStreamHandler, "stream")
            assert spec.framing is not None
            inner: Any = FramedFactory(FRAMINGS[spec.framing], spec.max_frame or 0, self.handler, self.counters, self.log)
            if self.tls is not None:
                inner = TLSServerFactory(self.tls, inner, clock=reactor, counters=self.counters, log=self.log)
            self.connections = ConnectionLimiter(
                inner,
                maxConnections=spec.max_connections,
                idleTimeout=spec.idle_timeout,
                clock=reactor,
                counters=self.counters,
                log=self.log,
            )
        if any(a.transport == "datagram" for a in spec.listen):
            self._require(IDatagramHandler, "datagram")

    def _require(self, interface: Any, transport: str) -> None:
        """
        Check that the plugin's handler can serve a transport it claims to serve.
        """
        if not interface.providedBy(self.handler):
            raise ServiceStartError(
                f"service {self.name!r}: plugin {self.spec.plugin.name!r} serves {transport}s "
                f"but its handler does not provide {interface.__name__}"
            )

    async def listen(self) -> list[BoundPort]:
        """
        Listen on every address of the service, in order.

        @raise ServiceStartError: naming the address that failed; the addresses
            bound before it stay bound, for the caller to release with
            L{stopListening}.
        """
        for address in self.spec.listen:
            try:
                if address.transport == "stream":
                    assert self.connections is not None
                    port = await address.listenStream(self.reactor, self.connections)
                else:
                    port = address.listenDatagram(self.reactor, DatagramListener(self.handler, self.counters))
            except Exception as e:
                raise ServiceStartError(f"service {self.name!r}: cannot listen on {address.text!r}: {e}") from e
            bound = BoundPort(address, port)
            self.ports.append(bound)
            self.log.info("listening on {address} ({listen})", address=_where(port), listen=address.text)
        return self.ports

    async def stopListening(self) -> None:
        """
        Stop accepting: close every listening port.
        """
        ports, self.ports = self.ports, []
        await DeferredList([maybeDeferred(p.port.stopListening) for p in ports])

    async def drain(self) -> None:
        """
        Wait up to C{shutdownTimeout} seconds for open connections to finish, then
        drop those still open.
        """
        connections = self.connections
        if connections is None or not connections.openConnections():
            return
        self.log.info(
            "waiting up to {timeout} seconds for {count} open connections",
            timeout=self.shutdownTimeout,
            count=connections.openConnections(),
        )
        try:
            await connections.whenDrained().addTimeout(self.shutdownTimeout, self.reactor)
        except TimeoutError:
            self.log.info(
                "closing {count} connections still open after {timeout} seconds",
                count=connections.openConnections(),
                timeout=self.shutdownTimeout,
            )
            connections.abortAll()
            await connections.whenDrained()

    def startService(self) -> None:
        """
        Mark the service running (its ports are already listening), and start
        the plugin's handler if it has a lifecycle of its own.
        """
        Service.startService(self)
        if IService.providedBy(self.handler):
            self.handler.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, drain, then stop the plugin's handler if it has a lifecycle.
        """
        Service.stopService(self)

        async def stop() -> None:
            await self.stopListening()
            await self.drain()
            if IService.providedBy(self.handler):
                await maybeDeferred(self.handler.stopService)
            self.log.info("stopped")

        return Deferred.fromCoroutine(stop())



def _where(port: IListeningPort) -> str:
    """
    A bound port's address in words: C{tcp 127.0.0.1:7007}, C{unix /run/netd.sock}.
    """
    bound = describeBound(port)
    if "port" in bound:
        return f"{bound['transport']} {bound['host']}:{bound['port']}"
    return f"{bound['transport']} {bound.get('path', bound.get('address'))}"
