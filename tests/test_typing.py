"""
The code's type annotations hold: mypy (with the zope plugin, configured in
pyproject.toml) finds nothing in netd/ and plugins/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypyFindsNothing() -> None:
    """
    mypy, run over netd/ and plugins/ with the project's settings, reports no error.
    """
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
