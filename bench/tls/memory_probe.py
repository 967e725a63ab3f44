"""
Where the memory of netd's idle and stalled TLS connections goes: netd's
own stack (its C{netd run}, in a process of this script's, with Python's
C{tracemalloc} on) holding connections that bench/loadgen opens, as in
bench/tls/bench.py's memory scenario.

For each kind of connection (L{bench.MEMORY_KINDS}), a fresh netd with one
tls-echo service; a snapshot of its Python allocations and its resident
size before and with the connections open.  The report: KiB per connection
of resident size, of Python's allocations (the rest is C: OpenSSL's
connection state and buffers, the memory BIOs, the kernel's share is not in
RSS), and the Python allocations that grew most, by the line that made them.
tracemalloc's own bookkeeping is not in its figures but is in the resident
size, which is therefore larger than without it: the bench's figures are the
ones to quote.

Run from the repository root: .venv/bin/python bench/tls/memory_probe.py
[--connections 2000] [--kinds "idle 1.3" "stall tcp"] [--top 15].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "tls"))

from benchlib import (  # noqa: E402
    Loadgen,
    buildLoadgen,
    launch,
    quietDaemonTable,
    raiseFilesLimit,
    residentKiB,
    say,
    stopProcess,
    treeOpenFiles,
    waitForFile,
)

from bench import (  # noqa: E402  (the paths above make them importable)
    HOST,
    MEMORY_KINDS,
    SETTLE,
    makeCertificates,
    memoryRun,
    waitForAccepts,
)

FRAMES = 1
"""
Frames of traceback kept per allocation: the line that made it.
"""


def serve(configFile: str, portsFile: str, dumps: str) -> int:
    """
    The child: netd run, with tracemalloc on and a thread that writes
    C{dumps}/N.snapshot when C{dumps}/N.request appears (N from 0): netd
    has its own uses for signals.
    """
    tracemalloc.start(FRAMES)

    def answer() -> None:
        index = 0
        while True:
            request = os.path.join(dumps, f"{index}.request")
            if os.path.exists(request):
                path = os.path.join(dumps, f"{index}.snapshot")
                tracemalloc.take_snapshot().dump(path + ".part")
                os.rename(path + ".part", path)
                index += 1
            time.sleep(0.1)

    threading.Thread(target=answer, daemon=True).start()
    from netd.daemon.cli import main

    return main(["run", "-c", configFile, "--ports-file", portsFile])


def snapshot(dumps: Path, index: int) -> tracemalloc.Snapshot:
    """
    Ask the child for its snapshot number C{index} and load it.
    """
    path = dumps / f"{index}.snapshot"
    (dumps / f"{index}.request").touch()
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no snapshot from netd")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


def probe(kind: str, directory: Path, options: argparse.Namespace, binary: Path) -> None:
    """
    One kind: a fresh netd, snapshots and resident sizes before and with the connections; printed.
    """
    certs = makeCertificates(directory, ["ecdsa"])["ecdsa"]
    config = directory / "netd.toml"
    config.write_text(
        quietDaemonTable()
        + f'\n[[services]]\nname = "tls"\nplugin = "tls-echo"\nlisten = ["tcp:0:interface={HOST}"]\nframing = "raw"\n'
        "max_connections = 20000\nidle_timeout = 3600\n"
        f'tls = {{ certificate = "{certs / "server.pem"}", private_key = "{certs / "server-key.pem"}", '
        "handshake_timeout = 600 }\n"
    )
    portsFile, log, dumps = directory / "ports.json", directory / "netd.log", directory / "dumps"
    dumps.mkdir()
    process = launch(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(config), str(portsFile), str(dumps)], log
    )
    try:
        waitForFile(process, portsFile, "netd", log, timeout=60)
        port = int(json.loads(portsFile.read_text())["services"]["tls"][0]["port"])
        time.sleep(SETTLE)
        before, rssBefore = snapshot(dumps, 0), residentKiB(process.pid)
        files = treeOpenFiles(process.pid)
        mode, arguments = memoryRun(kind, options.connections)
        run = Loadgen(binary, mode, port, arguments, None, timeout=300)
        try:
            ready = run.next()
            if ready.get("event") != "ready":
                raise RuntimeError(f"loadgen said {ready}")
            if kind == "stall tcp":
                waitForAccepts(process.pid, files + options.connections)
            time.sleep(SETTLE)
            during, rssDuring = snapshot(dumps, 1), residentKiB(process.pid)
        finally:
            run.close()
    finally:
        stopProcess(process)
    n = options.connections
    stats = during.compare_to(before, "lineno")
    python = sum(stat.size_diff for stat in stats) / 1024 / n
    print(f"\n## {MEMORY_KINDS[kind]}, {n:,} connections")
    print(f"- resident size: {(rssDuring - rssBefore) / n:.2f} KiB per connection (with tracemalloc's own bookkeeping)")
    print(f"- Python allocations: {python:.2f} KiB per connection; the rest is C (OpenSSL, cffi, the reactor)")
    print("\n| KiB per connection | blocks per connection | where |\n| ---: | ---: | --- |")
    for stat in stats[: options.top]:
        frame = stat.traceback[0]
        where = f"{os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) else frame.filename}:{frame.lineno}"
        print(f"| {stat.size_diff / 1024 / n:.3f} | {stat.count_diff / n:.2f} | {where} |")


def main() -> None:
    """
    Parse the options; serve (the child) or probe each kind.
    """
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        sys.exit(serve(*sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--kinds", nargs="+", default=list(MEMORY_KINDS), choices=MEMORY_KINDS)
    parser.add_argument("--top", type=int, default=15, help="the allocation sites shown per kind")
    options = parser.parse_args()
    raiseFilesLimit(2 * options.connections + 200)
    binary = buildLoadgen()
    for kind in options.kinds:
        say(f"probing {kind}")
        with tempfile.TemporaryDirectory(prefix="netd-tls-memory-") as temporary:
            probe(kind, Path(temporary), options, binary)


if __name__ == "__main__":
    main()
