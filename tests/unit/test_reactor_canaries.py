"""
Tests for the start-up checks of the private names netd's reactors rest on
(L{netd.canary}): each canary, made to fail by taking a private name
away or making it misbehave, warns once and has netd take the public path,
which then serves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import base, tcp
from twisted.internet import udp as twistedUDP
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher

from netd.canary import Canary
from netd.config.listen import ListenAddress
from netd.reactors import accepting, epoll, tcpinfo, udp, uv, uvclient
from netd.reactors.uv import ClockedStreamConnection

from .privatereactor import privateUvloopReactor, spin
from .test_reactor import accept


class Echo(DatagramProtocol):
    """
    Answers each datagram with itself, through Twisted's C{write}.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)  # type: ignore[union-attr]


@pytest.fixture
def warnings() -> Iterator[list[dict[str, Any]]]:
    """
    The events logged with C{event="private_api_fallback"} while the test runs.
    """
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("event") == "private_api_fallback":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def fresh(monkeypatch: pytest.MonkeyPatch, canary: Canary) -> Canary:
    """
    C{canary} as at start-up, before it was asked (restored after the test).
    """
    monkeypatch.setattr(canary, "_alive", None)
    return canary


def breakUvloop(patch: pytest.MonkeyPatch) -> None:
    patch.setitem(sys.modules, "uvloop", None)


def breakAdoption(patch: pytest.MonkeyPatch) -> None:
    patch.delattr(tcp.Port, "_fromListeningDescriptor")


def breakConnector(patch: pytest.MonkeyPatch) -> None:
    patch.delattr(tcp.Connector, "_makeTransport")


def breakConnectorHook(patch: pytest.MonkeyPatch) -> None:
    def connect(self: Any) -> None:
        self.transport = self.makeTransportSomehowElse()

    patch.setattr(base.BaseConnector, "connect", connect)


def breakPollIn(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(EPollReactor, "_POLL_IN", 0)


def breakAccept(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(socket.socket, "_accept", lambda self: (None, None))


def breakTCPInfo(patch: pytest.MonkeyPatch) -> None:
    patch.delattr(socket, "TCP_INFO")


def breakTCPInfoOffset(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(tcpinfo, "TIMES_OFFSET", 8)


def breakBindSocket(patch: pytest.MonkeyPatch) -> None:
    patch.delattr(twistedUDP.Port, "_bindSocket")


def breakBatchLayout(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(udp, "_LENGTH_WORD", udp._LENGTH_WORD + 1)


class DeferredWrites:
    """
    A uvloop transport whose C{write} waits for the loop's next turn, as
    uvloop's did before 0.23.
    """

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop

    def write(self, data: bytes) -> None:
        self._loop.call_soon(self._transport.write, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def breakUvloopWrites(patch: pytest.MonkeyPatch) -> None:
    import uvloop

    newLoop = uvloop.new_event_loop

    def deferringLoop() -> Any:
        loop = newLoop()
        createServer = loop.create_server

        def create_server(protocolFactory: Callable[[], Any], **kwargs: Any) -> Any:
            def wrapped() -> Any:
                protocol = protocolFactory()
                made = protocol.connection_made
                protocol.connection_made = lambda transport: made(DeferredWrites(transport, loop))
                return protocol

            return createServer(wrapped, **kwargs)

        loop.create_server = create_server  # type: ignore[method-assign]
        return loop

    patch.setattr(uvloop, "new_event_loop", deferringLoop)


BREAKAGES: list[tuple[Canary, Callable[[pytest.MonkeyPatch], None]]] = [
    (uv.CANARY, breakUvloopWrites),
    (uv.CANARY, breakUvloop),
    (uv.CANARY, breakAdoption),
    (uvclient.CANARY, breakConnector),
    (uvclient.CANARY, breakConnectorHook),
    (epoll.CANARY, breakAdoption),
    (epoll.CANARY, breakConnector),
    (epoll.CANARY, breakPollIn),
    (accepting.CANARY, breakAccept),
    (tcpinfo.CANARY, breakTCPInfo),
    (tcpinfo.CANARY, breakTCPInfoOffset),
    (udp.CANARY, breakBindSocket),
    (udp.CANARY, breakBatchLayout),
]


def test_everyCanaryLivesAsShipped(monkeypatch: pytest.MonkeyPatch, warnings: list[dict[str, Any]]) -> None:
    """
    With the dependencies installed as they are, every canary passes and nothing is logged.
    """
    for canary in {canary for canary, _ in BREAKAGES}:
        assert fresh(monkeypatch, canary).alive(), canary.name
    assert warnings == []


@pytest.mark.parametrize(("canary", "breakage"), BREAKAGES, ids=[f"{c.name}-{b.__name__}" for c, b in BREAKAGES])
def test_brokenPrivateFailsTheCanaryWithOneWarning(
    monkeypatch: pytest.MonkeyPatch,
    warnings: list[dict[str, Any]],
    canary: Canary,
    breakage: Callable[[pytest.MonkeyPatch], None],
) -> None:
    """
    A private name taken away, or made to misbehave, fails its canary: one warning names the check and the fallback, and asking again logs nothing more.
    """
    fresh(monkeypatch, canary)
    with pytest.MonkeyPatch.context() as patch:
        breakage(patch)
        assert not canary.alive()
        assert not canary.alive()
    assert len(warnings) == 1
    assert warnings[0]["name"] == canary.name and warnings[0]["fallback"] == canary.fallback
    assert canary.name in warnings[0]["log_format"] or "{name}" in warnings[0]["log_format"]


def test_failedTCPInfoCanaryServesWithTheClock(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With TCP_INFO's canary failed, the uvloop reactor's connections keep their own activity clock, and echo.
    """
    fresh(monkeypatch, tcpinfo.CANARY)
    breakTCPInfoOffset(monkeypatch)
    for reactor in privateUvloopReactor():
        accepted = accept(reactor)
        assert type(accepted.transport).__bases__ == (ClockedStreamConnection,)
        accepted.client.sendall(b"ping")
        spin(reactor, lambda accepted=accepted: accepted.protocol.received == b"ping")
        assert abs(accepted.transport.lastActivity - reactor.seconds()) < 0.05
        accepted.client.close()


def test_failedAcceptingCanaryListensWithTwistedsPort(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With the accepting port's canary failed, Twisted's reactor is used as it is: its own TCP port.
    """
    fresh(monkeypatch, accepting.CANARY)
    breakAccept(monkeypatch)
    twisted = EPollReactor()
    try:
        assert accepting.acceptGuarded(twisted) is twisted
    finally:
        twisted._poller.close()


def test_failedBatchingCanaryListensWithTwistedsUDPPort(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With the batching port's canary failed, a udp: address on netd's reactor binds Twisted's udp.Port, which answers.
    """
    from .privatereactor import privateReactor
    from .test_udp import collect

    fresh(monkeypatch, udp.CANARY)
    breakBatchLayout(monkeypatch)
    for reactor in privateReactor():
        port = ListenAddress.fromConfig("udp:0:interface=127.0.0.1").listenDatagram(reactor, Echo())
        assert type(port) is twistedUDP.Port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            client.sendto(b"hello", ("127.0.0.1", port.getHost().port))
            assert collect(reactor, client, 1) == [b"hello"]
        port.stopListening()


BREAK_IN_PROCESS = {
    "uvloop": "import sys; sys.modules['uvloop'] = None",
    "epoll": "from twisted.internet import tcp; del tcp.Connector._makeTransport",
}


@pytest.mark.parametrize(
    ("chosen", "broken", "expected", "reactorType"),
    [
        ("uvloop", "uvloop", "netd", "NetdReactor"),
        ("netd", "epoll", "twisted", "EPollReactor"),
        ("uvloop", "epoll", "uvloop", "UvloopReactor"),
    ],
)
def test_installFallsBack(chosen: str, broken: str, expected: str, reactorType: str) -> None:
    """
    In a fresh process, a failed reactor canary has installReactor install the next reactor (uvloop to netd's epoll one, that to Twisted's), with one warning; a canary that is not asked does not matter.
    """
    script = (
        f"{BREAK_IN_PROCESS[broken]}\n"
        "from twisted.logger import globalLogPublisher, formatEvent\n"
        "globalLogPublisher.addObserver(lambda e: e.get('event') == 'private_api_fallback' and print('WARN', formatEvent(e)))\n"
        "from netd.reactors.choice import installReactor\n"
        "print(installReactor())\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NETD_REACTOR"} | {"NETD_REACTOR": chosen}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2:] == [expected, reactorType]
    assert len([line for line in lines if line.startswith("WARN")]) == (0 if expected == chosen else 1)
