"""
Three netds behind a real HAProxy, restarted one at a time under load: the
example of C{config/deploy/haproxy/} (its files themselves, moved to free
ports) with echo and TLS echo clients sending steady requests through HAProxy
while each instance gets SIGTERM (lameduck), starts again and comes back into
rotation, then one instance is killed.
"""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from netd.testing.harness import NetdServer, netdCommand

from .conftest import IO_TIMEOUT, loadsTheMachine, recvExactly, requireTool
from .rolling import CLIENT, DEPLOY, HOSTS, Instances, Load, Tally, freePort, onFreePorts, waitFor

pytestmark = [pytest.mark.integration, loadsTheMachine]

EXAMPLE = DEPLOY / "haproxy"
SERVICES = {"echo": "netd-echo", "tls-echo": "netd-tls-echo"}
"""
netd's service name to the HAProxy backend in front of it.
"""
LAMEDUCK = 2.0
CHECK_INTERVAL = 0.5
CHECK_TIMEOUT = 1.0


@attrs.frozen
class Deployment:
    """
    The running example: HAProxy's stats socket and frontends, the instances,
    and the CA the TLS clients trust.
    """

    instances: Instances
    stats: Path
    echo: tuple[str, int]
    tlsEcho: tuple[str, int]
    tls: ssl.SSLContext

    def status(self) -> dict[tuple[str, str], str]:
        """
        HAProxy's C{show stat}: (backend, server) to its status (C{UP}, C{DOWN}, ...).
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
            stats.settimeout(IO_TIMEOUT)
            stats.connect(str(self.stats))
            stats.sendall(b"show stat\n")
            text = b""
            while chunk := stats.recv(65536):
                text += chunk
        rows = csv.DictReader(text.decode().removeprefix("# ").splitlines())
        return {(row["pxname"], row["svname"]): row["status"] for row in rows if row["svname"].startswith("netd")}

    def inRotation(self, index: int) -> bool:
        """
        Whether HAProxy sends new connections of both services to instance C{index}.
        """
        status = self.status()
        return all(status[(backend, f"netd{index + 1}")] == "UP" for backend in SERVICES.values())

    def outOfRotation(self, index: int) -> bool:
        """
        Whether HAProxy sends no new connection of either service to instance C{index}.
        """
        status = self.status()
        return all(status[(backend, f"netd{index + 1}")].startswith("DOWN") for backend in SERVICES.values())


def startHAProxy(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """
    HAProxy in the foreground on C{config}, its output in C{log}.
    """
    with log.open("wb") as output:
        return subprocess.Popen(
            [requireTool("haproxy"), "-f", str(config), "-db"], stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """
    The example's three netds and HAProxy, every server UP; all stopped after the test.
    """
    requireTool("haproxy")
    ports = {fixed: freePort() for fixed in (7007, 7443, 8053)}
    made = subprocess.run(
        netdCommand("certs", "--out", str(tmp_path / "certs")),
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert made.returncode == 0, made.stderr
    configs = []
    for number in (1, 2, 3):
        config = tmp_path / f"netd-{number}.toml"
        config.write_text(onFreePorts((EXAMPLE / config.name).read_text(), ports))
        configs.append(config)
    # A short path: a unix socket's must fit in 108 bytes, which a test's tmp_path may not leave.
    sockets = Path(tempfile.mkdtemp(prefix="netd-haproxy-"))
    stats = sockets / "stats.sock"
    haproxyConfig = tmp_path / "haproxy.cfg"
    haproxyConfig.write_text(
        onFreePorts((EXAMPLE / "haproxy.cfg").read_text(), ports, {"/tmp/haproxy-netd.sock": str(stats)})
    )
    instances = Instances(configs, tmp_path)
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        instances.startAll()
        haproxy = startHAProxy(haproxyConfig, tmp_path / "haproxy.log")
        tls = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
        running = Deployment(instances, stats, (CLIENT, ports[7007]), (CLIENT, ports[7443]), tls)
        waitFor("HAProxy's stats socket", stats.exists, timeout=IO_TIMEOUT)
        waitFor("every server UP", lambda: all(running.inRotation(i) for i in range(3)), timeout=IO_TIMEOUT)
        yield running
    finally:
        if haproxy is not None:
            haproxy.send_signal(signal.SIGTERM)
            haproxy.wait(timeout=IO_TIMEOUT)
        instances.killAll()
        shutil.rmtree(sockets, ignore_errors=True)


def echoRequest(address: tuple[str, int], tally: Tally, tls: ssl.SSLContext | None = None, label: str = "ping") -> None:
    """
    One request through one of HAProxy's frontends: connect, with C{tls}
    handshake (verifying the certificate for localhost), send, read the
    echo, close.
    """
    started, port = time.monotonic(), None
    try:
        with socket.create_connection(address, timeout=IO_TIMEOUT) as raw:
            port = int(raw.getsockname()[1])
            with raw if tls is None else tls.wrap_socket(raw, server_hostname="localhost") as client:
                message = f"{label} {port}\n".encode()
                client.sendall(message)
                if recvExactly(client, len(message)) != message:
                    raise AssertionError("the echo differs")
    except (OSError, AssertionError) as error:
        tally.record(started, port, error)
    else:
        tally.record(started, port, None)


def startLoad(deployment: Deployment) -> tuple[Load, Load]:
    """
    Four echo clients and two TLS echo clients, each sending a request
    after another through HAProxy.
    """
    echo = Load(lambda tally: echoRequest(deployment.echo, tally), threads=4).start()
    tls = Load(lambda tally: echoRequest(deployment.tlsEcho, tally, deployment.tls, "tls"), threads=2).start()
    return echo, tls


def clientPeers(server: NetdServer, service: str) -> list[str]:
    """
    The peer of every connection event of C{service} on C{server}.
    """
    return [event["peer"] for event in server.admin.events(service, kind="connection")]


def test_rollingRestartLosesNoRequest(deployment: Deployment) -> None:
    """
    Under steady echo and TLS echo load through HAProxy, each netd in turn gets SIGTERM, leaves the rotation while it still serves (lameduck), starts again and comes back: no request fails, and every instance's events show the clients' own addresses from the PROXY header.
    """
    instances = deployment.instances
    echo, tls = startLoad(deployment)
    time.sleep(1)
    figures: list[dict[str, Any]] = []
    for index in range(len(HOSTS)):
        figures.append(instances.roll(index, deployment.outOfRotation, deployment.inRotation, LAMEDUCK))
        time.sleep(0.5)
    echoTally, tlsTally = echo.stop(), tls.stop()
    print(f"\necho: {echoTally.sent} requests, {echoTally.failed} failed")
    print(f"TLS echo: {tlsTally.sent} requests, {tlsTally.failed} failed")
    for figure in figures:
        print(figure)
    assert echoTally.failures == [] and tlsTally.failures == []
    assert echoTally.sent > 100 and tlsTally.sent > 20
    for server in instances.servers:
        for service, tally in (("echo", echoTally), ("tls-echo", tlsTally)):
            peers = clientPeers(server, service)
            assert peers, f"{service} on {server.address(service)} saw no connection"
            hosts = {peer.rpartition(":")[0] for peer in peers}
            assert hosts == {CLIENT}, f"{service} on {server.address(service)} saw {hosts}, not the clients"
            ports = {int(peer.rpartition(":")[2]) for peer in peers}
            assert ports <= tally.clientPorts


def heldConnection(deployment: Deployment) -> socket.socket:
    """
    An echo connection through HAProxy that has been echoed once and stays open.
    """
    client = socket.create_connection(deployment.echo, timeout=IO_TIMEOUT)
    client.sendall(b"held\n")
    assert recvExactly(client, 5) == b"held\n"
    return client


def stillEchoes(client: socket.socket) -> bool:
    """
    Whether a held connection still echoes.
    """
    try:
        client.sendall(b"again\n")
        return recvExactly(client, 6, timeout=5) == b"again\n"
    except (OSError, AssertionError):
        return False


def test_killLosesOnlyTheKilledInstancesConnections(deployment: Deployment) -> None:
    """
    When one netd behind HAProxy is killed with SIGKILL under load, only the connections it held fail (held ones, requests in flight); every request begun after the kill succeeds (HAProxy retries a refused connection on another netd) and HAProxy takes it out of rotation within the check interval.
    """
    instances = deployment.instances
    held = [heldConnection(deployment) for _ in range(6)]
    openEach = [server.admin.service("echo")["connections_open"] for server in instances.servers]
    assert sum(openEach) == 6 and all(openEach), openEach
    echo, tls = startLoad(deployment)
    time.sleep(1)
    victim = 1
    instances.servers[victim].kill()
    killed = time.monotonic()
    down = waitFor("the killed instance leaves the rotation", lambda: deployment.outOfRotation(victim), 5)
    time.sleep(2)
    echoTally, tlsTally = echo.stop(), tls.stop()
    lost = [client for client in held if not stillEchoes(client)]
    for client in held:
        client.close()
    lateFailures = echoTally.failedSince(killed) + tlsTally.failedSince(killed)
    print(f"\nheld connections: {len(held)}, {openEach[victim]} on the killed instance, {len(lost)} lost")
    print(f"echo: {echoTally.sent} requests, {echoTally.failed} failed: {echoTally.failures}")
    print(f"TLS echo: {tlsTally.sent} requests, {tlsTally.failed} failed: {tlsTally.failures}")
    print(f"out of rotation {round(down - killed, 2)} s after SIGKILL")
    assert len(lost) == openEach[victim]
    assert echoTally.failed + tlsTally.failed <= 6, "more requests failed than were in flight"
    assert lateFailures == []
    assert down - killed <= CHECK_INTERVAL + CHECK_TIMEOUT + 0.5
    assert echoTally.sent > 50 and tlsTally.sent > 10
