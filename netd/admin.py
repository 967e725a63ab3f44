"""
The control API: HTTP on C{[daemon] admin}, answering JSON (and Prometheus text
for C{/metrics}).

  - C{GET /health}: 200 C{{"status": "ok"}} while the reactor runs.
  - C{GET /ready}: 200 once every service listens; 503 while starting and
    from the moment a stop begins (so that load balancers stop sending first).
  - C{GET /services}: each service's plugin, bound addresses, open
    connections, counters, histograms, and its handler's own report when it
    provides L{IReportsStatus}.
  - C{GET /metrics}: the Prometheus text exposition (format 0.0.4).
  - C{POST /reload}: calls the daemon's C{reload()} when it has one; 501
    otherwise.
  - C{GET /services/NAME}: one service's entry of C{/services}.
  - C{GET|PUT|DELETE /services/NAME/TABLE}: a runtime table of the service
    (L{IRuntimeTable}: the core's C{events} and C{faults}, its plugin's own):
    query arguments go to C{get} and C{delete}, the JSON body to C{put}; a
    method the table does not take is a 405, a L{ConfigError} from it a 400
    listing each problem with its key path inside the body (or the query).

With C{admin_token_file}, every endpoint but C{/health} and C{/ready} needs
C{Authorization: Bearer TOKEN} (compared in constant time); the two probes stay
open because load balancers and orchestrators probe them without credentials,
and they reveal nothing but liveness.  Every answer, errors included, is JSON
with an C{error} and a C{message}; no traceback ever reaches a client.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from netd import __version__
from netd.interfaces import IReportsStatus, IRuntimeTable
from netd.listen import ListenAddress, describeBound
from netd.metrics import PROMETHEUS_CONTENT_TYPE, Exposition
from netd.options import ConfigError, renderPath
from netd.service import NetService, ReloadInProgress, ServiceStartError
from netd.tls import FAILURE_REASONS

if TYPE_CHECKING:
    from netd.daemon import Daemon

JSON_CONTENT_TYPE = "application/json"
MAX_BODY = 65536
"""
The largest body C{POST /reload} reads.
"""
MAX_TABLE_BODY = 2**20
"""
The largest body C{PUT /services/NAME/TABLE} reads (a table of records may be long).
"""
SERVICES_PREFIX = b"/services/"
TABLE_METHODS = ("GET", "HEAD", "PUT", "DELETE")
"""
The methods of C{/services/NAME/TABLE}; each table refuses those it does not take.
"""
IDLE_TIMEOUT = 60
"""
Seconds an HTTP connection to the API may stay idle.
"""
OPEN_PATHS = frozenset({b"/health", b"/ready"})
"""
The endpoints that answer without the token.
"""

log = Logger(namespace="netd.admin")


@attrs.frozen
class Reply:
    """
    One HTTP answer: status, body, content type and extra headers.
    """

    code: int
    body: bytes
    contentType: str = JSON_CONTENT_TYPE
    headers: Mapping[str, str] = attrs.field(factory=dict)


def jsonReply(code: int, data: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Reply:
    """
    A JSON answer, indented for people reading it with curl.
    """
    body = (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8")
    return Reply(code, body, JSON_CONTENT_TYPE, dict(headers or {}))


def errorReply(code: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> Reply:
    """
    A JSON error answer: C{{"error": SHORT, "message": WHY, ...}}.
    """
    return jsonReply(code, {"error": error, "message": message, **extra}, headers)


Handler = Callable[[Request], "Reply | Deferred[Reply]"]


class AdminResource(Resource):
    """
    The whole API as one leaf resource that routes on the path and method.

    @ivar token: the bearer token required (outside L{OPEN_PATHS}), or L{None}
        when the API answers anyone who can reach it.
    """

    isLeaf = True

    def __init__(self, daemon: Daemon, token: bytes | None) -> None:
        super().__init__()
        self.daemon = daemon
        self.token = token
        self._reloading = False
        self.routes: dict[bytes, dict[bytes, tuple[Handler, str]]] = {
            b"/": {b"GET": (self.index, "this list of endpoints")},
            b"/health": {b"GET": (self.health, "200 while netd runs")},
            b"/ready": {b"GET": (self.ready, "200 once every service listens, 503 while starting or stopping")},
            b"/services": {b"GET": (self.services, "each service: plugin, addresses, connections, counters, status")},
            b"/metrics": {b"GET": (self.metrics, "Prometheus text exposition format 0.0.4")},
            b"/reload": {b"POST": (self.reload, "re-read and apply the config file")},
        }
        self.patterns = {
            "GET /services/NAME": "one service's entry of /services",
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
        Check the token, find the endpoint, check the method, call the handler.
        """
        path = request.path
        method = request.method
        if path not in OPEN_PATHS:
            refusal = self.authorize(request)
            if refusal is not None:
                return refusal
        if path.startswith(SERVICES_PREFIX):
            return self.serviceRoute(request, path[len(SERVICES_PREFIX) :])
        methods = self.routes.get(path)
        if methods is None:
            known = ", ".join([p.decode() for p in self.routes] + ["/services/NAME", "/services/NAME/TABLE"])
            return errorReply(404, "not found", f"no endpoint {_text(path)}; the endpoints are {known}")
        entry = methods.get(b"GET" if method == b"HEAD" and b"GET" in methods else method)
        if entry is None:
            return _notAllowed(request, sorted(m.decode() for m in methods) + (["HEAD"] if b"GET" in methods else []))
        return entry[0](request)

    def authorize(self, request: Request) -> Reply | None:
        """
        L{None} if the request may go on, else the 401 to answer with.
        """
        if self.token is None:
            return None
        header = request.getHeader(b"authorization")
        scheme, _, credentials = (header or b"").partition(b" ")
        credentials = credentials.strip()
        if header is None or scheme.lower() != b"bearer" or not credentials:
            why = "missing" if header is None else "not a bearer token"
            log.warn("control API: {method} {path} from {peer} refused: no token", **_requestFields(request))
            return errorReply(
                401,
                "unauthorized",
                f"this endpoint needs 'Authorization: Bearer TOKEN' with the token of admin_token_file ({why})",
                {"WWW-Authenticate": 'Bearer realm="netd"'},
            )
        if not hmac.compare_digest(credentials, self.token):
            log.warn("control API: {method} {path} from {peer} refused: wrong token", **_requestFields(request))
            return errorReply(
                401,
                "unauthorized",
                "the bearer token is not the one in admin_token_file",
                {"WWW-Authenticate": 'Bearer realm="netd", error="invalid_token"'},
            )
        return None

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
        log.failure("control API: {method} {path} failed", failure, **_requestFields(request))
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

    def serviceRoute(self, request: Request, rest: bytes) -> Reply:
        """
        C{/services/NAME} and C{/services/NAME/TABLE}; C{rest} is the path
        after C{/services/}, whose segments are percent-decoded.
        """
        segments = [unquote_to_bytes(s).decode("utf-8", "replace") for s in rest.split(b"/")]
        if len(segments) > 2:
            return errorReply(
                404, "not found", f"no endpoint {_text(request.path)}; under /services/ are /services/NAME and /services/NAME/TABLE"
            )
        services = {s.spec.name: s for s in self.daemon.netServices()}
        service = services.get(segments[0])
        if service is None:
            return errorReply(
                404, "not found", f"no service {segments[0]!r}; the services are {', '.join(map(repr, services)) or 'none'}"
            )
        if len(segments) == 1:
            if request.method not in (b"GET", b"HEAD"):
                return _notAllowed(request, ["GET", "HEAD"])
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
        method = _text(request.method)
        if method not in TABLE_METHODS:
            return _notAllowed(request, list(TABLE_METHODS))
        query = {_text(k): [_text(v) for v in values] for k, values in request.args.items()}
        try:
            if method == "PUT":
                body, problem = _readJSON(request, MAX_TABLE_BODY)
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
            return _notAllowed(request, allowed, f"the {name} table of service {service.name!r} takes no {method}")
        except ConfigError as e:
            return errorReply(
                400,
                "bad request",
                f"invalid {e.source}; nothing was changed",
                problems=[f"{renderPath(p.path)}: {p.message}" if p.path else p.message for p in e.problems],
            )
        if method in ("PUT", "DELETE"):
            log.info("control API: {method} {path} by {peer}", **_requestFields(request))
        return jsonReply(200, dict(answer))

    def metrics(self, request: Request) -> Reply:
        """
        C{GET /metrics}: every service's metrics in the Prometheus text format.
        """
        return Reply(200, metricsText(self.daemon).encode("utf-8"), PROMETHEUS_CONTENT_TYPE)

    def reload(self, request: Request) -> Reply | Deferred[Reply]:
        """
        C{POST /reload}: re-read the config through the daemon's C{reload()}.

        The body is empty or C{{}}.  The daemon's C{reload()} may return a
        value or an awaitable; a dict result is merged into the 200 answer,
        and a L{ConfigError} (a bad file, which changes nothing) is a 422
        listing every problem.
        """
        problem = _checkEmptyObject(request)
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
        log.info("control API: reload requested by {peer}", **_requestFields(request))

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
            log.failure("control API: reload failed", failure)
            return errorReply(500, "reload failed", f"{type(error).__name__}: {error}")

        def over(result: Reply) -> Reply:
            self._reloading = False
            return result

        return maybeDeferred(call).addCallbacks(done, failed).addBoth(over)


def _text(value: bytes) -> str:
    """
    Request bytes for a message, unreadable bytes escaped.
    """
    return value.decode("utf-8", "backslashreplace")


def _requestFields(request: Request) -> dict[str, Any]:
    """
    The log fields of a request: method, path and peer.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return {
        "method": _text(request.method),
        "path": _text(request.path),
        "peer": f"{host}:{getattr(peer, 'port', '')}" if host is not None else str(peer),
    }


def _notAllowed(request: Request, allowed: list[str], why: str | None = None) -> Reply:
    """
    The 405 answer to a method that is not one of C{allowed}.
    """
    return errorReply(
        405,
        "method not allowed",
        why or f"{_text(request.path)} takes {' or '.join(allowed)}, not {_text(request.method)}",
        {"Allow": ", ".join(allowed)},
    )


def _readJSON(request: Request, limit: int) -> tuple[Any, str | None]:
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


def _checkEmptyObject(request: Request) -> str | None:
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


def metricsText(daemon: Daemon) -> str:
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
            "service_info", 1, "Each service, with its plugin as a label.", {"service": service.spec.name, "plugin": service.spec.plugin.name}
        )
    for service in services:
        if service.connections is not None:
            exposition.gauge(
                "connections_open", service.connections.openConnections(), "Stream connections open now.", {"service": service.spec.name}
            )
    for service in services:
        exposition.counters(service.counters, {"service": service.spec.name}, zeros=_alwaysShown(service))
    return exposition.render()


def _alwaysShown(service: NetService) -> list[str]:
    """
    The core counters a service exposes from the start, zero or not: the
    stream ones if it serves streams, the datagram ones if datagrams, every
    handshake result if it terminates TLS.
    """
    transports = {a.transport for a in service.spec.listen}
    names = []
    if "stream" in transports:
        names += ["connections_accepted", "connections_refused", "connections_evicted", "descriptors_exhausted", "idle_timeouts", "bytes_received", "bytes_sent", "frames_rejected"]
        if service.spec.tls is not None:
            names += ["tls_handshakes_ok", "tls_sessions_resumed"] + [f"tls_handshakes_failed_{r}" for r in FAILURE_REASONS]
    if "datagram" in transports:
        names += ["datagrams_received", "datagrams_sent", "datagrams_send_failed"]
    return names


def readToken(path: str) -> bytes:
    """
    The token in C{path}, without surrounding whitespace.

    @raise ServiceStartError: if the file cannot be read or holds no token.
    """
    try:
        with open(path, "rb") as f:
            token = f.read(4096).strip()
    except OSError as e:
        raise ServiceStartError(f"control API: cannot read admin_token_file {path!r}: {e.strerror or e}") from e
    if not token:
        raise ServiceStartError(f"control API: admin_token_file {path!r} is empty; put a secret in it")
    return token


class AdminSite(Site):
    """
    The API's HTTP factory: no tracebacks in answers, one debug line per request
    instead of Twisted's access log.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Request) -> None:  # type: ignore[override]
        """
        Log one answered request at debug level.
        """
        log.debug("control API: {method} {path} from {peer}: {code}", code=request.code, **_requestFields(request))


class AdminServer:
    """
    The control API's listener: listened on before the services, closed after
    they have drained (so that C{/ready} says 503 and C{/metrics} answers
    throughout a stop).
    """

    def __init__(self, daemon: Daemon, address: ListenAddress, tokenFile: str | None, reactor: Any) -> None:
        self.daemon = daemon
        self.address = address
        self.tokenFile = tokenFile
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.resource: AdminResource | None = None

    async def listen(self) -> IListeningPort:
        """
        Read the token file, then listen.

        @raise ServiceStartError: naming the token file or the address.
        """
        token = readToken(self.tokenFile) if self.tokenFile is not None else None
        self.resource = AdminResource(self.daemon, token)
        site = AdminSite(self.resource, timeout=IDLE_TIMEOUT, reactor=self.reactor)
        try:
            self.port = await self.address.listenStream(self.reactor, site)
        except Exception as e:
            raise ServiceStartError(
                f"control API: cannot listen on {self.address.text!r} ([daemon] admin): {e}"
            ) from e
        bound = describeBound(self.port)
        where = f"http://{bound['host']}:{bound['port']}/" if "port" in bound else f"{bound['transport']} {bound.get('path')}"
        log.info(
            "control API on {where} ({listen}), {auth}",
            where=where,
            listen=self.address.text,
            auth="token required" if token is not None else "no token",
        )
        return self.port

    async def stopListening(self) -> None:
        """
        Stop accepting API connections.
        """
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)

    def describe(self) -> dict[str, object] | None:
        """
        The ports-file entry: C{{"listen", "transport", "host", "port"}} (or
        C{"path"} for a unix socket); L{None} when not listening.
        """
        if self.port is None:
            return None
        return {"listen": self.address.text, **describeBound(self.port)}
