"""
The faults a service can be told to commit, as config: the registry of fault
types (L{FAULT_TYPES}) and the decoder of a service's C{faults} list, shared
by the config file and the control API's C{PUT /services/NAME/faults} so that
both report the same problems at the same key paths.  The families:
L{netd.faults.stream}, L{netd.faults.tls}, L{netd.faults.datagrams},
L{netd.faults.frames}.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import attrs

from netd.config.options import KeyPath, Problem, closeMatch, decodeTable, describeValue
from netd.faults import datagrams, frames, stream, tls
from netd.faults.base import Fault, FaultTypes, ServiceShape
from netd.faults.datagrams import MAX_COPIES

MAX_FAULTS = 32
"""
The most faults a service's C{faults} list may hold: each is looked at for
every connection, datagram or frame, and a test needs a few.
"""

FAULT_TYPES = FaultTypes()
"""
The fault types by their C{type} name: those the family modules define, in
their order; a type of one's own is one class, given to L{FaultTypes.register}.
"""
for _family in (stream, tls, datagrams, frames):
    FAULT_TYPES.registerModule(_family)


def decodeFault(table: Any, path: KeyPath, problems: list[Problem]) -> Fault | None:
    """
    One fault table: its C{type} picks the schema the other keys are decoded by.
    """
    if not isinstance(table, dict):
        problems.append(Problem(path, f"expected a table with a type key, got {describeValue(table)}"))
        return None
    typeName = table.get("type")
    known = ", ".join(FAULT_TYPES)
    if typeName is None:
        problems.append(Problem(path + ("type",), f"missing required key; expected one of {known}"))
        return None
    if not isinstance(typeName, str):
        problems.append(
            Problem(
                path + ("type",),
                f"expected the name of a fault type, got {describeValue(typeName)}; the types are {known}",
            )
        )
        return None
    cls = FAULT_TYPES.get(typeName)
    if cls is None:
        message = f"unknown fault type {typeName!r}" + closeMatch(typeName, FAULT_TYPES, then=f"the types are {known}")
        problems.append(Problem(path + ("type",), message))
        return None
    rest = {k: v for k, v in table.items() if k != "type"}
    return decodeTable(cls, rest, path, problems, extraKnown=("type",))


@attrs.frozen
class FaultList:
    """
    The C{faults} of a service: its faults, in the order they act.
    """

    faults: tuple[Fault, ...] = ()

    configTypeName: ClassVar[str] = "an array of fault tables, each with a type"

    @classmethod
    def decodeConfig(cls, value: object, path: KeyPath, problems: list[Problem]) -> FaultList | None:
        """
        Decode an array of fault tables, each problem at its own key path.
        """
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected {cls.configTypeName}, got {describeValue(value)}"))
            return None
        if len(value) > MAX_FAULTS:
            problems.append(Problem(path, f"{len(value)} faults; at most {MAX_FAULTS}"))
            return None
        before = len(problems)
        faults = [decodeFault(table, path + (i,), problems) for i, table in enumerate(value)]
        if len(problems) > before:
            return None
        decoded = cls(tuple(f for f in faults if f is not None))
        copies = decoded.copiesOfOne()
        if copies > MAX_COPIES:
            problems.append(
                Problem(
                    path,
                    f"the duplicate faults make up to {copies} datagrams of one (the product of copies + 1, "
                    f"counted twice for those acting in both directions); at most {MAX_COPIES}",
                )
            )
            return None
        return decoded

    def copiesOfOne(self) -> int:
        """
        How many datagrams the faults can make of one datagram and its
        answers (see L{MAX_COPIES}).
        """
        product = 1
        for fault in self.faults:
            product *= fault.multiplier()
        return product

    def toConfig(self) -> list[dict[str, Any]]:
        """
        The array of fault tables.
        """
        return [f.toConfig() for f in self.faults]

    def misfits(self, shape: ServiceShape, path: KeyPath) -> list[Problem]:
        """
        A problem for each fault that cannot act on a service of this shape.
        """
        return [Problem(path + (i, key), why) for i, f in enumerate(self.faults) for key, why in f.misfits(shape)]

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def __len__(self) -> int:
        return len(self.faults)
