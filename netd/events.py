"""
A service's recent events (connections closed, DNS queries answered, faults
applied), kept in memory in a ring for tests and people to read through the
control API (C{GET /services/NAME/events}).  L{EventLog.add} is a hot path, so
it stores values and builds the JSON only when the log is read; L{EventTable}
is the log as the control API's C{events} table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from netd.config.options import ConfigError, Problem, closeMatch
from netd.interfaces import IRuntimeTable

DEFAULT_SIZE = 1000
"""
Events a service keeps unless its C{events} key says otherwise.
"""
LARGEST_SIZE = 100_000
"""
The most events a service may keep (a few hundred bytes each).
"""

Render = Callable[..., dict[str, Any]]


class EventLog:
    """
    A bounded ring of a service's recent events, oldest first.

    Every event gets a sequence number, counted from 1 since the service
    started and never reused (not even after L{clear}), so that a reader can
    ask for the events after the last one it saw.

    @ivar size: the most events kept; 0 keeps none.
    @ivar enabled: whether events are kept at all (C{size > 0}); code that
        has work to do before calling L{add} checks it first.
    """

    def __init__(self, size: int, clock: IReactorTime) -> None:
        """
        @param size: the most events kept; 0 turns the log off.
        @param clock: gives each event its time (unix seconds with a reactor).
        """
        self.size = size
        self.enabled = size > 0
        self._clock = clock
        self._ring: deque[tuple[int, float, str, Render, tuple[Any, ...]]] = deque(maxlen=size)
        self._seq = 0
        self._clearedAt = 0

    @classmethod
    def disabled(cls) -> EventLog:
        """
        A log that keeps nothing: what code built without a service (a
        plugin's unit test) records into.
        """
        return cls(0, Clock())

    def add(self, kind: str, render: Render, *args: Any) -> None:
        """
        Record one event; nothing when the log is off.

        @param kind: what happened: C{"connection"}, C{"query"}, C{"fault"}.
        @param render: called as C{render(*args)} when the event is read, it
            returns the event's own JSON-ready fields.
        """
        if self.enabled:
            self._seq += 1
            self._ring.append((self._seq, self._clock.seconds(), kind, render, args))

    def addAt(self, time: float, kind: str, render: Render, *args: Any) -> None:
        """
        L{add}, for a caller that has just read the log's clock: the event
        gets C{time} as its time, one clock call less on a hot path (the DNS
        proxy's cache hit, whose answer is timed already).
        """
        if self.enabled:
            self._seq += 1
            self._ring.append((self._seq, time, kind, render, args))

    @property
    def dropped(self) -> int:
        """
        Events pushed out of the full ring since the start or the last L{clear}.
        """
        return self._seq - self._clearedAt - len(self._ring)

    def events(
        self, *, kind: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """
        The events kept, oldest first, each C{{"seq", "time", "kind", ...}}
        with the fields of its C{render}.

        @param kind: only events of this kind.
        @param since: only events whose C{seq} is greater.
        @param limit: only the most recent this many (of those selected).
        """
        selected = [
            entry for entry in self._ring if (kind is None or entry[2] == kind) and (since is None or entry[0] > since)
        ]
        if limit is not None:
            selected = selected[len(selected) - limit :] if limit > 0 else []
        return [{"seq": seq, "time": time, "kind": k, **render(*args)} for seq, time, k, render, args in selected]

    def clear(self) -> None:
        """
        Forget every event kept; sequence numbers go on from where they were.
        """
        self._ring.clear()
        self._clearedAt = self._seq


_QUERY_KEYS = ("kind", "since", "limit")


@implementer(IRuntimeTable)
class EventTable:
    """
    An L{EventLog} as the control API's C{events} table: C{GET} reads it
    (query arguments C{kind}, C{since}, C{limit}), C{DELETE} clears it,
    C{PUT} is refused.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def get(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        The events the query selects, and how many were dropped.

        @raise ConfigError: an unknown argument, or one that is not a number
            where one is needed.
        """
        problems: list[Problem] = []
        for key in query:
            if key not in _QUERY_KEYS:
                problems.append(
                    Problem(
                        (key,),
                        "unknown query argument"
                        + (closeMatch(key, _QUERY_KEYS) or f"; expected {', '.join(_QUERY_KEYS)}"),
                    )
                )
        kind = _last(query, "kind")
        since = _number(query, "since", problems)
        limit = _number(query, "limit", problems)
        if problems:
            raise ConfigError("query", problems)
        return self._answer(self.log.events(kind=kind, since=since, limit=limit))

    def put(self, body: Any) -> Mapping[str, Any]:
        """
        Events are recorded by netd, not written.
        """
        raise NotImplementedError("the event log is read (GET) and cleared (DELETE), not written")

    def delete(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        Clear the log.
        """
        self.log.clear()
        return self._answer([])

    def _answer(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """
        The table's JSON: C{events}, with the ring's C{dropped} count and C{size}.
        """
        return {"events": events, "dropped": self.log.dropped, "size": self.log.size}


def _last(query: Mapping[str, Sequence[str]], key: str) -> str | None:
    """
    The last value given for C{key}, if any.
    """
    values = query.get(key)
    return values[-1] if values else None


def _number(query: Mapping[str, Sequence[str]], key: str, problems: list[Problem]) -> int | None:
    """
    The query argument C{key} as a whole number of at least 0, if given.
    """
    text = _last(query, key)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        problems.append(Problem((key,), f"expected a whole number of at least 0, got {text!r}"))
        return None
    return int(text)
