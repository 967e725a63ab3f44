"""
netd's echo against its peers, with a C load generator, all on loopback, in
one run.

Six servers, each in one process on free loopback ports, one after the other
under the same load:

- netd: an echo service with raw framing and one with u32 framing
  (idle_timeout 3600 s, max_connections 20,000), warnings-only logging, no
  control API, on its default reactor (uvloop's transports, netd/reactors/uv.py);
- netd-epoll: the same on netd's epoll reactor (C{NETD_REACTOR=netd}), the
  other choice, measured beside it;
- asyncio: bench/echo/peers/asyncio_echo.py, a Protocol on asyncio's own loop
  (raw, and u32 parsed into frames and sent back framed);
- uvloop: the same script on uvloop;
- socat: C{socat TCP-LISTEN:PORT,fork,reuseaddr,backlog=50 PIPE}, a process
  per connection echoing through a pipe (raw only: socat has no framing);
- c-epoll: bench/proxy/echo_backend.c, the proxy benchmark's upstream: C, one
  thread, one epoll set, a read and a write per message, the physical bar
  for a one-core echo.  It is a byte echo: with u32 framing the frames come
  back unchanged, as they would from a framed echo, without being parsed, so
  netd's u32 figure against it is the cost of the framing layer and
  everything else.

Scenarios, measured by bench/loadgen (C, epoll, one thread) while the server
runs on one CPU and the load generator on another:

- rr-raw, rr-u32: 50 connections, one 64-byte message in flight on each;
  round trips per second, latency percentiles;
- bulk: 1 GiB (--quick: 128 MiB) through one connection, echo read while
  sending; MB/s (10^6 bytes);
- connrate: 16 at a time: connect, one 64-byte echo, close; connections/s;
- memory: a fresh server, its resident size (VmRSS) before and with 10,000
  idle connections open (each proven by one echo); not socat, which would fork
  10,000 processes;
- startup: from starting the process to its ports file being written (netd's
  readiness), median of several starts; the Python peers for reference.

Each figure comes with the CPU the server used over the measured window (from
/proc/PID/stat, children included) and the load generator's own, and the
server's rate per core of its own CPU: the load generator costs about as much
as the fastest servers, so the raw rates of the fast ones are capped by it.
Rounds go round-robin over the servers so that the machine's noise falls on
all alike; the table shows each figure's median over the rounds and the
ratios netd/peer.

Run from the repository root: bench/echo/run.sh (or bench/run.sh for the whole
suite), or .venv/bin/python bench/echo/bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
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
    measureLoad,
    netdCommand,
    netdVersion,
    publish,
    quietDaemonTable,
    residentKiB,
    say,
    startNetd,
    stopProcess,
    toolVersion,
    waitForFile,
    waitUntil,
)

HOST = "127.0.0.1"
PEER_SCRIPT = ROOT / "bench" / "echo" / "peers" / "asyncio_echo.py"
C_ECHO_SOURCE = ROOT / "bench" / "proxy" / "echo_backend.c"
SERVERS = ("netd", "netd-epoll", "asyncio", "uvloop", "socat", "c-epoll")
NETD_REACTORS = {"netd": "uvloop", "netd-epoll": "netd"}
"""
The netds measured, and the reactor (C{NETD_REACTOR}) each runs on: netd's default, and its epoll one.
"""
RATE_SCENARIOS = ("rr-raw", "rr-u32", "bulk", "connrate")
SCENARIOS = (*RATE_SCENARIOS, "memory", "startup")
LABELS = {
    "rr-raw": "request/response, raw (round trips/s)",
    "rr-u32": "request/response, u32 (round trips/s)",
    "bulk": "bulk, one connection (MB/s)",
    "connrate": "connect, echo, close (connections/s)",
}
MAX_CONNECTIONS = 20000
SETTLE = 0.5  # seconds between the last idle connection opening and reading the resident size


class Server:
    """
    One echo server under test: its name, its port per framing, its process.
    """

    def __init__(self, name: str, ports: dict[str, int], process: subprocess.Popen[bytes], version: str) -> None:
        self.name = name
        self.ports = ports
        self.process = process
        self.version = version

    def stop(self) -> None:
        """
        SIGTERM by PID (SIGKILL if it lingers); close the pipe to its standard input if it has one.
        """
        stopProcess(self.process)
        if self.process.stdin is not None:
            self.process.stdin.close()


# The servers.


def netdConfig() -> str:
    """
    netd's echo services: raw and u32 framing, loopback, port 0.
    """
    services = [
        f'[[services]]\nname = "{framing}"\nplugin = "echo"\nlisten = ["tcp:0:interface={HOST}"]\nframing = "{framing}"\n'
        f"idle_timeout = 3600\nmax_connections = {MAX_CONNECTIONS}\n"
        for framing in ("raw", "u32")
    ]
    return quietDaemonTable() + "\n" + "\n".join(services)


def startNetdEcho(name: str, directory: Path, cpus: set[int] | None) -> Server:
    """
    The netd called C{name} (L{NETD_REACTORS}) with its two echo services, once its ports file is written.
    """
    process, services, _ = startNetd(netdConfig(), directory, name, cpus, reactor=NETD_REACTORS[name])
    ports = {framing: int(services[framing][0]["port"]) for framing in ("raw", "u32")}  # type: ignore[call-overload]
    return Server(name, ports, process, netdVersion())


def peerCommand(loop: str, portsFile: Path) -> list[str]:
    """
    The asyncio or uvloop peer, on netd's Python (uvloop is one of netd's dependencies).
    """
    return [sys.executable, str(PEER_SCRIPT), "--loop", loop, "--host", HOST, "--ports-file", str(portsFile)]


def startPythonPeer(loop: str, directory: Path, cpus: set[int] | None) -> Server:
    """
    The asyncio (or uvloop) echo, once its ports file is written.
    """
    portsFile = directory / f"{loop}-ports.json"
    portsFile.unlink(missing_ok=True)
    log = directory / f"{loop}.log"
    process = launch(peerCommand(loop, portsFile), log, cpus)
    waitForFile(process, portsFile, loop, log)
    ports = json.loads(portsFile.read_text())
    version = toolVersion(
        [
            sys.executable,
            "-c",
            f"import platform, {loop}; print('{loop}', getattr({loop}, '__version__', platform.python_version()))",
        ]
    )
    return Server(loop, {"raw": int(ports["raw"]), "u32": int(ports["u32"])}, process, version)


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 free right now (the caller retries if it is taken meanwhile).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def startSocat(directory: Path, cpus: set[int] | None) -> Server:
    """
    socat forking a child per connection, each echoing through a pipe
    (C{PIPE}: what is written to it is read back), with its default 8 KiB
    buffer (with C{-b 65536}, as large as the pipe, a child blocks writing
    into the pipe that only it drains), and a listen backlog of 50 as
    Twisted's (its default of 5 drops the SYNs of 50 connections made at
    once); ready once it accepts.
    """
    for _ in range(5):
        port = freePort()
        log = directory / "socat.log"
        process = launch(["socat", f"TCP-LISTEN:{port},bind={HOST},fork,reuseaddr,backlog=50", "PIPE"], log, cpus)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return Server("socat", {"raw": port}, process, toolVersion(["socat", "-V"], r"(socat version \S+)"))
            except OSError:
                time.sleep(0.02)
        stopProcess(process)
    raise RuntimeError(f"socat did not start:\n{(directory / 'socat.log').read_text(errors='replace')[-2000:]}")


def buildCEcho() -> Path:
    """
    bench/proxy/echo_backend.c, compiled into bench/build/ as the proxy benchmark does (the same binary) when
    missing or older than its source.
    """
    binary = BUILD / "echo_backend"
    if binary.exists() and binary.stat().st_mtime >= C_ECHO_SOURCE.stat().st_mtime:
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError(f"no C compiler (cc) to build {C_ECHO_SOURCE}; bench/setup-tools.sh installs gcc")
    BUILD.mkdir(parents=True, exist_ok=True)
    say(f"building {binary} with {compiler}")
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(C_ECHO_SOURCE)], check=True, timeout=120
    )
    return binary


def startCEcho(directory: Path, cpus: set[int] | None) -> Server:
    """
    The C epoll echo, once it has written its C{{"port": N}} line; it serves both framings on its one port (a byte
    echo), and exits when its standard input, a pipe from here, closes (or by its PID, as every server).
    """
    log = directory / "c-epoll.log"
    process = launch([str(buildCEcho())], log, cpus, stdin=subprocess.PIPE)
    waitUntil(lambda: printedPort(log) is not None, process, "c-epoll", log)
    port = printedPort(log)
    assert port is not None
    return Server("c-epoll", {"raw": port, "u32": port}, process, "echo_backend.c (cc -O2)")


def printedPort(log: Path) -> int | None:
    """
    The port the C echo printed to its log, or L{None} before it has.
    """
    text = log.read_text(errors="replace")
    return int(json.loads(text.splitlines()[0])["port"]) if text.endswith("\n") else None


def startServer(name: str, directory: Path, cpus: set[int] | None) -> Server:
    """
    Start the server called C{name}.
    """
    if name in NETD_REACTORS:
        return startNetdEcho(name, directory, cpus)
    if name == "socat":
        return startSocat(directory, cpus)
    if name == "c-epoll":
        return startCEcho(directory, cpus)
    return startPythonPeer(name, directory, cpus)


@contextmanager
def servers(names: list[str], directory: Path, cpus: set[int] | None) -> Iterator[dict[str, Server]]:
    """
    The servers, stopped (by PID) on the way out.
    """
    started: dict[str, Server] = {}
    try:
        for name in names:
            say(f"starting {name}")
            started[name] = startServer(name, directory, cpus)
        yield started
    finally:
        for server in started.values():
            server.stop()


# The load generator.


def measureRate(
    binary: Path, scenario: str, server: Server, options: argparse.Namespace, cpus: set[int] | None
) -> dict[str, float]:
    """
    One load generator run against a server: its rate, latencies and CPU,
    and the server's CPU over the same window (sampled when the load
    generator says the window starts and when it reports).
    """
    if scenario.startswith("rr"):
        framing = scenario.split("-")[1]
        mode, port = "rr", server.ports[framing]
        arguments = [
            "--connections",
            "50",
            "--size",
            "64",
            "--framing",
            framing,
            "--duration",
            str(options.duration),
            "--warmup",
            str(min(0.5, options.duration / 4)),
        ]
        arguments += ["--count", str(int(options.duration * 2_000_000))]
    elif scenario == "bulk":
        mode, port = "bulk", server.ports["raw"]
        arguments = ["--bytes", str(options.bulk_mib * 2**20), "--duration", str(options.bulk_timeout)]
    else:
        mode, port = "connrate", server.ports["raw"]
        arguments = [
            "--concurrency",
            str(options.connrate_concurrency),
            "--size",
            "64",
            "--duration",
            str(options.duration),
        ]
        arguments += ["--count", str(int(options.duration * 500_000))]
    result, figures = measureLoad(
        binary,
        mode,
        port,
        arguments,
        lambda: cpuTime(server.process.pid),
        cpus,
        timeout=max(options.duration, options.bulk_timeout) + 30,
    )
    if mode == "bulk" and not result["complete"]:
        raise RuntimeError(
            f"{server.name} echoed only {result['bytes']} of {options.bulk_mib} MiB within {options.bulk_timeout} s"
        )
    return figures


def measureMemory(
    binary: Path,
    name: str,
    directory: Path,
    options: argparse.Namespace,
    serverCpus: set[int] | None,
    loadCpus: set[int] | None,
) -> dict[str, float]:
    """
    A fresh server's resident size before and with C{--idle-connections}
    connections open and idle.
    """
    server = startServer(name, directory, serverCpus)
    try:
        time.sleep(SETTLE)
        before = residentKiB(server.process.pid)
        arguments = [
            "--connections",
            str(options.idle_connections),
            "--concurrency",
            "32",
            "--size",
            "1",
            "--duration",
            "120",
            "--hold",
            "60",
        ]
        run = Loadgen(binary, "idle", server.ports["raw"], arguments, loadCpus, timeout=200)
        try:
            ready = run.next()
            if ready.get("event") != "ready":
                raise RuntimeError(f"loadgen said {ready}")
            time.sleep(SETTLE)
            during = residentKiB(server.process.pid)
        finally:
            run.close()
    finally:
        server.stop()
    return {
        "rss_before_mib": before / 1024,
        "rss_idle_mib": during / 1024,
        "kib_per_connection": (during - before) / options.idle_connections,
        "open_s": float(ready["open_s"]),  # type: ignore[arg-type]
    }


def measureStartup(name: str, directory: Path, cpus: set[int] | None) -> float:
    """
    Seconds from starting the server to its ports file being written (polled every 2 ms).
    """
    portsFile = directory / f"startup-{name}-ports.json"
    portsFile.unlink(missing_ok=True)
    log = directory / f"startup-{name}.log"
    if name in NETD_REACTORS:
        configFile = directory / f"startup-{name}.toml"
        configFile.write_text(netdConfig())
        command = netdCommand(configFile, portsFile)
    else:
        command = peerCommand(name, portsFile)
    started = time.monotonic()
    process = launch(command, log, cpus, reactor=NETD_REACTORS.get(name))
    try:
        waitForFile(process, portsFile, name, log, interval=0.002)
        return time.monotonic() - started
    finally:
        stopProcess(process)


# The run.


def run(options: argparse.Namespace) -> dict[str, object]:
    """
    Every measurement, round-robin over the servers; the medians.
    """
    binary = buildLoadgen()
    serverCpus, loadCpus = benchCpus() if options.pin else (None, None)
    info = machine(socat=toolVersion(["socat", "-V"], r"socat version (\S+)"))
    rates: dict[str, dict[str, list[dict[str, float]]]] = {}
    memory: dict[str, dict[str, float]] = {}
    startup: dict[str, list[float]] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="netd-echo-bench-") as temporary:
        directory = Path(temporary)
        scenarios = [scenario for scenario in RATE_SCENARIOS if scenario in options.scenarios]
        if scenarios:
            with servers(options.servers, directory, serverCpus) as started:
                versions = {name: server.version for name, server in started.items()}
                for round in range(options.rounds):
                    for scenario in scenarios:
                        for name, server in started.items():
                            if scenario == "rr-u32" and "u32" not in server.ports:
                                continue
                            say(f"round {round + 1}/{options.rounds}: {name} {scenario}")
                            rates.setdefault(scenario, {}).setdefault(name, []).append(
                                measureRate(binary, scenario, server, options, loadCpus)
                            )
        if "memory" in options.scenarios:
            for name in options.servers:
                if name != "socat":
                    say(f"{name} memory with {options.idle_connections:,} idle connections")
                    memory[name] = measureMemory(binary, name, directory, options, serverCpus, loadCpus)
        if "startup" in options.scenarios:
            for index in range(options.starts):
                for name in options.servers:
                    if name not in ("socat", "c-epoll"):
                        say(f"start {index + 1}/{options.starts}: {name}")
                        startup.setdefault(name, []).append(measureStartup(name, directory, serverCpus))
    medians = {
        scenario: {
            name: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for name, results in byServer.items()
        }
        for scenario, byServer in rates.items()
    }
    return {
        "machine": info,
        "pinned": {"server": sorted(serverCpus or []), "loadgen": sorted(loadCpus or [])},
        "versions": versions,
        "medians": medians,
        "memory": memory,
        "startup": startup,
        "rounds": rates,
    }


def report(result: dict[str, object], options: argparse.Namespace) -> str:
    """
    The results as Markdown: the machine, the settings, a table of the rates
    with ratios, the memory and the startup tables.
    """
    info: dict[str, str] = result["machine"]  # type: ignore[assignment]
    versions: dict[str, str] = result["versions"]  # type: ignore[assignment]
    medians: dict[str, dict[str, dict[str, float]]] = result["medians"]  # type: ignore[assignment]
    memory: dict[str, dict[str, float]] = result["memory"]  # type: ignore[assignment]
    startup: dict[str, list[float]] = result["startup"]  # type: ignore[assignment]
    pinned: dict[str, list[int]] = result["pinned"]  # type: ignore[assignment]
    placement = (
        f"server pinned to CPU {pinned['server']}, loadgen to CPU {pinned['loadgen']}"
        if pinned["server"]
        else "no pinning (one CPU)"
    )
    lines = [
        f"### Echo, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs (nproc {info['nproc']}), {info['cpu']}, {info['kernel']}, load average before the run {info['load']}",
        f"- software: Python {info['python']}, Twisted {info['twisted']}; "
        + "; ".join(f"{name}: {version}" for name, version in versions.items()),
        f"- settings: bench/loadgen (C, epoll, one thread); {placement}; rr: 50 connections, one 64-byte message in flight each, "
        f"{options.duration} s; bulk: {options.bulk_mib} MiB through one connection; connrate: {options.connrate_concurrency} at a time, "
        f"{options.duration} s; medians of {options.rounds} round(s); all on 127.0.0.1",
        "- CPU: cores used over the measured window (1.00 = one core busy); per core: the rate divided by the server's CPU share",
    ]
    peers = [name for name in options.servers if name != "netd"]
    if medians:
        lines += [
            "",
            "| scenario | server | rate | server CPU | per server core | loadgen CPU | p50 / p99 µs | netd/server rate | netd/server per core |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for scenario, byServer in medians.items():
            netd = byServer.get("netd")
            for name in options.servers:
                m = byServer.get(name)
                if m is None:
                    continue
                digits = 1 if scenario == "bulk" else 0
                latency = f"{m['p50_us']:,.0f} / {m['p99_us']:,.0f}" if "p50_us" in m else "-"
                ratio = f"{netd['rate'] / m['rate']:.2f}" if netd and name != "netd" and m["rate"] else "-"
                ratioPerCore = (
                    f"{netd['per_core'] / m['per_core']:.2f}" if netd and name != "netd" and m["per_core"] else "-"
                )
                lines.append(
                    f"| {LABELS[scenario]} | {name} | {m['rate']:,.{digits}f} | {m['server_cpu']:.2f} | {m['per_core']:,.{digits}f} | "
                    f"{m['loadgen_cpu']:.2f} | {latency} | {ratio} | {ratioPerCore} |"
                )
        for scenario, byServer in medians.items():
            for name, m in byServer.items():
                if m.get("errors"):
                    lines.append(f"- {name}, {scenario}: {m['errors']:,.0f} connections failed (median per run)")
    if memory:
        netd = memory.get("netd")
        lines += [
            "",
            f"| memory, {options.idle_connections:,} idle connections | RSS at start (MiB) | RSS with them open (MiB) | KiB per connection | "
            "seconds to open them | netd/server RSS with them open |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, m in memory.items():
            ratio = f"{netd['rss_idle_mib'] / m['rss_idle_mib']:.2f}" if netd and name != "netd" else "-"
            lines.append(
                f"| {name} | {m['rss_before_mib']:.1f} | {m['rss_idle_mib']:.1f} | {m['kib_per_connection']:.2f} | {m['open_s']:.2f} | {ratio} |"
            )
    if startup:
        lines += [
            "",
            "| startup: process start to ports file written | median (ms) | min (ms) | max (ms) | starts |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, times in startup.items():
            lines.append(
                f"| {name} | {statistics.median(times) * 1000:.0f} | {min(times) * 1000:.0f} | {max(times) * 1000:.0f} | {len(times)} |"
            )
    if "socat" in options.servers and peers:
        lines += [
            "",
            "- socat forks a process per connection and has no framing: no rr-u32, memory or startup figures for it",
        ]
    if "c-epoll" in options.servers:
        lines += [
            "- c-epoll (bench/proxy/echo_backend.c) is a byte echo: its rr-u32 figure is the same bytes echoed unparsed; "
            "no startup figure",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """
    Parse the options, check the tools, run, print and (with --record) record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="1-second runs, one round, 128 MiB bulk, 3 starts (under a minute)"
    )
    parser.add_argument("--duration", type=float, help="seconds of each rr and connrate run (default 3; --quick 1)")
    parser.add_argument(
        "--rounds", type=int, help="rounds over all servers; the medians are reported (default 3; --quick 1)"
    )
    parser.add_argument("--bulk-mib", type=int, help="MiB echoed by the bulk run (default 1024; --quick 128)")
    parser.add_argument("--bulk-timeout", type=float, default=60, help="seconds a bulk run may take at most")
    parser.add_argument("--connrate-concurrency", type=int, default=16, help="connections at a time in connrate")
    parser.add_argument(
        "--idle-connections", type=int, default=10000, help="connections held open by the memory scenario"
    )
    parser.add_argument("--starts", type=int, help="starts per server in the startup scenario (default 5; --quick 3)")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin the server and the load generator to CPUs"
    )
    parser.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write every round's numbers to this file")
    options = parser.parse_args()
    for name, full, quick in (("duration", 3.0, 1.0), ("rounds", 3, 1), ("bulk_mib", 1024, 128), ("starts", 5, 3)):
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    if "netd" not in options.servers:
        parser.error("--servers must include netd (the ratios are netd's)")
    if not 1 <= options.idle_connections < MAX_CONNECTIONS:
        parser.error(f"--idle-connections must be 1-{MAX_CONNECTIONS - 1}")
    if "socat" in options.servers and shutil.which("socat") is None:
        sys.exit("bench: missing socat; bench/echo/run.sh installs it (apt-get)")
    signal.signal(
        signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)
    )  # so that the servers are stopped on the way out
    result = run(options)
    publish(report(result, options), result, options.json, options.record)


if __name__ == "__main__":
    main()
