"""
The docs site builds with C{mkdocs build --strict}: a broken link or anchor,
a page left out of the nav, a plugin folder without its README.md fails it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 120.0


def build(siteDir: Path, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """
    Run C{mkdocs build --strict} on the site of C{root} into C{siteDir}.
    """
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(siteDir),
            "--config-file",
            str(root / "mkdocs.yml"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_siteBuildsStrict(tmp_path: Path) -> None:
    """
    mkdocs build --strict succeeds on the checkout, and the site has every topic page, each plugin's page, the changelog and the license.
    """
    done = build(tmp_path / "site")
    assert done.returncode == 0, done.stderr
    pages = {p.parent.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    plugins = {f"plugins/{p.parent.name}" for p in (ROOT / "plugins").glob("*/__init__.py")}
    expected = {f.stem for f in (ROOT / "docs").glob("*.md")} | plugins | {".", "changelog", "license"}
    assert expected - pages == set()
    assert (tmp_path / "site" / "openapi.json").is_file()
    assert (tmp_path / "site" / "netd.schema.json").is_file()


def copyTree(tmp_path: Path) -> Path:
    """
    A copy of what the site is built from (mkdocs.yml, docs/, README.md, CHANGELOG.md, LICENSE, plugins/*/README.md), to break on purpose.
    """
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md", "LICENSE"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "config", root / "config", symlinks=True)
    (root / "netd" / "config").mkdir(parents=True)
    shutil.copy(ROOT / "netd" / "config" / "default.toml", root / "netd" / "config" / "default.toml")
    for readme in (ROOT / "plugins").glob("*/README.md"):
        (root / "plugins" / readme.parent.name).mkdir(parents=True)
        shutil.copy(readme, root / "plugins" / readme.parent.name / "README.md")
        (root / "plugins" / readme.parent.name / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    ("page", "append", "complaint"),
    [
        pytest.param("docs/tls.md", "\n[x](nosuch.md)\n", "nosuch.md", id="missing-page"),
        pytest.param("docs/tls.md", "\n[x](configuration.md#nosuch)\n", "#nosuch", id="missing-anchor"),
        pytest.param("plugins/echo/README.md", "\n[x](../../docs/tls.md#nosuch)\n", "#nosuch", id="plugin-page-anchor"),
        pytest.param("docs/orphan.md", "# Orphan\n", "orphan.md", id="page-not-in-nav"),
    ],
)
def test_strictBuildFailsOnBreakage(tmp_path: Path, page: str, append: str, complaint: str) -> None:
    """
    A broken link, a missing anchor (on a plugin's page too) or a page left out of the nav fails the strict build, naming what is wrong.
    """
    root = copyTree(tmp_path)
    with open(root / page, "a", encoding="utf-8") as f:
        f.write(append)
    done = build(tmp_path / "site", root)
    assert done.returncode != 0
    assert complaint in done.stderr


def test_pluginFolderWithoutPageFailsTheBuild(tmp_path: Path) -> None:
    """
    A plugin folder without a README.md fails the strict build: every plugin has its page.
    """
    root = copyTree(tmp_path)
    (root / "plugins" / "newone").mkdir()
    (root / "plugins" / "newone" / "__init__.py").touch()
    done = build(tmp_path / "site", root)
    assert done.returncode != 0
    assert "plugins/newone has no README.md" in done.stderr


def test_pluginPageLeftOutOfTheNavFailsTheBuild(tmp_path: Path) -> None:
    """
    A new plugin folder's README.md is pulled into the site, and the strict build fails until mkdocs.yml's nav lists it.
    """
    root = copyTree(tmp_path)
    (root / "plugins" / "newone").mkdir()
    (root / "plugins" / "newone" / "__init__.py").touch()
    (root / "plugins" / "newone" / "README.md").write_text("# newone\n\nA plugin.\n")
    done = build(tmp_path / "site", root)
    assert done.returncode != 0
    assert "plugins/newone.md" in done.stderr
    nav = (
        (root / "mkdocs.yml")
        .read_text()
        .replace("      - Writing a plugin:", "      - newone: plugins/newone.md\n      - Writing a plugin:")
    )
    (root / "mkdocs.yml").write_text(nav)
    assert build(tmp_path / "site", root).returncode == 0
    assert (tmp_path / "site" / "plugins" / "newone" / "index.html").is_file()
