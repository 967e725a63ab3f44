"""
The DNS proxy's wire-level functions (L{netd_plugins.dnsproxy.wire}), checked
against twisted.names as the reference: messages are built with
L{dns.Message} (which compresses names) and outputs parsed back with it; golden
cases for many types and classes, EDNS, compression, truncation at every
length, and a hypothesis fuzz that nothing but L{WireError} ever comes out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.names import dns

from netd_plugins.dnsproxy.cache import cacheKey
from netd_plugins.dnsproxy.wire import (
    DO_BIT,
    EDNS,
    FLAG_AA,
    FLAG_AD,
    FLAG_CD,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    MAX_POINTERS,
    RCODE_FORMERR,
    RCODE_NOERROR,
    RCODE_NOTIMP,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    TYPE_OPT,
    AnswerInfo,
    MalformedQuery,
    Query,
    Question,
    WireError,
    answerQuery,
    decodeName,
    encodeName,
    inspectAnswer,
    makeHeaderError,
    makeResponse,
    optRecord,
    parseQuery,
    parseQuestion,
    patchAnswer,
    patchTTLs,
    quickQuestion,
    readHeader,
    skipName,
    truncate,
)

from .dnsmessages import NAME, makeAnswer, makeQuery, parse, parseEDNS, rr, soa

# Messages twisted.names builds (dnsmessages), changed by hand.

TYPE_UNKNOWN = 65534


def withCounts(
    data: bytes, qd: int | None = None, an: int | None = None, ns: int | None = None, ar: int | None = None
) -> bytes:
    """
    A copy of C{data} with some of its header counts replaced.
    """
    counts = list(struct.unpack_from("!4H", data, 4))
    for index, value in enumerate((qd, an, ns, ar)):
        if value is not None:
            counts[index] = value
    return data[:4] + struct.pack("!4H", *counts) + data[12:]


def rawOPT(udpSize: int = 4096, ttl: int = 0, name: bytes = b"\x00", rdata: bytes = b"") -> bytes:
    """
    An OPT record built by hand, to make the ones twisted.names will not.
    """
    return name + struct.pack("!HHIH", TYPE_OPT, udpSize, ttl, len(rdata)) + rdata


def addAdditional(data: bytes, *records: bytes) -> bytes:
    """
    A copy of C{data} with C{records} appended to its additional section.
    """
    (arcount,) = struct.unpack_from("!H", data, 10)
    return withCounts(data, ar=arcount + len(records)) + b"".join(records)


def ttlsAt(data: bytes, offsets: Sequence[int]) -> list[int]:
    """
    The 32-bit values at C{offsets}.
    """
    return [struct.unpack_from("!I", data, offset)[0] for offset in offsets]


# Golden cases: one question and a typical answer for each type and class.

GOLDEN: dict[str, tuple[bytes, int, int, list[dns.RRHeader]]] = {
    "A": (
        NAME,
        dns.A,
        dns.IN,
        [rr(NAME, dns.Record_A("192.0.2.1", 300), 300), rr(NAME, dns.Record_A("192.0.2.2", 300), 300)],
    ),
    "AAAA": (NAME, dns.AAAA, dns.IN, [rr(NAME, dns.Record_AAAA("2001:db8::1", 120), 120)]),
    "MX": (
        NAME,
        dns.MX,
        dns.IN,
        [rr(NAME, dns.Record_MX(10, b"mail." + NAME, 600), 600), rr(NAME, dns.Record_MX(20, b"mx2." + NAME, 500), 500)],
    ),
    "TXT": (NAME, dns.TXT, dns.IN, [rr(NAME, dns.Record_TXT(b"v=spf1 -all", b"second string", ttl=60), 60)]),
    "SOA": (NAME, dns.SOA, dns.IN, [soa(ttl=3600, minimum=300)]),
    "SRV": (
        b"_sip._tcp." + NAME,
        dns.SRV,
        dns.IN,
        [rr(b"_sip._tcp." + NAME, dns.Record_SRV(10, 60, 5060, b"sip." + NAME, 30), 30)],
    ),
    "CNAME": (
        b"www." + NAME,
        dns.CNAME,
        dns.IN,
        [rr(b"www." + NAME, dns.Record_CNAME(NAME, 900), 900)],
    ),
    "TYPE65534": (
        NAME,
        TYPE_UNKNOWN,
        dns.IN,
        [dns.RRHeader(NAME, TYPE_UNKNOWN, dns.IN, 77, dns.UnknownRecord(b"\x01\x02\x03", 77))],
    ),
    "CH": (b"version.bind", dns.TXT, dns.CH, [rr(b"version.bind", dns.Record_TXT(b"netd", ttl=0), 0, cls=dns.CH)]),
}


def goldenQuery(kind: str, **kwargs: object) -> bytes:
    """
    The golden query of kind C{kind}.
    """
    name, qtype, qclass, _ = GOLDEN[kind]
    return makeQuery(name, qtype, qclass, **kwargs)


def goldenAnswer(kind: str, **kwargs: object) -> bytes:
    """
    The golden answer of kind C{kind}.
    """
    name, qtype, qclass, answers = GOLDEN[kind]
    return makeAnswer(name, qtype, qclass, answers=answers, **kwargs)


def delegationAnswer() -> bytes:
    """
    An answer with records in every section, an OPT record and plenty of
    compression: the hardest ordinary message.
    """
    return makeAnswer(
        b"www." + NAME,
        dns.A,
        answers=[
            rr(b"www." + NAME, dns.Record_CNAME(b"web." + NAME, 3600), 3600),
            rr(b"web." + NAME, dns.Record_A("192.0.2.80", 60), 60),
        ],
        authority=[
            rr(NAME, dns.Record_NS(b"ns1." + NAME, 86400), 86400),
            rr(NAME, dns.Record_NS(b"ns2." + NAME, 86400), 86400),
        ],
        additional=[rr(b"ns1." + NAME, dns.Record_A("192.0.2.53", 86400), 86400)],
        edns=True,
        do=True,
    )


# readHeader


def test_readHeaderGolden() -> None:
    """
    readHeader returns the ID, the flags and the four counts, in wire order.
    """
    assert readHeader(bytes.fromhex("abcd 8180 0001 0002 0003 0004") + b"rest") == (0xABCD, 0x8180, 1, 2, 3, 4)


def test_readHeaderTooShort() -> None:
    """
    readHeader raises WireError for every length under 12 bytes.
    """
    header = bytes.fromhex("abcd 8180 0001 0002 0003 0004")
    for length in range(12):
        with pytest.raises(WireError):
            readHeader(header[:length])


# encodeName and decodeName


@pytest.mark.parametrize(
    "text, wire",
    [
        ("netd.test", b"\x04netd\x04test\x00"),
        ("netd.test.", b"\x04netd\x04test\x00"),
        (".", b"\x00"),
        ("", b"\x00"),
        ("_sip._tcp.Example.COM", b"\x04_sip\x04_tcp\x07Example\x03COM\x00"),
    ],
)
def test_encodeNameGolden(text: str, wire: bytes) -> None:
    """
    encodeName writes length-prefixed labels ending with the root, keeping case.
    """
    assert encodeName(text) == wire


@pytest.mark.parametrize(
    "text",
    ["a" * 64 + ".test", ".".join(["a" * 63] * 4), "a..b", ".a", "näme.test"],
)
def test_encodeNameRefuses(text: str) -> None:
    """
    encodeName raises WireError for a label over 63 bytes, a name over 255, an
    empty label, or a non-ASCII name.
    """
    with pytest.raises(WireError):
        encodeName(text)


def test_encodeNameLimits() -> None:
    """
    A 63-byte label and a name of exactly 255 bytes in wire form are accepted.
    """
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(encodeName(name)) == 255
    assert encodeName("a" * 63 + ".test")[0] == 63


@pytest.mark.parametrize(
    "wire, text",
    [
        (b"\x04netd\x04test\x00", "netd.test"),
        (b"\x00", "."),
        (b"\x03a.b\x04test\x00", "a\\.b.test"),
        (b"\x03a\x00b\x01\\\x00", "a\\000b.\\\\"),
    ],
)
def test_decodeNameGolden(wire: bytes, text: str) -> None:
    """
    decodeName shows a wire name as dotted text, escaping dots, backslashes and
    unprintable bytes inside labels as zone files do.
    """
    assert decodeName(wire) == text


@pytest.mark.parametrize("text", ["netd.test", "_sip._tcp.Example.COM", "a", "x" * 63 + ".y"])
def test_decodeNameRoundTrip(text: str) -> None:
    """
    decodeName undoes encodeName.
    """
    assert decodeName(encodeName(text)) == text


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x04netd", b"\x04netd\x04test", b"\x04netd\xc0\x0c", b"\x00\x00", b"\x04netd\x00junk", b"\x40abc\x00"],
)
def test_decodeNameRefuses(wire: bytes) -> None:
    """
    decodeName raises WireError for anything but one whole uncompressed name.
    """
    with pytest.raises(WireError):
        decodeName(wire)


# parseQuestion


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_parseQuestionGolden(kind: str) -> None:
    """
    parseQuestion reads the name, type and class of every golden question and
    ends where the message does.
    """
    name, qtype, qclass, _ = GOLDEN[kind]
    data = goldenQuery(kind)
    question = parseQuestion(data)
    assert question == Question(encodeName(name.decode()), encodeName(name.decode()), qtype, qclass, len(data))


def test_parseQuestionExactBytes() -> None:
    """
    parseQuestion on hand-written bytes: an A question for NetD.Test, case kept
    in the name and folded in the key.
    """
    data = bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\x04NetD\x04Test\x00\x00\x01\x00\x01"
    assert parseQuestion(data) == Question(b"\x04NetD\x04Test\x00", b"\x04netd\x04test\x00", 1, 1, len(data))


def test_parseQuestionAtOffset() -> None:
    """
    parseQuestion reads a question wherever it is told to start.
    """
    data = b"\xff" * 5 + b"\x01a\x00\x00\x10\x00\x03"
    assert parseQuestion(data, 5) == Question(b"\x01a\x00", b"\x01a\x00", dns.TXT, dns.CH, len(data))


@pytest.mark.parametrize(
    "body",
    [
        b"\xc0\x0c\x00\x01\x00\x01",
        b"\x04netd\xc0\x0c\x00\x01\x00\x01",
        b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01",
        b"\x80\x00\x00\x01\x00\x01",
        (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
        b"\x04netd\x00\x00\x01\x00",
    ],
    ids=["pointer", "label-then-pointer", "label-type-01", "label-type-10", "name-over-255", "short-class"],
)
def test_parseQuestionRefuses(body: bytes) -> None:
    """
    parseQuestion raises WireError for a compressed name, a reserved label type,
    a name over 255 bytes or a question cut short.
    """
    with pytest.raises(WireError):
        parseQuestion(bytes(12) + body)


# parseQuery


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_parseQueryGolden(kind: str) -> None:
    """
    parseQuery returns the ID, the flags and the question of every golden query,
    with no EDNS when there is no OPT record.
    """
    name, qtype, qclass, _ = GOLDEN[kind]
    data = goldenQuery(kind, id=4321)
    wire = encodeName(name.decode())
    assert parseQuery(data) == Query(4321, FLAG_RD, Question(wire, wire, qtype, qclass, len(data)), None)


def test_parseQueryCaseKept() -> None:
    """
    The question name keeps the query's case; its key is lowercased.
    """
    query = parseQuery(makeQuery(b"WwW.NeTd.TeSt"))
    assert query.question.name == b"\x03WwW\x04NeTd\x04TeSt\x00"
    assert query.question.key == b"\x03www\x04netd\x04test\x00"


@pytest.mark.parametrize("do", [False, True])
def test_parseQueryEDNS(do: bool) -> None:
    """
    parseQuery finds the OPT record: its payload size, DO bit, version and offset.
    """
    data = makeQuery(edns=True, do=do, udpSize=1400)
    query = parseQuery(data)
    offset = 12 + len(encodeName("netd.test")) + 4
    assert query.edns == EDNS(udpSize=1400, do=do, version=0, offset=offset)
    assert query.maxUDPSize() == 1400


def test_parseQueryEDNSFields() -> None:
    """
    The OPT record's TTL is read as extended rcode, version and DO, whatever the
    other bits say; a version other than 0 is reported, not judged, and options
    are skipped.
    """
    data = addAdditional(makeQuery(), rawOPT(700, 0x2A01FFFF, rdata=b"\x00\x0a\x00\x02ab"))
    assert parseQuery(data).edns == EDNS(udpSize=700, do=True, version=1, offset=len(makeQuery()))


def test_parseQueryFlagsNotJudged() -> None:
    """
    parseQuery does not judge meaning: a response or another opcode is parsed
    like any query, with its flags for the caller to look at.
    """
    query = parseQuery(makeAnswer(answers=GOLDEN["A"][3]))
    assert query.flags & FLAG_QR
    assert parseQuery(makeQuery(opCode=dns.OP_STATUS)).opcode == dns.OP_STATUS


def test_parseQuerySkipsOtherRecords() -> None:
    """
    Records in the answer, authority and additional sections (compressed or not)
    are skipped on the way to the OPT record, wherever it is.
    """
    glue = rr(b"ns1." + NAME, dns.Record_A("192.0.2.53", 60), 60)
    data = makeAnswer(answers=GOLDEN["A"][3], authority=[soa()], additional=[glue])
    data = addAdditional(data, rawOPT(1232, DO_BIT), b"\x00" + struct.pack("!HHIH", dns.A, dns.IN, 60, 4) + bytes(4))
    query = parseQuery(data)
    assert query.edns is not None and query.edns.do and query.edns.udpSize == 1232


def test_parseQueryMaxUDPSize() -> None:
    """
    maxUDPSize is 512 without EDNS and never under 512 with it.
    """
    assert parseQuery(makeQuery()).maxUDPSize() == 512
    assert parseQuery(makeQuery(edns=True, udpSize=100)).maxUDPSize() == 512


@pytest.mark.parametrize(
    "mutate",
    [
        lambda data: addAdditional(data, rawOPT(), rawOPT()),
        lambda data: addAdditional(data, rawOPT(name=b"\x04netd\x00")),
        lambda data: addAdditional(data, rawOPT(name=b"\xc0\x0c")),
        lambda data: withCounts(data, qd=0),
        lambda data: withCounts(data, qd=2),
        lambda data: withCounts(data, ar=1),
        lambda data: withCounts(data, an=1),
        lambda data: data[:-1],
        lambda data: data[:12] + b"\xc0\x0c" + data[12 + 11 :],
        lambda data: addAdditional(data, rawOPT()[:-2] + b"\x00\x05abc"),
    ],
    ids=[
        "two-opt",
        "opt-not-root",
        "opt-compressed-name",
        "no-question",
        "two-questions",
        "missing-additional",
        "missing-answer",
        "short-question",
        "compressed-question",
        "opt-rdata-past-end",
    ],
)
def test_parseQueryMalformed(mutate: Callable[[bytes], bytes]) -> None:
    """
    A readable header with a malformed rest raises MalformedQuery, which carries
    the header's ID and flags so the caller can answer FORMERR.
    """
    data = mutate(makeQuery(id=0xBEEF, checkingDisabled=True))
    with pytest.raises(MalformedQuery) as raised:
        parseQuery(data)
    assert raised.value.id == 0xBEEF
    assert raised.value.flags == FLAG_RD | FLAG_CD
    assert isinstance(raised.value, WireError)


@pytest.mark.parametrize("edns", [False, True])
def test_parseQueryEveryPrefix(edns: bool) -> None:
    """
    Every proper prefix of a query raises WireError: a plain one under 12 bytes,
    MalformedQuery from 12 bytes on.
    """
    data = makeQuery(b"www.netd.test", edns=edns, do=True)
    for length in range(len(data)):
        with pytest.raises(WireError) as raised:
            parseQuery(data[:length])
        assert isinstance(raised.value, MalformedQuery) == (length >= 12)


# skipName


def test_skipNamePlain() -> None:
    """
    skipName steps over an uncompressed name, and the root.
    """
    data = bytes(12) + b"\x04netd\x04test\x00rest"
    assert skipName(data, 12) == 23
    assert skipName(b"\x00", 0) == 1


def test_skipNameCompressed() -> None:
    """
    skipName steps just past the first pointer of a compressed name, having
    checked where it leads.
    """
    data = bytes(12) + b"\x04netd\x04test\x00" + b"\x03www\xc0\x0c" + b"\xc0\x17"
    assert skipName(data, 23) == 29
    assert skipName(data, 29) == 31


@pytest.mark.parametrize(
    "data, offset",
    [
        (bytes(12) + b"\xc0\x0c", 12),
        (bytes(12) + b"\x03www\xc0\x0c", 12),
        (bytes(12) + b"\xc0\x0e\x00", 12),
        (bytes(12) + b"\x01a\xc0\x10\x01b\xc0\x0c", 12),
        (bytes(12) + b"\x01a\xc0\x0c", 14),
    ],
    ids=["pointer-to-itself", "pointer-to-own-start", "forward-pointer", "mutual-loop", "pointer-to-own-label"],
)
def test_skipNameLoopsAndForwardPointers(data: bytes, offset: int) -> None:
    """
    A pointer that does not point strictly before the labels it ends (a loop, or
    a forward pointer) raises WireError.
    """
    with pytest.raises(WireError):
        skipName(data, offset)


def test_skipNamePointerChainLimit() -> None:
    """
    A chain of backward pointers is followed up to the limit, and one more
    raises WireError.
    """
    chain = bytearray(b"\x00")
    for index in range(MAX_POINTERS + 1):
        chain += struct.pack("!H", 0xC000 | (12 + max(0, 2 * index - 1)))
    data = bytes(12) + bytes(chain)
    last = len(data) - 2
    with pytest.raises(WireError):
        skipName(data, last)
    assert skipName(data, last - 2) == last


def test_skipNameTooLongThroughPointers() -> None:
    """
    A name over 255 bytes made of pointed-to parts raises WireError.
    """
    part = b"\x3f" + b"a" * 63
    data = bytes(12) + part * 2 + b"\x00" + part * 2 + b"\xc0\x0c"
    assert skipName(data, 12) == 12 + 129
    with pytest.raises(WireError):
        skipName(data, 12 + 129)


@pytest.mark.parametrize(
    "data",
    [b"", bytes(12) + b"\x04net", bytes(12) + b"\xc0", bytes(12) + b"\x40\x00", bytes(12) + b"\x80\x00"]
    + [bytes(12) + b"\x04netd"],
    ids=["empty", "label-past-end", "half-pointer", "type-01", "type-10", "no-root"],
)
def test_skipNameRefuses(data: bytes) -> None:
    """
    A name running off the end or using a reserved label type raises WireError.
    """
    with pytest.raises(WireError):
        skipName(data, 12)


# inspectAnswer


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_inspectAnswerGolden(kind: str) -> None:
    """
    inspectAnswer finds every record's TTL (read back at the offsets it reports),
    the answer count, the rcode and where the question ends.
    """
    name, qtype, qclass, answers = GOLDEN[kind]
    data = goldenAnswer(kind)
    info = inspectAnswer(data)
    assert info.rcode == RCODE_NOERROR
    assert info.flags == struct.unpack_from("!H", data, 2)[0]
    assert not info.truncated
    assert info.answerCount == len(answers)
    assert info.ttls == tuple(record.ttl for record in answers)
    assert ttlsAt(data, info.ttlOffsets) == list(info.ttls)
    assert info.negativeTTL is None
    assert info.questionEnd == 12 + len(encodeName(name.decode())) + 4
    assert info.optOffset is None and info.ednsRcode == 0


def test_inspectAnswerCompressed() -> None:
    """
    In an answer with records in every section, compressed names and an OPT
    record, every TTL but the OPT record's is found, in order.
    """
    data = delegationAnswer()
    assert data.count(b"\xc0") >= 5
    info = inspectAnswer(data)
    assert info.ttls == (3600, 60, 86400, 86400, 86400)
    assert ttlsAt(data, info.ttlOffsets) == list(info.ttls)
    assert info.answerCount == 2
    assert info.optOffset is not None and info.optEnd == len(data)
    assert data[info.optOffset : info.optOffset + 3] == b"\x00\x00\x29"


def test_inspectAnswerOPTAnywhereInAdditional() -> None:
    """
    An OPT record before other additional records is found and skipped, its
    extended rcode bits reported.
    """
    data = makeAnswer(answers=GOLDEN["A"][3])
    opt = rawOPT(1232, 0x01000000)
    other = b"\xc0\x0c" + struct.pack("!HHIH", dns.A, dns.IN, 42, 4) + bytes(4)
    data = addAdditional(data, opt, other)
    info = inspectAnswer(data)
    assert info.ttls == (300, 300, 42)
    assert info.ednsRcode == 1
    assert info.optEnd == len(data) - len(other)


def test_inspectAnswerFlags() -> None:
    """
    inspectAnswer reports the header's flags, its 4-bit rcode and the TC bit.
    """
    data = goldenAnswer("A", trunc=True, rCode=RCODE_SERVFAIL, auth=True)
    info = inspectAnswer(data)
    assert info.truncated
    assert info.rcode == RCODE_SERVFAIL
    assert info.flags & (FLAG_QR | FLAG_AA | FLAG_TC | FLAG_RA) == FLAG_QR | FLAG_AA | FLAG_TC | FLAG_RA


def test_inspectAnswerTTLTopBit() -> None:
    """
    A TTL with its top bit set counts as 0 (RFC 2181, section 8).
    """
    data = makeAnswer(answers=[rr(NAME, dns.Record_A("192.0.2.1", 0x80000001), 0x80000001)])
    assert inspectAnswer(data).ttls == (0,)


@pytest.mark.parametrize(
    "soaTTL, minimum, expected",
    [(3600, 300, 300), (60, 300, 60), (0, 300, 0), (100, 100, 100)],
)
@pytest.mark.parametrize("rcode", [RCODE_NXDOMAIN, RCODE_NOERROR])
def test_inspectAnswerNegativeTTL(rcode: int, soaTTL: int, minimum: int, expected: int) -> None:
    """
    For NXDOMAIN and NODATA the negative TTL is the smaller of the authority
    SOA's TTL and its MINIMUM field (RFC 2308).
    """
    data = makeAnswer(b"nothing." + NAME, authority=[soa(ttl=soaTTL, minimum=minimum)], rCode=rcode, edns=True)
    info = inspectAnswer(data)
    assert info.negativeTTL == expected
    assert info.answerCount == 0
    assert info.ttls == (soaTTL,)


def test_inspectAnswerNegativeTTLWithNSEC() -> None:
    """
    Other authority records beside the SOA do not disturb the negative TTL.
    """
    nsec = dns.RRHeader(NAME, 47, dns.IN, 30, dns.UnknownRecord(b"\x00\x00", 30))
    data = makeAnswer(b"nothing." + NAME, authority=[nsec, soa(ttl=900, minimum=600), nsec], rCode=RCODE_NXDOMAIN)
    assert inspectAnswer(data).negativeTTL == 600


@pytest.mark.parametrize(
    "rcode, answers, authority",
    [
        (RCODE_NOERROR, GOLDEN["A"][3], [soa()]),
        (RCODE_NXDOMAIN, [], []),
        (RCODE_NOERROR, [], [rr(NAME, dns.Record_NS(b"ns1." + NAME, 60), 60)]),
        (RCODE_SERVFAIL, [], [soa()]),
        (RCODE_REFUSED, [], [soa()]),
    ],
    ids=["positive", "nxdomain-without-soa", "nodata-without-soa", "servfail", "refused"],
)
def test_inspectAnswerNoNegativeTTL(rcode: int, answers: list[dns.RRHeader], authority: list[dns.RRHeader]) -> None:
    """
    Positive answers, negative answers with no SOA, and other rcodes have no
    negative TTL.
    """
    data = makeAnswer(answers=answers, authority=authority, rCode=rcode)
    assert inspectAnswer(data).negativeTTL is None


def test_inspectAnswerSOAInAnswerSection() -> None:
    """
    An SOA record in the answer section (an SOA query) gives no negative TTL.
    """
    data = makeAnswer(qtype=dns.SOA, answers=[soa()])
    assert inspectAnswer(data).negativeTTL is None


def test_inspectAnswerShortSOA() -> None:
    """
    A negative answer whose SOA record's data is too short for its five fields
    raises WireError.
    """
    data = makeAnswer(authority=[soa()], rCode=RCODE_NXDOMAIN)
    info = inspectAnswer(data)
    rdlength = info.ttlOffsets[0] + 4
    short = bytearray(data[:-4])
    short[rdlength : rdlength + 2] = struct.pack("!H", struct.unpack_from("!H", data, rdlength)[0] - 4)
    with pytest.raises(WireError):
        inspectAnswer(bytes(short))


def test_inspectAnswerPointerLoop() -> None:
    """
    An answer whose record name is a pointer to itself raises WireError.
    """
    data = makeAnswer(answers=GOLDEN["A"][3])
    start = inspectAnswer(data).questionEnd
    looped = data[:start] + struct.pack("!H", 0xC000 | start) + data[start + 2 :]
    with pytest.raises(WireError):
        inspectAnswer(looped)


def test_inspectAnswerForwardPointer() -> None:
    """
    An answer whose question name points forward raises WireError.
    """
    data = makeAnswer(answers=GOLDEN["A"][3])
    forward = data[:12] + struct.pack("!H", 0xC000 | 40) + data[12:]
    with pytest.raises(WireError):
        inspectAnswer(forward)


def test_inspectAnswerSOANamePointerLoop() -> None:
    """
    A pointer loop inside an SOA record's data raises WireError.
    """
    data = makeAnswer(authority=[soa()], rCode=RCODE_NXDOMAIN)
    rdata = inspectAnswer(data).ttlOffsets[0] + 6
    looped = data[:rdata] + struct.pack("!H", 0xC000 | rdata) + data[rdata + 2 :]
    with pytest.raises(WireError):
        inspectAnswer(looped)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda data: addAdditional(data, rawOPT(), rawOPT()),
        lambda data: addAdditional(data, rawOPT(name=b"\xc0\x0c")),
        lambda data: withCounts(data + rawOPT(), an=3),
        lambda data: withCounts(data, an=3),
        lambda data: data[:-1],
    ],
    ids=["two-opt", "opt-not-root", "opt-in-answer-section", "count-past-end", "rdata-past-end"],
)
def test_inspectAnswerMalformed(mutate: Callable[[bytes], bytes]) -> None:
    """
    Two OPT records, an OPT record not at the root or outside the additional
    section, and records running off the end raise WireError.
    """
    with pytest.raises(WireError):
        inspectAnswer(mutate(goldenAnswer("A")))


@pytest.mark.parametrize("kind", sorted(GOLDEN) + ["delegation", "nxdomain"])
def test_inspectAnswerEveryPrefix(kind: str) -> None:
    """
    Every proper prefix of an answer raises WireError, never another exception.
    """
    if kind == "delegation":
        data = delegationAnswer()
    elif kind == "nxdomain":
        data = makeAnswer(authority=[soa()], rCode=RCODE_NXDOMAIN, edns=True)
    else:
        data = goldenAnswer(kind, edns=True)
    for length in range(len(data)):
        with pytest.raises(WireError):
            inspectAnswer(data[:length])


def test_inspectAnswerZeroQuestions() -> None:
    """
    An answer with no question (as some servers send with FORMERR) is read; its
    question section ends at the header.
    """
    data = makeHeaderError(7, FLAG_RD, RCODE_FORMERR)
    expected = AnswerInfo(RCODE_FORMERR, FLAG_QR | FLAG_RD | RCODE_FORMERR, False, (), (), 0, None, 12)
    assert inspectAnswer(data) == expected


# patchAnswer


def changedPositions(before: bytes, after: bytes) -> set[int]:
    """
    The offsets at which two messages of the same length differ.
    """
    assert len(before) == len(after)
    return {index for index, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}


def test_patchAnswerTTLs() -> None:
    """
    Every TTL is lowered by the elapsed seconds, and never below 0.
    """
    stored = delegationAnswer()
    info = inspectAnswer(stored)
    query = parseQuery(makeQuery(b"www.netd.test", id=0x1234))
    patched = patchAnswer(stored, info.ttlOffsets, info.ttls, 100, query)
    assert ttlsAt(patched, info.ttlOffsets) == [3500, 0, 86300, 86300, 86300]
    assert [record.ttl for record in parse(patched).answers] == [3500, 0]
    assert ttlsAt(patchAnswer(stored, info.ttlOffsets, info.ttls, 0, query), info.ttlOffsets) == list(info.ttls)


def test_patchAnswerUsesGivenTTLs() -> None:
    """
    The TTLs written come from C{ttls}, not from the stored bytes.
    """
    stored = goldenAnswer("A")
    info = inspectAnswer(stored)
    patched = patchAnswer(stored, info.ttlOffsets, (50, 20), 10, parseQuery(makeQuery()))
    assert ttlsAt(patched, info.ttlOffsets) == [40, 10]


def test_patchAnswerHeaderAndQuestion() -> None:
    """
    The ID, the question's case and the RD and CD bits come from the new query;
    every other byte (other flags, counts, records, OPT) is unchanged.
    """
    stored = makeAnswer(
        b"www.netd.test",
        id=1,
        answers=[rr(b"www.netd.test", dns.Record_A("192.0.2.1", 60), 60)],
        recDes=True,
        checkingDisabled=False,
        auth=True,
        authenticData=True,
        edns=True,
        do=True,
    )
    info = inspectAnswer(stored)
    query = parseQuery(makeQuery(b"WWW.Netd.TEST", id=0xFEDC, recDes=False, checkingDisabled=True, edns=True))
    patched = patchAnswer(stored, info.ttlOffsets, info.ttls, 0, query)
    name = query.question.name
    assert patched[:2] == b"\xfe\xdc"
    assert patched[12 : 12 + len(name)] == name
    flags = struct.unpack_from("!H", patched, 2)[0]
    assert flags == (struct.unpack_from("!H", stored, 2)[0] & ~FLAG_RD) | FLAG_CD
    assert flags & (FLAG_QR | FLAG_AA | FLAG_RA | FLAG_AD) == FLAG_QR | FLAG_AA | FLAG_RA | FLAG_AD
    expected = {0, 1, 2, 3} | {12 + i for i, (a, b) in enumerate(zip(name, stored[12:], strict=False)) if a != b}
    assert changedPositions(stored, patched) == expected
    message = parse(patched)
    assert (message.id, message.recDes, message.checkingDisabled) == (0xFEDC, 0, 1)
    assert message.queries[0].name.name == b"WWW.Netd.TEST"


def test_patchAnswerSetsRD() -> None:
    """
    RD set in the query is set in the answer even if the stored answer had it clear.
    """
    stored = makeAnswer(recDes=False, checkingDisabled=True)
    patched = patchAnswer(stored, (), (), 0, parseQuery(makeQuery(recDes=True)))
    assert struct.unpack_from("!H", patched, 2)[0] & (FLAG_RD | FLAG_CD) == FLAG_RD


def test_patchAnswerLeavesStoredAlone() -> None:
    """
    patchAnswer returns a new bytes object and does not change the stored one.
    """
    stored = goldenAnswer("A")
    copy = bytes(stored)
    info = inspectAnswer(stored)
    patched = patchAnswer(stored, info.ttlOffsets, info.ttls, 5, parseQuery(makeQuery(b"NETD.test", id=7)))
    assert stored == copy
    assert isinstance(patched, bytes) and patched != stored


def test_patchTTLs() -> None:
    """
    patchTTLs lowers every TTL by the elapsed seconds (never below 0) and changes no other byte.
    """
    stored = goldenAnswer("A")
    info = inspectAnswer(stored)
    patched = patchTTLs(stored, info.ttlOffsets, (300, 5), 10)
    assert [struct.unpack_from("!I", patched, offset)[0] for offset in info.ttlOffsets] == [290, 0]
    assert changedPositions(stored, patched) <= {i for offset in info.ttlOffsets for i in range(offset, offset + 4)}


@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("recDes", [False, True])
@pytest.mark.parametrize("checkingDisabled", [False, True])
@pytest.mark.parametrize("storedFlags", [(True, False), (False, True)])
def test_answerQueryIsPatchAnswer(
    edns: bool, recDes: bool, checkingDisabled: bool, storedFlags: tuple[bool, bool]
) -> None:
    """
    answerQuery, from the query's bytes, gives what patchAnswer gives from the parsed query.
    """
    stored = makeAnswer(
        b"www.netd.test",
        id=1,
        answers=[rr(b"www.netd.test", dns.Record_A("192.0.2.1", 60), 60)],
        recDes=storedFlags[0],
        checkingDisabled=storedFlags[1],
        edns=edns,
    )
    data = makeQuery(b"WwW.nEtD.test", id=0xBEEF, recDes=recDes, checkingDisabled=checkingDisabled, edns=edns)
    query = parseQuery(data)
    assert answerQuery(stored, data, query.question.end - 4) == patchAnswer(stored, (), (), 0, query)


# quickQuestion


def dnsperfQuery(name: bytes = b"www.netd.test", qtype: int = dns.A, queryID: int = 7) -> bytes:
    """
    A query as dnsperf sends it: RD, no EDNS.
    """
    wire = b"".join(bytes((len(label),)) + label for label in name.split(b".")) + b"\x00"
    return struct.pack("!6H", queryID, FLAG_RD, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, dns.IN)


def agreesWithParseQuery(data: bytes) -> None:
    """
    When quickQuestion reads C{data} and the name it found is whole (as every
    name in the cache is), parseQuery reads the same key, question end and
    EDNS presence, of a standard query.
    """
    quick = quickQuestion(data)
    if quick is None:
        return
    key, nameEnd, edns = quick
    try:
        whole = parseQuestion(key[0] + b"\x00" * 4, 0).end == len(key[0]) + 4
    except WireError:
        whole = False
    if not whole:
        return
    query = parseQuery(data)
    assert (cacheKey(query), query.question.end - 4, query.edns is not None) == (key, nameEnd, edns)
    assert not query.flags & FLAG_QR and query.opcode == 0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(dnsperfQuery(), id="dnsperf"),
        pytest.param(dnsperfQuery(b"WWW.Netd.Test", dns.AAAA), id="mixed case"),
        pytest.param(makeQuery(), id="no EDNS"),
        pytest.param(makeQuery(edns=True), id="EDNS"),
        pytest.param(makeQuery(edns=True, do=True, checkingDisabled=True), id="EDNS with DO and CD"),
        pytest.param(addAdditional(makeQuery(), rawOPT(rdata=b"\x00\x0a\x00\x08" + bytes(8))), id="EDNS with a cookie"),
    ],
)
def test_quickQuestionReadsPlainQueries(data: bytes) -> None:
    """
    quickQuestion reads plain queries (one question, at most an OPT record) as parseQuery does.
    """
    quick = quickQuestion(data)
    query = parseQuery(data)
    assert quick == (cacheKey(query), query.question.end - 4, query.edns is not None)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(dnsperfQuery()[:11], id="short header"),
        pytest.param(dnsperfQuery()[:16], id="no name"),
        pytest.param(struct.pack("!6H", 1, FLAG_QR, 1, 0, 0, 0) + dnsperfQuery()[12:], id="QR set"),
        pytest.param(struct.pack("!6H", 1, 2 << 11, 1, 0, 0, 0) + dnsperfQuery()[12:], id="opcode STATUS"),
        pytest.param(struct.pack("!6H", 1, 0, 2, 0, 0, 0) + dnsperfQuery()[12:], id="two questions"),
        pytest.param(struct.pack("!6H", 1, 0, 1, 1, 0, 0) + dnsperfQuery()[12:], id="an answer record"),
        pytest.param(struct.pack("!6H", 1, 0, 1, 0, 0, 2) + dnsperfQuery()[12:], id="two additional records"),
        pytest.param(makeQuery(edns=True)[:-1], id="OPT record cut short"),
        pytest.param(makeQuery(edns=True) + b"\x00", id="a byte after the OPT record"),
        pytest.param(
            addAdditional(makeQuery(), b"\x00" + struct.pack("!HHIH", dns.A, dns.IN, 60, 4) + bytes(4)),
            id="an A record in the additional section",
        ),
        pytest.param(addAdditional(makeQuery(), rawOPT(name=b"\x01a\x00")), id="OPT record not at the root"),
        pytest.param(
            addAdditional(dnsperfQuery()[:12] + b"\x40" + bytes(64) + b"\x00\x00\x01\x00\x01", rawOPT()),
            id="label over 63 bytes",
        ),
    ],
)
def test_quickQuestionLeavesTheRest(data: bytes) -> None:
    """
    quickQuestion gives None for anything but a plain standard query, for the full parse to judge.
    """
    assert quickQuestion(data) is None


# makeResponse, makeHeaderError, truncate


@pytest.mark.parametrize("rcode", [RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED])
@pytest.mark.parametrize("kind", ["A", "CH", "TYPE65534"])
def test_makeResponseWithoutEDNS(kind: str, rcode: int) -> None:
    """
    makeResponse answers with the query's ID, opcode, RD, CD and question, QR and
    RA set, the rcode, no records and no OPT record when the query had none.
    """
    name, qtype, qclass, _ = GOLDEN[kind]
    query = parseQuery(goldenQuery(kind, id=0x4242, checkingDisabled=True))
    data = makeResponse(query, rcode)
    message = parse(data)
    assert (message.id, message.answer, message.opCode, message.recDes, message.recAv) == (0x4242, 1, 0, 1, 1)
    assert message.checkingDisabled
    assert not message.auth and not message.trunc
    assert message.rCode == rcode
    assert message.queries == [dns.Query(name, qtype, qclass)]
    assert message.answers == message.authority == message.additional == []
    assert data[12:] == goldenQuery(kind)[12:]


@pytest.mark.parametrize("do", [False, True])
def test_makeResponseWithEDNS(do: bool) -> None:
    """
    makeResponse adds an OPT record at the root (our payload size, the query's
    DO bit, no options) when the query had one.
    """
    query = parseQuery(makeQuery(edns=True, do=do, udpSize=4096))
    data = makeResponse(query, RCODE_REFUSED, udpSize=1400)
    message = parseEDNS(data)
    assert message.rCode == RCODE_REFUSED
    assert (message.ednsVersion, message.maxSize, message.dnssecOK) == (0, 1400, do)
    assert struct.unpack_from("!H", data, 10)[0] == 1
    assert data.endswith(optRecord(do, 1400))
    assert optRecord(do, 1400) == rawOPT(1400, DO_BIT if do else 0)


def test_makeResponseOpcodeAndExtendedRcode() -> None:
    """
    The query's opcode is echoed, and an extended rcode (BADVERS) puts its upper
    bits in the OPT record.
    """
    query = parseQuery(makeQuery(edns=True, opCode=dns.OP_STATUS))
    message = parseEDNS(makeResponse(query, 16))
    assert message.opCode == dns.OP_STATUS
    assert message.rCode == 16


def test_makeResponseGoldenBytes() -> None:
    """
    makeResponse's bytes for a REFUSED answer to an A query, written out.
    """
    query = parseQuery(bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\x04netd\x04test\x00\x00\x01\x00\x01")
    expected = bytes.fromhex("1234 8185 0001 0000 0000 0000") + b"\x04netd\x04test\x00\x00\x01\x00\x01"
    assert makeResponse(query, RCODE_REFUSED) == expected


def test_makeHeaderError() -> None:
    """
    makeHeaderError is a 12-byte header: the ID, QR, the opcode and RD from the
    flags given, the rcode, and every count 0; other flags are not copied.
    """
    flags = FLAG_RD | FLAG_CD | FLAG_TC | FLAG_AA | (dns.OP_NOTIFY << 11) | 0x0005
    data = makeHeaderError(0xABCD, flags, RCODE_FORMERR)
    assert data == struct.pack("!6H", 0xABCD, FLAG_QR | (dns.OP_NOTIFY << 11) | FLAG_RD | RCODE_FORMERR, 0, 0, 0, 0)
    message = parse(data)
    assert (message.id, message.answer, message.recDes, message.rCode) == (0xABCD, 1, 1, RCODE_FORMERR)
    assert message.queries == []


@pytest.mark.parametrize("edns, do", [(False, False), (True, False), (True, True)])
def test_truncate(edns: bool, do: bool) -> None:
    """
    truncate keeps the answer's header with TC set, the question, no records
    but an OPT record when the query had one, and fits in 512 bytes.
    """
    records = [rr(NAME, dns.Record_TXT(b"x" * 200, ttl=60), 60) for _ in range(10)]
    answer = makeAnswer(qtype=dns.TXT, id=5, answers=records, authority=[soa()], auth=True, edns=True)
    query = parseQuery(makeQuery(b"NETD.test", dns.TXT, id=5, edns=edns, do=do, udpSize=512))
    assert len(answer) > query.maxUDPSize()
    data = truncate(answer, query, udpSize=1232)
    assert len(data) <= 512
    message = parseEDNS(data)
    assert (message.id, message.answer, message.trunc, message.auth, message.rCode) == (5, 1, 1, 1, 0)
    assert message.queries == [dns.Query(b"NETD.test", dns.TXT, dns.IN)]
    assert message.answers == message.authority == []
    assert struct.unpack_from("!4H", data, 4) == (1, 0, 0, 1 if edns else 0)
    if edns:
        assert (message.maxSize, message.dnssecOK) == (1232, do)
    else:
        assert message.ednsVersion is None


def test_truncateKeepsRcode() -> None:
    """
    truncate keeps the answer's rcode and flags (here NXDOMAIN, RD, RA).
    """
    answer = makeAnswer(authority=[soa()], rCode=RCODE_NXDOMAIN, id=3)
    message = parse(truncate(answer, parseQuery(makeQuery(id=3))))
    assert (message.rCode, message.trunc, message.recDes, message.recAv) == (RCODE_NXDOMAIN, 1, 1, 1)


def test_truncateShortAnswer() -> None:
    """
    truncate raises WireError for an answer shorter than a header.
    """
    with pytest.raises(WireError):
        truncate(b"\x00" * 11, parseQuery(makeQuery()))


# Hypothesis: nothing but WireError, whatever comes in.

VALID = [
    makeQuery(),
    makeQuery(b"www.netd.test", dns.AAAA, edns=True, do=True),
    goldenAnswer("MX"),
    goldenAnswer("SRV", edns=True),
    delegationAnswer(),
    makeAnswer(authority=[soa()], rCode=RCODE_NXDOMAIN, edns=True),
]


def feedEverything(data: bytes) -> None:
    """
    Feed C{data} to every reading function; only WireError may come out.
    """
    for function in (readHeader, parseQuery, inspectAnswer, lambda d: skipName(d, 12), parseQuestion, decodeName):
        try:
            function(data)
        except WireError:
            pass


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """
    A valid query or answer with some bytes changed, inserted or cut off.
    """
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        interesting = [0x00, 0x01, 0x3F, 0x40, 0x80, 0xC0, 0xC1, 0xFF, draw(st.integers(0, 255))]
        data[position] = draw(st.sampled_from(interesting))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(max_size=8))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzzArbitraryBytes(data: bytes) -> None:
    """
    Arbitrary bytes make the readers raise WireError or return, nothing else.
    """
    feedEverything(data)
    feedEverything(bytes(12) + data)
    feedEverything(struct.pack("!6H", 1, 0, 1, 1, 1, 1) + data)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_fuzzMutatedMessages(data: bytes) -> None:
    """
    Valid queries and answers with bytes changed, inserted or cut make the
    readers raise WireError or return, nothing else.
    """
    feedEverything(data)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(st.binary(min_size=1, max_size=20).filter(lambda label: b"." not in label), min_size=0, max_size=5),
    qtype=st.integers(0, 65535),
    qclass=st.integers(0, 65535),
    id=st.integers(0, 65535),
)
def test_fuzzQueriesAgreeWithTwisted(labels: list[bytes], qtype: int, qclass: int, id: int) -> None:
    """
    For any name, type and class, parseQuery reads what twisted.names wrote.
    """
    data = makeQuery(b".".join(labels), qtype, qclass, id=id)
    query = parseQuery(data)
    wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
    assert query == Query(id, FLAG_RD, Question(wire, wire.lower(), qtype, qclass, len(data)), None)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_fuzzQuickQuestionMutated(data: bytes) -> None:
    """
    On valid messages with bytes changed, inserted or cut, quickQuestion returns or gives
    None, nothing else, and agrees with parseQuery whenever its name is whole.
    """
    agreesWithParseQuery(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzzQuickQuestionArbitrary(data: bytes) -> None:
    """
    On arbitrary bytes after a plain query's header (with and without one
    additional record), quickQuestion returns or gives None, nothing else,
    and agrees with parseQuery whenever its name is whole.
    """
    agreesWithParseQuery(data)
    agreesWithParseQuery(struct.pack("!6H", 1, FLAG_RD, 1, 0, 0, 0) + data)
    agreesWithParseQuery(struct.pack("!6H", 1, FLAG_RD, 1, 0, 0, 1) + data)
