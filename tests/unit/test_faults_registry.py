"""
Fault types as classes (L{netd.faults.base.FaultTypes}, L{netd.faults.spec.FAULT_TYPES}):
the registry is made from the classes, a type of one's own is one class
registered, and the layers reach the faults only through the protocols they
declare.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.datagram.listener import DatagramListener
from netd.faults import datagrams, frames, stream, tls
from netd.faults.base import Fault, FaultTypes, milliseconds
from netd.faults.datagrams import DatagramFault, DatagramStep, Drop
from netd.faults.spec import FAULT_TYPES
from netd.faults.stream import Pacing
from netd.metrics import Counters
from netd.registry import discoverPlugins
from netd.stream.guard import GuardedConnection
from netd.testing.memory import PEER, MemoryStreamConnection, UDPMemoryReactorClock, faultsFor, makeStreamStack
from netd_plugins.echo import EchoHandler

ROOT = Path(__file__).resolve().parents[2]


@attrs.frozen
class Trickle(Pacing):
    """
    A test's own fault type: one byte at a time, C{ms} milliseconds apart.
    """

    typeName = "trickle"
    midStream = True
    separateSends = True
    summary = "Pass one byte at a time, ms milliseconds apart."
    ms: float = milliseconds("Milliseconds between two bytes.", default=attrs.NOTHING)

    def strictness(self) -> float:
        return -self.ms

    def pieceSize(self) -> int:
        return 1

    def gapAfter(self, size: int) -> float:
        return self.ms / 1000


@attrs.frozen
class Reverse(DatagramFault):
    """
    A test's own datagram fault: the datagram's bytes in reverse order.
    """

    typeName = "reverse"
    summary = "Send the datagram's bytes in reverse order."

    def apply(self, step: DatagramStep, datagram: bytes) -> None:
        step.applied(size=len(datagram))
        step.passOn(datagram[::-1])


@pytest.fixture
def reverse() -> Iterator[type[Reverse]]:
    """
    L{Reverse} registered for one test.
    """
    FAULT_TYPES.register(Reverse)
    yield Reverse
    FAULT_TYPES.unregister(Reverse)


@pytest.fixture
def trickle() -> Iterator[type[Trickle]]:
    """
    L{Trickle} registered, the documented way, for one test.
    """
    FAULT_TYPES.register(Trickle)
    yield Trickle
    FAULT_TYPES.unregister(Trickle)


def test_builtInTypesComeFromTheFamilyModules() -> None:
    """
    The registry holds exactly the classes with a typeName that the family modules define, in their order.
    """
    defined = [
        value
        for module in (stream, tls, datagrams, frames)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Fault)
        and value.__module__ == module.__name__
        and "typeName" in vars(value)
    ]
    assert list(FAULT_TYPES.values()) == defined
    assert all(FAULT_TYPES[cls.typeName] is cls for cls in defined)


def test_registerRefusesNamelessAndTakenTypes() -> None:
    """
    A class without a typeName, or with one another class has, is refused; registering a class twice is harmless.
    """
    types = FaultTypes()
    types.register(Drop)
    types.register(Drop)
    assert list(types) == ["drop"]
    with pytest.raises(TypeError, match="no typeName"):
        types.register(Pacing)

    @attrs.frozen
    class OtherDrop(Drop):
        typeName = "drop"

    with pytest.raises(ValueError, match="'drop' is Drop already"):
        types.register(OtherDrop)
    types.unregister(OtherDrop)
    assert types["drop"] is Drop


def test_noTypeNameComparisons() -> None:
    """
    No code under netd/ picks a behaviour by comparing a fault's typeName with a string.
    """
    offenders = []
    for path in (ROOT / "netd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                names = [n for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr == "typeName"]
                strings = [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                if names and strings:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("layer", ["netd/stream", "netd/datagram", "netd/tls"])
def test_layersDoNotImportFaults(layer: str) -> None:
    """
    The layers faults act in reach them through the protocols they declare, never by importing netd.faults.
    """
    for path in (ROOT / layer).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("netd.faults"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("netd.faults") for a in node.names), path


def test_ownTypeIsAcceptedByTheConfig(trickle: type[Trickle]) -> None:
    """
    A registered fault type of one's own is a valid faults entry of a config, with its keys checked like any other.
    """
    text = textwrap.dedent(
        """
        [[services]]
        name = "slow"
        plugin = "echo"
        listen = ["tcp:0:interface=127.0.0.1"]
        faults = [{ type = "trickle", ms = 5 }]
        """
    )
    config = parseConfig(tomllib.loads(text), "test.toml", discoverPlugins())
    [fault] = config.services[0].faults
    assert fault == Trickle(ms=5)
    with pytest.raises(ConfigError, match=r"faults\[0\]\.ms: missing required key"):
        parseConfig(tomllib.loads(text.replace(", ms = 5", "")), "test.toml", discoverPlugins())


def test_ownTypeUnknownOnceUnregistered() -> None:
    """
    Without registering it, a type of one's own is an unknown fault type.
    """
    with pytest.raises(ConfigError, match="unknown fault type 'trickle'"):
        faultsFor([{"type": "trickle", "ms": 5}])


def test_ownTypeActsOnAConnection(trickle: type[Trickle]) -> None:
    """
    A registered fault type of one's own acts on an in-memory connection: the echo comes back one byte per gap, and is counted.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    faults = faultsFor([{"type": "trickle", "ms": 10, "direction": "to_client"}], counters=counters)
    limiter = makeStreamStack(EchoHandler(), "raw", clock=clock, counters=counters, faults=faults)
    protocol = limiter.buildProtocol(PEER)
    assert isinstance(protocol, GuardedConnection)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    connection = MemoryStreamConnection(transport, protocol, limiter)
    connection.receive(b"abc")
    assert transport.value() == b"a"
    clock.advance(0.01)
    assert transport.value() == b"ab"
    clock.advance(0.01)
    assert transport.value() == b"abc"
    assert counters["faults_applied_trickle"] == 1


def test_ownDatagramTypeActsOnAListener(reverse: type[Reverse]) -> None:
    """
    A registered datagram fault of one's own takes its place in a listener's chain: the echo's answer comes back reversed.
    """
    reactor = UDPMemoryReactorClock()
    counters = Counters()
    faults = faultsFor([{"type": "reverse", "direction": "to_client"}], counters=counters)
    listener = DatagramListener(EchoHandler(), counters, faults=faults.datagrams, clock=reactor)
    reactor.listenUDP(0, listener)
    listener.datagramReceived(b"abc", ("127.0.0.1", 40000))
    written = listener.transport.written  # type: ignore[union-attr]
    assert [datagram for datagram, _ in written] == [b"cba"]
    assert counters["faults_applied_reverse"] == 1


def test_docsExampleIsTheRealFault() -> None:
    """
    The fault shown in docs/faults.md's "Writing a fault" is drop's class as netd defines it.
    """
    page = (ROOT / "docs" / "faults.md").read_text(encoding="utf-8")
    section = page.split("## Writing a fault", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "no python block in the Writing a fault section"
    source = inspect.getsource(Drop)
    assert blocks[0] == source
