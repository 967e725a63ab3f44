"""
User-space instructions per proxied round trip (or TLS handshake) of netd's
proxy (on its default reactor, or its epoll one), or of HAProxy for reference, counted by valgrind's callgrind: a figure
that, unlike the rates of bench.py, does not move with the load of a shared
machine, to tell whether a change to the relay pays.

The proxy runs under callgrind, unpinned, in front of bench.py's C echo
backend; bench/loadgen (rr: 50 connections, one 64-byte message in flight on
each; or tls-handshake: 16 at a time, a full TLS 1.3 handshake, one 64-byte
echo, close) first makes C{--warmup} round trips (handshakes), then
callgrind's counts are dumped (C{callgrind_control -d}), then C{--count}
more, dumped again.  The second dump's total, divided by the count, is
printed (C{--save} keeps the dump).  System calls are not counted: the
kernel's share (most of a round trip) needs C{perf} or the throughput runs.
Where in Python the instructions go is better seen with py-spy (README).

Run from the repository root: .venv/bin/python bench/proxy/callgrind.py
[--server netd|netd-epoll|haproxy] [--scenario rr|tls-handshake] (a minute or two;
needs valgrind, a C compiler and, for haproxy, HAProxy).
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

# bench.py, beside this script: the backend and the proxies' configs as the throughput runs use them.
from bench import HOST, NETD_REACTORS, Backend, buildBackend, freePort, haproxyConfig, netdConfig, tlsbench  # noqa: E402

RUN_TIMEOUT = 600.0
"""
Seconds a load generator run may take under callgrind at most.
"""


def startUnderCallgrind(
    server: str, backend: Backend, certs: Path, directory: Path, output: Path
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """
    The proxy under callgrind, and its port per kind (C{plain}, C{tls}), once it relays.
    """
    log = directory / f"{server}.log"
    if server in NETD_REACTORS:
        portsFile = directory / "netd-ports.json"
        config = directory / "netd.toml"
        config.write_text(netdConfig(backend.port, certs))
        process = launch(underCallgrind(netdCommand(config, portsFile), output), log, reactor=NETD_REACTORS[server])
        waitForFile(process, portsFile, "netd under callgrind", log, CALLGRIND_START_TIMEOUT, 0.2)
        services = json.loads(portsFile.read_text())["services"]
        return process, {kind: int(services[kind][0]["port"]) for kind in services}
    port = freePort()
    config = directory / "haproxy.cfg"
    config.write_text(haproxyConfig(port, backend.port, maxconn=1000))
    process = launch(underCallgrind(["haproxy", "-db", "-f", str(config)], output), log)
    return process, {"plain": port}


def load(binary: Path, scenario: str, port: int, count: int) -> int:
    """
    Make C{count} round trips (or handshakes) with the load generator, once
    the proxy answers; the number it made.
    """
    if scenario == "rr":
        arguments = ["rr", "--connections", "50", "--size", "64", "--warmup", "0"]
    else:
        arguments = ["tls-handshake", "--concurrency", "16", "--size", "64", "--tls-version", "1.3"]
    command = [str(binary), *arguments, "--host", HOST, "--port", str(port)]
    command += ["--duration", str(RUN_TIMEOUT), "--count", str(count)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT + 30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return int(result["count"])


def waitUntilAnswering(binary: Path, scenario: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """
    Retry one round trip (handshake) until the proxy under callgrind makes it.
    """
    for _ in range(int(CALLGRIND_START_TIMEOUT)):
        if process.poll() is not None:
            raise RuntimeError("the proxy exited under callgrind")
        try:
            load(binary, scenario, port, 1)
            return
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError):
            subprocess.run(["sleep", "1"], check=True)
    raise RuntimeError("the proxy did not answer under callgrind")


def main() -> None:
    """
    Measure and print.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=(*NETD_REACTORS, "haproxy"), default="netd")
    parser.add_argument("--scenario", choices=("rr", "tls-handshake"), default="rr")
    parser.add_argument("--warmup", type=int, help="round trips (handshakes) first (default 2000; handshakes 200)")
    parser.add_argument("--count", type=int, help="round trips (handshakes) counted (default 20000; handshakes 1000)")
    parser.add_argument(
        "--save", type=Path, help="also copy the counted dump here (for callgrind_annotate or kcachegrind)"
    )
    options = parser.parse_args()
    if options.scenario == "tls-handshake" and options.server not in NETD_REACTORS:
        parser.error("--scenario tls-handshake is netd's (HAProxy here is a plain TCP proxy)")
    handshakes = options.scenario == "tls-handshake"
    options.warmup = options.warmup or (200 if handshakes else 2000)
    options.count = options.count or (1000 if handshakes else 20000)
    binary = buildLoadgen()
    kind = "tls" if handshakes else "plain"
    with tempfile.TemporaryDirectory(prefix="netd-proxy-callgrind-") as temporary:
        directory = Path(temporary)
        output = directory / "callgrind.out"
        backend = Backend(buildBackend(), None)
        try:
            certs = tlsbench.makeCertificates(directory, ["ecdsa"])["ecdsa"]
            say(f"starting {options.server} under callgrind")
            process, ports = startUnderCallgrind(options.server, backend, certs, directory, output)
            try:
                waitUntilAnswering(binary, options.scenario, ports[kind], process)
                load(binary, options.scenario, ports[kind], options.warmup)
                callgrindDump(process)
                made = load(binary, options.scenario, ports[kind], options.count)
                callgrindDump(process)
            finally:
                stopProcess(process)
        finally:
            backend.stop()
        dumps = sorted(directory.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
        total = callgrindTotal(dumps[-1])
        if options.save:
            shutil.copyfile(dumps[-1], options.save)
    what = "TLS 1.3 handshake" if handshakes else "round trip"
    print(f"{options.server} {options.scenario}: {total / made:,.0f} instructions per {what} ({made} counted)")


if __name__ == "__main__":
    main()
