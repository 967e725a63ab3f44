"""
The dns-proxy's scripted answers, runtime records and query events end to end:
netd runs as a subprocess forwarding to a real dnsmasq (the C{dnsUpstream}
fixture), dig and raw sockets query it, and the control API changes its
records and scripts while it runs.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import tomli_w

from netd.testing.harness import NetdServer

from .conftest import dig
from .dns_upstream import Dnsmasq, buildQuery
from .test_dns_proxy import onePortListen, startOnOnePort

pytestmark = pytest.mark.integration

DELAY_MS = 400

SCRIPTS: list[dict[str, Any]] = [
    {"name": "dropped.example.test", "drop": True},
    {"name": "servfail.example.test", "rcode": "SERVFAIL"},
    {"name": "www.example.test", "qtype": "AAAA", "rcode": "NXDOMAIN"},
    {"name": "mail.example.test", "truncate": True},
    {"name": "ns1.example.test", "rcode": "SERVFAIL", "first": 2},
    {"name": "v6only.example.test", "delay": DELAY_MS},
    {"name": "spoof-id.netd.test", "spoof": "id"},
    {"name": "*.spoof-q.netd.test", "spoof": "question"},
]

RECORDS = {
    "spoof-id.netd.test": {"A": "127.0.0.5"},
    "*.spoof-q.netd.test": {"A": "127.0.0.6"},
}


def scriptedConfig(upstream: str, listen: list[str], **keys: Any) -> str:
    """
    A config with one dns-proxy service named C{dns} forwarding to C{upstream},
    with L{SCRIPTS} and L{RECORDS} unless C{keys} says otherwise.
    """
    service = {
        "name": "dns",
        "plugin": "dns-proxy",
        "listen": listen,
        "upstreams": [upstream],
        "log_queries": True,
        "scripts": SCRIPTS,
        "records": RECORDS,
        **keys,
    }
    return tomli_w.dumps({"services": [service]})


@pytest.fixture(scope="module")
def scripted(startModuleNetd: Any, dnsUpstream: Dnsmasq) -> NetdServer:
    """
    One netd with L{SCRIPTS}, on one port for UDP and TCP (dig's retry after TC needs it).
    """
    return startOnOnePort(startModuleNetd, lambda port: scriptedConfig(dnsUpstream.upstream, onePortListen(port)))


def test_droppedQueryTimesOut(scripted: NetdServer) -> None:
    """
    dig +tries=1 +time=1 gets no answer for a dropped name and reports the timeout.
    """
    result = dig(scripted.address("dns", "udp"), "dropped.example.test", time=1)
    assert result.messages == (), result.output
    assert "timed out" in result.output, result.output
    assert result.elapsed >= 0.9


@pytest.mark.parametrize(
    ("name", "rtype", "status"), [("servfail.example.test", "A", "SERVFAIL"), ("www.example.test", "AAAA", "NXDOMAIN")]
)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_forcedRcode(scripted: NetdServer, name: str, rtype: str, status: str, transport: str) -> None:
    """
    dig reports SERVFAIL and NXDOMAIN where they are forced, over UDP and TCP, with no records.
    """
    tcp = ["+tcp"] if transport == "tcp" else []
    result = dig(scripted.address("dns", transport), name, rtype, *tcp, time=2)
    assert result.last.status == status, result.output
    assert result.last.answer == ()


def test_rcodeForcedForOneTypeOnly(scripted: NetdServer) -> None:
    """
    An entry with a qtype leaves the name's other types alone: its A record still comes from the upstream.
    """
    result = dig(scripted.address("dns", "udp"), "www.example.test", "A", time=2)
    assert (result.last.status, result.last.data("A")) == ("NOERROR", ["192.0.2.10"]), result.output


def test_truncatedMakesDigRetryOverTcp(scripted: NetdServer) -> None:
    """
    A forced TC makes dig retry over TCP, where the upstream's answer comes back whole.
    """
    result = dig(scripted.address("dns", "udp"), "mail.example.test", "A", time=2)
    assert result.retriedOverTcp and "(TCP)" in result.output, result.output
    assert (result.last.status, result.last.data("A")) == ("NOERROR", ["192.0.2.25"]), result.output


def test_firstTwoServfailThenAnswer(scripted: NetdServer) -> None:
    """
    With first = 2 the first two queries get SERVFAIL and the third the upstream's answer.
    """
    address = scripted.address("dns", "udp")
    statuses = [dig(address, "ns1.example.test", "A", time=2).last.status for _ in range(3)]
    assert statuses == ["SERVFAIL", "SERVFAIL", "NOERROR"]


def test_delayIsALowerBound(scripted: NetdServer) -> None:
    """
    A delayed answer takes at least the delay, and is the upstream's answer.
    """
    address = scripted.address("dns", "udp")
    for _ in range(2):
        started = time.monotonic()
        result = dig(address, "v6only.example.test", "AAAA", time=3)
        elapsed = time.monotonic() - started
        assert result.last.data("AAAA") == ["2001:db8::6"], result.output
        assert elapsed >= DELAY_MS / 1000, elapsed


def receiveAll(sock: socket.socket, count: int) -> list[bytes]:
    """
    Up to C{count} datagrams, each waited for at most a second.
    """
    sock.settimeout(1.0)
    received = []
    try:
        while len(received) < count:
            received.append(sock.recv(4096))
    except TimeoutError:
        pass
    return received


@pytest.mark.parametrize("spoof", ["id", "question"])
def test_spoofedAnswerArrivesFirst(scripted: NetdServer, spoof: str) -> None:
    """
    With spoof, a forged NXDOMAIN answer (wrong ID, or another question) arrives first on the client's socket, then the real answer.
    """
    name = "spoof-id.netd.test" if spoof == "id" else "x.spoof-q.netd.test"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(scripted.address("dns", "udp"))
        query = buildQuery(name, queryId=0x4242)
        sock.send(query)
        forged, real = receiveAll(sock, 2)
    question = query[12:]
    assert real[:2] == b"\x42\x42" and real[3] & 0x0F == 0 and real[12 : 12 + len(question)] == question
    assert forged[3] & 0x0F == 3
    if spoof == "id":
        assert forged[:2] != b"\x42\x42" and forged[12 : 12 + len(question)] == question
    else:
        assert forged[:2] == b"\x42\x42" and b"\x07spoofed\x07invalid\x00" in forged


def test_digIgnoresSpoofedId(scripted: NetdServer) -> None:
    """
    dig, a client that checks IDs, warns about the forged answer and takes the real one.
    """
    result = dig(scripted.address("dns", "udp"), "spoof-id.netd.test", "A", time=2)
    assert "ID mismatch" in result.output, result.output
    assert result.last.data("A") == ["127.0.0.5"], result.output


# The control API: records, scripts, events.


@pytest.fixture
def runtime(startNetd: Any, dnsUpstream: Dnsmasq) -> NetdServer:
    """
    A netd of its own (its cache and scripts are changed), forwarding to the test upstream, with no scripts or records.
    """
    netd: NetdServer = startNetd(
        scriptedConfig(dnsUpstream.upstream, ["udp:0:interface=127.0.0.1"], scripts=[], records={})
    )
    return netd


def test_runtimeRecordsNeverServeStale(runtime: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    A name PUT as a record is answered at once; once DELETEd, dig gets the upstream's answer again, asked afresh, never the cached one from before.
    """
    address = runtime.address("dns", "udp")
    before = dnsUpstream.queriesFor("www.example.test", "A")
    assert dig(address, "www.example.test", "A").last.data("A") == ["192.0.2.10"]
    status, answer = runtime.api(
        "PUT", "/services/dns/records", {"records": {"www.example.test": {"A": "198.51.100.7", "ttl": 5}}}
    )
    assert (status, answer) == (200, {"records": {"www.example.test": {"A": "198.51.100.7", "ttl": 5}}})
    changed = dig(address, "www.example.test", "A")
    assert changed.last.data("A") == ["198.51.100.7"] and "aa" in changed.last.flags, changed.output
    assert runtime.api("DELETE", "/services/dns/records?name=www.example.test") == (200, {"records": {}})
    assert dig(address, "www.example.test", "A").last.data("A") == ["192.0.2.10"]
    assert dnsUpstream.queriesFor("www.example.test", "A") == before + 2


def test_runtimeRecordPurgesCnameChainsThroughIt(runtime: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    A record PUT for a name drops the cached answer of an alias whose CNAME chain passes through it: the next query for the alias goes to the upstream again instead of serving the chain cached before the change.
    """
    address = runtime.address("dns", "udp")
    first = dig(address, "alias.example.test", "A")
    assert first.last.data("A") == ["192.0.2.10"], first.output
    before = dnsUpstream.queriesFor("alias.example.test", "A")
    assert dig(address, "alias.example.test", "A").last.data("A") == ["192.0.2.10"]
    assert dnsUpstream.queriesFor("alias.example.test", "A") == before, "the second query was a cache hit"
    status, _ = runtime.api("PUT", "/services/dns/records", {"records": {"www.example.test": {"A": "198.51.100.7"}}})
    assert status == 200
    dig(address, "alias.example.test", "A")
    assert dnsUpstream.queriesFor("alias.example.test", "A") == before + 1
    assert "1 cached answers dropped" in runtime.log()


def test_runtimeWildcardAndRestore(runtime: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    A wildcard PUT at runtime answers every name below it, cached ones included; DELETE without names restores the config's (no) records and the upstream answers again.
    """
    address = runtime.address("dns", "udp")
    assert dig(address, "mail.example.test", "A").last.data("A") == ["192.0.2.25"]
    before = dnsUpstream.queriesFor("mail.example.test", "A")
    runtime.api("PUT", "/services/dns/records", {"records": {"*.example.test": {"A": "198.51.100.8"}}})
    assert dig(address, "mail.example.test", "A").last.data("A") == ["198.51.100.8"]
    assert runtime.api("DELETE", "/services/dns/records") == (200, {"records": {}})
    assert dig(address, "mail.example.test", "A").last.data("A") == ["192.0.2.25"]
    assert dnsUpstream.queriesFor("mail.example.test", "A") == before + 1


def test_runtimeScripts(runtime: NetdServer) -> None:
    """
    Scripts PUT at runtime act on the next query and count it; a bad entry is a 400 naming its key path; DELETE restores the config's (no) scripts.
    """
    address = runtime.address("dns", "udp")
    entries = [{"name": "www.example.test", "rcode": "NXDOMAIN", "first": 1}]
    status, answer = runtime.api("PUT", "/services/dns/scripts", {"scripts": entries})
    assert (status, answer["applied"], answer["scripts"][0]["rcode"]) == (200, [0], "NXDOMAIN")
    assert dig(address, "www.example.test", "A").last.status == "NXDOMAIN"
    assert dig(address, "www.example.test", "A").last.status == "NOERROR"
    assert runtime.api("GET", "/services/dns/scripts")[1]["applied"] == [1]
    status, error = runtime.api(
        "PUT", "/services/dns/scripts", {"scripts": [{"name": "a.test", "drop": True, "rcode": "SERVFAIL"}]}
    )
    assert status == 400 and error["problems"] == [
        "scripts[0].rcode: drop sends no answer, so it cannot go with rcode"
    ], error
    assert runtime.api("GET", "/services/dns/scripts")[1]["scripts"][0]["name"] == "www.example.test"
    assert runtime.api("DELETE", "/services/dns/scripts") == (200, {"scripts": [], "applied": []})


def test_queryEvents(runtime: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    Each query dig makes is an event with its name, type, transport, rcode, source, cache hit and the upstream that answered.
    """
    address = runtime.address("dns", "udp")
    runtime.api("DELETE", "/services/dns/events")
    name = f"events-{time.monotonic_ns()}.example.test"
    dig(address, name, "A")
    dig(address, name, "A")
    status, answer = runtime.api("GET", "/services/dns/events?kind=query")
    assert status == 200
    events = [e for e in answer["events"] if e["name"] == name]
    assert [(e["source"], e["cache_hit"], e["upstream"], e["rcode"]) for e in events] == [
        ("upstream", False, dnsUpstream.upstream, "NXDOMAIN"),
        ("cache", True, None, "NXDOMAIN"),
    ], events
    assert all((e["type"], e["transport"], e["client"].partition(":")[0]) == ("A", "udp", "127.0.0.1") for e in events)
