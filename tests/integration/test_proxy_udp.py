"""
The proxy plugin's UDP side in front of a real DNS server: netd runs as a
subprocess, a real dnsmasq (Debian's) answers on 127.0.0.2, and real clients
(dig, and a Python socket where the test must see every datagram) ask through
netd, plainly and with each datagram fault, over UDP and TCP on one service.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netd.testing.harness import NetdServer, unavailable

from .conftest import IO_TIMEOUT, dig
from .dns_upstream import EXPECTED, Dnsmasq, buildQuery, findDnsmasq, startDnsmasq, upstreamArguments

pytestmark = pytest.mark.integration

UPSTREAM_HOST = "127.0.0.2"
NAME = "www.example.test"
ADDRESS = EXPECTED[(NAME, "A")][0]
DELAY_MS = 300


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """
    dnsmasq as the test upstream of L{dns_upstream} on a free port of 127.0.0.2, stopped (by its PID) after the module.
    """
    if findDnsmasq() is None:
        unavailable("dnsmasq is not installed (./test.sh installs it)")
    upstream = startDnsmasq(
        upstreamArguments(), tmp_path_factory.mktemp("dnsmasq"), host=UPSTREAM_HOST, name="udp-upstream"
    )
    try:
        yield upstream
    finally:
        upstream.stop()


def proxy(name: str, upstream: Dnsmasq, faults: str = "[]", extra: str = "", tcp: bool = False) -> str:
    """
    One proxy service in front of C{upstream} on a udp: listener (and a tcp: one on the same port), as TOML.
    """
    listen = '"udp:0:interface=127.0.0.1"' + (', "tcp:0:interface=127.0.0.1"' if tcp else "")
    streams = f'upstream = "tcp:{upstream.host}:{upstream.port}"\n' if tcp else ""
    return (
        f'[[services]]\nname = "{name}"\nplugin = "proxy"\nlisten = [{listen}]\n{streams}'
        f'udp_upstream = "udp:{upstream.host}:{upstream.port}"\nfaults = {faults}\n{extra}\n'
    )


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any, dnsmasq: Dnsmasq) -> NetdServer:
    """
    One netd for the module: UDP proxies to dnsmasq, plain (with TCP beside) and with each datagram fault.
    """
    started: NetdServer = startModuleNetd(
        proxy("plain", dnsmasq, tcp=True)
        + proxy("drop", dnsmasq, '[{ type = "drop", direction = "from_client", first = 1 }]')
        + proxy("duplicate", dnsmasq, '[{ type = "duplicate", copies = 2, direction = "to_client" }]')
        + proxy("delay", dnsmasq, f'[{{ type = "delay", ms = {DELAY_MS}, direction = "from_client" }}]')
        + proxy("truncate", dnsmasq, '[{ type = "truncate", bytes = 20, direction = "to_client" }]')
        + proxy("reorder", dnsmasq, '[{ type = "reorder", direction = "to_client", first = 1, wait = 5000 }]')
        + proxy("expiring", dnsmasq, extra="udp_session_timeout = 0.3")
        + proxy("bounded", dnsmasq, extra="udp_max_sessions = 2")
    )
    return started


def udpAddress(netd: NetdServer, service: str) -> tuple[str, int]:
    """
    Where C{service} listens for datagrams.
    """
    return netd.address(service, "udp")


def gauge(netd: NetdServer, name: str, service: str) -> float:
    """
    The value of a service's gauge C{netd_NAME} in C{/metrics}.
    """
    pattern = re.compile(rf'^netd_{name}\{{service="{re.escape(service)}"\}} (\S+)$', re.MULTILINE)
    found = pattern.search(netd.admin.metrics())
    assert found is not None, f"no gauge netd_{name} for {service}"
    return float(found.group(1))


def ask(client: socket.socket, address: tuple[str, int], query: bytes) -> None:
    """
    Send one query from C{client}.
    """
    client.sendto(query, address)


def receive(client: socket.socket, count: int, timeout: float = IO_TIMEOUT) -> list[bytes]:
    """
    The next C{count} datagrams C{client} receives, within C{timeout} seconds.
    """
    client.settimeout(timeout)
    return [client.recvfrom(65535)[0] for _ in range(count)]


def quiet(client: socket.socket, seconds: float) -> bool:
    """
    Whether C{client} receives nothing for C{seconds}.
    """
    client.settimeout(seconds)
    try:
        client.recvfrom(65535)
    except TimeoutError:
        return True
    return False


def udpClient() -> socket.socket:
    """
    A UDP socket on a loopback port of its own.
    """
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    return client


def test_digOverUdpAndTcpThroughOneService(netd: NetdServer, dnsmasq: Dnsmasq) -> None:
    """
    dig gets dnsmasq's answer through one proxy service over UDP and over TCP on the same port, and netd counts a session and an upstream connection.
    """
    udp = udpAddress(netd, "plain")
    assert udp == netd.address("plain", "tcp")
    before = dnsmasq.queriesFor(NAME, "A")
    overUdp = dig(udp, NAME, "A")
    assert overUdp.last.status == "NOERROR" and overUdp.last.data("A") == [ADDRESS]
    overTcp = dig(udp, NAME, "A", "+tcp")
    assert overTcp.last.status == "NOERROR" and overTcp.last.data("A") == [ADDRESS]
    assert dnsmasq.queriesFor(NAME, "A") == before + 2
    assert netd.counter("udp_sessions_opened", "plain") >= 1
    assert netd.counter("datagrams_to_upstream", "plain") >= 1
    assert netd.counter("datagrams_from_upstream", "plain") >= 1
    assert netd.counter("upstream_connects", "plain") >= 1


def test_dropFromClientMakesDigRetry(netd: NetdServer, dnsmasq: Dnsmasq) -> None:
    """
    With the first query dropped before it goes upstream, dig times out once and gets its answer on the retry; dnsmasq saw one query of the two.
    """
    before = dnsmasq.queriesFor(NAME, "A")
    result = dig(udpAddress(netd, "drop"), NAME, "A", "+tries=2", time=1)
    assert result.last.data("A") == [ADDRESS]
    assert result.elapsed >= 1.0
    assert dnsmasq.queriesFor(NAME, "A") == before + 1
    assert netd.admin.table("drop", "faults")["applied"] == [1]


def test_duplicateAnswers(netd: NetdServer) -> None:
    """
    With two extra copies of each answer, the client receives dnsmasq's answer three times, identical, and dig still reads it.
    """
    query = buildQuery(NAME, queryId=0x1234)
    with udpClient() as client:
        ask(client, udpAddress(netd, "duplicate"), query)
        answers = receive(client, 3)
        assert quiet(client, 0.3)
    assert answers[0][:2] == b"\x12\x34" and answers[0] == answers[1] == answers[2]
    assert dig(udpAddress(netd, "duplicate"), NAME, "A").last.data("A") == [ADDRESS]


def test_delayHoldsTheQuery(netd: NetdServer) -> None:
    """
    With a delay on the client's datagrams, dig's answer comes at least that much later than through the plain proxy.
    """
    plain = min(dig(udpAddress(netd, "plain"), NAME, "A").elapsed for _ in range(2))
    delayed = dig(udpAddress(netd, "delay"), NAME, "A")
    assert delayed.last.data("A") == [ADDRESS]
    assert delayed.elapsed >= DELAY_MS / 1000
    assert plain < DELAY_MS / 1000


def test_truncatedAnswerIsMalformedForDig(netd: NetdServer) -> None:
    """
    With answers cut to 20 bytes (a header and part of the question), dig warns of a malformed message and shows a 20-byte answer with no question and no records; a raw client receives exactly those 20 bytes.
    """
    query = buildQuery(NAME, queryId=0x4321)
    with udpClient() as client:
        ask(client, udpAddress(netd, "truncate"), query)
        [answer] = receive(client, 1)
    assert len(answer) == 20 and answer[:2] == b"\x43\x21"
    result = dig(udpAddress(netd, "truncate"), NAME, "A", time=1)
    assert "Message parser reports malformed message packet" in result.output, result.output
    assert result.last.size == 20
    assert (result.last.question, result.last.answer) == ((), ())


def test_reorderLetsTheSecondAnswerOvertake(netd: NetdServer) -> None:
    """
    With the first answer held until the next one passes, a client that asks twice gets the second answer first.
    """
    first = buildQuery(NAME, queryId=1)
    second = buildQuery("mail.example.test", queryId=2)
    with udpClient() as client:
        address = udpAddress(netd, "reorder")
        ask(client, address, first)
        assert quiet(client, 0.3)
        ask(client, address, second)
        answers = receive(client, 2)
    assert [answer[:2] for answer in answers] == [b"\x00\x02", b"\x00\x01"]


def test_sessionExpiresAndIsRecorded(netd: NetdServer) -> None:
    """
    A session idle for udp_session_timeout is closed: counted in /metrics, the udp_sessions gauge back to 0, and a udp_session event says it expired with a datagram each way.
    """
    with udpClient() as client:
        ask(client, udpAddress(netd, "expiring"), buildQuery(NAME))
        receive(client, 1)
        peer = f"127.0.0.1:{client.getsockname()[1]}"
    deadline = time.monotonic() + IO_TIMEOUT
    while netd.counter("udp_sessions_expired", "expiring") < 1:
        assert time.monotonic() < deadline, "the session did not expire"
        time.sleep(0.1)
    assert gauge(netd, "udp_sessions", "expiring") == 0
    events = netd.admin.events("expiring", kind="udp_session")
    [event] = [e for e in events if e["peer"] == peer]
    assert event["ended"] == "expired"
    assert (event["datagrams_to_upstream"], event["datagrams_from_upstream"]) == (1, 1)


def test_boundEvictsTheLeastRecentlyActive(netd: NetdServer) -> None:
    """
    With udp_max_sessions = 2, a third client closes the quietest session: counted, and the two most recent stay open.
    """
    address = udpAddress(netd, "bounded")
    clients = [udpClient() for _ in range(3)]
    try:
        for client in clients:
            ask(client, address, buildQuery(NAME))
            assert len(receive(client, 1)) == 1
    finally:
        for client in clients:
            client.close()
    assert netd.counter("udp_sessions_evicted", "bounded") == 1
    assert netd.counter("udp_sessions_opened", "bounded") == 3
    assert gauge(netd, "udp_sessions", "bounded") == 2


def test_proxyToItselfDropsTheLoop(netd: NetdServer) -> None:
    """
    A proxy created at runtime whose udp_upstream is its own listener gets its session socket's datagram back: dropped as a loop after one turn, with one session opened, not one per turn.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    netd.addService(
        {
            "name": "loop",
            "plugin": "proxy",
            "listen": [f"udp:{port}:interface=127.0.0.1"],
            "udp_upstream": f"udp:127.0.0.1:{port}",
        }
    )
    try:
        with udpClient() as client:
            ask(client, ("127.0.0.1", port), b"round and round")
            deadline = time.monotonic() + IO_TIMEOUT
            while netd.counter("udp_loops_dropped", "loop") < 1:
                assert time.monotonic() < deadline, "the loop was not dropped"
                time.sleep(0.05)
            assert quiet(client, 0.2)
        assert netd.counter("udp_sessions_opened", "loop") == 1
        assert netd.counter("datagrams_to_upstream", "loop") == 1
    finally:
        netd.removeService("loop")


def test_upstreamDownLeavesTheClientUnanswered(netd: NetdServer) -> None:
    """
    When nothing listens at udp_upstream, dig's query goes unanswered, as without the proxy, and netd goes on serving without an error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    netd.addService(
        {
            "name": "down",
            "plugin": "proxy",
            "listen": ["udp:0:interface=127.0.0.1"],
            "udp_upstream": f"udp:127.0.0.1:{port}",
        }
    )
    try:
        for _ in range(2):
            result = dig(udpAddress(netd, "down"), NAME, "A", time=1)
            assert not result.messages and "timed out" in result.output, result.output
        assert netd.counter("datagrams_to_upstream", "down") == 2
        assert netd.counter("udp_sessions_opened", "down") == 2
    finally:
        netd.removeService("down")
    assert dig(udpAddress(netd, "plain"), NAME, "A").last.data("A") == [ADDRESS]
    assert "Traceback" not in netd.log()
