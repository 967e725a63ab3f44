"""
The proxy plugin (C{netd_plugins.proxy}) through the core stream stack, on
in-memory transports and a fake clock: forwarding, flow control both ways,
half-close, resets, the upstream's failures, and the service's stream faults.
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any, Literal

import attrs
import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, capturedLogs
from twisted.python.failure import Failure

import netd_plugins.proxy
from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.events import EventLog
from netd.faults.active import ServiceFaults
from netd.faults.stream import HELD_LIMIT
from netd.interfaces import PluginContext
from netd.metrics import Counters
from netd.registry import checkPlugin, discoverPlugins
from netd.stream.framing import FRAMINGS
from netd.stream.guard import GuardedConnection
from netd.stream.proxyformat import HeaderReader, encodeProxyHeader
from netd.testing.memory import faultsFor, makeStreamStack
from netd_plugins.proxy import ProxyOptions, UpstreamEndpoint, plugin
from netd_plugins.proxy.relay import CLOSE_LINGER, ClientSide, UpstreamSide

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
LISTENER = IPv4Address("TCP", "198.51.100.1", 6380)


class Transport(StringTransport):
    """
    A L{StringTransport} that records a half-close (C{loseWriteConnection}).
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


@attrs.define
class Proxied:
    """
    One client connection through the proxy, and the upstream connection made for it.
    """

    reactor: MemoryReactorClock
    client: Transport
    guard: GuardedConnection
    counters: Counters
    events: EventLog
    upstream: Transport | None = None
    upstreamProtocol: Any = None

    def connectUpstream(self) -> None:
        """
        The upstream accepts the connection the proxy asked for.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.upstreamProtocol = factory.buildProtocol(None)
        self.upstream = Transport(peerAddress=IPv4Address("TCP", host, port))
        self.upstreamProtocol.makeConnection(self.upstream)

    def refuseUpstream(self) -> None:
        """
        The upstream refuses the connection.
        """
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))


def openProxy(
    onFailure: str = "close",
    faults: ServiceFaults | None = None,
    proxyProtocol: Literal[False] | Literal["v1", "v2"] = False,
    peer: IAddress = CLIENT,
    host: IAddress = LISTENER,
    framing: str = "raw",
    maxFrame: int = 65536,
    counters: Counters | None = None,
) -> Proxied:
    """
    A proxy service to tcp:127.0.0.1:6379 with C{framing} behind the core
    stack, and one client connected to it from C{peer} at C{host}.
    """
    reactor = MemoryReactorClock()
    counters = Counters() if counters is None else counters
    events = EventLog(100, reactor)
    context = PluginContext(
        reactor=reactor,
        log=Logger(namespace="test_proxy"),
        serviceName="p",
        counters=counters,
        events=events,
        framing=framing,
        maxFrame=None if framing == "raw" else maxFrame,
    )
    options = ProxyOptions(
        upstream=UpstreamEndpoint.fromConfig("tcp:127.0.0.1:6379"),
        on_upstream_failure=onFailure,  # type: ignore[arg-type]
        upstream_proxy_protocol=proxyProtocol,
    )
    limiter = makeStreamStack(
        plugin.build(options, context),
        framing,
        maxFrame=maxFrame,
        clock=reactor,
        counters=counters,
        faults=faults,
        events=events,
    )
    guard = limiter.buildProtocol(peer)
    assert isinstance(guard, GuardedConnection)
    client = Transport(peerAddress=peer, hostAddress=host)
    guard.makeConnection(client)
    return Proxied(reactor, client, guard, counters, events)


def openConnected(
    faults: ServiceFaults | None = None, framing: str = "raw", maxFrame: int = 65536
) -> tuple[Proxied, Transport]:
    """
    L{openProxy}, with the upstream connected.
    """
    proxied = openProxy(faults=faults, framing=framing, maxFrame=maxFrame)
    proxied.connectUpstream()
    assert proxied.upstream is not None
    return proxied, proxied.upstream


def test_testsShareTheInstalledPlugin() -> None:
    """
    The package pytest puts above this test module (plugins.proxy) is the installed netd_plugins.proxy.
    """
    package = __name__.rpartition(".tests.")[0]
    assert package == "plugins.proxy"
    assert sys.modules[package] is netd_plugins.proxy


def test_pluginMeetsTheContractAndIsBuiltIn() -> None:
    """
    The proxy plugin passes checkPlugin and is discovered as a built-in, every framing (raw first), streams and
    datagrams.
    """
    assert checkPlugin(plugin) is None
    registry = discoverPlugins()
    assert registry.get("proxy") is plugin
    assert registry.plugins["proxy"].source == "built-in netd_plugins.proxy"
    assert plugin.framings == tuple(FRAMINGS) and plugin.framings[0] == "raw"
    assert plugin.transports == frozenset({"stream", "datagram"})


def proxyConfig(keys: str) -> Any:
    """
    A config of one proxy service with C{keys}.
    """
    text = f'[[services]]\nname = "p"\nplugin = "proxy"\nlisten = ["tcp:0:interface=127.0.0.1"]\n{keys}\n'
    return parseConfig(tomllib.loads(text), "p.toml", discoverPlugins())


def test_defaultsFromTheOptionsClass() -> None:
    """
    Only upstream is required; connect_timeout defaults to 5 seconds and on_upstream_failure to close.
    """
    config = proxyConfig('upstream = "unix:/run/redis.sock"')
    options = config.services[0].options
    assert options == ProxyOptions(upstream=UpstreamEndpoint("unix:/run/redis.sock"))
    assert (options.connect_timeout, options.on_upstream_failure) == (5.0, "close")


@pytest.mark.parametrize(
    "keys, expected",
    [
        ("", "services[0].upstream: "),
        ('upstream = "udp:127.0.0.1:53"', "services[0].upstream: 'udp:127.0.0.1:53' is not a client endpoint string"),
        ('upstream = "tcp:127.0.0.1"', "services[0].upstream: 'tcp:127.0.0.1' is not a client endpoint string"),
        ("upstream = 6379", "services[0].upstream: expected a client endpoint string"),
        ('upstream = "tcp:h:1"\nconnect_timeout = 0', "services[0].connect_timeout: "),
        ('upstream = "tcp:h:1"\non_upstream_failure = "rst"', "services[0].on_upstream_failure: "),
    ],
)
def test_badKeysNamedByPath(keys: str, expected: str) -> None:
    """
    A missing or malformed upstream, a connect_timeout out of range and an unknown failure answer are config errors at their key paths.
    """
    with pytest.raises(ConfigError) as info:
        proxyConfig(keys)
    assert f"p.toml: {expected}" in str(info.value)


def test_heldBeforeConnectThenForwardedBothWays() -> None:
    """
    Until the upstream is open the client is not read and what it sent is held; then the held bytes go first, and bytes flow both ways.
    """
    proxied = openProxy()
    assert proxied.client.producerState == "paused"
    proxied.guard.dataReceived(b"PING\r\n")
    assert proxied.reactor.tcpClients[0][:2] == ("127.0.0.1", 6379)
    proxied.connectUpstream()
    upstream = proxied.upstream
    assert upstream is not None
    assert upstream.value() == b"PING\r\n"
    assert proxied.client.producerState == "producing"
    proxied.guard.dataReceived(b"GET k\r\n")
    assert upstream.value() == b"PING\r\nGET k\r\n"
    proxied.upstreamProtocol.dataReceived(b"+PONG\r\n")
    assert proxied.client.value() == b"+PONG\r\n"
    assert proxied.counters["upstream_connects"] == 1
    assert proxied.counters.histograms["upstream_connect_seconds"].count == 1


def test_clientNotReadingPausesTheUpstream() -> None:
    """
    The upstream's reading is paced by the client's send buffer: when it fills, netd stops reading the upstream, and reads again when it drains.
    """
    proxied, upstream = openConnected()
    assert proxied.client.producer is upstream
    proxied.client.producer.pauseProducing()
    assert upstream.producerState == "paused"
    proxied.client.producer.resumeProducing()
    assert upstream.producerState == "producing"


def test_upstreamNotReadingPausesTheClient() -> None:
    """
    The client's reading is paced by the upstream's send buffer: when it fills, netd stops reading the client, and reads again when it drains.
    """
    proxied, upstream = openConnected()
    upstream.producer.pauseProducing()
    assert proxied.client.producerState == "paused"
    upstream.producer.resumeProducing()
    assert proxied.client.producerState == "producing"


def test_clientHalfCloseReachesTheUpstream() -> None:
    """
    The client's EOF shuts the upstream's write side; the upstream's answer still reaches the client, and its EOF then closes both.
    """
    proxied, upstream = openConnected()
    proxied.guard.readConnectionLost()
    assert upstream.writeClosed
    assert not proxied.client.disconnecting
    proxied.upstreamProtocol.dataReceived(b"late answer")
    assert proxied.client.value() == b"late answer"
    proxied.upstreamProtocol.readConnectionLost()
    assert proxied.client.writeClosed
    assert proxied.client.disconnecting and upstream.disconnecting


def test_upstreamHalfCloseReachesTheClient() -> None:
    """
    The upstream's EOF shuts the client's write side; the client may still send to the upstream.
    """
    proxied, upstream = openConnected()
    proxied.upstreamProtocol.readConnectionLost()
    assert proxied.client.writeClosed
    assert not proxied.client.disconnecting
    proxied.guard.dataReceived(b"more")
    assert upstream.value() == b"more"


def test_upstreamResetResetsTheClient() -> None:
    """
    A reset of the upstream connection becomes an abort (a reset) of the client's, not a clean close.
    """
    proxied, upstream = openConnected()
    proxied.upstreamProtocol.connectionLost(Failure(ConnectionLost("reset")))
    assert proxied.client.disconnected


def test_upstreamCloseClosesTheClient() -> None:
    """
    A clean close of the upstream connection closes the client's cleanly, after what was sent to it.
    """
    proxied, upstream = openConnected()
    proxied.upstreamProtocol.dataReceived(b"bye")
    proxied.upstreamProtocol.connectionLost(Failure(ConnectionDone()))
    assert proxied.client.value() == b"bye"
    assert proxied.client.disconnecting and not proxied.client.disconnected
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    [event] = proxied.events.events(kind="connection")
    assert event["upstream"] == "127.0.0.1:6379"
    assert event["upstream_ended"] == "closed by upstream"
    assert (event["bytes_from_upstream"], event["bytes_out"]) == (3, 3)
    assert proxied.events.events(kind="upstream") == []


def test_clientResetResetsTheUpstream() -> None:
    """
    A reset of the client connection becomes an abort (a reset) of the upstream's.
    """
    proxied, upstream = openConnected()
    proxied.guard.connectionLost(Failure(ConnectionLost("reset")))
    assert upstream.disconnected


def test_clientCloseClosesTheUpstream() -> None:
    """
    A clean close of the client connection closes the upstream's cleanly.
    """
    proxied, upstream = openConnected()
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    assert upstream.disconnecting and not upstream.disconnected


def assertFailureAnswered(proxied: Proxied, reset: bool) -> None:
    """
    The client whose upstream failed was reset, or got EOF and is read until it closes, for CLOSE_LINGER seconds at most.
    """
    if reset:
        assert proxied.client.disconnected
        return
    assert proxied.client.writeClosed
    assert not proxied.client.disconnecting
    assert proxied.client.producerState == "producing"
    proxied.reactor.advance(CLOSE_LINGER)
    assert proxied.client.disconnecting and not proxied.client.disconnected


def test_clientClosingAfterTheFailureEOF() -> None:
    """
    A client given EOF for a failed upstream has what it still sends dropped, and is closed when it closes in turn.
    """
    proxied = openProxy("close")
    proxied.refuseUpstream()
    proxied.guard.dataReceived(b"PING\r\n")
    assert not proxied.client.disconnecting
    proxied.guard.readConnectionLost()
    assert proxied.client.disconnecting
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    assert not proxied.reactor.getDelayedCalls()
    [event] = proxied.events.events(kind="connection")
    assert (event["bytes_in"], event["bytes_to_upstream"]) == (6, 0)


@pytest.mark.parametrize("onFailure, reset", [("close", False), ("reset", True)])
def test_connectTimeout(onFailure: str, reset: bool) -> None:
    """
    An upstream that does not answer within connect_timeout is given up: counted, logged, and the client closed or reset as on_upstream_failure says.
    """
    proxied = openProxy(onFailure)
    proxied.guard.dataReceived(b"held")
    proxied.reactor.advance(4.9)
    assert not proxied.client.disconnecting
    with capturedLogs() as logs:
        proxied.reactor.advance(0.2)
    assert proxied.counters["upstream_connect_timeouts"] == 1
    assert proxied.counters["upstream_connect_failures"] == 1
    assert proxied.counters["upstream_connects"] == 0
    assertFailureAnswered(proxied, reset)
    assert proxied.client.value() == b""
    [line] = [e for e in logs if e.get("event") == "upstream_connect_failed"]
    assert "connect_timeout" in line["why"]


@pytest.mark.parametrize("onFailure, reset", [("close", False), ("reset", True)])
def test_unreachableUpstream(onFailure: str, reset: bool) -> None:
    """
    A refused upstream connection is counted as a failure (not a timeout), and the client is closed or reset as on_upstream_failure says.
    """
    proxied = openProxy(onFailure)
    proxied.refuseUpstream()
    assert proxied.counters["upstream_connect_failures"] == 1
    assert proxied.counters["upstream_connect_timeouts"] == 0
    assertFailureAnswered(proxied, reset)
    proxied.guard.connectionLost(Failure(ConnectionLost() if reset else ConnectionDone()))
    [event] = proxied.events.events(kind="connection")
    assert event["upstream_ended"].startswith("upstream unreachable")
    assert event["upstream"] == "tcp:127.0.0.1:6379"
    proxied.reactor.advance(10)
    assert proxied.counters["upstream_connect_timeouts"] == 0


def test_clientGoneWhileConnecting() -> None:
    """
    A client that leaves before the upstream is open cancels the attempt, which is not counted as a failure.
    """
    proxied = openProxy()
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    assert proxied.reactor.connectors[-1].stoppedConnecting
    assert proxied.counters["upstream_connect_failures"] == 0
    assert not proxied.reactor.getDelayedCalls()


def test_streamFaultsActOnTheUpstreamsAnswers() -> None:
    """
    The service's stream faults apply to proxied bytes without code of the proxy: latency holds the upstream's answers on their way to the client, and reset_after on bytes from the client resets the client and so the upstream.
    """
    faults = faultsFor([{"type": "latency", "ms": 100, "direction": "to_client"}])
    proxied, upstream = openConnected(faults)
    proxied.upstreamProtocol.dataReceived(b"+PONG\r\n")
    assert proxied.client.value() == b""
    proxied.reactor.advance(0.1)
    assert proxied.client.value() == b"+PONG\r\n"

    faults = faultsFor([{"type": "reset_after", "bytes": 4, "direction": "from_client"}])
    proxied, upstream = openConnected(faults)
    proxied.guard.dataReceived(b"PING\r\n")
    assert proxied.client.disconnected
    proxied.guard.connectionLost(Failure(ConnectionLost("reset by fault")))
    assert upstream.disconnected


def test_bytesHeldByFaultsPauseTheUpstream() -> None:
    """
    While a latency fault holds more than HELD_LIMIT bytes of the upstream's answers, netd stops reading the upstream, and reads it again once they have gone out: memory stays bounded behind a fault too.
    """
    faults = faultsFor([{"type": "latency", "ms": 100, "direction": "to_client"}])
    proxied, upstream = openConnected(faults)
    chunk = b"x" * 16384
    for _ in range(HELD_LIMIT // len(chunk)):
        proxied.upstreamProtocol.dataReceived(chunk)
    assert upstream.producerState == "producing"
    proxied.upstreamProtocol.dataReceived(chunk)
    assert upstream.producerState == "paused"
    proxied.reactor.advance(0.1)
    assert len(proxied.client.value()) == HELD_LIMIT + len(chunk)
    assert upstream.producerState == "producing"


def test_clientEOFBeforeTheFailureClosesAtOnce() -> None:
    """
    A client that sent EOF before its upstream failed is closed at once, not after CLOSE_LINGER.
    """
    proxied = openProxy("close")
    proxied.guard.readConnectionLost()
    assert not proxied.client.disconnecting
    proxied.refuseUpstream()
    assert proxied.client.disconnecting


def test_clientEOFBeforeConnectReachesTheUpstream() -> None:
    """
    A client's EOF that came before the upstream was open reaches it, after the held bytes.
    """
    proxied = openProxy()
    proxied.guard.dataReceived(b"QUIT\r\n")
    proxied.guard.readConnectionLost()
    proxied.connectUpstream()
    assert proxied.upstream is not None
    assert proxied.upstream.value() == b"QUIT\r\n"
    assert proxied.upstream.writeClosed


def proxyHeaderThenHeld(
    version: Literal["v1", "v2"], peer: IAddress, host: IAddress
) -> tuple[Proxied, Transport, bytes]:
    """
    A client of a proxy with C{upstream_proxy_protocol = version} sends
    bytes before its upstream is open, and then again after: what the upstream
    receives, and the header that should open it.
    """
    proxied = openProxy(proxyProtocol=version, peer=peer, host=host)
    proxied.guard.dataReceived(b"PING\r\n")
    proxied.connectUpstream()
    assert proxied.upstream is not None
    proxied.guard.dataReceived(b"GET k\r\n")
    return proxied, proxied.upstream, encodeProxyHeader(version, peer, host)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    "peer, host",
    [
        (CLIENT, LISTENER),
        (IPv6Address("TCP", "2001:db8::7", 40000), IPv6Address("TCP", "::1", 6380)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_upstreamProxyProtocolHeaderComesFirst(version: Literal["v1", "v2"], peer: IAddress, host: IAddress) -> None:
    """
    With upstream_proxy_protocol, the upstream connection opens with a PROXY
    header naming the client and the address it connected to, then the bytes
    the client sent before and after the upstream was open; the header is
    not counted as the client's bytes.
    """
    proxied, upstream, header = proxyHeaderThenHeld(version, peer, host)
    assert upstream.value() == header + b"PING\r\nGET k\r\n"
    result = HeaderReader().feed(upstream.value())
    assert result is not None
    info, rest = result
    assert (info.source, info.destination, rest) == (peer, host, b"PING\r\nGET k\r\n")
    proxied.upstreamProtocol.connectionLost(Failure(ConnectionDone()))
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    [event] = proxied.events.events(kind="connection")
    assert event["bytes_to_upstream"] == len(b"PING\r\nGET k\r\n")


@pytest.mark.parametrize(
    "version, expected", [("v1", b"PROXY UNKNOWN\r\n"), ("v2", b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")]
)
def test_upstreamProxyProtocolForAUnixClient(version: Literal["v1", "v2"], expected: bytes) -> None:
    """
    A unix-socket client has no address to name: the header is v1's UNKNOWN or v2's LOCAL, then the client's bytes.
    """
    socket = UNIXAddress(b"/run/netd/p.sock")
    _, upstream, header = proxyHeaderThenHeld(version, UNIXAddress(None), socket)
    assert header == expected
    assert upstream.value() == expected + b"PING\r\nGET k\r\n"


def test_noUpstreamProxyProtocolByDefault() -> None:
    """
    Without upstream_proxy_protocol the upstream gets the client's bytes alone.
    """
    proxied = openProxy()
    proxied.guard.dataReceived(b"PING\r\n")
    proxied.connectUpstream()
    assert proxied.upstream is not None
    assert proxied.upstream.value() == b"PING\r\n"


# Frame-aware proxying: a service with a framing other than raw.

WIRE = {
    "line": [b"PING\r\n", b"SET k v\n", b"\r\n", b"GET k\r\n"],
    "netstring": [b"4:PING,", b"0:,", b"11:hello world,"],
    "u16": [b"\x00\x04PING", b"\x00\x00", b"\x00\x0bhello world"],
    "u32": [b"\x00\x00\x00\x04PING", b"\x00\x00\x00\x00", b"\x00\x00\x00\x0bhello world"],
}
"""
Frames of each framing as they are on the wire, for the byte-exact tests
(lines with and without their CR).
"""


def feedByteAtATime(receive: Any, data: bytes) -> None:
    """
    Hand C{data} to C{receive} one byte per read.
    """
    for i in range(len(data)):
        receive(data[i : i + 1])


@pytest.mark.parametrize("framing", sorted(WIRE))
def test_framedRelayIsByteExactBothWays(framing: str) -> None:
    """
    With a framing, the frames a client sends reach the upstream exactly as
    they were on the wire (prefixes, netstring commas, each line's own CR LF
    or LF), read a byte at a time or all at once, and so do the upstream's
    frames on their way to the client; the connection event counts the
    bytes of the frames each way.
    """
    wire = b"".join(WIRE[framing])
    proxied = openProxy(framing=framing)
    proxied.guard.dataReceived(wire[:3])
    proxied.connectUpstream()
    upstream = proxied.upstream
    assert upstream is not None
    feedByteAtATime(proxied.guard.dataReceived, wire[3:])
    assert upstream.value() == wire
    proxied.guard.dataReceived(wire)
    assert upstream.value() == wire * 2
    feedByteAtATime(proxied.upstreamProtocol.dataReceived, wire)
    proxied.upstreamProtocol.dataReceived(wire)
    assert proxied.client.value() == wire * 2
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    [event] = proxied.events.events(kind="connection")
    assert event["bytes_to_upstream"] == event["bytes_in"] == len(wire) * 2
    assert event["bytes_from_upstream"] == event["bytes_out"] == len(wire) * 2
    assert event["upstream_ended"] == "closed by netd: the client closed"


def test_rawFramingKeepsItsPathOfBytes() -> None:
    """
    A raw service relays each read as it came through the plain relay, with
    no framing of the upstream's bytes: its reads are not cut or joined.
    """
    proxied, upstream = openConnected()
    receiver = proxied.guard.wrappedProtocol.receiver
    assert type(receiver) is ClientSide
    assert isinstance(receiver.upstreamFactory().buildProtocol(None), UpstreamSide)
    proxied.upstreamProtocol.dataReceived(b"\x00\x00")
    proxied.upstreamProtocol.dataReceived(b"\x00\x05he")
    assert proxied.client.value() == b"\x00\x00\x00\x05he"


def test_partialUpstreamFrameWaitsForItsEnd() -> None:
    """
    The bytes of a frame the upstream has not finished are held until its
    end arrives, then the client gets the whole frame in one write.
    """
    proxied, upstream = openConnected(framing="u16")
    proxied.upstreamProtocol.dataReceived(b"\x00\x05he")
    assert proxied.client.value() == b""
    proxied.upstreamProtocol.dataReceived(b"llo\x00")
    assert proxied.client.value() == b"\x00\x05hello"


def test_frameFaultsActOnTheUpstreamsFrames() -> None:
    """
    to_client frame faults act on the upstream's frames: split_frame sends
    one frame in pieces with a delay between them, and truncate_frame cuts
    the second frame and closes both sides.
    """
    faults = faultsFor(
        [
            {"type": "split_frame", "pieces": 2, "delay": 10, "direction": "to_client", "first": 1},
            {"type": "truncate_frame", "bytes": 3, "direction": "to_client", "every": 2},
        ],
        framing="line",
    )
    proxied, upstream = openConnected(faults, framing="line")
    proxied.upstreamProtocol.dataReceived(b"+PONG\r\n")
    assert proxied.client.value() == b"+PON"
    proxied.reactor.advance(0.01)
    assert proxied.client.value() == b"+PONG\r\n"
    proxied.upstreamProtocol.dataReceived(b"$5\r\nhello\r\n")
    assert proxied.client.value() == b"+PONG\r\n$5\r"
    assert proxied.client.disconnecting
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    assert upstream.disconnecting


def test_frameFaultsHoldingTooMuchPauseTheUpstream() -> None:
    """
    While split_frame's delayed pieces hold more than HELD_LIMIT bytes of the
    upstream's frames, netd stops reading the upstream, and reads it again
    once they have gone out.
    """
    faults = faultsFor([{"type": "split_frame", "pieces": 2, "delay": 100, "direction": "to_client"}], framing="u32")
    proxied, upstream = openConnected(faults, framing="u32")
    frame = b"x" * 16384
    wire = len(frame).to_bytes(4, "big") + frame
    for _ in range(2 * HELD_LIMIT // len(frame) + 2):
        if upstream.producerState == "paused":
            break
        proxied.upstreamProtocol.dataReceived(wire)
    assert upstream.producerState == "paused"
    assert len(proxied.client.value()) < HELD_LIMIT
    for _ in range(8):
        proxied.reactor.advance(0.1)
    assert len(proxied.client.value()) % len(wire) == 0
    assert upstream.producerState == "producing"


@pytest.mark.parametrize(
    "framing, wire",
    [("u16", b"\x00\x20"), ("u32", b"\x00\x00\x00\x20"), ("line", b"x" * 40), ("netstring", b"99:")],
)
def test_upstreamBreakingTheFramingResetsBothSides(framing: str, wire: bytes) -> None:
    """
    An upstream frame over max_frame (or a malformed one) cannot be relayed:
    both connections are reset, counted as upstream_frames_rejected, and the
    connection event says why; the frames before it reached the client.
    """
    proxied, upstream = openConnected(framing=framing, maxFrame=16)
    good = {"u16": b"\x00\x02ok", "u32": b"\x00\x00\x00\x02ok", "line": b"ok\n", "netstring": b"2:ok,"}[framing]
    proxied.upstreamProtocol.dataReceived(good + wire)
    assert proxied.client.value() == good
    assert proxied.client.disconnected and upstream.disconnected
    assert proxied.counters["upstream_frames_rejected"] == 1
    proxied.upstreamProtocol.connectionLost(Failure(ConnectionLost("reset")))
    proxied.guard.connectionLost(Failure(ConnectionLost("reset")))
    [event] = proxied.events.events(kind="connection")
    assert event["upstream_ended"].startswith("reset by netd: the upstream broke the framing")
    assert event["ended"] == "reset by netd"


def test_framedHalfCloseAndPacing() -> None:
    """
    With a framing, half-close passes each way and each side's send buffer
    paces the other's reading, as with raw bytes.
    """
    proxied, upstream = openConnected(framing="u16")
    assert proxied.client.producer is upstream
    proxied.client.producer.pauseProducing()
    assert upstream.producerState == "paused"
    proxied.client.producer.resumeProducing()
    upstream.producer.pauseProducing()
    assert proxied.client.producerState == "paused"
    upstream.producer.resumeProducing()
    proxied.guard.readConnectionLost()
    assert upstream.writeClosed
    proxied.upstreamProtocol.dataReceived(b"\x00\x01!")
    assert proxied.client.value() == b"\x00\x01!"
    proxied.upstreamProtocol.readConnectionLost()
    assert proxied.client.writeClosed
    assert proxied.client.disconnecting and upstream.disconnecting


def test_framedConnectionEventOfAnUnreachableUpstream() -> None:
    """
    A framed client whose upstream is refused gets on_upstream_failure, and
    its connection event names the upstream as configured, with nothing relayed.
    """
    proxied = openProxy(framing="line")
    proxied.guard.dataReceived(b"PING\r\n")
    proxied.refuseUpstream()
    proxied.guard.readConnectionLost()
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    [event] = proxied.events.events(kind="connection")
    assert (event["upstream"], event["bytes_to_upstream"], event["bytes_from_upstream"]) == (
        "tcp:127.0.0.1:6379",
        0,
        0,
    )
    assert event["upstream_ended"].startswith("upstream unreachable")


def test_framedProxyNeedsItsMaxFrame() -> None:
    """
    A proxy built for a framing with frames but without the service's max_frame is refused when it is built.
    """
    context = PluginContext(
        reactor=MemoryReactorClock(), log=Logger(), serviceName="p", counters=Counters(), framing="u16"
    )
    with pytest.raises(TypeError, match="u16 framing needs the service's max_frame"):
        plugin.build(ProxyOptions(upstream=UpstreamEndpoint("tcp:127.0.0.1:1")), context)
