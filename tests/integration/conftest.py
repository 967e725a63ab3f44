"""
What this repository's integration tests share beyond the shipped harness
(L{netd.testing.harness}, on which netd runs as a real subprocess on ports it
picks itself): the C{startNetd} fixtures, the real clients (sockets, socat,
dig) and the test DNS upstream.  No fixed ports; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from netd.testing.harness import TEST_ADMIN, NetdServer, unavailable, withDaemonKeys

from .dns_upstream import Dnsmasq, findDnsmasq, startTestUpstream

STARTUP_TIMEOUT = 20.0

HERE = Path(__file__).resolve().parent


# Running in parallel (./test.sh: pytest-xdist, --dist loadgroup).  Each module
# runs in one worker, so that its module fixtures are made once; a test that
# needs a resource of the whole machine names it as its xdist_group, which puts
# every test of that resource into one worker and, for the resources in
# EXCLUSIVE, holds a lock on it around each test as well, so that it stays
# exclusive under any other distribution (--dist load) or in another run.

EMBEDDED_DEFAULT_PORTS = "embedded-default-ports"
"""
The fixed loopback ports of the embedded default config (L{embeddedDefaultPorts}).
"""
LOAD = "load"
"""
The benchmarks and rolling restarts: they load the machine for a set time,
measure while they do, and share bench/build/.
"""
EXCLUSIVE = frozenset({EMBEDDED_DEFAULT_PORTS, LOAD})
LOCK_TIMEOUT = 900.0

usesEmbeddedDefaultPorts = pytest.mark.xdist_group(EMBEDDED_DEFAULT_PORTS)
loadsTheMachine = pytest.mark.xdist_group(LOAD)


@contextlib.contextmanager
def lockFile(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """
    Hold an exclusive lock on the file C{path} (made if missing; the kernel
    frees the lock if the process dies), waiting at most C{timeout} seconds
    for whoever holds it.
    """
    deadline = time.monotonic() + timeout
    with path.open("a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} held by another test for {timeout} seconds") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def exclusive(name: str) -> contextlib.AbstractContextManager[None]:
    """
    Hold the machine-wide lock of the resource C{name}.
    """
    return lockFile(Path(tempfile.gettempdir()) / f"netd-tests-{name}.lock")


def xdistGroups(item: pytest.Item) -> set[str]:
    """
    The names of the xdist_group marks of C{item}.
    """
    return {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Put each integration test that names no group of its own into its
    module's group (first: pytest-xdist reads the groups in the same hook).
    """
    for item in items:
        if item.path.is_relative_to(HERE) and not xdistGroups(item):
            item.add_marker(pytest.mark.xdist_group(item.path.relative_to(HERE).as_posix()))


@pytest.fixture(autouse=True)
def _exclusiveResources(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Hold the locks of the exclusive resources a test's groups name while it
    runs; in a loadgroup worker, first check that pytest-xdist saw the groups
    (it marks them in the node ID, which some pytest releases ignore).
    """
    groups = xdistGroups(request.node)
    if getattr(request.config.option, "loadgroup", False) and groups:
        assert request.node.nodeid.endswith("@" + "_".join(sorted(groups))), (
            f"pytest-xdist did not put {request.node.nodeid} into its group {groups}: see pyproject.toml's pytest pin"
        )
    with contextlib.ExitStack() as locks:
        for name in sorted(groups & EXCLUSIVE):
            locks.enter_context(exclusive(name))
        yield


def requireTool(name: str) -> str:
    """
    The path of a command-line tool the test drives (./test.sh installs it).
    """
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (./test.sh installs it)")
    return path


BENCH_TIMEOUT = 180.0


def runBench(script: str, *arguments: str) -> tuple[list[str], list[list[str]]]:
    """
    Run a benchmark of bench/ (C{script}, e.g. C{"tls/bench.py"}) with
    C{arguments} and check that it exits 0; its report's lines, and the rows
    of its Markdown tables split at C{" | "}.  Without the C compiler and
    OpenSSL headers its load generator is built with, the test is skipped
    (fails under CI=true).
    """
    if shutil.which("cc") is None or not Path("/usr/include/openssl/ssl.h").exists():
        unavailable("no C compiler or OpenSSL headers to build the load generator (setup.sh --test installs them)")
    root = HERE.parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / script), *arguments],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    return lines, [line.split(" | ") for line in lines if line.startswith("| ")]


# Small client-side helpers shared by the integration tests.

IO_TIMEOUT = 10.0
SOCAT_TIMEOUT = 20.0


def echoService(name: str, listen: list[str], **keys: object) -> str:
    """
    One C{[[services]]} table of the echo plugin, as TOML.
    """
    lines = [
        "[[services]]",
        f'name = "{name}"',
        'plugin = "echo"',
        "listen = [" + ", ".join('"' + address.replace("\\", "\\\\") + '"' for address in listen) + "]",
    ]
    for key, value in keys.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        else:
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    return "\n".join(lines) + "\n\n"


def connect(address: tuple[str, int]) -> socket.socket:
    """
    A TCP connection to C{address} with a bounded timeout on every call.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(IO_TIMEOUT)
    client.connect(address)
    return client


def recvExactly(client: socket.socket, count: int, timeout: float = IO_TIMEOUT) -> bytes:
    """
    Read exactly C{count} bytes, failing if the peer closes first or the time runs out.
    """
    deadline = time.monotonic() + timeout
    received = bytearray()
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(received)} of {count} bytes in {timeout} seconds: {bytes(received)!r}")
        client.settimeout(remaining)
        chunk = client.recv(count - len(received))
        if not chunk:
            raise AssertionError(f"connection closed after {len(received)} of {count} bytes: {bytes(received)!r}")
        received += chunk
    return bytes(received)


def recvUntilClosed(client: socket.socket, timeout: float = IO_TIMEOUT, limit: int = 64 * 2**20) -> bytes:
    """
    Read until the peer closes (EOF or reset), within C{timeout} seconds and C{limit} bytes.
    """
    deadline = time.monotonic() + timeout
    received = bytearray()
    while len(received) <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the peer did not close within {timeout} seconds; got {len(received)} bytes")
        client.settimeout(remaining)
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk
    raise AssertionError(f"more than {limit} bytes before the peer closed")


def waitForClose(client: socket.socket, timeout: float) -> float:
    """
    Wait for the peer to close a connection on which nothing is expected; return
    how long it took.
    """
    started = time.monotonic()
    rest = recvUntilClosed(client, timeout)
    assert rest == b"", f"unexpected bytes before the close: {rest!r}"
    return time.monotonic() - started


def socat(args: list[str], data: bytes, timeout: float = 2.0) -> bytes:
    """
    Run socat with C{data} on its standard input and return its standard output.
    """
    done = subprocess.run(
        [requireTool("socat"), "-t", str(timeout), *args],
        input=data,
        capture_output=True,
        timeout=SOCAT_TIMEOUT,
    )
    assert done.returncode == 0, f"socat {args} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
    return done.stdout


def waitForLog(netd: NetdServer, text: str, timeout: float = IO_TIMEOUT) -> str:
    """
    Poll netd's log until it contains C{text}; return the log.
    """
    deadline = time.monotonic() + timeout
    while True:
        log = netd.log()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {timeout} seconds:\n{log}")
        time.sleep(0.05)


def withTestAdmin(config: str) -> str:
    """
    C{config} with the control API on a loopback port of its own
    (L{TEST_ADMIN}) unless it places it, as L{startNetd} runs it: for a test
    that writes a config file itself (to reload, or for a netd it starts
    another way).
    """
    return withDaemonKeys(config, {"admin": TEST_ADMIN})


def _starter(directory: Path, started: list[NetdServer]) -> Callable[..., NetdServer]:
    """
    A function that starts netd on a config text (L{None}: the embedded default
    config, no C{-c}) with its files in a folder of C{directory} of its own,
    appending each server to C{started}, and returns it, ready unless
    C{wait=False}; other keyword arguments go to L{NetdServer}.

    netd's own shutdown timeout is kept (the harness's default of 0 would hide
    what the drain tests prove); the environment is the one of the moment of
    the call (a test may have set C{NETD_REACTOR}, say).
    """

    def start(config: str | None, *, wait: bool = True, **options: Any) -> NetdServer:
        options.setdefault("shutdownTimeout", None)
        options.setdefault("startTimeout", STARTUP_TIMEOUT)
        server = NetdServer(config, directory / f"netd-{len(started)}", **options)
        started.append(server)
        return server.start(wait=wait)

    return start


@pytest.fixture
def startNetd(tmp_path: Path) -> Iterator[Callable[..., NetdServer]]:
    """
    A function that starts netd on a config text (L{None}: the embedded default
    config, no C{-c}) and returns its L{NetdServer}, ready unless C{wait=False};
    every process started is killed at teardown.
    """
    started: list[NetdServer] = []
    yield _starter(tmp_path, started)
    for netd in started:
        netd.kill()


@pytest.fixture(scope="module")
def startModuleNetd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NetdServer]]:
    """
    Like L{startNetd}, for a netd shared by the tests of one module (started by a
    module-scoped fixture); every process started is killed after the module.
    """
    started: list[NetdServer] = []
    yield _starter(tmp_path_factory.mktemp("netd"), started)
    for netd in started:
        netd.kill()


# DNS: the real upstream (dnsmasq) and the real client (dig).

DIG_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def dnsUpstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """
    The test upstream of L{dns_upstream}: dnsmasq on a free loopback port,
    serving the records of L{dns_upstream.EXPECTED}, stopped (by its PID) after
    the session.  Tests compare counts of its logged queries, never absolute
    numbers, so sharing it is safe.
    """
    if findDnsmasq() is None:
        unavailable("dnsmasq is not installed (./test.sh installs it)")
    upstream = startTestUpstream(tmp_path_factory.mktemp("dnsmasq"))
    try:
        yield upstream
    finally:
        upstream.stop()


@attrs.frozen
class DigRecord:
    """
    One resource record as dig prints it.
    """

    name: str
    ttl: int
    rclass: str
    rtype: str
    data: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        """
        The record without its TTL, its owner name in lower case: what two
        answers to the same question must agree on.
        """
        return self.name.lower(), self.rclass, self.rtype, self.data


@attrs.frozen
class DigMessage:
    """
    One DNS message dig received, from its printed form.
    """

    status: str
    flags: frozenset[str]
    edns: frozenset[str] | None
    """
    The flags of the OPT record (C{do}), or L{None} when the message has no OPT record.
    """
    udpSize: int | None
    question: tuple[str, ...]
    answer: tuple[DigRecord, ...]
    authority: tuple[DigRecord, ...]
    size: int | None
    """
    The message's size in bytes, from dig's C{MSG SIZE rcvd}.
    """

    def data(self, rtype: str | None = None) -> list[str]:
        """
        The sorted record data of the answer section (of type C{rtype} when given).
        """
        return sorted(record.data for record in self.answer if rtype is None or record.rtype == rtype)

    def keys(self, section: str = "answer") -> list[tuple[str, str, str, str]]:
        """
        The sorted TTL-free keys of the records of C{section}.
        """
        records: tuple[DigRecord, ...] = getattr(self, section)
        return sorted(record.key for record in records)


@attrs.frozen
class DigResult:
    """
    What one run of dig printed, parsed: every message it received, in order.
    """

    args: tuple[str, ...]
    output: str
    returncode: int
    elapsed: float
    messages: tuple[DigMessage, ...]

    @property
    def last(self) -> DigMessage:
        """
        The last message received (after a TCP retry, the TCP answer).
        """
        assert self.messages, f"dig {' '.join(self.args)} received no answer:\n{self.output}"
        return self.messages[-1]

    @property
    def retriedOverTcp(self) -> bool:
        """
        Whether dig saw a truncated answer and asked again over TCP.
        """
        return "Truncated, retrying in TCP mode" in self.output


def _digRecord(line: str) -> DigRecord:
    """
    One record line of dig's output (C{name ttl class type data}).
    """
    fields = line.split(None, 4)
    assert len(fields) >= 4, f"not a record line: {line!r}"
    return DigRecord(fields[0], int(fields[1]), fields[2], fields[3], fields[4] if len(fields) == 5 else "")


def parseDig(output: str) -> list[DigMessage]:
    """
    The messages in dig's default (non-C{+short}) output.
    """
    messages: list[DigMessage] = []
    blocks = re.split(r"^(?=;; ->>HEADER<<-)", output, flags=re.MULTILINE)
    for block in blocks[1:]:
        status = re.search(r"status: (\w+)", block)
        flags = re.search(r"^;; flags:([^;]*);", block, re.MULTILINE)
        edns = re.search(r"^; EDNS: version: \d+, flags:([^;]*); udp: (\d+)", block, re.MULTILINE)
        size = re.search(r"^;; MSG SIZE\s+rcvd: (\d+)", block, re.MULTILINE)
        sections: dict[str, list[str]] = {}
        current: str | None = None
        for line in block.splitlines():
            heading = re.match(r"^;; (\w+) SECTION:", line)
            if heading:
                current = heading.group(1)
                sections[current] = []
            elif not line.strip():
                current = None
            elif current is not None:
                sections[current].append(line)
        assert status is not None and flags is not None, f"unreadable dig output:\n{block}"
        messages.append(
            DigMessage(
                status=status.group(1),
                flags=frozenset(flags.group(1).split()),
                edns=None if edns is None else frozenset(edns.group(1).split()),
                udpSize=None if edns is None else int(edns.group(2)),
                question=tuple(line.lstrip(";") for line in sections.get("QUESTION", [])),
                answer=tuple(_digRecord(line) for line in sections.get("ANSWER", [])),
                authority=tuple(_digRecord(line) for line in sections.get("AUTHORITY", [])),
                size=None if size is None else int(size.group(1)),
            )
        )
    return messages


def dig(address: tuple[str, int], *args: str, time: int = 3) -> DigResult:
    """
    Run dig against C{address} with C{args} (name, type, class, +options), one
    try of C{time} seconds unless the args say otherwise, and parse what it
    prints.
    """
    command = [requireTool("dig"), f"@{address[0]}", "-p", str(address[1]), f"+time={time}", "+tries=1", *args]
    started = _monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=DIG_TIMEOUT, stdin=subprocess.DEVNULL)
    elapsed = _monotonic() - started
    output = done.stdout + done.stderr
    return DigResult(tuple(args), output, done.returncode, elapsed, tuple(parseDig(done.stdout)))


_monotonic = time.monotonic


# The embedded default config listens on fixed ports: a test that runs it needs them free.


def canBind(kind: int, port: int) -> bool:
    """
    Whether a socket of C{kind} can bind 127.0.0.1:C{port} (and listen, for TCP) now.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            if kind == socket.SOCK_STREAM:
                probe.listen()
        except OSError:
            return False
    return True


def embeddedDefaultPorts() -> list[tuple[str, int]]:
    """
    The (transport, port) pairs the embedded default config listens on, on
    127.0.0.1: its services and its control API, read from the config itself.
    """
    from netd.config.spec import loadConfig
    from netd.registry import discoverPlugins

    config = loadConfig(None, discoverPlugins()).toConfig()
    listens = [listen for service in config["services"] for listen in service["listen"]]
    admin = config["daemon"].get("admin")
    if isinstance(admin, str):
        listens.append(admin)
    ports = []
    for listen in listens:
        parsed = re.fullmatch(r"(tcp|udp):(\d+):interface=127\.0\.0\.1", listen)
        assert parsed is not None, f"the embedded default listens on {listen!r}, not a fixed loopback port"
        ports.append((parsed.group(1), int(parsed.group(2))))
    return ports


def busyEmbeddedDefaultPorts() -> list[str]:
    """
    The embedded default's ports that something else holds now.
    """
    return [
        f"{transport} 127.0.0.1:{port}"
        for transport, port in embeddedDefaultPorts()
        if not canBind(socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM, port)
    ]


def requireEmbeddedDefaultPorts(why: str = "the test runs netd on the embedded default config") -> None:
    """
    Skip (fail under CI=true) unless the embedded default's fixed ports are free.
    """
    busy = busyEmbeddedDefaultPorts()
    if busy:
        unavailable(
            f"{why}, whose fixed ports {', '.join(busy)} are in use (a netd started from the quick start, or "
            "another test run?); stop it and run the test again"
        )
