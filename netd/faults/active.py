"""
The faults a running service commits now: its configured list until the control
API changes it, each fault with the running count of its schedule.

L{ServiceFaults} is the control API's C{faults} table, and hands each layer
its family of faults: L{ServiceFaults.streams} to the connection guard,
L{ServiceFaults.frames} to the framing, L{ServiceFaults.relayedFrames} to a
plugin that relays the client's frames onward, L{ServiceFaults.datagrams} to
the UDP listeners (each the small collaborator that layer declares).  The layers
report what they did through L{ServiceFaults.applied}, which counts it and
puts it in the event log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zope.interface import implementer

from netd.config.options import ConfigError, Problem, convert, describeValue, unknownKeyProblem
from netd.events import EventLog
from netd.faults.base import ActiveFault, FaultSet, ServiceShape
from netd.faults.datagrams import DatagramFaultSet
from netd.faults.frames import FrameFaultSet
from netd.faults.spec import FaultList
from netd.faults.stream import StreamFaultSet
from netd.interfaces import IRuntimeTable
from netd.metrics import Counters

REQUEST_BODY = "request body"
"""
The source named in the problems of a bad C{PUT} body.
"""


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

    @ivar streams: the stream and TLS faults, for the connection guard (chosen per connection).
    @ivar frames: the C{to_client} frame faults, for the framing (chosen per frame).
    @ivar relayedFrames: the C{from_client} frame faults, for a plugin that
        sends the client's frames on (the proxy, through its L{PluginContext}).
    @ivar datagrams: the datagram faults, for the UDP listeners (chosen per datagram).
    """

    def __init__(self, configured: FaultList, shape: ServiceShape, counters: Counters, events: EventLog) -> None:
        self.shape = shape
        self.counters = counters
        self.events = events
        self.configured = configured
        self.streams = StreamFaultSet(self.applied)
        self.frames = FrameFaultSet(self.applied)
        self.relayedFrames = FrameFaultSet(self.applied, "from_client")
        self.datagrams = DatagramFaultSet(self.applied)
        self._families: tuple[FaultSet, ...] = (self.streams, self.frames, self.relayedFrames, self.datagrams)
        counters.labelCounters(
            "faults_applied_", family="faults_applied", label="type", help="Faults applied, by fault type."
        )
        self._install(configured)

    def _install(self, faults: FaultList) -> None:
        """
        Put a list in force, each fault with a fresh schedule.
        """
        self.faults = faults
        self.active = tuple(ActiveFault(f, f.start(), i) for i, f in enumerate(faults))
        for family in self._families:
            family.install(self.active)

    def replace(self, faults: FaultList) -> None:
        """
        Put another list in force and tell the layers (open connections take
        the faults that can start mid-stream).
        """
        self._install(faults)
        for family in self._families:
            family.changed()

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
            problems.append(
                Problem(("faults",), "missing required key; expected an array of fault tables, each with a type")
            )
        if problems:
            raise ConfigError(REQUEST_BODY, problems)
        faults = convert(body["faults"], FaultList, ("faults",), problems)
        if not problems:
            problems.extend(faults.misfits(self.shape, ("faults",)))
        if problems:
            raise ConfigError(REQUEST_BODY, problems)
        assert isinstance(faults, FaultList)
        return faults
