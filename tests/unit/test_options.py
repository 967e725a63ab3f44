"""
The schema language's nested tables: an attrs field type is a sub-table decoded key by key.
"""

from __future__ import annotations

import attrs

from netd.options import Problem, between, closeMatch, decodeTable, option, renderPath


@attrs.frozen
class Inner:
    """
    A nested table.
    """

    size: int = option(1, help="a size", checks=(between(1, 10),))
    label: str = option(help="a required label")


@attrs.frozen
class Outer:
    """
    A table holding an optional nested table.
    """

    inner: Inner | None = option(None, help="the nested table")


def decode(table: dict[str, object]) -> tuple[Outer | None, list[str]]:
    """
    Decode C{table} as L{Outer}, with its problems rendered.
    """
    problems: list[Problem] = []
    result = decodeTable(Outer, table, ("services", 0), problems)
    return result, [f"{renderPath(p.path)}: {p.message}" for p in problems]


def test_nestedTableDecoded() -> None:
    """
    A nested table becomes an instance of its schema, with defaults filled in.
    """
    assert decode({"inner": {"label": "x"}}) == (Outer(inner=Inner(size=1, label="x")), [])
    assert decode({}) == (Outer(inner=None), [])


def test_nestedProblemsHaveTheirOwnPaths() -> None:
    """
    Problems inside a nested table name their full key path; a non-table is refused as such.
    """
    _, problems = decode({"inner": {"size": 11, "labl": "x"}})
    assert problems == [
        "services[0].inner.labl: unknown key; did you mean 'label'?",
        "services[0].inner.size: 11 is out of range; expected 1 to 10",
        "services[0].inner.label: missing required key; expected a string",
    ]
    assert decode({"inner": 3})[1] == ["services[0].inner: expected a table, got integer 3"]


def test_closeMatchSuggestsTheNearestCandidate() -> None:
    """
    closeMatch names the candidate closest to the word as a "; did you mean ...?" suffix, and nothing when none is close.
    """
    assert closeMatch("labl", ["label", "size"]) == "; did you mean 'label'?"
    assert closeMatch("xyzzy", ["label", "size"]) == ""


def test_closeMatchThenStartsASentenceAfterTheQuestion() -> None:
    """
    What follows the suggestion starts a sentence of its own after the question mark (never "?;"), and follows a "; " when there is no suggestion.
    """
    then = "known: label, size"
    assert closeMatch("labl", ["label", "size"], then=then) == "; did you mean 'label'? Known: label, size"
    assert closeMatch("xyzzy", ["label", "size"], then=then) == "; known: label, size"
