"""
What guards the control API against web pages and hostile clients, checked
on a request's headers alone, so that L{netd.daemon.api.http.AdminChannel}
can refuse a request before reading its body: the C{Host} (421), the
C{Origin} of a change (403), the token (401), then the body's framing (411),
type (415) and length (413).  Loopback is not a trust boundary (a browser
on the host reaches it: DNS rebinding, form posts).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from netd.daemon.api.replies import JSON_CONTENT_TYPE, Reply, errorReply, text
from netd.daemon.openapi import CHANGING_METHODS, MAX_TABLE_BODY
from netd.metrics import Counters

OPEN_PATHS = frozenset({b"/health", b"/ready", b"/openapi.json"})
"""
The endpoints that answer without the token: the probes, and the API's own
description (which says nothing about this netd).
"""
REFUSAL_REASONS = ("host", "origin", "token", "chunked", "too_large", "content_type")
"""
Why the API turns a request away, as counted in C{netd_admin_requests_refused_total} (the
toxiproxy API's in C{netd_toxiproxy_requests_refused_total}).
"""

log = Logger(namespace="netd.daemon.api.guard")


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


class RequestGuard:
    """
    The checks of every request, against one L{Access}.

    @ivar access: the token and the host names it checks requests against
        (replaced as a whole when a reload reads the token file again).
    @ivar refused: the requests turned away, by reason (L{REFUSAL_REASONS}).
    @ivar api: the API it guards, in messages and log lines (the toxiproxy
        API shares this guard).
    @ivar otherHosts: the C{Host} names answered besides C{localhost} and
        the loopback literals, in words.
    @ivar metric: the prefix of the API's refusal counters in C{/metrics}
        (C{netd_admin_requests_refused_total}, ...).
    """

    def __init__(
        self,
        access: Access | None = None,
        api: str = "control API",
        otherHosts: str = "the names of [daemon] admin_hosts",
        metric: str = "admin",
    ) -> None:
        self.access = access if access is not None else Access()
        self.refused = Counters({reason: 0 for reason in REFUSAL_REASONS})
        self.api = api
        self.otherHosts = otherHosts
        self.metric = metric

    def refusal(self, request: Request, method: bytes | None, path: bytes | None) -> Reply | None:
        """
        L{None} if the request may go on, else the answer that turns it away
        (logged and counted): its C{Host} (421), its C{Origin} (403), the
        token (401), then its body's framing (411), type (415) and length
        (413).  Everything checked is in the headers, so that L{netd.daemon.api.http.AdminChannel}
        can check a request before reading its body, with C{method} and
        C{path} L{None}; the resource checks again once the request is whole.
        """
        headers = request.requestHeaders
        fields = requestFields(request, method, path)
        hosts = headers.getRawHeaders(b"host") or []
        names = self.access.hosts | arrivedOn(request)
        if len(hosts) != 1 or not hostAllowed(hosts[0], names):
            shown = ", ".join(text(h) for h in hosts) or "none"
            return self._refuse(
                "host",
                fields,
                errorReply(
                    421,
                    "misdirected request",
                    f"this is netd's {self.api}, which answers to localhost, loopback addresses, the "
                    f"address it was reached on and {self.otherHosts}; the request's Host is {shown}",
                ),
            )
        announced = announcedLength(headers)
        changing = announced != 0 or method is None or method in CHANGING_METHODS
        origins = headers.getRawHeaders(b"origin") or []
        if changing and not all(originAllowed(o, names) for o in origins):
            return self._refuse(
                "origin",
                fields,
                errorReply(
                    403,
                    "forbidden",
                    "a request from a web page of another origin cannot change netd "
                    f"(Origin: {', '.join(text(o) for o in origins)})",
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
        if announced and not isJSON(headers.getRawHeaders(b"content-type") or []):
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
            "{api}: {method} {path} from {peer} refused ({reason}): {why}",
            api=self.api,
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
            why = authorizationProblem(header, scheme)
            log.warn("{api}: {method} {path} from {peer} refused: {why}", api=self.api, why=why, **fields)
            return errorReply(
                401,
                "unauthorized",
                f"this request needs 'Authorization: Bearer TOKEN' with the token in {where} ({why})",
                {"WWW-Authenticate": 'Bearer realm="netd"'},
            )
        if not hmac.compare_digest(credentials, token):
            log.warn("{api}: {method} {path} from {peer} refused: wrong token", api=self.api, **fields)
            return errorReply(
                401,
                "unauthorized",
                f"the bearer token is not the one in {where}",
                {"WWW-Authenticate": 'Bearer realm="netd", error="invalid_token"'},
            )
        return None


def requestFields(request: Request, method: bytes | None = None, path: bytes | None = None) -> dict[str, Any]:
    """
    The log fields of a request: method, path and peer.  C{method} and
    C{path} stand in for the request's own while only its headers are in.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return {
        "method": text(method or getattr(request, "method", None) or b"-"),
        "path": text(path or getattr(request, "path", None) or b"-"),
        "peer": f"{host}:{getattr(peer, 'port', '')}" if host is not None else "unix socket",
    }


def announcedLength(headers: Headers) -> int | None:
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


def isJSON(contentTypes: Sequence[bytes]) -> bool:
    """
    Whether a request's C{Content-Type} is C{application/json}, parameters
    (C{charset}) allowed.
    """
    return len(contentTypes) == 1 and contentTypes[0].split(b";")[0].strip().lower() == JSON_CONTENT_TYPE.encode()


def hostAndPort(text: str) -> str | None:
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


def arrivedOn(request: Request) -> frozenset[str]:
    """
    The address literal the request arrived on, as a C{Host} names it: the
    one host a client that reached netd by address (a Kubernetes probe,
    Prometheus, a load balancer's health check, with a pod's or an
    instance's IP no config can know) can name.  A DNS-rebinding page
    names a host name, never this.  Empty over a unix socket.
    """
    local = request.getHost()
    if not isinstance(local, (IPv4Address, IPv6Address)):
        return frozenset()
    return frozenset({local.host.lower()})


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
    host = hostAndPort(text)
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


_AUTH_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,19}")
"""
An authorization scheme netd names back in its refusal: a short word of
RFC 9110 token characters.  Anything else may be a mistyped secret, or text
meant to forge a log line, and is not repeated.
"""


def authorizationProblem(header: bytes | None, scheme: bytes) -> str:
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
