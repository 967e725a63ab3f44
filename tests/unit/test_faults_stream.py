"""
Stream and TLS handshake faults on connections (L{netd.faults.stream}), through
the core's real stack (limits, TLS, framing, the echo plugin) on in-memory
transports with a fake clock: what a client would receive, when, and how the
connection ends.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from netd.events import EventLog
from netd.faults.active import ServiceFaults
from netd.faults.stream import HELD_LIMIT
from netd.faults.tls import alertRecord
from netd.metrics import Counters
from netd.stream.guard import ConnectionLimiter, GuardedConnection, resetTransport
from netd.testing.memory import (
    PEER,
    MemoryStreamConnection,
    TestClientTLS,
    connect,
    connectTLS,
    faultsFor,
    makeStreamStack,
)
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd_plugins.echo import EchoHandler


@attrs.define
class Stack:
    """
    An echo service's stream stack with faults, and what a test looks at.
    """

    clock: MemoryReactorClock
    counters: Counters
    events: EventLog
    faults: ServiceFaults
    limiter: ConnectionLimiter

    def connect(self) -> MemoryStreamConnection:
        """
        A new in-memory connection (the stack never refuses one here).
        """
        connection = connect(self.limiter)
        assert connection is not None
        return connection

    def applied(self, typeName: str) -> int:
        """
        How many times the counter says a fault of this type was applied.
        """
        return self.counters["faults_applied_" + typeName]


def echoStack(
    tables: list[dict[str, Any]], *, idleTimeout: float = 0, tls: TLSOptions | None = None, stateDir: str | None = None
) -> Stack:
    """
    An echo service with raw framing and these fault tables.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    events = EventLog(100, clock)
    faults = faultsFor(tables, tls=tls is not None, counters=counters, events=events)
    limiter = makeStreamStack(
        EchoHandler(),
        "raw",
        clock=clock,
        counters=counters,
        idleTimeout=idleTimeout,
        tls=tls,
        stateDir=stateDir,
        faults=faults,
    )
    limiter.events = events
    return Stack(clock, counters, events, faults, limiter)


class RecordingTransport(StringTransport):
    """
    A transport that keeps each write apart, as separate sends on a socket.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def connectRecording(stack: Stack) -> tuple[MemoryStreamConnection, RecordingTransport]:
    """
    A connection to the stack whose transport keeps each write apart.
    """
    protocol = stack.limiter.buildProtocol(PEER)
    assert isinstance(protocol, GuardedConnection)
    transport = RecordingTransport()
    protocol.makeConnection(transport)
    return MemoryStreamConnection(transport, protocol, stack.limiter), transport


def advance(clock: MemoryReactorClock, seconds: float, step: float = 0.001) -> None:
    """
    Move the clock on in small steps, as time passes for a real reactor
    (one big step runs every due call at the end time).
    """
    for _ in range(round(seconds / step)):
        clock.advance(step)


def ended(connection: MemoryStreamConnection) -> str | None:
    """
    How the connection ended, as its event and debug line say it.
    """
    return connection.protocol._ended


def test_noFaultKeepsThePlainPath() -> None:
    """
    A connection no fault applies to carries no fault object, and echoes at once.
    """
    stack = echoStack([{"type": "latency", "ms": 100, "first": 1}])
    stack.connect()
    second = stack.connect()
    assert second.protocol.streamFaults is None
    second.receive(b"hi")
    assert second.takeSent() == b"hi"
    assert stack.clock.getDelayedCalls() == []


def test_latencyHoldsEachChunk() -> None:
    """
    latency to_client holds the echo for ms milliseconds, counts bytes sent when they leave, and counts the fault once.
    """
    stack = echoStack([{"type": "latency", "ms": 100, "direction": "to_client"}])
    connection = stack.connect()
    connection.receive(b"abc")
    connection.receive(b"def")
    assert connection.takeSent() == b""
    assert stack.counters.snapshot()["bytes_sent"] == 0
    stack.clock.advance(0.099)
    assert connection.takeSent() == b""
    stack.clock.advance(0.001)
    assert connection.takeSent() == b"abcdef"
    assert stack.counters.snapshot()["bytes_sent"] == 6
    assert stack.applied("latency") == 1
    [event] = stack.events.events(kind="fault")
    assert event["fault"] == "latency" and event["peer"] == "127.0.0.1:40000" and event["direction"] == "to_client"


def test_latencyFromClient() -> None:
    """
    latency from_client holds what the client sends before the plugin sees it.
    """
    stack = echoStack([{"type": "latency", "ms": 50, "direction": "from_client"}])
    connection = stack.connect()
    connection.receive(b"ping")
    stack.clock.advance(0.049)
    assert connection.takeSent() == b""
    stack.clock.advance(0.001)
    assert connection.takeSent() == b"ping"


def test_jitterKeepsByteOrder() -> None:
    """
    With jitter larger than the gap between chunks, the bytes still leave in the order they came.
    """
    stack = echoStack([{"type": "latency", "ms": 50, "jitter": 45, "seed": 7}])
    connection = stack.connect()
    sent = b""
    for i in range(200):
        chunk = b"%d," % i
        sent += chunk
        connection.receive(chunk)
        stack.clock.advance(0.002)
    advance(stack.clock, 0.5)
    assert connection.takeSent() == sent


def test_jitterVariesTheDelay() -> None:
    """
    Jitter gives chunks different delays, within ms plus or minus jitter, repeatably with a seed.
    """

    def arrivals() -> list[float]:
        stack = echoStack([{"type": "latency", "ms": 100, "jitter": 50, "seed": 3, "direction": "to_client"}])
        connection = stack.connect()
        times = []
        for _ in range(5):
            start = stack.clock.seconds()
            connection.receive(b"x")
            while not connection.takeSent():
                stack.clock.advance(0.001)
            times.append(round(stack.clock.seconds() - start, 3))
        return times

    first = arrivals()
    assert all(0.05 <= t <= 0.151 for t in first)
    assert len(set(first)) > 1
    assert arrivals() == first


def test_bandwidthPacesBytes() -> None:
    """
    bandwidth lets no more than rate bytes per second go (after the first piece), and all of them in the end.
    """
    stack = echoStack([{"type": "bandwidth", "rate": 100, "direction": "to_client"}])
    connection = stack.connect()
    connection.receive(b"x" * 1000)
    received = len(connection.takeSent())
    assert received == 5
    for step in range(1, 200):
        stack.clock.advance(0.05)
        received += len(connection.takeSent())
        assert received <= 5 + 100 * 0.05 * step
    stack.clock.advance(0.05)
    received += len(connection.takeSent())
    assert received == 1000
    assert stack.clock.getDelayedCalls() == []


def test_sliceWritesPieces() -> None:
    """
    slice writes at most size bytes at a time, delay milliseconds apart, in order.
    """
    stack = echoStack([{"type": "slice", "size": 3, "delay": 10, "direction": "to_client"}])
    connection, transport = connectRecording(stack)
    connection.receive(b"abcdefgh")
    assert transport.writes == [b"abc"]
    stack.clock.advance(0.009)
    assert transport.writes == [b"abc"]
    stack.clock.advance(0.002)
    assert transport.writes == [b"abc", b"def"]
    stack.clock.advance(0.01)
    assert transport.writes == [b"abc", b"def", b"gh"]
    assert stack.applied("slice") == 1


def test_sliceWithoutDelayUsesOneTurnPerPiece() -> None:
    """
    slice without a delay still writes each piece in a reactor turn of its own, so each leaves in its own send.
    """
    stack = echoStack([{"type": "slice", "size": 2, "direction": "to_client"}])
    connection, transport = connectRecording(stack)
    connection.receive(b"abcde")
    assert transport.writes == [b"ab"]
    [turn] = stack.clock.getDelayedCalls()
    assert turn.getTime() == stack.clock.seconds()
    stack.clock.advance(0)
    assert transport.writes == [b"ab", b"cd", b"e"]


def test_sliceFromClient() -> None:
    """
    slice from_client hands the plugin the client's bytes in pieces of size.
    """
    stack = echoStack([{"type": "slice", "size": 1, "direction": "from_client"}])
    connection, transport = connectRecording(stack)
    connection.receive(b"abc")
    assert transport.writes == [b"a"]
    stack.clock.advance(0)
    assert transport.writes == [b"a", b"b", b"c"]


@pytest.mark.parametrize("direction", ["to_client", "from_client", "both"])
def test_closeAfter(direction: str) -> None:
    """
    close_after passes exactly bytes bytes in its direction, then closes cleanly, and says so.
    """
    stack = echoStack([{"type": "close_after", "bytes": 5, "direction": direction}])
    connection = stack.connect()
    connection.receive(b"hel")
    assert connection.takeSent() == b"hel"
    connection.receive(b"lo world")
    assert connection.takeSent() == b"lo"
    assert connection.transport.disconnecting and not connection.transport.disconnected
    assert ended(connection) == "closed by fault close_after"
    connection.finishClose()
    [closed] = stack.events.events(kind="connection")
    assert closed["ended"] == "closed by fault close_after"
    [fault] = stack.events.events(kind="fault")
    assert fault["bytes"] == 5


def test_closeAfterZeroClosesAtOnce() -> None:
    """
    close_after 0 closes the connection as soon as it is open.
    """
    stack = echoStack([{"type": "close_after", "bytes": 0}])
    connection = stack.connect()
    assert connection.transport.disconnecting


@pytest.mark.parametrize("direction", ["to_client", "from_client"])
def test_resetAfter(direction: str) -> None:
    """
    reset_after passes exactly bytes bytes in its direction, then aborts the connection (a reset).
    """
    stack = echoStack([{"type": "reset_after", "bytes": 4, "direction": direction}])
    connection = stack.connect()
    connection.receive(b"abcdefgh")
    assert connection.takeSent() == b"abcd"
    assert connection.transport.disconnected
    assert ended(connection) == "reset by fault reset_after"
    connection.finishClose()
    assert stack.events.events(kind="connection")[0]["ended"] == "reset by fault reset_after"


class SocketTransport(StringTransport):
    """
    A transport whose handle is a real socket, as a TCP transport's is.
    """

    def __init__(self, handle: socket.socket) -> None:
        super().__init__()
        self.handle = handle

    def getHandle(self) -> socket.socket:
        return self.handle


def test_resetSetsLingerZero() -> None:
    """
    A reset sets SO_LINGER {1, 0} on the socket before aborting, so that closing it sends a RST.
    """
    left, right = socket.socketpair()
    with left, right:
        transport = SocketTransport(left)
        resetTransport(transport)
        assert struct.unpack("ii", left.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 0)
        assert transport.disconnected


@pytest.mark.parametrize("direction", ["to_client", "both"])
def test_stallAfterToClient(direction: str) -> None:
    """
    stall_after passes bytes bytes, then nothing more, with the connection open until the idle timeout.
    """
    stack = echoStack([{"type": "stall_after", "bytes": 4, "direction": direction}], idleTimeout=5)
    connection = stack.connect()
    connection.receive(b"ab")
    assert connection.takeSent() == b"ab"
    connection.receive(b"cdef")
    assert connection.takeSent() == b"cd"
    connection.receive(b"x")
    assert connection.takeSent() == b""
    assert not connection.transport.disconnecting
    stack.clock.advance(5)
    assert ended(connection) == "idle timeout"


def test_stallAfterFromClientPausesReading() -> None:
    """
    stall_after from_client passes bytes bytes to the plugin, then stops reading from the client.
    """
    stack = echoStack([{"type": "stall_after", "bytes": 2, "direction": "from_client"}])
    connection = stack.connect()
    connection.receive(b"hello")
    assert connection.takeSent() == b"he"
    assert connection.transport.producerState == "paused"
    connection.receive(b"again")
    assert connection.takeSent() == b""
    assert not connection.transport.disconnecting
    assert stack.applied("stall_after") == 1


@pytest.mark.parametrize("direction", ["to_client", "from_client"])
def test_blackhole(direction: str) -> None:
    """
    blackhole swallows the bytes of its direction: nothing comes back, and the connection stays open.
    """
    stack = echoStack([{"type": "blackhole", "direction": direction}])
    connection = stack.connect()
    connection.receive(b"anyone there?")
    assert connection.takeSent() == b""
    assert not connection.transport.disconnecting
    assert stack.counters.snapshot()["bytes_received"] == 13
    assert stack.applied("blackhole") == 1


@pytest.mark.parametrize(("reset", "how"), [(False, "closed"), (True, "reset")])
def test_refuse(reset: bool, how: str) -> None:
    """
    refuse closes (or resets) a connection as soon as it is accepted, before any byte.
    """
    stack = echoStack([{"type": "refuse", "reset": reset}])
    connection = stack.connect()
    assert connection.transport.disconnecting
    assert connection.transport.disconnected is reset
    assert ended(connection) == f"{how} by fault refuse"
    connection.receive(b"late")
    assert connection.takeSent() == b""
    assert stack.applied("refuse") == 1


def test_firstTwoThenNormal() -> None:
    """
    A refuse with first = 2 refuses two connections, and the third is served.
    """
    stack = echoStack([{"type": "refuse", "reset": True, "first": 2}])
    assert [stack.connect().transport.disconnected for _ in range(3)] == [True, True, False]
    assert stack.faults.get({})["applied"] == [2]


def test_closeWaitsForHeldBytes() -> None:
    """
    A client's EOF with an answer still held by latency closes the connection only once the answer is written.
    """
    stack = echoStack([{"type": "latency", "ms": 100, "direction": "to_client"}])
    connection = stack.connect()
    connection.receive(b"last words")
    connection.protocol.readConnectionLost()
    assert not connection.transport.disconnecting
    stack.clock.advance(0.1)
    assert connection.takeSent() == b"last words"
    assert connection.transport.disconnecting
    assert ended(connection) == "closed by peer"


def test_eofWaitsForHeldInput() -> None:
    """
    A client's EOF with its bytes still held by latency reaches the plugin after them, so their answer is sent.
    """
    stack = echoStack([{"type": "latency", "ms": 100, "direction": "from_client"}])
    connection = stack.connect()
    connection.receive(b"question")
    connection.protocol.readConnectionLost()
    assert not connection.transport.disconnecting
    stack.clock.advance(0.1)
    assert connection.takeSent() == b"question"
    assert connection.transport.disconnecting


def test_heldBytesBounded() -> None:
    """
    With a client that keeps sending and answers held back, reading pauses past the held limit and resumes once drained.
    """
    stack = echoStack([{"type": "latency", "ms": 1000, "direction": "to_client"}])
    connection = stack.connect()
    chunk = b"x" * 4096
    sent = 0
    while connection.transport.producerState != "paused":
        connection.receive(chunk)
        sent += len(chunk)
        assert sent <= HELD_LIMIT + len(chunk)
    assert sent > HELD_LIMIT
    stack.clock.advance(1)
    assert len(connection.takeSent()) == sent
    assert connection.transport.producerState == "producing"


def test_timersCancelledOnClose() -> None:
    """
    A connection that goes while bytes are held leaves no timer behind.
    """
    stack = echoStack([{"type": "latency", "ms": 100}, {"type": "slice", "size": 1, "delay": 5}])
    connection = stack.connect()
    connection.receive(b"abc")
    stack.clock.advance(0.2)
    connection.receive(b"def")
    assert stack.clock.getDelayedCalls()
    connection.peerClosed()
    assert stack.clock.getDelayedCalls() == []


def test_timersCancelledOnReset() -> None:
    """
    A fault that resets the connection cancels the timers of the bytes it held.
    """
    stack = echoStack(
        [
            {"type": "latency", "ms": 100, "direction": "to_client"},
            {"type": "reset_after", "bytes": 2, "direction": "from_client"},
        ]
    )
    connection = stack.connect()
    connection.receive(b"a")
    assert stack.clock.getDelayedCalls()
    connection.receive(b"bc")
    assert connection.transport.disconnected
    assert stack.clock.getDelayedCalls() == []


def test_midStreamFaultReachesOpenConnection() -> None:
    """
    A latency PUT through the API applies to a connection that is already open.
    """
    stack = echoStack([])
    connection = stack.connect()
    assert connection.protocol.streamFaults is None
    stack.faults.put({"faults": [{"type": "latency", "ms": 100}]})
    connection.receive(b"slow")
    advance(stack.clock, 0.199)
    assert connection.takeSent() == b""
    advance(stack.clock, 0.002)
    assert connection.takeSent() == b"slow"


def test_deleteReleasesHeldBytes() -> None:
    """
    DELETE of the faults lets go at once of what latency held, and the connection is fast (plain) again.
    """
    stack = echoStack([{"type": "latency", "ms": 1000, "direction": "to_client"}])
    connection = stack.connect()
    connection.receive(b"held")
    stack.faults.delete({})
    assert connection.takeSent() == b"held"
    assert connection.protocol.streamFaults is None
    assert stack.clock.getDelayedCalls() == []
    connection.receive(b"fast")
    assert connection.takeSent() == b"fast"


def test_deleteUnstalls() -> None:
    """
    DELETE of a stall_after from_client reads from the client again.
    """
    stack = echoStack([{"type": "stall_after", "bytes": 1, "direction": "from_client"}])
    connection = stack.connect()
    connection.receive(b"ab")
    assert connection.transport.producerState == "paused"
    stack.faults.delete({})
    assert connection.transport.producerState == "producing"
    connection.receive(b"cd")
    assert connection.takeSent() == b"acd"


def test_changeKeepsCountOfSameFault() -> None:
    """
    A PUT that keeps a close_after keeps its count on open connections, and adds the new list's faults.
    """
    tables = [{"type": "close_after", "bytes": 6, "direction": "to_client"}]
    stack = echoStack(tables)
    connection = stack.connect()
    connection.receive(b"abcd")
    stack.faults.put({"faults": tables + [{"type": "slice", "size": 1}]})
    connection.receive(b"efgh")
    assert connection.takeSent() == b"abcde"
    stack.clock.advance(0)
    assert connection.takeSent() == b"f"
    assert connection.transport.disconnecting


def test_scheduledFaultNotAppliedMidStream() -> None:
    """
    A changed list's faults with a schedule (or that act only at the start) wait for the next connection.
    """
    stack = echoStack([])
    connection = stack.connect()
    stack.faults.put({"faults": [{"type": "latency", "ms": 100, "first": 5}, {"type": "refuse"}]})
    assert connection.protocol.streamFaults is None
    assert not connection.transport.disconnecting
    assert stack.faults.get({})["applied"] == [0, 0]


# TLS handshake faults.


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSet:
    """
    A development set of certificates, made once for the module.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path_factory.mktemp("certs")))
    return files


def tlsStack(dev: DevelopmentSet, tables: list[dict[str, Any]], *, handshakeTimeout: float = 10) -> Stack:
    """
    A TLS echo service with these fault tables.
    """
    options = TLSOptions(certificate=dev.server, private_key=dev.serverKey, handshake_timeout=handshakeTimeout)
    return echoStack(tables, tls=options, idleTimeout=60)


def clientHello() -> bytes:
    """
    The first flight of a real TLS client: its ClientHello record.
    """
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    return client.bio_read(65536)


@pytest.mark.usefixtures("tlsRecordPath")
@pytest.mark.parametrize(("alert", "code"), [("handshake_failure", 40), ("protocol_version", 70)])
def test_tlsAbortAnswersWithAlert(dev: DevelopmentSet, alert: str, code: int) -> None:
    """
    tls_abort reads the whole ClientHello (in pieces), answers with one plaintext fatal alert record, and closes.
    """
    stack = tlsStack(dev, [{"type": "tls_abort", "alert": alert}])
    connection = stack.connect()
    hello = clientHello()
    connection.receive(hello[:3])
    connection.receive(hello[3:-1])
    assert connection.takeSent() == b""
    connection.receive(hello[-1:])
    assert connection.takeSent() == bytes([21, 3, 3, 0, 2, 2, code]) == alertRecord(alert)
    assert connection.transport.disconnecting
    assert ended(connection) == "closed by fault tls_abort"
    assert stack.events.events(kind="fault")[0]["alert"] == alert


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsAbortSeenByClient(dev: DevelopmentSet) -> None:
    """
    A TLS client answered by tls_abort fails its handshake with the alert named.
    """
    stack = tlsStack(dev, [{"type": "tls_abort", "alert": "protocol_version"}])
    client = connectTLS(stack.limiter, TestClientTLS(), stack.clock)
    assert client is not None
    assert not client.handshakeDone
    assert client.lost is not None
    assert "protocol version" in str(client.lost.value)


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsAbortLetsNonTLSThrough(dev: DevelopmentSet) -> None:
    """
    Bytes that cannot start a TLS handshake go to the TLS engine, which refuses them as usual; the fault is not counted.
    """
    stack = tlsStack(dev, [{"type": "tls_abort"}])
    connection = stack.connect()
    connection.receive(b"GET / HTTP/1.0\r\n\r\n")
    connection.finishClose()
    assert stack.counters["tls_handshakes_failed_not_tls"] == 1
    assert stack.applied("tls_abort") == 0


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsGarbage(dev: DevelopmentSet) -> None:
    """
    tls_garbage answers the ClientHello with its text and closes.
    """
    stack = tlsStack(dev, [{"type": "tls_garbage", "data": "nope\n"}])
    connection = stack.connect()
    connection.receive(clientHello())
    assert connection.takeSent() == b"nope\n"
    assert ended(connection) == "closed by fault tls_garbage"


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsGarbageSeenByClient(dev: DevelopmentSet) -> None:
    """
    A TLS client answered by tls_garbage fails: what it got is not a TLS record.
    """
    stack = tlsStack(dev, [{"type": "tls_garbage"}])
    client = connectTLS(stack.limiter, TestClientTLS(), stack.clock)
    assert client is not None and client.lost is not None and not client.handshakeDone


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsStallSendsServerHelloOnly(dev: DevelopmentSet) -> None:
    """
    tls_stall passes the ClientHello to TLS and the server's first record (the ServerHello), then nothing more.
    """
    stack = tlsStack(dev, [{"type": "tls_stall"}])
    connection = stack.connect()
    connection.receive(clientHello())
    stack.clock.advance(0)
    sent = connection.takeSent()
    assert sent[0] == 22 and sent[5] == 2  # a handshake record holding a ServerHello
    assert len(sent) == 5 + int.from_bytes(sent[3:5], "big")
    assert stack.counters.snapshot()["bytes_sent"] == len(sent)
    assert not connection.transport.disconnecting
    [event] = stack.events.events(kind="fault")
    assert event["record_bytes"] == len(sent)


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsStallTimesOut(dev: DevelopmentSet) -> None:
    """
    A client held by tls_stall never completes its handshake; handshake_timeout ends the connection.
    """
    stack = tlsStack(dev, [{"type": "tls_stall"}], handshakeTimeout=3)
    client = connectTLS(stack.limiter, TestClientTLS(), stack.clock)
    assert client is not None
    assert not client.handshakeDone and client.lost is None
    stack.clock.advance(3)
    client.flush()
    assert client.lost is not None
    assert stack.counters["tls_handshakes_failed_timeout"] == 1


@pytest.mark.usefixtures("tlsRecordPath")
def test_tlsHandshakeThroughSliceOne(dev: DevelopmentSet) -> None:
    """
    A TLS client completes its handshake, and gets its echo, through slice = 1 both ways.
    """
    stack = tlsStack(dev, [{"type": "slice", "size": 1, "direction": "both"}])
    client = connectTLS(stack.limiter, TestClientTLS(), stack.clock)
    assert client is not None
    assert client.handshakeDone
    client.send(b"through the straw")
    assert client.takeReceived() == b"through the straw"


@pytest.mark.parametrize("direction", ["to_client", "from_client"])
def test_blackholeClosesAfterSilence(direction: str) -> None:
    """
    blackhole with close_after_ms closes the connection once that long passes without bytes to swallow, each chunk restarting the count.
    """
    stack = echoStack([{"type": "blackhole", "direction": direction, "close_after_ms": 100}])
    connection = stack.connect()
    stack.clock.advance(0.06)
    connection.receive(b"still there?")
    stack.clock.advance(0.06)
    assert not connection.transport.disconnecting
    assert connection.takeSent() == b""
    stack.clock.advance(0.05)
    assert connection.transport.disconnecting and not connection.transport.disconnected
    assert ended(connection) == "closed by fault blackhole"


def test_blackholeWithoutCloseStaysOpen() -> None:
    """
    blackhole without close_after_ms never closes the connection itself.
    """
    stack = echoStack([{"type": "blackhole"}])
    connection = stack.connect()
    stack.clock.advance(3600)
    assert not connection.transport.disconnecting


@pytest.mark.parametrize("direction", ["to_client", "from_client"])
def test_resetOnDataWaitsForBytes(direction: str) -> None:
    """
    reset_on_data leaves an idle connection alone, swallows the first bytes of its direction and what follows, and resets ms later.
    """
    stack = echoStack([{"type": "reset_on_data", "direction": direction, "ms": 50}])
    connection = stack.connect()
    stack.clock.advance(10)
    assert not connection.transport.disconnecting
    connection.receive(b"PING\r\n")
    connection.receive(b"PING\r\n")
    assert connection.takeSent() == b""
    stack.clock.advance(0.045)
    assert not connection.transport.disconnected
    stack.clock.advance(0.01)
    assert connection.transport.disconnected
    assert ended(connection) == "reset by fault reset_on_data"
    [fault] = stack.events.events(kind="fault")
    assert (fault["fault"], fault["direction"], fault["ms"]) == ("reset_on_data", direction, 50)


def test_resetOnDataAtOnce() -> None:
    """
    reset_on_data with ms 0 resets the connection as its first bytes arrive.
    """
    stack = echoStack([{"type": "reset_on_data"}])
    connection = stack.connect()
    connection.receive(b"x")
    assert connection.transport.disconnected


def test_resetOnDataRemovedCancelsTheReset() -> None:
    """
    A reset_on_data taken away before its time leaves the connection open.
    """
    stack = echoStack([{"type": "reset_on_data", "ms": 100}])
    connection = stack.connect()
    connection.receive(b"x")
    stack.faults.delete({})
    stack.clock.advance(1)
    assert not connection.transport.disconnecting


def test_slowCloseHoldsTheClose() -> None:
    """
    slow_close to_client holds a close by netd's side for ms, after the bytes before it are written.
    """
    stack = echoStack([{"type": "slow_close", "ms": 200, "direction": "to_client"}])
    connection = stack.connect()
    connection.receive(b"bye")
    connection.protocol.loseConnection()
    assert connection.takeSent() == b"bye"
    stack.clock.advance(0.19)
    assert not connection.transport.disconnecting
    stack.clock.advance(0.02)
    assert connection.transport.disconnecting
    [fault] = stack.events.events(kind="fault")
    assert (fault["fault"], fault["ms"]) == ("slow_close", 200)


def test_slowCloseHoldsTheClientsEOF() -> None:
    """
    slow_close from_client passes the client's EOF on to the plugin ms late.
    """
    stack = echoStack([{"type": "slow_close", "ms": 100, "direction": "from_client"}])
    connection = stack.connect()
    connection.protocol.readConnectionLost()
    stack.clock.advance(0.09)
    assert not connection.transport.disconnecting
    stack.clock.advance(0.02)
    assert connection.transport.disconnecting
    assert ended(connection) == "closed by peer"


def test_slowCloseWaitsForHeldBytesToo() -> None:
    """
    With latency holding the answer longer than slow_close's ms, the close waits for the answer.
    """
    stack = echoStack([{"type": "latency", "ms": 300, "direction": "to_client"}, {"type": "slow_close", "ms": 100}])
    connection = stack.connect()
    connection.receive(b"late")
    connection.protocol.loseConnection()
    stack.clock.advance(0.2)
    assert not connection.transport.disconnecting
    stack.clock.advance(0.1)
    assert connection.takeSent() == b"late"
    assert connection.transport.disconnecting


def test_timedFaultTimersCancelledOnClose() -> None:
    """
    A connection that ends while reset_on_data, blackhole's close_after_ms or slow_close wait leaves no timer behind.
    """
    stack = echoStack(
        [
            {"type": "reset_on_data", "ms": 100, "direction": "from_client"},
            {"type": "blackhole", "close_after_ms": 100},
            {"type": "slow_close", "ms": 100},
        ]
    )
    connection = stack.connect()
    connection.receive(b"x")
    connection.protocol.loseConnection()
    assert stack.clock.getDelayedCalls()
    connection.protocol.connectionLost(Failure(ConnectionDone()))
    assert stack.clock.getDelayedCalls() == []


def test_sliceVariation() -> None:
    """
    slice with variation writes pieces of size plus or minus up to variation, not all alike, and every byte in order.
    """
    stack = echoStack([{"type": "slice", "size": 4, "variation": 2, "seed": 1}])
    connection, transport = connectRecording(stack)
    data = bytes(range(200))
    connection.receive(data)
    advance(stack.clock, 0.5)
    assert b"".join(transport.writes) == data
    sizes = [len(w) for w in transport.writes[:-1]]
    assert all(2 <= size <= 6 for size in sizes)
    assert len(set(sizes)) > 1
