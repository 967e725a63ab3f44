"""
The TLS benchmark's memory scenario (bench/tls/bench.py --scenarios memory)
runs end to end in a few seconds: loadgen's tls-idle, tls-stall and stall
modes hold their connections on netd, and the report has the memory table
with a row per kind and the goal line.  The figures are not checked (a
benchmark is never a timed test).
"""

from __future__ import annotations

from .conftest import loadsTheMachine, runBench

pytestmark = loadsTheMachine


def test_tlsMemoryBenchRunsAndReports() -> None:
    """
    A tiny memory run against netd alone (50 connections of each kind) exits
    0 and prints netd's row for every kind and the goal of issue 18.
    """
    lines, rows = runBench("tls/bench.py", "--servers", "netd", "--scenarios", "memory", "--memory-connections", "50")
    kinds = {row[0].lstrip("| ") for row in rows if len(row) > 1 and row[1] == "netd"}
    assert kinds == {
        "idle, TLS 1.3",
        "idle, TLS 1.2",
        "stalled after its ClientHello",
        "stalled before its ClientHello",
    }
    assert any(line.startswith("- goal (issue 18): at most 10 KiB") for line in lines)
