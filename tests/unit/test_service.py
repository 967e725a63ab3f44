"""
L{netd.daemon.service.NetService} and L{netd.daemon.daemon.Daemon} on a fake reactor: what
is listened on, the ports file, start errors and the all-or-nothing start, and
the stop with its drain.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer

from netd.config.spec import NetdConfig, loadConfig, parseConfig
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import Daemon
from netd.daemon.service import NetService, ServiceStartError
from netd.datagram.listener import DatagramListener
from netd.interfaces import IProtocolPlugin, IStreamHandler
from netd.registry import LoadedPlugin, PluginRegistry, checkPlugin, discoverPlugins
from netd.stream.guard import ConnectionLimiter
from netd.testing.memory import UDPMemoryReactorClock, connect, failureOf, resultOf
from netd_plugins.echo import EchoReceiver

TCP = "tcp:0:interface=127.0.0.1"
UDP = "udp:0:interface=127.0.0.1"
ECHO = {"name": "echo", "plugin": "echo", "listen": [TCP, UDP], "idle_timeout": 0}


class UDPBindFailsReactor(UDPMemoryReactorClock):
    """
    A reactor on which every UDP bind fails, as when the port is taken.
    """

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))


def makeConfig(*services: dict[str, Any], registry: PluginRegistry | None = None, **daemon: Any) -> NetdConfig:
    """
    A validated config of C{services}, with C{daemon} as its [daemon] table
    (the control API off unless C{admin} is given: tests/unit/test_admin.py
    covers it).
    """
    return parseConfig(
        {"daemon": {"admin": False, **daemon}, "services": list(services)}, "test.toml", registry or discoverPlugins()
    )


def start(config: NetdConfig, reactor: Any, portsFile: Path | None = None) -> tuple[Daemon, Deferred[Any]]:
    """
    Make netd's application and start it; with a memory reactor the start
    completes at once.  Returns its daemon.
    """
    application = NetdApplication(config, reactor, portsFile=None if portsFile is None else str(portsFile))
    started = Deferred.fromCoroutine(application.start())
    return application.daemon, started


def test_startListensOnEveryAddress() -> None:
    """
    Starting listens on the TCP address through the service's connection limiter and binds the UDP address to a datagram listener, on the configured interfaces.
    """
    reactor = UDPMemoryReactorClock()
    daemon, d = start(makeConfig(ECHO), reactor)
    resultOf(d)
    [service] = daemon.netServices()
    [(port, factory, _, interface)] = reactor.tcpServers
    assert (port, interface) == (0, "127.0.0.1")
    assert factory is service.connections
    assert isinstance(factory, ConnectionLimiter)
    [udp] = reactor.udpPorts.values()
    assert udp.interface == "127.0.0.1"
    assert isinstance(udp.protocol, DatagramListener)
    assert daemon.running
    assert service.running


def test_portsFileReportsBoundAddresses(tmp_path: Path) -> None:
    """
    Once started, the ports file holds {"pid": netd's, "services": {name: [...]}} with each listen string and the address really bound.
    """
    portsFile = tmp_path / "ports.json"
    daemon, d = start(makeConfig(ECHO), UDPMemoryReactorClock(), portsFile)
    expected = [
        {"listen": TCP, "transport": "tcp", "host": "127.0.0.1", "port": 30000},
        {"listen": UDP, "transport": "udp", "host": "127.0.0.1", "port": 30000},
    ]
    assert resultOf(d) == {"echo": expected}
    assert json.loads(portsFile.read_text()) == {"pid": os.getpid(), "services": {"echo": expected}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ports.json"]


def test_startLogsEachListenWithTheService() -> None:
    """
    Each bound address is logged at info with the service's name as a field.
    """
    with capturedLogs() as events:
        resultOf(start(makeConfig(ECHO), UDPMemoryReactorClock())[1])
    listening = [e for e in events if e.get("listen") in (TCP, UDP)]
    assert [(e["listen"], e["service"], e["log_level"]) for e in listening] == [
        (TCP, "echo", LogLevel.info),
        (UDP, "echo", LogLevel.info),
    ]


def test_disabledServiceNotStarted(tmp_path: Path) -> None:
    """
    A service with enabled = false is neither built nor listened on nor reported.
    """
    portsFile = tmp_path / "ports.json"
    off = {"name": "off", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.2"], "enabled": False}
    reactor = UDPMemoryReactorClock()
    daemon, d = start(makeConfig(ECHO, off), reactor, portsFile)
    resultOf(d)
    assert [s.name for s in daemon.netServices()] == ["echo"]
    assert [interface for _, _, _, interface in reactor.tcpServers] == ["127.0.0.1"]
    assert list(json.loads(portsFile.read_text())["services"]) == ["echo"]


@attrs.frozen
class NoOptions:
    """
    A plugin schema without keys.
    """


@implementer(IProtocolPlugin)
class ExplodingPlugin:
    """
    A plugin whose build raises.
    """

    name = "exploding"
    summary = "fails to build"
    optionsType = NoOptions
    transports = frozenset({"stream"})
    framings = ("raw",)
    requiresTLS = False

    def build(self, options: object, context: object) -> object:
        raise RuntimeError("no handler today")


@implementer(IProtocolPlugin)
class WrongHandlerPlugin(ExplodingPlugin):
    """
    A plugin that claims streams but builds a handler without IStreamHandler.
    """

    name = "halfdone"

    def build(self, options: object, context: object) -> object:
        return object()


def registryWith(plugin: Any) -> PluginRegistry:
    """
    A registry holding only C{plugin}.
    """
    assert checkPlugin(plugin) is None
    return PluginRegistry({plugin.name: LoadedPlugin(plugin, "test")}, {})


def test_buildFailureNamesServiceAndPlugin() -> None:
    """
    A plugin whose build raises gives ServiceStartError naming the service, the plugin and the cause, before anything listens.
    """
    config = makeConfig(
        {"name": "svc", "plugin": "exploding", "listen": [TCP]}, registry=registryWith(ExplodingPlugin())
    )
    reactor = UDPMemoryReactorClock()
    with pytest.raises(ServiceStartError) as caught:
        Daemon(config, reactor)
    message = str(caught.value)
    assert "'svc'" in message
    assert "'exploding'" in message
    assert "RuntimeError: no handler today" in message
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert reactor.tcpServers == []


def test_handlerLackingStreamInterfaceRefused() -> None:
    """
    A handler that does not provide IStreamHandler for a stream listen address gives ServiceStartError naming the interface.
    """
    config = makeConfig(
        {"name": "svc", "plugin": "halfdone", "listen": [TCP]}, registry=registryWith(WrongHandlerPlugin())
    )
    with pytest.raises(ServiceStartError) as caught:
        Daemon(config, UDPMemoryReactorClock())
    message = str(caught.value)
    assert "'svc'" in message and "'halfdone'" in message and "IStreamHandler" in message


def test_bindFailureNamesServiceAndAddressAndReleasesPorts(tmp_path: Path) -> None:
    """
    When a bind fails, start raises ServiceStartError naming the service and listen string, and stops every TCP port already bound.
    """
    portsFile = tmp_path / "ports.json"
    reactor = UDPBindFailsReactor()
    daemon, d = start(makeConfig(ECHO), reactor, portsFile)
    failure = failureOf(d)
    assert failure.check(ServiceStartError)
    message = str(failure.value)
    assert "'echo'" in message
    assert repr(UDP) in message
    assert isinstance(failure.value, ServiceStartError)
    assert isinstance(failure.value.__cause__, CannotListenError)
    assert reactor.tcpPorts and not any(tcp.listening for tcp in reactor.tcpPorts)
    assert [s.ports for s in daemon.netServices()] == [[]]
    assert not daemon.running
    assert not portsFile.exists()


class TakenPortsReactor(UDPMemoryReactorClock):
    """
    A reactor on which binding the TCP or UDP port numbers of C{taken} fails
    with C{error} (EADDRINUSE: another process holds them).
    """

    def __init__(self, taken: set[int], error: int = errno.EADDRINUSE) -> None:
        super().__init__()
        self.taken = taken
        self.error = error

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self._refuse(port, interface)
        return super().listenTCP(port, factory, backlog, interface)

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        self._refuse(port, interface)
        return super().listenUDP(port, protocol, interface, maxPacketSize)

    def _refuse(self, port: int, interface: str) -> None:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(self.error, os.strerror(self.error)))


@pytest.mark.parametrize(
    ("listen", "command"),
    [
        pytest.param("tcp:7123:interface=127.0.0.1", "ss -ltnp 'sport = :7123'", id="tcp"),
        pytest.param("udp:7123:interface=127.0.0.1", "ss -lunp 'sport = :7123'", id="udp"),
        pytest.param("tcp6:7123:interface=\\:\\:1", "ss -ltnp 'sport = :7123'", id="tcp6"),
    ],
)
def test_addressInUseNamesKeyPathAndWaysOut(listen: str, command: str) -> None:
    """
    A listen refused because the address is taken names the service, its key path (counting disabled services), the address, the command that shows who holds it, and the ways out.
    """
    disabled = {"name": "off", "plugin": "echo", "listen": [TCP], "enabled": False}
    second = {"name": "second", "plugin": "echo", "listen": [TCP, listen]}
    reactor = TakenPortsReactor({7123})
    _, d = start(makeConfig(disabled, ECHO, second), reactor)
    message = str(failureOf(d).value)
    assert message.startswith(
        f"service 'second': cannot listen on {listen!r} (services[2].listen[1]): address already in use: "
    )
    assert command in message
    assert "another port in services[2].listen[1]" in message
    assert "port 0" in message
    assert "stop the process" in message


def test_otherListenErrorNamesKeyPath() -> None:
    """
    A listen refused for another reason (a port below 1024 without the right) names the key path and the system's reason, without advice about a taken port.
    """
    reactor = TakenPortsReactor({7}, error=errno.EACCES)
    _, d = start(makeConfig({**ECHO, "listen": ["tcp:7:interface=127.0.0.1"]}), reactor)
    message = str(failureOf(d).value)
    assert "service 'echo': cannot listen on 'tcp:7:interface=127.0.0.1' (services[0].listen[0]): " in message
    assert "Permission denied" in message
    assert "ss -" not in message


def test_reloadOnTakenPortNamesKeyPathOfTheNewFile(tmp_path: Path) -> None:
    """
    A reload whose new listen address is taken fails naming the key path in the file as reloaded, and the ways out.
    """
    path = tmp_path / "netd.toml"
    path.write_text(tomli_w.dumps({"daemon": {"admin": False}, "services": [ECHO]}))
    reactor = TakenPortsReactor({7124})
    daemon = Daemon(loadConfig(str(path), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(daemon.start()))
    added = {"name": "added", "plugin": "echo", "listen": ["udp:7124:interface=127.0.0.1"]}
    path.write_text(tomli_w.dumps({"daemon": {"admin": False}, "services": [added, ECHO]}))
    with capturedLogs() as events:
        failure = failureOf(Deferred.fromCoroutine(daemon.reload()))
    message = str(failure.value)
    assert (
        "service 'added': cannot listen on 'udp:7124:interface=127.0.0.1' (services[0].listen[0]): address already in use"
        in message
    )
    assert "ss -lunp 'sport = :7124'" in message
    assert any(message in str(e.get("error")) for e in events)


def test_reloadKeepsKeyPathsCurrent(tmp_path: Path) -> None:
    """
    After a reload that moves an unchanged service down the file, its listen errors name its new place.
    """
    path = tmp_path / "netd.toml"
    path.write_text(tomli_w.dumps({"daemon": {"admin": False}, "services": [ECHO]}))
    daemon = Daemon(loadConfig(str(path), discoverPlugins()), UDPMemoryReactorClock())
    resultOf(Deferred.fromCoroutine(daemon.start()))
    [echo] = daemon.netServices()
    assert echo.listenKey(echo.spec.listen[1]) == "services[0].listen[1]"
    added = {"name": "added", "plugin": "echo", "listen": [TCP]}
    path.write_text(tomli_w.dumps({"daemon": {"admin": False}, "services": [added, ECHO]}))
    assert resultOf(Deferred.fromCoroutine(daemon.reload()))["unchanged"] == ["echo"]
    assert [s.listenKey(s.spec.listen[0]) for s in daemon.netServices()] == [
        "services[0].listen[0]",
        "services[1].listen[0]",
    ]


def test_noControlAPIUnlessConfigured(tmp_path: Path) -> None:
    """
    A config without an admin key starts no control API: nothing listens for it, no token file is made, and the ports file has no admin entry.
    """
    portsFile = tmp_path / "ports.json"
    config = parseConfig(
        {"daemon": {"state_dir": str(tmp_path / "state")}, "services": [ECHO]}, "test.toml", discoverPlugins()
    )
    reactor = UDPMemoryReactorClock()
    daemon, d = start(config, reactor, portsFile)
    resultOf(d)
    assert isinstance(daemon.parent, NetdApplication) and daemon.parent.api is None
    [(port, factory, _, _)] = reactor.tcpServers
    assert factory is daemon.netServices()[0].connections
    assert not (tmp_path / "state" / "admin.token").exists()
    assert "admin" not in json.loads(portsFile.read_text())


def test_bindFailureReleasesEarlierServices() -> None:
    """
    A bind failing in a later service also stops the ports of the services started before it.
    """
    first = {"name": "first", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"]}
    second = {"name": "second", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.2", UDP]}
    reactor = UDPBindFailsReactor()
    _, d = start(makeConfig(first, second), reactor)
    assert "'second'" in str(failureOf(d).value)
    assert len(reactor.tcpPorts) == 2
    assert [p.listening for p in reactor.tcpPorts] == [False, False]


def startedWithConnection(shutdownTimeout: float) -> tuple[UDPMemoryReactorClock, Daemon, Any]:
    """
    A started echo daemon with one open connection.
    """
    reactor = UDPMemoryReactorClock()
    daemon, d = start(makeConfig(ECHO, shutdown_timeout=shutdownTimeout), reactor)
    resultOf(d)
    [service] = daemon.netServices()
    assert service.connections is not None
    connection = connect(service.connections)
    assert connection is not None
    return reactor, daemon, connection


def test_stopWithNoConnectionsFinishesAtOnce() -> None:
    """
    Stopping a daemon with no open connection stops every port and finishes at once.
    """
    reactor = UDPMemoryReactorClock()
    daemon, d = start(makeConfig(ECHO), reactor)
    resultOf(d)
    stopped = daemon.stopService()
    resultOf(stopped)
    assert [p.listening for p in reactor.tcpPorts] == [False]
    assert [p.listening for p in reactor.udpPorts.values()] == [False]
    assert not daemon.running
    assert reactor.getDelayedCalls() == []


def test_stopWaitsForOpenConnection() -> None:
    """
    Stopping stops listening first, then waits for an open connection, finishing when it closes without aborting it.
    """
    reactor, daemon, connection = startedWithConnection(5)
    stopped = daemon.stopService()
    assert [p.listening for p in reactor.tcpPorts] == [False]
    assert [p.listening for p in reactor.udpPorts.values()] == [False]
    reactor.advance(4)
    assert not stopped.called
    assert not connection.transport.disconnecting
    connection.peerClosed()
    resultOf(stopped)
    assert reactor.getDelayedCalls() == []


def test_stopAbortsConnectionsAfterShutdownTimeout() -> None:
    """
    A connection still open shutdown_timeout seconds after the stop began is aborted, and the stop then finishes.
    """
    reactor, daemon, connection = startedWithConnection(5)
    stopped = daemon.stopService()
    reactor.advance(5 - 0.1)
    assert not connection.transport.disconnecting
    assert not stopped.called
    reactor.advance(0.1)
    assert connection.transport.disconnected
    assert not stopped.called
    assert connection.finishClose()
    resultOf(stopped)
    assert reactor.getDelayedCalls() == []


def test_framingViolationLoggedWithService() -> None:
    """
    A framing violation on a service's connection is counted on that service and logged as a warning carrying its name.
    """
    config = makeConfig({"name": "dnsish", "plugin": "echo", "listen": [TCP], "framing": "u16", "max_frame": 5})
    [service] = Daemon(config, UDPMemoryReactorClock()).netServices()
    assert isinstance(service, NetService) and service.connections is not None
    connection = connect(service.connections)
    assert connection is not None
    with capturedLogs() as events:
        connection.receive(b"\x00\x06")
    assert connection.transport.disconnecting
    assert service.counters["frames_rejected"] == 1
    [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert (warning["service"], warning["framing"]) == ("dnsish", "u16")


@implementer(IStreamHandler)
class LifecycleHandler(Service):
    """
    A stream handler with a lifecycle of its own, recording its calls.
    """

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def newConnection(self) -> Any:
        return EchoReceiver()

    def startService(self) -> None:
        self.events.append("start")
        Service.startService(self)

    def stopService(self) -> Deferred[None]:
        self.events.append("stop")
        Service.stopService(self)
        self.stopped: Deferred[None] = Deferred()
        return self.stopped


@implementer(IProtocolPlugin)
class LifecyclePlugin(ExplodingPlugin):
    """
    A plugin whose handler provides IService.
    """

    name = "lifecycle"

    def __init__(self) -> None:
        self.events: list[str] = []

    def build(self, options: object, context: object) -> object:
        return LifecycleHandler(self.events)


def test_handlerServiceStartedAfterListeningAndStoppedAfterDrain() -> None:
    """
    A handler that provides IService is started once its ports listen, stopped only after the drain, and the stop waits for its Deferred.
    """
    plugin = LifecyclePlugin()
    config = makeConfig({"name": "svc", "plugin": "lifecycle", "listen": [TCP]}, registry=registryWith(plugin))
    reactor = UDPMemoryReactorClock()
    daemon, d = start(config, reactor)
    resultOf(d)
    assert plugin.events == ["start"]
    [service] = daemon.netServices()
    assert service.connections is not None
    connection = connect(service.connections)
    assert connection is not None
    stopped = daemon.stopService()
    assert plugin.events == ["start"]
    connection.peerClosed()
    assert plugin.events == ["start", "stop"]
    assert not stopped.called
    service.handler.stopped.callback(None)
    resultOf(stopped)


def test_startupSummaryOneLinePerServiceWithItsAddresses() -> None:
    """
    Once everything listens, one info line per service names it, its plugin and every bound address, as fields too.
    """
    other = {"name": "lines", "plugin": "echo", "listen": [TCP], "framing": "line"}
    with capturedLogs() as events:
        resultOf(start(makeConfig(ECHO, other), UDPMemoryReactorClock())[1])
    summary = [e for e in events if e.get("event") == "service_started"]
    assert [(e["service"], e["plugin"], e["addresses"], e["log_level"]) for e in summary] == [
        ("echo", "echo", ["tcp 127.0.0.1:30000", "udp 127.0.0.1:30000"], LogLevel.info),
        ("lines", "echo", ["tcp 127.0.0.1:30001"], LogLevel.info),
    ]
    assert summary[0]["log_format"] == "service {service} ({plugin}) on {where}"
    assert summary[0]["where"] == "tcp 127.0.0.1:30000, udp 127.0.0.1:30000"


def test_lameduckKeepsServingWhileNotReady() -> None:
    """
    With lameduck, a stop makes the daemon not ready at once but keeps every port listening for lameduck seconds, then closes them.
    """
    reactor = UDPMemoryReactorClock()
    daemon, d = start(makeConfig(ECHO, lameduck=2), reactor)
    resultOf(d)
    assert daemon.ready()
    stopped = daemon.stopService()
    assert not daemon.ready()
    reactor.advance(2 - 0.1)
    assert not stopped.called
    assert [p.listening for p in reactor.tcpPorts] == [True]
    assert [p.listening for p in reactor.udpPorts.values()] == [True]
    reactor.advance(0.1)
    assert [p.listening for p in reactor.tcpPorts] == [False]
    assert [p.listening for p in reactor.udpPorts.values()] == [False]
    resultOf(stopped)
    assert reactor.getDelayedCalls() == []
