"""
netd's pytest plugin, registered through the C{pytest11} entry point so that
installing netd is enough: the C{netd_server} fixture starts netd for a test
and stops it afterwards, whether the test passed or not; a failed test's report
shows what each of its netds printed.

C{-p no:netd} turns the plugin off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from netd.testing.harness import NetdServer

_SERVERS = pytest.StashKey[list[NetdServer]]()
"""
The netds a test started, for its failure report.
"""


@pytest.fixture
def netd_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., NetdServer]]:
    """
    A function that starts netd on a config (a dict or TOML text; see
    L{NetdServer}) and returns the running L{NetdServer}, once every service
    listens.  Call it as often as the test needs netds; each has its files in
    the test's C{tmp_path}, and every one is stopped at teardown.

    Keyword arguments go to L{NetdServer} (C{environment}, C{launcher},
    C{shutdownTimeout}, C{startTimeout}, ...).
    """
    started: list[NetdServer] = []
    request.node.stash[_SERVERS] = started

    def start(config: Mapping[str, Any] | str, **options: Any) -> NetdServer:
        server = NetdServer(config, directory=tmp_path / f"netd-{len(started)}", **options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """
    Add what each netd of a failed test printed to its report, as a section
    beside the captured output (a netd that failed to start says it in the
    error already).
    """
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            if server.report:
                report.sections.append((f"netd log (pid {server.pid}, {server.configFile})", server.logTail()))
