"""
netd under systemd's protocols, with real processes: the notifications a real
netd sends to a unix datagram socket the test binds (as systemd does), socket
activation with systemd-socket-activate as the launcher, and the example
units checked by systemd-analyze.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netd.testing.harness import NetdServer, netdCommand

from .conftest import IO_TIMEOUT, connect, echoService, recvExactly, requireTool, unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ECHO_CONFIG = echoService("echo", ["tcp:0:interface=127.0.0.1"])


class NotifySocket:
    """
    A unix datagram socket bound where C{$NOTIFY_SOCKET} points, receiving what
    netd sends systemd, each message with when it arrived.
    """

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        """
        The next message as a dict of its assignments, or L{None} if none comes within C{timeout}.
        """
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.received.append((time.monotonic(), message))
        return message

    def waitFor(self, key: str, timeout: float = IO_TIMEOUT, check: Callable[[], None] | None = None) -> dict[str, str]:
        """
        Receive until a message with C{key} arrives; call C{check} the moment it does.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None and key in message:
                if check is not None:
                    check()
                return message
        raise AssertionError(f"no {key}= within {timeout} seconds; got {[m for _, m in self.received]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def shortDir() -> Iterator[Path]:
    """
    A private folder with a short path (unix socket paths are limited to 107 bytes).
    """
    path = Path(tempfile.mkdtemp(prefix="netd-sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notifySocket(shortDir: Path) -> Iterator[NotifySocket]:
    """
    The notification socket netd is pointed at.
    """
    receiver = NotifySocket(shortDir)
    yield receiver
    receiver.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., NetdServer]]:
    """
    A function that runs a netd command line (C{prefix} + C{netd run -c CONFIG
    --ports-file FILE}) with extra environment variables and returns it as a
    L{NetdServer}, not waiting for it; each one is killed, by its PID, at teardown.
    """
    started: list[NetdServer] = []

    def start(config: str, *, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None) -> NetdServer:
        netd = NetdServer(
            config,
            tmp_path / f"netd-{len(started)}",
            launcher=[*prefix, *netdCommand("run")],
            environment=env,
            shutdownTimeout=None,
        )
        started.append(netd)
        return netd.start(wait=False)

    yield start
    for netd in started:
        netd.kill()


def echoOnce(address: tuple[str, int], payload: bytes = b"hello systemd\n") -> bytes:
    """
    Send C{payload} on a fresh connection and read as many bytes back.
    """
    with connect(address) as client:
        client.sendall(payload)
        return recvExactly(client, len(payload))


def test_readyOnlyOnceEveryServiceListens(launch: Callable[..., NetdServer], notifySocket: NotifySocket) -> None:
    """
    A real netd sends STATUS while starting, READY=1 only once its ports file exists, and STOPPING=1 on SIGTERM before it exits 0.
    """
    config = ECHO_CONFIG + echoService("second", ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"])
    netd = launch(config, env={"NOTIFY_SOCKET": notifySocket.path})

    def portsFileExists() -> None:
        assert netd.portsFile.exists(), "READY=1 arrived before the ports file was written"

    ready = notifySocket.waitFor("READY", check=portsFileExists)
    assert ready == {"READY": "1", "STATUS": "serving 2 services on 3 addresses"}
    first = notifySocket.received[0][1]
    assert first["STATUS"].startswith("starting 2 services from ")
    netd.waitUntilReady()
    assert echoOnce(netd.address("echo")) == b"hello systemd\n"
    netd.process.send_signal(signal.SIGTERM)
    stopping = notifySocket.waitFor("STOPPING")
    assert stopping["STOPPING"] == "1" and "STATUS" in stopping
    assert netd.process.wait(timeout=IO_TIMEOUT) == 0, netd.log()


def test_abstractNotifySocket(launch: Callable[..., NetdServer]) -> None:
    """
    A NOTIFY_SOCKET in the abstract namespace (@name) receives READY=1 from a real netd.
    """
    name = f"netd-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(IO_TIMEOUT * 2)
        netd = launch(ECHO_CONFIG, env={"NOTIFY_SOCKET": "@" + name})
        messages = [receiver.recv(65536) for _ in range(2)]
    assert messages[1].startswith(b"READY=1\n"), (messages, netd.log())


def test_watchdogPingsAtHalfTheInterval(launch: Callable[..., NetdServer], notifySocket: NotifySocket) -> None:
    """
    With WATCHDOG_USEC (and WATCHDOG_PID naming netd itself) netd sends WATCHDOG=1 about every half interval.
    """
    # sh execs netd in its own process, so $$ is netd's PID, as systemd would set it.
    script = 'WATCHDOG_PID=$$ exec "$@"'
    launch(
        ECHO_CONFIG,
        prefix=("sh", "-c", script, "sh"),
        env={"NOTIFY_SOCKET": notifySocket.path, "WATCHDOG_USEC": "600000"},
    )
    notifySocket.waitFor("READY")
    pings: list[float] = [at for at, message in notifySocket.received if "WATCHDOG" in message]
    deadline = time.monotonic() + IO_TIMEOUT
    while len(pings) < 6 and time.monotonic() < deadline:
        message = notifySocket.receive(deadline - time.monotonic())
        if message is not None and message.get("WATCHDOG") == "1":
            pings.append(notifySocket.received[-1][0])
    assert len(pings) >= 6, notifySocket.received
    gaps = [b - a for a, b in itertools.pairwise(pings[1:])]
    assert 0.15 <= sum(gaps) / len(gaps) <= 0.6, gaps


def test_noWatchdogForAnotherProcess(launch: Callable[..., NetdServer], notifySocket: NotifySocket) -> None:
    """
    A WATCHDOG_PID naming another process means the watchdog is not netd's: no WATCHDOG=1 is sent.
    """
    netd = launch(ECHO_CONFIG, env={"NOTIFY_SOCKET": notifySocket.path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    notifySocket.waitFor("READY")
    deadline = time.monotonic() + 1.0
    while (remaining := deadline - time.monotonic()) > 0:
        notifySocket.receive(remaining)
    assert not [m for _, m in notifySocket.received if "WATCHDOG" in m]
    assert netd.process.poll() is None


def freePort() -> int:
    """
    A TCP port free on 127.0.0.1 right now (systemd-socket-activate cannot be given port 0).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("listen", "launcherArgs"),
    [
        pytest.param("systemd:domain=INET:index=0", (), id="index"),
        pytest.param("systemd:domain=INET:name=echo", ("--fdname=echo",), id="name"),
    ],
)
def test_socketActivation(launch: Callable[..., NetdServer], listen: str, launcherArgs: tuple[str, ...]) -> None:
    """
    Launched by systemd-socket-activate, netd serves echo on the socket it was passed, found by index or by name.
    """
    launcher = requireTool("systemd-socket-activate")
    for attempt in range(3):
        port = freePort()
        netd = launch(echoService("echo", [listen]), prefix=(launcher, *launcherArgs, "-l", f"127.0.0.1:{port}"))
        # The launcher binds, then starts netd on the first connection.
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline and netd.process.poll() is None and f"127.0.0.1:{port}" not in netd.log():
            time.sleep(0.02)
        if netd.process.poll() is None:
            break
        assert "Address already in use" in netd.log() and attempt < 2, netd.log()
    assert echoOnce(("127.0.0.1", port)) == b"hello systemd\n"
    netd.waitUntilReady()
    [bound] = netd.services["echo"]
    assert (bound["listen"], bound["host"], bound["port"]) == (listen, "127.0.0.1", port)
    assert echoOnce(("127.0.0.1", port), b"second\n") == b"second\n"
    assert netd.stop() == 0, netd.log()


def test_systemdListenWithoutActivation(launch: Callable[..., NetdServer]) -> None:
    """
    Started without socket activation, a netd whose config asks for a systemd: socket exits 1 saying it was passed none.
    """
    netd = launch(echoService("echo", ["systemd:domain=INET:index=0"]))
    assert netd.process.wait(timeout=IO_TIMEOUT * 2) == 1
    assert (
        "services[0].listen[0]: cannot listen on 'systemd:domain=INET:index=0': systemd passed no such socket"
        in netd.log()
    )


def systemdAnalyze() -> str:
    """
    systemd-analyze, if it can verify units here; skips (never under CI) with the reason otherwise.
    """
    tool = requireTool("systemd-analyze")
    with tempfile.TemporaryDirectory() as directory:
        probe = Path(directory) / "probe.service"
        probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
        result = subprocess.run([tool, "verify", str(probe)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = f"systemd-analyze verify cannot run here: {result.stderr.strip()}"
        unavailable(reason)
    return tool


def test_exampleUnitsVerify(tmp_path: Path) -> None:
    """
    systemd-analyze verify accepts config/netd.service and config/netd.socket (with ExecStart pointed at this checkout's netd).
    """
    tool = systemdAnalyze()
    executable = Path(sys.executable).parent / "netd"
    if not executable.exists():
        pytest.skip(f"no netd console script next to {sys.executable} to stand in for /usr/local/bin/netd")
    service = (ROOT / "config" / "netd.service").read_text()
    assert "ExecStart=/usr/local/bin/netd run -c /etc/netd/netd.toml" in service
    (tmp_path / "netd.service").write_text(service.replace("/usr/local/bin/netd", str(executable)))
    shutil.copy(ROOT / "config" / "netd.socket", tmp_path / "netd.socket")
    result = subprocess.run(
        [tool, "verify", str(tmp_path / "netd.service"), str(tmp_path / "netd.socket")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def test_exampleServiceExposure(tmp_path: Path) -> None:
    """
    systemd-analyze security rates the example service's sandbox as exposed no more than 2.5 of 10.
    """
    tool = systemdAnalyze()
    shutil.copy(ROOT / "config" / "netd.service", tmp_path / "netd.service")
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(tmp_path / "netd.service")], capture_output=True, text=True, timeout=60
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    line = next((entry for entry in result.stdout.splitlines() if "Overall exposure level" in entry), "")
    assert line, result.stdout + result.stderr
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, result.stdout
