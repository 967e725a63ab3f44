"""
netd as its users get it: C{python -m build} makes the sdist, then the wheel
from that sdist (so the sdist must hold everything a build needs), C{twine
check} accepts both, and the wheel installed into a fresh virtualenv gives a
C{netd} that checks the embedded default and every example of
config/examples, finds its built-in plugins and gives twistd its drop-in.

The build works on a copy of the source tree, so that it leaves nothing in the
checkout; the fresh virtualenv installs netd's dependencies through pip as a
user would (pip's cache makes that quick after the first time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import attrs
import pytest

import netd

from .checkout import ROOT, copySources

pytestmark = pytest.mark.integration

DISTRIBUTION = "netd_daemon"
BUILD_TIMEOUT = 120
INSTALL_TIMEOUT = 240
COMMAND_TIMEOUT = 60


@attrs.frozen
class Built:
    """
    The sdist and the wheel that C{python -m build} made.
    """

    sdist: Path
    wheel: Path


@attrs.frozen
class Installed:
    """
    A fresh virtualenv with the wheel installed, and a folder to run it in.
    """

    venv: Path
    workdir: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run one of the virtualenv's commands in the work folder and capture what it prints.
        """
        return subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )


def run(args: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """
    Run a build or install step to completion, failing the test with its output when it fails.
    """
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (args, done.stdout[-4000:], done.stderr[-4000:])
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """
    Build the sdist and, from it, the wheel, out of a copy of the source tree.
    """
    base = tmp_path_factory.mktemp("build")
    source = base / "source"
    copySources(source)
    out = base / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], BUILD_TIMEOUT)
    version = netd.__version__
    sdist, wheel = out / f"{DISTRIBUTION}-{version}.tar.gz", out / f"{DISTRIBUTION}-{version}-py3-none-any.whl"
    assert sorted(out.iterdir()) == sorted([sdist, wheel])
    return Built(sdist, wheel)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """
    A fresh virtualenv (no system site-packages, nothing of the checkout on its
    path) with the wheel installed by pip.
    """
    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    # An install too (ensurepip puts pip into it): 30 seconds ran out beside the suite's other workers.
    run([sys.executable, "-m", "venv", str(venv)], INSTALL_TIMEOUT)
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(built.wheel)],
        INSTALL_TIMEOUT,
    )
    workdir = base / "work"
    workdir.mkdir()
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "STATE_DIRECTORY")
    }
    env["XDG_STATE_HOME"] = str(base / "state")
    return Installed(venv, workdir, env)


def test_twineCheck(built: Built) -> None:
    """
    twine check --strict accepts the sdist and the wheel (metadata, license, the README as their description).
    """
    done = run(
        [sys.executable, "-m", "twine", "check", "--strict", str(built.sdist), str(built.wheel)], COMMAND_TIMEOUT
    )
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_sdistContents(built: Built) -> None:
    """
    The sdist holds the license, the README, the changelog, the package data, the built-in plugins, the twistd drop-in and the example configs.
    """
    prefix = f"{DISTRIBUTION}-{netd.__version__}/"
    with tarfile.open(built.sdist) as sdist:
        names = {name.removeprefix(prefix) for name in sdist.getnames()}
    expected = {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "netd/config/default.toml",
        "netd/py.typed",
        "plugins/__init__.py",
        "plugins/echo/__init__.py",
        "plugins/tlsecho/__init__.py",
        "plugins/dnsproxy/__init__.py",
        "twisted/plugins/netd_plugin.py",
        *(f"config/examples/{path.name}" for path in (ROOT / "config" / "examples").glob("*.toml")),
    }
    assert expected - names == set()
    assert [name for name in names if name.endswith(("dropin.cache", ".pyc"))] == []


def test_wheelContents(built: Built) -> None:
    """
    The wheel installs netd with its package data, the built-in plugins as netd_plugins (no top-level plugins package, none of the plugins' tests), the twistd drop-in without a twisted/plugins/__init__.py, and the license; its metadata names netd-daemon, the version and MIT.
    """
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"{DISTRIBUTION}-{netd.__version__}.dist-info/"
        metadata = Parser().parsestr(wheel.read(info + "METADATA").decode())
    expected = {
        "netd/__init__.py",
        "netd/config/default.toml",
        "netd/py.typed",
        "netd_plugins/__init__.py",
        "netd_plugins/echo/__init__.py",
        "netd_plugins/tlsecho/__init__.py",
        "netd_plugins/dnsproxy/__init__.py",
        "twisted/plugins/netd_plugin.py",
        info + "licenses/LICENSE",
    }
    assert expected - names == set()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"netd", "netd_plugins", "twisted", info.rstrip("/")}
    assert "twisted/plugins/__init__.py" not in names
    assert [name for name in names if "/tests/" in name or name.endswith("conftest.py")] == []
    assert (metadata["Name"], metadata["Version"], metadata["License-Expression"]) == (
        "netd-daemon",
        netd.__version__,
        "MIT",
    )


def test_installedVersion(installed: Installed) -> None:
    """
    The installed netd is the wheel's (not the checkout's), and netd -V prints its version.
    """
    done = installed.run(
        "python",
        "-c",
        "import importlib.metadata, netd; print(netd.__file__); print(importlib.metadata.version('netd-daemon'))",
    )
    assert done.returncode == 0, done.stderr
    location, version = done.stdout.split()
    assert Path(location).is_relative_to(installed.venv)
    assert version == netd.__version__
    done = installed.run("netd", "-V")
    assert (done.returncode, done.stdout) == (0, f"netd {netd.__version__}\n")


def test_installedChecksDefault(installed: Installed) -> None:
    """
    The installed netd checks its embedded default config.
    """
    done = installed.run("netd", "check")
    assert done.returncode == 0, done.stderr
    assert "[[services]]" in done.stdout


def test_installedChecksExamples(installed: Installed) -> None:
    """
    The installed netd checks every example of config/examples, after the certificates step the TLS example's comment gives (netd certs --out certs --bad).
    """
    # The examples in the folder netd runs in, with certs/ beside them: their
    # relative paths name the same files from either folder.
    examples = installed.workdir
    shutil.copytree(ROOT / "config" / "examples", examples, dirs_exist_ok=True)
    done = installed.run("netd", "certs", "--out", str(examples / "certs"), "--bad")
    assert done.returncode == 0, done.stderr
    paths = sorted(examples.glob("*.toml"))
    assert paths
    failed = {}
    for path in paths:
        done = installed.run("netd", "check", "-c", str(path))
        if done.returncode != 0:
            failed[path.name] = done.stderr
    assert failed == {}


def test_installedPluginsAndDropIn(installed: Installed) -> None:
    """
    The installed netd finds its built-in plugins, and twistd finds the netd drop-in.
    """
    done = installed.run("netd", "plugins")
    assert done.returncode == 0, done.stderr
    for name in ("echo", "dns-proxy", "tls-echo"):
        assert f"{name}: " in done.stdout
    done = installed.run("twistd", "netd", "--help")
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout


def test_copyLeavesOutWhatGitIgnores(tmp_path: Path) -> None:
    """
    The build's copy of the tree holds what git tracks or would add, never
    what it ignores (virtualenvs, the container test's image storage, which
    a whole-tree copy once grew to 78 GB by following its links).
    """
    root = tmp_path / "checkout"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "module.py").write_text("x = 1\n")
    (root / ".gitignore").write_text(".venv-test/\n.container-test/\n")
    (root / ".container-test" / "storage").mkdir(parents=True)
    (root / ".container-test" / "storage" / "layer").write_text("big")
    (root / ".venv-test").mkdir()
    (root / ".venv-test" / "python").write_text("binary")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "pkg/module.py"], check=True)
    copy = tmp_path / "copy"
    copySources(copy, root)
    copied = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert copied == [".gitignore", "pkg/module.py"]
