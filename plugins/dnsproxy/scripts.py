"""
Scripted answers: the dns-proxy misbehaving on purpose, per name, so that a
client's tests see how it copes with an rcode, a truncated, slow or missing
answer, or a forged one arriving first.  L{Script} is one entry, whose
schedule counts only the queries it matches; L{ScriptBook} finds the entry
that decides a query; the handler carries the actions out.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

import attrs
from twisted.names import dns

from netd.config.options import InvalidValue, between, option
from netd.faults.schedule import Scheduled, ScheduleState

from .records import NamePattern
from .wire import (
    FLAG_TC,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    Query,
    Question,
    encodeName,
    makeResponse,
)

RCODES = {"NOERROR": RCODE_NOERROR, "NXDOMAIN": RCODE_NXDOMAIN, "SERVFAIL": RCODE_SERVFAIL, "REFUSED": RCODE_REFUSED}
"""
The rcodes a script may force, by config name.
"""

ACTIONS = ("rcode", "truncate", "delay", "drop", "spoof")
"""
The keys of a script entry that say what it does (the others say to which queries).
"""

_TYPE_NAMES = {**dns.QUERY_TYPES, **dns.EXT_QUERIES, dns.ALL_RECORDS: "ANY"}
_TYPE_CODES = {name: code for code, name in _TYPE_NAMES.items()}

SPOOFED_NAMES = (encodeName("spoofed.invalid"), encodeName("spoofed-2.invalid"))
"""
The question of an answer forged with C{spoof = "question"}: the first of
these that is not the name asked.
"""


@attrs.frozen
class QueryType:
    """
    A query type as a script names it: C{A}, C{AAAA}, C{MX}, ..., C{ANY}, or
    C{TYPE65} for any other (RFC 3597).

    @ivar code: the type's number.
    """

    code: int

    configTypeName: ClassVar[str] = "a query type: A, AAAA, MX, TXT, ..., ANY, or TYPEnnn"
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"}

    @classmethod
    def fromConfig(cls, value: object) -> QueryType:
        """
        Read a type name, in any case.

        @raise InvalidValue: for anything else.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        text = value.upper()
        if text in _TYPE_CODES:
            return cls(_TYPE_CODES[text])
        number = text[4:]
        if text.startswith("TYPE") and number.isdigit() and number.isascii() and int(number) <= 65535:
            return cls(int(number))
        raise InvalidValue(f"{value!r} is not a query type; expected A, AAAA, MX, TXT, ..., ANY, or TYPEnnn")

    def toConfig(self) -> str:
        """
        The type's name, or C{TYPEnnn}.
        """
        return _TYPE_NAMES.get(self.code) or f"TYPE{self.code}"


@attrs.frozen
class Script(Scheduled):
    """
    One entry of a dns-proxy's C{scripts}: which queries, what is done to
    them, and the schedule (C{first}, C{every}, C{probability}, C{seed}).
    """

    name: NamePattern = option(help="The name the entry acts on, or *.NAME for every name below NAME.")
    qtype: QueryType | None = option(
        None, help="The query type the entry acts on (A, AAAA, MX, ..., ANY, TYPEnnn); every type when unset."
    )
    rcode: Literal["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED"] | None = option(
        None, help="Answer at once with this rcode and no records (NOERROR: an empty answer)."
    )
    truncate: bool = option(
        False,
        help="Over UDP, answer at once with no records and TC set, so that the client retries over TCP; TCP queries are untouched.",
    )
    delay: int = option(
        0,
        help="Milliseconds the answer is held back once it is ready, whatever its source.",
        checks=(between(0, 60000),),
    )
    drop: bool = option(False, help="Send no answer at all.")
    spoof: Literal["id", "question"] | None = option(
        None,
        help="Before the real answer, send a forged NXDOMAIN answer with a wrong ID (id) or for another question (question), "
        "on the same socket or connection.",
    )

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        The schedule's rules, and actions that make sense together: at least
        one; C{drop} alone; C{truncate} without C{rcode}.
        """
        problems = super().crossCheck()
        actions = self.actions()
        if not actions:
            problems.append(
                ("name", f"the entry for {self.name.toConfig()!r} does nothing; give one of {', '.join(ACTIONS)}")
            )
        if self.drop:
            problems.extend(
                (key, f"drop sends no answer, so it cannot go with {key}") for key in actions if key != "drop"
            )
        if self.truncate and self.rcode is not None:
            problems.append(("rcode", "truncate answers with no records and TC set, so it cannot go with rcode"))
        return problems

    def actions(self) -> dict[str, Any]:
        """
        The action keys set, with their values (for events and messages).
        """
        return {key: value for key in ACTIONS if (value := getattr(self, key))}

    def matches(self, question: Question, transport: str) -> bool:
        """
        Whether the entry acts on a query: its name and type, and an action
        that acts on the query's transport (C{truncate} acts only on UDP, so
        an entry with nothing else lets TCP queries by, uncounted).
        """
        if self.qtype is not None and self.qtype.code != question.qtype:
            return False
        if not self.name.matches(question.key):
            return False
        return transport == "udp" or not self.truncate or bool(self.delay or self.spoof)


class ScriptBook:
    """
    A service's script entries, in order, each with its running schedule.

    @ivar scripts: the entries.
    @ivar states: each entry's schedule state (how many queries it counted
        and applied to, its random generator).
    """

    def __init__(self, scripts: tuple[Script, ...]) -> None:
        self.scripts: tuple[Script, ...] = ()
        self.states: list[ScheduleState] = []
        self.replace(scripts)

    def replace(self, scripts: tuple[Script, ...]) -> None:
        """
        Use these entries from now on, their schedules counting afresh.
        """
        self.scripts = scripts
        self.states = [script.start() for script in scripts]

    def decide(self, question: Question, transport: str) -> tuple[int, Script, ScheduleState] | None:
        """
        The entry that acts on a query, with its index and schedule state: the
        first that matches it and whose schedule applies to it; each matching
        entry tried counts the query.
        """
        for index, script in enumerate(self.scripts):
            if script.matches(question, transport):
                state = self.states[index]
                if state.next():
                    return index, script, state
        return None

    def applied(self) -> list[int]:
        """
        How many queries each entry acted on since it was set.
        """
        return [state.applied for state in self.states]


def forcedAnswer(query: Query, script: Script, udpSize: int) -> bytes:
    """
    The answer of an entry with C{rcode}, or with C{truncate} (over UDP): the
    query's question, no records, and that rcode or TC set.
    """
    if script.rcode is not None:
        return makeResponse(query, RCODES[script.rcode], udpSize=udpSize)
    answer = makeResponse(query, RCODE_NOERROR, udpSize=udpSize)
    flags = int.from_bytes(answer[2:4], "big") | FLAG_TC
    return answer[:2] + flags.to_bytes(2, "big") + answer[4:]


def forgedAnswer(query: Query, spoof: str, generator: random.Random, udpSize: int) -> bytes:
    """
    An NXDOMAIN answer that a client must not accept: with an ID other than
    the query's (C{spoof = "id"}; drawn from the entry's generator, so a
    C{seed} repeats it), or with the query's ID for another question
    (C{"question"}: C{spoofed.invalid}, same type and class).
    """
    if spoof == "id":
        forgedID = query.id ^ generator.randrange(1, 65536)
        return forgedID.to_bytes(2, "big") + makeResponse(query, RCODE_NXDOMAIN, udpSize=udpSize)[2:]
    name = next(n for n in SPOOFED_NAMES if n != query.question.key)
    other = attrs.evolve(query, question=query.question._replace(name=name, key=name))
    return makeResponse(other, RCODE_NXDOMAIN, udpSize=udpSize)
