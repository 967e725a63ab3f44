"""
Whether an object provides an interface, answered by its class where the
object declares nothing of its own: what a new connection asks of its framing
and receiver (half-closeable? exact frames? event fields?) several times.

zope.interface's own answer for an instance looks for the instance's
C{__provides__} first, and for an instance that has none (most of them) that
lookup raises an C{AttributeError}, with its message formatted, before it is
cleared: about 2,000 instructions a question, a few percent of a
connection's cost in Python.
"""

from __future__ import annotations

from typing import Any

from zope.interface.interface import InterfaceClass

_BY_CLASS: dict[tuple[InterfaceClass, type], bool] = {}
"""
What L{provides} has found, by interface and class.
"""

_NOTHING: dict[str, Any] = {}


def provides(interface: InterfaceClass, instance: object) -> bool:
    """
    C{interface.providedBy(instance)}: asked of zope.interface when the
    instance declares interfaces of its own (C{directlyProvides},
    C{alsoProvides}), else found once per class.  A class is taken to keep
    what it implements once its first instance has been asked about
    (C{classImplements} runs at import).
    """
    if "__provides__" in getattr(instance, "__dict__", _NOTHING):
        return bool(interface.providedBy(instance))
    key = (interface, type(instance))
    known = _BY_CLASS.get(key)
    if known is None:
        known = _BY_CLASS[key] = bool(interface.implementedBy(key[1]))
    return known
