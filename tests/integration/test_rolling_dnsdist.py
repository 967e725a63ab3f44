"""
Three netd DNS servers behind a real dnsdist, restarted one at a time while
dnsperf asks through dnsdist over UDP and over TCP: the example of
C{config/deploy/dnsdist/} (its files themselves, moved to free ports), each
instance stopped with SIGTERM (lameduck: dnsdist, which follows its /ready,
takes it out of rotation while it still answers) and started again.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from .conftest import IO_TIMEOUT, loadsTheMachine, requireTool
from .rolling import CLIENT, DEPLOY, HOSTS, Instances, freePort, onFreePorts, waitFor

pytestmark = [pytest.mark.integration, loadsTheMachine]

EXAMPLE = DEPLOY / "dnsdist"
DURATION = 30
"""
Seconds each dnsperf runs: longer than the rolling restart.
"""
RATE = 150
"""
Queries per second each dnsperf sends.
"""


@attrs.frozen
class Deployment:
    """
    The running example: dnsdist's config (for its console) and address, and the instances.
    """

    instances: Instances
    config: Path
    address: tuple[str, int]

    def console(self, command: str) -> str:
        """
        Run C{command} on dnsdist's console; answer what it printed.
        """
        done = subprocess.run(
            [requireTool("dnsdist"), "-C", str(self.config), "-c", "-e", command],
            capture_output=True,
            text=True,
            timeout=IO_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"dnsdist -e {command!r}: {done.stderr}"
        return done.stdout.strip()

    def isUp(self, index: int) -> bool:
        """
        Whether dnsdist sends queries to instance C{index}.
        """
        return self.console(f"tostring(getServer({index}):isUp())") == "true"

    def isDown(self, index: int) -> bool:
        """
        Whether dnsdist sends no query to instance C{index}.
        """
        return not self.isUp(index)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """
    The example's three netds and dnsdist, every server up; all stopped after the test.
    """
    requireTool("dnsdist")
    requireTool("dnsperf")
    requireTool("curl")
    ports = {fixed: freePort() for fixed in (5301, 8053, 5199)}
    configs = []
    for number in (1, 2, 3):
        config = tmp_path / f"netd-dns-{number}.toml"
        config.write_text(onFreePorts((EXAMPLE / config.name).read_text(), ports))
        configs.append(config)
    dnsdistConfig = tmp_path / "dnsdist.conf"
    dnsdistConfig.write_text(onFreePorts((EXAMPLE / "dnsdist.conf").read_text(), ports))
    instances = Instances(configs, tmp_path)
    dnsdist: subprocess.Popen[bytes] | None = None
    try:
        instances.startAll()
        with (tmp_path / "dnsdist.log").open("wb") as log:
            dnsdist = subprocess.Popen(
                [requireTool("dnsdist"), "--supervised", "--disable-syslog", "-C", str(dnsdistConfig)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        running = Deployment(instances, dnsdistConfig, (CLIENT, ports[5301]))

        def everyServerUp() -> bool:
            try:
                return all(running.isUp(index) for index in range(len(HOSTS)))
            except AssertionError:
                return False

        waitFor("every server up in dnsdist", everyServerUp, timeout=20, interval=0.2)
        yield running
    finally:
        if dnsdist is not None:
            dnsdist.send_signal(signal.SIGTERM)
            dnsdist.wait(timeout=IO_TIMEOUT)
        instances.killAll()


def dnsperf(deployment: Deployment, mode: str, queries: Path) -> subprocess.Popen[str]:
    """
    dnsperf asking dnsdist over C{mode} (C{udp} or C{tcp}) for L{DURATION}
    seconds at L{RATE} queries a second, from C{queries}.
    """
    host, port = deployment.address
    return subprocess.Popen(
        [
            requireTool("dnsperf"),
            *("-m", mode, "-s", host, "-p", str(port), "-d", str(queries)),
            *("-l", str(DURATION), "-Q", str(RATE), "-t", "5"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@attrs.frozen
class Report:
    """
    What dnsperf reported.
    """

    sent: int
    completed: int
    lost: int
    rcodes: str
    text: str

    @classmethod
    def parse(cls, text: str) -> Report:
        """
        Read dnsperf's statistics.
        """

        def count(label: str) -> int:
            found = re.search(rf"{label}:\s+(\d+)", text)
            assert found is not None, f"dnsperf printed no {label!r}:\n{text}"
            return int(found.group(1))

        rcodes = re.search(r"Response codes:\s+(.*)", text)
        return cls(
            count("Queries sent"),
            count("Queries completed"),
            count("Queries lost"),
            rcodes.group(1) if rcodes else "",
            text,
        )


def test_rollingRestartLosesNoQuery(deployment: Deployment, tmp_path: Path) -> None:
    """
    While dnsperf asks through dnsdist over UDP and TCP, each netd in turn gets SIGTERM, leaves the rotation while it still answers (lameduck), starts again and comes back: no query is lost and every answer is NOERROR.
    """
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"host{n}.netd.test {kind}\n" for n in range(100) for kind in ("A", "AAAA")))
    runs = {mode: dnsperf(deployment, mode, queries) for mode in ("udp", "tcp")}
    began = time.monotonic()
    time.sleep(2)
    instances = deployment.instances
    figures = []
    for index in range(len(HOSTS)):
        figures.append(instances.roll(index, deployment.isDown, deployment.isUp, 2, interval=0.05))
        time.sleep(0.5)
    rolled = time.monotonic() - began
    reports = {}
    for mode, run in runs.items():
        output, _ = run.communicate(timeout=DURATION + 30)
        assert run.returncode == 0, output
        reports[mode] = Report.parse(output)
    print()
    for mode, report in reports.items():
        print(f"{mode}: {report.sent} queries sent, {report.completed} completed, {report.lost} lost; {report.rcodes}")
    for figure in figures:
        print(figure)
    print(f"the rolling restart took {round(rolled, 1)} s of dnsperf's {DURATION} s")
    assert rolled < DURATION, "the restart outlasted dnsperf's run; it proved nothing about its end"
    for report in reports.values():
        assert report.lost == 0, report.text
        assert report.completed == report.sent > RATE * DURATION * 0.8, report.text
        assert report.rcodes.startswith("NOERROR") and "100.00%" in report.rcodes, report.text
    for server in instances.servers:
        counters = server.admin.service("dns")["counters"]
        print(
            f"{server.address('dns')[0]} since its restart: {counters['queries_udp']} UDP queries, {counters['queries_tcp']} TCP"
        )
        assert counters["queries_udp"] > 0 and counters["queries_tcp"] > 0, counters
