"""
The control API's endpoints: one leaf resource that routes on the path and
method, answers JSON (and Prometheus text for C{/metrics}), and turns every
failure into a JSON 500 without a traceback.  docs/control-api.md lists the
endpoints; L{netd.daemon.openapi} describes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from netd import __version__
from netd.config.listen import splitDescription
from netd.config.options import ConfigError, renderPath
from netd.daemon.api.guard import RequestGuard, requestFields
from netd.daemon.api.http import AdminSite
from netd.daemon.api.replies import Reply, errorReply, jsonReply, notAllowed, text
from netd.daemon.api.served import ServedDaemon
from netd.daemon.openapi import MAX_BODY, MAX_TABLE_BODY, renderOpenAPI
from netd.daemon.runtime import NoSuchService, ServiceExists
from netd.daemon.service import NetService, ReloadInProgress, ServiceStartError
from netd.interfaces import IReportsStatus, IRuntimeTable
from netd.metrics import PROMETHEUS_CONTENT_TYPE, Exposition
from netd.tls.failures import FAILURE_REASONS

SERVICES_PREFIX = b"/services/"
TABLE_METHODS = ("GET", "HEAD", "PUT", "DELETE")
"""
The methods of C{/services/NAME/TABLE}; each table refuses those it does not take.
"""

log = Logger(namespace="netd.daemon.api.resources")

Handler = Callable[[Request], "Reply | Deferred[Reply]"]


class AdminResource(Resource):
    """
    The whole API as one leaf resource that routes on the path and method.

    @ivar guard: the checks every request passes first (L{RequestGuard}).
    @ivar site: the HTTP factory serving this resource, for its connection
        counters in C{/metrics}; L{None} until one does.
    @ivar otherSites: netd's other HTTP APIs (the toxiproxy API), whose
        refusals this API's C{/metrics} reports beside its own.
    """

    isLeaf = True

    def __init__(
        self, daemon: ServedDaemon, guard: RequestGuard | None = None, otherSites: Sequence[AdminSite] = ()
    ) -> None:
        super().__init__()
        self.daemon = daemon
        self.guard = guard if guard is not None else RequestGuard()
        self.site: AdminSite | None = None
        self.otherSites = otherSites
        self._reloading = False
        self.routes: dict[bytes, dict[bytes, tuple[Handler, str]]] = {
            b"/": {b"GET": (self.index, "this list of endpoints")},
            b"/health": {b"GET": (self.health, "200 while netd runs")},
            b"/ready": {b"GET": (self.ready, "200 once every service listens, 503 while starting or stopping")},
            b"/services": {
                b"GET": (self.services, "each service: plugin, addresses, connections, counters, status"),
                b"POST": (self.addService, "create and start a service from a JSON [[services]] table"),
            },
            b"/metrics": {b"GET": (self.metrics, "Prometheus text exposition format 0.0.4")},
            b"/reload": {b"POST": (self.reload, "re-read and apply the config file")},
            b"/openapi.json": {b"GET": (self.openapi, "this API's OpenAPI 3.1 description")},
        }
        self.patterns = {
            "GET /services/NAME": "one service's entry of /services",
            "DELETE /services/NAME": "stop the service: its listeners close, its connections drain",
            "GET /services/NAME/TABLE": "a runtime table of the service (events, faults, its plugin's own); "
            "query arguments filter it",
            "PUT /services/NAME/TABLE": "change the table with a JSON body; 400 lists each problem, and nothing changes",
            "DELETE /services/NAME/TABLE": "remove what the query arguments name, or clear the table",
        }
        """
        The endpoints under C{/services/} that L{serviceRoute} answers, for L{index}.
        """

    # Request handling.

    def render(self, request: Request) -> bytes | int:
        """
        Answer a request; any failure becomes a JSON 500 and a logged traceback.
        """
        try:
            reply = self.route(request)
        except Exception:
            reply = self._internalError(Failure(), request)
        if isinstance(reply, Deferred):
            gone: list[bool] = []
            request.notifyFinish().addErrback(lambda _: gone.append(True))
            reply.addErrback(self._internalError, request)
            reply.addCallback(self._finishLater, request, gone)
            return NOT_DONE_YET
        return self._write(request, reply)

    def route(self, request: Request) -> Reply | Deferred[Reply]:
        """
        Check the request (L{RequestGuard.refusal}), find the endpoint, check the method,
        call the handler.
        """
        path = request.path
        method = request.method
        refusal = self.guard.refusal(request, method, path)
        if refusal is not None:
            return refusal
        if path.startswith(SERVICES_PREFIX):
            return self.serviceRoute(request, path[len(SERVICES_PREFIX) :])
        methods = self.routes.get(path)
        if methods is None:
            known = ", ".join([p.decode() for p in self.routes] + ["/services/NAME", "/services/NAME/TABLE"])
            return errorReply(404, "not found", f"no endpoint {text(path)}; the endpoints are {known}")
        entry = methods.get(b"GET" if method == b"HEAD" and b"GET" in methods else method)
        if entry is None:
            return notAllowed(request, sorted(m.decode() for m in methods) + (["HEAD"] if b"GET" in methods else []))
        return entry[0](request)

    def _write(self, request: Request, reply: Reply) -> bytes:
        """
        Set the status and headers of C{reply}; its body is returned for Twisted to send.
        """
        request.setResponseCode(reply.code)
        request.setHeader(b"content-type", reply.contentType.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", str(len(reply.body)).encode())
        for name, value in reply.headers.items():
            request.setHeader(name.encode(), value.encode())
        return reply.body

    def _finishLater(self, reply: Reply, request: Request, gone: list[bool]) -> None:
        """
        Send an answer that was not ready at once, unless the client has left.
        """
        if gone:
            return
        request.write(self._write(request, reply))
        request.finish()

    def _internalError(self, failure: Failure, request: Request) -> Reply:
        """
        Log a handler's failure with its traceback, and answer a JSON 500 without it.
        """
        log.failure("control API: {method} {path} failed", failure, **requestFields(request))
        return errorReply(500, "internal error", "the control API failed to answer; netd's log has the details")

    # The endpoints.

    def index(self, request: Request) -> Reply:
        """
        C{GET /}: the endpoints, with what each answers.
        """
        endpoints = {
            f"{method.decode()} {path.decode()}": help
            for path, methods in self.routes.items()
            for method, (_, help) in methods.items()
        }
        endpoints.update(self.patterns)
        return jsonReply(200, {"netd": __version__, "endpoints": endpoints})

    def health(self, request: Request) -> Reply:
        """
        C{GET /health}: the reactor runs, since it is answering.
        """
        return jsonReply(200, {"status": "ok"})

    def openapi(self, request: Request) -> Reply:
        """
        C{GET /openapi.json}: the API's OpenAPI 3.1 description (L{netd.daemon.openapi}).
        """
        return Reply(200, renderOpenAPI().encode("utf-8"))

    def ready(self, request: Request) -> Reply:
        """
        C{GET /ready}: 200 once every service listens; 503 before, and while stopping.
        """
        if self.daemon.ready():
            return jsonReply(200, {"status": "ready"})
        waiting = [s.spec.name for s in self.daemon.netServices() if not s.ports]
        status = "stopping" if self.daemon.stopping else "starting"
        return jsonReply(503, {"status": status, "not_listening": waiting})

    def services(self, request: Request) -> Reply:
        """
        C{GET /services}: every service's state, by name, in config order.
        """
        return jsonReply(
            200,
            {
                "ready": self.daemon.ready(),
                "services": {s.spec.name: self.serviceReport(s) for s in self.daemon.netServices()},
            },
        )

    def serviceReport(self, service: NetService) -> dict[str, Any]:
        """
        One service's entry of C{GET /services}.
        """
        report: dict[str, Any] = {
            "plugin": service.spec.plugin.name,
            "listening": bool(service.ports),
            "addresses": [p.describe() for p in service.ports],
            "connections_open": service.connections.openConnections() if service.connections is not None else None,
            "counters": service.counters.snapshot(),
        }
        if service.counters.histograms:
            report["histograms"] = {n: h.snapshot() for n, h in sorted(service.counters.histograms.items())}
        if IReportsStatus.providedBy(service.handler):
            try:
                report["status"] = dict(service.handler.status())
            except Exception:
                service.log.failure("the plugin's status() failed")
                report["status"] = {"error": "the plugin's status() failed; netd's log has the details"}
        return report

    def addService(self, request: Request) -> Reply | Deferred[Reply]:
        """
        C{POST /services}: create and start the service the JSON body's
        C{[[services]]} table describes (L{ServedDaemon.createService}); 201
        with its entry of C{/services}.
        """
        table, problem = readJSON(request, MAX_TABLE_BODY)
        if problem is not None:
            return errorReply(400, "bad request", problem)
        if not isinstance(table, dict):
            return errorReply(400, "bad request", f"the body must be a JSON object, got {type(table).__name__}")
        log.info("control API: {method} {path} by {peer}", **requestFields(request))

        def added(result: Mapping[str, object]) -> Reply:
            (name,) = result
            service = {s.spec.name: s for s in self.daemon.netServices()}[name]
            return jsonReply(201, self.serviceReport(service), {"Location": f"/services/{quote(name, safe='')}"})

        return ensureDeferred(self.daemon.createService(table)).addCallbacks(added, _changeFailed)

    def removeService(self, request: Request, name: str) -> Reply | Deferred[Reply]:
        """
        C{DELETE /services/NAME}: stop the service (L{ServedDaemon.deleteService});
        its listeners are closed when the answer comes.
        """
        problem = checkEmptyObject(request)
        if problem is not None:
            return errorReply(400, "bad request", problem)
        log.info("control API: {method} {path} by {peer}", **requestFields(request))

        def removed(result: Mapping[str, Sequence[object]]) -> Reply:
            return jsonReply(200, {"status": "removed", "service": name, "addresses": list(result[name])})

        return ensureDeferred(self.daemon.deleteService(name)).addCallbacks(removed, _changeFailed)

    def serviceRoute(self, request: Request, rest: bytes) -> Reply | Deferred[Reply]:
        """
        C{/services/NAME} and C{/services/NAME/TABLE}; C{rest} is the path
        after C{/services/}, whose segments are percent-decoded.
        """
        segments = [unquote_to_bytes(s).decode("utf-8", "replace") for s in rest.split(b"/")]
        if len(segments) > 2:
            return errorReply(
                404,
                "not found",
                f"no endpoint {text(request.path)}; under /services/ are /services/NAME and /services/NAME/TABLE",
            )
        services = {s.spec.name: s for s in self.daemon.netServices()}
        service = services.get(segments[0])
        if service is None:
            return errorReply(
                404,
                "not found",
                f"no service {segments[0]!r}; the services are {', '.join(map(repr, services)) or 'none'}",
            )
        if len(segments) == 1:
            if request.method == b"DELETE":
                return self.removeService(request, service.spec.name)
            if request.method not in (b"GET", b"HEAD"):
                return notAllowed(request, ["GET", "HEAD", "DELETE"])
            return jsonReply(200, self.serviceReport(service))
        tables = service.runtimeTables()
        table = tables.get(segments[1])
        if table is None:
            return errorReply(
                404,
                "not found",
                f"service {service.name!r} has no table {segments[1]!r}; its tables are {', '.join(sorted(tables))}",
            )
        return self.tableRequest(request, service, segments[1], table)

    def tableRequest(self, request: Request, service: NetService, name: str, table: IRuntimeTable) -> Reply:
        """
        C{GET}, C{PUT} or C{DELETE} on one runtime table of a service.
        """
        method = text(request.method)
        if method not in TABLE_METHODS:
            return notAllowed(request, list(TABLE_METHODS))
        query = {text(k): [text(v) for v in values] for k, values in request.args.items()}
        try:
            if method == "PUT":
                body, problem = readJSON(request, MAX_TABLE_BODY)
                if problem is not None:
                    return errorReply(400, "bad request", problem)
                answer = table.put(body)
            elif method == "DELETE":
                answer = table.delete(query)
            else:
                answer = table.get(query)
        except NotImplementedError:
            refused = {"GET", "HEAD"} if method in ("GET", "HEAD") else {method}
            allowed = [m for m in TABLE_METHODS if m not in refused]
            return notAllowed(request, allowed, f"the {name} table of service {service.name!r} takes no {method}")
        except ConfigError as e:
            return errorReply(
                400,
                "bad request",
                f"invalid {e.source}; nothing was changed",
                problems=[f"{renderPath(p.path)}: {p.message}" if p.path else p.message for p in e.problems],
            )
        if method in ("PUT", "DELETE"):
            log.info("control API: {method} {path} by {peer}", **requestFields(request))
        return jsonReply(200, dict(answer))

    def metrics(self, request: Request) -> Reply:
        """
        C{GET /metrics}: every service's metrics in the Prometheus text format.
        """
        return Reply(200, metricsText(self.daemon, self).encode("utf-8"), PROMETHEUS_CONTENT_TYPE)

    def guardedSites(self) -> list[AdminSite]:
        """
        The HTTP APIs whose refusals C{/metrics} reports: this one once it
        is served, then L{otherSites}.
        """
        return ([] if self.site is None else [self.site]) + list(self.otherSites)

    def reload(self, request: Request) -> Reply | Deferred[Reply]:
        """
        C{POST /reload}: re-read the config through the daemon's C{reload()}.

        The body is empty or C{{}}.  The daemon's C{reload()} may return a
        value or an awaitable; a dict result is merged into the 200 answer,
        and a L{ConfigError} (a bad file, which changes nothing) is a 422
        listing every problem.
        """
        problem = checkEmptyObject(request)
        if problem is not None:
            return errorReply(400, "bad request", problem)
        reload = getattr(self.daemon, "reload", None)
        if reload is None:
            return errorReply(
                501, "not implemented", "this netd cannot reload its config yet; restart it to apply a changed file"
            )
        if self._reloading:
            return errorReply(409, "conflict", "a reload is already in progress")
        self._reloading = True
        log.info("control API: reload requested by {peer}", **requestFields(request))

        def call() -> Any:
            result = reload()
            return ensureDeferred(result) if hasattr(result, "__await__") else result

        def done(result: object) -> Reply:
            body: dict[str, Any] = {"status": "reloaded"}
            if isinstance(result, dict):
                body.update(result)
            return jsonReply(200, body)

        def failed(failure: Failure) -> Reply:
            error = failure.value
            if isinstance(error, ReloadInProgress):
                return errorReply(409, "conflict", str(error))
            if isinstance(error, ConfigError):
                return errorReply(
                    422,
                    "invalid config",
                    "the config file has problems; nothing was changed",
                    problems=[p.render(error.source) for p in error.problems],
                )
            if isinstance(error, ServiceStartError):
                return errorReply(
                    500,
                    "reload failed",
                    "a new listener could not open; the reload was undone and the previous config serves",
                    problems=[str(error)],
                )
            log.failure("control API: reload failed", failure)
            return errorReply(
                500,
                "reload failed",
                "the reload failed unexpectedly and the previous config serves; netd's log has the details "
                "(the entry 'control API: reload failed')",
            )

        def over(result: Reply) -> Reply:
            self._reloading = False
            return result

        return maybeDeferred(call).addCallbacks(done, failed).addBoth(over)


def _changeFailed(failure: Failure) -> Reply:
    """
    The answer to a runtime addition or removal that was refused; anything
    unexpected goes on to the JSON 500.
    """
    error = failure.value
    if isinstance(error, ConfigError):
        return errorReply(
            422,
            "invalid service",
            f"{error.source} has problems; nothing was changed",
            problems=[f"{renderPath(p.path)}: {p.message}" if p.path else p.message for p in error.problems],
        )
    if isinstance(error, ServiceExists):
        return errorReply(409, "conflict", str(error))
    if isinstance(error, ReloadInProgress):
        return errorReply(409, "conflict", str(error))
    if isinstance(error, ServiceStartError):
        return errorReply(
            409,
            "cannot listen",
            "an address of the service cannot be listened on; nothing was changed",
            problems=[f"{renderPath(error.key)}: {error.reason}" if error.key else error.reason],
        )
    if isinstance(error, NoSuchService):
        return errorReply(404, "not found", str(error))
    failure.raiseException()
    raise AssertionError("unreachable")


def readJSON(request: Request, limit: int) -> tuple[Any, str | None]:
    """
    The request's JSON body, or why there is none: it is empty, larger than
    C{limit} bytes, or not JSON.
    """
    body = b""
    if request.content is not None:
        request.content.seek(0)
        body = request.content.read(limit + 1)
    if len(body) > limit:
        return None, f"the body is larger than {limit} bytes"
    if not body.strip():
        return None, "the body is empty; this endpoint takes JSON"
    try:
        return json.loads(body), None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"the body is not JSON: {e}"
    except RecursionError:
        return None, "the body is JSON nested too deeply"


def checkEmptyObject(request: Request) -> str | None:
    """
    L{None} if the request body is empty or the JSON object C{{}}, else why not.
    """
    if request.content is None:
        return None
    request.content.seek(0)
    body = request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        return f"the body is larger than {MAX_BODY} bytes"
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"the body is not JSON: {e}"
    if not isinstance(data, dict):
        return f"the body must be a JSON object, got {type(data).__name__}"
    if data:
        return f"unknown keys {', '.join(sorted(map(repr, data)))}; this endpoint takes none"
    return None


def metricsText(daemon: ServedDaemon, api: AdminResource | None = None) -> str:
    """
    The Prometheus exposition of a daemon: C{netd_build_info}, C{netd_ready},
    per service C{netd_service_info}, C{netd_connections_open}, every counter
    (C{netd_NAME_total}, or its declared labelled family) and every histogram,
    each sample labelled with its C{service}.
    """
    exposition = Exposition()
    exposition.gauge("build_info", 1, "netd's version, as a label.", {"version": __version__})
    exposition.gauge("ready", 1 if daemon.ready() else 0, "1 once every service listens; 0 while starting or stopping.")
    services = daemon.netServices()
    for service in services:
        exposition.gauge(
            "service_info",
            1,
            "Each service, with its plugin as a label.",
            {"service": service.spec.name, "plugin": service.spec.plugin.name},
        )
    for service in services:
        if service.connections is not None:
            exposition.gauge(
                "connections_open",
                service.connections.openConnections(),
                "Stream connections open now.",
                {"service": service.spec.name},
            )
    for service in services:
        exposition.counters(service.counters, {"service": service.spec.name}, zeros=_alwaysShown(service))
    if api is not None:
        for site in api.guardedSites():
            _refusalCounters(exposition, site)
    return exposition.render()


def _refusalCounters(exposition: Exposition, site: AdminSite) -> None:
    """
    What an HTTP API of netd's (the control API, the toxiproxy API) turned
    away: requests by reason, connections refused and evicted at its cap.
    """
    prefix, name = site.guard.metric, site.guard.api
    for reason, count in site.guard.refused.snapshot().items():
        exposition.counter(
            f"{prefix}_requests_refused",
            count,
            f"Requests to the {name} turned away, by reason: host, origin, token, chunked, too_large, content_type.",
            {"reason": reason},
        )
    exposition.counter(
        f"{prefix}_connections_refused",
        site.connectionsRefused,
        f"Connections to the {name} answered 503 because admin_max_connections were open and being answered.",
    )
    exposition.counter(
        f"{prefix}_connections_evicted",
        site.connectionsEvicted,
        f"Idle {name} connections closed to admit a new one at admin_max_connections.",
    )


def _alwaysShown(service: NetService) -> list[str]:
    """
    The core counters a service exposes from the start, zero or not: the
    stream ones if it serves streams, the PROXY header ones if a listener
    takes them, the datagram ones if datagrams, every handshake result if it
    terminates TLS.
    """
    transports = {a.transport for a in service.spec.listen}
    names = []
    if "stream" in transports:
        names += [
            "connections_accepted",
            "connections_refused",
            "connections_evicted",
            "descriptors_exhausted",
            "idle_timeouts",
            "bytes_received",
            "bytes_sent",
            "frames_rejected",
        ]
        if any(splitDescription(a.text)[0] == "haproxy" for a in service.spec.listen):
            names += ["proxy_headers_rejected", "proxy_headers_untrusted"]
        if service.spec.tls is not None:
            names += ["tls_handshakes_ok", "tls_sessions_resumed"] + [
                f"tls_handshakes_failed_{r}" for r in FAILURE_REASONS
            ]
    if "datagram" in transports:
        names += ["datagrams_received", "datagrams_sent", "datagrams_send_failed", "datagrams_from_own_port"]
    return names
