"""
A service's event log (L{netd.events}): the ring, its filters and what it
costs when off; the C{events} config key; the C{events} runtime table; the
log handed to plugins and the tables a service serves; and the
C{"connection"} event of every stream connection, plain, behind a PROXY
header and over TLS, on in-memory transports with a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.config.options import ConfigError
from netd.config.spec import ServiceSpec, parseConfig
from netd.daemon.service import NetService
from netd.events import EventLog, EventTable
from netd.interfaces import IHasRuntimeTables, IProtocolPlugin, IRuntimeTable, IStreamHandler, PluginContext
from netd.registry import LoadedPlugin, PluginRegistry, checkPlugin, discoverPlugins
from netd.stream.guard import ConnectionLimiter
from netd.stream.proxyheader import ProxyHeaderFactory
from netd.testing.memory import (
    PEER,
    TestClientTLS,
    UDPMemoryReactorClock,
    connect,
    connectTLS,
    makeStreamStack,
    proxyHeaderV1,
)
from netd.tls.devcerts import CLIENT_COMMON_NAME, DevelopmentSet, ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd_plugins.echo import EchoHandler


def fields(number: int, word: str) -> dict[str, Any]:
    """
    A render function: the event's own fields from the values stored.
    """
    return {"number": number, "word": word}


# The ring.


def test_eventCarriesSeqTimeKindAndRenderedFields() -> None:
    """
    An event reads back with its sequence number, the clock's time when it was added, its kind and its render's fields.
    """
    clock = Clock()
    clock.advance(1700000000.5)
    log = EventLog(10, clock)
    log.add("query", fields, 1, "one")
    clock.advance(2)
    log.add("connection", fields, 2, "two")
    assert log.events() == [
        {"seq": 1, "time": 1700000000.5, "kind": "query", "number": 1, "word": "one"},
        {"seq": 2, "time": 1700000002.5, "kind": "connection", "number": 2, "word": "two"},
    ]


def test_addAtTakesTheCallersTime() -> None:
    """
    addAt() records the time it is given, numbered in turn with add()'s events, and keeps nothing when the log is off.
    """
    clock = Clock()
    clock.advance(50)
    log = EventLog(10, clock)
    log.add("connection", fields, 1, "one")
    log.addAt(42.25, "query", fields, 2, "two")
    assert log.events() == [
        {"seq": 1, "time": 50.0, "kind": "connection", "number": 1, "word": "one"},
        {"seq": 2, "time": 42.25, "kind": "query", "number": 2, "word": "two"},
    ]
    off = EventLog.disabled()
    off.addAt(1.0, "query", fields, 3, "three")
    assert off.events() == [] and off.dropped == 0


def test_renderRunsOnlyWhenRead() -> None:
    """
    add() stores the values without calling render; render runs once per event each time the log is read.
    """
    calls: list[int] = []

    def render(n: int) -> dict[str, Any]:
        calls.append(n)
        return {"n": n}

    log = EventLog(10, Clock())
    log.add("query", render, 7)
    assert calls == []
    log.events()
    log.events()
    assert calls == [7, 7]


def test_ringKeepsTheNewestAndCountsTheDropped() -> None:
    """
    A full ring drops its oldest events, and dropped says how many went.
    """
    log = EventLog(3, Clock())
    for n in range(5):
        log.add("query", fields, n, "w")
    assert [e["seq"] for e in log.events()] == [3, 4, 5]
    assert [e["number"] for e in log.events()] == [2, 3, 4]
    assert log.dropped == 2


def test_clearForgetsButSequenceGoesOn() -> None:
    """
    clear() empties the ring and the dropped count; the next event's seq follows the last one before the clear.
    """
    log = EventLog(2, Clock())
    for n in range(4):
        log.add("query", fields, n, "w")
    log.clear()
    assert (log.events(), log.dropped) == ([], 0)
    log.add("query", fields, 9, "w")
    assert [e["seq"] for e in log.events()] == [5]
    assert log.dropped == 0


def test_filtersByKindSinceAndLimit() -> None:
    """
    kind selects one kind, since the events after a seq, limit the most recent N of those selected, all oldest first.
    """
    log = EventLog(10, Clock())
    for n, kind in enumerate(["query", "connection", "query", "fault", "query"]):
        log.add(kind, fields, n, kind)
    assert [e["seq"] for e in log.events(kind="query")] == [1, 3, 5]
    assert [e["seq"] for e in log.events(since=3)] == [4, 5]
    assert [e["seq"] for e in log.events(limit=2)] == [4, 5]
    assert [e["seq"] for e in log.events(kind="query", since=1, limit=1)] == [5]
    assert log.events(limit=0) == []
    assert log.events(kind="nothing") == []


class UntouchableClock(Clock):
    """
    A clock that fails the test if anything asks it the time.
    """

    def seconds(self) -> float:
        raise AssertionError("a disabled log read the clock")


def test_sizeZeroKeepsNothingAndDoesNoWork() -> None:
    """
    A log of size 0 is disabled: add() neither reads the clock nor renders, and nothing is kept or dropped.
    """

    def render() -> dict[str, Any]:
        raise AssertionError("rendered")

    log = EventLog(0, UntouchableClock())
    assert log.enabled is False
    log.add("query", render)
    assert (log.events(), log.dropped) == ([], 0)
    assert EventLog.disabled().enabled is False
    assert PluginContext(reactor=None, log=None, serviceName="s", counters=None).events.enabled is False  # type: ignore[arg-type]


# The events table.


def test_tableGetTakesQueryArguments() -> None:
    """
    GET on the events table reads kind, since and limit from the query and answers the events, dropped and the ring size.
    """
    log = EventLog(3, Clock())
    for n, kind in enumerate(["query", "connection", "query", "query"]):
        log.add(kind, fields, n, kind)
    table = EventTable(log)
    answer = table.get({"kind": ["query"], "since": ["2"], "limit": ["5"]})
    assert [e["seq"] for e in answer["events"]] == [3, 4]
    assert (answer["dropped"], answer["size"]) == (1, 3)
    assert [e["seq"] for e in table.get({})["events"]] == [2, 3, 4]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({"since": ["x"]}, ("since", "expected a whole number of at least 0, got 'x'"), id="since-word"),
        pytest.param(
            {"limit": ["-1"]}, ("limit", "expected a whole number of at least 0, got '-1'"), id="limit-negative"
        ),
        pytest.param({"limit": ["9" * 40]}, ("limit", "expected a whole number"), id="limit-huge"),
        pytest.param({"knd": ["query"]}, ("knd", "unknown query argument; did you mean 'kind'?"), id="typo"),
    ],
)
def test_tableGetRefusesBadQuery(query: Mapping[str, Sequence[str]], expected: tuple[str, str]) -> None:
    """
    A query argument that is unknown or not a whole number is a ConfigError naming the argument.
    """
    with pytest.raises(ConfigError) as info:
        EventTable(EventLog(3, Clock())).get(query)
    [problem] = info.value.problems
    assert problem.path == (expected[0],)
    assert expected[1] in problem.message


def test_tableDeleteClearsAndPutIsRefused() -> None:
    """
    DELETE on the events table clears the log; PUT raises NotImplementedError (the API's 405).
    """
    log = EventLog(3, Clock())
    log.add("query", fields, 1, "w")
    table = EventTable(log)
    assert table.delete({}) == {"events": [], "dropped": 0, "size": 3}
    assert log.events() == []
    with pytest.raises(NotImplementedError):
        table.put({"events": []})


# The config key.


def echoConfig(**keys: Any) -> dict[str, Any]:
    """
    A config of one echo service with C{keys} added.
    """
    return {"services": [{"name": "echo", "plugin": "echo", "listen": ["tcp:0"], **keys}]}


def test_eventsKeyDefaultsAndRoundTrips() -> None:
    """
    events defaults to 1000, takes 0 (off), and appears in the normalized config.
    """
    registry = discoverPlugins()
    [default] = parseConfig(echoConfig(), "t.toml", registry).services
    assert default.events == 1000
    [off] = parseConfig(echoConfig(events=0), "t.toml", registry).services
    assert off.events == 0
    assert off.toConfig()["events"] == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1, "out of range; expected 0 to 100000"),
        (100001, "out of range"),
        ("many", "expected an integer"),
        (1.5, "expected an integer"),
    ],
)
def test_badEventsKeyNamesItsPath(value: object, expected: str) -> None:
    """
    An events value that is not a whole number from 0 to 100000 is refused at services[0].events.
    """
    with pytest.raises(ConfigError) as info:
        parseConfig(echoConfig(events=value), "t.toml", discoverPlugins())
    [problem] = info.value.problems
    assert problem.path == ("services", 0, "events")
    assert expected in problem.message


# The service's log and tables.


@implementer(IRuntimeTable)
@attrs.define
class FakeTable:
    """
    A runtime table that answers its name.
    """

    name: str

    def get(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        return {"table": self.name}

    def put(self, body: Any) -> Mapping[str, Any]:
        return {"table": self.name}

    def delete(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        return {"table": self.name}


@implementer(IStreamHandler, IHasRuntimeTables)
class TablesHandler(EchoHandler):
    """
    An echo handler with tables of its own (one of them clashing with the core's), that keeps its context.
    """

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def runtimeTables(self) -> Mapping[str, IRuntimeTable]:
        return {"records": FakeTable("records"), "events": FakeTable("plugin events")}


@attrs.frozen
class NoOptions:
    """
    A plugin schema without keys.
    """


@implementer(IProtocolPlugin)
class TablesPlugin:
    """
    A stream plugin whose handler has runtime tables.
    """

    name = "tables"
    summary = "has tables"
    optionsType = NoOptions
    transports = frozenset({"stream"})
    framings = ("raw",)
    requiresTLS = False

    def build(self, options: object, context: PluginContext) -> TablesHandler:
        return TablesHandler(context)


def serviceOf(plugin: str, **keys: Any) -> NetService:
    """
    A NetService of one service of C{plugin} (the installed ones and L{TablesPlugin}) on a fake reactor.
    """
    found = discoverPlugins()
    assert checkPlugin(TablesPlugin()) is None
    registry = PluginRegistry({**found.plugins, "tables": LoadedPlugin(TablesPlugin(), "test")}, found.broken)
    table = {"name": "s", "plugin": plugin, "listen": ["tcp:0:interface=127.0.0.1"], **keys}
    [spec] = parseConfig({"services": [table]}, "t.toml", registry).services
    return NetService(spec, UDPMemoryReactorClock(), shutdownTimeout=1)


def test_serviceSharesItsLogWithPluginAndConnections() -> None:
    """
    A service's event log, sized by its events key, is the one its plugin's context and its connection limiter record into.
    """
    service = serviceOf("tables", events=7)
    assert service.events.size == 7
    assert service.handler.context.events is service.events
    assert service.connections is not None and service.connections.events is service.events


def test_runtimeTablesAddThePluginsToTheCoresWhichWin() -> None:
    """
    runtimeTables() has the core's events table and the handler's own tables; a handler's table named like a core one is hidden.
    """
    service = serviceOf("tables")
    tables = service.runtimeTables()
    assert tables["records"].get({}) == {"table": "records"}
    assert isinstance(tables["events"], EventTable) and tables["events"].log is service.events
    assert "events" in serviceOf("echo").runtimeTables()


# The connection events.


def limiterWithLog(size: int = 10, **keys: Any) -> tuple[ConnectionLimiter, EventLog, MemoryReactorClock]:
    """
    An echo stream stack whose limiter records into a fresh log.
    """
    clock = MemoryReactorClock()
    clock.advance(1000)
    limiter = makeStreamStack(EchoHandler(), "raw", clock=clock, **keys)
    limiter.events = EventLog(size, clock)
    return limiter, limiter.events, clock


def test_connectionEventHasPeerBytesDurationAndEnding() -> None:
    """
    A closed connection leaves one event with its peer, local address, bytes each way, when it opened, how long it lasted and how it ended.
    """
    limiter, log, clock = limiterWithLog()
    connection = connect(limiter)
    assert connection is not None
    connection.receive(b"hello")
    clock.advance(2.5)
    connection.receive(b"!")
    connection.peerClosed()
    [event] = log.events()
    assert event == {
        "seq": 1,
        "time": 1002.5,
        "kind": "connection",
        "peer": "127.0.0.1:40000",
        "local": "10.0.0.1:12345",
        "opened": 1000.0,
        "duration": 2.5,
        "bytes_in": 6,
        "bytes_out": 6,
        "ended": "closed by peer",
        "tls": None,
    }


class ForgetfulTransport(StringTransport):
    """
    A transport that, like a closed TCP socket, can no longer tell its own address.
    """

    forgotten = False

    def getHost(self) -> Any:
        assert not self.forgotten, "getHost() called on a closed socket"
        return super().getHost()


def test_connectionAddressesTakenWhenItOpens() -> None:
    """
    The event's addresses are the ones the transport had when the connection opened, since a closed socket has none.
    """
    limiter, log, _ = limiterWithLog()
    protocol = limiter.buildProtocol(PEER)
    assert protocol is not None
    transport = ForgetfulTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 7007), peerAddress=PEER)
    protocol.makeConnection(transport)
    transport.forgotten = True
    protocol.connectionLost(Failure(ConnectionDone("bye")))
    [event] = log.events()
    assert (event["peer"], event["local"]) == ("127.0.0.1:40000", "127.0.0.1:7007")


@pytest.mark.parametrize(
    ("how", "ended"),
    [
        ("netdCloses", "closed by netd"),
        ("idle", "idle timeout"),
        ("abortAll", "aborted"),
        ("reset", "reset by peer"),
        ("halfClose", "closed by peer"),
    ],
)
def test_connectionEventSaysHowItEnded(how: str, ended: str) -> None:
    """
    The event's ended field tells netd's close, the idle timeout, an abort, the peer's reset and the peer's close apart.
    """
    limiter, log, clock = limiterWithLog(idleTimeout=5)
    connection = connect(limiter)
    assert connection is not None
    if how == "netdCloses":
        connection.protocol.loseConnection()
        connection.finishClose()
    elif how == "idle":
        clock.advance(5)
        connection.finishClose()
    elif how == "abortAll":
        limiter.abortAll()
        connection.finishClose()
    elif how == "reset":
        connection.protocol.connectionLost(Failure(ConnectionLost("reset")))
    else:
        connection.protocol.readConnectionLost()
        connection.finishClose()
    [event] = log.events()
    assert event["ended"] == ended


def test_refusedAndDisabledConnectionsLeaveNoEvent() -> None:
    """
    A connection refused by max_connections leaves no event, and a limiter without a log records nothing.
    """
    limiter, log, _ = limiterWithLog(maxConnections=1)
    first = connect(limiter)
    assert first is not None
    assert connect(limiter) is None
    assert log.events() == []
    plain = makeStreamStack(EchoHandler(), "raw")
    assert plain.events.enabled is False
    connection = connect(plain)
    assert connection is not None
    connection.peerClosed()
    assert plain.events.events() == []


def test_proxiedConnectionEventNamesTheRealClient() -> None:
    """
    Behind a PROXY header, the event's peer and local address are the ones the header names.
    """
    limiter, log, _ = limiterWithLog()
    protocol = ProxyHeaderFactory(limiter).buildProtocol(PEER)
    assert protocol is not None
    protocol.makeConnection(StringTransport(peerAddress=PEER))
    protocol.dataReceived(proxyHeaderV1("10.1.2.3", 5555, "192.0.2.7", 7007) + b"abc")
    protocol.connectionLost(Failure(ConnectionDone("bye")))
    [event] = log.events()
    assert (event["peer"], event["local"], event["bytes_in"]) == ("10.1.2.3:5555", "192.0.2.7:7007", 3)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSet:
    """
    A development CA with its server and client certificates.
    """
    dev, _ = ensureDevelopmentSet(str(tmp_path_factory.mktemp("certs")))
    return dev


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsConnectionEventHasWhatWasNegotiated(dev: DevelopmentSet) -> None:
    """
    A TLS connection's event has the version, cipher, SNI name, ALPN protocol, client certificate subject and whether it resumed.
    """
    options = TLSOptions(
        certificate=dev.server, private_key=dev.serverKey, alpn=("echo",), client_ca=dev.ca, client_auth="optional"
    )
    limiter, log, clock = limiterWithLog(tls=options)
    client = TestClientTLS(
        serverName="localhost", certificate=dev.client, privateKey=dev.clientKey, alpn=("echo",), maxVersion="1.2"
    )
    connection = connectTLS(limiter, client, clock)
    assert connection is not None
    connection.send(b"ping")
    assert connection.takeReceived() == b"ping"
    cipher = connection.client.getHandle().get_cipher_name()
    connection.close()
    [event] = log.events()
    tls = event["tls"]
    assert tls["version"] == "TLSv1.2"
    assert tls["cipher"] == cipher and cipher
    assert (tls["sni"], tls["alpn"], tls["client_certificate"], tls["resumed"]) == (
        "localhost",
        "echo",
        f"CN={CLIENT_COMMON_NAME}",
        False,
    )
    assert event["bytes_in"] > 4 and event["bytes_out"] > 4


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsHandshakeFailureInEvent(dev: DevelopmentSet) -> None:
    """
    A connection whose handshake failed has the failure reason and OpenSSL's words in its event instead of the negotiated values.
    """
    options = TLSOptions(certificate=dev.server, private_key=dev.serverKey, alpn=("echo",))
    limiter, log, clock = limiterWithLog(tls=options)
    connection = connectTLS(limiter, TestClientTLS(alpn=("h2",)), clock)
    assert connection is not None and not connection.handshakeDone
    [event] = log.events()
    assert event["tls"]["failure"] == "alpn_mismatch"
    assert event["tls"]["detail"]
    assert "version" not in event["tls"]


@pytest.mark.usefixtures("tlsRecordPath")
def test_notTLSInEvent(dev: DevelopmentSet) -> None:
    """
    Plain text sent to a TLS service shows in its connection event as the not_tls failure.
    """
    limiter, log, _ = limiterWithLog(tls=TLSOptions(certificate=dev.server, private_key=dev.serverKey))
    connection = connect(limiter, IPv4Address("TCP", "127.0.0.9", 4444))
    assert connection is not None
    connection.receive(b"GET / HTTP/1.0\r\n\r\n")
    assert connection.finishClose()
    [event] = log.events()
    assert event["peer"] == "127.0.0.9:4444"
    assert event["tls"]["failure"] == "not_tls"


def test_specDefaultKeepsOldConstructionsWorking() -> None:
    """
    A ServiceSpec built without events (as before the key existed) keeps the default ring size.
    """
    spec = ServiceSpec(
        name="s",
        plugin=None,
        listen=(),
        enabled=True,
        max_connections=1,
        idle_timeout=0,
        framing=None,
        max_frame=None,
        options=None,
    )
    assert spec.events == 1000
