"""
DNS over TLS (RFC 7858) end to end: a dns-proxy service with a C{tls} table
serves DNS over TLS on its TCP listener with no change of the plugin, while its
UDP listener stays plain; and a dns-proxy forwards over DoT to another netd.
netd runs as subprocesses forwarding to the real dnsmasq of the C{dnsUpstream}
fixture; clients are dig (+tls) and Python's ssl module with u16-framed queries
built and parsed with twisted.names.  Certificates are made by C{netd certs}.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pytest
import tomli_w
from twisted.names import dns

from netd.testing.harness import NetdServer, netdCommand

from .conftest import IO_TIMEOUT, DigResult, dig, recvExactly, recvUntilClosed, requireTool, unavailable, waitForLog
from .dns_upstream import EXPECTED, Dnsmasq, buildQuery

pytestmark = pytest.mark.integration

ONLY_ON_A = "dot-only.netd.test"
"""
A static name of the DoT server only: an answer for it proves that a query
went through that netd (the upstream dnsmasq does not know it).
"""

TIMEOUT = 1.0
DEADLINE = 2.5
"""
The timeout and deadline of the service whose DoT upstream fails, short so the test is quick.
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The folder of C{netd certs --out DIR}: ca.pem, server.pem (localhost, 127.0.0.1, ::1) and its key.
    """
    directory = tmp_path_factory.mktemp("certs")
    done = subprocess.run(
        netdCommand("certs", "--out", str(directory)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return directory


def dnsService(name: str, upstreams: list[str], **keys: Any) -> dict[str, Any]:
    """
    One dns-proxy service on UDP and TCP ports of 127.0.0.1 that netd picks.
    """
    return {
        "name": name,
        "plugin": "dns-proxy",
        "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
        "upstreams": upstreams,
        "log_queries": True,
        **keys,
    }


@pytest.fixture(scope="module")
def server(certs: Path, dnsUpstream: Dnsmasq, startModuleNetd: Any) -> NetdServer:
    """
    netd "A": a dns-proxy with a tls table (the development server
    certificate), forwarding to dnsmasq, with static records; debug logging,
    so that each TLS handshake is logged.
    """
    service = dnsService(
        "dot",
        [dnsUpstream.upstream],
        tls={"certificate": str(certs / "server.pem"), "private_key": str(certs / "server-key.pem")},
        records={"netd.test": {"A": ["127.0.0.1"], "TXT": ["served over TLS"]}, ONLY_ON_A: {"A": ["192.0.2.99"]}},
    )
    return startModuleNetd(tomli_w.dumps({"daemon": {"log_level": "debug"}, "services": [service]}))


@pytest.fixture(scope="module")
def forwarder(certs: Path, server: NetdServer, startModuleNetd: Any) -> NetdServer:
    """
    netd "B": two dns-proxy services with A as their only upstream over DoT:
    C{via-dot} checks A's certificate for the name localhost (which it
    carries), C{wrong-name} for wrong.example (which it does not).
    """
    host, port = server.address("dot", "tcp")
    services = [
        dnsService("via-dot", [f"tls:{host}:{port}:name=localhost"], ca_bundle=str(certs / "ca.pem")),
        dnsService(
            "wrong-name",
            [f"tls:{host}:{port}:name=wrong.example"],
            ca_bundle=str(certs / "ca.pem"),
            timeout=TIMEOUT,
            deadline=DEADLINE,
        ),
    ]
    return startModuleNetd(tomli_w.dumps({"services": services}))


def handshakes(netd: NetdServer, service: str) -> int:
    """
    How many TLS handshakes C{service} has logged as done (debug).
    """
    return len(re.findall(rf"\[{re.escape(service)}#debug\] TLS from ", netd.log()))


def digTLS(netd: NetdServer, certs: Path, *args: str) -> DigResult:
    """
    dig over DNS over TLS to the TCP port of the C{dot} service, verifying the
    certificate against the development CA for the name localhost.
    """
    return dig(netd.address("dot", "tcp"), "+tls", f"+tls-ca={certs / 'ca.pem'}", "+tls-hostname=localhost", *args)


@pytest.fixture(scope="module")
def digSpeaksTLS() -> None:
    """
    Skip (fail under CI) unless this dig has +tls, +tls-ca and +tls-hostname (BIND 9.18 and later).
    """
    tool = requireTool("dig")
    usage = subprocess.run([tool, "-h"], capture_output=True, text=True, timeout=30).stdout
    if not all(option in usage for option in ("+[no]tls ", "+[no]tls-ca", "+[no]tls-hostname")):
        version = subprocess.run([tool, "-v"], capture_output=True, text=True, timeout=30)
        reason = f"this dig has no DNS-over-TLS options: {(version.stdout + version.stderr).strip()}"
        unavailable(reason)


# Serving DNS over TLS.


@pytest.mark.parametrize(
    ("name", "rtype"),
    [("www.example.test", "A"), ("www.example.test", "AAAA"), ("example.test", "MX"), ("example.test", "TXT")],
)
def test_digOverTLSForwards(server: NetdServer, certs: Path, digSpeaksTLS: None, name: str, rtype: str) -> None:
    """
    dig +tls, verifying netd's certificate for localhost, gets the upstream's records through the TLS listener of a dns-proxy service.
    """
    result = digTLS(server, certs, name, rtype)
    assert result.returncode == 0, result.output
    assert result.last.status == "NOERROR", result.output
    assert result.last.data(rtype) == sorted(EXPECTED[name, rtype]), result.output
    assert "(TLS)" in result.output, result.output


def test_digOverTLSStaticRecords(server: NetdServer, certs: Path, digSpeaksTLS: None) -> None:
    """
    dig +tls gets the service's static records (A and TXT) over DNS over TLS.
    """
    address = digTLS(server, certs, "netd.test", "A")
    assert address.last.status == "NOERROR" and address.last.data("A") == ["127.0.0.1"], address.output
    assert "aa" in address.last.flags
    text = digTLS(server, certs, "netd.test", "TXT")
    assert text.last.data("TXT") == ['"served over TLS"'], text.output


def test_digSeveralQueriesOneConnection(server: NetdServer, certs: Path, digSpeaksTLS: None) -> None:
    """
    dig +tls +keepopen asking three questions gets three right answers over one TLS connection (one handshake).
    """
    before = handshakes(server, "dot")
    result = digTLS(server, certs, "+keepopen", "netd.test", "A", "www.example.test", "A", "example.test", "MX")
    assert [message.status for message in result.messages] == ["NOERROR"] * 3, result.output
    assert [message.data() for message in result.messages] == [
        ["127.0.0.1"],
        EXPECTED["www.example.test", "A"],
        sorted(EXPECTED["example.test", "MX"]),
    ], result.output
    waitUntil(lambda: handshakes(server, "dot") >= before + 1, "the handshake logged")
    assert handshakes(server, "dot") == before + 1, server.log()[-3000:]


def test_digRefusesWrongName(server: NetdServer, certs: Path, digSpeaksTLS: None) -> None:
    """
    dig +tls expecting another name than the certificate's gets no answer from netd over TLS.
    """
    result = dig(
        server.address("dot", "tcp"),
        "+tls",
        f"+tls-ca={certs / 'ca.pem'}",
        "+tls-hostname=wrong.example",
        "netd.test",
        "A",
    )
    assert not result.messages, result.output


def exchangeQueries(address: tuple[str, int], caFile: Path, queries: list[bytes]) -> tuple[list[dns.Message], str]:
    """
    Send every query, u16-framed and pipelined, over one TLS connection
    (certificate checked for localhost), read as many answers, and return
    them parsed, in the order they came, with the TLS version.
    """
    context = ssl.create_default_context(cafile=str(caFile))
    with context.wrap_socket(
        socket.create_connection(address, timeout=IO_TIMEOUT), server_hostname="localhost"
    ) as client:
        client.sendall(b"".join(struct.pack("!H", len(query)) + query for query in queries))
        answers = []
        for _ in queries:
            (length,) = struct.unpack("!H", recvExactly(client, 2))
            message = dns.Message()
            message.fromStr(recvExactly(client, length))
            answers.append(message)
        version = client.version() or "?"
    return answers, version


def addresses(message: dns.Message) -> list[str]:
    """
    The addresses of the A records of a message's answer section.
    """
    return [cast(dns.Record_A, record.payload).dottedQuad() for record in message.answers if record.type == dns.A]


def test_severalQueriesOneConnection(server: NetdServer, certs: Path) -> None:
    """
    Several queries pipelined over one DNS-over-TLS connection (forwarded and static, two types) each get their own answer, through a single TLS handshake.
    """
    questions = [
        ("www.example.test", dns.A),
        ("netd.test", dns.A),
        ("example.test", dns.MX),
        ("www.example.test", dns.AAAA),
        ("netd.test", dns.TXT),
    ]
    queries = [buildQuery(name, qtype, queryId=1000 + i) for i, (name, qtype) in enumerate(questions)]
    before = handshakes(server, "dot")
    answers, version = exchangeQueries(server.address("dot", "tcp"), certs / "ca.pem", queries)
    assert version in ("TLSv1.2", "TLSv1.3")
    byId = {answer.id: answer for answer in answers}
    assert sorted(byId) == [1000 + i for i in range(len(questions))]
    for i, (name, qtype) in enumerate(questions):
        answer = byId[1000 + i]
        assert answer.answer and answer.rCode == dns.OK, (name, qtype, answer)
        assert [(q.name.name.decode(), q.type) for q in answer.queries] == [(name, qtype)]
    assert addresses(byId[1000]) == EXPECTED["www.example.test", "A"]
    assert addresses(byId[1001]) == ["127.0.0.1"]
    waitUntil(lambda: handshakes(server, "dot") == before + 1, "one handshake logged for the connection")


def test_udpStaysPlain(server: NetdServer, dnsUpstream: Dnsmasq) -> None:
    """
    The same service's UDP listener answers plain DNS (forwarded and static), while plain DNS over TCP to its TLS listener is refused as not TLS.
    """
    forwarded = dig(server.address("dot", "udp"), "www.example.test", "A")
    assert forwarded.last.data("A") == EXPECTED["www.example.test", "A"], forwarded.output
    static = dig(server.address("dot", "udp"), "netd.test", "A")
    assert static.last.data("A") == ["127.0.0.1"], static.output
    query = buildQuery("netd.test")
    with socket.create_connection(server.address("dot", "tcp"), timeout=IO_TIMEOUT) as plain:
        plain.sendall(struct.pack("!H", len(query)) + query)
        answer = recvUntilClosed(plain, timeout=5)
    assert query[2:] not in answer and b"\x7f\x00\x00\x01" not in answer
    waitForLog(server, "failed: not_tls")


# Forwarding over DNS over TLS.


def test_forwardsOverDoT(server: NetdServer, forwarder: NetdServer) -> None:
    """
    A dns-proxy whose upstream is tls:A:name=localhost (with the CA as ca_bundle) answers UDP queries through netd A over a verified TLS connection: A's static names and, through A, dnsmasq's records.
    """
    via = forwarder.address("via-dot", "udp")
    only = dig(via, ONLY_ON_A, "A")
    assert only.last.status == "NOERROR" and only.last.data("A") == ["192.0.2.99"], only.output
    forwarded = dig(via, "mail.example.test", "A")
    assert forwarded.last.status == "NOERROR", forwarded.output
    assert forwarded.last.data("A") == EXPECTED["mail.example.test", "A"], forwarded.output
    log = waitForLog(server, f"tls {ONLY_ON_A} A -> NOERROR from static")
    assert re.search(r"\[dot#debug\] TLS from .*: TLSv1\.[23] \S+, SNI localhost", log), log
    waitForLog(server, "tls mail.example.test A -> NOERROR from upstream")


def test_doTUpstreamWithWrongName(forwarder: NetdServer) -> None:
    """
    A DoT upstream whose certificate does not carry the name= given is refused: the client gets SERVFAIL within the deadline, and the failure is logged with the hostname mismatch.
    """
    started = time.monotonic()
    result = dig(forwarder.address("wrong-name", "udp"), "www.example.test", "A", time=int(DEADLINE) + 3)
    elapsed = time.monotonic() - started
    assert result.last.status == "SERVFAIL", result.output
    assert result.last.answer == ()
    assert elapsed < DEADLINE + 2, elapsed
    log = waitForLog(forwarder, "hostname mismatch")
    assert re.search(
        r"\[wrong-name#\w+\] TLS with upstream .* failed .*: the server's certificate is not valid for wrong\.example \(hostname mismatch\)",
        log,
    ), log


def waitUntil(condition: Any, what: str, timeout: float = IO_TIMEOUT) -> None:
    """
    Poll C{condition} until it holds, failing after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} seconds: {what}")
        time.sleep(0.05)
