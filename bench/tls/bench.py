"""
netd's tls-echo against stunnel4 and hitch terminating TLS in front of an echo
backend, all on loopback, in one run, under the same load from bench/loadgen.

Three TLS servers, each with the same certificate (made by C{netd certs}: an
ECDSA P-256 development set; C{--key-types ecdsa rsa} adds an RSA-2048 one),
each on its own free loopback port:

- netd: one process with a tls-echo service (raw framing) per key type;
- stunnel4: one process, one service per key type, connecting to the backend;
- hitch: one process (one worker), one frontend per key type, to the backend.

The backend of stunnel and hitch is netd's own plain echo (the echo plugin,
raw framing) in a process of its own.  The servers (with the backend) run on
one CPU, the load generator on another.  For each server, with bench/loadgen's
TLS modes (OpenSSL's libssl, no certificate verification, a full handshake on
every connection):

- handshake: C{loadgen tls-handshake}, 16 connections at a time, each: a full
  handshake (no resumption), one 64-byte echo, close; per TLS version and key
  type; connections per second;
- rr: C{loadgen tls-rr}, 50 TLS 1.3 connections with one 64-byte message in
  flight on each; round trips per second;
- bulk: C{loadgen tls-bulk}, one TLS 1.3 connection echoing 64 KiB writes, at
  most 4 MiB in flight; MB/s (10^6 bytes);
- memory: freshly started servers, each one's resident size (VmRSS, with its
  worker processes) before and with 10,000 (C{--memory-connections})
  connections held open of one kind, a fresh set of servers per kind:
  C{idle 1.3} and C{idle 1.2} (C{loadgen tls-idle}: the handshake done, one
  echo, then silence), C{stall hello} (C{loadgen tls-stall}: a ClientHello
  sent, the server's answer left unread) and C{stall tcp} (C{loadgen stall}:
  connected, nothing sent; counted once the server holds a descriptor for
  each); KiB per connection.  The memory stunnel's and hitch's backend takes
  for their idle connections is shown apart: netd's tls-echo has no backend.

Each rate comes with the server's CPU over the measured window and the rate
per core of it: for stunnel and hitch, the CPU of the proxy and of its
backend together (the backend's work is part of serving the echo; netd's
tls-echo does it in the process that terminates TLS).  The plain backend is
measured with loadgen rr and bulk without TLS, for reference.  Rounds go
round-robin over the servers so that the machine's noise falls on all alike;
the table shows the median of the rounds and the ratios netd/stunnel and
netd/hitch.

Run from the repository root: bench/tls/run.sh (installs stunnel4, hitch and
libssl-dev with apt-get when missing), or .venv/bin/python bench/tls/bench.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402  (the path above makes it importable)
    Loadgen,
    benchCpus,
    buildLoadgen,
    cpuTime,
    machine,
    measureLoad,
    netdVersion,
    pinnedTo,
    publish,
    quietDaemonTable,
    raiseFilesLimit,
    say,
    startNetd,
    stopProcess,
    toolVersion,
    treeOpenFiles,
    treeResidentKiB,
)

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
KEY_TYPES = ("ecdsa", "rsa")
SERVERS = ("netd", "stunnel", "hitch")
VERSIONS = ("1.3", "1.2")
SCENARIOS = ("handshake", "rr", "bulk", "memory")
HANDSHAKE_CONCURRENCY = 16
RR_CONNECTIONS = 50
MEMORY_KINDS = {
    "idle 1.3": "idle, TLS 1.3",
    "idle 1.2": "idle, TLS 1.2",
    "stall hello": "stalled after its ClientHello",
    "stall tcp": "stalled before its ClientHello",
}
"""
The connections of the memory scenario, by kind, with their row labels.
"""
MAX_CONNECTIONS = 20000
"""
netd's max_connections: the memory scenario's connections must stay under 75% of it (where idle timeouts shrink).
"""
FILES = 65536
"""
The open-files limit asked for the servers (as root, past the hard limit, unless the machine withholds that): stunnel
and hitch hold two sockets per idle connection.
"""
FILES_SPARE = 200
"""
Open files a server keeps for its listeners, logs and event loop beside the connections it holds.
"""
SETTLE = 0.5
"""
Seconds between a server starting (or its connections opening) and reading its resident size.
"""
MEMORY_GOAL_KIB = 10
"""
Issue 18's goal: KiB of netd's resident size per idle or stalled TLS connection, at most.
"""
ACCEPT_TIMEOUT = 60.0
"""
Seconds a server may take to accept the connections of C{stall tcp}, which loadgen cannot see accepted.
"""


class Server:
    """
    One TLS server under test: its name, its port per key type, how to
    stop it, and its CPU seconds so far (with stunnel and hitch, the
    backend's too: it is part of serving the echo).
    """

    def __init__(
        self,
        name: str,
        ports: dict[str, int],
        cpu: Callable[[], float],
        stop: Callable[[], None],
        version: str,
        pid: int,
    ) -> None:
        self.name = name
        self.ports = ports
        self.cpu = cpu
        self.stop = stop
        self.version = version
        self.pid = pid


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 free right now (callers retry if it is taken meanwhile).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def tlsProbe(port: int, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> tuple[str, str] | None:
    """
    One TLS handshake with the server (no verification): its version and cipher, or None if it failed.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    try:
        with (
            socket.create_connection((HOST, port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as client,
        ):
            client.sendall(b"probe")
            client.settimeout(2)
            if client.recv(5) != b"probe":
                return None
            cipher = client.cipher()
            return client.version() or "?", cipher[0] if cipher else "?"
    except (OSError, ssl.SSLError):
        return None


def waitUntilServing(process: subprocess.Popen[bytes], ports: list[int], what: str, log: Path) -> None:
    """
    Poll until a TLS echo through every port works.
    """
    deadline = time.monotonic() + START_TIMEOUT
    for port in ports:
        while tlsProbe(port) is None:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                stopProcess(process)
                raise RuntimeError(
                    f"{what} did not serve TLS within {START_TIMEOUT} s:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)


# The servers.


def makeCertificates(directory: Path, keyTypes: list[str]) -> dict[str, Path]:
    """
    A development set per key type, made by C{netd certs --key-type TYPE}.
    """
    folders = {}
    for keyType in keyTypes:
        folder = directory / keyType
        subprocess.run(
            [sys.executable, "-m", "netd", "certs", "--out", str(folder), "--key-type", keyType],
            check=True,
            capture_output=True,
            timeout=60,
        )
        folders[keyType] = folder
    return folders


class Backend:
    """
    The plain echo behind stunnel and hitch: netd's echo plugin, raw framing.
    """

    def __init__(self, directory: Path, cpus: set[int] | None) -> None:
        config = (
            quietDaemonTable()
            + '\n[[services]]\nname = "backend"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\nframing = "raw"\n'
        )
        self.process, services, _ = startNetd(config, directory, "backend", cpus)
        self.port = int(services["backend"][0]["port"])  # type: ignore[call-overload]

    def stop(self) -> None:
        """
        Stop it by its PID.
        """
        stopProcess(self.process)


def startNetdTLS(certs: dict[str, Path], directory: Path, cpus: set[int] | None) -> Server:
    """
    netd with one tls-echo service (raw framing) per key type; room for
    the memory scenario's connections (max_connections, idle and
    handshake timeouts long enough to hold stalled ones).
    """
    lines = [quietDaemonTable()]
    for keyType, folder in certs.items():
        lines.append(
            f'[[services]]\nname = "tls-{keyType}"\nplugin = "tls-echo"\nlisten = ["tcp:0:interface={HOST}"]\nframing = "raw"\n'
            f"max_connections = {MAX_CONNECTIONS}\nidle_timeout = 3600\n"
            f'tls = {{ certificate = "{folder / "server.pem"}", private_key = "{folder / "server-key.pem"}", '
            "handshake_timeout = 600 }\n"
        )
    process, services, log = startNetd("\n".join(lines), directory, "netd", cpus)
    ports = {keyType: int(services[f"tls-{keyType}"][0]["port"]) for keyType in certs}  # type: ignore[call-overload]
    waitUntilServing(process, list(ports.values()), "netd", log)
    return Server("netd", ports, lambda: cpuTime(process.pid), lambda: stopProcess(process), netdVersion(), process.pid)


def stunnelExecutable() -> str | None:
    """
    stunnel4 (Debian's name) or stunnel.
    """
    return shutil.which("stunnel4") or shutil.which("stunnel")


def startStunnel(certs: dict[str, Path], backend: Backend, directory: Path, cpus: set[int] | None) -> Server:
    """
    stunnel in the foreground, one service per key type, each to the backend.
    """
    executable = stunnelExecutable()
    assert executable is not None
    for _ in range(5):
        ports = {keyType: freePort() for keyType in certs}
        config = directory / "stunnel.conf"
        sections = [
            "foreground = yes",
            "pid =",
            "syslog = no",
            "debug = 3",
            f"output = {directory / 'stunnel.log'}",
        ]
        for keyType, folder in certs.items():
            sections += [
                f"[{keyType}]",
                f"accept = {HOST}:{ports[keyType]}",
                f"connect = {HOST}:{backend.port}",
                f"cert = {folder / 'server.pem'}",
                f"key = {folder / 'server-key.pem'}",
                "sslVersionMin = TLSv1.2",
            ]
        config.write_text("\n".join(sections) + "\n")
        log = directory / "stunnel.out"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [executable, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=pinnedTo(cpus),
            )
        try:
            waitUntilServing(process, list(ports.values()), "stunnel", log)
        except RuntimeError:
            stopProcess(process)
            if "Address already in use" in log.read_text(errors="replace") + _read(directory / "stunnel.log"):
                continue
            raise
        version = toolVersion([executable, "-version"], r"(stunnel [0-9.]+)")

        def cpu() -> float:
            return cpuTime(process.pid, threadsComeAndGo=True) + cpuTime(backend.process.pid)  # noqa: B023 (returned at once; a thread per connection)

        return Server("stunnel", ports, cpu, lambda: stopProcess(process), version, process.pid)  # noqa: B023 (returned at once: the loop ends here)
    raise RuntimeError("stunnel found no free port")


def startHitch(certs: dict[str, Path], backend: Backend, directory: Path, cpus: set[int] | None) -> Server:
    """
    hitch in the foreground with one worker, one frontend per key type, to the backend.
    """
    executable = shutil.which("hitch") or "/usr/sbin/hitch"
    for _ in range(5):
        ports = {keyType: freePort() for keyType in certs}
        lines = [
            f'backend = "[{HOST}]:{backend.port}"',
            "workers = 1",
            "daemon = off",
            "syslog = off",
            "log-level = 1",
            "tls-protos = TLSv1.2 TLSv1.3",
            f'ocsp-dir = "{directory / "ocsp"}"',
            "ocsp-verify-staple = off",
        ]
        if os.geteuid() == 0:
            lines += ['user = "nobody"', 'group = "nogroup"']  # hitch refuses to run its workers as root
        for keyType, folder in certs.items():
            combined = directory / f"hitch-{keyType}.pem"
            combined.write_bytes((folder / "server-key.pem").read_bytes() + (folder / "server.pem").read_bytes())
            lines.append(
                f'frontend = {{\n  host = "{HOST}"\n  port = "{ports[keyType]}"\n  pem-file = "{combined}"\n}}'
            )
        (directory / "ocsp").mkdir(exist_ok=True)
        config = directory / "hitch.conf"
        config.write_text("\n".join(lines) + "\n")
        log = directory / "hitch.out"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [executable, f"--config={config}"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=pinnedTo(cpus),
            )
        try:
            waitUntilServing(process, list(ports.values()), "hitch", log)
        except RuntimeError:
            stopProcess(process)
            if "in use" in log.read_text(errors="replace"):
                continue
            raise
        version = toolVersion([executable, "--version"], r"(hitch [0-9.]+)")

        def cpu() -> float:
            return cpuTime(process.pid) + cpuTime(backend.process.pid)  # noqa: B023 (returned at once; hitch's worker is a child process)

        return Server("hitch", ports, cpu, lambda: stopProcess(process), version, process.pid)  # noqa: B023 (returned at once: the loop ends here)
    raise RuntimeError("hitch found no free port")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextmanager
def servers(
    directory: Path, names: list[str], keyTypes: list[str], cpus: set[int] | None
) -> Iterator[tuple[dict[str, Server], Backend]]:
    """
    The backend and the TLS servers, all on C{cpus}, stopped (by PID) on the way out.
    """
    certs = makeCertificates(directory, keyTypes)
    stops: list[Callable[[], None]] = []
    started: dict[str, Server] = {}
    try:
        backend = Backend(directory, cpus)
        stops.append(backend.stop)
        starters = {
            "netd": lambda: startNetdTLS(certs, directory, cpus),
            "stunnel": lambda: startStunnel(certs, backend, directory, cpus),
            "hitch": lambda: startHitch(certs, backend, directory, cpus),
        }
        for name in names:
            say(f"starting {name}")
            started[name] = starters[name]()
            stops.append(started[name].stop)
        yield started, backend
    finally:
        for stop in reversed(stops):
            stop()


# The measurements.


def loadArguments(scenario: str, options: argparse.Namespace) -> tuple[str, list[str]]:
    """
    The loadgen mode and arguments of a scenario (C{handshake 1.3},
    C{rr}, C{bulk}, and C{rr plain} or C{bulk plain} for the backend).
    """
    duration = ["--duration", str(options.duration)]
    if scenario.startswith("handshake"):
        concurrency = ["--concurrency", str(HANDSHAKE_CONCURRENCY), "--size", "64"]
        return "tls-handshake", [
            *concurrency,
            "--tls-version",
            scenario.split()[1],
            *duration,
            "--count",
            str(options.duration * 100_000),
        ]
    plain = scenario.endswith("plain")
    mode, version = ("", []) if plain else ("tls-", ["--tls-version", "1.3"])
    if scenario.startswith("rr"):
        warmup = ["--warmup", str(min(0.5, options.duration / 4)), "--count", str(options.duration * 2_000_000)]
        return mode + "rr", ["--connections", str(RR_CONNECTIONS), "--size", "64", *duration, *warmup, *version]
    return mode + "bulk", ["--bytes", str(options.bulk_mib * 2**20), *duration, *version]


def measure(
    binary: Path, scenario: str, port: int, cpu: Callable[[], float], options: argparse.Namespace, cpus: set[int] | None
) -> tuple[dict[str, float], str]:
    """
    One scenario against one server: the table's figures and the TLS version
    and cipher suite negotiated.
    """
    mode, arguments = loadArguments(scenario, options)
    result, figures = measureLoad(binary, mode, port, arguments, cpu, cpus, timeout=options.duration + 40)
    return figures, str(result.get("tls", "plain"))


def memoryRun(kind: str, connections: int) -> tuple[str, list[str]]:
    """
    The loadgen mode and arguments that hold C{connections} of a memory kind
    (L{MEMORY_KINDS}) open until its standard input closes.
    """
    hold = ["--connections", str(connections), "--concurrency", "32", "--duration", "120", "--hold", "120"]
    if kind.startswith("idle"):
        return "tls-idle", [*hold, "--size", "1", "--tls-version", kind.split()[1]]
    return ("tls-stall" if kind == "stall hello" else "stall"), hold


def waitForAccepts(pid: int, files: int) -> None:
    """
    Wait until a server (with its workers) holds C{files} descriptors: it
    has accepted connections that sent nothing.
    """
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    while treeOpenFiles(pid) < files:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the server holds {treeOpenFiles(pid)} descriptors, not {files}, after {ACCEPT_TIMEOUT} s"
            )
        time.sleep(0.1)


def measureMemory(
    binary: Path, server: Server, backend: Backend, kind: str, connections: int, cpus: set[int] | None
) -> dict[str, float]:
    """
    A fresh server's resident size (and its backend's, for stunnel and
    hitch) before and with C{connections} of one kind held open.
    """
    time.sleep(SETTLE)
    before, backendBefore = treeResidentKiB(server.pid), treeResidentKiB(backend.process.pid)
    files = treeOpenFiles(server.pid)
    mode, arguments = memoryRun(kind, connections)
    run = Loadgen(binary, mode, server.ports["ecdsa"], arguments, cpus, timeout=200)
    try:
        ready = run.next()
        if ready.get("event") != "ready":
            raise RuntimeError(
                f"{ready.get('open')} of {connections} opened ({ready.get('errors')} failed) in {ready.get('open_s')} s"
            )
        if kind == "stall tcp":
            waitForAccepts(server.pid, files + connections)
        time.sleep(SETTLE)
        during, backendDuring = treeResidentKiB(server.pid), treeResidentKiB(backend.process.pid)
    finally:
        run.close()
    return {
        "rss_before_mib": before / 1024,
        "rss_mib": during / 1024,
        "kib_per_connection": (during - before) / connections,
        "backend_kib_per_connection": (backendDuring - backendBefore) / connections,
        "open_s": float(ready["open_s"]),  # type: ignore[arg-type]
    }


def runMemory(
    binary: Path, directory: Path, options: argparse.Namespace, serverCpus: set[int] | None, loadCpus: set[int] | None
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """
    The memory scenario: per kind, a fresh set of servers, each measured
    once; the figures by kind and server, and the servers' versions.
    """
    memory: dict[str, dict[str, dict[str, float]]] = {}
    versions: dict[str, str] = {}
    failures: list[str] = options.memory_failures
    for index, kind in enumerate(options.memory_kinds):
        folder = directory / f"memory-{index}"
        folder.mkdir()
        with servers(folder, options.servers, ["ecdsa"], serverCpus) as (started, backend):
            for name, server in started.items():
                sockets = 2 if name != "netd" and kind.startswith("idle") else 1  # a backend connection each
                if sockets * options.memory_connections + FILES_SPARE > options.files:
                    say(f"memory: {name} skipped for {kind}: the open-files limit is {options.files}")
                    continue
                say(f"memory: {name} with {options.memory_connections:,} connections {MEMORY_KINDS[kind]}")
                try:
                    memory.setdefault(kind, {})[name] = measureMemory(
                        binary, server, backend, kind, options.memory_connections, loadCpus
                    )
                except RuntimeError as e:  # a server that cannot hold them all: said, and the others go on
                    say(f"memory: {name} {kind}: {e}")
                    failures.append(f"{name} {MEMORY_KINDS[kind]}: {e}")
                versions[name] = server.version
    return memory, versions


def runRates(
    binary: Path,
    directory: Path,
    scenarios: list[str],
    options: argparse.Namespace,
    serverCpus: set[int] | None,
    loadCpus: set[int] | None,
) -> tuple[dict[str, dict[str, list[dict[str, float]]]], dict[str, dict[str, str]], dict[str, str]]:
    """
    The rate scenarios, round-robin over one set of servers: every round's
    figures, the version and cipher negotiated, the servers' versions.
    """
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    negotiated: dict[str, dict[str, str]] = {}
    with servers(directory, options.servers, options.key_types, serverCpus) as (started, backend):
        for round in range(options.rounds):
            for scenario in scenarios:
                for keyType in options.key_types if scenario.startswith("handshake") else ["ecdsa"]:
                    label = f"{scenario} {keyType}" if scenario.startswith("handshake") else scenario
                    for name, server in started.items():
                        say(f"round {round + 1}/{options.rounds}: {name} {label}")
                        figures, tls = measure(binary, scenario, server.ports[keyType], server.cpu, options, loadCpus)
                        raw.setdefault(label, {}).setdefault(name, []).append(figures)
                        negotiated.setdefault(label, {})[name] = tls
            if options.plain_reference:
                for scenario in ("rr", "bulk"):
                    if scenario in options.scenarios:
                        say(f"round {round + 1}/{options.rounds}: plain backend {scenario}")
                        figures, _ = measure(
                            binary,
                            f"{scenario} plain",
                            backend.port,
                            lambda: cpuTime(backend.process.pid),
                            options,
                            loadCpus,
                        )
                        raw.setdefault(scenario, {}).setdefault("plain echo (no TLS)", []).append(figures)
        return raw, negotiated, {name: server.version for name, server in started.items()}


def run(options: argparse.Namespace) -> dict[str, object]:
    """
    Every measurement: the rates round-robin over the servers (their
    medians), then the memory scenario.
    """
    info = machine()
    binary = buildLoadgen()
    serverCpus, loadCpus = benchCpus()
    scenarios = [f"handshake {version}" for version in options.versions if "handshake" in options.scenarios]
    scenarios += [scenario for scenario in ("rr", "bulk") if scenario in options.scenarios]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    negotiated: dict[str, dict[str, str]] = {}
    versions: dict[str, str] = {}
    memory: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="netd-tls-bench-") as temporary:
        if scenarios:
            raw, negotiated, versions = runRates(binary, Path(temporary), scenarios, options, serverCpus, loadCpus)
        if "memory" in options.scenarios:
            memory, versions = runMemory(binary, Path(temporary), options, serverCpus, loadCpus)
    medians = {
        label: {
            name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            for name, rounds in byServer.items()
        }
        for label, byServer in raw.items()
    }
    return {
        "machine": info,
        "versions": versions,
        "negotiated": negotiated,
        "pinned": {"server": sorted(serverCpus or []), "loadgen": sorted(loadCpus or [])},
        "medians": medians,
        "rounds": raw,
        "memory": memory,
    }


def describeNegotiated(negotiated: dict[str, dict[str, str]], names: list[str]) -> str:
    """
    The version and cipher each server agreed on with the load generator, per
    scenario; once for all servers when they agree.
    """
    parts = []
    for label, byServer in negotiated.items():
        values = {name: byServer.get(name, "?") for name in names}
        if len(set(values.values())) == 1:
            parts.append(f"{label}: {next(iter(values.values()))} (all)")
        else:
            parts.append(f"{label}: " + ", ".join(f"{name} {value}" for name, value in values.items()))
    return "; ".join(parts)


def report(result: dict[str, object], options: argparse.Namespace) -> str:
    """
    The results as Markdown: the machine, the settings, the table with ratios.
    """
    info: dict[str, str] = result["machine"]  # type: ignore[assignment]
    versions: dict[str, str] = result["versions"]  # type: ignore[assignment]
    medians: dict[str, dict[str, dict[str, float]]] = result["medians"]  # type: ignore[assignment]
    negotiated: dict[str, dict[str, str]] = result["negotiated"]  # type: ignore[assignment]
    pinned: dict[str, list[int]] = result["pinned"]  # type: ignore[assignment]
    names = [name for name in SERVERS if name in options.servers]
    placement = (
        f"servers (and the backend) pinned to CPU {pinned['server']}, loadgen to CPU {pinned['loadgen']}"
        if pinned["server"]
        else "no pinning (one CPU)"
    )
    lines = [
        f"### TLS echo, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs (nproc {info['nproc']}), {info['cpu']}, {info['kernel']}, load average before the run {info['load']}",
        f"- software: Python {info['python']} ({info['python_ssl']}), Twisted {info['twisted']}, pyOpenSSL {info['pyopenssl']}, "
        f"loadgen with {info['openssl']}; " + "; ".join(f"{name}: {version}" for name, version in versions.items()),
        f"- settings: bench/loadgen (C, epoll, one thread, libssl; no verification, no resumption); {placement}; "
        f"handshake: {HANDSHAKE_CONCURRENCY} at a time, full handshake, one 64-byte echo, close; rr: {RR_CONNECTIONS} TLS 1.3 connections, "
        f"one 64-byte message in flight each; bulk: {options.bulk_mib} MiB through one TLS 1.3 connection; {options.duration} s runs "
        f"(bulk: at most); medians of {options.rounds} round(s); stunnel and hitch (1 worker) in front of netd's plain echo; all on 127.0.0.1",
        "- CPU: cores used over the measured window (1.00 = one core busy), for stunnel and hitch their backend's included; "
        "per core: the rate divided by that share",
        "- negotiated: " + describeNegotiated(negotiated, names),
        "",
    ]
    if medians:
        lines += [
            "| scenario | server | rate | server CPU | per server core | loadgen CPU | p50 / p99 µs | netd/server rate | netd/server per core |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    for label, byServer in medians.items():
        netd = byServer.get("netd")
        for name, m in byServer.items():
            digits = 1 if label == "bulk" else 0
            latency = f"{m['p50_us']:,.0f} / {m['p99_us']:,.0f}" if "p50_us" in m else "-"
            peer = name in names and name != "netd"
            ratio = f"{netd['rate'] / m['rate']:.2f}" if netd and peer and m["rate"] else "-"
            ratioPerCore = f"{netd['per_core'] / m['per_core']:.2f}" if netd and peer and m["per_core"] else "-"
            unit = {"rr": "msg/s", "bulk": "MB/s"}.get(label, "handshakes/s")
            lines.append(
                f"| {label} ({unit}) | {name} | {m['rate']:,.{digits}f} | {m['server_cpu']:.2f} | {m['per_core']:,.{digits}f} | "
                f"{m['loadgen_cpu']:.2f} | {latency} | {ratio} | {ratioPerCore} |"
            )
    for label, byServer in medians.items():
        for name, m in byServer.items():
            if m.get("errors"):
                lines.append(f"- {name}, {label}: {m['errors']:,.0f} connections failed (median per run)")
    memory: dict[str, dict[str, dict[str, float]]] = result["memory"]  # type: ignore[assignment]
    if memory:
        lines += ["", *memoryTable(memory, options.memory_connections)]
        failed = options.memory_failures
        lines += [f"- not measured: {failure}" for failure in failed]
        skipped = [
            f"{name} {MEMORY_KINDS[kind]}"
            for kind in options.memory_kinds
            for name in names
            if name not in memory.get(kind, {})
            and not any(f.startswith(f"{name} {MEMORY_KINDS[kind]}:") for f in failed)
        ]
        if skipped:
            lines.append(
                f"- not measured: {', '.join(skipped)} (two sockets per connection past this machine's open-files "
                f"limit, {options.files:,})"
            )
    lines.append("")
    return "\n".join(lines)


def memoryTable(memory: dict[str, dict[str, dict[str, float]]], connections: int) -> list[str]:
    """
    The memory scenario's table: per kind and server, the resident sizes,
    KiB per connection (the goal: at most L{MEMORY_GOAL_KIB} for netd) and
    the backend's share for stunnel and hitch.
    """
    lines = [
        f"| memory, {connections:,} connections | server | RSS at start (MiB) | RSS with them (MiB) | KiB per connection "
        "| its backend, KiB per connection | seconds to open them | netd/server KiB per connection |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, byServer in memory.items():
        netd = byServer.get("netd")
        for name, m in byServer.items():
            ratio = (
                f"{netd['kib_per_connection'] / m['kib_per_connection']:.2f}"
                if netd and name != "netd" and m["kib_per_connection"] > 0
                else "-"
            )
            backend = f"{m['backend_kib_per_connection']:.2f}" if name != "netd" else "-"
            lines.append(
                f"| {MEMORY_KINDS[kind]} | {name} | {m['rss_before_mib']:.1f} | {m['rss_mib']:.1f} | "
                f"{m['kib_per_connection']:.2f} | {backend} | {m['open_s']:.2f} | {ratio} |"
            )
    worst = max(
        (byServer["netd"]["kib_per_connection"] for byServer in memory.values() if "netd" in byServer), default=None
    )
    if worst is not None:
        verdict = "met" if worst <= MEMORY_GOAL_KIB else "not met"
        lines.append(
            f"- goal (issue 18): at most {MEMORY_GOAL_KIB} KiB per idle or stalled TLS connection in netd: {verdict} "
            f"(the most: {worst:.2f} KiB)"
        )
    return lines


def main() -> None:
    """
    Parse the options, check the tools, run, print and (with --record) record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=3, help="seconds of each measurement (1-60)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all servers; the medians are reported")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument(
        "--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS, help="TLS versions of the handshake runs"
    )
    parser.add_argument(
        "--key-types",
        nargs="+",
        default=["ecdsa"],
        choices=KEY_TYPES,
        help="certificates of the handshake runs (rr and bulk: ecdsa)",
    )
    parser.add_argument(
        "--bulk-mib",
        type=int,
        default=1024,
        help="MiB through the bulk connection (the run also ends after --duration)",
    )
    parser.add_argument(
        "--no-plain-reference",
        dest="plain_reference",
        action="store_false",
        help="skip the plain backend's rr and bulk runs",
    )
    parser.add_argument(
        "--memory-connections",
        type=int,
        default=10000,
        help=f"connections held open per kind by the memory scenario (1-{MAX_CONNECTIONS * 3 // 4})",
    )
    parser.add_argument(
        "--memory-kinds",
        nargs="+",
        default=list(MEMORY_KINDS),
        choices=MEMORY_KINDS,
        help="the kinds of connection the memory scenario holds",
    )
    parser.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md (newest first)")
    parser.add_argument("--json", type=Path, help="also write every round's numbers to this file")
    options = parser.parse_args()
    if "netd" not in options.servers:
        parser.error("--servers must include netd (the ratios are netd's)")
    if not 1 <= options.duration <= 60 or options.rounds < 1 or options.bulk_mib < 1:
        parser.error("--duration is 1-60 s, --rounds and --bulk-mib at least 1")
    if not 1 <= options.memory_connections <= MAX_CONNECTIONS * 3 // 4:
        parser.error(f"--memory-connections is 1-{MAX_CONNECTIONS * 3 // 4}")
    options.files = raiseFilesLimit(FILES) if "memory" in options.scenarios else 0
    options.memory_failures = []
    if "memory" in options.scenarios and options.files < options.memory_connections + FILES_SPARE:
        parser.error(
            f"the open-files limit here is {options.files}: --memory-connections at most {options.files - FILES_SPARE}"
        )
    if "ecdsa" not in options.key_types:
        options.key_types.insert(0, "ecdsa")  # rr and bulk use the ECDSA certificate
    tools = [("openssl", shutil.which("openssl"))]
    if "stunnel" in options.servers:
        tools.append(("stunnel4", stunnelExecutable()))
    if "hitch" in options.servers:
        tools.append(
            ("hitch", shutil.which("hitch") or (os.access("/usr/sbin/hitch", os.X_OK) and "/usr/sbin/hitch") or None)
        )
    missing = [tool for tool, found in tools if not found]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}; bench/tls/run.sh installs them (apt-get)")
    result = run(options)
    publish(report(result, options), result, options.json, options.record)


if __name__ == "__main__":
    main()
