"""
A generated pytest suite run two ways: a netd process per test (the
C{netd_server} fixture) and one netd for the session with a service per test
(C{netd_session} + C{netd_service}, services created and removed through the
control API).  Reports the wall time of each whole run, per test, and the
ratio.

The suite: C{--tests} tests (200 by default), each of which gets an echo
service (line framing) on a loopback port of its own, connects, sends one
line and checks the echo.  The two ways are the same test body; only the
fixture differs.  Each run is C{python -m pytest -q} in a folder of its own
(a subprocess, so that both pay pytest's start alike, and the session netd's
start counts); rounds alternate the two ways and the medians are reported.

Run from the repository root: bench/pytest_suite/run.sh (installs pytest into
.venv when missing), or .venv/bin/python bench/pytest_suite/bench.py.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import machine, netdVersion, publish, say, toolVersion  # noqa: E402

RUN_TIMEOUT = 900.0
"""
Seconds one pytest run may take (200 netd starts take about 100 on a busy
2-core machine).
"""

COMMON = """
import socket

import pytest


def roundTrip(address, line):
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(line + b"\\n")
        answer = b""
        while not answer.endswith(b"\\n"):
            chunk = client.recv(4096)
            assert chunk, "closed before the answer"
            answer += chunk
        return answer[:-1]
"""

PER_TEST = "per-test netd_server"
SESSION = "session netd + netd_service"

SUITES = {
    PER_TEST: COMMON
    + """
ECHO = {"services": [{"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"], "framing": "line"}]}


@pytest.mark.parametrize("i", range({tests}))
def test_echo(netd_server, i):
    server = netd_server(ECHO)
    assert roundTrip(server.address("echo"), b"line %d" % i) == b"line %d" % i
""",
    SESSION: COMMON
    + """

@pytest.mark.parametrize("i", range({tests}))
def test_echo(netd_service, i):
    echo = netd_service({"plugin": "echo", "framing": "line"})
    assert roundTrip(echo.address(), b"line %d" % i) == b"line %d" % i
""",
}


def runSuite(way: str, tests: int, folder: Path) -> float:
    """
    Write the suite of C{way} into C{folder}, run it with pytest, check that
    every test passed, and answer the wall time in seconds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_suite.py").write_text(SUITES[way].replace("{tests}", str(tests)))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_suite.py"]
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0 or f"{tests} passed" not in done.stdout:
        raise SystemExit(
            f"bench: the {way} suite failed ({done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
        )
    return elapsed


def run(options: argparse.Namespace) -> tuple[dict[str, str], dict[str, list[float]]]:
    """
    The rounds, each way in turn: the machine, and every wall time by way.
    """
    info = machine(pytest=toolVersion([sys.executable, "-m", "pytest", "--version"]), netd=netdVersion())
    times: dict[str, list[float]] = {way: [] for way in SUITES}
    with tempfile.TemporaryDirectory(prefix="netd-bench-pytest-") as scratch:
        for number in range(options.rounds):
            for way in SUITES:
                say(f"round {number + 1}/{options.rounds}: {way}, {options.tests} tests")
                elapsed = runSuite(way, options.tests, Path(scratch) / f"{number}-{way.split()[0]}")
                say(f"  {elapsed:.1f} s")
                times[way].append(elapsed)
    return info, times


def report(info: dict[str, str], medians: dict[str, float], options: argparse.Namespace) -> str:
    """
    The results as Markdown: the machine, the settings, the table with the ratio.
    """
    tests = options.tests
    session = medians[SESSION]
    lines = [
        f"### pytest suite: a netd per test or one per session, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs (nproc {info['nproc']}), {info['cpu']}, {info['kernel']}, load average before the run {info['load']}",
        f"- software: Python {info['python']}, Twisted {info['twisted']}, {info['pytest']}; netd: {info['netd']}",
        f"- settings: a generated suite of {tests} tests, each with an echo service (line framing) on a loopback port of its own, "
        "one connection, one line sent and its echo checked; per-test: the netd_server fixture (a netd process per test); "
        "session: netd_session + netd_service (one netd for the run, a service created and removed through the control API "
        f"per test); `python -m pytest -q` as a subprocess, wall time of the whole run (pytest's start included); "
        f"medians of {options.rounds} round(s), the two ways alternating",
        "",
        "| way | tests | wall time (s) | per test (ms) | time / session's |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for way, seconds in medians.items():
        lines.append(f"| {way} | {tests} | {seconds:.1f} | {seconds / tests * 1000:.1f} | {seconds / session:.1f}× |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """
    Parse the options, run, print and (with --record) record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=200, help="tests in the generated suite (1-1000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over both ways; the medians are reported")
    parser.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md (newest first)")
    parser.add_argument("--json", type=Path, help="also write every round's numbers to this file")
    options = parser.parse_args()
    if not 1 <= options.tests <= 1000 or not 1 <= options.rounds <= 10:
        parser.error("--tests is 1-1000, --rounds 1-10")
    info, times = run(options)
    medians = {way: statistics.median(seconds) for way, seconds in times.items()}
    result = {"machine": info, "tests": options.tests, "times": times, "medians": medians}
    publish(report(info, medians, options), result, options.json, options.record)


if __name__ == "__main__":
    main()
