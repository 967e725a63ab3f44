"""
What every fault type shares: the L{Fault} base class (its schedule and its
direction), the shape of the service a fault is set on, the registry of the
types by their C{type} name, and L{ActiveFault}, one fault in force.

A fault type is one class, as a toxic is one struct in toxiproxy: its attrs
fields are its config keys (the schema), and its methods are what it does.
The families (L{netd.faults.stream}, L{netd.faults.tls},
L{netd.faults.datagrams}, L{netd.faults.frames}) each give a base class that
says which methods a type of theirs implements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, ClassVar, Literal, TypeVar

import attrs

from netd.config.options import between, option, toConfig
from netd.faults.schedule import SCHEDULE_KEYS, Scheduled, ScheduleState

Direction = Literal["to_client", "from_client", "both"]

LONGEST_DELAY_MS = 600_000.0
"""
The longest delay, latency or wait a fault may add: ten minutes.
"""


@attrs.frozen
class ServiceShape:
    """
    What a fault needs to know of the service it is set on: whether it serves
    streams and datagrams, terminates TLS, which framing it uses, and whether
    its plugin relays the client's frames on to a server of its own (the
    proxy's C{relaysFrames}), so that frame faults can act on them too.
    """

    streams: bool
    datagrams: bool
    tls: bool
    framing: str | None
    relays: bool = False


def milliseconds(help: str, default: Any = 0.0) -> Any:
    """
    A key counted in milliseconds, from 0 to L{LONGEST_DELAY_MS}.
    """
    return option(default, help=help, checks=(between(0, LONGEST_DELAY_MS),))


@attrs.frozen
class Fault(Scheduled):
    """
    What every fault type has: its schedule and its direction.

    @cvar typeName: the C{type} value that selects it.
    @cvar directions: the directions it may be given.
    @cvar midStream: whether a change through the control API applies it to
        connections already open (it can start at any byte); the others start
        with a connection.
    @cvar summary: one sentence for the docs.
    """

    typeName: ClassVar[str]
    summary: ClassVar[str]
    directions: ClassVar[tuple[str, ...]] = ("to_client", "from_client", "both")
    midStream: ClassVar[bool] = False

    direction: Direction = option(
        "both", help="Which bytes it acts on: to_client (what netd sends), from_client (what netd receives), or both."
    )

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        The schedule's rules, and a direction this type takes.
        """
        problems = super().crossCheck()
        if self.direction not in self.directions:
            if self.directions == ("both",):
                why = f"{self.typeName} acts on the whole connection, so it takes no direction"
            else:
                why = f"{self.typeName} acts on {' or '.join(self.directions)} only, not {self.direction!r}"
            problems.append(("direction", why))
        return problems

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        Why this fault cannot act on a service of this shape, or L{None}; each
        family says what it needs.
        """
        return None

    def misfits(self, shape: ServiceShape) -> list[tuple[str, str]]:
        """
        Why this fault cannot act on a service of this shape, as (key,
        problem) pairs: L{misfit}'s reason at C{type}; a family whose other
        keys depend on the shape adds theirs.
        """
        why = self.misfit(shape)
        return [] if why is None else [("type", why)]

    def multiplier(self) -> int:
        """
        How many datagrams this fault can make of one datagram and its answer
        (1: it makes no copies).
        """
        return 1

    def toConfig(self) -> dict[str, Any]:
        """
        The fault as a table: its C{type}, then every key that is set.
        """
        shared = {f.name for f in attrs.fields(Fault)}
        own = [f.name for f in attrs.fields(type(self)) if f.name not in shared]
        table: dict[str, Any] = {"type": self.typeName}
        for name in own + ["direction", *SCHEDULE_KEYS, "seed"]:
            value = getattr(self, name)
            if value is not None:
                table[name] = toConfig(value)
        return table


F = TypeVar("F", bound=type[Fault])


class FaultTypes(Mapping[str, type[Fault]]):
    """
    The fault types by their C{type} name, in the order they were registered
    (the order of the docs, the JSON Schema and the "the types are" lists).
    """

    def __init__(self) -> None:
        self._types: dict[str, type[Fault]] = {}

    def register(self, cls: F) -> F:
        """
        Make C{cls} a fault type, selected by its C{typeName}.

        @raise TypeError: if the class has no C{typeName}.
        @raise ValueError: if another class has its name.
        """
        name = getattr(cls, "typeName", None)
        if not isinstance(name, str):
            raise TypeError(f"{cls.__qualname__} has no typeName, so no config can select it")
        known = self._types.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"fault type {name!r} is {known.__qualname__} already")
        self._types[name] = cls
        return cls

    def unregister(self, cls: type[Fault]) -> None:
        """
        Forget the fault type C{cls} (a test's own, after the test).
        """
        if self._types.get(cls.typeName) is cls:
            del self._types[cls.typeName]

    def registerModule(self, module: ModuleType) -> None:
        """
        Register every fault type a module defines: its L{Fault} subclasses
        that have a C{typeName}, in the order the module defines them.
        """
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Fault)
                and value.__module__ == module.__name__
                and "typeName" in vars(value)
            ):
                self.register(value)

    def __getitem__(self, name: str) -> type[Fault]:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)


@attrs.define(eq=False)
class ActiveFault:
    """
    One fault in force: its config and its schedule's running count.

    @ivar index: its place in the service's list (the C{applied} counts follow it).
    """

    spec: Fault
    schedule: ScheduleState
    index: int

    def next(self) -> bool:
        """
        Count one event (a connection, datagram or frame); whether the fault applies to it.
        """
        return self.schedule.next()


Report = Callable[..., None]
"""
How a layer's fault machinery reports a fault applied: C{report(fault,
peer=..., **details)} counts it and puts it in the service's event log.
"""


class FaultSet:
    """
    The faults in force of one family of a service (those for its streams,
    frames or datagrams), given to the layer they act in: the faults of the
    family's base class L{kind}, and the layer's listeners, told after each
    change.

    @ivar faults: the faults of this family in force, in the list's order.
    @ivar inForce: whether there are any (read per event by the layer, so a
        plain attribute).
    """

    kind: ClassVar[type[Fault]] = Fault

    def __init__(self, report: Report) -> None:
        self.report = report
        self.faults: tuple[ActiveFault, ...] = ()
        self.inForce = False
        self._listeners: list[Callable[[], None]] = []

    def install(self, active: tuple[ActiveFault, ...]) -> None:
        """
        Take this family's faults among C{active} (the listeners are told by L{changed}).
        """
        self.faults = tuple(a for a in active if isinstance(a.spec, self.kind))
        self.inForce = bool(self.faults)

    def onChange(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} after each change of the faults.
        """
        self._listeners.append(listener)

    def changed(self) -> None:
        """
        Tell the listeners that the faults changed.
        """
        for listener in list(self._listeners):
            listener()
