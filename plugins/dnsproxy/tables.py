"""
The dns-proxy's runtime tables, which the control API serves at
C{/services/NAME/records} and C{/services/NAME/scripts}: static records and
scripted answers changed while netd runs, without a reload.

Bodies are decoded by the same schema code as the config file
(L{netd.config.options.decodeTable}), so a record or a script entry is refused at
runtime exactly as it would be in the file, with its key path inside the
body.  What the control API changes lasts until the service restarts (a
reload that changes the service's config rebuilds it from the file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
from zope.interface import implementer

from netd.config.options import ConfigError, Problem, decodeTable, describeValue, option, toConfig
from netd.interfaces import IRuntimeTable

from .records import NamePattern, StaticRecords
from .scripts import Script, ScriptBook

T = TypeVar("T")


class RecordsOwner(Protocol):
    """
    What the records table changes: the proxy's static records
    (L{netd_plugins.dnsproxy.handler.DNSProxy}), which also drops the answers
    it cached for the names changed.
    """

    records: StaticRecords

    def changeRecords(self, records: StaticRecords, changed: list[NamePattern]) -> None:
        """
        Serve C{records} from now on, forgetting what was cached for C{changed}.
        """


@attrs.frozen
class RecordsBody:
    """
    The body of C{PUT /services/NAME/records}.
    """

    records: StaticRecords = option(
        help="Names to add, or to replace if they are there, written as in the records key."
    )


@attrs.frozen
class ScriptsBody:
    """
    The body of C{PUT /services/NAME/scripts}.
    """

    scripts: tuple[Script, ...] = option(
        help="The scripted answers that replace the current ones, written as in the scripts key."
    )


def decodeBody(schema: type[T], body: object) -> T:
    """
    A request body decoded with its schema.

    @raise ConfigError: with every problem, each with its key path in the body.
    """
    problems: list[Problem] = []
    if not isinstance(body, dict):
        keys = " and ".join(attrs.fields_dict(schema))  # type: ignore[arg-type]
        raise ConfigError(
            "request body", [Problem((), f"expected a JSON object with {keys}, got {describeValue(body)}")]
        )
    decoded = decodeTable(schema, body, (), problems)
    if decoded is None:
        raise ConfigError("request body", problems)
    return decoded


@implementer(IRuntimeTable)
class RecordsTable:
    """
    The static records: C{GET} shows them all, C{PUT} adds or replaces names,
    C{DELETE} removes the names given as C{?name=} arguments, or without
    any puts back the config file's records.  Every answer cached for a
    changed name, or below it, is dropped.
    """

    def __init__(self, proxy: RecordsOwner, configured: StaticRecords) -> None:
        """
        @param configured: the records of the config file, which C{DELETE} restores.
        """
        self.proxy = proxy
        self.configured = configured

    def get(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        Every static name now, in config form.
        """
        return {"records": self.proxy.records.toConfig()}

    def put(self, body: Any) -> Mapping[str, Any]:
        """
        Add or replace the names of C{{"records": {...}}}.
        """
        added = decodeBody(RecordsBody, body).records
        self.proxy.changeRecords(self.proxy.records.updated(added), added.patterns())
        return self.get({})

    def delete(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        Remove the names given (a name not there is no error), or restore the
        config file's records.

        @raise ConfigError: a C{name} argument is not a name or wildcard.
        """
        names = query.get("name", [])
        if not names:
            changed = self.proxy.records.patterns() + self.configured.patterns()
            self.proxy.changeRecords(self.configured, changed)
            return self.get({})
        problems = []
        patterns = []
        for i, text in enumerate(names):
            try:
                patterns.append(NamePattern.fromConfig(text))
            except ValueError as e:
                problems.append(Problem(("name", i), str(e)))
        if problems:
            raise ConfigError("query", problems)
        self.proxy.changeRecords(self.proxy.records.without(patterns), patterns)
        return self.get({})


@implementer(IRuntimeTable)
class ScriptsTable:
    """
    The scripted answers: C{GET} shows the entries and how many queries each
    acted on, C{PUT} replaces them all (their schedules count afresh),
    C{DELETE} puts back the config file's entries (counting afresh too).
    """

    def __init__(self, book: ScriptBook, configured: tuple[Script, ...]) -> None:
        """
        @param book: the proxy's entries, which the table changes in place.
        @param configured: the entries of the config file, which C{DELETE} restores.
        """
        self.book = book
        self.configured = configured

    def get(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        The entries in config form, and how many queries each acted on.
        """
        book = self.book
        return {"scripts": [toConfig(s) for s in book.scripts], "applied": book.applied()}

    def put(self, body: Any) -> Mapping[str, Any]:
        """
        Replace the entries with those of C{{"scripts": [...]}}.
        """
        self.book.replace(decodeBody(ScriptsBody, body).scripts)
        return self.get({})

    def delete(self, query: Mapping[str, Sequence[str]]) -> Mapping[str, Any]:
        """
        Put back the config file's entries.
        """
        self.book.replace(self.configured)
        return self.get({})
