"""
User-space instructions per echo round trip of netd (or of the asyncio and
uvloop peers), counted by valgrind's callgrind: a figure that, unlike round
trips per second, does not move with the load of a shared machine, to tell
whether a change to the stream path pays.

The server runs under callgrind, unpinned; bench/loadgen (rr: 50
connections, one 64-byte message in flight on each, raw or u32 framing) first
makes C{--warmup} round trips, then callgrind's counts are dumped
(C{callgrind_control -d}), then C{--trips} round trips, dumped again.  The
second dump's total, divided by the round trips, is printed.  System calls
are not counted: the kernel's share of a round trip (most of it, for every
server) needs C{perf} or the throughput runs of bench.py.

Run from the repository root: .venv/bin/python bench/echo/callgrind.py
[--server netd|netd-epoll|asyncio|uvloop] [--framing raw|u32] (about 30 seconds; needs
valgrind and a C compiler for the load generator).
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


def roundTrips(binary: Path, port: int, framing: str, trips: int) -> int:
    """
    Make C{trips} round trips with the load generator; the number it made.
    """
    command = [str(binary), "rr", "--host", HOST, "--port", str(port), "--framing", framing]
    command += [
        "--connections",
        str(CONNECTIONS),
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
    parser.add_argument("--framing", choices=("raw", "u32"), default="raw")
    parser.add_argument("--warmup", type=int, default=2000, help="round trips before the counted ones")
    parser.add_argument("--trips", type=int, default=20000, help="round trips counted")
    parser.add_argument(
        "--keep", type=Path, help="copy the counted dump here, for callgrind_annotate (where the instructions go)"
    )
    options = parser.parse_args()
    binary = buildLoadgen()
    with tempfile.TemporaryDirectory(prefix="netd-echo-callgrind-") as temporary:
        directory = Path(temporary)
        output = directory / "callgrind.out"
        say(f"starting {options.server} under callgrind")
        process, ports = startUnderCallgrind(options.server, directory, output)
        try:
            roundTrips(binary, ports[options.framing], options.framing, options.warmup)
            callgrindDump(process)
            made = roundTrips(binary, ports[options.framing], options.framing, options.trips)
            callgrindDump(process)
        finally:
            stopProcess(process)
        total = callgrindTotal(Path(f"{output}.2"))
        if options.keep is not None:
            shutil.copyfile(f"{output}.2", options.keep)
    print(
        f"{options.server} {options.framing}: {total / made:,.0f} instructions per round trip ({made} round trips counted)"
    )


if __name__ == "__main__":
    main()
