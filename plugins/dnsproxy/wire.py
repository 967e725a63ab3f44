"""
DNS messages at the wire level: just enough parsing for the proxy's hot paths
(header, question, OPT record, where the TTLs are), so that forwarded and
cached answers are patched in place, never decoded.  Every function treats its
input as hostile: anything malformed raises L{WireError}, and no length read
from a message is trusted before it is checked against the message's size.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import attrs

HEADER_SIZE = 12
TYPE_OPT = 41
TYPE_SOA = 6
CLASS_IN = 1

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F
DO_BIT = 0x8000
"""
The DO bit, in the 16 low bits of an OPT record's TTL field.
"""

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16
"""
An extended rcode (RFC 6891, 6.1.3): the upper 8 bits (1) go in the OPT record.
"""

MIN_UDP_SIZE = 512
"""
The UDP answer size every client accepts (RFC 1035); larger only with EDNS(0).
"""


class WireError(ValueError):
    """
    A message that cannot be read: too short, a name running off the end, a
    compression loop, counts that promise more records than there are bytes.
    """


class Question(NamedTuple):
    """
    The question of a message.

    A named tuple (as L{AnswerInfo}, for the same reason): one is made for
    every query parsed and every upstream query sent.

    @ivar name: the name in wire form (length-prefixed labels, ending with the
        root's zero byte), exactly as it was sent (case kept).
    @ivar key: C{name} lowercased (ASCII only): the name's identity for caches
        and for matching answers to queries.
    @ivar qtype: the query type (any 16-bit value, unknown types included).
    @ivar qclass: the query class (IN, CH, ...).
    @ivar end: the offset just past the question in the message.
    """

    name: bytes
    key: bytes
    qtype: int
    qclass: int
    end: int


@attrs.frozen
class EDNS:
    """
    The OPT record of a message (EDNS(0), RFC 6891).

    @ivar udpSize: the requestor's UDP payload size (the OPT record's class).
    @ivar do: whether the DO bit (DNSSEC OK) is set.
    @ivar version: the EDNS version (only 0 exists).
    @ivar offset: where the OPT record starts in the message.
    @ivar keyOptions: the options that change the answer, as they were sent
        (code, length, data): the client subnet ones (RFC 7871), which go
        upstream and into the cache key; L{b""} for none.
    """

    udpSize: int
    do: bool
    version: int
    offset: int
    keyOptions: bytes = b""


@attrs.frozen
class Query:
    """
    The parts of a client's query the proxy acts on.

    @ivar id: the message ID.
    @ivar flags: the 16 flag bits of the header (QR, opcode, RD, CD, ...).
    @ivar question: the question (queries have exactly one).
    @ivar edns: the OPT record, if the client sent one.
    """

    id: int
    flags: int
    question: Question
    edns: EDNS | None

    @property
    def opcode(self) -> int:
        """
        The opcode (0 for a standard query).
        """
        return (self.flags & OPCODE_MASK) >> 11

    def maxUDPSize(self) -> int:
        """
        The largest UDP answer this client accepts: 512 bytes without EDNS,
        else its payload size (never less than 512).
        """
        return MIN_UDP_SIZE if self.edns is None else max(MIN_UDP_SIZE, self.edns.udpSize)


class MalformedQuery(WireError):
    """
    A query whose header could be read but whose rest could not: the caller
    can still answer FORMERR with the query's ID.

    @ivar id: the message ID from the header.
    @ivar flags: the 16 flag bits from the header.
    """

    def __init__(self, message: str, id: int, flags: int) -> None:
        super().__init__(message)
        self.id = id
        self.flags = flags


class AnswerInfo(NamedTuple):
    """
    What the cache needs to know about an answer, found by L{inspectAnswer}.

    A named tuple, not a frozen attrs class (as L{Query} and L{EDNS} are):
    one is made for every answer from an upstream, and the attrs class's
    C{__init__}, setting its eleven fields one by one through
    C{object.__setattr__}, took about four times as long (timeit: 2.6 µs
    against 0.67 on a loaded machine).

    @ivar rcode: the 4-bit rcode of the header.
    @ivar flags: the 16 flag bits of the header.
    @ivar truncated: whether TC is set.
    @ivar ttlOffsets: where the 4-byte TTL of every record of the answer,
        authority and additional sections is (the OPT record excluded).
    @ivar ttls: those TTLs; one with its top bit set counts as 0 (RFC 2181, 8).
    @ivar answerCount: the number of records in the answer section.
    @ivar negativeTTL: for NXDOMAIN or NODATA, how long it may be cached (RFC
        2308): the smaller of the SOA's TTL and its MINIMUM; C{None} otherwise.
    @ivar questionEnd: the offset just past the question section.
    @ivar ednsRcode: the OPT record's upper 8 rcode bits (not 0: e.g. BADVERS).
    @ivar optOffset: where the OPT record starts, if there is one.
    @ivar optEnd: the offset just past the OPT record, if there is one.
    """

    rcode: int
    flags: int
    truncated: bool
    ttlOffsets: tuple[int, ...]
    ttls: tuple[int, ...]
    answerCount: int
    negativeTTL: int | None
    questionEnd: int
    ednsRcode: int = 0
    optOffset: int | None = None
    optEnd: int | None = None


MAX_NAME_LENGTH = 255
"""
The longest a name may be in wire form, length bytes and root included.
"""

MAX_LABEL_LENGTH = 63

MAX_POINTERS = 128
"""
The most compression pointers followed while reading one name.
"""

_COUNT = struct.Struct("!H")
_HEADER = struct.Struct("!6H")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TYPE_CLASS = struct.Struct("!HH")
_RECORD = struct.Struct("!HHIH")
"""
The fixed part of a resource record after its name: type, class, TTL, rdlength.
"""

_OPT_FIXED = struct.Struct("!BHHIH")
"""
An OPT record with no options: the root name, type, class, TTL, rdlength 0.
"""

OPTION_ECS = 8
"""
The EDNS client subnet option (RFC 7871): the one option that changes an
answer and is meant to be forwarded.  Every other option is hop-by-hop
(cookies, padding, keepalive, NSID asks this server's identity; RFC 6891,
6.1.1: the OPT record is not forwarded), so netd does not pass it on.
"""

KEY_DO = 0x0001
"""
The DO bit in the flags part of a cache key (a bit the header's flags leave
free in a query: the rcode's lowest).
"""
KEY_FLAGS = 0x0100 | 0x0020 | 0x0010
"""
The query header bits that change an answer and go upstream: RD (a
recursive resolver answers RD=0 from its cache only), AD (RFC 6840, 5.7: the
answer's AD bit) and CD (RFC 4035: unvalidated data instead of SERVFAIL).
"""

_TTL_SIGN = 0x80000000
_ID_FLAGS = struct.Struct("!HH")
_QUERY_FLAGS = FLAG_RD | FLAG_CD
"""
The flags a cached answer takes from the query it answers.
"""
_KEEP_FLAGS = 0xFFFF & ~_QUERY_FLAGS
_RESPONSE_FLAGS = OPCODE_MASK | FLAG_RD | FLAG_CD


def readHeader(data: bytes) -> tuple[int, int, int, int, int, int]:
    """
    Read a message's header.

    @return: the ID, the flags, and the question, answer, authority and
        additional counts.
    @raise WireError: if C{data} is shorter than a header.
    """
    if len(data) < HEADER_SIZE:
        raise WireError(f"message of {len(data)} bytes is shorter than a header")
    return _HEADER.unpack_from(data)


def skipName(data: bytes, offset: int) -> int:
    """
    Find the end of a name, possibly compressed, checking all of it: every
    label and pointer within the message, every pointer strictly backwards
    (to before the labels it ends, so that no loop is possible), at most
    L{MAX_POINTERS} pointers, labels of at most 63 bytes, names of at most 255.

    @return: the offset just past the name where it starts (past its first
        pointer, if it has one).
    @raise WireError: if the name is malformed.
    """
    size = len(data)
    position = start = offset
    end = -1
    length = 1
    jumps = 0
    while True:
        if position >= size:
            raise WireError(f"name at offset {offset} runs past the end of the message")
        byte = data[position]
        if byte == 0:
            return position + 1 if end < 0 else end
        if byte <= MAX_LABEL_LENGTH:
            length += byte + 1
            if length > MAX_NAME_LENGTH:
                raise WireError(f"name at offset {offset} is longer than {MAX_NAME_LENGTH} bytes")
            position += byte + 1
        elif byte >= 0xC0:
            if position + 1 >= size:
                raise WireError(f"name at offset {offset} runs past the end of the message")
            target = ((byte & 0x3F) << 8) | data[position + 1]
            if target >= start:
                raise WireError(f"compression pointer at offset {position} does not point backwards")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise WireError(f"name at offset {offset} follows more than {MAX_POINTERS} pointers")
            if end < 0:
                end = position + 2
            position = start = target
        else:
            raise WireError(f"label type 0x{byte & 0xC0:02x} at offset {position} is not supported")


def parseQuestion(data: bytes, offset: int = HEADER_SIZE) -> Question:
    """
    Read a question: a name of plain labels (no compression), type and class.

    @raise WireError: if the question is malformed or runs past the end.
    """
    size = len(data)
    position = offset
    while True:
        if position >= size:
            raise WireError(f"question name at offset {offset} runs past the end of the message")
        length = data[position]
        if length == 0:
            break
        if length > MAX_LABEL_LENGTH:
            raise WireError(f"question name at offset {offset} is compressed or has a bad label")
        position += length + 1
    end = position + 1
    if end - offset > MAX_NAME_LENGTH:
        raise WireError(f"question name at offset {offset} is longer than {MAX_NAME_LENGTH} bytes")
    if end + 4 > size:
        raise WireError("question runs past the end of the message")
    name = data[offset:end]
    qtype, qclass = _TYPE_CLASS.unpack_from(data, end)
    return Question(name, name.lower(), qtype, qclass, end + 4)


def _skipRecords(data: bytes, offset: int, count: int) -> int:
    """
    Skip C{count} resource records starting at C{offset}.

    @return: the offset just past them.
    """
    size = len(data)
    for _ in range(count):
        offset = skipName(data, offset) + 10
        if offset > size:
            raise WireError("record runs past the end of the message")
        offset += _U16.unpack_from(data, offset - 2)[0]
        if offset > size:
            raise WireError("record data runs past the end of the message")
    return offset


def parseQuery(data: bytes) -> Query:
    """
    Read what the proxy needs of a query: header, question and OPT record.
    The query's meaning (QR, opcode, EDNS version) is for the caller to judge.

    @raise WireError: if C{data} is shorter than a header.
    @raise MalformedQuery: if the header can be read but the rest is malformed:
        not exactly one question, records running off the end, two OPT
        records, or an OPT record whose name is not the root.
    """
    if len(data) < HEADER_SIZE:
        raise WireError(f"message of {len(data)} bytes is shorter than a header")
    id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        raise MalformedQuery(f"query has {qdcount} questions, not 1", id, flags)
    try:
        question = parseQuestion(data, HEADER_SIZE)
        if not (ancount or nscount or arcount):
            return Query(id, flags, question, None)
        offset = _skipRecords(data, question.end, ancount + nscount)
        size = len(data)
        edns = None
        for _ in range(arcount):
            start = offset
            offset = skipName(data, offset)
            if offset + 10 > size:
                raise WireError("record runs past the end of the message")
            rtype, rclass, ttl, rdlength = _RECORD.unpack_from(data, offset)
            offset += 10 + rdlength
            if offset > size:
                raise WireError("record data runs past the end of the message")
            if rtype == TYPE_OPT:
                if edns is not None:
                    raise WireError("query has two OPT records")
                if data[start] != 0:
                    raise WireError("OPT record's name is not the root")
                keyOptions = optionsKey(data, offset - rdlength, offset)
                if keyOptions is None:
                    raise WireError("OPT record's options run past its data")
                edns = EDNS(rclass, bool(ttl & DO_BIT), (ttl >> 16) & 0xFF, start, keyOptions)
    except WireError as e:
        raise MalformedQuery(str(e), id, flags) from None
    return Query(id, flags, question, edns)


def optionsKey(data: bytes, start: int, end: int) -> bytes | None:
    """
    The options of an OPT record's data (C{data[start:end]}) that change the
    answer (L{OPTION_ECS}), as sent; L{None} if an option runs past C{end}.
    """
    if start == end:
        return b""
    kept = []
    while start < end:
        if start + 4 > end:
            return None
        code, length = _TYPE_CLASS.unpack_from(data, start)
        stop = start + 4 + length
        if stop > end:
            return None
        if code == OPTION_ECS:
            kept.append(data[start:stop])
        start = stop
    return b"".join(kept)


def upstreamQuery(data: bytes, query: Query, udpSize: int) -> bytes:
    """
    The query netd sends upstream for a client's query: its ID, the header
    bits that change the answer (L{KEY_FLAGS}), its question as it was sent
    (case kept), and, if it had an OPT record, one of ours (EDNS version 0,
    payload size C{udpSize}, its DO bit, its client subnet option).  Nothing
    else of the client's message goes upstream, so that the answer depends
    only on what the cache key holds (L{cache.cacheKey}).
    """
    edns = query.edns
    header = _HEADER.pack(query.id, query.flags & KEY_FLAGS, 1, 0, 0, 0 if edns is None else 1)
    question = data[HEADER_SIZE : query.question.end]
    if edns is None:
        return header + question
    options = edns.keyOptions
    opt = _OPT_FIXED.pack(0, TYPE_OPT, udpSize, DO_BIT if edns.do else 0, len(options))
    return b"".join((header, question, opt, options))


_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
"""
Bytes 4 to 10 of a plain query's header: one question, no answer or authority records.
"""
_NO_ADDITIONAL = b"\x00\x00"
_ONE_ADDITIONAL = b"\x00\x01"
_OPT_TYPE = b"\x00\x29"
_QR_OR_OPCODE = 0xF8
"""
QR and the opcode, in the header's third byte.
"""
_RD_BYTE = FLAG_RD >> 8
_CD_BYTE = FLAG_CD
_DO_BYTE = DO_BIT >> 8
_KEY_FLAGS_LOW = KEY_FLAGS & 0xFF
"""
The bits of L{KEY_FLAGS} in the header's fourth byte (AD, CD); RD is the
lowest bit of the third.
"""


def quickQuestion(data: bytes) -> tuple[tuple[bytes, int, int, int, bytes], int, bool] | None:
    """
    The cache key (as L{cache.cacheKey} makes it) of a plain query, where its
    question ends, and whether it has an OPT record, read without building any
    object; L{None} for anything else, which the caller reads with L{parseQuery}.
    Without an OPT record the name is not checked: a key found in the cache
    proves it whole (the argument is in the README's design notes).
    """
    if data[4:10] != _ONE_QUESTION or data[2] & _QR_OR_OPCODE:
        return None
    size = len(data)
    additional = data[10:12]
    flags = ((data[2] & _RD_BYTE) << 8) | (data[3] & _KEY_FLAGS_LOW)
    if additional == _NO_ADDITIONAL:
        end = size - 4
        if end <= HEADER_SIZE:
            return None
        qtype, qclass = _TYPE_CLASS.unpack_from(data, end)
        return (data[HEADER_SIZE:end].lower(), qtype, qclass, flags, b""), end, False
    if additional != _ONE_ADDITIONAL:
        return None
    position = HEADER_SIZE
    while True:
        if position >= size:
            return None
        length = data[position]
        if length == 0:
            break
        if length > MAX_LABEL_LENGTH:
            return None
        position += length + 1
    end = position + 1
    opt = end + 4
    if (
        end - HEADER_SIZE > MAX_NAME_LENGTH
        or opt + 11 > size
        or data[opt]
        or data[opt + 1 : opt + 3] != _OPT_TYPE
        or data[opt + 6]
    ):
        return None
    if opt + 11 + _U16.unpack_from(data, opt + 9)[0] != size:
        return None
    options = b"" if opt + 11 == size else optionsKey(data, opt + 11, size)
    if options is None:
        return None
    if data[opt + 7] & _DO_BYTE:
        flags |= KEY_DO
    qtype, qclass = _TYPE_CLASS.unpack_from(data, end)
    return (data[HEADER_SIZE:end].lower(), qtype, qclass, flags, options), end, True


def inspectAnswer(data: bytes) -> AnswerInfo:
    """
    Walk every record of an answer, noting what the cache needs: the rcode,
    where the TTLs are, and the negative-caching TTL (RFC 2308).

    @raise WireError: if the answer is malformed: anything running off the
        end, a bad name, an SOA record whose data is too short, an OPT record
        outside the additional section, two of them, or one not at the root.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise WireError(f"message of {size} bytes is shorter than a header")
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    offset = HEADER_SIZE
    for _ in range(qdcount):
        offset = skipName(data, offset) + 4
        if offset > size:
            raise WireError("question runs past the end of the message")
    questionEnd = offset
    rcode = flags & RCODE_MASK
    negative = rcode == RCODE_NXDOMAIN or (rcode == RCODE_NOERROR and ancount == 0)
    authorityEnd = ancount + nscount
    ttlOffsets: list[int] = []
    ttls: list[int] = []
    negativeTTL = None
    ednsRcode = 0
    optOffset = optEnd = None
    for index in range(authorityEnd + arcount):
        start = offset
        offset = skipName(data, offset)
        if offset + 10 > size:
            raise WireError("record runs past the end of the message")
        rtype, _, ttl, rdlength = _RECORD.unpack_from(data, offset)
        rdata = offset + 10
        end = rdata + rdlength
        if end > size:
            raise WireError("record data runs past the end of the message")
        if rtype == TYPE_OPT:
            if index < authorityEnd:
                raise WireError("OPT record outside the additional section")
            if optOffset is not None:
                raise WireError("answer has two OPT records")
            if data[start] != 0:
                raise WireError("OPT record's name is not the root")
            ednsRcode = ttl >> 24
            optOffset = start
            optEnd = end
        else:
            if ttl & _TTL_SIGN:
                ttl = 0
            ttlOffsets.append(offset + 4)
            ttls.append(ttl)
            if rtype == TYPE_SOA and negative and negativeTTL is None and ancount <= index < authorityEnd:
                fields = skipName(data, skipName(data, rdata))
                if fields + 20 > end:
                    raise WireError(f"SOA record at offset {start} is too short")
                minimum = _U32.unpack_from(data, fields + 16)[0]
                if minimum & _TTL_SIGN:
                    minimum = 0
                negativeTTL = min(ttl, minimum)
        offset = end
    return AnswerInfo(
        rcode,
        flags,
        bool(flags & FLAG_TC),
        tuple(ttlOffsets),
        tuple(ttls),
        ancount,
        negativeTTL,
        questionEnd,
        ednsRcode,
        optOffset,
        optEnd,
    )


def patchAnswer(
    stored: bytes,
    ttlOffsets: tuple[int, ...],
    ttls: tuple[int, ...],
    elapsed: int,
    query: Query,
) -> bytes:
    """
    Make a stored answer into the answer to a new query, without parsing it:
    the query's ID, its question name (same name, perhaps another case; the
    question starts at offset 12 in both), its RD and CD bits, and every TTL
    lowered by C{elapsed} seconds (never below 0).

    @param ttlOffsets: where the TTLs are, from L{AnswerInfo.ttlOffsets}.
    @param ttls: the TTLs when the answer was stored.
    """
    answer = bytearray(stored)
    flags = ((answer[2] << 8) | answer[3]) & _KEEP_FLAGS | (query.flags & _QUERY_FLAGS)
    _ID_FLAGS.pack_into(answer, 0, query.id, flags)
    name = query.question.name
    answer[HEADER_SIZE : HEADER_SIZE + len(name)] = name
    pack = _U32.pack_into
    for offset, ttl in zip(ttlOffsets, ttls, strict=True):
        ttl -= elapsed
        pack(answer, offset, ttl if ttl > 0 else 0)
    return bytes(answer)


def patchTTLs(stored: bytes, ttlOffsets: tuple[int, ...], ttls: tuple[int, ...], elapsed: int) -> bytes:
    """
    A stored answer with every TTL lowered by C{elapsed} seconds (never below 0).

    @param ttlOffsets: where the TTLs are, from L{AnswerInfo.ttlOffsets}.
    @param ttls: the TTLs when the answer was stored.
    """
    answer = bytearray(stored)
    pack = _U32.pack_into
    for offset, ttl in zip(ttlOffsets, ttls, strict=True):
        ttl -= elapsed
        pack(answer, offset, ttl if ttl > 0 else 0)
    return bytes(answer)


def answerQuery(stored: bytes, query: bytes, nameEnd: int, count: bytes = b"", opt: bytes = b"") -> bytes:
    """
    A stored answer made into the answer to the query message C{query}, whose
    question (the same as the answer's but perhaps for case) ends at
    C{nameEnd}: the query's ID, its RD and CD bits and its question name; what
    L{patchAnswer} does with no TTL to lower, from the query's bytes.

    @param count: with C{opt}, the additional count (2 bytes) of the answer
        with the OPT record C{opt} appended; both empty to send C{stored}'s
        records as they are.
    """
    if (stored[2] ^ query[2]) & _RD_BYTE or (stored[3] ^ query[3]) & _CD_BYTE:
        flags = bytes(
            ((stored[2] & ~_RD_BYTE) | (query[2] & _RD_BYTE), (stored[3] & ~_CD_BYTE) | (query[3] & _CD_BYTE))
        )
        counts = stored[4:HEADER_SIZE] if not count else stored[4:10] + count
        return b"".join((query[:2], flags, counts, query[HEADER_SIZE:nameEnd], stored[nameEnd:], opt))
    if count:
        return b"".join((query[:2], stored[2:10], count, query[HEADER_SIZE:nameEnd], stored[nameEnd:], opt))
    return b"".join((query[:2], stored[2:HEADER_SIZE], query[HEADER_SIZE:nameEnd], stored[nameEnd:]))


def addAdditionalCount(message: bytes, delta: int) -> bytes:
    """
    A copy of C{message} with its additional-section count changed by C{delta}
    (to go with a record appended or cut off at the end).
    """
    (arcount,) = _COUNT.unpack_from(message, 10)
    return message[:10] + _COUNT.pack(arcount + delta) + message[HEADER_SIZE:]


def optRecord(do: bool, udpSize: int, rcode: int = 0) -> bytes:
    """
    An OPT record with no options, for an answer: the root name, C{udpSize}
    as class, and in the TTL the upper 8 bits of C{rcode} (for an extended
    rcode), EDNS version 0 and the DO bit.
    """
    return _OPT_FIXED.pack(0, TYPE_OPT, udpSize, ((rcode >> 4) << 24) | (DO_BIT if do else 0), 0)


def makeResponse(query: Query, rcode: int, *, udpSize: int = 1232) -> bytes:
    """
    An answer with no records: the query's ID, opcode, RD and CD, with QR and
    RA set and C{rcode}; the query's question; and, if the query had an OPT
    record, one of ours (payload size C{udpSize}, the query's DO bit, and the
    upper bits of C{rcode} when it is an extended one).
    """
    flags = FLAG_QR | FLAG_RA | (query.flags & _RESPONSE_FLAGS) | (rcode & RCODE_MASK)
    question = query.question
    parts = [
        _HEADER.pack(query.id, flags, 1, 0, 0, 0 if query.edns is None else 1),
        question.name,
        _TYPE_CLASS.pack(question.qtype, question.qclass),
    ]
    if query.edns is not None:
        parts.append(optRecord(query.edns.do, udpSize, rcode))
    return b"".join(parts)


def makeHeaderError(id: int, flags: int, rcode: int) -> bytes:
    """
    A header-only answer (all counts 0), for a query whose question could not
    be read: QR set, the opcode and RD from C{flags}, and C{rcode}.
    """
    return _HEADER.pack(id, FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD)) | (rcode & RCODE_MASK), 0, 0, 0, 0)


def truncate(answer: bytes, query: Query, *, udpSize: int = 1232) -> bytes:
    """
    What a UDP client gets instead of an answer too large for it: the answer's
    header with TC set and no records, the question, and, if the query had an
    OPT record, one of ours as in L{makeResponse}.

    @raise WireError: if C{answer} is shorter than a header.
    """
    id, flags = readHeader(answer)[:2]
    question = query.question
    parts = [
        _HEADER.pack(id, flags | FLAG_TC, 1, 0, 0, 0 if query.edns is None else 1),
        question.name,
        _TYPE_CLASS.pack(question.qtype, question.qclass),
    ]
    if query.edns is not None:
        parts.append(optRecord(query.edns.do, udpSize))
    return b"".join(parts)


def encodeName(text: str) -> bytes:
    """
    A name in wire form: C{"netd.test"} (or C{"netd.test."}) becomes
    C{b"\\x04netd\\x04test\\x00"}, and C{"."} the root C{b"\\x00"}.  Names are
    ASCII (no IDNA) with no escapes.

    @raise WireError: for an empty label, a label over 63 bytes, a name over
        255, or a character outside ASCII.
    """
    if text.endswith("."):
        text = text[:-1]
    if not text:
        return b"\x00"
    try:
        labels = text.encode("ascii").split(b".")
    except UnicodeEncodeError:
        raise WireError(f"name {text!r} is not ASCII") from None
    parts = []
    for label in labels:
        if not label:
            raise WireError(f"name {text!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise WireError(f"name {text!r} has a label longer than {MAX_LABEL_LENGTH} bytes")
        parts.append(bytes((len(label),)))
        parts.append(label)
    parts.append(b"\x00")
    wire = b"".join(parts)
    if len(wire) > MAX_NAME_LENGTH:
        raise WireError(f"name {text!r} is longer than {MAX_NAME_LENGTH} bytes in wire form")
    return wire


_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\")}


def _presentLabel(label: bytes) -> str:
    """
    A label as text, with dots, backslashes and unprintable bytes escaped as
    in zone files (C{\\.}, C{\\\\}, C{\\DDD}).
    """
    if all(byte in _PRINTABLE for byte in label):
        return label.decode("ascii")
    return "".join(
        chr(byte) if byte in _PRINTABLE else f"\\{chr(byte)}" if byte in b".\\" else f"\\{byte:03d}" for byte in label
    )


def decodeName(wire: bytes) -> str:
    """
    A name in wire form (plain labels, as in L{Question.name}) as text for
    logs: C{"netd.test"}, or C{"."} for the root.

    @raise WireError: if C{wire} is not one whole uncompressed name.
    """
    labels = []
    position = 0
    while True:
        if position >= len(wire):
            raise WireError("name runs past its end")
        length = wire[position]
        if length == 0:
            break
        if length > MAX_LABEL_LENGTH:
            raise WireError("name is compressed or has a bad label")
        labels.append(_presentLabel(wire[position + 1 : position + 1 + length]))
        position += length + 1
    if position + 1 != len(wire):
        raise WireError("bytes after the name's end")
    if position + 1 > MAX_NAME_LENGTH:
        raise WireError(f"name is longer than {MAX_NAME_LENGTH} bytes")
    return ".".join(labels) if labels else "."


TYPE_CNAME = 5


def readName(data: bytes, offset: int) -> bytes:
    """
    The name at C{offset}, compression pointers followed, as an uncompressed
    lowercase wire name (as L{Question.key}); checked as L{skipName} checks.

    @raise WireError: if the name is malformed.
    """
    skipName(data, offset)
    labels = []
    position = offset
    while True:
        length = data[position]
        if length == 0:
            labels.append(b"\x00")
            return b"".join(labels).lower()
        if length >= 0xC0:
            position = ((length & 0x3F) << 8) | data[position + 1]
            continue
        labels.append(data[position : position + length + 1])
        position += length + 1


def answerNames(data: bytes) -> list[bytes]:
    """
    The names an answer's answer section passes through: the owner of each
    record and the target of each CNAME, lowercased and uncompressed (a
    CNAME chain's every link).

    @raise WireError: if the answer is malformed.
    """
    _, _, qdcount, ancount, _, _ = readHeader(data)
    offset = HEADER_SIZE
    for _ in range(qdcount):
        offset = skipName(data, offset) + 4
    names = []
    size = len(data)
    for _ in range(ancount):
        names.append(readName(data, offset))
        offset = skipName(data, offset)
        if offset + 10 > size:
            raise WireError("record runs past the end of the message")
        rtype, _, _, rdlength = _RECORD.unpack_from(data, offset)
        if rtype == TYPE_CNAME:
            names.append(readName(data, offset + 10))
        offset += 10 + rdlength
    return names


def atOrUnder(name: bytes, ancestor: bytes) -> bool:
    """
    Whether a name is C{ancestor} or below it, label by label: C{a.b.test}
    is under C{b.test}, C{ab.test} is not.  Both are uncompressed wire names
    (as L{Question.key}); for names without case, give both lowercased.
    """
    if len(name) < len(ancestor) or not name.endswith(ancestor):
        return False
    while len(name) > len(ancestor):
        name = name[name[0] + 1 :]
    return name == ancestor
