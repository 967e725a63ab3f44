"""
The proxy benchmark (bench/proxy/bench.py) runs end to end in a few seconds:
its C echo backend and load generator build, netd's proxy and socat relay to
the backend, netd terminates TLS in front of it, and the report has its
tables.  The figures are not checked (a benchmark is never a timed test).
"""

from __future__ import annotations

from .conftest import loadsTheMachine, requireTool, runBench

pytestmark = loadsTheMachine


def test_proxyBenchRunsAndReports() -> None:
    """
    A tiny run through netd and socat (rr, bulk, TLS handshakes and bulk,
    50 idle pairs) exits 0 and prints each scenario's row for netd, socat's
    rows with netd/socat ratios, the backend's direct runs, the memory table
    and the goal of round trips against socat.
    """
    requireTool("socat")
    arguments = "--servers netd socat --duration 0.5 --rounds 1 --bulk-mib 4 --tls-bulk-mib 2 --idle-pairs 50"
    lines, rows = runBench("proxy/bench.py", *arguments.split())
    named = {(row[0].lstrip("| "), row[1]) for row in rows}
    for scenario in ("round trips", "bulk, one", "TLS 1.3 handshake", "TLS 1.3 bulk"):
        assert any(label.startswith(scenario) and proxy == "netd" for label, proxy in named), scenario
    socatRows = [row for row in rows if row[1] == "socat"]
    assert len(socatRows) == 2
    assert all(float(row[-1].rstrip(" |")) > 0 for row in socatRows)
    assert sum(row[1] == "backend direct (no proxy)" for row in rows) == 2
    assert any(row[0] == "| netd" and row[3] for row in rows if len(row) == 5)
    assert any("netd/socat" in line and "≥ 1.0" in line for line in lines)
