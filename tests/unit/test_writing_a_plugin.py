"""
The smallest plugin of docs/writing-a-plugin.md is kept as it is shown: its
Python block is loaded as a module, checked and registered like any plugin,
and served in memory and through the page's config block; and C{netd}
exports the public plugin API that the page and the plugins use, without
importing it before it is asked for.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from zope.interface.verify import verifyObject

import netd
from netd.config.options import ConfigError
from netd.config.spec import parseConfig
from netd.interfaces import IFrameReceiver, IStreamHandler, PluginContext
from netd.metrics import Counters
from netd.registry import LoadedPlugin, PluginRegistry, checkPlugin
from netd.testing.memory import connect, makeStreamStack

PAGE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"


def fencedBlocks(markdown: str) -> list[tuple[str, str]]:
    """
    Every fenced block of C{markdown}, as its info string and its dedented text.
    """
    blocks = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip().startswith("```"):
            i += 1
            continue
        info = lines[i].strip()[3:].strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        blocks.append((info, textwrap.dedent("\n".join(lines[i + 1 : end]))))
        i = end + 1
    return blocks


def smallestPlugin() -> tuple[Any, str]:
    """
    The page's first Python block, run as a module, and the config block after it.
    """
    blocks = fencedBlocks(PAGE.read_text(encoding="utf-8"))
    index = next(i for i, (info, _) in enumerate(blocks) if info == "python")
    code = blocks[index][1]
    config = next(text for info, text in blocks[index + 1 :] if info == "")
    module = types.ModuleType("upper_example")
    exec(compile(code, f"{PAGE}:python", "exec"), module.__dict__)
    return module.plugin, config


def context() -> PluginContext:
    """
    A context for building a service outside a daemon.
    """
    return PluginContext(reactor=MemoryReactorClock(), log=Logger(), serviceName="upper", counters=Counters())


def test_smallestPluginIsAFewLines() -> None:
    """
    The page's smallest plugin is a dozen lines of code over the public API.
    """
    blocks = fencedBlocks(PAGE.read_text(encoding="utf-8"))
    code = next(text for info, text in blocks if info == "python")
    lines = [line for line in code.splitlines() if line.strip()]
    assert lines[0] == "from netd import FrameReceiver, StreamPlugin"
    assert len(lines) <= 14


def test_smallestPluginMeetsTheContract() -> None:
    """
    The page's plugin passes the registry's check, serves streams in line framing, needs no TLS, and its handler and receiver provide their interfaces.
    """
    plugin, _ = smallestPlugin()
    assert checkPlugin(plugin) is None
    assert (plugin.name, plugin.transports, plugin.framings, plugin.requiresTLS) == (
        "upper",
        frozenset({"stream"}),
        ("line",),
        False,
    )
    handler = plugin.build(plugin.optionsType(), context())
    verifyObject(IStreamHandler, handler)
    verifyObject(IFrameReceiver, handler.newConnection())


def test_smallestPluginServesInMemory() -> None:
    """
    Built from its (empty) options, the page's plugin sends each line back in upper case through the core's stream stack.
    """
    plugin, _ = smallestPlugin()
    handler = plugin.build(plugin.optionsType(), context())
    connection = connect(makeStreamStack(handler, "line"))
    assert connection is not None
    connection.receive(b"hello\nwor")
    connection.receive(b"ld\r\n")
    assert connection.takeSent() == b"HELLO\nWORLD\n"


def test_smallestPluginServesThroughTheConfig() -> None:
    """
    The page's config block, with the plugin registered, is accepted and the service it describes upper-cases lines; a udp: address is refused for it.
    """
    plugin, config = smallestPlugin()
    registry = PluginRegistry({"upper": LoadedPlugin(plugin, "docs/writing-a-plugin.md")}, {})
    data = tomllib.loads(config)
    [spec] = parseConfig(data, "writing-a-plugin.md", registry).services
    assert (spec.plugin, spec.framing) == (plugin, "line")
    handler = spec.plugin.build(spec.options, context())
    connection = connect(makeStreamStack(handler, spec.framing, maxFrame=spec.max_frame))
    assert connection is not None
    connection.receive(b"quiet please\n")
    assert connection.takeSent() == b"QUIET PLEASE\n"
    data["services"][0]["listen"] = ["udp:7010"]
    with pytest.raises(ConfigError):
        parseConfig(data, "writing-a-plugin.md", registry)


@pytest.mark.parametrize("name", sorted(netd.PUBLIC))
def test_publicNameExported(name: str) -> None:
    """
    Each public name of netd is the object of the module it comes from, and listed in __all__ and dir().
    """
    module = sys.modules.get(netd.PUBLIC[name]) or __import__(netd.PUBLIC[name], fromlist=[name])
    assert getattr(netd, name) is getattr(module, name)
    assert name in netd.__all__
    assert name in dir(netd)


def test_publicAPICoversThePlugins() -> None:
    """
    The names a plugin is written with (the interfaces, the context, the base classes, the option helpers) are all public.
    """
    assert set(netd.PUBLIC) >= {
        "IProtocolPlugin",
        "IStreamHandler",
        "IFrameReceiver",
        "IFrameConnection",
        "IDatagramHandler",
        "IDatagramSender",
        "PluginContext",
        "Plugin",
        "StreamPlugin",
        "FrameReceiver",
        "option",
        "between",
        "ConfigError",
    }


def test_unknownNameIsAnAttributeError() -> None:
    """
    A name netd does not export is an AttributeError, as for any module.
    """
    with pytest.raises(AttributeError, match="no attribute 'Plugins'"):
        netd.Plugins  # noqa: B018


def test_importingNetdImportsNoPluginAPI() -> None:
    """
    A fresh interpreter that imports netd has not imported the interfaces, the base classes, the options or attrs.
    """
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, netd; print(sorted(m for m in ('netd.interfaces', 'netd.bases', 'netd.config.options', 'attrs') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
