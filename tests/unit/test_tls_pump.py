"""
The record pump's start-up check (L{netd.tls.pump.RECORD_PUMP}) and the
fallback to Twisted's public TLS path: each way the check can fail is forced
(a private name taken away, a pump that misbehaves, the internal switch), and
the service then warns once and still serves, counting and reporting its
handshakes as on the pump.
"""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOProtocol

from netd.metrics import Counters
from netd.stream.guard import ConnectionLimiter
from netd.testing.memory import TestClientTLS, connectTLS, makeStreamStack
from netd.tls import pump
from netd.tls.contexts import ServerTLS
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd.tls.protocol import PumpedTLSServerProtocol, TLSServerFactory, TLSServerProtocol
from netd.tls.transport import TLSTransport
from netd_plugins.echo import EchoHandler

from .tlsprivates import PrivateNameUsed, forbidPrivatesOutsidePump, netdSources, privateUses

LOG = Logger(namespace="test_tls_pump")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSet:
    """
    A development set of certificates, made once for the module.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path_factory.mktemp("certs")))
    return files


@pytest.fixture(autouse=True)
def freshCheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Each test starts with the check not yet run, and leaves its verdict as it was (it is kept for the process).
    """
    monkeypatch.setattr(pump.RECORD_PUMP, "_alive", None)


def pumpWarnings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The record pump's warnings among logged events.
    """
    return [e for e in events if e.get("event") == "private_api_fallback" and e.get("name") == pump.RECORD_PUMP.name]


def factoryFor(dev: DevelopmentSet) -> TLSServerFactory:
    """
    A TLS service's factory (building its contexts runs the check, as the first service does).
    """
    options = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    tls = ServerTLS(options, serviceName="test", log=LOG)
    return TLSServerFactory(
        tls, Factory.forProtocol(Protocol), clock=MemoryReactorClock(), counters=Counters(), log=LOG
    )


def servesAndResumes(limiter: ConnectionLimiter, clock: MemoryReactorClock, counters: Counters) -> None:
    """
    Assert that a TLS echo service serves a record each way, resumes a
    session and counts both handshakes and the resumption.
    """
    client = TestClientTLS(maxVersion="1.2")
    first = connectTLS(limiter, client, clock)
    assert first is not None and first.handshakeDone
    first.send(b"hello")
    assert first.takeReceived() == b"hello"
    client.session = first.session
    first.close()
    second = connectTLS(limiter, client, clock)
    assert second is not None
    second.send(b"again")
    assert second.takeReceived() == b"again"
    assert {k: v for k, v in counters.items() if k.startswith("tls_")} == {
        "tls_handshakes_ok": 2,
        "tls_sessions_resumed": 1,
    }


def echoService(dev: DevelopmentSet) -> tuple[ConnectionLimiter, MemoryReactorClock, Counters]:
    """
    The echo plugin behind the core's stack with TLS.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    options = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    limiter = makeStreamStack(EchoHandler(), "raw", clock=clock, counters=counters, tls=options)
    return limiter, clock, counters


def test_checkPassesOnThisPyOpenSSLAndTwisted(dev: DevelopmentSet) -> None:
    """
    On the pyOpenSSL and Twisted the suite runs on, the check passes, silently, and services use the pump.
    """
    with capturedLogs() as events:
        factory = factoryFor(dev)
    assert pump.RECORD_PUMP.alive()
    assert factory.protocol is PumpedTLSServerProtocol
    assert pumpWarnings(events) == []


BREAKS = [
    pytest.param(
        lambda m: m.delattr(SSL.Connection, "_handle_bio_errors"),
        "OpenSSL.SSL.Connection._handle_bio_errors",
        id="connection-method",
    ),
    pytest.param(
        lambda m: m.delattr(TLSMemoryBIOProtocol, "_flushReceiveBIO"),
        "TLSMemoryBIOProtocol._flushReceiveBIO",
        id="twisted-method",
    ),
    pytest.param(lambda m: m.setattr(pump, "_openssl", object()), "OpenSSL._util.lib.BIO_write", id="openssl-binding"),
    pytest.param(lambda m: m.setattr(pump, "_ffi", None), "OpenSSL._util.ffi/lib", id="no-util"),
    pytest.param(
        lambda m: m.setattr(pump, "_CONNECTION_FIELDS", ("_ssl", "_netd_renamed_bio")),
        "OpenSSL.SSL.Connection()._netd_renamed_bio",
        id="connection-field",
    ),
    pytest.param(
        lambda m: m.delattr(TLSMemoryBIOProtocol, "_handshakeDone"),
        "TLSMemoryBIOProtocol._handshakeDone",
        id="twisted-flag",
    ),
    pytest.param(
        lambda m: m.setattr(pump, "_PROTOCOL_FIELDS", ("_tlsConnection", "_netd_renamed_buffer")),
        "TLSMemoryBIOProtocol()._netd_renamed_buffer",
        id="twisted-field",
    ),
    pytest.param(
        lambda m: m.setattr(pump, "_FACTORY_FIELDS", ("_netd_renamed_creator",)),
        "TLSMemoryBIOFactory()._netd_renamed_creator",
        id="twisted-factory-field",
    ),
    pytest.param(lambda m: m.setenv(pump.CANARY_SWITCH, "fail"), "_netdCanaryForcedMissing", id="internal-switch"),
]


@pytest.mark.parametrize(("breakIt", "named"), BREAKS)
def test_missingPrivateNameFallsBack(
    dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch, breakIt: Any, named: str
) -> None:
    """
    A private name the pump needs taken away: the check fails naming it, one warning says so, and services use Twisted's public path.
    """
    breakIt(monkeypatch)
    with capturedLogs() as events:
        factory = factoryFor(dev)
    assert not pump.RECORD_PUMP.alive()
    assert factory.protocol is TLSServerProtocol
    [warning] = pumpWarnings(events)
    assert named in warning["error"]


def test_misbehavingReadFallsBack(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A pump whose names exist but whose read path delivers nothing fails the check's record round trip, and services fall back.
    """
    monkeypatch.setattr(pump.RecordPump, "_flushReceiveBIO", lambda self: None)
    with capturedLogs() as events:
        factory = factoryFor(dev)
    assert factory.protocol is TLSServerProtocol
    [warning] = pumpWarnings(events)
    assert "came back wrong: 0 bytes" in warning["error"]


def test_misbehavingWriteFallsBack(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A pump whose send path sends nothing fails the check's handshake, and services fall back.
    """
    monkeypatch.setattr(pump.RecordPump, "_flushSendBIO", lambda self: None)
    with capturedLogs() as events:
        factory = factoryFor(dev)
    assert factory.protocol is TLSServerProtocol
    [warning] = pumpWarnings(events)
    assert "handshake did not finish" in warning["error"]


def test_raisingCheckFallsBack(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A private call that raises inside the check (a changed signature) fails it with the exception's words, and services fall back.
    """

    def changed(*args: object) -> bool:
        raise TypeError("initializer for ctype 'SSL *' must be a cdata pointer")

    monkeypatch.setattr(pump.RecordPump, "sessionReused", changed)
    with capturedLogs() as events:
        factory = factoryFor(dev)
    assert factory.protocol is TLSServerProtocol
    [warning] = pumpWarnings(events)
    assert warning["error"].startswith("TypeError: initializer")


def test_fallbackWarnsOnceAndServes(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On the fallback two services warn once between them, and each serves, resumes sessions and counts its handshakes.
    """
    monkeypatch.setattr(pump.RecordPump, "_flushReceiveBIO", lambda self: None)
    forbidPrivatesOutsidePump(monkeypatch)
    with capturedLogs() as events:
        services = [echoService(dev), echoService(dev)]
        for limiter, clock, counters in services:
            servesAndResumes(limiter, clock, counters)
    assert len(pumpWarnings(events)) == 1


def test_fallbackNeedsNoPrivateBinding(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without pyOpenSSL's private bindings (as if renamed) the fallback serves, counts handshakes and resumptions, and warns only once, for the pump.
    """
    monkeypatch.setattr(pump, "_openssl", object())
    monkeypatch.setattr(pump, "_ffi", object())
    forbidPrivatesOutsidePump(monkeypatch)
    with capturedLogs() as events:
        limiter, clock, counters = echoService(dev)
        assert limiter.wrappedFactory.protocol is TLSServerProtocol
        client = TestClientTLS(maxVersion="1.2")
        for _ in range(3):
            connection = connectTLS(limiter, client, clock)
            assert connection is not None
            connection.send(b"hello")
            assert connection.takeReceived() == b"hello"
            client.session = connection.session
            connection.close()
    assert {k: v for k, v in counters.items() if k.startswith("tls_")} == {
        "tls_handshakes_ok": 3,
        "tls_sessions_resumed": 2,
    }
    assert [e["log_namespace"] for e in events if e["log_level"] == LogLevel.warn] == ["netd.canary"]


def test_fallbackIsOutsideThePump() -> None:
    """
    The fallback's class does not inherit the record pump, and the pump only replaces methods the public transport has: the public path runs none of its code.
    """
    assert not issubclass(TLSServerProtocol, pump.RecordPump)
    assert issubclass(PumpedTLSServerProtocol, pump.RecordPump)
    pumped = {name for name in vars(pump.RecordPump) if not name.startswith("__")}
    assert {"makeConnection", "dataReceived", "sessionReused", "_write"} <= pumped <= set(dir(TLSTransport))


def test_guardCatchesNetdTouchingAPrivate(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The guard the TLS suite's public-path run relies on raises when a netd module other than the pump reads a private of Twisted's TLS or of pyOpenSSL, and lets the pump, Twisted and pyOpenSSL through.
    """
    monkeypatch.setenv(pump.CANARY_SWITCH, "fail")
    with capturedLogs():
        limiter, clock, counters = echoService(dev)
    forbidPrivatesOutsidePump(monkeypatch)
    connection = connectTLS(limiter, TestClientTLS(), clock)
    assert connection is not None and connection.handshakeDone
    server = connection.server
    while not isinstance(server, TLSServerProtocol):
        server = server.wrappedProtocol
    for module in ("netd.tls.protocol", "netd.stream.guard"):
        for code in (
            "server._tlsConnection",
            "server.getHandle()._ssl",
            "server.factory._creatorCallable",
            "setattr(server, '_handshakeDone', True)",
        ):
            with pytest.raises(PrivateNameUsed):
                exec(code, {"__name__": module, "server": server})
    exec("server._tlsConnection._ssl", {"__name__": "netd.tls.pump", "server": server})
    assert server._handshakeDone


def test_onlyThePumpNamesPrivates() -> None:
    """
    No netd module but the record pump (and the reactors', checked on their own) names a private of pyOpenSSL or of Twisted's TLS, nor imports a private module of either; the scan finds one where there is one.
    """
    found = {module: uses for module, path in netdSources() if (uses := privateUses(path.read_text()))}
    assert found == {}
    assert privateUses("from OpenSSL._util import lib\nx = connection._into_ssl\ngetattr(p, '_handshakeDone')\n") == [
        "line 1: from OpenSSL._util import lib",
        "line 2: ._into_ssl",
        "line 3: getattr(..., '_handshakeDone')",
    ]


def test_checkRunsOnce(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The check runs once, when the first TLS service is built, not per service nor per connection or record.
    """
    runs = []
    real = pump._runCanary

    def counted() -> str | None:
        runs.append(1)
        return real()

    monkeypatch.setattr(pump, "_runCanary", counted)
    limiter, clock, counters = echoService(dev)
    assert runs == [1]
    echoService(dev)
    servesAndResumes(limiter, clock, counters)
    assert runs == [1]


def test_resumptionOnFallbackIsNotGuessed(dev: DevelopmentSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On the fallback a full handshake is not counted as resumed: resumption is seen only when the server did not send its certificate.
    """
    monkeypatch.setenv(pump.CANARY_SWITCH, "fail")
    with capturedLogs():
        limiter, clock, counters = echoService(dev)
    for version in ("1.2", "1.3"):
        connection = connectTLS(limiter, TestClientTLS(maxVersion=version), clock)
        assert connection is not None and connection.handshakeDone
        connection.close()
    assert {k: v for k, v in counters.items() if k.startswith("tls_")} == {"tls_handshakes_ok": 2}
