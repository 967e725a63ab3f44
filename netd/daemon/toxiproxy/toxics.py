"""
toxiproxy's toxics as netd's stream faults: one L{Toxic} as toxiproxy holds
and shows it (name, type, stream, toxicity, attributes), and the fault table
it becomes (L{Toxic.fault}).  Pure data: nothing here touches a service.
docs/toxiproxy.md has the table of the mapping and where it differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from netd.config.options import Problem, convert
from netd.faults.spec import FaultList

STREAMS = {"upstream": "from_client", "downstream": "to_client"}
"""
toxiproxy's C{stream} to the C{direction} of netd's faults: upstream is what
the client sends towards the server, downstream what comes back to it.
"""


class ToxicError(Exception):
    """
    A toxic toxiproxy would refuse, with the status toxiproxy answers (400,
    404, 409) and its message.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _latency(a: Mapping[str, int]) -> dict[str, Any] | None:
    return {"type": "latency", "ms": a["latency"], "jitter": a["jitter"]}


def _bandwidth(a: Mapping[str, int]) -> dict[str, Any] | None:
    # toxiproxy's rate is in KB/s of 1000 bytes; 0 (or less) lets everything through.
    return {"type": "bandwidth", "rate": a["rate"] * 1000} if a["rate"] > 0 else None


def _slicer(a: Mapping[str, int]) -> dict[str, Any] | None:
    # toxiproxy's delay is in microseconds.
    table = {"type": "slice", "size": a["average_size"], "delay": a["delay"] / 1000}
    if a["size_variation"]:
        table["variation"] = a["size_variation"]
    return table


TOXIC_TYPES: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, int]], dict[str, Any] | None]]] = {
    "latency": (("latency", "jitter"), _latency),
    "bandwidth": (("rate",), _bandwidth),
    "slow_close": (("delay",), lambda a: {"type": "slow_close", "ms": a["delay"]}),
    "timeout": (("timeout",), lambda a: {"type": "blackhole", "close_after_ms": a["timeout"]}),
    "reset_peer": (("timeout",), lambda a: {"type": "reset_on_data", "ms": a["timeout"]}),
    "slicer": (("average_size", "size_variation", "delay"), _slicer),
    "limit_data": (("bytes",), lambda a: {"type": "close_after", "bytes": a["bytes"]}),
}
"""
Each toxic type toxiproxy ships: its attributes (integers, 0 when not given,
as toxiproxy's Go structs have them) and the netd fault it becomes (L{None}:
none, as toxiproxy's C{bandwidth} with rate 0 does nothing).
"""


@attrs.frozen
class Toxic:
    """
    One toxic of a proxy, as toxiproxy's API shows it.
    """

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, int]

    @classmethod
    def fromJSON(cls, body: object) -> Toxic:
        """
        A toxic from the body of C{POST /proxies/NAME/toxics}, with
        toxiproxy's defaults: stream C{downstream}, toxicity 1, the name
        C{TYPE_STREAM}, every attribute 0 unless given.

        @raise ToxicError: what toxiproxy would answer 400.
        """
        if not isinstance(body, dict):
            raise ToxicError("bad request body: expected a JSON object")
        stream = body.get("stream", "downstream")
        if stream not in STREAMS:
            raise ToxicError("stream was invalid, can be either upstream or downstream")
        kind = body.get("type")
        if kind not in TOXIC_TYPES:
            raise ToxicError(f"invalid toxic type: {kind!r}; netd knows {', '.join(TOXIC_TYPES)}")
        name = body.get("name") or f"{kind}_{stream}"
        if not isinstance(name, str):
            raise ToxicError("bad request body: name must be a string")
        toxicity = _toxicity(body.get("toxicity", 1.0))
        attributes = _attributes(kind, {}, body.get("attributes"))
        return cls(name, kind, stream, toxicity, attributes)

    def updated(self, body: object) -> Toxic:
        """
        This toxic with C{POST /proxies/NAME/toxics/TOXIC}'s body applied:
        the attributes given replace theirs, the others stay, and so does the
        toxicity unless given (toxiproxy's update; name, type and stream stay).

        @raise ToxicError: what toxiproxy would answer 400.
        """
        if not isinstance(body, dict):
            raise ToxicError("bad request body: expected a JSON object")
        toxicity = _toxicity(body["toxicity"]) if "toxicity" in body else self.toxicity
        return attrs.evolve(
            self, toxicity=toxicity, attributes=_attributes(self.type, self.attributes, body.get("attributes"))
        )

    def fault(self) -> dict[str, Any] | None:
        """
        The netd fault table this toxic becomes: its type's mapping, the
        direction of its stream, and its toxicity as the probability that it
        acts on a connection (none when 1, so that it also acts on the
        connections already open).
        """
        table = TOXIC_TYPES[self.type][1](self.attributes)
        if table is None:
            return None
        table["direction"] = STREAMS[self.stream]
        if self.toxicity < 1:
            table["probability"] = max(0.0, self.toxicity)
        return table

    def toJSON(self) -> dict[str, Any]:
        """
        The toxic as toxiproxy answers it.
        """
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }


def _toxicity(value: object) -> float:
    """
    A toxicity as given: a number (toxiproxy's float32).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToxicError(f"bad request body: toxicity must be a number, got {value!r}")
    return float(value)


def _attributes(kind: str, current: Mapping[str, int], given: object) -> dict[str, int]:
    """
    A toxic type's attributes: those given (integers, as toxiproxy's Go
    structs take them), the others as C{current} has them or 0.  Keys the
    type does not have are ignored, as toxiproxy ignores them.
    """
    names = TOXIC_TYPES[kind][0]
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ToxicError("bad request body: attributes must be a JSON object")
    attributes = {name: current.get(name, 0) for name in names}
    for name in names:
        if name in given:
            value = given[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ToxicError(
                    f"bad request body: attribute {name} of a {kind} toxic must be an integer, got {value!r}"
                )
            attributes[name] = value
    return attributes


def faultList(toxics: Iterable[Toxic]) -> FaultList:
    """
    The fault list of a proxy's toxics, in the order they were added,
    checked by the config's own rules.

    @raise ToxicError: a toxic netd cannot apply (an attribute out of the
        fault's range, too many toxics), with the problems named by toxic.
    """
    named = [(toxic.name, table) for toxic in toxics if (table := toxic.fault()) is not None]
    problems: list[Problem] = []
    faults = convert([table for _, table in named], FaultList, (), problems)
    if problems:
        raise ToxicError("; ".join(_problemText(p, named) for p in problems))
    assert isinstance(faults, FaultList)
    return faults


def _problemText(problem: Problem, named: list[tuple[str, dict[str, Any]]]) -> str:
    """
    A fault problem in the words of the toxic it comes from.
    """
    path = problem.path
    if path and isinstance(path[0], int) and path[0] < len(named):
        name, table = named[path[0]]
        key = ".".join(str(p) for p in path[1:])
        return f"toxic {name!r} (netd fault {table['type']}{', key ' + key if key else ''}): {problem.message}"
    return problem.message
