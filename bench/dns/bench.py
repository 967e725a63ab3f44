"""
The DNS proxy against its peers, with dnsperf, all on loopback, in one run.

One upstream (dnsmasq answering every name under example.test with 127.0.0.2)
serves the forwarders, each on its own free loopback port: netd's dns-proxy,
dnsmasq (--server, cache 10,000), dnsmasq-1k (the same with the 1,000-entry
cache issue 18 names as a peer) and unbound (forward-zone "." to the upstream,
num-threads: 1, cache on).  For each forwarder dnsperf measures:

- hits: a handful of names asked again and again, after a warm-up pass, so that
  every answer comes from the forwarder's cache;
- misses: names never asked before (a fresh prefix per forwarder and round,
  each name asked once, dnsperf -n 1), so that every query goes upstream.

Each measurement is a throughput run (dnsperf -l DURATION, -c CLIENTS -T 1,
-q OUTSTANDING: queries per second and average latency at saturation) and a
latency run at a fixed, moderate rate (-Q RATE -v: median and 99th percentile
of per-query latency).  Rounds go round-robin over the forwarders, so that the
machine's noise falls on all of them alike; the table gives the median of the
rounds and the ratios netd/dnsmasq and netd/unbound.

Run from the repository root: bench/dns/run.sh (installs dnsperf, unbound and
dnsmasq with apt-get when missing), or .venv/bin/python bench/dns/bench.py.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import cpuTime, machine, netdVersion, publish, quietDaemonTable, say, startNetd, stopProcess, toolVersion  # noqa: E402  (the path above makes it importable)

from tests.integration.dns_upstream import (  # noqa: E402  (the path above makes it importable)
    ZONE,
    Dnsmasq,
    answerRcode,
    askUdp,
    benchUpstreamArguments,
    buildQuery,
    findDnsmasq,
    freeLoopbackPort,
    startDnsmasq,
)

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
HIT_NAMES = 10
FORWARDERS = ("netd", "dnsmasq", "dnsmasq-1k", "unbound")
PEERS = FORWARDERS[1:]
SMALL_CACHE = 1000
"""
The cache of C{dnsmasq-1k}: dnsmasq's default-sized cache (its default is 150),
as the peer for cache misses.
"""


class Server:
    """
    One forwarder under test: its name, where it listens, and how to stop it.
    """

    def __init__(
        self, name: str, port: int, process: subprocess.Popen[bytes] | None, stop: Callable[[], None], version: str
    ) -> None:
        self.name = name
        self.port = port
        self.process = process
        self.stop = stop
        self.version = version


def waitUntilAnswering(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """
    Poll with a query under the zone until the server answers it (any RCODE).
    """
    query = buildQuery(f"ready.{ZONE}")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if answerRcode(query, askUdp(HOST, port, query, timeout=0.3) or b"") is not None:
            return
        time.sleep(0.05)
    stopProcess(process)
    raise RuntimeError(
        f"{what} did not answer within {START_TIMEOUT} seconds:\n{log.read_text(errors='replace')[-3000:]}"
    )


def startNetdProxy(upstream: Dnsmasq, directory: Path, cacheSize: int) -> Server:
    """
    netd with one dns-proxy service on a port it picks (port 0), read back from
    its ports file.
    """
    config = quietDaemonTable() + (
        "[[services]]\n"
        'name = "dns"\n'
        'plugin = "dns-proxy"\n'
        f'listen = ["udp:0:interface={HOST}"]\n'
        f'upstreams = ["{upstream.upstream}"]\n'
        f"cache_size = {cacheSize}\n"
        "log_queries = false\n"
    )
    process, services, log = startNetd(config, directory, "netd")
    port = next(int(bound["port"]) for bound in services["dns"] if bound["transport"] == "udp")  # type: ignore[call-overload]
    waitUntilAnswering(port, process, "netd", log)
    return Server("netd", port, process, lambda: stopProcess(process), netdVersion())


def startDnsmasqForwarder(upstream: Dnsmasq, directory: Path, cacheSize: int, name: str = "dnsmasq") -> Server:
    """
    dnsmasq forwarding everything to the upstream, with a cache.
    """
    forwarder = startDnsmasq(
        [f"--server={upstream.host}#{upstream.port}", f"--cache-size={cacheSize}", "--dns-forward-max=1000"],
        directory,
        readyName=f"ready.{ZONE}",
        logQueries=False,
        name=f"{name}-forwarder",
    )
    return Server(
        name,
        forwarder.port,
        forwarder.process,
        forwarder.stop,
        toolVersion([findDnsmasq() or "dnsmasq", "--version"]).split("  ")[0],
    )


def startUnbound(upstream: Dnsmasq, directory: Path) -> Server:
    """
    unbound with one thread and its cache, forwarding "." to the upstream; a
    generated config: no chroot, no daemon, no privilege drop, no DNSSEC
    validation, test. not a blocked local zone.
    """
    executable = shutil.which("unbound") or "/usr/sbin/unbound"
    for _ in range(5):
        port = freeLoopbackPort()
        config = directory / f"unbound-{port}.conf"
        config.write_text(
            "server:\n"
            f"  interface: {HOST}@{port}\n"
            f"  port: {port}\n"
            "  do-ip6: no\n"
            "  do-tcp: yes\n"
            "  num-threads: 1\n"
            "  so-reuseport: no\n"
            "  do-daemonize: no\n"
            '  chroot: ""\n'
            '  username: ""\n'
            f'  directory: "{directory}"\n'
            '  pidfile: ""\n'
            "  use-syslog: no\n"
            "  verbosity: 0\n"
            '  module-config: "iterator"\n'
            "  do-not-query-localhost: no\n"
            "  access-control: 127.0.0.0/8 allow\n"
            '  local-zone: "test." nodefault\n'
            "  msg-cache-size: 64m\n"
            "  rrset-cache-size: 128m\n"
            "  num-queries-per-thread: 4096\n"
            "remote-control:\n"
            "  control-enable: no\n"
            "forward-zone:\n"
            '  name: "."\n'
            f"  forward-addr: {upstream.host}@{upstream.port}\n"
        )
        log = directory / f"unbound-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [executable, "-d", "-c", str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        try:
            waitUntilAnswering(port, process, "unbound", log)
        except RuntimeError:
            stopProcess(process)
            if "in use" in log.read_text(errors="replace"):
                continue
            raise
        return Server(
            "unbound",
            port,
            process,
            lambda: stopProcess(process),  # noqa: B023 (returned at once: the loop ends here)
            "unbound " + toolVersion([executable, "-V"]).replace("Version ", ""),
        )
    raise RuntimeError("unbound found no free port")


# dnsperf.


def writeNames(path: Path, names: Iterator[str] | list[str]) -> Path:
    """
    A dnsperf input file: one C{name A} per line.
    """
    with path.open("w") as output:
        for name in names:
            output.write(f"{name} A\n")
    return path


def dnsperf(port: int, dataFile: Path, *arguments: str, timeout: float) -> str:
    """
    Run dnsperf against 127.0.0.1:C{port} and return what it printed.
    """
    command = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(dataFile), "-t", "2", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def statistic(output: str, label: str) -> float:
    """
    A number from dnsperf's statistics (the first one after C{label}).
    """
    found = re.search(re.escape(label) + r":\s+([0-9.]+)", output)
    if found is None:
        raise RuntimeError(f"dnsperf printed no {label!r}:\n{output[-2000:]}")
    return float(found.group(1))


def throughput(server: Server, dataFile: Path, options: argparse.Namespace, *extra: str) -> dict[str, float]:
    """
    A saturation run: queries per second, average latency, share of queries
    lost, the forwarder's CPU over the run (in cores) and its answers per
    second of its own CPU (the load generator shares the machine and caps the
    raw rate of the fastest forwarders; this rate is not capped by it).
    """
    pid = server.process.pid if server.process is not None else None
    cpuBefore = cpuTime(pid) if pid is not None else 0.0
    began = time.monotonic()
    output = dnsperf(
        server.port,
        dataFile,
        "-l",
        str(options.duration),
        "-c",
        str(options.clients),
        "-T",
        "1",
        "-q",
        str(options.outstanding),
        *extra,
        timeout=options.duration + 30,
    )
    elapsed = time.monotonic() - began
    cpu = cpuTime(pid) - cpuBefore if pid is not None else 0.0
    sent = statistic(output, "Queries sent")
    completed = statistic(output, "Queries completed")
    return {
        "qps": statistic(output, "Queries per second"),
        "avg_ms": statistic(output, "Average Latency (s)") * 1000,
        "lost": statistic(output, "Queries lost") / sent if sent else 1.0,
        "cores": cpu / elapsed if elapsed > 0 else 0.0,
        "qps_core": completed / cpu if cpu > 0 else 0.0,
    }


def latencies(port: int, dataFile: Path, options: argparse.Namespace, *extra: str) -> dict[str, float]:
    """
    A fixed-rate run (-Q RATE, -v): median and 99th percentile of the latency of
    each answered query.
    """
    output = dnsperf(
        port,
        dataFile,
        "-l",
        str(options.latency_duration),
        "-Q",
        str(options.rate),
        "-c",
        "1",
        "-T",
        "1",
        "-v",
        *extra,
        timeout=options.latency_duration + 30,
    )
    samples = sorted(float(found.group(1)) for found in re.finditer(r"^> \w+ \S+ \S+ ([0-9.]+)$", output, re.MULTILINE))
    if not samples:
        raise RuntimeError(f"dnsperf -v printed no latencies:\n{output[-2000:]}")
    return {
        "p50_ms": samples[len(samples) // 2] * 1000,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
    }


# The run.


@contextmanager
def servers(directory: Path, options: argparse.Namespace) -> Iterator[tuple[Dnsmasq, dict[str, Server]]]:
    """
    The upstream and the forwarders, stopped (by PID) on the way out.
    """
    upstream = startDnsmasq(
        benchUpstreamArguments(), directory, readyName=f"ready.{ZONE}", logQueries=False, name="upstream"
    )
    started: dict[str, Server] = {}
    try:
        starters = {
            "netd": lambda: startNetdProxy(upstream, directory, options.cache_size),
            "dnsmasq": lambda: startDnsmasqForwarder(upstream, directory, options.cache_size),
            "dnsmasq-1k": lambda: startDnsmasqForwarder(upstream, directory, SMALL_CACHE, "dnsmasq-1k"),
            "unbound": lambda: startUnbound(upstream, directory),
        }
        for name in options.forwarders:
            started[name] = starters[name]()
        yield upstream, started
    finally:
        for server in started.values():
            server.stop()
        upstream.stop()


def run(options: argparse.Namespace) -> dict[str, object]:
    """
    Every measurement, round-robin over the forwarders; the medians per
    forwarder and mode.
    """
    raw: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="netd-dns-bench-") as temporary:
        directory = Path(temporary)
        hitNames = writeNames(directory / "hits.txt", [f"hit{index}.{ZONE}" for index in range(HIT_NAMES)])
        with servers(directory, options) as (_, started):
            versions = {name: server.version for name, server in started.items()}
            for round in range(options.rounds):
                for name, server in started.items():
                    say(f"round {round + 1}/{options.rounds}: {name} hits")
                    dnsperf(server.port, hitNames, "-n", "3", "-c", "1", "-T", "1", "-l", "5", timeout=40)  # warm-up
                    result = throughput(server, hitNames, options)
                    result.update(latencies(server.port, hitNames, options))
                    raw.setdefault((name, "hits"), []).append(result)
                for name, server in started.items():
                    say(f"round {round + 1}/{options.rounds}: {name} misses")
                    prefix = f"r{round}-{name}"
                    count = options.miss_names
                    missNames = writeNames(
                        directory / "misses.txt", (f"m{index}.{prefix}.{ZONE}" for index in range(count))
                    )
                    result = throughput(server, missNames, options, "-n", "1")
                    latencyNames = writeNames(
                        directory / "misses-latency.txt",
                        (
                            f"l{index}.{prefix}.{ZONE}"
                            for index in range(options.rate * options.latency_duration + 1000)
                        ),
                    )
                    result.update(latencies(server.port, latencyNames, options, "-n", "1"))
                    raw.setdefault((name, "misses"), []).append(result)
                    missNames.unlink()
                    latencyNames.unlink()
    medians = {
        f"{name}/{mode}": {metric: statistics.median(r[metric] for r in results) for metric in results[0]}
        for (name, mode), results in raw.items()
    }
    return {
        "machine": machine(dnsperf=toolVersion(["dnsperf", "-h"], r"Version ([0-9.]+)")),
        "versions": versions,
        "medians": medians,
        "rounds": {f"{k[0]}/{k[1]}": v for k, v in raw.items()},
    }


def report(result: dict[str, object], options: argparse.Namespace) -> str:
    """
    The results as Markdown: the machine, the settings, the table, the ratios.
    """
    info: dict[str, str] = result["machine"]  # type: ignore[assignment]
    versions: dict[str, str] = result["versions"]  # type: ignore[assignment]
    medians: dict[str, dict[str, float]] = result["medians"]  # type: ignore[assignment]
    lines = [
        f"### DNS proxy, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs, {info['cpu']}, {info['kernel']}, load average before the run {info['load']}",
        f"- software: Python {info['python']}, Twisted {info['twisted']}, dnsperf {info['dnsperf']}; "
        + "; ".join(f"{name}: {version}" for name, version in versions.items()),
        f"- settings: throughput runs dnsperf -l {options.duration} -c {options.clients} -T 1 -q {options.outstanding}; "
        f"latency runs -Q {options.rate} -l {options.latency_duration} -c 1; {options.rounds} rounds, medians shown; "
        f"forwarder caches {options.cache_size} entries (dnsmasq-1k: {SMALL_CACHE}; unbound: 64 MB msg cache, "
        "num-threads 1); all on 127.0.0.1",
        "",
        "| forwarder | mode | QPS | server CPU (cores) | QPS per server core | avg latency at saturation (ms) | lost | p50 at fixed rate (ms) | p99 at fixed rate (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("hits", "misses"):
        for name in options.forwarders:
            m = medians.get(f"{name}/{mode}")
            if m is None:
                continue
            lines.append(
                f"| {name} | {mode} | {m['qps']:,.0f} | {m['cores']:.2f} | {m['qps_core']:,.0f} | {m['avg_ms']:.3f} | {m['lost']:.2%} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} |"
            )
    lines.append("")
    for mode in ("hits", "misses"):
        netd = medians.get(f"netd/{mode}")
        if netd is None:
            continue
        for peer in PEERS:
            other = medians.get(f"{peer}/{mode}")
            if other is not None and other["qps"]:
                perCore = netd["qps_core"] / other["qps_core"] if other["qps_core"] else 0.0
                lines.append(
                    f"- {mode}: netd/{peer} QPS = {netd['qps'] / other['qps']:.2f}, "
                    f"QPS per server core = {perCore:.2f}, "
                    f"p99 latency netd/{peer} = {netd['p99_ms'] / other['p99_ms']:.2f}"
                )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """
    Parse the options, check the tools, run, print and (with --record) record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each throughput run (dnsperf -l)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c in throughput runs")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q in throughput runs")
    parser.add_argument("--rate", type=int, default=2000, help="queries per second of the latency runs (dnsperf -Q)")
    parser.add_argument("--latency-duration", type=int, default=5, help="seconds of each latency run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all forwarders; the medians are reported")
    parser.add_argument("--cache-size", type=int, default=10000, help="cache entries of netd and dnsmasq")
    parser.add_argument(
        "--miss-names", type=int, default=1_500_000, help="unique names per cache-miss run (each asked once)"
    )
    parser.add_argument("--forwarders", nargs="+", default=list(FORWARDERS), choices=FORWARDERS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="as bench/run.sh --quick runs it: one round of 2-second runs, 200,000 miss names",
    )
    parser.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md (newest first)")
    parser.add_argument("--json", type=Path, help="also write every round's numbers to this file")
    options = parser.parse_args()
    if options.quick:
        options.duration, options.latency_duration, options.rounds = 2, 1, 1
        options.miss_names = min(options.miss_names, 200_000)
    missing = [
        tool
        for tool, found in [
            ("dnsperf", shutil.which("dnsperf")),
            ("dnsmasq", findDnsmasq()),
            ("unbound", shutil.which("unbound") or shutil.which("/usr/sbin/unbound")),
        ]
        if not found
    ]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}; bench/dns/run.sh installs them (apt-get)")
    socket.getaddrinfo(HOST, None)
    result = run(options)
    publish(report(result, options), result, options.json, options.record)


if __name__ == "__main__":
    main()
