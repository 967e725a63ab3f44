"""
The control API's HTTP connections: each request checked by the
L{RequestGuard} once its headers are in, bodies kept in memory, and at most
C{admin_max_connections} connections, where a newcomer evicts the oldest
idle one rather than being locked out.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from netd.daemon.api.guard import RequestGuard, announcedLength, requestFields
from netd.daemon.api.replies import errorReply, rawResponse
from netd.words import counted

IDLE_TIMEOUT = 60
"""
Seconds an HTTP connection to the API may stay idle.
"""

log = Logger(namespace="netd.daemon.api.http")


class AdminRequest(Request):
    """
    A request of the control API: its body, at most L{netd.daemon.openapi.MAX_TABLE_BODY} bytes
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
    headers are in (L{RequestGuard.refusal}): a request announcing a body
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
        if announcedLength(request.requestHeaders) != 0:
            refusal = self.site.guard.refusal(request, None, None)
            if refusal is not None:
                self._refused = True
                assert self.transport is not None
                self.transport.write(rawResponse(refusal))
                self.loseConnection()
                return
        super().allHeadersReceived()

    def dataReceived(self, data: bytes) -> None:
        """
        Discard whatever arrives after a refusal.
        """
        if not self._refused:
            super().dataReceived(data)


class _Busy(Protocol):
    """
    The answer to a connection past C{admin_max_connections} while every open
    one is being answered: 503, then close.
    """

    def __init__(self, api: str) -> None:
        self.api = api

    def connectionMade(self) -> None:
        assert self.transport is not None
        reply = errorReply(503, "service unavailable", f"too many connections to the {self.api}; try again")
        self.transport.write(rawResponse(reply))
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

    def __init__(self, resource: IResource, guard: RequestGuard, maxConnections: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.guard = guard
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
                    "{api}: {peer} refused: {connections} open (admin_max_connections), and none is idle",
                    api=self.guard.api,
                    peer=str(addr),
                    count=len(self.channels),
                    connections=counted(len(self.channels), "connection"),
                )
                return _Busy(self.guard.api)
            self.connectionsEvicted += 1
            del self.channels[victim]
            log.warn(
                "{api}: {connections} open (admin_max_connections): closing the oldest idle one, from "
                "{victim}, for {peer}",
                api=self.guard.api,
                count=self.maxConnections,
                connections=counted(self.maxConnections, "connection"),
                victim=str(victim.transport.getPeer()) if victim.transport is not None else "?",
                peer=str(addr),
            )
            if victim.transport is not None:
                getattr(victim.transport, "abortConnection", victim.transport.loseConnection)()
        protocol: Protocol | None = super().buildProtocol(addr)
        return protocol

    def log(self, request: Request) -> None:  # type: ignore[override]
        """
        Log one answered request at debug level.
        """
        log.debug(
            "{api}: {method} {path} from {peer}: {code}",
            api=self.guard.api,
            code=request.code,
            **requestFields(request),
        )
