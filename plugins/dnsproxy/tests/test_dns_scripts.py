"""
The dns-proxy's scripted answers, in memory: the C{scripts} schema and its
errors, each action through the query path (UDP with a recording sender, TCP
through the core's stream stack), the schedules, and the C{"query"} events.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from twisted.names import dns

from netd.config.options import ConfigError, Problem, decodeTable
from netd.config.spec import parseConfig
from netd.registry import discoverPlugins
from netd.testing.memory import PEER, connect, connectTLS, makeStreamStack
from netd.tls.client import clientCreator
from netd.tls.devcerts import ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd_plugins.dnsproxy.resolver import UpstreamFailure
from netd_plugins.dnsproxy.scripts import SPOOFED_NAMES, Script

from .dnsmessages import aRecord, makeQuery, parse, replyTo
from .test_dns_proxy import CLIENT, UPSTREAM, Proxy, makeProxy

STATIC = {"netd.test": {"A": ["127.0.0.1"]}}


def scripts(*entries: dict[str, Any]) -> tuple[Script, ...]:
    """
    Script entries decoded from their config tables, as the config file's are.
    """
    problems: list[Problem] = []
    decoded = [decodeTable(Script, entry, ("scripts", i), problems) for i, entry in enumerate(entries)]
    assert problems == []
    return tuple(s for s in decoded if s is not None)


def scripted(*entries: dict[str, Any], **keys: Any) -> Proxy:
    """
    A proxy with the static name netd.test and these script entries.
    """
    return makeProxy(STATIC, scripts=scripts(*entries), **keys)


def rcodeOf(wire: bytes | None) -> int:
    """
    The rcode of an answer that was sent.
    """
    assert wire is not None, "no answer was sent"
    return parse(wire).rCode


# The schema.


def configProblems(entry: dict[str, Any]) -> list[str]:
    """
    The problems netd reports for a dns-proxy service with one script entry.
    """
    service = {
        "name": "dns",
        "plugin": "dns-proxy",
        "listen": ["udp:0"],
        "upstreams": ["udp:127.0.0.1"],
        "scripts": [entry],
    }
    with pytest.raises(ConfigError) as info:
        parseConfig({"services": [service]}, "netd.toml", discoverPlugins())
    return [p.render("netd.toml") for p in info.value.problems]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "a.test", "rcode": "SERVFAL"}, "services[0].scripts[0].rcode: expected one of 'NOERROR'"),
        ({"name": "a.test", "drop": True, "rcode": "NXDOMAIN"}, "services[0].scripts[0].rcode: drop sends no answer"),
        ({"name": "a.test", "drop": True, "delay": 100}, "services[0].scripts[0].delay: drop sends no answer"),
        ({"name": "a.test", "drop": True, "spoof": "id"}, "services[0].scripts[0].spoof: drop sends no answer"),
        ({"name": "a.test", "truncate": True, "rcode": "SERVFAIL"}, "services[0].scripts[0].rcode: truncate answers"),
        ({"name": "a.test"}, "services[0].scripts[0].name: the entry for 'a.test' does nothing"),
        (
            {"name": "a.test", "drop": True, "first": 1, "every": 2},
            "services[0].scripts[0].every: a schedule takes one of",
        ),
        (
            {"name": "a.test", "drop": True, "probability": 1.5},
            "services[0].scripts[0].probability: 1.5 is out of range",
        ),
        ({"name": "a..test", "drop": True}, "services[0].scripts[0].name: 'a..test' is not a domain name"),
        ({"name": "a.test", "qtype": "AAA", "drop": True}, "services[0].scripts[0].qtype: 'AAA' is not a query type"),
        ({"name": "a.test", "delay": 60001}, "services[0].scripts[0].delay: 60001 is out of range"),
        ({"name": "a.test", "spoof": "ip"}, "services[0].scripts[0].spoof: expected one of 'id', 'question'"),
        (
            {"name": "a.test", "rcode": "SERVFAIL", "frist": 2},
            "services[0].scripts[0].frist: unknown key; did you mean 'first'?",
        ),
        ({"rcode": "SERVFAIL"}, "services[0].scripts[0].name: missing required key"),
    ],
)
def test_badEntriesNameTheKeyPath(entry: dict[str, Any], expected: str) -> None:
    """
    A script entry with a wrong value or a nonsense combination of actions is refused, naming its key path and what is wrong.
    """
    problems = configProblems(entry)
    assert any(p.startswith(f"netd.toml: {expected}") for p in problems), problems


def test_entryReadsBackAsConfigured() -> None:
    """
    An entry's names, query type and actions read back in config form: lowercase name, wildcard kept, type by name.
    """
    [entry] = scripts({"name": "*.Svc.Test.", "qtype": "aaaa", "rcode": "SERVFAIL", "first": 2})
    assert (entry.name.toConfig(), entry.qtype and entry.qtype.toConfig(), entry.first) == ("*.svc.test", "AAAA", 2)
    [other] = scripts({"name": "a.test", "qtype": "type65", "delay": 5})
    assert other.qtype is not None and (other.qtype.code, other.qtype.toConfig()) == (65, "TYPE65")


# The actions.


@pytest.mark.parametrize(
    ("rcode", "code"),
    [("NXDOMAIN", dns.ENAME), ("SERVFAIL", dns.ESERVER), ("REFUSED", dns.EREFUSED), ("NOERROR", dns.OK)],
)
def test_rcodeForcedBeforeStaticRecords(rcode: str, code: int) -> None:
    """
    A forced rcode answers a static name with that rcode, no records and the client's ID, asking no upstream.
    """
    p = scripted({"name": "netd.test", "rcode": rcode})
    answer = parse(p.ask(makeQuery("netd.test", id=77)))
    assert (answer.id, answer.rCode, answer.answers, answer.queries[0].name.name) == (77, code, [], b"netd.test")
    assert p.resolver.asked == []
    assert p.counters["scripted_queries"] == 1


def test_accessCheckComesFirst() -> None:
    """
    A client outside the allow networks is refused even for a name whose script drops the query.
    """
    p = makeProxy(allow=("10.0.0.0/8",), scripts=scripts({"name": "a.test", "drop": True}))
    assert rcodeOf(p.ask(makeQuery("a.test"))) == dns.EREFUSED
    assert p.counters["scripted_queries"] == 0


def test_dropSendsNothing() -> None:
    """
    A dropped query gets no answer at all and is not forwarded.
    """
    p = scripted({"name": "example.org", "drop": True})
    assert p.ask(makeQuery("example.org")) is None
    assert p.resolver.asked == []
    assert p.ask(makeQuery("other.example")) is None
    assert len(p.resolver.asked) == 1


def test_truncateActsOnUdpOnly() -> None:
    """
    Over UDP a truncating entry answers with TC set and no records; the client's retry over TCP gets the real answer, and its schedule does not count it.
    """
    p = scripted({"name": "netd.test", "truncate": True, "first": 1})
    udp = parse(p.ask(makeQuery("netd.test", id=5)))
    assert (udp.id, udp.trunc, udp.answers, udp.rCode) == (5, True, [], dns.OK)
    connection = connect(makeStreamStack(p.proxy, "u16", clock=p.clock))
    assert connection is not None
    query = makeQuery("netd.test", id=6)
    connection.receive(len(query).to_bytes(2, "big") + query)
    tcp = parse(connection.takeSent()[2:])
    assert (tcp.id, tcp.trunc, [a.payload.dottedQuad() for a in tcp.answers]) == (6, False, ["127.0.0.1"])
    assert p.proxy.scripts.states[0].seen == 1
    assert not parse(p.ask(makeQuery("netd.test"))).trunc


def test_delayHoldsStaticAndUpstreamAnswers() -> None:
    """
    A delay holds back a static answer, and an upstream answer once it has come, by the given milliseconds.
    """
    p = scripted({"name": "netd.test", "delay": 250}, {"name": "example.org", "delay": 100})
    assert p.ask(makeQuery("netd.test")) is None
    p.clock.advance(0.249)
    assert p.lastSender.sent == []
    p.clock.advance(0.001)
    assert parse(p.lastSender.sent[0][0]).answers[0].payload.dottedQuad() == "127.0.0.1"
    p.ask(makeQuery("example.org", id=9))
    p.clock.advance(5)
    [(sent, _, d)] = p.resolver.asked
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1")))
    assert p.lastSender.sent == []
    p.clock.advance(0.1)
    assert parse(p.lastSender.sent[0][0]).id == 9


def test_delayedAnswersDroppedWhenTheServiceStops() -> None:
    """
    Answers a delay holds back are dropped, their timers cancelled, when the service stops.
    """
    p = scripted({"name": "netd.test", "delay": 1000})
    p.proxy.startService()
    p.ask(makeQuery("netd.test"))
    p.proxy.stopService()
    assert p.clock.getDelayedCalls() == []
    p.clock.advance(2)
    assert p.lastSender.sent == []


def test_spoofedIdArrivesFirst() -> None:
    """
    With spoof = "id" an NXDOMAIN answer with another ID goes first on the socket, then the real answer with the client's ID; a seed repeats the forged ID.
    """
    forgedIDs = []
    for _ in range(2):
        p = scripted({"name": "netd.test", "spoof": "id", "seed": 3})
        p.ask(makeQuery("netd.test", id=1000))
        [(forged, peer), (real, _)] = p.lastSender.sent
        forgedAnswer, realAnswer = parse(forged), parse(real)
        assert forgedAnswer.id != 1000 and forgedAnswer.rCode == dns.ENAME and peer == CLIENT
        assert (realAnswer.id, realAnswer.rCode, len(realAnswer.answers)) == (1000, dns.OK, 1)
        forgedIDs.append(forgedAnswer.id)
    assert forgedIDs[0] == forgedIDs[1] == 1000 ^ random.Random(3).randrange(1, 65536)


def test_spoofedQuestionOverTcpBeforeTheUpstreamAnswer() -> None:
    """
    With spoof = "question" over TCP, an answer with the client's ID for another question is sent on the connection at once, and the upstream's answer follows when it comes.
    """
    p = scripted({"name": "example.org", "spoof": "question"})
    connection = connect(makeStreamStack(p.proxy, "u16", clock=p.clock))
    assert connection is not None
    query = makeQuery("example.org", id=44)
    connection.receive(len(query).to_bytes(2, "big") + query)
    forged = parse(connection.takeSent()[2:])
    assert (forged.id, forged.queries[0].name.name, forged.rCode) == (44, b"spoofed.invalid", dns.ENAME)
    [(sent, _, d)] = p.resolver.asked
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1")))
    real = parse(connection.takeSent()[2:])
    assert (real.id, real.queries[0].name.name, real.answers[0].payload.dottedQuad()) == (
        44,
        b"example.org",
        "192.0.2.1",
    )


def test_spoofedQuestionIsAnotherName() -> None:
    """
    A query for the forged question's own name gets a forged answer for another name still.
    """
    p = scripted({"name": "spoofed.invalid", "spoof": "question", "rcode": "NXDOMAIN"})
    p.ask(makeQuery("spoofed.invalid"))
    forged = parse(p.lastSender.sent[0][0])
    assert forged.queries[0].name.name == b"spoofed-2.invalid"
    assert SPOOFED_NAMES[1] == b"\x09spoofed-2\x07invalid\x00"


@pytest.mark.parametrize(
    ("name", "qtype", "scriptedQuery"),
    [
        ("a.svc.test", dns.AAAA, True),
        ("x.a.svc.test", dns.AAAA, True),
        ("a.svc.test", dns.A, False),
        ("svc.test", dns.AAAA, False),
        ("asvc.test", dns.AAAA, False),
    ],
)
def test_nameAndTypeMatching(name: str, qtype: int, scriptedQuery: bool) -> None:
    """
    A wildcard entry with a qtype acts on names below the wildcard's name, any depth, of that type only.
    """
    p = scripted({"name": "*.svc.test", "qtype": "AAAA", "rcode": "REFUSED"})
    p.ask(makeQuery(name, qtype))
    assert (p.counters["scripted_queries"] == 1) == scriptedQuery


# The schedules.


def rcodes(p: Proxy, name: str, count: int) -> list[int]:
    """
    The rcodes of C{count} queries for a static name.
    """
    return [rcodeOf(p.ask(makeQuery(name))) for _ in range(count)]


def test_firstTwoThenNormal() -> None:
    """
    With first = 2 the first two queries get SERVFAIL and the rest their real answer.
    """
    p = scripted({"name": "netd.test", "rcode": "SERVFAIL", "first": 2})
    assert rcodes(p, "netd.test", 4) == [dns.ESERVER, dns.ESERVER, dns.OK, dns.OK]


def test_everyThird() -> None:
    """
    With every = 3 the 3rd and 6th queries are scripted, the others not.
    """
    p = scripted({"name": "netd.test", "rcode": "NXDOMAIN", "every": 3})
    assert [r == dns.ENAME for r in rcodes(p, "netd.test", 6)] == [False, False, True, False, False, True]


def test_probabilityWithSeedRepeats() -> None:
    """
    With a probability and a seed, the queries scripted are the generator's draws below the probability, the same in every run.
    """
    draws = random.Random(11)
    expected = [draws.random() < 0.5 for _ in range(20)]
    for _ in range(2):
        p = scripted({"name": "netd.test", "rcode": "SERVFAIL", "probability": 0.5, "seed": 11})
        assert [r == dns.ESERVER for r in rcodes(p, "netd.test", 20)] == expected
    assert 0 < sum(expected) < 20


def test_firstEntryWhoseScheduleAppliesDecides() -> None:
    """
    The first entry that matches and whose schedule applies decides, and an entry's schedule counts only the queries it matches.
    """
    p = scripted(
        {"name": "netd.test", "rcode": "SERVFAIL", "first": 1},
        {"name": "*.test", "rcode": "REFUSED", "every": 2},
        {"name": "netd.test", "rcode": "NXDOMAIN"},
    )
    p.ask(makeQuery("other.example"))
    assert rcodes(p, "netd.test", 4) == [dns.ESERVER, dns.ENAME, dns.EREFUSED, dns.ENAME]
    assert p.proxy.scripts.applied() == [1, 1, 2]


# The query events.


def queryEvents(p: Proxy) -> list[dict[str, Any]]:
    """
    The C{"query"} events recorded, without their sequence number and time.
    """
    return [{k: v for k, v in e.items() if k not in ("seq", "time")} for e in p.proxy.events.events(kind="query")]


def test_eventsForStaticUpstreamAndCacheHit() -> None:
    """
    Each answer is one query event with the client, name, type, transport, rcode, source, cache hit, the upstream that answered, and the time taken.
    """
    p = makeProxy(STATIC, events=10)
    p.ask(makeQuery("netd.test"))
    p.ask(makeQuery("example.org", dns.A))
    p.clock.advance(0.0125)
    [(sent, _, d)] = p.resolver.asked
    d.callback(replyTo(sent, aRecord("example.org", "192.0.2.1")))
    p.ask(makeQuery("example.org", dns.A))
    static, upstream, cached = queryEvents(p)
    common = {"client": "127.0.0.1:5555", "transport": "udp", "rcode": "NOERROR", "script": None}
    assert static == {
        **common,
        "name": "netd.test",
        "type": "A",
        "source": "static",
        "cache_hit": False,
        "upstream": None,
        "duration_ms": 0.0,
        "kind": "query",
    }
    assert upstream == {
        **common,
        "name": "example.org",
        "type": "A",
        "source": "upstream",
        "cache_hit": False,
        "upstream": UPSTREAM.toConfig(),
        "duration_ms": 12.5,
        "kind": "query",
    }
    assert cached == {
        **common,
        "name": "example.org",
        "type": "A",
        "source": "cache",
        "cache_hit": True,
        "upstream": None,
        "duration_ms": 0.0,
        "kind": "query",
    }


def test_eventsForScriptedQueries() -> None:
    """
    A scripted query's event names the entry and its actions; a dropped one has no rcode; a delayed one's time includes the delay.
    """
    p = scripted({"name": "netd.test", "delay": 40, "first": 1}, {"name": "a.test", "drop": True}, events=10)
    p.ask(makeQuery("netd.test"))
    p.clock.advance(0.04)
    p.ask(makeQuery("a.test", dns.MX))
    delayed, dropped = queryEvents(p)
    assert (delayed["source"], delayed["rcode"], delayed["duration_ms"], delayed["script"]) == (
        "static",
        "NOERROR",
        40.0,
        {"index": 0, "delay": 40},
    )
    assert (dropped["source"], dropped["rcode"], dropped["type"], dropped["script"]) == (
        "script",
        None,
        "MX",
        {"index": 1, "drop": True},
    )


def test_eventsOverTcpAndForServfail() -> None:
    """
    A TCP query's event says tcp and the client's port; when the upstreams fail the event has SERVFAIL and no upstream.
    """
    p = makeProxy(events=10)
    connection = connect(makeStreamStack(p.proxy, "u16", clock=p.clock))
    assert connection is not None
    query = makeQuery("example.org")
    connection.receive(len(query).to_bytes(2, "big") + query)
    p.resolver.asked[0][2].errback(UpstreamFailure("upstreams down"))
    [event] = queryEvents(p)
    assert (event["transport"], event["client"], event["rcode"], event["upstream"]) == (
        "tcp",
        f"{PEER.host}:{PEER.port}",
        "SERVFAIL",
        None,
    )


def test_eventsSayTls(tmp_path: Path) -> None:
    """
    A query over a TLS connection (DNS over TLS) is recorded with transport tls.
    """
    dev, _ = ensureDevelopmentSet(str(tmp_path))
    p = makeProxy(STATIC, events=10)
    tls = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    stack = makeStreamStack(p.proxy, "u16", clock=p.clock, tls=tls)
    client = connectTLS(stack, clientCreator("localhost", dev.ca), p.clock)
    assert client is not None
    query = makeQuery("netd.test", id=3)
    client.send(len(query).to_bytes(2, "big") + query)
    assert parse(client.takeReceived()[2:]).id == 3
    [event] = queryEvents(p)
    assert (event["transport"], event["source"]) == ("tls", "static")


def test_noEventsWhenTheLogIsOff() -> None:
    """
    With the event log off, queries are answered and nothing is recorded.
    """
    p = makeProxy(STATIC, events=0)
    assert rcodeOf(p.ask(makeQuery("netd.test"))) == dns.OK
    assert p.proxy.events.events() == [] and not p.proxy.timed
