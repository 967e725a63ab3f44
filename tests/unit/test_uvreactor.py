"""
Tests for L{netd.reactors.uv}'s own workings, on real loopback sockets served
by a private uvloop reactor turned one iteration at a time (every wait
bounded): its ports, how its connections read the kernel's idea of their
last activity, and how they end.  What every netd transport promises is
tested on this reactor as on the epoll one, in C{test_reactor}.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionAborted
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from netd.reactors import tcpinfo
from netd.reactors.uv import ClockedStreamConnection, StreamConnection, TCPPort, UvloopReactor
from netd.stream.guard import resetTransport

from .privatereactor import privateClockedUvloopReactor, privateUvloopReactor, spin, turn, uvloopReactor  # noqa: F401
from .test_reactor import Recording, accept, drain, readable, untilEOF


def loggedFailures() -> tuple[list[Failure], Any]:
    """
    Start keeping the failures logged; the second item stops it.
    """
    failures: list[Failure] = []

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure", event.get("failure"))
        if failure is not None:
            failures.append(failure)

    globalLogPublisher.addObserver(observe)
    return failures, lambda: globalLogPublisher.removeObserver(observe)


def idleFor(reactor: UvloopReactor, seconds: float) -> None:
    """
    Turn the reactor, with nothing to do, until C{seconds} have passed on its clock.
    """
    until = reactor.seconds() + seconds
    spin(reactor, lambda: reactor.seconds() >= until)


@pytest.fixture(params=["tcp-info", "clock"])
def idleTimedReactor(request: pytest.FixtureRequest) -> Iterator[UvloopReactor]:
    """
    A private uvloop reactor whose connections read their idle time from
    C{TCP_INFO} (the fast path), then one whose connections keep their own
    clock (the fallback where C{TCP_INFO}'s canary fails).
    """
    yield from (privateUvloopReactor if request.param == "tcp-info" else privateClockedUvloopReactor)()


def test_lastActivityFollowsTrafficEachWay(idleTimedReactor: UvloopReactor) -> None:
    """
    lastActivity stays at the connection's opening while it is idle, moves to the time of each read and of each write (as the kernel reports them, or as the fallback's clock noted them), and never goes backwards.
    """
    reactor = idleTimedReactor
    accepted = accept(reactor)
    transport = accepted.transport
    # The port's own subclass (StreamConnection.acceptedBy) of the one the canary chose.
    assert type(transport).__bases__ == ((StreamConnection if tcpinfo.CANARY.alive() else ClockedStreamConnection),)
    seen = [transport.lastActivity]
    assert abs(reactor.seconds() - seen[0]) < 0.05
    idleFor(reactor, 0.1)
    seen.append(transport.lastActivity)
    assert seen[1] - seen[0] < 0.05, "idle, yet active"

    readAt = reactor.seconds()
    accepted.client.sendall(b"ping")
    spin(reactor, lambda: accepted.protocol.received == b"ping")
    seen.append(transport.lastActivity)
    assert seen[2] >= readAt - 0.02 and seen[2] - seen[1] > 0.05

    idleFor(reactor, 0.1)
    writtenAt = reactor.seconds()
    transport.write(b"pong")
    assert readable(accepted.client) and accepted.client.recv(10) == b"pong"
    seen.append(transport.lastActivity)
    assert seen[3] >= writtenAt - 0.02 and seen[3] - seen[2] > 0.05
    assert seen == sorted(seen)


def test_lastActivityKeptOnceLost(idleTimedReactor: UvloopReactor) -> None:
    """
    Once the connection is lost, lastActivity is the last time known, however long after it is asked, on either path.
    """
    reactor = idleTimedReactor
    accepted = accept(reactor)
    accepted.client.sendall(b"last words")
    spin(reactor, lambda: accepted.protocol.received)
    accepted.transport.loseConnection()
    spin(reactor, lambda: accepted.protocol.lost)
    last = accepted.transport.lastActivity
    assert abs(reactor.seconds() - last) < 0.05
    idleFor(reactor, 0.05)
    assert accepted.transport.lastActivity == last


def test_stopListeningKeepsAcceptedConnections(uvloopReactor: UvloopReactor) -> None:
    """
    Once a port stops listening, new connections are refused, while the ones it accepted before still read and write.
    """
    reactor = uvloopReactor
    factory = Recording()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    client = socket.create_connection(address)
    client.setblocking(False)
    spin(reactor, lambda: factory.made)
    stopped = port.stopListening()
    spin(reactor, lambda: stopped.called)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address)
    accepted = factory.made[0]
    client.sendall(b"still heard")
    spin(reactor, lambda: accepted.received == b"still heard")
    accepted.transport.write(b"still answered")  # type: ignore[union-attr]
    assert drain(reactor, client, 14) == b"still answered"
    assert len(factory.made) == 1
    client.close()


def test_portStoppedBeforeServingNeverAccepts(uvloopReactor: UvloopReactor) -> None:
    """
    A port stopped before the loop ever turned (so before uvloop served it) never accepts, not even a connection already waiting, logs no error, and its socket is closed once.
    """
    reactor = uvloopReactor
    factory = Recording()
    failures, stopLogging = loggedFailures()
    try:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        address = ("127.0.0.1", port.getHost().port)
        waiting = socket.create_connection(address)
        stopped = port.stopListening()
        spin(reactor, lambda: stopped.called)
        bystander = socket.socket()
        for _ in range(5):
            turn(reactor)
    finally:
        stopLogging()
    assert failures == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address)
    assert factory.made == []
    assert readable(waiting)
    with pytest.raises(ConnectionResetError):
        waiting.recv(100)
    assert bystander.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    bystander.close()


def test_getHostOfPortZero(uvloopReactor: UvloopReactor) -> None:
    """
    A port asked for port 0 tells the port the kernel chose, on which it accepts.
    """
    factory = Recording()
    port = uvloopReactor.listenTCP(0, factory, interface="127.0.0.1")
    host = port.getHost()
    assert isinstance(port, TCPPort)
    assert (host.type, host.host) == ("TCP", "127.0.0.1") and host.port != 0
    client = socket.create_connection(("127.0.0.1", host.port))
    spin(uvloopReactor, lambda: factory.made)
    assert factory.made[0].transport.getHost() == host  # type: ignore[union-attr]
    client.close()


def test_adoptStreamPortServesListeningSocket(uvloopReactor: UvloopReactor) -> None:
    """
    A socket already listening (as systemd hands one over) is adopted: uvloop serves its connections, and the port tells its address.
    """
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(5)
    listening.setblocking(False)
    factory = Recording()
    port = uvloopReactor.adoptStreamPort(listening.fileno(), socket.AF_INET, factory)
    listening.close()
    assert isinstance(port, TCPPort)
    address = (port.getHost().host, port.getHost().port)
    client = socket.create_connection(address)
    spin(uvloopReactor, lambda: factory.made)
    assert isinstance(factory.made[0].transport, StreamConnection)
    assert (factory.made[0].transport.getHost().host, factory.made[0].transport.getHost().port) == address
    client.close()


def test_resetTransportResetsThePeer(uvloopReactor: UvloopReactor) -> None:
    """
    netd's reset fault (resetTransport) on a uvloop connection sends what was written, then gives the peer ECONNRESET, and the protocol loses the connection as aborted.
    """
    accepted = accept(uvloopReactor)
    accepted.transport.write(b"before the reset")
    resetTransport(accepted.transport)
    spin(uvloopReactor, lambda: accepted.protocol.lost)
    assert accepted.protocol.lost[0].check(ConnectionAborted)
    assert readable(accepted.client) and accepted.client.recv(100) == b"before the reset"
    assert readable(accepted.client)
    with pytest.raises(ConnectionResetError):
        accepted.client.recv(100)


def test_fileSentThroughFullBuffers(uvloopReactor: UvloopReactor) -> None:
    """
    A pull producer (FileSender) is asked for more each time uvloop's buffer drains, until the whole file is sent through full kernel buffers; it unregisters, and the buffer gets its limits back.
    """
    accepted = accept(uvloopReactor, receiveBuffer=4096)
    transport = accepted.transport
    limits = transport._transport.get_write_buffer_limits()
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    content = bytes(range(256)) * 8192
    sent = FileSender().beginFileTransfer(io.BytesIO(content), transport)
    assert transport._transport.get_write_buffer_limits() == (0, 0)
    assert drain(uvloopReactor, accepted.client, len(content)) == content
    spin(uvloopReactor, lambda: sent.called)
    assert transport.producer is None
    assert transport._transport.get_write_buffer_limits() == limits
    transport.loseConnection()
    assert untilEOF(uvloopReactor, accepted.client) == b""


def test_asyncioErrorsGoToNetdsLog(uvloopReactor: UvloopReactor) -> None:
    """
    What the loop's exception handler is given (by uvloop or asyncio) is logged through Twisted's logger, with the message, the context and the exception's failure.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        try:
            raise OSError(24, "Too many open files")
        except OSError as error:
            uvloopReactor.asyncioLoop.call_exception_handler({"message": "accept failed", "exception": error, "fd": 7})
        uvloopReactor.asyncioLoop.call_exception_handler({"message": "no exception here"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [event for event in events if event.get("log_namespace") == "netd.reactors.uv"]
    assert [event["message"] for event in ours] == ["accept failed", "no exception here"]
    assert ours[0]["log_failure"].check(OSError) and "fd=7" in ours[0]["details"]
    assert "log_failure" not in ours[1] and ours[1]["log_level"].name == "error"


def test_acceptOnAFullTableIsReported(uvloopReactor: UvloopReactor, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Once the open connections are half the open-file limit, a connection accepted when no descriptor is left (the probe after it fails with EMFILE) is reported to the service; below that half, nothing is probed.
    """
    import errno
    import os

    from .test_reactor import DescriptorRecorder

    factory = DescriptorRecorder()
    port = uvloopReactor.listenTCP(0, factory, interface="127.0.0.1")
    assert isinstance(port, TCPPort)
    probes: list[int] = []

    def exhausted(fd: int) -> int:
        probes.append(fd)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "dup", exhausted)
    try:
        port.probeFrom = 2
        first = socket.create_connection(("127.0.0.1", port.getHost().port))
        spin(uvloopReactor, lambda: len(uvloopReactor.streams) == 1)
        assert probes == [] and factory.errors == []
        second = socket.create_connection(("127.0.0.1", port.getHost().port))
        spin(uvloopReactor, lambda: len(uvloopReactor.streams) == 2)
        assert probes == [port.fileno()]
        assert [e.errno for e in factory.errors] == [errno.EMFILE]
        assert len(uvloopReactor.streams) == 2
    finally:
        monkeypatch.undo()
        first.close()
        second.close()
        port.stopListening()
