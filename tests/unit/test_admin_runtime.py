"""
Services created and removed at runtime: C{POST /services} and
C{DELETE /services/NAME} over in-memory HTTP, and the daemon's
L{Daemon.createService} / L{Daemon.deleteService} beside its reload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from netd.config.spec import loadConfig
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import Daemon
from netd.daemon.service import NetService, ReloadInProgress
from netd.registry import discoverPlugins
from netd.testing.memory import FakeTCPPort, connect, failureOf, resultOf

from .test_admin import ADMIN, ECHO, Reactor, request, started
from .test_reload import SlowCloseReactor

EXTRA = {"name": "extra", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"], "idle_timeout": 0}


def post(reactor: Reactor, table: Any) -> Any:
    """
    C{POST /services} with C{table} as its JSON body; the response.
    """
    return request(reactor.site(), "POST", "/services", body=json.dumps(table).encode())


def listening(daemon: Daemon, name: str) -> list[FakeTCPPort]:
    """
    The fake TCP ports service C{name} listens on.
    """
    found = daemon.getServiceNamed(name)
    assert isinstance(found, NetService)
    return [p.port for p in found.ports if isinstance(p.port, FakeTCPPort)]


def test_postCreatesAndStartsAService(tmp_path: Path) -> None:
    """
    POST /services with a service table answers 201 with the service's entry of /services and its Location; the service listens, echoes, shows in /services and the ports file, and its start is logged as service_added.
    """
    portsFile = tmp_path / "ports.json"
    daemon, reactor = started(ECHO, portsFile=portsFile)
    with capturedLogs() as events:
        response = post(reactor, EXTRA)
    assert response.code == 201, response.body
    assert response.headers["location"] == "/services/extra"
    body = response.json()
    assert (body["plugin"], body["listening"]) == ("echo", True)
    [port] = listening(daemon, "extra")
    assert body["addresses"][0]["port"] == port.getHost().port
    assert list(request(reactor.site(), "GET", "/services").json()["services"]) == ["echo", "extra"]
    assert list(json.loads(portsFile.read_text())["services"]) == ["echo", "extra"]
    assert daemon.runtimeServices == ["extra"]
    service = daemon.getServiceNamed("extra")
    assert isinstance(service, NetService) and service.running and service.connections is not None
    connection = connect(service.connections)
    assert connection is not None
    connection.receive(b"ping")
    assert connection.takeSent() == b"ping"
    [added] = [e for e in events if e.get("event") == "service_added"]
    assert added["service"] == "extra"


def test_postBadTableIs422WithKeyPaths() -> None:
    """
    A table the config's decoding refuses answers 422 listing every problem by its key path within the table (not services[0].KEY), and nothing is added.
    """
    daemon, reactor = started(ECHO)
    response = post(reactor, {**EXTRA, "idle_timeout": "soon", "listen": ["tcp:nonsense"], "colour": "red"})
    assert response.code == 422
    body = response.json()
    assert body["error"] == "invalid service"
    problems = body["problems"]
    assert any(p.startswith("idle_timeout: ") for p in problems), problems
    assert any(p.startswith("listen[0]: ") for p in problems), problems
    assert any(p.startswith("colour: ") for p in problems), problems
    assert not any("services" in p for p in problems), problems
    assert [s.name for s in daemon.netServices()] == ["echo"]
    unknown = post(reactor, {**EXTRA, "plugin": "ecko"}).json()["problems"]
    assert unknown[0].startswith("plugin: unknown plugin 'ecko'")
    disabled = post(reactor, {**EXTRA, "enabled": False})
    assert (disabled.code, disabled.json()["problems"][0][:9]) == (422, "enabled: ")


def test_postBodyNotAnObjectIs400() -> None:
    """
    A body that is not a JSON object (an array, not JSON at all, nothing) answers 400 and adds nothing.
    """
    daemon, reactor = started(ECHO)
    site = reactor.site()
    assert (
        request(site, "POST", "/services", body=b"[1]").json()["message"] == "the body must be a JSON object, got list"
    )
    assert request(site, "POST", "/services", body=b"{nope").code == 400
    assert "body is empty" in request(site, "POST", "/services").json()["message"]
    assert [s.name for s in daemon.netServices()] == ["echo"]


def test_postPassesTheGuardOfChanges() -> None:
    """
    POST /services is a change: without the token (401), from a web page of another origin (403), with a Host that does not name the API (421) or a body that is not JSON (415) it is refused and adds nothing.
    """
    daemon, reactor = started(ECHO)
    site = reactor.site()
    body = json.dumps(EXTRA).encode()
    assert request(site, "POST", "/services", body=body, token=False).code == 401
    assert request(site, "POST", "/services", body=body, headers={"Origin": "http://evil.example"}).code == 403
    assert request(site, "POST", "/services", body=body, headers={"Host": "evil.example"}).code == 421
    assert request(site, "POST", "/services", body=body, headers={"Content-Type": "text/plain"}).code == 415
    assert [s.name for s in daemon.netServices()] == ["echo"]


def test_postNameClashIs409() -> None:
    """
    A table naming a running service answers 409, and the running service is untouched.
    """
    daemon, reactor = started(ECHO)
    before = daemon.getServiceNamed("echo")
    response = post(reactor, {**EXTRA, "name": "echo"})
    assert response.code == 409
    assert "'echo' runs" in response.json()["message"]
    assert daemon.getServiceNamed("echo") is before
    assert daemon.runtimeServices == []


def test_postListenFailureIs409AndNothingListens() -> None:
    """
    When one address of the new service cannot be listened on, the answer is 409 naming listen[N], and the addresses already bound for it are closed again: all or nothing.
    """
    reactor = Reactor(refusedPort=7100)
    daemon, reactor = started(ECHO, reactor=reactor)
    before = len(reactor.tcpPorts)
    response = post(reactor, {**EXTRA, "listen": ["tcp:0:interface=127.0.0.1", "tcp:7100:interface=127.0.0.1"]})
    assert response.code == 409
    body = response.json()
    assert body["error"] == "cannot listen"
    assert body["problems"][0].startswith("listen[1]: cannot listen on 'tcp:7100:interface=127.0.0.1'")
    opened = reactor.tcpPorts[before:]
    assert opened and not any(p.listening for p in opened)
    assert [s.name for s in daemon.netServices()] == ["echo"]


def test_deleteStopsTheServiceAndDrainsItsConnections(tmp_path: Path) -> None:
    """
    DELETE /services/NAME answers 200 with the addresses it listened on once its listeners are closed; it leaves /services and the ports file, an open connection is served until it ends (the drain of a service a reload removes), and the removal is logged as service_removed.
    """
    portsFile = tmp_path / "ports.json"
    daemon, reactor = started(ECHO, portsFile=portsFile)
    assert post(reactor, EXTRA).code == 201
    service = daemon.getServiceNamed("extra")
    assert isinstance(service, NetService) and service.connections is not None
    [port] = listening(daemon, "extra")
    connection = connect(service.connections)
    assert connection is not None
    with capturedLogs() as events:
        response = request(reactor.site(), "DELETE", "/services/extra")
    assert response.code == 200
    body = response.json()
    assert (body["status"], body["service"], body["addresses"][0]["port"]) == ("removed", "extra", port.getHost().port)
    assert not port.listening
    assert list(request(reactor.site(), "GET", "/services").json()["services"]) == ["echo"]
    assert list(json.loads(portsFile.read_text())["services"]) == ["echo"]
    assert daemon.runtimeServices == [] and daemon.draining() == 1
    connection.receive(b"still")
    assert connection.takeSent() == b"still"
    [removed] = [e for e in events if e.get("event") == "service_removed"]
    assert removed["service"] == "extra"


def test_deleteUnknownIs404AndBodyMustBeEmpty() -> None:
    """
    DELETE of a service that does not exist answers 404; a DELETE with a body other than {} answers 400 and removes nothing.
    """
    daemon, reactor = started(ECHO)
    assert request(reactor.site(), "DELETE", "/services/nothing").code == 404
    refused = request(reactor.site(), "DELETE", "/services/echo", body=b'{"force": true}')
    assert refused.code == 400
    assert [s.name for s in daemon.netServices()] == ["echo"]


def test_fileServiceCanBeDeleted() -> None:
    """
    A service of the config file can be deleted too; it is not a runtime service, so the list of those stays empty.
    """
    daemon, reactor = started(ECHO, EXTRA)
    assert request(reactor.site(), "DELETE", "/services/extra").code == 200
    assert [s.name for s in daemon.netServices()] == ["echo"]
    assert [s.name for s in daemon.config.services] == ["echo"]


# Runtime services and the reload.


def writeConfig(path: Path, *services: dict[str, Any]) -> None:
    """
    A config file of C{services} with the control API on.
    """
    path.write_text(tomli_w.dumps({"daemon": {"admin": ADMIN, "shutdown_timeout": 5}, "services": list(services)}))


def startFrom(path: Path, reactor: Reactor | SlowCloseReactor) -> Daemon:
    """
    A daemon started on the file at C{path}, whose reloads read it.
    """
    application = NetdApplication(loadConfig(str(path), discoverPlugins()), reactor)
    resultOf(Deferred.fromCoroutine(application.start()))
    return application.daemon


def add(daemon: Daemon, table: dict[str, Any]) -> Deferred[Any]:
    return Deferred.fromCoroutine(daemon.createService(table))


def test_reloadKeepsRuntimeServices(tmp_path: Path) -> None:
    """
    A reload keeps a service created at runtime that the file does not define: unchanged, the same object, after the file's services, still a runtime service.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, ECHO)
    daemon = startFrom(path, Reactor())
    resultOf(add(daemon, EXTRA))
    kept = daemon.getServiceNamed("extra")
    writeConfig(path, {**ECHO, "max_connections": 9})
    summary = resultOf(Deferred.fromCoroutine(daemon.reload()))
    assert summary == {"unchanged": ["extra"], "changed": ["echo"], "added": [], "removed": []}
    assert daemon.getServiceNamed("extra") is kept
    assert [s.name for s in daemon.netServices()] == ["echo", "extra"]
    assert daemon.runtimeServices == ["extra"]


def test_reloadFileDefiningTheNameWins(tmp_path: Path) -> None:
    """
    When the file comes to define a runtime service's name, the file's table replaces it and it is a file service from then on: a later file without it removes it.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, ECHO)
    daemon = startFrom(path, Reactor())
    resultOf(add(daemon, EXTRA))
    writeConfig(path, ECHO, {**EXTRA, "max_connections": 3})
    assert resultOf(Deferred.fromCoroutine(daemon.reload()))["changed"] == ["extra"]
    replaced = daemon.getServiceNamed("extra")
    assert isinstance(replaced, NetService) and replaced.spec.max_connections == 3
    assert daemon.runtimeServices == []
    writeConfig(path, ECHO)
    assert resultOf(Deferred.fromCoroutine(daemon.reload()))["removed"] == ["extra"]


def test_runtimeChangeDuringReloadRefused(tmp_path: Path) -> None:
    """
    While a reload runs, adding or removing a service raises ReloadInProgress (the API's 409) and changes nothing; afterwards both work, and a removal answers only once its listener has closed.
    """
    path = tmp_path / "netd.toml"
    writeConfig(path, ECHO)
    reactor = SlowCloseReactor()
    daemon = startFrom(path, reactor)
    writeConfig(path, {**ECHO, "max_connections": 7})
    pending = Deferred.fromCoroutine(daemon.reload())
    assert not pending.called
    assert isinstance(failureOf(add(daemon, EXTRA)).value, ReloadInProgress)
    assert isinstance(failureOf(Deferred.fromCoroutine(daemon.deleteService("echo"))).value, ReloadInProgress)
    for closing in reactor.closing:
        closing.callback(None)
    resultOf(pending)
    assert list(resultOf(add(daemon, EXTRA))) == ["extra"]
    deleted = Deferred.fromCoroutine(daemon.deleteService("extra"))
    assert not deleted.called
    reactor.closing[-1].callback(None)
    assert list(resultOf(deleted)) == ["extra"]


def test_runtimeChangeRefusedOnceStopping() -> None:
    """
    Once a stop has begun, adding a service is refused (ReloadInProgress), so the drain never races a new service.
    """
    daemon, reactor = started(ECHO)
    daemon.stopping = True
    assert isinstance(failureOf(add(daemon, EXTRA)).value, ReloadInProgress)
