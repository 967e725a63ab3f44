"""
The proxy: each accepted stream connection is relayed, byte for byte, to a
connection of its own to the service's C{upstream}, so that the service's
faults act between a client and a real server (L{netd_plugins.proxy.relay}).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from twisted.internet.endpoints import clientFromString
from zope.interface import implementer

from netd.bases import Plugin
from netd.config.options import InvalidValue, between, option
from netd.interfaces import IStreamHandler, PluginContext
from netd.tls.options import ClientTLSOptions

from .relay import ClientSide, Upstream
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
            raise InvalidValue(
                f"{value!r} is not {cls.configTypeName}; its scheme must be one of {', '.join(UPSTREAM_SCHEMES)}"
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

    upstream: UpstreamEndpoint = option(
        help="The server each client connection is relayed to: a Twisted client endpoint string, "
        "tcp:HOST:PORT or unix:PATH.",
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
        "the real client; false sends none.  A unix-socket client is named as v1's UNKNOWN or v2's LOCAL.",
    )
    upstream_tls: ClientTLSOptions | None = option(
        None,
        help="TLS to the upstream: ca_bundle (the system's CAs when unset), server_name (SNI and the name checked; "
        "the upstream's host when unset), verify, certificate and private_key (mutual TLS), min_version, "
        "max_version, alpn.  A failed handshake is an upstream failure (counted upstream_tls_failures); unset, "
        "plain TCP.",
    )

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        Rules that span several keys: (key, problem) pairs.
        """
        problems = []
        tls = self.upstream_tls
        if tls is not None:
            if tls.server_name is None and endpointHost(str(self.upstream)) is None:
                problems.append(
                    (
                        "upstream_tls",
                        f"needs server_name: {str(self.upstream)!r} names no host to check the certificate for",
                    )
                )
            if self.upstream_proxy_protocol:
                problems.append(
                    (
                        "upstream_proxy_protocol",
                        "cannot be used with upstream_tls: the header would have to go before the TLS handshake, "
                        "which netd does not send yet",
                    )
                )
        return problems


@implementer(IStreamHandler)
class ProxyHandler:
    """
    One proxy service: a L{ClientSide} per accepted connection, each with
    its own connection to the upstream.
    """

    def __init__(self, options: ProxyOptions, context: PluginContext) -> None:
        address = str(options.upstream)
        tls = options.upstream_tls
        self.upstream = Upstream(
            endpoint=clientFromString(context.reactor, address)
            if tls is None
            else tlsUpstreamEndpoint(address, tls, context),
            address=address,
            connectTimeout=options.connect_timeout,
            resetOnFailure=options.on_upstream_failure == "reset",
            proxyProtocol=options.upstream_proxy_protocol or None,
            context=context,
        )

    def newConnection(self) -> ClientSide:
        """
        The receiver of a new client connection.
        """
        return ClientSide(self.upstream)


class ProxyPlugin(Plugin):
    """
    The C{proxy} plugin.
    """

    name = "proxy"
    summary = "relays each stream connection to an upstream server, with the service's faults in between"
    optionsType = ProxyOptions
    transports = frozenset({"stream"})
    framings = ("raw",)

    def build(self, options: ProxyOptions, context: PluginContext) -> ProxyHandler:
        """
        The proxy handler, connecting with the context's reactor.
        """
        return ProxyHandler(options, context)


plugin = ProxyPlugin()
