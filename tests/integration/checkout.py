"""
The files of this checkout as a build sees them: what git tracks or would
add (untracked files that .gitignore does not exclude), never the virtualenvs,
caches and container storage beside them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sourceFiles(root: Path = ROOT) -> list[str]:
    """
    The paths, relative to C{root}, of every file git knows or would add, sorted.
    """
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    ).stdout.decode()
    return sorted(p for p in set(listed.split("\0")) if p and (root / p).is_file())


def copySources(destination: Path, root: Path = ROOT) -> None:
    """
    Copy L{sourceFiles} into C{destination}, keeping their paths (and links as links).
    """
    for path in sourceFiles(root):
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target, follow_symlinks=False)
