"""
A bind refused by the system (a privileged port for an unprivileged user) stops
netd before it serves anything, with a message naming the service and address.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.testing.harness import netdCommand

pytestmark = pytest.mark.integration

NOBODY = 65534


@pytest.fixture
def worldReadableDir() -> Iterator[Path]:
    """
    A directory the unprivileged user can read (pytest's tmp_path is private to root).
    """
    path = Path(tempfile.mkdtemp(prefix="netd-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_privilegedPortRefusedForUnprivilegedUser(worldReadableDir: Path) -> None:
    """
    Run as an unprivileged user, netd given a port below 1024 exits 1 naming the
    service and the listen string, and releases the port it had already bound.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run netd as an unprivileged user")
    asNobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    canImport = subprocess.run([*asNobody, *netdCommand("--version")], cwd="/", capture_output=True, timeout=60)
    if canImport.returncode != 0:
        pytest.skip(f"the unprivileged user cannot run netd from this checkout: {canImport.stderr!r}")
    config = worldReadableDir / "netd.toml"
    config.write_text(
        "[daemon]\nadmin = false\n"
        "[[services]]\n"
        'name = "first"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        "[[services]]\n"
        'name = "privileged"\nplugin = "echo"\nlisten = ["tcp:81:interface=127.0.0.1"]\n'
    )
    config.chmod(0o644)
    portsFile = worldReadableDir / "ports.json"
    result = subprocess.run(
        [*asNobody, *netdCommand("run", "-c", str(config), "--ports-file", str(portsFile))],
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "services[1].listen[0]: cannot listen on 'tcp:81:interface=127.0.0.1'" in output
    assert "Permission denied" in output
    assert not portsFile.exists()
    firstPort = int(output.split("listening on tcp 127.0.0.1:")[1].split()[0])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", firstPort))
