"""
The dns-proxy's query path, in memory: static records, cache, coalescing,
refusals, malformed input, truncation and the TCP receiver, with a fake upstream
resolver and a Clock.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.names import dns
from zope.interface import implementer

from netd.events import EventLog
from netd.interfaces import IDatagramSender
from netd.metrics import Counters
from netd.testing.memory import RecordingDatagramSender, connect, makeStreamStack
from netd_plugins.dnsproxy.cache import AnswerCache
from netd_plugins.dnsproxy.handler import AccessList, DNSProxy
from netd_plugins.dnsproxy.records import StaticRecords
from netd_plugins.dnsproxy.resolver import UpstreamFailure
from netd_plugins.dnsproxy.scripts import Script
from netd_plugins.dnsproxy.upstream import Upstream
from netd_plugins.dnsproxy.wire import Question, parseQuery

from .dnsmessages import aRecord, makeQuery, parse, parseEDNS, replyTo, rr

CLIENT = ("127.0.0.1", 5555)
UPSTREAM = Upstream.fromConfig("udp:192.0.2.53")
"""
The upstream the fake resolver says answered.
"""


@attrs.define
class FakeResolver:
    """
    Stands in for the upstreams: records each query and lets the test answer it.
    """

    asked: list[tuple[bytes, Question, Deferred[bytes]]] = attrs.Factory(list)
    running: bool = False

    def resolve(self, query: bytes, question: Question) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.asked.append((query, question, d))
        return d

    def forward(self, query: bytes, question: Question) -> Deferred[tuple[bytes, Upstream]]:
        return self.resolve(query, question).addCallback(lambda answer: (answer, UPSTREAM))

    def forwardTo(self, query: bytes, question: Question, answered: Any, failed: Any, context: Any) -> None:
        self.resolve(query, question).addCallbacks(
            lambda answer: answered(answer, UPSTREAM, context), lambda reason: failed(reason, context)
        )

    def isLooped(self, query: bytes, question: Question) -> bool:
        return any(query[:2] == sent[:2] and question == q for sent, q, d in self.asked if not d.called)

    def startService(self) -> None:
        self.running = True

    def stopService(self) -> None:
        self.running = False


@attrs.define
class Proxy:
    """
    A proxy under test with its fakes.
    """

    proxy: DNSProxy
    resolver: FakeResolver
    clock: Clock
    counters: Counters
    lastSender: RecordingDatagramSender = attrs.Factory(RecordingDatagramSender)

    def ask(self, query: bytes, host: str = "127.0.0.1") -> Any:
        """
        Send a query over UDP; return what was sent back (bytes) or None.
        """
        sender = RecordingDatagramSender()
        self.proxy.datagramReceived(query, (host, 5555), sender)
        self.lastSender = sender
        return sender.sent[-1][0] if sender.sent else None


def makeProxy(
    records: dict[str, Any] | None = None,
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128"),
    logQueries: bool = False,
    cacheSize: int = 100,
    scripts: tuple[Script, ...] = (),
    events: int = 0,
    **limits: int,
) -> Proxy:
    """
    A proxy with a fake resolver, a Clock, the given static records and
    scripts, and an event log of C{events} entries.
    """
    clock = Clock()
    counters = Counters()
    resolver = FakeResolver()
    proxy = DNSProxy(
        reactor=clock,
        records=StaticRecords.fromConfig(records or {}),
        scripts=scripts,
        cache=AnswerCache(maxEntries=cacheSize, minTTL=0, maxTTL=86400, maxNegativeTTL=3600, clock=clock),
        resolver=resolver,  # type: ignore[arg-type]
        access=AccessList(allow),
        counters=counters,
        log=Logger(namespace="test"),
        logQueries=logQueries,
        udpSize=1232,
        events=EventLog(events, clock),
        **limits,
    )
    return Proxy(proxy, resolver, clock, counters)


def test_forwardedThenCached() -> None:
    """
    A miss is forwarded and answered with the client's ID; the same question again is a cache hit with TTLs decremented by the time spent.
    """
    p = makeProxy()
    assert p.ask(makeQuery("example.org", id=11)) is None
    [(sent, question, d)] = p.resolver.asked
    assert question.key == b"\x07example\x03org\x00"
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1", ttl=300)))
    first = parse(p.lastSender.sent[0][0])
    assert (first.id, first.answers[0].payload.dottedQuad(), first.answers[0].ttl) == (11, "192.0.2.1", 300)
    p.clock.advance(100)
    second = parse(p.ask(makeQuery("EXAMPLE.org", id=12)))
    assert (second.id, second.answers[0].ttl, second.queries[0].name.name) == (12, 200, b"EXAMPLE.org")
    assert len(p.resolver.asked) == 1
    assert (p.counters["cache_misses"], p.counters["cache_hits"]) == (1, 1)
    assert p.counters["rcode_NOERROR"] == 2


def withOption(query: bytes, code: int, payload: bytes) -> bytes:
    """
    A query whose last record is its OPT record, with one option added to that record.
    """
    edns = parseQuery(query).edns
    assert edns is not None
    at = edns.offset + 9
    option = code.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload
    length = int.from_bytes(query[at : at + 2], "big") + len(option)
    return query[:at] + length.to_bytes(2, "big") + query[at + 2 :] + option


ECS = bytes.fromhex("0001180000c00002")
"""
A client subnet option's data (RFC 7871): IPv4, source prefix 24, scope 0, 192.0.2.
"""


@pytest.mark.parametrize("records", [None, {"netd.test": {"A": ["192.0.2.7"]}}])
def test_quickCacheHitIsTheFullPath(records: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A cache hit answered from the query's bytes, without parsing them, gives the same answers, counters and query events as the full query path (taken by a service that logs its queries), for queries with and without EDNS, DO, CD, RD, AD, a client subnet, a cookie and another case; each of those that changes the answer has an entry of its own, filled by a query of the same kind.
    """
    from netd_plugins.dnsproxy import handler

    parsed: list[bytes] = []

    def countingParse(data: bytes) -> Any:
        parsed.append(data)
        return parseQuery(data)

    monkeypatch.setattr(handler, "parseQuery", countingParse)

    def kinds(id: int, upper: bool) -> list[bytes]:
        name = "EXAMPLE.org" if upper else "example.org"
        plainEDNS = makeQuery(name, id=id, edns=True, udpSize=1400)
        return [
            makeQuery(name, id=id),
            makeQuery(name, id=id, recDes=False),
            plainEDNS,
            makeQuery(name, id=id, edns=True, do=True, checkingDisabled=True),
            makeQuery(name, dns.AAAA, id=id, checkingDisabled=True),
            plainEDNS[:3] + bytes((plainEDNS[3] | 0x20,)) + plainEDNS[4:],
            withOption(plainEDNS, 8, ECS),
            withOption(plainEDNS, 10, bytes(range(8)) if upper else bytes(8)),
        ]

    # EDNS without DO shares the plain query's entry (served with an OPT
    # record of ours), and a cookie is not part of the key.
    fills = [query for index, query in enumerate(kinds(0, False)) if index not in (2, 7)]
    again = kinds(30, True)
    results = []
    for logQueries in (False, True):
        p = makeProxy(records, events=20, logQueries=logQueries)
        for query in fills:
            p.ask(query)
            sent, _, d = p.resolver.asked[-1]
            d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1", ttl=300)))
        assert len(p.resolver.asked) == len(fills), "each kind of query has its own entry"
        p.clock.advance(7)
        del parsed[:]
        answers = [p.ask(query) for query in again]
        parses = len(parsed)
        results.append((answers, dict(p.counters), queryEvents(p), parses))
    (quickAnswers, quickCounters, quickEvents, quickParsed), (fullAnswers, fullCounters, fullEvents, _) = results
    assert quickParsed == 0, "the quick path parsed no query"
    assert (quickAnswers, quickCounters, quickEvents) == (fullAnswers, fullCounters, fullEvents)
    assert quickCounters["cache_hits"] == len(again)
    assert [parse(answer).answers[0].ttl for answer in quickAnswers] == [293] * len(again)
    assert [parse(answer).checkingDisabled for answer in quickAnswers] == [
        False,
        False,
        False,
        True,
        True,
        False,
        False,
        False,
    ]


def test_quickCacheMissIsTheFullPath(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A query that the quick cache-hit path looked up in vain is parsed once and forwarded, giving the same upstream queries, answers, counters and query events as the full query path (taken by a service that logs its queries); one whose bytes after the question's name made the quick key another (a cached name with trailing bytes) takes the full path and is a hit.
    """
    from netd_plugins.dnsproxy import handler

    parsed: list[bytes] = []

    def countingParse(data: bytes) -> Any:
        parsed.append(data)
        return parseQuery(data)

    monkeypatch.setattr(handler, "parseQuery", countingParse)
    plainEDNS = makeQuery("Miss.example.org", id=5, edns=True, udpSize=1400)
    misses = [
        makeQuery("miss.example.org", id=1),
        makeQuery("MISS.example.org", dns.AAAA, id=2, checkingDisabled=True),
        makeQuery("miss.example.org", id=3, edns=True, do=True),
        withOption(plainEDNS, 8, ECS),
        makeQuery("cached.example.org", id=6) + b"\x00\x00",
    ]
    results = []
    for logQueries in (False, True):
        p = makeProxy(events=20, logQueries=logQueries)
        p.ask(makeQuery("cached.example.org", id=9))
        sent, _, d = p.resolver.asked[-1]
        d.callback(replyTo(sent, aRecord("cached.example.org", "192.0.2.9", ttl=300)))
        del parsed[:]
        answers = []
        for query in misses:
            asked = len(p.resolver.asked)
            answer = p.ask(query)
            if len(p.resolver.asked) > asked:
                sent, _, d = p.resolver.asked[-1]
                d.callback(replyTo(sent, aRecord("miss.example.org", "192.0.2.1", ttl=300)))
                answer = p.lastSender.sent[-1][0]
            answers.append(answer)
        upstream = [sent for sent, _, _ in p.resolver.asked]
        results.append((answers, upstream, dict(p.counters), queryEvents(p), len(parsed)))
    (quickAnswers, quickUpstream, quickCounters, quickEvents, quickParsed) = results[0]
    assert (quickAnswers, quickUpstream, quickCounters, quickEvents) == results[1][:4]
    assert quickParsed == len(misses) + 1, "each miss parsed once; the one with trailing bytes twice"
    assert (quickCounters["cache_misses"], quickCounters["cache_hits"]) == (5, 1)


def queryEvents(p: Proxy) -> list[dict[str, Any]]:
    """
    The C{"query"} events recorded, without their sequence number.
    """
    return [{k: v for k, v in e.items() if k != "seq"} for e in p.proxy.events.events(kind="query")]


def test_identicalQueriesInFlightShareOneUpstreamQuery() -> None:
    """
    Queries for the same question while one is in flight wait for it instead of asking the upstreams again, and each gets its own ID.
    """
    p = makeProxy()
    senders = []
    for id in (1, 2, 3):
        sender = RecordingDatagramSender()
        p.proxy.datagramReceived(makeQuery("example.org", id=id), CLIENT, sender)
        senders.append(sender)
    [(sent, _, d)] = p.resolver.asked
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1")))
    assert [parse(s.sent[0][0]).id for s in senders] == [1, 2, 3]
    assert p.counters["queries_coalesced"] == 2


def test_upstreamFailureGivesServfail() -> None:
    """
    When the upstreams fail, the client gets SERVFAIL, and nothing is cached.
    """
    p = makeProxy()
    p.ask(makeQuery("example.org", id=5))
    p.resolver.asked[0][2].errback(UpstreamFailure("nothing answered"))
    answer = parse(p.lastSender.sent[0][0])
    assert (answer.id, answer.rCode) == (5, dns.ESERVER)
    p.ask(makeQuery("example.org", id=6))
    assert len(p.resolver.asked) == 2


def test_staticRecordsAnsweredLocally() -> None:
    """
    A static name is answered without asking the upstreams, with the client's ID, question case and EDNS.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}})
    wire = p.ask(makeQuery("Netd.Test", id=9, edns=True, do=True))
    answer = parseEDNS(wire)
    assert (answer.id, answer.auth, answer.queries[0].name.name) == (9, True, b"Netd.Test")
    assert [rr.payload.dottedQuad() for rr in answer.answers] == ["127.0.0.1"]
    assert answer.dnssecOK and answer.ednsVersion == 0
    assert p.resolver.asked == []
    assert p.counters["static_answers"] == 1


def test_staticNameWithoutTheTypeIsNodata() -> None:
    """
    A static name asked for a type it lacks gets NOERROR with no answer.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}})
    answer = parse(p.ask(makeQuery("netd.test", dns.MX)))
    assert (answer.rCode, answer.answers) == (dns.OK, [])


def test_clientOutsideAllowIsRefused() -> None:
    """
    A client outside the allow networks gets REFUSED and nothing is forwarded.
    """
    p = makeProxy(allow=("10.0.0.0/8",))
    answer = parse(p.ask(makeQuery("example.org", id=3)))
    assert (answer.id, answer.rCode) == (3, dns.EREFUSED)
    assert p.resolver.asked == []


def test_unreadableMessagesDroppedAndFormerrForReadableHeader() -> None:
    """
    Fewer than 12 bytes are dropped; a readable header with a broken question gets FORMERR with its ID; responses are dropped.
    """
    p = makeProxy()
    assert p.ask(b"\x01\x02\x03") is None
    assert p.counters["dropped_unreadable"] == 1
    garbage = b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\xff"
    answer = parse(p.ask(garbage))
    assert (answer.id, answer.rCode) == (0x1234, dns.EFORMAT)
    response = replyTo(makeQuery("example.org"))
    assert p.ask(response) is None
    assert p.counters["dropped_responses"] == 1


def test_otherOpcodeIsNotImplemented() -> None:
    """
    A query with an opcode other than QUERY gets NOTIMP.
    """
    p = makeProxy()
    query = makeQuery("example.org", id=4, opCode=dns.OP_STATUS, recDes=False)
    assert parse(p.ask(query)).rCode == dns.ENOTIMP


def bigAnswer(query: bytes) -> bytes:
    """
    An answer of about 2 KB.
    """
    records = [rr("big.test", dns.Record_TXT(b"x" * 200), 60) for _ in range(10)]
    return replyTo(query, *records)


@pytest.mark.parametrize("edns, truncated", [(None, True), (512, True), (1232, True), (4096, False)])
def test_udpAnswerTruncatedToClientSize(edns: int | None, truncated: bool) -> None:
    """
    An answer bigger than the client's UDP size (512 without EDNS) is sent with TC set and no records, so that it retries over TCP.
    """
    p = makeProxy()
    query = makeQuery("big.test", dns.TXT, edns=edns is not None, udpSize=edns or 512)
    p.ask(query)
    p.resolver.asked[0][2].callback(bigAnswer(p.resolver.asked[0][0]))
    wire = p.lastSender.sent[0][0]
    answer = parse(wire)
    assert answer.trunc == truncated
    assert len(answer.answers) == (0 if truncated else 10)
    assert len(wire) <= (edns or 512) or not truncated


def test_tcpReceiverPipelinesAnswers() -> None:
    """
    Over TCP several queries on one connection are answered as each is ready, out of order if need be, in u16 frames.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}})
    stack = makeStreamStack(p.proxy, "u16", clock=p.clock)
    connection = connect(stack)
    assert connection is not None
    for id, name in ((1, "slow.example"), (2, "netd.test")):
        query = makeQuery(name, id=id)
        connection.receive(len(query).to_bytes(2, "big") + query)
    sent = connection.takeSent()
    assert parse(sent[2:]).id == 2
    [(query, _, d)] = p.resolver.asked
    d.callback(replyTo(query, aRecord("slow.example", "192.0.2.9")))
    sent = connection.takeSent()
    assert int.from_bytes(sent[:2], "big") == len(sent) - 2
    assert parse(sent[2:]).id == 1
    assert p.counters["queries_tcp"] == 2


def test_loopProbeComingBackIsRefusedAndLogged() -> None:
    """
    The probe the proxy sends upstream at start, if it comes back as a query, is answered REFUSED and logged as a loop once.
    """
    p = makeProxy()
    p.proxy.startService()
    [(probe, _, _)] = p.resolver.asked
    with capturedLogs() as events:
        first = parse(p.ask(probe))
        p.ask(probe)
    assert first.rCode == dns.EREFUSED
    assert p.counters["loop_detected"] == 2
    assert len([e for e in events if e["log_level"] == LogLevel.error]) == 1
    assert p.resolver.running


def test_logQueriesLogsOneLinePerQuery() -> None:
    """
    With log_queries each query is logged once, with client, name, type, rcode and where the answer came from.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}}, logQueries=True)
    with capturedLogs() as events:
        p.ask(makeQuery("netd.test"))
    [event] = [e for e in events if "rcode" in e]
    assert (event["client"], event["name"], event["qtype"], event["rcode"], event["source"]) == (
        "127.0.0.1",
        "netd.test",
        "A",
        "NOERROR",
        "static",
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitraryBytesNeverCrashTheQueryPath(data: bytes) -> None:
    """
    Whatever bytes a client sends, the query path answers, forwards or drops them without raising.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}})
    p.ask(data)
    p.ask(data, host="10.9.9.9")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutatedQueriesNeverCrashTheQueryPath(data: st.DataObject) -> None:
    """
    A valid query with bytes flipped, cut or added never makes the query path raise.
    """
    query = bytearray(makeQuery("www.netd.test", dns.AAAA, edns=True, udpSize=1232, do=True))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(query) - 1))
        query[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(query)))
    p = makeProxy({"*.netd.test": {"A": ["127.0.0.1"]}})
    p.ask(bytes(query[:cut]) + data.draw(st.binary(max_size=20)))


def test_ownUpstreamQueryComingBackIsRefused() -> None:
    """
    A query that is one of the proxy's own upstream queries (same ID and question, still outstanding) is refused, not forwarded again.
    """
    p = makeProxy()
    p.ask(makeQuery("example.org", id=21))
    [(sent, _, _)] = p.resolver.asked
    looped = p.ask(sent, host="127.0.0.2")
    assert parse(looped).rCode == dns.EREFUSED
    assert len(p.resolver.asked) == 1
    assert p.counters["loop_detected"] == 1


def test_unreadableUpstreamAnswerGivesServfail() -> None:
    """
    An upstream answer whose records cannot be read gives every waiting client SERVFAIL, and the next query asks the upstreams again.
    """
    p = makeProxy()
    senders = [RecordingDatagramSender() for _ in range(2)]
    for id, sender in enumerate(senders):
        p.proxy.datagramReceived(makeQuery("example.org", id=id), CLIENT, sender)
    [(sent, _, d)] = p.resolver.asked
    answer = replyTo(sent)
    d.callback(answer[:6] + b"\x00\x05" + answer[8:])
    assert [parse(s.sent[0][0]).rCode for s in senders] == [dns.ESERVER, dns.ESERVER]
    assert (p.counters["upstream_unreadable"], p.proxy.inflight) == (1, {})
    p.ask(makeQuery("example.org"))
    assert len(p.resolver.asked) == 2


def test_refusedClientsCountNoQueryType() -> None:
    """
    A client outside the allow networks adds no per-qtype counter, whatever types it asks, so refused clients create no metric series; allowed clients are counted by type after the check.
    """
    p = makeProxy(allow=("10.0.0.0/8",))
    for qtype in (dns.A, 4321, 65000):
        p.ask(makeQuery("example.org", qtype))
    assert [name for name in p.counters if name.startswith("qtype_")] == []
    assert p.counters["rcode_REFUSED"] == 3


def test_unnamedQueryTypesShareOneCounter() -> None:
    """
    Query types without a name are all counted under qtype_other, so a client asking every number makes one series, not 65,536.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}})
    for qtype in (dns.A, 4321, 65000, 4321):
        p.ask(makeQuery("netd.test", qtype))
    assert {name: count for name, count in p.counters.items() if name.startswith("qtype_")} == {
        "qtype_A": 1,
        "qtype_other": 3,
    }


def paddedQuery(name: str, size: int, id: int = 1) -> bytes:
    """
    A query for C{name} with an OPT record whose padding option (RFC 7830) makes it C{size} bytes long.
    """
    plain = makeQuery(name, id=id, edns=True, udpSize=1232)
    padding = size - len(plain) - 4
    return plain[:-2] + (padding + 4).to_bytes(2, "big") + b"\x00\x0c" + padding.to_bytes(2, "big") + b"\x00" * padding


def test_cacheHitEventsKeepNoQueryBytes() -> None:
    """
    A thousand cache hits from 60 KB padded queries, each recorded as an event, keep far less than one query's worth of memory each: the event keeps what it shows, not the message.
    """
    import gc
    import tracemalloc

    p = makeProxy(events=1000)
    p.proxy.answer(makeQuery("example.org", id=1, edns=True), "127.0.0.1", 5555, "tcp")
    sent, _, d = p.resolver.asked[-1]
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1", ttl=300)))
    queries = [paddedQuery("example.org", 60_000, id) for id in range(4)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(1000):
            # A fresh copy per query, as each datagram or frame is.
            answer = p.proxy.answer(bytes(bytearray(queries[index % 4])), "127.0.0.1", 5555, "tcp")
            assert isinstance(answer, bytes) and parse(answer).answers
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert p.counters["cache_hits"] == 1000
    events = queryEvents(p)
    assert len(events) == 1000 and events[-1]["name"] == "example.org" and events[-1]["type"] == "A"
    assert grown < 1000 * 1000, f"{grown} bytes kept for 1,000 events"


def ednsVersion(query: bytes, version: int) -> bytes:
    """
    A query made with an OPT record (last, no options), with that record's EDNS version changed.
    """
    return query[:-5] + bytes((version,)) + query[-4:]


def assertBadvers(wire: bytes, id: int) -> None:
    """
    C{wire} is a BADVERS answer (extended rcode 16: 0 in the header, 1 in the OPT record) with an OPT record of version 0 and no records.
    """
    answer = parseEDNS(wire)
    assert (answer.id, answer.rCode, answer.ednsVersion, answer.answers) == (id, 16, 0, [])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unknownEdnsVersionGetsBadversBeforeCacheAndRecords(transport: str) -> None:
    """
    A query with EDNS version 1 gets BADVERS with an OPT record of version 0 (RFC 6891, 6.1.3), over UDP and TCP, for a cached name and a static one alike: neither the cache nor the static records answer it, and nothing goes upstream.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}})
    p.ask(makeQuery("example.org", id=1, edns=True))
    sent, _, d = p.resolver.asked[-1]
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1", ttl=300)))
    for id, name in ((7, "example.org"), (8, "netd.test"), (9, "other.example")):
        query = ednsVersion(makeQuery(name, id=id, edns=True, do=True), 1)
        if transport == "udp":
            wire = p.ask(query)
        else:
            wire = p.proxy.answer(query, "127.0.0.1", 5555, "tcp")
        assertBadvers(wire, id)
    assert len(p.resolver.asked) == 1
    assert (
        p.counters["queries_badvers"],
        p.counters["rcode_BADVERS"],
        p.counters["cache_hits"],
        p.counters["static_answers"],
    ) == (3, 3, 0, 0)


def test_checkingDisabledAnswerIsNotServedToValidatingClients() -> None:
    """
    Data a validating upstream gives a CD=1 query (as for a bogus zone) is cached for CD=1 queries only: a CD=0 query goes upstream and gets that upstream's SERVFAIL, and neither kind shares the other's query in flight.
    """
    p = makeProxy()
    p.ask(makeQuery("bogus.example", id=1, checkingDisabled=True))
    p.ask(makeQuery("bogus.example", id=2))
    assert len(p.resolver.asked) == 2, "a CD=1 and a CD=0 query share no upstream query"
    assert [parse(sent).checkingDisabled for sent, _, _ in p.resolver.asked] == [True, False]
    for sent, _, d in p.resolver.asked:
        if parse(sent).checkingDisabled:
            d.callback(replyTo(sent, aRecord("bogus.example", "192.0.2.66", ttl=300)))
        else:
            d.callback(replyTo(sent, rCode=dns.ESERVER))
    assert parse(p.ask(makeQuery("bogus.example", id=3, checkingDisabled=True))).answers
    assert p.ask(makeQuery("bogus.example", id=4)) is None, "a CD=0 query is not a cache hit"
    sent, _, d = p.resolver.asked[-1]
    assert not parse(sent).checkingDisabled
    d.callback(replyTo(sent, rCode=dns.ESERVER))
    assert parse(p.lastSender.sent[0][0]).rCode == dns.ESERVER
    assert p.counters["cache_hits"] == 1


def test_upstreamGetsAQueryNetdBuilt() -> None:
    """
    What goes upstream is the client's ID, RD, AD and CD bits and question (case kept), with an OPT record of netd's (version 0, netd's payload size, the client's DO bit) carrying only a client subnet option: cookies, padding and other header bits do not go upstream.
    """
    p = makeProxy()
    query = makeQuery("Example.ORG", id=77, edns=True, do=True, udpSize=512, checkingDisabled=True)
    query = withOption(withOption(query, 10, bytes(range(8))), 8, ECS)
    query = query[:2] + bytes((query[2] | 0x04, query[3] | 0x60)) + query[4:]  # AA, Z and AD set
    p.ask(withOption(query, 12, bytes(40)))
    [(sent, question, _)] = p.resolver.asked
    message = parseEDNS(sent)
    assert (message.id, message.recDes, message.checkingDisabled, message.authenticData, message.auth) == (
        77,
        True,
        True,
        True,
        False,
    )
    assert (message.ednsVersion, message.maxSize, message.dnssecOK) == (0, 1232, True)
    assert sent[12:25] == b"\x07Example\x03ORG\x00"
    assert sent.endswith(b"\x00\x08\x00\x08" + ECS) and len(sent) == 25 + 4 + 11 + 12
    assert question.name == b"\x07Example\x03ORG\x00"


def test_malformedOptionsGetFormerr() -> None:
    """
    An OPT record whose options run past its data gets FORMERR, on the quick path as on the whole one.
    """
    p = makeProxy()
    query = makeQuery("example.org", id=5, edns=True)
    broken = query[:-2] + b"\x00\x05" + b"\x00\x08\x00\x09\x00"
    assert parse(p.ask(broken)).rCode == dns.EFORMAT
    assert p.resolver.asked == []


def test_cacheBytesAndRefusalsInMetrics() -> None:
    """
    The cache's bytes and entries are gauges in /metrics, and answers too large to cache and entries evicted are counters there.
    """
    from netd.metrics import Exposition

    p = makeProxy()
    p.proxy.cache.maxEntryBytes = 1024
    p.ask(makeQuery("big.test", dns.TXT, edns=True, udpSize=4096))
    p.resolver.asked[-1][2].callback(bigAnswer(p.resolver.asked[-1][0]))
    p.ask(makeQuery("example.org"))
    p.resolver.asked[-1][2].callback(replyTo(p.resolver.asked[-1][0], aRecord("example.org", "192.0.2.1")))
    exposition = Exposition()
    exposition.counters(p.counters, {"service": "dns"})
    text = exposition.render()
    assert f'netd_dns_cache_bytes{{service="dns"}} {p.proxy.cache.bytes}\n' in text and p.proxy.cache.bytes > 0
    assert "# TYPE netd_dns_cache_bytes gauge" in text
    assert 'netd_dns_cache_entries{service="dns"} 1\n' in text
    assert 'netd_cache_too_large_total{service="dns"} 1\n' in text
    assert 'netd_cache_evictions_total{service="dns"} 0\n' in text


def test_queriesInFlightBoundedPerClient() -> None:
    """
    Past maxInflightPerClient queries waiting for the upstreams from one address (identical ones sharing an upstream query count each), that address gets REFUSED (counted) while other clients are still forwarded, and once answers land it is forwarded again.
    """
    p = makeProxy(maxInflightPerClient=3)
    assert p.ask(makeQuery("a.example")) is None
    assert p.ask(makeQuery("b.example")) is None
    assert p.ask(makeQuery("b.example", id=2)) is None
    refused = parse(p.ask(makeQuery("c.example", id=9)))
    assert (refused.id, refused.rCode) == (9, dns.EREFUSED)
    assert p.counters["inflight_refused_client"] == 1
    assert p.ask(makeQuery("c.example"), host="127.0.0.2") is None
    assert len(p.resolver.asked) == 3
    sent, _, d = p.resolver.asked[0]
    d.callback(replyTo(sent, aRecord("a.example", "192.0.2.1")))
    assert p.ask(makeQuery("d.example")) is None
    assert len(p.resolver.asked) == 4
    assert (p.proxy.waiting, p.proxy.waitingByClient) == (4, {"127.0.0.1": 3, "127.0.0.2": 1})
    for sent, _, d in p.resolver.asked[1:]:
        d.callback(replyTo(sent, aRecord("x.example", "192.0.2.1")))
    assert (p.proxy.waiting, p.proxy.waitingByClient) == (0, {})


@implementer(IDatagramSender)
class FailingSender:
    """
    A datagram sender whose socket refuses everything.
    """

    def sendDatagram(self, datagram: bytes, peer: tuple[str, int]) -> None:
        raise RuntimeError("refused")


def test_udpAndDeferredWaitersShareAFlight() -> None:
    """
    A UDP miss (answered through its send, without a Deferred) and the same question asked through answer() (a Deferred) share one upstream query; both get the answer with their own ID, a UDP client whose send fails does not keep the others from theirs (the failure is logged), and nothing is left counted as in flight.
    """
    p = makeProxy()
    broken = FailingSender()
    p.proxy.datagramReceived(makeQuery("example.org", id=1), ("127.0.0.3", 53), broken)
    assert p.ask(makeQuery("example.org", id=2)) is None
    box: list[bytes] = []
    answer = p.proxy.answer(makeQuery("example.org", id=3), "127.0.0.1", 7, "tcp")
    assert isinstance(answer, Deferred)
    answer.addCallback(box.append)
    [(sent, _, d)] = p.resolver.asked
    assert p.counters["queries_coalesced"] == 2 and p.proxy.waiting == 3
    with capturedLogs() as events:
        d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1")))
    assert [event["log_format"] for event in events] == ["answering a query failed"]
    assert parse(p.lastSender.sent[0][0]).id == 2 and parse(box[0]).id == 3
    assert (p.proxy.waiting, p.proxy.waitingByClient) == (0, {})


def test_queriesInFlightBoundedOverall() -> None:
    """
    Past maxInflight queries waiting for the upstreams from all clients, every client gets REFUSED (counted) until answers land; cache hits and static answers are still served.
    """
    p = makeProxy({"netd.test": {"A": ["127.0.0.1"]}}, maxInflight=2)
    p.ask(makeQuery("a.example"), host="127.0.0.1")
    p.ask(makeQuery("b.example"), host="127.0.0.2")
    assert parse(p.ask(makeQuery("c.example"), host="127.0.0.3")).rCode == dns.EREFUSED
    assert parse(p.ask(makeQuery("netd.test"), host="127.0.0.3")).rCode == dns.OK
    assert p.counters["inflight_refused_overall"] == 1
    p.resolver.asked[0][2].errback(UpstreamFailure("nothing answered"))
    assert p.ask(makeQuery("c.example"), host="127.0.0.3") is None
    assert len(p.resolver.asked) == 3


def test_queriesInFlightBoundedPerConnection() -> None:
    """
    Once maxInflightPerConnection queries on one TCP connection wait for their answers, the next ones on it get REFUSED (counted), also for cached names, while another connection is served; when an answer goes out, the connection may ask again.
    """
    p = makeProxy(maxInflightPerConnection=2)
    stack = makeStreamStack(p.proxy, "u16", clock=p.clock)
    first, second = connect(stack), connect(stack)
    assert first is not None and second is not None

    def send(connection: Any, name: str, id: int) -> None:
        query = makeQuery(name, id=id)
        connection.receive(len(query).to_bytes(2, "big") + query)

    send(first, "a.example", 1)
    send(first, "b.example", 2)
    assert first.takeSent() == b""
    send(first, "c.example", 3)
    refused = parse(first.takeSent()[2:])
    assert (refused.id, refused.rCode) == (3, dns.EREFUSED)
    assert p.counters["inflight_refused_connection"] == 1
    send(second, "c.example", 4)
    assert second.takeSent() == b"" and len(p.resolver.asked) == 3
    sent, _, d = p.resolver.asked[0]
    d.callback(replyTo(sent, aRecord("a.example", "192.0.2.1")))
    assert parse(first.takeSent()[2:]).id == 1
    send(first, "e.example", 5)
    assert first.takeSent() == b"" and len(p.resolver.asked) == 4


@pytest.mark.parametrize(
    "keys, expected",
    [
        (
            {"cache_bytes": 1000, "cache_entry_bytes": 4096},
            "services[0].cache_entry_bytes: 4096 is more than cache_bytes (1000)",
        ),
        ({"cache_entry_bytes": 100}, "services[0].cache_entry_bytes"),
        ({"max_inflight": 0}, "services[0].max_inflight"),
        ({"max_inflight_per_client": 0}, "services[0].max_inflight_per_client"),
        ({"max_inflight_per_connection": 70000}, "services[0].max_inflight_per_connection"),
    ],
)
def test_boundsConfigErrors(keys: dict[str, int], expected: str) -> None:
    """
    The cache's byte bounds and the in-flight bounds are checked with the other keys, each error naming its key path.
    """
    import tomllib

    from netd.config.options import ConfigError
    from netd.config.spec import parseConfig
    from netd.registry import discoverPlugins

    text = '[[services]]\nname = "dns"\nplugin = "dns-proxy"\nlisten = ["udp:0"]\nupstreams = ["udp:127.0.0.1:53"]\n'
    text += "".join(f"{key} = {value}\n" for key, value in keys.items())
    with pytest.raises(ConfigError) as info:
        parseConfig(tomllib.loads(text), "test.toml", discoverPlugins())
    assert expected in str(info.value)


def test_boundsDefaults() -> None:
    """
    The defaults fit together: a cache of cache_size entries of the largest answer cached fits in cache_bytes, and the in-flight bounds leave room for the benchmark's 100 queries in flight from one address.
    """
    from netd_plugins.dnsproxy import DNSProxyOptions
    from netd_plugins.dnsproxy.cache import ENTRY_OVERHEAD

    options = DNSProxyOptions()
    assert options.cache_size * (options.cache_entry_bytes + ENTRY_OVERHEAD + 255) <= options.cache_bytes
    assert options.max_inflight_per_client >= 10 * 100 and options.max_inflight >= options.max_inflight_per_client
