"""
Two netds on one host: shipped configs started as they are (no control API
added by the harness) run side by side, and a listen address another socket
holds stops netd with a message naming the config key, the address and the
ways out, at start and on a reload.  Real processes, real sockets on loopback.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netd.testing.harness import NetdServer, netdCommand, unavailable

from .conftest import (
    IO_TIMEOUT,
    canBind,
    connect,
    echoService,
    recvExactly,
    requireEmbeddedDefaultPorts,
    requireTool,
    usesEmbeddedDefaultPorts,
    waitForLog,
    withTestAdmin,
)

pytestmark = [pytest.mark.integration, usesEmbeddedDefaultPorts]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXIT_TIMEOUT = 15.0
DEFAULT_ADMIN_PORT = 8053
"""
Where the embedded default config (and, before issue 14, every config) puts the control API.
"""

Launcher = Callable[..., NetdServer]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """
    A function that runs C{netd run -c FILE --ports-file PORTS} on a config
    file exactly as it is (the harness adds no C{admin} here), after an
    optional launcher C{prefix}, with its files in C{tmp_path/launched};
    each process is killed, by its PID, at teardown.
    """
    started: list[NetdServer] = []
    directory = tmp_path / "launched"
    directory.mkdir()

    def start(configFile: Path, *, prefix: tuple[str, ...] = ()) -> NetdServer:
        netd = NetdServer(
            configFile, directory / f"netd-{len(started)}", launcher=[*prefix, *netdCommand("run")], cwd=directory
        )
        started.append(netd)
        return netd.start(wait=False)

    yield start
    for netd in started:
        netd.kill()


def waitForExit(netd: NetdServer, timeout: float = EXIT_TIMEOUT) -> int:
    """
    Wait, bounded, for a netd that should exit on its own; return its exit code.
    """
    try:
        return netd.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"netd did not exit within {timeout} seconds:\n{netd.log()}") from None


def echoes(address: tuple[str, int], payload: bytes, udp: bool = False) -> bool:
    """
    Whether C{address} sends C{payload} back, over TCP or UDP.
    """
    if udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(payload, address)
            return client.recv(len(payload) + 1) == payload
    with connect(address) as client:
        client.sendall(payload)
        return recvExactly(client, len(payload)) == payload


@pytest.fixture
def defaultAdminPortHeld() -> Iterator[None]:
    """
    127.0.0.1:8053 held by a listening socket for the test, as a netd on
    the embedded default config holds it (or held already by whoever
    holds it), so that a netd that still wanted the port would fail.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", DEFAULT_ADMIN_PORT))
        holder.listen()
    except OSError:
        holder.close()
        assert not canBind(socket.SOCK_STREAM, DEFAULT_ADMIN_PORT)
        yield
        return
    with holder:
        yield


def heldSocket(kind: int) -> socket.socket:
    """
    A socket of C{kind} bound (and listening, for TCP) on a port of 127.0.0.1 the system picks.
    """
    holder = socket.socket(socket.AF_INET, kind)
    holder.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        holder.listen()
    return holder


README_CONFIG = "/etc/netd/netd.toml"
"""
The config file the docs' example messages name.
"""


def readmeMessage(key: str, netd: NetdServer) -> str:
    """
    The docs' example message of a listen refused at C{key}, as one line
    (docs/service.md shows a service's, docs/control-api.md the control
    API's), naming C{netd}'s config file instead of the docs'.
    """
    start = f"netd cannot start: {README_CONFIG}: {key}: "
    [line] = [
        line for page in DOC_PAGES for line in page.read_text(encoding="utf-8").splitlines() if line.startswith(start)
    ]
    assert netd.configFile is not None
    return line.replace(README_CONFIG, str(netd.configFile))


def test_twoShippedExamplesSideBySide(launch: Launcher, defaultAdminPortHeld: None) -> None:
    """
    Two shipped example configs without an admin key, started at once as they are while another process holds 127.0.0.1:8053, both start and both serve, with no control API.
    """
    framingPorts = [(socket.SOCK_STREAM, port) for port in range(7100, 7105)] + [(socket.SOCK_DGRAM, 7100)]
    busy = [port for kind, port in framingPorts if not canBind(kind, port)]
    if busy:
        unavailable(f"ports of config/examples/echo-framings.toml are in use on 127.0.0.1: {busy}")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("::1", 7103))
        except OSError as e:
            unavailable(f"config/examples/echo-framings.toml listens on [::1]:7103, which cannot be bound here: {e}")
    first = launch(EXAMPLES / "test-target.toml")
    second = launch(EXAMPLES / "echo-framings.toml")
    first.waitUntilReady()
    second.waitUntilReady()
    assert first.adminAddress is None and second.adminAddress is None
    assert echoes(first.address("echo", "tcp"), b"first tcp")
    assert echoes(first.address("echo", "udp"), b"first udp", udp=True)
    assert echoes(second.address("echo-raw", "tcp"), b"second tcp")
    assert echoes(second.address("echo-raw", "udp"), b"second udp", udp=True)
    assert "control API" not in first.log() + second.log()
    assert first.stop() == 0 and second.stop() == 0


def test_socketActivatedExampleBesideAnotherNetd(launch: Launcher, defaultAdminPortHeld: None) -> None:
    """
    The socket-activation example of docs/service.md, config/examples/socket-activated.toml under systemd-socket-activate, starts and serves while another process holds 127.0.0.1:8053.
    """
    launcher = requireTool("systemd-socket-activate")
    for attempt in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        netd = launch(EXAMPLES / "socket-activated.toml", prefix=(launcher, "-l", f"127.0.0.1:{port}"))
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline and netd.process.poll() is None and f"127.0.0.1:{port}" not in netd.log():
            time.sleep(0.02)
        if netd.process.poll() is None:
            break
        assert "Address already in use" in netd.log() and attempt < 2, netd.log()
    assert echoes(("127.0.0.1", port), b"activated\n")
    netd.waitUntilReady()
    assert netd.adminAddress is None
    assert echoes(("127.0.0.1", port), b"again\n")
    assert netd.stop() == 0, netd.log()


def test_embeddedDefaultBesideAnExample(startNetd: Callable[..., NetdServer], launch: Launcher) -> None:
    """
    netd run without -c (control API on 127.0.0.1:8053) and a shipped example started as it is run at once; the default's control API answers.
    """
    requireEmbeddedDefaultPorts()
    default = startNetd(None)
    example = launch(EXAMPLES / "test-target.toml")
    example.waitUntilReady()
    assert default.adminAddress is not None and (default.adminAddress["host"], default.adminAddress["port"]) == (
        "127.0.0.1",
        DEFAULT_ADMIN_PORT,
    )
    assert default.api("GET", "/ready") == (200, {"status": "ready"})
    waitForLog(default, "control API on http://127.0.0.1:8053/")
    assert example.adminAddress is None
    assert echoes(default.address("echo", "tcp"), b"default")
    assert echoes(example.address("echo", "tcp"), b"example")
    assert default.stop() == 0 and example.stop() == 0


@pytest.mark.parametrize(
    ("kind", "listen", "command"),
    [
        pytest.param(socket.SOCK_STREAM, "tcp:{port}:interface=127.0.0.1", "ss -ltnp 'sport = :{port}'", id="tcp"),
        pytest.param(socket.SOCK_DGRAM, "udp:{port}:interface=127.0.0.1", "ss -lunp 'sport = :{port}'", id="udp"),
    ],
)
def test_serviceAddressTaken(startNetd: Callable[..., NetdServer], kind: int, listen: str, command: str) -> None:
    """
    A service address another socket holds makes netd exit 1 naming services[N].listen[M], the address, the ss command and the ways out, leaving nothing listening.
    """
    with heldSocket(kind) as holder:
        port = holder.getsockname()[1]
        address = listen.format(port=port)
        netd = startNetd(
            echoService("first", ["tcp:0:interface=127.0.0.1"])
            + echoService("second", ["tcp:0:interface=127.0.0.1", address]),
            wait=False,
        )
        assert waitForExit(netd) == 1
    log = netd.log()
    transport = "tcp" if kind == socket.SOCK_STREAM else "udp"
    assert (
        f"netd cannot start: {netd.configFile}: services[1].listen[1]: cannot listen on '{address}': "
        f"address already in use: another process (another netd?) holds {transport} 127.0.0.1:{port}; "
        f"`{command.format(port=port)}` shows which"
    ) in log, log
    assert "Choose another port in services[1].listen[1], or port 0" in log
    assert not netd.portsFile.exists()


def test_serviceAddressTakenMessageIsTheReadme(startNetd: Callable[..., NetdServer]) -> None:
    """
    The example of a taken service address in docs/service.md is what netd prints, word for word (with the port of the test).
    """
    with heldSocket(socket.SOCK_STREAM) as holder:
        port = holder.getsockname()[1]
        netd = startNetd(echoService("echo", [f"tcp:{port}:interface=127.0.0.1"]), wait=False)
        assert waitForExit(netd) == 1
    example = readmeMessage("services[0].listen[0]", netd)
    assert example.replace("7007", str(port)) in netd.log(), netd.log()


def test_adminAddressTaken(startNetd: Callable[..., NetdServer]) -> None:
    """
    A control API address another socket holds makes netd exit 1 with the message docs/control-api.md shows: [daemon] admin, the address, the ss command, and the ways out (another port, port 0, no admin, stopping the holder).
    """
    with heldSocket(socket.SOCK_STREAM) as holder:
        port = holder.getsockname()[1]
        netd = startNetd(
            f'[daemon]\nadmin = "tcp:{port}:interface=127.0.0.1"\n\n'
            + echoService("echo", ["tcp:0:interface=127.0.0.1"]),
            wait=False,
        )
        assert waitForExit(netd) == 1
    example = readmeMessage("daemon.admin", netd)
    assert example.replace(str(DEFAULT_ADMIN_PORT), str(port)) in netd.log(), netd.log()
    assert "listening on" not in netd.log()


def test_reloadOnTakenAddress(startNetd: Callable[..., NetdServer]) -> None:
    """
    A reload (POST /reload and SIGHUP) whose new address another socket holds is undone, answers 500 and logs the message naming services[N].listen[M] and the ways out, and the running services go on.
    """
    before = echoService("echo", ["tcp:0:interface=127.0.0.1"])
    netd = startNetd(before)
    assert netd.configFile is not None
    with heldSocket(socket.SOCK_DGRAM) as holder:
        port = holder.getsockname()[1]
        address = f"udp:{port}:interface=127.0.0.1"
        netd.configFile.write_text(withTestAdmin(echoService("added", [address]) + before))
        status, body = netd.api("POST", "/reload")
        assert status == 500, body
        expected = (
            f"service 'added': cannot listen on '{address}' (services[0].listen[0]): address already in use: "
            f"another process (another netd?) holds udp 127.0.0.1:{port}; `ss -lunp 'sport = :{port}'` shows which"
        )
        [problem] = body["problems"]
        assert problem.startswith(expected), problem
        assert "Choose another port in services[0].listen[0], or port 0 (udp:0:interface=127.0.0.1)" in problem
        netd.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + IO_TIMEOUT
        while len(re.findall(re.escape(expected), netd.log())) < 2:
            assert time.monotonic() < deadline, netd.log()
            time.sleep(0.05)
    assert echoes(netd.address("echo", "tcp"), b"still serving")
    assert netd.api("GET", "/ready")[0] == 200
    assert netd.stop() == 0


def test_adminUnixSocketLeftOver(startNetd: Callable[..., NetdServer], tmp_path: Path) -> None:
    """
    A unix: control API whose socket file is left over from a process that ended makes netd exit 1 naming [daemon] admin, the file, how to see whether anything listens on it, and to remove it.
    """
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ended:
        ended.bind(str(path))
    assert path.exists()
    netd = startNetd(
        f'[daemon]\nadmin = "unix:{path}"\n\n' + echoService("echo", ["tcp:0:interface=127.0.0.1"]), wait=False
    )
    assert waitForExit(netd) == 1
    log = netd.log()
    assert (
        f"daemon.admin: control API: cannot listen on 'unix:{path}': address already in use: the socket file {path} exists"
        in log
    ), log
    assert f"`ss -lxp 'src = {path}'` shows which" in log
    assert "left over from a process that ended without removing it: remove it" in log
