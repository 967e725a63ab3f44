"""
The proxy's datagrams (C{netd_plugins.proxy.datagram}) behind the core's
datagram listener, on fake UDP ports and a fake clock: a session per client,
forwarding both ways, expiry, the bound and its eviction, answers from the
wrong source, loops, the service's datagram faults each way, and the config.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, capturedLogs

from netd.config.options import ConfigError, InvalidValue
from netd.config.spec import parseConfig
from netd.datagram.listener import DatagramListener
from netd.events import EventLog
from netd.interfaces import PluginContext
from netd.metrics import Counters
from netd.registry import discoverPlugins
from netd.testing.memory import FakeUDPPort, UDPMemoryReactorClock, faultsFor
from netd_plugins.proxy import ProxyHandler, ProxyOptions, plugin
from netd_plugins.proxy.datagram import DatagramUpstream, Session, SessionSources

UPSTREAM = ("127.0.0.1", 5300)
ALICE = ("192.0.2.7", 40000)
BOB = ("192.0.2.8", 40001)
CAROL = ("192.0.2.9", 40002)
LISTEN_PORT = 5353


def writtenBy(protocol: Any) -> list[tuple[bytes, Any]]:
    """
    The datagrams a protocol on a fake UDP port has written, as (datagram, address).
    """
    written: list[tuple[bytes, Any]] = protocol.transport.written
    return written


class Proxying:
    """
    A proxy service's handler behind a core L{DatagramListener} (with the
    service's datagram faults) on a fake UDP port of a fake reactor.
    """

    def __init__(
        self,
        faults: list[dict[str, Any]] | None = None,
        *,
        upstream: str = "udp:127.0.0.1:5300",
        timeout: float = 60.0,
        maxSessions: int = 1024,
        sources: SessionSources | None = None,
        reactor: UDPMemoryReactorClock | None = None,
    ) -> None:
        self.reactor = UDPMemoryReactorClock() if reactor is None else reactor
        self.counters = Counters()
        self.events = EventLog(100, self.reactor)
        self.log = Logger(namespace="test.proxy.udp")
        options = ProxyOptions(
            udp_upstream=DatagramUpstream.fromConfig(upstream),
            udp_session_timeout=timeout,
            udp_max_sessions=maxSessions,
        )
        context = PluginContext(self.reactor, self.log, "p", self.counters, self.events)
        self.handler: ProxyHandler = plugin.build(options, context)
        assert self.handler.sessions is not None
        self.sessions = self.handler.sessions
        if sources is not None:
            self.sessions.sources = sources
        self.faults = faultsFor(faults or [], streams=False, framing=None, counters=self.counters, events=self.events)
        self.listener = DatagramListener(self.handler, self.counters, faults=self.faults.datagrams, clock=self.reactor)
        self.port: FakeUDPPort = self.reactor.listenUDP(LISTEN_PORT + len(self.reactor.udpPorts), self.listener)
        self.handler.startService()

    def fromClient(self, datagram: bytes, peer: tuple[str, int] = ALICE) -> None:
        """
        A client sends a datagram to the proxy's listener.
        """
        self.listener.datagramReceived(datagram, peer)

    def session(self, peer: tuple[str, int] = ALICE) -> Session:
        """
        The session of C{peer}.
        """
        return self.sessions.sessions[(peer, self.listener)]

    def toUpstream(self, peer: tuple[str, int] = ALICE) -> list[tuple[bytes, Any]]:
        """
        What the session socket of C{peer} has sent, emptied.
        """
        written: list[tuple[bytes, Any]] = writtenBy(self.session(peer))
        sent = list(written)
        written.clear()
        return sent

    def fromUpstream(self, datagram: bytes, peer: tuple[str, int] = ALICE, source: tuple[str, int] = UPSTREAM) -> None:
        """
        A datagram arrives on the session socket of C{peer} from C{source}.
        """
        self.session(peer).datagramReceived(datagram, source)

    def toClients(self) -> list[tuple[bytes, Any]]:
        """
        What the listener has sent to clients, emptied.
        """
        written: list[tuple[bytes, Any]] = writtenBy(self.listener)
        sent = list(written)
        written.clear()
        return sent

    def sessionEvents(self) -> list[dict[str, Any]]:
        """
        The C{udp_session} events recorded.
        """
        return self.events.events(kind="udp_session")


def test_forwardsBothWays() -> None:
    """
    A client's datagram goes to the upstream from a session socket bound on loopback, and the upstream's answer comes back to that client from the listener, counted each way.
    """
    proxy = Proxying()
    proxy.fromClient(b"query")
    session = proxy.session()
    assert session.port.interface == "127.0.0.1"
    assert proxy.toUpstream() == [(b"query", UPSTREAM)]
    proxy.fromUpstream(b"answer")
    assert proxy.toClients() == [(b"answer", ALICE)]
    assert proxy.counters["datagrams_to_upstream"] == 1
    assert proxy.counters["datagrams_from_upstream"] == 1
    assert proxy.counters["udp_sessions_opened"] == 1
    assert proxy.counters["datagrams_sent"] == 1


def test_oneSessionPerClient() -> None:
    """
    Each client address gets a socket of its own, reused for its later datagrams, and each socket's answers go to its client alone.
    """
    proxy = Proxying()
    proxy.fromClient(b"a1", ALICE)
    proxy.fromClient(b"b1", BOB)
    proxy.fromClient(b"a2", ALICE)
    assert proxy.session(ALICE) is not proxy.session(BOB)
    assert proxy.session(ALICE).port.port != proxy.session(BOB).port.port
    assert [d for d, _ in proxy.toUpstream(ALICE)] == [b"a1", b"a2"]
    assert [d for d, _ in proxy.toUpstream(BOB)] == [b"b1"]
    proxy.fromUpstream(b"for bob", BOB)
    proxy.fromUpstream(b"for alice", ALICE)
    assert proxy.toClients() == [(b"for bob", BOB), (b"for alice", ALICE)]
    assert proxy.counters["udp_sessions_opened"] == 2
    assert proxy.counters.gauges["udp_sessions"][0]() == 2


def test_sameAddressOnTwoListenersIsTwoSessions() -> None:
    """
    A client address seen on two listeners of the service has a session on each, and each answers through its own listener.
    """
    proxy = Proxying()
    other = DatagramListener(proxy.handler, proxy.counters)
    proxy.reactor.listenUDP(LISTEN_PORT + 100, other)
    proxy.fromClient(b"one")
    other.datagramReceived(b"two", ALICE)
    assert len(proxy.sessions.sessions) == 2
    proxy.sessions.sessions[(ALICE, other)].datagramReceived(b"back", UPSTREAM)
    assert writtenBy(other) == [(b"back", ALICE)]
    assert proxy.toClients() == []


def test_ipv6UpstreamBindsItsFamily() -> None:
    """
    An IPv6 loopback upstream is reached from a socket bound to ::1, a remote IPv4 one from the IPv4 wildcard.
    """
    proxy = Proxying(upstream="udp:[::1]:53")
    proxy.fromClient(b"q")
    assert proxy.session().port.interface == "::1"
    assert proxy.toUpstream() == [(b"q", ("::1", 53))]
    remote = Proxying(upstream="udp:198.51.100.53:53")
    remote.fromClient(b"q")
    assert remote.session().port.interface == "0.0.0.0"


def test_answerFromAnotherSourceIsDropped() -> None:
    """
    A datagram on a session socket from anywhere but the upstream's address (another host, or the upstream's host on another port) is dropped, counted, and not sent to the client.
    """
    proxy = Proxying()
    proxy.fromClient(b"q")
    proxy.fromUpstream(b"forged", source=("203.0.113.66", 5300))
    proxy.fromUpstream(b"forged", source=("127.0.0.1", 5301))
    assert proxy.toClients() == []
    assert proxy.counters["datagrams_from_wrong_source"] == 2
    assert proxy.counters["datagrams_from_upstream"] == 0


def test_sessionExpiresWhenIdle() -> None:
    """
    A session without a datagram either way for udp_session_timeout seconds has its socket closed, counted and recorded as expired; the upstream's answers keep it open as the client's datagrams do.
    """
    proxy = Proxying(timeout=30)
    proxy.fromClient(b"q")
    port = proxy.session().port
    proxy.reactor.advance(20)
    proxy.fromUpstream(b"a")
    proxy.reactor.advance(20)
    assert port.listening
    proxy.reactor.advance(10)
    assert not port.listening
    assert proxy.sessions.sessions == {}
    assert proxy.counters["udp_sessions_expired"] == 1
    [event] = proxy.sessionEvents()
    assert event["ended"] == "expired"
    assert (event["peer"], event["upstream"]) == ("192.0.2.7:40000", "udp:127.0.0.1:5300")
    assert (event["datagrams_to_upstream"], event["datagrams_from_upstream"]) == (1, 1)
    assert (event["bytes_to_upstream"], event["bytes_from_upstream"]) == (1, 1)
    assert proxy.reactor.getDelayedCalls() == []


def test_expiryOneTimerOldestFirst() -> None:
    """
    Sessions expire one by one in the order they went idle, from a single timer, and a client that comes back after its session expired gets a new one.
    """
    proxy = Proxying(timeout=10)
    proxy.fromClient(b"a", ALICE)
    proxy.reactor.advance(4)
    proxy.fromClient(b"b", BOB)
    assert len(proxy.reactor.getDelayedCalls()) == 1
    proxy.reactor.advance(6)
    assert list(proxy.sessions.sessions) == [(BOB, proxy.listener)]
    proxy.reactor.advance(4)
    assert proxy.sessions.sessions == {}
    proxy.fromClient(b"again", ALICE)
    assert proxy.counters["udp_sessions_opened"] == 3
    assert proxy.counters["udp_sessions_expired"] == 2


def test_atTheBoundTheLeastRecentlyActiveIsEvicted() -> None:
    """
    At udp_max_sessions, a new client closes the session least recently active either way (not the oldest opened), counted and recorded as evicted.
    """
    proxy = Proxying(maxSessions=2)
    proxy.fromClient(b"a", ALICE)
    proxy.fromClient(b"b", BOB)
    alicePort = proxy.session(ALICE).port
    bobPort = proxy.session(BOB).port
    proxy.fromUpstream(b"answer", ALICE)
    proxy.fromClient(b"c", CAROL)
    assert not bobPort.listening and alicePort.listening
    assert {peer for peer, _ in proxy.sessions.sessions} == {ALICE, CAROL}
    assert proxy.counters["udp_sessions_evicted"] == 1
    assert [e["ended"] for e in proxy.sessionEvents()] == ["evicted"]
    assert proxy.sessionEvents()[0]["peer"] == "192.0.2.8:40001"


def test_stopClosesEverySession() -> None:
    """
    Stopping the service closes every session's socket, records each as stopped, and cancels the expiry timer.
    """
    proxy = Proxying()
    proxy.fromClient(b"a", ALICE)
    proxy.fromClient(b"b", BOB)
    ports = [proxy.session(ALICE).port, proxy.session(BOB).port]
    proxy.handler.stopService()
    assert not any(port.listening for port in ports)
    assert proxy.sessions.sessions == {}
    assert [e["ended"] for e in proxy.sessionEvents()] == ["stopped", "stopped"]
    assert proxy.reactor.getDelayedCalls() == []


def test_selfLoopIsDropped() -> None:
    """
    A proxy whose upstream is its own listener gets its session socket's datagram back as a new client's: it is dropped and counted, not forwarded again.
    """
    sources = SessionSources()
    proxy = Proxying(sources=sources)
    proxy.fromClient(b"q")
    looped = proxy.session().source
    assert looped == ("127.0.0.1", proxy.session().port.port)
    proxy.fromClient(b"q", looped)
    assert proxy.counters["udp_loops_dropped"] == 1
    assert len(proxy.sessions.sessions) == 1


def test_loopThroughAnotherProxyIsDroppedAChainIsNot() -> None:
    """
    Proxy A forwarding to proxy B is a chain that works; B forwarding back to A is a loop, dropped at A.
    """
    sources = SessionSources()
    reactor = UDPMemoryReactorClock()
    first = Proxying(sources=sources, reactor=reactor)
    second = Proxying(sources=sources, reactor=reactor)
    first.fromClient(b"q")
    fromFirst = first.session().source
    assert fromFirst is not None
    second.fromClient(b"q", fromFirst)
    assert second.counters["udp_loops_dropped"] == 0
    assert second.toUpstream(fromFirst) == [(b"q", UPSTREAM)]
    fromSecond = second.session(fromFirst).source
    assert fromSecond is not None
    first.fromClient(b"q", fromSecond)
    assert first.counters["udp_loops_dropped"] == 1
    first.handler.stopService()
    second.handler.stopService()
    assert sources == {}


def test_socketThatCannotOpenDropsTheDatagram(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    When no session socket can be bound (out of descriptors), the datagram is dropped and counted, a warning logged once, and the next client that can bind gets its session.
    """
    proxy = Proxying()
    listen = proxy.reactor.listenUDP

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise CannotListenError("127.0.0.1", 0, OSError(24, "Too many open files"))

    monkeypatch.setattr(proxy.reactor, "listenUDP", refuse)
    with capturedLogs() as events:
        proxy.fromClient(b"a", ALICE)
        proxy.fromClient(b"b", BOB)
    assert proxy.counters["udp_session_failures"] == 2
    assert [e.get("event") for e in events] == ["udp_session_failed"]
    assert proxy.sessions.sessions == {}
    monkeypatch.setattr(proxy.reactor, "listenUDP", listen)
    proxy.fromClient(b"c", CAROL)
    assert proxy.toUpstream(CAROL) == [(b"c", UPSTREAM)]


def test_sendFailureIsCounted() -> None:
    """
    A datagram the kernel refuses to send upstream is dropped and counted, and the session stays.
    """
    proxy = Proxying()
    proxy.fromClient(b"a")

    def refuse(datagram: bytes, addr: Any) -> None:
        raise OSError(105, "No buffer space available")

    proxy.session()._send = refuse
    proxy.fromClient(b"b")
    assert proxy.counters["datagrams_to_upstream"] == 1
    assert proxy.counters["datagrams_to_upstream_failed"] == 1
    assert len(proxy.sessions.sessions) == 1


def test_dropFromClientNeverReachesTheUpstream() -> None:
    """
    A from_client drop acts before the proxy: the upstream never sees the datagram and no session is opened for it.
    """
    proxy = Proxying([{"type": "drop", "direction": "from_client", "first": 1}])
    proxy.fromClient(b"lost")
    assert proxy.sessions.sessions == {}
    proxy.fromClient(b"kept")
    assert proxy.toUpstream() == [(b"kept", UPSTREAM)]


def test_toClientFaultsActOnTheUpstreamsAnswers() -> None:
    """
    to_client faults act on the upstream's answers: truncated, duplicated, then dropped, while what goes upstream is untouched.
    """
    proxy = Proxying(
        [
            {"type": "truncate", "bytes": 3, "direction": "to_client", "first": 1},
            {"type": "drop", "direction": "to_client", "every": 3},
            {"type": "duplicate", "copies": 1, "direction": "to_client", "every": 2},
        ]
    )
    proxy.fromClient(b"question")
    assert proxy.toUpstream() == [(b"question", UPSTREAM)]
    proxy.fromUpstream(b"answer")
    assert proxy.toClients() == [(b"ans", ALICE)]
    proxy.fromUpstream(b"second")
    assert proxy.toClients() == [(b"second", ALICE), (b"second", ALICE)]
    proxy.fromUpstream(b"third")
    assert proxy.toClients() == []


def test_delayAndReorderEachWay() -> None:
    """
    A from_client delay holds the client's datagram before it goes upstream; a to_client reorder lets the second answer overtake the first.
    """
    proxy = Proxying(
        [
            {"type": "delay", "ms": 200, "direction": "from_client"},
            {"type": "reorder", "direction": "to_client", "first": 1, "wait": 500},
        ]
    )
    proxy.fromClient(b"q")
    assert proxy.sessions.sessions == {}
    proxy.reactor.advance(0.2)
    assert proxy.toUpstream() == [(b"q", UPSTREAM)]
    proxy.fromUpstream(b"first")
    proxy.fromUpstream(b"second")
    assert proxy.toClients() == [(b"second", ALICE), (b"first", ALICE)]


def proxyConfig(listen: str, keys: str) -> Any:
    """
    A config of one proxy service listening on C{listen} with C{keys}.
    """
    text = f'[[services]]\nname = "p"\nplugin = "proxy"\nlisten = {listen}\n{keys}\n'
    return parseConfig(tomllib.loads(text), "p.toml", discoverPlugins())


def test_dnsOnTcpAndUdpInOneService() -> None:
    """
    One service proxies DNS both ways: its streams to upstream, its datagrams to udp_upstream, with the session defaults of 60 seconds and 1024 sessions.
    """
    config = proxyConfig(
        '["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]',
        'upstream = "tcp:127.0.0.1:53"\nudp_upstream = "udp:127.0.0.1:53"',
    )
    options = config.services[0].options
    assert options.udp_upstream == DatagramUpstream("127.0.0.1", 53)
    assert (options.udp_session_timeout, options.udp_max_sessions) == (60.0, 1024)
    assert config.toConfig()["services"][0]["udp_upstream"] == "udp:127.0.0.1:53"


def test_udpOnlyServiceNeedsNoStreamUpstream() -> None:
    """
    A service with only udp: listeners needs udp_upstream alone.
    """
    config = proxyConfig('["udp:0:interface=127.0.0.1"]', 'udp_upstream = "udp:[::1]:5353"')
    assert config.services[0].options.upstream is None
    assert str(config.services[0].options.udp_upstream) == "udp:[::1]:5353"


@pytest.mark.parametrize(
    "listen, keys, expected",
    [
        ('["udp:0"]', "", "services[0].udp_upstream: missing; the service has a udp: listener"),
        ('["udp:0", "tcp:0"]', 'udp_upstream = "udp:127.0.0.1:53"', "services[0].upstream: missing"),
        ('["tcp:0"]', 'upstream = "udp:127.0.0.1:53"', "datagrams go to udp_upstream"),
        ('["udp:0"]', 'udp_upstream = "tcp:127.0.0.1:53"', "services[0].udp_upstream: 'tcp:127.0.0.1:53' is not"),
        ('["udp:0"]', 'udp_upstream = "udp:localhost:53"', "'localhost' is not an IP address"),
        ('["udp:0"]', 'udp_upstream = "udp:::1:53"', "an IPv6 address goes in brackets"),
        ('["udp:0"]', 'udp_upstream = "udp:127.0.0.1"', "has no port"),
        ('["udp:0"]', 'udp_upstream = "udp:127.0.0.1:0"', "is not a number from 1 to 65535"),
        ('["udp:0"]', 'udp_upstream = "udp:127.0.0.1:53"\nudp_session_timeout = 0', "services[0].udp_session_timeout"),
        ('["udp:0"]', 'udp_upstream = "udp:127.0.0.1:53"\nudp_max_sessions = 0', "services[0].udp_max_sessions"),
    ],
)
def test_badKeysNamedByPath(listen: str, keys: str, expected: str) -> None:
    """
    A listener without its upstream, a malformed udp_upstream and session limits out of range are config errors at their key paths.
    """
    with pytest.raises(ConfigError) as info:
        proxyConfig(listen, keys)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("udp:127.0.0.1:53", "127.0.0.1", 53),
        ("udp:[2001:DB8:0::1]:5353", "2001:db8::1", 5353),
        ("udp:[::1]:1", "::1", 1),
    ],
)
def test_upstreamInCanonicalForm(text: str, host: str, port: int) -> None:
    """
    The upstream's host is kept in the canonical form a socket reports a source in, and written back bracketed.
    """
    upstream = DatagramUpstream.fromConfig(text)
    assert (upstream.host, upstream.port) == (host, port)
    assert DatagramUpstream.fromConfig(upstream.toConfig()) == upstream


def test_upstreamNotAString() -> None:
    """
    A udp_upstream that is not a string is refused with what is expected.
    """
    with pytest.raises(InvalidValue, match="expected a UDP upstream"):
        DatagramUpstream.fromConfig(53)
