"""
The session netd of the pytest plugin as a user's suite sees it: an inner
pytest run (a subprocess, through C{pytester}) whose tests share one netd
(C{netd_session}) and make their own services on it (C{netd_service}), which
are gone after each test, passed or failed, while what a test changed of a
service that outlives it is put back.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netd.testing.pytest_plugin import serviceStem

from .conftest import IO_TIMEOUT, requireTool
from .processes import stopProcess

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration

INNER_TIMEOUT = 180.0
REDIS_START_TIMEOUT = 10.0

INNER_TESTS = """
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

RECORD = Path(__file__).with_name("record.jsonl")
REDIS = int(os.environ["INNER_REDIS_PORT"])


def note(test, server, **fields):
    with RECORD.open("a") as f:
        f.write(json.dumps({"test": test, "pid": server.pid, **fields}) + "\\n")


def lineRoundTrip(address, line):
    with socket.create_connection(address, timeout=5) as client:
        client.sendall(line + b"\\n")
        answer = b""
        while not answer.endswith(b"\\n"):
            chunk = client.recv(4096)
            assert chunk, "closed before the answer"
            answer += chunk
        return answer[:-1]


@pytest.fixture(scope="module")
def shared(netd_session):
    netd_session.addService({
        "name": "shared", "plugin": "echo", "listen": ["tcp:0:interface=127.0.0.1"],
        "faults": [{"type": "latency", "ms": 1}],
    })
    netd_session.addService({
        "name": "shared-dns", "plugin": "dns-proxy", "listen": ["udp:0:interface=127.0.0.1"],
        "upstreams": ["udp:127.0.0.1:9"], "health_check": 3600,
        "records": {"kept.test": {"A": ["192.0.2.1"]}},
        "scripts": [{"name": "kept.test", "rcode": "SERVFAIL"}],
    })
    yield netd_session
    netd_session.removeService("shared")
    netd_session.removeService("shared-dns")


def test_changesSharedServices(netd_service, shared):
    echo = netd_service({"plugin": "echo", "framing": "line"})
    assert lineRoundTrip(echo.address(), b"hello") == b"hello"
    assert echo.counters["connections_accepted"] == 1
    assert [e["kind"] for e in echo.events()] == ["connection"]
    note("changes", shared, names=[echo.name], address=list(echo.address()))
    shared.admin.setFaults("shared", [{"type": "reset_after", "bytes": 0}])
    with pytest.raises(ConnectionError), socket.create_connection(shared.address("shared"), timeout=5) as client:
        client.sendall(b"x")
        client.recv(1)
    shared.admin.setScripts("shared-dns", [])
    shared.admin.setRecords("shared-dns", {"added.test": {"A": ["192.0.2.9"]}})
    shared.admin.deleteRecords("shared-dns", "kept.test")


def test_failsWithTwoServices(netd_service, netd_session):
    first = netd_service({"plugin": "echo"}, faults=[{"type": "reset_after", "bytes": 0}])
    second = netd_service({"plugin": "echo"})
    note("fails", netd_session, names=[first.name, second.name], address=list(second.address()))
    assert first.faults()[0]["type"] == "reset_after"
    assert second.faults() == []
    assert False, "failing on purpose"


def test_findsSharedServicesAsBefore(netd_session, shared):
    services = netd_session.admin.services()["services"]
    note("after", netd_session, names=[], services=sorted(services))
    assert [f["type"] for f in netd_session.admin.faults("shared")] == ["latency"]
    assert netd_session.admin.events("shared") == []
    assert [s["name"] for s in netd_session.admin.scripts("shared-dns")] == ["kept.test"]
    assert netd_session.admin.records("shared-dns") == {"kept.test": {"A": ["192.0.2.1"]}}


@pytest.mark.parametrize("label", ["a/b", "a b"])
def test_namesFromTheNodeId(netd_service, netd_session, label):
    service = netd_service({"plugin": "echo", "name": "mine"})
    note("named", netd_session, names=[service.name])


def test_proxyInFrontOfRedis(netd_service, netd_session):
    proxy = netd_service(
        {"plugin": "proxy", "upstream": f"tcp:127.0.0.1:{REDIS}"},
        faults=[{"type": "slice", "size": 1, "direction": "to_client"}],
    )
    note("redis", netd_session, names=[proxy.name])
    with socket.create_connection(proxy.address(), timeout=5) as client:
        client.sendall(b"PING\\r\\n")
        answer = b""
        while len(answer) < 7:
            answer += client.recv(64)
    assert answer == b"+PONG\\r\\n"
    assert proxy.counters["upstream_connects"] == 1
"""


def freePort() -> int:
    """
    A loopback TCP port nothing listens on now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping(port: int) -> bool:
    """
    Whether a Redis server answers PING on loopback C{port}.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as client:
            client.sendall(b"PING\r\n")
            return client.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


@pytest.fixture(scope="module")
def redisPort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    A redis-server of the module's own on a free loopback port, without persistence; stopped (by its PID) afterwards.
    """
    server = requireTool("redis-server")
    port = freePort()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while not ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer on port {port} within {REDIS_START_TIMEOUT} seconds")
            time.sleep(0.05)
        yield port
    finally:
        stopProcess(process)


def refused(address: list[object]) -> bool:
    """
    Whether a TCP connection to C{[host, port]} is refused (nothing listens there).
    """
    try:
        socket.create_connection((str(address[0]), int(str(address[1]))), timeout=IO_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def test_innerSuiteSharesOneNetd(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, redisPort: int) -> None:
    """
    An inner suite's tests share one netd process and each makes services of its own, named after its node ID, that are gone after it (a failed one too, whose report shows the session netd's log of its window), while the faults, scripts, records and events a test changed of services that outlive it are put back for the next test, and a proxy on it reaches a real redis-server.
    """
    pytester.makepyfile(test_inner=INNER_TESTS)
    monkeypatch.setenv("INNER_REDIS_PORT", str(redisPort))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=INNER_TIMEOUT)
    notes: dict[str, list[dict[str, Any]]] = {}
    for line in (pytester.path / "record.jsonl").read_text().splitlines():
        entry = json.loads(line)
        notes.setdefault(entry["test"], []).append(entry)
    result.assert_outcomes(passed=5, failed=1)
    pids = {entry["pid"] for entries in notes.values() for entry in entries}
    assert len(pids) == 1 and len(notes) == 5
    (pid,) = pids
    assert not Path(f"/proc/{pid}").exists()

    (after,) = notes["after"]
    assert after["services"] == ["shared", "shared-dns"]
    for test in ("changes", "fails"):
        assert refused(notes[test][0]["address"])

    names = [name for entries in notes.values() for entry in entries for name in entry["names"]]
    assert len(names) == len(set(names)) == 6
    (changes,) = notes["changes"]
    assert changes["names"] == [f"{serviceStem('test_inner.py::test_changesSharedServices')}-echo"]
    (fails,) = notes["fails"]
    assert fails["names"][1] == fails["names"][0] + "-2"
    named = [entry["names"][0] for entry in notes["named"]]
    assert named[0] != named[1] and all(name.startswith("test_inner.py-test_namesFromTheNodeId-a-b-") for name in named)
    assert all(name.endswith("-mine") for name in named)

    output = result.stdout.str()
    assert "failing on purpose" in output
    assert f"netd session log (pid {pid}, during this test)" in output
    section = output.split(f"netd session log (pid {pid}, during this test)", 1)[1]
    assert f"service {fails['names'][0]} (echo) added" in section
    assert f"service {changes['names'][0]}" not in section


DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "in-front.md"

WITHOUT_FAULTS = """
import pytest

from netd.testing.pytest_plugin import NetdService


@pytest.fixture(autouse=True)
def withoutFaults(monkeypatch):
    monkeypatch.setattr(NetdService, "setFaults", lambda service, faults: {})
"""


def docsExample() -> str:
    """
    The Python block of docs/in-front.md's "A worked pytest example".
    """
    section = DOCS_PAGE.read_text(encoding="utf-8").split("## A worked pytest example", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_docsExampleAgainstRedis(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, redisPort: int) -> None:
    """
    The worked example of docs/in-front.md passes against a real redis-server through the session netd, and three of its four tests fail when its faults are not set, so what they check comes from the faults.
    """
    monkeypatch.setenv("REDIS_ADDRESS", f"127.0.0.1:{redisPort}")
    pytester.makepyfile(test_example=docsExample())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=4)
    pytester.makeconftest(WITHOUT_FAULTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=1, failed=3)
    output = result.stdout.str()
    for test in ("test_timesOutWhenRedisIsSlow", "test_retriesAfterAReset", "test_readsASlicedReply"):
        assert f"FAILED test_example.py::{test}" in output


def test_noSessionNetdWithoutItsFixture(pytester: pytest.Pytester) -> None:
    """
    A suite whose tests use neither netd_session nor netd_service starts no session netd.
    """
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    basetemp = pytester.path / "basetemp"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--basetemp={basetemp}", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=1)
    assert list(basetemp.glob("netd-session[0-9]*/netd.log")) == []
    pytester.makepyfile(test_session="def test_session(netd_session):\n    assert netd_session.running\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--basetemp={basetemp}", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=2)
    assert [path.name for path in basetemp.glob("netd-session[0-9]*/netd.log")] == ["netd.log"]
