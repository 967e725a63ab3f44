"""
Static records of the dns-proxy: the records table's validation and the answers built from it.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.names import dns

from netd.config.options import InvalidValue
from netd_plugins.dnsproxy.records import StaticRecords, staticAnswer
from netd_plugins.dnsproxy.wire import encodeName

from .dnsmessages import parse

TABLE: dict[str, Any] = {
    "netd.test": {"A": ["127.0.0.1", "127.0.0.2"], "AAAA": "::1", "TXT": ["hello"], "ttl": 60},
    "mail.netd.test": {"MX": ["10 mx1.netd.test", "20 mx2.netd.test."]},
    "_sip._udp.netd.test": {"SRV": ["0 5 5060 sip.netd.test"]},
    "alias.netd.test": {"CNAME": "netd.test"},
    "outside.netd.test": {"CNAME": "example.org"},
    "1.0.0.127.in-addr.arpa": {"PTR": "netd.test"},
    "netd.test.zone": {"NS": ["ns1.netd.test"]},
    "*.svc.test": {"A": ["10.0.0.1"]},
    "exact.svc.test": {"TXT": "not the wildcard"},
}


def answerFor(records: StaticRecords, name: str, qtype: int) -> dns.Message:
    """
    Build the static answer to C{name}/C{qtype} and read it back with twisted.names.
    """
    found = records.find(encodeName(name.lower()))
    assert found is not None
    message = dns.Message(id=7, answer=True, recDes=True, recAv=True, maxSize=65535)
    message.queries = [dns.Query(name, qtype, dns.IN)]
    return parse(staticAnswer(records, found, message).toStr())


@pytest.fixture
def records() -> StaticRecords:
    """
    The example table, validated.
    """
    return StaticRecords.fromConfig(TABLE)


@pytest.mark.parametrize(
    "name, qtype, expected",
    [
        ("netd.test", dns.A, ["127.0.0.1", "127.0.0.2"]),
        ("NetD.Test", dns.A, ["127.0.0.1", "127.0.0.2"]),
        ("netd.test", dns.AAAA, ["::1"]),
        ("netd.test", dns.TXT, [[b"hello"]]),
        ("mail.netd.test", dns.MX, [(10, "mx1.netd.test"), (20, "mx2.netd.test")]),
        ("_sip._udp.netd.test", dns.SRV, [(0, 5, 5060, "sip.netd.test")]),
        ("1.0.0.127.in-addr.arpa", dns.PTR, ["netd.test"]),
        ("netd.test.zone", dns.NS, ["ns1.netd.test"]),
        ("anything.svc.test", dns.A, ["10.0.0.1"]),
        ("deep.er.svc.test", dns.A, ["10.0.0.1"]),
        ("netd.test", dns.MX, []),
    ],
)
def test_staticAnswers(records: StaticRecords, name: str, qtype: int, expected: list[Any]) -> None:
    """
    A static name is answered with its records of the asked type, authoritatively, or with none (NODATA).
    """
    message = answerFor(records, name, qtype)
    assert message.auth and message.rCode == dns.OK
    payloads = [rr.payload for rr in message.answers]
    assert all(rr.ttl == (60 if name.lower() == "netd.test" else 300) for rr in message.answers)
    assert all(rr.name.name.decode() == name for rr in message.answers)
    values: list[Any]
    if qtype == dns.A:
        values = [p.dottedQuad() for p in payloads]
    elif qtype == dns.AAAA:
        values = [socket.inet_ntop(socket.AF_INET6, p.address) for p in payloads]
    elif qtype == dns.TXT:
        values = [p.data for p in payloads]
    elif qtype == dns.MX:
        values = [(p.preference, p.name.name.decode()) for p in payloads]
    elif qtype == dns.SRV:
        values = [(p.priority, p.weight, p.port, p.target.name.decode()) for p in payloads]
    else:
        values = [p.name.name.decode() for p in payloads]
    assert values == expected


def test_cnameFollowedThroughStaticNames(records: StaticRecords) -> None:
    """
    A query for a static CNAME gets the CNAME and the target's records when the target is static too.
    """
    message = answerFor(records, "alias.netd.test", dns.A)
    assert [rr.type for rr in message.answers] == [dns.CNAME, dns.A, dns.A]
    assert message.answers[1].name.name == b"netd.test"


def test_cnameToOutsideNameStopsAtCname(records: StaticRecords) -> None:
    """
    A static CNAME to a name that is not static is answered with the CNAME alone, for the client to follow.
    """
    message = answerFor(records, "outside.netd.test", dns.A)
    assert [rr.type for rr in message.answers] == [dns.CNAME]


def test_exactNameBeatsWildcard(records: StaticRecords) -> None:
    """
    A name listed exactly is answered from its own records, not the wildcard's (NODATA for A here).
    """
    assert answerFor(records, "exact.svc.test", dns.A).answers == []


def test_wildcardDoesNotCoverItsParent(records: StaticRecords) -> None:
    """
    *.svc.test covers names below svc.test, not svc.test itself.
    """
    assert records.find(encodeName("svc.test")) is None
    assert records.find(encodeName("other.test")) is None


def test_anyQueryGetsEveryRecord(records: StaticRecords) -> None:
    """
    An ANY query for a static name gets all of its records.
    """
    message = answerFor(records, "netd.test", dns.ALL_RECORDS)
    assert sorted(rr.type for rr in message.answers) == sorted([dns.A, dns.A, dns.AAAA, dns.TXT])


def test_longTxtSplitIntoStrings() -> None:
    """
    A TXT value over 255 bytes is sent as several character-strings.
    """
    records = StaticRecords.fromConfig({"t.test": {"TXT": "x" * 600}})
    [rr] = answerFor(records, "t.test", dns.TXT).answers
    assert [len(s) for s in rr.payload.data] == [255, 255, 90]


def test_toConfigGivesTheTable(records: StaticRecords) -> None:
    """
    The normalized form of the records is the table as configured.
    """
    assert records.toConfig() == TABLE


@pytest.mark.parametrize(
    "table, message",
    [
        ({"netd.test": {"A": ["300.0.0.1"]}}, "'netd.test': A: '300.0.0.1' is not an IPv4 address"),
        ({"netd.test": {"AAAA": ["127.0.0.1"]}}, "'netd.test': AAAA: '127.0.0.1' is not an IPv6 address"),
        ({"netd.test": {"MX": ["mx1.netd.test"]}}, "MX: 'mx1.netd.test' is not of the form 'PREFERENCE HOST'"),
        ({"netd.test": {"MX": ["x mx1"]}}, "'x' is not a number from 0 to 65535"),
        ({"netd.test": {"SRV": ["1 2 99999 t"]}}, "'99999' is not a number from 0 to 65535"),
        ({"netd.test": {"HINFO": ["x"]}}, "unknown record type 'HINFO'; expected ttl or one of A, AAAA"),
        ({"netd.test": {"A": []}}, "A: expected a string or a non-empty array of strings"),
        ({"netd.test": {"A": ["1.2.3.4"], "ttl": -1}}, "ttl -1 is not a number of seconds"),
        ({"netd.test": {"CNAME": "a.test", "A": ["1.2.3.4"]}}, "a name with a CNAME can have no other record"),
        ({"netd.test": {"ttl": 5}}, "no records"),
        ({"bad..name": {"A": ["1.2.3.4"]}}, "'bad..name' is not a domain name"),
        ({"x" * 64 + ".test": {"A": ["1.2.3.4"]}}, "is not a domain name"),
        ({"netd.test": ["1.2.3.4"]}, "expected a table of record types"),
        ({"netd.test": {"NS": ["not a name!" * 30]}}, "is not a domain name"),
        ({"bücher.test": {"A": ["1.2.3.4"]}}, "write IDNs in their xn-- form"),
    ],
)
def test_badRecordsRefused(table: dict[str, Any], message: str) -> None:
    """
    A records table with a bad name, type, value or ttl is refused with a message naming the name and the type.
    """
    with pytest.raises(InvalidValue) as caught:
        StaticRecords.fromConfig(table)
    assert message in str(caught.value)
