"""
A C{tcp:0} (or C{tcp6:0}) and a C{udp:0} of one service on the same interface
get one port number, as a DNS server's TCP and UDP listeners do; on a fake
reactor, with binds that fail on purpose.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs

from netd.config.listen import ListenAddress
from netd.config.spec import parseConfig
from netd.daemon.service import SHARED_PORT_ATTEMPTS, BoundPort, NetService, ServiceStartError
from netd.registry import discoverPlugins
from netd.testing.memory import UDPMemoryReactorClock, failureOf, resultOf

TCP = "tcp:0:interface=127.0.0.1"
UDP = "udp:0:interface=127.0.0.1"


class TakenUDPReactor(UDPMemoryReactorClock):
    """
    A fake reactor on which binding UDP to a port of C{taken} (or to any given
    port, when C{taken} is L{None}) fails with C{error}, as when another
    process holds it.
    """

    def __init__(self, taken: set[int] | None, error: int = errno.EADDRINUSE) -> None:
        super().__init__()
        self.taken = taken
        self.error = error
        self.udpTries: list[int] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        self.udpTries.append(port)
        if port != 0 and (self.taken is None or port in self.taken):
            raise CannotListenError(interface, port, OSError(self.error, "refused on purpose"))
        return super().listenUDP(port, protocol, interface, maxPacketSize)


def service(listen: list[str], reactor: Any) -> NetService:
    """
    An echo service listening on C{listen}, built on C{reactor}.
    """
    config = parseConfig(
        {"daemon": {"admin": False}, "services": [{"name": "echo", "plugin": "echo", "listen": listen}]},
        "test.toml",
        discoverPlugins(),
    )
    return NetService(config.services[0], reactor, shutdownTimeout=0)


def bound(ports: list[BoundPort]) -> list[tuple[str, object]]:
    """
    Each bound port as (listen string, port number), in the reported order.
    """
    return [(p.address.text, p.describe().get("port")) for p in ports]


def test_tcpAndUdpPortZeroShareOnePort() -> None:
    """
    tcp:0 and udp:0 on the same interface are bound to the same port number, the one picked for the first.
    """
    ports = resultOf(Deferred.fromCoroutine(service([TCP, UDP], UDPMemoryReactorClock()).listen()))
    assert bound(ports) == [(TCP, 30000), (UDP, 30000)]


def test_tcpBoundFirstEvenWhenUdpIsListedFirst() -> None:
    """
    With udp:0 listed first, TCP is still bound first (the system's pick for it skips numbers held by closing connections) and UDP gets its number; the report keeps the config's order.
    """
    reactor = UDPMemoryReactorClock()
    ports = resultOf(Deferred.fromCoroutine(service([UDP, "unix:/tmp/netd-h5-unused.sock", TCP], reactor).listen()))
    assert [(text, port) for text, port in bound(ports) if port is not None] == [(UDP, 30000), (TCP, 30000)]
    assert [p.address.text for p in ports] == [UDP, "unix:/tmp/netd-h5-unused.sock", TCP]
    assert reactor.tcpServers[0][0] == 0


@pytest.mark.parametrize(
    "listen",
    [
        ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.2"],
        ["tcp:7007:interface=127.0.0.1", UDP],
        ["haproxy:tcp:0:interface=127.0.0.1", UDP],
        ["tcp6:0:interface=\\:\\:1", UDP],
    ],
)
def test_unpairedAddressesPickTheirOwnPorts(listen: list[str]) -> None:
    """
    A different interface, a fixed port or a PROXY-protocol listener is not paired: each address binds as written.
    """
    reactor = UDPMemoryReactorClock()
    resultOf(Deferred.fromCoroutine(service(listen, reactor).listen()))
    assert list(reactor.udpPorts) == [20000]
    assert reactor.tcpServers[0][0] == (7007 if "7007" in listen[0] else 0)


def test_ipv6PairAndEveryOtherAddressPairedInOrder() -> None:
    """
    tcp6:0 pairs with udp:0 on the same IPv6 address written unescaped, and two tcp:0 pair with two udp:0 in order.
    """
    listen = ["tcp6:0:interface=\\:\\:1", TCP, "tcp:0", UDP, "udp:0:interface=::1", "udp:0"]
    ports = resultOf(Deferred.fromCoroutine(service(listen, UDPMemoryReactorClock()).listen()))
    assert bound(ports) == [
        (listen[0], 30000),
        (TCP, 30001),
        ("tcp:0", 30002),
        (UDP, 30001),
        (listen[4], 30000),
        ("udp:0", 30002),
    ]


def test_takenPortRetriedOnANewPair() -> None:
    """
    When the port picked for TCP is taken for UDP, the TCP port is closed and the pair is bound again on a new number.
    """
    reactor = TakenUDPReactor(taken={30000})
    with capturedLogs() as events:
        ports = resultOf(Deferred.fromCoroutine(service([TCP, UDP], reactor).listen()))
    assert bound(ports) == [(TCP, 30001), (UDP, 30001)]
    assert [p.listening for p in reactor.tcpPorts] == [False, True]
    assert reactor.udpTries == [30000, 30001]
    retried = [e for e in events if e.get("port") == 30000]
    assert [(e["listen"], e["other"]) for e in retried] == [(UDP, TCP)]
    listening = [e["listen"] for e in events if e.get("log_format", "").startswith("listening on")]
    assert listening == [TCP, UDP]


def test_alwaysTakenFailsAfterBoundedTries() -> None:
    """
    A pair whose second bind keeps finding its port taken fails after SHARED_PORT_ATTEMPTS tries, naming both addresses, with nothing left listening.
    """
    reactor = TakenUDPReactor(taken=None)
    netService = service([TCP, UDP], reactor)
    failure = failureOf(Deferred.fromCoroutine(netService.listen()))
    assert failure.check(ServiceStartError)
    message = str(failure.value)
    assert "'echo'" in message and repr(TCP) in message and repr(UDP) in message
    assert f"{SHARED_PORT_ATTEMPTS} times" in message
    assert isinstance(failure.value.__cause__, CannotListenError)
    assert len(reactor.udpTries) == SHARED_PORT_ATTEMPTS
    assert len(reactor.tcpPorts) == SHARED_PORT_ATTEMPTS
    assert not any(p.listening for p in reactor.tcpPorts)
    assert netService.ports == []


def test_otherBindErrorNotRetried() -> None:
    """
    A second bind failing for another reason than a taken port fails the start at once, the first port closed.
    """
    reactor = TakenUDPReactor(taken=None, error=errno.EACCES)
    netService = service([TCP, UDP], reactor)
    failure = failureOf(Deferred.fromCoroutine(netService.listen()))
    assert f"cannot listen on {UDP!r}" in str(failure.value)
    assert reactor.udpTries == [30000]
    assert [p.listening for p in reactor.tcpPorts] == [False]
    assert netService.ports == []


@pytest.mark.parametrize(
    ("text", "port", "rewritten"),
    [
        ("tcp:0:interface=127.0.0.1", 5353, "tcp:5353:interface=127.0.0.1"),
        ("tcp:port=0:interface=127.0.0.1:backlog=5", 5353, "tcp:port=5353:interface=127.0.0.1:backlog=5"),
        ("tcp6:0:interface=\\:\\:1", 5353, "tcp6:5353:interface=\\:\\:1"),
        ("udp:0:interface=::1", 5353, "udp:5353:interface=::1"),
        ("udp:0", 5353, "udp:5353"),
    ],
)
def test_withPortKeepsTheRestAsWritten(text: str, port: int, rewritten: str) -> None:
    """
    A port-0 listen string moved to a given port keeps its other arguments and escapes, and still parses.
    """
    moved = ListenAddress.fromConfig(text).withPort(port)
    assert moved.text == rewritten
    assert ListenAddress.fromConfig(rewritten) == moved


@pytest.mark.parametrize(
    ("text", "interface"),
    [
        ("tcp:0", "0.0.0.0"),
        ("udp:0", "0.0.0.0"),
        ("tcp6:0", "::"),
        ("tcp6:0:interface=\\:\\:1", "::1"),
        ("udp:0:interface=\\:\\:1", "::1"),
        ("tcp:7007", None),
        ("udp:53", None),
        ("unix:/tmp/netd.sock", None),
        ("haproxy:tcp:0", None),
    ],
)
def test_portZeroInterface(text: str, interface: str | None) -> None:
    """
    Only tcp:0, tcp6:0 and udp:0 have an interface to pair on, with the wildcard address of their family when none is named.
    """
    found = ListenAddress.fromConfig(text).portZeroInterface()
    assert (None if found is None else str(found)) == interface
