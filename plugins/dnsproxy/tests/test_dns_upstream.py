"""
Forwarding to upstream resolvers (C{netd_plugins.dnsproxy.upstream},
C{transports} and C{resolver}): the upstream strings and resolv.conf; UDP
with fresh IDs and spoofing resistance; TCP and TLS connections (pipelining,
idle close, failover, certificate checks); timeouts, the deadline,
SERVFAIL/REFUSED failover and health checks.
All in memory with a fake clock, plus one real-socket test against an
in-process twisted.names server.
"""

from __future__ import annotations

import datetime
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent
from twisted.names import dns, server
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from netd.config.options import InvalidValue, Problem, decodeTable, option
from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.stream.framing import FRAMINGS, FramedFactory
from netd.testing.memory import FakeUDPPort, UDPMemoryReactorClock
from netd.tls.keys import TLSSetupError
from netd_plugins.dnsproxy import resolver as resolverModule
from netd_plugins.dnsproxy.resolver import PooledSystemRandom, UpstreamFailure, UpstreamResolver
from netd_plugins.dnsproxy.upstream import SYSTEM, Upstream, expandUpstreams, systemUpstreams
from netd_plugins.dnsproxy.wire import Question, parseQuestion

from .dnsmessages import aRecord, makeQuery, parse, replyTo, rr

CLIENT_ID = 0x1234


# Messages.


def clientQuery(name: str = "example.com", qtype: int = dns.A, queryID: int = CLIENT_ID) -> tuple[bytes, Question]:
    """
    A client's query as wire bytes, and its question as the handler reads it.
    """
    data = makeQuery(name, qtype, id=queryID)
    return data, parseQuestion(data)


def answerTo(
    sent: bytes,
    *,
    rcode: int = dns.OK,
    trunc: bool = False,
    address: str = "192.0.2.1",
    name: str | None = None,
    queryID: int | None = None,
) -> bytes:
    """
    An upstream's answer to the query bytes it was sent (an A record unless
    C{rcode} says otherwise); C{name} and C{queryID} make a mismatched one.
    """
    records = [aRecord(name or parse(sent).queries[0].name.name, address, ttl=60)] if rcode == dns.OK else []
    return replyTo(sent, *records, rCode=rcode, trunc=trunc, name=name, id=queryID)


def answerAddress(data: bytes) -> str:
    """
    The address of the A record an answer carries.
    """
    return parse(data).answers[0].payload.dottedQuad()  # type: ignore[no-any-return]


def messageID(data: bytes) -> int:
    """
    The ID of a message.
    """
    return int.from_bytes(data[:2], "big")


def rcodeOf(data: bytes) -> int:
    """
    The rcode of a message.
    """
    return data[3] & 0x0F


# The in-memory world.


class ScriptedRandom(random.Random):
    """
    A random source whose IDs come from a script (then from a seeded generator),
    which always picks the first socket, and whose random bytes (the 0x20
    case flips) are all C{caseByte}: 0 keeps the client's case, 0xFF flips
    every letter.
    """

    def __init__(self, ids: list[int], caseByte: int = 0) -> None:
        super().__init__(1)
        self.ids = list(ids)
        self.caseByte = caseByte

    def getrandbits(self, k: int) -> int:
        return self.ids.pop(0) if self.ids else super().getrandbits(k)

    def choice(self, seq: Any) -> Any:
        return seq[0]

    def randbytes(self, n: int) -> bytes:
        return bytes([self.caseByte]) * n


def outcome(d: Deferred[Any]) -> list[Any]:
    """
    A list that gets the Deferred's result (or Failure) when it fires.
    """
    box: list[Any] = []
    d.addBoth(box.append)
    return box


@attrs.define
class TCPPeer:
    """
    The upstream's end of an in-memory TCP connection the resolver opened.
    """

    host: str
    port: int
    protocol: Any
    transport: StringTransport

    def frames(self) -> list[bytes]:
        """
        The u16-framed messages the resolver wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        frames = []
        while data:
            (size,) = struct.unpack("!H", data[:2])
            frames.append(data[2 : 2 + size])
            data = data[2 + size :]
        return frames

    def send(self, message: bytes) -> None:
        """
        Send one framed message to the resolver.
        """
        self.protocol.dataReceived(struct.pack("!H", len(message)) + message)

    def lose(self) -> None:
        """
        The connection is gone.
        """
        self.protocol.connectionLost(Failure(ConnectionDone("closed")))


class _KeepingReactor(UDPMemoryReactorClock):
    """
    A fake UDP-capable reactor that keeps each port's recording transport
    (a protocol forgets its transport when its port stops listening, and the
    resolver closes the sockets it replaces).
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpTransports: dict[int, Any] = {}

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDPPort:
        bound = super().listenUDP(port, protocol, interface, maxPacketSize)
        self.udpTransports[bound.port] = protocol.transport
        return bound


class Harness:
    """
    A resolver on a fake UDP-capable reactor, with its counters and log events.
    """

    def __init__(self, upstreams: list[str], **options: Any) -> None:
        self.reactor = _KeepingReactor()
        self.counters = Counters()
        self.events: list[LogEvent] = []
        settings: dict[str, Any] = dict(
            timeout=2.0, deadline=5.0, maxFails=3, healthInterval=10.0, caBundle=None, udpSockets=4, idleTimeout=10.0
        )
        settings.update(options)
        self.resolver = UpstreamResolver(
            self.reactor,
            [Upstream.fromConfig(u) for u in upstreams],
            counters=self.counters,
            log=Logger(namespace="test_dns_upstream", observer=self.events.append),
            **settings,
        )
        self.taken: dict[int, int] = {}

    def resolve(self, name: str = "example.com", qtype: int = dns.A) -> tuple[bytes, list[Any]]:
        """
        Resolve a client query; return it and the box its outcome lands in.
        """
        query, question = clientQuery(name, qtype)
        return query, outcome(self.resolver.resolve(query, question))

    def takeUDP(self) -> list[tuple[FakeUDPPort, bytes, tuple[str, int]]]:
        """
        The datagrams sent since the last call, with the port each left from.
        """
        sent = []
        for number, port in sorted(self.reactor.udpPorts.items()):
            written = self.reactor.udpTransports[number].written
            sent.extend((port, datagram, addr) for datagram, addr in written[self.taken.get(number, 0) :])
            self.taken[number] = len(written)
        return sent

    def takeOneUDP(self) -> tuple[FakeUDPPort, bytes, tuple[str, int]]:
        """
        The one datagram sent since the last call.
        """
        sent = self.takeUDP()
        assert len(sent) == 1, sent
        return sent[0]

    def acceptTCP(self, index: int = -1) -> TCPPeer:
        """
        Complete a TCP connection the resolver started.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return TCPPeer(host, port, protocol, transport)

    def refuseTCP(self, index: int = -1) -> None:
        """
        Fail a TCP connection the resolver started.
        """
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(ConnectionRefusedError()))

    def logged(self, level: LogLevel) -> list[str]:
        """
        The formatted log events at C{level}.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] == level]


def reply(port: FakeUDPPort, datagram: bytes, source: tuple[str, int]) -> None:
    """
    Deliver a datagram to a resolver socket as if C{source} had sent it.
    """
    port.protocol.datagramReceived(datagram, source)


# Upstream strings.


@pytest.mark.parametrize(
    "text, expected",
    [
        ("udp:192.0.2.1", Upstream("udp", "192.0.2.1", 53)),
        ("udp:192.0.2.1:5353", Upstream("udp", "192.0.2.1", 5353)),
        ("tcp:192.0.2.1", Upstream("tcp", "192.0.2.1", 53)),
        ("tls:192.0.2.1:name=dns.example", Upstream("tls", "192.0.2.1", 853, "dns.example")),
        ("tls:192.0.2.1:8853:name=dns.example", Upstream("tls", "192.0.2.1", 8853, "dns.example")),
        ("udp:[::1]", Upstream("udp", "::1", 53)),
        ("udp:[2001:DB8:0::1]:5353", Upstream("udp", "2001:db8::1", 5353)),
        ("tls:[2001:db8::1]:name=dns.example", Upstream("tls", "2001:db8::1", 853, "dns.example")),
        ("system", SYSTEM),
    ],
)
def test_fromConfigAccepts(text: str, expected: Upstream) -> None:
    """
    Each upstream spelling decodes to its transport, canonical address, port (default per transport) and server name.
    """
    assert Upstream.fromConfig(text) == expected


def test_systemIsAPlaceholder() -> None:
    """
    The word system decodes to the placeholder with isSystem set, which writes back as system.
    """
    upstream = Upstream.fromConfig("system")
    assert upstream.isSystem
    assert upstream.toConfig() == "system"
    assert not Upstream.fromConfig("udp:192.0.2.1").isSystem


@pytest.mark.parametrize(
    "value, message",
    [
        (53, "expected an upstream: 'udp:HOST[:PORT]'"),
        ("", "is not an upstream; expected 'udp:HOST[:PORT]'"),
        ("8.8.8.8", "'8.8.8.8' has no transport; write udp:8.8.8.8"),
        ("::1", "has no transport; write udp:[::1]"),
        ("sytem", "'sytem' is not an upstream; did you mean 'system'? Expected 'udp:HOST[:PORT]'"),
        ("dns:192.0.2.1", "unknown transport 'dns'; expected udp:, tcp:, tls: or the word system"),
        ("ud:192.0.2.1", "unknown transport 'ud'; did you mean 'udp'? Expected udp:, tcp:, tls: or the word system"),
        ("udp:", "missing host; expected an IP address"),
        ("udp:dns.google", "host 'dns.google' is not an IP address"),
        ("udp:192.0.2.1:0", "port 0 is out of range; expected 1 to 65535"),
        ("udp:192.0.2.1:70000", "port 70000 is out of range"),
        ("udp:192.0.2.1:x", "port 'x' is not a number"),
        ("udp:192.0.2.1:53:extra", "expected HOST[:PORT] after the transport, got '192.0.2.1:53:extra'"),
        ("udp:::1", "write IPv6 addresses in brackets, udp:[::1]"),
        ("tcp:2001:db8::1:53", "write IPv6 addresses in brackets, tcp:[2001:db8::1:53]"),
        ("udp:[::1", "'[' without a closing ']'"),
        ("udp:[192.0.2.1]", "brackets are for IPv6 only"),
        ("udp:[::1]x", "unexpected 'x' after ']'"),
        ("udp:[fe80::1%eth0]", "zone ids (%eth0) are not supported"),
        ("tls:192.0.2.1", "tls upstreams need the name their certificate is checked against"),
        ("tls:192.0.2.1:853", "tls:HOST[:PORT]:name=SERVERNAME"),
        ("tls:192.0.2.1:name=", "name= is empty"),
        (
            "tls:192.0.2.1:nme=dns.example",
            "unknown option 'nme'; did you mean 'name'? The tls transport takes only name=",
        ),
        ("tls:192.0.2.1:port=1", "unknown option 'port'; the tls transport takes only name="),
        ("tls:192.0.2.1:name=a:name=b", "name= given twice"),
        ("udp:192.0.2.1:name=dns.example", "udp upstreams take no options"),
    ],
)
def test_fromConfigRefuses(value: object, message: str) -> None:
    """
    A malformed upstream is refused with InvalidValue saying what was given, what is wrong and what is expected.
    """
    with pytest.raises(InvalidValue) as caught:
        Upstream.fromConfig(value)
    assert message in str(caught.value)
    assert "?;" not in str(caught.value)
    if isinstance(value, str) and value:
        assert repr(value) in str(caught.value)


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("udp:192.0.2.1", "udp:192.0.2.1:53"),
        ("tcp:192.0.2.1:5353", "tcp:192.0.2.1:5353"),
        ("tls:192.0.2.1:name=dns.example", "tls:192.0.2.1:853:name=dns.example"),
        ("udp:[2001:DB8::0:1]", "udp:[2001:db8::1]:53"),
        ("system", "system"),
    ],
)
def test_toConfigRoundTrips(text: str, canonical: str) -> None:
    """
    toConfig writes the canonical string (port always given), and it decodes back to the same upstream.
    """
    upstream = Upstream.fromConfig(text)
    assert upstream.toConfig() == canonical
    assert str(upstream) == canonical
    assert Upstream.fromConfig(canonical) == upstream


@attrs.frozen
class _Schema:
    """
    A schema with an upstreams key, as the plugin's options declare it.
    """

    upstreams: tuple[Upstream, ...] = option(help="Where to forward.")


def test_upstreamsDecodeInASchemaWithKeyPaths() -> None:
    """
    Through the config decoder, a bad upstream is reported at its key path with the upstream's own message.
    """
    problems: list[Problem] = []
    decoded = decodeTable(
        _Schema, {"upstreams": ["udp:192.0.2.1", "system", "tls:192.0.2.2"]}, ("services", 1), problems
    )
    assert decoded is None
    assert [p.render("netd.toml") for p in problems] == [
        "netd.toml: services[1].upstreams[2]: 'tls:192.0.2.2': tls upstreams need the name their certificate "
        "is checked against: tls:HOST[:PORT]:name=SERVERNAME"
    ]
    good = decodeTable(_Schema, {"upstreams": ["udp:192.0.2.1", "system"]}, (), [])
    assert good == _Schema(upstreams=(Upstream("udp", "192.0.2.1", 53), SYSTEM))


# resolv.conf.


def test_systemUpstreamsReadsNameservers(tmp_path: Path) -> None:
    """
    systemUpstreams turns each nameserver line into a UDP upstream on port 53, in order, without duplicates, comments, junk or zone ids.
    """
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# generated\n"
        "search example.com\n"
        "nameserver 192.0.2.53   # the router\n"
        "nameserver 2001:db8::53\n"
        "nameserver fe80::1%eth0\n"
        "; nameserver 192.0.2.99\n"
        "nameserver not-an-address\n"
        "nameserver\n"
        "nameserver 192.0.2.53\n"
        "options edns0 trust-ad\n"
    )
    assert systemUpstreams(str(path)) == [
        Upstream("udp", "192.0.2.53", 53),
        Upstream("udp", "2001:db8::53", 53),
        Upstream("udp", "fe80::1", 53),
    ]


def test_systemUpstreamsWithoutNameserversIsEmpty(tmp_path: Path) -> None:
    """
    A resolv.conf without nameserver lines, or no file at all, gives no upstreams.
    """
    path = tmp_path / "resolv.conf"
    path.write_text("search example.com\n")
    assert systemUpstreams(str(path)) == []
    assert systemUpstreams(str(tmp_path / "missing")) == []


def test_expandUpstreamsReplacesSystem(tmp_path: Path) -> None:
    """
    expandUpstreams puts the resolv.conf nameservers where system was, keeping order and each upstream once.
    """
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.1\nnameserver 192.0.2.9\n")
    configured = [Upstream.fromConfig(u) for u in ["udp:192.0.2.1", "system", "tcp:192.0.2.1", "udp:192.0.2.9"]]
    assert expandUpstreams(configured, str(path)) == [
        Upstream("udp", "192.0.2.1", 53),
        Upstream("udp", "192.0.2.9", 53),
        Upstream("tcp", "192.0.2.1", 53),
    ]


def test_resolverRefusesTheSystemPlaceholder() -> None:
    """
    The resolver refuses an unexpanded system placeholder rather than forwarding to nowhere.
    """
    with pytest.raises(ValueError, match="expandUpstreams"):
        Harness(["system"])


def test_noUpstreamsFailsAtOnce() -> None:
    """
    With no upstreams (system expanded to nothing), a resolve fails with UpstreamFailure saying so.
    """
    harness = Harness([])
    _, box = harness.resolve()
    assert box[0].check(UpstreamFailure)
    assert "no upstreams are configured" in str(box[0].value)


# UDP.


def test_udpQueryUsesFreshIDAndRestoresClientID() -> None:
    """
    A UDP query goes to the upstream with a new random ID in place of the client's, and the answer comes back with the client's ID.
    """
    harness = Harness(["udp:192.0.2.53"])
    harness.resolver.random = ScriptedRandom([0xBEEF])
    query, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    assert addr == ("192.0.2.53", 53)
    assert messageID(sent) == 0xBEEF
    assert sent[2:] == query[2:]
    assert box == []
    reply(port, answerTo(sent, address="198.51.100.7"), addr)
    (answer,) = box
    assert messageID(answer) == CLIENT_ID
    assert answerAddress(answer) == "198.51.100.7"
    assert harness.counters["upstream_queries"] == 1
    assert harness.counters["upstream_answers"] == 1


def test_pooledRandomReadsTheKernelRarely(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The resolver's random source reads the kernel's random bytes 4 KiB at a time, draws IDs over all 16 bits and sockets evenly, and starts afresh after a fork.
    """
    reads: list[int] = []

    def urandom(count: int) -> bytes:
        reads.append(count)
        return random.Random(len(reads)).randbytes(count)

    monkeypatch.setattr(resolverModule.os, "urandom", urandom)
    resolverModule._POOL.drain()
    source = PooledSystemRandom()
    ids = [source.getrandbits(16) for _ in range(2000)]
    picks = [source.choice(range(8)) for _ in range(2000)]
    assert reads == [4096, 4096, 4096], "2,000 IDs of 2 bytes and 2,000 choices of 4"
    assert max(ids) > 0xF000 and min(ids) < 0x1000
    assert set(picks) == set(range(8))
    assert {source.choice("abc") for _ in range(200)} == set("abc")
    with pytest.raises(IndexError):
        source.choice([])
    assert 0 <= source.random() < 1 and source.getrandbits(0) == 0
    before = len(reads)
    resolverModule._POOL.drain()
    source.getrandbits(16)
    assert len(reads) == before + 1, "a drained pool (a forked child's) is read again"
    resolverModule._POOL.drain()


def test_answeredResolveLeavesNothingBehind() -> None:
    """
    Once a resolve is answered, its attempt's timeout is cancelled, nothing is outstanding, and the resolver no longer counts it as in progress.
    """
    harness = Harness(["udp:192.0.2.53"])
    _, box = harness.resolve()
    assert len(harness.reactor.getDelayedCalls()) == 1, "the attempt's timeout"
    assert len(harness.resolver.resolving) == 1
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent), addr)
    assert messageID(box[0]) == CLIENT_ID
    assert harness.reactor.getDelayedCalls() == []
    assert not harness.resolver.outstanding.keys
    assert not harness.resolver.resolving


def test_udpSocketsBoundPerScopeOnKernelPorts() -> None:
    """
    Sockets are opened lazily, udpSockets of them on port 0, bound to loopback for loopback upstreams and to the wildcard address for others.
    """
    harness = Harness(["udp:127.0.0.1:5353"], udpSockets=3)
    assert harness.reactor.udpPorts == {}
    harness.resolve()
    assert [p.interface for p in harness.reactor.udpPorts.values()] == ["127.0.0.1"] * 3
    for upstream, interface in [("udp:192.0.2.1", "0.0.0.0"), ("udp:[::1]", "::1"), ("udp:[2001:db8::1]", "::")]:
        before = set(harness.reactor.udpPorts)
        query, question = clientQuery()
        harness.resolver._udp.query(Upstream.fromConfig(upstream), query, question, question.name, False)
        added = [harness.reactor.udpPorts[n].interface for n in set(harness.reactor.udpPorts) - before]
        assert added == [interface] * 3


def test_udpIDsAreUniquePerSocket() -> None:
    """
    A random ID already outstanding on the chosen socket is drawn again.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=1)
    harness.resolver.random = ScriptedRandom([7, 7, 7, 9])
    harness.resolve("a.example")
    harness.resolve("b.example")
    assert [messageID(sent) for _, sent, _ in harness.takeUDP()] == [7, 9]


@pytest.mark.parametrize(
    "spoof",
    [
        pytest.param(lambda sent, addr: (answerTo(sent), (addr[0], addr[1] + 1)), id="wrong source port"),
        pytest.param(lambda sent, addr: (answerTo(sent), ("192.0.2.66", addr[1])), id="wrong source host"),
        pytest.param(lambda sent, addr: (answerTo(sent, queryID=messageID(sent) ^ 1), addr), id="wrong ID"),
        pytest.param(lambda sent, addr: (answerTo(sent, queryID=CLIENT_ID), addr), id="client's ID"),
        pytest.param(lambda sent, addr: (answerTo(sent, name="evil.example"), addr), id="wrong question"),
        pytest.param(lambda sent, addr: (sent, addr), id="not an answer (QR clear)"),
        pytest.param(lambda sent, addr: (answerTo(sent)[:20], addr), id="truncated message"),
        pytest.param(lambda sent, addr: (sent[:2], addr), id="two bytes"),
    ],
)
def test_udpSpoofedAnswersDropped(spoof: Any) -> None:
    """
    A datagram with the wrong source, ID or question (or malformed) is dropped and counted, and the real answer is still accepted.
    """
    harness = Harness(["udp:192.0.2.53"])
    harness.resolver.random = ScriptedRandom([0x0F0F])
    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    datagram, source = spoof(sent, addr)
    reply(port, datagram, source)
    assert box == []
    assert harness.counters["upstream_spoofed_dropped"] == 1
    reply(port, answerTo(sent, address="192.0.2.200"), addr)
    assert answerAddress(box[0]) == "192.0.2.200"
    reply(port, answerTo(sent), addr)
    assert harness.counters["upstream_spoofed_dropped"] == 2, "a second answer to a finished query is dropped too"


def test_udpAnswerOnAnotherSocketDropped() -> None:
    """
    An answer arriving on a socket other than the one the query left from is dropped.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=2)
    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    (other,) = [p for p in harness.reactor.udpPorts.values() if p is not port]
    reply(other, answerTo(sent), addr)
    assert box == []
    assert harness.counters["upstream_spoofed_dropped"] == 1


def test_isLoopedRecognisesOwnUpstreamQueries() -> None:
    """
    isLooped is true for a query carrying the ID and question of one of the resolver's outstanding upstream queries, and false otherwise.
    """
    harness = Harness(["udp:192.0.2.53"])
    query, _ = harness.resolve()
    _, sent, _ = harness.takeOneUDP()
    question = parseQuestion(sent)
    assert harness.resolver.isLooped(sent, question)
    assert not harness.resolver.isLooped(sent, clientQuery("other.example")[1])
    if messageID(sent) != CLIENT_ID:
        assert not harness.resolver.isLooped(query, question)
    assert harness.counters["upstream_loops_detected"] == 1
    harness.reactor.advance(5)
    assert not harness.resolver.isLooped(sent, question), "nothing is outstanding after the deadline"


# Timeouts, the deadline, failover.


def test_timeoutMovesToNextUpstream() -> None:
    """
    When the first upstream does not answer within the timeout, the query goes to the next, whose answer is returned.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], timeout=2.0)
    _, box = harness.resolve()
    (_, _, first) = harness.takeOneUDP()
    assert first == ("192.0.2.1", 53)
    harness.reactor.advance(1.999)
    assert harness.takeUDP() == []
    harness.reactor.advance(0.001)
    port, sent, second = harness.takeOneUDP()
    assert second == ("192.0.2.2", 53)
    harness.reactor.advance(0.25)
    reply(port, answerTo(sent), second)
    assert messageID(box[0]) == CLIENT_ID
    assert harness.counters["upstream_timeouts"] == 1
    assert harness.counters["upstream_answers"] == 1
    latency = harness.counters.histograms["upstream_latency_seconds"]
    assert (latency.count, latency.sum) == (1, pytest.approx(0.25))
    assert dict(latency.cumulative())[0.1] == 0 and dict(latency.cumulative())[0.5] == 1
    assert harness.resolver.health()[0] == {
        "upstream": "udp:192.0.2.1:53",
        "up": True,
        "consecutive_failures": 1,
        "last_error": "timed out after 2s",
    }


def test_allTimeOutFailsAtTheDeadline() -> None:
    """
    When no upstream answers, timed-out upstreams are retried while time remains and the resolve fails with UpstreamFailure exactly at the deadline.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], timeout=2.0, deadline=5.0)
    _, box = harness.resolve()
    sentTo = [harness.takeOneUDP()[2][0]]
    for _ in range(2):
        harness.reactor.advance(2)
        sentTo.append(harness.takeOneUDP()[2][0])
    assert sentTo == ["192.0.2.1", "192.0.2.2", "192.0.2.1"]
    harness.reactor.advance(0.999)
    assert box == []
    harness.reactor.advance(0.001)
    assert box[0].check(UpstreamFailure)
    message = str(box[0].value)
    assert "no upstream answered within the 5s deadline" in message
    assert "udp:192.0.2.1:53 (timed out after 2s)" in message
    assert "udp:192.0.2.2:53 (timed out after 2s)" in message
    assert "udp:192.0.2.1:53 (timed out after 1s)" in message
    assert harness.counters["upstream_timeouts"] == 3
    assert harness.reactor.getDelayedCalls() == []
    assert not harness.resolver.outstanding.keys


def test_errorsAreNotRetriedInALoop() -> None:
    """
    An upstream that fails outright (connection refused) is not tried again for the same query, so the resolve fails at once, not at the deadline.
    """
    harness = Harness(["tcp:192.0.2.1"], deadline=5.0)
    _, box = harness.resolve()
    harness.refuseTCP()
    assert box[0].check(UpstreamFailure)
    assert "every upstream failed; tried: tcp:192.0.2.1:53 (cannot connect: " in str(box[0].value)
    assert len(harness.reactor.tcpClients) == 1
    assert harness.counters["upstream_failures"] == 1


def test_servfailFromFirstAnswerFromSecond() -> None:
    """
    A SERVFAIL from the first upstream moves the query to the second, whose answer is returned; the first stays up.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], maxFails=1)
    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent, rcode=dns.ESERVER), addr)
    assert box == []
    port, sent, addr = harness.takeOneUDP()
    assert addr == ("192.0.2.2", 53)
    reply(port, answerTo(sent), addr)
    assert rcodeOf(box[0]) == dns.OK
    assert harness.counters["upstream_error_answers"] == 1
    assert harness.counters["upstream_answers"] == 2
    assert harness.resolver.health()[0]["up"] is True
    assert harness.resolver.health()[0]["last_error"] == "answered SERVFAIL"


def test_everyUpstreamRefusingReturnsTheLastRefusal() -> None:
    """
    When every upstream answers REFUSED or SERVFAIL, the last such answer is returned (with the client's ID), not a failure.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"])
    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent, rcode=dns.EREFUSED), addr)
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent, rcode=dns.ESERVER), addr)
    assert rcodeOf(box[0]) == dns.ESERVER
    assert messageID(box[0]) == CLIENT_ID
    assert harness.takeUDP() == []


def test_truncatedUDPAnswerRetriedOverTCP() -> None:
    """
    A UDP answer with TC set is asked again over TCP to the same upstream address, and the TCP answer is returned.
    """
    harness = Harness(["udp:192.0.2.53:5353"])
    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent, trunc=True), addr)
    assert box == []
    peer = harness.acceptTCP()
    assert (peer.host, peer.port) == ("192.0.2.53", 5353)
    (frame,) = peer.frames()
    peer.send(answerTo(frame, address="192.0.2.99"))
    assert answerAddress(box[0]) == "192.0.2.99"
    assert messageID(box[0]) == CLIENT_ID
    assert harness.counters["upstream_truncated"] == 1
    assert harness.counters["upstream_queries"] == 2


# TCP.


def test_tcpPipelinesQueriesAnsweredOutOfOrder() -> None:
    """
    Two queries share one TCP connection, are answered in reverse order and each gets its own answer; a third reuses the connection.
    """
    harness = Harness(["tcp:192.0.2.53"])
    _, first = harness.resolve("a.example")
    _, second = harness.resolve("b.example")
    assert len(harness.reactor.tcpClients) == 1
    peer = harness.acceptTCP()
    frameA, frameB = peer.frames()
    assert messageID(frameA) != messageID(frameB)
    peer.send(answerTo(frameB, address="192.0.2.2"))
    assert first == []
    assert answerAddress(second[0]) == "192.0.2.2"
    peer.send(answerTo(frameA, address="192.0.2.1"))
    assert answerAddress(first[0]) == "192.0.2.1"
    assert messageID(first[0]) == messageID(second[0]) == CLIENT_ID
    _, third = harness.resolve("c.example")
    (frameC,) = peer.frames()
    peer.send(answerTo(frameC))
    assert len(third) == 1
    assert len(harness.reactor.tcpClients) == 1


def test_tcpMismatchedAnswerDropped() -> None:
    """
    A TCP answer with an unknown ID or another question is dropped and counted, and the real answer is still accepted.
    """
    harness = Harness(["tcp:192.0.2.53"])
    _, box = harness.resolve()
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame, name="evil.example"))
    peer.send(answerTo(frame, queryID=messageID(frame) ^ 0xFF))
    peer.send(b"\x00")
    assert box == []
    assert harness.counters["upstream_spoofed_dropped"] == 3
    peer.send(answerTo(frame))
    assert len(box) == 1 and isinstance(box[0], bytes)


def test_tcpConnectionLostMidQueryFailsOver() -> None:
    """
    A TCP connection lost with a query outstanding fails that attempt, the next upstream answers, and the next query reconnects.
    """
    harness = Harness(["tcp:192.0.2.1", "udp:192.0.2.2"])
    _, box = harness.resolve()
    peer = harness.acceptTCP()
    assert len(peer.frames()) == 1
    peer.lose()
    port, sent, addr = harness.takeOneUDP()
    assert addr == ("192.0.2.2", 53)
    reply(port, answerTo(sent), addr)
    assert messageID(box[0]) == CLIENT_ID
    assert harness.counters["upstream_failures"] == 1
    assert harness.resolver.health()[0]["last_error"].startswith("connection lost: ")
    _, again = harness.resolve()
    assert len(harness.reactor.tcpClients) == 2
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame))
    assert len(again) == 1 and isinstance(again[0], bytes)


def test_tcpConnectionLostRetriedOnceOnANewConnection() -> None:
    """
    A lone TCP upstream whose connection is lost mid-query is asked again once on a new connection, but not a second time.
    """
    harness = Harness(["tcp:192.0.2.1"])
    _, box = harness.resolve()
    harness.acceptTCP().lose()
    assert box == []
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame))
    assert len(box) == 1 and isinstance(box[0], bytes)
    assert len(harness.reactor.tcpClients) == 2

    _, box = harness.resolve()
    peer.lose()
    harness.acceptTCP().lose()
    assert box[0].check(UpstreamFailure)
    assert str(box[0].value).count("connection lost") == 2
    assert len(harness.reactor.tcpClients) == 3, "the open connection, then one new one"


def test_tcpTimeoutWhileConnectingFailsOver() -> None:
    """
    A TCP connect that takes longer than the timeout fails the attempt over to the next upstream.
    """
    harness = Harness(["tcp:192.0.2.1", "udp:192.0.2.2"], timeout=2.0)
    _, box = harness.resolve()
    assert harness.reactor.tcpClients[0][3] == 2.0, "the connect itself is bounded by the timeout"
    harness.reactor.advance(2)
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent), addr)
    assert len(box) == 1 and isinstance(box[0], bytes)
    assert harness.counters["upstream_timeouts"] == 1


def test_idleTCPConnectionClosed() -> None:
    """
    A TCP connection with nothing outstanding is closed after idleTimeout seconds (not while a query waits), and reopened on demand.
    """
    harness = Harness(["tcp:192.0.2.53"], idleTimeout=1.0, timeout=2.0, deadline=3.0)
    _, box = harness.resolve()
    peer = harness.acceptTCP()
    harness.reactor.advance(1.5)
    assert not peer.transport.disconnecting, "a query is outstanding"
    (frame,) = peer.frames()
    peer.send(answerTo(frame))
    assert len(box) == 1
    harness.reactor.advance(0.999)
    assert not peer.transport.disconnecting
    harness.reactor.advance(0.001)
    assert peer.transport.disconnecting
    peer.lose()
    _, again = harness.resolve()
    assert len(harness.reactor.tcpClients) == 2
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame))
    assert len(again) == 1 and isinstance(again[0], bytes)


def test_queryAfterIdleCloseBeforeLostOpensNewConnection() -> None:
    """
    A query made after the idle close began (before the connection is gone) opens a new connection instead of using the closing one.
    """
    harness = Harness(["tcp:192.0.2.53"], idleTimeout=1.0)
    _, box = harness.resolve()
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame))
    harness.reactor.advance(1)
    assert peer.transport.disconnecting
    harness.resolve()
    assert peer.frames() == []
    assert len(harness.reactor.tcpClients) == 2


# Health.


def test_maxFailsMarksDownThenProbeBringsUp() -> None:
    """
    An upstream failing maxFails times in a row is marked down and skipped, probed with . NS every healthInterval, and up again after any answer.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], maxFails=2, timeout=1.0, healthInterval=10.0)
    harness.resolver.startService()
    for _ in range(2):
        _, box = harness.resolve()
        harness.reactor.advance(1)
        ((port, sent, addr),) = [s for s in harness.takeUDP() if s[2][0] == "192.0.2.2"]
        reply(port, answerTo(sent), addr)
        assert len(box) == 1
    assert harness.resolver.health()[0]["up"] is False
    assert harness.resolver.health()[0]["consecutive_failures"] == 2
    assert harness.counters["upstream_marked_down"] == 1
    (warning,) = harness.logged(LogLevel.warn)
    assert "upstream udp:192.0.2.1:53 marked down after 2 consecutive failures" in warning

    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    assert addr[0] == "192.0.2.2", "a down upstream is skipped while another is up"
    reply(port, answerTo(sent), addr)

    harness.reactor.advance(10 - harness.reactor.seconds())
    port, probe, addr = harness.takeOneUDP()
    assert addr == ("192.0.2.1", 53)
    message = parse(probe)
    assert [(q.name.name, q.type, q.cls) for q in message.queries] == [(b"", dns.NS, dns.IN)]
    assert harness.counters["upstream_probes"] == 1
    reply(port, answerTo(probe, rcode=dns.EREFUSED), addr)
    assert harness.resolver.health()[0]["up"] is True
    assert harness.resolver.health()[0]["consecutive_failures"] == 0
    assert any("upstream udp:192.0.2.1:53 is up again" in line for line in harness.logged(LogLevel.info))

    harness.resolve()
    assert harness.takeOneUDP()[2][0] == "192.0.2.1"
    assert len(harness.logged(LogLevel.warn)) == 1


def test_failedProbeKeepsUpstreamDown() -> None:
    """
    A probe that gets no answer leaves the upstream down with the reason in its health, and it is probed again next interval.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], maxFails=1, timeout=1.0, healthInterval=5.0)
    harness.resolver.startService()
    harness.resolve()
    harness.reactor.advance(1)
    ((port, sent, addr),) = [s for s in harness.takeUDP() if s[2][0] == "192.0.2.2"]
    reply(port, answerTo(sent), addr)
    assert harness.resolver.health()[0]["up"] is False
    harness.reactor.advance(4)
    assert harness.takeOneUDP()[2] == ("192.0.2.1", 53)
    harness.reactor.advance(1)
    health = harness.resolver.health()[0]
    assert health["up"] is False
    assert health["last_error"] == "health probe timed out after 1s"
    harness.reactor.advance(4)
    assert harness.takeOneUDP()[2] == ("192.0.2.1", 53)
    assert harness.counters["upstream_probes"] == 2
    assert health["up"] is False


def test_allDownStillTriedInOrder() -> None:
    """
    When every upstream is down, queries still go to them in config order instead of failing untried.
    """
    harness = Harness(["udp:192.0.2.1", "udp:192.0.2.2"], maxFails=1, timeout=1.0, deadline=2.0)
    _, box = harness.resolve()
    harness.reactor.advance(1)
    harness.reactor.advance(1)
    assert box[0].check(UpstreamFailure)
    assert [h["up"] for h in harness.resolver.health()] == [False, False]
    harness.takeUDP()
    _, box = harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    assert addr[0] == "192.0.2.1"
    reply(port, answerTo(sent), addr)
    assert len(box) == 1 and isinstance(box[0], bytes)
    assert harness.resolver.health()[0]["up"] is True


# Stopping.


def test_stopServiceFailsOutstandingAndCloses() -> None:
    """
    stopService fails resolves in progress with UpstreamFailure, closes sockets and connections, cancels every timer, and later resolves fail.
    """
    harness = Harness(["udp:192.0.2.1", "tcp:192.0.2.2"], maxFails=1, timeout=1.0, healthInterval=3.0)
    harness.resolver.startService()
    _, udpBox = harness.resolve()
    harness.reactor.advance(1)
    peer = harness.acceptTCP()
    stopped = outcome(harness.resolver.stopService())
    assert udpBox[0].check(UpstreamFailure)
    assert "abandoned" in str(udpBox[0].value)
    assert all(not p.listening for p in harness.reactor.udpPorts.values())
    assert peer.transport.disconnecting
    assert stopped == []
    peer.lose()
    assert stopped == [None]
    assert harness.reactor.getDelayedCalls() == []
    _, late = harness.resolve()
    assert late[0].check(UpstreamFailure)


def test_stopServiceWhileConnectingStopsTheConnect() -> None:
    """
    stopService during a TCP connect fails the resolve, stops connecting and leaves no timer.
    """
    harness = Harness(["tcp:[2001:db8::53]"])
    _, box = harness.resolve()
    assert harness.reactor.tcpClients[0][:2] == ("2001:db8::53", 53)
    stopped = outcome(harness.resolver.stopService())
    assert box[0].check(UpstreamFailure)
    assert harness.reactor.connectors[0].stoppedConnecting
    assert stopped == [None]
    assert harness.reactor.getDelayedCalls() == []


def test_cancelledResolveCleansUp() -> None:
    """
    A resolve cancelled by its caller fails with UpstreamFailure and leaves nothing outstanding or scheduled.
    """
    harness = Harness(["udp:192.0.2.1"])
    query, question = clientQuery()
    d = harness.resolver.resolve(query, question)
    box = outcome(d)
    d.cancel()
    assert box[0].check(UpstreamFailure)
    assert harness.reactor.getDelayedCalls() == []
    assert not harness.resolver.outstanding.keys


# TLS, in memory with certificates made here.


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@attrs.frozen
class Authority:
    """
    A test CA: its certificate in PEM, and the signing key.
    """

    pem: bytes
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def make(cls, common: str = "netd test CA") -> Authority:
        """
        A new self-signed CA.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(_name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate.public_bytes(serialization.Encoding.PEM), key, certificate)

    def issue(self, dnsName: str) -> ServerTLS:
        """
        TLS server settings with a certificate for C{dnsName} signed by this CA.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(dnsName))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dnsName)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(certificate)
        context.use_privatekey(key)
        return ServerTLS(context)


@implementer(IOpenSSLServerConnectionCreator)
@attrs.frozen
class ServerTLS:
    """
    The server side of a test TLS connection, from a pyOpenSSL context.
    """

    context: SSL.Context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IFrameReceiver)
class _AnsweringReceiver:
    """
    A DNS-over-TCP server connection that answers every query with an A record.
    """

    connection: IFrameConnection

    def __init__(self, queries: list[bytes]) -> None:
        self.queries = queries

    def connectionMade(self, connection: IFrameConnection) -> None:
        self.connection = connection

    def frameReceived(self, frame: bytes) -> None:
        self.queries.append(frame)
        self.connection.sendFrame(answerTo(frame, address="203.0.113.5"))

    def connectionLost(self, reason: Failure) -> None:
        pass


@implementer(IStreamHandler)
class _AnsweringHandler:
    """
    Makes L{_AnsweringReceiver}s sharing one list of queries received.
    """

    def __init__(self) -> None:
        self.queries: list[bytes] = []

    def newConnection(self) -> _AnsweringReceiver:
        return _AnsweringReceiver(self.queries)


@pytest.fixture(scope="module")
def authority() -> Authority:
    """
    The CA trusted by the TLS tests' resolvers.
    """
    return Authority.make()


def connectTLS(harness: Harness, serverTLS: ServerTLS) -> tuple[iosim.IOPump, _AnsweringHandler]:
    """
    Complete the resolver's pending TLS connection to an in-memory DNS-over-TLS
    server using C{serverTLS}, and run the handshake.
    """
    handler = _AnsweringHandler()
    serverFactory = TLSMemoryBIOFactory(
        serverTLS,
        False,
        FramedFactory(FRAMINGS["u16"], 65535, handler, Counters(), Logger(namespace="test_dns_upstream.server")),
        clock=harness.reactor,
    )
    host, port, clientFactory, _, _ = harness.reactor.tcpClients[-1]
    address = IPv4Address("TCP", host, port)
    clientProtocol = clientFactory.buildProtocol(address)
    serverProtocol = serverFactory.buildProtocol(address)
    pump = iosim.connect(
        serverProtocol,
        iosim.makeFakeServer(serverProtocol),
        clientProtocol,
        iosim.makeFakeClient(clientProtocol),
        greet=False,
        clock=harness.reactor,
    )
    pump.flush()
    return pump, handler


def tlsHarness(tmp_path: Path, authority: Authority, **options: Any) -> Harness:
    """
    A resolver with one TLS upstream named dns.test, trusting C{authority}.
    """
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Authority.make("another CA").pem + authority.pem)
    return Harness(["tls:192.0.2.53:name=dns.test"], caBundle=str(bundle), **options)


def test_tlsUpstreamAnswersOverVerifiedConnection(tmp_path: Path, authority: Authority) -> None:
    """
    A TLS upstream whose certificate names it and chains to the CA bundle (any certificate in the file) answers, and the connection is reused.
    """
    harness = tlsHarness(tmp_path, authority)
    _, box = harness.resolve()
    assert harness.reactor.tcpClients[-1][:2] == ("192.0.2.53", 853)
    pump, handler = connectTLS(harness, authority.issue("dns.test"))
    assert answerAddress(box[0]) == "203.0.113.5"
    assert messageID(box[0]) == CLIENT_ID
    _, again = harness.resolve("other.example")
    pump.flush()
    assert len(again) == 1 and isinstance(again[0], bytes)
    assert len(handler.queries) == 2
    assert len(harness.reactor.tcpClients) == 1
    assert harness.logged(LogLevel.warn) == []


@pytest.mark.parametrize(
    "issuer, name, why",
    [
        ("trusted", "wrong.test", "dns.test"),
        ("untrusted", "dns.test", "certificate verify failed"),
    ],
)
def test_tlsCertificateRefused(tmp_path: Path, authority: Authority, issuer: str, name: str, why: str) -> None:
    """
    A TLS upstream whose certificate has another name or an unknown issuer is refused: the query is not sent, a warning says why, and it counts as a failure.
    """
    harness = tlsHarness(tmp_path, authority)
    _, box = harness.resolve()
    signer = authority if issuer == "trusted" else Authority.make("rogue CA")
    _, handler = connectTLS(harness, signer.issue(name))
    assert handler.queries == []
    assert box[0].check(UpstreamFailure)
    assert len(harness.reactor.tcpClients) == 1, "a refused certificate is not retried"
    assert "tls:192.0.2.53:853:name=dns.test (connection lost: TLS failed: " in str(box[0].value)
    (warning,) = harness.logged(LogLevel.warn)
    assert "TLS with upstream tls:192.0.2.53:853:name=dns.test failed" in warning
    assert why in warning
    assert harness.counters["upstream_failures"] == 1


def test_caBundleMustHoldCertificates(tmp_path: Path) -> None:
    """
    A CA bundle that cannot be read or holds no certificate is refused when the resolver is built, at its key path
    (C{ca_bundle}), as netd run names it.
    """
    with pytest.raises(TLSSetupError, match="cannot read the CA bundle") as missing:
        Harness([], caBundle=str(tmp_path / "missing.pem"))
    assert missing.value.key == ("ca_bundle",)
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(TLSSetupError, match="holds no PEM certificate") as garbage:
        Harness([], caBundle=str(empty))
    assert garbage.value.key == ("ca_bundle",)


# Real sockets.


class _TestRecords:
    """
    A twisted.names resolver for the real-socket test: one A record per name,
    and forty TXT records for big.test (too big for 512 bytes of UDP).
    """

    def __init__(self) -> None:
        self.queries: list[dns.Query] = []

    def query(self, query: dns.Query, timeout: Any = None) -> Deferred[Any]:
        self.queries.append(query)
        name = query.name.name
        if name.lower() == b"big.test":
            answers = [rr(name, dns.Record_TXT(b"record %d " % i + b"x" * 40), 60) for i in range(40)]
        else:
            answers = [aRecord(name, "192.0.2.80", ttl=60)]
        return succeed((answers, [], []))


class _TruncatingDatagramProtocol(dns.DNSDatagramProtocol):
    """
    twisted.names' UDP server protocol, but answers over 512 bytes are cut
    there with TC set, as a plain DNS server does for a client without EDNS.
    """

    def writeMessage(self, message: dns.Message, address: Any) -> None:
        message.maxSize = 512
        super().writeMessage(message, address)


def _listenSamePort(reactor: Any, factory: server.DNSServerFactory) -> Iterator[Any]:
    """
    Listen over TCP and UDP on one loopback port number (retrying if the UDP
    number is taken).
    """
    for _ in range(20):
        tcpPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
        try:
            udpPort = reactor.listenUDP(
                tcpPort.getHost().port, _TruncatingDatagramProtocol(factory), interface="127.0.0.1"
            )
        except CannotListenError:
            tcpPort.stopListening()
            continue
        yield tcpPort
        yield udpPort
        return
    raise RuntimeError("no port free for both TCP and UDP")


@pytest_twisted.ensureDeferred
async def test_realUDPAndTCPForwarding() -> None:
    """
    Over real loopback sockets, a UDP upstream answers, its truncated answer is fetched again over TCP, and a TCP upstream answers pipelined queries.
    """
    from twisted.internet import reactor

    records = _TestRecords()
    factory = server.DNSServerFactory(clients=[records])
    tcpPort, udpPort = list(_listenSamePort(reactor, factory))
    port = tcpPort.getHost().port
    resolvers = []
    try:
        for transport in ("udp", "tcp"):
            resolvers.append(
                UpstreamResolver(
                    reactor,
                    [Upstream.fromConfig(f"{transport}:127.0.0.1:{port}")],
                    timeout=5.0,
                    deadline=10.0,
                    maxFails=3,
                    healthInterval=30.0,
                    caBundle=None,
                    counters=Counters(),
                    log=Logger(namespace="test_dns_upstream.real"),
                )
            )
            resolvers[-1].startService()
        udp, tcp = resolvers

        answer = await udp.resolve(*clientQuery("host.test"))
        assert messageID(answer) == CLIENT_ID
        assert answerAddress(answer) == "192.0.2.80"
        assert udp.counters["upstream_truncated"] == 0

        big = await udp.resolve(*clientQuery("big.test", dns.TXT))
        message = parse(big)
        assert not message.trunc
        assert len(message.answers) == 40
        assert udp.counters["upstream_truncated"] == 1

        first, second = await _both(tcp.resolve(*clientQuery("a.test")), tcp.resolve(*clientQuery("b.test")))
        assert answerAddress(first) == answerAddress(second) == "192.0.2.80"
        assert tcp.counters["upstream_answers"] == 2
        assert [q.name.name.lower() for q in records.queries] == [
            b"host.test",
            b"big.test",
            b"big.test",
            b"a.test",
            b"b.test",
        ]
        assert records.queries[3].name.name == b"a.test", "TCP queries go in the client's case"
    finally:
        for resolver in resolvers:
            await resolver.stopService()
        await udpPort.stopListening()
        await tcpPort.stopListening()


async def _both(a: Deferred[bytes], b: Deferred[bytes]) -> tuple[bytes, bytes]:
    """
    Wait for two resolves made at once.
    """
    return (await a, await b)


# Running out of IDs (issue 13 item 8).


class BoundedRandom(random.Random):
    """
    A seeded random source that raises after C{budget} draws of random bits:
    a loop that draws IDs without end fails the test instead of hanging it.
    """

    def __init__(self, budget: int) -> None:
        super().__init__(7)
        self.budget = budget
        self.draws = 0

    def getrandbits(self, k: int) -> int:
        self.draws += 1
        if self.draws > self.budget:
            raise AssertionError(f"more than {self.budget} random draws: a loop without bound")
        return super().getrandbits(k)


def _fillIDs(queries: Any) -> None:
    """
    Take every one of the 65,536 IDs of a socket's or connection's queries.
    """
    question = clientQuery()[1]
    for queryID in range(1 << 16):
        queries.add(queryID, question, question.name)


def _connectionWithEveryIDInUse(harness: Harness) -> tuple[TCPPeer, Any]:
    """
    Resolve once through the TCP upstream 192.0.2.53, take every ID of its
    one connection, and make the resolver's random draws bounded.

    @return: the upstream's peer (its one frame read) and the connection.
    """
    harness.resolve()
    peer = harness.acceptTCP()
    assert len(peer.frames()) == 1
    (connection,) = harness.resolver._stream(Upstream.fromConfig("tcp:192.0.2.53")).connections
    _fillIDs(connection.pending)
    harness.resolver.random = BoundedRandom(1000)
    return peer, connection


def test_freshIDGivesUpAfterBoundedDraws() -> None:
    """
    With every ID in use, freshID gives up (None) after a bounded number of draws instead of drawing for ever.
    """
    harness = Harness(["tcp:192.0.2.53"])
    _, connection = _connectionWithEveryIDInUse(harness)
    assert connection.pending.freshID() is None
    assert harness.resolver.random.draws <= 64


def test_connectionWithEveryIDInUseMovesOnAtOnce() -> None:
    """
    A query for a TCP upstream whose one connection has all 65,536 IDs in use neither spins nor waits: with one connection allowed it fails at once, counted, and the next upstream answers.
    """
    harness = Harness(["tcp:192.0.2.53", "udp:192.0.2.54"], streamConnections=1)
    peer, _ = _connectionWithEveryIDInUse(harness)
    _, box = harness.resolve("next.example")
    assert peer.frames() == []
    assert len(harness.reactor.tcpClients) == 1
    port, sent, addr = harness.takeOneUDP()
    assert addr == ("192.0.2.54", 53)
    reply(port, answerTo(sent), addr)
    assert messageID(box[0]) == CLIENT_ID
    assert harness.counters["upstream_busy"] == 1
    assert harness.counters["upstream_failures"] == 0
    assert harness.resolver.health()[0]["consecutive_failures"] == 0, "being full is not the upstream's fault"


def test_fullConnectionsOpenAnotherThenFail() -> None:
    """
    Past streamPipeline queries in flight on a connection another connection opens, up to streamConnections; past that a query fails at once (upstream_busy) and goes to the next upstream; answers make room again.
    """
    harness = Harness(["tcp:192.0.2.53", "udp:192.0.2.54"], streamPipeline=2, streamConnections=2)
    boxes = [harness.resolve(f"q{index}.example")[1] for index in range(4)]
    assert len(harness.reactor.tcpClients) == 2
    first, second = harness.acceptTCP(0), harness.acceptTCP(1)
    framesA, framesB = first.frames(), second.frames()
    assert (len(framesA), len(framesB)) == (2, 2)
    _, fifth = harness.resolve("q4.example")
    assert harness.counters["upstream_busy"] == 1
    port, sent, addr = harness.takeOneUDP()
    assert addr[0] == "192.0.2.54"
    reply(port, answerTo(sent), addr)
    assert len(fifth) == 1 and isinstance(fifth[0], bytes)
    first.send(answerTo(framesA[0]))
    assert len(boxes[0]) == 1
    _, sixth = harness.resolve("q5.example")
    (frame,) = first.frames()
    first.send(answerTo(frame))
    assert len(sixth) == 1 and isinstance(sixth[0], bytes)
    assert len(harness.reactor.tcpClients) == 2


def test_busyStreamUpstreamCountsInTheSingular() -> None:
    """
    A stream upstream allowed one connection with one query in flight says so in the singular when a second query finds it busy.
    """
    harness = Harness(["tcp:192.0.2.53"], streamPipeline=1, streamConnections=1)
    boxes = [harness.resolve(f"q{index}.example")[1] for index in range(2)]
    assert boxes[1][0].check(UpstreamFailure)
    assert "1 connection with 1 query in flight each" in str(boxes[1][0].value)


def test_queriesWaitingForAConnectionAreBoundedToo() -> None:
    """
    Queries waiting for a connection being opened count against its pipeline: past it another connection opens, past the last a query fails at once.
    """
    harness = Harness(["tcp:192.0.2.53"], streamPipeline=2, streamConnections=2)
    boxes = [harness.resolve(f"q{index}.example")[1] for index in range(5)]
    assert len(harness.reactor.tcpClients) == 2
    assert boxes[4][0].check(UpstreamFailure)
    assert "2 connections with 2 queries in flight" in str(boxes[4][0].value)
    first = harness.acceptTCP(0)
    frames = first.frames()
    assert len(frames) == 2
    for frame in frames:
        first.send(answerTo(frame))
    assert all(len(box) == 1 and isinstance(box[0], bytes) for box in boxes[:2])


def test_udpSocketWithEveryIDInUseIsReplaced() -> None:
    """
    A UDP socket with all 65,536 IDs in use is replaced at once by a socket on a new port, which sends the query, instead of drawing IDs for ever.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=1, udpPortQueries=4096)
    harness.resolve()
    (full, _, _) = harness.takeOneUDP()
    _fillIDs(full.protocol.pending)
    harness.resolver.random = BoundedRandom(1000)
    harness.resolve("next.example")
    (port, _, addr) = harness.takeOneUDP()
    assert port is not full and addr == ("192.0.2.53", 53)
    assert harness.counters["upstream_busy"] == 0


def test_udpSocketWithEveryIDInUseMovesOnAtOnce() -> None:
    """
    A UDP socket with all 65,536 IDs in use that cannot be replaced fails the query at once, counted, and the next upstream (another pool) answers.
    """
    harness = Harness(["udp:192.0.2.53", "udp:127.0.0.1:5353"], udpSockets=1, udpPortQueries=4096)
    harness.resolve()
    (full, _, _) = harness.takeOneUDP()
    _fillIDs(full.protocol.pending)
    harness.resolver.random = BoundedRandom(1000)
    listen = harness.reactor.listenUDP

    def refuseWildcard(port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDPPort:
        if interface == "0.0.0.0":
            raise CannotListenError(interface, port, OSError(24, "Too many open files"))
        return listen(port, protocol, interface, maxPacketSize)

    harness.reactor.listenUDP = refuseWildcard  # type: ignore[method-assign]
    _, box = harness.resolve("next.example")
    assert harness.counters["upstream_busy"] == 1
    port, sent, addr = harness.takeOneUDP()
    assert addr == ("127.0.0.1", 5353)
    reply(port, answerTo(sent), addr)
    assert messageID(box[0]) == CLIENT_ID
