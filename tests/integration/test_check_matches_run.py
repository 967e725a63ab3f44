"""
C{netd check} refuses what C{netd run} refuses, at the same key path: for each
kind of refusal that is not about the network (a token file too open, a
missing certificate, a key that cannot be read, an unknown user, a state
directory the service user could change, a socket folder that does not
exist, ...), both commands run as real processes on the same config, from a
working directory other than the config's, and both name the file and the
key.  Relative paths in the config are the config file's, so a config that
check passes starts from anywhere.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import ssl
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from netd.testing.harness import netdCommand, unavailable
from netd.tls.devcerts import ensureDevelopmentSet

from .conftest import IO_TIMEOUT, STARTUP_TIMEOUT, connect, recvExactly

pytestmark = pytest.mark.integration

NOBODY = pwd.getpwnam("nobody")


@attrs.frozen
class Refusal:
    """
    One kind of refusal: a config (with the files it needs made by C{setup}
    in the config's folder), the key path both commands must name, and a
    fragment of the message.
    """

    config: str
    key: str
    fragment: str
    setup: Callable[[Path], None] = lambda folder: None
    root: bool = False


def devCertificates(folder: Path) -> None:
    """
    A development set in the config's C{certs/} folder.
    """
    ensureDevelopmentSet(str(folder / "certs"))


def tokenFile(mode: int) -> Callable[[Path], None]:
    """
    A setup that writes a token file of this mode in the config's folder.
    """

    def setup(folder: Path) -> None:
        (folder / "admin.token").write_text("s3cret\n")
        (folder / "admin.token").chmod(mode)

    return setup


def keyIsAFolder(folder: Path) -> None:
    """
    Development certificates, and a private_key path that names a folder (unreadable as a file, even by root).
    """
    devCertificates(folder)
    (folder / "key-folder").mkdir()


def stateDirOfNobody(folder: Path) -> None:
    """
    A state directory owned by nobody, the user netd is to drop to.
    """
    (folder / "state").mkdir()
    os.chown(folder / "state", NOBODY.pw_uid, NOBODY.pw_gid)


def aFileInTheWay(folder: Path) -> None:
    """
    A regular file where the state directory's parent folder should be.
    """
    (folder / "file").write_text("not a folder\n")


ADMIN = '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\nadmin_token_file = false\n'
ECHO = '\n[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
TLS = '\n[[services]]\nname = "tls"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'

REFUSALS = {
    "token-too-open": Refusal(
        '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\nadmin_token_file = "admin.token"\n' + ECHO,
        "daemon.admin_token_file",
        "can be read or changed by its group or others (mode 0644)",
        tokenFile(0o644),
    ),
    "token-missing": Refusal(
        '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\nadmin_token_file = "admin.token"\n' + ECHO,
        "daemon.admin_token_file",
        "No such file or directory",
    ),
    "token-empty": Refusal(
        '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\nadmin_token_file = "admin.token"\n' + ECHO,
        "daemon.admin_token_file",
        "is empty",
        lambda folder: (folder / "admin.token").touch(0o600),
    ),
    "missing-certificate": Refusal(
        ADMIN + TLS + 'tls = { certificate = "certs/nowhere.pem", private_key = "certs/server-key.pem" }\n',
        "services[0].tls.certificate",
        "No such file or directory",
        devCertificates,
    ),
    "unreadable-key": Refusal(
        ADMIN + TLS + 'tls = { certificate = "certs/server.pem", private_key = "key-folder" }\n',
        "services[0].tls.private_key",
        "Is a directory",
        keyIsAFolder,
    ),
    "key-of-another-certificate": Refusal(
        ADMIN + TLS + 'tls = { certificate = "certs/server.pem", private_key = "certs/client-key.pem" }\n',
        "services[0].tls.private_key",
        "does not match the certificate",
        devCertificates,
    ),
    "missing-client-ca": Refusal(
        ADMIN
        + TLS
        + 'tls = { certificate = "certs/server.pem", private_key = "certs/server-key.pem", client_auth = "required", '
        'client_ca = "certs/no-ca.pem" }\n',
        "services[0].tls.client_ca",
        "No such file or directory",
        devCertificates,
    ),
    "missing-sni-key": Refusal(
        ADMIN + TLS + 'tls = { certificate = "certs/server.pem", private_key = "certs/server-key.pem", '
        'sni = { "a.test" = { certificate = "certs/server.pem", private_key = "certs/gone.pem" } } }\n',
        "services[0].tls.sni.a.test.private_key",
        "No such file or directory",
        devCertificates,
    ),
    "auto-certificate-state-dir-not-a-folder": Refusal(
        '[daemon]\nadmin = false\nstate_dir = "file/state"\n' + TLS + 'tls = { certificate = "auto" }\n',
        "services[0].tls.certificate",
        "file/state/tls",
        aFileInTheWay,
    ),
    "generated-token-state-dir-not-a-folder": Refusal(
        '[daemon]\nadmin = "tcp:0:interface=127.0.0.1"\nstate_dir = "file/state"\n' + ECHO,
        "daemon.admin_token_file",
        "unset, so netd makes a token in",
        aFileInTheWay,
    ),
    "socket-folder-missing": Refusal(
        ADMIN
        + '\n[[services]]\nname = "echo"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1", "unix:run/echo.sock"]\n',
        "services[0].listen[1]",
        "run/echo.sock",
    ),
    "admin-socket-folder-missing": Refusal(
        '[daemon]\nadmin = "unix:run/admin.sock"\n' + ECHO,
        "daemon.admin",
        "run/admin.sock",
    ),
    "unknown-user": Refusal(
        '[daemon]\nadmin = false\nuser = "no-such-netd-user"\n' + ECHO,
        "daemon.user",
        "unknown user 'no-such-netd-user'",
    ),
    "state-dir-the-user-owns": Refusal(
        '[daemon]\nadmin = false\nuser = "nobody"\nstate_dir = "state"\n' + ECHO,
        "daemon.state_dir",
        "can be changed by user 'nobody'",
        stateDirOfNobody,
        root=True,
    ),
}


def runBoth(
    folder: Path, workdir: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str], Path]:
    """
    Run C{netd check -c F} then C{netd run -c F} on the config in C{folder},
    from C{workdir}, F given relative to C{workdir}; return both results and
    the ports file run would have written.
    """
    config = os.path.relpath(folder / "netd.toml", workdir)
    portsFile = workdir / "ports.json"
    results = []
    for args in (["check", "-c", config], ["run", "-c", config, "--ports-file", str(portsFile)]):
        results.append(
            subprocess.run(
                netdCommand(*args),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=STARTUP_TIMEOUT,
            )
        )
    return results[0], results[1], portsFile


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """
    The config's folder and another working directory beside it; netd's
    default state directory in the test's folder.
    """
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    folder, workdir = tmp_path / "conf", tmp_path / "work"
    folder.mkdir()
    workdir.mkdir()
    return folder, workdir


@pytest.mark.parametrize("name", list(REFUSALS))
def test_checkRefusesWhatRunRefuses(places: tuple[Path, Path], name: str) -> None:
    """
    For each kind of non-network refusal of netd run, netd check refuses the same config too, both naming the file and the same key path.
    """
    refusal = REFUSALS[name]
    if refusal.root and os.geteuid() != 0:
        unavailable("needs root: the state directory rules apply to a root start with [daemon] user (CI runs as root)")
    folder, workdir = places
    refusal.setup(folder)
    (folder / "netd.toml").write_text(refusal.config)
    check, run, portsFile = runBoth(folder, workdir)
    where = f"{os.path.relpath(folder / 'netd.toml', workdir)}: {refusal.key}: "
    assert (check.returncode, check.stdout) == (1, ""), check
    problems = [line for line in check.stderr.splitlines() if line.startswith(where)]
    assert problems and refusal.fragment in problems[0], check.stderr
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert any(where in line and refusal.fragment in line for line in output.splitlines()), output
    assert not portsFile.exists()


def test_relativePathsWorkFromAnotherDirectory(places: tuple[Path, Path]) -> None:
    """
    A config whose token file, certificate, key, state directory and unix socket are relative to its own folder passes check and serves under run, both started from another directory.
    """
    folder, workdir = places
    devCertificates(folder)
    tokenFile(0o600)(folder)
    (folder / "run").mkdir()
    (folder / "netd.toml").write_text(
        textwrap.dedent(
            """\
            [daemon]
            admin = "tcp:0:interface=127.0.0.1"
            admin_token_file = "admin.token"
            state_dir = "state"

            [[services]]
            name = "tls"
            plugin = "echo"
            framing = "line"
            listen = ["tcp:0:interface=127.0.0.1"]
            tls = { certificate = "certs/server.pem", private_key = "certs/server-key.pem" }

            [[services]]
            name = "local"
            plugin = "echo"
            listen = ["unix:run/echo.sock"]
            """
        )
    )
    config = os.path.relpath(folder / "netd.toml", workdir)
    check = subprocess.run(
        netdCommand("check", "-c", config), cwd=workdir, capture_output=True, text=True, timeout=STARTUP_TIMEOUT
    )
    assert (check.returncode, check.stderr) == (0, ""), check
    assert f'admin_token_file = "{folder}/admin.token"' in check.stdout
    portsFile = workdir / "ports.json"
    with (workdir / "netd.log").open("wb") as log:
        process = subprocess.Popen(
            netdCommand("run", "-c", config, "--ports-file", str(portsFile)),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not portsFile.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert portsFile.exists(), (workdir / "netd.log").read_text()
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(IO_TIMEOUT)
            client.connect(str(folder / "run" / "echo.sock"))
            client.sendall(b"from elsewhere\n")
            assert recvExactly(client, 15) == b"from elsewhere\n"
        context = ssl.create_default_context(cafile=str(folder / "certs" / "ca.pem"))
        with (
            connect(("127.0.0.1", _port(portsFile, "tls"))) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as client,
        ):
            client.sendall(b"over tls\n")
            assert recvExactly(client, 9) == b"over tls\n"
        assert "control API" in (workdir / "netd.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=IO_TIMEOUT * 3)
    assert not (workdir / "state").exists() and not (workdir / "run").exists()


def _port(portsFile: Path, service: str) -> int:
    """
    The TCP port a service listens on, from the ports file.
    """
    (bound,) = json.loads(portsFile.read_text())["services"][service]
    return int(bound["port"])
