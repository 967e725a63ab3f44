"""
netd's proxy plugin against HAProxy, socat, hitch and stunnel relaying to the
same C echo backend, all on loopback, in one run, under the same load from
bench/loadgen.

What runs, each on its own free loopback port, each stopped by its PID:

- the backend: bench/proxy/echo_backend.c (C, epoll, one thread), the
  upstream of every proxy, pinned to the load generator's CPU so that the
  server CPU holds the proxy under test alone;
- netd: one process with a C{proxy} service to the backend and one with a
  C{tls} table (TLS terminated, plain bytes to the backend), on its default
  reactor (uvloop's); netd-epoll: the same on netd's epoll reactor
  (C{NETD_REACTOR=netd}), measured beside it as the echo benchmark does;
- HAProxy: C{mode tcp}, C{nbthread 1}, in the foreground;
- socat: C{TCP-LISTEN:PORT,fork,reuseaddr TCP:127.0.0.1:BACKEND}, a process per
  connection (all of them pinned to the server CPU, their CPU summed from /proc);
- hitch (one worker) and stunnel4, terminating TLS in front of the backend.

Scenarios, each measured by bench/loadgen on the second CPU while the proxies
run on the first:

- rr: 50 connections, one 64-byte message in flight on each, through
  netd, HAProxy and socat; round trips per second;
- bulk: 1 GiB (--quick: 128 MiB) through one connection, the echo read
  meanwhile; MB/s;
- tls-handshake: 16 at a time: connect, a full TLS 1.3 handshake, one 64-byte
  echo, close; through netd, hitch and stunnel; handshakes per second;
- tls-bulk: 128 MiB (--quick: 32 MiB) through one TLS 1.3 connection; MB/s;
- memory: a fresh netd (each reactor; HAProxy for reference), its resident size before
  and with 10,000 (--quick: 1,000) idle proxied connection pairs open, each
  proven by a one-byte echo through the proxy; KiB per pair.

Every rate comes with the proxy's CPU over the measured window, the rate per
core of it, and the backend's and the load generator's CPU (both on the
second CPU).  Rounds go round-robin over the proxies so that the machine's
noise falls on all alike; the tables show each figure's median over the
rounds, the ratios of netd to each peer and, last, the issue's goals beside
the ratios measured.

Run from the repository root: bench/proxy/run.sh (installs HAProxy, socat,
hitch, stunnel4 and a C compiler with apt-get when missing), or
.venv/bin/python bench/proxy/bench.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402  (the path above makes it importable)
    BUILD,
    Loadgen,
    benchCpus,
    buildLoadgen,
    cpuTime,
    launch,
    machine,
    netdVersion,
    pinnedTo,
    publish,
    quietDaemonTable,
    raiseFilesLimit,
    residentKiB,
    say,
    startNetd,
    stopProcess,
    toolVersion,
)


def _tlsBench() -> ModuleType:
    """
    bench/tls/bench.py, for its certificates and TLS probe (a module of the same name as this one).
    """
    spec = importlib.util.spec_from_file_location("tlsbench", ROOT / "bench" / "tls" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tlsbench = _tlsBench()

HOST = "127.0.0.1"
BACKEND_SOURCE = ROOT / "bench" / "proxy" / "echo_backend.c"
SERVERS = ("netd", "netd-epoll", "haproxy", "socat", "hitch", "stunnel")
NETD_REACTORS = {"netd": "uvloop", "netd-epoll": "netd"}
"""
The netds measured, and the reactor (C{NETD_REACTOR}) each runs on: netd's default, and its epoll one.
"""
SCENARIOS = ("rr", "bulk", "tls-handshake", "tls-bulk", "memory")
MEMORY_SERVERS = ("netd", "netd-epoll", "haproxy")
LABELS = {
    "rr": "round trips, 64 B × 50 connections (round trips/s)",
    "bulk": "bulk, one connection (MB/s)",
    "tls-handshake": "TLS 1.3 handshake and one echo (handshakes/s)",
    "tls-bulk": "TLS 1.3 bulk, one connection (MB/s)",
}
DIRECT = "backend direct (no proxy)"
RR_CONNECTIONS = 50
HANDSHAKE_CONCURRENCY = 16
MAX_CONNECTIONS = 25000
FILES = 65536
"""
The open-files limit asked for the proxies (as root, past the hard limit): 10,000 idle pairs are 20,000 sockets.
"""
FILES_SPARE = 200
"""
Open files a proxy keeps for its listeners, logs and event loop beside its idle pairs' sockets.
"""
SETTLE = 0.5
"""
Seconds between a proxy starting (or its idle pairs opening) and reading its resident size.
"""
SETTLE_TIMEOUT = 2.0
"""
Seconds a forking proxy may take to reap its children after a run.
"""
STEADY_SHARE = 0.9
"""
The share of a run of fixed duration over which the proxy's CPU is sampled, from its start.
"""
START_TIMEOUT = 20.0
GOALS = (
    ("rr", "socat", 1.0),
    ("rr", "haproxy", 0.6),
    ("bulk", "haproxy", 0.7),
    ("tls-handshake", "hitch", 1.0),
    ("tls-bulk", "hitch", 1.0),
)
"""
Issue 16's goals: netd's rate per server core over the peer's, at least this much.
"""


def pairsAllowed(files: int) -> int:
    """
    The idle proxied pairs a proxy can hold with C{files} open files: two
    sockets each, and room for its listeners, logs and event loop.
    """
    return (files - FILES_SPARE) // 2


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 free right now (callers retry if it is taken meanwhile).
    """
    port: int = tlsbench.freePort()
    return port


def plainProbe(port: int) -> bool:
    """
    Whether five bytes sent through the port come back (through a proxy: from the backend).
    """
    try:
        with socket.create_connection((HOST, port), timeout=2) as probe:
            probe.sendall(b"probe")
            received = b""
            while len(received) < 5:
                chunk = probe.recv(5 - len(received))
                if not chunk:
                    return False
                received += chunk
            return received == b"probe"
    except OSError:
        return False


def waitUntilRelaying(process: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    """
    Poll until an echo through the port works; raise with the end of the log if the process exits or takes too long.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while not plainProbe(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stopProcess(process)
            raise RuntimeError(f"{what} did not relay:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def childPids(pid: int) -> list[int]:
    """
    The PIDs of a process's children (of all its threads), live or not yet reaped.
    """
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


# The backend.


def buildBackend() -> Path:
    """
    bench/proxy/echo_backend.c, compiled into bench/build/ when missing or older than its source.
    """
    binary = BUILD / "echo_backend"
    if binary.exists() and binary.stat().st_mtime >= BACKEND_SOURCE.stat().st_mtime:
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc) to build bench/proxy/echo_backend.c; bench/setup-tools.sh installs gcc")
    BUILD.mkdir(parents=True, exist_ok=True)
    say(f"building {binary} with {compiler}")
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(BACKEND_SOURCE)], check=True, timeout=120
    )
    return binary


class Backend:
    """
    The C echo every proxy relays to, on the load generator's CPU; it exits
    when its standard input (a pipe from here) closes.
    """

    def __init__(self, binary: Path, cpus: set[int] | None) -> None:
        self.process = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=pinnedTo(cpus)
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("the echo backend did not start")
        self.port = int(json.loads(line)["port"])

    def cpu(self) -> float:
        """
        Its CPU seconds so far.
        """
        return cpuTime(self.process.pid)

    def settle(self) -> None:
        """
        Nothing to wait for after a run: one process.
        """

    def stop(self) -> None:
        """
        Close its standard input and stop it by its PID.
        """
        assert self.process.stdin is not None
        self.process.stdin.close()
        stopProcess(self.process)


# The proxies.


class Server:
    """
    One proxy under test: its name, its port per scenario kind (C{plain},
    C{tls}), its CPU seconds so far, how to stop it, its version and its PID.
    """

    def __init__(
        self,
        name: str,
        ports: dict[str, int],
        process: subprocess.Popen[bytes],
        version: str,
        threadsComeAndGo: bool = False,
        forksPerConnection: bool = False,
    ) -> None:
        self.name = name
        self.ports = ports
        self.process = process
        self.version = version
        self.threadsComeAndGo = threadsComeAndGo
        self.forksPerConnection = forksPerConnection

    def cpu(self) -> float:
        """
        CPU seconds of the proxy and every process it forked (socat's children, hitch's worker).
        """
        return cpuTime(self.process.pid, threadsComeAndGo=self.threadsComeAndGo)

    def settle(self) -> None:
        """
        After a run, wait (2 s at most) until a proxy that forks per
        connection has reaped every child, so that their time is its own.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.forksPerConnection and childPids(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        """
        SIGTERM by PID (SIGKILL if it lingers).
        """
        stopProcess(self.process)


def netdConfig(backend: int, certs: Path | None) -> str:
    """
    netd's proxy services to the backend: C{plain}, and C{tls} terminating
    TLS with the certificate in C{certs} (none when L{None}).
    """
    common = (
        f'plugin = "proxy"\nlisten = ["tcp:0:interface={HOST}"]\nupstream = "tcp:{HOST}:{backend}"\n'
        f"idle_timeout = 3600\nmax_connections = {MAX_CONNECTIONS}\n"
    )
    services = [f'[[services]]\nname = "plain"\n{common}']
    if certs is not None:
        services.append(
            f'[[services]]\nname = "tls"\n{common}'
            f'tls = {{ certificate = "{certs / "server.pem"}", private_key = "{certs / "server-key.pem"}" }}\n'
        )
    return quietDaemonTable() + "\n" + "\n".join(services)


def startNetdProxy(name: str, backend: Backend, certs: Path | None, directory: Path, cpus: set[int] | None) -> Server:
    """
    netd with its proxy services, once its ports file is written and both relay.
    """
    process, services, log = startNetd(
        netdConfig(backend.port, certs), directory, name, cpus, reactor=NETD_REACTORS[name]
    )
    ports = {kind: int(services[kind][0]["port"]) for kind in services}  # type: ignore[call-overload]
    waitUntilRelaying(process, ports["plain"], name, log)
    if "tls" in ports:
        tlsbench.waitUntilServing(process, [ports["tls"]], name, log)
    return Server(name, ports, process, f"{netdVersion()} (NETD_REACTOR={NETD_REACTORS[name]})")


def haproxyConfig(port: int, backend: int, maxconn: int | None = None) -> str:
    """
    HAProxy relaying TCP from C{port} to the backend: one thread, no logs,
    long idle timeouts, and C{maxconn} connections at most, by default as
    many as the open-files limit allows (it needs two files for each, and
    refuses to start when its C{maxconn} needs more).
    """
    if maxconn is None:
        maxconn = min(MAX_CONNECTIONS, pairsAllowed(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    return (
        "global\n"
        "    nbthread 1\n"
        f"    maxconn {maxconn}\n"
        "defaults\n"
        "    mode tcp\n"
        f"    maxconn {maxconn}\n"
        "    timeout connect 5s\n"
        "    timeout client 1h\n"
        "    timeout server 1h\n"
        "frontend plain\n"
        f"    bind {HOST}:{port}\n"
        "    default_backend echo\n"
        "backend echo\n"
        f"    server echo {HOST}:{backend}\n"
    )


def startHaproxy(backend: Backend, directory: Path, cpus: set[int] | None) -> Server:
    """
    HAProxy in the foreground (C{-db}), once it relays.
    """
    for _ in range(5):
        port = freePort()
        config = directory / "haproxy.cfg"
        config.write_text(haproxyConfig(port, backend.port))
        log = directory / "haproxy.log"
        process = launch(["haproxy", "-db", "-f", str(config)], log, cpus)
        try:
            waitUntilRelaying(process, port, "haproxy", log)
        except RuntimeError:
            if "in use" in log.read_text(errors="replace"):
                continue
            raise
        return Server("haproxy", {"plain": port}, process, toolVersion(["haproxy", "-v"], r"(HAProxy version \S+)"))
    raise RuntimeError("haproxy found no free port")


def startSocat(backend: Backend, directory: Path, cpus: set[int] | None) -> Server:
    """
    socat forking a child per connection (all on C{cpus}), each relaying to
    the backend, with its default 8 KiB buffer and a listen backlog of 50
    (Twisted's; socat's default of 5 drops SYNs of 50 connections made at once).
    """
    for _ in range(5):
        port = freePort()
        log = directory / "socat.log"
        command = ["socat", f"TCP-LISTEN:{port},bind={HOST},fork,reuseaddr,backlog=50", f"TCP:{HOST}:{backend.port}"]
        process = launch(command, log, cpus)
        try:
            waitUntilRelaying(process, port, "socat", log)
        except RuntimeError:
            continue
        version = toolVersion(["socat", "-V"], r"(socat version \S+)")
        return Server("socat", {"plain": port}, process, version, forksPerConnection=True)
    raise RuntimeError(f"socat did not start:\n{(directory / 'socat.log').read_text(errors='replace')[-2000:]}")


def startHitch(backend: Backend, certs: Path, directory: Path, cpus: set[int] | None) -> Server:
    """
    hitch in the foreground with one worker, in front of the backend (its
    PEM file holds the key and the certificate).
    """
    executable = shutil.which("hitch") or "/usr/sbin/hitch"
    combined = directory / "hitch.pem"
    combined.write_bytes((certs / "server-key.pem").read_bytes() + (certs / "server.pem").read_bytes())
    (directory / "ocsp").mkdir(exist_ok=True)
    for _ in range(5):
        port = freePort()
        lines = [
            f'backend = "[{HOST}]:{backend.port}"',
            "workers = 1",
            "daemon = off",
            "syslog = off",
            "log-level = 1",
            "tls-protos = TLSv1.2 TLSv1.3",
            f'ocsp-dir = "{directory / "ocsp"}"',
            "ocsp-verify-staple = off",
            f'frontend = {{\n  host = "{HOST}"\n  port = "{port}"\n  pem-file = "{combined}"\n}}',
        ]
        if os.geteuid() == 0:
            lines += ['user = "nobody"', 'group = "nogroup"']  # hitch refuses to run its workers as root
        config = directory / "hitch.conf"
        config.write_text("\n".join(lines) + "\n")
        log = directory / "hitch.log"
        process = launch([executable, f"--config={config}"], log, cpus)
        try:
            tlsbench.waitUntilServing(process, [port], "hitch", log)
        except RuntimeError:
            stopProcess(process)
            if "in use" in log.read_text(errors="replace"):
                continue
            raise
        return Server("hitch", {"tls": port}, process, toolVersion([executable, "--version"], r"(hitch [0-9.]+)"))
    raise RuntimeError("hitch found no free port")


def startStunnel(backend: Backend, certs: Path, directory: Path, cpus: set[int] | None) -> Server:
    """
    stunnel in the foreground, one service in front of the backend; a thread
    per connection, so its CPU is read from /proc/PID/stat (which keeps the
    time of exited threads).
    """
    executable = tlsbench.stunnelExecutable()
    assert executable is not None
    for _ in range(5):
        port = freePort()
        config = directory / "stunnel.conf"
        config.write_text(
            "\n".join(
                [
                    "foreground = yes",
                    "pid =",
                    "syslog = no",
                    "debug = 3",
                    f"output = {directory / 'stunnel.log'}",
                    "[tls]",
                    f"accept = {HOST}:{port}",
                    f"connect = {HOST}:{backend.port}",
                    f"cert = {certs / 'server.pem'}",
                    f"key = {certs / 'server-key.pem'}",
                    "sslVersionMin = TLSv1.2",
                ]
            )
            + "\n"
        )
        log = directory / "stunnel.out"
        process = launch([executable, str(config)], log, cpus)
        try:
            tlsbench.waitUntilServing(process, [port], "stunnel", log)
        except RuntimeError:
            stopProcess(process)
            if "Address already in use" in log.read_text(errors="replace") + _read(directory / "stunnel.log"):
                continue
            raise
        version = toolVersion([executable, "-version"], r"(stunnel [0-9.]+)")
        return Server("stunnel", {"tls": port}, process, version, threadsComeAndGo=True)
    raise RuntimeError("stunnel found no free port")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextmanager
def servers(
    names: list[str], backend: Backend, certs: Path | None, directory: Path, cpus: set[int] | None
) -> Iterator[dict[str, Server]]:
    """
    The proxies named, on C{cpus}, stopped (by PID) on the way out.
    """
    started: dict[str, Server] = {}
    try:
        for name in names:
            say(f"starting {name}")
            if name in NETD_REACTORS:
                started[name] = startNetdProxy(name, backend, certs, directory, cpus)
            elif name == "haproxy":
                started[name] = startHaproxy(backend, directory, cpus)
            elif name == "socat":
                started[name] = startSocat(backend, directory, cpus)
            else:
                assert certs is not None
                starter = startHitch if name == "hitch" else startStunnel
                started[name] = starter(backend, certs, directory, cpus)
        yield started
    finally:
        for server in reversed(started.values()):
            server.stop()


# The measurements.


def loadArguments(scenario: str, options: argparse.Namespace) -> tuple[str, list[str], float]:
    """
    The loadgen mode, its arguments and the seconds it may take, of a scenario.
    """
    duration = ["--duration", str(options.duration)]
    if scenario.endswith("rr"):
        warmup = ["--warmup", str(min(0.5, options.duration / 4)), "--count", str(int(options.duration * 2_000_000))]
        arguments = ["--connections", str(RR_CONNECTIONS), "--size", "64", *duration, *warmup]
        return "rr", arguments, options.duration + 30
    if scenario.endswith("bulk"):
        tls = scenario.startswith("tls")
        mib = options.tls_bulk_mib if tls else options.bulk_mib
        arguments = ["--bytes", str(mib * 2**20), "--duration", str(options.bulk_timeout)]
        if tls:
            return "tls-bulk", [*arguments, "--tls-version", "1.3"], options.bulk_timeout + 30
        return "bulk", arguments, options.bulk_timeout + 30
    concurrency = ["--concurrency", str(HANDSHAKE_CONCURRENCY), "--size", "64", "--tls-version", "1.3"]
    return (
        "tls-handshake",
        [*concurrency, *duration, "--count", str(int(options.duration * 100_000))],
        options.duration + 30,
    )


def measure(
    binary: Path,
    scenario: str,
    port: int,
    server: Server | Backend,
    backend: Backend,
    options: argparse.Namespace,
    cpus: set[int] | None,
) -> tuple[dict[str, float], str]:
    """
    One scenario through one proxy (or straight to the backend): the
    figures of the table (as L{benchlib.measureLoad}'s, with the backend's
    CPU over the same window) and the TLS version and cipher negotiated.

    The proxy's CPU is sampled where its work is steady, not when the load
    generator exits: then its connections close and socat's children, one
    per connection, exit, and for an instant are neither counted among the
    live processes nor yet in their parent's time of reaped children.  So a
    run of fixed duration is sampled from its start to nine tenths of it;
    a bulk run, whose end is its last byte, from its start to when the
    proxy has settled after it (socat's child reaped), its CPU divided by
    the load generator's own elapsed time.
    """
    mode, arguments, timeout = loadArguments(scenario, options)
    run = Loadgen(binary, mode, port, arguments, cpus, timeout)
    try:
        started = run.next()
        if started.get("event") != "start":
            raise RuntimeError(f"loadgen said {started}")
        cpuBefore, backendBefore, timeBefore = server.cpu(), backend.cpu(), time.monotonic()
        if mode.endswith("bulk"):
            result = run.next()
            server.settle()
            cpuAfter, backendAfter = server.cpu(), backend.cpu()
            elapsed = float(result["elapsed_s"])  # type: ignore[arg-type]
        else:
            time.sleep(options.duration * STEADY_SHARE)
            cpuAfter, backendAfter, elapsed = server.cpu(), backend.cpu(), time.monotonic() - timeBefore
            result = run.next()
    finally:
        run.close()
    if run.process.returncode:
        raise RuntimeError(f"{' '.join(run.command)} exited {run.process.returncode}: {run.errors()}")
    if mode.endswith("bulk") and not result["complete"]:
        raise RuntimeError(
            f"{scenario} through port {port}: only {result['bytes']} bytes within {options.bulk_timeout} s"
        )
    rate = float(result["rate"])  # type: ignore[arg-type]
    cores = (cpuAfter - cpuBefore) / elapsed
    figures = {
        "rate": rate,
        "server_cpu": cores,
        "per_core": rate / cores if cores > 0 else 0.0,
        "backend_cpu": (backendAfter - backendBefore) / elapsed,
        "loadgen_cpu": float(result["cpu_s"]) / float(result["elapsed_s"]),  # type: ignore[arg-type]
    }
    for key in ("p50_us", "p99_us", "errors"):
        if key in result:
            figures[key] = float(result[key])  # type: ignore[arg-type]
    return figures, str(result.get("tls", "plain"))


def measureMemory(
    binary: Path,
    name: str,
    backend: Backend,
    directory: Path,
    options: argparse.Namespace,
    serverCpus: set[int] | None,
    loadCpus: set[int] | None,
) -> dict[str, float]:
    """
    A fresh proxy's resident size before and with C{--idle-pairs} idle
    proxied connections open, each proven by a one-byte echo from the backend.
    """
    with servers([name], backend, None, directory, serverCpus) as started:
        server = started[name]
        time.sleep(SETTLE)
        before = residentKiB(server.process.pid)
        arguments = ["--connections", str(options.idle_pairs), "--concurrency", "32", "--size", "1"]
        run = Loadgen(
            binary, "idle", server.ports["plain"], [*arguments, "--duration", "120", "--hold", "60"], loadCpus, 200
        )
        try:
            ready = run.next()
            if ready.get("event") != "ready":
                raise RuntimeError(f"loadgen said {ready}")
            time.sleep(SETTLE)
            during = residentKiB(server.process.pid)
        finally:
            run.close()
    return {
        "rss_before_mib": before / 1024,
        "rss_idle_mib": during / 1024,
        "kib_per_pair": (during - before) / options.idle_pairs,
        "open_s": float(ready["open_s"]),  # type: ignore[arg-type]
    }


def run(options: argparse.Namespace) -> dict[str, object]:
    """
    Every measurement, round-robin over the proxies; the medians.
    """
    info = machine(
        haproxy=toolVersion(["haproxy", "-v"], r"HAProxy version (\S+)"),
        socat=toolVersion(["socat", "-V"], r"socat version (\S+)"),
    )
    loadgen = buildLoadgen()
    serverCpus, loadCpus = benchCpus()
    plain = [scenario for scenario in ("rr", "bulk") if scenario in options.scenarios]
    tls = [scenario for scenario in ("tls-handshake", "tls-bulk") if scenario in options.scenarios]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    negotiated: dict[str, dict[str, str]] = {}
    memory: dict[str, dict[str, float]] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="netd-proxy-bench-") as temporary:
        directory = Path(temporary)
        backend = Backend(buildBackend(), loadCpus)
        try:
            certs = tlsbench.makeCertificates(directory, ["ecdsa"])["ecdsa"] if tls else None
            with servers(options.servers, backend, certs, directory, serverCpus) as started:
                versions = {name: server.version for name, server in started.items()}
                for round in range(options.rounds):
                    for scenario in plain + tls:
                        kind = "tls" if scenario.startswith("tls") else "plain"
                        for name, server in started.items():
                            if kind not in server.ports:
                                continue
                            say(f"round {round + 1}/{options.rounds}: {name} {scenario}")
                            figures, negotiation = measure(
                                loadgen, scenario, server.ports[kind], server, backend, options, loadCpus
                            )
                            raw.setdefault(scenario, {}).setdefault(name, []).append(figures)
                            negotiated.setdefault(scenario, {})[name] = negotiation
                        if kind == "plain" and options.direct:
                            say(f"round {round + 1}/{options.rounds}: backend {scenario}")
                            figures, _ = measure(loadgen, scenario, backend.port, backend, backend, options, loadCpus)
                            raw[scenario].setdefault(DIRECT, []).append(figures)
            if "memory" in options.scenarios:
                for name in MEMORY_SERVERS:
                    if name in options.servers:
                        say(f"{name} memory with {options.idle_pairs:,} idle proxied pairs")
                        memory[name] = measureMemory(loadgen, name, backend, directory, options, serverCpus, loadCpus)
        finally:
            backend.stop()
    medians = {
        scenario: {
            name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            for name, rounds in byServer.items()
        }
        for scenario, byServer in raw.items()
    }
    return {
        "machine": info,
        "versions": versions,
        "negotiated": negotiated,
        "pinned": {"server": sorted(serverCpus or []), "loadgen_and_backend": sorted(loadCpus or [])},
        "medians": medians,
        "memory": memory,
        "rounds": raw,
    }


# The report.


def goalRows(medians: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """
    The goals table: each of issue 16's goals beside the ratio measured, for each netd measured.
    """
    rows = []
    for netdName in NETD_REACTORS:
        for scenario, peer, goal in GOALS:
            byServer = medians.get(scenario, {})
            netd, other = byServer.get(netdName), byServer.get(peer)
            if not netd or not other or not other["per_core"]:
                continue
            ratio = netd["per_core"] / other["per_core"]
            verdict = "met" if ratio >= goal else "missed"
            rows.append(f"| {LABELS[scenario]} | {netdName}/{peer} | ≥ {goal:.1f} | {ratio:.2f} | {verdict} |")
    return rows


def report(result: dict[str, object], options: argparse.Namespace) -> str:
    """
    The results as Markdown: the machine, the settings, the rates with
    ratios, the memory table and the goals.
    """
    info: dict[str, str] = result["machine"]  # type: ignore[assignment]
    versions: dict[str, str] = result["versions"]  # type: ignore[assignment]
    medians: dict[str, dict[str, dict[str, float]]] = result["medians"]  # type: ignore[assignment]
    memory: dict[str, dict[str, float]] = result["memory"]  # type: ignore[assignment]
    negotiated: dict[str, dict[str, str]] = result["negotiated"]  # type: ignore[assignment]
    pinned: dict[str, list[int]] = result["pinned"]  # type: ignore[assignment]
    placement = (
        f"proxies pinned to CPU {pinned['server']}, the echo backend and loadgen to CPU {pinned['loadgen_and_backend']}"
        if pinned["server"]
        else "no pinning (one CPU)"
    )
    lines = [
        f"### Proxy, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs (nproc {info['nproc']}), {info['cpu']}, {info['kernel']}, load average before the run {info['load']}",
        f"- software: Python {info['python']} ({info['python_ssl']}), Twisted {info['twisted']}, pyOpenSSL {info['pyopenssl']}; "
        + "; ".join(f"{name}: {version}" for name, version in versions.items()),
        f"- settings: every proxy relays to bench/proxy/echo_backend (C, epoll, one thread); {placement}; "
        f"rr: {RR_CONNECTIONS} connections, one 64-byte message in flight each, {options.duration} s; "
        f"bulk: {options.bulk_mib} MiB through one connection; tls-handshake: {HANDSHAKE_CONCURRENCY} at a time, full TLS 1.3 "
        f"handshake (ECDSA P-256), one 64-byte echo, close, {options.duration} s; tls-bulk: {options.tls_bulk_mib} MiB through one "
        f"TLS 1.3 connection; medians of {options.rounds} round(s); HAProxy nbthread 1, mode tcp; socat forks a process per "
        "connection (all on the proxies' CPU, their CPU summed); hitch 1 worker; all on 127.0.0.1",
        "- CPU: cores used over the measured window (1.00 = one core busy); per core: the rate divided by the proxy's share; "
        "backend and loadgen CPU share the second CPU",
    ]
    if negotiated:
        tlsNegotiated = {
            scenario: sorted(set(byServer.values()))
            for scenario, byServer in negotiated.items()
            if scenario.startswith("tls")
        }
        if tlsNegotiated:
            lines.append(
                "- negotiated: "
                + "; ".join(f"{scenario}: {', '.join(found)}" for scenario, found in tlsNegotiated.items())
            )
    if medians:
        lines += [
            "",
            "| scenario | proxy | rate | proxy CPU | per proxy core | backend CPU | loadgen CPU | p50 / p99 µs | netd/proxy rate | netd/proxy per core |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for scenario, byServer in medians.items():
            netd = byServer.get("netd")
            for name, m in byServer.items():
                digits = 1 if scenario.endswith("bulk") else 0
                latency = f"{m['p50_us']:,.0f} / {m['p99_us']:,.0f}" if "p50_us" in m else "-"
                peer = name not in ("netd", DIRECT)
                ratio = f"{netd['rate'] / m['rate']:.2f}" if netd and peer and m["rate"] else "-"
                ratioPerCore = f"{netd['per_core'] / m['per_core']:.2f}" if netd and peer and m["per_core"] else "-"
                proxyCpu, perCore = (
                    ("-", "-") if name == DIRECT else (f"{m['server_cpu']:.2f}", f"{m['per_core']:,.{digits}f}")
                )
                lines.append(
                    f"| {LABELS[scenario]} | {name} | {m['rate']:,.{digits}f} | {proxyCpu} | {perCore} | "
                    f"{m['backend_cpu']:.2f} | {m['loadgen_cpu']:.2f} | {latency} | {ratio} | {ratioPerCore} |"
                )
        for scenario, byServer in medians.items():
            for name, m in byServer.items():
                if m.get("errors"):
                    lines.append(f"- {name}, {scenario}: {m['errors']:,.0f} connections failed (median per run)")
    if memory:
        lines += [
            "",
            f"| memory, {options.idle_pairs:,} idle proxied pairs | RSS at start (MiB) | RSS with them open (MiB) | "
            "KiB per pair | seconds to open them |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, m in memory.items():
            lines.append(
                f"| {name} | {m['rss_before_mib']:.1f} | {m['rss_idle_mib']:.1f} | {m['kib_per_pair']:.2f} | {m['open_s']:.2f} |"
            )
        if options.idle_pairs < options.pairs_asked:
            lines.append("")
            lines.append(
                f"- {options.idle_pairs:,} pairs, not {options.pairs_asked:,}: a proxy holds two sockets per pair and "
                f"this machine's open-files limit is {options.files:,} (root may not raise it here)"
            )
    goals = goalRows(medians)
    if goals:
        lines += [
            "",
            "| issue 16's goal (per proxy core) | ratio | goal | measured | |",
            "| --- | --- | ---: | ---: | --- |",
            *goals,
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """
    Parse the options, check the tools, run, print and (with --record) record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1-second runs, one round, smaller bulk and memory runs")
    parser.add_argument("--duration", type=float, help="seconds of each rr and handshake run (default 3; --quick 1)")
    parser.add_argument(
        "--rounds", type=int, help="rounds over all proxies; the medians are reported (default 2; --quick 1)"
    )
    parser.add_argument(
        "--bulk-mib", type=int, help="MiB through the plain bulk connection (default 1024; --quick 128)"
    )
    parser.add_argument(
        "--tls-bulk-mib", type=int, help="MiB through the TLS bulk connection (default 128; --quick 32)"
    )
    parser.add_argument("--bulk-timeout", type=float, default=60, help="seconds a bulk run may take at most")
    parser.add_argument(
        "--idle-pairs", type=int, help="idle proxied pairs of the memory scenario (default 10000; --quick 1000)"
    )
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument(
        "--no-direct", dest="direct", action="store_false", help="skip the runs straight to the backend (for reference)"
    )
    parser.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md (newest first)")
    parser.add_argument("--json", type=Path, help="also write every round's figures to this file")
    options = parser.parse_args()
    defaults = (
        ("duration", 3.0, 1.0),
        ("rounds", 2, 1),
        ("bulk_mib", 1024, 128),
        ("tls_bulk_mib", 128, 32),
        ("idle_pairs", 10000, 1000),
    )
    for name, full, quick in defaults:
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    if "netd" not in options.servers:
        parser.error("--servers must include netd (the ratios are netd's)")
    if not 0.5 <= options.duration <= 60 or options.rounds < 1 or options.bulk_mib < 1 or options.tls_bulk_mib < 1:
        parser.error("--duration is 0.5-60 s; --rounds, --bulk-mib and --tls-bulk-mib at least 1")
    if not 1 <= options.idle_pairs <= 20000:
        parser.error("--idle-pairs is 1-20000")
    tools = {
        "haproxy": shutil.which("haproxy"),
        "socat": shutil.which("socat"),
        "hitch": shutil.which("hitch") or (os.access("/usr/sbin/hitch", os.X_OK) and "/usr/sbin/hitch") or None,
        "stunnel": tlsbench.stunnelExecutable(),
    }
    missing = [name for name in options.servers if name in tools and not tools[name]]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}; bench/proxy/run.sh installs them (apt-get)")
    options.files = raiseFilesLimit(FILES)
    options.pairs_asked = options.idle_pairs
    if options.idle_pairs > pairsAllowed(options.files):
        options.idle_pairs = pairsAllowed(options.files)
        say(
            f"memory: {options.idle_pairs:,} idle pairs, not {options.pairs_asked:,}: the open-files limit is {options.files}"
        )
    signal.signal(
        signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)
    )  # the servers are stopped on the way out
    result = run(options)
    publish(report(result, options), result, options.json, options.record)


if __name__ == "__main__":
    main()
