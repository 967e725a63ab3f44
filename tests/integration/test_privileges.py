"""
C{[daemon] user} and C{group} end to end, as root (as CI runs): netd binds a
port below 1024, makes its auto certificates in a root-owned state directory,
drops to nobody/nogroup, and serves both as that user; a state directory the
user can write is refused, and a user racing symlinks into it never gets a
root-owned file; and a non-root netd asked to switch users refuses to start.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netd.testing.harness import NetdServer, netdCommand

from .conftest import (
    IO_TIMEOUT,
    connect,
    echoService,
    recvExactly,
    requireTool,
    unavailable,
    waitForLog,
    withTestAdmin,
)

pytestmark = pytest.mark.integration

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid)


def requireRoot() -> None:
    """
    Skip unless this runs as root, which the tests need to start netd as root (CI runs as root).
    """
    if os.geteuid() != 0:
        unavailable(
            "needs root: netd must start as root to bind a port below 1024 and drop to nobody (CI runs as root)"
        )


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
    unavailable("no port from 600 to 1023 is free on 127.0.0.1")


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
    return {
        key: rest.split() for key, _, rest in (line.partition(":") for line in lines) if key in ("Uid", "Gid", "Groups")
    }


def startAsRoot(config: str, directory: Path) -> NetdServer:
    """
    Start netd on C{config} with its files in C{directory}; wait until it is ready.
    """
    return NetdServer(config, directory, shutdownTimeout=None).start()


def test_bindAsRootThenServeAsNobody(sharedDir: Path) -> None:
    """
    Started as root with user nobody and group nogroup, netd serves echo on a port below 1024 and TLS with auto certificates, running with nobody's ids and no supplementary groups; the state directory stays root's, the CA key root's and unreadable by nobody, and a reload reads the server certificate again.
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

        for path in (stateDir, stateDir / "tls", stateDir / "tls" / "ca-key.pem"):
            assert (path.stat().st_uid, path.stat().st_gid) == (0, 0), path
            assert not path.stat().st_mode & 0o022, path
        assert stat.S_IMODE((stateDir / "tls" / "ca-key.pem").stat().st_mode) == 0o600
        assert (stateDir / "tls" / "server-key.pem").stat().st_uid == NOBODY.pw_uid
        assert readableByNobody(stateDir / "tls" / "server-key.pem")
        assert not readableByNobody(stateDir / "tls" / "ca-key.pem")

        netd.process.send_signal(signal.SIGHUP)
        log = waitForLog(netd, "reload: service tls (echo) unchanged (TLS files reloaded)")
        assert "cannot reload" not in log, log
        with connect(netd.address("tls")) as raw, context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"after reload\n")
            assert recvExactly(client, 13) == b"after reload\n"
        assert netd.stop() == 0, netd.log()
    finally:
        netd.kill()


def readableByNobody(path: Path) -> bool:
    """
    Whether a process running as nobody (with nogroup, no other groups) can open C{path} for reading.
    """
    probe = subprocess.run(
        [pythonForNobody(), "-I", "-c", "import sys; open(sys.argv[1], 'rb').close()", str(path)],
        cwd="/",
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0 or "PermissionError" in probe.stderr, probe.stderr
    return probe.returncode == 0


def runRefused(sharedDir: Path, config: Path, prefix: list[str] | None = None, cwd: str | None = None) -> str:
    """
    Run netd on C{config} (after C{prefix}, such as a command switching user), which must exit 1; its output.
    """
    result = subprocess.run(
        [*(prefix or []), *netdCommand("run", "-c", str(config), "--ports-file", str(sharedDir / "ports.json"))],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT * 3,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    return output


def test_nonRootCannotSwitch(sharedDir: Path) -> None:
    """
    Started as nobody with user root in its config, netd exits 1 before binding anything, saying it is not root and cannot switch.
    """
    requireRoot()
    setpriv = requireTool("setpriv")
    asNobody = [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    canImport = subprocess.run([*asNobody, *netdCommand("--version")], cwd="/", capture_output=True, timeout=60)
    if canImport.returncode != 0:
        pytest.skip(f"nobody cannot run netd from this checkout: {canImport.stderr!r}")
    config = sharedDir / "netd.toml"
    config.write_text(withTestAdmin('[daemon]\nuser = "root"\n\n' + echoService("echo", ["tcp:0:interface=127.0.0.1"])))
    config.chmod(0o644)
    output = runRefused(sharedDir, config, asNobody, cwd="/")
    assert "[daemon] asks netd to run as user 'root' (uid 0, gid 0)" in output
    assert "is not root, so it cannot switch" in output
    assert "listening on" not in output
    assert not (sharedDir / "ports.json").exists()


def autoTLSConfig(stateDir: Path) -> str:
    """
    A config run as nobody with a TLS service on auto certificates in C{stateDir}.
    """
    return (
        f'[daemon]\nuser = "nobody"\nstate_dir = "{stateDir}"\n\n'
        + echoService("tls", ["tcp:0:interface=127.0.0.1"], framing="line")
        + 'tls = { certificate = "auto" }\n'
    )


@pytest.mark.parametrize("owned", ["state_dir", "tls"])
def test_stateDirTheUserCanWriteIsRefused(sharedDir: Path, owned: str) -> None:
    """
    Started as root with user nobody, netd refuses a state directory (or its tls/ folder) that nobody owns, naming the key, the path and the way out, and makes nothing in it.
    """
    requireRoot()
    stateDir = sharedDir / "state"
    (stateDir / "tls").mkdir(parents=True)
    writable = stateDir if owned == "state_dir" else stateDir / "tls"
    os.chown(writable, NOBODY.pw_uid, NOBODY.pw_gid)
    config = sharedDir / "netd.toml"
    config.write_text(withTestAdmin(autoTLSConfig(stateDir)))
    output = runRefused(sharedDir, config)
    assert "[daemon] state_dir" in output
    assert f"{str(writable)!r}" in output
    assert "user 'nobody'" in output
    assert f"chown -R root: {stateDir}" in output
    assert list((stateDir / "tls").iterdir()) == []
    assert not (sharedDir / "ports.json").exists()


ATTACKER = r"""
import ctypes, os, sys, time

tls, victims, seconds, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
real, link = os.path.join(tls, "sub"), os.path.join(tls, "alt")
deadline = time.monotonic() + seconds
ready, swaps = False, 0
while time.monotonic() < deadline:
    if not ready:
        try:
            os.makedirs(real, exist_ok=True)
            for i in range(count):
                open(os.path.join(real, f"f{i}"), "a").close()
            if not os.path.islink(link):
                os.symlink(victims, link)
            ready = True
            print("attacker set up", flush=True)
        except OSError:
            time.sleep(0.01)
        continue
    if libc.renameat2(AT_FDCWD, real.encode(), AT_FDCWD, link.encode(), RENAME_EXCHANGE) == 0:
        swaps += 1
print("swaps", swaps, flush=True)
"""
"""
Run as nobody: once it can write in the tls/ folder, it keeps swapping a
folder of its own (holding files named like the victims) with a symbolic link
to the folder of root's victim files, as fast as it can, so that a root
process walking tls/ and changing owners by path would follow the link.
"""


def pythonForNobody() -> str:
    """
    A Python interpreter that nobody may run (root's own may sit in a folder private to root).
    """
    for candidate in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        try:
            subprocess.run([candidate, "-I", "-c", "pass"], cwd="/", user=NOBODY.pw_uid, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    unavailable("no Python interpreter that nobody may run (tried /usr/bin/python3 and this one)")


RACE_STARTS = 20
RACE_SECONDS = 120.0
VICTIMS = 64


def test_symlinkRaceGetsNoRootFile(sharedDir: Path) -> None:
    """
    While nobody swaps a folder in the state directory for a symbolic link to root's files as fast as it can, twenty starts of netd as root with user nobody never change the owner or mode of a root-owned file, and the state directory stays root's.
    """
    requireRoot()
    stateDir = sharedDir / "state"
    victims = Path(tempfile.mkdtemp(prefix="netd-victims-"))
    python = pythonForNobody()
    try:
        for i in range(VICTIMS):
            victim = victims / f"f{i}"
            victim.write_text("root's\n")
            victim.chmod(0o600)
        before = {p.name: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in victims.iterdir()}
        config = autoTLSConfig(stateDir)
        attacker: subprocess.Popen[str] | None = None
        deadline = time.monotonic() + RACE_SECONDS
        starts = 0
        try:
            while starts < RACE_STARTS and time.monotonic() < deadline:
                netd = startAsRoot(config, sharedDir)
                try:
                    assert netd.stop() == 0, netd.log()
                finally:
                    netd.kill()
                (sharedDir / "ports.json").unlink()
                starts += 1
                if attacker is None:
                    attacker = subprocess.Popen(
                        [
                            python,
                            "-I",
                            "-c",
                            ATTACKER,
                            str(stateDir / "tls"),
                            str(victims),
                            str(RACE_SECONDS),
                            str(VICTIMS),
                        ],
                        cwd="/",
                        user=NOBODY.pw_uid,
                        group=NOBODY.pw_gid,
                        extra_groups=[],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                changed = {p.name: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in victims.iterdir()}
                assert changed == before, (
                    f"start {starts}: netd gave root's files away: {set(changed.items()) - set(before.items())}"
                )
        finally:
            if attacker is not None:
                attacker.kill()
                output = attacker.communicate(timeout=10)[0]
                print(f"{starts} starts; the attacker said: {output!r}")
        assert starts >= 5, f"only {starts} starts in {RACE_SECONDS} seconds"
        for path in (stateDir, stateDir / "tls"):
            assert path.stat().st_uid == 0 and not path.stat().st_mode & 0o022, path
    finally:
        shutil.rmtree(victims, ignore_errors=True)


def test_reloadAfterDropKeepsCertificatesItCannotRenew(sharedDir: Path) -> None:
    """
    After the drop, a reload that finds the auto server certificate in need of renewal (here: no longer signed by the CA) keeps serving the one it has, warns that a restart renews it, and the next start as root renews it.
    """
    requireRoot()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from netd.tls.devcerts import issue

    stateDir = sharedDir / "state"
    netd = startAsRoot(autoTLSConfig(stateDir), sharedDir)
    tls = stateDir / "tls"
    try:
        key = serialization.load_pem_private_key((tls / "server-key.pem").read_bytes(), password=None)
        selfSigned = issue(None, ["localhost"])
        builder = (
            x509.CertificateBuilder()
            .subject_name(selfSigned.certificate.subject)
            .issuer_name(selfSigned.certificate.subject)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(selfSigned.certificate.not_valid_before_utc)
            .not_valid_after(selfSigned.certificate.not_valid_after_utc)
        )
        pem = builder.sign(selfSigned.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        (tls / "server.pem").write_bytes(pem)
        netd.process.send_signal(signal.SIGHUP)
        log = waitForLog(netd, "reload: service tls (echo) unchanged (TLS files reloaded)")
        assert "cannot renew the development certificates in" in log, log
        assert "renews them when it starts again as root" in log
        assert (tls / "server.pem").read_bytes() == pem
        assert sorted(p.name for p in tls.iterdir() if p.name.startswith(".")) == []
        assert netd.stop() == 0, netd.log()
    finally:
        netd.kill()
    (sharedDir / "ports.json").unlink()
    netd = startAsRoot(autoTLSConfig(stateDir), sharedDir)
    try:
        assert (tls / "server.pem").read_bytes() != pem
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        with connect(netd.address("tls")) as raw, context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"renewed\n")
            assert recvExactly(client, 8) == b"renewed\n"
        assert netd.stop() == 0, netd.log()
    finally:
        netd.kill()
