"""
How an upstream connection opens with a PROXY protocol header: the relay
makes the header for each client (L{proxyHeader}) and hands it to the
upstream's endpoint with the connection's protocol factory
(L{HeaderFirstEndpoint}); the endpoint writes it in clear before any other
byte.  A plain upstream writes it once TCP is open
(L{PlainUpstreamEndpoint}); a TLS upstream writes it before its ClientHello
(L{netd_plugins.proxy.upstreamtls}), as HAProxy's C{send-proxy-v2} with
C{ssl} does and as C{accept-proxy ssl} and nginx's C{ssl proxy_protocol}
read it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory, IStreamClientEndpoint

from netd.stream.proxyformat import encodeProxyHeader


class HeaderFirstEndpoint(Protocol):
    """
    What the relay connects to its upstream with: a client endpoint whose
    connections open with a header of the relay's choosing.
    """

    def connect(self, protocolFactory: IProtocolFactory, header: bytes = b"") -> Deferred[IProtocol]:
        """
        Connect C{protocolFactory}'s protocol to the upstream; C{header}, if
        any, is the first thing written on the connection, in clear.
        """


def proxyHeader(version: Literal["v1", "v2"] | None, client: IAddress, local: IAddress) -> bytes:
    """
    The header that opens the upstream connection of a client at C{client}
    that connected to C{local}: a PROXY protocol header of C{version}, or
    nothing when the service sends none.
    """
    return b"" if version is None else encodeProxyHeader(version, client, local)


@attrs.frozen
class PlainUpstreamEndpoint:
    """
    An upstream without TLS: the header is written as soon as the
    connection is open, before the relay passes on any of the client's
    bytes (the relay's upstream protocols send nothing of their own).

    @ivar endpoint: the Twisted client endpoint of C{upstream}.
    """

    endpoint: IStreamClientEndpoint

    def connect(self, protocolFactory: IProtocolFactory, header: bytes = b"") -> Deferred[IProtocol]:
        """
        Connect; the Deferred fires once C{header} is written.
        """
        connecting: Deferred[IProtocol] = self.endpoint.connect(protocolFactory)
        if header:
            connecting.addCallback(_writeFirst, header)
        return connecting


def _writeFirst(protocol: Any, header: bytes) -> Any:
    """
    Write C{header} on C{protocol}'s new connection, then pass the protocol on.
    """
    protocol.transport.write(header)
    return protocol
