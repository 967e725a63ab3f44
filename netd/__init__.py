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
    from netd.bases import (
        FrameReceiver as FrameReceiver,
    )
    from netd.bases import (
        NoOptions as NoOptions,
    )
    from netd.bases import (
        Plugin as Plugin,
    )
    from netd.bases import (
        StreamHandler as StreamHandler,
    )
    from netd.bases import (
        StreamPlugin as StreamPlugin,
    )
    from netd.config.options import (
        ConfigError as ConfigError,
    )
    from netd.config.options import (
        ConfigPath as ConfigPath,
    )
    from netd.config.options import (
        Problem as Problem,
    )
    from netd.config.options import (
        atLeast as atLeast,
    )
    from netd.config.options import (
        between as between,
    )
    from netd.config.options import (
        option as option,
    )
    from netd.interfaces import (
        EventRecorder as EventRecorder,
    )
    from netd.interfaces import (
        IConnectionEventFields as IConnectionEventFields,
    )
    from netd.interfaces import (
        IDatagramHandler as IDatagramHandler,
    )
    from netd.interfaces import (
        IDatagramSender as IDatagramSender,
    )
    from netd.interfaces import (
        IExactFrames as IExactFrames,
    )
    from netd.interfaces import (
        IFrameConnection as IFrameConnection,
    )
    from netd.interfaces import (
        IFrameReceiver as IFrameReceiver,
    )
    from netd.interfaces import (
        IFramingViolationReceiver as IFramingViolationReceiver,
    )
    from netd.interfaces import (
        IHalfCloseableReceiver as IHalfCloseableReceiver,
    )
    from netd.interfaces import (
        IHasRuntimeTables as IHasRuntimeTables,
    )
    from netd.interfaces import (
        IPacedConnection as IPacedConnection,
    )
    from netd.interfaces import (
        IProtocolPlugin as IProtocolPlugin,
    )
    from netd.interfaces import (
        IReportsStatus as IReportsStatus,
    )
    from netd.interfaces import (
        IRuntimeTable as IRuntimeTable,
    )
    from netd.interfaces import (
        IStreamHandler as IStreamHandler,
    )
    from netd.interfaces import (
        PluginContext as PluginContext,
    )

#: Each public name, to the module it comes from.
PUBLIC: dict[str, str] = {
    **dict.fromkeys(
        [
            "EventRecorder",
            "IConnectionEventFields",
            "IDatagramHandler",
            "IDatagramSender",
            "IExactFrames",
            "IFrameConnection",
            "IFrameReceiver",
            "IFramingViolationReceiver",
            "IHalfCloseableReceiver",
            "IHasRuntimeTables",
            "IPacedConnection",
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
