"""
One configured service: its plugin's handler behind the core's layers, on every
address it listens on.

From the socket inward a stream connection passes the L{ConnectionLimiter}
(limits, idle timeout, flow control, byte counts), TLS when the service has a
C{tls} table (L{netd.tls.protocol.TLSServerFactory}), and the framing before the
plugin's receiver sees a frame; a datagram passes the L{DatagramListener}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IListeningPort

from netd.config.listen import ListenAddress, addressInUse, describeBound, whyListenFailed
from netd.config.options import KeyPath
from netd.config.spec import ServiceSpec
from netd.datagram.listener import LISTENING_PORTS, DatagramListener
from netd.events import EventLog, EventTable
from netd.faults.active import ServiceFaults
from netd.interfaces import IDatagramHandler, IHasRuntimeTables, IRuntimeTable, IStreamHandler, PluginContext
from netd.logs import ServiceLogger
from netd.metrics import Counters
from netd.reactors.rlimits import defaultMaxConnections
from netd.stream.framing import FRAMINGS, FramedFactory
from netd.stream.guard import ConnectionLimiter
from netd.stream.proxyheader import TrustedSources
from netd.tls.contexts import ServerTLS
from netd.tls.keys import TLSSetupError
from netd.tls.protocol import TLSServerFactory
from netd.words import counted

SHARED_PORT_ATTEMPTS = 8
"""
How many port numbers a C{tcp:0} and C{udp:0} pair tries before the start fails
(another process may take the number between the two binds).
"""


class ServiceStartError(Exception):
    """
    A service could not start: a TLS file is unusable, its plugin failed to
    build, or an address could not be listened on.

    @ivar service: the service that failed; L{None} for the control API.
    @ivar key: the key path at fault, within the service's table (from the top of
        the file when C{service} is L{None}), so that C{netd run} names it as
        C{netd check} names config problems.
    @ivar reason: the message without the service's name, to follow the key path.
    """

    def __init__(
        self, message: str, *, service: str | None = None, key: KeyPath = (), reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.service = service
        self.key = key
        self.reason = message if reason is None else reason


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

    def __init__(
        self,
        spec: ServiceSpec,
        reactor: Any,
        shutdownTimeout: float,
        stateDir: str | None = None,
        configIndex: int | None = None,
    ) -> None:
        """
        @param stateDir: netd's state directory (C{[daemon] state_dir}); the
            default one when L{None}.
        @param configIndex: the position of the service's table among the
            C{[[services]]} of the config file, for the key paths of errors
            (L{listenKey}).
        @raise ServiceStartError: naming the service and what failed.
        """
        self.spec = spec
        self.configIndex = configIndex
        self.name = spec.name
        self.reactor = reactor
        self.shutdownTimeout = shutdownTimeout
        self.counters = Counters()
        self.log = ServiceLogger(spec.name)
        self.ports: list[BoundPort] = []
        self.tls: ServerTLS | None = None
        if spec.tls is not None:
            try:
                self.tls = ServerTLS(spec.tls, serviceName=spec.name, log=self.log, stateDir=stateDir)
            except TLSSetupError as e:
                raise ServiceStartError(
                    f"service {spec.name!r}: {e}", service=spec.name, key=e.key, reason=str(e)
                ) from e
        self.events = EventLog(spec.events, reactor)
        self.faults = ServiceFaults(spec.faults, spec.shape, self.counters, self.events)
        context = PluginContext(
            reactor=reactor,
            log=self.log,
            serviceName=spec.name,
            counters=self.counters,
            events=self.events,
            framing=spec.framing,
            maxFrame=spec.max_frame,
            relayedFrameFaults=self.faults.relayedFrames,
        )
        try:
            self.handler = spec.plugin.build(spec.options, context)
        except TLSSetupError as e:
            # A file of the plugin's own TLS options (the proxy's upstream_tls), named by its key path.
            raise ServiceStartError(f"service {spec.name!r}: {e}", service=spec.name, key=e.key, reason=str(e)) from e
        except Exception as e:
            raise ServiceStartError(
                f"service {spec.name!r}: plugin {spec.plugin.name!r} failed to build: {type(e).__name__}: {e}",
                service=spec.name,
                key=("plugin",),
            ) from e
        self.connections: ConnectionLimiter | None = None
        if any(a.transport == "stream" for a in spec.listen):
            self._require(IStreamHandler, "stream")
            assert spec.framing is not None
            inner: Any = FramedFactory(
                FRAMINGS[spec.framing],
                spec.max_frame or 0,
                self.handler,
                self.counters,
                self.log,
                faults=self.faults.frames,
                clock=reactor,
            )
            if self.tls is not None:
                inner = TLSServerFactory(self.tls, inner, clock=reactor, counters=self.counters, log=self.log)
            self.connections = ConnectionLimiter(
                inner,
                maxConnections=spec.max_connections if spec.max_connections is not None else defaultMaxConnections(),
                idleTimeout=spec.idle_timeout,
                minIdleTimeout=spec.min_idle_timeout,
                evict=spec.evict_idle,
                clock=reactor,
                counters=self.counters,
                log=self.log,
                events=self.events,
                faults=self.faults.streams,
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

    def runtimeTables(self) -> dict[str, IRuntimeTable]:
        """
        The service's state that the control API reads and changes at
        C{/services/NAME/TABLE}: the plugin's own tables when its handler
        provides L{IHasRuntimeTables}, and the core's, which win a clash.
        """
        tables: dict[str, IRuntimeTable] = {}
        if IHasRuntimeTables.providedBy(self.handler):
            tables.update(self.handler.runtimeTables())
        tables["events"] = EventTable(self.events)
        tables["faults"] = self.faults
        return tables

    async def listen(self) -> list[BoundPort]:
        """
        Listen on every address of the service, ports reported in the order of
        C{listen}; a C{tcp:0} and a C{udp:0} on one interface get one port number
        (L{_listenPair}), as a DNS client that retries over TCP asks the UDP port.

        @raise ServiceStartError: naming the address that failed; the addresses
            bound before it stay bound, for the caller to release with
            L{stopListening}.
        """
        listen = self.spec.listen
        partners = _portZeroPairs(listen)
        for index, address in enumerate(listen):
            if index in partners.values():
                continue
            if index in partners:
                await self._listenPair(address, listen[partners[index]])
            else:
                self._record(address, await self._bind(address, address))
        self.ports.sort(key=lambda bound: listen.index(bound.address))
        return self.ports

    async def _bind(self, address: ListenAddress, actual: ListenAddress) -> IListeningPort:
        """
        Listen on C{actual}, which is C{address} of the config or the same on a
        given port.

        @raise ServiceStartError: naming C{address}, caused by the bind's error.
        """
        try:
            if actual.transport == "stream":
                assert self.connections is not None
                return await actual.listenStream(
                    self.reactor, self.connections, TrustedSources.fromConfig(self.spec.proxy_trusted)
                )
            return actual.listenDatagram(
                self.reactor,
                DatagramListener(
                    self.handler,
                    self.counters,
                    faults=self.faults.datagrams,
                    clock=self.reactor,
                    ownPorts=LISTENING_PORTS,
                ),
            )
        except Exception as e:
            key = self.listenKey(address)
            why = whyListenFailed(key, address, e, shareable=True)
            raise ServiceStartError(
                f"service {self.name!r}: cannot listen on {address.text!r} ({key}): {why}",
                service=self.name,
                key=("listen", self.spec.listen.index(address)),
                reason=f"cannot listen on {address.text!r}: {why}",
            ) from e

    def listenKey(self, address: ListenAddress) -> str:
        """
        The key path of C{address} in the config file: C{services[N].listen[M]}
        (C{listen[M]} when the service's place in the file is not known).
        """
        listen = f"listen[{self.spec.listen.index(address)}]"
        return listen if self.configIndex is None else f"services[{self.configIndex}].{listen}"

    def _record(self, address: ListenAddress, port: IListeningPort) -> None:
        """
        Keep a bound port (for reports and L{stopListening}) and log it.
        """
        self.ports.append(BoundPort(address, port))
        self.log.info("listening on {address} ({listen})", address=_where(port), listen=address.text)

    async def _listenPair(self, one: ListenAddress, other: ListenAddress) -> None:
        """
        Bind the pair's stream address on a port the system picks, then its datagram
        address on the same number, trying new pairs up to L{SHARED_PORT_ATTEMPTS}
        times while the number is taken for UDP.  TCP goes first because the system's
        pick for it skips the numbers held in C{TIME_WAIT} (docs/service.md, "A port
        pair for TCP and UDP").

        @raise ServiceStartError: naming the address that failed.
        """
        first, second = (one, other) if one.transport == "stream" else (other, one)
        for attempt in range(1, SHARED_PORT_ATTEMPTS + 1):
            firstPort = await self._bind(first, first)
            host = firstPort.getHost()
            assert isinstance(host, (IPv4Address, IPv6Address))
            number = host.port
            try:
                secondPort = await self._bind(second, second.withPort(number))
            except ServiceStartError as e:
                await maybeDeferred(firstPort.stopListening)
                cause = e.__cause__
                if not addressInUse(cause):
                    raise
                if attempt == SHARED_PORT_ATTEMPTS:
                    raise ServiceStartError(
                        f"service {self.name!r}: cannot listen on {second.text!r} ({self.listenKey(second)}) on the port of {first.text!r}: "
                        f"the number picked was taken for it {attempt} times in a row ({cause})",
                        service=self.name,
                        key=("listen", self.spec.listen.index(second)),
                    ) from cause
                self.log.info(
                    "port {port} is taken for {listen}; picking another one for it and {other}",
                    port=number,
                    listen=second.text,
                    other=first.text,
                )
                continue
            self._record(first, firstPort)
            self._record(second, secondPort)
            return

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
        count = connections.openConnections()
        self.log.info(
            "waiting up to {timeout} seconds for {connections}",
            timeout=self.shutdownTimeout,
            count=count,
            connections=counted(count, "open connection"),
        )
        try:
            await connections.whenDrained().addTimeout(self.shutdownTimeout, self.reactor)
        except TimeoutError:
            count = connections.openConnections()
            self.log.info(
                "closing {connections} still open after {timeout} seconds",
                count=count,
                connections=counted(count, "connection"),
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
        Stop accepting, drain, then stop the plugin's handler if it has a
        lifecycle.  A service that never started (the start failed, or the
        stop came between listening and serving) only closes what it
        listens on: its handler never started, and saying it "stopped" would
        tell whoever reads the log that it once ran.
        """
        started = bool(self.running)
        Service.stopService(self)

        async def stop() -> None:
            await self.stopListening()
            await self.drain()
            if not started:
                return
            if IService.providedBy(self.handler):
                await maybeDeferred(self.handler.stopService)
            self.log.info("stopped")

        return Deferred.fromCoroutine(stop())


def _portZeroPairs(listen: Sequence[ListenAddress]) -> dict[int, int]:
    """
    Which addresses of C{listen} share a port number: each C{tcp:0} or
    C{tcp6:0} with the first unpaired C{udp:0} on the same interface, as a map
    from the index of the one that comes first to the index of its partner.
    """
    unpaired: dict[tuple[str, object], list[int]] = {}
    pairs: dict[int, int] = {}
    for index, address in enumerate(listen):
        interface = address.portZeroInterface()
        if interface is None:
            continue
        other = "datagram" if address.transport == "stream" else "stream"
        waiting = unpaired.get((other, interface))
        if waiting:
            pairs[waiting.pop(0)] = index
        else:
            unpaired.setdefault((address.transport, interface), []).append(index)
    return pairs


def _where(port: IListeningPort) -> str:
    """
    A bound port's address in words: C{tcp 127.0.0.1:7007}, C{unix /run/netd.sock}.
    """
    bound = describeBound(port)
    if "port" in bound:
        return f"{bound['transport']} {bound['host']}:{bound['port']}"
    return f"{bound['transport']} {bound.get('path', bound.get('address'))}"
