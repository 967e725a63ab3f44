"""
A micro-benchmark of the DNS proxy's hot paths (not a test): the cost per call
of parsing a query, a cache hit, and patching a stored answer, for a typical A
query (with dig's EDNS cookie option) and its answer; then the whole of a
query in the service, from the core's datagram listener to the answer handed
to the socket (no system calls): a cache hit (as dnsperf asks: no EDNS), and
a cache miss forwarded through the real resolver and UDP pool on an in-memory
reactor, its upstream answer fed back as the socket would (each name asked
once, the cache full and evicting, as in the benchmark's miss runs).

Run with C{.venv/bin/python bench/dns_wire_bench.py}; it takes a few seconds.
"""

from __future__ import annotations

import platform
import struct
import time
import timeit
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.names import dns

from netd.datagram.listener import DatagramListener
from netd.events import EventLog
from netd.metrics import Counters
from netd.testing.memory import UDPMemoryReactorClock
from netd_plugins.dnsproxy.cache import AnswerCache, cacheKey
from netd_plugins.dnsproxy.handler import AccessList, DNSProxy
from netd_plugins.dnsproxy.records import StaticRecords
from netd_plugins.dnsproxy.resolver import UpstreamResolver
from netd_plugins.dnsproxy.upstream import Upstream
from netd_plugins.dnsproxy.wire import encodeName, inspectAnswer, parseQuery, patchAnswer

BUDGET = 0.25
"""
Roughly how many seconds each measurement runs for (after calibration).
"""

ROUNDS = 5
"""
Each measurement is the best of this many rounds, as these machines are shared
and noisy.
"""


def typicalQuery() -> bytes:
    """
    An A query as dig sends it: RD, AD, EDNS with a 4096-byte payload size and
    an 8-byte client cookie.
    """
    message = dns.Message(id=0x1234, recDes=True, authenticData=True)
    message.queries = [dns.Query(b"www.example.com", dns.A, dns.IN)]
    cookie = b"\x00\x0a\x00\x08" + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    opt = b"\x00" + (41).to_bytes(2, "big") + (4096).to_bytes(2, "big") + b"\x00\x00\x00\x00"
    opt += len(cookie).to_bytes(2, "big") + cookie
    wire = bytearray(message.toStr())
    wire[11] = 1
    return bytes(wire) + opt


def typicalAnswer() -> bytes:
    """
    Its answer: a CNAME and two A records, with an OPT record.
    """
    message = dns.Message(id=0x1234, answer=True, recDes=True, recAv=True)
    message.queries = [dns.Query(b"www.example.com", dns.A, dns.IN)]
    message.answers = [
        dns.RRHeader(b"www.example.com", dns.CNAME, ttl=300, payload=dns.Record_CNAME(b"example.com", ttl=300)),
        dns.RRHeader(b"example.com", dns.A, ttl=60, payload=dns.Record_A("192.0.2.1", ttl=60)),
        dns.RRHeader(b"example.com", dns.A, ttl=60, payload=dns.Record_A("192.0.2.2", ttl=60)),
    ]
    wire = bytearray(message.toStr())
    wire[11] = 1
    return bytes(wire) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


CLIENT = ("127.0.0.1", 40000)
UPSTREAM = Upstream.fromConfig("udp:127.0.0.1:5300")
MISSES = 20000
"""
Queries per round of the miss measurement, each for a new name.
"""


def plainQuery(name: str, queryID: int) -> bytes:
    """
    An A query as dnsperf sends it: RD set, no EDNS.
    """
    return struct.pack("!6H", queryID, 0x0100, 1, 0, 0, 0) + encodeName(name) + b"\x00\x01\x00\x01"


def upstreamAnswer(query: bytes) -> bytes:
    """
    The upstream's answer to C{query}: one A record, 127.0.0.2, TTL 3600.
    """
    header = struct.pack("!6H", int.from_bytes(query[:2], "big"), 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c\x00\x01\x00\x01" + (3600).to_bytes(4, "big") + b"\x00\x04\x7f\x00\x00\x02"
    return header + query[12:] + record


def makeService(reactor: Any) -> tuple[DNSProxy, DatagramListener, list[bytes]]:
    """
    A dns-proxy service as the plugin builds it (one UDP upstream, a cache of
    10,000 answers, the event log on), behind the core's datagram listener,
    whose answers are kept in the list returned.
    """
    counters = Counters()
    resolver = UpstreamResolver(
        reactor,
        [UPSTREAM],
        timeout=2.0,
        deadline=5.0,
        maxFails=3,
        healthInterval=0,
        caBundle=None,
        counters=counters,
        log=Logger(namespace="bench"),
    )
    cache = AnswerCache(maxEntries=10000, minTTL=0, maxTTL=86400, maxNegativeTTL=3600, clock=reactor)
    proxy = DNSProxy(
        reactor=reactor,
        records=StaticRecords.fromConfig({}),
        scripts=(),
        cache=cache,
        resolver=resolver,
        access=AccessList(("127.0.0.0/8",)),
        counters=counters,
        log=Logger(namespace="bench"),
        logQueries=False,
        udpSize=1232,
        events=EventLog(1000, reactor),
    )
    listener = DatagramListener(proxy, counters)
    answers: list[bytes] = []
    listener._send = lambda datagram, peer: answers.append(datagram)
    return proxy, listener, answers


def hitPerQuery() -> float:
    """
    Microseconds per cache hit through the listener and the service.
    """
    reactor = UDPMemoryReactorClock()
    proxy, listener, answers = makeService(reactor)
    queries = [plainQuery(f"hit{index}.example.test", index) for index in range(10)]
    for query in queries:
        proxy.cache.store(cacheKey(parseQuery(query)), upstreamAnswer(query), inspectAnswer(upstreamAnswer(query)))
    received = listener.datagramReceived

    def tenHits() -> None:
        for query in queries:
            received(query, CLIENT)

    answers.clear()
    tenHits()
    assert len(answers) == 10 and proxy.counters["cache_hits"] == 10, "every query is a cache hit"
    del answers[:]
    micros = perCall(tenHits) / 10
    return micros


def missPerQuery() -> float:
    """
    Microseconds per cache miss: the client's query through the listener and
    the service to the upstream socket, and the upstream's answer back through
    the pool and the service to the client; the best of L{ROUNDS} rounds of
    L{MISSES} new names.
    """
    reactor = UDPMemoryReactorClock()
    proxy, listener, answers = makeService(reactor)
    proxy.resolver.startService()
    best = float("inf")
    for round in range(ROUNDS + 1):
        queries = [plainQuery(f"m{index}.r{round}.example.test", index & 0xFFFF) for index in range(MISSES)]
        received = listener.datagramReceived
        answers.clear()
        started = time.perf_counter()
        for query in queries:
            received(query, CLIENT)
            for port in reactor.udpPorts.values():
                # The pool replaces its sockets as it goes: a closed one has no transport.
                transport = port.protocol.transport
                written = transport.written if transport is not None else None  # type: ignore[attr-defined]
                if written:
                    sent, address = written.pop()
                    port.protocol.datagramReceived(upstreamAnswer(sent), address)
        taken = time.perf_counter() - started
        assert len(answers) == MISSES, f"{len(answers)} answers to {MISSES} misses"
        if round:
            best = min(best, taken / MISSES * 1e6)
    return best


def perCall(function: Callable[[], object]) -> float:
    """
    The best per-call time of C{function}, in microseconds.
    """
    timer = timeit.Timer(function)
    number, taken = timer.autorange()
    number = max(1, int(number * BUDGET / ROUNDS / taken))
    return min(timer.repeat(repeat=ROUNDS, number=number)) / number * 1e6


def main() -> None:
    """
    Measure and print.
    """
    queryBytes = typicalQuery()
    answerBytes = typicalAnswer()
    query = parseQuery(queryBytes)
    info = inspectAnswer(answerBytes)
    clock = Clock()
    cache = AnswerCache(maxEntries=10000, minTTL=0, maxTTL=86400, maxNegativeTTL=3600, clock=clock)
    key = cacheKey(query)
    assert cache.store(key, answerBytes, info)
    clock.advance(5)
    assert cache.lookup(key, query) is not None
    offsets, ttls = info.ttlOffsets, info.ttls

    def hitPath() -> object:
        parsed = parseQuery(queryBytes)
        return cache.lookup(cacheKey(parsed), parsed)

    results = [
        ("parseQuery", perCall(lambda: parseQuery(queryBytes))),
        ("cacheKey", perCall(lambda: cacheKey(query))),
        ("AnswerCache.lookup (hit)", perCall(lambda: cache.lookup(key, query))),
        ("patchAnswer (ID, case, flags, 3 TTLs)", perCall(lambda: patchAnswer(answerBytes, offsets, ttls, 5, query))),
        ("patchAnswer (ID, case, flags only)", perCall(lambda: patchAnswer(answerBytes, (), (), 0, query))),
        ("inspectAnswer", perCall(lambda: inspectAnswer(answerBytes))),
        ("hit path: parseQuery + cacheKey + lookup", perCall(hitPath)),
        ("service: cache hit, listener to socket", hitPerQuery()),
        ("service: cache miss, listener to socket and back", missPerQuery()),
    ]
    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    print(f"query {len(queryBytes)} bytes, answer {len(answerBytes)} bytes ({len(info.ttls)} TTLs)")
    for name, micros in results:
        print(f"{name:45} {micros:6.2f} µs")
    print(
        "A hit patches the TTLs only the first time an entry is served in a new second;"
        " the hits after it in that second patch the ID, question case and flags only."
    )


if __name__ == "__main__":
    main()
