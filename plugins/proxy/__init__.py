"""
The proxy: each accepted stream connection is relayed, byte for byte, to a
connection of its own to the service's C{upstream}, and each client's
datagrams go to its C{udp_upstream} from a socket of the client's own, so
that the service's faults act between a client and a real server
(L{netd_plugins.proxy.relay}, L{netd_plugins.proxy.datagram}).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from zope.interface import implementer

from netd.bases import Plugin
from netd.config.options import InvalidValue, between, option
from netd.faults.base import ServiceShape
from netd.interfaces import IDatagramHandler, IDatagramSender, IStreamHandler, PluginContext
from netd.stream.framing import FRAMINGS
from netd.tls.options import ClientTLSOptions

from .datagram import DatagramUpstream, SessionTable
from .headerfirst import PlainUpstreamEndpoint
from .relay import ClientSide, FramedClientSide, Upstream
from .upstreamtls import endpointHost, tlsUpstreamEndpoint

UPSTREAM_SCHEMES = ("tcp", "unix")


class UpstreamEndpoint(str):
    """
    A Twisted client endpoint string the proxy connects to (C{tcp:HOST:PORT},
    C{unix:PATH}), parsed when the config is read.
    """

    configTypeName = "a client endpoint string (tcp:HOST:PORT or unix:PATH)"

    @classmethod
    def fromConfig(cls, value: Any) -> UpstreamEndpoint:
        """
        Check that C{value} is an endpoint string Twisted parses, of a scheme
        the proxy serves.

        @raise InvalidValue: saying what is wrong and what is expected.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        scheme = value.partition(":")[0]
        if scheme not in UPSTREAM_SCHEMES:
            hint = "; datagrams go to udp_upstream" if scheme == "udp" else ""
            raise InvalidValue(
                f"{value!r} is not {cls.configTypeName}; its scheme must be one of {', '.join(UPSTREAM_SCHEMES)}" + hint
            )
        try:
            # Parsing only: the endpoint keeps the reactor and connects later.
            clientFromString(None, value)
        except (ValueError, TypeError, KeyError) as e:
            raise InvalidValue(f"{value!r} is not {cls.configTypeName}: {e}") from None
        return cls(value)


@attrs.frozen
class ProxyOptions:
    """
    Where the proxy connects, and how it answers a client when it cannot.
    """

    upstream: UpstreamEndpoint | None = option(
        None,
        help="The server each client connection is relayed to: a Twisted client endpoint string, "
        "tcp:HOST:PORT or unix:PATH; required when the service listens for streams.",
    )
    connect_timeout: float = option(
        5.0,
        help="Seconds to wait for the upstream connection; past it the attempt is given up "
        "(counted as upstream_connect_timeouts) and the client gets on_upstream_failure.",
        checks=(between(0.001, 3600),),
    )
    on_upstream_failure: Literal["close", "reset"] = option(
        "close",
        help="What the client gets when the upstream cannot be reached: 'close' (EOF) or 'reset' (a TCP RST).",
    )
    upstream_proxy_protocol: Literal[False] | Literal["v1", "v2"] = option(
        False,
        help="Send a PROXY protocol header (HAProxy's, 'v1' text or 'v2' binary) first on each upstream "
        "connection, naming the client's address and the one it connected to, so that the upstream sees "
        "the real client; false sends none.  A unix-socket client is named as v1's UNKNOWN or v2's LOCAL.  "
        "With upstream_tls the header goes in clear before the TLS handshake.",
    )
    udp_upstream: DatagramUpstream | None = option(
        None,
        help="Where the datagrams of udp: listeners go: udp:HOST:PORT (an IP address, IPv6 in brackets), "
        "from a socket of each client's own (a session); required when the service has a udp: listener.",
    )
    udp_session_timeout: float = option(
        60.0,
        help="Seconds a UDP session may pass without a datagram either way before its socket is closed "
        "(counted as udp_sessions_expired).",
        checks=(between(0.001, 86400),),
    )
    udp_max_sessions: int = option(
        1024,
        help="The most UDP sessions at once; a new client past it closes the least recently active "
        "session (counted as udp_sessions_evicted).",
        checks=(between(1, 65536),),
    )

    upstream_tls: ClientTLSOptions | None = option(
        None,
        help="TLS to the upstream: ca_bundle (the system's CAs when unset), server_name (SNI and the name checked; "
        "the upstream's host when unset), verify, certificate and private_key (mutual TLS), min_version, "
        "max_version, alpn.  A failed handshake is an upstream failure (counted upstream_tls_failures); unset, "
        "plain TCP.",
    )

    def checkShape(self, shape: ServiceShape) -> list[tuple[str, str]]:
        """
        Each kind of listener needs its upstream.
        """
        problems = []
        if shape.streams and self.upstream is None:
            problems.append(("upstream", "missing; the service listens for streams, which go to upstream"))
        if shape.datagrams and self.udp_upstream is None:
            problems.append(
                ("udp_upstream", "missing; the service has a udp: listener, whose datagrams go to udp_upstream")
            )
        return problems

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        Rules that span several keys: (key, problem) pairs.
        """
        problems = []
        tls = self.upstream_tls
        upstream = self.upstream
        if tls is not None and upstream is not None and tls.server_name is None and endpointHost(upstream) is None:
            problems.append(
                ("upstream_tls", f"needs server_name: {str(upstream)!r} names no host to check the certificate for")
            )
        return problems


@implementer(IStreamHandler, IDatagramHandler)
class ProxyHandler(Service):
    """
    One proxy service: a L{ClientSide} per accepted connection, each with
    its own connection to the upstream, and a L{SessionTable} for datagrams,
    whose sockets close when the service stops.
    """

    upstream: Upstream | None = None
    sessions: SessionTable | None = None

    def __init__(self, options: ProxyOptions, context: PluginContext) -> None:
        """
        @raise TypeError: if the context names a framing with frames but no C{maxFrame}.
        """
        if options.udp_upstream is not None:
            self.sessions = SessionTable(
                options.udp_upstream, options.udp_session_timeout, options.udp_max_sessions, context
            )
        framed = context.framing not in (None, "raw")
        if framed and context.maxFrame is None:
            raise TypeError(f"a proxy with {context.framing} framing needs the service's max_frame")
        self.side = FramedClientSide if framed else ClientSide
        if options.upstream is None:
            return  # a service of udp: listeners only
        address = str(options.upstream)
        tls = options.upstream_tls
        self.upstream = Upstream(
            endpoint=PlainUpstreamEndpoint(clientFromString(context.reactor, address))
            if tls is None
            else tlsUpstreamEndpoint(address, tls, context),
            address=address,
            connectTimeout=options.connect_timeout,
            resetOnFailure=options.on_upstream_failure == "reset",
            proxyProtocol=options.upstream_proxy_protocol or None,
            context=context,
            framing=context.framing,
            maxFrame=context.maxFrame,
            frameFaults=context.relayedFrameFaults,
        )

    def newConnection(self) -> ClientSide:
        """
        The receiver of a new client connection: bytes as they come with
        raw framing, frames with any other.
        """
        assert self.upstream is not None, "a stream listener without upstream passed the config check"
        return self.side(self.upstream)

    def datagramReceived(self, datagram: bytes, peer: tuple[str, int], sender: IDatagramSender) -> None:
        """
        A client's datagram, for its session.
        """
        assert self.sessions is not None, "a udp: listener without udp_upstream passed the config check"
        self.sessions.datagramReceived(datagram, peer, sender)

    def stopService(self) -> Deferred[Any] | None:
        """
        Close every UDP session's socket.
        """
        Service.stopService(self)
        return None if self.sessions is None else self.sessions.stop()


class ProxyPlugin(Plugin):
    """
    The C{proxy} plugin.
    """

    name = "proxy"
    summary = "relays each stream connection (and each client's datagrams) to an upstream server, with the service's faults in between"
    optionsType = ProxyOptions
    transports = frozenset({"stream", "datagram"})
    framings = tuple(FRAMINGS)
    relaysFrames = True

    def build(self, options: ProxyOptions, context: PluginContext) -> ProxyHandler:
        """
        The proxy handler, connecting with the context's reactor.
        """
        return ProxyHandler(options, context)


plugin = ProxyPlugin()
