"""
How netd words what it counts in its messages: "1 service", "2 services".
"""

from __future__ import annotations


def counted(count: float, noun: str, plural: str | None = None) -> str:
    """
    C{count} and C{noun}, in the singular for exactly one and in the plural
    (C{plural}, else C{noun} with an s) otherwise, so that no message says
    "1 services" or falls back on "service(s)".  A fractional count takes the
    plural ("1.0 seconds"), as English does.

    Log calls pass this as a field of its own beside the number, which stays
    a field for machines.
    """
    if count == 1 and isinstance(count, int):
        return f"{count} {noun}"
    return f"{count} {plural if plural is not None else noun + 's'}"
