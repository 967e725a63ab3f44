"""
The integration harness: netd runs as a real subprocess on ports it picks itself
(port 0), reports them through --ports-file, and the tests talk to it with real
clients.  No fixed ports; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from netd.testing.memory import unavailable

from .dns_upstream import Dnsmasq, findDnsmasq, startTestUpstream

STARTUP_TIMEOUT = 20.0


def requireTool(name: str) -> str:
    """
    The path of a command-line tool the test drives (./test.sh installs it).
    """
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (./test.sh installs it)")
    return path


class NetdProcess:
    """
    One running netd, with where each of its services listens.
    """

    def __init__(self, process: subprocess.Popen[bytes], portsFile: Path, logFile: Path, stateDir: Path | None = None) -> None:
        self.process = process
        self.portsFile = portsFile
        self.logFile = logFile
        self.stateDir = stateDir
        """
        netd's default state directory (C{$XDG_STATE_HOME/netd}, in the test's
        temporary folder): where C{certificate = "auto"} keeps its files
        unless the config sets C{[daemon] state_dir}.
        """
        self.services: dict[str, list[dict[str, object]]] = {}
        self.admin: dict[str, object] | None = None
        """
        Where the control API listens (the ports file's C{"admin"} entry), if it does.
        """
        self.configFile: Path | None = None
        """
        The config file netd was started with (L{None}: the embedded default),
        for tests that rewrite it and reload.
        """

    @classmethod
    def spawn(
        cls,
        command: list[str],
        portsFile: Path,
        logFile: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec: Callable[[], None] | None = None,
        stateDir: Path | None = None,
    ) -> NetdProcess:
        """
        Start C{command} (a netd or twistd command line writing C{portsFile})
        with nothing on its standard input and its output in C{logFile}.
        """
        with logFile.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                preexec_fn=preexec,
            )
        return cls(process, portsFile, logFile, stateDir)

    def readyOrKilled(self) -> NetdProcess:
        """
        Wait until netd is ready; if it is not, kill it and raise.
        """
        try:
            self.waitUntilReady()
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def pid(self) -> int:
        """
        The daemon's process ID.
        """
        return self.process.pid

    def waitUntilReady(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """
        Wait for the ports file, which netd writes once every service listens.
        """
        deadline = time.monotonic() + timeout
        while not self.portsFile.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"netd exited with {self.process.returncode} before it was ready:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"netd was not ready after {timeout} seconds:\n{self.log()}")
            time.sleep(0.02)
        report = json.loads(self.portsFile.read_text())
        self.services = report["services"]
        self.admin = report.get("admin")

    def adminURL(self, path: str = "/") -> str:
        """
        The URL of C{path} on the control API (over TCP).
        """
        assert self.admin is not None and "port" in self.admin, f"the control API does not listen on TCP: {self.admin}"
        return f"http://{self.admin['host']}:{self.admin['port']}{path}"

    def counter(self, name: str, service: str) -> float:
        """
        The value of C{service}'s counter C{name} in /metrics (0 when absent).
        """
        with urllib.request.urlopen(self.adminURL("/metrics"), timeout=IO_TIMEOUT) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(f"netd_{name}_total{{") and f'service="{service}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def adminHeaders(self) -> dict[str, str]:
        """
        The C{Authorization} header with the control API's token (the ports
        file's C{token_file}), as a client that may change things sends it;
        empty when the API needs none.
        """
        assert self.admin is not None
        tokenFile = self.admin.get("token_file")
        if not tokenFile:
            return {}
        return {"Authorization": "Bearer " + Path(str(tokenFile)).read_text().strip()}

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """
        One request to the control API, with C{body} as JSON if given and the
        token: the status and the decoded JSON answer (error statuses
        returned, not raised).
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.adminURL(path), data=data, method=method, headers=self.adminHeaders())
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    def address(self, service: str, transport: str = "tcp") -> tuple[str, int]:
        """
        The (host, port) of the first C{transport} address of C{service}.
        """
        for bound in self.services[service]:
            if bound["transport"] == transport:
                return str(bound["host"]), int(bound["port"])  # type: ignore[call-overload]
        raise KeyError(f"service {service!r} has no {transport} address: {self.services[service]}")

    def unixPath(self, service: str) -> str:
        """
        The socket path of the first unix address of C{service}.
        """
        for bound in self.services[service]:
            if bound["transport"] == "unix":
                return str(bound["path"])
        raise KeyError(f"service {service!r} has no unix address")

    def log(self) -> str:
        """
        What netd has logged so far.
        """
        return self.logFile.read_text(errors="replace")

    def rssBytes(self) -> int:
        """
        The daemon's resident memory, from /proc.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Signal netd and wait for it to exit; return its exit code.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """
        Make sure the process is gone (teardown); only this PID is touched.
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


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


def waitForLog(netd: NetdProcess, text: str, timeout: float = IO_TIMEOUT) -> str:
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


def netdCommand(*args: str) -> list[str]:
    """
    The command line of netd, run with this interpreter.
    """
    return [sys.executable, "-m", "netd", *args]


TEST_ADMIN = 'admin = "tcp:0:interface=127.0.0.1"'
"""
The control API of every netd the harness starts whose config does not place it
(a config without C{admin} has none): port 0 (reported in the ports file), so
that the tests can use the API and netds running at once never contend for a port.
"""


def withTestAdmin(config: str) -> str:
    """
    C{config} with L{TEST_ADMIN} in its C{[daemon]} table (made if missing),
    unless it sets C{admin} itself.
    """
    if re.search(r"^\s*admin\s*=", config, re.MULTILINE):
        return config
    table = re.search(r"^\[daemon\][^\n]*$", config, re.MULTILINE)
    if table is None:
        return f"[daemon]\n{TEST_ADMIN}\n\n{config}"
    return f"{config[: table.end()]}\n{TEST_ADMIN}{config[table.end() :]}"


def _defaultSigInt() -> None:
    """
    In the child, before netd starts: undo an inherited "ignore SIGINT" (pytest
    run as a background job or under nohup), which Twisted respects by not
    handling SIGINT at all, so that the SIGINT tests test netd.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _netdStarter(directory: Path, started: list[NetdProcess]) -> Callable[..., NetdProcess]:
    """
    A function that starts netd on a config text (L{None}: the embedded default
    config, no C{-c}) with its files in C{directory}, appending each process to
    C{started}, and returns it as a L{NetdProcess}, ready unless C{wait=False}.

    Every netd gets C{XDG_STATE_HOME} in C{directory} (and no
    C{STATE_DIRECTORY}), so that C{certificate = "auto"} (the embedded
    default's tls-echo) never writes into the user's home.  A config text
    gets its control API on port 0 unless it places it (L{withTestAdmin}).
    """
    stateHome = directory / "state"

    def start(config: str | None, *, wait: bool = True) -> NetdProcess:
        index = len(started)
        configArgs: list[str] = []
        if config is not None:
            configFile = directory / f"netd-{index}.toml"
            configFile.write_text(withTestAdmin(config))
            configArgs = ["-c", str(configFile)]
        portsFile = directory / f"ports-{index}.json"
        logFile = directory / f"netd-{index}.log"
        # The environment as it is now: a test may have set NETD_REACTOR, say.
        environment = {key: value for key, value in os.environ.items() if key != "STATE_DIRECTORY"}
        environment["XDG_STATE_HOME"] = str(stateHome)
        netd = NetdProcess.spawn(
            netdCommand("run", *configArgs, "--ports-file", str(portsFile)),
            portsFile,
            logFile,
            env=environment,
            preexec=_defaultSigInt,
            stateDir=stateHome / "netd",
        )
        if config is not None:
            netd.configFile = configFile
        started.append(netd)
        if wait:
            netd.waitUntilReady()
        return netd

    return start


@pytest.fixture
def startNetd(tmp_path: Path) -> Iterator[object]:
    """
    A function that starts netd on a config text (L{None}: the embedded default
    config, no C{-c}) and returns a L{NetdProcess}, ready unless C{wait=False};
    every process started is stopped at teardown.
    """
    started: list[NetdProcess] = []
    yield _netdStarter(tmp_path, started)
    for netd in started:
        netd.kill()


@pytest.fixture(scope="module")
def startModuleNetd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """
    Like L{startNetd}, for a netd shared by the tests of one module (started by a
    module-scoped fixture); every process started is stopped after the module.
    """
    started: list[NetdProcess] = []
    yield _netdStarter(tmp_path_factory.mktemp("netd"), started)
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
