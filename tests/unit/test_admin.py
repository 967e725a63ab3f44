"""
The control API (L{netd.daemon.api}) over in-memory HTTP: each endpoint, the token,
404/405/400/500 answers in JSON, the Prometheus text checked with
prometheus_client's parser; its config keys; its place in the daemon's start,
ports file and stop; and the metrics types of L{netd.metrics}.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web.server import Site
from zope.interface import implementer

from netd import __version__
from netd.config.options import ConfigError, Problem
from netd.config.spec import NetdConfig, isLocalOnly, parseConfig
from netd.daemon.api.http import AdminSite
from netd.daemon.api.resources import AdminResource, metricsText
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import Daemon
from netd.daemon.service import ReloadInProgress, ServiceStartError
from netd.interfaces import IHasRuntimeTables, IProtocolPlugin, IReportsStatus, IRuntimeTable, IStreamHandler
from netd.metrics import Counters, Exposition, Histogram, formatFloat, metricName
from netd.registry import LoadedPlugin, PluginRegistry, checkPlugin, discoverPlugins
from netd.testing.memory import FakeTCPPort, UDPMemoryReactorClock, connect, resultOf
from netd.tls.failures import FAILURE_REASONS
from netd_plugins.echo import EchoReceiver

ADMIN = "tcp:0:interface=127.0.0.1"
ECHO = {
    "name": "echo",
    "plugin": "echo",
    "listen": ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"],
    "idle_timeout": 0,
}
DNS = {
    "name": "dns",
    "plugin": "dns-proxy",
    "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
    "upstreams": ["udp:192.0.2.1"],
    "health_check": 3600,
}
TOKEN = "s3cret-token"


# A fake reactor whose TCP ports behave enough like real ones.


class Reactor(UDPMemoryReactorClock):
    """
    The UDP-capable memory reactor whose TCP ports get distinct port numbers
    (30000, 30001, ...) and record being stopped; binding C{refusedPort} fails.
    """

    def __init__(self, refusedPort: int | None = None) -> None:
        super().__init__()
        self.refusedPort = refusedPort

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakeTCPPort:
        if port == self.refusedPort:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)

    def site(self) -> Site:
        """
        The control API's HTTP factory (the only Site listened on).
        """
        [site] = [p.factory for p in self.tcpPorts if isinstance(p.factory, Site)]
        return site


# Plugins for the status() cases.


@attrs.frozen
class NoOptions:
    """
    A plugin schema without keys.
    """


@implementer(IStreamHandler, IReportsStatus)
class ReportingHandler:
    """
    An echo handler that reports a status, or fails to when C{broken}.
    """

    def __init__(self, broken: bool) -> None:
        self.broken = broken

    def newConnection(self) -> EchoReceiver:
        return EchoReceiver()

    def status(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("status exploded")
        return {"mood": "fine", "items": [1, 2]}


@implementer(IProtocolPlugin)
class ReportingPlugin:
    """
    A stream plugin whose handler provides IReportsStatus; C{broken = true} makes status() raise.
    """

    name = "reporting"
    summary = "reports a status"
    optionsType = NoOptions
    transports = frozenset({"stream"})
    framings = ("raw",)
    requiresTLS = False

    def build(self, options: object, context: object) -> ReportingHandler:
        return ReportingHandler(broken=False)


@implementer(IProtocolPlugin)
class BrokenReportingPlugin(ReportingPlugin):
    """
    Like L{ReportingPlugin}, but status() raises.
    """

    name = "broken-reporting"

    def build(self, options: object, context: object) -> ReportingHandler:
        return ReportingHandler(broken=True)


@implementer(IRuntimeTable)
class FakeTable:
    """
    A runtime table that answers what it was given: the query of GET and
    DELETE, the body of PUT; a PUT body C{{"bad": true}} is a ConfigError
    with two problems, C{{"explode": true}} an unexpected exception; DELETE
    is not taken.
    """

    def get(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        return {"query": dict(query)}

    def put(self, body: Any) -> Mapping[str, Any]:
        if body == {"bad": True}:
            raise ConfigError(
                "request body",
                [
                    Problem(("faults", 0, "ms"), "-1 is out of range; expected 0 to 60000"),
                    Problem((), "one more thing"),
                ],
            )
        if body == {"explode": True}:
            raise ZeroDivisionError("table exploded")
        return {"body": body}

    def delete(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        raise NotImplementedError("no deleting")


@implementer(IStreamHandler, IHasRuntimeTables)
class TablesHandler:
    """
    An echo handler with one table of its own, C{fake}.
    """

    def newConnection(self) -> EchoReceiver:
        return EchoReceiver()

    def runtimeTables(self) -> Mapping[str, IRuntimeTable]:
        return {"fake": FakeTable()}


@implementer(IProtocolPlugin)
class TablesPlugin(ReportingPlugin):
    """
    A stream plugin whose handler has the runtime table C{fake}.
    """

    name = "tables"

    def build(self, options: object, context: object) -> TablesHandler:  # type: ignore[override]
        return TablesHandler()


def registry() -> PluginRegistry:
    """
    The installed plugins and the two reporting ones.
    """
    found = discoverPlugins()
    plugins = dict(found.plugins)
    for plugin in (ReportingPlugin(), BrokenReportingPlugin(), TablesPlugin()):
        assert checkPlugin(plugin) is None
        plugins[plugin.name] = LoadedPlugin(plugin, "test")
    return PluginRegistry(plugins, found.broken)


def makeConfig(*services: dict[str, Any], **daemon: Any) -> NetdConfig:
    """
    A validated config of C{services}; the control API on L{ADMIN} unless C{daemon} says otherwise.
    """
    return parseConfig({"daemon": {"admin": ADMIN, **daemon}, "services": list(services)}, "test.toml", registry())


def started(
    *services: dict[str, Any], reactor: Reactor | None = None, portsFile: Path | None = None, **daemon: Any
) -> tuple[Daemon, Reactor]:
    """
    A daemon of C{services} with its control API, started on a fake reactor.
    """
    reactor = reactor or Reactor()
    application = NetdApplication(
        makeConfig(*services, **daemon), reactor, portsFile=None if portsFile is None else str(portsFile)
    )
    resultOf(Deferred.fromCoroutine(application.start()))
    return application.daemon, reactor


def applicationOf(daemon: Daemon) -> NetdApplication:
    """
    The application whose services C{daemon} is.
    """
    assert isinstance(daemon.parent, NetdApplication)
    return daemon.parent


def metrics(reactor: Reactor) -> str:
    """
    The text of C{/metrics} of the control API listening on C{reactor}.
    """
    resource = reactor.site().resource
    assert isinstance(resource, AdminResource)
    return metricsText(resource.daemon, resource)


# In-memory HTTP.


@attrs.frozen
class Response:
    """
    One HTTP response as read off the wire.
    """

    code: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """
        The body as JSON, after checking that it says it is.
        """
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


@attrs.define
class Exchange:
    """
    One request sent to a Site over a StringTransport; the response is read when asked for.
    """

    transport: StringTransport

    def response(self) -> Response:
        """
        The complete response; fails if it has not all been written.
        """
        raw = self.transport.value()
        head, separator, body = raw.partition(b"\r\n\r\n")
        assert separator, f"no complete response head yet: {raw!r}"
        statusLine, *headerLines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in headerLines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert int(headers["content-length"]) == len(body), (headers, body)
        return Response(int(statusLine.split()[1]), headers, body)


def send(
    site: Site,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    token: bool = True,
    localAddress: str = "127.0.0.1",
) -> Exchange:
    """
    Send one HTTP/1.1 request (with Connection: close) to C{site} from
    127.0.0.1, as a client such as the harness does: C{Host: localhost}, a
    body as C{application/json}, and, for a method that changes something,
    the token netd made (unless C{token} is false or C{headers} carry an
    C{Authorization}).  The request arrives on C{localAddress}, port 8053.
    """
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", localAddress, 8053), peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)
    )
    protocol.makeConnection(transport)
    given = {name.lower(): value for name, value in (headers or {}).items()}
    defaults = {"host": "localhost", "connection": "close", "content-length": str(len(body))}
    if body:
        defaults["content-type"] = "application/json"
    access = site.guard.access if isinstance(site, AdminSite) else None
    if (
        token
        and access is not None
        and access.token is not None
        and access.scope == "changes"
        and method in ("POST", "PUT", "PATCH", "DELETE")
    ):
        defaults["authorization"] = f"Bearer {access.token.decode()}"
    merged = {**defaults, **given}
    lines = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in merged.items() if value is not None]
    protocol.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    return Exchange(transport)


def request(site: Site, method: str, path: str, **kwargs: Any) -> Response:
    """
    Send one request and return its (immediate) response.
    """
    return send(site, method, path, **kwargs).response()


def bearer(token: str) -> dict[str, str]:
    """
    The Authorization header carrying C{token}.
    """
    return {"Authorization": f"Bearer {token}"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Every sample of a Prometheus text exposition, parsed by prometheus_client, by (name, labels).
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """
    The L{samples} key of one sample.
    """
    return name, frozenset(labels.items())


# The endpoints.


def test_healthAnswersOk() -> None:
    """
    GET /health answers 200 with {"status": "ok"} as JSON that is not cached.
    """
    daemon, reactor = started(ECHO)
    response = request(reactor.site(), "GET", "/health")
    assert response.code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


def test_readyFollowsTheDaemon() -> None:
    """
    GET /ready is 503 "starting" while the API listens before the services, 200 once they all listen, and 503 "stopping" while they drain.
    """
    reactor = Reactor()
    application = NetdApplication(makeConfig(ECHO, shutdown_timeout=5), reactor)
    application.build()
    daemon = application.daemon
    before = request(Site(AdminResource(daemon)), "GET", "/ready")
    assert (before.code, before.json()) == (503, {"status": "starting", "not_listening": ["echo"]})
    resultOf(Deferred.fromCoroutine(application.start()))
    site = reactor.site()
    now = request(site, "GET", "/ready")
    assert (now.code, now.json()) == (200, {"status": "ready"})
    [service] = daemon.netServices()
    assert service.connections is not None
    connection = connect(service.connections)
    assert connection is not None
    stopping = application.stopService()
    during = request(site, "GET", "/ready")
    assert (during.code, during.json()["status"]) == (503, "stopping")
    assert not stopping.called
    connection.peerClosed()
    resultOf(stopping)


def test_servicesReportsEachService() -> None:
    """
    GET /services gives each service's plugin, bound addresses, open connections and counters, by name in config order.
    """
    daemon, reactor = started(ECHO, {**DNS, "name": "dns"})
    [echo, _] = daemon.netServices()
    assert echo.connections is not None
    connection = connect(echo.connections)
    assert connection is not None
    connection.receive(b"hello")
    body = request(reactor.site(), "GET", "/services").json()
    assert body["ready"] is True
    assert list(body["services"]) == ["echo", "dns"]
    report = body["services"]["echo"]
    assert report["plugin"] == "echo"
    assert report["listening"] is True
    assert report["addresses"] == [p.describe() for p in echo.ports]
    assert report["addresses"][0] == {
        "listen": ECHO["listen"][0],
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": 30001,
    }
    assert report["connections_open"] == 1
    assert report["counters"]["bytes_received"] == 5
    assert report["counters"]["bytes_sent"] == 5
    assert report["counters"]["connections_accepted"] == 1
    assert "status" not in report


def test_servicesShowsDNSUpstreamHealthAndHistogram() -> None:
    """
    The dns-proxy service's entry carries its handler's status (each upstream's health, the cache size) and its latency histogram.
    """
    daemon, reactor = started(DNS)
    report = request(reactor.site(), "GET", "/services").json()["services"]["dns"]
    assert report["status"] == {
        "upstreams": [{"upstream": "udp:192.0.2.1:53", "up": True, "consecutive_failures": 0, "last_error": None}],
        "cache_entries": 0,
    }
    latency = report["histograms"]["upstream_latency_seconds"]
    assert latency["count"] == 0 and latency["buckets"]["+Inf"] == 0
    assert report["connections_open"] == 0


def test_servicesReportsAnyStatusProvider() -> None:
    """
    Any handler providing IReportsStatus has its report shown; one whose status() raises gets an error entry, a logged failure, and the rest still answers 200.
    """
    good = {"name": "good", "plugin": "reporting", "listen": ["tcp:0:interface=127.0.0.1"]}
    bad = {"name": "bad", "plugin": "broken-reporting", "listen": ["tcp:0:interface=127.0.0.1"]}
    daemon, reactor = started(good, bad)
    with capturedLogs() as events:
        response = request(reactor.site(), "GET", "/services")
    assert response.code == 200
    services = response.json()["services"]
    assert services["good"]["status"] == {"mood": "fine", "items": [1, 2]}
    assert "error" in services["bad"]["status"]
    assert b"status exploded" not in response.body
    [failure] = [e for e in events if e.get("log_failure") is not None]
    assert failure["service"] == "bad"


def test_metricsIsPrometheusText() -> None:
    """
    GET /metrics answers the text format 0.0.4 that prometheus_client parses, with build info, readiness, and per service its plugin, open connections and the core counters (zero before any traffic).
    """
    daemon, reactor = started(ECHO)
    response = request(reactor.site(), "GET", "/metrics")
    assert response.code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(response.body.decode())
    assert found[key("netd_build_info", version=__version__)] == 1
    assert found[key("netd_ready")] == 1
    assert found[key("netd_service_info", service="echo", plugin="echo")] == 1
    assert found[key("netd_connections_open", service="echo")] == 0
    for name in (
        "connections_accepted",
        "connections_refused",
        "connections_evicted",
        "descriptors_exhausted",
        "idle_timeouts",
        "bytes_received",
        "bytes_sent",
        "frames_rejected",
        "datagrams_received",
        "datagrams_sent",
        "datagrams_from_own_port",
    ):
        assert found[key(f"netd_{name}_total", service="echo")] == 0, name
    assert key("netd_proxy_headers_untrusted_total", service="echo") not in found


def test_metricsShowPROXYHeaderRefusalsFromTheStart() -> None:
    """
    A service with a haproxy: listener exposes its rejected and untrusted PROXY header counters at 0 before any connection.
    """
    proxied = {"name": "proxied", "plugin": "echo", "listen": ["haproxy:tcp:0:interface=127.0.0.1"]}
    daemon, reactor = started(proxied)
    found = samples(request(reactor.site(), "GET", "/metrics").body.decode())
    assert found[key("netd_proxy_headers_rejected_total", service="proxied")] == 0
    assert found[key("netd_proxy_headers_untrusted_total", service="proxied")] == 0


def test_metricsShowEveryTLSResultFromTheStart(tmp_path: Path) -> None:
    """
    A service with TLS exposes netd_tls_handshakes_total for "ok" and every failure reason at 0 before any handshake.
    """
    tlsEcho = {
        "name": "secure",
        "plugin": "echo",
        "listen": ["tcp:0:interface=127.0.0.1"],
        "tls": {"certificate": "auto"},
    }
    daemon, reactor = started(tlsEcho, state_dir=str(tmp_path))
    found = samples(request(reactor.site(), "GET", "/metrics").body.decode())
    for result in ("ok", *FAILURE_REASONS):
        assert found[key("netd_tls_handshakes_total", service="secure", result=result)] == 0, result
    assert found[key("netd_tls_sessions_resumed_total", service="secure")] == 0


def test_metricsMoveWithTraffic() -> None:
    """
    After stream bytes and a datagram, the byte, connection and datagram counters and the open-connection gauge show them.
    """
    daemon, reactor = started(ECHO)
    [echo] = daemon.netServices()
    assert echo.connections is not None
    connection = connect(echo.connections)
    assert connection is not None
    connection.receive(b"x" * 100)
    [udp] = reactor.udpPorts.values()
    udp.protocol.datagramReceived(b"ping", ("127.0.0.1", 5555))
    found = samples(request(reactor.site(), "GET", "/metrics").body.decode())
    assert found[key("netd_bytes_received_total", service="echo")] == 100
    assert found[key("netd_bytes_sent_total", service="echo")] == 100
    assert found[key("netd_connections_accepted_total", service="echo")] == 1
    assert found[key("netd_connections_open", service="echo")] == 1
    assert found[key("netd_datagrams_received_total", service="echo")] == 1
    assert found[key("netd_datagrams_sent_total", service="echo")] == 1


def test_metricsLabelledFamiliesAndHistogram() -> None:
    """
    DNS qtype_/rcode_ counters become netd_dns_queries_total{qtype} and netd_dns_answers_total{rcode}, TLS handshakes netd_tls_handshakes_total{result}, other counters netd_NAME_total, and the upstream latency a histogram in seconds.
    """
    daemon, reactor = started(DNS)
    [dns] = daemon.netServices()
    dns.counters.update({"qtype_A": 3, "qtype_AAAA": 1, "qtype_65280": 2, "rcode_NOERROR": 4, "rcode_NXDOMAIN": 2})
    dns.counters.update({"cache_hits": 5, "tls_handshakes_ok": 7, "tls_handshakes_failed_not_tls": 1})
    latency = dns.counters.histograms["upstream_latency_seconds"]
    for seconds in (0.0005, 0.003, 0.003, 0.2, 30.0):
        latency.observe(seconds)
    found = samples(request(reactor.site(), "GET", "/metrics").body.decode())
    assert found[key("netd_dns_queries_total", service="dns", qtype="A")] == 3
    assert found[key("netd_dns_queries_total", service="dns", qtype="AAAA")] == 1
    assert found[key("netd_dns_queries_total", service="dns", qtype="65280")] == 2
    assert found[key("netd_dns_answers_total", service="dns", rcode="NOERROR")] == 4
    assert found[key("netd_dns_answers_total", service="dns", rcode="NXDOMAIN")] == 2
    assert found[key("netd_cache_hits_total", service="dns")] == 5
    assert found[key("netd_tls_handshakes_total", service="dns", result="ok")] == 7
    assert found[key("netd_tls_handshakes_total", service="dns", result="not_tls")] == 1
    bucket = "netd_upstream_latency_seconds_bucket"
    assert found[key(bucket, service="dns", le="0.001")] == 1
    assert found[key(bucket, service="dns", le="0.005")] == 3
    assert found[key(bucket, service="dns", le="0.25")] == 4
    assert found[key(bucket, service="dns", le="10.0")] == 4
    assert found[key(bucket, service="dns", le="+Inf")] == 5
    assert found[key("netd_upstream_latency_seconds_count", service="dns")] == 5
    assert found[key("netd_upstream_latency_seconds_sum", service="dns")] == pytest.approx(30.2065)
    assert not any(name.startswith("netd_qtype") or name.startswith("netd_rcode") for name, _ in found)


def test_indexListsEndpoints() -> None:
    """
    GET / lists every endpoint with its method.
    """
    daemon, reactor = started(ECHO)
    body = request(reactor.site(), "GET", "/").json()
    assert body["netd"] == __version__
    assert set(body["endpoints"]) == {
        "GET /",
        "GET /health",
        "GET /ready",
        "GET /services",
        "POST /services",
        "GET /metrics",
        "POST /reload",
        "GET /openapi.json",
        "GET /services/NAME",
        "DELETE /services/NAME",
        "GET /services/NAME/TABLE",
        "PUT /services/NAME/TABLE",
        "DELETE /services/NAME/TABLE",
    }


def test_unknownPathIs404Json() -> None:
    """
    An unknown path answers 404 with a JSON error naming the path and the endpoints.
    """
    daemon, reactor = started(ECHO)
    response = request(reactor.site(), "GET", "/nope?x=1")
    assert response.code == 404
    body = response.json()
    assert body["error"] == "not found"
    assert "/nope" in body["message"] and "/metrics" in body["message"]


def test_wrongMethodIs405JsonWithAllow() -> None:
    """
    A method an endpoint does not take answers 405 with a JSON error and an Allow header.
    """
    daemon, reactor = started(ECHO)
    site = reactor.site()
    post = request(site, "POST", "/health")
    assert post.code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert post.json()["error"] == "method not allowed"
    get = request(site, "GET", "/reload")
    assert (get.code, get.headers["allow"]) == (405, "POST")


def test_headAnswersWithoutBody() -> None:
    """
    HEAD on a GET endpoint answers its status and headers without a body.
    """
    daemon, reactor = started(ECHO)
    exchange = send(reactor.site(), "HEAD", "/health")
    raw = exchange.transport.value()
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b"\r\n\r\n")


# The token.


def withToken(tmp_path: Path, text: str = f"  {TOKEN}\n") -> tuple[Daemon, Reactor]:
    """
    A started echo daemon whose control API requires the token in a file holding C{text}.
    """
    tokenFile = tmp_path / "token"
    tokenFile.write_text(text)
    tokenFile.chmod(0o600)
    return started(ECHO, admin_token_file=str(tokenFile))


def test_tokenRequiredOutsideProbes(tmp_path: Path) -> None:
    """
    With a token file, /services, /metrics, / and unknown paths answer 401 without the token, while /health and /ready still answer.
    """
    daemon, reactor = withToken(tmp_path)
    site = reactor.site()
    for path in ("/services", "/metrics", "/", "/nope"):
        response = request(site, "GET", path)
        assert response.code == 401, path
        assert response.headers["www-authenticate"] == 'Bearer realm="netd"'
        assert response.json()["error"] == "unauthorized"
    assert request(site, "POST", "/reload").code == 401
    assert request(site, "GET", "/health").code == 200
    assert request(site, "GET", "/ready").code == 200


def test_rightTokenAccepted(tmp_path: Path) -> None:
    """
    The token from the file, with its surrounding whitespace stripped, opens every endpoint; the scheme is case-insensitive.
    """
    daemon, reactor = withToken(tmp_path)
    site = reactor.site()
    assert request(site, "GET", "/services", headers=bearer(TOKEN)).code == 200
    assert request(site, "GET", "/metrics", headers={"Authorization": f"bearer {TOKEN}"}).code == 200
    assert request(site, "GET", "/nope", headers=bearer(TOKEN)).code == 404


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"Bearer {TOKEN}x", id="longer"),
        pytest.param(f"Bearer {TOKEN[:-1]}", id="shorter"),
        pytest.param("Bearer wrong", id="wrong"),
    ],
)
def test_wrongTokenRefused(tmp_path: Path, header: str) -> None:
    """
    A wrong bearer token answers 401 with error="invalid_token" in WWW-Authenticate and is logged as a warning.
    """
    daemon, reactor = withToken(tmp_path)
    with capturedLogs() as events:
        response = request(reactor.site(), "GET", "/services", headers={"Authorization": header})
    assert response.code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="netd", error="invalid_token"'
    assert TOKEN not in response.body.decode()
    assert any(e["log_level"] == LogLevel.warn and e.get("path") == "/services" for e in events)


@pytest.mark.parametrize("header", [f"Basic {TOKEN}", "Bearer", "Bearer   ", TOKEN])
def test_malformedAuthorizationRefused(tmp_path: Path, header: str) -> None:
    """
    An Authorization header that is not "Bearer TOKEN" answers 401 asking for a bearer token.
    """
    daemon, reactor = withToken(tmp_path)
    response = request(reactor.site(), "GET", "/metrics", headers={"Authorization": header})
    assert response.code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="netd"'


@pytest.mark.parametrize(
    ("header", "why"),
    [
        pytest.param(None, "no Authorization header", id="missing"),
        pytest.param(f"Basic {TOKEN}", "the Authorization scheme is Basic, not Bearer", id="basic"),
        pytest.param(f"Digest {TOKEN}", "the Authorization scheme is Digest, not Bearer", id="digest"),
        pytest.param("Bearer", "the Bearer token is empty", id="bearer-empty"),
        pytest.param("Bearer   ", "the Bearer token is empty", id="bearer-blank"),
        pytest.param(TOKEN, "the Authorization header has no scheme; expected Bearer", id="bare-token"),
        pytest.param(f"{'x' * 40} {TOKEN}", "the Authorization scheme is not Bearer", id="long-scheme"),
        pytest.param(f"Ba(sic {TOKEN}", "the Authorization scheme is not Bearer", id="odd-scheme"),
    ],
)
def test_refusalSaysWhatIsWrongWithTheHeader(tmp_path: Path, header: str | None, why: str) -> None:
    """
    A request without a usable bearer token is logged and answered saying what is wrong (no header, another scheme named when it is a plain word, an empty token), never with the credentials.
    """
    daemon, reactor = withToken(tmp_path)
    headers = {} if header is None else {"Authorization": header}
    with capturedLogs() as events:
        response = request(reactor.site(), "GET", "/metrics", headers=headers)
    assert response.code == 401
    message = json.loads(response.body)["message"]
    assert message.endswith(f"({why})"), message
    [warning] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warning.endswith(f"refused: {why}"), warning
    assert TOKEN not in message and TOKEN not in warning


def test_noTokenFileNoAuth() -> None:
    """
    Without a token file (a loopback address), the API ignores any Authorization header.
    """
    daemon, reactor = started(ECHO)
    assert request(reactor.site(), "GET", "/services", headers=bearer("anything")).code == 200


def test_emptyTokenFileStopsTheStart(tmp_path: Path) -> None:
    """
    A token file holding only whitespace stops the start with ServiceStartError naming the file, and nothing listens.
    """
    tokenFile = tmp_path / "token"
    tokenFile.write_text(" \n")
    tokenFile.chmod(0o600)
    reactor = Reactor()
    application = NetdApplication(makeConfig(ECHO, admin_token_file=str(tokenFile)), reactor)
    d = Deferred.fromCoroutine(application.start())
    with pytest.raises(ServiceStartError, match="is empty"):
        resultOf(d)
    assert reactor.tcpPorts == []


def test_unreadableTokenFileStopsTheStart(tmp_path: Path) -> None:
    """
    A token file that cannot be read (checked at start, not by netd check, since it may be readable by root only) stops the start naming the file.
    """
    missing = tmp_path / "absent.token"
    reactor = Reactor()
    application = NetdApplication(makeConfig(ECHO, admin_token_file=str(missing)), reactor)
    d = Deferred.fromCoroutine(application.start())
    with pytest.raises(ServiceStartError, match=f"admin_token_file: cannot read '{missing}'"):
        resultOf(d)
    assert reactor.tcpPorts == []


# POST /reload.


def test_reloadWithoutHookIs501() -> None:
    """
    POST /reload on a daemon without reload() answers 501 with a JSON error.
    """
    daemon, reactor = started(ECHO)
    daemon.reload = None  # type: ignore[assignment]
    response = request(reactor.site(), "POST", "/reload")
    assert response.code == 501
    assert response.json()["error"] == "not implemented"


def test_reloadCallsTheHook() -> None:
    """
    POST /reload calls the daemon's reload() and answers 200 with its dict result merged in.
    """
    daemon, reactor = started(ECHO)
    calls = []

    def reload() -> dict[str, Any]:
        calls.append(True)
        return {"changed": ["echo"]}

    daemon.reload = reload  # type: ignore[attr-defined]
    response = request(reactor.site(), "POST", "/reload", body=b"{}")
    assert (response.code, response.json()) == (200, {"status": "reloaded", "changed": ["echo"]})
    assert calls == [True]


def test_reloadWaitsForAnAsyncHook() -> None:
    """
    An asynchronous reload() is answered when it finishes; a second POST /reload meanwhile gets 409, one after it runs.
    """
    daemon, reactor = started(ECHO)
    pending: Deferred[None] = Deferred()

    async def reload() -> None:
        await pending

    daemon.reload = reload  # type: ignore[attr-defined]
    site = reactor.site()
    first = send(site, "POST", "/reload")
    assert first.transport.value() == b""
    second = request(site, "POST", "/reload")
    assert (second.code, second.json()["error"]) == (409, "conflict")
    pending.callback(None)
    assert first.response().code == 200
    assert first.response().json() == {"status": "reloaded"}
    assert request(site, "POST", "/reload").code == 200


def test_reloadAlreadyRunningInTheDaemonIs409() -> None:
    """
    A reload() refused because another one runs (one started by SIGHUP) answers 409.
    """
    daemon, reactor = started(ECHO)

    def reload() -> None:
        raise ReloadInProgress("a reload is already in progress")

    daemon.reload = reload  # type: ignore[assignment]
    response = request(reactor.site(), "POST", "/reload")
    assert (response.code, response.json()["error"]) == (409, "conflict")


def test_reloadBadConfigIs422WithProblems() -> None:
    """
    A reload() that raises ConfigError answers 422 listing every problem with file and key path.
    """
    daemon, reactor = started(ECHO)

    def reload() -> None:
        raise ConfigError(
            "netd.toml", [Problem(("services", 0, "listen"), "bad"), Problem(("daemon", "admin"), "worse")]
        )

    daemon.reload = reload  # type: ignore[attr-defined]
    response = request(reactor.site(), "POST", "/reload")
    assert response.code == 422
    body = response.json()
    assert body["error"] == "invalid config"
    assert body["problems"] == ["netd.toml: services[0].listen: bad", "netd.toml: daemon.admin: worse"]


def test_reloadFailureIs500WithoutTraceback() -> None:
    """
    A reload() failing unexpectedly answers 500 with a generic message pointing to the log, never the exception's text or a traceback, and the traceback is logged.
    """
    daemon, reactor = started(ECHO)

    def reload() -> None:
        raise RuntimeError("disk on fire")

    daemon.reload = reload  # type: ignore[attr-defined]
    with capturedLogs() as events:
        response = request(reactor.site(), "POST", "/reload")
    assert response.code == 500
    assert "netd's log has the details" in response.json()["message"]
    assert b"disk on fire" not in response.body and b"RuntimeError" not in response.body
    assert b"Traceback" not in response.body
    assert any(e.get("log_failure") is not None for e in events)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"{not json", "not JSON", id="bad-json"),
        pytest.param(b"[]", "JSON object", id="array"),
        pytest.param(b'{"force": true}', "unknown keys 'force'", id="unknown-key"),
        pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
    ],
)
def test_reloadBadBodyIs400(body: bytes, fragment: str) -> None:
    """
    POST /reload with a body that is not empty or {} answers 400 with a JSON reason, without calling reload().
    """
    daemon, reactor = started(ECHO)
    daemon.reload = lambda: pytest.fail("reload() was called")  # type: ignore[attr-defined]
    response = request(reactor.site(), "POST", "/reload", body=body)
    assert response.code == 400
    assert fragment in response.json()["message"]


def test_internalErrorIs500JsonWithoutTraceback() -> None:
    """
    An endpoint that fails unexpectedly answers a JSON 500 without a traceback, and logs the failure.
    """
    daemon, reactor = started(ECHO)

    def broken() -> bool:
        raise ZeroDivisionError("oops")

    daemon.ready = broken  # type: ignore[method-assign]
    with capturedLogs() as events:
        response = request(reactor.site(), "GET", "/ready")
    assert response.code == 500
    assert response.json()["error"] == "internal error"
    assert b"oops" not in response.body and b"Traceback" not in response.body
    assert any(e.get("log_failure") is not None for e in events)


# One service, and its runtime tables.

TABLES = {"name": "my tables", "plugin": "tables", "listen": ["tcp:0:interface=127.0.0.1"]}


def test_oneServiceIsItsEntryOfServices() -> None:
    """
    GET /services/NAME answers the same report as that service's entry of GET /services.
    """
    daemon, reactor = started(ECHO, DNS)
    site = reactor.site()
    everything = request(site, "GET", "/services").json()["services"]
    for name in ("echo", "dns"):
        response = request(site, "GET", f"/services/{name}")
        assert response.code == 200
        assert response.json() == everything[name]


def test_serviceNameIsPercentDecoded() -> None:
    """
    A service name with a space is reached with the name percent-encoded in the path.
    """
    daemon, reactor = started(TABLES)
    site = reactor.site()
    assert request(site, "GET", "/services/my%20tables").json()["plugin"] == "tables"
    assert request(site, "GET", "/services/my%20tables/fake").code == 200


def test_unknownServiceIs404NamingTheServices() -> None:
    """
    An unknown service, under /services/NAME or /services/NAME/TABLE, answers 404 naming the services there are.
    """
    daemon, reactor = started(ECHO, DNS)
    for path in ("/services/nope", "/services/nope/events", "/services/"):
        response = request(reactor.site(), "GET", path)
        assert response.code == 404, path
        body = response.json()
        assert body["error"] == "not found"
        assert "'echo', 'dns'" in body["message"], body


def test_unknownTableIs404NamingTheTables() -> None:
    """
    An unknown table answers 404 naming the service's tables, and a deeper path 404 naming the endpoint patterns.
    """
    daemon, reactor = started(TABLES)
    site = reactor.site()
    response = request(site, "GET", "/services/my%20tables/records")
    assert response.code == 404
    assert "its tables are events, fake" in response.json()["message"]
    deeper = request(site, "GET", "/services/my%20tables/fake/more")
    assert deeper.code == 404
    assert "/services/NAME/TABLE" in deeper.json()["message"]


def test_serviceAndTableMethodsAre405WithAllow() -> None:
    """
    A method a service or table path does not take answers 405 with an Allow header listing the others.
    """
    daemon, reactor = started(TABLES)
    site = reactor.site()
    service = request(site, "PUT", "/services/my%20tables")
    assert (service.code, service.headers["allow"]) == (405, "GET, HEAD, DELETE")
    post = request(site, "POST", "/services/my%20tables/fake")
    assert (post.code, post.headers["allow"]) == (405, "GET, HEAD, PUT, DELETE")
    refused = request(site, "DELETE", "/services/my%20tables/fake")
    assert (refused.code, refused.headers["allow"]) == (405, "GET, HEAD, PUT")
    assert "takes no DELETE" in refused.json()["message"]
    events = request(site, "PUT", "/services/my%20tables/events", body=b"{}")
    assert (events.code, events.headers["allow"]) == (405, "GET, HEAD, DELETE")


def test_tableGetsQueryArgumentsAsStringLists() -> None:
    """
    GET on a table passes the query arguments, percent-decoded, as lists of strings.
    """
    daemon, reactor = started(TABLES)
    response = request(reactor.site(), "GET", "/services/my%20tables/fake?name=a.test&name=b%2Etest&x=%C3%A9")
    assert response.json() == {"query": {"name": ["a.test", "b.test"], "x": ["\u00e9"]}}


def test_tablePutGetsTheJsonBody() -> None:
    """
    PUT on a table passes the JSON body and answers what the table returns.
    """
    daemon, reactor = started(TABLES)
    body = {"faults": [{"kind": "delay", "ms": 5}]}
    response = request(reactor.site(), "PUT", "/services/my%20tables/fake", body=json.dumps(body).encode())
    assert (response.code, response.json()) == (200, {"body": body})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"", "the body is empty", id="empty"),
        pytest.param(b"{nope", "the body is not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "the body is not JSON", id="not-utf8"),
        pytest.param(b"[" * 100000, "nested too deeply", id="deep"),
    ],
)
def test_tablePutBadBodyIs400(body: bytes, fragment: str) -> None:
    """
    A PUT body that is empty, not JSON or nested beyond the parser answers 400 without reaching the table.
    """
    daemon, reactor = started(TABLES)
    response = request(reactor.site(), "PUT", "/services/my%20tables/fake", body=body)
    assert response.code == 400
    assert response.json()["error"] == "bad request"
    assert fragment in response.json()["message"]


def test_tableConfigErrorIs400WithProblemPaths() -> None:
    """
    A ConfigError from a table answers 400 with each problem rendered with its key path inside the body.
    """
    daemon, reactor = started(TABLES)
    response = request(reactor.site(), "PUT", "/services/my%20tables/fake", body=b'{"bad": true}')
    assert response.code == 400
    body = response.json()
    assert body["error"] == "bad request"
    assert body["message"] == "invalid request body; nothing was changed"
    assert body["problems"] == ["faults[0].ms: -1 is out of range; expected 0 to 60000", "one more thing"]


def test_tableFailureIs500WithoutTraceback() -> None:
    """
    A table failing unexpectedly answers the JSON 500 and logs the failure, without a traceback for the client.
    """
    daemon, reactor = started(TABLES)
    with capturedLogs() as events:
        response = request(reactor.site(), "PUT", "/services/my%20tables/fake", body=b'{"explode": true}')
    assert response.code == 500
    assert b"exploded" not in response.body and b"Traceback" not in response.body
    assert any(e.get("log_failure") is not None for e in events)


def test_eventsTableOverHttp() -> None:
    """
    GET /services/NAME/events shows a closed connection's event, filters by the query, refuses a bad one with 400, and DELETE clears.
    """
    daemon, reactor = started(ECHO)
    [service] = daemon.netServices()
    assert service.connections is not None
    for _ in range(2):
        connection = connect(service.connections)
        assert connection is not None
        connection.receive(b"hi")
        connection.peerClosed()
    site = reactor.site()
    body = request(site, "GET", "/services/echo/events").json()
    assert (body["dropped"], body["size"]) == (0, 1000)
    assert [(e["seq"], e["kind"], e["bytes_in"], e["bytes_out"], e["ended"]) for e in body["events"]] == [
        (1, "connection", 2, 2, "closed by peer"),
        (2, "connection", 2, 2, "closed by peer"),
    ]
    assert [
        e["seq"] for e in request(site, "GET", "/services/echo/events?kind=connection&since=1").json()["events"]
    ] == [2]
    assert request(site, "GET", "/services/echo/events?kind=query").json()["events"] == []
    bad = request(site, "GET", "/services/echo/events?since=last")
    assert bad.code == 400
    assert bad.json()["problems"] == ["since: expected a whole number of at least 0, got 'last'"]
    cleared = request(site, "DELETE", "/services/echo/events")
    assert (cleared.code, cleared.json()) == (200, {"events": [], "dropped": 0, "size": 1000})
    assert request(site, "GET", "/services/echo/events").json()["events"] == []


def test_serviceEndpointsNeedTheToken(tmp_path: Path) -> None:
    """
    With a token file, /services/NAME and its tables answer 401 without the token and 200 with it.
    """
    daemon, reactor = withToken(tmp_path)
    site = reactor.site()
    for method, path in (
        ("GET", "/services/echo"),
        ("GET", "/services/echo/events"),
        ("DELETE", "/services/echo/events"),
    ):
        assert request(site, method, path).code == 401, path
        assert request(site, method, path, headers=bearer(TOKEN)).code == 200, path
    assert request(site, "GET", "/services/nope").code == 401


# The daemon: ports file, start failures, stop.


def test_portsFileHasAdminEntry(tmp_path: Path) -> None:
    """
    The ports file reports the control API's bound address and token file under the top-level "admin" key, beside "services" and netd's process ID.
    """
    portsFile = tmp_path / "ports.json"
    daemon, reactor = started(ECHO, portsFile=portsFile)
    report = json.loads(portsFile.read_text())
    tokenFile = os.path.join(os.environ["XDG_STATE_HOME"], "netd", "admin.token")
    assert report["admin"] == {
        "listen": ADMIN,
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": 30000,
        "token_file": tokenFile,
    }
    assert list(report["services"]) == ["echo"]
    assert report["pid"] == os.getpid()


def test_adminOffListensNothing(tmp_path: Path) -> None:
    """
    With admin = false there is no control API: no HTTP listener and no "admin" in the ports file.
    """
    portsFile = tmp_path / "ports.json"
    daemon, reactor = started(ECHO, admin=False, portsFile=portsFile)
    assert applicationOf(daemon).api is None
    assert not any(isinstance(p.factory, Site) for p in reactor.tcpPorts)
    assert "admin" not in json.loads(portsFile.read_text())


def test_adminBindFailureStopsTheStart() -> None:
    """
    When the control API cannot listen, the start fails with ServiceStartError naming [daemon] admin, and no service listens.
    """
    reactor = Reactor(refusedPort=8053)
    application = NetdApplication(makeConfig(ECHO, admin="tcp:8053:interface=127.0.0.1"), reactor)
    d = Deferred.fromCoroutine(application.start())
    with pytest.raises(ServiceStartError) as caught:
        resultOf(d)
    message = str(caught.value)
    assert message.startswith(
        "control API: cannot listen on 'tcp:8053:interface=127.0.0.1' ([daemon] admin): address already in use: "
    )
    assert "ss -ltnp 'sport = :8053'" in message
    assert "another port in [daemon] admin" in message
    assert "tcp:0:interface=127.0.0.1" in message
    assert "leave admin out" in message
    assert reactor.tcpPorts == []
    assert reactor.udpPorts == {}


def test_adminOnUnixSocketInUse(tmp_path: Path) -> None:
    """
    A unix: control API whose socket file is taken names [daemon] admin and says how to tell a live socket from a left-over file.
    """
    path = tmp_path / "admin.sock"

    class UnixRefused(Reactor):
        def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0) -> Any:
            raise CannotListenError(None, address, OSError(98, "Address already in use"))

    application = NetdApplication(makeConfig(ECHO, admin=f"unix:{path}"), UnixRefused())
    with pytest.raises(ServiceStartError) as caught:
        resultOf(Deferred.fromCoroutine(application.start()))
    message = str(caught.value)
    assert f"control API: cannot listen on 'unix:{path}' ([daemon] admin): address already in use: " in message
    assert f"ss -lxp 'src = {path}'" in message
    assert "left over" in message


def test_serviceBindFailureClosesAdmin() -> None:
    """
    When a service cannot listen, the control API already listening is closed too.
    """
    reactor = Reactor(refusedPort=7)
    application = NetdApplication(makeConfig({**ECHO, "listen": ["tcp:7:interface=127.0.0.1"]}), reactor)
    d = Deferred.fromCoroutine(application.start())
    with pytest.raises(ServiceStartError):
        resultOf(d)
    [admin] = reactor.tcpPorts
    assert not admin.listening


def test_adminClosesAfterTheDrain() -> None:
    """
    On stop, the control API keeps listening while services drain and closes once they have.
    """
    daemon, reactor = started(ECHO, shutdown_timeout=5)
    [echo] = daemon.netServices()
    assert echo.connections is not None
    connection = connect(echo.connections)
    assert connection is not None
    [admin, service] = reactor.tcpPorts
    stopping = applicationOf(daemon).stopService()
    assert not service.listening
    assert admin.listening
    assert request(reactor.site(), "GET", "/metrics").code == 200
    connection.peerClosed()
    resultOf(stopping)
    assert not admin.listening


def test_metricsTextReadyZeroWhileStopping() -> None:
    """
    netd_ready is 0 once a stop has begun.
    """
    daemon, reactor = started(ECHO, shutdown_timeout=5)
    [echo] = daemon.netServices()
    assert echo.connections is not None
    connection = connect(echo.connections)
    assert connection is not None
    stopping = daemon.stopService()
    assert samples(metrics(reactor))[key("netd_ready")] == 0
    connection.peerClosed()
    resultOf(stopping)


# The config keys.


def daemonProblems(table: dict[str, Any]) -> list[str]:
    """
    The problems of a config with C{table} as its [daemon] table and one echo service.
    """
    try:
        parseConfig({"daemon": table, "services": [ECHO]}, "t.toml", discoverPlugins())
    except ConfigError as e:
        return [p.render("t.toml") for p in e.problems]
    return []


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param(
            {"admin": "tcp:8053"}, "daemon.admin: 'tcp:8053' can be reached from other hosts", id="all-interfaces"
        ),
        pytest.param({"admin": "tcp:0:interface=0.0.0.0"}, "set admin_token_file", id="any-address"),
        pytest.param({"admin": "tcp6:8053:interface=\\:\\:"}, "daemon.admin", id="any-v6"),
        pytest.param({"admin": "systemd:domain=INET:index=0"}, "daemon.admin", id="systemd-inet"),
        pytest.param({"admin": "udp:8053"}, "daemon.admin: 'udp:8053': the control API is HTTP", id="udp"),
        pytest.param({"admin": True}, "daemon.admin: true is not an address", id="true"),
        pytest.param({"admin": 8053}, "daemon.admin: expected a stream listen string", id="number"),
        pytest.param({"admin": "tcp:99999:interface=127.0.0.1"}, "port 99999 is out of range", id="bad-port"),
        pytest.param(
            {"admin_token_file": " "},
            "daemon.admin_token_file: expected a path, got an empty string",
            id="empty-token-path",
        ),
    ],
)
def test_badAdminRefused(table: dict[str, Any], expected: str) -> None:
    """
    A bad admin value, a network-reachable admin without a token file, or an empty token path is a config error at its key path.
    """
    problems = daemonProblems(table)
    assert len(problems) == 1, problems
    assert expected in problems[0]


@pytest.mark.parametrize(
    "admin",
    [
        "tcp:0:interface=127.0.0.1",
        "tcp:8053:interface=127.0.0.2",
        "tcp6:0:interface=\\:\\:1",
        "unix:/tmp/netd-admin.sock",
        "systemd:domain=UNIX:index=0",
        False,
    ],
)
def test_localAdminNeedsNoToken(admin: object) -> None:
    """
    Loopback, unix-socket and disabled admin settings are valid without a token file.
    """
    assert daemonProblems({"admin": admin}) == []


def test_networkAdminWithTokenAccepted(tmp_path: Path) -> None:
    """
    A network-reachable admin address is valid with a readable token file.
    """
    tokenFile = tmp_path / "token"
    tokenFile.write_text(TOKEN)
    assert daemonProblems({"admin": "tcp:8053", "admin_token_file": str(tokenFile)}) == []


@pytest.mark.parametrize(
    ("text", "local"),
    [
        ("tcp:1:interface=127.0.0.1", True),
        ("tcp:1:interface=127.9.9.9", True),
        ("tcp:1:127.0.0.1", True),
        ("tcp6:1:interface=\\:\\:1", True),
        ("unix:/run/netd.sock", True),
        ("unix:/run/netd.sock:mode=600", True),
        ("systemd:domain=UNIX:index=0", True),
        ("haproxy:tcp:1:interface=127.0.0.1", True),
        ("tcp:1", False),
        ("tcp:1:interface=192.0.2.1", False),
        ("tcp6:1:interface=\\:\\:", False),
        ("systemd:domain=INET6:index=0", False),
        ("haproxy:tcp:1", False),
        ("ssl:1", False),
    ],
)
def test_isLocalOnly(text: str, local: bool) -> None:
    """
    isLocalOnly is true exactly for unix sockets and loopback interfaces, through haproxy: wrappers.
    """
    assert isLocalOnly(text) is local


# netd.metrics.


def test_histogramBucketsAreCumulativeAndInclusive() -> None:
    """
    A value equal to a bound counts in that bound's bucket; buckets are cumulative and +Inf counts everything.
    """
    histogram = Histogram((0.1, 1.0))
    for value in (0.1, 0.5, 1.0, 1.5):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 1), (1.0, 3), (math.inf, 4)]
    assert (histogram.count, histogram.sum) == (4, pytest.approx(3.1))
    assert histogram.snapshot()["buckets"] == {"0.1": 1, "1.0": 3, "+Inf": 4}


@pytest.mark.parametrize("bounds", [(1.0, 0.5), (0.5, 0.5), (math.inf,), (math.nan,)])
def test_histogramRefusesBadBounds(bounds: tuple[float, ...]) -> None:
    """
    Histogram bounds must be finite and strictly ascending.
    """
    with pytest.raises(ValueError):
        Histogram(bounds)


def test_countersKeepsHistogramsAndFamilies() -> None:
    """
    Counters.histogram returns the same histogram for a name, and Counters still counts like a Counter (copies included).
    """
    counters = Counters()
    assert counters.histogram("x_seconds") is counters.histogram("x_seconds")
    counters["a"] += 2
    assert counters.copy()["a"] == 2
    assert counters.snapshot() == {"a": 2}


def test_countersReadWithWhatAccruesElsewhere() -> None:
    """
    Counts accruing elsewhere (open connections' bytes) are added when the counters are read, in snapshots and the exposition alike, without being stored.
    """
    counters = Counters()
    counters["bytes_sent"] = 10
    accruing = {"bytes_sent": 5, "bytes_received": 7}
    counters.accrueFrom(lambda: accruing)
    assert counters.snapshot() == {"bytes_received": 7, "bytes_sent": 15}
    exposition = Exposition()
    exposition.counters(counters, {"service": "s"}, families=())
    found = samples(exposition.render())
    assert found[key("netd_bytes_sent_total", service="s")] == 15
    assert found[key("netd_bytes_received_total", service="s")] == 7
    assert dict(counters) == {"bytes_sent": 10}


def test_expositionEscapesAndSanitises() -> None:
    """
    Odd counter names become valid metric names, label values are escaped, and prometheus_client reads them back.
    """
    counters = Counters()
    counters["weird-name.x"] = 2
    counters["already_total"] = 1
    counters['kind_a"b\\c'] = 4
    counters.labelCounters("kind_", family="kinds", label="kind", help="Kinds.")
    exposition = Exposition()
    exposition.counters(counters, {"service": 'we"ird\nname'}, families=())
    found = samples(exposition.render())
    service = 'we"ird\nname'
    assert found[key("netd_weird_name_x_total", service=service)] == 2
    assert found[key("netd_already_total", service=service)] == 1
    assert found[key("netd_kinds_total", service=service, kind='a"b\\c')] == 4


def test_expositionLongestPrefixWins() -> None:
    """
    When two declared prefixes match a counter, the longer one decides its label value.
    """
    counters = Counters()
    counters.update({"tls_handshakes_ok": 1, "tls_handshakes_failed_version": 2})
    exposition = Exposition()
    exposition.counters(counters, {"service": "s"})
    text = exposition.render()
    assert text.count("# TYPE netd_tls_handshakes_total counter") == 1
    found = samples(text)
    assert found[key("netd_tls_handshakes_total", service="s", result="ok")] == 1
    assert found[key("netd_tls_handshakes_total", service="s", result="version")] == 2


def test_expositionGroupsFamiliesAcrossServices() -> None:
    """
    A family present in several services is written once, its samples together.
    """
    exposition = Exposition()
    for name in ("a", "b"):
        counters = Counters()
        counters["bytes_sent"] = 1
        counters["other"] = 1
        exposition.counters(counters, {"service": name})
    text = exposition.render()
    assert text.count("# TYPE netd_bytes_sent_total counter") == 1
    lines = text.splitlines()
    first = lines.index('netd_bytes_sent_total{service="a"} 1')
    assert lines[first + 1] == 'netd_bytes_sent_total{service="b"} 1'


def test_formatFloatAndMetricName() -> None:
    """
    Numbers render as the exposition format writes them, and names lose characters Prometheus does not allow.
    """
    assert [formatFloat(v) for v in (3, 0.25, math.inf, -math.inf)] == ["3", "0.25", "+Inf", "-Inf"]
    assert formatFloat(math.nan) == "NaN"
    assert metricName("a-b.c d") == "a_b_c_d"
    assert Exposition().render() == ""
