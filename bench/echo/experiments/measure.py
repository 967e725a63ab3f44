"""
The io_uring experiment's numbers: round trips per second and server CPU per
round trip of the two io_uring echoes (uring_echo.py beside this file, with
and without a Python protocol) beside the C epoll echo, uvloop and netd, under
bench/echo's rr load (50 connections, one 64-byte message in flight on each,
server and load generator pinned to their own CPUs), round-robin over the
servers, medians.

Run from the repository root: .venv/bin/python bench/echo/experiments/measure.py
[--rounds 3] [--duration 2] (needs liburing-dev and a C compiler).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from benchlib import benchCpus, buildLoadgen, launch, waitUntil  # noqa: E402

from bench import Server, measureRate, printedPort, startServer  # noqa: E402

URING = {"uring-c": ["--pure"], "uring-python": []}
SERVERS = ("c-epoll", "uring-c", "uring-python", "uvloop", "netd")


def startUring(name: str, directory: Path, cpus: set[int] | None) -> Server:
    """
    uring_echo.py, in C or with its Python protocol, once it has printed its port.
    """
    log = directory / f"{name}.log"
    process = launch([sys.executable, str(HERE / "uring_echo.py"), *URING[name]], log, cpus, stdin=subprocess.PIPE)
    waitUntil(lambda: printedPort(log) is not None, process, name, log)
    port = printedPort(log)
    assert port is not None
    return Server(name, {"raw": port}, process, "uringloop.c")


def main() -> None:
    """
    Measure and print a Markdown table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    options = parser.parse_args()
    options.bulk_timeout = 60.0
    binary = buildLoadgen()
    serverCpus, loadCpus = benchCpus()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="netd-uring-") as temporary:
        directory = Path(temporary)
        started = {
            name: startUring(name, directory, serverCpus) if name in URING else startServer(name, directory, serverCpus)
            for name in options.servers
        }
        try:
            for _ in range(options.rounds):
                for name, server in started.items():
                    results.setdefault(name, []).append(measureRate(binary, "rr-raw", server, options, loadCpus))
        finally:
            for server in started.values():
                server.stop()
    print("| server | round trips/s | server CPU | per server core | server CPU µs per round trip |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        rate, cpu, perCore = (statistics.median(r[key] for r in runs) for key in ("rate", "server_cpu", "per_core"))
        print(f"| {name} | {rate:,.0f} | {cpu:.2f} | {perCore:,.0f} | {1e6 / perCore:.2f} |")


if __name__ == "__main__":
    main()
