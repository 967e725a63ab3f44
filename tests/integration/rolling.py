"""
What the rolling-restart tests share: the example of C{config/deploy/} made
to run on free ports, three netd instances on 127.0.0.2-4 restarted one at a
time, and a load of clients in threads that counts every request and every
failure.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from netd.testing.harness import NetdServer

DEPLOY = Path(__file__).resolve().parents[2] / "config" / "deploy"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""
The instances' addresses, standing in for three hosts.
"""
CLIENT = "127.0.0.1"
"""
Where the clients connect from.
"""
BALANCER = "127.0.0.10"
"""
The load balancer's own address towards the instances.
"""


def _bindable(kind: int, host: str, port: int) -> bool:
    """
    Whether C{port} is free on C{host} for C{kind} (stream or datagram).
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def freePort() -> int:
    """
    A port free for TCP and UDP on the client's, the balancer's and every
    instance's address, so that the example's fixed port can move there.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((CLIENT, 0))
            port = int(probe.getsockname()[1])
        hosts = (CLIENT, BALANCER, *HOSTS)
        if all(_bindable(kind, host, port) for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) for host in hosts):
            return port
    raise AssertionError("no port is free on every loopback address the test uses")


def onFreePorts(text: str, ports: Mapping[int, int], paths: Mapping[str, str] | None = None) -> str:
    """
    An example file's text with each of its fixed ports (C{ports}' keys) and
    paths replaced, so that the test runs the documented file itself.
    """
    for fixed, free in ports.items():
        text = re.sub(rf"(?<![\d.]){fixed}(?!\d)", str(free), text)
    for fixedPath, freePath in (paths or {}).items():
        text = text.replace(fixedPath, freePath)
    return text


@attrs.define
class Tally:
    """
    What a load sent, and what failed (when the request began, and why),
    counted under a lock by its threads.
    """

    sent: int = 0
    failed: int = 0
    failures: list[tuple[float, str]] = attrs.field(factory=list)
    clientPorts: set[int] = attrs.field(factory=set)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def record(self, started: float, port: int | None, error: BaseException | None) -> None:
        """
        Count one request: C{started} is when it began (L{time.monotonic}),
        C{port} the client's (once it connected), C{error} what failed, or
        L{None}.
        """
        with self.lock:
            self.sent += 1
            if port is not None:
                self.clientPorts.add(port)
            if error is not None:
                self.failed += 1
                self.failures.append((started, f"{type(error).__name__}: {error}"))

    def failedSince(self, moment: float) -> list[tuple[float, str]]:
        """
        The failures of the requests begun after C{moment} (a L{time.monotonic} value).
        """
        with self.lock:
            return [f for f in self.failures if f[0] >= moment]


class Load:
    """
    C{threads} clients each running C{request} in a loop, a short pause
    between two, until L{stop}; every request is counted in L{tally}.

    @ivar tally: the counts.
    """

    def __init__(self, request: Callable[[Tally], None], threads: int, pause: float = 0.01) -> None:
        self.tally = Tally()
        self._request = request
        self._pause = pause
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Load:
        """
        Start the clients.
        """
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        """
        One client's loop.
        """
        while not self._stopping.is_set():
            self._request(self.tally)
            self._stopping.wait(self._pause)

    def stop(self) -> Tally:
        """
        Stop the clients (each finishes its request) and answer the counts.
        """
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.tally


def waitFor(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """
    Poll C{condition} until it holds; answer when it did (L{time.monotonic}).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} seconds")
        time.sleep(interval)
    return time.monotonic()


@attrs.define
class Instances:
    """
    The three netds of an example, each on its own address, restarted as new
    processes on the same config file (so on the same ports).

    @ivar configs: each instance's config file.
    @ivar directory: where each process's files go.
    @ivar servers: the process of each instance now, and every earlier one
        (for the teardown) in L{started}.
    """

    configs: list[Path]
    directory: Path
    servers: list[NetdServer] = attrs.field(factory=list)
    started: list[NetdServer] = attrs.field(factory=list)

    def start(self, index: int) -> NetdServer:
        """
        Start instance C{index} and wait until it serves.
        """
        server = NetdServer(
            self.configs[index],
            self.directory / f"netd-{index + 1}-{len(self.started)}",
            shutdownTimeout=None,
            startTimeout=30,
        )
        self.started.append(server)
        server.start()
        if index < len(self.servers):
            self.servers[index] = server
        else:
            self.servers.append(server)
        return server

    def startAll(self) -> Instances:
        """
        Start every instance.
        """
        for index in range(len(self.configs)):
            self.start(index)
        return self

    def terminate(self, index: int) -> float:
        """
        Send SIGTERM to instance C{index}; answer when.
        """
        os.kill(self.servers[index].pid, signal.SIGTERM)
        return time.monotonic()

    def roll(
        self,
        index: int,
        outOfRotation: Callable[[int], bool],
        inRotation: Callable[[int], bool],
        leaveWithin: float,
        interval: float = 0.02,
    ) -> dict[str, Any]:
        """
        Restart instance C{index} as a rolling restart does: SIGTERM, wait
        until the load balancer takes it out (C{outOfRotation}, within
        C{leaveWithin} seconds) and it exits 0, start it again, wait until the
        load balancer has it back (C{inRotation}); answer the timings, in
        seconds after the SIGTERM.
        """
        old = self.servers[index]
        signalled = self.terminate(index)
        name = f"netd{index + 1}"
        down = waitFor(f"{name} leaves the rotation", partial(outOfRotation, index), leaveWithin, interval)
        assert old.process is not None and old.process.wait(timeout=30) == 0
        exited = time.monotonic()
        self.start(index)
        ready = time.monotonic()
        up = waitFor(f"{name} is back in rotation", partial(inRotation, index), 10, interval)
        return {
            "instance": HOSTS[index],
            "marked down after SIGTERM": round(down - signalled, 2),
            "stopped after SIGTERM": round(exited - signalled, 2),
            "ready again after SIGTERM": round(ready - signalled, 2),
            "out of rotation": round(up - down, 2),
        }

    def killAll(self) -> None:
        """
        End every process started, with SIGKILL.
        """
        for server in self.started:
            server.kill()
