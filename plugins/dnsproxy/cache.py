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

import struct
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from .wire import (
    FLAG_CD,
    FLAG_RD,
    HEADER_SIZE,
    KEY_DO,
    KEY_FLAGS,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    AnswerInfo,
    Query,
    WireError,
    addAdditionalCount,
    answerNames,
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
_RD_BYTE = FLAG_RD >> 8
_CD_BYTE = FLAG_CD
"""
RD and CD, in the header's third and fourth bytes.
"""
_COUNT = struct.Struct("!H")


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


ENTRY_OVERHEAD = 500
"""
The bytes an entry costs beyond its answer's and its key's own bytes: the
key and entry tuples, their numbers, the bytes objects' headers, the
TTL offsets and the ordered dict's slot (measured with tracemalloc: an entry
of a 66-byte answer takes about 540 bytes in all, one of a 4 KB answer about
4,580).
"""

DEFAULT_MAX_BYTES = 48 * 2**20
DEFAULT_MAX_ENTRY_BYTES = 4096
"""
The defaults of C{cache_bytes} and C{cache_entry_bytes}: a cache of the default
10,000 entries of the largest size taken (4 KB, with L{ENTRY_OVERHEAD}) fits in
48 MiB.
"""

_Entry = tuple[float, float, bytes, bytes, bytes, int, tuple[int, ...], tuple[int, ...], int]
"""
One cached answer: C{(storedAt, expiresAt, body, opt, ednsCount, age, ttlOffsets, ttls, size)}.

  - C{storedAt}: when it was stored (clock seconds);
  - C{expiresAt}: when it stops being served;
  - C{body}: the answer without an OPT record, its TTLs lowered by C{age};
  - C{opt}: the OPT record a client that sent one gets appended to C{body}
    (the upstream's, or ours), or C{b""} when C{body} is served as it is
    to every client (an answer whose OPT record is not its last);
  - C{ednsCount}: the additional count of C{body} plus the OPT record;
  - C{age}: the elapsed seconds C{body}'s TTLs are patched for (0 as stored);
  - C{ttlOffsets}: where the TTLs are in C{body};
  - C{ttls}: the TTLs to serve at C{storedAt}, clamped to the lifetime;
  - C{size}: the bytes the entry is accounted for (L{entrySize}).

One copy of the answer, whichever form clients ask for: the form with the OPT
record is put together as the answer is sent.  C{body} is rewritten with its
TTLs lowered the first time it is served in a new second (a new entry takes
the old one's place), so that the hits in the same second need not patch the
TTLs again.

A plain tuple of numbers, bytes and tuples of them, which the garbage
collector stops tracking after its first look (it keeps tracking objects, and
tuple subclasses such as named tuples): a full cache is then nothing for it to
walk, where ten thousand entries as objects made each of its full collections
cost several times more.
"""


def entrySize(key: CacheKey, body: bytes, opt: bytes) -> int:
    """
    The bytes an entry is accounted for: its answer, its key's bytes, and
    L{ENTRY_OVERHEAD}.
    """
    return len(body) + len(opt) + len(key[0]) + len(key[4]) + ENTRY_OVERHEAD


class AnswerCache:
    """
    A cache of wire answers bounded in entries and in bytes, that respects TTLs.
    Each answer is kept once, without a trailing OPT record, which is appended for
    the clients that sent one (RFC 6891, section 7).

    @ivar evictions: entries dropped to make room (past C{maxEntries} or C{maxBytes}).
    @ivar tooLarge: answers not cached for being larger than C{maxEntryBytes}.
    @ivar bytes: the bytes the entries are accounted for now (L{entrySize}).
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
        maxBytes: int = DEFAULT_MAX_BYTES,
        maxEntryBytes: int = DEFAULT_MAX_ENTRY_BYTES,
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
        @param maxBytes: the most bytes the entries may be accounted for
            (L{entrySize}); the least recently used go first past it.
        @param maxEntryBytes: the largest answer (wire bytes) that is cached.
        """
        self.maxEntries = maxEntries
        self.minTTL = minTTL
        self.maxTTL = maxTTL
        self.maxNegativeTTL = maxNegativeTTL
        self.clock = clock
        self.udpSize = udpSize
        self.maxBytes = maxBytes
        self.maxEntryBytes = maxEntryBytes
        self.evictions = 0
        self.tooLarge = 0
        self.bytes = 0
        self._opts = {0: optRecord(False, udpSize), KEY_DO: optRecord(True, udpSize)}
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

    def store(self, key: CacheKey, answer: bytes, info: AnswerInfo) -> _Entry | None:
        """
        Cache an answer (found by L{inspectAnswer}) if it may be cached and is
        no larger than C{maxEntryBytes}; the least recently used entries make
        room if the cache is over C{maxEntries} or C{maxBytes}.

        The entry's body holds the TTLs to serve now, so that neither the
        answers to the queries waiting for it (L{answerFor}) nor the hits in
        the same second patch them: when no TTL is clamped (the common case,
        told by two comparisons), the answer's own bytes are that body.

        @return: the entry stored (for L{answerFor}), or L{None} if the
            answer was not cached.
        """
        if self.maxEntries <= 0:
            return None
        lifetime = self.lifetime(info)
        if not lifetime:
            return None
        if len(answer) > self.maxEntryBytes:
            self.tooLarge += 1
            return None
        low = min(self.minTTL, lifetime)
        ttls = info.ttls
        shortest = min(ttls, default=0)
        # A TTL of 0 may stand for one with its top bit set, which the
        # answer's bytes still hold: such answers take the patching path.
        if not (0 < shortest and low <= shortest and max(ttls) <= lifetime):
            ttls = tuple(min(max(ttl, low), lifetime) for ttl in ttls)
            answer = patchTTLs(answer, info.ttlOffsets, ttls, 0)
        if info.optOffset is None:
            body, opt = answer, self._opts[key[3] & KEY_DO]
        elif info.optEnd == len(answer):
            body, opt = addAdditionalCount(answer[: info.optOffset], -1), answer[info.optOffset :]
        else:
            body, opt = answer, b""
        ednsCount = _COUNT.pack(_COUNT.unpack_from(body, 10)[0] + 1)
        size = entrySize(key, body, opt)
        now = self.clock.seconds()
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= old[8]
        entry = entries[key] = (now, now + lifetime, body, opt, ednsCount, 0, info.ttlOffsets, ttls, size)
        self.bytes += size
        kept = True
        while len(entries) > self.maxEntries or self.bytes > self.maxBytes:
            evicted, (*_, evictedSize) = entries.popitem(last=False)
            self.bytes -= evictedSize
            self.evictions += 1
            if evicted == key:
                kept = False
        return entry if kept else None

    def lookup(self, key: CacheKey, query: Query) -> bytes | None:
        """
        The cached answer to C{query}, patched for it (ID, question case,
        RD/CD, TTLs lowered by the whole seconds spent in the cache), or
        L{None} if there is none or it has expired (an expired entry is
        dropped).
        """
        entry = self._current(key, self.clock.seconds())
        if entry is None:
            return None
        return self.answerFor(entry, query)

    def answerFor(self, entry: _Entry, query: Query) -> bytes:
        """
        The answer to C{query} from an entry current now (L{store} gave it,
        or L{lookup} found it): its body for C{query}'s ID, question case and
        RD/CD, with the OPT record appended for a query that sent one.
        """
        body, opt, ednsCount = entry[2:5]
        if query.edns is not None and opt:
            body = b"".join((body[:10], ednsCount, body[HEADER_SIZE:], opt))
        return patchAnswer(body, (), (), 0, query)

    def lookupMessage(self, key: CacheKey, message: bytes, nameEnd: int, edns: bool, now: float) -> bytes | None:
        """
        What L{lookup} gives, for a query read by L{wire.quickQuestion} rather
        than parsed: its message, where its question ends, and whether it has
        an OPT record.

        @param now: the time of the cache's clock, which the caller has read
            (a cache hit's event is recorded at the same time).
        """
        # (L{_current}'s common case inline: an entry not expired whose body
        # is patched for this second.)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return None
        if now < entry[1] and entry[5] == int(now - entry[0]):
            entries.move_to_end(key)
        else:
            entry = self._current(key, now)
            if entry is None:
                return None
        body = entry[2]
        if edns and entry[3]:
            return answerQuery(body, message, nameEnd, entry[4], entry[3])
        if (body[2] ^ message[2]) & _RD_BYTE or (body[3] ^ message[3]) & _CD_BYTE:
            return answerQuery(body, message, nameEnd)
        # (L{answerQuery}'s common case inline, the query's RD and CD as the
        # answer's: its ID and question name put in.)
        return b"".join((message[:2], body[2:HEADER_SIZE], message[HEADER_SIZE:nameEnd], body[nameEnd:]))

    def __contains__(self, key: object) -> bool:
        """
        Whether an answer is kept under C{key}, expired or not (nothing changes:
        no expiry, no reordering).
        """
        return key in self._entries

    def _current(self, key: CacheKey, now: float) -> _Entry | None:
        """
        The entry cached under C{key}, its body's TTLs lowered for C{now};
        L{None} if there is none or it has expired (dropped, then).
        """
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return None
        storedAt, expiresAt, body, opt, ednsCount, age, ttlOffsets, ttls, size = entry
        if now >= expiresAt:
            del entries[key]
            self.bytes -= size
            return None
        entries.move_to_end(key)
        elapsed = int(now - storedAt)
        if elapsed < 0:
            elapsed = 0
        if age == elapsed:
            return entry
        entry = (
            storedAt,
            expiresAt,
            patchTTLs(body, ttlOffsets, ttls, elapsed),
            opt,
            ednsCount,
            elapsed,
            ttlOffsets,
            ttls,
            size,
        )
        entries[key] = entry
        return entry

    def purge(self, names: list[bytes]) -> int:
        """
        Drop every answer whose name, or a name its CNAME chain passes
        through, is one of C{names} or below one: the static records of those
        names (or wildcards) changed, and no answer cached before the change
        may be served after it.  It walks the whole cache and reads the
        answer section of each entry, which is fine for a change made through
        the control API.

        @param names: lowercase wire names (as L{Question.key}).
        @return: how many answers were dropped.
        """

        def affected(key: CacheKey, body: bytes) -> bool:
            if any(atOrUnder(key[0], name) for name in names):
                return True
            try:
                chain = answerNames(body)
            except WireError:
                return True
            return any(atOrUnder(link, name) for link in chain for name in names)

        doomed = [key for key, entry in self._entries.items() if affected(key, entry[2])]
        for key in doomed:
            self.bytes -= self._entries.pop(key)[8]
        return len(doomed)
