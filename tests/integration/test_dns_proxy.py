"""
The dns-proxy service end to end: netd runs as a subprocess forwarding to a real
dnsmasq (the C{dnsUpstream} fixture, records in L{dns_upstream.EXPECTED}), and
dig and raw sockets query it over UDP and TCP: every record type and class
passes through as the upstream answers it, EDNS and truncation behave, static
records, the cache, access control, failing upstreams and malformed queries.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.names import dns

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, DigResult, connect, dig, recvExactly, waitForLog
from .dns_upstream import (
    BIG_NAME,
    BIG_TEXTS,
    BOGUS_ADDRESS,
    BOGUS_NAME,
    EXPECTED,
    NXDOMAIN_NAME,
    SOA,
    TTL,
    Dnsmasq,
    ValidatingUpstream,
    answerRcode,
    buildQuery,
    freeLoopbackPort,
)

pytestmark = pytest.mark.integration

TIMEOUT = 1.0
DEADLINE = 2.5
"""
The per-upstream timeout and overall deadline of the services whose upstreams
fail, short so that the tests are quick; the others use the issue's 2 and 5.
"""

STATIC_RECORDS = """\
[services.records]
"netd.test" = { A = ["127.0.0.1"], AAAA = ["::1"], TXT = ["netd static record"], ttl = 300 }
"*.svc.test" = { A = ["10.0.0.1"] }
"mail.netd.test" = { MX = ["10 mx1.netd.test"] }
"""

LOOPBACK_LISTEN = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]


def dnsConfig(upstreams: list[str], *, listen: list[str] = LOOPBACK_LISTEN, records: bool = True, **keys: Any) -> str:
    """
    A config with one dns-proxy service named C{dns}: the issue's settings,
    overridden or extended by C{keys}, and its static records unless
    C{records} is false.
    """
    settings: dict[str, Any] = {"cache_size": 10000, "timeout": 2.0, "deadline": 5.0, "log_queries": True, **keys}
    lines = [
        "[[services]]",
        'name = "dns"',
        'plugin = "dns-proxy"',
        f"listen = {json.dumps(listen)}",
        f"upstreams = {json.dumps(upstreams)}",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n\n" + (STATIC_RECORDS if records else "")


def ask(netd: NetdServer, transport: str, *args: str, time: int = 3) -> DigResult:
    """
    dig against the C{dns} service of C{netd} over C{transport} ("udp" or "tcp").
    """
    if transport == "tcp":
        return dig(netd.address("dns", "tcp"), "+tcp", *args, time=time)
    return dig(netd.address("dns", "udp"), *args, time=time)


def startOnOnePort(start: Callable[..., NetdServer], config: Callable[[int], str], attempts: int = 5) -> NetdServer:
    """
    Start netd with a config listening on the same port for UDP and TCP (which
    dig's retry over TCP after a truncated UDP answer needs), choosing a free
    port and trying another if it was taken meanwhile.
    """
    for _ in range(attempts):
        port = freeLoopbackPort()
        netd = start(config(port), wait=False)
        try:
            netd.waitUntilReady()
        except AssertionError:
            netd.kill()
            if "in use" not in netd.log():
                raise
            continue
        return netd
    raise AssertionError(f"no free port for UDP and TCP in {attempts} attempts")


def onePortListen(port: int) -> list[str]:
    """
    UDP and TCP on C{port} of 127.0.0.1.
    """
    return [f"udp:{port}:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1"]


@pytest.fixture(scope="module")
def proxy(startModuleNetd: Any, dnsUpstream: Dnsmasq) -> NetdServer:
    """
    One netd shared by the module's forwarding and static-record tests, with the
    issue's config, forwarding to the test upstream, on one port for UDP and TCP.
    """
    return startOnOnePort(startModuleNetd, lambda port: dnsConfig([dnsUpstream.upstream], listen=onePortListen(port)))


@pytest.fixture
def silentUpstream() -> Iterator[str]:
    """
    An upstream that never answers: a UDP socket the test holds bound and never reads.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        yield f"udp:127.0.0.1:{silent.getsockname()[1]}"


@pytest.fixture
def closedUpstream() -> str:
    """
    An upstream where nothing listens: a UDP port that was free a moment ago.
    """
    return f"udp:127.0.0.1:{freeLoopbackPort()}"


# Forwarding: every type and class, as the upstream answers it.

FORWARDED = sorted((name, rtype) for name, rtype in EXPECTED if name != BIG_NAME)
TRANSPORTS = ["udp", "tcp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("name", "rtype"), FORWARDED, ids=[f"{name}-{rtype}" for name, rtype in FORWARDED])
def test_forwardsAsUpstreamAnswers(
    proxy: NetdServer, dnsUpstream: Dnsmasq, transport: str, name: str, rtype: str
) -> None:
    """
    A query netd forwards gets the upstream's records (answer and authority), with TTLs no higher than the upstream's.
    """
    direct = dig(dnsUpstream.address, name, rtype, *(["+tcp"] if transport == "tcp" else []))
    forwarded = ask(proxy, transport, name, rtype)
    assert direct.last.status == "NOERROR", direct.output
    assert forwarded.last.status == "NOERROR", forwarded.output
    assert forwarded.last.data(rtype) == sorted(EXPECTED[name, rtype]), forwarded.output
    assert forwarded.last.keys("answer") == direct.last.keys("answer"), forwarded.output
    assert forwarded.last.keys("authority") == direct.last.keys("authority"), forwarded.output
    assert all(0 < record.ttl <= TTL for record in forwarded.last.answer), forwarded.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forwardsCnameChain(proxy: NetdServer, dnsUpstream: Dnsmasq, transport: str) -> None:
    """
    An A query for an alias gets the upstream's CNAME and the target's A record.
    """
    direct = dig(dnsUpstream.address, "alias.example.test", "A")
    forwarded = ask(proxy, transport, "alias.example.test", "A")
    assert forwarded.last.status == "NOERROR", forwarded.output
    assert forwarded.last.keys() == direct.last.keys(), forwarded.output
    assert forwarded.last.data("CNAME") == ["www.example.test."]
    assert forwarded.last.data("A") == ["192.0.2.10"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forwardsChaosClass(proxy: NetdServer, dnsUpstream: Dnsmasq, transport: str) -> None:
    """
    A class CH query (version.bind TXT) gets the upstream's status and records.
    """
    direct = dig(dnsUpstream.address, "CH", "TXT", "version.bind")
    forwarded = ask(proxy, transport, "CH", "TXT", "version.bind")
    assert direct.messages, direct.output
    assert forwarded.last.status == direct.last.status, forwarded.output
    assert forwarded.last.keys() == direct.last.keys(), forwarded.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forwardsNxdomain(proxy: NetdServer, dnsUpstream: Dnsmasq, transport: str) -> None:
    """
    An unknown name in the upstream's zone gets NXDOMAIN with the zone's SOA.
    """
    forwarded = ask(proxy, transport, NXDOMAIN_NAME, "A")
    assert forwarded.last.status == "NXDOMAIN", forwarded.output
    assert forwarded.last.answer == ()
    assert [(r.name, r.rtype, r.data) for r in forwarded.last.authority] == [("example.test.", "SOA", SOA)], (
        forwarded.output
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forwardsNodata(proxy: NetdServer, transport: str) -> None:
    """
    A known name asked for a type it lacks gets NOERROR with no answer and the zone's SOA.
    """
    forwarded = ask(proxy, transport, "www.example.test", "MX")
    assert forwarded.last.status == "NOERROR", forwarded.output
    assert forwarded.last.answer == ()
    assert [r.rtype for r in forwarded.last.authority] == ["SOA"], forwarded.output


# EDNS(0) and truncation.


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["www.example.test", "netd.test"])
def test_dnssecOkBitKept(proxy: NetdServer, transport: str, name: str) -> None:
    """
    A query with the DO bit (+dnssec) gets an answer whose OPT record has the DO bit.
    """
    forwarded = ask(proxy, transport, name, "A", "+dnssec")
    assert forwarded.last.status == "NOERROR", forwarded.output
    assert forwarded.last.edns is not None and "do" in forwarded.last.edns, forwarded.output
    assert forwarded.last.answer, forwarded.output


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["www.example.test", "netd.test"])
def test_ednsMirrorsQuery(proxy: NetdServer, transport: str, name: str) -> None:
    """
    An answer has an OPT record without DO for a plain EDNS query, and none for a query without EDNS.
    """
    plain = ask(proxy, transport, name, "A")
    assert plain.last.edns is not None and "do" not in plain.last.edns, plain.output
    noEdns = ask(proxy, transport, name, "A", "+noedns")
    assert noEdns.last.status == "NOERROR", noEdns.output
    assert noEdns.last.edns is None, noEdns.output
    assert noEdns.last.answer, noEdns.output


def test_truncatedThenRetriedOverTcp(proxy: NetdServer) -> None:
    """
    A UDP answer too big for a 512-byte buffer comes truncated, and dig's retry over TCP gets all 40 TXT records.
    """
    result = ask(proxy, "udp", BIG_NAME, "TXT", "+bufsize=512")
    assert result.retriedOverTcp, result.output
    assert result.last.status == "NOERROR", result.output
    assert "tc" not in result.last.flags
    assert result.last.data("TXT") == sorted(f'"{text}"' for text in BIG_TEXTS), result.output


@pytest.mark.parametrize("options", [["+bufsize=512"], ["+bufsize=1232"], ["+noedns"]])
def test_truncatedAnswerFitsBuffer(proxy: NetdServer, options: list[str]) -> None:
    """
    Over UDP, an answer larger than the client's buffer (512 without EDNS) has TC set and fits the buffer.
    """
    result = ask(proxy, "udp", BIG_NAME, "TXT", "+ignore", *options)
    limit = 1232 if "+bufsize=1232" in options else 512
    assert len(result.messages) == 1, result.output
    assert result.last.status == "NOERROR", result.output
    assert "tc" in result.last.flags, result.output
    assert result.last.size is not None and result.last.size <= limit, result.output


def test_largeAnswerOverTcp(proxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    Over TCP the large answer comes whole, although the upstream truncates it over UDP at 1232 bytes.
    """
    result = ask(proxy, "tcp", BIG_NAME, "TXT")
    assert result.last.status == "NOERROR", result.output
    assert "tc" not in result.last.flags
    assert result.last.data("TXT") == sorted(f'"{text}"' for text in BIG_TEXTS), result.output


def test_largeAnswerInLargeUdpBuffer(proxy: NetdServer) -> None:
    """
    Over UDP with an 8 KB buffer the 4.6 KB answer comes whole, not truncated.
    """
    result = ask(proxy, "udp", BIG_NAME, "TXT", "+bufsize=8192", "+ignore")
    assert result.last.status == "NOERROR", result.output
    assert "tc" not in result.last.flags, result.output
    assert len(result.last.data("TXT")) == len(BIG_TEXTS), result.output


# Static records.

STATIC = [
    ("netd.test", "A", ["127.0.0.1"]),
    ("netd.test", "AAAA", ["::1"]),
    ("netd.test", "TXT", ['"netd static record"']),
    ("foo.svc.test", "A", ["10.0.0.1"]),
    ("NETD.Test", "A", ["127.0.0.1"]),
    ("mail.netd.test", "MX", ["10 mx1.netd.test."]),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("name", "rtype", "data"), STATIC, ids=[f"{name}-{rtype}" for name, rtype, _ in STATIC])
def test_staticRecords(
    proxy: NetdServer, dnsUpstream: Dnsmasq, transport: str, name: str, rtype: str, data: list[str]
) -> None:
    """
    A name in the records table (exact, any case, or by wildcard) is answered from the config without asking the upstream.
    """
    before = dnsUpstream.queriesFor(name)
    result = ask(proxy, transport, name, rtype)
    assert result.last.status == "NOERROR", result.output
    assert result.last.data(rtype) == data, result.output
    assert [record.rtype for record in result.last.answer] == [rtype] * len(data), result.output
    if name.lower() == "netd.test":
        assert {record.ttl for record in result.last.answer} == {300}, result.output
    assert dnsUpstream.queriesFor(name) == before


def test_staticNameInOtherClass(proxy: NetdServer) -> None:
    """
    A static name asked in class CH is not answered with the config's class IN records.
    """
    result = ask(proxy, "udp", "netd.test", "CH", "TXT")
    assert result.messages, result.output
    assert "malformed" not in result.output, result.output
    assert all(record.rclass == "CH" for record in result.last.answer), result.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_staticNodata(proxy: NetdServer, dnsUpstream: Dnsmasq, transport: str) -> None:
    """
    A static name asked for a type it lacks gets NOERROR with no answer, not a forwarded query.
    """
    before = dnsUpstream.queriesFor("netd.test")
    result = ask(proxy, transport, "netd.test", "MX")
    assert result.last.status == "NOERROR", result.output
    assert result.last.answer == (), result.output
    assert dnsUpstream.queriesFor("netd.test") == before


def test_logQueries(proxy: NetdServer) -> None:
    """
    With log_queries, each query is logged with its name.
    """
    result = ask(proxy, "udp", "ns1.example.test", "A")
    assert result.last.status == "NOERROR", result.output
    waitForLog(proxy, "ns1.example.test")


# The cache: each test has a netd of its own, so that its cache starts empty.


@pytest.fixture
def freshProxy(startNetd: Any, dnsUpstream: Dnsmasq) -> NetdServer:
    """
    A netd with an empty cache, forwarding to the test upstream.
    """
    netd: NetdServer = startNetd(dnsConfig([dnsUpstream.upstream]))
    return netd


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cacheHit(freshProxy: NetdServer, dnsUpstream: Dnsmasq, transport: str) -> None:
    """
    A second identical query is answered from the cache, the same but for a TTL no higher, without asking the upstream.
    """
    before = dnsUpstream.queriesFor("mail.example.test")
    first = ask(freshProxy, transport, "mail.example.test", "A")
    second = ask(freshProxy, transport, "mail.example.test", "A")
    assert dnsUpstream.queriesFor("mail.example.test") == before + 1
    assert first.last.status == second.last.status == "NOERROR", second.output
    assert second.last.keys() == first.last.keys() and second.last.keys("authority") == first.last.keys("authority")
    assert second.last.answer[0].ttl <= first.last.answer[0].ttl, second.output


def test_cacheServesUdpAnswerOverTcp(freshProxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    An answer cached from a UDP query serves the same query over TCP.
    """
    before = dnsUpstream.queriesFor("mail.example.test")
    ask(freshProxy, "udp", "mail.example.test", "A")
    overTcp = ask(freshProxy, "tcp", "mail.example.test", "A")
    assert overTcp.last.data() == ["192.0.2.25"], overTcp.output
    assert dnsUpstream.queriesFor("mail.example.test") == before + 1


def test_cacheTtlCountsDown(freshProxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    A cached answer's TTLs go down by the whole seconds it spent in the cache.
    """
    first = ask(freshProxy, "udp", "www.example.test", "AAAA")
    time.sleep(2.2)
    second = ask(freshProxy, "udp", "www.example.test", "AAAA")
    assert second.last.data() == first.last.data() == ["2001:db8::10"], second.output
    drop = first.last.answer[0].ttl - second.last.answer[0].ttl
    assert 1 <= drop <= 4, (first.output, second.output)
    assert all(record.ttl <= first.last.authority[0].ttl - 1 for record in second.last.authority), second.output


def test_negativeCache(freshProxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    An NXDOMAIN answer with an SOA is cached: the second query gets NXDOMAIN and the SOA without asking the upstream.
    """
    name = f"negative-{random.randrange(10**9)}.example.test"
    first = ask(freshProxy, "udp", name, "A")
    second = ask(freshProxy, "udp", name, "A")
    assert first.last.status == second.last.status == "NXDOMAIN", second.output
    assert second.last.keys("authority") == first.last.keys("authority") != [], second.output
    assert dnsUpstream.queriesFor(name) == 1


def test_cacheKeyHasDoBit(freshProxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    A query with the DO bit is not answered from an answer cached for one without it, and is cached itself.
    """
    before = dnsUpstream.queriesFor("ns1.example.test")
    ask(freshProxy, "udp", "ns1.example.test", "A")
    withDo = ask(freshProxy, "udp", "ns1.example.test", "A", "+dnssec")
    again = ask(freshProxy, "udp", "ns1.example.test", "A", "+dnssec")
    assert dnsUpstream.queriesFor("ns1.example.test") == before + 2
    for result in (withDo, again):
        assert result.last.edns is not None and "do" in result.last.edns, result.output
        assert result.last.data() == ["192.0.2.53"], result.output


def test_cacheIgnoresCaseAndKeepsQuestion(freshProxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    A query differing only in case is a cache hit, and its answer repeats the question as the client spelled it.
    """
    before = dnsUpstream.queriesFor("v6only.example.test")
    ask(freshProxy, "udp", "v6only.example.test", "AAAA")
    mixed = ask(freshProxy, "udp", "V6Only.Example.TEST", "AAAA")
    assert dnsUpstream.queriesFor("v6only.example.test") == before + 1
    assert mixed.last.data() == ["2001:db8::6"], mixed.output
    assert mixed.last.question and mixed.last.question[0].split()[0] == "V6Only.Example.TEST.", mixed.output


def test_cacheKeepsRdBitOfQuery(freshProxy: NetdServer) -> None:
    """
    A cache hit's RD flag is the query's, whatever the query that filled the cache asked.
    """
    recursive = ask(freshProxy, "udp", "www.example.test", "A")
    iterative = ask(freshProxy, "udp", "www.example.test", "A", "+norecurse")
    assert "rd" in recursive.last.flags, recursive.output
    assert "rd" not in iterative.last.flags, iterative.output
    assert iterative.last.data() == ["192.0.2.10"], iterative.output


@pytest.mark.parametrize(("key", "value"), [("max_ttl", 60), ("min_ttl", 3600)])
def test_ttlClamps(startNetd: Any, dnsUpstream: Dnsmasq, key: str, value: int) -> None:
    """
    max_ttl and min_ttl bound the TTLs a client is given, on the first answer as on cache hits.
    """
    clamp: dict[str, Any] = {key: value}
    netd: NetdServer = startNetd(dnsConfig([dnsUpstream.upstream], **clamp))
    first = ask(netd, "udp", "www.example.test", "A")
    second = ask(netd, "udp", "www.example.test", "A")
    for which, result in [("forwarded", first), ("cached", second)]:
        ttl = result.last.answer[0].ttl
        if key == "max_ttl":
            assert ttl <= value, f"the {which} answer has TTL {ttl}, more than max_ttl = {value}:\n{result.output}"
        else:
            assert value - 5 <= ttl <= value, (
                f"the {which} answer has TTL {ttl}, not min_ttl = {value}:\n{result.output}"
            )


# Several queries on one TCP connection.


def test_severalQueriesOneTcpConnection(proxy: NetdServer) -> None:
    """
    dig +keepopen sends three queries on one TCP connection and gets each answer.
    """
    result = dig(
        proxy.address("dns", "tcp"),
        "+tcp",
        "+keepopen",
        "www.example.test",
        "A",
        "netd.test",
        "A",
        NXDOMAIN_NAME,
        "A",
    )
    assert [message.status for message in result.messages] == ["NOERROR", "NOERROR", "NXDOMAIN"], result.output
    assert result.messages[0].data() == ["192.0.2.10"]
    assert result.messages[1].data() == ["127.0.0.1"]


def addresses(message: dns.Message, family: int) -> list[str]:
    """
    The addresses of the A (or AAAA) records of a message's answer section.
    """
    payloads: list[Any] = [record.payload for record in message.answers]
    return [socket.inet_ntop(family, payload.address) for payload in payloads]


def test_pipelinedTcpQueries(proxy: NetdServer) -> None:
    """
    Queries written back to back on one TCP connection, before any answer is read, are all answered, matched by ID.
    """
    questions = {
        0x1001: ("www.example.test", dns.A),
        0x1002: (BIG_NAME, dns.TXT),
        0x1003: ("netd.test", dns.AAAA),
        0x1004: (NXDOMAIN_NAME, dns.A),
    }
    with connect(proxy.address("dns", "tcp")) as client:
        wire = b""
        for queryId, (name, qtype) in questions.items():
            query = buildQuery(name, qtype, queryId=queryId)
            wire += struct.pack("!H", len(query)) + query
        client.sendall(wire)
        answers = {}
        for _ in questions:
            (length,) = struct.unpack("!H", recvExactly(client, 2))
            message = dns.Message()
            message.fromStr(recvExactly(client, length))
            answers[message.id] = message
    assert sorted(answers) == sorted(questions)
    assert addresses(answers[0x1001], socket.AF_INET) == ["192.0.2.10"]
    assert len(answers[0x1002].answers) == len(BIG_TEXTS)
    assert addresses(answers[0x1003], socket.AF_INET6) == ["::1"]
    assert answers[0x1004].rCode == dns.ENAME


# Access control.


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["www.example.test", "netd.test"])
def test_refusedOutsideAllow(startNetd: Any, dnsUpstream: Dnsmasq, transport: str, name: str) -> None:
    """
    A client outside the allow networks gets REFUSED, for forwarded and static names alike, and nothing is forwarded.
    """
    netd: NetdServer = startNetd(dnsConfig([dnsUpstream.upstream], allow=["10.0.0.0/8"]))
    before = dnsUpstream.queriesFor(name)
    result = ask(netd, transport, name, "A")
    assert result.last.status == "REFUSED", result.output
    assert result.last.answer == ()
    assert dnsUpstream.queriesFor(name) == before


# Upstreams that fail.


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kinds", [["closed"], ["silent"], ["closed", "silent"]])
def test_servfailWhenNoUpstreamAnswers(
    startNetd: Any, silentUpstream: str, closedUpstream: str, transport: str, kinds: list[str]
) -> None:
    """
    When no upstream answers (nothing listening, or a socket that never replies), the client gets SERVFAIL within the deadline.
    """
    upstreams = [{"closed": closedUpstream, "silent": silentUpstream}[kind] for kind in kinds]
    netd: NetdServer = startNetd(dnsConfig(upstreams, timeout=TIMEOUT, deadline=DEADLINE))
    result = ask(netd, transport, "www.example.test", "A", time=int(DEADLINE) + 5)
    assert result.messages, f"no answer at all:\n{result.output}"
    assert result.last.status == "SERVFAIL", result.output
    assert result.elapsed < DEADLINE + 2, result.elapsed
    again = ask(netd, transport, "www.example.test", "A", time=int(DEADLINE) + 5)
    assert again.last.status == "SERVFAIL", again.output


@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_failoverToNextUpstream(
    startNetd: Any, dnsUpstream: Dnsmasq, silentUpstream: str, closedUpstream: str, kind: str
) -> None:
    """
    With a dead first upstream, the query is answered by the next one within the timeout and the deadline.
    """
    dead = {"closed": closedUpstream, "silent": silentUpstream}[kind]
    netd: NetdServer = startNetd(dnsConfig([dead, dnsUpstream.upstream], timeout=TIMEOUT, deadline=DEADLINE))
    for name, rtype in [("www.example.test", "A"), ("example.test", "MX")]:
        result = ask(netd, "udp", name, rtype, time=int(DEADLINE) + 5)
        assert result.last.status == "NOERROR", result.output
        assert result.last.data(rtype) == sorted(EXPECTED[name, rtype]), result.output
        assert result.elapsed < DEADLINE + 1, result.elapsed


def test_tcpUpstreamAnswersEveryKind(startNetd: Any, dnsUpstream: Dnsmasq) -> None:
    """
    A tcp: upstream answers every kind of query, the large answer whole, each
    over a stream connection to a dnsmasq child (reuse of one connection is
    proven in the unit tests: this dnsmasq closes a TCP connection after its
    first answer, so netd must reconnect, and does).
    """
    netd: NetdServer = startNetd(dnsConfig([f"tcp:{dnsUpstream.host}:{dnsUpstream.port}"], records=False))
    questions = [
        ("www.example.test", "A"),
        ("example.test", "MX"),
        ("_sip._udp.example.test", "SRV"),
        (BIG_NAME, "TXT"),
    ]
    before = {name: dnsUpstream.answeringPids(name, rtype) for name, rtype in questions}
    for name, rtype in questions:
        result = ask(netd, "udp", name, rtype, "+bufsize=8192")
        assert result.last.status == "NOERROR", result.output
        assert result.last.data(rtype) == sorted(EXPECTED[name, rtype]), result.output
    pids = {pid for name, rtype in questions for pid in dnsUpstream.answeringPids(name, rtype)[len(before[name]) :]}
    assert pids and dnsUpstream.pid not in pids, f"the queries did not come over TCP (answered by {pids})"


# Malformed queries.


def rawExchange(address: tuple[str, int], datagram: bytes, timeout: float = 1.0) -> bytes | None:
    """
    Send one datagram to C{address}; the answer, or L{None} if none came within C{timeout}.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        client.sendto(datagram, address)
        try:
            return client.recvfrom(65535)[0]
        except TimeoutError:
            return None


def header(
    queryId: int, flags: int = 0x0100, qdcount: int = 1, ancount: int = 0, nscount: int = 0, arcount: int = 0
) -> bytes:
    """
    A DNS header.
    """
    return struct.pack("!HHHHHH", queryId, flags, qdcount, ancount, nscount, arcount)


_garbage = random.Random(3).randbytes
MALFORMED_WITH_HEADER = {
    "two questions, none there": header(0x4242, qdcount=2),
    "label longer than the message": header(0x4243) + b"\x3fabc",
    "random bytes after a query header": header(0x4244) + b"\x7f" + _garbage(200),
    "question without type and class": header(0x4245) + b"\x03www\x00",
    "compression loop": header(0x4246) + b"\xc0\x0c\x00\x01\x00\x01",
}


@pytest.mark.parametrize("datagram", MALFORMED_WITH_HEADER.values(), ids=list(MALFORMED_WITH_HEADER))
def test_formerrForReadableHeader(proxy: NetdServer, datagram: bytes) -> None:
    """
    A malformed query whose header can be read gets FORMERR with its ID, and the service goes on answering.
    """
    answer = rawExchange(proxy.address("dns", "udp"), datagram, timeout=IO_TIMEOUT)
    assert answer is not None, "no answer to a malformed query with a readable header"
    assert answerRcode(datagram, answer) == dns.EFORMAT, answer
    result = ask(proxy, "udp", "www.example.test", "A")
    assert result.last.data() == ["192.0.2.10"], result.output


UNANSWERED = {
    "5 bytes": _garbage(5),
    "11 bytes": header(0x4247)[:11],
    "empty": b"",
    "a response": struct.pack("!HHHHHH", 0x4248, 0x8180, 1, 0, 0, 0) + buildQuery("www.example.test")[12:],
}


@pytest.mark.parametrize("datagram", UNANSWERED.values(), ids=list(UNANSWERED))
def test_noAnswerWithoutReadableQuery(proxy: NetdServer, datagram: bytes) -> None:
    """
    A datagram shorter than a header, or a response rather than a query, is dropped without an answer, and the service goes on answering.
    """
    assert rawExchange(proxy.address("dns", "udp"), datagram, timeout=1.0) is None
    result = ask(proxy, "udp", "www.example.test", "A")
    assert result.last.data() == ["192.0.2.10"], result.output


def test_formerrOverTcp(proxy: NetdServer) -> None:
    """
    A malformed query over TCP with a readable header gets a FORMERR frame, and the service goes on answering.
    """
    malformed = header(0x4249, qdcount=2)
    with connect(proxy.address("dns", "tcp")) as client:
        client.sendall(struct.pack("!H", len(malformed)) + malformed)
        (length,) = struct.unpack("!H", recvExactly(client, 2))
        answer = recvExactly(client, length)
    assert answerRcode(malformed, answer) == dns.EFORMAT, answer
    result = ask(proxy, "tcp", "www.example.test", "A")
    assert result.last.data() == ["192.0.2.10"], result.output


# The embedded default config.


def test_defaultConfigAnswersNetdTest(startNetd: Any) -> None:
    """
    netd run without -c serves a dns-proxy service that answers netd.test from its static records.
    """
    netd: NetdServer = startNetd(None)
    result = ask(netd, "udp", "netd.test", "A")
    assert result.last.status == "NOERROR", result.output
    assert result.last.data("A"), result.output
    overTcp = ask(netd, "tcp", "netd.test", "A")
    assert overTcp.last.data("A") == result.last.data("A"), overTcp.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ednsVersionOneGetsBadvers(freshProxy: NetdServer, dnsUpstream: Dnsmasq, transport: str) -> None:
    """
    dig +edns=1 gets BADVERS with an OPT record of version 0 for a cached name and for a static one, over UDP and TCP, and the query does not go upstream.
    """
    cached = ask(freshProxy, transport, "mail.example.test", "A")
    assert cached.last.status == "NOERROR", cached.output
    before = dnsUpstream.queriesFor("mail.example.test")
    for name in ("mail.example.test", "netd.test"):
        result = ask(freshProxy, transport, name, "A", "+edns=1", "+noednsnegotiation")
        assert result.last.status == "BADVERS", result.output
        assert "EDNS: version: 0" in result.output and result.last.answer == (), result.output
    assert dnsUpstream.queriesFor("mail.example.test") == before


@pytest.fixture
def validatingUpstream() -> Iterator[ValidatingUpstream]:
    """
    An upstream answering like a validating resolver on a bogus zone: data for CD=1, SERVFAIL for CD=0.
    """
    upstream = ValidatingUpstream()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_checkingDisabledAnswerNotServedToValidatingClients(
    startNetd: Any, validatingUpstream: ValidatingUpstream, transport: str
) -> None:
    """
    dig +cd gets the bogus zone's data, which netd caches; dig without +cd then gets the validating upstream's SERVFAIL, not that data; dig +cd again is a cache hit.
    """
    netd: NetdServer = startNetd(dnsConfig([validatingUpstream.upstream], records=False))
    first = ask(netd, transport, BOGUS_NAME, "A", "+cd")
    assert first.last.status == "NOERROR" and first.last.data() == [BOGUS_ADDRESS], first.output
    validating = ask(netd, transport, BOGUS_NAME, "A")
    assert validating.last.status == "SERVFAIL", validating.output
    again = ask(netd, transport, BOGUS_NAME, "A", "+cd")
    assert again.last.data() == [BOGUS_ADDRESS], again.output
    assert validatingUpstream.asked == {True: 1, False: 1}


def test_queriesInFlightBounded(startNetd: Any, silentUpstream: str) -> None:
    """
    Against an upstream that never answers, a TCP connection past max_inflight_per_connection queries waiting gets REFUSED on it, and a client past max_inflight_per_client gets REFUSED at once over UDP; both are counted.
    """
    netd: NetdServer = startNetd(
        dnsConfig(
            [silentUpstream],
            timeout=TIMEOUT,
            deadline=DEADLINE,
            max_inflight_per_client=3,
            max_inflight_per_connection=1,
        )
    )
    with connect(netd.address("dns", "tcp")) as stream:
        for index in (1, 2):
            query = buildQuery(f"t{index}.example.test", queryId=10 + index)
            stream.sendall(struct.pack("!H", len(query)) + query)
        length = struct.unpack("!H", recvExactly(stream, 2))[0]
        answer = recvExactly(stream, length)
        assert answer[:2] == struct.pack("!H", 12) and answer[3] & 0x0F == dns.EREFUSED
        host, port = netd.address("dns", "udp")
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for index, client in enumerate(sockets):
                client.settimeout(IO_TIMEOUT)
                client.sendto(buildQuery(f"q{index}.example.test", queryId=index), (host, port))
            answer, _ = sockets[2].recvfrom(512)
            assert answerRcode(buildQuery("x", queryId=2), answer) == dns.EREFUSED
        finally:
            for client in sockets:
                client.close()
    status, services = netd.api("GET", "/services")
    counters = services["services"]["dns"]["counters"]
    assert (counters["inflight_refused_client"], counters["inflight_refused_connection"]) == (1, 1), counters


def test_cacheBytesBoundedAndReported(freshProxy: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    An answer larger than cache_entry_bytes (the 4.6 KB TXT set, over TCP) is forwarded but not cached, and /metrics shows it as netd_cache_too_large_total beside the netd_dns_cache_bytes gauge of what is cached.
    """
    import urllib.request

    asked = [dnsUpstream.queriesFor(BIG_NAME, "TXT")]
    for _ in range(2):
        result = ask(freshProxy, "tcp", BIG_NAME, "TXT")
        assert len(result.last.data("TXT")) == len(BIG_TEXTS), result.output
        asked.append(dnsUpstream.queriesFor(BIG_NAME, "TXT"))
    assert asked[2] - asked[1] == asked[1] - asked[0] > 0, "the second query went upstream as the first did"
    ask(freshProxy, "udp", "mail.example.test", "A")
    with urllib.request.urlopen(freshProxy.adminURL("/metrics"), timeout=IO_TIMEOUT) as response:
        metrics = response.read().decode()
    assert 'netd_cache_too_large_total{service="dns"} 2\n' in metrics, metrics
    assert "# TYPE netd_dns_cache_bytes gauge" in metrics
    [cached] = [line for line in metrics.splitlines() if line.startswith('netd_dns_cache_bytes{service="dns"}')]
    assert 500 < float(cached.split()[-1]) < 2000, cached
