"""
L{netd.daemon.daemon.Daemon.reload} on a fake reactor: the config file applied as a
difference by service name, a bad file changing nothing, one reload at a time,
rollback when a new listener fails, and TLS files read again.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, capturedLogs

from netd.config.options import ConfigError
from netd.config.spec import loadConfig
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import LISTEN_RETRY_DELAY, Daemon
from netd.daemon.service import NetService, ReloadInProgress, ServiceStartError
from netd.registry import discoverPlugins
from netd.testing.memory import (
    FakeTCPPort,
    MemoryStreamConnection,
    TestClientTLS,
    UDPMemoryReactorClock,
    connect,
    connectTLS,
    failureOf,
    resultOf,
)
from netd.tls.devcerts import ensureDevelopmentSet

A = {"name": "a", "plugin": "echo", "listen": ["tcp:7001:interface=127.0.0.1"], "idle_timeout": 0}
B = {"name": "b", "plugin": "echo", "listen": ["tcp:7002:interface=127.0.0.1"], "idle_timeout": 0}
C = {"name": "c", "plugin": "echo", "listen": ["tcp:7003:interface=127.0.0.1"], "idle_timeout": 0}


def writeConfig(path: Path, *services: dict[str, Any], **daemon: Any) -> None:
    """
    Write a config of C{services} (control API off) to C{path}.
    """
    path.write_text(
        tomli_w.dumps({"daemon": {"admin": False, "shutdown_timeout": 5, **daemon}, "services": list(services)})
    )


def startFrom(path: Path, reactor: Any, portsFile: Path | None = None) -> Daemon:
    """
    A daemon started on the config file at C{path}, whose reloads read that file.
    """
    application = NetdApplication(
        loadConfig(str(path), discoverPlugins()), reactor, portsFile=None if portsFile is None else str(portsFile)
    )
    resultOf(Deferred.fromCoroutine(application.start()))
    return application.daemon


def reload(daemon: Daemon) -> Deferred[dict[str, list[str]]]:
    """
    Start a reload; with a memory reactor it usually completes at once.
    """
    return Deferred.fromCoroutine(daemon.reload())


def service(daemon: Daemon, name: str) -> NetService:
    """
    The daemon's running service of that name.
    """
    found = daemon.getServiceNamed(name)
    assert isinstance(found, NetService)
    return found


def openConnection(s: NetService) -> MemoryStreamConnection:
    """
    An in-memory connection to a service, checked to echo.
    """
    assert s.connections is not None
    connection = connect(s.connections)
    assert connection is not None
    connection.receive(b"hello")
    assert connection.takeSent() == b"hello"
    return connection


def portOn(reactor: UDPMemoryReactorClock, number: int) -> list[FakeTCPPort]:
    """
    Every TCP port the reactor opened on that port number, oldest first.
    """
    return [p for p in reactor.tcpPorts if p.address.port == number]


def test_unchangedServiceKeepsListenerAndConnections(tmp_path: Path) -> None:
    """
    A service whose table did not change keeps its service object, its listener and its open connections across a reload that changes another service.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A, B)
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor)
    before = service(daemon, "a")
    [port] = before.ports
    connection = openConnection(before)
    writeConfig(path, A, {**B, "max_connections": 7})
    assert resultOf(reload(daemon)) == {"unchanged": ["a"], "changed": ["b"], "added": [], "removed": []}
    assert service(daemon, "a") is before
    assert before.ports == [port] and port.port.listening  # type: ignore[attr-defined]
    connection.receive(b"still")
    assert connection.takeSent() == b"still"
    assert not connection.transport.disconnecting


def test_changedServiceReplacesListenerAndDrainsOld(tmp_path: Path) -> None:
    """
    A changed service on the same address closes the old listener before the new one listens; the old service's connection keeps working until it closes, and the new service serves new connections.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor)
    old = service(daemon, "a")
    connection = openConnection(old)
    writeConfig(path, {**A, "max_connections": 7})
    assert resultOf(reload(daemon))["changed"] == ["a"]
    new = service(daemon, "a")
    assert new is not old and new.spec.max_connections == 7
    [oldPort, newPort] = portOn(reactor, 7001)
    assert (oldPort.listening, newPort.listening) == (False, True)
    assert [p.port for p in new.ports] == [newPort]
    connection.receive(b"old one")
    assert connection.takeSent() == b"old one"
    assert daemon.draining() == 1
    connection.peerClosed()
    assert daemon.draining() == 0
    openConnection(new)


def test_changedServiceOnNewAddressListensFirst(tmp_path: Path) -> None:
    """
    A changed service whose address changed listens on the new address and closes the old one.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor)
    writeConfig(path, {**A, "listen": ["tcp:7009:interface=127.0.0.1"]})
    assert resultOf(reload(daemon))["changed"] == ["a"]
    assert [p.listening for p in portOn(reactor, 7001)] == [False]
    assert [p.listening for p in portOn(reactor, 7009)] == [True]


def test_removedServiceStopsAcceptingAndDrains(tmp_path: Path) -> None:
    """
    A removed service stops listening at once and the reload returns while its open connection drains, aborted after shutdown_timeout.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A, B)
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor)
    removed = service(daemon, "b")
    connection = openConnection(removed)
    writeConfig(path, A)
    assert resultOf(reload(daemon)) == {"unchanged": ["a"], "changed": [], "added": [], "removed": ["b"]}
    assert [p.listening for p in portOn(reactor, 7002)] == [False]
    assert [s.name for s in daemon.netServices()] == ["a"]
    assert daemon.draining() == 1 and not connection.transport.disconnecting
    reactor.advance(5)
    assert connection.transport.disconnecting
    connection.finishClose()
    assert daemon.draining() == 0


def test_addedServiceListensAndPortsFileRewritten(tmp_path: Path) -> None:
    """
    A new service listens and starts, and the ports file then lists it.
    """
    path = tmp_path / "netd.toml"
    portsFile = tmp_path / "ports.json"
    writeConfig(path, A)
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor, portsFile)
    writeConfig(path, C, A)
    assert resultOf(reload(daemon))["added"] == ["c"]
    assert [p.listening for p in portOn(reactor, 7003)] == [True]
    assert service(daemon, "c").running
    assert [s.name for s in daemon.netServices()] == ["c", "a"]
    report = json.loads(portsFile.read_text())
    assert report["services"]["c"][0]["port"] == 7003


def test_badFileChangesNothingAndReportsEveryProblem(tmp_path: Path) -> None:
    """
    A reload of an invalid file raises ConfigError listing every problem, logs them all, and leaves every service as it was.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor)
    before = service(daemon, "a")
    writeConfig(path, {**A, "plugin": "nope"}, {**B, "listen": ["bogus:1"]})
    with capturedLogs() as events:
        failure = failureOf(reload(daemon))
    error = failure.value
    assert isinstance(error, ConfigError)
    assert len(error.problems) == 2
    text = str(error)
    assert "nope" in text and "bogus" in text
    [logged] = [e for e in events if e["log_level"] == LogLevel.error]
    assert "nope" in logged["problems"] and "bogus" in logged["problems"]
    assert service(daemon, "a") is before
    assert [p.listening for p in reactor.tcpPorts] == [True]
    assert [s.name for s in daemon.netServices()] == ["a"]


class SlowCloseReactor(UDPMemoryReactorClock):
    """
    A reactor whose TCP ports close only when the test fires their Deferred.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closing: list[Deferred[None]] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakeTCPPort:
        bound = super().listenTCP(port, factory, backlog, interface)
        reactor = self

        def stopListening() -> Deferred[None]:
            bound.listening = False
            d: Deferred[None] = Deferred()
            reactor.closing.append(d)
            return d

        bound.stopListening = stopListening  # type: ignore[method-assign]
        return bound


def test_concurrentReloadRefused(tmp_path: Path) -> None:
    """
    A reload asked for while another runs raises ReloadInProgress without touching anything; once the first finishes, reloads work again.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    reactor = SlowCloseReactor()
    daemon = startFrom(path, reactor)
    writeConfig(path, {**A, "max_connections": 7})
    first = reload(daemon)
    assert not first.called
    assert isinstance(failureOf(reload(daemon)).value, ReloadInProgress)
    [closing] = reactor.closing
    closing.callback(None)
    assert resultOf(first)["changed"] == ["a"]
    assert resultOf(reload(daemon))["unchanged"] == ["a"]


class RefusingReactor(UDPMemoryReactorClock):
    """
    A reactor on which some TCP port numbers are taken, some of them only for the first few attempts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.taken: dict[int, int] = {}

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakeTCPPort:
        if self.taken.get(port, 0) > 0:
            self.taken[port] -= 1
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def test_failedListenRollsBack(tmp_path: Path) -> None:
    """
    When a new service cannot listen, the reload raises ServiceStartError, closes what it opened, reopens the changed service's old listener and keeps the old services.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A, B)
    reactor = RefusingReactor()
    daemon = startFrom(path, reactor)
    oldA, oldB = service(daemon, "a"), service(daemon, "b")
    connection = openConnection(oldA)
    writeConfig(path, {**A, "max_connections": 7}, {**B, "listen": ["tcp:7010:interface=127.0.0.1"]}, C)
    reactor.taken[7003] = 100
    with pytest.raises(ServiceStartError, match="7003"):
        resultOf(reload(daemon))
    assert service(daemon, "a") is oldA and service(daemon, "b") is oldB
    assert [s.name for s in daemon.netServices()] == ["a", "b"]
    assert [p.listening for p in portOn(reactor, 7001)] == [False, False, True]  # old, new, reopened
    assert [p.port for p in oldA.ports] == [portOn(reactor, 7001)[-1]]
    assert [p.listening for p in portOn(reactor, 7002)] == [True]
    assert [p.listening for p in portOn(reactor, 7010)] == [False]
    assert oldA.running and oldB.running
    connection.receive(b"on")
    assert connection.takeSent() == b"on"
    assert daemon.config.services[0].max_connections != 7


def test_busyPortRetriedOnce(tmp_path: Path) -> None:
    """
    A changed service whose address is still busy just after the old listener closed is retried once, after a short delay.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    reactor = RefusingReactor()
    daemon = startFrom(path, reactor)
    writeConfig(path, {**A, "max_connections": 7})
    reactor.taken[7001] = 1
    d = reload(daemon)
    assert not d.called
    reactor.advance(LISTEN_RETRY_DELAY)
    assert resultOf(d)["changed"] == ["a"]
    assert [p.listening for p in portOn(reactor, 7001)] == [False, True]


def tlsService(directory: Path) -> dict[str, Any]:
    """
    An echo service with TLS from the certificate and key files in C{directory}.
    """
    return {
        **A,
        "tls": {"certificate": str(directory / "server.pem"), "private_key": str(directory / "server-key.pem")},
    }


def test_tlsFilesReloadedForNewConnections(tmp_path: Path) -> None:
    """
    A reload reads an unchanged TLS service's certificate files again: new connections get the new certificate while an open one goes on, and unusable files keep the old certificate and are reported.
    """
    first, _ = ensureDevelopmentSet(str(tmp_path / "first"))
    second, _ = ensureDevelopmentSet(str(tmp_path / "second"))
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(first.server, live / "server.pem")
    shutil.copy(first.serverKey, live / "server-key.pem")
    path = tmp_path / "netd.toml"
    writeConfig(path, tlsService(live))
    reactor = UDPMemoryReactorClock()
    daemon = startFrom(path, reactor)
    running = service(daemon, "a")
    assert running.connections is not None
    before = connectTLS(running.connections, TestClientTLS(), reactor)
    assert before is not None and before.handshakeDone
    oldSerial = before.serverCertificate.serial_number  # type: ignore[union-attr]

    shutil.copy(second.server, live / "server.pem")
    shutil.copy(second.serverKey, live / "server-key.pem")
    assert resultOf(reload(daemon))["unchanged"] == ["a"]
    assert service(daemon, "a") is running
    after = connectTLS(running.connections, TestClientTLS(), reactor)
    assert after is not None and after.handshakeDone
    newSerial = after.serverCertificate.serial_number  # type: ignore[union-attr]
    assert newSerial != oldSerial
    before.send(b"still here")
    assert before.takeReceived() == b"still here"

    (live / "server.pem").write_text("not a certificate")
    error = failureOf(reload(daemon)).value
    assert isinstance(error, ConfigError)
    assert "services[0].tls" in str(error) and "keeping the old ones" in str(error)
    third = connectTLS(running.connections, TestClientTLS(), reactor)
    assert third is not None and third.handshakeDone
    assert third.serverCertificate.serial_number == newSerial  # type: ignore[union-attr]


def test_embeddedDefaultIsReadAgain() -> None:
    """
    A daemon started on the embedded default config reloads from the embedded default (no file path).
    """
    config = loadConfig(None, discoverPlugins())
    daemon = Daemon(config, UDPMemoryReactorClock())
    assert daemon.configPath is None


def test_daemonLiveKeysAppliedOthersNeedRestart(tmp_path: Path) -> None:
    """
    A reload applies a new shutdown_timeout to the running services and logs that a changed log_format needs a restart.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    daemon = startFrom(path, UDPMemoryReactorClock())
    writeConfig(path, A, shutdown_timeout=9, log_format="json")
    with capturedLogs() as events:
        assert resultOf(reload(daemon))["unchanged"] == ["a"]
    assert service(daemon, "a").shutdownTimeout == 9
    assert daemon.config.daemon.shutdown_timeout == 9
    assert daemon.config.daemon.log_format == "text"
    assert any(e.get("key") == "log_format" and e["log_level"] == LogLevel.warn for e in events)


def test_reloadToldToSystemd(tmp_path: Path) -> None:
    """
    A reload sends RELOADING=1 then READY=1 with a status line, a failed one too.
    """
    from .test_systemd import RecordingNotifier

    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    notifier = RecordingNotifier()
    daemon = Daemon(loadConfig(str(path), discoverPlugins()), UDPMemoryReactorClock(), notifier)
    resultOf(Deferred.fromCoroutine(daemon.start()))
    del notifier.sent[:]
    resultOf(reload(daemon))
    path.write_text("not toml [")
    failureOf(reload(daemon))
    kinds = [fields[0][0] for fields, _ in notifier.sent]
    assert kinds == ["RELOADING", "READY", "RELOADING", "READY"]
    statuses = [dict(fields)["STATUS"] for fields, _ in notifier.sent if fields[0][0] == "READY"]
    assert statuses[0].startswith("reloaded: 1 unchanged") and statuses[1].startswith("reload failed")


def test_stopDuringReloadWaitsForTheReload(tmp_path: Path) -> None:
    """
    A stop that arrives while a reload waits to listen turns /ready off at once, lets the reload finish, then drains every service, the one the reload started included: nothing is left listening.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A, B)
    reactor = RefusingReactor()
    daemon = startFrom(path, reactor)
    writeConfig(path, {**A, "max_connections": 7}, B)
    reactor.taken[7001] = 1
    reloading = reload(daemon)
    stopped = daemon.stopService()
    assert daemon.stopping and not daemon.ready()
    assert not stopped.called
    assert service(daemon, "b").running
    reactor.advance(LISTEN_RETRY_DELAY)
    assert resultOf(reloading)["changed"] == ["a"]
    resultOf(stopped)
    assert not any(s.running for s in daemon.netServices())
    assert [p.listening for p in portOn(reactor, 7001)] == [False, False]
    assert [p.listening for p in portOn(reactor, 7002)] == [False]


def test_stopDuringReloadWaitsForTheRollback(tmp_path: Path) -> None:
    """
    A stop that arrives during a reload that then fails waits for the rollback (the old listener reopened) and drains the old services: nothing is left listening.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A)
    reactor = RefusingReactor()
    daemon = startFrom(path, reactor)
    old = service(daemon, "a")
    writeConfig(path, {**A, "max_connections": 7})
    reactor.taken[7001] = 2
    reloading = reload(daemon)
    stopped = daemon.stopService()
    assert not stopped.called
    reactor.advance(LISTEN_RETRY_DELAY)
    assert isinstance(failureOf(reloading).value, ServiceStartError)
    resultOf(stopped)
    assert service(daemon, "a") is old and not old.running
    assert not any(p.listening for p in portOn(reactor, 7001))


def test_reloadAfterStopBeganIsRefused(tmp_path: Path) -> None:
    """
    A reload asked for once a stop has begun is refused (ReloadInProgress), so the drain never races a new reload.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, A, lameduck=5)
    reactor = RefusingReactor()
    daemon = startFrom(path, reactor)
    stopped = daemon.stopService()
    assert isinstance(failureOf(reload(daemon)).value, ReloadInProgress)
    reactor.advance(5)
    resultOf(stopped)
