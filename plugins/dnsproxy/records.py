"""
Static records: names the proxy answers itself, for tests and local overrides.

The config's C{records} table maps a name (or a wildcard C{*.svc.test}) to its
records by type.  A name listed there is answered here, authoritatively: its
records of the asked type, or NOERROR with no answer (NODATA) when it has none of
that type.  Everything else is forwarded.  twisted.names builds these answers; they
are not on the hot path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
from twisted.names import dns

from netd.config.options import InvalidValue

from .wire import atOrUnder, encodeName

DEFAULT_TTL = 300
MAX_CNAME_CHAIN = 8


def _address(version: int) -> Callable[[str], Any]:
    """
    A parser of an IPv4 or IPv6 address into its twisted.names record.
    """

    def parse(text: str) -> Any:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidValue(f"{text!r} is not an IPv{version} address") from None
        if address.version != version:
            raise InvalidValue(f"{text!r} is not an IPv{version} address")
        return dns.Record_A(text) if version == 4 else dns.Record_AAAA(text)

    return parse


def _hostname(recordType: Callable[..., Any]) -> Callable[[str], Any]:
    """
    A parser of a record whose data is one name (NS, CNAME, PTR).
    """

    def parse(text: str) -> Any:
        return recordType(checkName(text))

    return parse


def _fields(text: str, count: int, form: str) -> list[str]:
    """
    Split a record's data into exactly C{count} whitespace-separated fields.
    """
    parts = text.split()
    if len(parts) != count:
        raise InvalidValue(f"{text!r} is not of the form {form!r}")
    return parts


def _number(text: str, form: str, bits: int = 16) -> int:
    """
    An unsigned number of C{bits} bits inside a record's data.
    """
    if not text.isdigit() or int(text) >= 2**bits:
        raise InvalidValue(f"{text!r} is not a number from 0 to {2**bits - 1} (in {form!r})")
    return int(text)


def _mx(text: str) -> Any:
    """
    Parse C{"PREFERENCE HOST"}.
    """
    form = "PREFERENCE HOST"
    preference, host = _fields(text, 2, form)
    return dns.Record_MX(_number(preference, form), checkName(host))


def _srv(text: str) -> Any:
    """
    Parse C{"PRIORITY WEIGHT PORT TARGET"}.
    """
    form = "PRIORITY WEIGHT PORT TARGET"
    priority, weight, port, target = _fields(text, 4, form)
    return dns.Record_SRV(_number(priority, form), _number(weight, form), _number(port, form), checkName(target))


def _txt(text: str) -> Any:
    """
    One TXT record, split into character-strings of at most 255 bytes.
    """
    data = text.encode("utf-8")
    return dns.Record_TXT(*[data[i : i + 255] for i in range(0, len(data), 255)] or [b""])


RECORD_TYPES: dict[str, tuple[int, Callable[[str], Any]]] = {
    "A": (dns.A, _address(4)),
    "AAAA": (dns.AAAA, _address(6)),
    "NS": (dns.NS, _hostname(dns.Record_NS)),
    "CNAME": (dns.CNAME, _hostname(dns.Record_CNAME)),
    "PTR": (dns.PTR, _hostname(dns.Record_PTR)),
    "MX": (dns.MX, _mx),
    "SRV": (dns.SRV, _srv),
    "TXT": (dns.TXT, _txt),
}
"""
The record types a C{records} entry may hold: config key to DNS type and parser.
"""


def checkName(text: str) -> str:
    """
    Check a domain name (a trailing dot is allowed and dropped): labels of 1 to 63
    bytes, 255 bytes in all.

    @return: the name lowercased, without the trailing dot.
    """
    name = text[:-1] if text.endswith(".") and text != "." else text
    if name in ("", ".") or not name.isascii():
        raise InvalidValue(f"{text!r} is not a domain name (ASCII; write IDNs in their xn-- form)")
    labels = name.split(".")
    if any(not 0 < len(label.encode()) <= 63 for label in labels) or len(name.encode()) > 253:
        raise InvalidValue(f"{text!r} is not a domain name (labels of 1 to 63 bytes, 253 bytes in all)")
    return name.lower()


@attrs.frozen
class NamePattern:
    """
    A name as the C{records} table and the scripted answers give it: one
    name (C{netd.test}), or a wildcard (C{*.svc.test}) for every name below
    one (not that name itself).

    @ivar name: the name, lowercase, without the C{*.} and the trailing dot.
    @ivar wildcard: whether it was given as C{*.NAME}.
    @ivar key: C{name} in wire form (compare with L{Question.key}).
    """

    name: str
    wildcard: bool
    key: bytes

    configTypeName: ClassVar[str] = "a domain name, or *.NAME for every name below NAME"
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "string", "minLength": 1}

    @classmethod
    def fromConfig(cls, value: object) -> NamePattern:
        """
        Check a name or wildcard.

        @raise InvalidValue: saying what is wrong.
        """
        if not isinstance(value, str):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        wildcard = value.startswith("*.")
        name = checkName(value[2:] if wildcard else value)
        return cls(name, wildcard, encodeName(name))

    def toConfig(self) -> str:
        """
        The name as written in the config.
        """
        return "*." + self.name if self.wildcard else self.name

    def matches(self, key: bytes) -> bool:
        """
        Whether a queried name (lowercase wire form, as L{Question.key}) is this
        name, or for a wildcard a name below it.
        """
        if not self.wildcard:
            return key == self.key
        return len(key) > len(self.key) and atOrUnder(key, self.key)


@attrs.frozen
class NameRecords:
    """
    The records of one name, by DNS type, with their TTL.
    """

    name: str
    ttl: int
    byType: dict[int, tuple[Any, ...]]
    source: dict[str, Any]

    def rrs(self, ownerName: bytes, qtype: int) -> list[dns.RRHeader]:
        """
        The records of C{qtype} (every record for ANY) owned by C{ownerName}.
        """
        types = list(self.byType) if qtype == dns.ALL_RECORDS else [qtype]
        return [
            dns.RRHeader(ownerName, t, dns.IN, self.ttl, payload, auth=True)
            for t in types
            for payload in self.byType.get(t, ())
        ]


@attrs.frozen
class StaticRecords:
    """
    The validated C{records} table of a service.

    @ivar names: exact names, in lowercase wire form, to their records.
    @ivar wildcards: for C{*.svc.test}, C{svc.test} in lowercase wire form to
        its records.
    """

    names: dict[bytes, NameRecords] = attrs.Factory(dict)
    wildcards: dict[bytes, NameRecords] = attrs.Factory(dict)

    configTypeName: ClassVar[str] = (
        'a table of names to their records, e.g. "netd.test" = { A = ["127.0.0.1"], ttl = 300 }'
    )
    configJsonSchema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": {"type": "object"}}

    @classmethod
    def fromConfig(cls, value: object) -> StaticRecords:
        """
        Validate a C{records} table.

        @raise InvalidValue: naming the name, the type and what is wrong.
        """
        if not isinstance(value, dict):
            raise InvalidValue(f"expected {cls.configTypeName}, got {value!r}")
        names: dict[bytes, NameRecords] = {}
        wildcards: dict[bytes, NameRecords] = {}
        for owner, table in value.items():
            try:
                records = _parseName(owner, table)
            except InvalidValue as e:
                raise InvalidValue(f"{owner!r}: {e}") from None
            key = encodeName(records.name)
            if owner.startswith("*."):
                wildcards[key] = records
            else:
                names[key] = records
        return cls(names, wildcards)

    def toConfig(self) -> dict[str, Any]:
        """
        The table as configured.
        """
        table = {r.name: r.source for r in self.names.values()}
        table.update({"*." + r.name: r.source for r in self.wildcards.values()})
        return table

    def updated(self, other: StaticRecords) -> StaticRecords:
        """
        These records with the names of C{other} added, or replaced by its.
        """
        return StaticRecords({**self.names, **other.names}, {**self.wildcards, **other.wildcards})

    def without(self, patterns: list[NamePattern]) -> StaticRecords:
        """
        These records without the names (and wildcards) of C{patterns}.
        """
        names = {p.key for p in patterns if not p.wildcard}
        wildcards = {p.key for p in patterns if p.wildcard}
        return StaticRecords(
            {k: r for k, r in self.names.items() if k not in names},
            {k: r for k, r in self.wildcards.items() if k not in wildcards},
        )

    def patterns(self) -> list[NamePattern]:
        """
        Every name and wildcard these records have.
        """
        return [NamePattern(r.name, False, k) for k, r in self.names.items()] + [
            NamePattern(r.name, True, k) for k, r in self.wildcards.items()
        ]

    def find(self, key: bytes) -> NameRecords | None:
        """
        The records of a name (lowercase wire form, as L{Question.key}): its own,
        or those of the closest wildcard above it.
        """
        found = self.names.get(key)
        if found is not None or not self.wildcards:
            return found
        while key[0]:
            key = key[key[0] + 1 :]
            found = self.wildcards.get(key)
            if found is not None:
                return found
        return None

    def __bool__(self) -> bool:
        """
        Whether any name is configured.
        """
        return bool(self.names or self.wildcards)


def _parseName(owner: object, table: object) -> NameRecords:
    """
    Validate one name of the C{records} table and its records.
    """
    if not isinstance(owner, str):
        raise InvalidValue("a name must be a string")
    name = checkName(owner[2:] if owner.startswith("*.") else owner)
    if not isinstance(table, dict):
        raise InvalidValue(f"expected a table of record types (A, AAAA, ...) and ttl, got {table!r}")
    ttl = table.get("ttl", DEFAULT_TTL)
    if type(ttl) is not int or not 0 <= ttl <= 2**31 - 1:
        raise InvalidValue(f"ttl {ttl!r} is not a number of seconds from 0 to {2**31 - 1}")
    byType: dict[int, tuple[Any, ...]] = {}
    for key, data in table.items():
        if key == "ttl":
            continue
        if key not in RECORD_TYPES:
            raise InvalidValue(f"unknown record type {key!r}; expected ttl or one of {', '.join(RECORD_TYPES)}")
        qtype, parse = RECORD_TYPES[key]
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise InvalidValue(f"{key}: expected a string or a non-empty array of strings, got {data!r}")
        try:
            byType[qtype] = tuple(parse(item) for item in items)
        except InvalidValue as e:
            raise InvalidValue(f"{key}: {e}") from None
    if dns.CNAME in byType and (len(byType) > 1 or len(byType[dns.CNAME]) > 1):
        raise InvalidValue("a name with a CNAME can have no other record (RFC 1034), and only one CNAME")
    if not byType:
        raise InvalidValue("no records; expected at least one of " + ", ".join(RECORD_TYPES))
    return NameRecords(name, ttl, byType, dict(table))


def staticAnswer(records: StaticRecords, found: NameRecords, message: dns.Message) -> dns.Message:
    """
    Fill in the answer to a query for a static name: its records of the asked
    type, following a CNAME through other static names, or none (NODATA).

    @param message: the response, with the query's question and flags already
        set, and a C{maxSize} large enough for the records (twisted.names drops
        what does not fit; truncation for UDP clients is the caller's).
    """
    question = message.queries[0]
    ownerName = question.name.name
    answers: list[dns.RRHeader] = []
    current = found
    for _ in range(MAX_CNAME_CHAIN):
        cnames = current.byType.get(dns.CNAME)
        if cnames and question.type not in (dns.CNAME, dns.ALL_RECORDS):
            answers.extend(current.rrs(ownerName, dns.CNAME))
            ownerName = cnames[0].name.name
            nextRecords = records.find(encodeName(ownerName.decode("ascii", "replace").lower()))
            if nextRecords is None:
                break
            current = nextRecords
            continue
        answers.extend(current.rrs(ownerName, question.type))
        break
    message.answers = answers
    message.auth = True
    return message
