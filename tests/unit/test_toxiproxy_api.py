"""
The toxiproxy-compatible API (L{netd.daemon.toxiproxy}) over in-memory HTTP
on a fake reactor: toxiproxy's routes, JSON shapes and status codes, each
proxy a runtime service of the proxy plugin, each toxic one of its faults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import capturedLogs

from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.daemon.api.resources import metricsText
from netd.daemon.daemon import Daemon
from netd.daemon.service import NetService
from netd.daemon.toxiproxy.resource import TOXIPROXY_VERSION
from netd.registry import discoverPlugins
from netd.testing.memory import FakeTCPPort, connect, resultOf

from .test_admin import ECHO, Reactor, Response, applicationOf, key, request, samples, started

TOXIPROXY = "tcp:8474:interface=127.0.0.1"
REDIS = {"name": "redis", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379"}


def toxiproxy(**daemon: Any) -> tuple[Daemon, Reactor]:
    """
    A daemon with the toxiproxy API and no control API, started on a fake reactor.
    """
    return started(ECHO, admin=False, toxiproxy=TOXIPROXY, **daemon)


def call(reactor: Reactor, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
    """
    One request to the toxiproxy API, C{body} sent as JSON.
    """
    data = b"" if body is None else json.dumps(body).encode()
    return request(reactor.site(), method, path, body=data, **kwargs)


def service(daemon: Daemon, name: str) -> NetService:
    """
    The running service of a proxy.
    """
    found = daemon.getServiceNamed(name)
    assert isinstance(found, NetService)
    return found


def faults(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    """
    The fault list in force on a proxy's service.
    """
    return service(daemon, name).faults.faults.toConfig()


def test_versionAndEmptyList() -> None:
    """
    GET /version answers toxiproxy's version object and GET /proxies an empty object.
    """
    _, reactor = toxiproxy()
    assert call(reactor, "GET", "/version").json() == {"version": TOXIPROXY_VERSION}
    assert call(reactor, "GET", "/proxies").json() == {}


def test_createMakesAProxyService(tmp_path: Path) -> None:
    """
    POST /proxies answers 201 with the proxy, its listen the address bound; a proxy-plugin service of its name listens there, towards the upstream.
    """
    daemon, reactor = toxiproxy()
    response = call(reactor, "POST", "/proxies", REDIS)
    assert response.code == 201
    body = response.json()
    proxied = service(daemon, "redis")
    [bound] = [p.describe() for p in proxied.ports]
    assert body == {
        "name": "redis",
        "listen": f"127.0.0.1:{bound['port']}",
        "upstream": "127.0.0.1:6379",
        "enabled": True,
        "toxics": [],
    }
    assert proxied.spec.plugin.name == "proxy"
    assert str(proxied.spec.options.upstream) == "tcp:host=127.0.0.1:port=6379"
    assert call(reactor, "GET", "/proxies").json() == {"redis": body}
    assert call(reactor, "GET", "/proxies/redis").json() == body


def test_createErrorsAreToxiproxys() -> None:
    """
    A second proxy of one name is 409, a missing upstream 400, an unknown proxy 404, each as {"error", "status"}.
    """
    _, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", REDIS)
    clash = call(reactor, "POST", "/proxies", REDIS)
    assert (clash.code, clash.json()) == (409, {"error": "proxy already exists", "status": 409})
    missing = call(reactor, "POST", "/proxies", {"name": "x"})
    assert (missing.code, missing.json()) == (400, {"error": "missing required field: upstream", "status": 400})
    unknown = call(reactor, "GET", "/proxies/nope")
    assert (unknown.code, unknown.json()) == (404, {"error": "proxy not found", "status": 404})
    assert call(reactor, "GET", "/proxies/redis/toxics/nope").json()["error"] == "toxic not found"


def test_disabledProxyHasNoService() -> None:
    """
    A proxy created disabled has no service; enabling it starts one, disabling it again closes its listener and cuts its connections.
    """
    daemon, reactor = toxiproxy()
    body = call(reactor, "POST", "/proxies", {**REDIS, "enabled": False}).json()
    assert body["enabled"] is False
    assert "redis" not in [s.name for s in daemon.netServices()]
    enabled = call(reactor, "POST", "/proxies/redis", {"enabled": True}).json()
    assert enabled["enabled"] is True
    proxied = service(daemon, "redis")
    assert proxied.connections is not None
    connection = connect(proxied.connections)
    assert connection is not None
    port = proxied.ports[0].port
    assert isinstance(port, FakeTCPPort)
    disabled = call(reactor, "POST", "/proxies/redis", {"enabled": False}).json()
    assert disabled["enabled"] is False
    assert "redis" not in [s.name for s in daemon.netServices()]
    assert connection.transport.disconnected
    assert not port.listening
    again = call(reactor, "POST", "/proxies/redis", {"enabled": True}).json()
    assert again["listen"] == disabled["listen"] == enabled["listen"]


def test_toxicsBecomeTheServicesFaults() -> None:
    """
    Toxics posted to a proxy are its service's faults, in order, and GET answers them as they were posted.
    """
    daemon, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", REDIS)
    slow = {"name": "slow", "type": "latency", "stream": "upstream", "toxicity": 1.0, "attributes": {"latency": 100}}
    response = call(reactor, "POST", "/proxies/redis/toxics", slow)
    assert response.code == 200
    posted = response.json()
    assert posted == {**slow, "attributes": {"latency": 100, "jitter": 0}}
    call(reactor, "POST", "/proxies/redis/toxics", {"type": "limit_data", "attributes": {"bytes": 10}})
    assert faults(daemon, "redis") == [
        {"type": "latency", "ms": 100.0, "jitter": 0.0, "direction": "from_client"},
        {"type": "close_after", "bytes": 10, "direction": "to_client"},
    ]
    toxics = call(reactor, "GET", "/proxies/redis/toxics").json()
    assert [t["name"] for t in toxics] == ["slow", "limit_data_downstream"]
    assert call(reactor, "GET", "/proxies/redis/toxics/slow").json() == posted
    assert call(reactor, "GET", "/proxies/redis").json()["toxics"] == toxics
    clash = call(reactor, "POST", "/proxies/redis/toxics", slow)
    assert (clash.code, clash.json()["error"]) == (409, "toxic already exists")


def test_updateAndDeleteToxic() -> None:
    """
    POST to a toxic changes its fault; DELETE answers 204 and the fault is gone.
    """
    daemon, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", REDIS)
    call(reactor, "POST", "/proxies/redis/toxics", {"name": "slow", "type": "latency", "attributes": {"latency": 100}})
    updated = call(reactor, "POST", "/proxies/redis/toxics/slow", {"attributes": {"latency": 250}})
    assert updated.json()["attributes"] == {"latency": 250, "jitter": 0}
    assert faults(daemon, "redis")[0]["ms"] == 250
    deleted = call(reactor, "DELETE", "/proxies/redis/toxics/slow")
    assert (deleted.code, deleted.body) == (204, b"")
    assert faults(daemon, "redis") == []


def test_badToxicChangesNothing() -> None:
    """
    A toxic netd cannot apply is a 400 naming it, and the proxy keeps its toxics and faults.
    """
    daemon, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", REDIS)
    refused = call(reactor, "POST", "/proxies/redis/toxics", {"type": "slicer", "attributes": {"average_size": 0}})
    assert refused.code == 400
    assert "slicer_downstream" in refused.json()["error"]
    assert call(reactor, "GET", "/proxies/redis/toxics").json() == []
    assert faults(daemon, "redis") == []


def test_toxicsOfADisabledProxyApplyWhenEnabled() -> None:
    """
    Toxics added while a proxy is disabled are its service's faults once it is enabled.
    """
    daemon, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", {**REDIS, "enabled": False})
    call(reactor, "POST", "/proxies/redis/toxics", {"type": "timeout", "attributes": {"timeout": 100}})
    call(reactor, "POST", "/proxies/redis", {"enabled": True})
    assert faults(daemon, "redis") == [{"type": "blackhole", "close_after_ms": 100.0, "direction": "to_client"}]


def test_deleteProxy() -> None:
    """
    DELETE /proxies/NAME answers 204, and the proxy and its service are gone.
    """
    daemon, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", REDIS)
    response = call(reactor, "DELETE", "/proxies/redis")
    assert (response.code, response.body) == (204, b"")
    assert call(reactor, "GET", "/proxies").json() == {}
    assert [s.name for s in daemon.netServices()] == ["echo"]


def test_resetEnablesAndClears() -> None:
    """
    POST /reset answers 204: every proxy enabled again, every toxic removed.
    """
    daemon, reactor = toxiproxy()
    call(reactor, "POST", "/proxies", REDIS)
    call(reactor, "POST", "/proxies", {**REDIS, "name": "off", "enabled": False})
    call(reactor, "POST", "/proxies/redis/toxics", {"type": "latency", "attributes": {"latency": 10}})
    assert call(reactor, "POST", "/reset").code == 204
    proxies = call(reactor, "GET", "/proxies").json()
    assert [(p["enabled"], p["toxics"]) for p in proxies.values()] == [(True, []), (True, [])]
    assert faults(daemon, "redis") == [] and faults(daemon, "off") == []


def test_populateKeepsSameReplacesChanged() -> None:
    """
    POST /populate creates new proxies, keeps one that is the same (its toxics too), replaces one whose upstream changed, and answers 201 with them.
    """
    daemon, reactor = toxiproxy()
    first = call(reactor, "POST", "/proxies", REDIS).json()
    call(reactor, "POST", "/proxies/redis/toxics", {"type": "latency", "attributes": {"latency": 10}})
    same = {**REDIS, "listen": first["listen"]}
    response = call(reactor, "POST", "/populate", [same, {"name": "pg", "upstream": "127.0.0.1:5432"}])
    assert response.code == 201
    proxies = response.json()["proxies"]
    assert [p["name"] for p in proxies] == ["redis", "pg"]
    assert len(proxies[0]["toxics"]) == 1
    moved = call(reactor, "POST", "/populate", [{**same, "upstream": "127.0.0.1:6380"}]).json()["proxies"]
    assert (moved[0]["upstream"], moved[0]["toxics"]) == ("127.0.0.1:6380", [])
    assert str(service(daemon, "redis").spec.options.upstream) == "tcp:host=127.0.0.1:port=6380"


def test_populateErrors() -> None:
    """
    POST /populate with a proxy lacking a name is a 400 that creates nothing; one that fails later answers its error with the proxies done before it.
    """
    _, reactor = toxiproxy()
    missing = call(reactor, "POST", "/populate", [REDIS, {"upstream": "127.0.0.1:1"}])
    assert (missing.code, missing.json()["error"]) == (400, "missing required field: name at proxy 2")
    assert call(reactor, "GET", "/proxies").json() == {}
    bad = call(reactor, "POST", "/populate", [REDIS, {"name": "x", "upstream": "nowhere"}]).json()
    assert (bad["status"], [p["name"] for p in bad["proxies"]]) == (400, ["redis"])


def test_nameOfARunningServiceIs409() -> None:
    """
    A proxy named as a service of the config is a 409, and that service is untouched.
    """
    daemon, reactor = toxiproxy()
    before = daemon.getServiceNamed("echo")
    response = call(reactor, "POST", "/proxies", {**REDIS, "name": "echo"})
    assert response.code == 409
    assert daemon.getServiceNamed("echo") is before
    assert call(reactor, "GET", "/proxies").json() == {}


def test_guardedLikeTheControlAPI() -> None:
    """
    The API passes the control API's request guard: a foreign Host is refused (421), a change from another origin (403), a body not sent as JSON (415), each in toxiproxy's error shape.
    """
    _, reactor = toxiproxy()
    body = json.dumps(REDIS).encode()
    site = reactor.site()
    host = request(site, "GET", "/proxies", headers={"Host": "evil.example"})
    assert (host.code, host.json()["status"]) == (421, 421)
    assert host.json()["error"].startswith("this is netd's toxiproxy API, which answers to localhost")
    assert request(site, "POST", "/proxies", body=body, headers={"Origin": "http://evil.example"}).code == 403
    assert request(site, "POST", "/proxies", body=body, headers={"Content-Type": "text/plain"}).code == 415
    assert call(reactor, "GET", "/proxies").json() == {}


def test_unknownRouteAndMethod() -> None:
    """
    An unknown path is 404 and a method a route does not take 405, in toxiproxy's error shape.
    """
    _, reactor = toxiproxy()
    assert call(reactor, "GET", "/nope").code == 404
    assert call(reactor, "PUT", "/proxies").json()["status"] == 405


def test_listenedOnAndLoggedAndReported(tmp_path: Path) -> None:
    """
    The API listens on [daemon] toxiproxy, says where in the log and the ports file, and warns when other hosts can reach it.
    """
    portsFile = tmp_path / "ports.json"
    with capturedLogs() as events:
        started(ECHO, admin=False, toxiproxy="tcp:8474", portsFile=portsFile)
    report = json.loads(portsFile.read_text())
    assert report["toxiproxy"]["listen"] == "tcp:8474"
    assert any("toxiproxy API on" in str(e.get("log_format")) for e in events)
    assert any("no authentication" in str(e.get("log_format")) for e in events)


def test_unknownDeeperPathIs404() -> None:
    """
    A path deeper than any route is 404, and a toxic's route refuses PUT with 405.
    """
    _, reactor = toxiproxy()
    assert call(reactor, "GET", "/proxies/a/toxics/b/c").code == 404
    assert call(reactor, "PUT", "/proxies/a/toxics/b", {}).code == 405


def test_updateMovesTheProxy() -> None:
    """
    PATCH with a new upstream makes the proxy's service anew towards it and cuts the connections it had; the listen stays.
    """
    daemon, reactor = toxiproxy()
    created = call(reactor, "POST", "/proxies", REDIS).json()
    before = service(daemon, "redis")
    assert before.connections is not None
    connection = connect(before.connections)
    assert connection is not None
    moved = call(reactor, "PATCH", "/proxies/redis", {"upstream": "127.0.0.1:6380"}).json()
    assert (moved["upstream"], moved["listen"], moved["enabled"]) == ("127.0.0.1:6380", created["listen"], True)
    after = service(daemon, "redis")
    assert after is not before
    assert str(after.spec.options.upstream) == "tcp:host=127.0.0.1:port=6380"
    assert connection.transport.disconnected


def test_failureIs500WithoutTraceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A failure inside a change is logged with its traceback and answered 500 in toxiproxy's shape, without it.
    """
    daemon, reactor = toxiproxy()

    async def broken(table: object) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(daemon, "createService", broken)
    with capturedLogs() as events:
        response = call(reactor, "POST", "/proxies", REDIS)
    assert response.code == 500
    assert response.json()["status"] == 500 and "boom" not in response.body.decode()
    assert any(e.get("log_failure") is not None for e in events)
    assert call(reactor, "GET", "/proxies").json() == {}


def test_configWithOnlyToxiproxyIsValid() -> None:
    """
    A config whose only work is the toxiproxy API needs no [[services]]; without it, one still does.
    """
    config = parseConfig({"daemon": {"toxiproxy": TOXIPROXY}}, "test.toml", discoverPlugins())
    assert config.services == ()
    with pytest.raises(ConfigError, match="no enabled service"):
        parseConfig({"daemon": {}}, "test.toml", discoverPlugins())


def test_stopClosesTheListenerAfterTheServices() -> None:
    """
    Stopping netd stops its proxies' services and then closes the toxiproxy API's listener.
    """
    daemon, reactor = toxiproxy(shutdown_timeout=0)
    call(reactor, "POST", "/proxies", REDIS)
    [apiPort] = [p for p in reactor.tcpPorts if p.factory is reactor.site()]
    assert isinstance(apiPort, FakeTCPPort)
    resultOf(applicationOf(daemon).stopService())
    assert not apiPort.listening
    assert not service(daemon, "redis").running


def test_refusalsAreCountedOnTheControlAPIsMetrics() -> None:
    """
    What the toxiproxy API turns away is counted as the control API's refusals are, in its own families of the
    control API's /metrics (C{netd_toxiproxy_requests_refused_total{reason}}, C{..._connections_refused_total},
    C{..._connections_evicted_total}), and not in the control API's.
    """
    daemon, reactor = started(ECHO, toxiproxy=TOXIPROXY)
    application = applicationOf(daemon)
    assert application.toxiproxy is not None
    site = application.toxiproxy.site
    request(site, "GET", "/proxies", headers={"Host": "evil.example"})
    request(site, "POST", "/proxies", body=json.dumps(REDIS).encode(), headers={"Origin": "http://evil.example"})
    request(site, "POST", "/proxies", body=b"{}", headers={"Content-Type": "text/plain"})
    assert application.api is not None and application.api.resource is not None
    found = samples(metricsText(daemon, application.api.resource))
    assert found[key("netd_toxiproxy_requests_refused_total", reason="host")] == 1
    assert found[key("netd_toxiproxy_requests_refused_total", reason="origin")] == 1
    assert found[key("netd_toxiproxy_requests_refused_total", reason="content_type")] == 1
    assert found[key("netd_toxiproxy_connections_refused_total")] == 0
    assert found[key("netd_toxiproxy_connections_evicted_total")] == 0
    assert found[key("netd_admin_requests_refused_total", reason="host")] == 0
