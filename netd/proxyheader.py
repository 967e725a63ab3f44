"""
The PROXY protocol (v1 and v2) in front of a stream listener: C{haproxy:ENDPOINT}.

Twisted's own wrapper (L{twisted.protocols.haproxy}) starts the inner protocol
as soon as the socket is accepted, before the header has arrived, so anything
that reads the peer address when the connection opens (the connection log
line, the TLS layer, the DNS proxy's C{allow} list) would see the load
balancer instead of the client.  This one starts the inner stack only once the
header is parsed; a connection whose header is malformed, or that sends none
within the service's C{idle_timeout}, is closed without reaching it and
counted as C{proxy_headers_rejected}.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from netd.reactor import IMeteredTransport

_log = Logger()

_V2_PREFIX: bytes = V2Parser.PREFIX
_V1_PREFIX: bytes = V1Parser.PROXYSTR


def describePeer(address: IAddress | None) -> str:
    """
    A peer address in words for logs: C{10.1.2.3:5555}, C{[::1]:5555}, or the
    unix socket path (C{unix} when the peer has none).
    """
    host = getattr(address, "host", None)
    if host is not None:
        port = getattr(address, "port", 0)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return name or "unix"


def _checkAddress(address: IAddress | None) -> None:
    """
    Check that an address from a v1 header is an IP literal (Twisted's parser
    takes any word).

    @raise ValueError: when it is not.
    """
    host = getattr(address, "host", None)
    if host is not None:
        ipaddress.ip_address(host)


class ProxyHeaderProtocol(HAProxyProtocolWrapper):
    """
    Reads the PROXY header, then starts the inner protocol, whose
    C{getPeer()} and C{getHost()} are the addresses the header names.
    """

    factory: ProxyHeaderFactory
    _started = False
    _pending = b""
    _headerTimer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        """
        Accept the socket, but keep the inner protocol waiting for the header.

        This wrapper provides what the socket's transport does, less
        L{IMeteredTransport}: the socket's counts include the header, which
        is the load balancer's, not the client's; the connection's guard
        counts what passes this wrapper instead.
        """
        directlyProvides(self, providedBy(transport) - IMeteredTransport)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        inner = self.factory.wrappedFactory
        timeout = getattr(inner, "idleTimeout", 0)
        clock = getattr(inner, "clock", None)
        if timeout and clock is not None:
            self._headerTimer = clock.callLater(timeout, self._reject, f"no PROXY header within {timeout} seconds")

    def dataReceived(self, data: bytes) -> None:
        """
        Parse the header; once it is whole, start the inner protocol and give
        it what followed.
        """
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.disconnecting:
            return
        if self._parser is None:
            data = self._pending + data
            if len(data) >= 16 and data[:12] == _V2_PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif len(data) >= 5 and data[:5] == _V1_PREFIX:
                self._parser = V1Parser()
            elif (len(data) < 16 and _V2_PREFIX.startswith(data[:12])) or (len(data) < 5 and _V1_PREFIX.startswith(data)):
                self._pending = data
                return
            else:
                self._reject("no PROXY header")
                return
            self._pending = b""
        try:
            info, remaining = self._parser.feed(data)
            if info is not None:
                _checkAddress(info.source)
                _checkAddress(info.destination)
        except (InvalidProxyHeader, ValueError):
            self._reject("malformed PROXY header")
            return
        if info is None:
            return
        self._proxyInfo = info
        self._started = True
        if self._headerTimer is not None:
            self._headerTimer.cancel()
            self._headerTimer = None
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if remaining and not self.disconnecting:
            self.wrappedProtocol.dataReceived(remaining)

    def _reject(self, why: str) -> None:
        """
        Close a connection whose PROXY header is missing or malformed, and count it.
        """
        self._headerTimer = None
        inner = self.factory.wrappedFactory
        counters = getattr(inner, "counters", None)
        if counters is not None:
            counters["proxy_headers_rejected"] += 1
        log: Logger = getattr(inner, "log", _log)
        log.warn(
            "closing connection from {peer}: {error}",
            peer=describePeer(self.transport.getPeer()),  # type: ignore[union-attr]
            error=why,
            event="proxy_header_rejected",
        )
        self.disconnecting = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Tell the inner protocol, if it was started.
        """
        if self._headerTimer is not None:
            self._headerTimer.cancel()
            self._headerTimer = None
        if self._started:
            ProtocolWrapper.connectionLost(self, reason)
        else:
            self.factory.unregisterProtocol(self)


class ProxyHeaderFactory(HAProxyWrappingFactory):
    """
    Wraps a service's factory (its L{netd.limits.ConnectionLimiter}) with the
    PROXY protocol.
    """

    noisy = False
    protocol = ProxyHeaderProtocol  # type: ignore[assignment]

    def __init__(self, wrappedFactory: IProtocolFactory) -> None:
        super().__init__(wrappedFactory)

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol | None:  # type: ignore[override]
        """
        Wrap the inner protocol, unless the inner factory refuses the connection.
        """
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return ProxyHeaderProtocol(self, inner)  # type: ignore[arg-type]
