"""
The answer cache: upstream answers kept as wire bytes, served again with the
ID, question case, RD/CD bits and TTLs patched in place (L{patchAnswer}),
never parsed on a hit.

Entries are keyed by everything of a query that changes its answer
(L{cacheKey}); they live for the smallest TTL of the answer (positive answers) or
the SOA's negative TTL (NXDOMAIN and NODATA, RFC 2308), clamped by the
service's limits, and the least recently used entry goes first when the cache
is full.  Time comes only from the injected clock.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from .wire import (
    KEY_DO,
    KEY_FLAGS,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    AnswerInfo,
    Query,
    addAdditionalCount,
    answerQuery,
    atOrUnder,
    optRecord,
    patchAnswer,
    patchTTLs,
)

CacheKey = tuple[bytes, int, int, int, bytes]
"""
What an answer is cached under: the question's name lowercased (wire form),
its type and class, the query's RD, AD and CD bits with the DO bit
(L{wire.KEY_FLAGS}, L{wire.KEY_DO}), and its client subnet option
(L{EDNS.keyOptions}).  That is all of the query that goes upstream but for
the ID and the name's case (L{wire.upstreamQuery}), so the key is also what
identical queries in flight share one upstream query by.
"""

DEFAULT_UDP_SIZE = 1232


def cacheKey(query: Query) -> CacheKey:
    """
    The key a query's answer is cached under (L{wire.quickQuestion} makes the
    same from the query's bytes).
    """
    question = query.question
    edns = query.edns
    flags = query.flags & KEY_FLAGS
    if edns is None:
        return (question.key, question.qtype, question.qclass, flags, b"")
    return (question.key, question.qtype, question.qclass, flags | KEY_DO if edns.do else flags, edns.keyOptions)


_Entry = tuple[float, float, tuple[bytes, bytes], tuple[int, int], tuple[int, ...], tuple[int, ...]]
"""
One cached answer: C{(storedAt, expiresAt, forms, ages, ttlOffsets, ttls)}.

  - C{storedAt}: when it was stored (clock seconds);
  - C{expiresAt}: when it stops being served;
  - C{forms}: the answer without and with an OPT record;
  - C{ages}: for each form, the elapsed seconds its TTLs are patched for
    (-1: not yet patched);
  - C{ttlOffsets}: where the TTLs are (the same in both forms);
  - C{ttls}: the TTLs to serve at C{storedAt}, clamped to the lifetime.

Each form is rewritten with its TTLs lowered the first time it is served in a
new second (a new entry takes the old one's place), so that the hits in the
same second need not patch the TTLs again.

A plain tuple of numbers, bytes and tuples of them, which the garbage
collector stops tracking after its first look (it keeps tracking objects, and
tuple subclasses such as named tuples): a full cache is then nothing for it to
walk, where ten thousand entries as objects made each of its full collections
cost several times more.
"""


class AnswerCache:
    """
    A bounded, TTL-respecting cache of wire answers.

    An answer is kept in two forms, one with an OPT record and one without, so
    that a client gets an OPT record in its answer exactly when its query had
    one (RFC 6891, section 7), whichever kind of client filled the cache: the
    OPT record is dropped when it is the answer's last record, or one of ours
    (payload size C{udpSize}) is added when the answer had none.

    @ivar evictions: how many entries were dropped to make room for others.
    """

    def __init__(
        self,
        *,
        maxEntries: int,
        minTTL: int,
        maxTTL: int,
        maxNegativeTTL: int,
        clock: IReactorTime,
        udpSize: int = DEFAULT_UDP_SIZE,
    ) -> None:
        """
        @param maxEntries: how many answers to keep; 0 turns caching off.
        @param minTTL: the shortest lifetime (and served TTL) of an entry.
        @param maxTTL: the longest lifetime (and served TTL) of an entry.
        @param maxNegativeTTL: the longest an NXDOMAIN or NODATA answer is
            kept, before the C{minTTL}/C{maxTTL} clamps.
        @param clock: where the time comes from.
        @param udpSize: the payload size in the OPT record added to an answer
            that had none.
        """
        self.maxEntries = maxEntries
        self.minTTL = minTTL
        self.maxTTL = maxTTL
        self.maxNegativeTTL = maxNegativeTTL
        self.clock = clock
        self.udpSize = udpSize
        self.evictions = 0
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lifetime(self, info: AnswerInfo) -> int:
        """
        How long an answer may be cached, in seconds; 0 for one that must not be:
        truncated answers, rcodes other than NOERROR and NXDOMAIN, an EDNS
        error, negative answers without an SOA record, and TTLs of 0.
        """
        if info.truncated or info.ednsRcode:
            return 0
        if info.rcode == RCODE_NOERROR and info.answerCount:
            ttl = min(info.ttls, default=0)
        elif info.rcode in (RCODE_NOERROR, RCODE_NXDOMAIN) and info.negativeTTL is not None:
            ttl = min(info.negativeTTL, self.maxNegativeTTL)
        else:
            return 0
        if ttl <= 0:
            return 0
        return max(0, min(max(ttl, self.minTTL), self.maxTTL))

    def store(self, key: CacheKey, answer: bytes, info: AnswerInfo) -> bool:
        """
        Cache an answer (found by L{inspectAnswer}) if it may be cached; the
        least recently used entry makes room if the cache is full.

        @return: whether it was stored.
        """
        if self.maxEntries <= 0:
            return False
        lifetime = self.lifetime(info)
        if not lifetime:
            return False
        low = min(self.minTTL, lifetime)
        ttls = tuple(min(max(ttl, low), lifetime) for ttl in info.ttls)
        if info.optOffset is None:
            withEDNS = addAdditionalCount(answer, 1) + optRecord(bool(key[3] & KEY_DO), self.udpSize)
            withoutEDNS = answer
        elif info.optEnd == len(answer):
            withEDNS = answer
            withoutEDNS = addAdditionalCount(answer[: info.optOffset], -1)
        else:
            withEDNS = withoutEDNS = answer
        now = self.clock.seconds()
        entries = self._entries
        entries[key] = (now, now + lifetime, (withoutEDNS, withEDNS), (-1, -1), info.ttlOffsets, ttls)
        entries.move_to_end(key)
        while len(entries) > self.maxEntries:
            entries.popitem(last=False)
            self.evictions += 1
        return True

    def lookup(self, key: CacheKey, query: Query) -> bytes | None:
        """
        The cached answer to C{query}, patched for it (ID, question case,
        RD/CD, TTLs lowered by the whole seconds spent in the cache), or
        L{None} if there is none or it has expired (an expired entry is
        dropped).
        """
        stored = self._current(key, 0 if query.edns is None else 1, self.clock.seconds())
        if stored is None:
            return None
        return patchAnswer(stored, (), (), 0, query)

    def lookupMessage(self, key: CacheKey, message: bytes, nameEnd: int, edns: bool, now: float) -> bytes | None:
        """
        What L{lookup} gives, for a query read by L{wire.quickQuestion} rather
        than parsed: its message, where its question ends, and whether it has
        an OPT record.

        @param now: the time of the cache's clock, which the caller has read
            (a cache hit's event is recorded at the same time).
        """
        stored = self._current(key, 1 if edns else 0, now)
        if stored is None:
            return None
        return answerQuery(stored, message, nameEnd)

    def __contains__(self, key: object) -> bool:
        """
        Whether an answer is kept under C{key}, expired or not (nothing changes:
        no expiry, no reordering).
        """
        return key in self._entries

    def _current(self, key: CacheKey, form: int, now: float) -> bytes | None:
        """
        The answer cached under C{key} in one of its forms (0: without an OPT
        record, 1: with one), its TTLs lowered for C{now}; L{None} if there is
        none or it has expired (dropped, then).
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        storedAt, expiresAt, forms, ages, ttlOffsets, ttls = entry
        if now >= expiresAt:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        elapsed = int(now - storedAt)
        if elapsed < 0:
            elapsed = 0
        if ages[form] == elapsed:
            return forms[form]
        stored = patchTTLs(forms[form], ttlOffsets, ttls, elapsed)
        if form:
            forms, ages = (forms[0], stored), (ages[0], elapsed)
        else:
            forms, ages = (stored, forms[1]), (elapsed, ages[1])
        self._entries[key] = (storedAt, expiresAt, forms, ages, ttlOffsets, ttls)
        return stored

    def purge(self, names: list[bytes]) -> int:
        """
        Drop every answer whose name is one of C{names} or below one: the
        static records of those names (or wildcards) changed, and no answer
        cached before the change may be served after it.  It walks the whole
        cache, which is fine for a change made through the control API.

        @param names: lowercase wire names (as L{Question.key}).
        @return: how many answers were dropped.
        """
        doomed = [key for key in self._entries if any(atOrUnder(key[0], name) for name in names)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)
