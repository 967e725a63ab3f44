"""
The TLS layer (L{netd.tls}) in memory: the echo behind the core's stack with
TLS (limits, TLS, framing) and a client through L{twisted.test.iosim};
versions, ciphers, ALPN, SNI, client certificates and C{client_allow}, the
handshake timeout, garbage and aborted handshakes, session resumption, flow
control through TLS, the startup checks of certificates and keys, and the
client side (L{netd.tls.client.clientCreator}).  Every certificate is made by
L{netd.tls.devcerts} in a temporary folder.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from netd import logs
from netd.config.options import ConfigError, renderPath
from netd.config.spec import parseConfig
from netd.daemon.service import NetService, ServiceStartError
from netd.metrics import Counters
from netd.registry import discoverPlugins
from netd.stream.guard import ConnectionLimiter
from netd.testing.memory import TestClientTLS, TLSTestConnection, connect, connectTLS, makeStreamStack
from netd.tls import pump
from netd.tls.client import clientCreator, describeTLSFailure, loadTrustRoot
from netd.tls.contexts import ServerTLS, groupList
from netd.tls.devcerts import (
    CLIENT_COMMON_NAME,
    CLIENT_DNS_NAME,
    DevelopmentSet,
    KeyAndCertificate,
    ensureDevelopmentSet,
    issue,
    makeCA,
    writeBadCertificates,
)
from netd.tls.failures import FAILURE_REASONS, classifyFailure
from netd.tls.keys import TLSSetupError
from netd.tls.options import PROFILES, SNICertificate, TLSOptions, TLSVersion
from netd.tls.protocol import TLSServerFactory
from netd_plugins.echo import EchoHandler

from .tlsprivates import forbidPrivatesOutsidePump

LOG = Logger(namespace="test_tls")


@dataclass
class Certs:
    """
    Every certificate the tests use, in one folder.

    @ivar dev: the development set (CA, localhost server, client).
    @ivar other: a development set of another CA, nobody trusts.
    """

    root: Path
    dev: DevelopmentSet
    other: DevelopmentSet

    def bad(self, name: str) -> tuple[str, str]:
        """
        The certificate and key of a bad certificate.
        """
        return str(self.root / "dev" / "bad" / f"{name}.pem"), str(self.root / "dev" / "bad" / f"{name}-key.pem")

    def extra(self, name: str) -> tuple[str, str]:
        """
        A certificate signed by the development CA for more names.
        """
        return str(self.root / f"{name}.pem"), str(self.root / f"{name}-key.pem")


def _loadCA(dev: DevelopmentSet) -> KeyAndCertificate:
    certificate = x509.load_pem_x509_certificate(Path(dev.ca).read_bytes())
    key = serialization.load_pem_private_key(Path(dev.caKey).read_bytes(), password=None)
    return KeyAndCertificate(certificate, key)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def bothRecordPaths(tlsRecordPath: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    Every test of this module runs on the record pump and on the public
    path; on the public path, a private name of Twisted's TLS or of
    pyOpenSSL that netd's code touches outside the pump raises.
    """
    if tlsRecordPath == "twisted":
        forbidPrivatesOutsidePump(monkeypatch)
    return tlsRecordPath


@pytest.fixture(autouse=True)
def debugLogging(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Debug events written, as with log_level = "debug": the tests read what
    handshakes log at debug.
    """
    monkeypatch.setattr(logs, "debugEnabled", True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """
    The development set, the bad certificates, another CA's set, and certificates for SNI and client_allow.
    """
    root = tmp_path_factory.mktemp("certs")
    dev, _ = ensureDevelopmentSet(str(root / "dev"))
    writeBadCertificates(str(root / "dev"))
    other, _ = ensureDevelopmentSet(str(root / "other"))
    ca = _loadCA(dev)
    extras = {
        "alpha": issue(ca, ["alpha.test"]),
        "wild": issue(ca, ["*.wild.test"]),
        "uri-client": issue(ca, ["spiffe://netd.test/worker"], commonName="worker", usage="client"),
        "rsa-server": issue(ca, ["localhost"], keyType="rsa"),
    }
    for name, pair in extras.items():
        pair.write(str(root / f"{name}.pem"), str(root / f"{name}-key.pem"))
    return Certs(root, dev, other)


def tlsOptions(certs: Certs, **keys: Any) -> TLSOptions:
    """
    TLS options serving the development server certificate, with C{keys} changed.
    """
    values: dict[str, Any] = {"certificate": certs.dev.server, "private_key": certs.dev.serverKey}
    values.update(keys)
    return TLSOptions(**values)


@dataclass
class Stack:
    """
    An echo service's stream stack with TLS, its clock and counters.
    """

    limiter: ConnectionLimiter
    clock: MemoryReactorClock
    counters: Counters

    def connect(self, creator: Any) -> TLSTestConnection:
        """
        Connect a TLS client and run its handshake.
        """
        connection = connectTLS(self.limiter, creator, self.clock)
        assert connection is not None
        return connection


def echoStack(options: TLSOptions, framing: str = "raw", stateDir: str | None = None) -> Stack:
    """
    The echo plugin behind the core's stack: limits, TLS with C{options}, framing.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    limiter = makeStreamStack(EchoHandler(), framing, clock=clock, counters=counters, tls=options, stateDir=stateDir)
    return Stack(limiter, clock, counters)


def tlsCounters(counters: Counters) -> dict[str, int]:
    """
    The TLS counters of a service.
    """
    return {k: v for k, v in counters.items() if k.startswith("tls_")}


def handshakeFinished(client: TLSMemoryBIOProtocol) -> bool:
    """
    Whether a TLS client finished its handshake: it has the server's Finished
    message (the last of the handshake a client receives, in every version).
    """
    handle = client.getHandle()
    return handle is not None and handle.get_peer_finished() is not None


def verifying(certs: Certs, name: str = "localhost", **keys: Any) -> Any:
    """
    A client that verifies the server against the development CA and C{name}.
    """
    return clientCreator(name, certs.dev.ca, **keys)


# Echo.


FRAMED = {
    "raw": b"hello, TLS",
    "line": b"hello\nworld\n",
    "netstring": b"5:hello,5:world,",
    "u16": b"\x00\x05hello\x00\x05world",
    "u32": b"\x00\x00\x00\x05hello",
}


@pytest.mark.parametrize("framing", sorted(FRAMED))
def test_echoThroughTLS(certs: Certs, framing: str) -> None:
    """
    A client that verifies the certificate and name gets every frame echoed through TLS, in every framing, and the handshake is counted.
    """
    stack = echoStack(tlsOptions(certs), framing)
    client = stack.connect(verifying(certs))
    assert client.handshakeDone
    client.send(FRAMED[framing])
    assert client.takeReceived() == FRAMED[framing]
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 1}


def test_largePayloadEchoed(certs: Certs) -> None:
    """
    A payload of 2 MiB, bigger than any TLS record or buffer, comes back whole and in order.
    """
    stack = echoStack(tlsOptions(certs))
    client = stack.connect(verifying(certs))
    payload = random.Random(7).randbytes(2 * 2**20)
    client.send(payload)
    assert client.takeReceived() == payload


def test_serviceStackHasTLSBetweenLimiterAndFraming(certs: Certs, tmp_path: Path) -> None:
    """
    A service with a tls table has TLS between its connection guard and its framing, on its TCP listeners only; one without has none.
    """
    registry = discoverPlugins()
    tls = {"certificate": certs.dev.server, "private_key": certs.dev.serverKey}
    services = [
        {"name": "secure", "plugin": "echo", "listen": ["tcp:0", "udp:0"], "tls": tls},
        {"name": "plain", "plugin": "echo", "listen": ["tcp:0"]},
    ]
    config = parseConfig({"services": services}, "test.toml", registry)
    secure = NetService(config.services[0], MemoryReactorClock(), 10)
    plain = NetService(config.services[1], MemoryReactorClock(), 10)
    assert secure.connections is not None and isinstance(secure.connections.wrappedFactory, TLSServerFactory)
    assert plain.connections is not None and not isinstance(plain.connections.wrappedFactory, TLSServerFactory)


def test_otherConnectionsUndisturbed(certs: Certs) -> None:
    """
    Garbage on one connection closes only that one; an established TLS connection beside it goes on echoing.
    """
    stack = echoStack(tlsOptions(certs))
    good = stack.connect(verifying(certs))
    bad = connect(stack.limiter)
    assert bad is not None
    bad.receive(b"\x16\x03\x01\x00\x05garbage" * 10)
    assert bad.transport.disconnecting
    good.send(b"still here")
    assert good.takeReceived() == b"still here"


# Handshake failures.


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http"),
        pytest.param(b"hello, plain text\n", id="plain-text"),
        pytest.param(bytes(range(256)) * 4, id="garbage"),
    ],
)
def test_notTLSClosedAndCounted(certs: Certs, data: bytes) -> None:
    """
    Plain text, HTTP or garbage sent to a TLS port closes that connection, counted as not_tls and logged at info with the reason, and the plugin never sees it.
    """
    stack = echoStack(tlsOptions(certs))
    connection = connect(stack.limiter)
    assert connection is not None
    with capturedLogs() as events:
        connection.receive(data)
        assert connection.transport.disconnecting
        connection.finishClose()
    assert tlsCounters(stack.counters) == {"tls_handshakes_failed_not_tls": 1}
    (event,) = [e for e in events if e.get("tls_failure")]
    assert event["log_level"] == LogLevel.info
    assert event["tls_failure"] == "not_tls"
    assert data not in connection.takeSent()
    connection.receive(b"more bytes after the close")


def test_abortMidHandshakeCounted(certs: Certs) -> None:
    """
    A client that sends its ClientHello and goes away is counted as aborted, without a traceback.
    """
    stack = echoStack(tlsOptions(certs))
    hello = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    hello.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        hello.do_handshake()
    connection = connect(stack.limiter)
    assert connection is not None
    connection.receive(hello.bio_read(65536))
    assert connection.takeSent()
    with capturedLogs() as events:
        connection.peerClosed()
    assert tlsCounters(stack.counters) == {"tls_handshakes_failed_aborted": 1}
    assert not [e for e in events if e.get("log_failure")]


def test_handshakeTimeout(certs: Certs) -> None:
    """
    A connection that has not finished its handshake after handshake_timeout seconds is dropped and counted as timeout; one that finished is not.
    """
    stack = echoStack(tlsOptions(certs, handshake_timeout=5))
    silent = connect(stack.limiter)
    assert silent is not None
    done = stack.connect(verifying(certs))
    stack.clock.advance(4.9)
    assert not silent.transport.disconnecting
    stack.clock.advance(0.1)
    assert silent.transport.disconnecting
    silent.finishClose()
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 1, "tls_handshakes_failed_timeout": 1}
    stack.clock.advance(100)
    done.send(b"late")
    assert done.takeReceived() == b"late"
    assert stack.clock.getDelayedCalls() == []


def test_handshakeTimeoutZeroNeverFires(certs: Certs) -> None:
    """
    handshake_timeout = 0 schedules no timer.
    """
    stack = echoStack(tlsOptions(certs, handshake_timeout=0))
    silent = connect(stack.limiter)
    assert silent is not None
    assert stack.clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("server", "client", "expected"),
    [
        pytest.param({}, {"maxVersion": "1.1"}, None, id="1.1-only-client-refused"),
        pytest.param({}, {"maxVersion": "1.0"}, None, id="1.0-only-client-refused"),
        pytest.param({}, {"minVersion": "1.2", "maxVersion": "1.2"}, "TLSv1.2", id="1.2"),
        pytest.param({}, {}, "TLSv1.3", id="newest-by-default"),
        pytest.param({"max_version": TLSVersion("1.2")}, {"minVersion": "1.3"}, None, id="max-1.2-refuses-1.3-only"),
        pytest.param({"min_version": TLSVersion("1.3")}, {"maxVersion": "1.2"}, None, id="min-1.3-refuses-1.2"),
        pytest.param({"profile": "old"}, {"maxVersion": "1.0"}, "TLSv1", id="old-serves-1.0"),
        pytest.param(
            {"profile": "old", "min_version": TLSVersion("1.1")},
            {"maxVersion": "1.0"},
            None,
            id="old-min-1.1-refuses-1.0",
        ),
        pytest.param(
            {"profile": "old", "min_version": TLSVersion("1.1")},
            {"maxVersion": "1.1"},
            "TLSv1.1",
            id="old-min-1.1-serves-1.1",
        ),
        pytest.param(
            {"min_version": TLSVersion("1.0"), "ciphers": "ECDHE+AES"},
            {"maxVersion": "1.0"},
            "TLSv1",
            id="ciphers-min-1.0-serves-1.0",
        ),
        pytest.param({"profile": "modern"}, {"maxVersion": "1.2"}, None, id="modern-refuses-1.2"),
        pytest.param({"profile": "modern"}, {}, "TLSv1.3", id="modern-serves-1.3"),
        pytest.param(
            {"profile": "modern", "min_version": TLSVersion("1.2"), "ciphers": "ECDHE+AESGCM"},
            {"maxVersion": "1.2"},
            "TLSv1.2",
            id="modern-with-ciphers-serves-1.2",
        ),
    ],
)
def test_versions(certs: Certs, server: dict[str, Any], client: dict[str, str], expected: str | None) -> None:
    """
    Only versions between min_version and max_version are served; a client offering only others is refused and counted as version.
    """
    stack = echoStack(tlsOptions(certs, **server))
    connection = stack.connect(TestClientTLS(**client))
    if expected is None:
        assert not connection.handshakeDone
        assert tlsCounters(stack.counters) == {"tls_handshakes_failed_version": 1}
    else:
        assert connection.handshakeDone
        assert connection.version == expected


def test_noSharedCipher(certs: Certs) -> None:
    """
    A TLS 1.2 client whose cipher suites the service does not accept is refused and counted as no_shared_cipher.
    """
    stack = echoStack(tlsOptions(certs, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", max_version=TLSVersion("1.2")))
    connection = stack.connect(TestClientTLS(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", maxVersion="1.2"))
    assert not connection.handshakeDone
    assert tlsCounters(stack.counters) == {"tls_handshakes_failed_no_shared_cipher": 1}


def contextSuites(options: TLSOptions) -> set[str]:
    """
    The suites a service's context offers (TLS 1.3 and 1.2), by OpenSSL name.
    """
    tls = ServerTLS(options, serviceName="suites", log=LOG)
    return set(SSL.Connection(tls.defaultContext).get_cipher_list())


TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

MOZILLA_INTERMEDIATE = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
]
"""
Mozilla's intermediate TLS 1.2 suites (guidelines 5.7) without the DHE ones.
"""


def test_defaultSuitesAreIntermediate(certs: Certs) -> None:
    """
    By default a context offers exactly Mozilla's intermediate suites: the three TLS 1.3 suites and ECDHE with AES-GCM or ChaCha20-Poly1305 for TLS 1.2, so no static RSA, CBC or SHA-1 suite.
    """
    assert contextSuites(tlsOptions(certs)) == TLS13_SUITES | set(MOZILLA_INTERMEDIATE)


def test_ciphersReplaceTheProfilesList(certs: Certs) -> None:
    """
    ciphers replaces the profile's TLS 1.2 suites and leaves the TLS 1.3 ones.
    """
    assert contextSuites(tlsOptions(certs, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")) == TLS13_SUITES | {
        "ECDHE-ECDSA-AES256-GCM-SHA384"
    }


def test_oldProfileSuites(certs: Certs) -> None:
    """
    profile = "old" offers Mozilla's old list (without DHE), static RSA and CBC included, and nothing outside it.
    """
    suites = contextSuites(tlsOptions(certs, profile="old")) - TLS13_SUITES
    old = set((PROFILES["old"].ciphers or "").split(":"))
    assert {"AES128-SHA", "ECDHE-ECDSA-AES128-SHA", *MOZILLA_INTERMEDIATE} <= suites <= old


def test_profilesAreMozillas() -> None:
    """
    The profiles are Mozilla's (guidelines 5.7): intermediate's TLS 1.2 list in Mozilla's order without the DHE suites (netd sets no DH parameters, so OpenSSL could never pick them), modern TLS 1.3 only, old from TLS 1.0 with intermediate's suites first.
    """
    assert (PROFILES["intermediate"].ciphers or "").split(":") == MOZILLA_INTERMEDIATE
    assert PROFILES["intermediate"].minVersion == TLSVersion("1.2") and not PROFILES["intermediate"].serverPreference
    assert PROFILES["modern"].ciphers is None and PROFILES["modern"].minVersion == TLSVersion("1.3")
    old = (PROFILES["old"].ciphers or "").split(":")
    assert old[:6] == MOZILLA_INTERMEDIATE and not [n for n in old if n.startswith("DHE-")]
    assert PROFILES["old"].minVersion == TLSVersion("1.0") and PROFILES["old"].serverPreference


_SET_CLIENT_GROUPS = pump._SET_GROUPS


@attrs.define
class GroupsClient(TestClientTLS):
    """
    A test client offering only the key-exchange groups C{groups}.
    """

    groups: str = "X25519"

    def _makeContext(self) -> SSL.Context:
        context = super()._makeContext()
        # OpenSSL's call as the pump binds it, even where a test takes it from netd.
        assert _SET_CLIENT_GROUPS(context._context, self.groups.encode("ascii")) == 1
        return context


@pytest.mark.parametrize(
    ("groups", "accepted"),
    [
        ("X25519", True),
        ("P-256", True),
        ("P-384", True),
        ("X25519MLKEM768", True),
        ("X448", False),
        ("P-521", False),
        ("ffdhe2048", False),
    ],
)
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_groups(certs: Certs, groups: str, accepted: bool, version: str) -> None:
    """
    Key exchange uses X25519MLKEM768 (TLS 1.3, when OpenSSL knows it), X25519, P-256 or P-384; a client offering only X448, P-521 or a finite-field group is refused (an RSA certificate: with an ECDSA one, TLS 1.2 also needs the certificate's curve among the client's groups).
    """
    if groups == "X25519MLKEM768":
        # A TLS 1.3 group, offered when the OpenSSL netd runs on knows it.
        accepted = version == "1.3" and groups in (groupList() or "")
    certificate, key = certs.extra("rsa-server")
    stack = echoStack(tlsOptions(certs, certificate=certificate, private_key=key))
    connection = stack.connect(GroupsClient(groups=groups, minVersion=version, maxVersion=version))
    assert connection.handshakeDone is accepted
    if not accepted:
        assert tlsCounters(stack.counters) == {"tls_handshakes_failed_no_shared_cipher": 1}


@pytest.mark.parametrize(
    ("groups", "offered", "accepted"),
    [
        (("X25519",), "X25519", True),
        (("X25519",), "X25519MLKEM768:P-256", False),
        (("P-256", "X25519"), "X25519", True),
        (("X25519", "P-256"), "P-384:P-256", True),
        (("X25519", "P-256"), "P-384", False),
    ],
)
def test_groupsChosen(certs: Certs, groups: tuple[str, ...], offered: str, accepted: bool) -> None:
    """
    tls.groups replaces the groups accepted (a client offering none of them is refused, counted as no_shared_cipher).
    """
    stack = echoStack(tlsOptions(certs, groups=groups))
    connection = stack.connect(GroupsClient(groups=offered))
    assert connection.handshakeDone is accepted
    if not accepted:
        assert tlsCounters(stack.counters) == {"tls_handshakes_failed_no_shared_cipher": 1}


def test_groupsUnknownToOpenSSL(certs: Certs) -> None:
    """
    A group this OpenSSL does not know stops the service, naming the key, the group and netd's default.
    """
    message = setupError(tlsOptions(certs, groups=("X25519", "Curve9999")))
    assert message.startswith("tls.groups: OpenSSL ") and "does not know 'Curve9999';" in message
    assert message.endswith(f"netd's default here is {groupList()}")


def test_groupsNeedTheBinding(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without pyOpenSSL's binding for setting groups, tls.groups stops the service (the default falls back, below).
    """
    monkeypatch.setattr(pump, "_SET_GROUPS", None)
    groupList.cache_clear()
    try:
        assert "cannot set key-exchange groups; remove groups" in setupError(tlsOptions(certs, groups=("X25519",)))
    finally:
        groupList.cache_clear()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("[]", "names no group; leave groups unset for netd's"),
        ('["X25519", "x25519"]', "[1] 'x25519' is named twice"),
        ('["X25519:P-256"]', "[0] 'X25519:P-256' is not a group name"),
        ('[""]', "[0] '' is not a group name"),
    ],
)
def test_groupsConfigChecked(value: str, problem: str) -> None:
    """
    tls.groups must name groups, each once, one per entry: a config error otherwise.
    """
    table = tomllib.loads(
        f'[[services]]\nname = "t"\nplugin = "tls-echo"\nlisten = ["tcp:0"]\ntls = {{ certificate = "auto", groups = {value} }}\n'
    )
    with pytest.raises(ConfigError) as info:
        parseConfig(table, "netd.toml", discoverPlugins())
    [(where, message)] = [(renderPath(p.path), p.message) for p in info.value.problems]
    assert where == "services[0].tls.groups" and message.startswith(problem)


def test_groupsFallBack(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without pyOpenSSL's binding for setting groups, a context keeps OpenSSL's default groups (still serving) and a warning says so.
    """
    monkeypatch.setattr(pump, "_SET_GROUPS", None)
    groupList.cache_clear()
    try:
        with capturedLogs() as events:
            stack = echoStack(tlsOptions(certs))
        assert stack.connect(GroupsClient(groups="X448")).handshakeDone
    finally:
        groupList.cache_clear()
    assert [e for e in events if e["log_level"] == LogLevel.warn and "key-exchange groups" in e["log_format"]]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            {"profile": "modern", "min_version": TLSVersion("1.2")},
            ("min_version", 'profile "modern" has no suites for TLS 1.2'),
        ),
        (
            {"min_version": TLSVersion("1.0")},
            ("min_version", 'profile "intermediate" has no suites for TLS 1.0, only for 1.2; set profile = "old"'),
        ),
        (
            {"profile": "modern", "max_version": TLSVersion("1.2")},
            ("max_version", 'profile "modern"\'s oldest version (1.3)'),
        ),
    ],
)
def test_profileCrossChecks(keys: dict[str, Any], problem: tuple[str, str]) -> None:
    """
    A version the profile has no suites for, without ciphers, is a config error naming the key; so is a max_version older than the profile's oldest.
    """
    problems = TLSOptions(certificate="auto", **keys).crossCheck()
    assert [key for key, _ in problems] == [problem[0]]
    assert problem[1] in problems[0][1]


def test_profileCrossChecksAllow() -> None:
    """
    A version below the profile's is fine with ciphers of one's own, or with profile = "old".
    """
    assert (
        TLSOptions(
            certificate="auto", profile="modern", min_version=TLSVersion("1.2"), ciphers="ECDHE+AESGCM"
        ).crossCheck()
        == []
    )
    assert TLSOptions(certificate="auto", profile="old", min_version=TLSVersion("1.1")).crossCheck() == []
    assert TLSOptions(certificate="auto", min_version=TLSVersion("1.0"), ciphers="ECDHE+AES").crossCheck() == []


# ALPN.


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        pytest.param(("h2", "echo"), "echo", id="common-protocol"),
        pytest.param(("other", "echo"), "echo", id="server-preference"),
        pytest.param((), None, id="no-alpn-from-client"),
    ],
)
def test_alpnSelected(certs: Certs, offered: tuple[str, ...], expected: str | None) -> None:
    """
    The service picks its most preferred ALPN protocol among those the client offers; a client offering none gets none.
    """
    stack = echoStack(tlsOptions(certs, alpn=("echo", "other")))
    connection = stack.connect(TestClientTLS(alpn=offered))
    assert connection.handshakeDone
    assert connection.negotiatedProtocol == expected


def test_alpnMismatchRefused(certs: Certs) -> None:
    """
    A client offering only protocols the service does not speak is refused (RFC 7301), counted as alpn_mismatch.
    """
    stack = echoStack(tlsOptions(certs, alpn=("echo",)))
    connection = stack.connect(TestClientTLS(alpn=("h2", "http/1.1")))
    assert not connection.handshakeDone
    assert tlsCounters(stack.counters) == {"tls_handshakes_failed_alpn_mismatch": 1}


def test_alpnWithVerifyingClient(certs: Certs) -> None:
    """
    clientCreator offers ALPN protocols, and the verified connection agrees on one.
    """
    stack = echoStack(tlsOptions(certs, alpn=("dot",)))
    connection = stack.connect(verifying(certs, alpn=["dot"]))
    assert connection.negotiatedProtocol == "dot"


# SNI.


def sniOptions(certs: Certs) -> TLSOptions:
    """
    The localhost certificate by default, alpha.test's and *.wild.test's by SNI.
    """
    alpha, alphaKey = certs.extra("alpha")
    wild, wildKey = certs.extra("wild")
    return tlsOptions(
        certs,
        sni={
            "alpha.test": SNICertificate(certificate=alpha, private_key=alphaKey),
            "*.wild.test": SNICertificate(certificate=wild, private_key=wildKey),
        },
    )


def dnsNames(certificate: x509.Certificate | None) -> list[str]:
    """
    The DNS names of a certificate's SAN.
    """
    assert certificate is not None
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


@pytest.mark.parametrize(
    ("serverName", "expected"),
    [
        pytest.param("alpha.test", ["alpha.test"], id="exact"),
        pytest.param("ALPHA.test", ["alpha.test"], id="any-case"),
        pytest.param("x.wild.test", ["*.wild.test"], id="wildcard"),
        pytest.param("a.b.wild.test", ["localhost"], id="wildcard-one-label-only"),
        pytest.param("unknown.test", ["localhost"], id="unknown-name-gets-default"),
        pytest.param(None, ["localhost"], id="no-sni-gets-default"),
    ],
)
def test_sniPicksCertificate(certs: Certs, serverName: str | None, expected: list[str]) -> None:
    """
    The certificate served is the sni entry for the name the client asks for (exact, else wildcard), else the default one.
    """
    stack = echoStack(sniOptions(certs))
    connection = stack.connect(TestClientTLS(serverName=serverName))
    assert connection.handshakeDone
    assert dnsNames(connection.serverCertificate) == expected
    connection.send(b"ping")
    assert connection.takeReceived() == b"ping"


def test_sniCertificateVerifies(certs: Certs) -> None:
    """
    A verifying client asking for alpha.test accepts the certificate SNI picked for it.
    """
    stack = echoStack(sniOptions(certs))
    connection = stack.connect(verifying(certs, "alpha.test"))
    assert connection.handshakeDone


# Client certificates.


def mutualOptions(certs: Certs, auth: str, **keys: Any) -> TLSOptions:
    """
    TLS options asking for client certificates from the development CA.
    """
    return tlsOptions(certs, client_ca=certs.dev.ca, client_auth=auth, **keys)


def clientWith(certs: Certs, which: str) -> TestClientTLS:
    """
    A client with no certificate, the development CA's client certificate, or another CA's.
    """
    if which == "none":
        return TestClientTLS()
    files = certs.dev if which == "trusted" else certs.other
    return TestClientTLS(certificate=files.client, privateKey=files.clientKey)


@pytest.mark.parametrize(
    ("auth", "which", "outcome"),
    [
        pytest.param("required", "trusted", "ok", id="required-trusted"),
        pytest.param("required", "none", "client_cert_missing", id="required-missing"),
        pytest.param("required", "untrusted", "client_cert_untrusted", id="required-untrusted"),
        pytest.param("optional", "trusted", "ok", id="optional-trusted"),
        pytest.param("optional", "none", "ok", id="optional-missing"),
        pytest.param("optional", "untrusted", "client_cert_untrusted", id="optional-untrusted"),
    ],
)
def test_clientAuth(certs: Certs, auth: str, which: str, outcome: str) -> None:
    """
    client_auth "required" refuses a client without a certificate from client_ca; "optional" accepts one without but not one with an untrusted certificate.
    """
    stack = echoStack(mutualOptions(certs, auth))
    with capturedLogs() as events:
        connection = stack.connect(clientWith(certs, which))
    if outcome == "ok":
        assert connection.handshakeDone
        connection.send(b"mutual")
        assert connection.takeReceived() == b"mutual"
        assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 1}
        (event,) = [e for e in events if e.get("tls_version")]
        assert event["tls_client"] == (f"CN={CLIENT_COMMON_NAME}" if which == "trusted" else None)
    else:
        assert not connection.handshakeDone
        assert tlsCounters(stack.counters) == {f"tls_handshakes_failed_{outcome}": 1}


def test_clientAuthNoneIgnoresCertificates(certs: Certs) -> None:
    """
    With client_auth "none" no certificate is asked for, so a client's certificate is not seen even if it has one.
    """
    stack = echoStack(tlsOptions(certs))
    with capturedLogs() as events:
        connection = stack.connect(clientWith(certs, "untrusted"))
    assert connection.handshakeDone
    (event,) = [e for e in events if e.get("tls_version")]
    assert event["tls_client"] is None


def test_untrustedClientLogsWhy(certs: Certs) -> None:
    """
    A refused client certificate is logged with OpenSSL's verify error.
    """
    stack = echoStack(mutualOptions(certs, "required"))
    with capturedLogs() as events:
        stack.connect(clientWith(certs, "untrusted"))
    (event,) = [e for e in events if e.get("tls_failure")]
    assert event["tls_failure"] == "client_cert_untrusted"
    assert "unable to get local issuer certificate" in event["detail"]


def clientCertificate(
    ca: KeyAndCertificate, commonName: str, names: list[x509.GeneralName] | None
) -> KeyAndCertificate:
    """
    A client certificate signed by C{ca} with subject CN C{commonName} and
    the subject alternative names C{names} (none at all when L{None}), made
    here with cryptography so that the test controls every name.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return KeyAndCertificate(builder.sign(ca.key, hashes.SHA256()), key)


CLIENTS = {
    "cn-only": ("legacy worker", None),
    "cn-dns-shaped": ("legacy.netd.test", None),
    "cn-and-dns": ("worker.netd.test", [x509.DNSName("other.netd.test")]),
    "cn-and-uri": ("worker", [x509.UniformResourceIdentifier("spiffe://netd.test/worker")]),
    "cn-and-ip": ("ip worker", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
}
"""
Client certificates for client_allow, by name: subject CN and SANs.
"""


@pytest.mark.parametrize(
    ("allow", "client", "allowed"),
    [
        pytest.param(("dns:" + CLIENT_DNS_NAME.upper(),), "dev", True, id="dns-any-case"),
        pytest.param(("dns:" + CLIENT_DNS_NAME + ".",), "dev", True, id="dns-trailing-dot"),
        pytest.param(("uri:spiffe://netd.test/worker",), "uri-client", True, id="uri"),
        pytest.param(("cn:legacy worker",), "cn-only", True, id="cn-without-sans"),
        pytest.param(("cn:ip worker",), "cn-and-ip", True, id="cn-beside-an-ip-san"),
        pytest.param(("cn:" + CLIENT_COMMON_NAME,), "dev", False, id="cn-ignored-beside-dns-san"),
        pytest.param(("cn:worker.netd.test",), "cn-and-dns", False, id="cn-ignored-beside-another-dns-san"),
        pytest.param(("dns:worker.netd.test",), "cn-and-dns", False, id="cn-is-no-dns-name"),
        pytest.param(("cn:worker",), "cn-and-uri", False, id="cn-ignored-beside-uri-san"),
        pytest.param(("uri:SPIFFE://netd.test/WORKER",), "uri-client", False, id="uri-exact"),
        pytest.param(("dns:legacy.netd.test",), "cn-dns-shaped", False, id="cn-is-never-a-dns-name"),
        pytest.param(("cn:legacy.netd.test",), "cn-dns-shaped", True, id="cn-dns-shaped"),
        pytest.param(
            ("cn:someone else", "uri:spiffe://netd.test/other", "dns:" + CLIENT_DNS_NAME), "dev", True, id="any-entry"
        ),
        pytest.param(("uri:spiffe://netd.test/worker",), "dev", False, id="other-client"),
    ],
)
def test_clientAllow(certs: Certs, allow: tuple[str, ...], client: str, allowed: bool) -> None:
    """
    A verified client certificate must carry a name of client_allow, each entry typed: dns: a SAN DNS name (any case), uri: a SAN URI (exactly), cn: the subject CN, considered only when the certificate has no SAN DNS name or URI (RFC 6125 6.4.4); otherwise the handshake fails, counted as client_not_allowed, and the plugin sees no data.
    """
    stack = echoStack(mutualOptions(certs, "required", client_allow=allow))
    if client == "dev":
        creator = TestClientTLS(certificate=certs.dev.client, privateKey=certs.dev.clientKey)
    elif client in CLIENTS:
        path = certs.root / f"allow-{client}"
        clientCertificate(_loadCA(certs.dev), *CLIENTS[client]).write(f"{path}.pem", f"{path}-key.pem")
        creator = TestClientTLS(certificate=f"{path}.pem", privateKey=f"{path}-key.pem")
    else:
        certificate, key = certs.extra(client)
        creator = TestClientTLS(certificate=certificate, privateKey=key)
    with capturedLogs() as events:
        connection = stack.connect(creator)
    assert connection.handshakeDone == allowed
    if allowed:
        assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 1}
    else:
        assert tlsCounters(stack.counters) == {"tls_handshakes_failed_client_not_allowed": 1}
        connection.client.write(b"sneaked in")
        connection.flush()
        assert connection.takeReceived() == b""
        (event,) = [e for e in events if e.get("tls_failure")]
        assert "carries no name of client_allow" in event["detail"]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("netd client", '"netd client" has no type; did you mean "cn:netd client"?'),
        ("client.netd.test", '"client.netd.test" has no type; did you mean "dns:client.netd.test"?'),
        (
            "spiffe://netd.test/worker",
            '"spiffe://netd.test/worker" has no type; did you mean "uri:spiffe://netd.test/worker"?',
        ),
        ("email:a@example.com", '"email:a@example.com" has an unknown type "email"; known: dns:, uri:, cn:'),
        ("dns:", '"dns:" names nothing after "dns:"'),
        ("dns:bad name", '"dns:bad name" is not a DNS name'),
        ("dns:*.netd.test", '"dns:*.netd.test": client names are matched exactly, without wildcards'),
        ("spiffe:x", '"spiffe:x" has an unknown type "spiffe"; known: dns:, uri:, cn:'),
        ("uri:no-scheme", '"uri:no-scheme" is not a URI (SCHEME:...)'),
    ],
)
def test_clientAllowEntriesAreTyped(entry: str, problem: str) -> None:
    """
    An untyped client_allow entry is a config error suggesting the type its shape suggests (so an entry once meant as a CN is never silently read as a DNS name), as are unknown types and malformed names.
    """
    table = tomllib.loads(
        '[[services]]\nname = "t"\nplugin = "tls-echo"\nlisten = ["tcp:0"]\n'
        f'tls = {{ certificate = "auto", client_ca = "ca.pem", client_auth = "required", client_allow = ["cn:ok", {json.dumps(entry)}] }}\n'
    )
    with pytest.raises(ConfigError) as info:
        parseConfig(table, "netd.toml", discoverPlugins())
    assert [(renderPath(p.path), p.message) for p in info.value.problems] == [
        ("services[0].tls.client_allow", f"[1] {problem}")
    ]


def test_verifyingClientPresentsCertificate(certs: Certs) -> None:
    """
    clientCreator with a client certificate passes mutual TLS.
    """
    stack = echoStack(mutualOptions(certs, "required"))
    connection = stack.connect(verifying(certs, certificate=certs.dev.client, privateKey=certs.dev.clientKey))
    assert connection.handshakeDone


# Session resumption.


RESUMPTION_KINDS = [
    pytest.param("1.3", True, id="tls1.3-tickets"),
    pytest.param("1.2", True, id="tls1.2-tickets"),
    pytest.param("1.2", False, id="tls1.2-session-ids"),
]
"""
The ways a session resumes: TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs.
"""


@pytest.mark.parametrize(("version", "tickets"), RESUMPTION_KINDS)
def test_sessionResumption(certs: Certs, version: str, tickets: bool) -> None:
    """
    A second connection offering the first one's session resumes it (tickets or session IDs), counted as tls_sessions_resumed.
    """
    stack = echoStack(tlsOptions(certs))
    client = TestClientTLS(maxVersion=version, tickets=tickets)
    first = stack.connect(client)
    first.send(b"one")
    client.session = first.session
    first.close()
    second = stack.connect(client)
    second.send(b"two")
    assert second.takeReceived() == b"two"
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 2, "tls_sessions_resumed": 1}


def test_sessionResumptionOff(certs: Certs) -> None:
    """
    With session_resumption = false a client's earlier session is not resumed.
    """
    stack = echoStack(tlsOptions(certs, session_resumption=False))
    client = TestClientTLS(maxVersion="1.2")
    first = stack.connect(client)
    first.send(b"one")
    client.session = first.session
    first.close()
    stack.connect(client)
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 2}


@pytest.mark.parametrize(("version", "tickets"), RESUMPTION_KINDS)
def test_sessionKeysRotateOnATimer(certs: Certs, version: str, tickets: bool) -> None:
    """
    Once a service listens, its session-ticket keys (and session cache) are replaced every session_ticket_rotation seconds of its clock: a session resumes until the rotation, not after; a connection open across the rotation keeps working.
    """
    stack = echoStack(tlsOptions(certs, session_ticket_rotation=600))
    stack.limiter.doStart()
    client = TestClientTLS(maxVersion=version, tickets=tickets)
    first = stack.connect(client)
    first.send(b"one")
    assert first.takeReceived() == b"one"
    client.session = first.session
    stack.clock.advance(599)
    assert stack.connect(client).handshakeDone
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 2, "tls_sessions_resumed": 1}
    with capturedLogs() as events:
        stack.clock.advance(1)
    assert [e for e in events if "session-ticket keys" in e["log_format"]]
    first.send(b"still")
    assert first.takeReceived() == b"still"
    assert stack.connect(client).handshakeDone
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 3, "tls_sessions_resumed": 1}
    stack.limiter.doStop()
    assert stack.clock.getDelayedCalls() == []


def test_sessionKeysRotateEveryPeriod(certs: Certs) -> None:
    """
    Rotation repeats each period: a session from after the first rotation resumes until the second.
    """
    stack = echoStack(tlsOptions(certs, session_ticket_rotation=600))
    stack.limiter.doStart()
    stack.clock.advance(600)
    client = TestClientTLS()
    first = stack.connect(client)
    client.session = first.session
    # Closed cleanly: OpenSSL no longer resumes the session of a connection
    # freed without its close_notify (whenever the garbage collector frees it).
    first.close()
    stack.clock.advance(300)
    stack.connect(client).close()
    stack.clock.advance(300)
    stack.connect(client).close()
    assert tlsCounters(stack.counters) == {"tls_handshakes_ok": 3, "tls_sessions_resumed": 1}
    stack.limiter.doStop()


def test_sessionKeysRotationDefaults() -> None:
    """
    Keys rotate hourly by default, which is also how long a session can be resumed; 0 turns the timer off, and more than a week is refused.
    """
    assert TLSOptions(certificate="auto").session_ticket_rotation == 3600
    table = tomllib.loads(
        '[[services]]\nname = "t"\nplugin = "tls-echo"\nlisten = ["tcp:0"]\n'
        'tls = { certificate = "auto", session_ticket_rotation = 604801 }\n'
    )
    with pytest.raises(ConfigError) as info:
        parseConfig(table, "netd.toml", discoverPlugins())
    assert [renderPath(p.path) for p in info.value.problems] == ["services[0].tls.session_ticket_rotation"]


@pytest.mark.parametrize(
    "keys", [{"session_ticket_rotation": 0}, {"session_resumption": False}], ids=["zero", "no-resumption"]
)
def test_sessionKeysNoTimer(certs: Certs, keys: dict[str, Any]) -> None:
    """
    With session_ticket_rotation = 0, or without session resumption, no timer runs.
    """
    stack = echoStack(tlsOptions(certs, **keys))
    stack.limiter.doStart()
    assert stack.clock.getDelayedCalls() == []
    stack.limiter.doStop()


def test_sessionKeysRotationKeepsReloadedCertificate(certs: Certs) -> None:
    """
    A rotation after a reload serves the certificate the reload adopted, not the one the service started with.
    """
    stack = echoStack(tlsOptions(certs, session_ticket_rotation=60))
    stack.limiter.doStart()
    factory = stack.limiter.wrappedFactory
    assert isinstance(factory, TLSServerFactory)
    certificate, key = certs.extra("alpha")
    fresh = ServerTLS(tlsOptions(certs, certificate=certificate, private_key=key), serviceName="test", log=LOG)
    factory.tls.adopt(fresh)
    stack.clock.advance(60)
    connection = stack.connect(TestClientTLS(serverName="alpha.test"))
    assert connection.handshakeDone
    peer = connection.client.getHandle().get_peer_certificate(as_cryptography=True)
    assert peer.subject.rfc4514_string() == "CN=alpha.test"
    stack.limiter.doStop()


# Private key files.


@pytest.mark.parametrize(
    ("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True), (0o604, True), (0o644, True)]
)
def test_privateKeyModeWarned(certs: Certs, tmp_path: Path, mode: int, warned: bool) -> None:
    """
    A private key file that its group or everyone may read is warned about once when it is loaded, naming the file and its mode; an owner-only one is not.
    """
    key = tmp_path / "server-key.pem"
    key.write_bytes(Path(certs.dev.serverKey).read_bytes())
    key.chmod(mode)
    with capturedLogs() as events:
        ServerTLS(tlsOptions(certs, private_key=str(key)), serviceName="test", log=LOG)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn and e.get("path") == str(key)]
    if warned:
        (warning,) = warnings
        assert warning["where"] == "tls.private_key" and warning["mode"] == f"{mode:04o}"
        assert "readable by its group or by everyone" in warning["log_format"]
    else:
        assert warnings == []


def test_sniPrivateKeyModeWarned(certs: Certs, tmp_path: Path) -> None:
    """
    The keys of sni certificates are checked too, each warning naming its key.
    """
    certificate, original = certs.extra("alpha")
    key = tmp_path / "alpha-key.pem"
    key.write_bytes(Path(original).read_bytes())
    key.chmod(0o644)
    sni = {"alpha.test": SNICertificate(certificate=certificate, private_key=str(key))}
    with capturedLogs() as events:
        ServerTLS(tlsOptions(certs, sni=sni), serviceName="test", log=LOG)
    (warning,) = [e for e in events if e["log_level"] == LogLevel.warn and e.get("path") == str(key)]
    assert warning["where"] == 'tls.sni."alpha.test".private_key'


# Logging.


def test_handshakeLoggedAtDebug(certs: Certs) -> None:
    """
    Each handshake is logged at debug with the version, cipher, SNI name, ALPN protocol and client certificate subject as fields.
    """
    stack = echoStack(mutualOptions(certs, "required", alpn=("echo",)))
    creator = TestClientTLS(
        serverName="localhost", certificate=certs.dev.client, privateKey=certs.dev.clientKey, alpn=("echo",)
    )
    with capturedLogs() as events:
        stack.connect(creator)
    (event,) = [e for e in events if e.get("tls_version")]
    assert event["log_level"] == LogLevel.debug
    assert event["tls_version"] == "TLSv1.3"
    assert event["tls_cipher"].startswith("TLS_")
    assert (event["tls_sni"], event["tls_alpn"], event["tls_client"]) == (
        "localhost",
        "echo",
        f"CN={CLIENT_COMMON_NAME}",
    )
    assert event["tls_resumed"] is False


def test_handshakeNotLoggedUnlessDebug(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    When debug events are not written, a handshake builds no log event at all, yet is still counted and described for the event log.
    """
    monkeypatch.setattr(logs, "debugEnabled", False)
    stack = echoStack(tlsOptions(certs))
    with capturedLogs() as events:
        connection = stack.connect(TestClientTLS())
    assert connection.handshakeDone
    assert [e for e in events if e.get("tls_version")] == []
    assert tlsCounters(stack.counters)["tls_handshakes_ok"] == 1
    protocol = connection.server.wrappedProtocol
    assert protocol.tlsDetails is not None and protocol.tlsDetails["version"] == "TLSv1.3"


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([("SSL routines", "", "wrong version number")], "not_tls"),
        ([("SSL routines", "", "http request")], "not_tls"),
        ([("SSL routines", "", "unsupported protocol")], "version"),
        ([("SSL routines", "", "no shared cipher")], "no_shared_cipher"),
        ([("SSL routines", "", "peer did not return a certificate")], "client_cert_missing"),
        ([("SSL routines", "", "certificate verify failed")], "client_cert_untrusted"),
        ([("SSL routines", "", "tlsv1 alert unknown ca")], "certificate_rejected"),
        ([("SSL routines", "", "sslv3 alert bad certificate")], "certificate_rejected"),
        ([], "aborted"),
        ([("SSL routines", "", "something new")], "protocol_error"),
    ],
)
def test_failureClassified(errors: list[tuple[str, str, str]], expected: str) -> None:
    """
    OpenSSL's handshake errors map to the documented failure reasons.
    """
    name, _ = classifyFailure(Failure(SSL.Error(errors)))
    assert name == expected
    assert name in FAILURE_REASONS


def test_clientRefusingOurCertificateCounted(certs: Certs) -> None:
    """
    A client that refuses the server's certificate (here: the unknown-ca one) is counted as certificate_rejected, as the bad certificates must be.
    """
    certificate, key = certs.bad("unknown-ca")
    stack = echoStack(tlsOptions(certs, certificate=certificate, private_key=key))
    connection = stack.connect(verifying(certs))
    assert not connection.handshakeDone
    assert tlsCounters(stack.counters) == {"tls_handshakes_failed_certificate_rejected": 1}


# Flow control.


class SocketLikeTransport(StringTransport):
    """
    A transport that, like a TCP socket's, pauses its producer once more than
    C{bufferSize} bytes wait to be written, and resumes it when drained.
    """

    bufferSize = 65536

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and len(self.io.getvalue()) > self.bufferSize:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """
        The peer read everything that was waiting.
        """
        data = self.value()
        self.clear()
        if self.producer is not None and self.streaming:
            self.producer.resumeProducing()
        return data


class Collector(Protocol):
    """
    The client's application side: keeps what arrives.
    """

    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_flowControlHoldsThroughTLS(certs: Certs) -> None:
    """
    A TLS client that sends 4 MiB without reading stops being read once netd's send buffer is full, so netd holds a bounded amount; once it reads, every byte comes back in order.
    """
    clock = Clock()
    stack = makeStreamStack(EchoHandler(), "raw", clock=clock, tls=tlsOptions(certs))
    server = stack.buildProtocol(None)
    assert server is not None
    serverTransport = SocketLikeTransport()
    server.makeConnection(serverTransport)
    # TLS registers no producer of its own: the socket still paces itself.
    assert serverTransport.producer is serverTransport
    collector = Collector()
    clientFactory = TLSMemoryBIOFactory(TestClientTLS(), True, Factory.forProtocol(lambda: collector), clock=clock)
    client = clientFactory.buildProtocol(None)
    assert isinstance(client, TLSMemoryBIOProtocol)
    clientTransport = StringTransport()
    client.makeConnection(clientTransport)

    def toServer(limit: int) -> int:
        data = clientTransport.value()[:limit]
        if data:
            rest = clientTransport.value()[len(data) :]
            clientTransport.clear()
            clientTransport.write(rest)
            server.dataReceived(data)
        clock.advance(0)
        return len(data)

    def toClient() -> None:
        data = serverTransport.drain()
        if data:
            client.dataReceived(data)
        clock.advance(0)

    for _ in range(10):
        toServer(2**20)
        toClient()
    assert handshakeFinished(client)
    payload = random.Random(3).randbytes(4 * 2**20)
    client.write(payload)
    clock.advance(0)
    delivered = 0
    while serverTransport.producerState != "paused" and clientTransport.value():
        delivered += toServer(16384)
    assert serverTransport.producerState == "paused", "netd never stopped reading"
    assert delivered < 512 * 1024
    assert len(serverTransport.value()) < 256 * 1024
    while len(collector.received) < len(payload):
        toClient()
        if serverTransport.producerState != "paused":
            toServer(65536)
    assert bytes(collector.received) == payload


class CountingTransport(StringTransport):
    """
    A transport that counts the writes made to it.
    """

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class TLSPair:
    """
    A TLS client and a L{TLSServerFactory} connection in memory, moved by
    hand so that a test sees each write and timed call.

    @ivar sent: the client's records not yet given to the server.
    """

    def __init__(self, certs: Certs, application: Factory) -> None:
        self.clock = Clock()
        factory = TLSServerFactory(
            ServerTLS(tlsOptions(certs), serviceName="test", log=LOG),
            application,
            clock=self.clock,
            counters=Counters(),
            log=LOG,
        )
        self.server = factory.buildProtocol(None)
        self.serverTransport = CountingTransport()
        self.server.makeConnection(self.serverTransport)
        self.collector = Collector()
        clientFactory = TLSMemoryBIOFactory(
            TestClientTLS(), True, Factory.forProtocol(lambda: self.collector), clock=self.clock
        )
        self.client = clientFactory.buildProtocol(None)
        self.clientTransport = StringTransport()
        self.client.makeConnection(self.clientTransport)
        for _ in range(5):
            self.toServer(self.takeSent())
            self.toClient()
        assert handshakeFinished(self.client)
        self.serverTransport.writes = 0

    def takeSent(self) -> bytes:
        """
        What the client has sent (each write of it its own records).
        """
        self.clock.advance(0)
        data = self.clientTransport.value()
        self.clientTransport.clear()
        return data

    def toServer(self, data: bytes) -> None:
        """
        Give bytes to the server, as one read.
        """
        if data:
            self.server.dataReceived(data)

    def toClient(self) -> None:
        """
        Give the client what the server has written, running the due calls first.
        """
        self.clock.advance(0)
        data = self.serverTransport.value()
        self.serverTransport.clear()
        if data:
            self.client.dataReceived(data)


class Echo(Protocol):
    """
    Writes back what it reads.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def test_replyToReadSentAtOnce(certs: Certs) -> None:
    """
    What the application writes while a read is delivered is sent before the read returns, with no timed call left behind.
    """
    pair = TLSPair(certs, Factory.forProtocol(Echo))
    pair.client.write(b"ping")
    pair.toServer(pair.takeSent())
    assert pair.serverTransport.writes == 1
    assert pair.clock.getDelayedCalls() == []
    pair.toClient()
    assert bytes(pair.collector.received) == b"ping"


def test_recordsOfOneReadAnsweredInOneWrite(certs: Certs) -> None:
    """
    Several records arriving in one read are delivered in order and their replies leave in one write.
    """
    pair = TLSPair(certs, Factory.forProtocol(Echo))
    records = b""
    for word in (b"one ", b"two ", b"three"):
        pair.client.write(word)
        records += pair.takeSent()
    pair.toServer(records)
    assert pair.serverTransport.writes == 1
    pair.toClient()
    assert bytes(pair.collector.received) == b"one two three"


def test_partialRecordWaitsForTheRest(certs: Certs) -> None:
    """
    A record split over two reads is delivered (and answered) only once its last byte arrives.
    """
    pair = TLSPair(certs, Factory.forProtocol(Echo))
    pair.client.write(b"split in two")
    record = pair.takeSent()
    pair.toServer(record[:7])
    assert pair.serverTransport.writes == 0
    pair.toServer(record[7:])
    assert pair.serverTransport.writes == 1
    pair.toClient()
    assert bytes(pair.collector.received) == b"split in two"


def test_largeReplyToReadComesWhole(certs: Certs) -> None:
    """
    A reply of many records written during a read arrives whole and in order.
    """

    class Big(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(bytearray(payload))

    payload = random.Random(5).randbytes(300_000)
    pair = TLSPair(certs, Factory.forProtocol(Big))
    pair.client.write(b"go")
    pair.toServer(pair.takeSent())
    pair.toClient()
    assert bytes(pair.collector.received) == payload


def test_replyThenCloseInReadSendsReplyFirst(certs: Certs) -> None:
    """
    An application that writes its reply and closes while reading gets the reply delivered, then a clean TLS close.
    """

    class ReplyAndClose(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"bye")
            self.transport.loseConnection()

    pair = TLSPair(certs, Factory.forProtocol(ReplyAndClose))
    pair.client.write(b"quit")
    pair.toServer(pair.takeSent())
    pair.toClient()
    assert bytes(pair.collector.received) == b"bye"
    # The client read the server's close_notify, answered it and closed.
    assert pair.clientTransport.disconnecting
    pair.toServer(pair.takeSent())
    assert pair.serverTransport.disconnecting


def test_producerFinishingInReadSendsEverything(certs: Certs) -> None:
    """
    An application with a producer that, while reading, writes, closes, writes its last bytes and unregisters gets all of them delivered before the TLS close.
    """

    class Producing(Protocol):
        def connectionMade(self) -> None:
            self.transport.registerProducer(self, True)

        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"first ")
            self.transport.loseConnection()
            self.transport.write(b"last")
            self.transport.unregisterProducer()

        def pauseProducing(self) -> None:
            pass

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    pair = TLSPair(certs, Factory.forProtocol(Producing))
    pair.client.write(b"go")
    pair.toServer(pair.takeSent())
    pair.toClient()
    assert bytes(pair.collector.received) == b"first last"
    assert pair.clientTransport.disconnecting


def test_writeOutsideReadStillSent(certs: Certs) -> None:
    """
    Writes made outside any read (from a timer) are sent together at the next reactor turn, in order, with no timed call left behind.
    """

    application = Protocol()
    pair = TLSPair(certs, Factory.forProtocol(lambda: application))
    assert application.transport is not None
    application.transport.write(b"la")
    application.transport.writeSequence([b"t", b"er"])
    assert pair.serverTransport.writes == 0
    pair.clock.advance(0)
    assert pair.serverTransport.writes == 1
    assert pair.clock.getDelayedCalls() == []
    pair.toClient()
    assert bytes(pair.collector.received) == b"later"


def test_largeWritesOutsideReadSentAtOnce(certs: Certs) -> None:
    """
    Writes outside a read are sent at once, without waiting for the next turn, once more than 64,000 bytes wait.
    """
    application = Protocol()
    pair = TLSPair(certs, Factory.forProtocol(lambda: application))
    assert application.transport is not None
    payload = random.Random(5).randbytes(40_000)
    application.transport.write(payload[:20_000])
    application.transport.write(payload[20_000:])
    assert pair.serverTransport.writes == 0
    application.transport.write(payload)
    assert pair.serverTransport.writes > 0
    pair.toClient()
    assert bytes(pair.collector.received) == payload + payload


def test_heldWritesDroppedWhenLost(certs: Certs) -> None:
    """
    A connection lost with writes waiting for the next turn drops them and leaves no timed call; later writes are dropped too.
    """
    application = Protocol()
    pair = TLSPair(certs, Factory.forProtocol(lambda: application))
    transport = application.transport
    assert transport is not None
    transport.write(b"never")
    pair.server.connectionLost(Failure(ConnectionDone()))
    assert pair.clock.getDelayedCalls() == []
    closing = pair.serverTransport.value()  # at most TLS's own alert
    pair.serverTransport.clear()
    transport.write(b"after")
    pair.clock.advance(0)
    assert pair.serverTransport.value() == b""
    pair.client.dataReceived(closing)
    assert bytes(pair.collector.received) == b""


# Startup checks.


def writeText(path: Path, text: str | bytes) -> str:
    """
    Write a file and return its path.
    """
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return str(path)


def setupError(options: TLSOptions, stateDir: str | None = None) -> str:
    """
    The message of the TLSSetupError that loading C{options} raises.
    """
    with pytest.raises(TLSSetupError) as info:
        ServerTLS(options, serviceName="svc", log=LOG, stateDir=stateDir)
    return str(info.value)


def test_missingCertificateFile(certs: Certs, tmp_path: Path) -> None:
    """
    A certificate file that does not exist is refused, naming the key, the file and why.
    """
    missing = str(tmp_path / "missing.pem")
    assert setupError(tlsOptions(certs, certificate=missing)) == (
        f"cannot read tls.certificate {missing!r}: No such file or directory"
    )


def test_missingKeyFile(certs: Certs, tmp_path: Path) -> None:
    """
    A private key file that does not exist is refused, naming the key and the file.
    """
    missing = str(tmp_path / "missing-key.pem")
    assert setupError(tlsOptions(certs, private_key=missing)) == (
        f"cannot read tls.private_key {missing!r}: No such file or directory"
    )


def test_keyDoesNotMatchCertificate(certs: Certs) -> None:
    """
    A private key that is not the certificate's is refused, naming both files.
    """
    message = setupError(tlsOptions(certs, private_key=certs.dev.clientKey))
    assert message == (
        f"tls.private_key {certs.dev.clientKey!r} does not match the certificate in "
        f"tls.certificate {certs.dev.server!r}"
    )


@pytest.mark.parametrize(
    ("key", "contents", "expected"),
    [
        pytest.param("certificate", "not a certificate\n", "holds no PEM certificate", id="no-certificate"),
        pytest.param(
            "certificate",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "holds a certificate that cannot be read",
            id="broken-certificate",
        ),
        pytest.param("private_key", "not a key\n", "holds no PEM private key", id="no-key"),
        pytest.param(
            "private_key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "is encrypted; netd needs an unencrypted key",
            id="encrypted-key",
        ),
    ],
)
def test_malformedFiles(certs: Certs, tmp_path: Path, key: str, contents: str, expected: str) -> None:
    """
    A certificate or key file without what it should hold, or holding it in a form netd cannot use, is refused, naming the key and the file.
    """
    path = writeText(tmp_path / "file.pem", contents)
    message = setupError(tlsOptions(certs, **{key: path}))
    assert message.startswith(f"tls.{key} {path!r} ")
    assert expected in message


def test_unreadableClientCA(certs: Certs, tmp_path: Path) -> None:
    """
    A client_ca file that cannot be read is refused, naming the key and the file.
    """
    missing = str(tmp_path / "ca-missing.pem")
    message = setupError(tlsOptions(certs, client_ca=missing, client_auth="required"))
    assert message == f"cannot read tls.client_ca {missing!r}: No such file or directory"


def test_sniFileCheckedToo(certs: Certs, tmp_path: Path) -> None:
    """
    The files of an sni entry are checked like the default ones, naming the entry.
    """
    missing = str(tmp_path / "alpha-missing.pem")
    options = tlsOptions(
        certs, sni={"alpha.test": SNICertificate(certificate=missing, private_key=certs.dev.serverKey)}
    )
    assert setupError(options) == f'cannot read tls.sni."alpha.test".certificate {missing!r}: No such file or directory'


@pytest.mark.parametrize("name", ["expired", "not-yet-valid"])
def test_outdatedCertificateWarnsButServes(certs: Certs, name: str) -> None:
    """
    An expired or not yet valid certificate is served (the bad ones must be) with a warning naming the service and the file.
    """
    certificate, key = certs.bad(name)
    registry = discoverPlugins()
    config = parseConfig(
        {
            "services": [
                {
                    "name": "bad-tls",
                    "plugin": "echo",
                    "listen": ["tcp:0"],
                    "tls": {"certificate": certificate, "private_key": key},
                }
            ]
        },
        "test.toml",
        registry,
    )
    with capturedLogs() as events:
        service = NetService(config.services[0], MemoryReactorClock(), 10)
    (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["service"] == "bad-tls"
    assert warning["path"] == certificate
    assert ("expired on" if name == "expired" else "not valid before") in warning["problem"]
    assert service.tls is not None


def test_startErrorNamesServiceAndFile(certs: Certs, tmp_path: Path) -> None:
    """
    A service whose TLS files are unusable fails to build with a ServiceStartError naming the service and the file, before anything listens.
    """
    missing = str(tmp_path / "nope.pem")
    config = parseConfig(
        {
            "services": [
                {
                    "name": "web",
                    "plugin": "echo",
                    "listen": ["tcp:0"],
                    "tls": {"certificate": missing, "private_key": missing},
                }
            ]
        },
        "test.toml",
        discoverPlugins(),
    )
    reactor = MemoryReactorClock()
    with pytest.raises(ServiceStartError) as info:
        NetService(config.services[0], reactor, 10)
    assert str(info.value) == f"service 'web': cannot read tls.certificate {missing!r}: No such file or directory"
    assert reactor.tcpServers == []


def test_autoCertificateServedAndVerified(tmp_path: Path) -> None:
    """
    certificate = "auto" serves the state directory's development certificate, which a client trusting its CA accepts for localhost; a second service reuses it.
    """
    stack = echoStack(TLSOptions(certificate="auto"), stateDir=str(tmp_path))
    connection = stack.connect(clientCreator("localhost", str(tmp_path / "tls" / "ca.pem")))
    assert connection.handshakeDone
    again = ServerTLS(TLSOptions(certificate="auto"), serviceName="again", log=LOG, stateDir=str(tmp_path))
    assert again.made == []
    for address in ("127.0.0.1", "::1"):
        assert stack.connect(clientCreator(address, str(tmp_path / "tls" / "ca.pem"))).handshakeDone


def test_autoCertificateIsECDSAP256(tmp_path: Path) -> None:
    """
    certificate = "auto" serves an ECDSA P-256 certificate (cheaper handshakes than RSA).
    """
    stack = echoStack(TLSOptions(certificate="auto"), stateDir=str(tmp_path))
    certificate = stack.connect(TestClientTLS()).serverCertificate
    assert certificate is not None
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_autoCertificateUnwritableStateDir(tmp_path: Path) -> None:
    """
    certificate = "auto" with a state directory that cannot be written is refused, saying where and what to do.
    """
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    message = setupError(TLSOptions(certificate="auto"), stateDir=str(blocker))
    assert message.startswith('tls.certificate = "auto": cannot make the development certificate in ')
    assert "state_dir" in message


def test_chainFileServed(certs: Certs, tmp_path: Path) -> None:
    """
    A certificate file holding the chain (leaf, then intermediate CA) sends the whole chain, so a client trusting only the root accepts it.
    """
    root = makeCA("netd test root", pathLength=None)
    intermediate = makeCA("netd test intermediate", issuer=root)
    leaf = issue(intermediate, ["localhost"])
    chain = writeText(tmp_path / "chain.pem", leaf.certificatePEM() + intermediate.certificatePEM())
    key = writeText(tmp_path / "chain-key.pem", leaf.keyPEM())
    rootFile = writeText(tmp_path / "root.pem", root.certificatePEM())
    stack = echoStack(tlsOptions(certs, certificate=chain, private_key=key))
    assert stack.connect(clientCreator("localhost", rootFile)).handshakeDone
    leafOnly = writeText(tmp_path / "leaf.pem", leaf.certificatePEM())
    stack = echoStack(tlsOptions(certs, certificate=leafOnly, private_key=key))
    assert not stack.connect(clientCreator("localhost", rootFile)).handshakeDone


# The client side.


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        pytest.param("wrong-host", "not valid for localhost", id="wrong-host"),
        pytest.param("self-signed", "certificate verify failed", id="self-signed"),
        pytest.param("unknown-ca", "certificate verify failed", id="unknown-ca"),
        pytest.param("expired", "certificate verify failed", id="expired"),
        pytest.param("not-yet-valid", "certificate verify failed", id="not-yet-valid"),
    ],
)
def test_clientCreatorRefusesBadCertificates(certs: Certs, bad: str, why: str) -> None:
    """
    The verifying client refuses each bad certificate, and describeTLSFailure says why in words.
    """
    certificate, key = certs.bad(bad)
    stack = echoStack(tlsOptions(certs, certificate=certificate, private_key=key))
    connection = stack.connect(verifying(certs))
    assert not connection.handshakeDone
    assert connection.lost is not None
    description = describeTLSFailure(connection.lost)
    assert description is not None and why in description


def test_badCertificatesFailWithPromisedErrors(certs: Certs) -> None:
    """
    Served by netd, each chain-level bad certificate makes a client that trusts the development CA fail with its documented OpenSSL verify error.
    """
    expected = {"expired": "10", "not-yet-valid": "9", "self-signed": "18", "unknown-ca": "20"}
    for name, code in expected.items():
        certificate, key = certs.bad(name)
        stack = echoStack(tlsOptions(certs, certificate=certificate, private_key=key))
        connection = stack.connect(TestClientTLS(caFile=certs.dev.ca))
        assert connection.verifyErrors[:1] == [code], name


def test_describeTLSFailureIgnoresOthers() -> None:
    """
    describeTLSFailure says nothing about failures that are not TLS ones.
    """
    assert describeTLSFailure(Failure(ConnectionError("refused"))) is None


def test_trustRootLoading(certs: Certs, tmp_path: Path) -> None:
    """
    A CA bundle that cannot be read or holds no certificate is refused with its path; None means the system's CAs.
    """
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(TLSSetupError, match="cannot read the CA bundle"):
        loadTrustRoot(missing)
    empty = writeText(tmp_path / "empty.pem", "nothing\n")
    with pytest.raises(TLSSetupError, match="holds no PEM certificate"):
        clientCreator("localhost", empty)
    assert loadTrustRoot(None) is not None
    assert loadTrustRoot(certs.dev.ca) is not None


@dataclass
class RecordingReceiver:
    """
    A plugin's receiver that notes what its connection tells it.
    """

    seen: list[str]

    def connectionMade(self, connection: Any) -> None:
        self.seen.append("made")

    def frameReceived(self, frame: bytes) -> None:
        self.seen.append(f"frame {frame!r}")

    def connectionLost(self, reason: Failure) -> None:
        self.seen.append("lost")


@dataclass
class RecordingHandler:
    """
    Builds L{RecordingReceiver}s that share one record.
    """

    seen: list[str]

    def newConnection(self) -> RecordingReceiver:
        return RecordingReceiver(self.seen)


def test_receiverMadeOnceHandshakeDone(certs: Certs) -> None:
    """
    A plugin's receiver is told of its connection once the TLS handshake is
    done, before any data, so that a plugin that acts when a connection opens
    (the proxy connecting its upstream) does nothing for a client whose
    handshake fails; a connection that ends mid-handshake never reaches it.
    """
    seen: list[str] = []
    clock = MemoryReactorClock()
    stack = makeStreamStack(RecordingHandler(seen), "raw", clock=clock, tls=tlsOptions(certs))
    hello = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    hello.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        hello.do_handshake()
    halfway = connect(stack)
    assert halfway is not None
    halfway.receive(hello.bio_read(65536))
    assert halfway.takeSent()
    halfway.peerClosed()
    assert seen == []
    done = connectTLS(stack, verifying(certs), clock)
    assert done is not None and done.handshakeDone
    assert seen == ["made"]
    done.send(b"hello")
    done.close()
    assert seen == ["made", "frame b'hello'", "lost"]
