"""
The container image (Containerfile), built and run without a container daemon
or a registry: a Debian base made with mmdebstrap and imported with buildah,
the Containerfile built on it with C{buildah bud} (chroot isolation, vfs
storage), and netd started from the built image's own command with C{buildah
run} on the host's network, where real clients (a socket, dig, openssl
s_client, HTTP) talk to it on loopback; then SIGHUP reloads it and SIGTERM
drains it.

What is slow is cached under .container-test/ (gitignored), keyed by what it
is made from: the base image by the mmdebstrap command, the dependency wheels
by pyproject.toml, the built image by the build context; each replaces the
one it was made before.  The build installs netd from
the checkout with pip, offline: the host's pip (which reaches the package
index) makes the dependency wheels, and the build's C{RUN} steps see them and
a pip.conf saying C{no-index} through read-only mounts (C{buildah bud -v}), so
the Containerfile stays the one a networked C{docker build} uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import attrs
import pytest

from netd.testing.harness import unavailable

from .checkout import ROOT, sourceFiles
from .conftest import IO_TIMEOUT, connect, dig, lockFile, recvExactly, requireTool
from .test_tls import sClient

CACHE = ROOT / ".container-test"
BASE_COMMAND = ["--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm"]
"""
The mmdebstrap arguments of the base (before the output file): issue 17's recipe.
"""
NETD_UID = 10001
BUILD_TIMEOUT = 900.0
RUN_TIMEOUT = 60.0
READY_TIMEOUT = 60.0


def digest(*parts: bytes) -> str:
    """
    A short cache key for what C{parts} hold.
    """
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def run(command: list[str], timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """
    Run a command to its end, failing the test with its output if C{check} and it fails.
    """
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def buildahCommand(*args: str) -> list[str]:
    """
    A buildah command on the test's own image store (vfs: no overlay mounts needed).
    """
    storage = ["--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"), "--storage-driver", "vfs"]
    return [requireTool("buildah"), *storage, *args]


def buildah(*args: str, timeout: float = RUN_TIMEOUT) -> str:
    """
    Run buildah and return what it printed.
    """
    return run(buildahCommand(*args), timeout).stdout


def hasImage(name: str) -> bool:
    """
    Whether the test's image store holds the image C{name}.
    """
    return run(buildahCommand("inspect", "--type", "image", name), check=False).returncode == 0


def baseImage() -> str:
    """
    The Debian base image, made with mmdebstrap into a tarball and imported
    (C{buildah from scratch}, C{add}, C{commit}), once per mmdebstrap command.
    """
    name = f"localhost/netd-test-base:{digest(*(a.encode() for a in BASE_COMMAND))}"
    if hasImage(name):
        return name
    tarball = CACHE / "base.tar"
    run([requireTool("mmdebstrap"), *BASE_COMMAND, str(tarball)], BUILD_TIMEOUT)
    container = buildah("from", "scratch").strip()
    try:
        buildah("add", container, str(tarball), "/", timeout=BUILD_TIMEOUT)
        buildah("commit", "--quiet", container, name, timeout=BUILD_TIMEOUT)
    finally:
        buildah("rm", container)
        tarball.unlink()
    return name


def dependencyWheels() -> Path:
    """
    The wheels of netd's dependencies and of its build backend, made by the
    host's pip (with its index and certificates), once per pyproject.toml.
    """
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    wheels = CACHE / f"wheels-{digest(pyproject)}"
    if not wheels.exists():
        partial = CACHE / "wheels.partial"
        shutil.rmtree(partial, ignore_errors=True)
        backend = tomllib.loads(pyproject.decode())["build-system"]["requires"]
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(partial)]
        run([*pip, str(ROOT), *backend], BUILD_TIMEOUT)
        for wheel in partial.glob("netd_daemon-*.whl"):
            wheel.unlink()
        for old in CACHE.glob("wheels-*"):
            shutil.rmtree(old)
        partial.rename(wheels)
    return wheels


def contextKey() -> str:
    """
    A key of the build context: every file git knows or would add, less
    what .containerignore keeps out of the build, by path and content.
    """
    ignore = [
        line.strip()
        for line in (ROOT / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(
            any(fnmatch(part, p[3:]) for part in parts) if p.startswith("**/") else fnmatch(parts[0], p) for p in ignore
        )

    files = [p for p in sourceFiles() if not ignored(p)]
    return digest(*(p.encode() + b"\0" + (ROOT / p).read_bytes() for p in files))


@pytest.fixture(scope="module")
def image() -> str:
    """
    The image the Containerfile builds from this checkout on the Debian base,
    built once per build context (by one worker at a time); older builds of both
    are removed.
    """
    requireTool("buildah")
    requireTool("mmdebstrap")
    if os.geteuid() != 0:
        unavailable("buildah's chroot isolation and vfs storage need root here")
    CACHE.mkdir(exist_ok=True)
    with lockFile(CACHE / "lock"):  # one build at a time in the store
        base = baseImage()
        name = f"localhost/netd-test:{contextKey()}"
        if not hasImage(name):
            pipConf = CACHE / "pip.conf"
            pipConf.write_text("[global]\nno-index = true\nfind-links = /wheels\n")
            buildah(
                "bud",
                "--isolation",
                "chroot",
                "--format",
                "docker",
                "--file",
                str(ROOT / "Containerfile"),
                "--build-arg",
                f"BASE={base}",
                "--volume",
                f"{dependencyWheels()}:/wheels:ro",
                "--volume",
                f"{pipConf}:/etc/pip.conf:ro",
                "--tag",
                name,
                str(ROOT),
                timeout=BUILD_TIMEOUT,
            )
        for old in buildah("images", "--noheading", "--format", "{{.Name}}:{{.Tag}}").split():
            if old.startswith(("localhost/netd-test:", "localhost/netd-test-base:")) and old not in (name, base):
                run(buildahCommand("rmi", "--force", old), check=False)
    return name


@pytest.fixture(scope="module")
def imageConfig(image: str) -> dict[str, Any]:
    """
    The built image's Docker config: its command, user, ports, volumes, health check.
    """
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]
    return config


def freePort() -> int:
    """
    A port free on 127.0.0.1 for both TCP and UDP just now (the image's
    command takes no --ports-file, so its config names fixed ports).
    """
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both TCP and UDP")


@attrs.define
class Ports:
    """
    The ports of the test's config, on 127.0.0.1.
    """

    echo: int = attrs.field(factory=freePort)
    dns: int = attrs.field(factory=freePort)
    tls: int = attrs.field(factory=freePort)
    admin: int = attrs.field(factory=freePort)
    added: int = attrs.field(factory=freePort)

    def config(self, added: bool = False) -> str:
        """
        The test's netd.toml: echo, DNS with a static record, TLS echo and
        the control API on loopback; with C{added}, a second echo service.
        """
        text = f"""\
[daemon]
admin = "tcp:{self.admin}:interface=127.0.0.1"
shutdown_timeout = 20

[[services]]
name = "echo"
plugin = "echo"
listen = ["tcp:{self.echo}:interface=127.0.0.1", "udp:{self.echo}:interface=127.0.0.1"]

[[services]]
name = "dns"
plugin = "dns-proxy"
listen = ["udp:{self.dns}:interface=127.0.0.1", "tcp:{self.dns}:interface=127.0.0.1"]
upstreams = ["udp:127.0.0.1:9"]
records = {{ "netd.test" = {{ A = ["127.0.0.1"] }} }}

[[services]]
name = "tls-echo"
plugin = "tls-echo"
listen = ["tcp:{self.tls}:interface=127.0.0.1"]
tls = {{ certificate = "auto" }}
"""
        if added:
            text += f"""
[[services]]
name = "added"
plugin = "echo"
listen = ["tcp:{self.added}:interface=127.0.0.1"]
"""
        return text


def signalsAtDefault() -> None:
    """
    Start C{buildah run} with SIGHUP, SIGINT and SIGQUIT at their default
    actions, as a container runtime starts a container's first process: a
    suite started in the background (CI, nohup) ignores some of them, and a
    child inherits that.
    """
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)


@attrs.define
class Running:
    """
    netd running in a working container of the image, from the image's command.

    @ivar process: the C{buildah run} that started it (netd is a descendant).
    @ivar mounts: the C{buildah run} options: the host's network, the config
        folder mounted at /etc/netd.  The state volume is left to buildah,
        which gives the image's C{VOLUME} a directory of the container's own
        (a C{-v} onto the same path does not reliably take its place).
    """

    container: str
    process: subprocess.Popen[bytes]
    log: Path
    ports: Ports
    configDir: Path
    mounts: list[str]

    def netdPid(self) -> int:
        """
        The PID of netd, found among the descendants of C{buildah run}.
        """
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        queue = [self.process.pid]
        while queue:
            pid = queue.pop()
            try:
                argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 2 and argv[1].endswith(b"/netd") and argv[2] == b"run":
                return pid
            queue.extend(children.get(pid, []))
        raise AssertionError(f"no netd process under buildah run (PID {self.process.pid}):\n{self.output()}")

    def stateDir(self) -> Path:
        """
        The state volume, /var/lib/netd, as netd sees it (through its root in /proc).
        """
        return Path("/proc") / str(self.netdPid()) / "root" / "var" / "lib" / "netd"

    def output(self) -> str:
        """
        What netd and buildah have logged so far.
        """
        return self.log.read_text(errors="replace")

    def inside(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """
        Run C{command} in the same container, with the same mounts and network.
        """
        return run(
            buildahCommand("run", "--isolation", "chroot", *self.mounts, self.container, "--", *command), check=False
        )


def httpGet(port: int, path: str) -> tuple[int, bytes]:
    """
    GET C{path} from the control API on 127.0.0.1:C{port}.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=IO_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def running(image: str, imageConfig: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """
    netd started from the image's command in a working container, its
    config folder and state volume mounted from the host, ready.
    """
    requireTool("dig")
    requireTool("openssl")
    folder = tmp_path_factory.mktemp("container")
    configDir = folder / "etc-netd"
    configDir.mkdir()
    ports = Ports()
    (configDir / "netd.toml").write_text(ports.config())
    container = buildah("from", "--quiet", image).strip()
    mounts = ["--network", "host", "-v", f"{configDir}:/etc/netd:ro"]
    log = folder / "netd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            buildahCommand("run", "--isolation", "chroot", *mounts, container, "--", *imageConfig["Cmd"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=signalsAtDefault,
        )
    started = Running(container, process, log, ports, configDir, mounts)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"netd exited {process.returncode} in the container:\n{started.output()}")
            try:
                if httpGet(ports.admin, "/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"netd was not ready in {READY_TIMEOUT} s:\n{started.output()}")
            time.sleep(0.2)
        yield started
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        run(buildahCommand("rm", container), check=False)


def test_imageMetadata(imageConfig: dict[str, Any]) -> None:
    """
    The image runs as UID 10001, exposes the default ports, keeps state in a volume, stops on SIGTERM and checks /health with netd health.
    """
    assert imageConfig["User"] == f"{NETD_UID}:{NETD_UID}"
    assert set(imageConfig["ExposedPorts"]) == {
        "7007/tcp",
        "7007/udp",
        "5300/tcp",
        "5300/udp",
        "7443/tcp",
        "8053/tcp",
    }
    assert list(imageConfig["Volumes"]) == ["/var/lib/netd"]
    assert "STATE_DIRECTORY=/var/lib/netd" in imageConfig["Env"]
    assert imageConfig["StopSignal"] == "SIGTERM"
    assert "exec netd health" in imageConfig["Healthcheck"]["Test"][-1]


def test_configFallsBackToTheEmbeddedDefault(running: Running, imageConfig: dict[str, Any], tmp_path: Path) -> None:
    """
    The image's command uses /etc/netd/netd.toml (the image's own, valid, or one mounted) and the embedded default when there is none.
    """
    checking = [part.replace("netd run", "netd check") for part in imageConfig["Cmd"]]

    def source(*mounts: str) -> str:
        command = buildahCommand("run", "--isolation", "chroot", *mounts, running.container, "--", *checking)
        return run(command).stdout.splitlines()[0]

    assert source() == "# /etc/netd/netd.toml: valid"
    assert source("-v", f"{tmp_path}:/etc/netd:ro") == "# <embedded default>: valid"


def test_echo(running: Running) -> None:
    """
    The echo service in the container answers over TCP and UDP on the host's loopback.
    """
    with connect(("127.0.0.1", running.ports.echo)) as client:
        client.sendall(b"from the host\n")
        assert recvExactly(client, 14) == b"from the host\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(b"datagram", ("127.0.0.1", running.ports.echo))
        assert client.recvfrom(100)[0] == b"datagram"


def test_dns(running: Running) -> None:
    """
    dig gets the DNS proxy's static record over UDP and TCP.
    """
    for transport in ("+notcp", "+tcp"):
        result = dig(("127.0.0.1", running.ports.dns), "netd.test", "A", transport)
        assert result.last.data("A") == ["127.0.0.1"], result.output


def test_tls(running: Running) -> None:
    """
    openssl s_client verifies the TLS echo for localhost with the development CA netd made in the state volume, and gets its line back.
    """
    state = running.stateDir()
    ca = state / "tls" / "ca.pem"
    assert ca.exists(), sorted(p.name for p in state.rglob("*"))
    assert (state / "admin.token").stat().st_uid == NETD_UID
    result = sClient(
        ("127.0.0.1", running.ports.tls), "-CAfile", str(ca), "-verify_return_error", "-verify_hostname", "localhost"
    )
    assert result.echoed, result.output


def test_health(running: Running, imageConfig: dict[str, Any]) -> None:
    """
    /health and /ready answer 200, and the image's HEALTHCHECK command (netd health in the container) passes.
    """
    assert httpGet(running.ports.admin, "/health")[0] == 200
    assert httpGet(running.ports.admin, "/ready")[0] == 200
    check = running.inside(imageConfig["Healthcheck"]["Test"][1:])
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith(f"127.0.0.1:{running.ports.admin}/health: 200"), check.stdout


def test_catchesItsSignals(running: Running) -> None:
    """
    netd in the container catches SIGTERM, SIGINT and SIGHUP itself, so that as PID 1 (where the kernel drops signals left at their default action) it still drains and reloads.
    """
    status = (Path("/proc") / str(running.netdPid()) / "status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert caught & (1 << (number - 1)), f"{number.name} is not caught: {status}"


def test_sighupReloads(running: Running) -> None:
    """
    SIGHUP to netd in the container reloads the changed config: a service added to it starts serving.
    """
    written = running.configDir / "netd.toml.new"
    written.write_text(running.ports.config(added=True))
    written.rename(running.configDir / "netd.toml")
    os.kill(running.netdPid(), signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:
        try:
            with connect(("127.0.0.1", running.ports.added)) as client:
                client.sendall(b"added")
                assert recvExactly(client, 5) == b"added"
                break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.2)
    assert "reload" in running.output()


def test_sigtermDrains(running: Running) -> None:
    """
    SIGTERM stops accepting, lets an open connection finish, and netd exits 0 once it closes.
    """
    client = connect(("127.0.0.1", running.ports.echo))
    try:
        client.sendall(b"before")
        assert recvExactly(client, 6) == b"before"
        os.kill(running.netdPid(), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while True:
            try:
                connect(("127.0.0.1", running.ports.echo)).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "netd still accepts after SIGTERM"
            time.sleep(0.1)
        client.sendall(b"during")
        assert recvExactly(client, 6) == b"during"
        assert running.process.poll() is None, "netd did not wait for the open connection"
    finally:
        client.close()
    assert running.process.wait(20) == 0, running.output()
    assert "netd stopped" in running.output()
