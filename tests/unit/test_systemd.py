"""
L{netd.daemon.systemd}: the sd_notify messages as they arrive on a real unix datagram
socket, the watchdog on a fake clock, the socket-activation environment, the
daemon's READY/STOPPING hooks, and the C{systemd:} listen string.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from netd.config.listen import NO_INHERITED_SOCKET, ListenAddress
from netd.config.options import InvalidValue
from netd.daemon.application import NetdApplication
from netd.daemon.daemon import Daemon
from netd.daemon.systemd import (
    Notifier,
    completeListenNames,
    formatMessage,
    notifyAddress,
    startWatchdog,
    watchdogInterval,
)
from netd.testing.memory import UDPMemoryReactorClock, resultOf

from .test_service import makeConfig

ROOT = Path(__file__).resolve().parents[2]
ECHO = {"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"]}


class NotifySocket:
    """
    A bound unix datagram socket standing in for systemd's notification socket.
    """

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0)

    def messages(self) -> list[bytes]:
        """
        Every datagram received so far.
        """
        received = []
        while True:
            try:
                received.append(self.sock.recv(65536))
            except BlockingIOError:
                return received


@pytest.fixture
def notifySocket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    """
    A notification socket on a path, and its C{$NOTIFY_SOCKET} value.
    """
    path = str(tmp_path / "notify.sock")
    receiver = NotifySocket(path)
    yield path, receiver
    receiver.sock.close()


def test_notifyAddressForms() -> None:
    """
    A path is used as is, an @name becomes an abstract-namespace address, and unset, empty or other forms disable notification.
    """
    assert notifyAddress("/run/systemd/notify") == "/run/systemd/notify"
    assert notifyAddress("@netd/notify") == "\0netd/notify"
    assert notifyAddress(None) is None
    assert notifyAddress("") is None
    assert notifyAddress("vsock:2:1234") is None


def test_formatMessageJoinsLines() -> None:
    """
    A message is VAR=VALUE lines joined by newlines, and a newline inside a value cannot start another assignment.
    """
    assert formatMessage([("READY", "1"), ("STATUS", "two\nlines")]) == b"READY=1\nSTATUS=two lines"


def test_messagesArriveOnTheSocket(notifySocket: tuple[str, NotifySocket]) -> None:
    """
    ready, status, reloading, stopping and watchdog each send one datagram of the documented assignments.
    """
    path, receiver = notifySocket
    notifier = Notifier(notifyAddress(path), monotonic=lambda: 123456789)
    assert notifier.enabled
    assert notifier.ready("serving")
    assert notifier.status("busy")
    assert notifier.reloading()
    assert notifier.ready()
    assert notifier.watchdog()
    assert notifier.stopping()
    assert receiver.messages() == [
        b"READY=1\nSTATUS=serving",
        b"STATUS=busy",
        b"RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading the config",
        b"READY=1",
        b"WATCHDOG=1",
        b"STOPPING=1\nSTATUS=stopping: closing listeners, draining connections",
    ]


def test_monotonicUsecIsTheMonotonicClock() -> None:
    """
    Without an injected clock, MONOTONIC_USEC is CLOCK_MONOTONIC in microseconds, as systemd compares it.
    """
    sent: list[bytes] = []

    class RecordingSocket:
        def __enter__(self) -> RecordingSocket:
            return self

        def __exit__(self, *args: object) -> None:
            pass

        def sendto(self, data: bytes, flags: int, address: str) -> None:
            sent.append(data)

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier("/x", makeSocket=RecordingSocket).reloading(None)  # type: ignore[arg-type]
    value = int(sent[0].split(b"MONOTONIC_USEC=")[1])
    assert before <= value <= before + 60_000_000


def test_abstractNamespaceSocket() -> None:
    """
    A NOTIFY_SOCKET of the form @name reaches a socket bound in the abstract namespace.
    """
    name = f"netd-test-{os.getpid()}-{id(object())}"
    receiver = NotifySocket("\0" + name)
    try:
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert receiver.messages() == [b"READY=1"]
    finally:
        receiver.sock.close()


def test_disabledNotifierSendsNothing() -> None:
    """
    Without NOTIFY_SOCKET every message is a no-op that reports it was not sent.
    """
    notifier = Notifier.fromEnvironment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.stopping()
    assert not Notifier.disabled().watchdog()


def test_unsupportedNotifySocketIsLogged() -> None:
    """
    A NOTIFY_SOCKET netd cannot speak to (vsock:) is logged once and disables notification.
    """
    with capturedLogs() as events:
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": "vsock:2:999"})
    assert not notifier.enabled
    assert any("vsock:2:999" in str(e.get("value")) for e in events)


def test_sendFailureIsLoggedOnceAndSurvived(tmp_path: Path) -> None:
    """
    A notification socket that is gone makes sends return False, logged once per distinct error, never raising.
    """
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with capturedLogs() as events:
        assert not notifier.ready()
        assert not notifier.watchdog()
    warnings = [e for e in events if e.get("log_format", "").startswith("cannot notify systemd")]
    assert len(warnings) == 1
    assert "FileNotFoundError" in warnings[0]["error"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"WATCHDOG_USEC": "30000000"}, 15.0, id="half"),
        pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0, id="our-pid"),
        pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None, id="other-pid"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
        pytest.param({"WATCHDOG_USEC": "soon"}, None, id="not-a-number"),
    ],
)
def test_watchdogInterval(environ: dict[str, str], expected: float | None) -> None:
    """
    The ping interval is half of WATCHDOG_USEC, and none when it is unset, invalid or meant for another process.
    """
    assert watchdogInterval(environ, pid=42) == expected


def test_watchdogPingsAtHalfTheInterval(notifySocket: tuple[str, NotifySocket]) -> None:
    """
    The watchdog loop pings at once and then every half WATCHDOG_USEC on the injected clock, until stopped.
    """
    path, receiver = notifySocket
    clock = Clock()
    loop = startWatchdog(Notifier(path), clock, {"WATCHDOG_USEC": "2000000"}, pid=1)
    assert loop is not None
    assert receiver.messages() == [b"WATCHDOG=1"]
    clock.advance(0.9)
    assert receiver.messages() == []
    clock.advance(0.1)
    assert receiver.messages() == [b"WATCHDOG=1"]
    clock.advance(1.0)
    loop.stop()
    clock.advance(5.0)
    assert receiver.messages() == [b"WATCHDOG=1"]


def test_noWatchdogWithoutSocketOrRequest(notifySocket: tuple[str, NotifySocket]) -> None:
    """
    No loop runs when systemd asks for no watchdog or there is no notification socket.
    """
    path, _ = notifySocket
    assert startWatchdog(Notifier(path), Clock(), {}, pid=1) is None
    assert startWatchdog(Notifier(None), Clock(), {"WATCHDOG_USEC": "1000000"}, pid=1) is None


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        pytest.param({"LISTEN_PID": "7", "LISTEN_FDS": "2"}, "unknown:unknown", id="unnamed"),
        pytest.param({"LISTEN_PID": "7", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "echo"}, "echo", id="named"),
        pytest.param({"LISTEN_PID": "8", "LISTEN_FDS": "1"}, None, id="other-pid"),
        pytest.param({"LISTEN_PID": "7", "LISTEN_FDS": "x"}, None, id="bad-count"),
        pytest.param({}, None, id="none"),
    ],
)
def test_completeListenNames(environ: dict[str, str], names: str | None) -> None:
    """
    Sockets passed to this process without names get the documented default name 'unknown' each; anything else is left alone.
    """
    completeListenNames(environ, pid=7)
    assert environ.get("LISTEN_FDNAMES") == names


ENDPOINTS_WATCH = """
import importlib.abc, json, os, sys

os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.environ.pop("LISTEN_FDNAMES", None)
seen = {}


class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "twisted.internet.endpoints" and name not in seen:
            seen[name] = os.environ.get("LISTEN_FDNAMES")
        return None


sys.meta_path.insert(0, Watch())
"""
"""
The start of a child process passed one socket by systemd without names,
recording C{$LISTEN_FDNAMES} as it was when C{twisted.internet.endpoints}
was first imported.
"""


def runChild(code: str, tmp_path: Path) -> dict[str, object]:
    """
    Run L{ENDPOINTS_WATCH} then C{code} in a fresh interpreter, which prints one JSON object.
    """
    result = subprocess.run(
        [sys.executable, "-c", ENDPOINTS_WATCH + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return report


def test_importingNetdHasNoSideEffects(tmp_path: Path) -> None:
    """
    import netd leaves the socket-activation environment as it was and imports no Twisted endpoints.
    """
    report = runChild(
        "import netd\nprint(json.dumps({'names': os.environ.get('LISTEN_FDNAMES'), 'endpoints': sorted(seen)}))\n",
        tmp_path,
    )
    assert report == {"names": None, "endpoints": []}


def test_netdCommandCompletesNamesBeforeEndpoints(tmp_path: Path) -> None:
    """
    The netd command completes $LISTEN_FDNAMES before anything imports twisted.internet.endpoints, which reads it.
    """
    report = runChild(
        "import contextlib, io\n"
        "from netd.__main__ import main\n"
        "sys.argv = ['netd', 'schema', '--api']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main()\n"
        "print(json.dumps({'seen': seen}))\n",
        tmp_path,
    )
    assert report == {"seen": {"twisted.internet.endpoints": "unknown"}}


def test_twistdPluginCompletesNamesBeforeEndpoints(tmp_path: Path) -> None:
    """
    twistd netd's options complete $LISTEN_FDNAMES before netd's modules import twisted.internet.endpoints.
    """
    report = runChild(
        "from netd.daemon.tap import Options\nOptions().parseOptions([])\nprint(json.dumps({'seen': seen}))\n",
        tmp_path,
    )
    assert report == {"seen": {"twisted.internet.endpoints": "unknown"}}


class RecordingNotifier(Notifier):
    """
    A notifier that records its messages, and whether the ports file existed when each was sent.
    """

    def __init__(self, portsFile: Path | None = None) -> None:
        super().__init__("/unused")
        self.portsFile = portsFile
        self.sent: list[tuple[tuple[tuple[str, str], ...], bool]] = []

    def send(self, *fields: tuple[str, str]) -> bool:
        self.sent.append((fields, self.portsFile is not None and self.portsFile.exists()))
        return True


def test_daemonReadyAfterPortsFile(tmp_path: Path) -> None:
    """
    The daemon sends READY=1 with a STATUS line once everything listens and the ports file is written, and STOPPING=1 when it stops.
    """
    portsFile = tmp_path / "ports.json"
    notifier = RecordingNotifier(portsFile)
    application = NetdApplication(makeConfig(ECHO), UDPMemoryReactorClock(), notifier, portsFile=str(portsFile))
    resultOf(Deferred.fromCoroutine(application.start()))
    assert notifier.sent == [((("READY", "1"), ("STATUS", "serving 1 service on 1 address")), True)]
    resultOf(application.stopService())
    assert notifier.sent[-1][0][0] == ("STOPPING", "1")


def test_daemonBeforeServingRunsBetweenListenAndReady(tmp_path: Path) -> None:
    """
    The beforeServing hook (the privilege drop) runs once everything listens and before READY=1; if it fails, nothing is left listening and no READY is sent.
    """
    reactor = UDPMemoryReactorClock()
    notifier = RecordingNotifier()
    seen: list[int] = []
    daemon = Daemon(makeConfig(ECHO), reactor, notifier)
    resultOf(Deferred.fromCoroutine(daemon.start(beforeServing=lambda: seen.append(len(reactor.tcpPorts)))))
    assert seen == [1] and notifier.sent[0][0][0] == ("READY", "1")

    def refuse() -> None:
        raise RuntimeError("cannot drop")

    reactor = UDPMemoryReactorClock()
    notifier = RecordingNotifier()
    daemon = Daemon(makeConfig(ECHO), reactor, notifier)
    failed = Deferred.fromCoroutine(daemon.start(beforeServing=refuse))
    with pytest.raises(RuntimeError):
        resultOf(failed)
    assert [p.listening for p in reactor.tcpPorts] == [False]
    assert notifier.sent == []


def test_systemdListenStringByName() -> None:
    """
    A systemd: listen string takes index=N or name=NAME, never both or neither, and needs a domain.
    """
    assert ListenAddress.fromConfig("systemd:domain=INET:index=0").transport == "stream"
    assert ListenAddress.fromConfig("systemd:domain=INET6:name=echo").transport == "stream"
    for bad in (
        "systemd:domain=INET",
        "systemd:domain=INET:index=0:name=echo",
        "systemd:index=0",
        "systemd:domain=INET:name=",
    ):
        with pytest.raises(InvalidValue):
            ListenAddress.fromConfig(bad)


def test_systemdListenWithoutActivationSaysWhy() -> None:
    """
    Listening on a systemd: string when systemd passed no socket fails with a message that says so, not an IndexError.
    """
    address = ListenAddress.fromConfig("systemd:domain=INET:index=5")
    with pytest.raises(LookupError, match="systemd passed no such socket") as info:
        resultOf(Deferred.fromCoroutine(address.listenStream(UDPMemoryReactorClock(), object())))  # type: ignore[arg-type]
    assert str(info.value) == NO_INHERITED_SOCKET


def unitSettings(path: Path) -> dict[str, list[str]]:
    """
    The KEY=VALUE settings of a unit file, every value of each key, comments and sections left out.
    """
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_exampleServiceUnit() -> None:
    """
    config/netd.service is a Type=notify unit with a watchdog, a SIGHUP reload and the sandbox docs/service.md describes.
    """
    settings = unitSettings(ROOT / "config" / "netd.service")
    expected = {
        "Type": "notify",
        "ExecStart": "/usr/local/bin/netd run -c /etc/netd/netd.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "DynamicUser": "yes",
        "StateDirectory": "netd",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    assert {key: settings.get(key, [None])[0] for key in expected} == expected
    assert settings["WatchdogSec"]


def test_exampleSocketMatchesItsConfig() -> None:
    """
    config/netd.socket activates netd.service, and its example config listens on the socket it passes.
    """
    settings = unitSettings(ROOT / "config" / "netd.socket")
    assert settings["ListenStream"] == ["127.0.0.1:7"]
    assert settings["Service"] == ["netd.service"]
    config = (ROOT / "config" / "examples" / "socket-activated.toml").read_text()
    assert 'listen = ["systemd:domain=INET:index=0"]' in config
