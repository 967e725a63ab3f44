"""
The faults a running service commits now: its configured list until the control
API changes it, each fault with the running count of its schedule.

The layers that act on faults read L{ServiceFaults.stream},
L{ServiceFaults.datagram} and L{ServiceFaults.frame} (empty tuples cost one
truth test per event when no fault is set), ask each L{ActiveFault}'s schedule
whether it applies to the event in hand, and report what they did through
L{ServiceFaults.applied}, which counts it and puts it in the event log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import implementer

from netd.faults.schedule import ScheduleState
from netd.faults.spec import Fault, FaultList, ServiceShape
from netd.interfaces import IRuntimeTable
from netd.metrics import Counters
from netd.config.options import ConfigError, Problem, convert, describeValue, unknownKeyProblem

if TYPE_CHECKING:
    from netd.events import EventLog

REQUEST_BODY = "request body"
"""
The source named in the problems of a bad C{PUT} body.
"""


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


def _renderFault(typeName: str, index: int, peer: str | None, details: Mapping[str, Any]) -> dict[str, Any]:
    """
    The event-log entry of one fault applied.
    """
    return {"fault": typeName, "index": index, "peer": peer, **details}


@implementer(IRuntimeTable)
class ServiceFaults:
    """
    A service's faults, as configured and as changed at runtime; the control
    API's C{/services/NAME/faults} table.

    @ivar stream: faults of the C{stream} and C{tls} families, chosen per connection.
    @ivar datagram: faults of the C{datagram} family, chosen per datagram.
    @ivar frame: faults of the C{frame} family, chosen per frame.
    """

    def __init__(self, configured: FaultList, shape: ServiceShape, counters: Counters, events: EventLog) -> None:
        self.shape = shape
        self.counters = counters
        self.events = events
        self.configured = configured
        self._listeners: list[Callable[[], None]] = []
        counters.labelCounters("faults_applied_", family="faults_applied", label="type", help="Faults applied, by fault type.")
        self._install(configured)

    def _install(self, faults: FaultList) -> None:
        """
        Put a list in force, each fault with a fresh schedule.
        """
        self.faults = faults
        self.active = tuple(ActiveFault(f, f.start(), i) for i, f in enumerate(faults))
        self.stream = tuple(a for a in self.active if a.spec.family in ("stream", "tls"))
        self.datagram = tuple(a for a in self.active if a.spec.family == "datagram")
        self.frame = tuple(a for a in self.active if a.spec.family == "frame")

    def replace(self, faults: FaultList) -> None:
        """
        Put another list in force and tell the listeners (open connections take
        the faults that can start mid-stream).
        """
        self._install(faults)
        for listener in list(self._listeners):
            listener()

    def onChange(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} after each change of the list.
        """
        self._listeners.append(listener)

    def applied(self, fault: ActiveFault, peer: str | None = None, **details: Any) -> None:
        """
        A layer applied C{fault} (to C{peer}): count it, and log it in the event log.
        """
        typeName = fault.spec.typeName
        self.counters["faults_applied_" + typeName] += 1
        if self.events.enabled:
            self.events.add("fault", _renderFault, typeName, fault.index, peer, details)

    # The control API's table.

    def get(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """
        C{GET}: the faults in force, and how many events each has applied to.
        """
        return {"faults": self.faults.toConfig(), "applied": [a.schedule.applied for a in self.active]}

    def put(self, body: Any) -> dict[str, Any]:
        """
        C{PUT}: replace the faults with C{{"faults": [...]}}.

        @raise ConfigError: naming every problem of the body; nothing changes.
        """
        self.replace(self.decodeBody(body))
        return self.get({})

    def delete(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """
        C{DELETE}: no fault any more (until a reload of a changed service).
        """
        self.replace(FaultList())
        return self.get({})

    def decodeBody(self, body: Any) -> FaultList:
        """
        The fault list of a C{PUT} body, checked against this service.

        @raise ConfigError: naming every problem, at its path inside the body.
        """
        problems: list[Problem] = []
        if not isinstance(body, dict):
            problems.append(Problem((), f'expected a JSON object {{"faults": [...]}}, got {describeValue(body)}'))
            raise ConfigError(REQUEST_BODY, problems)
        for key in body:
            if key != "faults":
                problems.append(unknownKeyProblem((), key, ["faults"]))
        if "faults" not in body:
            problems.append(Problem(("faults",), "missing required key; expected an array of fault tables, each with a type"))
        if problems:
            raise ConfigError(REQUEST_BODY, problems)
        faults = convert(body["faults"], FaultList, ("faults",), problems)
        if not problems:
            problems.extend(faults.misfits(self.shape, ("faults",)))
        if problems:
            raise ConfigError(REQUEST_BODY, problems)
        assert isinstance(faults, FaultList)
        return faults
