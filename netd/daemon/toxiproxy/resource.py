"""
toxiproxy's HTTP API (its C{api.go}): the routes its clients use, with its
JSON shapes and status codes, over a L{ProxyCollection}.  Every request first
passes the control API's L{RequestGuard} (Host, Origin, body framing, type
and size); the API has no token, as toxiproxy has none.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from netd.daemon.api.guard import RequestGuard, requestFields
from netd.daemon.api.replies import JSON_CONTENT_TYPE, Reply
from netd.daemon.api.resources import readJSON
from netd.daemon.openapi import MAX_TABLE_BODY
from netd.daemon.toxiproxy.proxies import ProxyCollection, ProxyError, ToxiProxy, boundListen, listenEndpoint
from netd.daemon.toxiproxy.toxics import Toxic, ToxicError

TOXIPROXY_VERSION = "2.12.0"
"""
The toxiproxy release whose API this one follows, answered by C{GET /version}.
"""

log = Logger(namespace="netd.daemon.toxiproxy.resource")


def answer(code: int, data: object) -> Reply:
    """
    A JSON answer, compact as toxiproxy's.
    """
    return Reply(code, json.dumps(data).encode("utf-8") + b"\n", JSON_CONTENT_TYPE)


def toxiproxyError(status: int, message: str) -> Reply:
    """
    An error as toxiproxy answers one: C{{"error": MESSAGE, "status": STATUS}}.
    """
    return answer(status, {"error": message, "status": status})


def noContent() -> Reply:
    """
    toxiproxy's 204 answer to a removal or a reset.
    """
    return Reply(204, b"")


class ToxiproxyResource(Resource):
    """
    toxiproxy's API as one leaf resource that routes on the path and method.
    """

    isLeaf = True

    def __init__(self, proxies: ProxyCollection, guard: RequestGuard) -> None:
        super().__init__()
        self.proxies = proxies
        self.guard = guard

    def render(self, request: Request) -> bytes | int:
        """
        Answer a request; a failure is logged and answered 500 without its traceback.
        """
        try:
            reply = self.route(request)
        except (ProxyError, ToxicError) as e:
            reply = toxiproxyError(e.status, str(e))
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
        Check the request with the guard, then find its route.
        """
        refusal = self.guard.refusal(request, request.method, request.path)
        if refusal is not None:
            return toxiproxyError(refusal.code, json.loads(refusal.body)["message"])
        method = request.method.decode("ascii", "replace")
        segments = [unquote_to_bytes(s).decode("utf-8", "replace") for s in request.path.split(b"/")[1:]]
        if method == "HEAD":
            method = "GET"
        match segments:
            case ["version"] if method == "GET":
                return answer(200, {"version": TOXIPROXY_VERSION})
            case ["proxies"] if method == "GET":
                return answer(200, {name: p.toJSON() for name, p in self.proxies.proxies.items()})
            case ["proxies"] if method == "POST":
                return self._change(request, self._createProxy)
            case ["populate"] if method == "POST":
                return self._change(request, self._populate)
            case ["reset"] if method == "POST":
                return self._change(request, self._reset, body=False)
            case ["proxies", name] if method == "GET":
                return answer(200, self.proxies.get(name).toJSON())
            case ["proxies", name] if method in ("POST", "PATCH"):
                return self._change(request, lambda body: self._updateProxy(name, body))
            case ["proxies", name] if method == "DELETE":
                return self._change(request, lambda _: self._deleteProxy(name), body=False)
            case ["proxies", name, "toxics"] if method == "GET":
                return answer(200, [t.toJSON() for t in self.proxies.get(name).toxics.values()])
            case ["proxies", name, "toxics"] if method == "POST":
                return self._change(request, lambda body: self._createToxic(name, body))
            case ["proxies", name, "toxics", toxic] if method == "GET":
                return answer(200, self._toxic(self.proxies.get(name), toxic).toJSON())
            case ["proxies", name, "toxics", toxic] if method in ("POST", "PATCH"):
                return self._change(request, lambda body: self._updateToxic(name, toxic, body))
            case ["proxies", name, "toxics", toxic] if method == "DELETE":
                return self._change(request, lambda _: self._deleteToxic(name, toxic), body=False)
            case (
                ["version" | "proxies" | "populate" | "reset"]
                | ["proxies", _]
                | ["proxies", _, "toxics"]
                | ["proxies", _, "toxics", _]
            ):
                return toxiproxyError(405, f"{method} is not allowed on {request.path.decode('utf-8', 'replace')}")
        return toxiproxyError(404, "404 page not found")

    def _toxic(self, proxy: ToxiProxy, name: str) -> Toxic:
        toxic = proxy.toxics.get(name)
        if toxic is None:
            raise ProxyError("toxic not found", 404)
        return toxic

    def _change(
        self,
        request: Request,
        change: Callable[[Any], Awaitable[Reply]],
        *,
        body: bool = True,
    ) -> Reply | Deferred[Reply]:
        """
        A change: its JSON body read (if it takes one), then C{change} run
        once no other change of the proxies runs; a refused one answers
        toxiproxy's error.
        """
        data: Any = None
        if body:
            data, problem = readJSON(request, MAX_TABLE_BODY)
            if problem is not None:
                return toxiproxyError(400, f"bad request body: {problem}")
        log.debug("toxiproxy API: {method} {path} by {peer}", **requestFields(request))

        async def run() -> Reply:
            try:
                return await self.proxies.serially(lambda: change(data))
            except (ProxyError, ToxicError) as e:
                return toxiproxyError(e.status, str(e))

        return ensureDeferred(run())

    async def _createProxy(self, body: Any) -> Reply:
        """
        C{POST /proxies}: a new proxy, enabled unless the body says not; 201.
        """
        name, listen, upstream, enabled = _proxyFields(body)
        proxy = await self.proxies.create(name, listen, upstream, enabled)
        return answer(201, proxy.toJSON())

    async def _updateProxy(self, name: str, body: Any) -> Reply:
        """
        C{POST /proxies/NAME}: change its listen, upstream or enabled (the
        fields not given stay).
        """
        proxy = self.proxies.get(name)
        if not isinstance(body, dict):
            raise ProxyError("bad request body: expected a JSON object", 400)
        listen = _text(body, "listen", proxy.listen)
        upstream = _text(body, "upstream", proxy.upstream)
        enabled = body.get("enabled", proxy.enabled)
        if not isinstance(enabled, bool):
            raise ProxyError("bad request body: enabled must be true or false", 400)
        if normalListen(listen) == proxy.listen:
            listen = proxy.listen
        await self.proxies.update(proxy, listen, upstream, enabled)
        return answer(200, proxy.toJSON())

    async def _deleteProxy(self, name: str) -> Reply:
        """
        C{DELETE /proxies/NAME}: 204.
        """
        await self.proxies.delete(name)
        return noContent()

    async def _populate(self, body: Any) -> Reply:
        """
        C{POST /populate}: create the proxies of an array, replacing one of
        the same name whose listen or upstream differ and keeping one that is
        the same (its toxics too); proxies it does not name stay.  201 with
        the proxies, or the first error with those done before it.
        """
        if not isinstance(body, list):
            return toxiproxyError(400, "bad request body: expected a JSON array of proxies")
        fields = []
        for index, entry in enumerate(body, 1):
            if not isinstance(entry, dict):
                return toxiproxyError(400, f"bad request body: proxy {index} is not a JSON object")
            for key in ("name", "upstream"):
                if not entry.get(key):
                    return toxiproxyError(400, f"missing required field: {key} at proxy {index}")
            fields.append(_proxyFields(entry))
        done: list[ToxiProxy] = []
        for name, listen, upstream, enabled in fields:
            try:
                existing = self.proxies.proxies.get(name)
                if existing is not None and (normalListen(listen), upstream) == (existing.listen, existing.upstream):
                    done.append(existing)
                    continue
                if existing is not None:
                    await self.proxies.delete(name)
                done.append(await self.proxies.create(name, listen, upstream, enabled))
            except (ProxyError, ToxicError) as e:
                return answer(e.status, {"error": str(e), "status": e.status, "proxies": [p.toJSON() for p in done]})
        return answer(201, {"proxies": [p.toJSON() for p in done]})

    async def _reset(self, body: Any) -> Reply:
        """
        C{POST /reset}: every proxy enabled, every toxic removed; 204.
        """
        await self.proxies.reset()
        return noContent()

    async def _createToxic(self, name: str, body: Any) -> Reply:
        """
        C{POST /proxies/NAME/toxics}: add a toxic, which acts from now on
        (on open connections too, where netd's fault can); 200 with it.
        """
        proxy = self.proxies.get(name)
        toxic = Toxic.fromJSON(body)
        if toxic.name in proxy.toxics:
            raise ToxicError("toxic already exists", 409)
        await self.proxies.setToxics(proxy, {**proxy.toxics, toxic.name: toxic})
        return answer(200, toxic.toJSON())

    async def _updateToxic(self, name: str, toxicName: str, body: Any) -> Reply:
        """
        C{POST /proxies/NAME/toxics/TOXIC}: change its attributes or toxicity.
        """
        proxy = self.proxies.get(name)
        toxic = self._toxic(proxy, toxicName).updated(body)
        await self.proxies.setToxics(proxy, {**proxy.toxics, toxic.name: toxic})
        return answer(200, toxic.toJSON())

    async def _deleteToxic(self, name: str, toxicName: str) -> Reply:
        """
        C{DELETE /proxies/NAME/toxics/TOXIC}: 204.
        """
        proxy = self.proxies.get(name)
        self._toxic(proxy, toxicName)
        await self.proxies.setToxics(proxy, {k: t for k, t in proxy.toxics.items() if k != toxicName})
        return noContent()

    def _write(self, request: Request, reply: Reply) -> bytes:
        """
        Set the status and headers of C{reply}; its body is returned for Twisted to send.
        """
        request.setResponseCode(reply.code)
        if reply.body:
            request.setHeader(b"content-type", reply.contentType.encode())
        request.setHeader(b"content-length", str(len(reply.body)).encode())
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
        Log a failure of the API with its traceback, and answer a 500 without it.
        """
        log.failure("toxiproxy API: {method} {path} failed", failure, **requestFields(request))
        return toxiproxyError(500, "the toxiproxy API failed to answer; netd's log has the details")


def _text(body: dict[str, Any], key: str, default: str) -> str:
    """
    A string field of a body, or C{default} when it is not given.
    """
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ProxyError(f"bad request body: {key} must be a string", 400)
    return value


def _proxyFields(body: Any) -> tuple[str, str, str, bool]:
    """
    The name, listen, upstream and enabled of a proxy's JSON, as toxiproxy
    takes them: name and upstream required, enabled true unless given.
    """
    if not isinstance(body, dict):
        raise ProxyError("bad request body: expected a JSON object", 400)
    for key in ("name", "upstream"):
        if not body.get(key):
            raise ProxyError(f"missing required field: {key}", 400)
    enabled = body.get("enabled", True)
    if enabled is None:
        enabled = True
    if not isinstance(enabled, bool):
        raise ProxyError("bad request body: enabled must be true or false", 400)
    return _text(body, "name", ""), _text(body, "listen", ""), _text(body, "upstream", ""), enabled


def normalListen(listen: str) -> str:
    """
    A listen as a bound proxy reports it (C{localhost:26379} is
    C{127.0.0.1:26379}), to tell whether a proxy's listen changes.
    """
    endpoint = listenEndpoint(listen)
    scheme, _, rest = endpoint.partition(":")
    port, _, interface = rest.partition(":interface=")
    host = interface.replace("\\:", ":") or ("::" if scheme == "tcp6" else "0.0.0.0")
    return boundListen({"host": host, "port": int(port)}) or listen
