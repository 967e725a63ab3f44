"""
The unit suite and the typing test against the edges of what netd declares it
runs with: the newest releases of the dependencies whose private names netd
uses (past pyproject's upper bounds), and the lowest versions pyproject allows.

    nox -s newest    # a release that breaks netd is seen before a user sees it
    nox -s lowest    # the lower bounds in pyproject.toml are true

Both download from the package index; the default suite (test.sh) does not run them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["newest", "lowest"]
nox.options.reuse_existing_virtualenvs = False

PYTHON = "3.11"

PRIVATE_USERS = ["twisted", "pyopenssl", "cryptography", "uvloop"]
"""
The dependencies whose private names netd uses (see pyproject.toml's comments).
"""

SUITE = ["tests/unit", "tests/test_typing.py", "-q", "-p", "no:cacheprovider"]

ROOT = Path(__file__).resolve().parent


def _runSuite(session: nox.Session) -> None:
    """
    Install the example third-party plugin the unit suite loads, show the versions under test, run the suite.
    """
    session.install("--no-deps", "./tests/thirdparty")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("python", "-m", "pytest", *SUITE, *session.posargs)


@nox.session(python=PYTHON)
def newest(session: nox.Session) -> None:
    """
    netd as pyproject declares it, then the newest releases of the dependencies whose privates it uses, bounds ignored.
    """
    session.install("-e", ".[test]")
    session.install("-U", "--no-deps", *PRIVATE_USERS)
    _runSuite(session)


def lowestRequirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """
    Each of pyproject's runtime dependencies pinned to the lowest version it allows (C{name>=X} becomes C{name==X}).
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    pinned = []
    for requirement in project["dependencies"]:
        spec, _, marker = requirement.partition(";")
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*>=\s*([^,\s]+).*", spec)
        if match is None:
            raise ValueError(f"pyproject.toml: {requirement!r} declares no lowest version (name>=X)")
        pinned.append(f"{match[1]}=={match[2]}" + (f";{marker}" if marker else ""))
    return pinned


@nox.session(python=PYTHON)
def lowest(session: nox.Session) -> None:
    """
    netd with exactly the lowest versions pyproject declares for its runtime dependencies.
    """
    session.install("-e", ".[test]", *lowestRequirements())
    _runSuite(session)
