"""
What the benchmark scripts (bench/dns/bench.py, bench/tls/bench.py) share:
the machine the numbers were measured on, tool and netd versions, starting netd
and stopping a process by its PID, progress on standard error, appending to RESULTS.md.

The scripts are run as scripts; each puts this folder on sys.path to import it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


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
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "netd", "plugins", "pyproject.toml"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "netd"
    return f"netd {commit}{'+changes' if dirty else ''}"


def startNetd(config: str, directory: Path, name: str) -> tuple[subprocess.Popen[bytes], dict[str, list[dict[str, object]]], Path]:
    """
    netd on C{config} (ports picked by netd), once its ports file is written.
    """
    configFile = directory / f"{name}.toml"
    configFile.write_text(config)
    portsFile = directory / f"{name}-ports.json"
    log = directory / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "netd", "run", "-c", str(configFile), "--ports-file", str(portsFile)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not portsFile.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stopProcess(process)
            raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return process, json.loads(portsFile.read_text())["services"], log


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
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
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


def record(text: str) -> None:
    """
    Append a report to bench/RESULTS.md (made with its heading if missing).
    """
    results = ROOT / "bench" / "RESULTS.md"
    existing = results.read_text() if results.exists() else "# Benchmark results\n\nEach run appended by its script, newest last.\n\n"
    results.write_text(existing.rstrip("\n") + "\n\n" + text)
    say(f"appended to {results}")
