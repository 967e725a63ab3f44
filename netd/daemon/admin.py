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
  - C{GET /openapi.json}: this API's OpenAPI 3.1 description (L{netd.daemon.openapi}).
  - C{GET /services/NAME}: one service's entry of C{/services}.
  - C{GET|PUT|DELETE /services/NAME/TABLE}: a runtime table of the service
    (L{IRuntimeTable}: the core's C{events} and C{faults}, its plugin's own):
    query arguments go to C{get} and C{delete}, the JSON body to C{put}; a
    method the table does not take is a 405, a L{ConfigError} from it a 400
    listing each problem with its key path inside the body (or the query).

Loopback is not a trust boundary (a browser on the host reaches it: DNS
rebinding, form posts), so every request is checked as soon as its headers are
in, before any body is read (L{AdminChannel}): its C{Host} must be a loopback
literal, C{localhost}, the address the API listens on or a name of C{[daemon]
admin_hosts} (else 421); a request that changes something (POST, PUT, PATCH,
DELETE, or any with a body) is refused if its C{Origin} is another site's (403);
a body must say C{Content-Type: application/json} (415), give its length (411
for chunked) and be at most L{MAX_TABLE_BODY} bytes (413).

With C{admin_token_file}, every endpoint but C{/health}, C{/ready} and
C{/openapi.json} needs C{Authorization: Bearer TOKEN} (compared in constant
time); the two probes stay open because load balancers and orchestrators probe
them without credentials, and they reveal nothing but liveness, and the API's
description is the same for every netd.  Without one, a TCP API makes its own
token (C{STATE_DIR/admin.token}, mode 0600) and requires it for every request
that changes something.  Every answer, errors included, is JSON with an
C{error} and a C{message}; no traceback or exception text ever reaches a client.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from netd import __version__
from netd.tls.devcerts import defaultStateDir, writeFile
from netd.interfaces import IReportsStatus, IRuntimeTable
from netd.config.listen import ListenAddress, describeBound, splitDescription, whyListenFailed
from netd.metrics import PROMETHEUS_CONTENT_TYPE, Counters, Exposition
from netd.daemon.openapi import CHANGING_METHODS, MAX_BODY, MAX_TABLE_BODY, renderOpenAPI
from netd.config.options import ConfigError, Problem, renderPath
from netd.daemon.service import NetService, ReloadInProgress, ServiceStartError
from netd.tls.failures import FAILURE_REASONS
from netd.words import counted

if TYPE_CHECKING:
    from netd.config.spec import DaemonSpec
    from netd.daemon.daemon import Daemon

JSON_CONTENT_TYPE = "application/json"
SERVICES_PREFIX = b"/services/"
TABLE_METHODS = ("GET", "HEAD", "PUT", "DELETE")
"""
The methods of C{/services/NAME/TABLE}; each table refuses those it does not take.
"""
IDLE_TIMEOUT = 60
"""
Seconds an HTTP connection to the API may stay idle.
"""
OPEN_PATHS = frozenset({b"/health", b"/ready", b"/openapi.json"})
"""
The endpoints that answer without the token: the probes, and the API's own
description (which says nothing about this netd).
"""
MAX_TOKEN = 4096
"""
The longest token C{admin_token_file} may hold, in bytes.
"""
GENERATED_TOKEN_FILE = "admin.token"
"""
The file in the state directory that holds the token netd makes itself.
"""
REFUSAL_REASONS = ("host", "origin", "token", "chunked", "too_large", "content_type")
"""
Why the API turns a request away, as counted in C{netd_admin_requests_refused_total}.
"""

log = Logger(namespace="netd.daemon.admin")


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


@attrs.frozen
class Access:
    """
    Who may ask the API what.

    @ivar token: the bearer token, or L{None} when the API needs none.
    @ivar scope: C{"all"}: every endpoint but L{OPEN_PATHS} needs the token
        (C{admin_token_file}); C{"changes"}: only the methods of
        L{CHANGING_METHODS} do (the token netd made itself).
    @ivar tokenFile: where the token is, for messages and the ports file.
    @ivar hosts: the C{Host} names answered besides C{localhost} and the
        loopback literals, lower case: C{admin_hosts} and the address listened on.
    """

    token: bytes | None = None
    scope: Literal["all", "changes"] = "all"
    tokenFile: str | None = None
    hosts: frozenset[str] = frozenset()

    def needsToken(self, method: bytes | None, path: bytes | None) -> bool:
        """
        Whether a request needs the token; C{method} and C{path} are L{None}
        for a request whose body is announced (which changes something).
        """
        if self.token is None:
            return False
        if method is None or method in CHANGING_METHODS:
            return True
        return self.scope == "all" and path not in OPEN_PATHS


class AdminResource(Resource):
    """
    The whole API as one leaf resource that routes on the path and method.

    @ivar access: the token and the host names it checks requests against
        (replaced as a whole when a reload reads the token file again).
    @ivar refused: the requests turned away, by reason (L{REFUSAL_REASONS}).
    """

    isLeaf = True

    def __init__(self, daemon: Daemon, access: Access | None = None) -> None:
        super().__init__()
        self.daemon = daemon
        self.access = access if access is not None else Access()
        self.refused = Counters({reason: 0 for reason in REFUSAL_REASONS})
        self._reloading = False
        self.routes: dict[bytes, dict[bytes, tuple[Handler, str]]] = {
            b"/": {b"GET": (self.index, "this list of endpoints")},
            b"/health": {b"GET": (self.health, "200 while netd runs")},
            b"/ready": {b"GET": (self.ready, "200 once every service listens, 503 while starting or stopping")},
            b"/services": {b"GET": (self.services, "each service: plugin, addresses, connections, counters, status")},
            b"/metrics": {b"GET": (self.metrics, "Prometheus text exposition format 0.0.4")},
            b"/reload": {b"POST": (self.reload, "re-read and apply the config file")},
            b"/openapi.json": {b"GET": (self.openapi, "this API's OpenAPI 3.1 description")},
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
        Check the request (L{refusal}), find the endpoint, check the method,
        call the handler.
        """
        path = request.path
        method = request.method
        refusal = self.refusal(request, method, path)
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

    def refusal(self, request: Request, method: bytes | None, path: bytes | None) -> Reply | None:
        """
        L{None} if the request may go on, else the answer that turns it away
        (logged and counted): its C{Host} (421), its C{Origin} (403), the
        token (401), then its body's framing (411), type (415) and length
        (413).  Everything checked is in the headers, so that L{AdminChannel}
        can check a request before reading its body, with C{method} and
        C{path} L{None}; L{route} checks again once the request is whole.
        """
        headers = request.requestHeaders
        fields = _requestFields(request, method, path)
        hosts = headers.getRawHeaders(b"host") or []
        if len(hosts) != 1 or not hostAllowed(hosts[0], self.access.hosts):
            shown = ", ".join(_text(h) for h in hosts) or "none"
            return self._refuse(
                "host",
                fields,
                errorReply(
                    421,
                    "misdirected request",
                    f"this is netd's control API, which answers to localhost, loopback addresses and the names "
                    f"of [daemon] admin_hosts; the request's Host is {shown}",
                ),
            )
        announced = _announcedLength(headers)
        changing = announced != 0 or method is None or method in CHANGING_METHODS
        origins = headers.getRawHeaders(b"origin") or []
        if changing and not all(originAllowed(o, self.access.hosts) for o in origins):
            return self._refuse(
                "origin",
                fields,
                errorReply(
                    403,
                    "forbidden",
                    "a request from a web page of another origin cannot change netd "
                    f"(Origin: {', '.join(_text(o) for o in origins)})",
                ),
            )
        if self.access.needsToken(None if announced != 0 else method, path):
            refused = self.authorize(request, fields)
            if refused is not None:
                self.refused["token"] += 1
                return refused
        if announced is None:
            return self._refuse(
                "chunked", fields, errorReply(411, "length required", "send a body with Content-Length, not chunked")
            )
        if announced and not _isJSON(headers.getRawHeaders(b"content-type") or []):
            return self._refuse(
                "content_type",
                fields,
                errorReply(415, "unsupported media type", f"a body must be sent as Content-Type: {JSON_CONTENT_TYPE}"),
            )
        if announced > MAX_TABLE_BODY:
            return self._refuse(
                "too_large",
                fields,
                errorReply(413, "content too large", f"the body is larger than {MAX_TABLE_BODY} bytes"),
            )
        return None

    def _refuse(self, reason: str, fields: Mapping[str, Any], reply: Reply) -> Reply:
        """
        Log and count a request turned away for C{reason}; answer C{reply}.
        """
        self.refused[reason] += 1
        log.warn(
            "control API: {method} {path} from {peer} refused ({reason}): {why}",
            reason=reason,
            why=json.loads(reply.body)["message"],
            **fields,
        )
        return reply

    def authorize(self, request: Request, fields: Mapping[str, Any]) -> Reply | None:
        """
        L{None} if the request carries the token, else the 401 to answer with.
        """
        token = self.access.token
        if token is None:
            return None
        where = "the token file" if self.access.tokenFile is None else self.access.tokenFile
        header = request.getHeader(b"authorization")
        scheme, _, credentials = (header or b"").partition(b" ")
        credentials = credentials.strip()
        if header is None or scheme.lower() != b"bearer" or not credentials:
            why = _authorizationProblem(header, scheme)
            log.warn("control API: {method} {path} from {peer} refused: {why}", why=why, **fields)
            return errorReply(
                401,
                "unauthorized",
                f"this request needs 'Authorization: Bearer TOKEN' with the token in {where} ({why})",
                {"WWW-Authenticate": 'Bearer realm="netd"'},
            )
        if not hmac.compare_digest(credentials, token):
            log.warn("control API: {method} {path} from {peer} refused: wrong token", **fields)
            return errorReply(
                401,
                "unauthorized",
                f"the bearer token is not the one in {where}",
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


def _text(value: bytes) -> str:
    """
    Request bytes for a message, unreadable bytes escaped.
    """
    return value.decode("utf-8", "backslashreplace")


def _requestFields(request: Request, method: bytes | None = None, path: bytes | None = None) -> dict[str, Any]:
    """
    The log fields of a request: method, path and peer.  C{method} and
    C{path} stand in for the request's own while only its headers are in.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return {
        "method": _text(method or getattr(request, "method", None) or b"-"),
        "path": _text(path or getattr(request, "path", None) or b"-"),
        "peer": f"{host}:{getattr(peer, 'port', '')}" if host is not None else "unix socket",
    }


def _announcedLength(headers: Headers) -> int | None:
    """
    The body length a request's headers announce: 0 for none, L{None} for a
    chunked one (any C{Transfer-Encoding} but C{identity}).  Twisted's channel
    has already refused a C{Content-Length} that is not a number.
    """
    encodings = [e.strip().lower() for e in headers.getRawHeaders(b"transfer-encoding") or []]
    if any(e != b"identity" for e in encodings):
        return None
    lengths = headers.getRawHeaders(b"content-length") or []
    return int(lengths[0]) if lengths and lengths[0].strip().isdigit() else 0


def _isJSON(contentTypes: Sequence[bytes]) -> bool:
    """
    Whether a request's C{Content-Type} is C{application/json}, parameters
    (C{charset}) allowed.
    """
    return len(contentTypes) == 1 and contentTypes[0].split(b";")[0].strip().lower() == JSON_CONTENT_TYPE.encode()


def _hostAndPort(text: str) -> str | None:
    """
    The host of a C{Host} value (C{name}, C{name:port}, C{[v6]}, C{[v6]:port}),
    lower case and without the brackets, or L{None} if the value is malformed.
    """
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = text, ""
    if port and not (port.isdigit() and len(port) <= 5):
        return None
    return host.lower() or None


def hostAllowed(value: bytes, names: frozenset[str]) -> bool:
    """
    Whether a C{Host} header names the control API: C{localhost}, a loopback
    literal (C{127.0.0.0/8}, C{[::1]}) or one of C{names}, each with or
    without a port.  Anything else may be a rebinding attacker's name that
    resolves to loopback.
    """
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return False
    host = _hostAndPort(text)
    if host is None:
        return False
    if host == "localhost" or host in names:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and not text.startswith("["):
        return False
    return address.is_loopback


def originAllowed(value: bytes, names: frozenset[str]) -> bool:
    """
    Whether an C{Origin} header is the API's own: C{http://} and a host
    L{hostAllowed} takes.  C{null} (a sandboxed frame, a file) is not.
    """
    scheme, separator, rest = value.partition(b"://")
    return separator == b"://" and scheme.lower() == b"http" and b"/" not in rest and hostAllowed(rest, names)


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
    admin = daemon.admin
    if admin is not None and admin.site is not None:
        for reason, count in admin.site.resource.refused.snapshot().items():
            exposition.counter(
                "admin_requests_refused",
                count,
                "Control API requests turned away, by reason: host, origin, token, chunked, too_large, content_type.",
                {"reason": reason},
            )
        exposition.counter(
            "admin_connections_refused",
            admin.site.connectionsRefused,
            "Control API connections answered 503 because admin_max_connections were open and being answered.",
        )
        exposition.counter(
            "admin_connections_evicted",
            admin.site.connectionsEvicted,
            "Idle control API connections closed to admit a new one at admin_max_connections.",
        )
    return exposition.render()


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
        names += ["connections_accepted", "connections_refused", "connections_evicted", "descriptors_exhausted", "idle_timeouts", "bytes_received", "bytes_sent", "frames_rejected"]
        if any(splitDescription(a.text)[0] == "haproxy" for a in service.spec.listen):
            names += ["proxy_headers_rejected", "proxy_headers_untrusted"]
        if service.spec.tls is not None:
            names += ["tls_handshakes_ok", "tls_sessions_resumed"] + [f"tls_handshakes_failed_{r}" for r in FAILURE_REASONS]
    if "datagram" in transports:
        names += ["datagrams_received", "datagrams_sent", "datagrams_send_failed", "datagrams_from_own_port"]
    return names


_AUTH_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,19}")
"""
An authorization scheme netd names back in its refusal: a short word of
RFC 9110 token characters.  Anything else may be a mistyped secret, or text
meant to forge a log line, and is not repeated.
"""


def _authorizationProblem(header: bytes | None, scheme: bytes) -> str:
    """
    Why an C{Authorization} header (L{None}: there is none) is not
    C{Bearer TOKEN}, naming the scheme given (C{Basic}, say) when it is a
    plain word, and never the credentials.
    """
    if header is None:
        return "no Authorization header"
    if scheme.lower() == b"bearer":
        return "the Bearer token is empty"
    if b" " not in header:
        return "the Authorization header has no scheme; expected Bearer"
    if _AUTH_SCHEME.fullmatch(scheme):
        return f"the Authorization scheme is {scheme.decode('ascii')}, not Bearer"
    return "the Authorization scheme is not Bearer"


class TokenFileError(Exception):
    """
    A token file cannot be used: missing, unreadable, too open, too long or empty.
    """


def readToken(path: str) -> bytes:
    """
    The token in C{path}, without surrounding whitespace.

    Like ssh with a private key, netd refuses a file that its group or others
    may read or change: the token opens the whole API.

    @raise TokenFileError: saying what is wrong with the file.
    """
    try:
        with open(path, "rb") as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise TokenFileError(f"{path!r} is not a regular file")
            if status.st_mode & 0o077:
                raise TokenFileError(
                    f"{path!r} can be read or changed by its group or others (mode "
                    f"{stat.S_IMODE(status.st_mode):04o}); make it readable by its owner only: chmod 600 {path}"
                )
            data = f.read(2 * MAX_TOKEN + 1)
    except OSError as e:
        raise TokenFileError(f"cannot read {path!r}: {e.strerror or e}") from e
    token = data.strip()
    if len(token) > MAX_TOKEN or len(data) > 2 * MAX_TOKEN:
        raise TokenFileError(f"{path!r} holds more than {MAX_TOKEN} bytes; a token is at most {MAX_TOKEN}")
    if not token:
        raise TokenFileError(f"{path!r} is empty; put a secret in it")
    if not all(0x20 <= b <= 0x7E for b in token):
        raise TokenFileError(f"{path!r} holds characters an HTTP header cannot carry (printable ASCII only)")
    return token


def generatedToken(stateDir: str) -> tuple[bytes, str]:
    """
    The token netd makes itself for a TCP control API without
    C{admin_token_file}: the one in C{STATE_DIR/admin.token} if that file is
    fine (so that clients keep theirs across restarts), else a new random one
    written there, mode 0600.

    @return: the token and the file's path.
    @raise OSError: when the state directory or the file cannot be written.
    """
    path = os.path.join(stateDir, GENERATED_TOKEN_FILE)
    os.makedirs(stateDir, mode=0o700, exist_ok=True)
    try:
        return readToken(path), path
    except TokenFileError as e:
        if os.path.lexists(path):
            log.warn("control API: replacing the token file: {why}", why=str(e))
    token = secrets.token_urlsafe(32).encode("ascii")
    writeFile(path, token + b"\n", 0o600)
    return token, path


def loadAccess(spec: DaemonSpec, tcp: bool, boundHost: str | None) -> Access:
    """
    The L{Access} of a C{[daemon]} table: the token of C{admin_token_file}
    (for every endpoint but the probes), or one netd makes for a TCP API (for
    changes only), or none (C{admin_token_file = false}, or a unix socket,
    which its file mode guards).

    @raise TokenFileError: the token file cannot be used, or the generated
        one cannot be written.
    """
    hosts = _hostNames(spec, boundHost)
    if isinstance(spec.admin_token_file, str):
        return Access(readToken(spec.admin_token_file), "all", spec.admin_token_file, hosts)
    if spec.admin_token_file is None and tcp:
        stateDir = spec.state_dir if spec.state_dir is not None else defaultStateDir()
        try:
            token, path = generatedToken(stateDir)
        except OSError as e:
            raise TokenFileError(
                f"unset, so netd makes a token in {os.path.join(stateDir, GENERATED_TOKEN_FILE)!r}, which failed: "
                f"{e.strerror or e}; set [daemon] state_dir to a folder this user may write, admin_token_file to a "
                "file holding a secret, or admin_token_file = false"
            ) from e
        return Access(token, "changes", path, hosts)
    return Access(None, "all", None, hosts)


def _hostNames(spec: DaemonSpec, boundHost: str | None) -> frozenset[str]:
    """
    The C{Host} names answered besides localhost and loopback literals:
    C{admin_hosts} and the address listened on (unless it is a wildcard such
    as 0.0.0.0, which no client should name), lower case.
    """
    hosts = frozenset(h.lower().rstrip(".") for h in spec.admin_hosts)
    if boundHost is None or boundHost in ("0.0.0.0", "::"):
        return hosts
    return hosts | {boundHost.lower()}


class AdminRequest(Request):
    """
    A request of the control API: its body, at most L{MAX_TABLE_BODY} bytes
    (L{AdminChannel} refuses larger ones before reading them), is kept in
    memory, never spooled to a temporary file.
    """

    def gotLength(self, length: int | None) -> None:
        """
        Keep the body in memory.
        """
        self.content = io.BytesIO()


class AdminChannel(HTTPChannel):
    """
    An HTTP connection to the control API that checks each request once its
    headers are in (L{AdminResource.refusal}): a request announcing a body
    that may not be sent is answered at once and the connection closed,
    without reading the body, which is discarded if it arrives anyway.
    """

    site: AdminSite
    _refused = False
    serving = False
    """
    Whether a whole request has arrived and is being answered (such a
    connection is never evicted to admit another).
    """

    def connectionMade(self) -> None:
        """
        Count the connection as open.
        """
        self.site.opened(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        Count the connection as closed.
        """
        self.site.closed(self)
        super().connectionLost(reason)

    def allContentReceived(self) -> None:
        """
        A whole request has arrived: it is being answered from now on.
        """
        self.serving = True
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        """
        The answer is sent: the connection waits for another request.
        """
        self.serving = False
        super().requestDone(request)

    def allHeadersReceived(self) -> None:
        """
        Check a request that announces a body before it is read.
        """
        request = self.requests[-1]
        if _announcedLength(request.requestHeaders) != 0:
            refusal = self.site.resource.refusal(request, None, None)
            if refusal is not None:
                self._refused = True
                assert self.transport is not None
                self.transport.write(_rawResponse(refusal))
                self.loseConnection()
                return
        super().allHeadersReceived()

    def dataReceived(self, data: bytes) -> None:
        """
        Discard whatever arrives after a refusal.
        """
        if not self._refused:
            super().dataReceived(data)


def _rawResponse(reply: Reply) -> bytes:
    """
    C{reply} as an HTTP/1.1 response that closes the connection, for answers
    given before Twisted's request has begun.
    """
    lines = [
        f"HTTP/1.1 {reply.code} {RESPONSES.get(reply.code, b'Error').decode('ascii')}",
        f"Content-Type: {reply.contentType}",
        f"Content-Length: {len(reply.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ] + [f"{name}: {value}" for name, value in reply.headers.items()]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + reply.body


class _Busy(Protocol):
    """
    The answer to a connection past C{admin_max_connections} while every open
    one is being answered: 503, then close.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        reply = errorReply(503, "service unavailable", "too many connections to the control API; try again")
        self.transport.write(_rawResponse(reply))
        self.transport.loseConnection()


class AdminSite(Site):
    """
    The API's HTTP factory: no tracebacks in answers, one debug line per request
    instead of Twisted's access log, at most C{maxConnections} connections
    open.  At the limit, a new connection closes the oldest one that is not
    being answered (idle, or still sending its request: whoever opened
    connections first cannot lock the API), counted in
    C{connectionsEvicted}; when every one is being answered, the new one is
    answered 503 and counted in C{connectionsRefused}.
    """

    noisy = False
    displayTracebacks = False
    protocol = AdminChannel  # type: ignore[assignment]  # HTTP/1.1 only: the API has no TLS, so no HTTP/2 to negotiate
    requestFactory = AdminRequest
    resource: AdminResource

    def __init__(self, resource: AdminResource, maxConnections: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.maxConnections = maxConnections
        self.channels: dict[AdminChannel, None] = {}
        """
        The open connections, oldest first (those being closed left out).
        """
        self.connectionsRefused = 0
        self.connectionsEvicted = 0

    @property
    def openConnections(self) -> int:
        """
        How many connections are open and not being closed.
        """
        return len(self.channels)

    def opened(self, channel: AdminChannel) -> None:
        """
        A connection has opened.
        """
        self.channels[channel] = None

    def closed(self, channel: AdminChannel) -> None:
        """
        A connection has closed.
        """
        self.channels.pop(channel, None)

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        """
        A channel, once there is room for it: at C{maxConnections}, the
        oldest connection not being answered is closed, or, if there is
        none, the new one gets L{_Busy}.
        """
        if len(self.channels) >= self.maxConnections:
            victim = next((c for c in self.channels if not c.serving), None)
            if victim is None:
                self.connectionsRefused += 1
                log.warn(
                    "control API: {peer} refused: {connections} open (admin_max_connections), and none is idle",
                    peer=str(addr),
                    count=len(self.channels),
                    connections=counted(len(self.channels), "connection"),
                )
                return _Busy()
            self.connectionsEvicted += 1
            del self.channels[victim]
            log.warn(
                "control API: {connections} open (admin_max_connections): closing the oldest idle one, from "
                "{victim}, for {peer}",
                count=self.maxConnections,
                connections=counted(self.maxConnections, "connection"),
                victim=str(victim.transport.getPeer()) if victim.transport is not None else "?",
                peer=str(addr),
            )
            if victim.transport is not None:
                getattr(victim.transport, "abortConnection", victim.transport.loseConnection)()
        return super().buildProtocol(addr)

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

    def __init__(self, daemon: Daemon, spec: DaemonSpec, reactor: Any) -> None:
        assert spec.admin.address is not None
        self.daemon = daemon
        self.spec = spec
        self.address: ListenAddress = spec.admin.address
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.resource: AdminResource | None = None
        self.site: AdminSite | None = None
        self.boundHost: str | None = None
        """
        The address listened on, once it is (a C{Host} the API answers to).
        """

    @property
    def unix(self) -> bool:
        """
        Whether the API listens on a unix socket (whose file mode guards it,
        so that it needs no token of netd's making): C{unix:}, or a
        C{systemd:} socket of C{domain=UNIX}.
        """
        kind, *rest = splitDescription(self.address.text)
        return kind == "unix" or (kind == "systemd" and "domain=UNIX" in rest)

    async def listen(self) -> IListeningPort:
        """
        Read (or make) the token, then listen.

        @raise ServiceStartError: naming the token file or the address.
        """
        self.resource = AdminResource(self.daemon, self._access(self.spec))
        site = AdminSite(
            self.resource, self.spec.admin_max_connections, timeout=IDLE_TIMEOUT, reactor=self.reactor
        )
        self.site = site
        try:
            self.port = await self._listen(site)
        except Exception as e:
            why = whyListenFailed(
                "[daemon] admin", self.address, e, otherWays=", or leave admin out (or set it to false) to run without the control API"
            )
            raise ServiceStartError(
                f"control API: cannot listen on {self.address.text!r} ([daemon] admin): {why}",
                key=("daemon", "admin"),
                reason=f"control API: cannot listen on {self.address.text!r}: {why}",
            ) from e
        bound = describeBound(self.port)
        host = bound.get("host")
        if isinstance(host, str):
            self.boundHost = host
            self.resource.access = attrs.evolve(self.resource.access, hosts=_hostNames(self.spec, host))
        where = f"http://{bound['host']}:{bound['port']}/" if "port" in bound else f"{bound['transport']} {bound.get('path')}"
        access = self.resource.access
        log.info(
            "control API on {where} ({listen}), {auth}",
            where=where,
            listen=self.address.text,
            auth=_describeAccess(access),
            token_file=access.tokenFile,
        )
        return self.port

    def _access(self, spec: DaemonSpec) -> Access:
        """
        The L{Access} of C{spec}, with the address listened on among its hosts.

        @raise ServiceStartError: the token file cannot be used.
        """
        try:
            return loadAccess(spec, tcp=not self.unix, boundHost=self.boundHost)
        except TokenFileError as e:
            raise ServiceStartError(
                f"control API: [daemon] admin_token_file: {e}", key=("daemon", "admin_token_file"), reason=str(e)
            ) from e

    async def _listen(self, site: AdminSite) -> IListeningPort:
        """
        Listen; a unix socket is made mode 0600 (0660 with C{admin_group},
        given that group) from the start: the umask covers the moment
        between the bind and Twisted's chmod.
        """
        if splitDescription(self.address.text)[0] != "unix":
            return await self.address.listenStream(self.reactor, site)
        group = self.spec.admin_group
        address = attrs.evolve(self.address, text=self.address.text + ":mode=600")
        previous = os.umask(0o177)
        try:
            port = await address.listenStream(self.reactor, site)
        finally:
            os.umask(previous)
        if group is not None:
            path = str(describeBound(port)["path"])
            try:
                os.chown(path, -1, group.gid, follow_symlinks=False)
                os.chmod(path, 0o660, follow_symlinks=False)
            except OSError:
                await maybeDeferred(port.stopListening)
                raise
        return port

    def prepareReload(self, spec: DaemonSpec, source: str) -> Access:
        """
        The access a reload brings, touching nothing that runs: the new
        C{admin_hosts}, and the token of C{admin_token_file} read again (a
        token netd made stays as it is).  A file this user may not read
        (root's, after the privilege drop) keeps the token read at start.

        @param source: the config file, for the error.
        @raise ConfigError: the token file cannot be used; the old token stays.
        """
        assert self.resource is not None
        current = attrs.evolve(self.resource.access, hosts=_hostNames(spec, self.boundHost))
        if current.scope != "all" or current.tokenFile is None:
            return current
        try:
            return attrs.evolve(current, token=readToken(current.tokenFile))
        except TokenFileError as e:
            if isinstance(e.__cause__, PermissionError) and os.geteuid() != 0:
                log.warn(
                    "reload: {why} as this user; the token read at start (before privileges were dropped) stays",
                    why=str(e),
                )
                return current
            error = ConfigError(source, [Problem(("daemon", "admin_token_file"), f"{e}; nothing was changed")])
            log.error("reload: {problems}", problems=str(error))
            raise error from e

    def adopt(self, access: Access) -> None:
        """
        Answer with C{access} from now on (the reload is committed).
        """
        if self.resource is not None:
            if access.token != self.resource.access.token:
                log.info("reload: the control API's token is now the one in {path}", path=access.tokenFile)
            self.resource.access = access

    async def stopListening(self) -> None:
        """
        Stop accepting API connections.
        """
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)

    def describe(self) -> dict[str, object] | None:
        """
        The ports-file entry: C{{"listen", "transport", "host", "port",
        "token_file"}} (or C{"path"} for a unix socket); L{None} when not
        listening.  C{token_file} is where the bearer token is (L{None}
        when the API needs none).
        """
        if self.port is None:
            return None
        access = self.resource.access if self.resource is not None else Access()
        return {"listen": self.address.text, **describeBound(self.port), "token_file": access.tokenFile}


def _describeAccess(access: Access) -> str:
    """
    What the API requires, in words, for its start-up line.
    """
    if access.token is None:
        return "no token"
    if access.scope == "all":
        return f"token required (from {access.tokenFile})"
    return f"token required for changes (made in {access.tokenFile})"
