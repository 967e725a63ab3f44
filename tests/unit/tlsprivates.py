"""
What proves that only the record pump (netd/tls/pump.py) touches private
names of Twisted's TLS protocol and of pyOpenSSL: a guard that makes every
such name raise when code of another netd module reads or sets it (for the
TLS suite's run on the public path), and a scan of netd's sources for them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from netd.testing.memory import TestClientTLS

ALLOWED = ("netd.tls.pump",)
"""
The one netd module that may touch the private names (the reactors' own
contained modules are another check's).
"""

GUARDED = (TLSMemoryBIOProtocol, TLSMemoryBIOFactory, SSL.Connection, SSL.Context)
"""
The classes whose private names the guard watches (and so their subclasses, netd's own).
"""

NETD = Path(__file__).resolve().parents[2] / "netd"


def _private(names: Any) -> set[str]:
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def dependencyPrivates() -> frozenset[str]:
    """
    The private names of the L{GUARDED} classes: their methods and class
    attributes, and the fields their own code sets on an instance.
    """
    names: set[str] = set()
    for cls in GUARDED:
        names |= _private(dir(cls))
    context = SSL.Context(SSL.TLS_METHOD)
    names |= _private(vars(context)) | _private(vars(SSL.Connection(context, None)))
    factory = TLSMemoryBIOFactory(TestClientTLS(), True, Factory.forProtocol(Protocol), clock=Clock())
    protocol = factory.buildProtocol(None)
    assert protocol is not None
    protocol.makeConnection(StringTransport())
    names |= _private(vars(protocol)) | _private(vars(factory))
    return frozenset(names)


class PrivateNameUsed(Exception):
    """
    A netd module other than the pump touched a dependency's private name
    (not an AttributeError: C{ProtocolWrapper.__getattr__} or C{hasattr}
    would swallow it).
    """


def forbidPrivatesOutsidePump(monkeypatch: pytest.MonkeyPatch) -> frozenset[str]:
    """
    Make every name of L{dependencyPrivates} raise L{PrivateNameUsed} when
    read, set or deleted by code of a netd module other than the pump (the
    dependencies' own code, and the tests', still reach them).

    @return: the names guarded.
    """
    forbidden = dependencyPrivates()

    def check(obj: object, name: str) -> None:
        if name in forbidden:
            module = sys._getframe(2).f_globals.get("__name__", "")
            if module.startswith("netd.") and module not in ALLOWED:
                raise PrivateNameUsed(f"{module} touched the private {type(obj).__name__}.{name}")

    for cls in GUARDED:
        getter, setter, deleter = cls.__getattribute__, cls.__setattr__, cls.__delattr__

        def guardedGet(obj: object, name: str, getter: Any = getter) -> Any:
            check(obj, name)
            return getter(obj, name)

        def guardedSet(obj: object, name: str, value: Any, setter: Any = setter) -> None:
            check(obj, name)
            setter(obj, name, value)

        def guardedDelete(obj: object, name: str, deleter: Any = deleter) -> None:
            check(obj, name)
            deleter(obj, name)

        monkeypatch.setattr(cls, "__getattribute__", guardedGet)
        monkeypatch.setattr(cls, "__setattr__", guardedSet)
        monkeypatch.setattr(cls, "__delattr__", guardedDelete)
    return forbidden


SCANNED_PRIVATES = frozenset(
    {
        # pyOpenSSL
        "_util",
        "_ssl",
        "_into_ssl",
        "_from_ssl",
        "_raise_ssl_error",
        "_handle_bio_errors",
        "_lib",
        "_ffi",
        # Twisted's TLS protocol and factory
        "_tlsConnection",
        "_handshakeDone",
        "_appSendBuffer",
        "_creatorCallable",
        "_checkHandshakeStatus",
        "_aggregator",
        "_lostTLSConnection",
        "_aborted",
        "_flushSendBIO",
        "_flushReceiveBIO",
        "_bufferedWrite",
        "_tlsShutdownFinished",
        "_shutdownTLS",
        "_unbufferPendingWrites",
        "_producer",
        "_connectWrapped",
    }
)
"""
Private names of pyOpenSSL and Twisted's TLS that netd's own code does not
use for names of its own, so a scan of the sources can spot them (C{_context},
C{_write} and C{_reason} are left to the guard: netd's classes have their own).
"""


def netdSources() -> Iterator[tuple[str, Path]]:
    """
    Every module of netd but the pump and the reactors' (which hold their
    own contained private uses), by module name.
    """
    for path in sorted(NETD.rglob("*.py")):
        module = "netd." + ".".join(path.relative_to(NETD).with_suffix("").parts)
        if module in ALLOWED or module.startswith("netd.reactors."):
            continue
        yield module, path


def privateUses(source: str) -> list[str]:
    """
    The dependency private names a module's source touches: as an attribute
    (C{x._ssl}), in C{getattr}/C{hasattr}/C{setattr} with a literal name, or
    imported (C{OpenSSL._util}).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in SCANNED_PRIVATES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
        ):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in SCANNED_PRIVATES:
                found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            parts = node.module.split(".") + [alias.name for alias in node.names]
            if parts[0] in ("OpenSSL", "twisted") and any(
                p in SCANNED_PRIVATES or p.startswith("_") and p != "__future__" for p in parts[1:]
            ):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in ("OpenSSL", "twisted") and any(p.startswith("_") for p in parts[1:]):
                    found.append(f"line {node.lineno}: import {alias.name}")
    return found
