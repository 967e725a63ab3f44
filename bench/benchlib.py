"""
What the benchmark scripts (bench/echo/bench.py, bench/dns/bench.py,
bench/tls/bench.py) share: the machine the numbers were measured on, tool and
netd versions, starting a server pinned to a CPU and stopping it by its PID,
the CPU time and resident size of a server read from /proc, building and
running the C load generator, progress on standard error, adding a report to
RESULTS.md.

The scripts are run as scripts; each puts this folder on sys.path to import it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "bench" / "build"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
RESULTS_HEADING = "# Benchmark results\n\nEach run added by its script, newest first.\n"


def say(text: str) -> None:
    """
    Progress, on standard error.
    """
    print(f"bench: {text}", file=sys.stderr, flush=True)


def stopProcess(process: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM to the process's PID, SIGKILL if it lingers; wait for it.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def toolVersion(command: list[str], pattern: str = r"(.+)") -> str:
    """
    The first match of C{pattern} in what a tool prints about its version (by
    default its first line).
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except OSError:
        return "?"
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1).strip() if found else "?"


def netdVersion() -> str:
    """
    netd's git commit (with "+changes" when netd's code in the work tree differs from it).
    """
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "netd", "plugins", "pyproject.toml"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "netd"
    return f"netd {commit}{'+changes' if dirty else ''}"


def quietDaemonTable() -> str:
    """
    The C{[daemon]} table of a benchmark's netd: warnings only, and no control
    API where this netd has one (it would listen on a fixed port).
    """
    from netd.config.options import schemaFields
    from netd.config.spec import DaemonSpec

    return '[daemon]\nlog_level = "warn"\n' + ("admin = false\n" if "admin" in schemaFields(DaemonSpec) else "")


def pinnedTo(cpus: set[int] | None) -> Callable[[], None]:
    """
    What a server's child process does before it runs: run on C{cpus} only (as
    C{taskset} would; its children inherit it), and raise its open-files limit
    to the hard one, for the idle-connections test.
    """

    def prepare() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return prepare


def launch(
    command: list[str],
    log: Path,
    cpus: set[int] | None = None,
    stdin: int = subprocess.DEVNULL,
    reactor: str | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start a server (or tool) with its output going to C{log}, pinned to
    C{cpus}; for netd, on the reactor C{reactor} names (C{NETD_REACTOR}), or
    if L{None} the one this environment chooses.
    """
    environment = dict(os.environ)
    if reactor is not None:
        environment["NETD_REACTOR"] = reactor
    with log.open("wb") as output:
        return subprocess.Popen(
            command, stdin=stdin, stdout=output, stderr=subprocess.STDOUT, preexec_fn=pinnedTo(cpus), env=environment
        )


def waitUntil(
    ready: Callable[[], object],
    process: subprocess.Popen[bytes],
    what: str,
    log: Path,
    timeout: float = START_TIMEOUT,
    interval: float = 0.05,
) -> None:
    """
    Poll every C{interval} seconds until C{ready()} is true; stop the process
    and raise, with the end of its log, if it exits or takes longer than
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            stopProcess(process)
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(interval)


def waitForFile(
    process: subprocess.Popen[bytes],
    path: Path,
    what: str,
    log: Path,
    timeout: float = START_TIMEOUT,
    interval: float = 0.05,
) -> None:
    """
    Wait until C{path} exists (a ports file, written once the server
    listens); see L{waitUntil}.
    """
    waitUntil(path.exists, process, what, log, timeout, interval)


# Counting instructions with callgrind: figures that, unlike rates, do not
# move with the load of a shared machine (bench/dns/callgrind.py,
# bench/echo/callgrind.py).

CALLGRIND_START_TIMEOUT = 180.0
"""
Seconds a server may take to start under callgrind (about fifty times slower than without).
"""
CALLGRIND_SETTLE = 0.5
"""
Seconds to wait around each dump, for the last requests to be handled and the dump to be written.
"""


def underCallgrind(command: list[str], output: Path) -> list[str]:
    """
    C{command} run by callgrind, its counts written to C{output} (and to
    C{output.1}, C{output.2}, ... at each L{callgrindDump}).
    """
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={output}", *command]


def callgrindDump(process: subprocess.Popen[bytes]) -> None:
    """
    Have callgrind write its counts so far (a numbered part file) and start again from zero.
    """
    time.sleep(CALLGRIND_SETTLE)
    subprocess.run(["callgrind_control", "-d", str(process.pid)], capture_output=True, timeout=60, check=True)
    time.sleep(CALLGRIND_SETTLE)


def callgrindTotal(part: Path) -> int:
    """
    The instructions counted in one dump.
    """
    annotated = subprocess.run(
        ["callgrind_annotate", str(part)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    found = re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", annotated) or re.search(
        r"([\d,]+)\s+PROGRAM TOTALS", annotated
    )
    if found is None:
        raise RuntimeError(f"callgrind_annotate printed no total for {part}")
    return int(found.group(1).replace(",", ""))


def netdCommand(configFile: Path, portsFile: Path) -> list[str]:
    """
    C{netd run} on a config, writing its ports file, with this Python.
    """
    return [sys.executable, "-m", "netd", "run", "-c", str(configFile), "--ports-file", str(portsFile)]


def startNetd(
    config: str, directory: Path, name: str, cpus: set[int] | None = None, reactor: str | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, list[dict[str, object]]], Path]:
    """
    netd on C{config} (ports picked by netd), pinned to C{cpus}, on the
    reactor C{reactor} names (if L{None}, the one this environment's
    C{NETD_REACTOR} chooses), once its ports file is written.
    """
    configFile = directory / f"{name}.toml"
    configFile.write_text(config)
    portsFile = directory / f"{name}-ports.json"
    portsFile.unlink(missing_ok=True)
    log = directory / f"{name}.log"
    process = launch(netdCommand(configFile, portsFile), log, cpus, reactor=reactor)
    waitForFile(process, portsFile, name, log)
    return process, json.loads(portsFile.read_text())["services"], log


def benchCpus() -> tuple[set[int] | None, set[int] | None]:
    """
    Where the server and the load generator run: the first allowed CPU and the
    second, so that neither takes the other's core; no pinning with one CPU.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return {allowed[0]}, {allowed[1]}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


def cpuTime(pid: int, threadsComeAndGo: bool = False) -> float:
    """
    CPU seconds used so far by a process and all its descendants, so that a
    forking server (socat) is counted whole: each live thread's run time from
    /proc/PID/task/TID/schedstat (in nanoseconds: the clock ticks of
    /proc/PID/stat, truncated per process, would lose most of the time of
    fifty small socat children), plus the reaped children's (cutime, cstime).

    @param threadsComeAndGo: the process makes a thread per connection
        (stunnel), so the live threads' sum would lose the time of those that
        have exited: its own time is then its (utime, stime) from
        /proc/PID/stat, which keeps theirs (to the clock tick).
    """
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            if threadsComeAndGo and current == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime stime
            else:
                for task in os.listdir(f"/proc/{current}/task"):
                    total += int(Path(f"/proc/{current}/task/{task}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime cstime
        pending += _children(current)
    return total


def residentKiB(pid: int) -> int:
    """
    A process's resident size (VmRSS), in KiB.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for PID {pid}")


def treeResidentKiB(pid: int) -> int:
    """
    The resident size (VmRSS, KiB) of a process and all its descendants
    together: a server with worker processes (hitch) counted whole.
    """
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += residentKiB(current)
        except (OSError, RuntimeError):
            continue
        pending += _children(current)
    return total


def treeOpenFiles(pid: int) -> int:
    """
    The open file descriptors of a process and all its descendants: how a
    caller sees that a server has accepted connections that send nothing.
    """
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += len(os.listdir(f"/proc/{current}/fd"))
        except OSError:
            continue
        pending += _children(current)
    return total


def raiseFilesLimit(files: int) -> int:
    """
    Raise this process's open-files limit, which the servers and load
    generators it starts inherit, to C{files} (root may raise the hard
    limit, unless the machine withholds that), else to its hard limit; the
    limit now.
    """
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def buildLoadgen() -> Path:
    """
    The C load generator, compiled with the machine's compiler (C{$CC}, else
    cc) and linked with OpenSSL's libssl (its TLS modes; libssl-dev) into
    bench/build/ when it is missing or older than its source.
    """
    source = ROOT / "bench" / "loadgen" / "loadgen.c"
    binary = BUILD / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc) to build bench/loadgen/loadgen.c; bench/setup-tools.sh installs gcc")
    BUILD.mkdir(parents=True, exist_ok=True)
    say(f"building {binary} with {compiler}")
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source), "-lssl", "-lcrypto"],
        check=True,
        timeout=120,
    )
    return binary


class Loadgen:
    """
    One run of bench/loadgen, whose JSON lines are read as they come.
    """

    def __init__(
        self, binary: Path, mode: str, port: int, arguments: list[str], cpus: set[int] | None, timeout: float
    ) -> None:
        self.command = [str(binary), mode, "--host", "127.0.0.1", "--port", str(port), *arguments]
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=pinnedTo(cpus),
        )
        self.deadline = time.monotonic() + timeout
        self.pending = b""

    def next(self) -> dict[str, object]:
        """
        The next JSON line; raise if the tool exits or the run's time is up first.
        """
        assert self.process.stdout is not None
        while b"\n" not in self.pending:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise RuntimeError(f"{' '.join(self.command)} took too long")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            chunk = os.read(self.process.stdout.fileno(), 65536) if ready else b""
            if ready and not chunk:
                self.close()
                raise RuntimeError(f"{' '.join(self.command)} exited {self.process.returncode}: {self.errors()}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        result: dict[str, object] = json.loads(line)
        return result

    def errors(self) -> str:
        """
        What the tool wrote on standard error (once it has exited).
        """
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        """
        Close its standard input (which ends an idle run's hold) and wait for it; stop it by PID if it lingers.
        """
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stopProcess(self.process)


def measureLoad(
    binary: Path,
    mode: str,
    port: int,
    arguments: list[str],
    serverCpu: Callable[[], float],
    cpus: set[int] | None,
    timeout: float,
) -> tuple[dict[str, object], dict[str, float]]:
    """
    One load generator run: its result line, and the figures of the table:
    C{rate}, C{server_cpu} (the cores the server used over the measured
    window: C{serverCpu}, its CPU seconds so far, sampled when the load
    generator says the window starts and when it reports), C{per_core}
    (the rate over that share) and C{loadgen_cpu}, plus the latencies and
    errors the mode reports.
    """
    run = Loadgen(binary, mode, port, arguments, cpus, timeout)
    try:
        started = run.next()
        if started.get("event") != "start":
            raise RuntimeError(f"loadgen said {started}")
        cpuBefore, timeBefore = serverCpu(), time.monotonic()
        result = run.next()
        cpuAfter, timeAfter = serverCpu(), time.monotonic()
    finally:
        run.close()
    if run.process.returncode:
        raise RuntimeError(f"{' '.join(run.command)} exited {run.process.returncode}: {run.errors()}")
    rate = float(result["rate"])  # type: ignore[arg-type]
    serverCores = (cpuAfter - cpuBefore) / (timeAfter - timeBefore)
    figures = {
        "rate": rate,
        "server_cpu": serverCores,
        "per_core": rate / serverCores if serverCores else 0.0,
        "loadgen_cpu": float(result["cpu_s"]) / float(result["elapsed_s"]),  # type: ignore[arg-type]
    }
    for key in ("p50_us", "p99_us", "errors"):
        if key in result:
            figures[key] = float(result[key])  # type: ignore[arg-type]
    return result, figures


def _moduleVersion(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "?"
    return str(getattr(module, "__version__", "?"))


def machine(**extra: str) -> dict[str, str]:
    """
    What the numbers were measured on; C{extra} entries (a script's own tools)
    go before the load average.
    """
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "twisted": _moduleVersion("twisted"),
        "pyopenssl": _moduleVersion("OpenSSL"),
        "openssl": toolVersion(["openssl", "version"], r"^(OpenSSL \S+)"),
        "python_ssl": ssl.OPENSSL_VERSION,
        **extra,
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }


def publish(text: str, result: object, jsonPath: Path | None, recordIt: bool) -> None:
    """
    The end of every benchmark script: print its tables, write every round's
    figures to C{--json} when given, and add the tables to RESULTS.md with
    C{--record}.
    """
    print(text)
    if jsonPath:
        jsonPath.write_text(json.dumps(result, indent=2))
    if recordIt:
        record(text)


def record(text: str) -> None:
    """
    Add a report to bench/RESULTS.md, newest first: after the heading, before
    the reports already there (the file is made with its heading if missing).
    """
    results = ROOT / "bench" / "RESULTS.md"
    existing = results.read_text() if results.exists() else RESULTS_HEADING
    first = existing.find("\n### ")
    head, reports = (existing, "") if first < 0 else (existing[: first + 1], existing[first + 1 :])
    results.write_text(head.rstrip("\n") + "\n\n" + text.strip("\n") + "\n" + ("\n" + reports if reports else ""))
    say(f"added to {results}")
