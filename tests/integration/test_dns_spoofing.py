"""
Forged upstream answers against a real netd (issue 13 item 7): a fake
upstream on loopback (UDP and TCP on one port, threads with plain sockets)
that tells a spoofer the source port and ID of each UDP query it receives, so
that the spoofer, a raw socket sending UDP datagrams with the upstream's
address and port as their source, answers first with everything right but
the letter case; an upstream that lowercases every question (0x20 fallback);
and the source ports netd's queries leave from.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.names import dns

from netd.testing.harness import NetdServer, unavailable

from .conftest import IO_TIMEOUT
from .dns_upstream import buildQuery

pytestmark = pytest.mark.integration

REAL_ADDRESS = "192.0.2.1"
FORGED_ADDRESS = "6.6.6.6"


def answerFor(query: bytes, address: str, *, lowercase: bool = False) -> bytes:
    """
    An answer to C{query}: its ID and question (lowercased if C{lowercase}),
    one A record for C{address}.
    """
    end = query.index(b"\x00", 12) + 5
    question = query[12:end]
    if lowercase:
        question = question[:-4].lower() + question[-4:]
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
    return query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + record


class FakeUpstream:
    """
    A DNS server on one loopback port for UDP and TCP that answers every A
    query with L{REAL_ADDRESS}, echoing the question (lowercased when
    C{lowercase}); UDP answers wait C{delay} seconds, after C{onUDPQuery}
    (the spoofer's tip-off) has run.

    @ivar received: (transport, source port, question name as received) per query.
    """

    def __init__(self, *, lowercase: bool = False, delay: float = 0.0) -> None:
        self.lowercase = lowercase
        self.delay = delay
        self.onUDPQuery: Callable[[tuple[str, int], bytes], None] | None = None
        self.received: list[tuple[str, int, bytes]] = []
        self.stopping = threading.Event()
        for _ in range(20):
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind(("127.0.0.1", 0))
            self.port = self.tcp.getsockname()[1]
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.udp.bind(("127.0.0.1", self.port))
            except OSError:
                self.tcp.close()
                self.udp.close()
                continue
            break
        else:
            raise RuntimeError("no loopback port free for both UDP and TCP")
        self.tcp.listen(16)
        self.tcp.settimeout(0.1)
        self.udp.settimeout(0.1)
        self.threads = [
            threading.Thread(target=self._serveUDP, daemon=True),
            threading.Thread(target=self._serveTCP, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    @property
    def upstream(self) -> str:
        """
        It as a dns-proxy upstream string.
        """
        return f"udp:127.0.0.1:{self.port}"

    def _name(self, query: bytes) -> bytes:
        return query[12 : query.index(b"\x00", 12) + 1]

    def _serveUDP(self) -> None:
        while not self.stopping.is_set():
            try:
                query, source = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            self.received.append(("udp", source[1], self._name(query)))
            if self.onUDPQuery is not None:
                self.onUDPQuery(source, query)
            if self.delay:
                time.sleep(self.delay)
            self.udp.sendto(answerFor(query, REAL_ADDRESS, lowercase=self.lowercase), source)

    def _serveTCP(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, source = self.tcp.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serveConnection, args=(connection, source), daemon=True).start()

    def _serveConnection(self, connection: socket.socket, source: tuple[str, int]) -> None:
        connection.settimeout(IO_TIMEOUT)
        with connection:
            while not self.stopping.is_set():
                try:
                    header = _recv(connection, 2)
                    query = _recv(connection, struct.unpack("!H", header)[0])
                except (OSError, EOFError):
                    return
                self.received.append(("tcp", source[1], self._name(query)))
                answer = answerFor(query, REAL_ADDRESS, lowercase=self.lowercase)
                connection.sendall(struct.pack("!H", len(answer)) + answer)

    def stop(self) -> None:
        """
        Stop serving and close the sockets.
        """
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=IO_TIMEOUT)
        self.udp.close()
        self.tcp.close()


class RawSpoofer:
    """
    Sends UDP datagrams with any source address and port, as an off-path
    forger does: a raw IPv4 socket writing its own IP and UDP headers (the
    kernel fills in the IP checksum and length; a UDP checksum of 0 means none).
    """

    def __init__(self) -> None:
        try:
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            unavailable("a raw socket needs root or CAP_NET_RAW")

    def send(self, payload: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        """
        One datagram from C{source} to C{destination}.
        """
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            0,
            0,
            0,
            64,
            socket.IPPROTO_UDP,
            0,
            socket.inet_aton(source[0]),
            socket.inet_aton(destination[0]),
        )
        udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0)
        self.raw.sendto(ip + udp + payload, (destination[0], 0))

    def close(self) -> None:
        """
        Close the raw socket.
        """
        self.raw.close()


def _recv(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


@pytest.fixture
def fakeUpstream() -> Iterator[Callable[..., FakeUpstream]]:
    """
    A function that starts a L{FakeUpstream}; all are stopped at teardown.
    """
    started: list[FakeUpstream] = []

    def start(**options: Any) -> FakeUpstream:
        started.append(FakeUpstream(**options))
        return started[-1]

    yield start
    for upstream in started:
        upstream.stop()


def dnsConfig(upstream: str, **keys: Any) -> str:
    """
    One dns-proxy service named C{dns} on a UDP port of 127.0.0.1, no cache.
    """
    settings = {"timeout": 2.0, "deadline": 5.0, "cache_size": 0, **keys}
    lines = [
        "[[services]]",
        'name = "dns"',
        'plugin = "dns-proxy"',
        'listen = ["udp:0:interface=127.0.0.1"]',
        f'upstreams = ["{upstream}"]',
        *(f"{key} = {str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def ask(netd: NetdServer, name: str) -> tuple[bytes, bytes]:
    """
    One A query to the C{dns} service over UDP: the query and the answer.
    """
    query = buildQuery(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(query, netd.address("dns", "udp"))
        while True:
            answer, _ = client.recvfrom(65535)
            if answer[:2] == query[:2]:
                return query, answer


def addresses(answer: bytes) -> list[str]:
    """
    The A records of an answer.
    """
    message = dns.Message()
    message.fromStr(answer)
    return [record.payload.dottedQuad() for record in message.answers if record.type == dns.A]


def test_spooferWhoKnowsPortAndIDIsNotBelieved(startNetd: Any, fakeUpstream: Any) -> None:
    """
    A raw UDP sender told the source port and ID of each upstream query (more than an off-path attacker knows) answers first, in the client's case, in lowercase and in uppercase: none of its answers is accepted, each query gets the real address, and the near misses are counted.
    """
    spoofer = RawSpoofer()
    upstream = fakeUpstream(delay=0.2)
    forged: list[int] = []

    def spoof(source: tuple[str, int], query: bytes) -> None:
        end = query.index(b"\x00", 12) + 1
        for variant in (CLIENT_NAME_WIRE, CLIENT_NAME_WIRE.lower(), CLIENT_NAME_WIRE.upper()):
            spoofer.send(
                answerFor(query[:12] + variant + query[end:], FORGED_ADDRESS), ("127.0.0.1", upstream.port), source
            )
            forged.append(source[1])

    upstream.onUDPQuery = spoof
    netd = startNetd(dnsConfig(upstream.upstream))
    try:
        for _ in range(3):
            query, answer = ask(netd, CLIENT_NAME)
            assert addresses(answer) == [REAL_ADDRESS]
            assert answer[12 : 12 + len(CLIENT_NAME_WIRE)] == CLIENT_NAME_WIRE, "the client's question, case kept"
    finally:
        spoofer.close()
    assert len(forged) >= 9
    assert netd.counter("upstream_case_mismatches", "dns") == 3, "one forgery per query got as far as the case check"
    assert [transport for transport, _, _ in upstream.received].count("tcp") >= 3, "each asked again over TCP"
    assert netd.counter("upstream_case_disabled", "dns") == 0


CLIENT_NAME = "Www.Spoofing-Target.Example.Test"
CLIENT_NAME_WIRE = b"".join(bytes([len(label)]) + label.encode() for label in CLIENT_NAME.split(".")) + b"\x00"


def test_upstreamThatLowercasesIsDetectedOnce(startNetd: Any, fakeUpstream: Any) -> None:
    """
    Against an upstream that lowercases every question, the first query (netd's start-up loop probe) is asked again over TCP, answered, and the upstream logged once as not keeping the case; later queries go over UDP in the client's case; every answer carries the client's question byte for byte.
    """
    upstream = fakeUpstream(lowercase=True)
    netd = startNetd(dnsConfig(upstream.upstream))
    deadline = time.monotonic() + IO_TIMEOUT
    while netd.counter("upstream_answers", "dns") < 1:
        assert time.monotonic() < deadline, "the start-up loop probe was not answered"
        time.sleep(0.05)
    assert [transport for transport, _, _ in upstream.received] == ["udp", "tcp"], "the probe, asked again over TCP"
    for index in range(3):
        name = f"Host{index}.Example.TEST"
        query, answer = ask(netd, name)
        assert addresses(answer) == [REAL_ADDRESS]
        end = query.index(b"\x00", 12) + 5
        assert answer[12:end] == query[12:end]
    assert [transport for transport, _, _ in upstream.received] == ["udp", "tcp", "udp", "udp", "udp"]
    assert upstream.received[-1] == ("udp", upstream.received[-1][1], b"\x05Host2\x07Example\x04TEST\x00"), (
        "the client's case, no 0x20"
    )
    assert netd.log().count("does not keep the letter case") == 1
    assert netd.counter("upstream_case_disabled", "dns") == 1
    assert netd.counter("upstream_case_mismatches", "dns") == 1


def test_queriesLeaveFromManyRandomPorts(startNetd: Any, fakeUpstream: Any) -> None:
    """
    With udp_port_queries = 2, forty queries leave from at least twenty source ports, spread over the kernel's ephemeral range rather than in sequence; before, eight sockets served for the whole life of the service.
    """
    upstream = fakeUpstream()
    netd = startNetd(dnsConfig(upstream.upstream, udp_port_queries=2))
    for index in range(40):
        _, answer = ask(netd, f"p{index}.example.test")
        assert addresses(answer) == [REAL_ADDRESS]
    ports = [port for transport, port, _ in upstream.received if transport == "udp"]
    assert len(set(ports)) >= 20
    low, high = (int(n) for n in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert all(low <= port <= high for port in ports)
    distinct = sorted(set(ports))
    steps = [b - a for a, b in itertools.pairwise(distinct)]
    assert max(distinct) - min(distinct) > (high - low) // 4, "spread over the range"
    assert sum(step == 1 for step in steps) < len(steps) // 2, "not handed out in sequence"
    assert netd.counter("upstream_udp_sockets_opened", "dns") >= 20
