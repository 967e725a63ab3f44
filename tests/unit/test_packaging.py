"""
What a plain (non-editable) install ships and what it is called: every package
of the source tree is listed in pyproject.toml, which names its packages by hand
(the built-in plugins install from plugins/ as netd_plugins); the version has
one source, printed by C{netd --version} and entered in CHANGELOG.md; the
license pyproject declares is the LICENSE file; and no install line in the docs
names C{netd} on the package index, which is another project.
(tests/integration/test_wheel.py builds and installs the real sdist and wheel.)
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

import netd
from netd.daemon.cli import buildParser

ROOT = Path(__file__).resolve().parents[2]

DISTRIBUTION = "netd-daemon"


def pyproject() -> dict[str, Any]:
    """
    pyproject.toml, read.
    """
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def sourcePackages() -> set[str]:
    """
    The dotted names of the folders with an __init__.py under netd/ and plugins/
    (the latter installed as netd_plugins).
    """
    names = set()
    for top, installed in (("netd", "netd"), ("plugins", "netd_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in parts:
                names.add(".".join((installed, *parts)))
    return names


def test_everyPackageIsShipped() -> None:
    """
    pyproject.toml's packages list names every package of netd/ and plugins/, so a fresh install imports them all.
    """
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    assert sourcePackages() - listed == set()


def test_distributionName() -> None:
    """
    The distribution is netd-daemon (netd on the index is an unrelated project) and the example third-party plugin depends on that name.
    """
    assert pyproject()["project"]["name"] == DISTRIBUTION
    thirdParty = tomllib.loads((ROOT / "tests" / "thirdparty" / "pyproject.toml").read_text())
    assert DISTRIBUTION in thirdParty["project"]["dependencies"]


def installLines() -> list[tuple[str, str]]:
    """
    Every C{pip install}/C{pipx install} command in the README, the pages of
    docs/ and the files of config/, with the file it is in.
    """
    files = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "plugins").glob("*/README.md")),
        *sorted(p for p in (ROOT / "config").rglob("*") if p.is_file()),
    ]
    found = []
    for path in files:
        for line in re.findall(r"pipx? install[^`\n]*", path.read_text()):
            found.append((str(path.relative_to(ROOT)), line))
    return found


def test_noInstallOfTheIndexNetd() -> None:
    """
    No install line in the docs asks the package index for the name netd, which installs someone else's project.
    """
    lines = installLines()
    assert any("pip install ." in line for _, line in lines)
    offenders = [(path, line) for path, line in lines if re.search(r"install\s+(-\S+\s+)*['\"]?netd(?![-\w])", line)]
    assert offenders == []


def test_versionHasOneSource() -> None:
    """
    pyproject.toml writes no version of its own: setuptools reads netd.__version__.
    """
    project = pyproject()
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "netd.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", netd.__version__)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_versionFlags(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """
    netd --version and netd -V print "netd VERSION" and exit 0.
    """
    with pytest.raises(SystemExit) as exited:
        buildParser().parse_args([flag])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"netd {netd.__version__}\n"


RELEASE = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?$", re.MULTILINE)


def changelogEntries() -> list[tuple[str, str | None, str]]:
    """
    The entries of CHANGELOG.md, newest first: version (or Unreleased), date and text.
    """
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = list(RELEASE.finditer(text))
    ends = [h.start() for h in headings[1:]] + [len(text)]
    return [(h["version"], h["date"], text[h.end() : end].strip()) for h, end in zip(headings, ends, strict=True)]


def test_changelogHasCurrentVersion() -> None:
    """
    CHANGELOG.md opens with an Unreleased section, then an entry with a date and some text for the current version, and its releases go from newest to oldest.
    """
    entries = changelogEntries()
    assert entries[0][0] == "Unreleased"
    version, date, text = entries[1]
    assert (version, date is not None, text != "") == (netd.__version__, True, True)
    releases = [tuple(int(part) for part in v.split(".")) for v, _, _ in entries[1:]]
    assert releases == sorted(releases, reverse=True)
    assert all(d is not None and t for _, d, t in entries[1:])


def test_licenseFile() -> None:
    """
    The LICENSE file is the MIT license pyproject declares, with the netd authors' copyright, and is shipped as a license file.
    """
    project = pyproject()["project"]
    assert (project["license"], project["license-files"]) == ("MIT", ["LICENSE"])
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) the netd authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
