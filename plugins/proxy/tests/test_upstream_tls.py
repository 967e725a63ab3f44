"""
The proxy's C{upstream_tls} (C{netd_plugins.proxy.upstreamtls}): the table's
decoding and its errors' key paths, and TLS to an in-memory upstream over
L{twisted.test.iosim} behind the core stream stack: the client's bytes held
until the handshake is done, verification and mutual TLS, failures counted
as upstream failures, C{verify = false}, and the client's EOF as close_notify.
Every certificate is made by L{netd.tls.devcerts} in a temporary folder.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
from OpenSSL.crypto import X509
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.ssl import TLSVersion as TwistedTLSVersion
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim

from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.daemon.service import NetService, ServiceStartError
from netd.events import EventLog
from netd.interfaces import PluginContext
from netd.metrics import Counters
from netd.registry import discoverPlugins
from netd.stream.guard import GuardedConnection
from netd.testing.memory import connectTLS, makeStreamStack
from netd.tls.client import clientCreator
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet
from netd.tls.keys import TLSSetupError, loadCertificates, loadKeyPair
from netd.tls.options import ClientTLSOptions, TLSOptions, TLSVersion
from netd_plugins.proxy import ProxyOptions, UpstreamEndpoint, plugin
from netd_plugins.proxy.upstreamtls import endpointHost

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


@attrs.frozen
class Certs:
    """
    The development set (CA, localhost server, client) and another CA's, which nobody trusts.
    """

    dev: DevelopmentSet
    other: DevelopmentSet


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """
    Two development sets, of two CAs.
    """
    root = tmp_path_factory.mktemp("certs")
    dev, _ = ensureDevelopmentSet(str(root / "dev"))
    other, _ = ensureDevelopmentSet(str(root / "other"))
    return Certs(dev, other)


def proxyConfig(keys: str) -> Any:
    """
    A config of one proxy service with C{keys}.
    """
    text = f'[[services]]\nname = "p"\nplugin = "proxy"\nlisten = ["tcp:0:interface=127.0.0.1"]\n{keys}\n'
    return parseConfig(tomllib.loads(text), "p.toml", discoverPlugins())


def test_decodesTheTable(certs: Certs) -> None:
    """
    An upstream_tls table decodes into the shared client TLS options, versions and ALPN included.
    """
    config = proxyConfig(
        'upstream = "tcp:db.test:5432"\n'
        f'upstream_tls = {{ ca_bundle = "{certs.dev.ca}", server_name = "db.test", min_version = "1.2", '
        f'max_version = 1.3, alpn = ["h2", "http/1.1"], certificate = "{certs.dev.client}", '
        f'private_key = "{certs.dev.clientKey}" }}'
    )
    tls = config.services[0].options.upstream_tls
    assert tls == ClientTLSOptions(
        ca_bundle=certs.dev.ca,  # type: ignore[arg-type]
        server_name="db.test",
        min_version=TLSVersion("1.2"),
        max_version=TLSVersion("1.3"),
        alpn=("h2", "http/1.1"),
        certificate=certs.dev.client,  # type: ignore[arg-type]
        private_key=certs.dev.clientKey,  # type: ignore[arg-type]
    )
    assert proxyConfig('upstream = "tcp:h:1"').services[0].options.upstream_tls is None


@pytest.mark.parametrize(
    "table, expected",
    [
        ("{ verfy = false }", "services[0].upstream_tls.verfy: unknown key; did you mean 'verify'?"),
        ('{ min_version = "1.4" }', "services[0].upstream_tls.min_version: expected a TLS version"),
        ('{ min_version = "1.3", max_version = "1.2" }', "services[0].upstream_tls.max_version: 1.2 is older"),
        ('{ alpn = [""] }', "services[0].upstream_tls.alpn: [0] '' is not an ALPN protocol name"),
        ('{ server_name = "not a name" }', "services[0].upstream_tls.server_name: 'not a name' is not a DNS name"),
        ('{ certificate = "CERT" }', "services[0].upstream_tls.private_key: missing"),
        ('{ private_key = "CERT" }', "services[0].upstream_tls.certificate: missing"),
        ('{ verify = false, ca_bundle = "CERT" }', "services[0].upstream_tls.ca_bundle: verify = false checks"),
    ],
)
def test_badTablesNamedByPath(certs: Certs, table: str, expected: str) -> None:
    """
    Each malformed upstream_tls key is a config error at its key path, saying what is allowed.
    """
    with pytest.raises(ConfigError) as info:
        proxyConfig(f'upstream = "tcp:h:1"\nupstream_tls = {table.replace("CERT", certs.dev.client)}')
    assert f"p.toml: {expected}" in str(info.value)


def test_crossChecksWithTheProxyKeys() -> None:
    """
    A unix upstream names no host, so TLS to it needs server_name; a PROXY header goes with upstream_tls.
    """
    with pytest.raises(ConfigError) as info:
        proxyConfig('upstream = "unix:/run/db.sock"\nupstream_tls = {}')
    assert "p.toml: services[0].upstream_tls: needs server_name" in str(info.value)
    assert proxyConfig('upstream = "unix:/run/db.sock"\nupstream_tls = { server_name = "db.test" }')
    options = proxyConfig('upstream = "tcp:h:1"\nupstream_tls = {}\nupstream_proxy_protocol = "v2"').services[0].options
    assert (options.upstream_proxy_protocol, options.upstream_tls) == ("v2", ClientTLSOptions())


@pytest.mark.parametrize(
    "description, host",
    [
        ("tcp:db.test:5432", "db.test"),
        ("tcp:127.0.0.1:6379:timeout=3", "127.0.0.1"),
        ("tcp:host=db.test:port=5432", "db.test"),
        (r"tcp:port=5432:host=\:\:1", "::1"),
        (r"tcp:\:\:1:5432", "::1"),
        ("unix:/run/db.sock", None),
    ],
)
def test_endpointHost(description: str, host: str | None) -> None:
    """
    The host the upstream's certificate is checked for by default is read from the tcp: endpoint string, in each of its spellings.
    """
    assert endpointHost(description) == host


def contextFor(counters: Counters, events: EventLog, reactor: MemoryReactorClock) -> PluginContext:
    """
    A plugin context on C{reactor}.
    """
    return PluginContext(
        reactor=reactor, log=Logger(namespace="test_upstream_tls"), serviceName="p", counters=counters, events=events
    )


@pytest.mark.parametrize(
    "keys, key",
    [
        ({"ca_bundle": "client"}, ("upstream_tls", "ca_bundle")),
        ({"ca_bundle": "missing"}, ("upstream_tls", "ca_bundle")),
        ({"certificate": "missing", "private_key": "clientKey"}, ("upstream_tls", "certificate")),
        ({"certificate": "client", "private_key": "ca"}, ("upstream_tls", "private_key")),
        ({"certificate": "clientKey", "private_key": "clientKey"}, ("upstream_tls", "certificate")),
    ],
)
def test_unusableFilesNameTheirKey(tmp_path: Path, certs: Certs, keys: dict[str, str], key: tuple[str, ...]) -> None:
    """
    A file of upstream_tls that is missing or unusable (no certificate, a key of another certificate) fails the build, naming its key path.
    """
    files = {
        "client": certs.dev.client,
        "clientKey": certs.dev.clientKey,
        "ca": certs.dev.caKey,
        "missing": str(tmp_path / "missing.pem"),
    }
    if keys.get("ca_bundle") == "client":
        (tmp_path / "empty.pem").write_text("nothing here\n")
        files["client"] = str(tmp_path / "empty.pem")
    tls = ClientTLSOptions(**{k: files[v] for k, v in keys.items()})  # type: ignore[arg-type]
    reactor = MemoryReactorClock()
    options = ProxyOptions(upstream=UpstreamEndpoint.fromConfig("tcp:localhost:1"), upstream_tls=tls)
    with pytest.raises(TLSSetupError) as info:
        plugin.build(options, contextFor(Counters(), EventLog(10, reactor), reactor))
    assert info.value.key == key
    assert ".".join(key) in str(info.value)


class Recorder(Protocol):
    """
    The upstream's application: records what it receives and how its connection ended.
    """

    reason: Failure | None = None

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason


class Transport(StringTransport):
    """
    The client's transport, recording a half-close.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


@attrs.define
class Through:
    """
    A client through the proxy to an in-memory TLS upstream.
    """

    reactor: MemoryReactorClock
    client: Transport
    guard: GuardedConnection
    counters: Counters
    events: EventLog
    upstream: Recorder = attrs.field(factory=Recorder)
    pump: Any = None
    upstreamTLS: Any = None

    def connectUpstream(
        self, server: CertificateOptions, socketType: Any = iosim.FakeTransport, wrap: Any = None
    ) -> None:
        """
        The upstream accepts the TCP connection with C{server}'s TLS settings
        (netd's side of it on a C{socketType}; TLS behind what C{wrap} makes
        of it, when given); the handshake runs.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        address = IPv4Address("TCP", host, port)
        client = factory.buildProtocol(address)
        serverFactory = TLSMemoryBIOFactory(
            server, False, Factory.forProtocol(lambda: self.upstream), clock=self.reactor
        )
        serverProtocol = serverFactory.buildProtocol(CLIENT)
        assert serverProtocol is not None
        self.upstreamTLS = serverProtocol
        if wrap is not None:
            serverProtocol = wrap(serverProtocol)
        self.pump = iosim.connect(
            serverProtocol,
            iosim.FakeTransport(serverProtocol, isServer=True, peerAddress=CLIENT, hostAddress=address),
            client,
            socketType(client, isServer=False, peerAddress=address),
            greet=False,
            clock=self.reactor,
        )
        self.flush()

    def flush(self) -> None:
        """
        Run the pump, and the clock's due calls, until nothing moves.
        """
        for _ in range(20):
            self.reactor.advance(0)
            if self.pump is not None:
                self.pump.flush()


def through(
    tls: ClientTLSOptions | None,
    upstream: str = "tcp:localhost:5432",
    onFailure: str = "close",
    proxyProtocol: Any = False,
) -> Through:
    """
    A proxy service to C{upstream} with C{tls} (L{None}: plain TCP) and
    C{proxyProtocol}'s header, behind the core stack, and one client
    connected to it.
    """
    reactor = MemoryReactorClock()
    counters = Counters()
    events = EventLog(100, reactor)
    options = ProxyOptions(
        upstream=UpstreamEndpoint.fromConfig(upstream),
        upstream_tls=tls,
        on_upstream_failure=onFailure,  # type: ignore[arg-type]
        upstream_proxy_protocol=proxyProtocol,
    )
    handler = plugin.build(options, contextFor(counters, events, reactor))
    limiter = makeStreamStack(handler, "raw", clock=reactor, counters=counters, events=events)
    guard = limiter.buildProtocol(CLIENT)
    assert isinstance(guard, GuardedConnection)
    client = Transport(peerAddress=CLIENT)
    guard.makeConnection(client)
    return Through(reactor, client, guard, counters, events)


def serverOptions(
    files: DevelopmentSet, *, clientCA: str | None = None, alpn: list[bytes] | None = None, maxVersion: Any = None
) -> CertificateOptions:
    """
    The upstream's TLS: C{files}' server certificate, asking for a client certificate of C{clientCA} when given.
    """
    pair = loadKeyPair(files.server, files.serverKey, "upstream")
    extra: dict[str, Any] = {}
    if clientCA is not None:
        extra = {
            "verify": True,
            "requireCertificate": True,
            "caCerts": [X509.from_cryptography(c) for c in loadCertificates(clientCA, "client CA")],
        }
    return CertificateOptions(
        privateKey=pair.key,
        certificate=pair.certificate,
        acceptableProtocols=alpn,
        lowerMaximumSecurityTo=maxVersion,
        **extra,
    )


def test_heldUntilTheHandshakeThenRelayed(certs: Certs) -> None:
    """
    The client's bytes are held while TCP connects and the handshake runs, then reach the verified upstream; its answer reaches the client, with ALPN agreed.
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca, alpn=("h2",)))  # type: ignore[arg-type]
    p.guard.dataReceived(b"hello ")
    p.guard.dataReceived(b"upstream")
    p.connectUpstream(serverOptions(certs.dev, alpn=[b"h2"]))
    assert p.upstream.received == b"hello upstream"
    assert p.upstream.transport.negotiatedProtocol == b"h2"  # type: ignore[union-attr]
    p.upstream.transport.write(b"answer")  # type: ignore[union-attr]
    p.flush()
    assert p.client.value() == b"answer"
    assert (p.counters["upstream_connects"], p.counters["upstream_tls_failures"]) == (1, 0)
    assert p.counters["upstream_tls_unverified"] == 0


def test_handshakeNotDoneHoldsTheClient(certs: Certs) -> None:
    """
    TCP open but the handshake not done: nothing of the client's reaches the upstream, and the relay is not yet connected.
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca))  # type: ignore[arg-type]
    p.guard.dataReceived(b"secret")
    host, port, factory, _, _ = p.reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    wire = StringTransport()
    protocol.makeConnection(wire)
    p.reactor.advance(0)
    assert wire.value().startswith(b"\x16\x03")  # a ClientHello, and nothing else
    assert b"secret" not in wire.value()
    assert p.counters["upstream_connects"] == 0


@pytest.mark.parametrize(
    "keys, upstream, why",
    [
        ({}, "other", "certificate verify failed"),
        ({"server_name": "db.test"}, "dev", "not valid for db.test (hostname mismatch)"),
    ],
)
@pytest.mark.parametrize("onFailure", ["close", "reset"])
def test_refusedUpstreamIsAnUpstreamFailure(
    certs: Certs, keys: dict[str, str], upstream: str, why: str, onFailure: str
) -> None:
    """
    An upstream whose certificate fails the chain or the name check gets none of the client's bytes; the client gets on_upstream_failure, and the failure is counted and logged, the reason in the event.
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca, **keys), onFailure=onFailure)  # type: ignore[arg-type]
    p.guard.dataReceived(b"secret")
    with capturedLogs() as logs:
        p.connectUpstream(serverOptions(getattr(certs, upstream)))
    assert p.upstream.received == b""
    assert p.counters["upstream_connect_failures"] == 1
    assert p.counters["upstream_tls_failures"] == 1
    assert p.counters["upstream_connects"] == 0
    if onFailure == "reset":
        assert p.client.disconnected or p.client.disconnecting
    else:
        assert p.client.writeClosed or p.client.disconnecting
    [line] = [e for e in logs if e.get("event") == "upstream_connect_failed"]
    assert line["why"].startswith("TLS handshake failed: ") and why in line["why"]
    p.guard.connectionLost(Failure(ConnectionDone()))
    [event] = p.events.events(kind="connection")
    assert why in event["upstream_ended"]


def test_timeoutDuringTheHandshake(certs: Certs) -> None:
    """
    An upstream that accepts TCP but never finishes the handshake is given up at connect_timeout, counted as a timeout, not a TLS failure.
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca))  # type: ignore[arg-type]
    host, port, factory, _, _ = p.reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    wire = StringTransport()
    protocol.makeConnection(wire)
    p.reactor.advance(5.1)
    assert p.counters["upstream_connect_timeouts"] == 1
    assert p.counters["upstream_tls_failures"] == 0
    assert wire.disconnecting


@pytest.mark.parametrize("withCertificate", [True, False])
def test_mutualTLS(certs: Certs, withCertificate: bool) -> None:
    """
    An upstream that requires a client certificate accepts the one upstream_tls names; without one (TLS 1.2, where the refusal is in the handshake) it is an upstream TLS failure.
    """
    keys = {"certificate": certs.dev.client, "private_key": certs.dev.clientKey} if withCertificate else {}
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca, **keys))  # type: ignore[arg-type]
    p.guard.dataReceived(b"query")
    p.connectUpstream(serverOptions(certs.dev, clientCA=certs.dev.ca, maxVersion=TwistedTLSVersion.TLSv1_2))
    if withCertificate:
        assert p.upstream.received == b"query"
        assert p.counters["upstream_connects"] == 1
    else:
        assert p.upstream.received == b""
        assert (p.counters["upstream_connect_failures"], p.counters["upstream_tls_failures"]) == (1, 1)


def test_verifyFalseAcceptsAnyCertificateCountedAndWarned(certs: Certs) -> None:
    """
    verify = false connects to an upstream nobody trusts, warns once when the service is built, and counts each such handshake.
    """
    with capturedLogs() as logs:
        p = through(ClientTLSOptions(verify=False))
    [warning] = [e for e in logs if "verify is false" in e["log_format"]]
    p.guard.dataReceived(b"x")
    p.connectUpstream(serverOptions(certs.other))
    assert p.upstream.received == b"x"
    assert p.counters["upstream_tls_unverified"] == 1
    assert warning["upstream"] == "tcp:localhost:5432"


def test_clientEOFIsCloseNotifyAfterWhatWasSent(certs: Certs) -> None:
    """
    The client's EOF ends TLS to the upstream cleanly (close_notify) after every byte written before it, not by cutting TCP under TLS.
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca))  # type: ignore[arg-type]
    p.connectUpstream(serverOptions(certs.dev))
    p.guard.dataReceived(b"last words")
    p.guard.readConnectionLost()
    p.flush()
    assert p.upstream.received == b"last words"
    assert p.upstream.reason is not None
    assert p.upstream.reason.type.__name__ == "ConnectionDone"


# The client-facing side: the service's own tls table.


def terminating(certs: Certs) -> tuple[Any, MemoryReactorClock, Counters]:
    """
    A proxy service to a plain upstream behind the core stack with a tls
    table (the development server certificate), and one in-memory TLS
    client connected to it, its handshake done.
    """
    reactor = MemoryReactorClock()
    counters = Counters()
    options = ProxyOptions(upstream=UpstreamEndpoint.fromConfig("tcp:127.0.0.1:6379"))
    handler = plugin.build(options, contextFor(counters, EventLog(10, reactor), reactor))
    tls = TLSOptions(certificate=certs.dev.server, private_key=certs.dev.serverKey)  # type: ignore[arg-type]
    limiter = makeStreamStack(handler, "raw", clock=reactor, counters=counters, tls=tls)
    connection = connectTLS(limiter, clientCreator("localhost", certs.dev.ca), reactor)
    assert connection is not None and connection.handshakeDone
    return connection, reactor, counters


def test_upstreamCloseClosesATLSClient(certs: Certs) -> None:
    """
    When the upstream closes, a client of the service's tls table is closed too (its TLS close waits for no producer), after the upstream's last bytes.
    """
    connection, reactor, counters = terminating(certs)
    connection.send(b"GET")
    host, port, factory, _, _ = reactor.tcpClients[-1]
    upstream = factory.buildProtocol(IPv4Address("TCP", host, port))
    wire = StringTransport()
    upstream.makeConnection(wire)
    connection.flush()
    assert wire.value() == b"GET"
    upstream.dataReceived(b"bye")
    upstream.connectionLost(Failure(ConnectionDone()))
    connection.flush()
    assert connection.takeReceived() == b"bye"
    assert connection.lost is not None


def test_clientTCPEOFUnderTLSClosesTheConnection(certs: Certs) -> None:
    """
    A TLS client's TCP EOF without close_notify (a client killed) closes its connection, where the TLS layer used to hand the EOF back to the guard below it without end.
    """
    connection, reactor, counters = terminating(certs)
    connection.server.readConnectionLost()
    connection.flush()
    assert connection.lost is not None


def test_serviceStartNamesTheKeyOfAnUnusableFile(tmp_path: Path) -> None:
    """
    A proxy service whose upstream_tls file cannot be read does not start, and the error names the file's key path, not just the plugin.
    """
    missing = tmp_path / "missing.pem"
    config = proxyConfig(f'upstream = "tcp:localhost:1"\nupstream_tls = {{ ca_bundle = "{missing}" }}')
    with pytest.raises(ServiceStartError) as info:
        NetService(config.services[0], MemoryReactorClock(), 1.0)
    assert info.value.key == ("upstream_tls", "ca_bundle")
    assert f"upstream_tls.ca_bundle {str(missing)!r}" in info.value.reason


@pytest.mark.parametrize(
    "upstream, connects",
    [("tcp:127.0.0.1:5432", True), ("tcp:127.0.0.2:5432", False)],
)
def test_anIPAddressUpstreamIsCheckedAgainstIPSANs(certs: Certs, upstream: str, connects: bool) -> None:
    """
    Without server_name, an upstream given by IP address is checked against the certificate's IP SANs (the development certificate has 127.0.0.1, not 127.0.0.2).
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca), upstream=upstream)  # type: ignore[arg-type]
    p.guard.dataReceived(b"x")
    p.connectUpstream(serverOptions(certs.dev))
    assert p.counters["upstream_connects"] == (1 if connects else 0)
    if not connects:
        p.guard.connectionLost(Failure(ConnectionDone()))
        [event] = p.events.events(kind="connection")
        assert "not valid for 127.0.0.2" in event["upstream_ended"]


class SocketFakeTransport(iosim.FakeTransport):
    """
    iosim's transport over a socket's stand-in that records its options, and recording an abort.
    """

    aborted = False

    def __init__(self, protocol: Any, isServer: bool, peerAddress: Any) -> None:
        super().__init__(protocol, isServer, peerAddress=peerAddress)
        self.options: list[tuple[int, int]] = []

    def getHandle(self) -> Any:
        return self

    def setsockopt(self, level: int, name: int, value: bytes) -> None:
        self.options.append((level, name))

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def test_clientResetIsATCPResetUnderTLS(certs: Certs) -> None:
    """
    A client's reset becomes a TCP reset of the upstream's socket under TLS (SO_LINGER 0, then an abort), as for a plain upstream.
    """
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca))  # type: ignore[arg-type]
    p.connectUpstream(serverOptions(certs.dev), SocketFakeTransport)
    socketSide = p.pump.clientIO
    assert isinstance(socketSide, SocketFakeTransport) and not socketSide.aborted
    p.guard.connectionLost(Failure(ConnectionLost()))
    assert socketSide.aborted
    assert socketSide.options == [(socket.SOL_SOCKET, socket.SO_LINGER)]


@pytest.mark.parametrize("minVersion, connects", [(None, True), ("1.3", False)])
def test_minVersionRefusesAnOlderUpstream(certs: Certs, minVersion: str | None, connects: bool) -> None:
    """
    An upstream that speaks at most TLS 1.2 is accepted by default and refused with min_version = "1.3", as an upstream TLS failure.
    """
    version = None if minVersion is None else TLSVersion(minVersion)
    p = through(ClientTLSOptions(ca_bundle=certs.dev.ca, min_version=version))  # type: ignore[arg-type]
    p.guard.dataReceived(b"x")
    p.connectUpstream(serverOptions(certs.dev, maxVersion=TwistedTLSVersion.TLSv1_2))
    assert p.counters["upstream_connects"] == (1 if connects else 0)
    assert p.counters["upstream_tls_failures"] == (0 if connects else 1)
