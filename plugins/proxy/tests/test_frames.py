"""
The service's C{from_client} frame faults on the proxy: the client's frames,
decoded by the core's framing, reach the upstream split, merged, padded, cut
or mislabelled, byte for byte, beside the C{to_client} ones; and services of
plugins that relay nothing refuse them, at their key path.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure

from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.events import EventLog
from netd.faults.frames import HELD_LIMIT
from netd.interfaces import PluginContext
from netd.metrics import Counters
from netd.registry import discoverPlugins
from netd.stream.guard import GuardedConnection
from netd.testing.memory import faultsFor, makeStreamStack
from netd_plugins.proxy import ProxyOptions, UpstreamEndpoint, plugin

from .test_proxy import CLIENT, LISTENER, Proxied, Transport


class WritesTransport(Transport):
    """
    A L{Transport} that keeps each write apart, to tell one write from several.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def u32(frame: bytes, claimed: int | None = None) -> bytes:
    """
    C{frame} behind a u32 prefix stating C{claimed} (its length when L{None}).
    """
    return (len(frame) if claimed is None else claimed).to_bytes(4, "big") + frame


def openFramed(tables: list[dict[str, Any]], framing: str = "u32") -> tuple[Proxied, WritesTransport]:
    """
    A proxy service with C{framing} and the faults of C{tables}, given to the
    plugin as a service gives them, with one client whose upstream is connected.
    """
    reactor = MemoryReactorClock()
    counters = Counters()
    events = EventLog(100, reactor)
    faults = faultsFor(tables, framing=framing, relays=True, counters=counters, events=events)
    context = PluginContext(
        reactor=reactor,
        log=Logger(namespace="test_frames"),
        serviceName="p",
        counters=counters,
        events=events,
        framing=framing,
        maxFrame=65536,
        relayedFrameFaults=faults.relayedFrames,
    )
    options = ProxyOptions(upstream=UpstreamEndpoint.fromConfig("tcp:127.0.0.1:6379"))
    limiter = makeStreamStack(
        plugin.build(options, context), framing, clock=reactor, counters=counters, faults=faults, events=events
    )
    guard = limiter.buildProtocol(CLIENT)
    assert isinstance(guard, GuardedConnection)
    client = Transport(peerAddress=CLIENT, hostAddress=LISTENER)
    guard.makeConnection(client)
    proxied = Proxied(reactor, client, guard, counters, events)
    host, port, factory, _, _ = reactor.tcpClients[-1]
    proxied.upstreamProtocol = factory.buildProtocol(None)
    upstream = WritesTransport(peerAddress=IPv4Address("TCP", host, port))
    proxied.upstream = upstream
    proxied.upstreamProtocol.makeConnection(upstream)
    return proxied, upstream


def test_splitFrameReachesTheUpstreamInPieces() -> None:
    """
    split_frame from_client writes each client frame to the upstream in
    pieces, prefix included, delay milliseconds apart, and reports a fault
    event naming the client and the direction; the upstream's answers reach
    the client whole.
    """
    proxied, upstream = openFramed([{"type": "split_frame", "pieces": 3, "delay": 20, "direction": "from_client"}])
    wire = u32(b"hello world")
    proxied.guard.dataReceived(wire)
    assert upstream.writes == [wire[:5]]
    proxied.reactor.advance(0.02)
    assert upstream.writes == [wire[:5], wire[5:10]]
    proxied.reactor.advance(0.02)
    assert upstream.writes == [wire[:5], wire[5:10], wire[10:]]
    proxied.upstreamProtocol.dataReceived(u32(b"ok"))
    assert proxied.client.value() == u32(b"ok")
    [event] = proxied.events.events(kind="fault")
    assert (event["fault"], event["direction"], event["peer"], event["framing"], event["pieces"]) == (
        "split_frame",
        "from_client",
        "192.0.2.7:40000",
        "u32",
        3,
    )
    assert proxied.counters["faults_applied_split_frame"] == 1


def test_mergeFramesReachTheUpstreamInOneWrite() -> None:
    """
    merge_frames from_client holds the client's frames until count of them
    go to the upstream in one write, or until wait milliseconds have passed.
    """
    proxied, upstream = openFramed([{"type": "merge_frames", "count": 2, "wait": 50, "direction": "from_client"}])
    proxied.guard.dataReceived(u32(b"one"))
    assert upstream.writes == []
    proxied.guard.dataReceived(u32(b"two"))
    assert upstream.writes == [u32(b"one") + u32(b"two")]
    proxied.guard.dataReceived(u32(b"three"))
    proxied.reactor.advance(0.05)
    assert upstream.writes[1:] == [u32(b"three")]


def test_oversizeFramePadsTheClientsFrame() -> None:
    """
    oversize_frame from_client pads the client's frame with zero bytes to
    size, behind a prefix that says so.
    """
    proxied, upstream = openFramed([{"type": "oversize_frame", "size": 10, "direction": "from_client"}])
    proxied.guard.dataReceived(u32(b"abc"))
    assert upstream.value() == u32(b"abc" + bytes(7))


def test_corruptLengthMislabelsTheClientsFrame() -> None:
    """
    corrupt_length from_client sends the client's frame behind a prefix
    claiming one byte more (or the length given).
    """
    proxied, upstream = openFramed([{"type": "corrupt_length", "direction": "from_client", "first": 1}])
    proxied.guard.dataReceived(u32(b"abcd") + u32(b"efgh"))
    assert upstream.value() == u32(b"abcd", 5) + u32(b"efgh")


def test_truncateFrameCutsTheClientsFrameAndClosesTheUpstream() -> None:
    """
    truncate_frame from_client writes the start of the client's frame to the
    upstream and closes the upstream connection; the client's is closed once
    the upstream's is gone, and the connection event says why.
    """
    proxied, upstream = openFramed([{"type": "truncate_frame", "bytes": 6, "direction": "from_client"}])
    proxied.guard.dataReceived(u32(b"PING!!") + u32(b"more"))
    assert upstream.value() == u32(b"PING!!")[:6]
    assert upstream.disconnecting
    assert not proxied.client.disconnecting
    proxied.upstreamProtocol.connectionLost(Failure(ConnectionDone()))
    assert proxied.client.disconnecting
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    [event] = proxied.events.events(kind="connection")
    assert event["upstream_ended"] == "closed by netd: a from_client frame fault"


def test_truncateFrameWithoutCloseGoesOn() -> None:
    """
    truncate_frame from_client with close = false cuts the frame and sends
    the next ones after it, the connection open.
    """
    proxied, upstream = openFramed(
        [{"type": "truncate_frame", "bytes": 2, "close": False, "direction": "from_client", "first": 1}]
    )
    proxied.guard.dataReceived(u32(b"abcd") + u32(b"ef"))
    assert upstream.value() == b"\x00\x00" + u32(b"ef")
    assert not upstream.disconnecting


def test_lineFramesStayExact() -> None:
    """
    On a line proxy, from_client frame faults act on the client's lines as
    they were on the wire, CR LF kept.
    """
    proxied, upstream = openFramed(
        [{"type": "split_frame", "pieces": 2, "delay": 10, "direction": "from_client"}], framing="line"
    )
    proxied.guard.dataReceived(b"PING\r\n")
    assert upstream.writes == [b"PIN"]
    proxied.reactor.advance(0.01)
    assert upstream.value() == b"PING\r\n"


def test_bothDirectionsAtOnce() -> None:
    """
    A to_client and a from_client frame fault act side by side, each on its
    own direction's frames only, with its own schedule.
    """
    proxied, upstream = openFramed(
        [
            {"type": "corrupt_length", "length": 9, "direction": "to_client"},
            {"type": "oversize_frame", "size": 4, "direction": "from_client"},
        ]
    )
    proxied.guard.dataReceived(u32(b"up"))
    proxied.upstreamProtocol.dataReceived(u32(b"down"))
    assert upstream.value() == u32(b"up\x00\x00")
    assert proxied.client.value() == u32(b"down", 9)
    directions = [(e["fault"], e["direction"]) for e in proxied.events.events(kind="fault")]
    assert directions == [("oversize_frame", "from_client"), ("corrupt_length", "to_client")]


def test_clientEOFWaitsForTheHeldFrames() -> None:
    """
    The client's EOF reaches the upstream after the frames the faults hold,
    not before them.
    """
    proxied, upstream = openFramed([{"type": "split_frame", "pieces": 2, "delay": 30, "direction": "from_client"}])
    wire = u32(b"last words")
    proxied.guard.dataReceived(wire)
    proxied.guard.readConnectionLost()
    assert not upstream.writeClosed
    proxied.reactor.advance(0.03)
    assert upstream.value() == wire
    assert upstream.writeClosed


def test_clientCloseWritesTheHeldFramesFirst() -> None:
    """
    When the client closes, the upstream connection closes after the frames
    the faults still hold have been written.
    """
    proxied, upstream = openFramed([{"type": "split_frame", "pieces": 2, "delay": 30, "direction": "from_client"}])
    wire = u32(b"bye")
    proxied.guard.dataReceived(wire)
    proxied.guard.connectionLost(Failure(ConnectionDone()))
    assert not upstream.disconnecting
    proxied.reactor.advance(0.03)
    assert upstream.value() == wire
    assert upstream.disconnecting


@pytest.mark.parametrize("side", ["upstream lost", "client reset"])
def test_heldFramesDroppedWhenAConnectionEnds(side: str) -> None:
    """
    When the upstream connection is lost, or the client resets (and so the
    upstream is reset), what the faults hold is dropped and their timers
    cancelled.
    """
    proxied, upstream = openFramed([{"type": "split_frame", "pieces": 2, "delay": 30, "direction": "from_client"}])
    proxied.guard.dataReceived(u32(b"lost"))
    if side == "upstream lost":
        proxied.upstreamProtocol.connectionLost(Failure(ConnectionLost("reset")))
    else:
        proxied.guard.connectionLost(Failure(ConnectionLost("reset")))
    assert proxied.reactor.getDelayedCalls() == []
    assert upstream.writes == [u32(b"lost")[:4]]


def test_heldFramesPauseTheClient() -> None:
    """
    While the from_client faults hold more than HELD_LIMIT bytes, netd stops
    reading the client, and reads it again once they have gone out.
    """
    proxied, upstream = openFramed([{"type": "split_frame", "pieces": 2, "delay": 100, "direction": "from_client"}])
    wire = u32(b"x" * 16384)
    for _ in range(2 * HELD_LIMIT // len(wire) + 2):
        if proxied.client.producerState == "paused":
            break
        proxied.guard.dataReceived(wire)
    assert proxied.client.producerState == "paused"
    for _ in range(8):
        proxied.reactor.advance(0.1)
    assert len(upstream.value()) % len(wire) == 0
    assert proxied.client.producerState == "producing"


def serviceConfig(pluginKeys: str, faults: str) -> Any:
    """
    A config of one line-framed service with C{pluginKeys} and C{faults}.
    """
    text = (
        f'[[services]]\nname = "s"\n{pluginKeys}\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        f'framing = "line"\nfaults = [{faults}]\n'
    )
    return parseConfig(tomllib.loads(text), "s.toml", discoverPlugins())


def test_fromClientRefusedWhereNothingIsRelayed() -> None:
    """
    A from_client frame fault on a service whose plugin relays no frames
    (echo) is refused at its direction's key path, by the config and by the
    control API; the proxy takes it.
    """
    fault = '{ type = "split_frame", direction = "from_client" }'
    with pytest.raises(ConfigError) as info:
        serviceConfig('plugin = "echo"', fault)
    assert "s.toml: services[0].faults[0].direction: split_frame from_client acts on the client's frames" in str(
        info.value
    )
    config = serviceConfig('plugin = "proxy"\nupstream = "tcp:127.0.0.1:6379"', fault)
    assert config.services[0].shape.relays
    with pytest.raises(ConfigError) as info:
        faultsFor([], framing="line").decodeBody({"faults": [{"type": "truncate_frame", "direction": "from_client"}]})
    assert "faults[0].direction: truncate_frame from_client" in str(info.value)
