"""
The wrapper nearest the socket (L{netd.stream.guard.ConnectionLimiter} and
L{netd.stream.guard.GuardedConnection}): connection limit, idle timeout, flow
control, half-close, byte counts and the shutdown drain, on in-memory
transports with a fake clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from netd import logs
from netd.interfaces import IFrameConnection, IFrameReceiver, IStreamHandler
from netd.metrics import Counters
from netd.stream.guard import ConnectionLimiter
from netd.testing.memory import PEER, MemoryStreamConnection, connect, makeStreamStack


@implementer(IFrameReceiver)
class Recorder:
    """
    A receiver that keeps every frame and its connection.
    """

    connection: IFrameConnection

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.lost: list[Failure] = []

    def connectionMade(self, connection: IFrameConnection) -> None:
        self.connection = connection

    def frameReceived(self, frame: bytes) -> None:
        self.frames.append(frame)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@implementer(IStreamHandler)
class RecordingHandler:
    """
    A handler whose receivers are L{Recorder}s, kept in order of connection.
    """

    def __init__(self) -> None:
        self.receivers: list[Recorder] = []

    def newConnection(self) -> Recorder:
        receiver = Recorder()
        self.receivers.append(receiver)
        return receiver


@implementer(IPushProducer)
class Producer:
    """
    A push producer standing in for an inner protocol that paces itself (TLS, a streaming plugin).
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class CallRecordingTransport(StringTransport):
    """
    A L{StringTransport} that records the order of producer and close calls.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.calls: list[str] = []

    def unregisterProducer(self) -> None:
        self.calls.append("unregisterProducer")
        super().unregisterProducer()

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")
        super().loseConnection()


def makeStack(
    framing: str = "raw", *, maxConnections: int = 1024, idleTimeout: float = 0
) -> tuple[ConnectionLimiter, RecordingHandler, Counters, Clock]:
    """
    A core stream stack around a L{RecordingHandler}, with its counters and clock.
    """
    handler = RecordingHandler()
    counters = Counters()
    clock = Clock()
    limiter = makeStreamStack(
        handler, framing, maxConnections=maxConnections, idleTimeout=idleTimeout, clock=clock, counters=counters
    )
    return limiter, handler, counters, clock


def accept(limiter: ConnectionLimiter) -> MemoryStreamConnection:
    """
    A connection the stack must accept.
    """
    connection = connect(limiter)
    assert connection is not None
    return connection


def close(connection: MemoryStreamConnection) -> None:
    """
    Close from netd's side and deliver the connectionLost.
    """
    connection.protocol.loseConnection()
    assert connection.finishClose()


def levelEvents(events: Sequence[LogEvent], level: LogLevel) -> list[LogEvent]:
    """
    The events of one level.
    """
    return [event for event in events if event["log_level"] == level]


def test_maxConnectionsRefusesTheExcess() -> None:
    """
    Past max_connections a connection is refused before it reaches the plugin and counted as connections_refused.
    """
    limiter, handler, counters, _ = makeStack(maxConnections=2)
    accept(limiter)
    accept(limiter)
    assert connect(limiter) is None
    assert connect(limiter) is None
    assert counters["connections_accepted"] == 2
    assert counters["connections_refused"] == 2
    assert len(handler.receivers) == 2
    assert limiter.openConnections() == 2


def test_refusingWarnsOnceNotPerRefusal() -> None:
    """
    Reaching max_connections logs one warning naming the limit, however many connections are then refused.
    """
    limiter, _, _, _ = makeStack(maxConnections=1)
    accept(limiter)
    with capturedLogs() as events:
        for _ in range(5):
            assert connect(limiter) is None
    [warning] = levelEvents(events, LogLevel.warn)
    assert warning["limit"] == 1


def test_acceptsAgainOnceAConnectionCloses() -> None:
    """
    After a connection closes, a stack that was refusing accepts again and logs that it does.
    """
    limiter, handler, counters, _ = makeStack(maxConnections=1)
    first = accept(limiter)
    assert connect(limiter) is None
    with capturedLogs() as events:
        first.peerClosed()
    assert len(levelEvents(events, LogLevel.info)) == 1
    assert connect(limiter) is not None
    assert counters["connections_accepted"] == 2
    assert counters["connections_refused"] == 1
    assert len(handler.receivers) == 2


def test_newRefusalEpisodeWarnsAgain() -> None:
    """
    Once the stack has accepted again, reaching the limit again logs a new warning.
    """
    limiter, _, _, _ = makeStack(maxConnections=1)
    first = accept(limiter)
    with capturedLogs() as events:
        assert connect(limiter) is None
        first.peerClosed()
        accept(limiter)
        assert connect(limiter) is None
        assert connect(limiter) is None
    assert len(levelEvents(events, LogLevel.warn)) == 2


def test_idleTimeoutAbortsAfterExactlyTimeout() -> None:
    """
    A silent connection is aborted after exactly idle_timeout seconds, not before, counted and logged at info.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    clock.advance(10 - 0.1)
    assert not connection.transport.disconnecting
    assert counters["idle_timeouts"] == 0
    with capturedLogs() as events:
        clock.advance(0.1)
    assert connection.transport.disconnected
    assert counters["idle_timeouts"] == 1
    [event] = levelEvents(events, LogLevel.info)
    assert event["timeout"] == 10
    assert event["peer"] == "127.0.0.1:40000"
    assert connection.finishClose()
    assert clock.getDelayedCalls() == []


def _traffic(direction: str, connection: MemoryStreamConnection, receiver: Recorder) -> None:
    """
    Move bytes one way through a connection.
    """
    if direction == "read":
        connection.receive(b"in")
    elif direction == "write":
        receiver.connection.sendFrame(b"out")
    else:
        connection.protocol.writeSequence([b"o", b"ut"])


@pytest.mark.parametrize("direction", ["read", "write", "writeSequence"])
def test_trafficResetsIdleTimer(direction: str) -> None:
    """
    Traffic in either direction restarts the idle timeout from zero.
    """
    limiter, handler, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    clock.advance(6)
    _traffic(direction, connection, handler.receivers[0])
    clock.advance(10 - 0.1)
    assert not connection.transport.disconnecting
    clock.advance(0.1)
    assert connection.transport.disconnected
    assert counters["idle_timeouts"] == 1


@pytest.mark.parametrize("closer", ["netd", "peer"])
def test_closeLeavesNoDelayedCalls(closer: str) -> None:
    """
    A connection closed before its idle timeout (by netd or the peer) leaves no delayed call behind and is not counted idle.
    """
    limiter, _, counters, clock = makeStack(idleTimeout=10)
    connection = accept(limiter)
    assert len(clock.getDelayedCalls()) == 1
    if closer == "netd":
        close(connection)
    else:
        connection.peerClosed()
    assert clock.getDelayedCalls() == []
    clock.advance(20)
    assert counters["idle_timeouts"] == 0


def test_idleTimeoutZeroSchedulesNothing() -> None:
    """
    With idle_timeout 0 no timer is scheduled and a silent connection stays open indefinitely.
    """
    limiter, handler, counters, clock = makeStack(idleTimeout=0)
    connection = accept(limiter)
    connection.receive(b"x")
    handler.receivers[0].connection.sendFrame(b"y")
    assert clock.getDelayedCalls() == []
    clock.advance(86400 * 365)
    assert not connection.transport.disconnecting
    assert counters["idle_timeouts"] == 0


def test_transportPacesItself() -> None:
    """
    On connect the transport is registered as its own streaming producer.
    """
    limiter, _, _, _ = makeStack()
    connection = accept(limiter)
    assert connection.transport.producer is connection.transport
    assert connection.transport.streaming is True


def test_loseConnectionUnregistersSelfPacingFirst() -> None:
    """
    Closing unregisters the self-pacing producer before asking the transport to close, so a paused transport still closes.
    """
    limiter, handler, _, _ = makeStack()
    transport = CallRecordingTransport()
    protocol = limiter.buildProtocol(PEER)
    assert protocol is not None
    protocol.makeConnection(transport)
    handler.receivers[0].connection.loseConnection()
    assert transport.calls == ["unregisterProducer", "loseConnection"]
    assert transport.producer is None
    assert transport.disconnecting


def test_innerProducerReplacesSelfPacing() -> None:
    """
    An inner protocol registering its own producer replaces the self-pacing without a RuntimeError, and closing leaves it registered.
    """
    limiter, _, _, _ = makeStack()
    connection = accept(limiter)
    producer = Producer()
    connection.protocol.registerProducer(producer, True)
    assert connection.transport.producer is producer
    assert connection.transport.streaming is True
    connection.protocol.loseConnection()
    assert connection.transport.disconnecting
    assert connection.transport.producer is producer


def test_guardIsHalfCloseable() -> None:
    """
    The socket-side protocol provides IHalfCloseableProtocol once connected, so a reactor reports a peer's EOF to it.
    """
    limiter, _, _, _ = makeStack()
    connection = accept(limiter)
    assert IHalfCloseableProtocol.providedBy(connection.protocol)


def test_peerEOFClosesGracefullyAfterPendingData() -> None:
    """
    A peer's EOF (readConnectionLost) closes the connection gracefully, after what was already written, without aborting.
    """
    limiter, handler, _, _ = makeStack()
    connection = accept(limiter)
    connection.receive(b"question")
    handler.receivers[0].connection.sendFrame(b"answer")
    connection.protocol.readConnectionLost()
    assert connection.transport.value() == b"answer"
    assert connection.transport.disconnecting
    assert not connection.transport.disconnected
    assert connection.transport.producer is None


def test_writeConnectionLostKeepsReading() -> None:
    """
    Our sending side being shut (writeConnectionLost) leaves the connection open for reading.
    """
    limiter, handler, _, _ = makeStack()
    connection = accept(limiter)
    connection.protocol.writeConnectionLost()
    connection.receive(b"still here")
    assert not connection.transport.disconnecting
    assert handler.receivers[0].frames == [b"still here"]


@pytest.mark.parametrize(
    "framing, partial, frame, sent",
    [
        ("raw", (b"\x00\x00", b"\x00"), b"abc", b"abc"),
        ("line", (b"ab", b"c"), b"abc", b"abc\n"),
        ("netstring", (b"10", b":"), b"abc", b"3:abc,"),
        ("u16", (b"\x00\x09", b"\x00"), b"abc", b"\x00\x03abc"),
    ],
)
def test_bytesCounted(framing: str, partial: tuple[bytes, bytes], frame: bytes, sent: bytes) -> None:
    """
    bytes_received counts every byte read and bytes_sent every byte written, framing included, through write and writeSequence.
    """
    limiter, handler, counters, _ = makeStack(framing)
    connection = accept(limiter)
    for data in partial:
        connection.receive(data)
    handler.receivers[0].connection.sendFrame(frame)
    assert connection.transport.value() == sent
    assert counters.snapshot()["bytes_received"] == 3
    assert counters.snapshot()["bytes_sent"] == len(sent)


def test_whenDrainedWithNoConnectionsFiresAtOnce() -> None:
    """
    whenDrained fires immediately when no connection is open.
    """
    limiter, _, _, _ = makeStack()
    fired: list[object] = []
    limiter.whenDrained().addCallback(fired.append)
    assert fired == [None]


def test_whenDrainedFiresWhenTheLastConnectionCloses() -> None:
    """
    whenDrained waits while any connection is open and fires when the last one closes.
    """
    limiter, _, _, _ = makeStack()
    first = accept(limiter)
    second = accept(limiter)
    fired: list[object] = []
    limiter.whenDrained().addCallback(fired.append)
    close(first)
    assert fired == []
    second.peerClosed()
    assert fired == [None]
    assert limiter.openConnections() == 0


def test_abortAllAbortsEveryConnection() -> None:
    """
    abortAll aborts every open connection at once, without a graceful close.
    """
    limiter, _, _, _ = makeStack()
    connections = [accept(limiter) for _ in range(3)]
    limiter.abortAll()
    assert [c.transport.disconnected for c in connections] == [True, True, True]
    for connection in connections:
        assert connection.finishClose()
    assert limiter.openConnections() == 0


def _closedEvent(events: Sequence[LogEvent]) -> LogEvent:
    """
    The one connection_closed debug event.
    """
    [event] = [e for e in events if e.get("event") == "connection_closed"]
    assert event["log_level"] == LogLevel.debug
    return event


def test_debugLinesCarryPeerBytesDurationAndHowItEnded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With debug on, a connection logs an opened line with its peer and a closed one with bytes each way, duration and ending.
    """
    monkeypatch.setattr(logs, "debugEnabled", True)
    limiter, _, _, clock = makeStack()
    with capturedLogs() as events:
        connection = accept(limiter)
        connection.receive(b"hello")
        connection.protocol.write(b"abc")
        connection.protocol.writeSequence([b"de", b"f"])
        clock.advance(2.5)
        connection.peerClosed()
    [opened] = [e for e in events if e.get("event") == "connection_opened"]
    assert (opened["peer"], opened["log_level"]) == ("127.0.0.1:40000", LogLevel.debug)
    closed = _closedEvent(events)
    assert {k: closed[k] for k in ("peer", "bytes_in", "bytes_out", "duration", "ended")} == {
        "peer": "127.0.0.1:40000",
        "bytes_in": 5,
        "bytes_out": 6,
        "duration": 2.5,
        "ended": "closed by peer",
    }


@pytest.mark.parametrize(
    ("how", "ended"),
    [
        ("halfClose", "closed by peer"),
        ("netdCloses", "closed by netd"),
        ("idle", "idle timeout"),
        ("abortAll", "aborted"),
    ],
)
def test_debugClosedLineSaysHowTheConnectionEnded(monkeypatch: pytest.MonkeyPatch, how: str, ended: str) -> None:
    """
    The closed line's ended field tells a peer's close, netd's close, an idle timeout and an abort apart.
    """
    monkeypatch.setattr(logs, "debugEnabled", True)
    limiter, _, _, clock = makeStack(idleTimeout=1)
    connection = accept(limiter)
    with capturedLogs() as events:
        if how == "halfClose":
            connection.protocol.readConnectionLost()
        elif how == "netdCloses":
            connection.protocol.loseConnection()
        elif how == "idle":
            clock.advance(1)
        else:
            limiter.abortAll()
        assert connection.finishClose()
    assert _closedEvent(events)["ended"] == ended


def test_noPerConnectionEventsWithDebugOff(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With debug off, opening, using and closing a connection builds no log event at all.
    """
    monkeypatch.setattr(logs, "debugEnabled", False)
    limiter, _, _, _ = makeStack()
    with capturedLogs() as events:
        connection = accept(limiter)
        connection.receive(b"hello")
        connection.peerClosed()
    assert events == []


def evictingStack(
    framing: str = "raw", *, maxConnections: int, idleTimeout: float = 0, minIdleTimeout: float | None = None
) -> tuple[ConnectionLimiter, RecordingHandler, Counters, Clock]:
    """
    A core stream stack whose limiter evicts at the limit and shrinks its idle timeout under pressure, as a service's does.
    """
    limiter, handler, counters, clock = makeStack(framing)
    evicting = ConnectionLimiter(
        limiter.wrappedFactory,
        maxConnections=maxConnections,
        idleTimeout=idleTimeout,
        clock=clock,
        counters=counters,
        log=limiter.log,
        evict=True,
        minIdleTimeout=minIdleTimeout,
    )
    return evicting, handler, counters, clock


def test_atTheLimitTheStalestConnectionMakesRoom() -> None:
    """
    At max_connections with eviction on, a new connection is accepted and the connection idle longest is aborted and counted as connections_evicted.
    """
    limiter, handler, counters, clock = evictingStack(maxConnections=3)
    first = accept(limiter)
    clock.advance(1)
    second = accept(limiter)
    clock.advance(1)
    third = accept(limiter)
    clock.advance(1)
    for connection in (first, second, third):
        connection.receive(b"hello")
        clock.advance(1)
    second.receive(b"again")  # first is now the stalest
    clock.advance(1)
    newcomer = connect(limiter)
    assert newcomer is not None
    assert first.finishClose()
    assert counters["connections_evicted"] == 1
    assert counters["connections_refused"] == 0
    assert limiter.openConnections() == 3
    assert second.transport.connected and third.transport.connected


def test_silentConnectionsAreEvictedBeforeTalkingOnes() -> None:
    """
    A connection that never sent a byte is evicted before one that sent bytes earlier than it opened: progress ranks before age.
    """
    limiter, _, counters, clock = evictingStack(maxConnections=2)
    talker = accept(limiter)
    talker.receive(b"request")
    clock.advance(10)
    silent = accept(limiter)
    clock.advance(10)
    assert connect(limiter) is not None
    assert silent.finishClose()
    assert not talker.finishClose()
    assert counters["connections_evicted"] == 1


def test_evictionsAreLoggedAtABoundedRate() -> None:
    """
    Many evictions in a burst log one warning, and the next one after the interval says how many were not logged.
    """
    limiter, _, counters, clock = evictingStack(maxConnections=2)
    accept(limiter)
    accept(limiter)
    with capturedLogs() as events:
        for _ in range(50):
            clock.advance(0.01)
            assert connect(limiter) is not None
        clock.advance(10)
        assert connect(limiter) is not None
    warnings = levelEvents(events, LogLevel.warn)
    assert counters["connections_evicted"] == 51
    assert len(warnings) == 2
    assert warnings[1]["suppressed"] == 49


def test_withoutEvictionTheLimitRefuses() -> None:
    """
    A limiter built without eviction refuses past the limit (netd's services evict unless evict_idle = false).
    """
    limiter, _, counters, _ = makeStack(maxConnections=1)
    accept(limiter)
    assert connect(limiter) is None
    assert counters["connections_evicted"] == 0


def test_idleTimeoutShrinksUnderPressure() -> None:
    """
    From 75% of max_connections up the idle timeout shrinks, moving the deadlines of connections already open, to min_idle_timeout at the limit.
    """
    limiter, _, counters, clock = evictingStack(maxConnections=8, idleTimeout=100, minIdleTimeout=10)
    connections = [accept(limiter) for _ in range(5)]
    assert limiter.idle is not None and limiter.idle.timeout == 100
    clock.advance(5)
    connections += [accept(limiter) for _ in range(3)]
    assert limiter.idle.timeout == 10
    clock.advance(5.5)
    assert counters["idle_timeouts"] == 5
    assert all(c.finishClose() for c in connections[:5])
    assert limiter.idle.timeout > 10
    clock.advance(100)
    assert counters["idle_timeouts"] == 8


def test_outOfDescriptorsIsCountedAndEvicts() -> None:
    """
    A port out of descriptors tells its service's limiter (through a PROXY header's wrapper too), which counts it, logs it at a bounded rate and evicts the stalest connection.
    """
    import errno

    from netd.reactors.rlimits import reportOutOfDescriptors
    from netd.stream.proxyheader import ProxyHeaderFactory

    limiter, _, counters, clock = evictingStack(maxConnections=10)
    stalest = accept(limiter)
    clock.advance(1)
    accept(limiter)
    error = OSError(errno.EMFILE, "Too many open files")
    with capturedLogs() as events:
        reportOutOfDescriptors(ProxyHeaderFactory(limiter), error)
        reportOutOfDescriptors(limiter, error)
    assert counters["descriptors_exhausted"] == 2
    assert counters["connections_evicted"] == 2
    assert stalest.finishClose()
    assert len(levelEvents(events, LogLevel.warn)) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tcp:7007:backlog=0", "backlog 0 is out of range; expected 1 to 65535"),
        ("tcp6:7007:backlog=65536", "backlog 65536 is out of range"),
        ("unix:/tmp/x.sock:backlog=many", "backlog 'many' is not a number"),
        ("haproxy:tcp:7007:backlog=-1", "backlog -1 is out of range"),
        ("systemd:domain=INET:index=0:backlog=10", "set Backlog= in its .socket unit"),
    ],
)
def test_badBacklogIsRefused(text: str, problem: str) -> None:
    """
    A backlog= that is not a number from 1 to 65535, or is set on a systemd: socket, is refused naming the listen string.
    """
    from netd.config.listen import ListenAddress
    from netd.config.options import InvalidValue

    with pytest.raises(InvalidValue) as raised:
        ListenAddress.fromConfig(text)
    assert problem in str(raised.value) and repr(text) in str(raised.value)


def test_listenersGetTheSystemsBacklogUnlessSet(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """
    A tcp:, tcp6: or unix: string without backlog= listens with net.core.somaxconn (the C library's SOMAXCONN when unreadable); one that sets it, or another kind, is left as written.
    """
    import socket

    from netd.config import listen
    from netd.reactors import rlimits

    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("4096\n")
    assert rlimits.systemBacklog(str(somaxconn)) == 4096
    assert rlimits.systemBacklog(str(tmp_path / "missing")) == socket.SOMAXCONN
    monkeypatch.setattr(listen, "systemBacklog", lambda: 4096)
    assert listen.withBacklog("tcp:0:interface=127.0.0.1") == "tcp:0:interface=127.0.0.1:backlog=4096"
    assert listen.withBacklog("tcp6:0") == "tcp6:0:backlog=4096"
    assert listen.withBacklog("unix:/run/x.sock:mode=0660") == "unix:/run/x.sock:mode=0660:backlog=4096"
    assert listen.withBacklog("tcp:0:backlog=12") == "tcp:0:backlog=12"
    assert listen.withBacklog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"


def test_defaultMaxConnectionsIsHalfTheOpenFileLimit() -> None:
    """
    Unset, max_connections is half the open-file limit, at most 16384 and at least 1.
    """
    from netd.reactors.rlimits import defaultMaxConnections

    assert defaultMaxConnections(1024) == 512
    assert defaultMaxConnections(524288) == 16384
    assert defaultMaxConnections(1) == 1


def test_openFileLimitRaisedToTheHardOne(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    At start the soft RLIMIT_NOFILE is raised to the hard one (to 2**20 when that is unlimited) and the figure is logged; a refusal leaves it and warns.
    """
    import resource

    from netd.reactors import rlimits

    limits = {"now": (1024, 524288)}

    def getrlimit(which: int) -> tuple[int, int]:
        return limits["now"]

    def setrlimit(which: int, wanted: tuple[int, int]) -> None:
        limits["now"] = wanted

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    with capturedLogs() as events:
        assert rlimits.raiseOpenFileLimit() == (1024, 524288)
    [line] = levelEvents(events, LogLevel.info)
    assert (line["limit"], line["before"], line["hard"]) == (524288, 1024, 524288)
    limits["now"] = (1024, resource.RLIM_INFINITY)
    assert rlimits.raiseOpenFileLimit() == (1024, rlimits.UNLIMITED_FILES)

    def refuse(which: int, wanted: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    limits["now"] = (1024, 4096)
    monkeypatch.setattr(resource, "setrlimit", refuse)
    with capturedLogs() as events:
        assert rlimits.raiseOpenFileLimit() == (1024, 1024)
    assert len(levelEvents(events, LogLevel.warn)) == 1


def test_serviceDefaultsToTheDerivedLimitAndEvicts(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """
    A service whose config leaves max_connections out gets half the open-file limit, evicts at the limit and scales its idle timeout down to min_idle_timeout.
    """
    from twisted.internet.testing import MemoryReactorClock

    from netd.config.spec import loadConfig
    from netd.daemon.service import NetService
    from netd.reactors import rlimits
    from netd.registry import discoverPlugins

    monkeypatch.setattr(rlimits, "openFileLimit", lambda: 1000)
    path = tmp_path / "t.toml"
    path.write_text('[[services]]\nname = "e"\nplugin = "echo"\nlisten = ["tcp:0"]\nmin_idle_timeout = 5\n')
    config = loadConfig(str(path), discoverPlugins())
    (spec,) = config.services
    assert spec.max_connections is None and spec.evict_idle is True
    service = NetService(spec, MemoryReactorClock(), 1.0)
    assert service.connections is not None
    assert service.connections.maxConnections == 500
    assert service.connections.evict is True
    assert service.connections.minIdleTimeout == 5


def test_pressureStepsDoNotFlapAtAnEdge() -> None:
    """
    A connection count going to and fro across a step's edge moves the deadlines once, not each time it comes back up; once below 75% the idle timeout is whole again.
    """
    limiter, _, _, clock = evictingStack(maxConnections=100, idleTimeout=100, minIdleTimeout=20)
    connections = [accept(limiter) for _ in range(82)]
    assert limiter.idle is not None
    shortened = limiter.idle.timeout
    assert shortened < 100
    calls: list[float] = []
    setTimeout = limiter.idle.setTimeout
    limiter.idle.setTimeout = lambda timeout: (calls.append(timeout), setTimeout(timeout))  # type: ignore[method-assign]
    for _ in range(5):
        close(connections.pop())
        connections.append(accept(limiter))
    assert calls == []
    while len(connections) > 70:
        close(connections.pop())
    assert limiter.idle.timeout == 100
