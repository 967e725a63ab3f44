"""
Finding plugins, and what a plugin is given to build a service.

Built-in plugins are the modules of the C{netd_plugins} package (the source
tree's C{plugins/} folder), each with a top-level C{plugin} object: adding a
module there is adding a plugin.  Third-party packages add plugins through the
C{netd.plugins} entry-point group.  Every plugin is checked against
L{IProtocolPlugin} when it is loaded, and a plugin that fails to load is
reported by name and source without stopping the others.
"""

from __future__ import annotations

import importlib
import re
import pkgutil
from importlib.metadata import entry_points
from typing import Any

import attrs
from twisted.logger import Logger
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from netd.events import EventLog
from netd.framing import FRAMINGS
from netd.interfaces import IProtocolPlugin
from netd.metrics import Counters
from netd.options import schemaFields

ENTRY_POINT_GROUP = "netd.plugins"
BUILTIN_PACKAGE = "netd_plugins"
TRANSPORTS = frozenset({"stream", "datagram"})
_PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@attrs.frozen
class PluginContext:
    """
    What the core gives a plugin to build one service's handler with.

    @ivar reactor: the reactor to listen, connect and schedule with; tests pass a
        fake one, so plugins never import the global reactor.
    @ivar log: a logger in the C{netd.plugins.<plugin>} namespace whose events
        carry the service name.
    @ivar serviceName: the service's C{name}.
    @ivar counters: the service's counters; a plugin adds its own names.
    @ivar events: the service's recent events (L{netd.events.EventLog}); a
        plugin records its own kinds (the DNS proxy's C{"query"}).  A context
        made without one (in a plugin's tests) has a log that keeps nothing.
    """

    reactor: Any
    log: Logger
    serviceName: str
    counters: Counters
    events: EventLog = attrs.field(factory=EventLog.disabled)


@attrs.frozen
class LoadedPlugin:
    """
    A plugin and where it came from (C{built-in netd_plugins.echo}, or an entry point).
    """

    plugin: Any
    source: str


@attrs.frozen
class PluginRegistry:
    """
    Every plugin found, by name, and every one that could not be loaded.

    @ivar broken: plugin name (or module) to the reason it failed to load.
    """

    plugins: dict[str, LoadedPlugin]
    broken: dict[str, str]

    def get(self, name: str) -> Any | None:
        """
        The plugin called C{name}, if one loaded.
        """
        loaded = self.plugins.get(name)
        return loaded.plugin if loaded else None


def checkPlugin(plugin: object) -> str | None:
    """
    Why C{plugin} does not meet the plugin contract, or L{None} if it does.
    """
    try:
        verifyObject(IProtocolPlugin, plugin)
    except Invalid as e:
        return f"does not provide IProtocolPlugin: {e}"
    p: Any = plugin
    if not isinstance(p.name, str) or not _PLUGIN_NAME.fullmatch(p.name):
        return f"its name {p.name!r} is not a lowercase word (letters, digits, '-', '_', '.')"
    if not (isinstance(p.optionsType, type) and attrs.has(p.optionsType)):
        return "its optionsType is not an attrs class"
    try:
        schemaFields(p.optionsType)
    except Exception as e:
        return f"the annotations of its optionsType cannot be resolved: {type(e).__name__}: {e}"
    if not isinstance(p.transports, (set, frozenset)) or not p.transports or not p.transports <= TRANSPORTS:
        return f"its transports {p.transports!r} are not a non-empty set drawn from {sorted(TRANSPORTS)}"
    if not isinstance(p.framings, (tuple, list)):
        return f"its framings {p.framings!r} are not a tuple of framing names"
    unknown = [f for f in p.framings if f not in FRAMINGS]
    if unknown:
        return f"it names unknown framings {unknown}; known: {', '.join(FRAMINGS)}"
    if ("stream" in p.transports) != bool(p.framings):
        return "it must list framings exactly when it serves streams"
    return None


def _candidates() -> list[tuple[str, Any]]:
    """
    Load every plugin object, built-in then third-party, with its source;
    a load failure becomes an exception in place of the object.
    """
    found: list[tuple[str, Any]] = []
    package = importlib.import_module(BUILTIN_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__, BUILTIN_PACKAGE + "."):
        source = f"built-in {module.name}"
        try:
            found.append((source, importlib.import_module(module.name).plugin))
        except Exception as e:
            found.append((source, e))
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {entry.name!r} = {entry.value} (from {entry.dist.name if entry.dist else '?'})"
        try:
            found.append((source, entry.load()))
        except Exception as e:
            found.append((source, e))
    return found


def discoverPlugins() -> PluginRegistry:
    """
    Find every plugin; name clashes and broken plugins are recorded, not raised.
    """
    plugins: dict[str, LoadedPlugin] = {}
    broken: dict[str, str] = {}
    for source, plugin in _candidates():
        if isinstance(plugin, Exception):
            broken[source] = f"failed to load: {type(plugin).__name__}: {plugin}"
            continue
        try:
            problem = checkPlugin(plugin)
        except Exception as e:
            problem = f"could not be checked: {type(e).__name__}: {e}"
        if problem:
            broken[source] = problem
        elif plugin.name in plugins:
            broken[source] = f"its name {plugin.name!r} is taken by {plugins[plugin.name].source}"
        else:
            plugins[plugin.name] = LoadedPlugin(plugin, source)
    return PluginRegistry(plugins, broken)
