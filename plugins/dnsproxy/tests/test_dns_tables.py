"""
The dns-proxy's runtime tables, in memory: static records added, replaced and
removed while the proxy runs, with every cached answer for a changed name
dropped; the scripted answers replaced and restored; bad bodies refused with
their key paths and nothing changed.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.names import dns
from zope.interface.verify import verifyObject

from netd.config.options import ConfigError, renderPath
from netd.interfaces import IHasRuntimeTables, IRuntimeTable
from netd_plugins.dnsproxy.cache import AnswerCache, cacheKey
from netd_plugins.dnsproxy.wire import atOrUnder, encodeName, inspectAnswer, parseQuery

from .dnsmessages import aRecord, makeQuery, parse, replyTo, rr
from .test_dns_proxy import Proxy, makeProxy
from .test_dns_scripts import scripts

CONFIGURED = {"netd.test": {"A": ["127.0.0.1"]}, "*.svc.test": {"A": "10.0.0.1", "ttl": 30}}


def addresses(wire: bytes | None) -> list[str]:
    """
    The A records of an answer that was sent.
    """
    assert wire is not None, "no answer was sent"
    return [rr.payload.dottedQuad() for rr in parse(wire).answers if rr.type == dns.A]


def fromUpstream(p: Proxy, name: str, address: str) -> list[str]:
    """
    Ask for C{name}, which the upstream answers with C{address} (cached for 300 s).
    """
    p.ask(makeQuery(name))
    _, _, d = p.resolver.asked[-1]
    d.callback(replyTo(p.resolver.asked[-1][0], aRecord(name, address)))
    return addresses(p.lastSender.sent[-1][0])


def problems(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    """
    A ConfigError's problems as the control API renders them.
    """
    return [f"{renderPath(p.path)}: {p.message}" for p in error.value.problems]


def test_handlerProvidesBothTables() -> None:
    """
    The proxy offers its records and scripts tables to the control API, each a full IRuntimeTable.
    """
    p = makeProxy()
    assert IHasRuntimeTables.providedBy(p.proxy)
    tables = p.proxy.runtimeTables()
    assert sorted(tables) == ["records", "scripts"]
    for table in tables.values():
        verifyObject(IRuntimeTable, table)


# Records.


def test_getShowsRecordsInConfigForm() -> None:
    """
    GET records gives every static name, wildcards included, as the config wrote it.
    """
    p = makeProxy(CONFIGURED)
    assert p.proxy.runtimeTables()["records"].get({}) == {"records": CONFIGURED}


def test_putAddsAndReplacesAtOnce() -> None:
    """
    PUT records adds a new name and replaces an existing one, leaving the others, and the next query sees it.
    """
    p = makeProxy(CONFIGURED)
    table = p.proxy.runtimeTables()["records"]
    answer = table.put({"records": {"new.test": {"A": ["192.0.2.7"]}, "netd.test": {"A": ["127.0.0.9"]}}})
    assert answer["records"] == {**CONFIGURED, "new.test": {"A": ["192.0.2.7"]}, "netd.test": {"A": ["127.0.0.9"]}}
    assert addresses(p.ask(makeQuery("new.test"))) == ["192.0.2.7"]
    assert addresses(p.ask(makeQuery("netd.test"))) == ["127.0.0.9"]
    assert addresses(p.ask(makeQuery("a.svc.test"))) == ["10.0.0.1"]
    assert p.resolver.asked == []


def test_removedNameIsForwardedNotServedStale() -> None:
    """
    A name cached from the upstream, then made static, then removed, is asked upstream again: neither the static nor the old cached answer is served.
    """
    p = makeProxy()
    table = p.proxy.runtimeTables()["records"]
    assert fromUpstream(p, "moved.test", "192.0.2.1") == ["192.0.2.1"]
    table.put({"records": {"moved.test": {"A": "192.0.2.2"}}})
    assert addresses(p.ask(makeQuery("moved.test"))) == ["192.0.2.2"]
    table.delete({"name": ["moved.test"]})
    assert fromUpstream(p, "moved.test", "192.0.2.3") == ["192.0.2.3"]
    assert len(p.resolver.asked) == 2


def test_wildcardChangePurgesNamesBelowIt() -> None:
    """
    Adding a wildcard drops the cached answers of every name below it, and of no other name.
    """
    p = makeProxy()
    for name in ("a.svc.test", "b.x.svc.test", "svcx.test"):
        fromUpstream(p, name, "192.0.2.1")
    assert len(p.proxy.cache) == 3
    p.proxy.runtimeTables()["records"].put({"records": {"*.svc.test": {"A": "10.0.0.2"}}})
    assert len(p.proxy.cache) == 1
    assert addresses(p.ask(makeQuery("b.x.svc.test"))) == ["10.0.0.2"]
    p.proxy.runtimeTables()["records"].delete({"name": ["*.svc.test"]})
    p.ask(makeQuery("b.x.svc.test"))
    p.ask(makeQuery("svcx.test"))
    assert [q.key for _, q, _ in p.resolver.asked[3:]] == [encodeName("b.x.svc.test")]


def test_deleteWithoutNamesRestoresTheConfig() -> None:
    """
    DELETE records without names puts back the config file's records, dropping names added at runtime and undoing removals.
    """
    p = makeProxy(CONFIGURED)
    table = p.proxy.runtimeTables()["records"]
    table.put({"records": {"added.test": {"A": "192.0.2.9"}}})
    table.delete({"name": ["netd.test", "absent.test"]})
    assert sorted(table.get({})["records"]) == ["*.svc.test", "added.test"]
    assert table.delete({}) == {"records": CONFIGURED}
    assert addresses(p.ask(makeQuery("netd.test"))) == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"records": {"bad.test": {"A": ["1.2.3"]}}}, "records: 'bad.test': A: '1.2.3' is not an IPv4 address"),
        ({"records": {"bad.test": {"AA": ["::1"]}}}, "records: 'bad.test': unknown record type 'AA'"),
        ({"recods": {}}, "recods: unknown key; did you mean 'records'?"),
        ({}, "records: missing required key"),
        (["netd.test"], ": expected a JSON object with records, got array"),
    ],
)
def test_badRecordsBodyChangesNothing(body: Any, expected: str) -> None:
    """
    A records body netd would refuse in the config file is refused with the same message and its key path, and the records stay as they were.
    """
    p = makeProxy(CONFIGURED)
    table = p.proxy.runtimeTables()["records"]
    with pytest.raises(ConfigError) as error:
        table.put(body)
    assert error.value.source == "request body"
    assert any(problem.startswith(expected) for problem in problems(error)), problems(error)
    assert table.get({}) == {"records": CONFIGURED}


def test_badNameToDeleteChangesNothing() -> None:
    """
    DELETE records with a name argument that is not a name is refused, naming the argument, and removes nothing.
    """
    p = makeProxy(CONFIGURED)
    table = p.proxy.runtimeTables()["records"]
    with pytest.raises(ConfigError) as error:
        table.delete({"name": ["netd.test", "a..test"]})
    assert problems(error) == ["name[1]: 'a..test' is not a domain name (labels of 1 to 63 bytes, 253 bytes in all)"]
    assert table.get({}) == {"records": CONFIGURED}


# The cache's purge.


@pytest.mark.parametrize(
    ("name", "ancestor", "expected"),
    [
        ("b.test", "b.test", True),
        ("a.b.test", "b.test", True),
        ("x.a.b.test", "b.test", True),
        ("ab.test", "b.test", False),
        ("test", "b.test", False),
        ("b.test.org", "b.test", False),
    ],
)
def test_atOrUnderGoesByLabels(name: str, ancestor: str, expected: bool) -> None:
    """
    A name is at or under another when it is that name or ends with all of its labels, not merely with its text.
    """
    assert atOrUnder(encodeName(name), encodeName(ancestor)) is expected


def test_purgeDropsNamesAtOrUnder() -> None:
    """
    The cache's purge drops every answer, of any type, at or under the names given, and says how many.
    """
    clock = Clock()
    cache = AnswerCache(maxEntries=10, minTTL=0, maxTTL=3600, maxNegativeTTL=3600, clock=clock)
    for name, qtype in (("a.test", dns.A), ("a.test", dns.AAAA), ("x.a.test", dns.A), ("ba.test", dns.A)):
        query = makeQuery(name, qtype)
        answer = replyTo(query, aRecord(name, "192.0.2.1"))
        assert cache.store(cacheKey(parseQuery(query)), answer, inspectAnswer(answer))
    assert cache.purge([encodeName("a.test")]) == 3
    assert len(cache) == 1


def test_purgeFollowsCnameChains() -> None:
    """
    The cache's purge also drops answers whose CNAME chain passes through a changed name (a compressed owner or target at or under it), and keeps answers whose chain does not.
    """
    cache = AnswerCache(maxEntries=10, minTTL=0, maxTTL=3600, maxNegativeTTL=3600, clock=Clock())
    chains = {
        "alias.test": [
            rr("alias.test", dns.Record_CNAME(b"mid.test"), 60),
            rr("mid.test", dns.Record_CNAME(b"www.b.test"), 60),
            aRecord("www.b.test", "192.0.2.1"),
        ],
        "dangling.test": [rr("dangling.test", dns.Record_CNAME(b"x.B.test"), 60)],
        "other.test": [rr("other.test", dns.Record_CNAME(b"www.c.test"), 60), aRecord("www.c.test", "192.0.2.2")],
    }
    for name, records in chains.items():
        query = makeQuery(name)
        answer = replyTo(query, *records)
        assert cache.store(cacheKey(parseQuery(query)), answer, inspectAnswer(answer))
    assert cache.purge([encodeName("b.test")]) == 2
    assert [key[0] for key in cache._entries] == [encodeName("other.test")]


def test_recordChangePurgesAnswersThroughIt() -> None:
    """
    PUT of a record drops a cached answer whose CNAME chain passes through the changed name, so that the next query for the alias asks the upstreams again.
    """
    p = makeProxy()
    p.ask(makeQuery("alias.example"))
    sent, _, d = p.resolver.asked[-1]
    d.callback(
        replyTo(sent, rr("alias.example", dns.Record_CNAME(b"www.example"), 300), aRecord("www.example", "192.0.2.10"))
    )
    assert p.ask(makeQuery("alias.example")) is not None
    p.proxy.runtimeTables()["records"].put({"records": {"www.example": {"A": "198.51.100.7"}}})
    assert len(p.proxy.cache) == 0
    assert p.ask(makeQuery("alias.example")) is None
    assert len(p.resolver.asked) == 2


# Scripts.


def test_scriptsPutReplacesAndDeleteRestores() -> None:
    """
    PUT scripts replaces the entries, counting afresh and acting at once; DELETE puts back the config file's entries.
    """
    p = makeProxy(CONFIGURED, scripts=scripts({"name": "netd.test", "rcode": "SERVFAIL"}))
    table = p.proxy.runtimeTables()["scripts"]
    p.ask(makeQuery("netd.test"))
    assert table.get({}) == {
        "scripts": [{"name": "netd.test", "rcode": "SERVFAIL", "truncate": False, "delay": 0, "drop": False}],
        "applied": [1],
    }
    answer = table.put({"scripts": [{"name": "*.svc.test", "qtype": "A", "drop": True, "first": 1}]})
    assert answer["applied"] == [0]
    assert answer["scripts"][0]["name"] == "*.svc.test" and answer["scripts"][0]["first"] == 1
    assert p.ask(makeQuery("a.svc.test")) is None
    assert addresses(p.ask(makeQuery("a.svc.test"))) == ["10.0.0.1"]
    assert addresses(p.ask(makeQuery("netd.test"))) == ["127.0.0.1"]
    restored = table.delete({})
    assert (len(restored["scripts"]), restored["applied"]) == (1, [0])
    assert parse(p.ask(makeQuery("netd.test"))).rCode == dns.ESERVER


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"scripts": [{"name": "a.test", "rcode": "SERVFAL"}]}, "scripts[0].rcode: expected one of"),
        (
            {"scripts": [{"name": "a.test", "drop": True}, {"name": "b.test", "drop": True, "rcode": "NXDOMAIN"}]},
            "scripts[1].rcode: drop sends no answer",
        ),
        ({"scripts": [{"name": "a.test", "delay": "100"}]}, "scripts[0].delay: expected an integer, got string '100'"),
        ({"scripts": {"name": "a.test"}}, "scripts: expected an array, each a table"),
        ("drop everything", ": expected a JSON object with scripts, got string"),
    ],
)
def test_badScriptsBodyChangesNothing(body: Any, expected: str) -> None:
    """
    A scripts body with a bad entry is refused with the entry's key path inside the body, and the entries stay as they were.
    """
    p = makeProxy(scripts=scripts({"name": "netd.test", "rcode": "SERVFAIL"}))
    table = p.proxy.runtimeTables()["scripts"]
    before = table.get({})
    with pytest.raises(ConfigError) as error:
        table.put(body)
    assert any(problem.startswith(expected) for problem in problems(error)), problems(error)
    assert table.get({}) == before
