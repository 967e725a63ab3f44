"""
The echo plugin (C{netd_plugins.echo}) over every framing through the core
stack, over UDP, and against the plugin contract.
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs

import netd_plugins.echo
from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.datagram.listener import DatagramListener
from netd.interfaces import IDatagramHandler, IStreamHandler, PluginContext
from netd.metrics import Counters
from netd.registry import checkPlugin, discoverPlugins
from netd.stream.framing import FRAMINGS
from netd.testing.memory import (
    MemoryStreamConnection,
    RecordingDatagramSender,
    UDPMemoryReactorClock,
    connect,
    makeStreamStack,
)
from netd_plugins.echo import DROP_LOG_INTERVAL, EchoHandler, EchoOptions, plugin

PEER = ("192.0.2.7", 5353)


def test_testsShareTheInstalledPlugin() -> None:
    """
    The package pytest puts above this test module (by its folder's name, plugins.echo) is the installed netd_plugins.echo, so the tests and netd share one copy of the plugin's classes.
    """
    package = __name__.rpartition(".tests.")[0]
    assert package == "plugins.echo"
    assert sys.modules[package] is netd_plugins.echo


def buildHandler(counters: Counters | None = None) -> EchoHandler:
    """
    The echo handler, built the way a service builds it.
    """
    context = PluginContext(
        reactor=Clock(), log=Logger(namespace="test_echo"), serviceName="echo", counters=counters or Counters()
    )
    handler = plugin.build(EchoOptions(), context)
    assert isinstance(handler, EchoHandler)
    return handler


def openEcho(framing: str) -> tuple[MemoryStreamConnection, Counters]:
    """
    One in-memory connection to echo behind the core stack with C{framing}.
    """
    counters = Counters()
    connection = connect(makeStreamStack(buildHandler(counters), framing, counters=counters))
    assert connection is not None
    return connection, counters


def test_pluginMeetsTheContract() -> None:
    """
    The echo plugin object passes checkPlugin.
    """
    assert checkPlugin(plugin) is None


def test_pluginIsDiscoveredAsBuiltIn() -> None:
    """
    Plugin discovery finds this echo plugin object under the name echo, from the built-in package.
    """
    registry = discoverPlugins()
    assert registry.get("echo") is plugin
    assert registry.plugins["echo"].source == "built-in netd_plugins.echo"


def test_pluginServesEveryFramingAndBothTransports() -> None:
    """
    Echo declares every framing in the table (raw first, the default) and both transports, and its handler provides both.
    """
    assert plugin.framings == tuple(FRAMINGS)
    assert plugin.framings[0] == "raw"
    assert plugin.transports == frozenset({"stream", "datagram"})
    handler = buildHandler()
    assert IStreamHandler.providedBy(handler)
    assert IDatagramHandler.providedBy(handler)


@pytest.mark.parametrize(
    "reads",
    [
        [b"hello"],
        [b"a\r\nb\n", b"\x00\x00\x00\x05hello"],
        [b"\xff" * 1000, b"x"],
    ],
)
def test_rawEchoesExactlyWhatItRead(reads: list[bytes]) -> None:
    """
    With raw framing, echo writes back exactly the bytes it read, read by read.
    """
    connection, counters = openEcho("raw")
    for read in reads:
        connection.receive(read)
        assert connection.takeSent() == read
    assert counters.snapshot()["bytes_sent"] == counters.snapshot()["bytes_received"] == sum(map(len, reads))


ECHOES = [
    ("raw", b"a\r\nb\n", b"a\r\nb\n"),
    ("line", b"a\r\nb\n", b"a\nb\n"),
    ("line", b"\r\n\n", b"\n\n"),
    ("netstring", b"1:a,0:,3:bcd,", b"1:a,0:,3:bcd,"),
    ("u16", b"\x00\x01a\x00\x00\x00\x03bcd", b"\x00\x01a\x00\x00\x00\x03bcd"),
    ("u32", b"\x00\x00\x00\x01a\x00\x00\x00\x03bcd", b"\x00\x00\x00\x01a\x00\x00\x00\x03bcd"),
]


def test_echoesCoverEveryFraming() -> None:
    """
    The echo table has a case for every framing.
    """
    assert {framing for framing, _, _ in ECHOES} == set(FRAMINGS)


@pytest.mark.parametrize("framing, wire, echoed", ECHOES)
def test_echoesEachFrameReencoded(framing: str, wire: bytes, echoed: bytes) -> None:
    """
    Echo writes back each frame re-encoded in the connection's framing (line: CRLF in, bare LF out).
    """
    connection, _ = openEcho(framing)
    connection.receive(wire)
    assert connection.takeSent() == echoed
    assert not connection.transport.disconnecting


@pytest.mark.parametrize(
    "framing, wire",
    [
        ("line", b"hello\r\n"),
        ("netstring", b"5:hello,"),
        ("u16", b"\x00\x05hello"),
        ("u32", b"\x00\x00\x00\x05hello"),
    ],
)
def test_frameEchoedOnlyOnceComplete(framing: str, wire: bytes) -> None:
    """
    A frame arriving a byte at a time is echoed once, when its last byte arrives, and not before.
    """
    connection, _ = openEcho(framing)
    for byte in wire[:-1]:
        connection.receive(bytes([byte]))
        assert connection.transport.value() == b""
    connection.receive(wire[-1:])
    assert connection.takeSent() == wire.replace(b"\r\n", b"\n")


def test_datagramSentBackToItsSender() -> None:
    """
    EchoHandler.datagramReceived sends the datagram, unchanged, back to the peer it came from.
    """
    sender = RecordingDatagramSender()
    buildHandler().datagramReceived(b"\x00ping\xff", PEER, sender)
    assert sender.sent == [(b"\x00ping\xff", PEER)]


def test_datagramEchoedThroughTheCoreListener() -> None:
    """
    A datagram arriving on a bound UDP port is counted and echoed to its peer on the same socket.
    """
    reactor = UDPMemoryReactorClock()
    counters = Counters()
    port = reactor.listenUDP(0, DatagramListener(buildHandler(counters), counters), interface="127.0.0.1")
    port.protocol.datagramReceived(b"ping", PEER)
    assert port.protocol.transport.written == [(b"ping", PEER)]  # type: ignore[union-attr]
    assert counters["datagrams_received"] == 1
    assert counters["datagrams_sent"] == 1


def guarded(**keys: Any) -> tuple[EchoHandler, RecordingDatagramSender, Counters, Clock]:
    """
    An echo handler built from options with C{keys}, on a fake clock, and a sender recording its answers.
    """
    clock, counters = Clock(), Counters()
    context = PluginContext(reactor=clock, log=Logger(namespace="test_echo"), serviceName="echo", counters=counters)
    handler = plugin.build(EchoOptions(**keys), context)
    return handler, RecordingDatagramSender(), counters, clock


@pytest.mark.parametrize(
    ("keys", "port", "echoed"),
    [
        ({}, 1023, False),
        ({}, 7, False),
        ({}, 0, False),
        ({}, 1024, True),
        ({"min_source_port": 1}, 53, True),
        ({"min_source_port": 1}, 0, False),
        ({"min_source_port": 5000}, 4999, False),
    ],
)
def test_datagramsFromLowSourcePortsAreNotEchoed(keys: dict[str, Any], port: int, echoed: bool) -> None:
    """
    A datagram from a source port below min_source_port (1024 by default; port 0 always) is dropped and counted, not echoed.
    """
    handler, sender, counters, _ = guarded(**keys)
    handler.datagramReceived(b"x", ("192.0.2.7", port), sender)
    assert (sender.sent == [(b"x", ("192.0.2.7", port))]) is echoed
    assert counters["datagrams_low_source_port"] == (0 if echoed else 1)


def test_datagramsOverTheRateOfASourceAreNotEchoed() -> None:
    """
    One source gets burst datagrams echoed at once, then rate a second; another source has its own bucket.
    """
    handler, sender, counters, clock = guarded(rate=2.0, burst=3)
    for _ in range(5):
        handler.datagramReceived(b"x", PEER, sender)
    assert len(sender.sent) == 3 and counters["datagrams_rate_limited"] == 2
    handler.datagramReceived(b"y", ("192.0.2.8", 5353), sender)
    assert len(sender.sent) == 4
    clock.advance(0.5)
    handler.datagramReceived(b"x", PEER, sender)
    handler.datagramReceived(b"x", PEER, sender)
    assert len(sender.sent) == 5 and counters["datagrams_rate_limited"] == 3


def test_rateZeroSetsNoLimit() -> None:
    """
    rate = 0 echoes every datagram of a source, however many.
    """
    handler, sender, counters, _ = guarded(rate=0.0, burst=1)
    for _ in range(100):
        handler.datagramReceived(b"x", PEER, sender)
    assert len(sender.sent) == 100 and counters["datagrams_rate_limited"] == 0


def test_datagramsNotEchoedAreLoggedAtABoundedRate() -> None:
    """
    A flood of datagrams not echoed logs one warning per ten seconds, each with the count since the last one.
    """
    handler, sender, _, clock = guarded(rate=1.0, burst=1)
    with capturedLogs() as events:
        for _ in range(50):
            handler.datagramReceived(b"x", PEER, sender)
        clock.advance(DROP_LOG_INTERVAL)
        handler.datagramReceived(b"x", ("192.0.2.9", 80), sender)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [e["count"] for e in warnings] == [1, 49]
    assert warnings[1]["peer"] == "192.0.2.9:80"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("min_source_port = 0", "services[0].min_source_port"),
        ("rate = -1", "services[0].rate"),
        ("burst = 0", "services[0].burst"),
    ],
)
def test_guardKeysChecked(keys: str, expected: str) -> None:
    """
    Out-of-range UDP guard keys are config errors at their key paths.
    """
    text = f'[[services]]\nname = "e"\nplugin = "echo"\nlisten = ["udp:0"]\n{keys}\n'
    with pytest.raises(ConfigError) as info:
        parseConfig(tomllib.loads(text), "e.toml", discoverPlugins())
    assert f"e.toml: {expected}: " in str(info.value)
