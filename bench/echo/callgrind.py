"""
User-space instructions per echo round trip, or per connection, of netd (or
of the asyncio and uvloop peers), counted by valgrind's callgrind: a figure
that, unlike round trips per second, does not move with the load of a shared
machine, to tell whether a change to the stream path or to connection set-up
pays.

The server runs under callgrind, unpinned; bench/loadgen first makes
C{--warmup} operations, then callgrind's counts are dumped
(C{callgrind_control -d}), then C{--trips} operations, dumped again.  The
second dump's total, divided by the operations, is printed.  The operation is
a round trip in C{rr} mode (50 connections, one 64-byte message in flight on
each, raw or u32 framing) and a connection in C{connrate} mode (16 at a time:
connect, one 64-byte echo, close, the same cycle as bench.py's connrate).
System calls are not counted: the kernel's share (most of it, for every
server) needs C{perf} or the throughput runs of bench.py.

Run from the repository root: .venv/bin/python bench/echo/callgrind.py
[--server netd|netd-epoll|asyncio|uvloop] [--mode rr|connrate] [--framing raw|u32]
(about 30 seconds; needs valgrind and a C compiler for the load generator).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402  (the path above makes it importable)
    CALLGRIND_START_TIMEOUT,
    buildLoadgen,
    callgrindDump,
    callgrindTotal,
    launch,
    netdCommand,
    say,
    stopProcess,
    underCallgrind,
    waitForFile,
)

# bench.py, beside this script: the servers' configs and commands as the throughput runs use them.
from bench import HOST, NETD_REACTORS, netdConfig, peerCommand  # noqa: E402

CONNECTIONS = 50
CONCURRENCY = 16
SIZE = 64
RUN_TIMEOUT = 600.0
"""
Seconds a load generator run may take under callgrind at most.
"""


def startUnderCallgrind(server: str, directory: Path, output: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """
    The server under callgrind, and its port per framing, once its ports file is written.
    """
    portsFile = directory / f"{server}-ports.json"
    log = directory / f"{server}.log"
    if server in NETD_REACTORS:
        config = directory / "netd.toml"
        config.write_text(netdConfig())
        command = netdCommand(config, portsFile)
    else:
        command = peerCommand(server, portsFile)
    process = launch(underCallgrind(command, output), log, reactor=NETD_REACTORS.get(server))
    waitForFile(process, portsFile, f"{server} under callgrind", log, CALLGRIND_START_TIMEOUT, 0.2)
    written = json.loads(portsFile.read_text())
    if server in NETD_REACTORS:
        return process, {framing: int(written["services"][framing][0]["port"]) for framing in ("raw", "u32")}
    return process, {framing: int(written[framing]) for framing in ("raw", "u32")}


def operations(binary: Path, mode: str, port: int, framing: str, trips: int) -> int:
    """
    Make C{trips} round trips (C{rr}) or connections (C{connrate}) with the
    load generator; the number it made.
    """
    command = [str(binary), mode, "--host", HOST, "--port", str(port), "--framing", framing]
    if mode == "rr":
        command += ["--connections", str(CONNECTIONS)]
    else:
        command += ["--concurrency", str(CONCURRENCY)]
    command += [
        "--size",
        str(SIZE),
        "--warmup",
        "0",
        "--duration",
        str(RUN_TIMEOUT),
        "--count",
        str(trips),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT + 30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return int(result["count"])


def main() -> None:
    """
    Measure and print.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=("netd", "netd-epoll", "asyncio", "uvloop"), default="netd")
    parser.add_argument("--mode", choices=("rr", "connrate"), default="rr")
    parser.add_argument("--framing", choices=("raw", "u32"), default="raw")
    parser.add_argument("--warmup", type=int, help="operations before the counted ones (default rr 2000, connrate 500)")
    parser.add_argument("--trips", type=int, help="operations counted (default rr 20000, connrate 3000)")
    parser.add_argument("--keep", type=Path, help="copy the counted dump here, for callgrind_annotate")
    options = parser.parse_args()
    if options.mode == "connrate" and options.framing != "raw":
        parser.error("connrate runs raw framing only (the load generator's connrate mode sends raw bytes)")
    for name, rr, connrate in (("warmup", 2000, 500), ("trips", 20000, 3000)):
        if getattr(options, name) is None:
            setattr(options, name, rr if options.mode == "rr" else connrate)
    binary = buildLoadgen()
    with tempfile.TemporaryDirectory(prefix="netd-echo-callgrind-") as temporary:
        directory = Path(temporary)
        output = directory / "callgrind.out"
        say(f"starting {options.server} under callgrind")
        process, ports = startUnderCallgrind(options.server, directory, output)
        try:
            port = ports[options.framing]
            operations(binary, options.mode, port, options.framing, options.warmup)
            callgrindDump(process)
            made = operations(binary, options.mode, port, options.framing, options.trips)
            callgrindDump(process)
        finally:
            stopProcess(process)
        total = callgrindTotal(Path(f"{output}.2"))
        if options.keep is not None:
            shutil.copyfile(f"{output}.2", options.keep)
    unit = "round trip" if options.mode == "rr" else "connection"
    print(
        f"{options.server} {options.mode} {options.framing}: {total / made:,.0f} instructions per {unit} ({made} counted)"
    )


if __name__ == "__main__":
    main()
