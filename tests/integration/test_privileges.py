"""
C{[daemon] user} and C{group} end to end, as root (as CI runs): netd binds a
port below 1024, makes its auto certificates, drops to nobody/nogroup, and
serves both as that user; and a non-root netd asked to switch users refuses
to start.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import IO_TIMEOUT, NetdProcess, connect, echoService, netdCommand, recvExactly, unavailable, withTestAdmin

pytestmark = pytest.mark.integration

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid)


def requireRoot() -> None:
    """
    Skip unless this runs as root, which the tests need to start netd as root (CI runs as root).
    """
    if os.geteuid() != 0:
        unavailable("needs root: netd must start as root to bind a port below 1024 and drop to nobody (CI runs as root)")


def freePrivilegedPort() -> int:
    """
    A TCP port below 1024 that is free on 127.0.0.1 right now, tried in random
    order (a fixed one would collide with a real service or a parallel run).
    """
    candidates = list(range(600, 1024))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no port from 600 to 1023 is free on 127.0.0.1")


@pytest.fixture
def sharedDir() -> Iterator[Path]:
    """
    A folder nobody may write in (pytest's tmp_path is private to root): the
    ports file is written after the drop.
    """
    path = Path(tempfile.mkdtemp(prefix="netd-priv-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def processIds(pid: int) -> dict[str, list[str]]:
    """
    The Uid, Gid and Groups lines of /proc/PID/status, split.
    """
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: rest.split() for key, _, rest in (line.partition(":") for line in lines) if key in ("Uid", "Gid", "Groups")}


def startAsRoot(config: str, directory: Path) -> NetdProcess:
    """
    Start netd on C{config} with its files in C{directory}; wait until it is ready.
    """
    configFile = directory / "netd.toml"
    configFile.write_text(withTestAdmin(config))
    portsFile = directory / "ports.json"
    logFile = directory / "netd.log"
    environment = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "LISTEN_PID")}
    with logFile.open("wb") as log:
        process = subprocess.Popen(
            netdCommand("run", "-c", str(configFile), "--ports-file", str(portsFile)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    netd = NetdProcess(process, portsFile, logFile)
    try:
        netd.waitUntilReady()
    except BaseException:
        netd.kill()
        raise
    return netd


def test_bindAsRootThenServeAsNobody(sharedDir: Path) -> None:
    """
    Started as root with user nobody and group nogroup, netd serves echo on a port below 1024 and TLS with auto certificates, running with nobody's ids and no supplementary groups.
    """
    requireRoot()
    port = freePrivilegedPort()
    stateDir = sharedDir / "state"
    config = (
        f'[daemon]\nuser = "nobody"\ngroup = "{NOGROUP.gr_name}"\nstate_dir = "{stateDir}"\n\n'
        + echoService("privileged", [f"tcp:{port}:interface=127.0.0.1"])
        + echoService("tls", ["tcp:0:interface=127.0.0.1"], framing="line")
        + 'tls = { certificate = "auto" }\n'
    )
    netd = startAsRoot(config, sharedDir)
    try:
        ids = processIds(netd.pid)
        assert ids["Uid"] == [str(NOBODY.pw_uid)] * 4
        assert ids["Gid"] == [str(NOGROUP.gr_gid)] * 4
        assert ids.get("Groups", []) == []
        log = netd.log()
        assert log.index("now running as user 'nobody'") < log.index("netd is ready"), log

        assert netd.address("privileged") == ("127.0.0.1", port)
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"as nobody\n")
            assert recvExactly(client, 10) == b"as nobody\n"

        context = ssl.create_default_context(cafile=str(stateDir / "tls" / "ca.pem"))
        with connect(netd.address("tls")) as raw, context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"tls as nobody\n")
            assert recvExactly(client, 14) == b"tls as nobody\n"

        for path in (stateDir, stateDir / "tls", stateDir / "tls" / "server-key.pem"):
            assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY.pw_uid, NOGROUP.gr_gid), path
        assert netd.stop() == 0, netd.log()
    finally:
        netd.kill()


def test_nonRootCannotSwitch(sharedDir: Path) -> None:
    """
    Started as nobody with user root in its config, netd exits 1 before binding anything, saying it is not root and cannot switch.
    """
    requireRoot()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to start netd as nobody")
    asNobody = [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    canImport = subprocess.run([*asNobody, *netdCommand("--version")], cwd="/", capture_output=True, timeout=60)
    if canImport.returncode != 0:
        pytest.skip(f"nobody cannot run netd from this checkout: {canImport.stderr!r}")
    config = sharedDir / "netd.toml"
    config.write_text(withTestAdmin('[daemon]\nuser = "root"\n\n' + echoService("echo", ["tcp:0:interface=127.0.0.1"])))
    config.chmod(0o644)
    result = subprocess.run(
        [*asNobody, *netdCommand("run", "-c", str(config), "--ports-file", str(sharedDir / "ports.json"))],
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT * 3,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "[daemon] asks netd to run as user 'root' (uid 0, gid 0)" in output
    assert "is not root, so it cannot switch" in output
    assert "listening on" not in output
    assert not (sharedDir / "ports.json").exists()
