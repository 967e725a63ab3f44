"""
netd: network protocol services from one config file, on Twisted.

The public plugin API is re-exported here (the contract of
L{netd.interfaces}, the base classes of L{netd.bases}, the option helpers
of L{netd.config.options}), each imported when it is first read, so that
C{import netd} stays cheap for what only needs the version.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The one source of netd's version: setuptools reads it for the distribution
#: (pyproject.toml), C{netd --version} prints it, and CHANGELOG.md has an entry
#: for it.
__version__ = "0.2.0"

if TYPE_CHECKING:
    from netd.bases import FrameReceiver, NoOptions, Plugin, StreamHandler, StreamPlugin
    from netd.config.options import ConfigError, ConfigPath, Problem, atLeast, between, option
    from netd.interfaces import (
        EventRecorder,
        IDatagramHandler,
        IDatagramSender,
        IFrameConnection,
        IFrameReceiver,
        IHasRuntimeTables,
        IProtocolPlugin,
        IReportsStatus,
        IRuntimeTable,
        IStreamHandler,
        PluginContext,
    )

#: Each public name, to the module it comes from.
PUBLIC: dict[str, str] = {
    **dict.fromkeys(
        [
            "EventRecorder",
            "IDatagramHandler",
            "IDatagramSender",
            "IFrameConnection",
            "IFrameReceiver",
            "IHasRuntimeTables",
            "IProtocolPlugin",
            "IReportsStatus",
            "IRuntimeTable",
            "IStreamHandler",
            "PluginContext",
        ],
        "netd.interfaces",
    ),
    **dict.fromkeys(["FrameReceiver", "NoOptions", "Plugin", "StreamHandler", "StreamPlugin"], "netd.bases"),
    **dict.fromkeys(["ConfigError", "ConfigPath", "Problem", "atLeast", "between", "option"], "netd.config.options"),
}

__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str) -> Any:
    """
    A public name, imported from its module the first time it is read.
    """
    module = PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'netd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """
    The module's names and the public ones not imported yet.
    """
    return sorted({*globals(), *PUBLIC})


