"""
What a plain (non-editable) install ships: every package of the source tree is
listed in pyproject.toml, which names its packages by hand (the built-in
plugins install from plugins/ as netd_plugins).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert sourcePackages() - listed == set()
