"""
Every shipped config passes C{netd check} on a fresh machine, as a newcomer
runs it: no state directory yet, nothing made beforehand.  An example that
needs files made first says so in a C{# first: COMMAND} header line, run
from the example's folder; the test runs exactly that line, then the check.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
EXAMPLES = sorted(CONFIG_DIR.rglob("*.toml"))
FIRST_STEP = re.compile(r"^#\s*first:\s*(netd .+?)\s*$", re.MULTILINE)
TIMEOUT = 60.0

NEEDS_FIRST_STEP = {"tls-client-checks.toml", "netd-1.toml", "netd-2.toml", "netd-3.toml"}
"""
The examples that need files made before they run (the bad certificates and
the client CA of mutual TLS; the certificate the three netds behind HAProxy
share, in config/deploy/haproxy/); every other one, C{tls-echo.toml}
included, is self-contained.
"""


def firstSteps(example: Path) -> list[str]:
    """
    The commands an example's header says to run, from its folder, before it runs.
    """
    return FIRST_STEP.findall(example.read_text(encoding="utf-8"))


def netd(args: list[str], cwd: Path, stateHome: Path) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m netd ARGS} in C{cwd} with an empty C{$XDG_STATE_HOME}
    and no C{$STATE_DIRECTORY}, as on a machine where netd never ran.
    """
    environment = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    environment["XDG_STATE_HOME"] = str(stateHome)
    return subprocess.run(
        [sys.executable, "-m", "netd", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def test_examplesFound() -> None:
    """
    The shipped configs are found, tls-echo.toml and the one that needs certificates made first among them.
    """
    names = {p.name for p in EXAMPLES}
    assert {"netd.toml", "tls-echo.toml"} | NEEDS_FIRST_STEP <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.relative_to(CONFIG_DIR).as_posix() for p in EXAMPLES])
def test_checkPassesOnAFreshMachine(example: Path, tmp_path: Path) -> None:
    """
    netd check passes on every shipped config with an empty state directory, after only the first steps its header states (none for all but the listed ones), and makes no file in the state directory.
    """
    steps = firstSteps(example)
    assert bool(steps) == (example.name in NEEDS_FIRST_STEP), f"{example.name}: first steps {steps}"
    folder = tmp_path / "example"
    folder.mkdir()
    copy = folder / example.name
    shutil.copyfile(example, copy)
    stateHome = tmp_path / "state"
    stateHome.mkdir()
    for step in steps:
        command = shlex.split(step)
        assert command[0] == "netd", step
        made = netd(command[1:], folder, tmp_path / "step-state")
        assert made.returncode == 0, f"{step}: {made.stderr}"
    result = netd(["check", "-c", str(copy)], folder, stateHome)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {copy}: valid\n")
    assert list(stateHome.iterdir()) == []
