"""
The daemon's life end to end: starting (default config, bind failures, invalid
configs), logging, and stopping on signals with a bounded drain.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from netd.testing.harness import netdCommand

from .conftest import (
    IO_TIMEOUT,
    canBind,
    connect,
    echoService,
    recvExactly,
    recvUntilClosed,
    requireEmbeddedDefaultPorts,
    usesEmbeddedDefaultPorts,
    waitForLog,
)

pytestmark = pytest.mark.integration

EXIT_TIMEOUT = 15.0


def waitForExit(netd: Any, timeout: float = EXIT_TIMEOUT) -> int:
    """
    Wait, bounded, for a netd that should exit on its own; return its exit code.
    """
    try:
        code: int = netd.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"netd did not exit within {timeout} seconds:\n{netd.log()}") from None
    return code


def waitUntilRefused(address: tuple[str, int], timeout: float = IO_TIMEOUT) -> None:
    """
    Poll until connecting to C{address} is refused.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=1):
                pass
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass  # accepted by the kernel as the listening socket closed
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} still accepts connections after {timeout} seconds")
        time.sleep(0.02)


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


ONE_ECHO = echoService("echo", ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"])


def waitUntilServing(netd: Any) -> None:
    """
    Prove that netd's reactor is running (and so handles signals) with a UDP
    echo round trip, which opens no connection.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(IO_TIMEOUT)
        udp.sendto(b"serving?", netd.address("echo", "udp"))
        assert udp.recv(100) == b"serving?"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalWithNoConnections(startNetd: Any, sig: int) -> None:
    """
    SIGTERM or SIGINT with no open connection makes netd log that it stopped and exit 0 within seconds.
    """
    netd = startNetd(ONE_ECHO)
    waitUntilServing(netd)
    signalled = time.monotonic()
    assert netd.stop(sig, timeout=EXIT_TIMEOUT) == 0, netd.log()
    assert time.monotonic() - signalled < 5
    log = netd.log()
    assert "[echo#info] stopped" in log
    assert "waiting up to" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalRightAfterReady(startNetd: Any, sig: signal.Signals) -> None:
    """
    A SIGTERM or SIGINT sent as soon as netd has written its ports file (its readiness report) makes it stop cleanly and exit 0.
    """
    for attempt in range(5):
        netd = startNetd(ONE_ECHO, wait=False)
        deadline = time.monotonic() + EXIT_TIMEOUT
        # A busy poll, bounded by the deadline: the point is to signal the
        # moment the ports file appears, as a supervisor watching it would.
        while not netd.portsFile.exists():
            assert netd.process.poll() is None, f"netd exited before it was ready:\n{netd.log()}"
            assert time.monotonic() < deadline, f"netd was not ready after {EXIT_TIMEOUT} seconds:\n{netd.log()}"
        netd.process.send_signal(sig)
        try:
            code = netd.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"attempt {attempt + 1}: netd still runs 5 seconds after {sig.name} sent once it was ready:\n{netd.log()}"
            ) from None
        assert code == 0, (
            f"attempt {attempt + 1}: netd exited {code} on {sig.name} sent once it was ready:\n{netd.log()}"
        )
        assert "[echo#info] stopped" in netd.log()


def test_gracefulDrain(startNetd: Any) -> None:
    """
    After SIGTERM netd refuses new connections while an open one still echoes, and exits 0 as soon as it closes.
    """
    netd = startNetd("[daemon]\nshutdown_timeout = 5\n\n" + ONE_ECHO)
    address = netd.address("echo", "tcp")
    with connect(address) as client:
        client.sendall(b"before")
        assert recvExactly(client, 6) == b"before"
        netd.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        waitUntilRefused(address)
        waitForLog(netd, "waiting up to 5")
        for i in range(3):
            message = b"draining %d" % i
            client.sendall(message)
            assert recvExactly(client, len(message)) == message
        assert netd.process.poll() is None, "netd exited while a connection was open"
        client.shutdown(socket.SHUT_WR)
        assert recvUntilClosed(client) == b""
    assert waitForExit(netd) == 0, netd.log()
    assert time.monotonic() - signalled < 5, "netd waited for the shutdown timeout although the connection had closed"
    assert "closing 1 connection still open" not in netd.log()


def test_drainTimeout(startNetd: Any) -> None:
    """
    With shutdown_timeout = 1, a connection that stays open after SIGTERM is closed by netd, which exits 0 after about 1 second.
    """
    netd = startNetd("[daemon]\nshutdown_timeout = 1\n\n" + ONE_ECHO)
    with connect(netd.address("echo", "tcp")) as client:
        client.sendall(b"held open")
        assert recvExactly(client, 9) == b"held open"
        netd.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert recvUntilClosed(client, timeout=EXIT_TIMEOUT) == b""
        closedAfter = time.monotonic() - signalled
    assert waitForExit(netd) == 0, netd.log()
    exitedAfter = time.monotonic() - signalled
    assert 0.8 < closedAfter < 5, closedAfter
    assert exitedAfter < 6, exitedAfter
    assert "closing 1 connection still open after 1.0 seconds" in netd.log()


def test_bindFailure(startNetd: Any) -> None:
    """
    When a later service cannot bind its port netd exits non-zero naming the service, listen string and key path, and releases the ports it had bound.
    """
    firstPort = freePort()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        takenPort = taken.getsockname()[1]
        firstListen = f"tcp:{firstPort}:interface=127.0.0.1"
        secondListen = f"tcp:{takenPort}:interface=127.0.0.1"
        netd = startNetd(
            echoService("first", [firstListen]) + echoService("second", [secondListen]),
            wait=False,
        )
        code = waitForExit(netd)
        log = netd.log()
        assert code != 0, log
        assert f"services[1].listen[0]: cannot listen on '{secondListen}': address already in use" in log, log
        assert f"listening on tcp 127.0.0.1:{firstPort}" in log, (
            "the first service should have bound before the failure"
        )
        assert not netd.portsFile.exists()
    assert canBind(socket.SOCK_STREAM, firstPort), f"port {firstPort} of the first service is still taken"


def test_invalidConfig(startNetd: Any) -> None:
    """
    An invalid config makes netd run exit 1, printing every problem with its key path, without writing the ports file.
    """
    config = (
        '[daemon]\nlog_format = "xml"\nshutdown_timeout = -1\n\n'
        + echoService("echo", ["tcp:99999:interface=127.0.0.1"], colour="blue")
        + echoService("echo", ["udp:0:interface=127.0.0.1"], plugin_options=1)
        + '[[services]]\nname = "ghost"\nplugin = "ehco"\nlisten = ["tcp:0"]\n'
    )
    netd = startNetd(config, wait=False)
    assert waitForExit(netd) == 1
    log = netd.log()
    for expected in (
        "daemon.log_format",
        "'xml'",
        "daemon.shutdown_timeout",
        "services[0].listen[0]",
        "99999",
        "services[0].colour",
        "services[1].name",
        "duplicate service name 'echo'",
        "services[1].plugin_options",
        "services[2].plugin",
        "did you mean 'echo'",
        "7 problems found",
    ):
        assert expected in log, f"{expected!r} missing from:\n{log}"
    assert "listening" not in log
    assert not netd.portsFile.exists()


def test_invalidConfigReportsFramingWithEnvelopeProblems(startNetd: Any) -> None:
    """
    A bad framing is reported together with a bad envelope key of the same service, not only once that key is fixed.
    """
    config = echoService("echo", ["tcp:0:interface=127.0.0.1"], framing="lines", max_connections=0)
    netd = startNetd(config, wait=False)
    assert waitForExit(netd) == 1
    log = netd.log()
    assert "services[0].max_connections" in log, log
    assert "services[0].framing" in log, log
    assert "2 problems found" in log, log


def test_jsonLogFormat(startNetd: Any) -> None:
    """
    With log_format = "json" every line netd writes is a JSON object, and the listening event carries its service.
    """
    netd = startNetd('[daemon]\nlog_format = "json"\n\n' + ONE_ECHO)
    waitUntilServing(netd)
    assert netd.stop(signal.SIGTERM, timeout=EXIT_TIMEOUT) == 0
    lines = [line for line in netd.log().splitlines() if line.strip()]
    assert lines
    events = []
    for line in lines:
        event = json.loads(line)
        assert isinstance(event, dict), line
        events.append(event)
    listening = [e for e in events if str(e.get("msg", "")).startswith("listening on")]
    assert [(e["service"], e["listen"]) for e in listening] == [
        ("echo", "tcp:0:interface=127.0.0.1"),
        ("echo", "udp:0:interface=127.0.0.1"),
    ], events
    port = netd.address("echo", "tcp")[1]
    assert listening[0]["address"] == f"tcp 127.0.0.1:{port}"
    assert any(e.get("msg") == "stopped" and e.get("service") == "echo" for e in events)


@usesEmbeddedDefaultPorts
def test_embeddedDefaultConfig(startNetd: Any) -> None:
    """
    netd run without -c serves echo on 127.0.0.1:7007 over TCP and UDP and exits 0 on SIGTERM.
    """
    requireEmbeddedDefaultPorts()
    netd = startNetd(None)
    assert netd.address("echo", "tcp") == ("127.0.0.1", 7007)
    assert netd.address("echo", "udp") == ("127.0.0.1", 7007)
    with connect(("127.0.0.1", 7007)) as client:
        client.sendall(b"default tcp")
        assert recvExactly(client, 11) == b"default tcp"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(IO_TIMEOUT)
        udp.sendto(b"default udp", ("127.0.0.1", 7007))
        assert udp.recv(100) == b"default udp"
    assert netd.stop(signal.SIGTERM, timeout=EXIT_TIMEOUT) == 0
    assert "starting with <embedded default>" in netd.log()


def test_checkFromRootDirectory() -> None:
    """
    netd check without -c, run from /, validates the embedded default config and exits 0.
    """
    done = subprocess.run(
        netdCommand("check"),
        cwd="/",
        capture_output=True,
        timeout=EXIT_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out = done.stdout.decode()
    assert out.startswith("# <embedded default>: valid")
    assert "tcp:7007:interface=127.0.0.1" in out
