"""
Services created at runtime through the control API: one service table,
decoded by the config's own rules, with its problems named by their key in
the table.
"""

from __future__ import annotations

import os
from typing import Any

from netd.config.options import ConfigError, Problem, relativeTo
from netd.config.spec import PluginSource, ServiceSpec, parseConfig

RUNTIME_SOURCE = "the service table"
"""
The source a runtime service's problems are reported against.
"""


class ServiceExists(Exception):
    """
    A service created at runtime has the name of a running service (409).
    """


class NoSuchService(Exception):
    """
    A runtime removal names no running service (404).
    """


def decodeServiceTable(table: Any, registry: PluginSource, configPath: str | None) -> ServiceSpec:
    """
    Decode one C{[[services]]} table exactly as the config file's are (its
    relative paths from the config file's folder), with each problem's key
    path taken from the table itself (C{listen[0]}, not C{services[0].listen[0]}).

    @raise ConfigError: with every problem found.
    """
    if not isinstance(table, dict):
        raise ConfigError(RUNTIME_SOURCE, [Problem((), f"expected a JSON object, got {type(table).__name__}")])
    if table.get("enabled", True) is False:
        raise ConfigError(
            RUNTIME_SOURCE, [Problem(("enabled",), "a service created at runtime runs; leave enabled out or true")]
        )
    folder = None if configPath is None else os.path.dirname(os.path.abspath(configPath))
    try:
        with relativeTo(folder):
            config = parseConfig({"services": [table]}, RUNTIME_SOURCE, registry)
    except ConfigError as e:
        raise ConfigError(RUNTIME_SOURCE, [Problem(_withinTable(p.path), p.message) for p in e.problems]) from None
    return config.services[0]


def _withinTable(path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """
    A problem's key path without the C{services[0]} it has within a file.
    """
    return path[2:] if path[:2] == ("services", 0) else path
