"""
The PROXY protocol (v1 and v2) in front of a stream listener: C{haproxy:ENDPOINT}.

Unlike Twisted's wrapper, the inner stack starts only once the header is
parsed, so that everything reading the peer address sees the client; a header
is believed only from C{proxy_trusted} sources ("Design notes" in
docs/listen.md).  A connection waiting for its header holds a place among the
service's connections (L{netd.stream.guard.ConnectionLimiter}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IAddress, IDelayedCall, ILoggingContext, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from netd.reactors.shared import IMeteredTransport
from netd.stream.proxyformat import HeaderReader, MalformedHeader, NoHeader, ProxyInfo

_log = Logger(namespace="netd.stream.proxyheader")

UNIX_SOURCES = "unix:"
"""
The entry of C{proxy_trusted} that trusts every unix socket peer (whose access
the socket file's mode decides), as in nginx's C{set_real_ip_from unix:}.
"""

DEFAULT_TRUSTED = ("127.0.0.0/8", "::1/128", UNIX_SOURCES)
"""
The sources whose PROXY headers are believed unless C{proxy_trusted} says
otherwise: this host only.
"""

UNTRUSTED_LOG_INTERVAL = 10.0
"""
Seconds between two log lines about connections from untrusted sources: the
first is logged at once, those that follow within this time are counted and
summed up in the next line, so that a flood of them costs a line per interval.
"""


def checkTrustedSources(value: tuple[str, ...]) -> str | None:
    """
    A config check that every C{proxy_trusted} entry is an IP network (an
    address alone is a /32 or /128) or C{unix:}.
    """
    for i, text in enumerate(value):
        if text == UNIX_SOURCES:
            continue
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"[{i}] {text!r} is not an IP network such as '10.0.0.0/8' or '::1/128', nor {UNIX_SOURCES!r}"
    return None


@attrs.frozen
class TrustedSources:
    """
    The peers whose PROXY headers are believed: IP networks, and unix socket
    peers when C{unix} is set.
    """

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    unix: bool

    @classmethod
    def fromConfig(cls, entries: Iterable[str]) -> TrustedSources:
        """
        From the entries of C{proxy_trusted} (already checked by
        L{checkTrustedSources}).
        """
        entries = tuple(entries)
        networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if e != UNIX_SOURCES)
        return cls(networks, UNIX_SOURCES in entries)

    def trusts(self, address: IAddress | None) -> bool:
        """
        Whether a connection's peer may send a PROXY header: a unix socket
        peer when unix sockets are trusted, an IP peer (IPv4-mapped IPv6
        taken as IPv4) within one of the networks.
        """
        if isinstance(address, UNIXAddress):
            return self.unix
        host = getattr(address, "host", None)
        if not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


DEFAULT_TRUSTED_SOURCES = TrustedSources.fromConfig(DEFAULT_TRUSTED)


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


class ProxyHeaderProtocol(ProtocolWrapper):
    """
    Reads the PROXY header, then starts the inner protocol, whose
    C{getPeer()} and C{getHost()} are the addresses the header names.
    """

    factory: ProxyHeaderFactory
    _started = False
    _headerTimer: IDelayedCall | None = None
    _proxyInfo: ProxyInfo | None = None

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._reader = HeaderReader()

    bytesIn = 0
    bytesOut = 0
    """
    While it waits for its header, the connection is one of the limiter's
    (see L{makeConnection}), which sums its traffic: none yet, as the header
    is the load balancer's and the guard counts what follows it.
    """
    lastActivity = 0.0
    """
    When the connection was accepted: the limiter ranks its connections for
    eviction by their last traffic, and one waiting for its header has had
    none of the client's.
    """

    def madeProgress(self) -> bool:
        """
        No connection waiting for its header has made progress: at
        C{max_connections} such a connection is among the first evicted.
        """
        return False

    def evicted(self, why: str) -> None:
        """
        The limiter needs this connection's place (the limiter counts and
        logs it): close it without waiting for the header.
        """
        self.disconnecting = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def faultsChanged(self) -> None:
        """
        The service's faults changed while the header is awaited: nothing to
        do, the connection's guard takes the faults when it starts.
        """

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
        if isinstance(inner, WrappingFactory):
            # Hold a place among the service's connections until the guard
            # (which registers itself when it starts) takes it over.
            inner.registerProtocol(self)
        timeout = getattr(inner, "idleTimeout", 0)
        clock = getattr(inner, "clock", None)
        if clock is not None:
            self.lastActivity = clock.seconds()
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
        try:
            parsed = self._reader.feed(data)
        except NoHeader:
            self._reject("no PROXY header")
            return
        except MalformedHeader:
            self._reject("malformed PROXY header")
            return
        if parsed is None:
            return
        info, remaining = parsed
        self._proxyInfo = info
        self._started = True
        if self._headerTimer is not None:
            self._headerTimer.cancel()
            self._headerTimer = None
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        inner = self.factory.wrappedFactory
        if isinstance(inner, WrappingFactory) and self in inner.protocols:
            # The guard now holds the place: hand it over without the
            # limiter's "a connection closed" (WrappingFactory's own removal).
            WrappingFactory.unregisterProtocol(inner, self)
        if remaining and not self.disconnecting:
            self.wrappedProtocol.dataReceived(remaining)

    def getPeer(self) -> IAddress:
        """
        The client's address, as the header names it (the socket's peer
        until the header is read, or when it names none).
        """
        if self._proxyInfo is not None and self._proxyInfo.source is not None:
            return self._proxyInfo.source
        assert self.transport is not None
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        """
        The address the client connected to, as the header names it.
        """
        if self._proxyInfo is not None and self._proxyInfo.destination is not None:
            return self._proxyInfo.destination
        assert self.transport is not None
        return self.transport.getHost()

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
            inner = self.factory.wrappedFactory
            if isinstance(inner, WrappingFactory) and self in inner.protocols:
                inner.unregisterProtocol(self)


class ProxyHeaderFactory(WrappingFactory["ProxyHeaderProtocol"]):
    """
    Wraps a service's factory (its L{netd.stream.guard.ConnectionLimiter}) with the
    PROXY protocol, for the peers in C{trusted}.
    """

    noisy = False
    protocol = ProxyHeaderProtocol

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        trusted: TrustedSources = DEFAULT_TRUSTED_SOURCES,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param trusted: the peers whose headers are believed; others are closed on accept.
        @param clock: times the log lines about untrusted peers (the wrapped
            factory's C{clock} when unset; then every such peer is logged).
        """
        super().__init__(wrappedFactory)
        self.trusted = trusted
        self.clock: IReactorTime | None = clock if clock is not None else getattr(wrappedFactory, "clock", None)
        self._untrustedSince = 0
        self._untrustedLogged: float | None = None

    def logPrefix(self) -> str:
        """
        The wrapped factory's log prefix, marked as behind the PROXY protocol.
        """
        inner = self.wrappedFactory
        prefix = inner.logPrefix() if ILoggingContext.providedBy(inner) else type(inner).__name__
        return f"{prefix} (PROXY)"

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol | None:  # type: ignore[override]
        """
        Wrap the inner protocol, unless the peer is not trusted to send a
        header or the inner factory refuses the connection.
        """
        if not self.trusted.trusts(addr):
            self._refuseUntrusted(addr)
            return None
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return ProxyHeaderProtocol(self, inner)

    def _refuseUntrusted(self, addr: IAddress) -> None:
        """
        Count a connection from a peer that may not send a PROXY header, and
        log it: at once when no line was written in the last
        L{UNTRUSTED_LOG_INTERVAL} seconds, else in the next line's count.
        """
        inner = self.wrappedFactory
        counters = getattr(inner, "counters", None)
        if counters is not None:
            counters["proxy_headers_untrusted"] += 1
        self._untrustedSince += 1
        now = self.clock.seconds() if self.clock is not None else None
        if (
            now is not None
            and self._untrustedLogged is not None
            and now - self._untrustedLogged < UNTRUSTED_LOG_INTERVAL
        ):
            return
        log: Logger = getattr(inner, "log", _log)
        log.warn(
            "refused connection from {peer}: not a trusted source of PROXY headers (proxy_trusted); "
            "{count} refused since the last such line",
            peer=describePeer(addr),
            count=self._untrustedSince,
            event="proxy_header_untrusted",
        )
        self._untrustedSince = 0
        self._untrustedLogged = now
