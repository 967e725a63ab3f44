"""
The faults a service can be told to commit, as config: one frozen schema class
per fault type, and the C{faults} list of a service that holds them.

A service's C{faults} is a list of tables, each naming its C{type}; the rest of
the table is that type's keys plus the schedule keys every fault shares
(L{Scheduled}) and, where it means something, a C{direction}.  The same
decoder reads the config file and the control API's C{PUT
/services/NAME/faults} body, so both report the same problems at the same key
paths.

The families, by where they act:
  - C{stream}: bytes of a stream connection, nearest the socket (on a TLS
    service, the TLS records the client really receives); chosen per connection.
  - C{tls}: the TLS handshake of a service with a C{tls} table; per connection.
  - C{datagram}: datagrams of a UDP listener; chosen per datagram.
  - C{frame}: the frames a service sends through the shared framing; per frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import attrs

from netd.faults.schedule import SCHEDULE_KEYS, Scheduled
from netd.config.options import KeyPath, Problem, atLeast, between, closeMatch, decodeTable, describeValue, option, toConfig

Direction = Literal["to_client", "from_client", "both"]
Family = Literal["stream", "tls", "datagram", "frame"]

LONGEST_DELAY_MS = 600_000.0
"""
The longest delay, latency or wait a fault may add: ten minutes.
"""

TLS_ALERTS: dict[str, int] = {
    "close_notify": 0,
    "unexpected_message": 10,
    "bad_record_mac": 20,
    "record_overflow": 22,
    "handshake_failure": 40,
    "bad_certificate": 42,
    "unsupported_certificate": 43,
    "certificate_revoked": 44,
    "certificate_expired": 45,
    "certificate_unknown": 46,
    "illegal_parameter": 47,
    "unknown_ca": 48,
    "access_denied": 49,
    "decode_error": 50,
    "decrypt_error": 51,
    "protocol_version": 70,
    "insufficient_security": 71,
    "internal_error": 80,
    "inappropriate_fallback": 86,
    "user_canceled": 90,
    "missing_extension": 109,
    "unsupported_extension": 110,
    "unrecognized_name": 112,
    "unknown_psk_identity": 115,
    "certificate_required": 116,
    "no_application_protocol": 120,
}
"""
TLS alert descriptions by their RFC 8446 / RFC 5246 names.
"""
TLSAlert = Literal[
    "close_notify",
    "unexpected_message",
    "bad_record_mac",
    "record_overflow",
    "handshake_failure",
    "bad_certificate",
    "unsupported_certificate",
    "certificate_revoked",
    "certificate_expired",
    "certificate_unknown",
    "illegal_parameter",
    "unknown_ca",
    "access_denied",
    "decode_error",
    "decrypt_error",
    "protocol_version",
    "insufficient_security",
    "internal_error",
    "inappropriate_fallback",
    "user_canceled",
    "missing_extension",
    "unsupported_extension",
    "unrecognized_name",
    "unknown_psk_identity",
    "certificate_required",
    "no_application_protocol",
]

LARGEST_OVERSIZE = 64 * 2**20
"""
The largest frame C{oversize_frame} builds: netd's own C{max_frame} limit.
"""

MAX_FAULTS = 32
"""
The most faults a service's C{faults} list may hold: each is looked at for
every connection, datagram or frame, and a test needs a few.
"""

MAX_COPIES = 64
"""
The most datagrams the C{duplicate} faults of a list may make of one: the
product of C{copies + 1} over them, each counted once per direction it acts on
(a datagram and the answer to it both go through a C{both} one).  Each copy
goes on through the faults after the one that made it, so copies multiply:
five faults of C{copies = 100} would turn one datagram into ten billion.
"""

PREFIXED_FRAMINGS = ("netstring", "u16", "u32")
"""
The framings whose frames start with their length.
"""
PREFIX_LARGEST = {"u16": 2**16 - 1, "u32": 2**32 - 1}
"""
The largest length the binary prefixes can state (a netstring's has no bound).
"""


@attrs.frozen
class ServiceShape:
    """
    What a fault needs to know of the service it is set on: whether it serves
    streams and datagrams, terminates TLS, and which framing it uses.
    """

    streams: bool
    datagrams: bool
    tls: bool
    framing: str | None


def _milliseconds(help: str, default: Any = 0.0) -> Any:
    """
    A key counted in milliseconds, from 0 to L{LONGEST_DELAY_MS}.
    """
    return option(default, help=help, checks=(between(0, LONGEST_DELAY_MS),))


@attrs.frozen
class Fault(Scheduled):
    """
    What every fault type has: its schedule and its direction.

    @cvar typeName: the C{type} value that selects it.
    @cvar family: where it acts (see the module docstring).
    @cvar directions: the directions it may be given.
    @cvar midStream: whether a change through the control API applies it to
        connections already open (it can start at any byte); the others start
        with a connection.
    @cvar summary: one sentence for the docs.
    """

    typeName: ClassVar[str]
    family: ClassVar[Family]
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
        Why this fault cannot act on a service of this shape, or L{None}.
        """
        if self.family in ("stream", "tls", "frame") and not shape.streams:
            return f"{self.typeName} acts on stream connections, and this service listens only on udp: addresses"
        if self.family == "tls" and not shape.tls:
            return f"{self.typeName} acts on the TLS handshake, and this service has no tls table"
        if self.family == "datagram" and not shape.datagrams:
            return f"{self.typeName} acts on datagrams, and this service has no udp: listener"
        if self.family == "frame" and shape.framing in (None, "raw"):
            return f"{self.typeName} acts on frames, and this service uses raw framing, which has none"
        return None

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


# Stream faults.


@attrs.frozen
class Latency(Fault):
    typeName = "latency"
    family = "stream"
    midStream = True
    summary = "Hold each chunk of bytes for ms (plus or minus up to jitter) before passing it on, keeping their order."
    ms: float = _milliseconds("Milliseconds added to each chunk of bytes.", default=attrs.NOTHING)
    jitter: float = _milliseconds("Up to this many milliseconds more or less, chosen per chunk.")


@attrs.frozen
class Bandwidth(Fault):
    typeName = "bandwidth"
    family = "stream"
    midStream = True
    summary = "Pass bytes on at no more than rate bytes per second."
    rate: int = option(help="Bytes per second.", checks=(between(1, 2**40),))


@attrs.frozen
class Slice(Fault):
    typeName = "slice"
    family = "stream"
    midStream = True
    summary = (
        "Write at most size bytes at a time, with delay milliseconds between the pieces: catches clients that "
        "assume one recv is one message."
    )
    direction: Direction = option("to_client", help="Which bytes it acts on: to_client, from_client, or both.")
    size: int = option(help="Largest piece, in bytes.", checks=(between(1, 2**31),))
    delay: float = _milliseconds("Milliseconds between two pieces.")


@attrs.frozen
class CloseAfter(Fault):
    typeName = "close_after"
    family = "stream"
    midStream = True
    summary = "Pass this many bytes, then close the connection cleanly (FIN)."
    bytes: int = option(help="Bytes passed before the close.", checks=(atLeast(0),))


@attrs.frozen
class ResetAfter(Fault):
    typeName = "reset_after"
    family = "stream"
    midStream = True
    summary = "Pass this many bytes, then reset the connection (TCP RST: the client sees ECONNRESET)."
    bytes: int = option(help="Bytes passed before the reset.", checks=(atLeast(0),))


@attrs.frozen
class StallAfter(Fault):
    typeName = "stall_after"
    family = "stream"
    midStream = True
    summary = "Pass this many bytes, then nothing more, with the connection left open."
    bytes: int = option(help="Bytes passed before the silence.", checks=(atLeast(0),))


@attrs.frozen
class Blackhole(Fault):
    typeName = "blackhole"
    family = "stream"
    midStream = True
    summary = "Accept and read, never answer: bytes in the direction are swallowed."
    direction: Direction = option("to_client", help="Which bytes are swallowed: to_client, from_client, or both.")


@attrs.frozen
class Refuse(Fault):
    typeName = "refuse"
    family = "stream"
    directions = ("both",)
    summary = "Accept the connection, then close it at once (or reset it, with reset = true)."
    reset: bool = option(False, help="Reset (RST) instead of closing cleanly (FIN).")


# TLS handshake faults.


@attrs.frozen
class TLSStall(Fault):
    typeName = "tls_stall"
    family = "tls"
    directions = ("both",)
    summary = "Read the ClientHello, send the first record of the server's answer (its ServerHello), then nothing."


@attrs.frozen
class TLSAbort(Fault):
    typeName = "tls_abort"
    family = "tls"
    directions = ("both",)
    summary = "Answer the ClientHello with a fatal TLS alert, then close."
    alert: TLSAlert = option("handshake_failure", help="The alert sent, by its RFC 8446 name.")


@attrs.frozen
class TLSGarbage(Fault):
    typeName = "tls_garbage"
    family = "tls"
    directions = ("both",)
    summary = "Answer the ClientHello with plain text instead of TLS, then close."
    data: str = option("HTTP/1.1 400 Bad Request\r\n\r\nthis is not TLS\r\n", help="The text sent (UTF-8).")


# Datagram faults.


@attrs.frozen
class Drop(Fault):
    typeName = "drop"
    family = "datagram"
    summary = "Drop the datagram (use probability, first or every to choose which)."


@attrs.frozen
class Duplicate(Fault):
    typeName = "duplicate"
    family = "datagram"
    summary = "Send (or deliver) the datagram, then copies more of it."
    copies: int = option(
        1,
        help=f"Extra copies; with those of the other duplicate faults, at most {MAX_COPIES} datagrams in all.",
        checks=(between(1, MAX_COPIES - 1),),
    )

    def multiplier(self) -> int:
        """
        How many datagrams this fault can make of one, over a datagram and its
        answer: C{copies + 1}, squared when it acts both ways.
        """
        return (self.copies + 1) ** (2 if self.direction == "both" else 1)


@attrs.frozen
class Delay(Fault):
    typeName = "delay"
    family = "datagram"
    summary = "Hold the datagram for ms (plus or minus up to jitter) milliseconds; datagrams may overtake each other."
    ms: float = _milliseconds("Milliseconds added.", default=attrs.NOTHING)
    jitter: float = _milliseconds("Up to this many milliseconds more or less, chosen per datagram.")


@attrs.frozen
class Truncate(Fault):
    typeName = "truncate"
    family = "datagram"
    summary = "Cut the datagram to its first bytes bytes."
    bytes: int = option(help="Bytes kept.", checks=(between(0, 65535),))


@attrs.frozen
class Reorder(Fault):
    typeName = "reorder"
    family = "datagram"
    summary = "Hold the datagram until the next one in its direction has gone, or for wait milliseconds at most."
    wait: float = _milliseconds("Longest hold, in milliseconds, when no other datagram follows.", default=100.0)


# Frame faults.


@attrs.frozen
class SplitFrame(Fault):
    typeName = "split_frame"
    family = "frame"
    directions = ("to_client",)
    direction: Direction = option("to_client", help="Frames netd sends (the only direction).")
    summary = "Write one frame in several pieces (its length prefix included), with delay milliseconds between them."
    pieces: int = option(2, help="Writes the encoded frame is cut into.", checks=(between(2, 65536),))
    delay: float = _milliseconds("Milliseconds between two pieces.")


@attrs.frozen
class MergeFrames(Fault):
    typeName = "merge_frames"
    family = "frame"
    directions = ("to_client",)
    direction: Direction = option("to_client", help="Frames netd sends (the only direction).")
    summary = "Hold frames until count of them can go out in one write (or wait milliseconds have passed)."
    count: int = option(2, help="Frames per write.", checks=(between(2, 65536),))
    wait: float = _milliseconds("Longest hold, in milliseconds, before fewer frames go out together.", default=50.0)


@attrs.frozen
class OversizeFrame(Fault):
    typeName = "oversize_frame"
    family = "frame"
    directions = ("to_client",)
    direction: Direction = option("to_client", help="Frames netd sends (the only direction).")
    summary = "Pad the frame with zero bytes to size bytes, to go over the client's limit."
    size: int = option(
        help="The frame's size on the wire, payload only (at most 64 MiB: each such frame is built in memory).",
        checks=(between(1, LARGEST_OVERSIZE),),
    )

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        A u16 prefix cannot state more than 65535 bytes.
        """
        problem = super().misfit(shape)
        if problem is None and shape.framing == "u16" and self.size > PREFIX_LARGEST["u16"]:
            return f"oversize_frame size {self.size} does not fit u16 framing, whose frames are 65535 bytes at most"
        return problem


@attrs.frozen
class TruncateFrame(Fault):
    typeName = "truncate_frame"
    family = "frame"
    directions = ("to_client",)
    direction: Direction = option("to_client", help="Frames netd sends (the only direction).")
    summary = "Write only the start of the encoded frame, then close the connection (or go on, with close = false)."
    bytes: int | None = option(None, help="Bytes of the encoded frame written; half of it when unset.", checks=(atLeast(0),))
    close: bool = option(True, help="Close the connection after the cut frame.")


@attrs.frozen
class CorruptLength(Fault):
    typeName = "corrupt_length"
    family = "frame"
    directions = ("to_client",)
    direction: Direction = option("to_client", help="Frames netd sends (the only direction).")
    summary = "Send the frame behind a length prefix that claims length bytes (netstring, u16 and u32 framings)."
    length: int | None = option(None, help="The length claimed; the real length plus one when unset.", checks=(atLeast(0),))

    def misfit(self, shape: ServiceShape) -> str | None:
        """
        Only framings with a length prefix have one to corrupt, and the
        length claimed must fit in it.
        """
        problem = super().misfit(shape)
        if problem is None and shape.framing not in PREFIXED_FRAMINGS:
            return f"corrupt_length needs a framing with a length prefix ({', '.join(PREFIXED_FRAMINGS)}), not {shape.framing}"
        largest = PREFIX_LARGEST.get(shape.framing or "")
        if problem is None and largest is not None and self.length is not None and self.length > largest:
            return f"corrupt_length length {self.length} does not fit a {shape.framing} prefix, which states {largest} at most"
        return problem


FAULT_TYPES: dict[str, type[Fault]] = {
    cls.typeName: cls
    for cls in (
        Latency,
        Bandwidth,
        Slice,
        CloseAfter,
        ResetAfter,
        StallAfter,
        Blackhole,
        Refuse,
        TLSStall,
        TLSAbort,
        TLSGarbage,
        Drop,
        Duplicate,
        Delay,
        Truncate,
        Reorder,
        SplitFrame,
        MergeFrames,
        OversizeFrame,
        TruncateFrame,
        CorruptLength,
    )
}


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
            Problem(path + ("type",), f"expected the name of a fault type, got {describeValue(typeName)}; the types are {known}")
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
        How many datagrams the C{duplicate} faults can make of one datagram
        and its answers (see L{MAX_COPIES}).
        """
        product = 1
        for fault in self.faults:
            if isinstance(fault, Duplicate):
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
        return [Problem(path + (i, "type"), why) for i, f in enumerate(self.faults) if (why := f.misfit(shape)) is not None]

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def __len__(self) -> int:
        return len(self.faults)
