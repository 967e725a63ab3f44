"""
A micro-benchmark of the DNS proxy's wire-level hot path (not a test): the
cost per call of parsing a query, a cache hit, and patching a stored answer,
for a typical A query (with dig's EDNS cookie option) and its answer.

Run with C{.venv/bin/python bench/dns_wire_bench.py}; it takes a few seconds.
"""

from __future__ import annotations

import platform
import timeit
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.names import dns

from netd_plugins.dnsproxy.cache import AnswerCache, cacheKey
from netd_plugins.dnsproxy.wire import inspectAnswer, parseQuery, patchAnswer

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
