"""
The C{netd_server} fixture as a user's test suite sees it: an inner pytest run
(a subprocess, through C{pytester}) that finds the fixture through the
C{pytest11} entry point alone, whose netds are all gone afterwards, after a
passing test, a failing one and one whose config netd refuses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration

INNER_TIMEOUT = 180.0

INNER_TESTS = '''
import socket
from pathlib import Path

PIDS = Path(__file__).with_name("pids.txt")
ECHO = {"services": [{"name": "echo", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"]}]}


def started(server):
    with PIDS.open("a") as f:
        f.write(f"{server.pid} {server.configFile}\\n")
    return server


def test_passes(netd_server):
    server = started(netd_server(ECHO))
    with socket.create_connection(server.address("echo"), timeout=5) as client:
        client.sendall(b"inner")
        assert client.recv(5) == b"inner"


def test_failsWithTwoNetds(netd_server):
    started(netd_server(ECHO))
    started(netd_server("""
        [[services]]
        name = "second"
        plugin = "echo"
        listen = ["tcp:0:interface=127.0.0.1"]
    """))
    assert False, "failing on purpose"


def test_refusedConfig(netd_server):
    netd_server({"services": [{"name": "echo", "plugin": "no-such-plugin", "listen": ["tcp:0"]}]})
'''


def alive(pid: int, marker: str) -> bool:
    """
    Whether process C{pid} exists and is the netd started with config C{marker}.
    """
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def test_innerSuite(pytester: pytest.Pytester) -> None:
    """
    An inner suite finds the fixture through the entry point alone; afterwards no netd of its passing and failing tests is left, the failing test's report shows its netds' output, and a refused config fails with netd's own message.
    """
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    lines = (pytester.path / "pids.txt").read_text().splitlines()
    started = [(int(pid), marker) for pid, marker in (line.split(" ", 1) for line in lines)]
    result.assert_outcomes(passed=1, failed=2)
    assert len(started) == 3
    assert [pid for pid, marker in started if alive(pid, marker)] == []
    output = result.stdout.str()
    assert "failing on purpose" in output
    for pid, _ in started[1:]:
        assert f"netd log (pid {pid}," in output
    assert "netd is ready" in output
    assert "NetdStartError" in output
    assert "services[0].plugin" in output and "no-such-plugin" in output
