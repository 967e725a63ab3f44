"""
The DNS proxy's answer cache (L{netd_plugins.dnsproxy.cache}): hits, misses,
expiry and TTLs with L{Clock}, the min/max clamps, negative caching, what is
never cached, key separation, and least-recently-used eviction.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.names import dns

from netd_plugins.dnsproxy.cache import AnswerCache, CacheKey, cacheKey
from netd_plugins.dnsproxy.wire import (
    FLAG_CD,
    FLAG_RD,
    KEY_DO,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    AnswerInfo,
    Query,
    inspectAnswer,
    parseQuery,
    quickQuestion,
)

from .dnsmessages import NAME, aRecord, makeAnswer, makeQuery, parseEDNS, soa


def parsedQuery(
    name: bytes = NAME,
    qtype: int = dns.A,
    qclass: int = dns.IN,
    *,
    id: int = 1,
    edns: bool = False,
    do: bool = False,
) -> Query:
    """
    A parsed query, as a client sends it.
    """
    return parseQuery(makeQuery(name, qtype, qclass, id=id, edns=edns, do=do))


def inspectedAnswer(
    name: bytes = NAME, qtype: int = dns.A, qclass: int = dns.IN, **fields: Any
) -> tuple[bytes, AnswerInfo]:
    """
    An upstream's answer (ID 7) with C{fields} as L{makeAnswer} takes them,
    and what inspectAnswer finds in it.
    """
    data = makeAnswer(name, qtype, qclass, id=7, **fields)
    return data, inspectAnswer(data)


def ttls(data: bytes) -> list[int]:
    """
    The TTLs of every record of a message but the OPT record, in order.
    """
    info = inspectAnswer(data)
    return [struct.unpack_from("!I", data, offset)[0] for offset in info.ttlOffsets]


def makeCache(
    clock: Clock,
    *,
    maxEntries: int = 100,
    minTTL: int = 0,
    maxTTL: int = 86400,
    maxNegativeTTL: int = 3600,
) -> AnswerCache:
    """
    A cache on C{clock} with generous limits unless told otherwise.
    """
    return AnswerCache(maxEntries=maxEntries, minTTL=minTTL, maxTTL=maxTTL, maxNegativeTTL=maxNegativeTTL, clock=clock)


# Keys


def test_cacheKey() -> None:
    """
    The key is the lowercased name, the type, the class, the RD, AD and CD bits with the DO bit, and the client subnet option.
    """
    assert cacheKey(parsedQuery(b"NeTd.Test", dns.MX, dns.CH, edns=True, do=True)) == (
        b"\x04netd\x04test\x00",
        dns.MX,
        dns.CH,
        FLAG_RD | KEY_DO,
        b"",
    )
    assert cacheKey(parsedQuery())[3] == FLAG_RD
    assert cacheKey(parsedQuery(edns=True))[3] == FLAG_RD
    cd = parseQuery(makeQuery(NAME, checkingDisabled=True, recDes=False))
    assert cacheKey(cd)[3] == FLAG_CD


# Hits and misses


def test_missThenHit() -> None:
    """
    A lookup misses before an answer is stored and hits after, with the new
    query's ID and the same records.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery(id=1)
    key = cacheKey(query)
    assert cache.lookup(key, query) is None
    data, info = inspectedAnswer(answers=[aRecord(ttl=300), aRecord(address="192.0.2.2", ttl=300)])
    assert cache.store(key, data, info)
    assert len(cache) == 1
    hit = cache.lookup(key, parsedQuery(id=0x5555))
    assert hit is not None
    message = parseEDNS(hit)
    assert message.id == 0x5555
    assert [r.payload.dottedQuad() for r in message.answers] == ["192.0.2.1", "192.0.2.2"]
    assert hit[2:] == data[2:]


def test_hitTakesQueryCase() -> None:
    """
    The name is cached without case: a query in another case hits, and its
    answer carries the query's own case.
    """
    clock = Clock()
    cache = makeCache(clock)
    first = parsedQuery(b"NETD.test")
    data, info = inspectedAnswer(b"NETD.test", answers=[aRecord(ttl=60)])
    assert cache.store(cacheKey(first), data, info)
    second = parsedQuery(b"netd.TEST", id=9)
    hit = cache.lookup(cacheKey(second), second)
    assert hit is not None
    assert parseEDNS(hit).queries[0].name.name == b"netd.TEST"


def test_restoreReplaces() -> None:
    """
    Storing under a key already cached replaces the entry, restarting its clock.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery()
    key = cacheKey(query)
    cache.store(key, *inspectedAnswer(answers=[aRecord(address="192.0.2.1", ttl=60)]))
    clock.advance(30)
    cache.store(key, *inspectedAnswer(answers=[aRecord(address="192.0.2.9", ttl=100)]))
    hit = cache.lookup(key, query)
    assert hit is not None
    assert parseEDNS(hit).answers[0].payload.dottedQuad() == "192.0.2.9"
    assert ttls(hit) == [100]
    assert len(cache) == 1


# Expiry and TTLs


def test_expiryExactlyAtLifetime() -> None:
    """
    An entry is served until just before its lifetime ends, and is gone (and
    dropped) exactly at it.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery()
    key = cacheKey(query)
    cache.store(key, *inspectedAnswer(answers=[aRecord(ttl=60)]))
    clock.advance(59.999)
    assert cache.lookup(key, query) is not None
    clock.advance(0.001)
    assert cache.lookup(key, query) is None
    assert len(cache) == 0


def test_ttlsDecrementOnHits() -> None:
    """
    Each hit's TTLs are the stored ones less the whole seconds spent in the cache.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery()
    key = cacheKey(query)
    cache.store(key, *inspectedAnswer(answers=[aRecord(ttl=300), aRecord(address="192.0.2.2", ttl=300)]))
    served = []
    for step in [0, 0.5, 0.25, 0.25, 10, 0, 100.9]:
        clock.advance(step)
        hit = cache.lookup(key, query)
        assert hit is not None
        served.append(ttls(hit))
    assert served == [[300, 300], [300, 300], [300, 300], [299, 299], [289, 289], [289, 289], [189, 189]]


def test_hitsInOneSecondDifferOnlyByQuery() -> None:
    """
    Hits within the same second, for queries of different IDs, case and EDNS,
    each get their own header and question, with the same TTLs.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery()
    key = cacheKey(query)
    cache.store(key, *inspectedAnswer(answers=[aRecord(ttl=300)], edns=True))
    clock.advance(5)
    queries = [parsedQuery(id=1), parsedQuery(b"NETD.TEST", id=2, edns=True), parsedQuery(id=3)]
    answers = [cache.lookup(key, q) for q in queries]
    messages = [parseEDNS(answer) for answer in answers if answer is not None]
    assert [m.id for m in messages] == [1, 2, 3]
    assert [m.queries[0].name.name for m in messages] == [NAME, b"NETD.TEST", NAME]
    assert [m.answers[0].ttl for m in messages] == [295, 295, 295]
    assert [m.ednsVersion for m in messages] == [None, 0, None]


def test_servedTTLsNeverOutliveTheEntry() -> None:
    """
    A positive answer lives for its smallest TTL, and no record is served with a
    TTL longer than what is left of that.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery(b"www.netd.test")
    key = cacheKey(query)
    cname = dns.RRHeader(b"www.netd.test", dns.CNAME, dns.IN, 3600, dns.Record_CNAME(NAME, 3600))
    cache.store(key, *inspectedAnswer(b"www.netd.test", answers=[cname, aRecord(ttl=60)], authority=[soa(ttl=86400)]))
    clock.advance(20)
    hit = cache.lookup(key, query)
    assert hit is not None
    assert ttls(hit) == [40, 40, 40]
    clock.advance(40)
    assert cache.lookup(key, query) is None


def test_minTTLClamp() -> None:
    """
    A TTL under minTTL is raised to it, both for the entry's lifetime and for
    the TTLs served.
    """
    clock = Clock()
    cache = makeCache(clock, minTTL=30)
    query = parsedQuery()
    key = cacheKey(query)
    assert cache.store(key, *inspectedAnswer(answers=[aRecord(ttl=5)]))
    hit = cache.lookup(key, query)
    assert hit is not None and ttls(hit) == [30]
    clock.advance(29)
    hit = cache.lookup(key, query)
    assert hit is not None and ttls(hit) == [1]
    clock.advance(1)
    assert cache.lookup(key, query) is None


def test_maxTTLClamp() -> None:
    """
    A TTL over maxTTL is lowered to it, both for the entry's lifetime and for
    the TTLs served.
    """
    clock = Clock()
    cache = makeCache(clock, maxTTL=60)
    query = parsedQuery()
    key = cacheKey(query)
    assert cache.store(key, *inspectedAnswer(answers=[aRecord(ttl=86400)]))
    hit = cache.lookup(key, query)
    assert hit is not None and ttls(hit) == [60]
    clock.advance(60)
    assert cache.lookup(key, query) is None


# Negative caching


@pytest.mark.parametrize("rcode", [RCODE_NXDOMAIN, RCODE_NOERROR])
def test_negativeCaching(rcode: int) -> None:
    """
    NXDOMAIN and NODATA are cached for the smaller of the SOA's TTL and its
    MINIMUM, and served with the SOA TTL counting down.
    """
    clock = Clock()
    cache = makeCache(clock)
    query = parsedQuery(b"nothing.netd.test", dns.AAAA)
    key = cacheKey(query)
    data, info = inspectedAnswer(b"nothing.netd.test", dns.AAAA, authority=[soa(ttl=3600, minimum=120)], rCode=rcode)
    assert cache.store(key, data, info)
    clock.advance(100)
    hit = cache.lookup(key, query)
    assert hit is not None
    message = parseEDNS(hit)
    assert message.rCode == rcode
    assert message.answers == []
    assert [r.ttl for r in message.authority] == [20]
    clock.advance(20)
    assert cache.lookup(key, query) is None


def test_negativeCachingCap() -> None:
    """
    maxNegativeTTL caps how long a negative answer is kept.
    """
    clock = Clock()
    cache = makeCache(clock, maxNegativeTTL=10)
    query = parsedQuery()
    key = cacheKey(query)
    assert cache.store(key, *inspectedAnswer(authority=[soa(ttl=3600, minimum=3600)], rCode=RCODE_NXDOMAIN))
    hit = cache.lookup(key, query)
    assert hit is not None and ttls(hit) == [10]
    clock.advance(10)
    assert cache.lookup(key, query) is None


def test_negativeWithoutSOANotCached() -> None:
    """
    A negative answer with no SOA record is not cached.
    """
    cache = makeCache(Clock())
    assert not cache.store(cacheKey(parsedQuery()), *inspectedAnswer(rCode=RCODE_NXDOMAIN))
    assert not cache.store(cacheKey(parsedQuery()), *inspectedAnswer())
    assert len(cache) == 0


# What is never cached


@pytest.mark.parametrize(
    "answer",
    [
        {"rCode": RCODE_SERVFAIL, "authority": [soa()]},
        {"rCode": RCODE_REFUSED},
        {"rCode": 4, "answers": [aRecord(ttl=60)]},
        {"answers": [aRecord(ttl=60)], "trunc": True},
        {"answers": [aRecord(ttl=0)]},
        {"answers": [aRecord(ttl=60), aRecord(address="192.0.2.2", ttl=0)]},
        {"authority": [soa(ttl=0)], "rCode": RCODE_NXDOMAIN},
        {"authority": [soa(minimum=0)]},
        {"answers": [aRecord(ttl=60)], "rCode": 16, "edns": True},
    ],
    ids=["servfail", "refused", "notimp", "truncated", "ttl-0", "one-ttl-0", "soa-ttl-0", "soa-minimum-0", "badvers"],
)
@pytest.mark.parametrize("minTTL", [0, 30])
def test_notCached(answer: dict[str, object], minTTL: int) -> None:
    """
    SERVFAIL, REFUSED and other rcodes, truncated answers, EDNS errors and
    answers that say not to cache (a TTL of 0) are never stored, whatever minTTL.
    """
    clock = Clock()
    cache = makeCache(clock, minTTL=minTTL)
    query = parsedQuery()
    key = cacheKey(query)
    data, info = inspectedAnswer(**answer)
    assert not cache.store(key, data, info)
    assert cache.lookup(key, query) is None
    assert len(cache) == 0


def test_maxTTLZeroCachesNothing() -> None:
    """
    With maxTTL 0 every lifetime is 0, so nothing is cached.
    """
    cache = makeCache(Clock(), maxTTL=0)
    assert not cache.store(cacheKey(parsedQuery()), *inspectedAnswer(answers=[aRecord(ttl=60)]))


# Key separation


@pytest.mark.parametrize(
    "other",
    [
        parsedQuery(edns=True, do=True),
        parsedQuery(qtype=dns.AAAA),
        parsedQuery(qclass=dns.CH),
        parsedQuery(b"www.netd.test"),
        parseQuery(makeQuery(NAME, edns=True, checkingDisabled=True)),
        parseQuery(makeQuery(NAME, edns=True, recDes=False)),
    ],
    ids=["do-bit", "type", "class", "name", "cd-bit", "rd-bit"],
)
def test_keySeparation(other: Query) -> None:
    """
    A query differing in DO, CD or RD bit, type, class or name does not hit another's entry.
    """
    cache = makeCache(Clock())
    query = parsedQuery(edns=True)
    cache.store(cacheKey(query), *inspectedAnswer(answers=[aRecord(ttl=60)], edns=True))
    assert cacheKey(other) != cacheKey(query)
    assert cache.lookup(cacheKey(other), other) is None
    assert cache.lookup(cacheKey(query), query) is not None


def test_keyIgnoresCaseAndEDNSWithoutDO() -> None:
    """
    Queries differing only in the name's case, or in having EDNS without DO,
    share an entry.
    """
    cache = makeCache(Clock())
    cache.store(cacheKey(parsedQuery()), *inspectedAnswer(answers=[aRecord(ttl=60)]))
    for query in (parsedQuery(b"NetD.TEST"), parsedQuery(edns=True)):
        assert cache.lookup(cacheKey(query), query) is not None


# EDNS forms


def test_optDroppedForPlainQuery() -> None:
    """
    An answer cached with an OPT record is served without it to a query that had
    none, and with it to one that had one.
    """
    cache = makeCache(Clock())
    key = cacheKey(parsedQuery())
    cache.store(key, *inspectedAnswer(answers=[aRecord(ttl=60)], edns=True))
    plain = cache.lookup(key, parsedQuery())
    assert plain is not None
    assert struct.unpack_from("!H", plain, 10)[0] == 0
    assert parseEDNS(plain).ednsVersion is None
    assert parseEDNS(plain).answers[0].ttl == 60
    withOPT = cache.lookup(key, parsedQuery(edns=True))
    assert withOPT is not None
    assert parseEDNS(withOPT).ednsVersion == 0
    assert parseEDNS(withOPT).maxSize == 1232


@pytest.mark.parametrize("do", [False, True])
def test_optAddedForEDNSQuery(do: bool) -> None:
    """
    An answer cached without an OPT record is served with one (the key's DO
    bit, our payload size) to a query that had one, and as it was to one that
    had none.
    """
    cache = makeCache(Clock())
    key = cacheKey(parsedQuery(edns=True, do=do))
    data, info = inspectedAnswer(answers=[aRecord(ttl=60)])
    cache.store(key, data, info)
    withOPT = cache.lookup(key, parsedQuery(edns=True, do=do, id=7))
    assert withOPT is not None
    message = parseEDNS(withOPT)
    assert (message.ednsVersion, message.dnssecOK, message.maxSize) == (0, do, 1232)
    assert message.answers[0].ttl == 60
    if not do:
        assert cache.lookup(key, parsedQuery(id=7)) == data


# Size and eviction


def test_lruEviction() -> None:
    """
    With room for two, storing a third evicts the least recently used, where a
    hit counts as a use.
    """
    clock = Clock()
    cache = makeCache(clock, maxEntries=2)
    queries = {name: parsedQuery(name) for name in (b"a.test", b"b.test", b"c.test")}
    keys: dict[bytes, CacheKey] = {name: cacheKey(query) for name, query in queries.items()}
    assert cache.store(keys[b"a.test"], *inspectedAnswer(b"a.test", answers=[aRecord(b"a.test", ttl=60)]))
    assert cache.store(keys[b"b.test"], *inspectedAnswer(b"b.test", answers=[aRecord(b"b.test", ttl=60)]))
    assert cache.lookup(keys[b"a.test"], queries[b"a.test"]) is not None
    assert cache.store(keys[b"c.test"], *inspectedAnswer(b"c.test", answers=[aRecord(b"c.test", ttl=60)]))
    assert len(cache) == 2
    assert cache.evictions == 1
    assert cache.lookup(keys[b"b.test"], queries[b"b.test"]) is None
    assert cache.lookup(keys[b"a.test"], queries[b"a.test"]) is not None
    assert cache.lookup(keys[b"c.test"], queries[b"c.test"]) is not None


def test_lruEvictionOrderWithoutHits() -> None:
    """
    Without hits, entries are evicted in the order they were stored, and
    re-storing a key makes it the most recent.
    """
    cache = makeCache(Clock(), maxEntries=2)
    names = [b"a.test", b"b.test", b"a.test", b"c.test", b"d.test"]
    for name in names:
        cache.store(cacheKey(parsedQuery(name)), *inspectedAnswer(name, answers=[aRecord(name, ttl=60)]))
    present = []
    for name in (b"a.test", b"b.test", b"c.test", b"d.test"):
        if cache.lookup(cacheKey(parsedQuery(name)), parsedQuery(name)) is not None:
            present.append(name)
    assert present == [b"c.test", b"d.test"]
    assert cache.evictions == 2


def test_expiredEntriesAreNotEvictions() -> None:
    """
    An entry dropped because it expired is not counted as an eviction.
    """
    clock = Clock()
    cache = makeCache(clock, maxEntries=2)
    query = parsedQuery()
    cache.store(cacheKey(query), *inspectedAnswer(answers=[aRecord(ttl=1)]))
    clock.advance(1)
    assert cache.lookup(cacheKey(query), query) is None
    assert (len(cache), cache.evictions) == (0, 0)


def test_maxEntriesZeroStoresNothing() -> None:
    """
    maxEntries 0 turns caching off: store refuses and lookups miss.
    """
    cache = makeCache(Clock(), maxEntries=0)
    query = parsedQuery()
    assert not cache.store(cacheKey(query), *inspectedAnswer(answers=[aRecord(ttl=60)]))
    assert cache.lookup(cacheKey(query), query) is None
    assert len(cache) == 0


# The quick path (a query read by quickQuestion, not parsed)


@pytest.mark.parametrize("edns", [False, True])
def test_lookupMessageMatchesLookup(edns: bool) -> None:
    """
    A query found from its message gets, at every moment (before the entry's time, the first hit of a second, the next ones, with the clock set back), the answer a parsed lookup gives it (TTLs clamped), and misses once it has expired.
    """
    clock = Clock()
    cache = makeCache(clock, maxTTL=5)
    message = makeQuery(b"NeTd.Test", id=9, edns=edns)
    query = parseQuery(message)
    key = cacheKey(query)
    quick = quickQuestion(message)
    assert quick is not None and quick[0] == key
    _, nameEnd, hasOPT = quick
    data, info = inspectedAnswer(b"netd.test", answers=[aRecord(ttl=10)])
    assert cache.store(key, data, info)
    for moment in (-1.5, 0.0, 0.5, 1.0, 1.2, 3.7, 0.2, 4.9):
        clock.rightNow = moment
        quickAnswer = cache.lookupMessage(key, message, nameEnd, hasOPT, clock.seconds())
        assert quickAnswer is not None
        assert quickAnswer == cache.lookup(key, query)
    clock.rightNow = 5.0
    assert cache.lookupMessage(key, message, nameEnd, hasOPT, clock.seconds()) is None
    assert len(cache) == 0


# Bytes


def bigAnswer(name: bytes, size: int) -> tuple[bytes, AnswerInfo]:
    """
    An answer of about C{size} bytes (TXT records of 250 bytes), with an OPT record.
    """
    records = [
        dns.RRHeader(name, dns.TXT, dns.IN, 300, dns.Record_TXT(b"x" * 250, ttl=300)) for _ in range(size // 262)
    ]
    return inspectedAnswer(name, dns.TXT, answers=records, edns=True)


def test_answerLargerThanTheEntryCapIsNotCached() -> None:
    """
    An answer larger than maxEntryBytes (4 KB by default) is not cached, and is counted in tooLarge.
    """
    cache = AnswerCache(maxEntries=100, minTTL=0, maxTTL=86400, maxNegativeTTL=3600, clock=Clock())
    query = parsedQuery(qtype=dns.TXT, edns=True)
    assert not cache.store(cacheKey(query), *bigAnswer(NAME, 57_000))
    assert (len(cache), cache.tooLarge, cache.bytes) == (0, 1, 0)
    assert cache.store(cacheKey(query), *bigAnswer(NAME, 3_900))
    assert cache.tooLarge == 1 and 3_900 < cache.bytes < 5_000


def test_byteBudgetEvictsLeastRecentlyUsed() -> None:
    """
    Past maxBytes the least recently used entries are evicted (counted), so that 1,500 answers of 57 KB keep the cache within its budget in accounted bytes and in memory measured by tracemalloc.
    """
    import gc
    import tracemalloc

    budget = 4 * 2**20
    cache = AnswerCache(
        maxEntries=10_000,
        minTTL=0,
        maxTTL=86400,
        maxNegativeTTL=3600,
        clock=Clock(),
        maxBytes=budget,
        maxEntryBytes=65535,
    )
    data, info = bigAnswer(NAME, 57_000)
    names = [f"n{index}.netd.test".encode() for index in range(1500)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            # The same answer bytes under many keys: each store keeps its own copy
            # only if the cache copies, so the measure is of the cache alone.
            query = parsedQuery(name, dns.TXT, edns=True)
            assert cache.store(cacheKey(query), bytes(bytearray(data)), info)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes <= budget
    assert len(cache) == budget // (cache.bytes // len(cache))
    assert cache.evictions == 1500 - len(cache)
    assert grown < budget * 1.1, f"{grown} bytes for a budget of {budget}"
    first = parsedQuery(names[0], dns.TXT, edns=True)
    last = parsedQuery(names[-1], dns.TXT, edns=True)
    assert cache.lookup(cacheKey(first), first) is None and cache.lookup(cacheKey(last), last) is not None


def test_oneCopyPerEntry() -> None:
    """
    An answer is kept once, not once per EDNS form: a cached 4 KB answer, served with and without an OPT record, takes less than 1.5 times its size in memory (two copies took over twice).
    """
    import gc
    import tracemalloc

    cache = makeCache(Clock())
    data, info = bigAnswer(NAME, 4_000)
    query, plain = parsedQuery(qtype=dns.TXT, edns=True), parsedQuery(qtype=dns.TXT)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert cache.store(cacheKey(query), bytes(bytearray(data)), info)
        withOPT, withoutOPT = cache.lookup(cacheKey(query), query), cache.lookup(cacheKey(plain), plain)
        assert withOPT is not None and withoutOPT is not None
        del withOPT, withoutOPT
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < len(data) * 1.5, f"{grown} bytes for an answer of {len(data)}"
