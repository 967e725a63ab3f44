"""
User-space instructions per DNS cache hit (or, with C{--mode miss}, per cache
miss) of netd's dns-proxy (or of dnsmasq), counted by valgrind's callgrind: a
figure that, unlike queries per second, does not move with the load of a
shared machine, to tell whether a change to the hit or the miss path pays.

The forwarder runs under callgrind behind the benchmark's upstream (bench.py's
setup: dnsmasq answering every name under example.test); dnsperf asks the
benchmark's ten hit names, first C{--warmup} queries to fill the cache and
warm the path, then callgrind's counts are dumped (C{callgrind_control -d}),
then C{--queries} queries (-c 4 -q 100, as the throughput runs), dumped
again.  The second dump's total, divided by the queries answered, is printed.
In miss mode every name is asked once (dnsperf -n 1), warm-up and counted
queries alike, each a name never asked before (as bench.py's miss runs): every
counted query goes to the upstream and its answer is cached; dnsperf keeps 10
queries outstanding (not 100), so that under callgrind none times out, and
netd's upstream sockets take new queries for an hour rather than a second
(udp_port_lifetime): they are replaced every 64 queries, as at full speed,
not every second, which at callgrind's slow rate would be every few dozen
queries and make the count follow the machine's load.
System calls are not counted: the kernel's share of a hit (the sends above
all) needs C{perf} or the throughput runs of bench.py.

Run from the repository root: .venv/bin/python bench/dns/callgrind.py
(about 30 seconds; needs valgrind, dnsperf and dnsmasq).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402  (the path above makes it importable)
    CALLGRIND_START_TIMEOUT,
    callgrindDump,
    callgrindTotal,
    netdCommand,
    quietDaemonTable,
    say,
    stopProcess,
    underCallgrind,
    waitUntil,
)

from tests.integration.dns_upstream import (  # noqa: E402
    ZONE,
    answerRcode,
    askUdp,
    benchUpstreamArguments,
    buildQuery,
    findDnsmasq,
    freeLoopbackPort,
    startDnsmasq,
)

HOST = "127.0.0.1"
HIT_NAMES = 10


def answering(port: int) -> bool:
    """
    Whether the forwarder answers a query under the zone (any RCODE).
    """
    query = buildQuery(f"ready.{ZONE}")
    return answerRcode(query, askUdp(HOST, port, query, timeout=1.0) or b"") is not None


def startUnderCallgrind(
    forwarder: str, upstream: str, directory: Path, output: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """
    The forwarder under callgrind, and the port it answers on.  netd waits
    up to a minute for each upstream answer: under callgrind, on a loaded
    machine, its default timeout would count failovers, not misses.
    """
    log = directory / f"{forwarder}.log"
    if forwarder == "netd":
        config = directory / "netd.toml"
        config.write_text(
            quietDaemonTable()
            + f'[[services]]\nname = "dns"\nplugin = "dns-proxy"\nlisten = ["udp:0:interface={HOST}"]\n'
            + f'upstreams = ["udp:{upstream}"]\ncache_size = 10000\nlog_queries = false\n'
            + "timeout = 60\ndeadline = 60\nudp_port_lifetime = 3600\n"
        )
        ports = directory / "ports.json"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                underCallgrind(netdCommand(config, ports), output), stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
            )
        waitUntil(ports.exists, process, "netd under callgrind", log, CALLGRIND_START_TIMEOUT, 0.2)
        services = json.loads(ports.read_text())["services"]
        port = next(int(bound["port"]) for bound in services["dns"] if bound["transport"] == "udp")
        waitUntil(lambda: answering(port), process, "netd under callgrind", log, CALLGRIND_START_TIMEOUT, 0.2)
        return process, port
    port = freeLoopbackPort()
    command = [
        findDnsmasq() or "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        f"--listen-address={HOST}",
        "--bind-interfaces",
        f"--port={port}",
        f"--server={upstream.replace(':', '#')}",
        "--cache-size=10000",
        "--user=root",
        "--group=root",
        "--pid-file",
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(underCallgrind(command, output), stdout=sink, stderr=subprocess.STDOUT)
    waitUntil(lambda: answering(port), process, "dnsmasq under callgrind", log, CALLGRIND_START_TIMEOUT, 0.2)
    return process, port


def ask(port: int, names: Path, queries: int, timeout: float, outstanding: int) -> int:
    """
    Send about C{queries} queries with dnsperf, C{outstanding} at a time,
    going round the names in C{names} as often as it takes; the number answered.
    """
    count = sum(1 for _ in names.open())
    command = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(names), "-n", str(max(1, queries // count))]
    command += ["-c", "4", "-T", "1", "-q", str(outstanding), "-t", "60"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    found = re.search(r"Queries completed:\s+(\d+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    """
    Measure and print.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--forwarder", choices=("netd", "dnsmasq"), default="netd")
    parser.add_argument("--mode", choices=("hit", "miss"), default="hit", help="cache hits, or unique names")
    parser.add_argument("--warmup", type=int, help="queries before the counted ones (hit: 3000, miss: 1000)")
    parser.add_argument("--queries", type=int, help="queries counted (hit: 20000, miss: 5000)")
    parser.add_argument("--keep", type=Path, help="copy the counted dump here, for callgrind_annotate")
    options = parser.parse_args()
    miss = options.mode == "miss"
    warmup = options.warmup if options.warmup is not None else 1000 if miss else 3000
    queries = options.queries if options.queries is not None else 5000 if miss else 20000
    with tempfile.TemporaryDirectory(prefix="netd-dns-callgrind-") as temporary:
        directory = Path(temporary)
        if miss:
            warmNames = directory / "warm.txt"
            warmNames.write_text("".join(f"w{index}.miss.{ZONE} A\n" for index in range(warmup)))
            names = directory / "misses.txt"
            names.write_text("".join(f"m{index}.miss.{ZONE} A\n" for index in range(queries)))
        else:
            warmNames = names = directory / "hits.txt"
            names.write_text("".join(f"hit{index}.{ZONE} A\n" for index in range(HIT_NAMES)))
        upstream = startDnsmasq(
            benchUpstreamArguments(), directory, readyName=f"ready.{ZONE}", logQueries=False, name="upstream"
        )
        output = directory / "callgrind.out"
        try:
            say(f"starting {options.forwarder} under callgrind")
            process, port = startUnderCallgrind(
                options.forwarder, f"{upstream.host}:{upstream.port}", directory, output
            )
            try:
                outstanding = 10 if miss else 100
                ask(port, warmNames, warmup, timeout=300, outstanding=outstanding)
                callgrindDump(process)
                answered = ask(port, names, queries, timeout=600, outstanding=outstanding)
                callgrindDump(process)
            finally:
                stopProcess(process)
            total = callgrindTotal(Path(f"{output}.2"))
            if options.keep is not None:
                shutil.copyfile(f"{output}.2", options.keep)
        finally:
            upstream.stop()
    what = "cache miss" if miss else "cache hit"
    print(f"{options.forwarder}: {total / answered:,.0f} instructions per {what} ({answered} counted)")


if __name__ == "__main__":
    main()
