"""
The tls-echo plugin (C{netd_plugins.tlsecho}): the plugin contract, the config
rules it brings (TLS required, streams only), and the echo through the core's
stack with TLS in every framing, in memory.  Certificates are made by
L{netd.tls.devcerts} in a temporary folder.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.daemon.service import NetService
from netd.interfaces import IStreamHandler, PluginContext
from netd.metrics import Counters
from netd.registry import checkPlugin, discoverPlugins
from netd.stream.framing import FRAMINGS
from netd.testing.memory import connect, connectTLS, makeStreamStack
from netd.tls.client import clientCreator
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet
from netd.tls.options import TLSOptions
from netd.tls.protocol import TLSServerFactory
from netd_plugins import echo
from netd_plugins.tlsecho import TLSEchoOptions, plugin

SOURCE = "test.toml"

FRAMED = {
    "raw": b"hello, TLS\x00\xff",
    "line": b"hello\nworld\n",
    "netstring": b"5:hello,0:,5:world,",
    "u16": b"\x00\x05hello\x00\x00\x00\x05world",
    "u32": b"\x00\x00\x00\x05hello\x00\x00\x00\x00",
}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentSet:
    """
    A development set (CA, localhost server certificate, client certificate).
    """
    files, _ = ensureDevelopmentSet(str(tmp_path_factory.mktemp("certs")))
    return files


def service(**keys: Any) -> dict[str, Any]:
    """
    One tls-echo service table, with C{keys} changed or added (a value of L{None} removes the key).
    """
    table: dict[str, Any] = {
        "name": "secure",
        "plugin": "tls-echo",
        "listen": ["tcp:0"],
        "tls": {"certificate": "auto"},
    }
    table.update(keys)
    return {key: value for key, value in table.items() if value is not None}


def problems(table: dict[str, Any]) -> list[str]:
    """
    The problems netd reports for a config of one service table.
    """
    with pytest.raises(ConfigError) as info:
        parseConfig({"services": [table]}, SOURCE, discoverPlugins())
    return str(info.value).splitlines()


def test_pluginContract() -> None:
    """
    tls-echo meets the plugin contract, is found as a built-in, serves streams only in every framing, and requires TLS.
    """
    assert checkPlugin(plugin) is None
    loaded = discoverPlugins().plugins["tls-echo"]
    assert loaded.plugin is plugin
    assert loaded.source == "built-in netd_plugins.tlsecho"
    assert plugin.transports == frozenset({"stream"})
    assert plugin.framings == tuple(FRAMINGS)
    assert plugin.requiresTLS is True


def test_handlerIsTheEcho() -> None:
    """
    The handler tls-echo builds is the echo plugin's own handler, not a copy of it.
    """
    context = PluginContext(reactor=MemoryReactorClock(), log=Logger(), serviceName="secure", counters=Counters())
    handler = plugin.build(TLSEchoOptions(), context)
    assert type(handler) is echo.EchoHandler
    assert IStreamHandler.providedBy(handler)


def test_withoutTLSRefused() -> None:
    """
    A tls-echo service without a tls table is refused, naming the key, the plugin and how to add the table.
    """
    (line,) = problems(service(tls=None))
    assert line.startswith(
        f"{SOURCE}: services[0].tls: missing; plugin 'tls-echo' serves only over TLS: add a tls table"
    )


def test_datagramListenRefused() -> None:
    """
    A udp: listen string on a tls-echo service is refused: the plugin serves streams only.
    """
    lines = problems(service(listen=["tcp:0", "udp:0"]))
    assert any(
        line.startswith(f"{SOURCE}: services[0].listen[1]: plugin 'tls-echo' does not serve datagrams")
        for line in lines
    ), lines


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_everyFramingAccepted(framing: str) -> None:
    """
    A tls-echo service accepts every framing of the core, with its tls table kept in the spec.
    """
    config = parseConfig({"services": [service(framing=framing)]}, SOURCE, discoverPlugins())
    (spec,) = config.services
    assert spec.framing == framing
    assert spec.tls == TLSOptions(certificate="auto")


def test_serviceTerminatesTLS(tmp_path: Path) -> None:
    """
    A tls-echo service built from its config has TLS between its connection guard and its framing, with the auto certificate made in the state directory.
    """
    config = parseConfig({"services": [service()]}, SOURCE, discoverPlugins())
    built = NetService(config.services[0], MemoryReactorClock(), 10, stateDir=str(tmp_path))
    assert built.connections is not None
    assert isinstance(built.connections.wrappedFactory, TLSServerFactory)
    assert (tmp_path / "tls" / "ca.pem").exists() and (tmp_path / "tls" / "server.pem").exists()


@pytest.mark.parametrize("framing", sorted(FRAMED))
def test_echoThroughTLS(dev: DevelopmentSet, framing: str) -> None:
    """
    A client that verifies the certificate and its name gets every frame back through TLS, in every framing.
    """
    clock = MemoryReactorClock()
    tls = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    stack = makeStreamStack(plugin.build(TLSEchoOptions(), _context(clock)), framing, clock=clock, tls=tls)
    client = connectTLS(stack, clientCreator("localhost", dev.ca), clock)
    assert client is not None and client.handshakeDone
    client.send(FRAMED[framing])
    assert client.takeReceived() == FRAMED[framing]


def test_largePayloadThroughTLS(dev: DevelopmentSet) -> None:
    """
    Several MiB sent through TLS come back whole and in order.
    """
    clock = MemoryReactorClock()
    tls = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    stack = makeStreamStack(plugin.build(TLSEchoOptions(), _context(clock)), "raw", clock=clock, tls=tls)
    client = connectTLS(stack, clientCreator("127.0.0.1", dev.ca), clock)
    assert client is not None
    payload = random.Random(4).randbytes(3 * 2**20)
    client.send(payload)
    assert client.takeReceived() == payload


def test_plainTextNotEchoed(dev: DevelopmentSet) -> None:
    """
    Plain bytes sent to a tls-echo stack are never echoed: the connection is closed and counted as not TLS.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    tls = TLSOptions(certificate=dev.server, private_key=dev.serverKey)
    stack = makeStreamStack(
        plugin.build(TLSEchoOptions(), _context(clock)), "line", clock=clock, counters=counters, tls=tls
    )
    connection = connect(stack)
    assert connection is not None
    connection.receive(b"hello in the clear\n")
    assert connection.transport.disconnecting
    connection.finishClose()
    assert b"hello in the clear" not in connection.takeSent()
    assert counters["tls_handshakes_failed_not_tls"] == 1


def _context(clock: MemoryReactorClock) -> PluginContext:
    """
    The context a service gives the plugin.
    """
    return PluginContext(reactor=clock, log=Logger(namespace="test_tlsecho"), serviceName="secure", counters=Counters())
