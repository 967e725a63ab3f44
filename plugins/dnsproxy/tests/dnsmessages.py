"""
DNS messages for the dns-proxy unit tests, built and read with twisted.names
as the reference implementation, so that each test file does not grow its own
copy of the same message plumbing.

Queries and answers come as wire bytes: L{makeQuery} (a client's query),
L{makeAnswer} (an upstream's answer from its fields) and L{replyTo} (an
upstream's answer to given query bytes); L{parse} and L{parseEDNS} read bytes
back; L{rr}, L{aRecord} and L{soa} make the records that go in them.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.names import dns

NAME = b"netd.test"
"""
The name the tests ask about unless they say otherwise.
"""


def makeQuery(
    name: bytes | str = NAME,
    qtype: int = dns.A,
    qclass: int = dns.IN,
    *,
    id: int = 0x1234,
    edns: bool = False,
    do: bool = False,
    udpSize: int = 4096,
    recDes: bool = True,
    checkingDisabled: bool = False,
    opCode: int = dns.OP_QUERY,
) -> bytes:
    """
    A query as a client sends it, with an OPT record (payload size
    C{udpSize}, DO bit C{do}) if C{edns}.
    """
    message = dns._EDNSMessage(
        id=id,
        opCode=opCode,
        recDes=recDes,
        checkingDisabled=checkingDisabled,
        ednsVersion=0 if edns else None,
        dnssecOK=do,
        maxSize=udpSize,
        queries=[dns.Query(name, qtype, qclass)],
    )
    return message.toStr()


def makeAnswer(
    name: bytes | str = NAME,
    qtype: int = dns.A,
    qclass: int = dns.IN,
    *,
    id: int = 0x1234,
    answers: Sequence[dns.RRHeader] = (),
    authority: Sequence[dns.RRHeader] = (),
    additional: Sequence[dns.RRHeader] = (),
    rCode: int = dns.OK,
    edns: bool = False,
    do: bool = False,
    trunc: bool = False,
    recDes: bool = True,
    checkingDisabled: bool = False,
    auth: bool = False,
    authenticData: bool = False,
) -> bytes:
    """
    An answer as an upstream sends it, from its fields (names compressed by
    twisted.names, and not cut down to 512 bytes as twisted.names would).
    """
    message = dns._EDNSMessage(
        id=id,
        answer=True,
        recDes=recDes,
        recAv=True,
        auth=auth,
        trunc=trunc,
        authenticData=authenticData,
        checkingDisabled=checkingDisabled,
        rCode=rCode,
        ednsVersion=0 if edns else None,
        dnssecOK=do,
        maxSize=1232,
        queries=[dns.Query(name, qtype, qclass)],
        answers=list(answers),
        authority=list(authority),
        additional=list(additional),
    )
    plain = message._toMessage()
    plain.maxSize = 0
    return plain.toStr()


def replyTo(
    query: bytes,
    *records: dns.RRHeader,
    rCode: int = dns.OK,
    authority: Sequence[dns.RRHeader] = (),
    trunc: bool = False,
    name: str | None = None,
    id: int | None = None,
) -> bytes:
    """
    An upstream's answer to C{query} (its ID, opcode, RD and CD bits and
    question) with C{records}; C{name} or C{id} make it answer another
    question or ID, as a forged or stray answer would.
    """
    request = parse(query)
    answer = dns.Message(
        id=request.id if id is None else id,
        answer=True,
        opCode=request.opCode,
        recDes=request.recDes,
        recAv=True,
        checkingDisabled=request.checkingDisabled,
        rCode=rCode,
        trunc=trunc,
        maxSize=65535,
    )
    answer.queries = request.queries if name is None else [dns.Query(name, request.queries[0].type, dns.IN)]
    answer.answers = list(records)
    answer.authority = list(authority)
    return answer.toStr()


def parse(data: bytes) -> dns.Message:
    """
    A message read by twisted.names (an OPT record stays a plain record).
    """
    message = dns.Message()
    message.fromStr(data)
    return message


def parseEDNS(data: bytes) -> dns._EDNSMessage:
    """
    A message read by twisted.names, with its OPT record decoded.
    """
    message = dns._EDNSMessage()
    message.fromStr(data)
    return message


def rr(name: bytes | str, payload: object, ttl: int, cls: int = dns.IN) -> dns.RRHeader:
    """
    A resource record with C{payload} as its data.
    """
    return dns.RRHeader(name, payload.TYPE, cls, ttl, payload)


def aRecord(name: bytes | str = NAME, address: str = "192.0.2.1", ttl: int = 300) -> dns.RRHeader:
    """
    An A record.
    """
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def soa(name: bytes = NAME, ttl: int = 3600, minimum: int = 300) -> dns.RRHeader:
    """
    An SOA record for the zone C{name}, whose names compress against C{name}.
    """
    payload = dns.Record_SOA(
        mname=b"ns1." + name,
        rname=b"hostmaster." + name,
        serial=2024010101,
        refresh=7200,
        retry=900,
        expire=1209600,
        minimum=minimum,
        ttl=ttl,
    )
    return rr(name, payload, ttl)
