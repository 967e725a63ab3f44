"""
A PROXY protocol header towards a TLS upstream (C{upstream_proxy_protocol}
with C{upstream_tls}): on the upstream's wire the header in clear, then the
TLS handshake, then the client's bytes, the order in which HAProxy's
C{send-proxy-v2} with C{ssl} sends them and C{accept-proxy ssl} reads them.
In memory, with the helpers of L{test_upstream_tls}.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from netd.config.options import ConfigPath
from netd.stream.proxyformat import V2_SIGNATURE, HeaderReader, ProxyInfo
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet
from netd.tls.options import ClientTLSOptions

from .test_upstream_tls import CLIENT, Through, serverOptions, through


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSet:
    """
    A development set: CA, localhost server, client.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path_factory.mktemp("certs")))
    return files


def trusting(dev: DevelopmentSet) -> ClientTLSOptions:
    """
    upstream_tls trusting C{dev}'s CA.
    """
    return ClientTLSOptions(ca_bundle=ConfigPath(dev.ca))


def firstBytes(p: Through) -> bytes:
    """
    What netd writes on the upstream's TCP connection, once it is open, before the upstream answers anything.
    """
    host, port, factory, _, _ = p.reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    wire = StringTransport()
    protocol.makeConnection(wire)
    p.reactor.advance(0)
    return bytes(wire.value())


class HeaderThenTLS(Protocol):
    """
    An upstream that reads a PROXY header, then TLS, as HAProxy's
    C{accept-proxy ssl} and netd's C{haproxy:} listeners with a C{tls}
    table do; it keeps what the header said.
    """

    info: ProxyInfo | None = None

    def __init__(self, tls: IProtocol) -> None:
        self.tls = tls
        self.reader = HeaderReader()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.tls.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.info is None:
            found = self.reader.feed(data)
            if found is None:
                return
            self.info, data = found
        if data:
            self.tls.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tls.connectionLost(reason)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_headerInClearThenClientHello(dev: DevelopmentSet, version: str) -> None:
    """
    The first bytes on the upstream's wire are the PROXY header naming the real client, then a TLS ClientHello; none of the client's bytes go before the handshake.
    """
    p = through(trusting(dev), proxyProtocol=version)
    p.guard.dataReceived(b"held until the handshake")
    wire = firstBytes(p)
    assert wire.startswith(V2_SIGNATURE if version == "v2" else b"PROXY TCP4 192.0.2.7 ")
    found = HeaderReader().feed(wire)
    assert found is not None
    info, rest = found
    assert (info.source, info.destination) == (CLIENT, p.client.getHost())
    assert rest[:2] == b"\x16\x03" and rest[5] == 1  # a handshake record, a ClientHello
    assert b"held until" not in rest
    assert p.counters["upstream_connects"] == 0


def test_sameHeaderAsAPlainUpstream(dev: DevelopmentSet) -> None:
    """
    A TLS upstream gets, before its ClientHello, exactly the header a plain upstream gets first.
    """
    tls = firstBytes(through(trusting(dev), proxyProtocol="v2"))
    plain = firstBytes(through(None, proxyProtocol="v2"))
    assert plain.startswith(V2_SIGNATURE)
    assert tls[: len(plain)] == plain


def test_headerHandshakeThenRelay(dev: DevelopmentSet) -> None:
    """
    An upstream that reads the header and then TLS sees the real client, and gets the client's bytes (the header only once, in clear) after the handshake; its answer reaches the client.
    """
    p = through(trusting(dev), proxyProtocol="v2")
    p.guard.dataReceived(b"hello upstream")
    reader: Any = None

    def wrap(tls: IProtocol) -> HeaderThenTLS:
        nonlocal reader
        reader = HeaderThenTLS(tls)
        return reader

    p.connectUpstream(serverOptions(dev), wrap=wrap)
    assert reader.info.source == CLIENT
    assert p.upstream.received == b"hello upstream"
    transport = p.upstream.transport
    assert transport is not None
    transport.write(b"answer")
    p.flush()
    assert p.client.value() == b"answer"
    assert (p.counters["upstream_connects"], p.counters["upstream_tls_failures"]) == (1, 0)


def test_upstreamNotReadingTheHeaderIsAHandshakeFailure(dev: DevelopmentSet) -> None:
    """
    An upstream that expects TLS first takes the header for a broken ClientHello: a failed handshake, counted and closing the client, as any other.
    """
    p = through(trusting(dev), proxyProtocol="v2")
    p.guard.dataReceived(b"never relayed")
    p.connectUpstream(serverOptions(dev))
    assert p.upstream.received == b""
    assert (p.counters["upstream_connects"], p.counters["upstream_tls_failures"]) == (0, 1)
    assert p.counters["upstream_connect_failures"] == 1
    assert p.client.disconnecting or p.client.writeClosed
