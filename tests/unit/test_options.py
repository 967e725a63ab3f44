"""
The schema language: nested tables (an attrs field type is a sub-table decoded
key by key), and path keys, placed from the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import pytest

from netd.config.options import ConfigPath, Problem, between, closeMatch, decodeTable, option, relativeTo, renderPath


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


@attrs.frozen
class Files:
    """
    A table of path keys, as a plugin's schema declares them.
    """

    data: ConfigPath | None = option(None, help="a file")
    folders: tuple[ConfigPath, ...] = option((), help="folders")
    token: ConfigPath | Literal[False] | None = option(None, help="a file, or false")


def decodeFiles(table: dict[str, object]) -> tuple[Files | None, list[str]]:
    """
    Decode C{table} as L{Files}, with its problems rendered.
    """
    problems: list[Problem] = []
    result = decodeTable(Files, table, ("services", 0), problems)
    return result, [f"{renderPath(p.path)}: {p.message}" for p in problems]


def test_relativePathsAreFromTheConfigFolder() -> None:
    """
    Within relativeTo(FOLDER), a relative path of any schema, nested in arrays too, is made absolute from FOLDER; an absolute one stays.
    """
    with relativeTo("/etc/netd"):
        files, problems = decodeFiles({"data": "certs/a.pem", "folders": ["../state", "/var/lib/x", "./y"]})
    assert problems == []
    assert files == Files(data="/etc/netd/certs/a.pem", folders=("/etc/state", "/var/lib/x", "/etc/netd/y"))
    assert isinstance(files.data, ConfigPath)


def test_relativeFolderIsMadeAbsolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A config folder given relative to the working directory places paths absolutely, so a later chdir changes nothing.
    """
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    with relativeTo("conf"):
        files, _ = decodeFiles({"data": "a.pem"})
    assert files is not None and files.data == str(tmp_path / "conf" / "a.pem")


def test_pathsWithoutAFileStayAsWritten() -> None:
    """
    Outside relativeTo (a config with no file), paths stay as written: relative to the working directory.
    """
    assert decodeFiles({"data": "a.pem"})[0] == Files(data="a.pem")
    with relativeTo(None):
        assert decodeFiles({"data": "a.pem"})[0] == Files(data="a.pem")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param({"data": ""}, "services[0].data: expected a path, got an empty string", id="empty"),
        pytest.param({"data": "  "}, "services[0].data: expected a path, got an empty string", id="blank"),
        pytest.param({"data": 5}, "services[0].data: expected a path, got integer 5", id="number"),
        pytest.param(
            {"data": "a\0b"}, "services[0].data: 'a\\x00b' holds a NUL character, which no path can", id="nul"
        ),
        pytest.param({"token": ""}, "services[0].token: expected a path, got an empty string", id="empty-or-false"),
        pytest.param(
            {"token": True}, "services[0].token: expected a path or one of False, got boolean True", id="true"
        ),
    ],
)
def test_badPathsAreRefused(table: dict[str, object], expected: str) -> None:
    """
    A path key refuses what no path can be, saying so at its key path (not as a mismatch with the union's other members).
    """
    with relativeTo("/etc/netd"):
        assert decodeFiles(table) == (None, [expected])


def test_falseBesidePath() -> None:
    """
    A path key that also takes false keeps false as false, not as a path.
    """
    with relativeTo("/etc/netd"):
        assert decodeFiles({"token": False})[0] == Files(token=False)
