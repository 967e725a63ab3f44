"""
Finding plugins, and checking each against L{IProtocolPlugin} when it is
loaded (L{checkPlugin}); one that fails is reported by name and source without
stopping the others.  A config's plugin is looked for first as the built-in
module named after it (C{dns-proxy}: C{netd_plugins.dnsproxy}), and only then
among all plugins and the C{netd.plugins} entry points, so that a daemon does
not import what it does not run (docs/writing-a-plugin.md, "Packaging").
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from netd.config.options import schemaFields
from netd.config.spec import ENVELOPE_KEYS
from netd.interfaces import IProtocolPlugin
from netd.stream.framing import FRAMINGS

ENTRY_POINT_GROUP = "netd.plugins"
BUILTIN_PACKAGE = "netd_plugins"
TRANSPORTS = frozenset({"stream", "datagram"})
_PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@attrs.frozen
class LoadedPlugin:
    """
    A plugin and where it came from (C{built-in netd_plugins.echo}, or an entry point).
    """

    plugin: Any
    source: str


@attrs.define
class PluginRegistry:
    """
    Every plugin found, by name, and every one that could not be loaded.

    One made by L{discoverPlugins} starts empty and loads plugins as they are
    asked for (see the module docstring); L{plugins} and L{broken} load all of
    them first.  One made with its plugins given is complete as it is.
    """

    _plugins: dict[str, LoadedPlugin]
    _broken: dict[str, str]
    _complete: bool = True

    @property
    def plugins(self) -> dict[str, LoadedPlugin]:
        """
        Every plugin that loaded, by name.
        """
        self._loadAll()
        return self._plugins

    @property
    def broken(self) -> dict[str, str]:
        """
        The source of every plugin that could not be loaded (or whose name was
        taken), to the reason.
        """
        self._loadAll()
        return self._broken

    def get(self, name: str) -> Any | None:
        """
        The plugin called C{name}, if one loads.
        """
        if name not in self._plugins and not self._complete:
            self._add(_builtInNamedAfter(name))
            if name not in self._plugins:
                self._loadAll()
        loaded = self._plugins.get(name)
        return loaded.plugin if loaded else None

    def _loadAll(self) -> None:
        """
        Load every plugin not loaded yet, built-in then third-party.
        """
        if not self._complete:
            self._complete = True
            self._add(_candidates())

    def _add(self, candidates: list[tuple[str, Any]]) -> None:
        """
        Check and record loaded candidates; clashing names and broken plugins
        are recorded, not raised, and a source already recorded is skipped.
        """
        sources = {loaded.source for loaded in self._plugins.values()} | set(self._broken)
        for source, plugin in candidates:
            if source in sources:
                continue
            if isinstance(plugin, Exception):
                self._broken[source] = f"failed to load: {type(plugin).__name__}: {plugin}"
                continue
            try:
                problem = checkPlugin(plugin)
            except Exception as e:
                problem = f"could not be checked: {type(e).__name__}: {e}"
            if problem:
                self._broken[source] = problem
            elif plugin.name in self._plugins:
                self._broken[source] = f"its name {plugin.name!r} is taken by {self._plugins[plugin.name].source}"
            else:
                self._plugins[plugin.name] = LoadedPlugin(plugin, source)


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
        fields = schemaFields(p.optionsType)
    except Exception as e:
        return f"the annotations of its optionsType cannot be resolved: {type(e).__name__}: {e}"
    clashes = sorted(ENVELOPE_KEYS.intersection(fields))
    if clashes:
        return (
            f"plugin {p.name!r} has options named like keys every service has ({', '.join(clashes)}, in "
            f"{p.optionsType.__name__}): the core reads those keys itself, so the plugin could never be given "
            "them; rename the options"
        )
    if not isinstance(p.transports, (set, frozenset)) or not p.transports or not p.transports <= TRANSPORTS:
        return f"its transports {p.transports!r} are not a non-empty set drawn from {sorted(TRANSPORTS)}"
    if not isinstance(p.framings, (tuple, list)):
        return f"its framings {p.framings!r} are not a tuple of framing names"
    unknown = [f for f in p.framings if f not in FRAMINGS]
    if unknown:
        return f"it names unknown framings {unknown}; known: {', '.join(FRAMINGS)}"
    if ("stream" in p.transports) != bool(p.framings):
        return "it must list framings exactly when it serves streams"
    if not isinstance(p.requiresTLS, bool):
        return f"its requiresTLS {p.requiresTLS!r} is not True or False"
    if p.requiresTLS and "stream" not in p.transports:
        return "it requires TLS but serves no streams, and TLS is for streams only"
    return None


def _builtIns() -> list[str]:
    """
    The full names of the built-in plugin modules.
    """
    package = importlib.import_module(BUILTIN_PACKAGE)
    return [module.name for module in pkgutil.iter_modules(package.__path__, BUILTIN_PACKAGE + ".")]


def _loadBuiltIn(module: str) -> tuple[str, Any]:
    """
    A built-in module's plugin object with its source, or the exception that
    loading it raised.
    """
    try:
        return (f"built-in {module}", importlib.import_module(module).plugin)
    except Exception as e:
        return (f"built-in {module}", e)


def _builtInNamedAfter(name: str) -> list[tuple[str, Any]]:
    """
    The candidate of the built-in module named after plugin C{name}, if there is one.
    """
    wanted = f"{BUILTIN_PACKAGE}.{re.sub(r'[-_.]', '', name)}"
    return [_loadBuiltIn(module) for module in _builtIns() if module == wanted]


def _entryPoints(group: str) -> Any:
    """
    The installed packages' entry points of C{group}.  L{importlib.metadata}
    is imported here, as only a config naming a third-party plugin needs it.
    """
    from importlib.metadata import entry_points

    return entry_points(group=group)


def _candidates() -> list[tuple[str, Any]]:
    """
    Load every plugin object, built-in then third-party, with its source;
    a load failure becomes an exception in place of the object.
    """
    found = [_loadBuiltIn(module) for module in _builtIns()]
    for entry in _entryPoints(ENTRY_POINT_GROUP):
        source = f"entry point {entry.name!r} = {entry.value} (from {entry.dist.name if entry.dist else '?'})"
        try:
            found.append((source, entry.load()))
        except Exception as e:
            found.append((source, e))
    return found


def discoverPlugins() -> PluginRegistry:
    """
    The registry of every plugin installed, loading each when it is first
    asked for; name clashes and broken plugins are recorded, not raised.
    """
    return PluginRegistry({}, {}, complete=False)
